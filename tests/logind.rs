//! The logind backend against a real `dbus-daemon` on a private bus.
//!
//! logind itself cannot run without systemd as PID 1, so a stand-in
//! `org.freedesktop.login1` service registered on the bus by this test plays
//! its part: it records the `TerminateSession` and `KillSession` calls it
//! gets and, like logind, kills the session's processes. The bus, the daemon
//! (the real `vmshared`, pointed at the bus with `DBUS_SYSTEM_BUS_ADDRESS`)
//! and its grant file are real. tests/vm/run covers real logind.
//!
//! Needs root (the daemon trusts only a root-owned grant file) and
//! `dbus-daemon` (package dbus); fails, never skips, without them.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scratch;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vmshare::session::backend::Placement;
use vmshare::store::records::{self, SessionRecord};

const BOB_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIng3rZ/fRgGDUSELdR9h9s6oqEqOzk3b9O2Y1SpO8p1 bob@fake";
const CAROL_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKERteqAQuUn1LLt3ToBfjL3bnke33z7A+nikMXzyjUH carol@fake";
/// A local, non-root account present on every Debian system, as the owner.
const OWNER: &str = "daemon";

/// What the stand-in logind was asked, in order: `("TerminateSession", id)`.
type Calls = Arc<Mutex<Vec<(String, String)>>>;
/// The processes of each fake logind session, by session id.
type Scopes = Arc<Mutex<HashMap<String, Vec<i32>>>>;

#[derive(zbus::DBusError, Debug)]
#[zbus(prefix = "org.freedesktop.login1")]
enum LoginError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchSession(String),
}

struct FakeManager {
    calls: Calls,
    scopes: Scopes,
}

impl FakeManager {
    fn kill_scope(&self, id: &str) -> Result<(), LoginError> {
        let pids = self
            .scopes
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| LoginError::NoSuchSession(format!("No session '{id}' known")))?;
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl FakeManager {
    async fn terminate_session(&self, id: String) -> Result<(), LoginError> {
        self.calls
            .lock()
            .unwrap()
            .push(("TerminateSession".into(), id.clone()));
        self.kill_scope(&id)
    }

    async fn kill_session(&self, id: String, who: String, signal: i32) -> Result<(), LoginError> {
        self.calls
            .lock()
            .unwrap()
            .push((format!("KillSession {who} {signal}"), id.clone()));
        self.kill_scope(&id)
    }

    async fn set_user_linger(
        &self,
        uid: u32,
        enable: bool,
        interactive: bool,
    ) -> Result<(), LoginError> {
        self.calls.lock().unwrap().push((
            format!("SetUserLinger {enable} {interactive}"),
            uid.to_string(),
        ));
        Ok(())
    }
}

/// A private bus: `dbus-daemon` with a configuration that allows everything.
struct Bus {
    child: Child,
    address: String,
}

impl Bus {
    fn start(dir: &Path) -> Bus {
        let socket = dir.join("bus");
        let config = dir.join("bus.conf");
        fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>vmshare-test</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let log = dir.join("dbus-daemon.log");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting dbus-daemon (package dbus): {e}"));
        let mut address = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let address = address.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed no address ({address:?}):\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Bus { child, address }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stand-in logind, served from a thread of its own until dropped.
struct FakeLogind {
    calls: Calls,
    scopes: Scopes,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeLogind {
    fn start(address: &str) -> FakeLogind {
        let calls = Calls::default();
        let scopes = Scopes::default();
        let manager = FakeManager {
            calls: calls.clone(),
            scopes: scopes.clone(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let address = address.to_string();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let connection = zbus::connection::Builder::address(address.as_str())
                    .name("org.freedesktop.login1")
                    .serve_at("/org/freedesktop/login1", manager)
                    .build()
                    .await;
                match connection {
                    Ok(_connection) => {
                        ready_tx.send(Ok(())).unwrap();
                        // Serve until told to stop; dropping the connection
                        // takes the name off the bus.
                        let _ = stopped.await;
                    }
                    Err(e) => ready_tx.send(Err(e.to_string())).unwrap(),
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the stand-in logind did not start")
            .unwrap_or_else(|e| panic!("registering the stand-in logind: {e}"));
        FakeLogind {
            calls,
            scopes,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for FakeLogind {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A stand-in for a login's sshd process: a `sleep` reaped as soon as it
/// dies, so a dead one never lingers as a zombie.
struct Process {
    pid: i32,
    start: u64,
    exited: Arc<Mutex<bool>>,
}

impl Process {
    fn spawn() -> Process {
        let mut child = Command::new("sleep").arg("1000").spawn().unwrap();
        let pid = child.id() as i32;
        let start = vmshare::sys::procfs::stat(pid).unwrap().start;
        let exited = Arc::new(Mutex::new(false));
        let flag = exited.clone();
        thread::spawn(move || {
            let _ = child.wait();
            *flag.lock().unwrap() = true;
        });
        Process { pid, start, exited }
    }

    fn is_running(&self) -> bool {
        !*self.exited.lock().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn record(id: &str, guest: &str, key: &str, logind: &str, process: &Process) -> SessionRecord {
    let mut words = key.split(' ');
    SessionRecord {
        id: id.into(),
        owner: OWNER.into(),
        guest: guest.into(),
        fingerprint: "SHA256:test".into(),
        key_algorithm: words.next().unwrap().into(),
        key_blob: words.next().unwrap().into(),
        remote: "192.0.2.7".into(),
        since: 1,
        monitor_pid: process.pid,
        monitor_start: process.start,
        uid: 1,
        placement: Placement::Logind {
            session: logind.into(),
        },
    }
}

fn grants(guests: &[(&str, &str)]) -> String {
    let mut text = format!("[owners.{OWNER}]\nsharing = true\n");
    for (guest, key) in guests {
        text.push_str(&format!(
            "\n[owners.{OWNER}.guests.{guest}]\nstatus = \"accepted\"\nkeys = [\"{key}\"]\n"
        ));
    }
    text
}

fn write_grants(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, bus: &str, log: PathBuf) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_vmshared"))
            .arg("--config")
            .arg(config)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .env("VMSHARE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, log };
        assert!(
            wait_until(Duration::from_secs(20), || daemon
                .log()
                .contains("vmshared ready")),
            "vmshared did not become ready:\n{}",
            daemon.log()
        );
        daemon
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn revoke_ends_the_session_through_logind_on_the_system_bus() {
    let root = fs::metadata("/proc/self").map(|m| m.uid() == 0);
    assert!(
        matches!(root, Ok(true)),
        "this test needs root: the daemon trusts only a root-owned grant file"
    );
    let dir = scratch::trusted_tempdir("vmshare-logind-");
    let dir = dir.path();
    let run = dir.join("run");
    let grants_path = dir.join("grants.toml");
    write_grants(
        &grants_path,
        &grants(&[("bob", BOB_KEY), ("carol", CAROL_KEY)]),
    );
    let config = dir.join("vmshare.toml");
    fs::write(
        &config,
        format!(
            "grants = \"{}\"\nrun_dir = \"{}\"\n[enforcement]\nbackend = \"logind\"\n\
             cgroup_root = \"{}\"\n",
            grants_path.display(),
            run.display(),
            dir.join("no-cgroups").display()
        ),
    )
    .unwrap();

    let bus = Bus::start(dir);
    let logind = FakeLogind::start(&bus.address);

    // Two guest logins, each in a logind session of its own.
    let bob = Process::spawn();
    let carol = Process::spawn();
    logind
        .scopes
        .lock()
        .unwrap()
        .insert("c8".into(), vec![bob.pid]);
    logind
        .scopes
        .lock()
        .unwrap()
        .insert("c7".into(), vec![carol.pid]);
    let sessions_dir = run.join("sessions");
    records::write(&sessions_dir, &record("s-bob", "bob", BOB_KEY, "c8", &bob)).unwrap();
    records::write(
        &sessions_dir,
        &record("s-carol", "carol", CAROL_KEY, "c7", &carol),
    )
    .unwrap();

    let daemon = Daemon::start(&config, &bus.address, dir.join("vmshared.log"));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(logind.calls(), [], "granted sessions were ended");
    assert!(bob.is_running() && carol.is_running());

    // Revoke carol: her session ends through logind, with her session id.
    write_grants(&grants_path, &grants(&[("bob", BOB_KEY)]));
    assert!(
        wait_until(Duration::from_secs(10), || !carol.is_running()),
        "carol's session survived the revoke:\n{}",
        daemon.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || daemon
            .log()
            .contains("session=s-carol")),
        "{}",
        daemon.log()
    );
    let calls = logind.calls();
    assert_eq!(
        calls.first(),
        Some(&("TerminateSession".to_string(), "c7".to_string())),
        "calls: {calls:?}\n{}",
        daemon.log()
    );
    assert!(
        calls.iter().all(|(_, id)| id == "c7"),
        "another session was touched: {calls:?}"
    );
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("method=logind") && l.contains("session=s-carol")),
        "the daemon did not report ending the session through logind:\n{log}"
    );
    assert!(!sessions_dir.join("s-carol.json").exists());
    thread::sleep(Duration::from_millis(300));
    assert!(bob.is_running(), "bob's session was hit");

    // With logind gone from the bus, a revoke still ends what it can reach:
    // the session's process tree, by signal, and says why.
    drop(logind);
    write_grants(&grants_path, &grants(&[]));
    assert!(
        wait_until(Duration::from_secs(10), || !bob.is_running()),
        "bob's session survived a revoke with logind down:\n{}",
        daemon.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || daemon
            .log()
            .contains("signalled the session's process tree instead")),
        "{}",
        daemon.log()
    );
}

/// Turning off the lingering a guest turned on: `SetUserLinger(uid, false,
/// false)` to logind on the system bus, and an error when no logind
/// answers. The only test in this file that points this process (not a
/// child) at the private bus.
#[test]
fn lingering_is_turned_off_through_logind_on_the_system_bus() {
    let dir = scratch::trusted_tempdir("vmshare-linger-");
    let bus = Bus::start(dir.path());
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &bus.address);
    let logind = FakeLogind::start(&bus.address);
    vmshare::session::backend::logind::disable_linger(1000).unwrap();
    assert_eq!(
        logind.calls(),
        vec![("SetUserLinger false false".to_string(), "1000".to_string())]
    );
    drop(logind);
    let err = vmshare::session::backend::logind::disable_linger(1000).unwrap_err();
    assert!(err.contains("SetUserLinger(1000, false)"), "{err}");
}
