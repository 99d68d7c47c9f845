//! The `expires` timer: a timerfd on CLOCK_REALTIME armed for the next
//! deadline as an absolute time, with `TFD_TIMER_CANCEL_ON_SET`, so the
//! kernel wakes the daemon when the wall clock reaches the deadline however
//! it gets there (steadily, or set forward past it), and also when the
//! clock is set at all. The loop re-arms it after every pass, so a restart
//! or a reload arms it afresh from the grant file.
//!
//! After a wake the timer is not read again until it is armed again: a
//! timer cancelled by a clock change answers every read at once until then.

use std::io;

use rustix::time::TimerfdClockId;

use super::timerfd::Timer;

pub struct Deadlines {
    timer: Timer,
    /// Armed, and not woken since.
    armed: bool,
}

impl Deadlines {
    pub fn new() -> io::Result<Self> {
        Ok(Deadlines {
            timer: Timer::new(TimerfdClockId::Realtime)?,
            armed: false,
        })
    }

    /// Arms the timer for `at` (seconds since the epoch; a time already
    /// past fires at once), or disarms it for `None`.
    pub fn arm(&mut self, at: Option<i64>) -> io::Result<()> {
        self.armed = false;
        match at {
            Some(at) => self.timer.at(at, true)?,
            None => return self.timer.disarm(),
        }
        self.armed = true;
        Ok(())
    }

    /// Waits until a deadline is reached or the wall clock is set.
    pub async fn wake(&mut self) -> io::Result<()> {
        if !self.armed {
            return std::future::pending().await;
        }
        let wake = self.timer.expired().await;
        self.armed = false;
        wake
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
