//! The key lookup program sshd runs as
//! `AuthorizedKeysCommand vmshare-keys %u %f %t %k`: prints the line of the
//! offered key (`%t %k`) if it is an accepted guest's key for account `%u`;
//! called with `%u` alone (an older drop-in), all of them. stdout carries
//! key lines only; every failure prints nothing and exits non-zero.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::store::config::Config;
use crate::store::lookup::{write_lines, Via, Want};
use crate::sys::accounts::SystemAccounts;
use crate::sys::log::syslog::{log, Level};

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

/// Runs the key lookup, writing key lines to `out`.
pub fn run<W: Write>(args: Vec<OsString>, out: &mut W) -> ExitCode {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            log(IDENT, Level::Error, &format!("bad arguments: {e}"));
            return ExitCode::from(2);
        }
    };
    let Some(user) = args.user else {
        return ExitCode::SUCCESS;
    };
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            log(
                IDENT,
                Level::Error,
                &format!("no guest keys: bad configuration: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    let want = match &args.key {
        None => Want::All,
        Some(Some((algorithm, blob))) => Want::Key { algorithm, blob },
        Some(None) => return ExitCode::SUCCESS,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(i64::MAX, |d| d.as_secs() as i64);
    match write_lines(&config, &user, want, now, &SystemAccounts, out) {
        Ok(via) => {
            if via == Via::NoGrantFile {
                log(
                    IDENT,
                    Level::Notice,
                    &format!(
                        "no grant file at {}; nothing is shared",
                        config.grants.display()
                    ),
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let fp = args.fingerprint.unwrap_or_default();
            crate::sys::log::audit::emit(
                IDENT,
                Level::Error,
                &crate::sys::log::audit::Event {
                    kind: Some(crate::sys::log::audit::Kind::Refusal),
                    owner: &user,
                    fingerprint: &fp,
                    message: &format!("no guest keys: {e}"),
                    ..crate::sys::log::audit::Event::default()
                },
            );
            ExitCode::FAILURE
        }
    }
}
