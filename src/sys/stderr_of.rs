//! Writing to another process's stderr: the very open file behind its fd 2
//! (pidfd_getfd), not a new open of the path it names, so a caller's
//! read-only or socket stderr stays what it is and nothing is opened with
//! more rights than the caller had.

use std::fs::File;
use std::io::{self, Write};

use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};

/// Writes `text` to the stderr of process `pid`. Needs the right to trace
/// it (root has it over the setuid programs that run PAM stacks).
pub fn write(pid: i32, text: &str) -> io::Result<()> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::other("no such process"))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty())?;
    let stderr = pidfd_getfd(&pidfd, 2, PidfdGetfdFlags::empty())?;
    File::from(stderr).write_all(text.as_bytes())
}
