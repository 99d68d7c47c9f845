//! What a guest can do from inside their session: `whoami` and `leave`.
//! Both ask the daemon, which knows the caller's session from the socket's
//! peer credentials (its cgroup or sshd ancestry), never from anything the
//! caller can set.

use std::process::ExitCode;

use serde::Serialize;

use super::output;
use crate::control::{self, Request, Response};
use crate::grant::limits::Limits;
use crate::store::config::Config;

fn ask(config: &Config, request: &Request) -> Result<Response, ExitCode> {
    let socket = config.socket_path();
    control::call(&socket, request).map_err(|e| {
        eprintln!(
            "vmshare: cannot reach vmshared at {}: {e} (is the daemon running?)",
            socket.display()
        );
        ExitCode::FAILURE
    })
}

pub fn whoami(config: &Config, json: bool) -> ExitCode {
    let response = match ask(config, &Request::Whoami) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(i64::MAX, |d| d.as_secs() as i64);
    match response {
        Response::Guest(s) => {
            let limits = limits_of(config, &s);
            if json {
                return output::print_json(&WhoamiJson::guest(&s, limits.as_ref(), now));
            }
            println!(
                "guest {} in {}'s account (session {}, key {}, from {}, since {})",
                s.guest,
                s.owner,
                s.session,
                s.fingerprint,
                s.remote,
                output::utc(s.since)
            );
            let access = match limits {
                Ok(limits) => limits.describe(now),
                Err(why) => why,
            };
            println!("{access}; {}", admin_text(s.admin));
            ExitCode::SUCCESS
        }
        Response::NotAGuest { uid } if json => output::print_json(&WhoamiJson::not_a_guest(uid)),
        Response::NotAGuest { uid } => {
            println!("not a guest session (uid {uid}): an owner's own login or no login at all");
            ExitCode::SUCCESS
        }
        other if json => output::print_json(&other),
        other => failed(other),
    }
}

fn admin_text(admin: bool) -> &'static str {
    if admin {
        "may become root (admin)"
    } else {
        "may not become root"
    }
}

/// `whoami --json`: the daemon's answer and the guest's limits, with the
/// field names of `status --json`.
#[derive(Debug, Serialize)]
struct WhoamiJson<'a> {
    format: u32,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    session: Option<&'a control::SessionInfo>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    limits: Option<LimitsJson>,
    /// Why the limits are unknown or gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    access_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct LimitsJson {
    expires: Option<String>,
    expires_in: Option<i64>,
    expired: bool,
    from: Option<Vec<String>>,
    forwarding: bool,
}

impl<'a> WhoamiJson<'a> {
    const FORMAT: u32 = 1;

    fn guest(s: &'a control::SessionInfo, limits: Result<&Limits, &String>, now: i64) -> Self {
        let (limits, access_error) = match limits {
            Ok(l) => (
                Some(LimitsJson {
                    expires: l.expires.map(output::utc),
                    expires_in: l.expires.map(|at| (at - now).max(0)),
                    expired: l.expired(now),
                    from: l.from_texts(),
                    forwarding: l.forwarding,
                }),
                None,
            ),
            Err(why) => (None, Some(why.clone())),
        };
        WhoamiJson {
            format: Self::FORMAT,
            result: "guest",
            uid: None,
            session: Some(s),
            limits,
            access_error,
        }
    }

    fn not_a_guest(uid: u32) -> Self {
        WhoamiJson {
            format: Self::FORMAT,
            result: "not_a_guest",
            uid: Some(uid),
            session: None,
            limits: None,
            access_error: None,
        }
    }
}

/// What limits the session's guest, as the login notice says it: read from
/// the owner's current key lines (the grant file or its snapshot), which
/// every account may read. `Err`: what to say instead.
fn limits_of(config: &Config, s: &control::SessionInfo) -> Result<Limits, String> {
    let lines =
        crate::store::lookup::owner_lines(config, &s.owner, &crate::sys::accounts::SystemAccounts);
    // Every key of a guest carries the guest's limits.
    let line = lines.as_ref().ok().and_then(|a| {
        a.lines
            .lines()
            .filter_map(crate::grant::policy::KeyLine::parse)
            .find(|l| l.guest == s.guest)
            .and_then(|l| l.limits())
    });
    match (line, lines) {
        (Some(limits), _) => Ok(limits),
        (None, Err(e)) => Err(format!("access: unknown ({e})")),
        (None, Ok(_)) => Err("access: none (the grant is gone; the session is being ended)".into()),
    }
}

/// A refusal or an answer this verb does not expect.
fn failed(response: Response) -> ExitCode {
    match response {
        Response::Error { message } => eprintln!("vmshare: {message}"),
        other => eprintln!("vmshare: unexpected answer from vmshared: {other:?}"),
    }
    ExitCode::FAILURE
}

/// Leaving takes two requests: the daemon writes a code to the terminal of
/// the caller's SSH login, and the guest types it back. The code is read
/// from the terminal (/dev/tty), never from stdin.
pub fn leave(config: &Config) -> ExitCode {
    match ask(config, &Request::Leave) {
        Ok(Response::Confirm { .. }) => {}
        Ok(other) => return failed(other),
        Err(code) => return code,
    }
    let code = match read_code() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmshare: cannot read the code from your terminal: {e}");
            return ExitCode::FAILURE;
        }
    };
    match ask(config, &Request::ConfirmLeave { code }) {
        Ok(Response::Left { owner, guest }) => {
            println!("{guest} left {owner}'s VM; your sessions are ending now.");
            ExitCode::SUCCESS
        }
        Ok(other) => failed(other),
        Err(code) => code,
    }
}

fn read_code() -> std::io::Result<String> {
    use std::io::{BufRead, Read, Write};
    let mut terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    write!(terminal, "vmshare: type the code shown above to leave: ")?;
    terminal.flush()?;
    let mut line = String::new();
    std::io::BufReader::new(terminal.take(256)).read_line(&mut line)?;
    Ok(line)
}
