//! The periodic re-read, on a timerfd: the kernel wakes the daemon once per
//! period and at no other time. (Tokio's timer wheel wakes a long sleeper
//! several times on the way to a deadline 30 s out.) A thread of its own
//! blocks on the timer and hands each expiry to the loop.

use std::io;
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::sync::mpsc::{self, error::TrySendError};

pub struct Backstop {
    ticks: mpsc::Receiver<io::Result<()>>,
    period: Duration,
}

impl Backstop {
    pub fn new(period: Duration) -> io::Result<Self> {
        let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC)?;
        timer.set(
            Expiration::Interval(TimeSpec::from_duration(period)),
            TimerSetTimeFlags::empty(),
        )?;
        // One tick waiting is enough: expiries the loop has not taken yet
        // would only ask for the same re-read again.
        let (tx, ticks) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("backstop".into())
            .spawn(move || loop {
                let tick = timer.wait().map_err(io::Error::from);
                let failed = tick.is_err();
                if let Err(TrySendError::Closed(_)) = tx.try_send(tick) {
                    return;
                }
                if failed {
                    // Never spin on a broken timer: wait a period anyway.
                    std::thread::sleep(period);
                }
            })?;
        Ok(Backstop { ticks, period })
    }

    /// Waits for the next period to end.
    pub async fn tick(&mut self) -> io::Result<()> {
        match self.ticks.recv().await {
            Some(tick) => tick,
            None => {
                tokio::time::sleep(self.period).await;
                Err(io::Error::other("the backstop timer thread ended"))
            }
        }
    }
}
