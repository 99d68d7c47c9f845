//! The session records as `sessions` and `status` show them.

use serde::Serialize;

use crate::store::config::Config;
use crate::store::records::{self, SessionRecord};
use crate::sys::procfs;

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

/// A session record that could not be read.
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

/// The session records in the run dir, and those that could not be read.
pub fn load_sessions(config: &Config) -> (Vec<SessionJson>, Vec<UnreadableJson>) {
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
