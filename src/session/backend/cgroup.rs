//! Confining sessions with cgroup v2: each guest session gets a group of its
//! own under the agent's root, and ending the session is one write to its
//! `cgroup.kill`. For hosts without systemd as PID 1; on systemd hosts logind
//! owns the session's scope.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Backend, Login, Placement, SystemBus, KILL_TIMEOUT};
use crate::store::config::Config;
use crate::store::records::SessionRecord;
use crate::sys::procfs;

/// Sessions in groups of their own under `root`.
pub struct CgroupBackend {
    root: PathBuf,
}

impl CgroupBackend {
    pub fn new(root: PathBuf) -> Self {
        CgroupBackend { root }
    }
}

/// The group a session was placed in (empty for another backend's record,
/// which no group matches).
fn group_in(record: &SessionRecord) -> &Path {
    match &record.placement {
        Placement::Cgroup { group } => group,
        _ => Path::new(""),
    }
}

impl Backend for CgroupBackend {
    /// Moves the sshd process and everything under it (but the hook) into
    /// `root/<session id>`.
    fn place(&self, login: &Login) -> Result<Placement, String> {
        let pids: Vec<i32> = procfs::tree(login.monitor.pid)
            .into_iter()
            .filter(|&p| p != login.hook)
            .collect();
        let group = confine(&self.root, login.id, &pids)
            .map_err(|e| format!("cannot confine session in {}: {e}", self.root.display()))?;
        Ok(Placement::Cgroup { group })
    }

    fn end(&self, record: &SessionRecord, _bus: &SystemBus) -> Result<(), String> {
        let group = group_in(record);
        kill(group, KILL_TIMEOUT).map_err(|e| format!("killing cgroup {}: {e}", group.display()))
    }

    fn start_end(&self, record: &SessionRecord) {
        let _ = fs::write(group_in(record).join("cgroup.kill"), "1");
    }

    fn is_live(&self, record: &SessionRecord) -> bool {
        is_populated(group_in(record)).unwrap_or(false)
    }

    fn holds(&self, record: &SessionRecord, group: &Path) -> bool {
        let mine = group_in(record);
        !mine.as_os_str().is_empty() && group.starts_with(mine)
    }

    fn outlives_login(&self, record: &SessionRecord, login: &Login) -> bool {
        pids(group_in(record)).is_ok_and(|pids| login.outlived_by(&pids))
    }

    fn release(&self, record: &SessionRecord) {
        let _ = remove(group_in(record));
    }
}

/// The cgroup v2 group process `pid` is in, as a path under the mount.
pub fn group_of(pid: i32) -> Option<PathBuf> {
    group_under(&cgroup2_mount()?, pid)
}

/// [`group_of`], with the cgroup v2 mount already found.
fn group_under(mount: &Path, pid: i32) -> Option<PathBuf> {
    let rel = procfs::cgroup_of(pid).ok()?;
    Some(mount.join(rel.strip_prefix("/").unwrap_or(&rel)))
}

/// The cgroup2 mount point, from mountinfo text (`None` if there is none).
/// Never assume /sys/fs/cgroup: hybrid hosts mount it elsewhere.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_mount_path(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(n as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    cgroup2_mount_in(&fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The directory under which session groups are made.
pub fn session_root(config: &Config) -> Option<PathBuf> {
    let configured = &config.enforcement.cgroup_root;
    if !configured.as_os_str().is_empty() {
        return Some(configured.clone());
    }
    Some(cgroup2_mount()?.join("vmshare"))
}

/// Creates the group `root/id` and moves `pids` into it, in order.
pub fn confine(root: &Path, id: &str, pids: &[i32]) -> io::Result<PathBuf> {
    fs::create_dir_all(root)?;
    let group = root.join(id);
    match fs::create_dir(&group) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let procs = group.join("cgroup.procs");
    for pid in pids {
        match fs::write(&procs, pid.to_string()) {
            Ok(()) => {}
            // ESRCH: the process exited meanwhile; nothing left to confine.
            Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(group)
}

/// Pids currently in `group` (not its subgroups).
pub fn pids(group: &Path) -> io::Result<Vec<i32>> {
    Ok(fs::read_to_string(group.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Whether any process is in `group` or below (`cgroup.events` populated).
pub fn is_populated(group: &Path) -> io::Result<bool> {
    Ok(populated_in(&fs::read(group.join("cgroup.events"))?))
}

/// Kills every process in `group` and below, waits up to `timeout` for them
/// to be gone, then removes the group. Falls back to SIGKILL of each member
/// where `cgroup.kill` is missing (kernels before 5.14).
pub fn kill(group: &Path, timeout: Duration) -> io::Result<()> {
    if !group.exists() {
        return Ok(());
    }
    kill_processes(group, timeout)?;
    remove(group)
}

/// Kills every process in `group` and below and waits up to `timeout` for
/// them to be gone, leaving the group itself to whoever made it. Where
/// `cgroup.kill` is missing or not ours to write (a group delegated to a
/// user), each member is sent SIGKILL.
pub fn kill_processes(group: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let by_members = match fs::write(group.join("cgroup.kill"), "1") {
        Ok(()) => false,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.kind() == io::ErrorKind::PermissionDenied =>
        {
            kill_members(group)?;
            true
        }
        Err(e) => return Err(e),
    };
    wait_empty(group, deadline, by_members)
}

/// Waits until no process is left in `group` or below, or `deadline`
/// passes. The kernel wakes a poll on `cgroup.events` when it changes, so
/// this returns as the last process exits, not at the next tick of a
/// sleep. `cgroup.kill` also kills what its members fork meanwhile; where
/// members were killed one by one (`by_members`), they are killed again
/// every millisecond, for the forks.
fn wait_empty(group: &Path, deadline: Instant, by_members: bool) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    let events = match fs::File::open(group.join("cgroup.events")) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut text = [0u8; 256];
    loop {
        // Read from the start each time: the read is what a later poll
        // compares against, so no change between the two is missed.
        let n = events.read_at(&mut text, 0)?;
        if !populated_in(&text[..n]) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} still has processes", group.display()),
            ));
        }
        let wait = if by_members {
            left.min(Duration::from_millis(1))
        } else {
            left
        };
        // Rounded up: a timeout rounded down to 0 ms would spin.
        let millis = wait.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if by_members {
            let _ = kill_members(group);
        }
    }
}

/// Whether `cgroup.events` text says the group has processes.
fn populated_in(events: &[u8]) -> bool {
    events.split(|&b| b == b'\n').any(|l| l == b"populated 1")
}

fn kill_members(group: &Path) -> io::Result<()> {
    let mount = cgroup2_mount();
    kill_members_under(group, mount.as_deref())
}

fn kill_members_under(group: &Path, mount: Option<&Path>) -> io::Result<()> {
    for pid in pids(group)? {
        // Only while the pid is still a member: it may be another
        // process's by the time the signal goes.
        let _ = crate::sys::kill::kill_if(pid, || {
            mount.is_some_and(|m| group_under(m, pid).as_deref() == Some(group))
        });
    }
    if let Ok(entries) = fs::read_dir(group) {
        for sub in entries.flatten().filter(|e| e.path().is_dir()) {
            kill_members_under(&sub.path(), mount)?;
        }
    }
    Ok(())
}

/// Removes an empty group and its empty subgroups.
pub fn remove(group: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(group) {
        for sub in entries.flatten().filter(|e| e.path().is_dir()) {
            remove(&sub.path())?;
        }
    }
    match fs::remove_dir(group) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Groups under `root` without a record: empty ones are removed; ones with
/// processes older than `grace` are killed (nobody vouches for them).
pub fn sweep(
    root: &Path,
    has_record: &dyn Fn(&str) -> bool,
    grace: Duration,
) -> Vec<(PathBuf, Result<(), String>)> {
    let mut ended = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return ended;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !path.is_dir() || has_record(name) {
            continue;
        }
        if !is_populated(&path).unwrap_or(true) {
            let _ = remove(&path);
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|a| a > grace) {
            let result = kill(&path, KILL_TIMEOUT).map_err(|e| e.to_string());
            ended.push((path, result));
        }
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let spaced = "29 23 0:26 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount_in(spaced), Some(PathBuf::from("/mnt/cg two")));
        assert_eq!(
            cgroup2_mount_in("31 23 0:28 / /x rw - tmpfs tmpfs rw\n"),
            None
        );
    }
}
