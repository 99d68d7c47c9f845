//! What a guest can do from inside their session: `whoami` and `leave`.
//! Both ask the daemon, which knows the caller's session from the socket's
//! peer credentials (its cgroup or sshd ancestry), never from anything the
//! caller can set.

use std::process::ExitCode;

use super::output;
use crate::control::{self, Request, Response};
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
    if json {
        return output::print_json(&response);
    }
    match response {
        Response::Guest(s) => {
            println!(
                "guest {} in {}'s account (session {}, key {}, from {}, since {})",
                s.guest,
                s.owner,
                s.session,
                s.fingerprint,
                s.remote,
                output::utc(s.since)
            );
            println!("{}", limits_of(config, &s));
            ExitCode::SUCCESS
        }
        Response::NotAGuest { uid } => {
            println!("not a guest session (uid {uid}): an owner's own login or no login at all");
            ExitCode::SUCCESS
        }
        other => failed(other),
    }
}
/// What limits the session's guest, as the login notice says it: read from
/// the owner's current key lines (the grant file or its snapshot), which
/// every account may read.
fn limits_of(config: &Config, s: &control::SessionInfo) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(i64::MAX, |d| d.as_secs() as i64);
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
        (Some(limits), _) => limits.describe(now),
        (None, Err(e)) => format!("access: unknown ({e})"),
        (None, Ok(_)) => "access: none (the grant is gone; the session is being ended)".into(),
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
