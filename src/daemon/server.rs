//! The daemon side of the control socket. Each connection is served in its
//! own task (with a size limit and a timeout); the answer is worked out on
//! the blocking pool, so a slow one (a `leave` waiting for the edit lock)
//! never holds up the main loop. A request that changed the grant file asks
//! the loop for a pass once its answer is out.
//!
//! Connections are capped in all and per uid ([`slots`]); one over a cap is
//! closed as soon as it is accepted. The caller is pinned when accepted: its
//! uid, and its pid with that process's start time, so a request whose
//! process exited (and whose pid may be someone else's by then) is refused.
//! Linux 6.5's SO_PEERPIDFD (Debian 13's 6.12 has it) would pin the process
//! itself from connect on, but neither nix 0.29 nor rustix 1.1 has a safe
//! getter for it, tokio and std none either, and the crate has no unsafe
//! code; a pidfd opened at accept pins no more than the start time does.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::warn;

use super::slots::{self, Slot};
use super::{leave, portal};
use crate::control::{self, Request, Response, SessionInfo, TIMEOUT};
use crate::store::config::Config;
use crate::store::records::{self, SessionRecord};
use crate::sys::accounts::SystemAccounts;
use crate::sys::procfs;

pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    // Guests (running as the owner's account) must reach it for whoami and
    // leave; what each caller may do is decided from its credentials.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// After accepting failed (out of descriptors, say), wait this long: the
/// backlog waits, the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// After binding the control socket failed, bind again this often;
/// enforcement goes on meanwhile.
const REBIND: Duration = Duration::from_secs(1);

/// Serves the control socket for as long as the daemon runs: `listener`
/// if binding it at start worked, else it is bound again until that works.
/// `passes` asks the main loop for a pass.
pub async fn run(
    listener: Option<UnixListener>,
    config: Arc<Config>,
    passes: mpsc::Sender<&'static str>,
    slots: slots::Shared,
) {
    let listener = match listener {
        Some(l) => l,
        None => loop {
            tokio::time::sleep(REBIND).await;
            match bind(&config.socket_path()) {
                Ok(l) => break l,
                Err(e) => warn!("control socket: cannot bind yet: {e}"),
            }
        },
    };
    let mut refusals = Refusals {
        count: 0,
        reported: None,
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("control socket accept: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Some((caller, slot)) = admit(&stream, &slots, &mut refusals) else {
            continue;
        };
        let (config, passes) = (Arc::clone(&config), passes.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(stream, caller, config, passes).await {
                warn!("control connection: {e}");
            }
            drop(slot);
        });
    }
}

/// Who called, as fixed when the connection was accepted.
#[derive(Debug, Clone, Copy)]
struct Caller {
    uid: u32,
    process: Process,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Process {
    /// The pid and the start time it had at accept.
    Pinned { pid: i32, start: u64 },
    /// It had exited by then.
    Gone,
    /// The kernel did not say.
    Unknown,
}

impl Caller {
    /// The caller as it is now: read as soon as the connection is accepted.
    fn pin(cred: UCred) -> Caller {
        let process = match cred.pid() {
            Some(pid) => match procfs::stat(pid) {
                Ok(s) => Process::Pinned {
                    pid,
                    start: s.start,
                },
                Err(_) => Process::Gone,
            },
            None => Process::Unknown,
        };
        Caller {
            uid: cred.uid(),
            process,
        }
    }
}

/// Takes a slot and pins the caller, or refuses the connection: a short
/// error frame if the socket buffer takes it (never waiting), then close.
fn admit(
    stream: &UnixStream,
    slots: &slots::Shared,
    refusals: &mut Refusals,
) -> Option<(Caller, Slot)> {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            warn!("control connection: no peer credentials: {e}");
            return None;
        }
    };
    let slot = match slots.take(cred.uid()) {
        Ok(slot) => slot,
        Err(refused) => {
            refusals.note(cred.uid(), refused);
            let reply = Response::Error {
                message: refused.message().into(),
            };
            if let Ok(frame) = control::encode(&reply) {
                let _ = stream.try_write(&frame);
            }
            return None;
        }
    };
    Some((Caller::pin(cred), slot))
}

/// Connections refused over the caps, logged at most once per
/// [`REPORT_REFUSALS`]: a flood must not flood the log too.
struct Refusals {
    count: u64,
    reported: Option<tokio::time::Instant>,
}

const REPORT_REFUSALS: Duration = Duration::from_secs(10);

impl Refusals {
    fn note(&mut self, uid: u32, why: slots::Refused) {
        self.count += 1;
        if self
            .reported
            .is_some_and(|at| at.elapsed() < REPORT_REFUSALS)
        {
            return;
        }
        warn!(
            uid,
            "refused {} control connection(s) over the caps since the last report ({why:?})",
            self.count
        );
        self.count = 0;
        self.reported = Some(tokio::time::Instant::now());
    }
}

async fn serve(
    mut stream: UnixStream,
    caller: Caller,
    config: Arc<Config>,
    passes: mpsc::Sender<&'static str>,
) -> io::Result<()> {
    let read = async {
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix).await?;
        let mut body = vec![0u8; control::frame_len(prefix)?];
        stream.read_exact(&mut body).await?;
        control::decode_request(&body)
    };
    let request = match tokio::time::timeout(TIMEOUT, read).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let reply = Response::Error {
                message: format!("bad request: {e}"),
            };
            let _ = write(&mut stream, &reply).await;
            return Err(e);
        }
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not received in time",
            ))
        }
    };
    let answered = tokio::task::spawn_blocking(move || answer(&config, request, caller)).await;
    let (response, reapply) = answered.unwrap_or_else(|e| {
        let message = format!("internal error: {e}");
        (Response::Error { message }, None)
    });
    // The answer goes out before the pass that may end the caller's session.
    let _ = tokio::time::timeout(TIMEOUT, write(&mut stream, &response)).await;
    if let Some(reason) = reapply {
        let _ = passes.send(reason).await;
    }
    Ok(())
}

async fn write(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    stream.write_all(&control::encode(response)?).await?;
    stream.flush().await
}

/// Answers one request from `caller`; blocks (a `leave` waits up to
/// [`LEAVE_LOCK_WAIT`] for the edit lock). Returns a reason to re-apply the
/// grant file when the request changed it.
fn answer(config: &Config, request: Request, caller: Caller) -> (Response, Option<&'static str>) {
    let uid = caller.uid;
    let pid = match caller.process {
        Process::Pinned { pid, .. } => Some(pid),
        Process::Gone | Process::Unknown => None,
    };
    if let Request::PortalList { .. } | Request::PortalAnswer { .. } = request {
        return portal_answer(config, request, caller);
    }
    let session = match caller_session(config, caller) {
        Ok(session) => session,
        Err(CallerGone) => {
            let message = "caller went away before its request was answered".into();
            return (Response::Error { message }, None);
        }
    };
    match request {
        Request::Whoami => (
            match &session {
                Some(r) => Response::Guest(info_of(config, r)),
                None => Response::NotAGuest { uid },
            },
            None,
        ),
        Request::Reload if uid == 0 => {
            (Response::Reloaded { valid: true }, Some("reload requested"))
        }
        Request::Reload => (
            Response::Error {
                message: "only root may ask for a reload".into(),
            },
            None,
        ),
        Request::Leave => match (&session, pid) {
            (Some(r), Some(pid)) => (leave::start(r, pid), None),
            _ => not_in_a_guest_session(),
        },
        Request::ConfirmLeave { code } => match &session {
            Some(r) => leave::finish(config, r, &code),
            None => not_in_a_guest_session(),
        },
        Request::PortalList { .. } | Request::PortalAnswer { .. } => {
            portal_answer(config, request, caller)
        }
    }
}

/// A portal request: only from inside a recorded portal session, whose
/// process is still the caller's.
fn portal_answer(
    config: &Config,
    request: Request,
    caller: Caller,
) -> (Response, Option<&'static str>) {
    let refused = |message: &str| {
        let message = message.into();
        (Response::Error { message }, None)
    };
    let Process::Pinned { pid, start } = caller.process else {
        return refused("the portal's process could not be identified");
    };
    let session = portal::session_of(&config.portal_dir(), pid, caller.uid);
    if !procfs::is_alive(pid, start) {
        return refused("caller went away before its request was answered");
    }
    let Some(record) = session else {
        return refused(
            "not a guest portal session: answers are taken only from `ssh vmshare@HOST`",
        );
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(i64::MAX, |d| d.as_secs() as i64);
    match request {
        Request::PortalList { fingerprint } => {
            (portal::list(config, &record, &fingerprint, now), None)
        }
        Request::PortalAnswer {
            fingerprint,
            owner,
            answer,
        } => portal::answer(config, &record, &fingerprint, &owner, answer, now),
        _ => refused("not a portal request"),
    }
}

fn not_in_a_guest_session() -> (Response, Option<&'static str>) {
    let message = "not in a guest session: only a guest can leave, from inside their session";
    let message = message.into();
    (Response::Error { message }, None)
}

/// The session as `whoami` shows it; `admin` from the grant file as it is
/// now, the way the sudo, su and pkexec check reads it (off the loop).
fn info_of(config: &Config, r: &SessionRecord) -> SessionInfo {
    let loaded = crate::store::source::load(&config.grants, &SystemAccounts);
    let admin = loaded.grants().is_some_and(|g| {
        g.owner(&r.owner)
            .and_then(|o| o.guest(&r.guest).filter(|g| g.has_access(o.sharing)))
            .is_some_and(|g| g.admin)
    });
    SessionInfo {
        owner: r.owner.clone(),
        guest: r.guest.clone(),
        session: r.id.clone(),
        fingerprint: r.fingerprint.clone(),
        remote: r.remote.clone(),
        since: r.since,
        admin,
    }
}

/// The live guest session the caller is in, or the refusal for a caller
/// whose process is gone: its pid may name another process by now. The pin
/// is checked after the session is found, so what was found is the
/// caller's (a pid is not reused while its process exists).
fn caller_session(config: &Config, caller: Caller) -> Result<Option<SessionRecord>, CallerGone> {
    match caller.process {
        Process::Pinned { pid, start } => {
            let session = session_of(config, pid, caller.uid);
            procfs::is_alive(pid, start)
                .then_some(session)
                .ok_or(CallerGone)
        }
        Process::Gone => Err(CallerGone),
        Process::Unknown => Ok(None),
    }
}

/// The caller's process exited before its request was answered.
struct CallerGone;

/// The live guest session process `pid` belongs to: by its cgroup (its own
/// or logind's scope), or by descent from the session's sshd monitor. Nothing the caller can set
/// (environment, arguments) plays a part.
fn session_of(config: &Config, pid: i32, uid: u32) -> Option<SessionRecord> {
    let (records, _) = records::list(&config.sessions_dir());
    crate::session::membership::session_of(&records, pid)
        .filter(|r| uid == r.uid || uid == 0)
        .cloned()
}
