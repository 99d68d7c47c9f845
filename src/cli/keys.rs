//! `vmshare keys`: the key ledger. `list` shows whose each recorded key is;
//! `release` (root only, audited) gives a key back to its owner.

use std::process::ExitCode;

use crate::store::config::Config;
use crate::store::ledger::{self, Entry, OnBad, State, Updated};
use crate::store::source::{self, Outcome};
use crate::sys::accounts::SystemAccounts;
use crate::sys::log::audit;
use crate::sys::log::syslog::Level;

pub fn list(config: &Config, owner: Option<&str>, json: bool) -> ExitCode {
    let path = config.ledger_path();
    let ledger = match ledger::read(&path) {
        State::Valid(l) => l,
        State::Missing => Default::default(),
        State::Bad { why, .. } => {
            eprintln!("vmshare: the key ledger cannot be trusted: {why}");
            return ExitCode::FAILURE;
        }
    };
    let entries: Vec<&Entry> = ledger
        .entries()
        .filter(|e| owner.is_none_or(|o| e.owner == o))
        .collect();
    if json {
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "owner": e.owner,
                    "fingerprint": e.fingerprint,
                    "guest": e.guest,
                    "origin": e.origin.as_str(),
                    "since": e.since,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "format": 1, "keys": list }));
        return ExitCode::SUCCESS;
    }
    if entries.is_empty() {
        println!("no keys in the ledger ({})", path.display());
    }
    for e in entries {
        println!(
            "{:<12} {} {:<12} {}",
            e.owner,
            e.fingerprint,
            e.guest,
            e.origin.as_str()
        );
    }
    ExitCode::SUCCESS
}

pub fn release(config: &Config, owner: &str, fingerprint: &str) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("vmshare: only root can release a key from the key ledger");
        return ExitCode::FAILURE;
    }
    if !ledger::is_fingerprint(fingerprint) {
        eprintln!(
            "vmshare: {fingerprint:?} is not a key fingerprint (expected SHA256: and 43 base64 characters, as `vmshare keys list` shows)"
        );
        return ExitCode::from(2);
    }
    // A key granted now would be the guest's again at the next pass.
    let loaded = source::load(&config.grants, &SystemAccounts);
    match &loaded.outcome {
        Outcome::Invalid(e) => {
            eprintln!("vmshare: the grant file is invalid; fix it first:\n{e}");
            return ExitCode::FAILURE;
        }
        Outcome::Missing | Outcome::Valid { .. } => {}
    }
    let granted_to = loaded
        .policy()
        .and_then(|p| p.owners.get(owner))
        .and_then(|a| a.keys.iter().find(|k| *k.fingerprint == *fingerprint))
        .map(|k| k.guest.clone());
    if let Some(guest) = granted_to {
        eprintln!(
            "vmshare: {fingerprint} is granted to {owner}'s guest {guest} now; revoke it (or remove the key from the guest) first"
        );
        return ExitCode::FAILURE;
    }
    let mut released = None;
    let done = ledger::update(&config.state_dir, OnBad::Keep, |l, _| {
        released = l.release(owner, fingerprint);
        released.is_some()
    });
    match done {
        Ok(Updated::LeftBad(why)) => {
            eprintln!(
                "vmshare: the key ledger cannot be trusted: {why}\nthe daemon rebuilds it on its next pass; release the key then"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vmshare: {e}");
            ExitCode::FAILURE
        }
        Ok(_) => match released {
            None => {
                eprintln!("vmshare: {fingerprint} is not one of {owner}'s keys in the key ledger");
                ExitCode::FAILURE
            }
            Some(entry) => {
                audit::emit(
                    "vmshare",
                    Level::Notice,
                    &audit::Event {
                        kind: Some(audit::Kind::KeyRelease),
                        owner,
                        guest: &entry.guest,
                        fingerprint,
                        message: &format!(
                            "key released to the owner by root (was guest {}'s, {})",
                            entry.guest,
                            entry.origin.as_str()
                        ),
                        ..audit::Event::default()
                    },
                );
                println!(
                    "released {fingerprint}: no longer guest {}'s; where {owner}'s own key files list it, it logs in as {owner}",
                    entry.guest
                );
                ExitCode::SUCCESS
            }
        },
    }
}
