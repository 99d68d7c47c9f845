//! Loading the grant file from disk: strict checks, the version it was read
//! at, and the compiled policy.

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::grant::diag::{Diagnostic, FileErrors};
use crate::grant::model::{Grants, MAX_GRANT_FILE_BYTES};
use crate::grant::policy::{Accounts, Policy};
use crate::sys::fsutil;

/// Which version of the grant file something was compiled from. Any write,
/// rename, chmod or chown changes at least one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
    pub uid: u32,
}

impl FileVersion {
    pub fn of(meta: &Metadata) -> Self {
        FileVersion {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            mode: meta.mode(),
            uid: meta.uid(),
        }
    }
}

/// What reading the grant file gave.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// No grant file: nothing is shared.
    Missing,
    /// The file grants nothing until these are fixed.
    Invalid(FileErrors),
    Valid {
        grants: Grants,
        policy: Policy,
    },
}

/// The grant file's health, as `status` and the daemon report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantFileState {
    Valid,
    Invalid,
    Missing,
}

impl GrantFileState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantFileState::Valid => "valid",
            GrantFileState::Invalid => "invalid",
            GrantFileState::Missing => "missing",
        }
    }
}

impl fmt::Display for GrantFileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    pub fn state(&self) -> GrantFileState {
        match self {
            Outcome::Missing => GrantFileState::Missing,
            Outcome::Invalid(_) => GrantFileState::Invalid,
            Outcome::Valid { .. } => GrantFileState::Valid,
        }
    }
}

/// The grant file as read at one moment.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    /// The version read; `None` when the file was missing or unreadable.
    pub version: Option<FileVersion>,
    /// SHA-256 of the bytes compiled, hex.
    pub sha256: String,
    pub source: String,
    pub outcome: Outcome,
}

impl Loaded {
    pub fn policy(&self) -> Option<&Policy> {
        match &self.outcome {
            Outcome::Valid { policy, .. } => Some(policy),
            _ => None,
        }
    }

    pub fn grants(&self) -> Option<&Grants> {
        match &self.outcome {
            Outcome::Valid { grants, .. } => Some(grants),
            _ => None,
        }
    }

    /// Findings that do not invalidate the file.
    pub fn notes(&self) -> &[Diagnostic] {
        self.policy().map_or(&[], |p| &p.notes)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A grant file that grants nothing until `errors` are fixed.
fn invalid_file(
    path: &Path,
    version: Option<FileVersion>,
    sha256: String,
    source: String,
    errors: Vec<Diagnostic>,
) -> Loaded {
    Loaded {
        path: path.to_path_buf(),
        version,
        sha256,
        source,
        outcome: Outcome::Invalid(FileErrors {
            file: path.to_path_buf(),
            errors,
        }),
    }
}

/// Reads, validates and compiles the grant file at `path`.
pub fn load(path: &Path, accounts: &dyn Accounts) -> Loaded {
    let invalid =
        |version, sha256, source, errors| invalid_file(path, version, sha256, source, errors);
    let (source, meta) = match fsutil::read_strict(path, MAX_GRANT_FILE_BYTES as u64) {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Loaded {
                path: path.to_path_buf(),
                version: None,
                sha256: String::new(),
                source: String::new(),
                outcome: Outcome::Missing,
            }
        }
        Err(e) => {
            let version = std::fs::metadata(path).ok().map(|m| FileVersion::of(&m));
            return invalid(
                version,
                String::new(),
                String::new(),
                vec![Diagnostic::whole_file(e)],
            );
        }
    };
    let version = Some(FileVersion::of(&meta));
    compile_source(path, version, source, accounts, invalid)
}

/// Validates and compiles grant text that did not come from disk (the CLI's
/// proposed edits, tests).
pub fn load_text(path: &Path, source: String, accounts: &dyn Accounts) -> Loaded {
    let invalid =
        |version, sha256, source, errors| invalid_file(path, version, sha256, source, errors);
    compile_source(path, None, source, accounts, invalid)
}

fn compile_source(
    path: &Path,
    version: Option<FileVersion>,
    source: String,
    accounts: &dyn Accounts,
    invalid: impl Fn(Option<FileVersion>, String, String, Vec<Diagnostic>) -> Loaded,
) -> Loaded {
    let sha256 = sha256_hex(source.as_bytes());
    let grants = match crate::grant::parse::parse(&source) {
        Ok(g) => g,
        Err(errors) => return invalid(version, sha256, source, errors),
    };
    let policy = crate::grant::policy::compile(&grants, &source, accounts);
    match policy {
        Ok(policy) => Loaded {
            path: path.to_path_buf(),
            version,
            sha256,
            source,
            outcome: Outcome::Valid { grants, policy },
        },
        Err(errors) => invalid(version, sha256, source, errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_file_state_is_the_same_word_in_json_and_text() {
        for state in [
            GrantFileState::Valid,
            GrantFileState::Invalid,
            GrantFileState::Missing,
        ] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{state}\""));
            assert_eq!(
                serde_json::from_str::<GrantFileState>(&json).unwrap(),
                state
            );
        }
        assert_eq!(GrantFileState::Missing.to_string(), "missing");
    }
}
