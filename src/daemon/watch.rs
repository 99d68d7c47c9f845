//! Watching the grant file through its directory, so every way of saving it
//! is seen: rename into place, write in place, backup-and-replace.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::task::Poll;

use inotify::{EventMask, EventStream, Inotify, StreamExt, WatchMask};

/// At most this many events make one change (the kernel queues 16384).
const MAX_BATCH: usize = 16 * 1024;

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
    /// Owns the inotify descriptor and its registration with tokio.
    events: EventStream<Vec<u8>>,
    name: OsString,
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
        Ok(Watcher {
            events: inotify.into_event_stream(vec![0; 64 * 1024])?,
            name,
        })
    }

    /// The next change that concerns the grant file: the strongest of the
    /// events that are in when the first one arrives.
    pub async fn next(&mut self) -> io::Result<WatchEvent> {
        let mut strongest = WatchEvent::Irrelevant;
        let mut read = 0;
        loop {
            let event = if matches!(strongest, WatchEvent::Irrelevant) {
                // The one wait: nothing is lost if the caller gives up here.
                self.events.next().await
            } else if read == MAX_BATCH {
                return Ok(strongest);
            } else {
                // Only what is in already; this never waits.
                let ready = std::future::poll_fn(|cx| Poll::Ready(self.events.poll_next_unpin(cx)));
                match ready.await {
                    Poll::Ready(event) => event,
                    Poll::Pending => return Ok(strongest),
                }
            };
            let event = event.ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "inotify descriptor closed")
            })??;
            read += 1;
            let change = classify_event(event.mask, event.name.is_some_and(|n| n == self.name));
            strongest = stronger(strongest, change);
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
