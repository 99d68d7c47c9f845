//! The facts a look gathers about one account, read from the system: its
//! logind sessions, the unit groups under its user manager, its unit files,
//! the audit session ids of a unit's processes, lingering, the crontab and
//! the at queue. Read only; nothing here judges.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::session::backend::{cgroup, logind};
use crate::sys::procfs;

/// Where the facts are: the real paths, or a scratch tree in tests.
pub struct Roots {
    /// The cgroup v2 mount.
    pub cgroups: PathBuf,
    /// systemd's linger flags (`/var/lib/systemd/linger`).
    pub linger: PathBuf,
    /// cron's spool (`/var/spool/cron/crontabs`).
    pub crontabs: PathBuf,
    /// at's queue (`/var/spool/cron/atjobs`).
    pub atjobs: PathBuf,
    /// Users' runtime directories (`/run/user`).
    pub run_user: PathBuf,
    /// logind's session state files (`/run/systemd/sessions`).
    pub sessions: PathBuf,
}

impl Roots {
    pub(super) fn system(cgroups: PathBuf) -> Roots {
        Roots {
            cgroups,
            linger: PathBuf::from("/var/lib/systemd/linger"),
            crontabs: PathBuf::from("/var/spool/cron/crontabs"),
            atjobs: PathBuf::from("/var/spool/cron/atjobs"),
            run_user: PathBuf::from("/run/user"),
            sessions: PathBuf::from("/run/systemd/sessions"),
        }
    }

    pub(super) fn user_slice(&self, uid: u32) -> PathBuf {
        self.cgroups
            .join("user.slice")
            .join(format!("user-{uid}.slice"))
    }

    pub(super) fn manager_group(&self, uid: u32) -> PathBuf {
        self.user_slice(uid).join(format!("user@{uid}.service"))
    }

    /// Whether the user manager keeps `unit` as a transient unit (made by
    /// `systemd-run`, not from a unit file).
    pub(super) fn transient(&self, uid: u32, unit: &str) -> bool {
        self.run_user
            .join(uid.to_string())
            .join("systemd/transient")
            .join(unit)
            .exists()
    }
}

/// The logind sessions of the account now: `session-ID.scope` groups in
/// its slice, less the user manager's own (class `manager`, systemd 256
/// and later), which is no one's login.
pub(super) fn live_sessions(roots: &Roots, uid: u32) -> BTreeSet<String> {
    fs::read_dir(roots.user_slice(uid))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| session_id(&e.file_name().to_string_lossy()).map(String::from))
                .filter(|id| !is_manager_session(&roots.sessions.join(id)))
                .collect()
        })
        .unwrap_or_default()
}

fn is_manager_session(state: &Path) -> bool {
    fs::read_to_string(state).is_ok_and(|text| {
        text.lines()
            .any(|l| matches!(l, "CLASS=manager" | "CLASS=manager-early"))
    })
}

pub(super) fn session_id(group: &str) -> Option<&str> {
    logind::session_of_cgroup(Path::new(group))
}

/// Unit groups under the user manager, by unit name (services and scopes,
/// in any slice).
pub(super) fn unit_groups(roots: &Roots, uid: u32) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![(roots.manager_group(uid), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".slice") && depth < 4 {
                dirs.push((entry.path(), depth + 1));
            } else if name.ends_with(".service") || name.ends_with(".scope") {
                out.insert(name, entry.path());
            }
        }
    }
    out
}

/// Files under `~/.config/systemd/user` (two levels, never following a
/// link), by path relative to it, with their ctime in ns: a file's ctime
/// moves on every change and cannot be set back.
pub(super) fn unit_files(home: &Path) -> BTreeMap<String, i64> {
    let root = home.join(".config/systemd/user");
    let mut out = BTreeMap::new();
    let Ok(meta) = fs::symlink_metadata(&root) else {
        return out;
    };
    if !meta.is_dir() {
        return out;
    }
    let ctime = |m: &fs::Metadata| m.ctime() * 1_000_000_000 + m.ctime_nsec();
    for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        out.insert(name.clone(), ctime(&meta));
        if meta.is_dir() {
            for inner in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                if let Ok(m) = inner.metadata() {
                    let inner_name = inner.file_name().to_string_lossy().into_owned();
                    out.insert(format!("{name}/{inner_name}"), ctime(&m));
                }
            }
        }
        if out.len() > 10_000 {
            break;
        }
    }
    out
}

/// Audit session ids of the processes in a unit's group and below.
pub(super) fn unit_sessions(group: &Path) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut dirs = vec![group.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for pid in cgroup::pids(&dir).unwrap_or_default() {
            ids.extend(procfs::audit_session(pid));
        }
        for sub in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if sub.file_type().is_ok_and(|t| t.is_dir()) && dirs.len() < 64 {
                dirs.push(sub.path());
            }
        }
    }
    ids
}

pub(super) fn file_state(path: &Path) -> Option<(i64, u64)> {
    fs::metadata(path)
        .ok()
        .map(|m| (m.ctime() * 1_000_000_000 + m.ctime_nsec(), m.size()))
}

pub(super) fn at_jobs(dir: &Path, uid: u32) -> BTreeSet<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid && m.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
