//! The agent's status: written to `/vmshare/v1/status/<vm-id>` for the
//! control plane and to the run dir for `vmshare-sync status`, the same
//! JSON in both places.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use vmshare::grant::civil;
use vmshare::sys::fsutil;

use crate::config::Mode;
use crate::document::Outcome;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub vm_id: String,
    pub mode: Mode,
    pub max_staleness_ms: u64,
    /// What the grant file says and why.
    pub outcome: Outcome,
    /// The etcd cluster the grant file was read from: the `cluster_id` of
    /// etcd's response headers, in decimal (a string, so that JSON readers
    /// with 53-bit numbers do not round it). `None` until a read, and again
    /// once that cluster's history is found to have gone back.
    pub cluster_id: Option<String>,
    /// The store revision, in that cluster, as of which the grant file
    /// reflects the key: the revision of the read or of the last event
    /// applied (while stale: the last one before contact was lost). Never a
    /// revision learnt from another history.
    pub applied_revision: Option<i64>,
    /// The key's `mod_revision` of the document the grant file reflects
    /// (valid or not); `None` when the key did not exist.
    pub applied_mod_revision: Option<i64>,
    /// The last problem: an invalid document, a lost connection, a failed
    /// write. `None` once everything is in order.
    pub last_error: Option<String>,
    /// Seconds since the epoch of the last confirmed contact with etcd.
    pub last_contact: Option<i64>,
}

impl Status {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the status the agent left in the run dir, if any.
    pub fn read(path: &Path) -> Result<Option<Status>, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Saves the status in the run dir: replaced whole, not synced (a
    /// tmpfs; a reboot starts from no contact anyway).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        fsutil::atomic_replace_volatile(path, self.to_json().as_bytes(), 0o644)
    }

    /// For people: one field a line.
    pub fn render(&self, now: i64) -> String {
        let state = match &self.outcome {
            Outcome::Applied { .. } => "applied",
            Outcome::Invalid { .. } => "invalid document: sharing nothing",
            Outcome::Missing { .. } => "no grants key: sharing nothing",
            Outcome::Stale { .. } if self.mode == Mode::Strict => "no contact: sharing nothing",
            // best_effort never empties the file: only its first contact
            // is still to come.
            Outcome::Stale { .. } => "no contact yet: grant file kept as it was",
        };
        let mut out = String::new();
        let _ = writeln!(out, "vm:               {}", self.vm_id);
        let _ = writeln!(out, "state:            {state}");
        let revision = self
            .applied_revision
            .map_or_else(|| "none".to_string(), |r| r.to_string());
        let _ = writeln!(out, "applied revision: {revision}");
        let key = self
            .applied_mod_revision
            .map_or_else(|| "none".to_string(), |r| r.to_string());
        let _ = writeln!(out, "key revision:     {key}");
        let cluster = self.cluster_id.as_deref().unwrap_or("none");
        let _ = writeln!(out, "etcd cluster:     {cluster}");
        let contact = match self.last_contact {
            Some(t) => format!("{} ({} ago)", civil::utc(t), civil::span(now - t)),
            None => "never".into(),
        };
        let _ = writeln!(out, "last contact:     {contact}");
        let mode = match self.mode {
            Mode::Strict => "strict",
            Mode::BestEffort => "best_effort",
        };
        let _ = writeln!(
            out,
            "mode:             {mode} (max_staleness {} ms)",
            self.max_staleness_ms
        );
        let error = self.last_error.as_deref().unwrap_or("none");
        let mut lines = error.lines();
        let _ = writeln!(out, "last error:       {}", lines.next().unwrap_or(""));
        for line in lines {
            let _ = writeln!(out, "                  {line}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn round_trips_and_renders() {
        let s = Status {
            vm_id: "vm-1".into(),
            mode: Mode::Strict,
            max_staleness_ms: 300_000,
            outcome: Outcome::Invalid {
                revision: 5,
                error: "line 1, column 2: bad".into(),
            },
            cluster_id: Some("14841639068965178418".into()),
            applied_revision: Some(8),
            applied_mod_revision: Some(5),
            last_error: Some("line 1, column 2: bad\nline 3, column 1: worse".into()),
            last_contact: Some(1_700_000_000),
        };
        let json = s.to_json();
        assert!(json.contains("\"state\":\"invalid\""), "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
        let text = s.render(1_700_000_042);
        assert!(text.contains("applied revision: 8\n"), "{text}");
        assert!(text.contains("key revision:     5\n"), "{text}");
        assert!(
            text.contains("etcd cluster:     14841639068965178418\n"),
            "{text}"
        );
        assert!(text.contains("2023-11-14T22:13:20Z (42s ago)"), "{text}");
        assert!(
            text.contains("\n                  line 3, column 1: worse\n"),
            "{text}"
        );
    }

    /// A status saved by an agent from before these fields (on the same
    /// boot, across an upgrade) still reads, as nothing known of them.
    #[test]
    fn a_status_without_the_cluster_fields_reads() {
        let old = r#"{"vm_id":"vm-1","mode":"strict","max_staleness_ms":300000,
            "outcome":{"state":"applied","revision":34},"applied_revision":34,
            "last_error":null,"last_contact":1700000000}"#;
        let s: Status = serde_json::from_str(old).unwrap();
        assert_eq!((s.cluster_id, s.applied_mod_revision), (None, None));
        assert_eq!(s.applied_revision, Some(34));
    }
}
