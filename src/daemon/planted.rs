//! Keys planted during a guest's presence. A guest runs as the owner and
//! can add a line to the owner's key files; a line a guest session added
//! belongs to that guest (it goes in the key ledger as `planted`, so it is
//! refused once the guest's access is gone). The writer is told by the
//! kernel: fanotify reports the pid of each write to a watched directory's
//! files, and the pid's session says whose it is; a writer already gone is
//! known by the session it opened the file from ([`super::openers`]). Where
//! that cannot be told (a writer that never opened the file itself, a file
//! moved in from elsewhere, guests and others writing), nothing is guessed:
//! the line keeps working and a `persistence` event names the file, the
//! line's key and the guests present; `vmshare status` shows it.
//!
//! Runs on a thread of its own, never on the daemon's loop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{Inotify, WatchDescriptor, WatchMask};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use tracing::{error, info, warn};

use super::openers::{Opener, Openers};
use crate::session::hook::owner_key_files;
use crate::session::membership::session_of;
use crate::session::owner_keys::split_line;
use crate::store::config::Config;
use crate::store::ledger::{self, Entry, OnBad, Origin};
use crate::store::records;
use crate::store::snapshot;
use crate::sys::log::audit;

/// Most of a key file read (sshd reads any size; the hook stops at 16 MiB).
const KEY_FILE_LIMIT: u64 = 16 << 20;
/// How often the snapshot is looked at for owners who start or stop
/// sharing.
const TICK: Duration = Duration::from_millis(500);
/// The unattributed changes `vmshare status` shows, in the run dir.
pub const REPORTS: &str = "persistence";

/// One key line of an owner's key file, by what it lets in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyLine {
    pub fingerprint: String,
    /// A `cert-authority` line: certificates it signed log in.
    pub authority: bool,
}

impl KeyLine {
    fn what(&self) -> &'static str {
        if self.authority {
            "certificate authority"
        } else {
            "key"
        }
    }
}

/// The key lines of a key file's text.
pub fn key_lines(text: &str) -> BTreeSet<KeyLine> {
    text.lines()
        .filter_map(|line| {
            let entry = split_line(line)?;
            let key = crate::grant::key::parse_key(&format!("{} {}", entry.algorithm, entry.blob))
                .ok()?;
            let authority = entry
                .options
                .split(',')
                .any(|o| o.eq_ignore_ascii_case("cert-authority"));
            Some(KeyLine {
                fingerprint: key.fingerprint.to_string(),
                authority,
            })
        })
        .collect()
}

/// Who wrote to a watched directory, as far as the kernel and the session
/// records tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// A process of this guest's session.
    Guest { owner: String, guest: String },
    /// A live process in no guest session: the owner's own, or root's.
    NotGuest,
    /// The process was gone before it could be looked at, and had not
    /// opened the file from a guest session.
    Unknown,
}

/// Whose the lines added to one of `owner`'s files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Written by this guest's session alone.
    Planted(String),
    /// The owner's (or root's), or added with no guest around.
    Owners,
    /// Cannot be told; these guests were present.
    Unattributed(Vec<String>),
}

/// Judges a change of `owner`'s key files from its `writers` (empty: none
/// seen) and the guests with live sessions (`present`).
pub fn judge(owner: &str, writers: &[Writer], present: &BTreeSet<String>) -> Verdict {
    let mut guests = BTreeSet::new();
    let (mut others, mut unknown) = (false, writers.is_empty());
    for w in writers {
        match w {
            Writer::Guest { owner: o, guest } if o == owner => {
                guests.insert(guest.clone());
            }
            // A guest of another owner cannot write this owner's files
            // unless it is root; not this owner's guest either way.
            Writer::Guest { .. } | Writer::NotGuest => others = true,
            Writer::Unknown => unknown = true,
        }
    }
    if guests.len() == 1 && !others && !unknown {
        return Verdict::Planted(guests.into_iter().next().unwrap_or_default());
    }
    if guests.is_empty() && (present.is_empty() || !unknown) {
        return Verdict::Owners;
    }
    Verdict::Unattributed(guests.union(present).cloned().collect())
}

/// One watched owner.
struct Owner {
    name: String,
    files: Vec<PathBuf>,
    /// What each file held when last read.
    known: BTreeMap<PathBuf, BTreeSet<KeyLine>>,
}

struct Watch {
    config: Config,
    fanotify: Option<Fanotify>,
    /// Who opened the watched files, learnt while they waited.
    openers: Option<Openers>,
    inotify: Inotify,
    owners: Vec<Owner>,
    /// inotify watches, by directory.
    watched: HashMap<PathBuf, WatchDescriptor>,
    /// The snapshot last read: its digest and when it was written.
    snapshot: Option<(String, i64)>,
    /// Writers seen per directory since it was last read.
    writers: HashMap<PathBuf, Vec<Writer>>,
}

/// Starts the watcher thread.
pub fn spawn(config: Config) {
    let started = std::thread::Builder::new()
        .name("planted-keys".into())
        .spawn(move || match Watch::new(config) {
            Ok(mut w) => w.run(),
            Err(e) => error!("cannot watch owners' key files: {e}"),
        });
    if let Err(e) = started {
        error!("cannot start the key file watcher: {e}");
    }
}

impl Watch {
    fn new(config: Config) -> io::Result<Watch> {
        let fanotify = Fanotify::init(
            InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE,
        )
        .map_err(|e| warn!("fanotify unavailable ({e}): key lines added while guests are present are reported, not attributed"))
        .ok();
        let openers = fanotify
            .as_ref()
            .and_then(|_| Openers::spawn(config.sessions_dir()));
        Ok(Watch {
            config,
            fanotify,
            openers,
            inotify: Inotify::init()?,
            owners: Vec::new(),
            watched: HashMap::new(),
            snapshot: None,
            writers: HashMap::new(),
        })
    }

    fn run(&mut self) {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            self.refresh_owners();
            let ready = {
                let mut fds = vec![PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
                if let Some(f) = &self.fanotify {
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                }
                let timeout = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE);
                poll(&mut fds, timeout).unwrap_or(0)
            };
            if ready == 0 {
                continue;
            }
            // Writers first: the kernel queued them at the write, before
            // the close or rename that inotify reports.
            self.read_writers();
            let mut touched = BTreeSet::new();
            let mut overflow = false;
            if let Ok(events) = self.inotify.read_events(&mut buffer) {
                for event in events {
                    if event.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                        overflow = true;
                    }
                    if let Some(dir) = self
                        .watched
                        .iter()
                        .find(|(_, wd)| **wd == event.wd)
                        .map(|(d, _)| d.clone())
                    {
                        touched.insert(dir);
                    }
                }
            }
            self.read_writers();
            self.rescan(&touched, overflow);
        }
    }

    /// Drains fanotify: for each write, the writer's session, looked up
    /// at once (while the writer most likely still runs).
    fn read_writers(&mut self) {
        let Some(fanotify) = &self.fanotify else {
            return;
        };
        let Ok(events) = fanotify.read_events() else {
            return;
        };
        if events.is_empty() {
            return;
        }
        let (list, _) = records::list(&self.config.sessions_dir());
        for event in events {
            let Some(fd) = event.fd() else {
                // Overflow: every watched directory had unknown writers.
                for dir in self.watched.keys() {
                    let seen = self.writers.entry(dir.clone()).or_default();
                    if !seen.contains(&Writer::Unknown) {
                        seen.push(Writer::Unknown);
                    }
                }
                continue;
            };
            let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
                continue;
            };
            let Some(dir) = path.parent().map(Path::to_path_buf) else {
                continue;
            };
            let pid = event.pid();
            let writer = match session_of(&list, pid) {
                Some(r) => Writer::Guest {
                    owner: r.owner.clone(),
                    guest: r.guest.clone(),
                },
                None if Path::new(&format!("/proc/{pid}")).exists() => Writer::NotGuest,
                None => match self.openers.as_ref().and_then(|o| o.guest_of(pid)) {
                    Some(Opener { owner, guest }) => Writer::Guest { owner, guest },
                    None => Writer::Unknown,
                },
            };
            let seen = self.writers.entry(dir).or_default();
            // One of each is all the judging needs.
            if !seen.contains(&writer) {
                seen.push(writer);
            }
        }
        // Writes to directories no sharing owner uses (any more) are not
        // kept.
        let used: BTreeSet<&Path> = self
            .owners
            .iter()
            .flat_map(|o| o.files.iter().filter_map(|f| f.parent()))
            .collect();
        self.writers.retain(|d, _| used.contains(d.as_path()));
    }

    /// The owners who share (with an accepted guest), as the snapshot the
    /// daemon wrote lists them (its header alone: the daemon's memory
    /// stays as small as the compile in a child keeps it); their key
    /// directories watched.
    fn refresh_owners(&mut self) {
        let header = snapshot::read_header(&self.config.snapshot_path()).ok();
        let version = header.as_ref().map(|h| (h.sha256.clone(), h.written_ns));
        if version == self.snapshot {
            // Directories made since (a new ~/.ssh) are watched too.
            self.watch_dirs();
            return;
        }
        self.snapshot = version;
        let names: Vec<String> = header
            .map(|h| {
                h.owners
                    .into_iter()
                    .filter(|(_, (_, len))| *len > 0)
                    .map(|(n, _)| n)
                    .collect()
            })
            .unwrap_or_default();
        let keep: Vec<Owner> = std::mem::take(&mut self.owners)
            .into_iter()
            .filter(|o| names.contains(&o.name))
            .collect();
        self.owners = keep;
        for name in names {
            if self.owners.iter().any(|o| o.name == name) {
                continue;
            }
            let Ok(Some(account)) = nix::unistd::User::from_name(&name) else {
                continue;
            };
            let files = owner_key_files(
                &self.config.authorized_keys_files,
                &name,
                &account.dir.to_string_lossy(),
            );
            let known = files
                .iter()
                .map(|f| (f.clone(), read_key_lines(f)))
                .collect();
            self.owners.push(Owner { name, files, known });
        }
        self.watch_dirs();
    }

    fn watch_dirs(&mut self) {
        let dirs: BTreeSet<PathBuf> = self
            .owners
            .iter()
            .flat_map(|o| {
                o.files
                    .iter()
                    .filter_map(|f| f.parent().map(Path::to_path_buf))
            })
            .collect();
        for dir in dirs {
            if self.watched.contains_key(&dir) || !dir.is_dir() {
                continue;
            }
            let mask = WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::DONT_FOLLOW
                | WatchMask::ONLYDIR;
            match self.inotify.watches().add(&dir, mask) {
                Ok(wd) => {
                    self.watched.insert(dir.clone(), wd);
                }
                Err(e) => {
                    warn!(dir = %dir.display(), "cannot watch key directory: {e}");
                    continue;
                }
            }
            if let Some(o) = &self.openers {
                o.mark(&dir);
            }
            if let Some(f) = &self.fanotify {
                let marked = f.mark(
                    MarkFlags::FAN_MARK_ADD
                        | MarkFlags::FAN_MARK_DONT_FOLLOW
                        | MarkFlags::FAN_MARK_ONLYDIR,
                    MaskFlags::FAN_MODIFY
                        | MaskFlags::FAN_CLOSE_WRITE
                        | MaskFlags::FAN_EVENT_ON_CHILD,
                    None,
                    Some(dir.as_path()),
                );
                if let Err(e) = marked {
                    warn!(dir = %dir.display(), "cannot attribute writes to key directory: {e}");
                }
            }
            // A directory made since the owner was read: what it holds now
            // was added since.
            self.rescan(&BTreeSet::from([dir]), false);
        }
    }

    /// Reads the owners' files in `touched` directories (all, on
    /// overflow) and judges what was added.
    fn rescan(&mut self, touched: &BTreeSet<PathBuf>, all: bool) {
        let (list, _) = records::list(&self.config.sessions_dir());
        for i in 0..self.owners.len() {
            let dirs: BTreeSet<PathBuf> = self.owners[i]
                .files
                .iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .filter(|d| all || touched.contains(d))
                .collect();
            if dirs.is_empty() {
                continue;
            }
            let writers: Vec<Writer> = dirs
                .iter()
                .flat_map(|d| self.writers.remove(d).unwrap_or_default())
                .collect();
            let owner = &mut self.owners[i];
            let present: BTreeSet<String> = list
                .iter()
                .filter(|r| r.owner == owner.name)
                .map(|r| r.guest.clone())
                .collect();
            let mut added = Vec::new();
            for file in owner
                .files
                .iter()
                .filter(|f| f.parent().is_some_and(|d| dirs.contains(d)))
            {
                let now = read_key_lines(file);
                let before = owner.known.get(file).cloned().unwrap_or_default();
                added.extend(now.difference(&before).map(|l| (file.clone(), l.clone())));
                owner.known.insert(file.clone(), now);
            }
            if added.is_empty() {
                continue;
            }
            let verdict = judge(&owner.name, &writers, &present);
            let name = owner.name.clone();
            self.act(&name, &added, &verdict);
        }
    }

    fn act(&self, owner: &str, added: &[(PathBuf, KeyLine)], verdict: &Verdict) {
        let now = crate::daemon::pass::now_ns().div_euclid(1_000_000_000);
        match verdict {
            Verdict::Owners => {
                for (file, line) in added {
                    info!(owner, file = %file.display(), fingerprint = %line.fingerprint, "key line added by the owner");
                }
            }
            Verdict::Planted(guest) => {
                let recorded = ledger::update(&self.config.state_dir, OnBad::Repair, |l, _| {
                    let mut changed = false;
                    for (_, line) in added {
                        changed |= l.record(Entry {
                            owner: owner.to_string(),
                            fingerprint: line.fingerprint.clone(),
                            guest: guest.clone(),
                            origin: Origin::Planted,
                            since: now,
                        });
                    }
                    changed
                });
                if let Err(e) = recorded {
                    error!(
                        owner,
                        guest, "cannot record planted keys in the key ledger: {e}"
                    );
                }
                for (file, line) in added {
                    announce(
                        audit::Kind::KeyPlanted,
                        owner,
                        guest,
                        line,
                        &format!(
                            "{} added to {} by a session of guest {guest}: recorded as {guest}'s, refused once {guest}'s access is gone",
                            line.what(),
                            file.display()
                        ),
                    );
                }
            }
            Verdict::Unattributed(guests) => {
                let names = guests.join(",");
                for (file, line) in added {
                    announce(
                        audit::Kind::Persistence,
                        owner,
                        &names,
                        line,
                        &format!(
                            "{} added to {} while guests {names} were present, by a writer that cannot be told: it keeps working; check it",
                            line.what(),
                            file.display()
                        ),
                    );
                    let report = Report {
                        time: now,
                        owner: owner.to_string(),
                        file: file.display().to_string(),
                        fingerprint: line.fingerprint.clone(),
                        authority: line.authority,
                        guests: guests.clone(),
                    };
                    if let Err(e) = append_report(&self.config, &report) {
                        error!("cannot keep the report for vmshare status: {e}");
                    }
                }
            }
        }
    }
}

fn announce(kind: audit::Kind, owner: &str, guest: &str, line: &KeyLine, message: &str) {
    super::audit_event(
        &audit::Event {
            kind: Some(kind),
            owner,
            guest,
            fingerprint: &line.fingerprint,
            message,
            ..audit::Event::default()
        },
        "",
    );
}

/// An unattributed change, as `vmshare status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub time: i64,
    pub owner: String,
    pub file: String,
    pub fingerprint: String,
    pub authority: bool,
    pub guests: Vec<String>,
}

/// Most reports kept (the oldest go first).
const MAX_REPORTS: usize = 200;

fn append_report(config: &Config, report: &Report) -> io::Result<()> {
    let mut all = read_reports(config);
    all.push(report.clone());
    let skip = all.len().saturating_sub(MAX_REPORTS);
    let mut text = String::new();
    for r in &all[skip..] {
        text.push_str(&serde_json::to_string(r).map_err(io::Error::other)?);
        text.push('\n');
    }
    crate::sys::fsutil::atomic_write(
        &config.run_dir.join(REPORTS),
        text.as_bytes(),
        0o644,
        Some((0, 0)),
    )
}

/// The unattributed changes reported since boot.
pub fn read_reports(config: &Config) -> Vec<Report> {
    match crate::sys::fsutil::read_strict(&config.run_dir.join(REPORTS), 1 << 20) {
        Ok(Some((text, _))) => text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads a key file as root, carefully: no symlink at the last component,
/// no blocking on a FIFO, regular files only, bounded.
fn read_key_lines(path: &Path) -> BTreeSet<KeyLine> {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
    else {
        return BTreeSet::new();
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return BTreeSet::new();
    }
    let mut text = String::new();
    if File::take(file, KEY_FILE_LIMIT)
        .read_to_string(&mut text)
        .is_err()
    {
        return BTreeSet::new();
    }
    key_lines(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(g: &str) -> Writer {
        Writer::Guest {
            owner: "alice".into(),
            guest: g.into(),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_change_is_a_guests_only_when_only_that_guest_wrote() {
        let bob = || guest("bob");
        let present = set(&["bob", "carol"]);
        assert_eq!(
            judge("alice", &[bob(), bob()], &present),
            Verdict::Planted("bob".into())
        );
        // The owner's process too, or a writer gone: reported.
        for writers in [
            vec![bob(), Writer::NotGuest],
            vec![bob(), Writer::Unknown],
            vec![bob(), guest("carol")],
            vec![Writer::Unknown],
            vec![],
        ] {
            assert_eq!(
                judge("alice", &writers, &present),
                Verdict::Unattributed(vec!["bob".into(), "carol".into()]),
                "{writers:?}"
            );
        }
        // The owner (or root) alone, or nobody there: the owner's.
        assert_eq!(
            judge("alice", &[Writer::NotGuest], &present),
            Verdict::Owners
        );
        assert_eq!(
            judge("alice", &[Writer::Unknown], &set(&[])),
            Verdict::Owners
        );
        assert_eq!(judge("alice", &[], &set(&[])), Verdict::Owners);
        // A guest of another owner is not this owner's guest.
        let other = Writer::Guest {
            owner: "dave".into(),
            guest: "bob".into(),
        };
        assert_eq!(judge("alice", &[other], &set(&[])), Verdict::Owners);
    }

    #[test]
    fn key_lines_are_read_like_sshd_with_authorities_marked() {
        let key = crate::grant::parse::tests::KEY_A;
        let fp = crate::grant::key::parse_key(key).unwrap().fingerprint;
        let text =
            format!("# {key}\n\nno-pty {key}\ncert-authority,principals=\"x\" {key}\ngarbage\n");
        let lines = key_lines(&text);
        assert_eq!(
            lines,
            BTreeSet::from([
                KeyLine {
                    fingerprint: fp.to_string(),
                    authority: false
                },
                KeyLine {
                    fingerprint: fp.to_string(),
                    authority: true
                },
            ])
        );
    }
}
