//! The daemon's one job done once: read the grant file, swap the snapshot,
//! and end every recorded session whose grant is gone. Holds no state that
//! cannot be rebuilt from the grant file and the run dir.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use crate::grant::policy::KeyIndex;
use crate::session::backend;
use crate::store::config::Config;
use crate::store::records::{self, SessionRecord};
use crate::store::snapshot;
use crate::store::source::{self, GrantFileState, Loaded, Outcome};
use crate::sys::accounts::SystemAccounts;
use crate::sys::log::audit;

/// How long a session group may exist without a record.
const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// What one pass did, for callers and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub valid: bool,
    pub racy: bool,
    pub killed: Vec<String>,
    pub forgotten: Vec<String>,
    /// Some sessions could not be judged (the sessions directory could not
    /// be read, or the daemon was short of descriptors or memory): the
    /// loop runs another pass soon.
    pub retry: bool,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Makes the run dir and its sessions dir if they are missing.
pub fn prepare_run_dir(config: &Config) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&config.run_dir)?;
    fs::set_permissions(&config.run_dir, fs::Permissions::from_mode(0o755))?;
    records::ensure_dir(&config.sessions_dir())
}

/// What compiling the grant file gave, as the compiling process reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Compiled {
    pub state: GrantFileState,
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
pub fn compile_grant_file(config: &Config) -> (Compiled, Loaded) {
    let loaded = source::load(&config.grants, &SystemAccounts);
    let findings = match &loaded.outcome {
        Outcome::Missing => Vec::new(),
        Outcome::Invalid(errors) => errors
            .errors
            .iter()
            .map(|e| e.in_file(&errors.file).to_string())
            .collect(),
        Outcome::Valid { .. } => loaded
            .notes()
            .iter()
            .map(|n| n.in_file(&config.grants).to_string())
            .collect(),
    };
    let _ = prepare_run_dir(config);
    let written_ns = now_ns();
    let written = snapshot::write(&config.snapshot_path(), &loaded, written_ns);
    let compiled = Compiled {
        state: loaded.outcome.state(),
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

/// Who may stay, by the compiled grants. Each owner's keys are read and
/// indexed once per pass, however many sessions the owner has.
struct Judge {
    source: JudgeSource,
    owners: HashMap<String, Option<KeyIndex>>,
}

enum JudgeSource {
    /// The snapshot the child wrote.
    Snapshot(snapshot::Header),
    /// Compiled in this process (the child could not run or write).
    InProcess(Box<Loaded>),
}

impl Judge {
    fn new(source: JudgeSource) -> Self {
        Judge {
            source,
            owners: HashMap::new(),
        }
    }

    fn allows(&mut self, config: &Config, record: &SessionRecord) -> bool {
        if !self.owners.contains_key(&record.owner) {
            let keys = self.source.owner_keys(config, &record.owner);
            self.owners.insert(record.owner.clone(), keys);
        }
        let index = self.owners.get(&record.owner).and_then(Option::as_ref);
        index.is_some_and(|keys| {
            keys.guest(&record.key_algorithm, &record.key_blob) == Some(record.guest.as_str())
        })
    }
}

impl JudgeSource {
    /// The owner's keys; `None` (nobody stays) when they cannot be trusted.
    fn owner_keys(&self, config: &Config, owner: &str) -> Option<KeyIndex> {
        match self {
            JudgeSource::InProcess(loaded) => {
                let policy = loaded.policy()?;
                Some(
                    policy
                        .owners
                        .get(owner)
                        .map(KeyIndex::from_access)
                        .unwrap_or_default(),
                )
            }
            JudgeSource::Snapshot(header) => {
                if !header.valid {
                    return None;
                }
                let lines = snapshot::read_owner(
                    &config.snapshot_path(),
                    &header.grants_path,
                    header.version.as_ref(),
                    owner,
                );
                match lines {
                    Ok(snapshot::Lookup::Fresh { header: h, lines })
                        if h.sha256 == header.sha256 =>
                    {
                        Some(KeyIndex::from_lines(&lines))
                    }
                    // Damaged since it was written: fail closed.
                    _ => None,
                }
            }
        }
    }
}

/// Runs [`compile_grant_file`] in a child process; `None` if that fails.
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

/// What a pass does besides judging every recorded session and ending the
/// revoked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Only that: the pass for a change of the grant file, so a revoke
    /// never waits on checking thousands of sessions that stay.
    Enforce,
    /// Also tidy up: forget the records of sessions that are over, and
    /// sweep session groups without a record. At start and on the periodic
    /// pass (the PAM hook forgets a session when it closes; this catches
    /// the ones whose close never ran).
    EnforceAndTidy,
}

/// Reads the grant file, writes the snapshot, ends revoked sessions.
/// `config_path` is what the daemon was started with, for the child;
/// `records` keeps what earlier passes read of the session records.
pub fn apply(
    config: &Config,
    config_path: Option<&Path>,
    reason: &str,
    scope: Scope,
    records: &mut records::Cache,
) -> Pass {
    let started = Instant::now();
    let previous = snapshot::read_header(&config.snapshot_path()).ok();
    let from_child = compile_in_child(config_path).and_then(|compiled| {
        let header = snapshot::read_header(&config.snapshot_path()).ok()?;
        (compiled.snapshot_written && header.sha256 == compiled.sha256)
            .then_some((compiled, Judge::new(JudgeSource::Snapshot(header))))
    });
    let (compiled, mut judge) = match from_child {
        Some(found) => found,
        None => {
            let (compiled, loaded) = compile_grant_file(config);
            (
                compiled,
                Judge::new(JudgeSource::InProcess(Box::new(loaded))),
            )
        }
    };
    let mut pass = Pass {
        valid: compiled.state == GrantFileState::Valid,
        racy: compiled.racy,
        ..Pass::default()
    };
    match compiled.state {
        GrantFileState::Missing => warn!(
            grants = %config.grants.display(), reason,
            "grant file missing: nothing is shared"
        ),
        GrantFileState::Invalid => {
            for e in &compiled.findings {
                error!(reason, "grant file invalid, no guest gets in: {e}");
            }
        }
        GrantFileState::Valid => {
            for note in &compiled.findings {
                warn!("{note}");
            }
        }
    }
    if previous.is_none_or(|p| {
        p.sha256 != compiled.sha256 || p.valid != (compiled.state != GrantFileState::Invalid)
    }) {
        let state = match compiled.state {
            GrantFileState::Missing => "grant file applied: missing, nothing is shared",
            GrantFileState::Invalid => "grant file applied: INVALID, no guest gets in",
            GrantFileState::Valid => "grant file applied",
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
    let enforcing = Instant::now();
    enforce_sessions(config, &mut judge, scope, records, &mut pass);
    let enforce_us = enforcing.elapsed().as_micros() as u64;
    info!(
        reason,
        valid = pass.valid,
        sha256 = %compiled.sha256,
        killed = pass.killed.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        enforce_us,
        "grant file applied"
    );
    pass
}

fn enforce_sessions(
    config: &Config,
    judge: &mut Judge,
    scope: Scope,
    cache: &mut records::Cache,
    pass: &mut Pass,
) {
    let dir = config.sessions_dir();
    let (records, bad) = cache.list(&dir);
    let (unjudged, bad): (Vec<_>, Vec<_>) = bad
        .into_iter()
        .partition(|(path, e)| *path == dir || short_of_resources(e));
    for (path, e) in &unjudged {
        // Not the record's fault: judge it on the retry.
        error!(path = %path.display(), "cannot read session records now: {e}; retrying");
        pass.retry = true;
    }
    for (path, e) in bad {
        // A record we cannot read is a session we cannot judge: end it.
        error!(record = %path.display(), "unreadable session record: {e}; ending that session");
        if let Some(id) = path.file_stem().and_then(|s| s.to_str()) {
            if let Err(e) = backend::end_unrecorded(config, id) {
                error!(session = id, "{e}");
            }
        }
        let _ = fs::remove_file(&path);
    }
    // Judge first (in memory), and start every kill before waiting on any or
    // looking at the sessions that stay, so neither one slow session nor
    // many live ones delay a revoke.
    let mut ending = Vec::new();
    let mut staying = Vec::new();
    for record in records {
        if judge.allows(config, &record) {
            staying.push(record);
        } else if !backend::is_live(&record) {
            forget(&dir, &record);
            pass.forgotten.push(record.id.clone());
        } else {
            record.placement.backend().start_end(&record);
            ending.push(record);
        }
    }
    for record in ending {
        let started = Instant::now();
        let method = record.placement.name();
        match backend::end(&record) {
            Ok(()) => {
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
                let _ = records::remove(&dir, &record.id);
                pass.killed.push(record.id.clone());
            }
            Err(e) => error!(
                method = %method,
                owner = %record.owner, guest = %record.guest, session = %record.id,
                "could not end revoked session: {e}"
            ),
        }
    }
    if scope == Scope::Enforce {
        return;
    }
    // Sessions that may stay but are over: their records go.
    for record in staying {
        if !backend::is_live(&record) {
            forget(&dir, &record);
            pass.forgotten.push(record.id.clone());
        }
    }
    sweep_empty_groups(config, &dir);
}

/// Whether reading failed for want of descriptors or memory, which passes.
fn short_of_resources(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOMEM,
            Errno::EAGAIN,
            Errno::EINTR,
        ]
        .contains(&Errno::from_raw(n))
    })
}

fn forget(dir: &Path, record: &SessionRecord) {
    record.placement.backend().release(record);
    let _ = records::remove(dir, &record.id);
    info!(owner = %record.owner, guest = %record.guest, session = %record.id, "session over, record forgotten");
}

/// Ends what was placed for sessions that have no record (their hook died
/// between placing and recording) once they are older than any hook could
/// take, and removes what is empty.
fn sweep_empty_groups(config: &Config, dir: &Path) {
    let has_record = |id: &str| dir.join(SessionRecord::file_name(id)).exists();
    for (group, ended) in backend::sweep_unrecorded(config, &has_record, ORPHAN_GRACE) {
        match ended {
            Ok(()) => warn!(group = %group.display(), "ended unrecorded session group"),
            Err(e) => error!(group = %group.display(), "{e}"),
        }
    }
}
