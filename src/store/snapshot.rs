//! The compiled snapshot in the run dir: per owner, the lines the key lookup
//! prints, and the grant-file version they were compiled from.
//!
//! Layout: one JSON header line, then the body: the owners' authorized_keys
//! text back to back, then each owner's key index. The header maps each
//! owner to its byte range of text and to its index. Written atomically
//! (temp, fsync, rename), so a reader sees one whole snapshot or another.
//!
//! The key index lets the key lookup answer for the one key sshd offers
//! without reading the owner's other lines: an open-addressing hash table
//! (linear probing, at most two thirds full) of [`SLOT`]-byte slots, keyed
//! by the key's type and base64 blob (sshd's `%t` and `%k`). Each slot
//! holds the key's hash, its line's offset, length and CRC-32, and a CRC-32
//! of the slot itself (with the owner, the table size and the slot's
//! position), so a damaged slot or line is detected before anything is
//! printed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::grant::policy::{is_line_of, key_line_len, push_key_line, OwnerAccess};
use crate::store::source::{FileVersion, Loaded, Outcome};
use crate::sys::fsutil;

// 3: per-owner CRC-32 checksums of the body. 4: per-owner key indexes.
// 5: lines may carry the guest's limits as sshd options; per-owner
// earliest deadlines.
const FORMAT: u32 = 5;
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
    /// Owner → (offset in the body, number of slots) of its key index.
    #[serde(default)]
    pub index: BTreeMap<String, (u64, u64)>,
    /// Owner → the earliest `expires` of its lines, for owners with one:
    /// from then on, printing the owner's lines means leaving out those
    /// whose deadline passed.
    #[serde(default)]
    pub deadlines: BTreeMap<String, i64>,
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
/// public keys only, and the key lookup runs unprivileged): whole or not at
/// all. Not synced to disk: it lives in the run dir, every daemon start
/// writes it anew, and a reader takes it only whole (its checksums) and
/// only for the grant file version it names, so one cut short by a power
/// loss is never used.
pub fn write(path: &Path, loaded: &Loaded, written_ns: i64) -> io::Result<()> {
    fsutil::atomic_replace_volatile(path, &encode(loaded, written_ns)?, 0o644)
}

/// The snapshot of `loaded`, as [`write`] writes it.
pub fn encode(loaded: &Loaded, written_ns: i64) -> io::Result<Vec<u8>> {
    // The body's size is known before it is written: no copying as it
    // grows.
    let body_len = match &loaded.outcome {
        Outcome::Valid { policy, .. } => policy
            .owners
            .values()
            .map(|a| {
                let lines: usize = a.keys.iter().map(key_line_len).sum();
                lines + slot_count(a.keys.len()) as usize * SLOT
            })
            .sum(),
        _ => 0,
    };
    let mut text = String::with_capacity(body_len);
    let mut owners = BTreeMap::new();
    let mut digests = BTreeMap::new();
    let mut lines = Vec::new();
    let mut deadlines = BTreeMap::new();
    if let Outcome::Valid { policy, .. } = &loaded.outcome {
        for (name, access) in &policy.owners {
            if let Some(at) = access.earliest_deadline() {
                deadlines.insert(name.clone(), at);
            }
            let start = text.len();
            let entries = push_owner_text(&mut text, access)?;
            let range = &text.as_bytes()[start..];
            owners.insert(name.clone(), (start as u64, range.len() as u64));
            digests.insert(name.clone(), body_digest(range));
            lines.push((name, entries));
        }
    }
    let mut body = text.into_bytes();
    let mut index = BTreeMap::new();
    for (name, entries) in lines {
        let slots = slot_count(entries.len());
        index.insert(name.clone(), (body.len() as u64, slots));
        push_index(&mut body, name, &entries, slots);
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
        index,
        deadlines,
    };
    let mut data = serde_json::to_vec(&header).map_err(io::Error::other)?;
    data.push(b'\n');
    data.extend_from_slice(&body);
    Ok(data)
}

// ------------------------------------------------------------- key index

/// Bytes per index slot: key hash, line CRC-32, line offset (in the body),
/// line length, slot CRC-32; little-endian. A slot whose line length is 0
/// is empty.
pub const SLOT: usize = 24;
/// Slots read with one `pread` while probing: at half full, nearly every
/// probe ends within them.
const PROBE_BATCH: u64 = 16;

/// One line of an owner's text, as its index slot describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    hash: u32,
    crc: u32,
    offset: u64,
    len: u32,
}

/// The index hash of key (`algorithm`, `blob`). Not a defence against
/// chosen collisions: those only lengthen one owner's probes, and every
/// candidate line is compared with the key itself.
fn key_hash(algorithm: &str, blob: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for part in [algorithm.as_bytes(), b" ", blob.as_bytes()] {
        h.update(part);
    }
    h.finalize()
}

/// Where a key's probe starts: its hash mixed (murmur3's finalizer, since
/// keys that differ in a few bits have CRCs that do too), modulo the size.
fn home_slot(hash: u32, slots: u64) -> u64 {
    let mut h = hash;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    u64::from(h) % slots
}

/// At most half full, and never empty, so a probe always ends at an empty
/// slot, and soon.
fn slot_count(keys: usize) -> u64 {
    2 * keys as u64 + 1
}

/// Appends `access`'s lines to `text`, returning where each one is.
fn push_owner_text(text: &mut String, access: &OwnerAccess) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::with_capacity(access.keys.len());
    for k in &access.keys {
        let at = text.len();
        push_key_line(text, k);
        let line = &text.as_bytes()[at..];
        entries.push(Entry {
            hash: key_hash(&k.algorithm, &k.blob),
            crc: crc32fast::hash(line),
            offset: at as u64,
            len: u32::try_from(line.len()).map_err(|_| invalid("key line too long"))?,
        });
    }
    Ok(entries)
}

/// Appends `owner`'s index of `entries` (`slots` slots) to `out`. The first
/// entry for a key comes first on its probe path, so it wins, as in
/// [`crate::grant::policy::guest_in_lines`].
fn push_index(out: &mut Vec<u8>, owner: &str, entries: &[Entry], slots: u64) {
    let n = slots as usize;
    let mut table: Vec<Option<Entry>> = vec![None; n];
    for e in entries {
        let mut i = home_slot(e.hash, slots) as usize;
        while table[i].is_some() {
            i = (i + 1) % n;
        }
        table[i] = Some(*e);
    }
    out.reserve(n * SLOT);
    let checks = SlotChecks::new(owner, slots);
    for (i, e) in table.iter().enumerate() {
        out.extend_from_slice(&encode_slot(&checks, i as u64, e.as_ref()));
    }
}

fn encode_slot(checks: &SlotChecks, at: u64, entry: Option<&Entry>) -> [u8; SLOT] {
    let mut s = [0u8; SLOT];
    if let Some(e) = entry {
        s[0..4].copy_from_slice(&e.hash.to_le_bytes());
        s[4..8].copy_from_slice(&e.crc.to_le_bytes());
        s[8..16].copy_from_slice(&e.offset.to_le_bytes());
        s[16..20].copy_from_slice(&e.len.to_le_bytes());
    }
    let check = checks.of(at, &s[..SLOT - 4]);
    s[SLOT - 4..].copy_from_slice(&check.to_le_bytes());
    s
}

/// Not 0: an all-zero slot (zeroed in place) must fail its check.
const SLOT_CHECK_MASK: u32 = 0x766d_7368;

/// The checksums of one owner's slots. A slot's own checksum covers where
/// it belongs (the owner, the table's size, the slot's position), so a slot
/// read from the wrong place (another owner's table, another size, another
/// position) fails it like a damaged one. The part every slot of a table
/// shares is hashed once.
struct SlotChecks(crc32fast::Hasher);

impl SlotChecks {
    fn new(owner: &str, slots: u64) -> Self {
        let mut shared = crc32fast::Hasher::new();
        shared.update(owner.as_bytes());
        shared.update(&[0]);
        shared.update(&slots.to_le_bytes());
        SlotChecks(shared)
    }

    fn of(&self, at: u64, fields: &[u8]) -> u32 {
        let mut h = self.0.clone();
        h.update(&at.to_le_bytes());
        h.update(fields);
        h.finalize() ^ SLOT_CHECK_MASK
    }
}

/// The entry in slot `at` (`None`: empty), or an error if it is damaged.
fn decode_slot(owner: &str, slots: u64, at: u64, s: &[u8]) -> io::Result<Option<Entry>> {
    let word = |r: std::ops::Range<usize>| -> u64 {
        s[r].iter()
            .rev()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
    };
    if s.len() != SLOT
        || word(SLOT - 4..SLOT) != u64::from(SlotChecks::new(owner, slots).of(at, &s[..SLOT - 4]))
    {
        return Err(invalid("snapshot index slot does not match its checksum"));
    }
    let len = word(16..20) as u32;
    Ok((len > 0).then(|| Entry {
        hash: word(0..4) as u32,
        crc: word(4..8) as u32,
        offset: word(8..16),
        len,
    }))
}

/// What the snapshot says about one owner.
#[derive(Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // built once per read, never stored
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

/// A snapshot found current: its header checked, nothing else read yet.
pub struct Current {
    pub header: Header,
    file: File,
    /// Where the body starts: just after the header's newline.
    body_start: u64,
    file_len: u64,
}

/// Opens the snapshot, provided it was compiled from `grants_path` at
/// `current`; `Ok(None)` if it was not (stale). Errors mean the snapshot is
/// unusable.
pub fn open(
    path: &Path,
    grants_path: &Path,
    current: Option<&FileVersion>,
) -> io::Result<Option<Current>> {
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
        return Ok(None);
    }
    let file = reader.into_inner();
    let file_len = file.metadata()?.len();
    Ok(Some(Current {
        header,
        file,
        body_start: line.len() as u64,
        file_len,
    }))
}

/// Opens the snapshot for `owner`, provided it was compiled from
/// `grants_path` at `current`. Errors mean the snapshot is unusable.
pub fn open_owner(
    path: &Path,
    grants_path: &Path,
    current: Option<&FileVersion>,
    owner: &str,
) -> io::Result<Open> {
    match open(path, grants_path, current)? {
        Some(snapshot) => snapshot.owner(owner).map(Open::Fresh),
        None => Ok(Open::Stale),
    }
}

impl Current {
    /// The absolute (start, end) of `owner`'s text, checked to lie inside
    /// the file; `None` if the owner has no lines.
    fn text_range(&self, owner: &str) -> io::Result<Option<(u64, u64)>> {
        let Some(&(offset, len)) = self.header.owners.get(owner) else {
            return Ok(None);
        };
        let not_lines = || invalid("snapshot range does not hold whole lines");
        let start = self.body_start.checked_add(offset).ok_or_else(not_lines)?;
        let end = start.checked_add(len).ok_or_else(not_lines)?;
        if end > self.file_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot body is truncated",
            ));
        }
        Ok(Some((start, end)))
    }

    /// Opens `owner`'s lines: their range located and found to hold whole
    /// lines, nothing read yet.
    pub fn owner(self, owner: &str) -> io::Result<Opened> {
        let mut range = None;
        let mut digest = String::new();
        if let Some((start, end)) = self.text_range(owner)? {
            // A range must start after a newline (the header's, for the
            // first owner) and end with one, so only whole lines are ever
            // printed.
            let byte_at = |at: u64| -> io::Result<u8> {
                let mut b = [0u8; 1];
                self.file.read_exact_at(&mut b, at)?;
                Ok(b[0])
            };
            if byte_at(start - 1)? != b'\n' || (end > start && byte_at(end - 1)? != b'\n') {
                return Err(invalid("snapshot range does not hold whole lines"));
            }
            digest = self
                .header
                .digests
                .get(owner)
                .cloned()
                .ok_or_else(|| invalid("snapshot has no checksum for the owner"))?;
            range = Some((start, end - start));
        }
        Ok(Opened {
            header: self.header,
            file: self.file,
            range,
            digest,
        })
    }

    /// The line of key (`algorithm`, `blob`) among `owner`'s, found through
    /// the owner's index: `pread`s of a few slots and of the one line, each
    /// checked against its CRC-32, and the line compared with the key.
    /// `Ok(None)`: the key is not granted. Errors mean the snapshot is
    /// unusable.
    pub fn key_line(
        &self,
        owner: &str,
        algorithm: &str,
        blob: &str,
    ) -> io::Result<Option<Vec<u8>>> {
        let Some(text) = self.text_range(owner)? else {
            return Ok(None);
        };
        let &(offset, slots) = self
            .header
            .index
            .get(owner)
            .ok_or_else(|| invalid("snapshot has no index for the owner"))?;
        let bad_index = || invalid("snapshot index is out of bounds");
        let table = self.body_start.checked_add(offset).ok_or_else(bad_index)?;
        let end = slots
            .checked_mul(SLOT as u64)
            .and_then(|len| table.checked_add(len))
            .ok_or_else(bad_index)?;
        if slots == 0 || end > self.file_len {
            return Err(bad_index());
        }
        let hash = key_hash(algorithm, blob);
        let mut at = home_slot(hash, slots);
        let mut probed = 0;
        let mut batch = [0u8; SLOT * PROBE_BATCH as usize];
        while probed < slots {
            let n = PROBE_BATCH.min(slots - at).min(slots - probed);
            let bytes = &mut batch[..n as usize * SLOT];
            self.file.read_exact_at(bytes, table + at * SLOT as u64)?;
            for (i, raw) in bytes.chunks_exact(SLOT).enumerate() {
                let Some(entry) = decode_slot(owner, slots, at + i as u64, raw)? else {
                    return Ok(None);
                };
                if entry.hash == hash {
                    let line = self.read_line(text, &entry)?;
                    if std::str::from_utf8(&line).is_ok_and(|l| is_line_of(l, algorithm, blob)) {
                        return Ok(Some(line));
                    }
                }
            }
            probed += n;
            at = (at + n) % slots;
        }
        Ok(None)
    }

    /// The line `entry` points at, checked: inside the owner's `text`
    /// range, one whole line, matching its CRC-32.
    fn read_line(&self, (text_start, text_end): (u64, u64), entry: &Entry) -> io::Result<Vec<u8>> {
        let bad = || invalid("snapshot index points outside the owner's lines");
        let start = self.body_start.checked_add(entry.offset).ok_or_else(bad)?;
        let end = start.checked_add(u64::from(entry.len)).ok_or_else(bad)?;
        if start < text_start || end > text_end {
            return Err(bad());
        }
        // With the byte before it, which must end the previous line (or the
        // header).
        let mut bytes = vec![0u8; entry.len as usize + 1];
        self.file.read_exact_at(&mut bytes, start - 1)?;
        let line = bytes.split_off(1);
        if bytes != [b'\n']
            || line.iter().position(|&b| b == b'\n') != Some(line.len() - 1)
            || crc32fast::hash(&line) != entry.crc
        {
            return Err(invalid("snapshot line does not match its index"));
        }
        Ok(line)
    }
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

    /// A slot checks only where it was written: another owner, table size
    /// or position fails it, and so does a slot zeroed in place.
    #[test]
    fn a_slot_checks_only_where_it_was_written() {
        let fields = [0xa5u8; SLOT - 4];
        let mut slot = [0u8; SLOT];
        slot[..SLOT - 4].copy_from_slice(&fields);
        slot[16] = 1; // a line length: not an empty slot
        let check = SlotChecks::new("alice", 7).of(3, &slot[..SLOT - 4]);
        slot[SLOT - 4..].copy_from_slice(&check.to_le_bytes());
        assert!(decode_slot("alice", 7, 3, &slot).unwrap().is_some());
        for (owner, slots, at) in [("bob", 7, 3), ("alice", 9, 3), ("alice", 7, 4)] {
            assert!(
                decode_slot(owner, slots, at, &slot).is_err(),
                "{owner} {slots} {at}"
            );
        }
        assert!(decode_slot("alice", 7, 3, &[0u8; SLOT]).is_err());
    }

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

        // One byte near the end of the owner's lines changed in place.
        let mut data = std::fs::read(&path).unwrap();
        let at = text_end(&data, "alice") - 10;
        data[at] ^= 1;
        std::fs::write(&path, data).unwrap();
        let Open::Fresh(mut opened) = open_owner(&path, &grants, None, "alice").unwrap() else {
            panic!("stale");
        };
        let e = opened.check().err().expect("damage must be caught");
        assert!(e.to_string().contains("digest"), "{e}");
    }

    /// Where `owner`'s lines end in snapshot `data`.
    fn text_end(data: &[u8], owner: &str) -> usize {
        let body = data.iter().position(|&b| b == b'\n').unwrap() + 1;
        let header: Header = serde_json::from_slice(&data[..body]).unwrap();
        let (offset, len) = header.owners[owner];
        body + (offset + len) as usize
    }

    /// (owner, algorithm, blob, line)
    type Granted = (String, String, String, String);

    /// Alice shares keys 0..6 with three guests, carol key 6; key 7 is
    /// nobody's. Returns the snapshot bytes and the granted lines.
    fn indexed_snapshot(grants: &Path) -> (Vec<u8>, Vec<Granted>) {
        let key = |n: u32| {
            let mut bytes = [9u8; 32];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey(bytes))
                .to_openssh()
                .unwrap()
        };
        let mut text = String::from("[owners.alice]\nsharing = true\n");
        for g in 0..3 {
            text.push_str(&format!(
                "[owners.alice.guests.g{g}]\nstatus = \"accepted\"\nkeys = [\"{}\", \"{}\"]\n",
                key(2 * g),
                key(2 * g + 1)
            ));
        }
        text.push_str(&format!(
            "[owners.carol]\nsharing = true\n[owners.carol.guests.dan]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n[owners.carol.guests.eve]\nkeys = [\"{}\"]\n",
            key(6),
            key(7)
        ));
        let accounts = FakeAccounts::with(&[("alice", 1000), ("carol", 1001)]);
        let loaded = crate::store::source::load_text(grants, text, &accounts);
        let mut granted = Vec::new();
        for (owner, access) in &loaded.policy().unwrap().owners {
            for k in &access.keys {
                let line = crate::grant::policy::key_line(k);
                granted.push((owner.clone(), k.algorithm.clone(), k.blob.to_string(), line));
            }
        }
        assert_eq!(granted.len(), 7);
        (encode(&loaded, 0).unwrap(), granted)
    }

    #[test]
    fn the_index_yields_exactly_the_granted_line() {
        let d = crate::sys::fsutil::tests::scratch();
        let grants = d.path().join("grants.toml");
        let path = d.path().join("snapshot");
        let (data, granted) = indexed_snapshot(&grants);
        std::fs::write(&path, &data).unwrap();
        let snapshot = open(&path, &grants, None).unwrap().unwrap();
        for (owner, algorithm, blob, line) in &granted {
            let got = snapshot.key_line(owner, algorithm, blob).unwrap();
            assert_eq!(got.as_deref(), Some(line.as_bytes()), "{owner} {blob}");
            for other in ["alice", "carol", "bob", ""] {
                if other != owner {
                    assert_eq!(snapshot.key_line(other, algorithm, blob).unwrap(), None);
                }
            }
            assert_eq!(snapshot.key_line(owner, "ssh-rsa", blob).unwrap(), None);
            assert_eq!(
                snapshot.key_line(owner, algorithm, &blob[1..]).unwrap(),
                None
            );
        }
    }

    /// Any one byte of the body or index changed: a granted key's lookup
    /// yields its line or an error, any other key's nothing or an error.
    #[test]
    fn a_damaged_index_or_line_is_never_served() {
        let d = crate::sys::fsutil::tests::scratch();
        let grants = d.path().join("grants.toml");
        let path = d.path().join("snapshot");
        let (data, granted) = indexed_snapshot(&grants);
        let body = data.iter().position(|&b| b == b'\n').unwrap() + 1;
        let (mut errors, mut served) = (0, 0);
        for at in body..data.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = data.clone();
                damaged[at] ^= flip;
                std::fs::write(&path, &damaged).unwrap();
                let snapshot = open(&path, &grants, None).unwrap().unwrap();
                for (i, (owner, algorithm, blob, line)) in granted.iter().enumerate() {
                    match snapshot.key_line(owner, algorithm, blob) {
                        Ok(got) => {
                            assert_eq!(got.as_deref(), Some(line.as_bytes()), "byte {at}");
                            served += 1;
                        }
                        Err(_) => errors += 1,
                    }
                    // Another owner's key.
                    let (o, _, _, _) = &granted[(i + 1) % granted.len()];
                    if o != owner {
                        assert!(!matches!(
                            snapshot.key_line(o, algorithm, blob),
                            Ok(Some(_))
                        ));
                    }
                }
            }
        }
        assert!(errors > 0 && served > 0, "{errors} {served}");
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
        let last = text_end(&bytes, "alice") - 2;
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
                index: BTreeMap::new(),
                deadlines: BTreeMap::new(),
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
