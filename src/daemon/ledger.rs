//! The daemon's part in the key ledger: every key the grant file gives a
//! guest goes in on each pass (so it stays the guest's after the grant is
//! gone), and a ledger that is missing or cannot be trusted is rebuilt from
//! what the daemon knows: the entries a damaged root-owned file still
//! holds, the grant file, and the session records.

use tracing::{error, warn};

use crate::store::config::Config;
use crate::store::ledger::{self, Entry, Holdings, Ledger, OnBad, Origin, Updated};
use crate::store::records;
use crate::store::source::Loaded;

/// Records the grant file's keys; repairs a bad ledger.
pub fn note_grants(config: &Config, loaded: &Loaded, now: i64) {
    let Some(policy) = loaded.policy() else {
        return;
    };
    let granted = policy.owners.iter().flat_map(|(owner, access)| {
        access
            .keys
            .iter()
            .map(move |k| (owner.as_str(), &*k.fingerprint, &*k.guest))
    });
    // The usual pass: every key already noted, nothing to write.
    let text = ledger::read_for_check(&config.state_dir);
    if text
        .as_deref()
        .and_then(Holdings::scan)
        .is_some_and(|held| held.hold(granted))
    {
        return;
    }
    let change = |l: &mut Ledger, rebuilding: bool| {
        let mut changed = false;
        for (owner, access) in &policy.owners {
            for key in &access.keys {
                changed |= l.record(Entry {
                    owner: owner.clone(),
                    fingerprint: key.fingerprint.to_string(),
                    guest: key.guest.to_string(),
                    origin: Origin::Granted,
                    since: now,
                });
            }
        }
        if rebuilding {
            changed |= add_recorded_sessions(config, l, now);
        }
        changed
    };
    match ledger::update(&config.state_dir, OnBad::Repair, change) {
        Ok(Updated::Repaired(why)) => warn!(
            ledger = %config.ledger_path().display(),
            "key ledger could not be trusted ({why}); rebuilt from what it still held, the grant file and the session records"
        ),
        Ok(_) => {}
        Err(e) => error!("cannot record granted keys in the key ledger: {e}"),
    }
}

/// Adds the keys of recorded guest sessions.
fn add_recorded_sessions(config: &Config, l: &mut Ledger, now: i64) -> bool {
    let (list, _) = records::list(&config.sessions_dir());
    let mut changed = false;
    for r in list
        .into_iter()
        .filter(|r| ledger::is_fingerprint(&r.fingerprint))
    {
        changed |= l.record(Entry {
            owner: r.owner,
            fingerprint: r.fingerprint,
            guest: r.guest,
            origin: Origin::Authenticated,
            since: now,
        });
    }
    changed
}
