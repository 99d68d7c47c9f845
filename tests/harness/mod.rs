//! End-to-end harness: a real root sshd with real PAM, with vmshare installed
//! the way a package would install it, inside a private mount and network
//! namespace per test.
//!
//! `Host::start()` builds the namespace, installs vmshare and starts sshd;
//! dropping the `Host` kills every process it started (including guest
//! sessions moved into sub-cgroups by the PAM hook) and removes its files,
//! also when the test panics.
//!
//! Layout of one host:
//! - a holder process (`unshare --mount --net`) keeps the namespaces alive;
//!   every other command enters them with `nsenter`;
//! - /etc and /usr are overlays whose upper layers live in a per-test
//!   directory, so `useradd` and package files never reach the real system;
//!   /run, /home, /tmp and /var/log are private tmpfs;
//! - every process started here runs in a per-test cgroup v2 group, and the
//!   agent's session cgroups live under `<that group>/sessions`;
//! - the test reaches files inside through `/proc/HOLDER/root`, so renames
//!   and in-place writes there behave exactly as they would on a host.
//!
//! Files: `host.rs` (the host, its files, accounts, keys and grant file),
//! `ssh.rs` (sshd, ssh logins and live sessions), `daemon.rs` (vmshared,
//! the key lookup, the run dir), `cgroup.rs` (the hosts' cgroups),
//! `package.rs` (hosts for the Debian package), `admin.rs` (sudo, su and
//! pkexec stacks with vmshare's admin check), `polkit.rs` (a system bus
//! and polkitd for pkexec), and the shared scratch-dir
//! rule in `tests/scratch`.
// Each test crate uses only part of the harness.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod admin;
mod cgroup;
mod daemon;
pub mod fleet;
mod host;
mod journal;
mod package;
mod polkit;
#[path = "../scratch/mod.rs"]
mod scratch;
mod ssh;

#[allow(unused_imports)] // each test crate names only some of these
pub use self::{
    admin::ADMIN_STACKS,
    daemon::Daemon,
    host::{Host, Key},
    journal::Journal,
    polkit::Polkit,
    ssh::{LiveSession, TtySession, CLIENT_OPTIONS},
};

/// Where the grant file lives inside the host.
pub const GRANTS: &str = "/etc/vmshare/grants.toml";
/// Where the agent config lives inside the host.
pub const AGENT_CONFIG: &str = "/etc/vmshare/vmshare.toml";
/// The agent's `state_dir` (the held owner keys): under /etc, whose overlay
/// keeps it private to the host.
pub const STATE_DIR: &str = "/etc/vmshare/state";

/// Scratch space inside the host, on its private /run: keys, sshd log.
const SCRATCH: &str = "/run/vmshare-e2e";
const SSHD_LOG: &str = "/run/vmshare-e2e/sshd.log";
/// Where the daemon's log goes inside the host.
pub const DAEMON_LOG: &str = "/run/vmshare-e2e/vmshared.log";
/// Where the daemon keeps its snapshot and session records inside the host.
pub const RUN_DIR: &str = "/run/vmshare";
pub const SNAPSHOT: &str = "/run/vmshare/snapshot";
pub const SESSIONS_DIR: &str = "/run/vmshare/sessions";

const SSHD_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Polls `check` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A number no other test process or host uses, for marking processes.
pub fn unique_marker() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst) as u64;
    (std::process::id() as u64 % 100_000) * 10_000 + n + 1_000_000_000
}

/// Pids of processes whose command line is exactly `argv`.
pub fn pids_with_cmdline(argv: &[&str]) -> Vec<i32> {
    let want = cmdline_bytes(argv);
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// Non-empty lines, trimmed and sorted.
pub fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Nanoseconds since the epoch on CLOCK_REALTIME, the clock `date +%s%N`
/// reads inside the host.
pub fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The command lines of every process, read in one pass over /proc.
pub fn all_cmdlines() -> Vec<Vec<u8>> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .collect()
}

/// Whether `cmdlines` holds `argv` exactly.
pub fn has_cmdline(cmdlines: &[Vec<u8>], argv: &[&str]) -> bool {
    cmdlines.contains(&cmdline_bytes(argv))
}

/// `argv` as /proc/PID/cmdline holds it: each argument NUL-terminated.
fn cmdline_bytes(argv: &[&str]) -> Vec<u8> {
    argv.iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect()
}

/// Runs `cmd` to completion, collecting its output, or kills it after
/// `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {timeout:?}; killed it"));
            }
            Err(e) => return Err(format!("waiting: {e}")),
        }
    };
    // A background grandchild may keep the pipes open; don't wait for it.
    let grace = Duration::from_secs(2);
    Ok(Output {
        status,
        stdout: stdout.recv_timeout(grace).unwrap_or_default(),
        stderr: stderr.recv_timeout(grace).unwrap_or_default(),
    })
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

fn show_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line `child` prints on stdout within `timeout` (empty if none).
pub fn first_line(child: &mut std::process::Child, timeout: std::time::Duration) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout).unwrap_or_default()
}

/// A valid ed25519 public key line no client holds, one per `(seed, salt)`:
/// filler for grant files with thousands of guests.
pub fn filler_key(seed: u32, salt: u8) -> String {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&seed.to_le_bytes());
    bytes[4] = salt;
    bytes[31] = 0x5a;
    ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey(bytes))
        .to_openssh()
        .expect("encode key")
}
