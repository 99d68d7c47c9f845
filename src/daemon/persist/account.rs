//! What the watcher knows of one owner's account between looks, and what of
//! it is kept across restarts (`store::watched`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use inotify::{Inotify, WatchDescriptor, WatchMask};

use super::facts::Roots;
use crate::session::persistence::Presence;
use crate::store::watched;

/// What was seen of one owner's account at the last look.
#[derive(Default)]
pub(super) struct Account {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) home: PathBuf,
    pub(super) watch: Option<WatchDescriptor>,
    pub(super) looked: bool,
    pub(super) presence: Presence,
    pub(super) seen_sessions: BTreeSet<String>,
    pub(super) units: BTreeSet<String>,
    pub(super) unit_files: BTreeMap<String, i64>,
    pub(super) linger: bool,
    pub(super) crontab: Option<(i64, u64)>,
    pub(super) atjobs: BTreeSet<String>,
    /// Units pinned on a guest, by unit name.
    pub(super) guest_units: BTreeMap<String, String>,
    /// Lingering a guest turned on.
    pub(super) guest_linger: Option<String>,
    /// New scopes with no process in them yet, by how many looks found them
    /// empty.
    pub(super) empty_scopes: BTreeMap<String, u32>,
    /// Live sessions with no guest record, by how many looks found them so.
    pub(super) unrecorded: BTreeMap<String, u32>,
    /// Who was present over looks that judged nothing (a login was still
    /// settling), for the next look that judges.
    pub(super) carried: Presence,
    /// Restored from the state dir: the next look also counts whoever
    /// may have come and gone while no one was looking.
    pub(super) resumed: bool,
}

impl Account {
    /// What is kept across restarts.
    pub(super) fn saved(&self) -> watched::Account {
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
    pub(super) fn wake(&mut self, granted: BTreeSet<String>) {
        if std::mem::take(&mut self.resumed) {
            self.presence.others = true;
            self.presence.guests.extend(granted);
        }
    }

    /// An account as a previous run of the daemon last saw it.
    pub(super) fn resume(name: &str, home: PathBuf, saved: watched::Account) -> Account {
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

/// The account's state, made at its first look.
pub(super) fn account<'a>(
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
