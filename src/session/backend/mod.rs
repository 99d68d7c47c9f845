//! How a guest session is placed when it opens, so that it can be ended as
//! a whole, and how it is ended when its grant goes. One trait, three
//! mechanisms: logind's own session scope (hosts with systemd as PID 1), a
//! cgroup v2 group of the agent's own (hosts without systemd), or signals to
//! the session's process tree as the last resort. The hook and the daemon
//! call the trait; only this folder knows a mechanism's details.

pub mod cgroup;
pub mod logind;
pub mod signal;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::store::records::Placement;
pub use logind::SystemBus;

use crate::store::config::{Backend as Configured, Config};
use crate::store::records::SessionRecord;
use crate::sys::procfs;

/// How long ending one session may take before it is reported as failed.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A login being admitted: its id and the connection's sshd process.
pub struct Login<'a> {
    pub id: &'a str,
    pub monitor: &'a procfs::Stat,
    /// The hook's own pid, never moved or killed with the session.
    pub hook: i32,
}

/// A way to hold a session so that it can be ended as a whole.
pub trait Backend {
    /// Places the new session (the monitor and everything under it).
    fn place(&self, login: &Login) -> Result<Placement, String>;
    /// Ends a placed session; `Ok` once no process of it is left. `bus`
    /// is the daemon's connection to the system bus (for logind).
    fn end(&self, record: &SessionRecord, bus: &SystemBus) -> Result<(), String>;
    /// Whether any process of the session still runs.
    fn is_live(&self, record: &SessionRecord) -> bool;
    /// Whether a process in cgroup `group` (an absolute path under the
    /// cgroup v2 mount) belongs to the session.
    fn holds(&self, record: &SessionRecord, group: &Path) -> bool;
    /// At logout: whether processes of the session other than the hook and
    /// the sshd process still run (`setsid nohup …`).
    fn outlives_login(&self, record: &SessionRecord, login: &Login) -> bool;
    /// Starts ending the session without waiting, so that a pass can start
    /// every kill before it waits on any.
    fn start_end(&self, _record: &SessionRecord) {}
    /// Lets go of what placing made, once the session is over.
    fn release(&self, _record: &SessionRecord) {}
}

impl Login<'_> {
    /// At logout: whether any of `pids` (a session's group) is a process
    /// that stays: not the hook, not the sshd process, not one already on
    /// its way out (sshd's own session process wakes the monitor as it
    /// exits, a moment before it leaves the group).
    pub fn outlived_by(&self, pids: &[i32]) -> bool {
        pids.iter()
            .any(|&p| p != self.hook && p != self.monitor.pid && !procfs::is_leaving(p))
    }
}

impl Placement {
    /// The backend that placed a session this way, and so ends it.
    pub fn backend(&self) -> Box<dyn Backend> {
        match self {
            Placement::Cgroup { group } => Box::new(cgroup::CgroupBackend::new(
                group.parent().map_or_else(PathBuf::new, Path::to_path_buf),
            )),
            Placement::Logind { session } => {
                Box::new(logind::LogindBackend::for_session(session.clone()))
            }
            Placement::Signal => Box::new(signal::SignalBackend),
        }
    }
}

/// The backend for a new login, from the configured choice and the logind
/// session pam_systemd made for it, if any.
pub fn for_login(
    config: &Config,
    logind_session: Option<&str>,
) -> Result<Box<dyn Backend>, String> {
    Ok(
        match choose(
            config.enforcement.backend,
            logind::systemd_booted(),
            logind_session,
            || cgroup::session_root(config),
        )? {
            Choice::Cgroup(root) => Box::new(cgroup::CgroupBackend::new(root)),
            Choice::Logind(session) => Box::new(logind::LogindBackend::for_session(session)),
            Choice::Signal => Box::new(signal::SignalBackend),
        },
    )
}

/// Which backend a new login gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Groups are made under this directory.
    Cgroup(PathBuf),
    /// This logind session's scope.
    Logind(String),
    Signal,
}

/// The choice itself. `auto`: logind where systemd is PID 1 and the session
/// has a logind id; elsewhere cgroup v2 where mounted, else signals. On a
/// systemd host a guest session without a logind id is refused: moving
/// processes out of systemd's tree breaks its bookkeeping, and signals
/// cannot reach what escaped with `setsid`, so it could outlive a revoke.
pub fn choose(
    backend: Configured,
    systemd_booted: bool,
    logind_session: Option<&str>,
    cgroup_root: impl FnOnce() -> Option<PathBuf>,
) -> Result<Choice, String> {
    let logind = logind_session.map(|id| Choice::Logind(id.to_string()));
    match backend {
        Configured::Signal => Ok(Choice::Signal),
        Configured::Cgroup => cgroup_root()
            .map(Choice::Cgroup)
            .ok_or_else(|| "backend is cgroup but no cgroup v2 hierarchy is mounted".to_string()),
        Configured::Logind => logind.ok_or_else(|| {
            "backend is logind but this login has no logind session \
             (is pam_systemd in the session stack before vmshare?)"
                .to_string()
        }),
        Configured::Auto if systemd_booted => logind.ok_or_else(|| {
            "systemd runs this host but the login has no logind session \
             (is pam_systemd in the session stack before vmshare?); a guest \
             session that cannot be ended as a whole is refused"
                .to_string()
        }),
        Configured::Auto => Ok(match cgroup_root() {
            Some(root) => Choice::Cgroup(root),
            None => Choice::Signal,
        }),
    }
}

/// Ends a session the way it was placed.
pub fn end(record: &SessionRecord, bus: &SystemBus) -> Result<(), String> {
    record.placement.backend().end(record, bus)
}

/// Whether any process of the session still runs.
pub fn is_live(record: &SessionRecord) -> bool {
    record.placement.backend().is_live(record)
}

/// Ends what the agent placed for session `id` when its record cannot be
/// read: only a cgroup can be found by the session's id alone.
pub fn end_unrecorded(config: &Config, id: &str) -> Result<(), String> {
    let Some(root) = cgroup::session_root(config) else {
        return Ok(());
    };
    let group = root.join(id);
    cgroup::kill(&group, KILL_TIMEOUT)
        .map_err(|e| format!("killing cgroup {}: {e}", group.display()))
}

/// Session groups without a record: empty ones are removed; ones with
/// processes, older than `grace`, are ended. Returns what was ended.
pub fn sweep_unrecorded(
    config: &Config,
    has_record: &dyn Fn(&str) -> bool,
    grace: Duration,
) -> Vec<(PathBuf, Result<(), String>)> {
    match cgroup::session_root(config) {
        Some(root) => cgroup::sweep(&root, has_record, grace),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Option<PathBuf> {
        Some(PathBuf::from("/sys/fs/cgroup/vmshare"))
    }

    #[test]
    fn auto_uses_logind_only_on_systemd_hosts_with_a_session() {
        let logind = Choice::Logind("4".into());
        let cgroup = Choice::Cgroup(PathBuf::from("/sys/fs/cgroup/vmshare"));
        assert_eq!(choose(Configured::Auto, true, Some("4"), root), Ok(logind));
        // Never out of systemd's tree, and never signals alone there: a
        // guest without a logind session is refused.
        assert!(choose(Configured::Auto, true, None, root).is_err());
        assert_eq!(choose(Configured::Auto, false, Some("4"), root), Ok(cgroup));
        assert_eq!(
            choose(Configured::Auto, false, None, || None),
            Ok(Choice::Signal)
        );
    }

    #[test]
    fn explicit_backends_are_obeyed_or_refuse() {
        assert!(matches!(
            choose(Configured::Logind, false, Some("c2"), root),
            Ok(Choice::Logind(_))
        ));
        assert!(choose(Configured::Logind, true, None, root).is_err());
        assert!(matches!(
            choose(Configured::Cgroup, true, Some("4"), root),
            Ok(Choice::Cgroup(_))
        ));
        assert!(choose(Configured::Cgroup, false, None, || None).is_err());
        assert_eq!(
            choose(Configured::Signal, true, Some("4"), root),
            Ok(Choice::Signal)
        );
    }
}
