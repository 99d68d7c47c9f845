//! The compiled snapshot in the run dir: per owner, the lines the key lookup
//! prints, and the grant-file version they were compiled from.
//!
//! Layout: one JSON header line, then the owners' authorized_keys text back
//! to back; the header maps each owner to its byte range. Written atomically
//! (temp, fsync, rename), so a reader sees one whole snapshot or another.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::source::{sha256_hex, FileVersion, Loaded, Outcome};

// 2: per-owner digests of the body.
const FORMAT: u32 = 2;
const MAX_HEADER_BYTES: u64 = 64 << 20;

/// A grant file modified this close to when the snapshot was written may
/// have changed again within the file system's timestamp granularity without
/// changing its stat; such a snapshot is only trusted after comparing hashes.
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub grants_path: PathBuf,
    /// `None`: the grant file was missing.
    pub version: Option<FileVersion>,
    pub sha256: String,
    /// Wall-clock time the snapshot was compiled, ns since the epoch.
    pub written_ns: i64,
    pub valid: bool,
    /// Owner → (offset, length) in the body.
    pub owners: BTreeMap<String, (u64, u64)>,
    /// Owner → SHA-256 of its lines, so a body damaged in place is never
    /// served: the header alone would still match the grant file.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
}

impl Header {
    /// Whether the snapshot must be confirmed by hashing the grant file.
    pub fn is_racy(&self) -> bool {
        self.version
            .is_some_and(|v| v.mtime_ns.max(v.ctime_ns) + RACY_WINDOW_NS >= self.written_ns)
    }
}

/// Writes the snapshot of `loaded` to `path`, readable by everyone (it holds
/// public keys only, and the key lookup runs unprivileged).
pub fn write(path: &Path, loaded: &Loaded, written_ns: i64) -> io::Result<()> {
    let mut body = String::new();
    let mut owners = BTreeMap::new();
    let mut digests = BTreeMap::new();
    if let Outcome::Valid { policy, .. } = &loaded.outcome {
        for (name, access) in &policy.owners {
            let text = access.authorized_keys();
            owners.insert(name.clone(), (body.len() as u64, text.len() as u64));
            digests.insert(name.clone(), sha256_hex(text.as_bytes()));
            body.push_str(&text);
        }
    }
    let header = Header {
        format: FORMAT,
        grants_path: loaded.path.clone(),
        version: loaded.version,
        sha256: loaded.sha256.clone(),
        written_ns,
        valid: !matches!(loaded.outcome, Outcome::Invalid(_)),
        owners,
        digests,
    };
    let mut data = serde_json::to_vec(&header).map_err(io::Error::other)?;
    data.push(b'\n');
    data.extend_from_slice(body.as_bytes());
    fsutil::atomic_write(path, &data, 0o644, None)
}

/// What the snapshot says about one owner.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The snapshot matches the grant file's current version.
    Fresh { header: Header, lines: String },
    /// The snapshot is from another version of the grant file, or of another
    /// grant file: it must not be used.
    Stale,
}

/// Reads the header and `owner`'s lines, provided the snapshot was compiled
/// from `grants_path` at `current`. Errors mean the snapshot is unusable.
pub fn read_owner(
    path: &Path,
    grants_path: &Path,
    current: Option<&FileVersion>,
    owner: &str,
) -> io::Result<Lookup> {
    let file = File::open(path)?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    (&mut reader)
        .take(MAX_HEADER_BYTES)
        .read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot header is truncated",
        ));
    }
    let header: Header = serde_json::from_slice(&line).map_err(io::Error::other)?;
    if header.format != FORMAT
        || header.grants_path != grants_path
        || header.version.as_ref() != current
    {
        return Ok(Lookup::Stale);
    }
    let body_start = line.len() as u64;
    let mut lines = String::new();
    if let Some(&(offset, len)) = header.owners.get(owner) {
        let not_lines = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot range does not hold whole lines",
            )
        };
        // Read from the byte before the range (the header's newline for the
        // first owner): a range must start and end at a line boundary, so
        // only whole lines of the body are ever printed.
        let start = body_start.checked_add(offset).ok_or_else(not_lines)?;
        let mut file = reader.into_inner();
        file.seek(SeekFrom::Start(start - 1))?;
        let mut bytes = Vec::new();
        file.take(len.saturating_add(1)).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != len.saturating_add(1) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot body is truncated",
            ));
        }
        if bytes.first() != Some(&b'\n') || (len > 0 && bytes.last() != Some(&b'\n')) {
            return Err(not_lines());
        }
        bytes.remove(0);
        if header.digests.get(owner) != Some(&sha256_hex(&bytes)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot body does not match its digest",
            ));
        }
        lines = String::from_utf8(bytes).map_err(io::Error::other)?;
    }
    Ok(Lookup::Fresh { header, lines })
}

/// Reads only the header.
pub fn read_header(path: &Path) -> io::Result<Header> {
    let file = File::open(path)?;
    let mut reader = BufReader::new(file).take(MAX_HEADER_BYTES);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    serde_json::from_slice(&line).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::tests::KEY_A;
    use crate::policy::tests::FakeAccounts;

    #[test]
    fn a_body_damaged_in_place_is_not_served() {
        let d = crate::fsutil::tests::scratch();
        let grants = d.path().join("grants.toml");
        let text = format!(
            "[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\n"
        );
        std::fs::write(&grants, &text).unwrap();
        let loaded =
            crate::source::load_text(&grants, text, &FakeAccounts::with(&[("alice", 1000)]));
        let path = d.path().join("snapshot");
        write(&path, &loaded, 0).unwrap();
        let Lookup::Fresh { lines, .. } = read_owner(&path, &grants, None, "alice").unwrap() else {
            panic!("stale");
        };
        assert!(lines.ends_with(" vmshare:bob\n"));

        // Same length, same header: only the digest tells.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] = b'x';
        std::fs::write(&path, &bytes).unwrap();
        let e = read_owner(&path, &grants, None, "alice").unwrap_err();
        assert!(e.to_string().contains("digest"), "{e}");
    }

    #[test]
    fn a_range_that_is_not_whole_lines_is_refused() {
        let d = crate::fsutil::tests::scratch();
        let grants = d.path().join("grants.toml");
        let path = d.path().join("snapshot");
        let body = "ssh-ed25519 AAAA vmshare:bob\nssh-ed25519 BBBB vmshare:eve\n";
        let read = |offset: u64, len: u64| {
            let digest = body
                .as_bytes()
                .get(offset as usize..)
                .and_then(|b| b.get(..len as usize))
                .map_or(String::new(), sha256_hex);
            let header = Header {
                format: FORMAT,
                grants_path: grants.clone(),
                version: None,
                sha256: String::new(),
                written_ns: 0,
                valid: true,
                owners: [("alice".to_string(), (offset, len))].into(),
                digests: [("alice".to_string(), digest)].into(),
            };
            let mut data = serde_json::to_vec(&header).unwrap();
            data.push(b'\n');
            data.extend_from_slice(body.as_bytes());
            std::fs::write(&path, data).unwrap();
            read_owner(&path, &grants, None, "alice")
        };
        let Lookup::Fresh { lines, .. } = read(29, 29).unwrap() else {
            panic!("stale");
        };
        assert_eq!(lines, "ssh-ed25519 BBBB vmshare:eve\n");
        for (offset, len) in [(0, 5), (5, 24), (17, 41), (0, 57)] {
            let e = read(offset, len).unwrap_err();
            assert!(e.to_string().contains("whole lines"), "{offset},{len}: {e}");
        }
        for (offset, len) in [(u64::MAX, 1), (u64::MAX - 10, u64::MAX), (0, u64::MAX)] {
            assert!(read(offset, len).is_err(), "{offset},{len}");
        }
    }
}
