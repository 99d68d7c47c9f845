//! What guests leave running outside their sessions, on systemd hosts: work
//! in the owner's user manager (`systemd-run --user`, with or without
//! `--scope`, units a guest wrote and enabled), lingering turned on, and
//! crontab and at jobs. logind ends a guest's session scope on revoke; none
//! of these is in it.
//!
//! A thread of its own (the daemon's loop never waits on it) looks at each
//! owner's account every TICK: who is logged in (guest records, logind's
//! session scopes under `user-UID.slice`, and inotify on that slice for
//! sessions too short to be seen), the unit groups under
//! `user@UID.service`, the unit files in `~/.config/systemd/user`, the
//! linger flag, the crontab and the at queue. Whatever appears is judged
//! by `session::persistence`: a guest's units and lingering are ended when
//! that guest's access ends; what cannot be pinned on one guest, and
//! crontab and at changes, are reported as `persistence` events and in
//! `vmshare status`. Nothing of the owner's is ended without proof.
//!
//! Why not watch the user bus for StartTransientUnit calls: `systemd-run
//! --user` and `systemctl --user` talk to the manager's private socket
//! (`$XDG_RUNTIME_DIR/systemd/private`) first, which no bus monitor sees.
//!
//! What the watcher knows is kept in the state dir (`store::watched`): a
//! restarted daemon (or a rebooted host) still ends what it pinned on a
//! guest, and what appeared while it was not looking is judged as if any
//! guest then granted the account might have been there: pinned by proof,
//! reported otherwise, never taken as the owner's.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inotify::{Inotify, WatchDescriptor, WatchMask};
use tracing::warn;

use crate::grant::policy::Policy;
use crate::session::backend::{cgroup, logind, Placement, SystemBus};
use crate::session::persistence::{self, Presence, Proof, Verdict};
use crate::store::config::Config;
use crate::store::escapes::{self, Report};
use crate::store::records::{self, SessionRecord};
use crate::store::source::{self, FileVersion};
use crate::store::watched;
use crate::sys::accounts::SystemAccounts;
use crate::sys::log::audit;
use crate::sys::procfs;

/// How often each account is looked at.
pub const TICK: Duration = Duration::from_millis(500);
/// Reports kept for `vmshare status`, newest last.
const KEPT_REPORTS: usize = 200;
/// Units remembered per owner as a guest's.
const KEPT_UNITS: usize = 4096;
/// How many looks a new scope may be empty before it is judged without
/// its processes' sessions.
const EMPTY_SCOPE_LOOKS: u32 = 6;
/// How many looks a session may be live with no guest record before it is
/// taken for someone else's: logind makes a login's scope (pam_systemd)
/// just before the session hook records a guest's, and a guest's unit
/// started at once must not be judged in between.
const SETTLE_LOOKS: u32 = 6;
/// How long killing one unit's processes may take.
const UNIT_KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the facts are: the real paths, or a scratch tree in tests.
pub struct Roots {
    /// The cgroup v2 mount.
    pub cgroups: PathBuf,
    /// systemd's linger flags (`/var/lib/systemd/linger`).
    pub linger: PathBuf,
    /// cron's spool (`/var/spool/cron/crontabs`).
    pub crontabs: PathBuf,
    /// at's queue (`/var/spool/cron/atjobs`).
    pub atjobs: PathBuf,
    /// Users' runtime directories (`/run/user`).
    pub run_user: PathBuf,
    /// logind's session state files (`/run/systemd/sessions`).
    pub sessions: PathBuf,
}

impl Roots {
    fn system(cgroups: PathBuf) -> Roots {
        Roots {
            cgroups,
            linger: PathBuf::from("/var/lib/systemd/linger"),
            crontabs: PathBuf::from("/var/spool/cron/crontabs"),
            atjobs: PathBuf::from("/var/spool/cron/atjobs"),
            run_user: PathBuf::from("/run/user"),
            sessions: PathBuf::from("/run/systemd/sessions"),
        }
    }

    fn user_slice(&self, uid: u32) -> PathBuf {
        self.cgroups
            .join("user.slice")
            .join(format!("user-{uid}.slice"))
    }

    fn manager_group(&self, uid: u32) -> PathBuf {
        self.user_slice(uid).join(format!("user@{uid}.service"))
    }

    /// Whether the user manager keeps `unit` as a transient unit (made by
    /// `systemd-run`, not from a unit file).
    fn transient(&self, uid: u32, unit: &str) -> bool {
        self.run_user
            .join(uid.to_string())
            .join("systemd/transient")
            .join(unit)
            .exists()
    }
}

/// What was seen of one owner's account at the last look.
#[derive(Default)]
struct Account {
    name: String,
    uid: u32,
    home: PathBuf,
    watch: Option<WatchDescriptor>,
    looked: bool,
    presence: Presence,
    seen_sessions: BTreeSet<String>,
    units: BTreeSet<String>,
    unit_files: BTreeMap<String, i64>,
    linger: bool,
    crontab: Option<(i64, u64)>,
    atjobs: BTreeSet<String>,
    /// Units pinned on a guest, by unit name.
    guest_units: BTreeMap<String, String>,
    /// Lingering a guest turned on.
    guest_linger: Option<String>,
    /// New scopes with no process in them yet, by how many looks found them
    /// empty.
    empty_scopes: BTreeMap<String, u32>,
    /// Live sessions with no guest record, by how many looks found them so.
    unrecorded: BTreeMap<String, u32>,
    /// Who was present over looks that judged nothing (a login was still
    /// settling), for the next look that judges.
    carried: Presence,
    /// Restored from the state dir: the next look also counts whoever
    /// may have come and gone while no one was looking.
    resumed: bool,
}

impl Account {
    /// What is kept across restarts.
    fn saved(&self) -> watched::Account {
        watched::Account {
            uid: self.uid,
            units: self.units.clone(),
            unit_files: self.unit_files.clone(),
            linger: self.linger,
            crontab: self.crontab,
            atjobs: self.atjobs.clone(),
            guest_units: self.guest_units.clone(),
            guest_linger: self.guest_linger.clone(),
            guests_present: self.presence.guests.clone(),
            others_present: self.presence.others,
        }
    }

    /// At the first look after a restart: while no one looked, any guest
    /// granted the account (`granted`, now) may have come and gone, and
    /// so may anyone else.
    fn wake(&mut self, granted: BTreeSet<String>) {
        if std::mem::take(&mut self.resumed) {
            self.presence.others = true;
            self.presence.guests.extend(granted);
        }
    }

    /// An account as a previous run of the daemon last saw it.
    fn resume(name: &str, home: PathBuf, saved: watched::Account) -> Account {
        Account {
            name: name.to_string(),
            uid: saved.uid,
            home,
            looked: true,
            resumed: true,
            presence: Presence {
                guests: saved.guests_present,
                others: saved.others_present,
            },
            units: saved.units,
            unit_files: saved.unit_files,
            linger: saved.linger,
            crontab: saved.crontab,
            atjobs: saved.atjobs,
            guest_units: saved.guest_units,
            guest_linger: saved.guest_linger,
            ..Account::default()
        }
    }
}

/// The thread's state.
pub struct Watcher {
    config: Arc<Config>,
    roots: Roots,
    inotify: Option<Inotify>,
    accounts: BTreeMap<String, Account>,
    reports: Vec<Report>,
    /// Records already read (each is written once).
    records: records::Cache,
    /// The grant file's policy, read again only when the file changes.
    grants: Option<(Option<FileVersion>, Option<Policy>)>,
    /// What the state dir holds of the accounts, as last written.
    saved: BTreeMap<String, watched::Account>,
}

/// Starts the watcher thread on systemd hosts; elsewhere there is no user
/// manager to watch.
pub fn spawn(config: Arc<Config>, bus: Arc<SystemBus>) {
    if !logind::systemd_booted() {
        return;
    }
    let Some(cgroup_mount) = cgroup::cgroup2_mount() else {
        warn!("no cgroup v2 mount: units guests start in user managers are not watched");
        return;
    };
    let inotify = Inotify::init()
        .map_err(|e| warn!("inotify: {e}; short sessions are not seen"))
        .ok();
    let saved = watched::read(&config.state_dir).unwrap_or_else(|e| {
        warn!("{e}: what guests left in user managers before now is taken as it is");
        BTreeMap::new()
    });
    // What a previous run reported stays shown.
    let reports = escapes::read(&config.run_dir);
    let mut watcher = Watcher {
        config,
        roots: Roots::system(cgroup_mount),
        inotify,
        accounts: BTreeMap::new(),
        reports,
        records: records::Cache::default(),
        grants: None,
        saved: BTreeMap::new(),
    };
    watcher.resume(saved);
    let started = std::thread::Builder::new()
        .name("usermgr".into())
        .spawn(move || loop {
            watcher.look(super::now_ns() / 1_000_000_000, &bus);
            std::thread::sleep(TICK);
        });
    if let Err(e) = started {
        warn!("cannot start the user manager watcher: {e}");
    }
}

impl Watcher {
    /// One look at every account that shares or has guest sessions.
    pub fn look(&mut self, now: i64, bus: &SystemBus) {
        let (records, _) = self.records.list(&self.config.sessions_dir());
        let created = self.drain_created();
        let version = fs::metadata(&self.config.grants)
            .ok()
            .map(|m| FileVersion::of(&m));
        if self.grants.as_ref().is_none_or(|(v, _)| *v != version) {
            let loaded = source::load(&self.config.grants, &SystemAccounts);
            self.grants = Some((version, loaded.policy().cloned()));
        }
        let policy = self.grants.as_ref().and_then(|(_, p)| p.as_ref());
        let mut owners: BTreeMap<String, u32> =
            records.iter().map(|r| (r.owner.clone(), r.uid)).collect();
        if let Some(p) = policy {
            owners.extend(p.owners.iter().map(|(n, a)| (n.clone(), a.uid)));
        }
        // Accounts restored from the state dir are looked at while they
        // hold anything pinned on a guest, shared or not.
        for (name, a) in &self.accounts {
            if !a.guest_units.is_empty() || a.guest_linger.is_some() {
                owners.entry(name.clone()).or_insert(a.uid);
            }
        }
        for (name, uid) in owners {
            let (roots, inotify) = (&self.roots, &mut self.inotify);
            let Some(account) = account(&mut self.accounts, inotify, roots, &name, uid) else {
                continue;
            };
            account.wake(granted(policy, &name));
            let created = account
                .watch
                .as_ref()
                .and_then(|w| created.get(w))
                .cloned()
                .unwrap_or_default();
            let mut found = Vec::new();
            look_at(account, roots, &records, &created, now, &mut found);
            end_revoked(
                account,
                roots,
                policy,
                now,
                &|uid| bus.disable_linger(uid),
                &mut found,
            );
            for report in found {
                emit(&report);
                self.reports.push(report);
            }
        }
        if self.reports.len() > KEPT_REPORTS {
            let extra = self.reports.len() - KEPT_REPORTS;
            self.reports.drain(..extra);
        }
        self.save();
    }

    /// Names created in each watched slice since the last look.
    fn drain_created(&mut self) -> BTreeMap<WatchDescriptor, Vec<String>> {
        let mut out: BTreeMap<WatchDescriptor, Vec<String>> = BTreeMap::new();
        let Some(inotify) = self.inotify.as_mut() else {
            return out;
        };
        let mut buffer = [0u8; 4096];
        while let Ok(events) = inotify.read_events(&mut buffer) {
            let mut any = false;
            for event in events {
                any = true;
                if let Some(name) = event.name.and_then(|n| n.to_str()) {
                    out.entry(event.wd.clone())
                        .or_default()
                        .push(name.to_string());
                }
            }
            if !any {
                break;
            }
        }
        out
    }

    fn save(&mut self) {
        if let Err(e) = escapes::write(&self.config.run_dir, &self.reports) {
            warn!("cannot write the persistence reports: {e}");
        }
        let now: BTreeMap<String, watched::Account> = self
            .accounts
            .iter()
            .filter(|(_, a)| a.looked)
            .map(|(n, a)| (n.clone(), a.saved()))
            .collect();
        if now != self.saved {
            match watched::write(&self.config.state_dir, &now) {
                Ok(()) => self.saved = now,
                Err(e) => warn!("{e}"),
            }
        }
    }

    /// Takes up what a previous run saved, for the accounts that still
    /// exist under the same uid.
    fn resume(&mut self, saved: BTreeMap<String, watched::Account>) {
        for (name, account) in &saved {
            let Ok(Some(user)) = nix::unistd::User::from_name(name) else {
                continue;
            };
            if user.uid.as_raw() == account.uid {
                self.accounts.insert(
                    name.clone(),
                    Account::resume(name, user.dir, account.clone()),
                );
            }
        }
        self.saved = saved;
    }
}

/// The account's state, made at its first look.
fn account<'a>(
    accounts: &'a mut BTreeMap<String, Account>,
    inotify: &mut Option<Inotify>,
    roots: &Roots,
    name: &str,
    uid: u32,
) -> Option<&'a mut Account> {
    if !accounts.contains_key(name) {
        let user = nix::unistd::User::from_uid(uid.into()).ok().flatten()?;
        if user.name != name {
            return None;
        }
        accounts.insert(
            name.to_string(),
            Account {
                name: name.to_string(),
                uid,
                home: user.dir,
                ..Account::default()
            },
        );
    }
    let account = accounts.get_mut(name)?;
    // The slice comes and goes with the account's sessions (and its
    // watch with it): watched again at every look, which for a slice
    // already watched returns the same descriptor.
    account.watch = inotify.as_mut().and_then(|i| {
        i.watches()
            .add(
                roots.user_slice(uid),
                WatchMask::CREATE | WatchMask::ONLYDIR,
            )
            .ok()
    });
    Some(account)
}

/// The logind sessions of the account now: `session-ID.scope` groups in
/// its slice, less the user manager's own (class `manager`, systemd 256
/// and later), which is no one's login.
fn live_sessions(roots: &Roots, uid: u32) -> BTreeSet<String> {
    fs::read_dir(roots.user_slice(uid))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| session_id(&e.file_name().to_string_lossy()).map(String::from))
                .filter(|id| !is_manager_session(&roots.sessions.join(id)))
                .collect()
        })
        .unwrap_or_default()
}

fn is_manager_session(state: &Path) -> bool {
    fs::read_to_string(state).is_ok_and(|text| {
        text.lines()
            .any(|l| matches!(l, "CLASS=manager" | "CLASS=manager-early"))
    })
}

fn session_id(group: &str) -> Option<&str> {
    logind::session_of_cgroup(Path::new(group))
}

/// Unit groups under the user manager, by unit name (services and scopes,
/// in any slice).
fn unit_groups(roots: &Roots, uid: u32) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![(roots.manager_group(uid), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".slice") && depth < 4 {
                dirs.push((entry.path(), depth + 1));
            } else if name.ends_with(".service") || name.ends_with(".scope") {
                out.insert(name, entry.path());
            }
        }
    }
    out
}

/// Files under `~/.config/systemd/user` (two levels, never following a
/// link), by path relative to it, with their ctime in ns: a file's ctime
/// moves on every change and cannot be set back.
fn unit_files(home: &Path) -> BTreeMap<String, i64> {
    let root = home.join(".config/systemd/user");
    let mut out = BTreeMap::new();
    let Ok(meta) = fs::symlink_metadata(&root) else {
        return out;
    };
    if !meta.is_dir() {
        return out;
    }
    let ctime = |m: &fs::Metadata| m.ctime() * 1_000_000_000 + m.ctime_nsec();
    for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        out.insert(name.clone(), ctime(&meta));
        if meta.is_dir() {
            for inner in fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                if let Ok(m) = inner.metadata() {
                    let inner_name = inner.file_name().to_string_lossy().into_owned();
                    out.insert(format!("{name}/{inner_name}"), ctime(&m));
                }
            }
        }
        if out.len() > 10_000 {
            break;
        }
    }
    out
}

/// Audit session ids of the processes in a unit's group and below.
fn unit_sessions(group: &Path) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut dirs = vec![group.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for pid in cgroup::pids(&dir).unwrap_or_default() {
            ids.extend(procfs::audit_session(pid));
        }
        for sub in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if sub.file_type().is_ok_and(|t| t.is_dir()) && dirs.len() < 64 {
                dirs.push(sub.path());
            }
        }
    }
    ids
}

fn file_state(path: &Path) -> Option<(i64, u64)> {
    fs::metadata(path)
        .ok()
        .map(|m| (m.ctime() * 1_000_000_000 + m.ctime_nsec(), m.size()))
}

fn at_jobs(dir: &Path, uid: u32) -> BTreeSet<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid && m.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// One look at one account: who is present, what appeared since the last
/// look, and the verdict on each.
fn look_at<R: std::borrow::Borrow<SessionRecord>>(
    account: &mut Account,
    roots: &Roots,
    records: &[R],
    created: &[String],
    now: i64,
    found: &mut Vec<Report>,
) {
    let mine: Vec<&SessionRecord> = records
        .iter()
        .map(std::borrow::Borrow::borrow)
        .filter(|r: &&SessionRecord| r.owner == account.name)
        .collect();
    let guest_sessions: BTreeMap<String, String> = mine
        .iter()
        .filter_map(|r| match &r.placement {
            Placement::Logind { session } => Some((session.clone(), r.guest.clone())),
            _ => None,
        })
        .collect();
    let live = live_sessions(roots, account.uid);
    account.seen_sessions.extend(live.iter().cloned());
    let created_ids: Vec<String> = created
        .iter()
        .filter_map(|n| session_id(n).map(String::from))
        .collect();
    for id in live.iter().filter(|id| !guest_sessions.contains_key(*id)) {
        let looks = account.unrecorded.entry(id.clone()).or_insert(0);
        *looks = looks.saturating_add(1);
    }
    account
        .unrecorded
        .retain(|id, _| live.contains(id) && !guest_sessions.contains_key(id));
    let settling = account.unrecorded.values().any(|&n| n < SETTLE_LOOKS);
    let now_present = Presence {
        guests: mine.iter().map(|r| r.guest.clone()).collect(),
        others: account.unrecorded.values().any(|&n| n >= SETTLE_LOOKS),
    };
    let mut window = account.presence.union(&now_present).union(&account.carried);
    window.others |= persistence::unseen(&created_ids, &account.seen_sessions);
    // Ids of sessions gone for good are not needed past this look.
    account.seen_sessions.retain(|id| live.contains(id));
    if account.looked && settling {
        // A login has not shown whose it is yet: what appeared is judged
        // at a later look, with whoever was here meanwhile.
        account.carried = window;
        return;
    }
    account.carried = Presence::default();
    account.presence = now_present;

    let units = unit_groups(roots, account.uid);
    let files = unit_files(&account.home);
    let linger = roots.linger.join(&account.name).exists();
    let crontab_path = roots.crontabs.join(&account.name);
    let crontab = file_state(&crontab_path);
    let atjobs = at_jobs(&roots.atjobs, account.uid);
    if !account.looked {
        // What was there at the first look is taken as it is.
        account.looked = true;
        account.units = units.into_keys().collect();
        account.unit_files = files;
        account.linger = linger;
        account.crontab = crontab;
        account.atjobs = atjobs;
        return;
    }
    let mut report = |guests: Vec<String>, kind: &str, what: &str, action: &str| {
        found.push(Report {
            at: now,
            owner: account.name.clone(),
            guests,
            kind: kind.to_string(),
            what: what.to_string(),
            action: action.to_string(),
        });
    };
    let judge = |proof: &Proof| persistence::attribute(&window, proof);

    // Unit files first: a unit a guest wrote is then known when it starts.
    for (file, ctime) in &files {
        let before = account.unit_files.get(file);
        if before == Some(ctime) {
            continue;
        }
        let Some(unit) = persistence::unit_of_file(file) else {
            continue;
        };
        match judge(&Proof::None) {
            Verdict::Owner => {}
            // Only a unit file the guest created makes the unit the
            // guest's; a change to the owner's unit, a drop-in or an
            // enabling link is the owner's unit still: reported.
            Verdict::Guest(g) if before.is_none() && file == unit => {
                if account.guest_units.len() < KEPT_UNITS {
                    account.guest_units.insert(unit.to_string(), g.clone());
                }
                report(
                    vec![g],
                    "unit-file",
                    &format!("~/.config/systemd/user/{file}"),
                    "its unit is stopped when the guest's access ends; the file stays",
                );
            }
            Verdict::Guest(g) => report(
                vec![g],
                "unit-file",
                &format!("~/.config/systemd/user/{file}"),
                "reported: an enabling link, a drop-in, or a change to a unit file the guest did not create",
            ),
            Verdict::Unclear(guests) => report(
                guests,
                "unit-file",
                &format!("~/.config/systemd/user/{file}"),
                "reported: changed while more than one person was logged in",
            ),
        }
    }
    account.unit_files = files;

    // The user manager's own audit session id, which the services it forks
    // inherit.
    let manager = cgroup::pids(&roots.manager_group(account.uid).join("init.scope"))
        .ok()
        .and_then(|pids| pids.first().and_then(|&p| procfs::audit_session(p)));
    let mut deferred = Vec::new();
    for (unit, group) in &units {
        if account.units.contains(unit) {
            continue;
        }
        let transient = roots.transient(account.uid, unit);
        let written = account.guest_units.contains_key(unit);
        if !persistence::is_judged(unit, transient, written) {
            continue;
        }
        let ids = unit_sessions(group);
        // The user manager makes a scope's group before it has the system
        // manager move the caller's process in: judged once it is there.
        if ids.is_empty() && unit.ends_with(".scope") {
            let looks = account.empty_scopes.entry(unit.clone()).or_insert(0);
            *looks += 1;
            if *looks < EMPTY_SCOPE_LOOKS {
                deferred.push(unit.clone());
                continue;
            }
        }
        account.empty_scopes.remove(unit);
        let proof = persistence::proof_from_sessions(&ids, manager, &|id| {
            guest_sessions.get(&id.to_string()).cloned()
        });
        let verdict = match (&proof, account.guest_units.get(unit)) {
            // A guest's own unit file: its unit, whoever starts it.
            (Proof::None, Some(g)) => Verdict::Guest(g.clone()),
            _ => judge(&proof),
        };
        match verdict {
            Verdict::Owner => {}
            Verdict::Guest(g) => {
                if account.guest_units.len() < KEPT_UNITS || written {
                    account.guest_units.insert(unit.clone(), g.clone());
                }
                report(
                    vec![g],
                    "unit",
                    unit,
                    "stopped when the guest's access ends",
                );
            }
            Verdict::Unclear(guests) => report(
                guests,
                "unit",
                unit,
                "reported, not stopped: started while more than one person was logged in",
            ),
        }
    }
    account.empty_scopes.retain(|u, _| units.contains_key(u));
    account.units = units.into_keys().collect();
    for unit in deferred {
        account.units.remove(&unit);
    }

    if linger && !account.linger {
        match judge(&Proof::None) {
            Verdict::Owner => {}
            Verdict::Guest(g) => {
                account.guest_linger = Some(g.clone());
                report(
                    vec![g],
                    "linger",
                    &account.name.clone(),
                    "turned off when the guest's access ends",
                );
            }
            Verdict::Unclear(guests) => report(
                guests,
                "linger",
                &account.name.clone(),
                "reported: turned on while more than one person was logged in",
            ),
        }
    }
    if !linger {
        account.guest_linger = None;
    }
    account.linger = linger;

    if crontab != account.crontab {
        if let Some(guests) = not_owner(judge(&Proof::None)) {
            let path = crontab_path.display().to_string();
            report(
                guests,
                "crontab",
                &path,
                "reported: review it, vmshare keeps it",
            );
        }
    }
    account.crontab = crontab;

    for job in atjobs.difference(&account.atjobs) {
        if let Some(guests) = not_owner(judge(&Proof::None)) {
            let path = roots.atjobs.join(job).display().to_string();
            report(
                guests,
                "at",
                &path,
                "reported: review it (atq, atrm), vmshare keeps it",
            );
        }
    }
    account.atjobs = atjobs;
}

fn not_owner(verdict: Verdict) -> Option<Vec<String>> {
    match verdict {
        Verdict::Owner => None,
        Verdict::Guest(g) => Some(vec![g]),
        Verdict::Unclear(guests) => Some(guests),
    }
}

/// The guests granted `owner`'s account now.
fn granted(policy: Option<&Policy>, owner: &str) -> BTreeSet<String> {
    policy
        .and_then(|p| p.owners.get(owner))
        .map(|a| a.keys.iter().map(|k| k.guest.to_string()).collect())
        .unwrap_or_default()
}

/// Whether `guest` may still log in as `owner`: an accepted grant with a
/// key not past its deadline. No valid grant file: no one may.
fn has_access(policy: Option<&Policy>, owner: &str, guest: &str, now: i64) -> bool {
    policy.and_then(|p| p.owners.get(owner)).is_some_and(|a| {
        a.keys
            .iter()
            .any(|k| *k.guest == *guest && k.expires.is_none_or(|e| e > now))
    })
}

/// Ends what guests without access left: their units (each time one comes
/// back, as a restarting unit does) and the lingering they turned on.
fn end_revoked(
    account: &mut Account,
    roots: &Roots,
    policy: Option<&Policy>,
    now: i64,
    disable_linger: &dyn Fn(u32) -> Result<(), String>,
    found: &mut Vec<Report>,
) {
    let revoked: Vec<(String, String)> = account
        .guest_units
        .iter()
        .filter(|(_, g)| !has_access(policy, &account.name, g, now))
        .map(|(u, g)| (u.clone(), g.clone()))
        .collect();
    if !revoked.is_empty() {
        let groups = unit_groups(roots, account.uid);
        for (unit, guest) in revoked {
            let Some(group) = groups.get(&unit) else {
                // Gone: a transient unit does not come back.
                if !roots.transient(account.uid, &unit) && !account.unit_files.contains_key(&unit) {
                    account.guest_units.remove(&unit);
                }
                continue;
            };
            if !cgroup::is_populated(group).unwrap_or(false) {
                continue;
            }
            let action = match cgroup::kill_processes(group, UNIT_KILL_TIMEOUT) {
                Ok(()) => "stopped: the guest's access ended".to_string(),
                Err(e) => format!("could not be stopped: {e}"),
            };
            found.push(Report {
                at: now,
                owner: account.name.clone(),
                guests: vec![guest],
                kind: "unit".into(),
                what: unit,
                action,
            });
        }
    }
    if let Some(guest) = account.guest_linger.clone() {
        if !has_access(policy, &account.name, &guest, now) {
            let action = match disable_linger(account.uid) {
                Ok(()) => "turned off: the guest's access ended".to_string(),
                Err(e) => format!("could not be turned off: {e}"),
            };
            account.guest_linger = None;
            found.push(Report {
                at: now,
                owner: account.name.clone(),
                guests: vec![guest],
                kind: "linger".into(),
                what: account.name.clone(),
                action,
            });
        }
    }
}

/// One `persistence` event per report.
fn emit(report: &Report) {
    let guests = report.guests.join(",");
    let message = format!(
        "{} {} in {}'s account ({}): {}",
        report.kind, report.what, report.owner, guests, report.action
    );
    super::audit_event(
        &audit::Event {
            kind: Some(audit::Kind::Persistence),
            owner: &report.owner,
            guest: &guests,
            message: &message,
            ..audit::Event::default()
        },
        "",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::tests::sample;

    struct Tree {
        _dir: tempfile::TempDir,
        roots: Roots,
        home: PathBuf,
    }

    impl Tree {
        fn new() -> Tree {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().to_path_buf();
            let roots = Roots {
                cgroups: base.join("cg"),
                linger: base.join("linger"),
                crontabs: base.join("crontabs"),
                atjobs: base.join("atjobs"),
                run_user: base.join("run-user"),
                sessions: base.join("sessions"),
            };
            for d in [
                roots.manager_group(1000).join("app.slice"),
                roots.linger.clone(),
                roots.crontabs.clone(),
                roots.atjobs.clone(),
                roots.run_user.join("1000/systemd/transient"),
                roots.sessions.clone(),
                base.join("home/.config/systemd/user"),
            ] {
                fs::create_dir_all(d).unwrap();
            }
            Tree {
                home: base.join("home"),
                _dir: dir,
                roots,
            }
        }

        /// A unit the user manager runs: its group, and for a transient
        /// one its file in the runtime directory.
        fn unit(&self, name: &str, transient: bool) {
            let group = self.roots.manager_group(1000).join("app.slice").join(name);
            fs::create_dir_all(&group).unwrap();
            fs::write(group.join("cgroup.procs"), "").unwrap();
            fs::write(group.join("cgroup.events"), "populated 0\n").unwrap();
            if transient {
                let file = self
                    .roots
                    .run_user
                    .join("1000/systemd/transient")
                    .join(name);
                fs::write(file, "").unwrap();
            }
        }

        fn session(&self, id: &str, live: bool) {
            let scope = self
                .roots
                .user_slice(1000)
                .join(format!("session-{id}.scope"));
            if live {
                fs::create_dir_all(scope).unwrap();
            } else {
                let _ = fs::remove_dir(scope);
            }
        }

        fn account(&self) -> Account {
            Account {
                name: "alice".into(),
                uid: 1000,
                home: self.home.clone(),
                ..Account::default()
            }
        }

        fn look(
            &self,
            a: &mut Account,
            records: &[SessionRecord],
            created: &[&str],
        ) -> Vec<Report> {
            let created: Vec<String> = created
                .iter()
                .map(|id| format!("session-{id}.scope"))
                .collect();
            let mut found = Vec::new();
            look_at(a, &self.roots, records, &created, 5, &mut found);
            found
        }
    }

    fn guest_session(guest: &str, logind: &str) -> SessionRecord {
        let mut r = sample(&format!("{guest}-{logind}"));
        r.guest = guest.into();
        r.placement = Placement::Logind {
            session: logind.into(),
        };
        r
    }

    fn summary(found: &[Report]) -> Vec<String> {
        found
            .iter()
            .map(|r| format!("{} {} {} {}", r.kind, r.what, r.guests.join(","), r.action))
            .collect()
    }

    #[test]
    fn one_guest_alone_owns_what_appears_and_the_owners_jobs_stay_the_owners() {
        let t = Tree::new();
        let mut a = t.account();
        // The owner's own job, started before any guest came.
        t.unit("owner-job.service", true);
        // The lingering user manager's own session (systemd 256 and later)
        // is no one's login.
        t.session("2", true);
        fs::write(t.roots.sessions.join("2"), "UID=1000\nCLASS=manager\n").unwrap();
        assert!(t.look(&mut a, &[], &[]).is_empty());
        let bob = [guest_session("bob", "7")];
        t.session("7", true);
        assert!(t.look(&mut a, &bob, &["7"]).is_empty());

        t.unit("guest-run.service", true);
        t.unit("guest-scope.scope", false);
        // The owner's timer starting its own unit file's service: not judged.
        t.unit("backup.service", false);
        let user = t.home.join(".config/systemd/user");
        fs::write(user.join("evil.service"), "[Service]\n").unwrap();
        fs::create_dir_all(user.join("default.target.wants")).unwrap();
        std::os::unix::fs::symlink(
            "../evil.service",
            user.join("default.target.wants/evil.service"),
        )
        .unwrap();
        fs::write(t.roots.linger.join("alice"), "").unwrap();
        fs::write(t.roots.crontabs.join("alice"), "17 3 * * * true\n").unwrap();
        // The scope, empty here, is judged once it has been empty a while.
        let mut found = Vec::new();
        for _ in 0..EMPTY_SCOPE_LOOKS {
            found.extend(summary(&t.look(&mut a, &bob, &[])));
        }
        for want in [
            "unit guest-run.service bob stopped when",
            "unit guest-scope.scope bob stopped when",
            "unit-file ~/.config/systemd/user/evil.service bob its unit is stopped",
            "unit-file ~/.config/systemd/user/default.target.wants/evil.service bob reported",
            "linger alice bob turned off when",
            "crontab ",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(want)),
                "{want}: {found:?}"
            );
        }
        assert!(
            !found
                .iter()
                .any(|f| f.contains("backup") || f.contains("owner-job")),
            "{found:?}"
        );
        assert_eq!(found.len(), 6, "{found:?}");
        assert_eq!(
            a.guest_units.keys().map(String::as_str).collect::<Vec<_>>(),
            ["evil.service", "guest-run.service", "guest-scope.scope"]
        );
        assert_eq!(a.guest_linger.as_deref(), Some("bob"));
        // The guest's own unit, started later (by its timer, say), is
        // still the guest's.
        t.session("7", false);
        t.unit("evil.service", false);
        let found = summary(&t.look(&mut a, &[], &[]));
        assert!(found[0].starts_with("unit evil.service bob"), "{found:?}");
        // Nothing new: nothing reported twice.
        assert!(t.look(&mut a, &[], &[]).is_empty());
    }

    /// logind makes bob's session scope before the session hook records
    /// it as bob's, and bob starts a unit at once: judged when the record
    /// is there, it is bob's, not "someone else was logged in".
    #[test]
    fn a_unit_started_before_the_guests_record_is_the_guests() {
        let t = Tree::new();
        let mut a = t.account();
        t.look(&mut a, &[], &[]);
        t.session("7", true);
        t.unit("run-early.service", true);
        assert!(t.look(&mut a, &[], &["7"]).is_empty());
        assert!(t.look(&mut a, &[], &[]).is_empty());
        let bob = [guest_session("bob", "7")];
        let found = summary(&t.look(&mut a, &bob, &[]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("unit run-early.service bob stopped when"),
            "{found:?}"
        );
    }

    #[test]
    fn with_the_owner_or_an_unseen_session_present_it_is_reported_not_pinned() {
        let t = Tree::new();
        let mut a = t.account();
        t.look(&mut a, &[], &[]);
        let bob = [guest_session("bob", "7")];
        t.session("7", true);
        t.session("8", true);
        t.look(&mut a, &bob, &["7", "8"]);
        t.unit("run-u1.service", true);
        // Session 8 has no guest record: judged once it has had time to
        // get one, as someone else's.
        for _ in 2..SETTLE_LOOKS {
            assert!(t.look(&mut a, &bob, &[]).is_empty());
        }
        let found = summary(&t.look(&mut a, &bob, &[]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("unit run-u1.service bob reported, not stopped"),
            "{found:?}"
        );
        assert!(a.guest_units.is_empty());

        // A scope still empty (its process not moved in yet) waits for it.
        t.unit("run-r9.scope", false);
        assert!(t.look(&mut a, &bob, &[]).is_empty());
        assert_eq!(a.empty_scopes.get("run-r9.scope"), Some(&1));
        // Empty for good: judged on who was there.
        let mut found = Vec::new();
        for _ in 1..EMPTY_SCOPE_LOOKS {
            found.extend(summary(&t.look(&mut a, &bob, &[])));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("unit run-r9.scope bob reported"),
            "{found:?}"
        );
        assert!(a.empty_scopes.is_empty());

        // The owner left; a session came and went between two looks.
        t.session("8", false);
        t.look(&mut a, &bob, &[]);
        t.look(&mut a, &bob, &[]);
        t.unit("run-u2.service", true);
        let found = summary(&t.look(&mut a, &bob, &["9"]));
        assert!(
            found[0].starts_with("unit run-u2.service bob reported"),
            "{found:?}"
        );
        // No one present: the owner's.
        t.session("7", false);
        t.look(&mut a, &[], &[]);
        t.look(&mut a, &[], &[]);
        t.unit("run-u3.service", true);
        fs::write(t.roots.crontabs.join("alice"), "x\n").unwrap();
        assert!(t.look(&mut a, &[], &[]).is_empty());
        assert!(a.guest_units.is_empty());
    }

    /// Ends what guests left with no valid grant file (no guest has
    /// access): the reports, and the uids whose lingering was turned off.
    fn no_one_has_access(t: &Tree, a: &mut Account) -> (Vec<String>, Vec<u32>) {
        let asked = std::cell::RefCell::new(Vec::new());
        let disable = |uid: u32| {
            asked.borrow_mut().push(uid);
            Ok(())
        };
        let mut found = Vec::new();
        end_revoked(a, &t.roots, None, 9, &disable, &mut found);
        (summary(&found), asked.into_inner())
    }

    /// bob, alone in alice's account, starts a service and turns lingering
    /// on: both pinned on him.
    fn bob_left_a_unit_and_lingering(t: &Tree) -> (Account, [SessionRecord; 1]) {
        let mut a = t.account();
        t.look(&mut a, &[], &[]);
        t.session("7", true);
        let bob = [guest_session("bob", "7")];
        t.look(&mut a, &bob, &["7"]);
        t.unit("run-u1.service", true);
        fs::write(t.roots.linger.join("alice"), "").unwrap();
        assert_eq!(t.look(&mut a, &bob, &[]).len(), 2);
        (a, bob)
    }

    /// The daemon stops while bob is logged in, after it pinned a unit and
    /// lingering on him; a unit appears while it is down. The restarted
    /// daemon reads what it saved: the new unit is reported (anyone
    /// granted might have been there), bob's unit and lingering are still
    /// his and end with his access.
    #[test]
    fn a_restart_forgets_nothing_and_takes_nothing_as_the_owners() {
        let t = Tree::new();
        let (a, bob) = bob_left_a_unit_and_lingering(&t);

        let state = crate::sys::fsutil::tests::scratch();
        let saved = BTreeMap::from([("alice".to_string(), a.saved())]);
        watched::write(state.path(), &saved).unwrap();
        drop(a);
        t.unit("run-u2.service", true);
        let back = watched::read(state.path())
            .unwrap()
            .remove("alice")
            .unwrap();
        let mut a = Account::resume("alice", t.home.clone(), back);
        a.wake(BTreeSet::from(["bob".to_string(), "carol".to_string()]));
        let found = summary(&t.look(&mut a, &bob, &[]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("unit run-u2.service bob,carol reported, not stopped"),
            "{found:?}"
        );
        assert_eq!(
            a.guest_units.keys().map(String::as_str).collect::<Vec<_>>(),
            ["run-u1.service"]
        );
        assert_eq!(no_one_has_access(&t, &mut a).1, [1000]);
        // Woken once: later looks judge by who is there again.
        t.look(&mut a, &bob, &[]);
        t.unit("run-u3.service", true);
        let found = summary(&t.look(&mut a, &bob, &[]));
        assert!(
            found[0].starts_with("unit run-u3.service bob stopped when"),
            "{found:?}"
        );
    }

    #[test]
    fn a_revoked_guests_lingering_is_turned_off_and_units_gone_are_forgotten() {
        let t = Tree::new();
        let (mut a, _) = bob_left_a_unit_and_lingering(&t);
        let (found, asked) = no_one_has_access(&t, &mut a);
        assert_eq!(asked, [1000]);
        assert_eq!(
            found,
            ["linger alice bob turned off: the guest's access ended"]
        );
        assert!(a.guest_linger.is_none());
        // The unit's group is empty: nothing to stop. Once gone (no group,
        // no transient file) it is forgotten.
        assert!(a.guest_units.contains_key("run-u1.service"));
        let group = t.roots.manager_group(1000).join("app.slice/run-u1.service");
        fs::remove_dir_all(group).unwrap();
        fs::remove_file(
            t.roots
                .run_user
                .join("1000/systemd/transient/run-u1.service"),
        )
        .unwrap();
        assert_eq!(no_one_has_access(&t, &mut a), (vec![], vec![]));
        assert!(a.guest_units.is_empty());
    }
}
