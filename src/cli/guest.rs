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
            ExitCode::SUCCESS
        }
        Response::NotAGuest { uid } => {
            println!("not a guest session (uid {uid}): an owner's own login or no login at all");
            ExitCode::SUCCESS
        }
        Response::Error { message } => {
            eprintln!("vmshare: {message}");
            ExitCode::FAILURE
        }
        other => {
            eprintln!("vmshare: unexpected answer from vmshared: {other:?}");
            ExitCode::FAILURE
        }
    }
}

pub fn leave(config: &Config) -> ExitCode {
    match ask(config, &Request::Leave) {
        Ok(Response::Left { owner, guest }) => {
            println!("{guest} left {owner}'s VM; your sessions are ending now.");
            ExitCode::SUCCESS
        }
        Ok(Response::Error { message }) => {
            eprintln!("vmshare: {message}");
            ExitCode::FAILURE
        }
        Ok(other) => {
            eprintln!("vmshare: unexpected answer from vmshared: {other:?}");
            ExitCode::FAILURE
        }
        Err(code) => code,
    }
}
