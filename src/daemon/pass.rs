//! The daemon's one job done once: read the grant file, swap the snapshot,
//! and end every recorded session whose grant is gone. Holds no state that
//! cannot be rebuilt from the grant file and the run dir.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::sys::resource::{getrusage, UsageWho};
use tracing::{error, info, warn};

use crate::grant::limits::Breach;
use crate::grant::policy::{KeyIndex, Policy};
use crate::session::backend::{self, SystemBus};
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
    /// The next `expires` deadline (seconds since the epoch) after this
    /// pass: the loop runs another pass then.
    pub next_deadline: Option<i64>,
}

/// The wall clock, behind a trait so tests can move it.
pub trait Clock {
    /// Nanoseconds since the epoch.
    fn now_ns(&self) -> i64;
}

/// The system's real-time clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        now_ns()
    }
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

/// What compiling the grant file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub state: GrantFileState,
    pub sha256: String,
    /// The snapshot was written (and so can answer the key lookup).
    pub snapshot_written: bool,
    pub racy: bool,
    /// Errors (for an invalid file) or notes, rendered `file:line:col: …`.
    pub findings: Vec<String>,
    /// The first `expires` deadline after the compile, if any.
    pub next_deadline: Option<i64>,
}

/// Reads the grant file and writes the snapshot. Runs on the daemon's
/// blocking pool, never on its loop: a large file takes tens of
/// milliseconds.
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
        next_deadline: loaded
            .policy()
            .and_then(|p| p.next_deadline(written_ns.div_euclid(1_000_000_000))),
    };
    if let Err(e) = written {
        error!(path = %config.snapshot_path().display(), "cannot write snapshot: {e}");
    }
    (compiled, loaded)
}

/// Who may stay, by the grants just compiled (the ones the snapshot was
/// written from). Each owner's keys are indexed once per pass, however
/// many sessions the owner has.
struct Judge<'a> {
    /// `None` when the grant file is missing or invalid: nobody stays.
    policy: Option<&'a Policy>,
    owners: HashMap<String, KeyIndex>,
}

impl<'a> Judge<'a> {
    fn new(loaded: &'a Loaded) -> Self {
        Judge {
            policy: loaded.policy(),
            owners: HashMap::new(),
        }
    }

    /// Indexes, per owner, only the keys the sessions in `records` logged
    /// in with: an owner may have tens of thousands of keys and a handful
    /// of sessions. Verdicts after this are for these records only:
    /// another key of a prepared owner would find no grant.
    fn prepare<R: std::borrow::Borrow<SessionRecord>>(&mut self, records: &[R]) {
        let mut wanted: HashMap<&str, HashSet<&str>> = HashMap::new();
        for r in records.iter().map(std::borrow::Borrow::borrow) {
            wanted
                .entry(r.owner.as_str())
                .or_default()
                .insert(r.key_blob.as_str());
        }
        for (owner, blobs) in wanted {
            let keys = self.owner_keys(owner, |blob| blobs.contains(blob));
            self.owners.insert(owner.to_string(), keys);
        }
    }

    /// The owner's granted keys that `keep` wants (by blob).
    fn owner_keys(&self, owner: &str, keep: impl Fn(&str) -> bool) -> KeyIndex {
        self.policy
            .and_then(|p| p.owners.get(owner))
            .map(|access| KeyIndex::of(access, keep))
            .unwrap_or_default()
    }

    /// Whether `record` may stay at `now` (seconds since the epoch), or
    /// why it must end.
    fn verdict(&mut self, record: &SessionRecord, now: i64) -> Verdict {
        if !self.owners.contains_key(&record.owner) {
            let keys = self.owner_keys(&record.owner, |_| true);
            self.owners.insert(record.owner.clone(), keys);
        }
        let grant = self
            .owners
            .get(&record.owner)
            .and_then(|keys| keys.grant(&record.key_algorithm, &record.key_blob));
        let limits = match grant {
            Some((guest, Some(limits))) if guest == record.guest => limits,
            _ => return Verdict::Revoked,
        };
        let ip = record.remote.parse().ok();
        match limits.check(now, ip) {
            Ok(()) => Verdict::Stays,
            Err(Breach::Expired(at)) => Verdict::Expired(at),
            Err(Breach::Address(_)) => Verdict::Address,
        }
    }
}

/// What a pass decides for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Stays,
    /// The grant is gone (or cannot be trusted).
    Revoked,
    /// The guest's deadline has passed.
    Expired(i64),
    /// The guest's `from` no longer admits the session's client.
    Address,
}

impl Verdict {
    /// The audit event and message for ending a session so judged.
    fn event(self) -> (audit::Kind, String) {
        match self {
            Verdict::Expired(at) => (
                audit::Kind::Expiry,
                format!(
                    "guest session ended: access expired at {}",
                    crate::grant::civil::utc(at)
                ),
            ),
            Verdict::Address => (
                audit::Kind::Kill,
                "guest session ended: its client address is no longer in the guest's `from`".into(),
            ),
            Verdict::Stays | Verdict::Revoked => (
                audit::Kind::Kill,
                "guest session ended: grant revoked".into(),
            ),
        }
    }
}

/// What a pass does besides judging every recorded session and ending the
/// revoked ones and those past their deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Only that: the pass for a change of the grant file or a deadline,
    /// so ending sessions never waits on checking thousands that stay.
    Enforce,
    /// Also tidy up: forget the records of sessions that are over, and
    /// sweep session groups without a record. At start and on the periodic
    /// pass (the PAM hook forgets a session when it closes; this catches
    /// the ones whose close never ran).
    EnforceAndTidy,
}

/// Reads the grant file, writes the snapshot, ends revoked sessions and
/// those past their deadline. `records` keeps what earlier passes read of
/// the session records; `bus` is the daemon's connection to logind.
pub fn apply(
    config: &Config,
    reason: &str,
    scope: Scope,
    records: &mut records::Cache,
    bus: &SystemBus,
) -> Pass {
    apply_at(config, reason, scope, records, bus, &SystemClock)
}

/// [`apply`], judging deadlines by `clock`.
pub fn apply_at(
    config: &Config,
    reason: &str,
    scope: Scope,
    records: &mut records::Cache,
    bus: &SystemBus,
    clock: &dyn Clock,
) -> Pass {
    let started = Instant::now();
    let cpu_before = cpu_time();
    let previous = snapshot::read_header(&config.snapshot_path()).ok();
    let (compiled, loaded) = compile_grant_file(config);
    let mut judge = Judge::new(&loaded);
    let mut pass = Pass {
        valid: compiled.state == GrantFileState::Valid,
        racy: compiled.racy,
        next_deadline: compiled.next_deadline,
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
    // A deadline the compile saw coming may pass before the sessions are
    // judged: the timer, armed for a time already past, then fires at once
    // and the next pass ends them.
    let now = clock.now_ns().div_euclid(1_000_000_000);
    enforce_sessions(config, &mut judge, scope, records, bus, &mut pass, now);
    let enforce_us = enforcing.elapsed().as_micros() as u64;
    drop(judge);
    drop(loaded);
    info!(
        reason,
        valid = pass.valid,
        sha256 = %compiled.sha256,
        killed = pass.killed.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        enforce_us,
        cpu_us = cpu_time().saturating_sub(cpu_before).as_micros() as u64,
        "grant file applied"
    );
    pass
}

/// CPU time used so far by this process (all its threads).
fn cpu_time() -> std::time::Duration {
    getrusage(UsageWho::RUSAGE_SELF).map_or(std::time::Duration::ZERO, |u| {
        [u.user_time(), u.system_time()]
            .into_iter()
            .map(|t| {
                std::time::Duration::from_secs(t.tv_sec().max(0) as u64)
                    + std::time::Duration::from_micros(t.tv_usec().max(0) as u64)
            })
            .sum()
    })
}

fn enforce_sessions(
    config: &Config,
    judge: &mut Judge<'_>,
    scope: Scope,
    cache: &mut records::Cache,
    bus: &SystemBus,
    pass: &mut Pass,
    now: i64,
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
    judge.prepare(&records);
    let mut ending = Vec::new();
    let mut staying = Vec::new();
    for record in records {
        let verdict = judge.verdict(&record, now);
        if verdict == Verdict::Stays {
            staying.push(record);
        } else if !backend::is_live(&record) {
            forget(&dir, &record);
            pass.forgotten.push(record.id.clone());
        } else {
            record.placement.backend().start_end(&record);
            ending.push((record, verdict));
        }
    }
    for (record, verdict) in ending {
        let started = Instant::now();
        let method = record.placement.name();
        match backend::end(&record, bus) {
            Ok(()) => {
                let (kind, message) = verdict.event();
                super::audit_event(
                    &audit::Event {
                        kind: Some(kind),
                        owner: &record.owner,
                        guest: &record.guest,
                        fingerprint: &record.fingerprint,
                        remote: &record.remote,
                        session: &record.id,
                        message: &message,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::parse::tests::{KEY_A, KEY_B};
    use crate::grant::policy::tests::FakeAccounts;
    use crate::session::backend::Placement;

    /// A wall clock the test sets, as a step of the real one would.
    struct Fake(std::cell::Cell<i64>);

    impl Clock for Fake {
        fn now_ns(&self) -> i64 {
            self.0.get() * 1_000_000_000
        }
    }

    fn record(guest: &str, key: &str, remote: &str) -> SessionRecord {
        let mut words = key.split(' ');
        SessionRecord {
            id: format!("s-{guest}"),
            owner: "alice".into(),
            guest: guest.into(),
            fingerprint: String::new(),
            key_algorithm: words.next().unwrap().into(),
            key_blob: words.next().unwrap().into(),
            remote: remote.into(),
            since: 0,
            monitor_pid: 1,
            monitor_start: 1,
            uid: 1000,
            placement: Placement::Signal,
        }
    }

    /// Judging by the grants just compiled, indexing only the sessions'
    /// keys: a key revoked in the grant file finds no grant, the others
    /// stay, and an invalid grant file keeps nobody.
    #[test]
    fn a_pass_judges_each_session_by_the_grants_just_compiled() {
        let accounts = FakeAccounts::with(&[("alice", 1000)]);
        let grants = |bob: &str| {
            format!(
                "[owners.alice]\nsharing = true\n\
                 [owners.alice.guests.bob]\nstatus = \"{bob}\"\nkeys = [\"{KEY_A}\"]\n\
                 [owners.alice.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{KEY_B}\"]\n"
            )
        };
        let judged = |text: String| {
            let loaded = source::load_text(Path::new("/grants.toml"), text, &accounts);
            let mut judge = Judge::new(&loaded);
            let records = [
                record("bob", KEY_A, "192.0.2.7"),
                record("carol", KEY_B, "192.0.2.8"),
                // Someone else's key under bob's name.
                record("bob", KEY_B, "192.0.2.9"),
            ];
            judge.prepare(&records);
            records.map(|r| judge.verdict(&r, 0))
        };
        use Verdict::{Revoked, Stays};
        assert_eq!(judged(grants("accepted")), [Stays, Stays, Revoked]);
        assert_eq!(judged(grants("left")), [Revoked, Stays, Revoked]);
        assert_eq!(judged(grants("accepted")), [Stays, Stays, Revoked]);
        assert_eq!(judged(grants("acepted")), [Revoked, Revoked, Revoked]);
        assert_eq!(
            judged(format!(
                "{}[owners.alice.guests.carol]\n",
                grants("accepted")
            )),
            [Revoked, Revoked, Revoked]
        );
    }

    #[test]
    fn sessions_end_at_the_deadline_and_outside_from() {
        let src = format!(
            "[owners.alice]\nsharing = true\n\
             [owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\n\
             expires = 2026-12-01T18:00:00Z\nfrom = [\"192.0.2.0/24\"]\n\
             [owners.alice.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{KEY_B}\"]\n"
        );
        let loaded = source::load_text(
            Path::new("/grants.toml"),
            src,
            &FakeAccounts::with(&[("alice", 1000)]),
        );
        let deadline = 1_796_148_000;
        assert_eq!(loaded.policy().unwrap().next_deadline(0), Some(deadline));
        assert_eq!(loaded.policy().unwrap().next_deadline(deadline), None);
        let mut judge = Judge::new(&loaded);
        let bob = record("bob", KEY_A, "192.0.2.7");
        let carol = record("carol", KEY_B, "198.51.100.1");
        let clock = Fake(std::cell::Cell::new(deadline - 3));
        let now = |c: &Fake| c.now_ns().div_euclid(1_000_000_000);
        assert_eq!(judge.verdict(&bob, now(&clock)), Verdict::Stays);
        // The clock set forward past the deadline (or reaching it).
        for at in [deadline, deadline + 3600] {
            clock.0.set(at);
            assert_eq!(judge.verdict(&bob, now(&clock)), Verdict::Expired(deadline));
            assert_eq!(judge.verdict(&carol, now(&clock)), Verdict::Stays);
        }
        // And back again: the grant holds again (the hook and lookup judge
        // by the same clock).
        clock.0.set(deadline - 1);
        assert_eq!(judge.verdict(&bob, now(&clock)), Verdict::Stays);
        let elsewhere = record("bob", KEY_A, "198.51.100.1");
        assert_eq!(judge.verdict(&elsewhere, 0), Verdict::Address);
        let unknown = record("bob", KEY_A, "laptop.example.org");
        assert_eq!(judge.verdict(&unknown, 0), Verdict::Address);
        let impostor = record("carol", KEY_A, "192.0.2.7");
        assert_eq!(judge.verdict(&impostor, 0), Verdict::Revoked);
        assert_eq!(Verdict::Expired(deadline).event().0, audit::Kind::Expiry);
    }
}
