//! `sharing`, `invite`, `accept`, `extend`, `reject`, `revoke`, `leave`: one change to
//! the grant file each, through [`crate::store::edit::edit_file`].

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{LimitArgs, OwnerGuest};
use crate::grant::lifecycle::{Change, SetLimits};
use crate::grant::limits::{parse_when, Network, MAX_FROM};
use crate::session::root_paths;
use crate::store::config::Config;
use crate::sys::accounts::SystemAccounts;

/// Key files larger than this are refused.
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

pub fn sharing(config: &Config, owner: String, on: bool) -> ExitCode {
    let code = run(
        config,
        Change::Sharing {
            owner: owner.clone(),
            on,
        },
    );
    if on {
        then_hold(config, code, &owner)
    } else {
        code
    }
}

pub fn invite(
    config: &Config,
    who: OwnerGuest,
    mut keys: Vec<String>,
    key_files: &[PathBuf],
    limits: &LimitArgs,
    admin: bool,
) -> ExitCode {
    let limits = match set_limits(limits, unix_now()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    for file in key_files {
        match read_key_file(file) {
            Ok(more) => keys.extend(more),
            Err(e) => {
                eprintln!("vmshare: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(refused) = refuse_without_admin(config, &who, admin) {
        return refused;
    }
    let owner = who.owner.clone();
    if let Err(e) = super::owner_keys::refuse_owners_keys(config, &owner, &keys) {
        eprintln!("vmshare: {e}");
        eprintln!("vmshare: nothing was changed");
        return ExitCode::FAILURE;
    }
    let code = run(
        config,
        Change::Invite {
            owner: who.owner.clone(),
            guest: who.guest.clone(),
            keys,
            limits,
        },
    );
    let guest = who.guest.clone();
    let code = then_admin(config, code, admin, who);
    let code = then_hold(config, code, &owner);
    if code == ExitCode::SUCCESS {
        hint_if_sharing_off(config, &owner);
        println!(
            "tell {guest}: to accept, run `ssh {}@{}` with the key you were invited with",
            crate::portal::ACCOUNT,
            host_name()
        );
    }
    code
}

/// This VM's name, for what to tell a guest.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "THIS-VM".into())
}

pub fn accept(config: &Config, who: OwnerGuest, limits: &LimitArgs, admin: bool) -> ExitCode {
    let limits = match set_limits(limits, unix_now()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if let Some(refused) = refuse_without_admin(config, &who, admin) {
        return refused;
    }
    let owner = who.owner.clone();
    let code = run(
        config,
        Change::Accept {
            owner: who.owner.clone(),
            guest: who.guest.clone(),
            limits,
        },
    );
    let code = then_admin(config, code, admin, who);
    let code = then_hold(config, code, &owner);
    if code == ExitCode::SUCCESS {
        hint_if_sharing_off(config, &owner);
    }
    code
}

pub fn extend(config: &Config, who: OwnerGuest, expires: &str) -> ExitCode {
    let expires = match parse_limit("--expires", parse_when(expires, unix_now())) {
        Ok(at) => at,
        Err(code) => return code,
    };
    run(
        config,
        Change::Extend {
            owner: who.owner,
            guest: who.guest,
            expires,
        },
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(i64::MAX, |d| d.as_secs() as i64)
}

/// The limits given on the command line, checked; a bad one is a usage
/// error (exit 2) naming the option.
fn set_limits(args: &LimitArgs, now: i64) -> Result<SetLimits, ExitCode> {
    let expires = match &args.expires {
        Some(when) => Some(parse_limit("--expires", parse_when(when, now))?),
        None => None,
    };
    let from = if args.from.is_empty() {
        None
    } else {
        let mut nets: Vec<Network> = Vec::new();
        for text in &args.from {
            let net = parse_limit("--from", text.parse::<Network>())?;
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        if nets.len() > MAX_FROM {
            return parse_limit("--from", Err(format!("more than {MAX_FROM} networks")));
        }
        Some(nets)
    };
    Ok(SetLimits {
        expires,
        from,
        no_forwarding: args.no_forwarding,
    })
}

fn parse_limit<T>(option: &str, parsed: Result<T, String>) -> Result<T, ExitCode> {
    parsed.map_err(|why| {
        eprintln!("vmshare: {option}: {why}");
        eprintln!("vmshare: nothing was changed");
        ExitCode::from(2)
    })
}

pub fn reject(config: &Config, who: OwnerGuest) -> ExitCode {
    run(
        config,
        Change::Reject {
            owner: who.owner,
            guest: who.guest,
        },
    )
}

pub fn revoke(config: &Config, who: OwnerGuest) -> ExitCode {
    run(
        config,
        Change::Revoke {
            owner: who.owner,
            guest: who.guest,
        },
    )
}

pub fn leave(config: &Config, who: OwnerGuest) -> ExitCode {
    run(
        config,
        Change::Leave {
            owner: who.owner,
            guest: who.guest,
        },
    )
}

/// A guest who would not be admin, of an owner who becomes root where the
/// admin check cannot see, is refused before any edit.
fn refuse_without_admin(config: &Config, who: &OwnerGuest, admin: bool) -> Option<ExitCode> {
    let why = root_paths::refuse_without_admin(config, &who.owner, &who.guest, admin)?;
    eprintln!("vmshare: {why}");
    eprintln!("vmshare: nothing was changed");
    Some(ExitCode::FAILURE)
}

/// `--admin`: after the invite or accept succeeded, a second edit sets
/// `admin = true`. Until then the guest is without it, the safe side.
fn then_admin(config: &Config, code: ExitCode, admin: bool, who: OwnerGuest) -> ExitCode {
    if !admin || code != ExitCode::SUCCESS {
        return code;
    }
    run(
        config,
        Change::Admin {
            owner: who.owner,
            guest: who.guest,
            on: true,
        },
    )
}

/// After an edit that lets an owner's guests in: vmshare holds her keys,
/// so sshd reads no key file in her home (taken over the first time).
fn then_hold(config: &Config, code: ExitCode, owner: &str) -> ExitCode {
    if code != ExitCode::SUCCESS {
        return code;
    }
    match super::owner_keys::hold(config, owner) {
        Ok(hold) => {
            if let Some(summary) = hold.summary(owner) {
                println!("{summary}");
            }
            for note in &hold.notes {
                eprintln!("note: {note}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmshare: the grant file was changed, but {owner}'s keys could not be taken over: {e}");
            eprintln!("vmshare: no guest of {owner} gets in until `vmshare owner-keys import {owner}` succeeds");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config, change: Change) -> ExitCode {
    match crate::store::edit::edit_file(&config.grants, &change, &SystemAccounts) {
        Ok(done) => {
            println!("{}", done.summary);
            for note in &done.notes {
                eprintln!("warning: {}", note.in_file(&config.grants));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmshare: {e}");
            eprintln!("vmshare: nothing was changed");
            ExitCode::FAILURE
        }
    }
}

/// An invitation or acceptance does nothing while the owner's switch is
/// off; say so.
fn hint_if_sharing_off(config: &Config, owner: &str) {
    let loaded = crate::store::source::load(&config.grants, &SystemAccounts);
    if let Some(o) = loaded.grants().and_then(|g| g.owner(owner)) {
        if !o.sharing {
            eprintln!(
                "note: sharing is off for owner `{owner}`; no guest of theirs gets in until `vmshare sharing {owner} on`"
            );
        }
    }
}

/// Reads public keys, one a line; `#` comments and blank lines are skipped.
fn read_key_file(path: &Path) -> Result<Vec<String>, String> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        io::stdin()
            .lock()
            .take(MAX_KEY_FILE_BYTES + 1)
            .read_to_string(&mut text)
    } else {
        File::open(path).and_then(|f| f.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text))
    };
    read.map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(format!(
            "key file {} is larger than {MAX_KEY_FILE_BYTES} bytes",
            path.display()
        ));
    }
    let keys: Vec<String> = key_lines(&text);
    if keys.is_empty() {
        return Err(format!("key file {} holds no keys", path.display()));
    }
    Ok(keys)
}

fn key_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_files_skip_comments_and_blanks() {
        assert_eq!(
            super::key_lines("# mine\n\n  ssh-ed25519 AAAA x  \nssh-rsa BBBB\n"),
            ["ssh-ed25519 AAAA x", "ssh-rsa BBBB"]
        );
    }
}
