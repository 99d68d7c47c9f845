//! Watching the grant file through its directory, so every way of saving it
//! is seen: rename into place, write in place, backup-and-replace.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchMask};
use tokio::io::unix::AsyncFd;

/// What a batch of inotify events means for the grant file.
pub enum WatchEvent {
    /// The file was replaced by rename or closed after writing.
    Complete,
    /// The file was truncated, created, deleted or had its mode changed; more
    /// may follow.
    Partial,
    /// Events were lost: re-read.
    Overflow,
    Irrelevant,
}

pub struct Watcher {
    fd: AsyncFd<Inotify>,
    name: OsString,
    buffer: Vec<u8>,
    pending: Vec<WatchEvent>,
}

impl Watcher {
    pub fn new(file: &Path) -> io::Result<Self> {
        let dir: PathBuf = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let name = file
            .file_name()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "grant file path has no name")
            })?
            .to_os_string();
        let inotify = Inotify::init()?;
        inotify.watches().add(
            &dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MODIFY
                | WatchMask::ATTRIB
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF,
        )?;
        // `AsyncFd::new` is deprecated because a caller could close the fd
        // while it is registered; the AsyncFd owns the Inotify here, so the
        // fd lives exactly as long as the registration.
        #[allow(deprecated)]
        let fd = AsyncFd::new(inotify)?;
        Ok(Watcher {
            fd,
            name,
            buffer: vec![0; 64 * 1024],
            pending: Vec::new(),
        })
    }

    /// The next change that concerns the grant file.
    pub async fn next(&mut self) -> io::Result<WatchEvent> {
        loop {
            if let Some(change) = self.pending.pop() {
                return Ok(change);
            }
            let mut guard = self.fd.readable_mut().await?;
            let result = guard.try_io(|inner| {
                let events = inner.get_mut().read_events(&mut self.buffer)?;
                let mut strongest = WatchEvent::Irrelevant;
                for event in events {
                    let change =
                        classify_event(event.mask, event.name.is_some_and(|n| n == self.name));
                    strongest = stronger(strongest, change);
                }
                Ok(strongest)
            });
            match result {
                Ok(Ok(WatchEvent::Irrelevant)) => continue,
                Ok(Ok(change)) => self.pending.push(change),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

fn classify_event(mask: EventMask, ours: bool) -> WatchEvent {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return WatchEvent::Overflow;
    }
    if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
        // The directory itself went away: the watch is dead.
        return WatchEvent::Overflow;
    }
    if !ours {
        return WatchEvent::Irrelevant;
    }
    if mask.intersects(EventMask::MOVED_TO | EventMask::CLOSE_WRITE) {
        WatchEvent::Complete
    } else {
        WatchEvent::Partial
    }
}

fn stronger(a: WatchEvent, b: WatchEvent) -> WatchEvent {
    let rank = |c: &WatchEvent| match c {
        WatchEvent::Irrelevant => 0,
        WatchEvent::Partial => 1,
        WatchEvent::Complete => 2,
        WatchEvent::Overflow => 3,
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}
