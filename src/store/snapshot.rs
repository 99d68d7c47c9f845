//! The compiled snapshot in the run dir: per owner, the lines the key lookup
//! prints, and the grant-file version they were compiled from.
//!
//! Layout: one JSON header line, then the owners' authorized_keys text back
//! to back; the header maps each owner to its byte range. Written atomically
//! (temp, fsync, rename), so a reader sees one whole snapshot or another.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::source::{FileVersion, Loaded, Outcome};
use crate::sys::fsutil;

// 3: per-owner CRC-32 checksums of the body.
const FORMAT: u32 = 3;
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
    /// Owner → checksum of its lines ([`body_digest`]), so a body damaged
    /// in place is never served: the header alone would still match the
    /// grant file. Only root can write the snapshot, so this guards against
    /// damage, not forgery; a CRC keeps every lookup cheap.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
}

/// The checksum of one owner's lines in the body.
pub fn body_digest(bytes: &[u8]) -> String {
    digest_text(crc32fast::hash(bytes))
}

fn digest_text(crc: u32) -> String {
    format!("crc32:{crc:08x}")
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
            digests.insert(name.clone(), body_digest(text.as_bytes()));
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

/// A current snapshot, opened for one owner: the header is checked, the
/// owner's range located and found to hold whole lines, nothing read yet.
pub struct Opened {
    pub header: Header,
    file: File,
    /// Absolute (start, length) of the owner's lines; `None` if the owner
    /// has none.
    range: Option<(u64, u64)>,
    digest: String,
}

/// What opening the snapshot for an owner found.
#[allow(clippy::large_enum_variant)] // built once per lookup, never stored
pub enum Open {
    Fresh(Opened),
    Stale,
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Opens the snapshot for `owner`, provided it was compiled from
/// `grants_path` at `current`. Errors mean the snapshot is unusable.
pub fn open_owner(
    path: &Path,
    grants_path: &Path,
    current: Option<&FileVersion>,
    owner: &str,
) -> io::Result<Open> {
    let file = File::open(path)?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    (&mut reader)
        .take(MAX_HEADER_BYTES)
        .read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(invalid("snapshot header is truncated"));
    }
    let header: Header = serde_json::from_slice(&line).map_err(io::Error::other)?;
    if header.format != FORMAT
        || header.grants_path != grants_path
        || header.version.as_ref() != current
    {
        return Ok(Open::Stale);
    }
    let body_start = line.len() as u64;
    let mut file = reader.into_inner();
    let mut range = None;
    let mut digest = String::new();
    if let Some(&(offset, len)) = header.owners.get(owner) {
        let not_lines = || invalid("snapshot range does not hold whole lines");
        let start = body_start.checked_add(offset).ok_or_else(not_lines)?;
        let end = start.checked_add(len).ok_or_else(not_lines)?;
        if end > file.metadata()?.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot body is truncated",
            ));
        }
        // A range must start after a newline (the header's, for the first
        // owner) and end with one, so only whole lines are ever printed.
        let byte_at = |file: &mut File, at: u64| -> io::Result<u8> {
            let mut b = [0u8; 1];
            file.seek(SeekFrom::Start(at))?;
            file.read_exact(&mut b)?;
            Ok(b[0])
        };
        if byte_at(&mut file, start - 1)? != b'\n'
            || (len > 0 && byte_at(&mut file, end - 1)? != b'\n')
        {
            return Err(not_lines());
        }
        digest = header
            .digests
            .get(owner)
            .cloned()
            .ok_or_else(|| invalid("snapshot has no checksum for the owner"))?;
        range = Some((start, len));
    }
    Ok(Open::Fresh(Opened {
        header,
        file,
        range,
        digest,
    }))
}

impl Opened {
    /// Reads the owner's lines as bytes, checked against their checksum.
    fn read_bytes(&mut self) -> io::Result<Vec<u8>> {
        let Some((start, len)) = self.range else {
            return Ok(Vec::new());
        };
        self.file.seek(SeekFrom::Start(start))?;
        // read_to_end fills spare capacity without zeroing it first.
        let mut bytes = Vec::with_capacity(len as usize);
        (&mut self.file).take(len).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot body is truncated",
            ));
        }
        if body_digest(&bytes) != self.digest {
            return Err(invalid("snapshot body does not match its digest"));
        }
        Ok(bytes)
    }

    /// Reads the owner's lines, checking them against their checksum.
    pub fn read(mut self) -> io::Result<String> {
        let bytes = self.read_bytes()?;
        String::from_utf8(bytes).map_err(io::Error::other)
    }

    /// Checks the owner's whole range against its checksum. Small bodies
    /// are read once and kept; large ones are read in chunks and dropped, to
    /// be copied by [`Opened::copy_checked`] without passing through memory.
    pub fn check(&mut self) -> io::Result<Checked> {
        let Some((start, len)) = self.range else {
            return Ok(Checked::Small(Vec::new()));
        };
        if len <= READ_ONCE {
            return self.read_bytes().map(Checked::Small);
        }
        let mut hasher = crc32fast::Hasher::new();
        self.each_chunk(start, len, |chunk| {
            hasher.update(chunk);
            Ok(())
        })?;
        if digest_text(hasher.finalize()) != self.digest {
            return Err(invalid("snapshot body does not match its digest"));
        }
        Ok(Checked::Large)
    }

    /// Writes the checked lines to `out`. A large body is streamed in chunks.
    pub fn copy_checked<W: Write>(mut self, checked: Checked, out: &mut W) -> io::Result<()> {
        match (checked, self.range) {
            (Checked::Small(bytes), _) => out.write_all(&bytes),
            (Checked::Large, None) => Ok(()),
            (Checked::Large, Some((start, len))) => {
                // Large writes, as cat does: io::copy would fall back to
                // 8 KiB writes into a pipe.
                self.each_chunk(start, len, |chunk| out.write_all(chunk))
            }
        }
    }

    /// Reads `len` bytes from `start` in chunks of [`CHUNK`], handing each
    /// to `f`; a short file is an error.
    fn each_chunk(
        &mut self,
        start: u64,
        len: u64,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(start))?;
        let mut buf = vec![0u8; CHUNK.min(len) as usize];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = self.file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "snapshot body is truncated",
                ));
            }
            f(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// Bodies up to this size are read once and kept; larger ones are checked
/// and then streamed in chunks of [`CHUNK`].
const READ_ONCE: u64 = 1024 * 1024;
const CHUNK: u64 = 128 * 1024;

/// A body found intact by [`Opened::check`].
pub enum Checked {
    Small(Vec<u8>),
    Large,
}

/// Reads the header and `owner`'s lines, provided the snapshot was compiled
/// from `grants_path` at `current`. Errors mean the snapshot is unusable.
pub fn read_owner(
    path: &Path,
    grants_path: &Path,
    current: Option<&FileVersion>,
    owner: &str,
) -> io::Result<Lookup> {
    match open_owner(path, grants_path, current, owner)? {
        Open::Stale => Ok(Lookup::Stale),
        Open::Fresh(opened) => {
            let header = opened.header.clone();
            Ok(Lookup::Fresh {
                header,
                lines: opened.read()?,
            })
        }
    }
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
    use crate::grant::parse::tests::KEY_A;
    use crate::grant::policy::tests::FakeAccounts;

    /// Bodies over [`READ_ONCE`] take the chunked path: checked whole,
    /// then streamed; damage anywhere is caught before anything is written.
    #[test]
    fn large_bodies_are_checked_then_streamed() {
        use crate::grant::policy::tests::FakeAccounts;
        let d = crate::sys::fsutil::tests::scratch();
        let grants = d.path().join("grants.toml");
        let path = d.path().join("snapshot");
        let mut text = String::from("[owners.alice]\nsharing = true\n");
        let mut n = 0u32;
        while text.len() < 2 * READ_ONCE as usize {
            let mut bytes = [7u8; 32];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            let key = ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey(bytes))
                .to_openssh()
                .unwrap();
            text.push_str(&format!(
                "[owners.alice.guests.g{n}]\nstatus = \"accepted\"\nkeys = [\"{key}\"]\n"
            ));
            n += 1;
        }
        let loaded =
            crate::store::source::load_text(&grants, text, &FakeAccounts::with(&[("alice", 1000)]));
        let expected = loaded.policy().unwrap().owners["alice"].authorized_keys();
        assert!(expected.len() as u64 > READ_ONCE);
        write(&path, &loaded, 0).unwrap();

        let Open::Fresh(mut opened) = open_owner(&path, &grants, None, "alice").unwrap() else {
            panic!("stale");
        };
        let checked = opened.check().unwrap();
        assert!(matches!(checked, Checked::Large));
        let mut out = Vec::new();
        opened.copy_checked(checked, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), expected);

        // One byte near the end of the body changed in place.
        let mut data = std::fs::read(&path).unwrap();
        let at = data.len() - 10;
        data[at] ^= 1;
        std::fs::write(&path, data).unwrap();
        let Open::Fresh(mut opened) = open_owner(&path, &grants, None, "alice").unwrap() else {
            panic!("stale");
        };
        let e = opened.check().err().expect("damage must be caught");
        assert!(e.to_string().contains("digest"), "{e}");
    }

    #[test]
    fn a_body_damaged_in_place_is_not_served() {
        let d = crate::sys::fsutil::tests::scratch();
        let grants = d.path().join("grants.toml");
        let text = format!(
            "[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\n"
        );
        std::fs::write(&grants, &text).unwrap();
        let loaded =
            crate::store::source::load_text(&grants, text, &FakeAccounts::with(&[("alice", 1000)]));
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
        let d = crate::sys::fsutil::tests::scratch();
        let grants = d.path().join("grants.toml");
        let path = d.path().join("snapshot");
        let body = "ssh-ed25519 AAAA vmshare:bob\nssh-ed25519 BBBB vmshare:eve\n";
        let read = |offset: u64, len: u64| {
            let digest = body
                .as_bytes()
                .get(offset as usize..)
                .and_then(|b| b.get(..len as usize))
                .map_or(String::new(), body_digest);
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
