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
    /// Starts `vmshared` with the host's agent config, through `wrapper`
    /// (e.g. `prlimit --nofile=…`; empty: none), and waits until it says
    /// it is ready.
    pub fn start_daemon_with(&self, wrapper: &[&str]) -> Daemon {
        let before = self.daemon_log().matches("vmshared ready").count();
        let mut cmd = self.command(&[
            "sh",
            "-c",
            &format!(
                "exec {} /usr/sbin/vmshared 2>>{DAEMON_LOG}",
                wrapper.join(" ")
            ),
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

impl Host {
    /// Starts `vmshared` with the host's agent config and waits until it
    /// says it is ready.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[])
    }

    /// Local account `user` (with a group of its name) holds `count` idle connections to the control
    /// socket, opening a new one whenever the daemon closes one, until the
    /// returned flood is dropped. Returns once the first round is open.
    pub fn flood_control_socket(&self, user: &str, count: usize) -> Flood {
        let script = r#"
import resource, selectors, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path, count = sys.argv[1], int(sys.argv[2])
sel = selectors.DefaultSelector()
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return 0
    sel.register(s, selectors.EVENT_READ)
    return 1
print("up", sum(connect() for _ in range(count)), flush=True)
while True:
    for _ in range(count - len(sel.get_map())):
        connect()
    for key, _ in sel.select(timeout=0.05):
        sel.unregister(key.fileobj)
        key.fileobj.close()
"#;
        let mut cmd = self.command(&[
            "setpriv",
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--clear-groups",
            "python3",
            "-c",
            script,
            "/run/vmshare/control.sock",
            &count.to_string(),
        ]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the flood as {user}: {e}"));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        let flood = Flood { child };
        let held: Option<usize> = line.strip_prefix("up ").and_then(|n| n.trim().parse().ok());
        assert!(held.is_some(), "the flood did not start: {line:?}");
        eprintln!("flood: {line}");
        flood
    }
}

/// A local user's connection flood on the control socket; dropping it ends
/// the flood.
pub struct Flood {
    child: Child,
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
