//! SIGKILL for exactly the process meant. A pid names whichever process
//! holds it now: between reading /proc and sending the signal, the process
//! may exit and its pid go to another. Where the kernel has pidfds (Linux
//! 5.3), the process is first held by a pidfd, then checked, then signalled
//! through the pidfd, so the signal reaches the process that passed the
//! check or no one. Elsewhere (or where a seccomp filter refuses pidfds) it
//! is kill(2) right after the check.

use std::io;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use crate::sys::procfs::{self, Stat};

/// How a kill came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// SIGKILL went to the process that passed the check.
    Sent,
    /// No such process, or the one there failed the check.
    NotThere,
}

/// SIGKILLs `pid` if `is_it()` still holds once the process is pinned.
pub fn kill_if(pid: i32, is_it: impl Fn() -> bool) -> io::Result<Killed> {
    let Some(target) = Pid::from_raw(pid).filter(|_| pid > 0) else {
        return Ok(Killed::NotThere);
    };
    match pidfd_open(target, PidfdFlags::empty()) {
        Ok(pidfd) => {
            // Checked after the pidfd is open: if the process passes now,
            // the pidfd holds it (a pid is not reused while its process
            // exists, and the checks compare what only that process has).
            if !is_it() {
                return Ok(Killed::NotThere);
            }
            match pidfd_send_signal(&pidfd, Signal::KILL) {
                Ok(()) => Ok(Killed::Sent),
                Err(Errno::SRCH) => Ok(Killed::NotThere),
                Err(e) => Err(e.into()),
            }
        }
        Err(Errno::SRCH) => Ok(Killed::NotThere),
        // No pidfds here (kernel before 5.3, or a seccomp filter).
        Err(Errno::NOSYS | Errno::PERM | Errno::ACCESS) => {
            if !is_it() {
                return Ok(Killed::NotThere);
            }
            use nix::sys::signal::{kill, Signal as NixSignal};
            match kill(nix::unistd::Pid::from_raw(pid), NixSignal::SIGKILL) {
                Ok(()) => Ok(Killed::Sent),
                Err(nix::errno::Errno::ESRCH) => Ok(Killed::NotThere),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// SIGKILLs `process` if it is still the process that started at its
/// recorded start time.
pub fn kill_process(process: &Stat) -> io::Result<Killed> {
    kill_if(process.pid, || procfs::is_alive(process.pid, process.start))
}

/// Waits up to `timeout` for `process` to exit; whether it is gone (or its
/// pid is another process's). Through a pidfd, which the kernel makes
/// readable as the process exits; where there are none, by looking every
/// 2 ms.
pub fn wait_exit(process: &Stat, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let gone = || !procfs::is_alive(process.pid, process.start);
    let deadline = Instant::now() + timeout;
    let Some(target) = Pid::from_raw(process.pid).filter(|_| process.pid > 0) else {
        return true;
    };
    let pidfd = match pidfd_open(target, PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(Errno::SRCH) => return true,
        Err(_) => None,
    };
    // Checked after the pidfd is open: if the process is the one meant
    // now, the pidfd holds it.
    if gone() {
        return true;
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return gone();
        }
        match &pidfd {
            Some(fd) => {
                // Rounded up: a timeout rounded down to 0 ms would spin.
                let millis = left.as_micros().div_ceil(1000);
                let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, timeout) {
                    Ok(n) if n > 0 => return true,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return gone(),
                }
            }
            None => {
                if gone() {
                    return true;
                }
                std::thread::sleep(left.min(Duration::from_millis(2)));
            }
        }
    }
}

/// SIGKILLs `root` and its descendants, parents first (so a parent stops
/// before it can fork replacements), sparing `spare`; each only while it is
/// the process listed. Does nothing unless `root` is still the process that
/// started at `root.start`.
pub fn kill_tree(root: &Stat, spare: i32) {
    if !procfs::is_alive(root.pid, root.start) {
        return;
    }
    let listed = std::iter::once(*root).chain(procfs::descendants(root.pid));
    for process in listed.filter(|p| p.pid != spare) {
        let _ = kill_process(&process);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_process_is_killed_only_while_it_is_the_one_meant() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let stat = procfs::stat(pid).unwrap();
        // Another start time: some other process that once had this pid.
        let before = Stat {
            start: stat.start.wrapping_sub(1),
            ..stat
        };
        assert_eq!(kill_process(&before).unwrap(), Killed::NotThere);
        assert!(
            child.try_wait().unwrap().is_none(),
            "the wrong process was killed"
        );
        assert_eq!(kill_process(&stat).unwrap(), Killed::Sent);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        // Gone and reaped: nothing there to kill.
        assert_eq!(kill_process(&stat).unwrap(), Killed::NotThere);
    }

    #[test]
    fn a_tree_is_killed_whole_but_the_spared_process() {
        // sh forks two sleeps and waits; sh and both sleeps die, the
        // spared sleep lives.
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 61 & sleep 62 & wait"])
            .spawn()
            .unwrap();
        let root = procfs::stat(sh.id() as i32).unwrap();
        let mut kids = Vec::new();
        for _ in 0..200 {
            kids = procfs::descendants(root.pid);
            if kids.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(kids.len(), 2, "{kids:?}");
        let spared = kids[0];
        kill_tree(&root, spared.pid);
        sh.wait().unwrap();
        // SIGKILL takes effect on the way out of the kernel: wait for it.
        let dead = |p: &Stat| !procfs::is_alive(p.pid, p.start) || is_zombie(p.pid);
        for _ in 0..200 {
            if dead(&kids[1]) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(dead(&kids[1]), "{:?} survived", kids[1]);
        assert!(procfs::is_alive(spared.pid, spared.start) && !is_zombie(spared.pid));
        kill_process(&spared).unwrap();
    }

    #[test]
    fn waiting_for_an_exit_returns_as_the_process_exits() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let stat = procfs::stat(child.id() as i32).unwrap();
        assert!(!wait_exit(&stat, std::time::Duration::from_millis(20)));
        kill_process(&stat).unwrap();
        let started = std::time::Instant::now();
        assert!(wait_exit(&stat, std::time::Duration::from_secs(10)));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        child.wait().unwrap();
        assert!(wait_exit(&stat, std::time::Duration::ZERO));
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
    }
}
