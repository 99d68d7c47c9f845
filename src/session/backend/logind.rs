//! Ending sessions through systemd-logind over the system bus. On a host
//! where systemd is PID 1, every login sits in logind's `session-ID.scope`
//! once pam_systemd has run; vmshare never moves it out of there and ends it
//! the way logind means sessions to be ended: `TerminateSession`, which
//! stops the whole scope (processes that escaped with `setsid` included).
//!
//! The daemon talks to logind over one connection ([`SystemBus`]), driven
//! by its runtime. zbus honours `DBUS_SYSTEM_BUS_ADDRESS`, so tests point
//! it at a private bus.

use std::path::Path;
use std::time::Duration;

use super::{signal, Backend, Login, Placement, KILL_TIMEOUT};
use crate::store::records::SessionRecord;
use crate::sys::procfs;

const DESTINATION: &str = "org.freedesktop.login1";
const PATH: &str = "/org/freedesktop/login1";
const MANAGER: &str = "org.freedesktop.login1.Manager";
/// logind's answer when the session is already gone.
const NO_SUCH_SESSION: &str = "org.freedesktop.login1.NoSuchSession";

/// How long connecting and one call may take together.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions in logind's scope. `session` is the login's logind session
/// when placing; ending reads it from the record.
pub struct LogindBackend {
    session: String,
}

impl LogindBackend {
    pub fn for_session(session: String) -> Self {
        LogindBackend { session }
    }
}

impl Backend for LogindBackend {
    /// Leaves the session in its scope, after checking that the logind id
    /// from the PAM environment is the one whose scope holds this login:
    /// revoke ends that session, so a wrong id would end someone else's.
    fn place(&self, login: &Login) -> Result<Placement, String> {
        let id = &self.session;
        let pid = login.monitor.pid;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| format!("cannot read the cgroup of sshd process {pid}: {e}"))?;
        if !valid_session_id(id) || session_in_proc_cgroup(&text) != Some(id) {
            return Err(format!(
                "XDG_SESSION_ID is {id:?}, but the login is not in {}: {}",
                scope_name(id),
                text.trim()
            ));
        }
        Ok(Placement::Logind {
            session: id.clone(),
        })
    }

    fn end(&self, record: &SessionRecord, bus: &SystemBus) -> Result<(), String> {
        if let Err(e) = bus.terminate(&self.session) {
            // The bus or logind is down: still end what can be reached.
            signal::signal_tree(record);
            return Err(format!("{e}; signalled the session's process tree instead"));
        }
        // logind stops the scope asynchronously.
        let monitor = procfs::Stat {
            pid: record.monitor_pid,
            ppid: 0,
            start: record.monitor_start,
        };
        if !crate::sys::kill::wait_exit(&monitor, KILL_TIMEOUT) {
            return Err(format!(
                "sshd process {} still runs {KILL_TIMEOUT:?} after logind ended the session",
                record.monitor_pid
            ));
        }
        Ok(())
    }

    /// A logind session outlives its sshd process while processes it left
    /// behind run.
    fn is_live(&self, record: &SessionRecord) -> bool {
        procfs::is_alive(record.monitor_pid, record.monitor_start) || session_listed(&self.session)
    }

    fn holds(&self, _record: &SessionRecord, group: &Path) -> bool {
        group
            .ancestors()
            .any(|g| session_of_cgroup(g) == Some(self.session.as_str()))
    }

    /// The session's group is its scope, where the hook runs too.
    fn outlives_login(&self, _record: &SessionRecord, login: &Login) -> bool {
        let Some(scope) = super::cgroup::group_of(login.hook) else {
            return false;
        };
        super::cgroup::pids(&scope).is_ok_and(|pids| login.outlived_by(&pids))
    }
}

/// Whether systemd is the service manager (`sd_booted()`): the directory
/// systemd creates at boot as PID 1.
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Whether `id` looks like a logind session id (`3`, `c12`): it is used in
/// a file name and a cgroup name, so nothing else is accepted.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The name of the scope unit (and cgroup) logind puts session `id` in.
pub fn scope_name(id: &str) -> String {
    format!("session-{id}.scope")
}

/// The logind session whose scope is the cgroup `path` (as in
/// /proc/PID/cgroup), if it is one.
pub fn session_of_cgroup(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let id = name.strip_prefix("session-")?.strip_suffix(".scope")?;
    valid_session_id(id).then_some(id)
}

/// The logind session whose scope holds a process, from its
/// /proc/PID/cgroup text: the cgroup v2 line, or systemd's named v1
/// hierarchy on hosts without a unified one.
pub fn session_in_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        if controllers.is_empty() || controllers == "name=systemd" {
            session_of_cgroup(Path::new(path))
        } else {
            None
        }
    })
}

/// Whether logind still has the session: it keeps a state file for it
/// until the last process of its scope is gone.
pub fn session_listed(id: &str) -> bool {
    valid_session_id(id) && Path::new("/run/systemd/sessions").join(id).exists()
}

/// The system bus as the daemon uses it: one connection, made at the first
/// call (a host whose sessions logind does not hold never connects) and
/// made again after it breaks, driven by the daemon's runtime. Calls come
/// from threads outside the runtime's own (a pass on the blocking pool,
/// the persistence watcher) and wait there for their answer, each bounded
/// by [`CALL_TIMEOUT`].
pub struct SystemBus {
    runtime: tokio::runtime::Handle,
    connection: tokio::sync::Mutex<Option<zbus::Connection>>,
}

impl SystemBus {
    /// A bus driven by `runtime`; its methods must not be called on the
    /// runtime's own threads.
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        SystemBus {
            runtime,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    /// Asks logind to end session `id`: `TerminateSession`, then
    /// `KillSession` with SIGKILL for everything in the scope, so a process
    /// that ignores SIGTERM does not outlive the revoke by the scope's stop
    /// timeout. A session logind no longer knows counts as ended.
    pub fn terminate(&self, id: &str) -> Result<(), String> {
        if !valid_session_id(id) {
            return Err(format!("invalid logind session id {id:?}"));
        }
        let sigkill = nix::sys::signal::Signal::SIGKILL as i32;
        self.runtime.block_on(async {
            let ended = |result: Result<(), zbus::Error>, call: &str| match result {
                Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == NO_SUCH_SESSION => {
                    Ok(())
                }
                other => other.map_err(|e| format!("logind {call}({id}): {e}")),
            };
            ended(
                self.call("TerminateSession", &(id,)).await,
                "TerminateSession",
            )?;
            ended(
                self.call("KillSession", &(id, "all", sigkill)).await,
                "KillSession",
            )
        })
    }

    /// Turns lingering off for `uid` (`SetUserLinger(uid, false, false)`),
    /// so its user manager, and what runs in it, stops once it has no
    /// session. logind asks polkit, which lets root do it.
    pub fn disable_linger(&self, uid: u32) -> Result<(), String> {
        self.runtime.block_on(self.set_linger_off(uid))
    }

    async fn set_linger_off(&self, uid: u32) -> Result<(), String> {
        self.call("SetUserLinger", &(uid, false, false))
            .await
            .map_err(|e| format!("logind SetUserLinger({uid}, false): {e}"))
    }

    /// One call to logind's manager, bounded by [`CALL_TIMEOUT`] with the
    /// connecting. A connection that failed other than by logind's answer
    /// is dropped, for the next call to make anew.
    async fn call<B>(&self, method: &str, body: &B) -> zbus::Result<()>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let called = tokio::time::timeout(CALL_TIMEOUT, async {
            let bus = self.connection().await?;
            bus.call_method(Some(DESTINATION), PATH, Some(MANAGER), method, body)
                .await
                .map(drop)
        })
        .await
        .unwrap_or_else(|_| {
            Err(zbus::Error::Failure(format!(
                "no answer within {CALL_TIMEOUT:?}"
            )))
        });
        if let Err(e) = &called {
            if !matches!(e, zbus::Error::MethodError(..)) {
                *self.connection.lock().await = None;
            }
        }
        called
    }

    async fn connection(&self) -> zbus::Result<zbus::Connection> {
        let mut slot = self.connection.lock().await;
        if let Some(bus) = slot.as_ref() {
            return Ok(bus.clone());
        }
        let bus = zbus::Connection::system().await?;
        *slot = Some(bus.clone());
        Ok(bus)
    }
}

/// [`SystemBus::disable_linger`] for a caller without the daemon's bus:
/// one connection for this one call, on a runtime of this thread's own.
pub fn disable_linger(uid: u32) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime for D-Bus: {e}"))?;
    let bus = SystemBus::new(runtime.handle().clone());
    runtime.block_on(bus.set_linger_off(uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_plain() {
        assert!(valid_session_id("3"));
        assert!(valid_session_id("c12"));
        for bad in ["", "../3", "3 4", "3\n", "session-3", &"9".repeat(65)] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn scope_cgroups_name_their_session() {
        let scope = Path::new("/user.slice/user-1000.slice/session-7.scope");
        assert_eq!(session_of_cgroup(scope), Some("7"));
        assert_eq!(
            session_of_cgroup(Path::new(&format!("/x/{}", scope_name("c3")))),
            Some("c3")
        );
        for other in [
            "/user.slice/user-1000.slice/user@1000.service/app.slice",
            "/system.slice/ssh.service",
            "/user.slice/session-.scope",
            "/",
        ] {
            assert_eq!(session_of_cgroup(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn proc_cgroup_text_names_the_session() {
        let unified = "0::/user.slice/user-1000.slice/session-12.scope\n";
        assert_eq!(session_in_proc_cgroup(unified), Some("12"));
        let legacy =
            "3:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/user-0.slice/session-c1.scope\n";
        assert_eq!(session_in_proc_cgroup(legacy), Some("c1"));
        assert_eq!(
            session_in_proc_cgroup("0::/system.slice/ssh.service\n"),
            None
        );
        assert_eq!(session_in_proc_cgroup("4:pids:/x/session-2.scope\n"), None);
    }
}
