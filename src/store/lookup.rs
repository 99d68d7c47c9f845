//! What may log in as an owner right now: the snapshot when it is current,
//! the grant file itself otherwise. Shared by the key lookup and the PAM
//! hook; never answers from a stale snapshot.

use std::io;
use std::path::Path;

use crate::grant::model::MAX_GRANT_FILE_BYTES;
use crate::grant::parse::is_account_name;
use crate::grant::policy::{current_lines, line_is_current, Accounts};
use crate::store::config::Config;
use crate::store::snapshot;
use crate::store::source::{self, sha256_hex, FileVersion, Outcome};
use crate::sys::fsutil;

/// Where an answer came from, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Snapshot,
    GrantFile,
    /// There is no grant file: nothing is shared.
    NoGrantFile,
    /// The name cannot be a local account: nothing is shared with it.
    NotAnAccount,
}

/// The authorized_keys lines of accepted guests of one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub lines: String,
    pub via: Via,
}

/// The current lines for `owner`, all of them: also those whose deadline
/// has passed, so the PAM hook still knows whose key it is (and refuses
/// it). `Err` (with a one-line reason) means the caller must grant nothing:
/// an invalid or untrusted grant file, or an I/O error.
pub fn owner_lines(
    config: &Config,
    owner: &str,
    accounts: &dyn Accounts,
) -> Result<Answer, String> {
    answer(config, owner, Want::All, None, accounts)
}

/// The lines for `owner` whose deadline has not passed at `now`: what the
/// key lookup prints when sshd gives no key (an old drop-in with `%u`
/// alone). `Err` as for [`owner_lines`].
pub fn current_owner_lines(
    config: &Config,
    owner: &str,
    now: i64,
    accounts: &dyn Accounts,
) -> Result<Answer, String> {
    answer(config, owner, Want::All, Some(now), accounts)
}

/// The current line of key (`algorithm`, `blob`) for `owner`, if it is
/// granted and its deadline has not passed at `now` (`lines` empty if
/// not; with `now` `None`, also a line whose deadline has passed, as
/// [`owner_lines`] gives them): through the snapshot's index when the
/// snapshot is current, so the cost does not grow with the owner's guests.
/// `Err` as for [`owner_lines`].
pub fn owner_key_line(
    config: &Config,
    owner: &str,
    algorithm: &str,
    blob: &str,
    now: Option<i64>,
    accounts: &dyn Accounts,
) -> Result<Answer, String> {
    answer(config, owner, Want::Key { algorithm, blob }, now, accounts)
}

/// Which of an owner's lines are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want<'a> {
    All,
    /// Only the line of this key, if it is granted.
    Key {
        algorithm: &'a str,
        blob: &'a str,
    },
}

/// With `now`, lines whose deadline has passed are left out.
fn answer(
    config: &Config,
    owner: &str,
    want: Want,
    now: Option<i64>,
    accounts: &dyn Accounts,
) -> Result<Answer, String> {
    if !is_account_name(owner) {
        return Ok(Answer {
            lines: String::new(),
            via: Via::NotAnAccount,
        });
    }
    let grants_path = &config.grants;
    let current = match std::fs::metadata(grants_path) {
        Ok(meta) => Some(FileVersion::of(&meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot stat {}: {e}", grants_path.display())),
    };
    if let Some(answer) = from_snapshot(config, grants_path, current.as_ref(), owner, want, now)? {
        return Ok(answer);
    }
    if current.is_none() {
        return Ok(Answer {
            lines: String::new(),
            via: Via::NoGrantFile,
        });
    }
    let loaded = source::load(grants_path, accounts);
    Ok(match loaded.outcome {
        Outcome::Missing => Answer {
            lines: String::new(),
            via: Via::NoGrantFile,
        },
        Outcome::Invalid(errors) => {
            return Err(format!(
                "grant file is invalid, no guest gets in: {}",
                errors
                    .errors
                    .first()
                    .map_or(String::new(), |d| d.in_file(&errors.file).to_string())
            ))
        }
        Outcome::Valid { policy, .. } => {
            let lines = policy
                .owners
                .get(owner)
                .and_then(|a| match want {
                    Want::All => Some(a.authorized_keys()),
                    Want::Key { algorithm, blob } => a.key_line(algorithm, blob),
                })
                .unwrap_or_default();
            Answer {
                lines: match now {
                    Some(now) => current_lines(&lines, now),
                    None => lines,
                },
                via: Via::GrantFile,
            }
        }
    })
}

/// The snapshot's answer if it is current; `Ok(None)` if it is missing,
/// unreadable, stale or damaged (the caller then reads the grant file).
fn from_snapshot(
    config: &Config,
    grants_path: &Path,
    current: Option<&FileVersion>,
    owner: &str,
    want: Want,
    now: Option<i64>,
) -> Result<Option<Answer>, String> {
    let Ok(Some(snapshot)) = snapshot::open(&config.snapshot_path(), grants_path, current) else {
        return Ok(None);
    };
    let header = &snapshot.header;
    if header.is_racy() {
        // The file may have changed within one timestamp tick of the
        // snapshot: trust it only if the bytes are the same.
        match fsutil::read_strict(grants_path, MAX_GRANT_FILE_BYTES as u64) {
            Ok(Some((text, _))) if sha256_hex(text.as_bytes()) == header.sha256 => {}
            _ => return Ok(None),
        }
    }
    if !header.valid {
        return Err(format!(
            "grant file {} is invalid (run `vmshare check`); no guest gets in",
            grants_path.display()
        ));
    }
    if current.is_none() {
        return Ok(Some(Answer {
            lines: String::new(),
            via: Via::NoGrantFile,
        }));
    }
    let via = Via::Snapshot;
    if let Want::Key { algorithm, blob } = want {
        // A damaged slot or line means: read the grant file instead.
        let Ok(line) = snapshot.key_line(owner, algorithm, blob) else {
            return Ok(None);
        };
        let Ok(line) = String::from_utf8(line.unwrap_or_default()) else {
            return Ok(None);
        };
        let current = now.is_none_or(|now| line_is_current(&line, now));
        return Ok(Some(Answer {
            lines: if current { line } else { String::new() },
            via,
        }));
    }
    let Ok(lines) = snapshot.owner(owner).and_then(|opened| opened.read()) else {
        return Ok(None);
    };
    let lines = match now {
        Some(now) => current_lines(&lines, now),
        None => lines,
    };
    Ok(Some(Answer { lines, via }))
}
