//! The periodic re-read, on a timerfd: the kernel wakes the daemon once per
//! period and at no other time. (Tokio's timer wheel wakes a long sleeper
//! several times on the way to a deadline 30 s out.)

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

pub struct Backstop {
    /// Owns the timer; `fd` is a second descriptor for the same timer.
    _timer: TimerFd,
    fd: AsyncFd<File>,
    period: Duration,
}

impl Backstop {
    pub fn new(period: Duration) -> io::Result<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        timer.set(
            Expiration::Interval(TimeSpec::from_duration(period)),
            TimerSetTimeFlags::empty(),
        )?;
        let file = File::from(timer.as_fd().try_clone_to_owned()?);
        // `AsyncFd::new` is deprecated because a caller could close the fd
        // while it is registered; the AsyncFd owns this descriptor.
        #[allow(deprecated)]
        let fd = AsyncFd::new(file)?;
        Ok(Backstop {
            _timer: timer,
            fd,
            period,
        })
    }

    /// Waits for the next period to end.
    pub async fn tick(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let mut expirations = [0u8; 8];
            match guard.try_io(|inner| inner.get_mut().read(&mut expirations)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => {
                    // Never spin on a broken timer: wait a period anyway.
                    tokio::time::sleep(self.period).await;
                    return Err(e);
                }
                Err(_would_block) => continue,
            }
        }
    }
}
