//! The daemon's one job done once: read the grant file, swap the snapshot,
//! and end every recorded session whose grant is gone. Holds no state that
//! cannot be rebuilt from the grant file and the run dir.

use std::fs;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use crate::audit;
use crate::cgroup;
use crate::config::Config;
use crate::enforce;
use crate::policy::SystemAccounts;
use crate::sessions::{self, SessionRecord};
use crate::snapshot;
use crate::source::{self, Loaded, Outcome};
use crate::syslog::Level;

/// How long a session group may exist without a record.
const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// What one pass did, for callers and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub valid: bool,
    pub racy: bool,
    pub killed: Vec<String>,
    pub forgotten: Vec<String>,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Whether the grant file as loaded still lets this session's guest in
/// with this session's key.
pub fn still_allowed(loaded: &Loaded, record: &SessionRecord) -> bool {
    let Some(policy) = loaded.policy() else {
        return false;
    };
    policy.owners.get(&record.owner).is_some_and(|access| {
        access.keys.iter().any(|k| {
            k.guest == record.guest
                && k.algorithm == record.key_algorithm
                && k.blob == record.key_blob
        })
    })
}

/// Makes the run dir and its sessions dir if they are missing.
pub fn prepare_run_dir(config: &Config) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&config.run_dir)?;
    fs::set_permissions(&config.run_dir, fs::Permissions::from_mode(0o755))?;
    sessions::ensure_dir(&config.sessions_dir())
}

/// Reads the grant file, writes the snapshot, ends revoked sessions.
pub fn apply(config: &Config, reason: &str) -> Pass {
    let started = Instant::now();
    let loaded = source::load(&config.grants, &SystemAccounts);
    let mut pass = Pass {
        valid: matches!(loaded.outcome, Outcome::Valid { .. }),
        ..Pass::default()
    };
    match &loaded.outcome {
        Outcome::Missing => warn!(
            grants = %config.grants.display(), reason,
            "grant file missing: nothing is shared"
        ),
        Outcome::Invalid(errors) => {
            for e in &errors.errors {
                error!(
                    reason,
                    "grant file invalid, no guest gets in: {}",
                    e.in_file(&errors.file)
                );
            }
        }
        Outcome::Valid { .. } => {
            for note in loaded.notes() {
                warn!("{}", note.in_file(&config.grants));
            }
        }
    }
    if let Err(e) = prepare_run_dir(config) {
        error!(run_dir = %config.run_dir.display(), "cannot prepare run dir: {e}");
    }
    let previous = snapshot::read_header(&config.snapshot_path()).ok();
    let written_ns = now_ns();
    match snapshot::write(&config.snapshot_path(), &loaded, written_ns) {
        Ok(()) => {
            pass.racy = loaded.version.is_some_and(|v| {
                v.mtime_ns.max(v.ctime_ns) + snapshot::RACY_WINDOW_NS >= written_ns
            });
        }
        // Lookups then read the grant file themselves: slower, still right.
        Err(e) => error!(path = %config.snapshot_path().display(), "cannot write snapshot: {e}"),
    }
    if previous.is_none_or(|p| p.sha256 != loaded.sha256 || p.valid != pass.valid) {
        let state = match &loaded.outcome {
            Outcome::Missing => "grant file applied: missing, nothing is shared",
            Outcome::Invalid(_) => "grant file applied: INVALID, no guest gets in",
            Outcome::Valid { .. } => "grant file applied",
        };
        audit::record(
            "vmshared",
            Level::Notice,
            &audit::Event {
                kind: Some(audit::Kind::GrantChange),
                message: &format!("{state} (sha256 {}, {reason})", loaded.sha256),
                ..audit::Event::default()
            },
        );
    }
    enforce_sessions(config, &loaded, &mut pass);
    info!(
        reason,
        valid = pass.valid,
        sha256 = %loaded.sha256,
        killed = pass.killed.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "grant file applied"
    );
    pass
}

fn enforce_sessions(config: &Config, loaded: &Loaded, pass: &mut Pass) {
    let dir = config.sessions_dir();
    let (records, bad) = sessions::list(&dir);
    for (path, e) in bad {
        // A record we cannot read is a session we cannot judge: end it.
        error!(record = %path.display(), "unreadable session record: {e}; ending that session");
        if let (Some(stem), Some(root)) = (
            path.file_stem().and_then(|s| s.to_str()),
            cgroup::session_root(config),
        ) {
            let group = root.join(stem);
            if let Err(e) = cgroup::kill(&group, enforce::KILL_TIMEOUT) {
                error!(group = %group.display(), "{e}");
            }
        }
        let _ = fs::remove_file(&path);
    }
    // Start every kill before waiting on any, so one slow session does not
    // delay the others.
    let mut ending = Vec::new();
    for record in records {
        if !enforce::is_live(&record) {
            forget(&dir, &record);
            pass.forgotten.push(record.id.clone());
            continue;
        }
        if still_allowed(loaded, &record) {
            continue;
        }
        if let Some(group) = &record.cgroup {
            let _ = fs::write(group.join("cgroup.kill"), "1");
        }
        ending.push(record);
    }
    for record in ending {
        let started = Instant::now();
        match enforce::terminate(config, &record) {
            Ok(method) => {
                audit::record(
                    "vmshared",
                    Level::Notice,
                    &audit::Event {
                        kind: Some(audit::Kind::Kill),
                        owner: &record.owner,
                        guest: &record.guest,
                        fingerprint: &record.fingerprint,
                        remote: &record.remote,
                        session: &record.id,
                        message: "guest session ended: grant revoked",
                    },
                );
                info!(
                    event = "kill",
                    method = %method,
                    owner = %record.owner,
                    guest = %record.guest,
                    fingerprint = %record.fingerprint,
                    remote = %record.remote,
                    session = %record.id,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "guest session ended: grant revoked"
                );
                let _ = sessions::remove(&dir, &record.id);
                pass.killed.push(record.id.clone());
            }
            Err(e) => error!(
                method = %enforce::method(config, &record),
                owner = %record.owner, guest = %record.guest, session = %record.id,
                "could not end revoked session: {e}"
            ),
        }
    }
    sweep_empty_groups(config, &dir);
}

fn forget(dir: &Path, record: &SessionRecord) {
    if let Some(group) = &record.cgroup {
        let _ = cgroup::remove(group);
    }
    let _ = sessions::remove(dir, &record.id);
    info!(owner = %record.owner, guest = %record.guest, session = %record.id, "session over, record forgotten");
}

/// Removes session groups that have neither processes nor a record.
fn sweep_empty_groups(config: &Config, dir: &Path) {
    let Some(root) = cgroup::session_root(config) else {
        return;
    };
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !path.is_dir() || dir.join(SessionRecord::file_name(name)).exists() {
            continue;
        }
        if !cgroup::is_populated(&path).unwrap_or(true) {
            let _ = cgroup::remove(&path);
            continue;
        }
        // A group with processes but no record: its hook died between
        // confining and recording. Nobody vouches for it; end it once it is
        // older than any hook could take.
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|a| a > ORPHAN_GRACE) {
            warn!(group = %path.display(), "ending unrecorded session group");
            if let Err(e) = cgroup::kill(&path, enforce::KILL_TIMEOUT) {
                error!(group = %path.display(), "{e}");
            }
        }
    }
}
