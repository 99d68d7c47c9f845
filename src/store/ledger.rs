//! The key ledger, `<state_dir>/ledger`: every key ever granted to a guest
//! of an owner, and every key a guest session authenticated with. A guest
//! runs as the owner and can copy any key into the owner's own key files;
//! the ledger is what still tells that key apart from the owner's after the
//! grant is gone. Entries only ever make a key a guest's, so the worst a
//! lost ledger does is forget; it is root's, written by the daemon and the
//! PAM hook, and read on every login.
//!
//! The format is text, one entry a line, between a header and a trailer
//! that counts the entries (so a file cut short is told from a whole one):
//!
//! ```text
//! vmshare-ledger 1
//! key alice SHA256:… bob granted 1764500000
//! key alice SHA256:… bob authenticated 1764500100
//! end 2
//! ```
//!
//! One entry per owner and fingerprint. `release` (root only) takes an
//! entry out, giving the key back to the owner.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::Flock;

use crate::grant::parse::{check_guest_name, is_account_name};
use crate::sys::fsutil;

pub const FILE_NAME: &str = "ledger";
const LOCK_NAME: &str = "ledger.lock";
const HEADER: &str = "vmshare-ledger 1";

/// The most a ledger may hold, so a login never reads more: about two
/// hundred thousand keys. A larger file is refused like a corrupt one.
pub const LIMIT: u64 = 16 << 20;

/// How long a writer waits for another to finish.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How a key came to be a guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// It was in the guest's `keys` in the grant file.
    Granted,
    /// A session of the guest's authenticated with it.
    Authenticated,
    /// A guest session added it to the owner's key files.
    Planted,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Granted => "granted",
            Origin::Authenticated => "authenticated",
            Origin::Planted => "planted",
        }
    }

    fn parse(s: &str) -> Option<Origin> {
        Some(match s {
            "granted" => Origin::Granted,
            "authenticated" => Origin::Authenticated,
            "planted" => Origin::Planted,
            _ => return None,
        })
    }
}

/// One key of one owner, and the guest it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub owner: String,
    pub fingerprint: String,
    pub guest: String,
    pub origin: Origin,
    /// When it was first recorded, seconds since the epoch.
    pub since: i64,
}

/// Whether `s` has the shape of a `SHA256:` fingerprint: 43 characters of
/// unpadded base64.
pub fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("SHA256:")
        .is_some_and(|b| b.len() == 43 && b.bytes().all(|c| BASE64[usize::from(c)]))
}

/// The bytes of base64's alphabet (a table: ledger lines are checked by
/// the ten thousand).
static BASE64: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
        c += 1;
    }
    table
};

/// The `N` words of `line` between single spaces, or `None` if it has
/// another number of them. (A ledger line is read on every pass and every
/// login: one scan for the spaces, not one search per word.)
fn words<const N: usize>(line: &str) -> Option<[&str; N]> {
    let mut found = [""; N];
    let mut start = 0;
    let mut n = 0;
    for at in memchr::memchr_iter(b' ', line.as_bytes()).chain([line.len()]) {
        *found.get_mut(n)? = line.get(start..at)?;
        n += 1;
        start = at + 1;
    }
    (n == N).then_some(found)
}

/// One entry line, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub owner: &'a str,
    pub fingerprint: &'a str,
    pub guest: &'a str,
    pub origin: Origin,
    pub since: i64,
}

fn parse_entry_ref(line: &str) -> Result<EntryRef<'_>, String> {
    if !line.starts_with("key ") && line != "key" {
        let tag = line.split(' ').next().unwrap_or_default();
        return Err(format!("unknown entry `{tag}`"));
    }
    let Some([_, owner, fingerprint, guest, origin, since]) =
        words::<6>(line).filter(|[.., since]| !since.is_empty())
    else {
        return Err("expected `key OWNER FINGERPRINT GUEST ORIGIN SINCE`".into());
    };
    if !is_account_name(owner) {
        return Err(format!("invalid owner name {owner:?}"));
    }
    if !is_fingerprint(fingerprint) {
        return Err(format!("invalid fingerprint {fingerprint:?}"));
    }
    check_guest_name(guest)?;
    let origin = Origin::parse(origin).ok_or_else(|| format!("unknown origin {origin:?}"))?;
    let since = since
        .parse::<i64>()
        .ok()
        .filter(|&t| t >= 0)
        .ok_or_else(|| format!("invalid time {since:?}"))?;
    Ok(EntryRef {
        owner,
        fingerprint,
        guest,
        origin,
        since,
    })
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let e = parse_entry_ref(line)?;
    Ok(Entry {
        owner: e.owner.to_string(),
        fingerprint: e.fingerprint.to_string(),
        guest: e.guest.to_string(),
        origin: e.origin,
        since: e.since,
    })
}

/// Checks a whole ledger's text as [`Ledger::parse`] does (but for keys
/// listed twice), calling `each` for every entry, without building it in
/// memory: the login's path.
pub fn scan<'a>(text: &'a str, mut each: impl FnMut(EntryRef<'a>)) -> Result<usize, String> {
    let mut lines = text.split_inclusive('\n').enumerate();
    let mut read = match lines.next() {
        Some((_, first)) if first.strip_suffix('\n') == Some(HEADER) => first.len(),
        _ => return Err(format!("line 1: expected `{HEADER}`")),
    };
    for (i, raw) in lines {
        let n = i + 1;
        // Every line between the header and this one was an entry.
        let count = i - 1;
        read += raw.len();
        let Some(line) = raw.strip_suffix('\n') else {
            return Err(format!("line {n}: cut short (no line end)"));
        };
        if let Some(trailer) = line.strip_prefix("end ") {
            if trailer.parse::<usize>().ok() != Some(count) {
                return Err(format!(
                    "line {n}: the trailer counts {trailer} entries, the file has {count}"
                ));
            }
            if read != text.len() {
                return Err(format!("line {}: text after the trailer", n + 1));
            }
            return Ok(count);
        }
        each(parse_entry_ref(line).map_err(|e| format!("line {n}: {e}"))?);
    }
    Err("the file is cut short (no `end` trailer)".into())
}

/// `owner`'s entry for the key `fingerprint` in a ledger's text, checking
/// the text's frame (the header, a trailer that counts every line between,
/// a line end at the end) and parsing only the lines that name the key:
/// the login's path, which stays as cheap at 100,000 keys as at 10. A
/// frame fault, or a line naming the key that is not a whole entry, is an
/// error (a damaged ledger is not trusted); a fault in a line about other
/// keys is left to the daemon's full reads, which repair it.
pub fn lookup<'a>(
    text: &'a str,
    owner: &str,
    fingerprint: &str,
) -> Result<Option<EntryRef<'a>>, String> {
    check_frame(text)?;
    let needle = format!(" {fingerprint} ");
    for at in memchr::memmem::find_iter(text.as_bytes(), needle.as_bytes()) {
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        let line = &text[start..end];
        let n = text[..start].bytes().filter(|&b| b == b'\n').count() + 1;
        let entry = parse_entry_ref(line).map_err(|e| format!("line {n}: {e}"))?;
        if entry.owner == owner && entry.fingerprint == fingerprint {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// The frame [`scan`] checks, without reading the entries.
fn check_frame(text: &str) -> Result<(), String> {
    let Some(body) = text.strip_prefix(HEADER).and_then(|t| t.strip_prefix('\n')) else {
        return Err(format!("line 1: expected `{HEADER}`"));
    };
    let Some(body) = body.strip_suffix('\n') else {
        return Err("the file is cut short (no line end)".into());
    };
    let (entries, trailer) = match body.rfind('\n') {
        Some(i) => (i + 1, &body[i + 1..]),
        None => (0, body),
    };
    let count = body[..entries].bytes().filter(|&b| b == b'\n').count();
    match trailer.strip_prefix("end ") {
        Some(n) if n.parse::<usize>().ok() == Some(count) => Ok(()),
        Some(n) => Err(format!(
            "line {}: the trailer counts {n} entries, the file has {count}",
            count + 2
        )),
        None => Err("the file is cut short (no `end` trailer)".into()),
    }
}

/// The ledger in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    entries: BTreeMap<(String, String), Entry>,
}

impl Ledger {
    /// Parses a whole ledger. Any line out of place, a missing or wrong
    /// trailer, or two entries for one key is an error naming the line.
    pub fn parse(text: &str) -> Result<Ledger, String> {
        let mut ledger = Ledger::default();
        let mut twice = None;
        scan(text, |e| {
            let key = (e.owner.to_string(), e.fingerprint.to_string());
            let entry = Entry {
                owner: e.owner.to_string(),
                fingerprint: e.fingerprint.to_string(),
                guest: e.guest.to_string(),
                origin: e.origin,
                since: e.since,
            };
            if ledger.entries.insert(key, entry).is_some() && twice.is_none() {
                twice = Some(e.fingerprint.to_string());
            }
        })?;
        match twice {
            Some(fp) => Err(format!("a second entry for the same key {fp}")),
            None => Ok(ledger),
        }
    }

    /// Every entry line of a damaged ledger that still reads as one (the
    /// first, for a key listed twice).
    pub fn salvage(text: &str) -> Ledger {
        let mut ledger = Ledger::default();
        for line in text.lines() {
            if let Ok(entry) = parse_entry(line) {
                let key = (entry.owner.clone(), entry.fingerprint.clone());
                ledger.entries.entry(key).or_insert(entry);
            }
        }
        ledger
    }

    pub fn encode(&self) -> String {
        let mut out = format!("{HEADER}\n");
        for e in self.entries.values() {
            out.push_str(&format!(
                "key {} {} {} {} {}\n",
                e.owner,
                e.fingerprint,
                e.guest,
                e.origin.as_str(),
                e.since
            ));
        }
        out.push_str(&format!("end {}\n", self.entries.len()));
        out
    }

    /// The entry for `owner`'s key `fingerprint`, if any.
    pub fn get(&self, owner: &str, fingerprint: &str) -> Option<&Entry> {
        self.entries
            .get(&(owner.to_string(), fingerprint.to_string()))
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `entry`; returns whether the ledger changed. A key already
    /// known keeps its entry, except that a key granted now to another
    /// guest is that guest's from then on (the grant file says so).
    pub fn record(&mut self, entry: Entry) -> bool {
        let key = (entry.owner.clone(), entry.fingerprint.clone());
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(key, entry);
                true
            }
            Some(old) if entry.origin == Origin::Granted && old.guest != entry.guest => {
                *old = entry;
                true
            }
            Some(_) => false,
        }
    }

    /// Takes `owner`'s key `fingerprint` out.
    pub fn release(&mut self, owner: &str, fingerprint: &str) -> Option<Entry> {
        self.entries
            .remove(&(owner.to_string(), fingerprint.to_string()))
    }
}

/// What is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No ledger yet: nothing recorded.
    Missing,
    Valid(Ledger),
    /// A ledger that cannot be trusted, and why. `salvage` holds the text
    /// of a root-owned file that is only damaged (corrupt or cut short),
    /// whose entries may still be kept.
    Bad {
        why: String,
        salvage: Option<String>,
    },
}

/// The ledger's path in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the ledger at `path`: one bounded read. It must be a regular file
/// owned by root and not writable by group or others, below directories
/// only root can write (as the grant file).
pub fn read(path: &Path) -> State {
    match read_raw(path) {
        Ok(None) => State::Missing,
        Ok(Some(text)) => match Ledger::parse(&text) {
            Ok(ledger) => State::Valid(ledger),
            Err(e) => State::Bad {
                why: format!("{}: {e}", path.display()),
                salvage: Some(text),
            },
        },
        Err((why, salvage)) => State::Bad { why, salvage },
    }
}

/// The ledger's text as [`read`] reads it, unchecked: `Ok(None)` when
/// there is none, `Err` why the file cannot be trusted.
pub fn read_text(path: &Path) -> Result<Option<String>, String> {
    read_raw(path).map_err(|(why, _)| why)
}

/// The text, or why not (with the text of a root-owned file that is only
/// damaged).
fn read_raw(path: &Path) -> Result<Option<String>, (String, Option<String>)> {
    let bad = |why: String| Err((why, None));
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return bad(format!("cannot open {}: {e}", path.display())),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return bad(format!("cannot stat {}: {e}", path.display())),
    };
    if let Err(e) = fsutil::check_trusted_file(path, &meta) {
        return bad(e);
    }
    if let Err(e) = fsutil::check_trusted_dirs(path) {
        return bad(e);
    }
    if meta.len() > LIMIT {
        return bad(format!(
            "{} is {} bytes; the limit is {LIMIT}",
            path.display(),
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = file.take(LIMIT + 1).read_to_end(&mut bytes) {
        return bad(format!("cannot read {}: {e}", path.display()));
    }
    if bytes.len() as u64 > LIMIT {
        return bad(format!("{} grew past {LIMIT} bytes", path.display()));
    }
    String::from_utf8(bytes).map(Some).map_err(|e| {
        let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
        (format!("{} is not UTF-8", path.display()), Some(text))
    })
}

/// What a writer does with a ledger it cannot trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBad {
    /// Leave it alone (the PAM hook: the daemon repairs).
    Keep,
    /// Replace it: the salvaged entries of a damaged root-owned file, then
    /// whatever the change adds (the daemon).
    Repair,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    Unchanged,
    Written,
    /// The ledger was bad and left alone, and why.
    LeftBad(String),
    /// The ledger was bad and rewritten, and why it was bad.
    Repaired(String),
}

/// Changes the ledger in `state_dir` under its lock: reads it, lets
/// `change` edit it (returning whether it changed; told whether the ledger
/// is being rebuilt, so it can add all it knows), and writes it back
/// atomically (root:root, 0600) if it did. The directory is made (0700) if
/// missing.
pub fn update(
    state_dir: &Path,
    on_bad: OnBad,
    change: impl FnOnce(&mut Ledger, bool) -> bool,
) -> Result<Updated, String> {
    ensure_dir(state_dir)?;
    let _lock = lock(state_dir)?;
    let path = path_in(state_dir);
    // Rebuilding: a ledger missing or bad (and why).
    let (mut ledger, rebuilding, bad) = match read(&path) {
        State::Missing => (Ledger::default(), true, None),
        State::Valid(l) => (l, false, None),
        State::Bad { why, .. } if on_bad == OnBad::Keep => return Ok(Updated::LeftBad(why)),
        State::Bad { why, salvage } => {
            let kept = salvage.as_deref().map(Ledger::salvage).unwrap_or_default();
            (kept, true, Some(why))
        }
    };
    let changed = change(&mut ledger, rebuilding);
    if !changed && bad.is_none() {
        return Ok(Updated::Unchanged);
    }
    // A bad file is replaced, never written through: remove it first, so
    // a symlink or a file of someone else's is not followed or kept.
    if bad.is_some() {
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(|e| format!("cannot remove the bad ledger {}: {e}", path.display()))?;
    }
    fsutil::atomic_write(&path, ledger.encode().as_bytes(), 0o600, Some((0, 0)))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(match bad {
        Some(why) => Updated::Repaired(why),
        None => Updated::Written,
    })
}

/// The ledger's text in `state_dir`, for [`Holdings::scan`], if the
/// directory is sound and the file can be read (it may still be damaged).
/// Read without the lock: the ledger is only ever replaced whole.
pub fn read_for_check(state_dir: &Path) -> Option<String> {
    ensure_dir(state_dir).ok()?;
    read_text(&path_in(state_dir)).ok().flatten()
}

/// Which guest each key of a ledger's text is noted for, built without
/// copying: the daemon reads it beside each compile and asks at the end
/// whether it holds every granted key (nearly always yes), in which case
/// [`update`] would neither write nor repair the ledger.
pub struct Holdings<'t> {
    guests: HashMap<(&'t str, &'t str), &'t str, foldhash::fast::RandomState>,
}

impl<'t> Holdings<'t> {
    /// `None` unless `text` reads as [`Ledger::parse`] reads it, with no
    /// key listed twice.
    pub fn scan(text: &'t str) -> Option<Self> {
        let mut guests = HashMap::with_capacity_and_hasher(text.len() / 64, Default::default());
        let mut twice = false;
        let whole = scan(text, |e| {
            twice |= guests.insert((e.owner, e.fingerprint), e.guest).is_some();
        });
        (whole.is_ok() && !twice).then_some(Holdings { guests })
    }

    /// Whether each `(owner, fingerprint, guest)` of `granted` is noted for
    /// that guest (which is when [`Ledger::record`] changes nothing).
    pub fn hold<'a>(&self, granted: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> bool {
        granted.into_iter().all(|(owner, fingerprint, guest)| {
            self.guests.get(&(owner, fingerprint)) == Some(&guest)
        })
    }
}

/// Makes `state_dir` (root, 0700) if it is missing; refuses one that
/// others could write.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), String> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be a directory owned by root and not writable by group or others",
            dir.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn lock(state_dir: &Path) -> Result<Flock<File>, String> {
    let path = state_dir.join(LOCK_NAME);
    fsutil::lock_exclusive(&path, LOCK_WAIT).map_err(|e| match e {
        fsutil::LockError::Busy => format!(
            "cannot lock {}: still held after {LOCK_WAIT:?}",
            path.display()
        ),
        fsutil::LockError::Failed(why) => why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FP: &str = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const FP2: &str = "SHA256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    fn entry(fp: &str, guest: &str, origin: Origin) -> Entry {
        Entry {
            owner: "alice".into(),
            fingerprint: fp.into(),
            guest: guest.into(),
            origin,
            since: 1_764_500_000,
        }
    }

    fn sample() -> Ledger {
        let mut l = Ledger::default();
        assert!(l.record(entry(FP, "bob", Origin::Granted)));
        assert!(l.record(entry(FP2, "carol", Origin::Planted)));
        l
    }

    #[test]
    fn a_ledger_reads_back_as_written() {
        let l = sample();
        let text = l.encode();
        assert!(text.starts_with("vmshare-ledger 1\nkey alice SHA256:"));
        assert!(text.ends_with("end 2\n"));
        assert_eq!(Ledger::parse(&text).unwrap(), l);
        assert_eq!(l.get("alice", FP).unwrap().guest, "bob");
        assert_eq!(l.get("alice", FP2).unwrap().origin, Origin::Planted);
        assert!(l.get("dave", FP).is_none());
        assert_eq!(Ledger::parse("vmshare-ledger 1\nend 0\n").unwrap().len(), 0);
    }

    #[test]
    fn damaged_ledgers_are_refused_and_say_where() {
        let text = sample().encode();
        let cut = &text[..text.len() - 8];
        assert!(Ledger::parse(cut).is_err());
        let no_end = text.replace("end 2\n", "");
        assert!(Ledger::parse(&no_end).unwrap_err().contains("cut short"));
        let half = &text[..text.find("carol").unwrap()];
        assert!(Ledger::parse(half).is_err());
        for (bad, want) in [
            (text.replace("end 2", "end 3"), "line 4"),
            (
                text.replace("vmshare-ledger 1", "vmshare-ledger 2"),
                "line 1",
            ),
            (text.replace("bob", "Bob!"), "line 2"),
            (text.replace("granted", "stolen"), "line 2"),
            (text.replace(FP, "SHA256:short"), "line 2"),
            (text.replace("1764500000", "-1"), "line 2"),
            (format!("{text}key x\n"), "line 5"),
            (text.replace(FP2, FP), "second entry"),
            (text.replace("end 2\n", "end 2\nkey"), "line 5"),
        ] {
            let e = Ledger::parse(&bad).unwrap_err();
            assert!(e.contains(want), "{e} for {bad:?}");
        }
        // What still reads as an entry survives a salvage.
        let mangled = text.replace("end 2\n", "garbage\x01\n");
        assert_eq!(Ledger::salvage(&mangled), sample());
        assert_eq!(Ledger::salvage(half).len(), 1);
    }

    /// The entry for `owner`'s key `fingerprint` in a ledger's text, checking
    /// the whole text (an error if it is not a whole ledger).
    fn find<'a>(
        text: &'a str,
        owner: &str,
        fingerprint: &str,
    ) -> Result<Option<EntryRef<'a>>, String> {
        let mut found = None;
        scan(text, |e| {
            if found.is_none() && e.owner == owner && e.fingerprint == fingerprint {
                found = Some(e);
            }
        })?;
        Ok(found)
    }

    #[test]
    fn lookup_reads_the_frame_and_the_lines_of_its_key() {
        let text = sample().encode();
        assert_eq!(lookup(&text, "alice", FP2), find(&text, "alice", FP2));
        assert_eq!(lookup(&text, "alice", FP).unwrap().unwrap().guest, "bob");
        assert_eq!(lookup(&text, "dave", FP2), Ok(None));
        assert_eq!(lookup(&text, "alice", &FP.replace('A', "C")), Ok(None));
        assert_eq!(lookup("vmshare-ledger 1\nend 0\n", "alice", FP), Ok(None));
        // The frame: every strict prefix, a wrong count, no header.
        for cut in 0..text.len() {
            assert!(lookup(&text[..cut], "alice", FP).is_err(), "{cut}");
        }
        assert!(lookup(&text.replace("end 2", "end 3"), "alice", FP).is_err());
        assert!(lookup(&text.replace("vmshare-ledger 1", "ledger"), "alice", FP).is_err());
        assert!(lookup(&format!("{text}key\n"), "alice", FP).is_err());
        // A damaged line naming the key is an error; one about another
        // key is left to the full reads.
        let lines: Vec<&str> = text.lines().collect();
        let spoilt = |i: usize| {
            let mut l = lines.clone();
            let bad = l[i]
                .replace(" granted ", " given ")
                .replace(" planted ", " given ");
            l[i] = &bad;
            format!("{}\n", l.join("\n"))
        };
        let bob = lines.iter().position(|l| l.contains(FP)).unwrap();
        let carol = lines.iter().position(|l| l.contains(FP2)).unwrap();
        let e = lookup(&spoilt(bob), "alice", FP).unwrap_err();
        assert!(e.contains(&format!("line {}", bob + 1)), "{e}");
        assert_eq!(
            lookup(&spoilt(carol), "alice", FP).unwrap().unwrap().guest,
            "bob"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Wherever the full read accepts a text, the login's lookup
        /// answers as it does, for every key in it and one that is not.
        #[test]
        fn lookup_agrees_with_a_full_read(
            keys in proptest::collection::vec(
                (0u8..3, "[A-Za-z0-9+/]{43}", 0u8..3),
                0..12,
            ),
            flip in proptest::option::of((proptest::num::usize::ANY, proptest::num::u8::ANY)),
        ) {
            let owners = ["alice", "bob", "carol"];
            let mut ledger = Ledger::default();
            let mut fps = Vec::new();
            for (owner, digest, guest) in &keys {
                let fp = format!("SHA256:{digest}");
                ledger.record(Entry {
                    owner: owners[*owner as usize].into(),
                    fingerprint: fp.clone(),
                    guest: format!("g{guest}"),
                    origin: Origin::Authenticated,
                    since: 1,
                });
                fps.push(fp);
            }
            fps.push(format!("SHA256:{}", "7".repeat(43)));
            let mut text = ledger.encode().into_bytes();
            if let Some((at, byte)) = flip {
                if !text.is_empty() {
                    let at = at % text.len();
                    text[at] = byte;
                }
            }
            let Ok(text) = String::from_utf8(text) else {
                return Ok(());
            };
            if scan(&text, |_| {}).is_ok() {
                for owner in owners {
                    for fp in &fps {
                        proptest::prop_assert_eq!(lookup(&text, owner, fp), find(&text, owner, fp));
                    }
                }
            }
        }
    }

    #[test]
    fn find_reads_one_entry_and_checks_the_whole_text() {
        let text = sample().encode();
        let e = find(&text, "alice", FP2).unwrap().unwrap();
        assert_eq!((e.guest, e.origin), ("carol", Origin::Planted));
        assert_eq!(find(&text, "dave", FP2), Ok(None));
        assert!(find(&text[..text.len() - 1], "alice", FP).is_err());
        assert!(find(&text.replace("end 2", "end 1"), "alice", FP).is_err());
    }

    #[test]
    fn a_known_key_keeps_its_guest_unless_granted_to_another() {
        let mut l = sample();
        assert!(!l.record(entry(FP, "bob", Origin::Authenticated)));
        assert!(!l.record(entry(FP, "dave", Origin::Planted)));
        assert_eq!(l.get("alice", FP).unwrap().guest, "bob");
        assert!(l.record(entry(FP, "dave", Origin::Granted)));
        assert_eq!(l.get("alice", FP).unwrap().guest, "dave");
        assert_eq!(l.release("alice", FP).unwrap().guest, "dave");
        assert!(l.release("alice", FP).is_none());
    }

    /// The daemon's quick check says "nothing to record" exactly when
    /// recording every granted key would change nothing.
    #[test]
    fn holding_the_granted_keys_is_what_recording_them_changes_nothing() {
        const FP3: &str = "SHA256:CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC";
        let text = sample().encode();
        let cases: [&[(&str, &str, &str)]; 7] = [
            &[],
            &[("alice", FP, "bob")],
            // A planted or authenticated entry keeps its guest.
            &[("alice", FP, "bob"), ("alice", FP2, "carol")],
            // Granted now to another guest: the entry changes hands.
            &[("alice", FP, "bob"), ("alice", FP2, "dave")],
            // Not there yet.
            &[("alice", FP3, "bob")],
            &[("dave", FP, "bob")],
            &[("alice", FP, "bob"), ("alice", FP3, "bob")],
        ];
        for granted in cases {
            let mut l = sample();
            let changes = granted
                .iter()
                .map(|&(owner, fp, guest)| {
                    l.record(Entry {
                        owner: owner.into(),
                        ..entry(fp, guest, Origin::Granted)
                    })
                })
                .fold(false, |a, b| a | b);
            let holds = Holdings::scan(&text).is_some_and(|h| h.hold(granted.iter().copied()));
            assert_eq!(holds, !changes, "{granted:?}");
        }
        // A ledger that does not read whole is never "held".
        assert!(Holdings::scan(&text[..text.len() - 1]).is_none());
        assert!(Holdings::scan(&text.replace("end 2", "end 3")).is_none());
        assert!(Holdings::scan(&text.replace(FP2, FP)).is_none());
        assert!(Holdings::scan("").is_none());
    }

    /// What the daemon asks on a pass: does the ledger in `dir` hold
    /// `granted` (and so needs no write)?
    fn holds_granted<'a>(
        dir: &Path,
        granted: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> bool {
        read_for_check(dir)
            .is_some_and(|text| Holdings::scan(&text).is_some_and(|h| h.hold(granted)))
    }

    fn state_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = fsutil::tests::scratch();
        let dir = tmp.path().join("state");
        (tmp, dir)
    }

    #[test]
    fn updates_write_root_only_files_and_read_back() {
        let (_tmp, dir) = state_dir();
        assert_eq!(read(&path_in(&dir)), State::Missing);
        let done = update(&dir, OnBad::Keep, |l, _| {
            l.record(entry(FP, "bob", Origin::Granted))
        });
        assert_eq!(done, Ok(Updated::Written));
        let meta = fs::metadata(path_in(&dir)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let again = update(&dir, OnBad::Keep, |l, _| {
            l.record(entry(FP, "bob", Origin::Granted))
        });
        assert_eq!(again, Ok(Updated::Unchanged));
        assert!(holds_granted(&dir, [("alice", FP, "bob")]));
        assert!(!holds_granted(&dir, [("alice", FP, "carol")]));
        assert!(!holds_granted(&dir.join("missing"), [("alice", FP, "bob")]));
        let State::Valid(l) = read(&path_in(&dir)) else {
            panic!("not valid")
        };
        assert_eq!(l.get("alice", FP).unwrap().guest, "bob");
    }

    #[test]
    fn hostile_ledgers_are_bad_and_repaired() {
        let (_tmp, dir) = state_dir();
        let path = path_in(&dir);
        update(&dir, OnBad::Keep, |l, _| {
            *l = sample();
            true
        })
        .unwrap();
        let good = fs::read_to_string(&path).unwrap();
        let huge = format!("{good}{}", "#".repeat(LIMIT as usize));
        type Spoil<'a> = Box<dyn Fn() + 'a>;
        let cases: Vec<(&str, Spoil, usize)> = vec![
            (
                "corrupt",
                Box::new(|| fs::write(&path, good.replace("key alice", "kye alice")).unwrap()),
                0,
            ),
            (
                "truncated",
                Box::new(|| fs::write(&path, &good[..good.len() - 30]).unwrap()),
                1,
            ),
            (
                "group-writable",
                Box::new(|| {
                    fs::write(&path, &good).unwrap();
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
                }),
                0,
            ),
            (
                "wrongly owned",
                Box::new(|| {
                    fs::write(&path, &good).unwrap();
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
                    std::os::unix::fs::chown(&path, Some(1000), Some(1000)).unwrap();
                }),
                0,
            ),
            ("huge", Box::new(|| fs::write(&path, &huge).unwrap()), 0),
            (
                "a symlink",
                Box::new(|| {
                    let _ = fs::remove_file(&path);
                    std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
                }),
                0,
            ),
        ];
        for (name, spoil, kept) in cases {
            spoil();
            assert!(matches!(read(&path), State::Bad { .. }), "{name}");
            // The daemon's quick check never takes a bad ledger for a
            // sound one, so the repair below is never skipped.
            assert!(!holds_granted(&dir, [("alice", FP, "bob")]), "{name}");
            // The hook leaves it alone.
            let left = update(&dir, OnBad::Keep, |l, _| {
                l.record(entry(FP, "bob", Origin::Granted))
            });
            assert!(matches!(left, Ok(Updated::LeftBad(_))), "{name}: {left:?}");
            // The daemon rewrites it, keeping only what a root-owned,
            // merely damaged file still holds.
            let repaired = update(&dir, OnBad::Repair, |_, rebuilding| !rebuilding);
            assert!(
                matches!(repaired, Ok(Updated::Repaired(_))),
                "{name}: {repaired:?}"
            );
            let State::Valid(l) = read(&path) else {
                panic!("{name}: not repaired")
            };
            assert_eq!(l.len(), kept, "{name}: {l:?}");
            let meta = fs::symlink_metadata(&path).unwrap();
            assert!(meta.is_file() && meta.uid() == 0 && meta.mode() & 0o777 == 0o600);
        }
    }
}
