//! Who opens the files of the watched key directories, told while the
//! opener waits. A fanotify permission event holds each open until it is
//! answered, so the opener's session is looked up while the opener surely
//! runs; a write whose process is gone by the time it is judged (a one-shot
//! `ssh … 'echo KEY >> ~/.ssh/authorized_keys'`) is still attributed.
//!
//! Every open in those directories waits for this thread, sshd's own reads
//! of `authorized_keys` among them, so it does nothing but answer: it reads
//! /proc and the session records (never a file of a watched directory),
//! lets every open through, and keeps what it learnt for the watcher. When
//! it stops, its fanotify group is closed and the kernel lets every waiting
//! open through; if the daemon hangs, the unit's watchdog ends it.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use tracing::{error, warn};

use crate::session::membership::session_of;
use crate::store::records;

/// How long an opener is remembered: far longer than a write takes to be
/// judged, short enough that a reused pid does not inherit it in practice.
const REMEMBER: Duration = Duration::from_secs(60);
/// Most openers remembered at once (only guest sessions' are kept).
const MOST: usize = 4096;
/// How often the thread looks for new directories to mark while no open
/// comes.
const MARK_EVERY: Duration = Duration::from_millis(200);

/// A guest session's process that opened a file of a watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opener {
    pub owner: String,
    pub guest: String,
}

/// The watcher's side: directories to mark, and the openers learnt.
pub struct Openers {
    marks: Sender<PathBuf>,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen(HashMap<i32, (Opener, Instant)>);

impl Seen {
    fn remember(&mut self, pid: i32, opener: Opener, now: Instant) {
        self.0
            .retain(|_, (_, at)| now.duration_since(*at) < REMEMBER);
        if self.0.len() >= MOST && !self.0.contains_key(&pid) {
            if let Some(oldest) = self
                .0
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(p, _)| *p)
            {
                self.0.remove(&oldest);
            }
        }
        self.0.insert(pid, (opener, now));
    }

    fn get(&self, pid: i32, now: Instant) -> Option<Opener> {
        self.0
            .get(&pid)
            .filter(|(_, at)| now.duration_since(*at) < REMEMBER)
            .map(|(o, _)| o.clone())
    }
}

impl Openers {
    /// Starts the answering thread; `None` where the kernel or the
    /// daemon's privileges do not allow permission events.
    pub fn spawn(sessions_dir: PathBuf) -> Option<Openers> {
        let fanotify = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE,
        )
        .map_err(|e| warn!("fanotify permission events unavailable ({e}): a key written by a process gone before it is judged is reported, not attributed"))
        .ok()?;
        let (marks, pending) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        let started = std::thread::Builder::new()
            .name("key-openers".into())
            .spawn(move || answer(&fanotify, &pending, &sessions_dir, &shared));
        match started {
            Ok(_) => Some(Openers { marks, seen }),
            Err(e) => {
                error!("cannot start the key file opener thread: {e}");
                None
            }
        }
    }

    /// Has the opens of `dir`'s files answered here from now on.
    pub fn mark(&self, dir: &Path) {
        let _ = self.marks.send(dir.to_path_buf());
    }

    /// The guest session whose process `pid` opened a watched file lately.
    pub fn guest_of(&self, pid: i32) -> Option<Opener> {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.get(pid, Instant::now()))
    }
}

/// The thread: marks what the watcher asks for, answers every open.
/// Returns (closing the group) once the watcher is gone.
fn answer(fanotify: &Fanotify, pending: &Receiver<PathBuf>, sessions: &Path, seen: &Mutex<Seen>) {
    let me = std::process::id() as i32;
    // Each record is read once (records are written once, never changed).
    let mut cache = records::Cache::default();
    loop {
        loop {
            match pending.try_recv() {
                Ok(dir) => mark(fanotify, &dir),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let mut fds = [PollFd::new(fanotify.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(MARK_EVERY).unwrap_or(PollTimeout::NONE);
        if poll(&mut fds, timeout).unwrap_or(0) == 0 {
            continue;
        }
        let Ok(events) = fanotify.read_events() else {
            continue;
        };
        // The session records are read at most once a batch, and only
        // when a process other than the daemon opened something.
        let mut list = None;
        for event in events {
            let Some(fd) = event.fd() else {
                continue;
            };
            let pid = event.pid();
            if pid != me {
                let list = list.get_or_insert_with(|| cache.list(sessions).0);
                if let Some(r) = session_of(list, pid) {
                    let opener = Opener {
                        owner: r.owner.clone(),
                        guest: r.guest.clone(),
                    };
                    if let Ok(mut s) = seen.lock() {
                        s.remember(pid, opener, Instant::now());
                    }
                }
            }
            // Always let it through: this only ever watches.
            if let Err(e) = fanotify.write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW))
            {
                error!("cannot answer an open of a key file: {e}");
            }
        }
    }
}

fn mark(fanotify: &Fanotify, dir: &Path) {
    let marked = fanotify.mark(
        MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_DONT_FOLLOW | MarkFlags::FAN_MARK_ONLYDIR,
        MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_EVENT_ON_CHILD,
        None,
        Some(dir),
    );
    if let Err(e) = marked {
        warn!(dir = %dir.display(), "cannot learn who opens key files: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opener(guest: &str) -> Opener {
        Opener {
            owner: "alice".into(),
            guest: guest.into(),
        }
    }

    #[test]
    fn openers_are_forgotten_after_a_while_and_beyond_the_bound() {
        let start = Instant::now();
        let mut seen = Seen::default();
        seen.remember(10, opener("bob"), start);
        assert_eq!(
            seen.get(10, start + Duration::from_secs(1)),
            Some(opener("bob"))
        );
        assert_eq!(seen.get(11, start), None);
        assert_eq!(seen.get(10, start + REMEMBER), None);
        // The bound: the oldest goes first.
        for pid in 0..=MOST as i32 {
            seen.remember(
                100 + pid,
                opener("carol"),
                start + Duration::from_millis(pid as u64),
            );
        }
        assert_eq!(seen.0.len(), MOST);
        assert_eq!(seen.get(10, start), None);
        assert_eq!(seen.get(100, start), None);
        assert_eq!(seen.get(101, start), Some(opener("carol")));
        // Old ones go as new ones come.
        seen.remember(7, opener("dave"), start + REMEMBER + Duration::from_secs(5));
        assert_eq!(seen.0.len(), 1);
    }

    /// A real fanotify group on a scratch directory and a session record
    /// naming this test process as the session's sshd: a child appends to
    /// a file there and is gone (reaped) before anyone asks; its open was
    /// answered, its write went through, and it is still known as the
    /// guest's. A child that opened nothing there is not.
    #[test]
    fn a_writer_gone_before_it_is_judged_is_known_by_its_open() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = tempfile::tempdir().unwrap();
        let me = crate::sys::procfs::stat(std::process::id() as i32).unwrap();
        let mut record = crate::store::records::tests::sample("s1");
        (record.monitor_pid, record.monitor_start) = (me.pid, me.start);
        records::write(sessions.path(), &record).unwrap();
        let file = dir.path().join("authorized_keys");
        std::fs::write(&file, "old\n").unwrap();
        let Some(openers) = Openers::spawn(sessions.path().to_path_buf()) else {
            panic!("fanotify permission events need root and CAP_SYS_ADMIN");
        };
        openers.mark(dir.path());
        std::thread::sleep(MARK_EVERY * 3);
        let run = |script: &str| {
            let mut child = std::process::Command::new("sh")
                .args(["-c", script, "sh"])
                .arg(&file)
                .spawn()
                .unwrap();
            let pid = child.id() as i32;
            assert!(child.wait().unwrap().success());
            pid
        };
        let writer = run("echo new >> \"$1\"");
        let idle = run("true");
        assert_eq!(std::fs::read(&file).unwrap(), b"old\nnew\n");
        assert_eq!(
            openers.guest_of(writer),
            Some(Opener {
                owner: "alice".into(),
                guest: "bob".into()
            })
        );
        assert_eq!(openers.guest_of(idle), None);
        // Gone with its group: opens are no longer held.
        drop(openers);
        std::thread::sleep(MARK_EVERY * 2);
        run("cat \"$1\" >/dev/null");
    }
}
