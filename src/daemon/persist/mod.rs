//! What guests leave running outside their sessions, on systemd hosts: work
//! in the owner's user manager (`systemd-run --user`, with or without
//! `--scope`, units a guest wrote and enabled), lingering turned on, and
//! crontab and at jobs. logind ends a guest's session scope on revoke; none
//! of these is in it.
//!
//! Every TICK the watcher looks at each owner's account: who is logged in (guest records, logind's
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
//!
//! It runs on a thread of its own, beside the enforcement loop, not as a
//! task on the daemon's runtime or on its blocking pool: a look reads
//! owners' home directories, cgroup trees and /proc for every unit, any of
//! which can be slow (a home on a network file system, thousands of
//! units), and a task on the loop would hold every revoke behind it, while
//! on the blocking pool it would hold a thread that passes need. The
//! thread shares with the passes only the configuration, read-only, and
//! the system bus connection, whose calls are each bounded; the session
//! records it reads through a cache of its own. A process of its own would
//! isolate it no further from the loop and would need a channel back for
//! `vmshare status`.
//!
//! - `facts`: what the system says about an account now;
//! - `account`: what the watcher remembers of it between looks;
//! - `look`: one look, and the verdict on what appeared;
//! - `revoke`: ending what a guest without access left.

mod account;
mod facts;
mod look;
mod revoke;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::time::Duration;

use inotify::{Inotify, WatchDescriptor};
use tracing::warn;

use self::account::{account, Account};
use self::facts::Roots;
use crate::grant::policy::Policy;
use crate::session::backend::{cgroup, logind, SystemBus};
use crate::store::config::Config;
use crate::store::escapes::{self, Report};
use crate::store::records;
use crate::store::source::{self, FileVersion};
use crate::store::watched;
use crate::sys::accounts::SystemAccounts;

/// How often each account is looked at.
pub const TICK: Duration = Duration::from_millis(500);
/// Reports kept for `vmshare status`, newest last.
const KEPT_REPORTS: usize = 200;

/// The watcher's state.
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
            watcher.look(crate::daemon::now_ns() / 1_000_000_000, &bus);
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
            account.wake(revoke::granted(policy, &name));
            let created = account
                .watch
                .as_ref()
                .and_then(|w| created.get(w))
                .cloned()
                .unwrap_or_default();
            let mut found = Vec::new();
            look::look_at(account, roots, &records, &created, now, &mut found);
            revoke::end_revoked(
                account,
                roots,
                policy,
                now,
                &|uid| bus.disable_linger(uid),
                &mut found,
            );
            for report in found {
                revoke::emit(&report);
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
