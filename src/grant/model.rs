//! The grant file's meaning: owners, their "Share VM" switch, guests, their
//! status and keys. Plain data; `parse` builds it, `policy` compiles it.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::grant::limits::Limits;

/// Grant files larger than this are refused outright.
pub const MAX_GRANT_FILE_BYTES: usize = 32 << 20;

/// Grant files at least this long (about 1,000 guests) are worked on by
/// two threads where the machine has a second CPU: hashed while the policy
/// is built, their parsed form freed aside.
pub const LARGE_FILE_BYTES: usize = 256 * 1024;

/// Whether work on a file of `len` bytes is shared with a second thread.
pub fn shares_work(len: usize) -> bool {
    len >= LARGE_FILE_BYTES && crate::sys::cpus() > 1
}

/// A guest's place in the "Share VM" lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Invited,
    Accepted,
    Rejected,
    Left,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Invited,
        Status::Accepted,
        Status::Rejected,
        Status::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Invited => "invited",
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::Left => "left",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated grant file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub owners: Vec<Owner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    /// Byte offset of the owner's name in the file, for later findings.
    pub offset: usize,
    pub sharing: bool,
    pub guests: Vec<Guest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub name: String,
    pub status: Status,
    pub keys: Vec<GuestKey>,
    /// Whether the guest may become root through the owner's rights
    /// (sudo, su, pkexec); absent = false.
    pub admin: bool,
    /// `expires`, `from`, `forwarding`.
    pub limits: Limits,
}

/// One guest key, reduced to what sshd needs: algorithm and key blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKey {
    /// e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// The base64 key blob, canonical (re-encoded from the parsed key).
    /// Shared with the compiled policy, not copied into it.
    pub blob: Arc<str>,
    /// `SHA256:…`, as `ssh-keygen -l` prints it. Shared as the blob is.
    pub fingerprint: Arc<str>,
    /// The comment the guest's key carried, if any.
    pub comment: String,
}

impl Grants {
    pub fn owner(&self, name: &str) -> Option<&Owner> {
        self.owners.iter().find(|o| o.name == name)
    }
}

impl Owner {
    pub fn guest(&self, name: &str) -> Option<&Guest> {
        self.guests.iter().find(|g| g.name == name)
    }
}

impl Guest {
    /// Whether this guest may log in as an owner whose switch is `sharing`.
    pub fn has_access(&self, sharing: bool) -> bool {
        sharing && self.status == Status::Accepted
    }
}
