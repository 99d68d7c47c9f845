//! The periodic re-read, on a timerfd the runtime watches: one wake per
//! period.

use std::io;
use std::time::Duration;

use rustix::time::TimerfdClockId;

use super::timerfd::Timer;

pub struct Backstop {
    timer: Timer,
    period: Duration,
}

impl Backstop {
    pub fn new(period: Duration) -> io::Result<Self> {
        let timer = Timer::new(TimerfdClockId::Monotonic)?;
        timer.every(period)?;
        Ok(Backstop { timer, period })
    }

    /// Waits for the next period to end. Expiries the loop did not take in
    /// time are one: they would only ask for the same re-read again.
    pub async fn tick(&self) -> io::Result<()> {
        let tick = self.timer.expired().await;
        if tick.is_err() {
            // Never spin on a broken timer: wait a period anyway.
            tokio::time::sleep(self.period).await;
        }
        tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_backstop_ticks_each_period() {
        let backstop = Backstop::new(Duration::from_millis(30)).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), backstop.tick())
                .await
                .expect("ticked")
                .unwrap();
        }
        assert!(started.elapsed() >= Duration::from_millis(60));
    }
}
