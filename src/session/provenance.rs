//! Whose a key is by the key ledger, as the PAM hook asks it on every
//! login: the ledger is read once, on first use, within its size bound.
//! Where the ledger cannot be trusted (or is not there), what the session
//! records still prove stands in: the keys of the owner's recorded guest
//! sessions.

use std::cell::OnceCell;

use crate::session::hook::AuthKey;
use crate::store::config::Config;
use crate::store::ledger::{self, Entry, Ledger, OnBad, Origin, State, Updated};
use crate::store::records;
use crate::sys::log::syslog::{self, Level};

const IDENT: &str = "vmshare-pam";

/// The `SHA256:` fingerprint of a key, as the ledger names keys.
pub fn fingerprint(key: &AuthKey) -> Option<String> {
    crate::grant::key::parse_key(&format!("{} {}", key.algorithm, key.blob))
        .ok()
        .map(|k| k.fingerprint)
}

enum Known {
    Ledger(Ledger),
    /// (fingerprint, guest) of the owner's recorded sessions.
    Records(Vec<(String, String)>),
}

/// One owner's keys as the ledger knows them, for one login.
pub struct Provenance<'a> {
    config: &'a Config,
    owner: &'a str,
    known: OnceCell<Known>,
}

impl<'a> Provenance<'a> {
    pub fn new(config: &'a Config, owner: &'a str) -> Self {
        Provenance {
            config,
            owner,
            known: OnceCell::new(),
        }
    }

    /// The guest the ledger names for `key`, if any.
    pub fn guest_of(&self, key: &AuthKey) -> Option<String> {
        let fp = fingerprint(key)?;
        match self.known() {
            Known::Ledger(l) => l.get(self.owner, &fp).map(|e| e.guest.clone()),
            Known::Records(keys) => keys.iter().find(|(f, _)| *f == fp).map(|(_, g)| g.clone()),
        }
    }

    fn known(&self) -> &Known {
        self.known.get_or_init(|| {
            let why = match ledger::read(&self.config.ledger_path()) {
                State::Valid(l) => return Known::Ledger(l),
                State::Missing => None,
                State::Bad { why, .. } => Some(why),
            };
            if let Some(why) = why {
                syslog::log(
                    IDENT,
                    Level::Error,
                    &format!("key ledger not trusted, judging by the session records: {why}"),
                );
            }
            let (list, _) = records::list(&self.config.sessions_dir());
            Known::Records(
                list.into_iter()
                    .filter(|r| r.owner == self.owner)
                    .map(|r| (r.fingerprint, r.guest))
                    .collect(),
            )
        })
    }

    /// Records that `guest` authenticated with `key`, unless the ledger
    /// has it as that guest's already. A ledger that cannot be trusted is
    /// left for the daemon to repair (the session record keeps the key
    /// known meanwhile); one that cannot be written is an error.
    pub fn record(&self, guest: &str, key: &AuthKey, now: i64) -> Result<(), String> {
        if self.guest_of(key).as_deref() == Some(guest) && matches!(self.known(), Known::Ledger(_))
        {
            return Ok(());
        }
        let Some(fp) = fingerprint(key) else {
            return Ok(());
        };
        let entry = Entry {
            owner: self.owner.to_string(),
            fingerprint: fp,
            guest: guest.to_string(),
            origin: Origin::Authenticated,
            since: now,
        };
        match ledger::update(&self.config.state_dir, OnBad::Keep, |l, _| l.record(entry))? {
            Updated::LeftBad(why) => syslog::log(
                IDENT,
                Level::Error,
                &format!("key ledger not trusted, not recorded there: {why}"),
            ),
            Updated::Unchanged | Updated::Written | Updated::Repaired(_) => {}
        }
        Ok(())
    }
}
