//! `vmshare sessions [--json]`: live guest sessions, from the session
//! records in the run dir.

use std::process::ExitCode;

use serde::Serialize;

use super::output::{self, SESSIONS_FORMAT};
use super::session_list::{load_sessions, SessionJson, UnreadableJson};
use crate::store::config::Config;

#[derive(Debug, Serialize)]
struct SessionsJson {
    format: u32,
    sessions: Vec<SessionJson>,
    /// Records that could not be read.
    unreadable: Vec<UnreadableJson>,
}

pub fn run(config: &Config, json: bool) -> ExitCode {
    let (sessions, unreadable) = load_sessions(config);
    if json {
        let out = SessionsJson {
            format: SESSIONS_FORMAT,
            sessions,
            unreadable,
        };
        return output::print_json(&out);
    }
    for u in &unreadable {
        eprintln!("warning: unreadable session record {}: {}", u.path, u.error);
    }
    if sessions.is_empty() {
        println!("no guest sessions");
        return ExitCode::SUCCESS;
    }
    let mut rows = vec![[
        "OWNER".to_string(),
        "GUEST".into(),
        "FROM".into(),
        "SINCE".into(),
        "FINGERPRINT".into(),
        "ID".into(),
    ]];
    for s in &sessions {
        let id = if s.alive {
            s.id.clone()
        } else {
            format!("{} (process gone)", s.id)
        };
        rows.push([
            s.owner.clone(),
            s.guest.clone(),
            s.from.clone(),
            output::utc(s.since),
            s.fingerprint.clone(),
            id,
        ]);
    }
    print!("{}", output::table(&rows));
    ExitCode::SUCCESS
}
