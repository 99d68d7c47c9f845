//! The `expires` timer: a timerfd on CLOCK_REALTIME armed for the next
//! deadline as an absolute time, with `TFD_TIMER_CANCEL_ON_SET`, so the
//! kernel wakes the daemon when the wall clock reaches the deadline however
//! it gets there (steadily, or set forward past it), and also when the
//! clock is set at all. The loop re-arms it after every pass, so a restart
//! or a reload arms it afresh from the grant file.
//!
//! A thread blocks on the timer and hands each wake to the loop. After a
//! wake it waits to be armed again: a timer cancelled by a clock change
//! answers every read at once until it is re-armed.

use std::io;
use std::sync::{mpsc as std_mpsc, Arc};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::sync::mpsc::{self, error::TrySendError};

pub struct Deadlines {
    timer: Arc<TimerFd>,
    armed: std_mpsc::SyncSender<()>,
    wakes: mpsc::Receiver<io::Result<()>>,
}

impl Deadlines {
    pub fn new() -> io::Result<Self> {
        let timer = Arc::new(TimerFd::new(
            ClockId::CLOCK_REALTIME,
            TimerFlags::TFD_CLOEXEC,
        )?);
        let (armed, armings) = std_mpsc::sync_channel::<()>(1);
        let (tx, wakes) = mpsc::channel(1);
        let waiting = Arc::clone(&timer);
        std::thread::Builder::new()
            .name("deadlines".into())
            .spawn(move || {
                // One read per arming; the loop has gone when either
                // channel closes.
                while armings.recv().is_ok() {
                    let wake = waiting.wait().map_err(io::Error::from);
                    if let Err(TrySendError::Closed(_)) = tx.try_send(wake) {
                        return;
                    }
                }
            })?;
        Ok(Deadlines {
            timer,
            armed,
            wakes,
        })
    }

    /// Arms the timer for `at` (seconds since the epoch; a time already
    /// past fires at once), or disarms it for `None`.
    pub fn arm(&self, at: Option<i64>) -> io::Result<()> {
        match at {
            Some(at) => {
                self.timer.set(
                    Expiration::OneShot(TimeSpec::new(at, 0)),
                    TimerSetTimeFlags::TFD_TIMER_ABSTIME
                        | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
                )?;
                // Full: the thread has a reading to do already.
                let _ = self.armed.try_send(());
            }
            None => self.timer.unset()?,
        }
        Ok(())
    }

    /// Waits until a deadline is reached or the wall clock is set.
    pub async fn wake(&mut self) -> io::Result<()> {
        match self.wakes.recv().await {
            Some(wake) => wake,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_in_the_past_wakes_at_once_and_none_never() {
        let mut deadlines = Deadlines::new().unwrap();
        deadlines.arm(Some(1)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), deadlines.wake())
            .await
            .expect("woke")
            .unwrap();
        deadlines.arm(None).unwrap();
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(200), deadlines.wake()).await;
        assert!(quiet.is_err());
    }

    #[tokio::test]
    async fn a_deadline_wakes_on_time() {
        let mut deadlines = Deadlines::new().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let at = now.as_secs() as i64 + 1;
        deadlines.arm(Some(at)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), deadlines.wake())
            .await
            .expect("woke")
            .unwrap();
        let woke = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        assert!(woke.as_secs() as i64 >= at, "woke before the deadline");
    }
}
