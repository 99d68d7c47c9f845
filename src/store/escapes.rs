//! Reports of what guests may have left behind in owners' accounts (units
//! in the user manager, lingering, crontab and at jobs), as the daemon
//! found them: `<run_dir>/persistence.json`, read by `vmshare status`. The
//! same facts are `persistence` events in the audit trail.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sys::fsutil;

/// The file in the run dir.
pub const FILE: &str = "persistence.json";

/// One finding, as `vmshare status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Seconds since the epoch.
    pub at: i64,
    pub owner: String,
    /// The guest it is pinned on, or the guests that were present.
    pub guests: Vec<String>,
    /// `unit`, `unit-file`, `linger`, `crontab` or `at`.
    pub kind: String,
    /// The unit, file or job.
    pub what: String,
    /// What was or will be done: `ends with the guest's access`, `stopped`,
    /// `reported` ….
    pub action: String,
}

/// Writes the reports (atomically, 0644: nothing in them is secret), unless
/// the file already says the same.
pub fn write(run_dir: &Path, reports: &[Report]) -> io::Result<()> {
    let path = run_dir.join(FILE);
    let data = serde_json::to_vec_pretty(reports).map_err(io::Error::other)?;
    if fs::read(&path).ok().as_deref() == Some(data.as_slice()) {
        return Ok(());
    }
    fsutil::atomic_write(&path, &data, 0o644, None)
}

/// The reports; none when the daemon wrote none (or runs where there is no
/// user manager), or the file cannot be read.
pub fn read(run_dir: &Path) -> Vec<Report> {
    fs::read(run_dir.join(FILE))
        .ok()
        .and_then(|data| serde_json::from_slice(&data).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).is_empty());
        let r = Report {
            at: 1,
            owner: "alice".into(),
            guests: vec!["bob".into()],
            kind: "crontab".into(),
            what: "/var/spool/cron/crontabs/alice".into(),
            action: "reported".into(),
        };
        write(dir.path(), std::slice::from_ref(&r)).unwrap();
        assert_eq!(read(dir.path()), vec![r]);
        fs::write(dir.path().join(FILE), "{").unwrap();
        assert!(read(dir.path()).is_empty());
    }
}
