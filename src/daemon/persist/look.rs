//! One look at one account: who was present since the last look, what
//! appeared meanwhile, and the verdict on each (`session::persistence`).
//! Units and lingering found to be one guest's are remembered as that
//! guest's, for `revoke` to end with the guest's access; everything found
//! is reported.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::account::Account;
use super::facts::{self, Roots};
use crate::session::backend::{cgroup, Placement};
use crate::session::persistence::{self, Presence, Proof, Verdict};
use crate::store::escapes::Report;
use crate::store::records::SessionRecord;
use crate::sys::procfs;

/// Units remembered per owner as a guest's.
const KEPT_UNITS: usize = 4096;
/// How many looks a new scope may be empty before it is judged without
/// its processes' sessions.
pub(super) const EMPTY_SCOPE_LOOKS: u32 = 6;
/// How many looks a session may be live with no guest record before it is
/// taken for someone else's: logind makes a login's scope (pam_systemd)
/// just before the session hook records a guest's, and a guest's unit
/// started at once must not be judged in between.
pub(super) const SETTLE_LOOKS: u32 = 6;

/// What an account holds now.
struct Holdings {
    units: BTreeMap<String, PathBuf>,
    unit_files: BTreeMap<String, i64>,
    linger: bool,
    crontab: Option<(i64, u64)>,
    atjobs: BTreeSet<String>,
}

impl Holdings {
    fn read(roots: &Roots, account: &Account) -> Holdings {
        Holdings {
            units: facts::unit_groups(roots, account.uid),
            unit_files: facts::unit_files(&account.home),
            linger: roots.linger.join(&account.name).exists(),
            crontab: facts::file_state(&roots.crontabs.join(&account.name)),
            atjobs: facts::at_jobs(&roots.atjobs, account.uid),
        }
    }
}

/// The reports of one look at one account.
struct Found<'a> {
    owner: String,
    now: i64,
    out: &'a mut Vec<Report>,
}

impl Found<'_> {
    fn report(&mut self, guests: Vec<String>, kind: &str, what: &str, action: &str) {
        self.out.push(Report {
            at: self.now,
            owner: self.owner.clone(),
            guests,
            kind: kind.to_string(),
            what: what.to_string(),
            action: action.to_string(),
        });
    }
}

/// Who made a change, judged against who was present over the window.
type Judge<'a> = &'a dyn Fn(&Proof) -> Verdict;

/// One look at one account: who is present, what appeared since the last
/// look, and the verdict on each.
pub(super) fn look_at<R: Borrow<SessionRecord>>(
    account: &mut Account,
    roots: &Roots,
    records: &[R],
    created: &[String],
    now: i64,
    found: &mut Vec<Report>,
) {
    let mine: Vec<&SessionRecord> = records
        .iter()
        .map(Borrow::borrow)
        .filter(|r: &&SessionRecord| r.owner == account.name)
        .collect();
    // Each guest session's logind session, by its id.
    let guest_sessions: BTreeMap<String, String> = mine
        .iter()
        .filter_map(|r| match &r.placement {
            Placement::Logind { session } => Some((session.clone(), r.guest.clone())),
            _ => None,
        })
        .collect();
    let Some(window) = presence(account, roots, &mine, &guest_sessions, created) else {
        return;
    };
    let holdings = Holdings::read(roots, account);
    if !account.looked {
        // What was there at the first look is taken as it is.
        account.looked = true;
        account.units = holdings.units.into_keys().collect();
        account.unit_files = holdings.unit_files;
        account.linger = holdings.linger;
        account.crontab = holdings.crontab;
        account.atjobs = holdings.atjobs;
        return;
    }
    let mut found = Found {
        owner: account.name.clone(),
        now,
        out: found,
    };
    let judge = |proof: &Proof| persistence::attribute(&window, proof);
    // Unit files first: a unit a guest wrote is then known when it starts.
    unit_files(account, holdings.unit_files, &judge, &mut found);
    units(
        account,
        roots,
        holdings.units,
        &guest_sessions,
        &judge,
        &mut found,
    );
    linger(account, holdings.linger, &judge, &mut found);
    cron_and_at(
        account,
        roots,
        holdings.crontab,
        holdings.atjobs,
        &judge,
        &mut found,
    );
}

/// Who was present since the last look, from the guest records, logind's
/// sessions of the account and the sessions seen created in between.
/// `None` while a login has not shown whose it is yet: what appeared is
/// judged at a later look, with whoever was here meanwhile.
fn presence(
    account: &mut Account,
    roots: &Roots,
    mine: &[&SessionRecord],
    guest_sessions: &BTreeMap<String, String>,
    created: &[String],
) -> Option<Presence> {
    let live = facts::live_sessions(roots, account.uid);
    account.seen_sessions.extend(live.iter().cloned());
    let created_ids: Vec<String> = created
        .iter()
        .filter_map(|n| facts::session_id(n).map(String::from))
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
        account.carried = window;
        return None;
    }
    account.carried = Presence::default();
    account.presence = now_present;
    Some(window)
}

/// Files new or changed under `~/.config/systemd/user`.
fn unit_files(
    account: &mut Account,
    files: BTreeMap<String, i64>,
    judge: Judge<'_>,
    found: &mut Found<'_>,
) {
    for (file, ctime) in &files {
        let before = account.unit_files.get(file);
        if before == Some(ctime) {
            continue;
        }
        let Some(unit) = persistence::unit_of_file(file) else {
            continue;
        };
        let path = format!("~/.config/systemd/user/{file}");
        match judge(&Proof::None) {
            Verdict::Owner => {}
            // Only a unit file the guest created makes the unit the
            // guest's; a change to the owner's unit, a drop-in or an
            // enabling link is the owner's unit still: reported.
            Verdict::Guest(g) if before.is_none() && file == unit => {
                if account.guest_units.len() < KEPT_UNITS {
                    account.guest_units.insert(unit.to_string(), g.clone());
                }
                found.report(
                    vec![g],
                    "unit-file",
                    &path,
                    "its unit is stopped when the guest's access ends; the file stays",
                );
            }
            Verdict::Guest(g) => found.report(
                vec![g],
                "unit-file",
                &path,
                "reported: an enabling link, a drop-in, or a change to a unit file the guest did not create",
            ),
            Verdict::Unclear(guests) => found.report(
                guests,
                "unit-file",
                &path,
                "reported: changed while more than one person was logged in",
            ),
        }
    }
    account.unit_files = files;
}

/// Units new in the user manager: transient ones, and those of unit files
/// a guest wrote.
fn units(
    account: &mut Account,
    roots: &Roots,
    units: BTreeMap<String, PathBuf>,
    guest_sessions: &BTreeMap<String, String>,
    judge: Judge<'_>,
    found: &mut Found<'_>,
) {
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
        let ids = facts::unit_sessions(group);
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
                found.report(
                    vec![g],
                    "unit",
                    unit,
                    "stopped when the guest's access ends",
                );
            }
            Verdict::Unclear(guests) => found.report(
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
}

/// Lingering turned on since the last look.
fn linger(account: &mut Account, linger: bool, judge: Judge<'_>, found: &mut Found<'_>) {
    if linger && !account.linger {
        let name = account.name.clone();
        match judge(&Proof::None) {
            Verdict::Owner => {}
            Verdict::Guest(g) => {
                account.guest_linger = Some(g.clone());
                found.report(
                    vec![g],
                    "linger",
                    &name,
                    "turned off when the guest's access ends",
                );
            }
            Verdict::Unclear(guests) => found.report(
                guests,
                "linger",
                &name,
                "reported: turned on while more than one person was logged in",
            ),
        }
    }
    if !linger {
        account.guest_linger = None;
    }
    account.linger = linger;
}

/// A changed crontab and new at jobs: reported only.
fn cron_and_at(
    account: &mut Account,
    roots: &Roots,
    crontab: Option<(i64, u64)>,
    atjobs: BTreeSet<String>,
    judge: Judge<'_>,
    found: &mut Found<'_>,
) {
    if crontab != account.crontab {
        if let Some(guests) = not_owner(judge(&Proof::None)) {
            let path = roots.crontabs.join(&account.name).display().to_string();
            found.report(
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
            found.report(
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
