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

/// What compiling the grant file gave, as the compiling process reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Compiled {
    /// `valid`, `invalid` or `missing`.
    pub state: String,
    pub sha256: String,
    /// The snapshot was written (and so can answer for sessions).
    pub snapshot_written: bool,
    pub racy: bool,
    /// Errors (for an invalid file) or notes, rendered `file:line:col: …`.
    pub findings: Vec<String>,
}

/// Reads the grant file and writes the snapshot. The daemon runs this in a
/// short-lived child process (`vmshared --compile`), so the memory a large
/// grant file needs is returned to the system when the child exits.
pub fn compile(config: &Config) -> (Compiled, Loaded) {
    let loaded = source::load(&config.grants, &SystemAccounts);
    let (state, findings) = match &loaded.outcome {
        Outcome::Missing => ("missing", Vec::new()),
        Outcome::Invalid(errors) => (
            "invalid",
            errors
                .errors
                .iter()
                .map(|e| e.in_file(&errors.file).to_string())
                .collect(),
        ),
        Outcome::Valid { .. } => (
            "valid",
            loaded
                .notes()
                .iter()
                .map(|n| n.in_file(&config.grants).to_string())
                .collect(),
        ),
    };
    let _ = prepare_run_dir(config);
    let written_ns = now_ns();
    let written = snapshot::write(&config.snapshot_path(), &loaded, written_ns);
    let compiled = Compiled {
        state: state.to_string(),
        sha256: loaded.sha256.clone(),
        snapshot_written: written.is_ok(),
        racy: written.is_ok()
            && loaded.version.is_some_and(|v| {
                v.mtime_ns.max(v.ctime_ns) + snapshot::RACY_WINDOW_NS >= written_ns
            }),
        findings,
    };
    if let Err(e) = written {
        error!(path = %config.snapshot_path().display(), "cannot write snapshot: {e}");
    }
    (compiled, loaded)
}

/// Who may stay, by the compiled grants.
enum Judge {
    /// The snapshot the child wrote.
    Snapshot(snapshot::Header),
    /// Compiled in this process (the child could not run or write).
    InProcess(Box<Loaded>),
}

impl Judge {
    fn allows(&self, config: &Config, record: &SessionRecord) -> bool {
        match self {
            Judge::InProcess(loaded) => still_allowed(loaded, record),
            Judge::Snapshot(header) => {
                if !header.valid {
                    return false;
                }
                let lines = snapshot::read_owner(
                    &config.snapshot_path(),
                    &header.grants_path,
                    header.version.as_ref(),
                    &record.owner,
                );
                match lines {
                    Ok(snapshot::Lookup::Fresh { header: h, lines })
                        if h.sha256 == header.sha256 =>
                    {
                        crate::policy::guest_in_lines(
                            &lines,
                            &record.key_algorithm,
                            &record.key_blob,
                        ) == Some(record.guest.as_str())
                    }
                    // Damaged since it was written: fail closed.
                    _ => false,
                }
            }
        }
    }
}

/// Runs [`compile`] in a child process; `None` if that fails.
fn compile_in_child(config_path: Option<&Path>) -> Option<Compiled> {
    let exe = std::env::current_exe().ok()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--compile");
    if let Some(path) = config_path {
        cmd.arg("--config").arg(path);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| warn!("cannot run the compiling child: {e}; compiling in process"))
        .ok()?;
    if !out.status.success() {
        warn!(
            "compiling child failed ({}); compiling in process",
            out.status
        );
        return None;
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| warn!("compiling child's answer unreadable: {e}; compiling in process"))
        .ok()
}

/// Reads the grant file, writes the snapshot, ends revoked sessions.
/// `config_path` is what the daemon was started with, for the child.
pub fn apply(config: &Config, config_path: Option<&Path>, reason: &str) -> Pass {
    let started = Instant::now();
    let previous = snapshot::read_header(&config.snapshot_path()).ok();
    let from_child = compile_in_child(config_path).and_then(|compiled| {
        let header = snapshot::read_header(&config.snapshot_path()).ok()?;
        (compiled.snapshot_written && header.sha256 == compiled.sha256)
            .then_some((compiled, Judge::Snapshot(header)))
    });
    let (compiled, judge) = match from_child {
        Some(found) => found,
        None => {
            let (compiled, loaded) = compile(config);
            (compiled, Judge::InProcess(Box::new(loaded)))
        }
    };
    let mut pass = Pass {
        valid: compiled.state == "valid",
        racy: compiled.racy,
        ..Pass::default()
    };
    match compiled.state.as_str() {
        "missing" => warn!(
            grants = %config.grants.display(), reason,
            "grant file missing: nothing is shared"
        ),
        "invalid" => {
            for e in &compiled.findings {
                error!(reason, "grant file invalid, no guest gets in: {e}");
            }
        }
        _ => {
            for note in &compiled.findings {
                warn!("{note}");
            }
        }
    }
    if previous
        .is_none_or(|p| p.sha256 != compiled.sha256 || p.valid != (compiled.state != "invalid"))
    {
        let state = match compiled.state.as_str() {
            "missing" => "grant file applied: missing, nothing is shared",
            "invalid" => "grant file applied: INVALID, no guest gets in",
            _ => "grant file applied",
        };
        super::audit_event(
            &audit::Event {
                kind: Some(audit::Kind::GrantChange),
                message: &format!("{state} (sha256 {}, {reason})", compiled.sha256),
                ..audit::Event::default()
            },
            "",
        );
    }
    enforce_sessions(config, &judge, &mut pass);
    info!(
        reason,
        valid = pass.valid,
        sha256 = %compiled.sha256,
        killed = pass.killed.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "grant file applied"
    );
    pass
}

fn enforce_sessions(config: &Config, judge: &Judge, pass: &mut Pass) {
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
        if judge.allows(config, &record) {
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
                super::audit_event(
                    &audit::Event {
                        kind: Some(audit::Kind::Kill),
                        owner: &record.owner,
                        guest: &record.guest,
                        fingerprint: &record.fingerprint,
                        remote: &record.remote,
                        session: &record.id,
                        message: "guest session ended: grant revoked",
                    },
                    &format!(
                        " method={method} elapsed_us={}",
                        started.elapsed().as_micros()
                    ),
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
