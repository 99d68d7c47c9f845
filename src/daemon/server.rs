//! The daemon side of the control socket. Each connection is served in its
//! own task (with a size limit and a timeout); the answer is worked out on
//! the blocking pool, so a slow one (a `leave` waiting for the edit lock)
//! never holds up the main loop. A request that changed the grant file asks
//! the loop for a pass once its answer is out.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::warn;

use super::leave;
use crate::control::{self, Request, Response, SessionInfo, TIMEOUT};
use crate::session::backend::cgroup;
use crate::store::config::Config;
use crate::store::records::{self, SessionRecord};
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

/// Serves every connection; `passes` asks the main loop for a pass.
pub async fn accept_loop(
    listener: UnixListener,
    config: Arc<Config>,
    passes: mpsc::Sender<&'static str>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (config, passes) = (Arc::clone(&config), passes.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, config, passes).await {
                        warn!("control connection: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(
    mut stream: UnixStream,
    config: Arc<Config>,
    passes: mpsc::Sender<&'static str>,
) -> io::Result<()> {
    let cred = stream.peer_cred()?;
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
    let (uid, pid) = (cred.uid(), cred.pid());
    let answered = tokio::task::spawn_blocking(move || answer(&config, request, uid, pid)).await;
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

/// Answers one request from `uid` (process `pid`); blocks (a confirmed
/// `leave` waits a little for the edit lock). Returns a reason to
/// re-apply the grant file when the request changed it.
fn answer(
    config: &Config,
    request: Request,
    uid: u32,
    pid: Option<i32>,
) -> (Response, Option<&'static str>) {
    let session = pid.and_then(|pid| session_of(config, pid, uid));
    match request {
        Request::Whoami => (
            match &session {
                Some(r) => Response::Guest(info_of(r)),
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
    }
}

fn not_in_a_guest_session() -> (Response, Option<&'static str>) {
    let message = "not in a guest session: only a guest can leave, from inside their session";
    let message = message.into();
    (Response::Error { message }, None)
}

fn info_of(r: &SessionRecord) -> SessionInfo {
    SessionInfo {
        owner: r.owner.clone(),
        guest: r.guest.clone(),
        session: r.id.clone(),
        fingerprint: r.fingerprint.clone(),
        remote: r.remote.clone(),
        since: r.since,
    }
}

/// The live guest session process `pid` belongs to: by its cgroup (its own
/// or logind's scope), or by descent from the session's sshd monitor. Nothing the caller can set
/// (environment, arguments) plays a part.
fn session_of(config: &Config, pid: i32, uid: u32) -> Option<SessionRecord> {
    let (records, _) = records::list(&config.sessions_dir());
    let group = cgroup::group_of(pid);
    let ancestors = procfs::ancestors(pid);
    records.into_iter().find(|r| {
        let by_group = group
            .as_deref()
            .is_some_and(|g| r.placement.backend().holds(r, g));
        let by_descent = ancestors
            .iter()
            .any(|a| a.pid == r.monitor_pid && a.start == r.monitor_start);
        (by_group || by_descent) && (uid == r.uid || uid == 0)
    })
}
