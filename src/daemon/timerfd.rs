//! A timerfd watched by the daemon's runtime: the kernel wakes the loop
//! when the timer expires, and at no other time (tokio's own timer wheel
//! wakes a long sleeper several times on the way to a deadline 30 s out,
//! and knows nothing of the wall clock being set).
//!
//! Tokio has no timerfd type, and its `AsyncFd` can only be made with
//! `unsafe`. Its `pipe::Receiver`, made `unchecked` from an owned
//! descriptor, watches any descriptor that is read when epoll says it is
//! readable, as a timerfd is: a read takes the count of expiries.

use std::io;
use std::os::fd::AsFd;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::net::unix::pipe;

pub struct Timer(pipe::Receiver);

/// No time: a timer set to it is disarmed.
const NEVER: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 0,
};

impl Timer {
    /// A disarmed timer on `clock`; it must be made on the runtime.
    pub fn new(clock: TimerfdClockId) -> io::Result<Self> {
        let fd = timerfd_create(clock, TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK)?;
        Ok(Timer(pipe::Receiver::from_owned_fd_unchecked(fd)?))
    }

    /// Expires every `period`, the first time one period from now.
    pub fn every(&self, period: std::time::Duration) -> io::Result<()> {
        let every = timespec(period);
        self.set(TimerfdTimerFlags::empty(), every, every)
    }

    /// Expires at `at` on the timer's clock (seconds since its epoch; a
    /// time already past expires at once), and, with `cancel_on_set`, when
    /// that clock is set.
    pub fn at(&self, at: i64, cancel_on_set: bool) -> io::Result<()> {
        let mut flags = TimerfdTimerFlags::ABSTIME;
        if cancel_on_set {
            flags |= TimerfdTimerFlags::CANCEL_ON_SET;
        }
        let at = Timespec {
            tv_sec: at.max(1),
            tv_nsec: 0,
        };
        self.set(flags, NEVER, at)
    }

    pub fn disarm(&self) -> io::Result<()> {
        self.set(TimerfdTimerFlags::empty(), NEVER, NEVER)
    }

    fn set(&self, flags: TimerfdTimerFlags, interval: Timespec, value: Timespec) -> io::Result<()> {
        let spec = Itimerspec {
            it_interval: interval,
            it_value: value,
        };
        timerfd_settime(self.0.as_fd(), flags, &spec)?;
        Ok(())
    }

    /// Waits until the timer expires (or, armed to be cancelled, until its
    /// clock is set). Cancel safe.
    pub async fn expired(&self) -> io::Result<()> {
        let mut expiries = [0u8; 8];
        loop {
            self.0.readable().await?;
            match self.0.try_read(&mut expiries) {
                Ok(_) => return Ok(()),
                // The clock was set (only a timer armed to be cancelled
                // says so).
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::CANCELED.raw_os_error()) => {
                    return Ok(())
                }
                // Read already: tokio forgets the readiness, and the wait
                // goes on.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn timespec(d: std::time::Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}
