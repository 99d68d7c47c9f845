//! `vmshare owner-keys`: the keys vmshare holds for a sharing owner, and
//! taking them over when sharing starts.
//!
//! While an owner shares, sshd reads no key file in her home (the drop-in's
//! `Match Group vmshare-owners`); her own lines are held by root and served
//! by the key lookup. A guest runs as the owner and could write anything in
//! the home, so nothing there becomes hers again without root's word:
//! `import` and `release` list every line that appeared in the home files
//! since the takeover and take it only with `--yes`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use super::output::print_json;
use crate::grant::owner_lines::{self, key_file_paths, OwnerLine};
use crate::store::config::Config;
use crate::store::owner_keys::{self as held, Held};
use crate::store::source::{self, Outcome};
use crate::sys::accounts::SystemAccounts;
use crate::sys::as_user::{Reader, UserFile};
use crate::sys::log::audit;
use crate::sys::log::syslog::Level;
use crate::sys::owners_group;

const IDENT: &str = "vmshare";

/// Most bytes of one home key file read at a takeover or import.
const HOME_FILE_LIMIT: u64 = 1 << 20;

/// Longest a read of one home key file may take.
const HOME_FILE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a takeover did, for the caller to say.
#[derive(Debug, Default)]
pub struct Hold {
    /// `false` when the keys were already held (nothing done).
    pub taken: bool,
    pub lines: usize,
    /// What was left out or could not be read, one line each.
    pub notes: Vec<String>,
}

impl Hold {
    /// One line for people.
    pub fn summary(&self, owner: &str) -> Option<String> {
        self.taken.then(|| {
            format!(
                "{owner}'s own keys are now held by vmshare ({} line{}): sshd reads no key file in {owner}'s home while {owner} shares (`vmshare owner-keys list {owner}`)",
                self.lines,
                if self.lines == 1 { "" } else { "s" }
            )
        })
    }
}

/// Makes sure vmshare holds the owner's keys and sshd reads none from her
/// home: on the first call, her home files' key lines are taken over
/// (options verbatim), minus any key granted to a guest of hers, and she
/// is put in the owners' group. Root only.
pub fn hold(config: &Config, owner: &str) -> Result<Hold, String> {
    let account = owner_account(owner)?;
    let _lock = held::lock(&config.state_dir)?;
    let member = owners_group::is_member(owner)?;
    if held::read(&config.state_dir, owner)?.is_some() {
        if !member {
            owners_group::add(owner)?;
        }
        return Ok(Hold::default());
    }
    let guest_keys = guest_keys(config, owner)?;
    let legacy = legacy_ledger_keys(&config.state_dir, owner);
    let (home, mut notes) = read_home_files(config, &account);
    let mut taken = Vec::new();
    for line in &home {
        if let Some(guest) = guest_keys.iter().find(|(_, b)| *b == line.blob) {
            notes.push(format!(
                "left out {} ({}): it is guest {}'s key in the grant file",
                line.fingerprint, line.algorithm, guest.0
            ));
        } else if legacy.contains(&line.fingerprint) {
            notes.push(format!(
                "left out {} ({}): the key ledger of an earlier vmshare names it a guest's",
                line.fingerprint, line.algorithm
            ));
        } else {
            taken.push(line.clone());
        }
    }
    held::write_home(&config.state_dir, owner, &home)?;
    held::write(&config.state_dir, owner, &taken)?;
    owners_group::add(owner)?;
    log_change(
        owner,
        &format!("took over {} key line(s) from the home files", taken.len()),
    );
    Ok(Hold {
        taken: true,
        lines: taken.len(),
        notes,
    })
}

/// Refuses keys about to be granted to a guest of `owner` that she holds
/// as her own: one key is never both.
pub fn refuse_owners_keys(config: &Config, owner: &str, keys: &[String]) -> Result<(), String> {
    let Some(held) = held::read(&config.state_dir, owner)? else {
        return Ok(());
    };
    for key in keys {
        let Ok(parsed) = crate::grant::key::parse_key(key.trim()) else {
            continue; // the edit itself refuses it, with its reason
        };
        if owner_lines::holds_key(&held.lines, &parsed.blob) {
            return Err(format!(
                "key {} is one of {owner}'s own keys (`vmshare owner-keys list {owner}`); a key cannot be both the owner's and a guest's",
                parsed.fingerprint
            ));
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct Listing<'a> {
    format: u32,
    owner: &'a str,
    held: bool,
    in_group: bool,
    lines: Vec<ListedLine<'a>>,
}

#[derive(Serialize)]
struct ListedLine<'a> {
    fingerprint: &'a str,
    algorithm: &'a str,
    line: &'a str,
}

pub fn list(config: &Config, owner: &str, json: bool) -> ExitCode {
    let lines = match held::read(&config.state_dir, owner) {
        Ok(h) => h,
        Err(e) => return fail(&e),
    };
    let in_group = owners_group::is_member(owner).unwrap_or(false);
    if json {
        let empty = Vec::new();
        let listed = lines.as_ref().map_or(&empty, |h| &h.lines);
        return print_json(&Listing {
            format: 1,
            owner,
            held: lines.is_some(),
            in_group,
            lines: listed
                .iter()
                .map(|l| ListedLine {
                    fingerprint: &l.fingerprint,
                    algorithm: &l.algorithm,
                    line: &l.line,
                })
                .collect(),
        });
    }
    match lines {
        None => println!("vmshare holds no keys for {owner}: sshd reads {owner}'s home key files"),
        Some(h) => {
            println!(
                "{owner}'s own keys, held by vmshare{}:",
                if in_group {
                    ""
                } else {
                    " (NOT in group vmshare-owners: sshd reads the home files, guests get no access)"
                }
            );
            for l in &h.lines {
                println!("  {}  {}", l.fingerprint, l.line);
            }
            if h.lines.is_empty() {
                println!("  (none: only a password or console login works for {owner})");
            }
        }
    }
    ExitCode::SUCCESS
}

/// Adds lines to an owner's held keys (taking them over first if needed).
pub fn add(config: &Config, owner: &str, lines: &[String]) -> ExitCode {
    if let Err(e) = root_only() {
        return fail(&e);
    }
    let mut checked = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match owner_lines::check_line(line) {
            Ok(Some(l)) => checked.push(l),
            Ok(None) => return fail(&format!("line {} is blank or a comment", i + 1)),
            Err(e) => return fail(&format!("line {}: {e}", i + 1)),
        }
    }
    let result = hold(config, owner).and_then(|_| {
        let guest_keys = guest_keys(config, owner)?;
        if let Some(l) = checked
            .iter()
            .find(|l| guest_keys.iter().any(|(_, b)| *b == l.blob))
        {
            return Err(format!(
                "key {} is granted to a guest of {owner} in the grant file; a key cannot be both the owner's and a guest's (revoke it first)",
                l.fingerprint
            ));
        }
        update(config, owner, |lines| lines.extend(checked.iter().cloned()))
    });
    match result {
        Ok(n) => {
            log_change(owner, &format!("added {} line(s)", checked.len()));
            println!("{owner} now has {n} held key line(s)");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Removes every held line of the key with this fingerprint.
pub fn remove(config: &Config, owner: &str, fingerprint: &str) -> ExitCode {
    if let Err(e) = root_only() {
        return fail(&e);
    }
    let mut found = false;
    let result = held::lock(&config.state_dir).and_then(|_lock| {
        update(config, owner, |lines| {
            let before = lines.len();
            lines.retain(|l| l.fingerprint != fingerprint);
            found = lines.len() != before;
        })
    });
    match result {
        Ok(_) if !found => fail(&format!("{owner} holds no key {fingerprint}")),
        Ok(n) => {
            log_change(owner, &format!("removed {fingerprint}"));
            println!("removed {fingerprint}; {owner} now has {n} held key line(s)");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Rewrites the owner's held lines through `change`; the number after.
fn update(
    config: &Config,
    owner: &str,
    change: impl FnOnce(&mut Vec<OwnerLine>),
) -> Result<usize, String> {
    let Some(Held { mut lines, .. }) = held::read(&config.state_dir, owner)? else {
        return Err(format!("vmshare holds no keys for {owner}"));
    };
    change(&mut lines);
    held::write(&config.state_dir, owner, &lines)?;
    Ok(lines.len())
}

/// Takes over an owner's keys, or (already held) lists the lines that
/// appeared in her home files since and adds them with `--yes`. With
/// `all`, every owner of the grant file.
pub fn import(config: &Config, owner: Option<&str>, all: bool, yes: bool) -> ExitCode {
    if let Err(e) = root_only() {
        return fail(&e);
    }
    let owners: Vec<String> = match (owner, all) {
        (Some(o), false) => vec![o.to_string()],
        (None, true) => match source::load(&config.grants, &SystemAccounts).outcome {
            Outcome::Valid { grants, .. } => grants.owners.iter().map(|o| o.name.clone()).collect(),
            Outcome::Missing => Vec::new(),
            Outcome::Invalid(e) => {
                return fail(&format!(
                    "the grant file is invalid, nothing imported: {}",
                    e.errors
                        .first()
                        .map(|d| d.in_file(&e.file).to_string())
                        .unwrap_or_default()
                ))
            }
        },
        _ => return fail("give an OWNER or --all"),
    };
    let mut code = ExitCode::SUCCESS;
    for owner in &owners {
        if let Err(e) = import_one(config, owner, yes) {
            eprintln!("vmshare: {owner}: {e}");
            code = ExitCode::FAILURE;
        }
    }
    code
}

fn import_one(config: &Config, owner: &str, yes: bool) -> Result<(), String> {
    let was_held = held::read(&config.state_dir, owner)?.is_some();
    let hold = hold(config, owner)?;
    report_hold(owner, &hold);
    if !was_held {
        return Ok(());
    }
    let account = owner_account(owner)?;
    let _lock = held::lock(&config.state_dir)?;
    let (home, notes) = read_home_files(config, &account);
    for note in notes {
        eprintln!("note: {note}");
    }
    let new = appeared(config, owner, &home)?;
    if new.is_empty() {
        println!("{owner}: no line in the home files is new since vmshare took them over");
        return Ok(());
    }
    let guest_keys = guest_keys(config, owner)?;
    println!(
        "{owner}: {} line(s) appeared in the home files since vmshare took them over (a guest, running as {owner}, may have written them):",
        new.len()
    );
    for l in &new {
        println!("  {}  {}", l.fingerprint, l.line);
    }
    if !yes {
        println!("none added; run again with --yes to add them to {owner}'s held keys");
        return Ok(());
    }
    let (granted, wanted): (Vec<&OwnerLine>, Vec<&OwnerLine>) = new
        .iter()
        .partition(|l| guest_keys.iter().any(|(_, b)| *b == l.blob));
    for l in &granted {
        eprintln!(
            "note: not added {}: it is granted to a guest of {owner}",
            l.fingerprint
        );
    }
    let n = update(config, owner, |lines| {
        lines.extend(wanted.iter().map(|l| (*l).clone()))
    })?;
    held::write_home(&config.state_dir, owner, &home)?;
    log_change(
        owner,
        &format!("imported {} line(s) from the home files", wanted.len()),
    );
    println!(
        "added {}; {owner} now has {n} held key line(s)",
        wanted.len()
    );
    Ok(())
}

/// Gives an owner who no longer shares her home files back: sshd reads
/// them again. Lines that appeared there since the takeover are listed,
/// and unless `yes`, she stays held (those lines left out).
pub fn release(config: &Config, owner: &str, yes: bool) -> ExitCode {
    if let Err(e) = root_only() {
        return fail(&e);
    }
    let result = (|| {
        if let Outcome::Valid { grants, .. } = source::load(&config.grants, &SystemAccounts).outcome
        {
            if grants.owner(owner).is_some() {
                return Err(format!(
                    "{owner} is in the grant file; remove {owner}'s table first (her guests would lose access, and her home files would apply while they had it)"
                ));
            }
        }
        let account = owner_account(owner)?;
        let _lock = held::lock(&config.state_dir)?;
        if held::read(&config.state_dir, owner)?.is_none() {
            owners_group::remove(owner)?;
            return Ok(format!(
                "vmshare holds no keys for {owner}; sshd reads her home files"
            ));
        }
        let (home, notes) = read_home_files(config, &account);
        for note in notes {
            eprintln!("note: {note}");
        }
        let new = appeared(config, owner, &home)?;
        if !new.is_empty() {
            println!(
                "{owner}: {} line(s) appeared in the home files while vmshare held them (a guest may have written them):",
                new.len()
            );
            for l in &new {
                println!("  {}  {}", l.fingerprint, l.line);
            }
            if !yes {
                return Err(format!(
                    "not released: {owner} stays held (those lines do not log in) until they are removed from the home files, or you run `vmshare owner-keys release {owner} --yes` to let them in"
                ));
            }
        }
        owners_group::remove(owner)?;
        held::remove(&config.state_dir, owner)?;
        log_change(owner, "released: sshd reads the home files again");
        Ok(format!(
            "released {owner}: sshd reads {owner}'s home key files again"
        ))
    })();
    match result {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Lines of the home files that are in neither the takeover's record nor
/// the held keys.
fn appeared(config: &Config, owner: &str, home: &[OwnerLine]) -> Result<Vec<OwnerLine>, String> {
    let known: Vec<OwnerLine> = [
        held::read_home(&config.state_dir, owner)?,
        held::read(&config.state_dir, owner)?,
    ]
    .into_iter()
    .flatten()
    .flat_map(|h| h.lines)
    .collect();
    let mut new: Vec<OwnerLine> = Vec::new();
    for l in home {
        if !known.iter().any(|k| k.line == l.line) && !new.iter().any(|n| n.line == l.line) {
            new.push(l.clone());
        }
    }
    Ok(new)
}

fn report_hold(owner: &str, hold: &Hold) {
    if let Some(summary) = hold.summary(owner) {
        println!("{summary}");
    }
    for note in &hold.notes {
        eprintln!("note: {note}");
    }
}

/// The owner's account: local, not root.
fn owner_account(owner: &str) -> Result<nix::unistd::User, String> {
    root_only()?;
    crate::grant::parse::check_owner_name(owner)?;
    match nix::unistd::User::from_name(owner) {
        Ok(Some(u)) if u.uid.is_root() => Err("root is never shared".into()),
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(format!("{owner} is not a local account")),
        Err(e) => Err(format!("looking up {owner}: {e}")),
    }
}

fn root_only() -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err("only root can change the keys vmshare holds".into())
    }
}

/// Every key of every guest of `owner` in the grant file, any status:
/// `(guest, blob)`. An invalid grant file is an error (which keys are a
/// guest's cannot be told).
fn guest_keys(config: &Config, owner: &str) -> Result<Vec<(String, String)>, String> {
    match source::load(&config.grants, &SystemAccounts).outcome {
        Outcome::Missing => Ok(Vec::new()),
        Outcome::Invalid(e) => Err(format!(
            "the grant file is invalid, so which keys are guests' cannot be told: {}",
            e.errors
                .first()
                .map(|d| d.in_file(&e.file).to_string())
                .unwrap_or_default()
        )),
        Outcome::Valid { grants, .. } => Ok(grants
            .owner(owner)
            .into_iter()
            .flat_map(|o| &o.guests)
            .flat_map(|g| g.keys.iter().map(|k| (g.name.clone(), k.blob.to_string())))
            .collect()),
    }
}

/// The key lines of the owner's home files (sshd's `AuthorizedKeysFile`,
/// as the agent config names them), each file read as the owner; and a
/// note for each file or line that could not be taken.
fn read_home_files(config: &Config, account: &nix::unistd::User) -> (Vec<OwnerLine>, Vec<String>) {
    let mut notes = Vec::new();
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return (Vec::new(), vec![format!("cannot find this program: {e}")]),
    };
    let reader = Reader {
        program: &program,
        uid: account.uid.as_raw(),
        gid: account.gid.as_raw(),
        home: &account.dir,
        limit: HOME_FILE_LIMIT,
        timeout: HOME_FILE_TIMEOUT,
    };
    let files: Vec<PathBuf> = key_file_paths(
        &config.authorized_keys_files,
        &account.name,
        &account.dir.to_string_lossy(),
    );
    let mut lines = Vec::new();
    for file in &files {
        match reader.read(file) {
            UserFile::Missing => {}
            UserFile::Refused(why) => notes.push(format!("not read: {why}")),
            UserFile::Text(text) => {
                let (ok, bad) = owner_lines::parse_lines(&text);
                for (n, why) in bad {
                    notes.push(format!("skipped {}:{n}: {why}", file.display()));
                }
                lines.extend(ok);
            }
        }
    }
    (lines, notes)
}

/// Fingerprints the key ledger of an earlier vmshare names for `owner`
/// (`key OWNER SHA256:… GUEST ORIGIN SINCE` lines): keys a guest was
/// granted, used or wrote, never taken over as the owner's.
fn legacy_ledger_keys(state_dir: &Path, owner: &str) -> Vec<String> {
    let Ok(Some((text, _))) = crate::sys::fsutil::read_strict(&state_dir.join("ledger"), 64 << 20)
    else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            (w.next() == Some("key") && w.next() == Some(owner))
                .then(|| w.next().map(String::from))
                .flatten()
        })
        .collect()
}

fn log_change(owner: &str, what: &str) {
    audit::record(
        IDENT,
        Level::Notice,
        &audit::Event {
            kind: Some(audit::Kind::OwnerKeys),
            owner,
            message: &format!("owner keys: {what}"),
            ..audit::Event::default()
        },
    );
}

fn fail(e: &str) -> ExitCode {
    eprintln!("vmshare: {e}");
    eprintln!("vmshare: nothing was changed");
    ExitCode::FAILURE
}
