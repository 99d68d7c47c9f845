//! `vmshare sessions [--json]`: live guest sessions, from the session
//! records in the run dir.

use std::process::ExitCode;

use serde::Serialize;

use super::output;
use crate::store::config::Config;
use crate::store::records::{self, SessionRecord};
use crate::sys::procfs;

/// Version of the JSON printed by `sessions --json` and `status --json`.
pub const JSON_FORMAT: u32 = 1;

#[derive(Debug, Serialize)]
struct SessionsJson {
    format: u32,
    sessions: Vec<SessionJson>,
    /// Records that could not be read.
    unreadable: Vec<UnreadableJson>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionJson {
    pub id: String,
    pub owner: String,
    pub guest: String,
    /// Remote address, as sshd reported it.
    pub from: String,
    /// Start, seconds since the epoch.
    pub since: i64,
    /// The key the guest logged in with, `SHA256:…`.
    pub fingerprint: String,
    /// Whether the session's sshd process still runs (a record without one
    /// is left over and is cleaned up by the daemon).
    pub alive: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnreadableJson {
    pub path: String,
    pub error: String,
}

impl SessionJson {
    pub fn of(r: &SessionRecord) -> Self {
        SessionJson {
            id: r.id.clone(),
            owner: r.owner.clone(),
            guest: r.guest.clone(),
            from: r.remote.clone(),
            since: r.since,
            fingerprint: r.fingerprint.clone(),
            alive: procfs::is_alive(r.monitor_pid, r.monitor_start),
        }
    }
}

/// The session records, for `sessions` and `status`.
pub fn load(config: &Config) -> (Vec<SessionJson>, Vec<UnreadableJson>) {
    let (records, bad) = records::list(&config.sessions_dir());
    let unreadable = bad
        .into_iter()
        .map(|(path, e)| UnreadableJson {
            path: path.display().to_string(),
            error: e.to_string(),
        })
        .collect();
    (records.iter().map(SessionJson::of).collect(), unreadable)
}

pub fn run(config: &Config, json: bool) -> ExitCode {
    let (sessions, unreadable) = load(config);
    if json {
        let out = SessionsJson {
            format: JSON_FORMAT,
            sessions,
            unreadable,
        };
        return super::status::print_json(&out);
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
    print!("{}", table(&rows));
    ExitCode::SUCCESS
}

/// Left-aligned columns, two spaces apart.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
