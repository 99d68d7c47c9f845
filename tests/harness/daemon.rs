//! vmshare's own programs inside a host: the daemon, the key lookup as sshd
//! runs it, and what the daemon leaves in its run dir (snapshot, session
//! records).

use std::fs;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use vmshare::store::{records, snapshot, source};

use super::{sorted_lines, wait_until, Host, DAEMON_LOG, GRANTS, SESSIONS_DIR, SNAPSHOT};

/// A running `vmshared` inside a host. Dropping it kills it.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Kills the daemon at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The daemon's pid (the host shares the test's pid namespace).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the daemon (SIGSTOP/SIGCONT to starve it, …).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("sending {signal} to vmshared: {e}"));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Host {
    /// Starts `vmshared` with the host's agent config and waits until it
    /// says it is ready.
    pub fn start_daemon(&self) -> Daemon {
        let before = self.daemon_log().matches("vmshared ready").count();
        let mut cmd = self.command(&[
            "sh",
            "-c",
            &format!("exec /usr/sbin/vmshared 2>>{DAEMON_LOG}"),
        ]);
        cmd.env("VMSHARE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting vmshared: {e}"));
        let mut daemon = Daemon { child };
        let ready = wait_until(Duration::from_secs(20), || {
            self.daemon_log().matches("vmshared ready").count() > before
        });
        if !ready {
            let status = daemon.child.try_wait();
            panic!(
                "vmshared did not become ready ({status:?}):\n{}",
                self.daemon_log()
            );
        }
        daemon
    }

    pub fn daemon_log(&self) -> String {
        self.read_file(DAEMON_LOG).unwrap_or_default()
    }

    /// Runs the key lookup the way sshd does (as `_vmshare`, user argument
    /// only) and returns what it printed and how it exited.
    pub fn key_lookup(&self, owner: &str) -> Output {
        self.run(&[
            "setpriv",
            "--reuid=_vmshare",
            "--regid=_vmshare",
            "--clear-groups",
            "/usr/libexec/vmshare/vmshare-keys",
            owner,
        ])
    }

    /// The key lookup's lines for `owner`, sorted; panics if it fails.
    pub fn key_lookup_lines(&self, owner: &str) -> Vec<String> {
        let out = self.key_lookup(owner);
        assert!(
            out.status.success(),
            "key lookup for {owner} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        sorted_lines(&String::from_utf8_lossy(&out.stdout))
    }

    /// The snapshot's lines for `owner`, sorted, if the snapshot was compiled
    /// from the grant file exactly as it is now (same version and same
    /// bytes); `None` if it is missing, unreadable or stale.
    pub fn snapshot_lines(&self, owner: &str) -> Option<Vec<String>> {
        let grants = self.path(GRANTS);
        let bytes = fs::read(&grants).ok()?;
        let version = source::FileVersion::of(&fs::metadata(&grants).ok()?);
        match snapshot::read_owner(
            &self.path(SNAPSHOT),
            Path::new(GRANTS),
            Some(&version),
            owner,
        ) {
            Ok(snapshot::Lookup::Fresh { header, lines })
                if header.sha256 == source::sha256_hex(&bytes) =>
            {
                Some(sorted_lines(&lines))
            }
            _ => None,
        }
    }

    /// The session records in the run dir (unreadable ones are skipped).
    pub fn session_records(&self) -> Vec<records::SessionRecord> {
        records::list(&self.path(SESSIONS_DIR)).0
    }
}
