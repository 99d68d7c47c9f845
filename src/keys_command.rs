//! The key lookup program sshd runs as
//! `AuthorizedKeysCommand vmshare-keys %u %f %t %k` for the members of the
//! owners' group (the drop-in's `Match Group`): prints the owner's own
//! held lines, and the line of the offered key (`%t %k`) if it is an
//! accepted guest's key for account `%u`; called with `%u` alone (an older
//! drop-in), all current guest lines. stdout carries key lines only.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::grant::owner_lines;
use crate::grant::policy::KeyLine;
use crate::store::config::Config;
use crate::store::lookup::{self, Via};
use crate::store::owner_keys;
use crate::sys::accounts::SystemAccounts;
use crate::sys::log::syslog::{log, Level};
use crate::sys::owners_group;

const IDENT: &str = "vmshare-keys";

struct Args {
    config: Option<PathBuf>,
    user: Option<String>,
    fingerprint: Option<String>,
    /// The offered key, `%t` and `%k`: `Some(None)` if it is not UTF-8
    /// (no line can be its line).
    key: Option<Option<(String, String)>>,
}

fn parse_args(args: Vec<OsString>) -> Result<Args, String> {
    let mut config = None;
    let mut rest = Vec::new();
    let mut iter = args.into_iter().skip(1);
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            config = Some(PathBuf::from(iter.next().ok_or("--config needs a path")?));
        } else {
            rest.push(arg);
        }
    }
    if rest.is_empty() || rest.len() > 4 {
        return Err(format!(
            "expected USER [FINGERPRINT TYPE KEY] (as `%u %f %t %k`), got {} arguments",
            rest.len()
        ));
    }
    let mut rest = rest.into_iter();
    // A user name that is not UTF-8 cannot be an owner: answer nothing.
    let user = rest.next().and_then(|u| u.into_string().ok());
    let fingerprint = rest.next().and_then(|f| f.into_string().ok());
    let key = match (rest.next(), rest.next()) {
        (Some(t), Some(k)) => Some(t.into_string().ok().zip(k.into_string().ok())),
        _ => None,
    };
    Ok(Args {
        config,
        user,
        fingerprint,
        key,
    })
}

/// Runs the key lookup, writing key lines to `out`: for a sharing owner
/// (a member of the owners' group) her own held lines, then the offered
/// key's guest line when it is an accepted guest's. The owner's lines do
/// not depend on the grant file: an invalid one costs guests their access,
/// never the owner hers. For anyone else, nothing (sshd reads their home
/// files as it always did).
pub fn run<W: Write>(args: Vec<OsString>, out: &mut W) -> ExitCode {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            log(IDENT, Level::Error, &format!("bad arguments: {e}"));
            return ExitCode::from(2);
        }
    };
    let Some(user) = args.user.as_deref() else {
        return ExitCode::SUCCESS;
    };
    let (config, config_error) = match Config::load(args.config.as_deref()) {
        Ok(c) => (c, None),
        Err(e) => (Config::default(), Some(e.to_string())),
    };
    if user == crate::portal::ACCOUNT {
        if let Some(e) = config_error {
            log(
                IDENT,
                Level::Error,
                &format!("no portal keys: bad configuration: {e}"),
            );
            return ExitCode::FAILURE;
        }
        return write_out(out, &portal_lines(&config, &args));
    }
    match owners_group::is_member(user) {
        Ok(true) => {}
        Ok(false) => return ExitCode::SUCCESS,
        Err(e) => {
            log(IDENT, Level::Error, &format!("no keys for {user}: {e}"));
            return ExitCode::FAILURE;
        }
    }
    let held = match owner_keys::read(&config.state_dir, user) {
        Ok(Some(held)) => held,
        Ok(None) => {
            log(
                IDENT,
                Level::Error,
                &format!(
                    "{user} is in group {} but vmshare holds no keys for {user}: \
                     no key logs in (run `vmshare owner-keys import {user}`)",
                    owners_group::GROUP
                ),
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            log(IDENT, Level::Error, &format!("no keys for {user}: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut text = owner_lines::render(&held.lines);
    if let Some(e) = config_error {
        log(
            IDENT,
            Level::Error,
            &format!("no guest keys: bad configuration (the owner's own keys served from the default state dir): {e}"),
        );
    } else {
        match guest_lines(&config, user, &args, &held.lines) {
            Ok(lines) => text.push_str(&lines),
            Err(e) => {
                let fp = args.fingerprint.clone().unwrap_or_default();
                crate::sys::log::audit::emit(
                    IDENT,
                    Level::Error,
                    &crate::sys::log::audit::Event {
                        kind: Some(crate::sys::log::audit::Kind::Refusal),
                        owner: user,
                        fingerprint: &fp,
                        message: &format!("no guest keys: {e}"),
                        ..crate::sys::log::audit::Event::default()
                    },
                );
            }
        }
    }
    write_out(out, &text)
}

fn write_out<W: Write>(out: &mut W, text: &str) -> ExitCode {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(IDENT, Level::Error, &format!("writing keys: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// The guest portal account's lines: every key of every guest of every
/// owner (any status), once each, each forced to run the portal with its
/// fingerprint and allowed nothing else (`restrict`: no forwarding of any
/// kind, no `~/.ssh/rc`; a terminal for the prompts). With an offered key,
/// only its line. An invalid grant file: none.
fn portal_lines(config: &Config, args: &Args) -> String {
    let loaded = crate::store::source::load(&config.grants, &SystemAccounts);
    let Some(grants) = loaded.grants() else {
        log(
            IDENT,
            Level::Notice,
            "no portal keys: the grant file is missing or invalid",
        );
        return String::new();
    };
    let offered = match &args.key {
        Some(Some((_, blob))) => Some(blob.as_str()),
        Some(None) => return String::new(),
        None => None,
    };
    let mut seen = std::collections::HashSet::new();
    let mut text = String::new();
    let keys = grants
        .owners
        .iter()
        .flat_map(|o| &o.guests)
        .flat_map(|g| &g.keys)
        .filter(|k| offered.is_none_or(|b| *k.blob == *b));
    for key in keys {
        if seen.insert(key.fingerprint.clone()) {
            text.push_str(&crate::portal::key_line(
                &key.algorithm,
                &key.blob,
                &key.fingerprint,
            ));
        }
    }
    text
}

/// The guests' lines sshd may use for this call: the offered key's, or
/// (given no key) all current ones. A key the owner holds as her own is
/// hers alone, whatever the grant file says.
fn guest_lines(
    config: &Config,
    user: &str,
    args: &Args,
    held: &[owner_lines::OwnerLine],
) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(i64::MAX, |d| d.as_secs() as i64);
    let answer = match &args.key {
        None => lookup::current_owner_lines(config, user, now, &SystemAccounts)?,
        Some(Some((algorithm, blob))) => {
            if owner_lines::holds_key(held, blob) {
                return Ok(String::new());
            }
            lookup::owner_key_line(config, user, algorithm, blob, Some(now), &SystemAccounts)?
        }
        Some(None) => return Ok(String::new()),
    };
    if answer.via == Via::NoGrantFile {
        log(
            IDENT,
            Level::Notice,
            &format!(
                "no grant file at {}; nothing is shared",
                config.grants.display()
            ),
        );
    }
    Ok(answer
        .lines
        .lines()
        .filter(|l| KeyLine::parse(l).is_some_and(|k| !owner_lines::holds_key(held, k.blob)))
        .map(|l| format!("{l}\n"))
        .collect())
}
