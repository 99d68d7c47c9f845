//! How sessions are confined when they open and ended when their grant goes:
//! logind's own session scope (hosts with systemd as PID 1), a cgroup v2
//! group of their own (hosts without systemd), or signals to the session's
//! process tree as the last resort.

pub mod cgroup;
pub mod logind;

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::store::config::{Backend, Config};
use crate::store::records::SessionRecord;
use crate::sys::procfs;

/// How long ending one session may take before it is reported as failed.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a new session is put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Left in logind's scope for the session; ended through logind.
    Logind { session: String },
    /// In `root/<session id>`.
    Cgroup { root: PathBuf },
    /// Left where it is; ended by signalling its process tree.
    Signal,
}

/// Chooses the placement for a new session from the configured backend and
/// the logind session pam_systemd made for it, if any.
pub fn placement(config: &Config, logind_session: Option<&str>) -> Result<Placement, String> {
    choose(
        config.enforcement.backend,
        logind::systemd_booted(),
        logind_session,
        || cgroup::session_root(config),
    )
}

/// The choice itself. `auto`: logind where systemd is PID 1 and the session
/// has a logind id; on a systemd host without one, signals, since moving
/// processes out of systemd's tree breaks its bookkeeping; elsewhere cgroup
/// v2 where mounted, else signals.
pub fn choose(
    backend: Backend,
    systemd_booted: bool,
    logind_session: Option<&str>,
    cgroup_root: impl FnOnce() -> Option<PathBuf>,
) -> Result<Placement, String> {
    let logind = logind_session.map(|id| Placement::Logind {
        session: id.to_string(),
    });
    match backend {
        Backend::Signal => Ok(Placement::Signal),
        Backend::Cgroup => cgroup_root()
            .map(|root| Placement::Cgroup { root })
            .ok_or_else(|| "backend is cgroup but no cgroup v2 hierarchy is mounted".to_string()),
        Backend::Logind => logind.ok_or_else(|| {
            "backend is logind but this login has no logind session \
             (is pam_systemd in the session stack before vmshare?)"
                .to_string()
        }),
        Backend::Auto if systemd_booted => Ok(logind.unwrap_or(Placement::Signal)),
        Backend::Auto => Ok(match cgroup_root() {
            Some(root) => Placement::Cgroup { root },
            None => Placement::Signal,
        }),
    }
}

/// How a recorded session is ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Cgroup(PathBuf),
    Logind(String),
    Signal,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Cgroup(_) => "cgroup",
            Method::Logind(_) => "logind",
            Method::Signal => "signal",
        })
    }
}

/// The way to end `record`: the same backend that placed it.
pub fn method(config: &Config, record: &SessionRecord) -> Method {
    if let Some(group) = &record.cgroup {
        return Method::Cgroup(group.clone());
    }
    let logind = match config.enforcement.backend {
        Backend::Logind => true,
        Backend::Auto => logind::systemd_booted(),
        Backend::Cgroup | Backend::Signal => false,
    };
    match &record.logind_session {
        Some(id) if logind => Method::Logind(id.clone()),
        _ => Method::Signal,
    }
}

/// Ends a session, whatever confined it. `Ok` (with how) once no process
/// of it is left.
pub fn terminate(config: &Config, record: &SessionRecord) -> Result<Method, String> {
    let method = method(config, record);
    match &method {
        Method::Cgroup(group) => cgroup::kill(group, KILL_TIMEOUT)
            .map_err(|e| format!("killing cgroup {}: {e}", group.display()))?,
        Method::Logind(id) => {
            if let Err(e) = logind::terminate(id) {
                // The bus or logind is down: still end what can be reached.
                signal_tree(record)?;
                return Err(format!("{e}; signalled the session's process tree instead"));
            }
            wait_monitor_gone(record)?;
        }
        Method::Signal => signal_tree(record)?,
    }
    Ok(method)
}

/// Waits until the session's sshd monitor has exited (logind kills the
/// scope asynchronously).
fn wait_monitor_gone(record: &SessionRecord) -> Result<(), String> {
    let deadline = std::time::Instant::now() + KILL_TIMEOUT;
    while procfs::is_alive(record.monitor_pid, record.monitor_start) {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "sshd process {} still runs {KILL_TIMEOUT:?} after logind ended the session",
                record.monitor_pid
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
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

/// Whether any process of the session is still alive. A logind session
/// outlives its sshd process while processes it left behind run.
pub fn is_live(record: &SessionRecord) -> bool {
    match &record.cgroup {
        Some(group) => cgroup::is_populated(group).unwrap_or(false),
        None => {
            procfs::is_alive(record.monitor_pid, record.monitor_start)
                || record
                    .logind_session
                    .as_deref()
                    .is_some_and(logind::session_listed)
        }
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
        let logind = Placement::Logind {
            session: "4".into(),
        };
        let cgroup = Placement::Cgroup {
            root: PathBuf::from("/sys/fs/cgroup/vmshare"),
        };
        assert_eq!(choose(Backend::Auto, true, Some("4"), root), Ok(logind));
        // Never out of systemd's tree, even without a logind session.
        assert_eq!(
            choose(Backend::Auto, true, None, root),
            Ok(Placement::Signal)
        );
        assert_eq!(choose(Backend::Auto, false, Some("4"), root), Ok(cgroup));
        assert_eq!(
            choose(Backend::Auto, false, None, || None),
            Ok(Placement::Signal)
        );
    }

    #[test]
    fn explicit_backends_are_obeyed_or_refuse() {
        assert!(matches!(
            choose(Backend::Logind, false, Some("c2"), root),
            Ok(Placement::Logind { .. })
        ));
        assert!(choose(Backend::Logind, true, None, root).is_err());
        assert!(matches!(
            choose(Backend::Cgroup, true, Some("4"), root),
            Ok(Placement::Cgroup { .. })
        ));
        assert!(choose(Backend::Cgroup, false, None, || None).is_err());
        assert_eq!(
            choose(Backend::Signal, true, Some("4"), root),
            Ok(Placement::Signal)
        );
    }

    #[test]
    fn sessions_end_the_way_they_were_placed() {
        let mut config = Config::default();
        config.enforcement.backend = Backend::Logind;
        let mut record = crate::store::records::tests::sample("s1-2");
        assert_eq!(method(&config, &record), Method::Signal);
        record.logind_session = Some("9".into());
        assert_eq!(method(&config, &record), Method::Logind("9".into()));
        config.enforcement.backend = Backend::Signal;
        assert_eq!(method(&config, &record), Method::Signal);
        record.cgroup = Some(PathBuf::from("/cg/s1-2"));
        assert_eq!(
            method(&config, &record),
            Method::Cgroup(PathBuf::from("/cg/s1-2"))
        );
    }
}
