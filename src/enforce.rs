//! How sessions are confined when they open and ended when their grant goes:
//! a cgroup v2 group of their own (hosts without systemd), or signals to the
//! session's process tree as the last resort.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cgroup;
use crate::config::{Backend, Config};
use crate::procfs;
use crate::sessions::SessionRecord;

/// How long ending one session may take before it is reported as failed.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a new session is put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In `root/<session id>`.
    Cgroup { root: PathBuf },
    /// Left where it is; ended by signalling its process tree.
    Signal,
}

/// Chooses the placement for a new session from the configured backend.
pub fn placement(config: &Config) -> Result<Placement, String> {
    match config.enforcement.backend {
        Backend::Signal => Ok(Placement::Signal),
        Backend::Cgroup => cgroup::session_root(config)
            .map(|root| Placement::Cgroup { root })
            .ok_or_else(|| "backend is cgroup but no cgroup v2 hierarchy is mounted".to_string()),
        Backend::Auto | Backend::Logind => Ok(match cgroup::session_root(config) {
            Some(root) => Placement::Cgroup { root },
            None => Placement::Signal,
        }),
    }
}

/// Ends a session, whatever confined it. `Ok` once no process of it is left.
pub fn terminate(record: &SessionRecord) -> Result<(), String> {
    if let Some(group) = &record.cgroup {
        return cgroup::kill(group, KILL_TIMEOUT)
            .map_err(|e| format!("killing cgroup {}: {e}", group.display()));
    }
    signal_tree(record)
}

/// SIGKILLs the monitor and its descendants, if the monitor is still the
/// process the record names. Processes that left the tree (double fork) are
/// out of reach: that is why the cgroup backend exists.
fn signal_tree(record: &SessionRecord) -> Result<(), String> {
    if !procfs::is_alive(record.monitor_pid, record.monitor_start) {
        return Ok(());
    }
    let tree = procfs::tree(record.monitor_pid);
    // Stop the parent first so it cannot fork replacements.
    for pid in &tree {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    Ok(())
}

/// Whether any process of the session is still alive.
pub fn is_live(record: &SessionRecord) -> bool {
    match &record.cgroup {
        Some(group) => cgroup::is_populated(group).unwrap_or(false),
        None => procfs::is_alive(record.monitor_pid, record.monitor_start),
    }
}
