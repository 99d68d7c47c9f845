//! Reading processes from /proc: start times (to tell a pid from its reuse),
//! parents, children and cgroups.

use std::fs;
use std::io;
use std::path::PathBuf;

/// The fields of /proc/PID/stat we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub ppid: i32,
    /// Start time in clock ticks since boot (field 22).
    pub start: u64,
}

/// Parses /proc/PID/stat text. The command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let pid = text.split(' ').next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest starts at field 3 (state); ppid is field 4, starttime field 22.
    Some(Stat {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))
}

/// `PF_EXITING` in the stat flags: the process has begun to exit.
const PF_EXITING: u64 = 0x4;

/// The flags word (field 9) of /proc/PID/stat text.
fn parse_flags(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(6)?.parse().ok()
}

/// Whether `pid` is gone or on its way out. A process that has begun to
/// exit runs none of its own code again, yet stays listed in its cgroup
/// for a moment after its descriptors are closed, which is when a parent
/// waiting on them wakes. Any other doubt (an unreadable stat) counts as
/// staying.
pub fn is_leaving(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_flags(&text).is_some_and(|f| f & PF_EXITING != 0),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Whether `pid` is still the process that started at `start`.
pub fn is_alive(pid: i32, start: u64) -> bool {
    stat(pid).is_ok_and(|s| s.start == start)
}

/// Every live process.
pub fn all() -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| stat(pid).ok())
        .collect()
}

/// `root` and all its descendants, parents before children.
pub fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    out.extend(descendants(root).iter().map(|p| p.pid));
    out
}

/// The descendants of `root` as they are now, parents before children.
pub fn descendants(root: i32) -> Vec<Stat> {
    let procs = all();
    let mut out: Vec<Stat> = Vec::new();
    let mut i = 0;
    let mut parent = root;
    loop {
        out.extend(procs.iter().filter(|p| p.ppid == parent));
        let Some(next) = out.get(i) else {
            return out;
        };
        parent = next.pid;
        i += 1;
    }
}

/// The ancestors of `pid`, nearest first (excluding `pid`, stopping at 1).
pub fn ancestors(pid: i32) -> Vec<Stat> {
    let mut out = Vec::new();
    let mut cur = pid;
    while let Ok(s) = stat(cur) {
        if s.ppid <= 1 || out.len() > 4096 {
            break;
        }
        cur = s.ppid;
        if let Ok(parent) = stat(cur) {
            out.push(parent);
        }
    }
    out
}

/// The kernel's audit session id of `pid` (`/proc/PID/sessionid`): set at
/// login by pam_loginuid, inherited, and not changeable without
/// CAP_AUDIT_CONTROL. `u32::MAX` outside any login.
pub fn audit_session(pid: i32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/sessionid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The cgroup v2 path of `pid` relative to the hierarchy root (the `0::`
/// line of /proc/PID/cgroup).
pub fn cgroup_of(pid: i32) -> io::Result<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(PathBuf::from)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "process has no cgroup v2 membership",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_odd_command_names() {
        let text =
            "4242 (sshd: a) b (x)) S 17 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                pid: 4242,
                ppid: 17,
                start: 123456
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_flags(text), Some(4194560));
        assert_eq!(parse_flags("garbage"), None);
    }

    #[test]
    fn a_live_process_is_not_leaving_and_a_reaped_one_is() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(!is_leaving(pid));
        assert!(!is_leaving(std::process::id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(is_leaving(pid));
    }

    #[test]
    fn own_process_is_alive_and_in_its_parents_tree() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(is_alive(me, s.start));
        assert!(!is_alive(me, s.start + 1));
        assert!(tree(s.ppid).contains(&me));
        assert_eq!(ancestors(me).first().map(|p| p.pid), Some(s.ppid));
    }
}
