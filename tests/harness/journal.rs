//! A stand-in journald for one host: a datagram socket at the host's
//! `/run/systemd/journal/socket` (its /run is private), so tests read the
//! audit events the PAM hook, the CLI and the daemon send.

use std::cell::RefCell;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use super::{wait_until, Host};

pub struct Journal {
    socket: UnixDatagram,
    seen: RefCell<Vec<String>>,
}

impl Host {
    /// Starts listening as the host's journald.
    pub fn capture_journal(&self) -> Journal {
        let dir = self.path("/run/systemd/journal");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let path = dir.join("socket");
        let _ = std::fs::remove_file(&path);
        let socket =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        socket
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("journal socket: {e}"));
        Journal {
            socket,
            seen: RefCell::new(Vec::new()),
        }
    }
}

impl Journal {
    /// Every event received so far, one `KEY=value` text each.
    pub fn events(&self) -> Vec<String> {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.seen
                .borrow_mut()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.seen.borrow().clone()
    }

    /// Waits for an event with all of `fields` (`KEY=value` lines).
    pub fn wait_for(&self, fields: &[&str], timeout: Duration) -> Option<String> {
        let has = |e: &String| fields.iter().all(|f| e.lines().any(|l| l == *f));
        let mut found = None;
        wait_until(timeout, || {
            found = self.events().into_iter().find(|e| has(e));
            found.is_some()
        });
        found
    }
}
