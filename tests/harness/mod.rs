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
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Once};
use std::thread;
use std::time::{Duration, Instant};

mod package;
#[path = "../scratch/mod.rs"]
mod scratch;

/// Where the grant file lives inside the host.
pub const GRANTS: &str = "/etc/vmshare/grants.toml";
/// Where the agent config lives inside the host.
pub const AGENT_CONFIG: &str = "/etc/vmshare/vmshare.toml";

/// Scratch space inside the host, on its private /run: keys, sshd log.
const SCRATCH: &str = "/run/vmshare-e2e";
const SSHD_LOG: &str = "/run/vmshare-e2e/sshd.log";
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
const CGROUP_PREFIX: &str = "vmshare-e2e-";

const SSH_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const SSHD_START_TIMEOUT: Duration = Duration::from_secs(15);
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(15);

static NEXT_HOST: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

/// An SSH key pair generated inside a host.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    /// Path of the private key inside the host (what `ssh -i` gets).
    pub private: String,
    /// The public key line: `ssh-ed25519 AAAA… NAME@e2e`, no newline.
    pub public: String,
}

/// One isolated host: namespaces, overlays, vmshare installed, sshd running.
pub struct Host {
    id: String,
    /// Per-test directory outside the namespace (overlay layers).
    dir: PathBuf,
    /// Per-test cgroup v2 group holding every process of this host.
    cgroup: PathBuf,
    holder: Option<Child>,
    holder_pid: u32,
    sshd: Option<Child>,
}

impl Host {
    /// Builds a fresh host and starts its sshd. Panics (never skips) when the
    /// machine cannot run end-to-end tests.
    pub fn start() -> Host {
        let mut host = Host::create(&[]);
        host.start_holder();
        host.install();
        host.start_sshd();
        host
    }

    /// A host's directory (with the overlay layers, plus `extra_layers`)
    /// and cgroup, before its namespaces exist. Dropping it cleans up.
    fn create(extra_layers: &[&str]) -> Host {
        preflight();
        let cgroup2 = cgroup2_mount();
        let base = base_dir();
        SWEEP.call_once(|| sweep_stale(&cgroup2, &base));

        let id = format!(
            "{}-{}-{}",
            std::process::id(),
            NEXT_HOST.fetch_add(1, Ordering::SeqCst),
            test_label()
        );
        let dir = base.join(&id);
        let cgroup = cgroup2.join(format!("{CGROUP_PREFIX}{id}"));
        let layers = ["etc.upper", "etc.work", "usr.upper", "usr.work"];
        for layer in layers.iter().chain(extra_layers) {
            let path = dir.join(layer);
            fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        }
        fs::create_dir(&cgroup).unwrap_or_else(|e| {
            panic!(
                "creating cgroup {}: {e} (is cgroup v2 writable?)",
                cgroup.display()
            )
        });

        // From here on Drop cleans up whatever exists.
        Host {
            id,
            dir,
            cgroup,
            holder: None,
            holder_pid: 0,
            sshd: None,
        }
    }

    /// The per-test cgroup (absolute path on the cgroup2 mount).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The cgroup root configured for the agent's session groups.
    pub fn sessions_cgroup(&self) -> PathBuf {
        self.cgroup.join("sessions")
    }

    /// Pid of the process holding the namespaces.
    pub fn holder_pid(&self) -> u32 {
        self.holder_pid
    }

    /// The outside path of `inside` (an absolute path inside the host).
    pub fn path(&self, inside: &str) -> PathBuf {
        assert!(
            inside.starts_with('/'),
            "path inside the host must be absolute: {inside}"
        );
        PathBuf::from(format!("/proc/{}/root{inside}", self.holder_pid))
    }

    pub fn read_file(&self, inside: &str) -> io::Result<String> {
        fs::read_to_string(self.path(inside))
    }

    /// Writes a file inside the host (create or truncate) with the given
    /// owner and mode.
    pub fn write_file(&self, inside: &str, contents: &str, uid: u32, gid: u32, mode: u32) {
        let path = self.path(inside);
        write_owned(&path, contents, uid, gid, mode);
    }

    /// A command that runs `args` inside the host's namespaces and cgroup,
    /// with a minimal environment. Spawn it yourself for full control.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = self.in_cgroup();
        cmd.arg("nsenter")
            .arg("-t")
            .arg(self.holder_pid.to_string())
            .arg("-m")
            .arg("-n")
            .arg("--")
            .args(args);
        cmd
    }

    /// Runs `args` inside the host and returns what it printed. Panics only
    /// if it cannot be started or does not finish in time.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let shown = show_args(args);
        output_within(self.command(args), RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("running `{shown}` in the host: {e}"))
    }

    /// Like `run`, but panics unless the command succeeds; returns stdout.
    pub fn run_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            panic!(
                "`{}` in the host failed ({}):\nstdout: {}\nstderr: {}",
                show_args(args),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a local account with a home, bash, and an unlocked password
    /// field (so public-key login is allowed). Returns its uid.
    pub fn add_user(&self, name: &str) -> u32 {
        self.run_ok(&["useradd", "--create-home", "--shell", "/bin/bash", name]);
        self.run_ok(&["usermod", "--password", "*", name]);
        self.passwd_entry(name).0
    }

    /// `(uid, gid, home)` of a local account of the host.
    pub fn passwd_entry(&self, name: &str) -> (u32, u32, String) {
        let passwd = self
            .read_file("/etc/passwd")
            .unwrap_or_else(|e| panic!("reading /etc/passwd in the host: {e}"));
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 7 && fields[0] == name {
                let uid = fields[2]
                    .parse()
                    .unwrap_or_else(|e| panic!("uid of {name}: {e}"));
                let gid = fields[3]
                    .parse()
                    .unwrap_or_else(|e| panic!("gid of {name}: {e}"));
                return (uid, gid, fields[5].to_string());
            }
        }
        panic!("no account {name} in the host's /etc/passwd");
    }

    /// Generates an ed25519 key pair inside the host (root-only, 0600).
    pub fn keypair(&self, name: &str) -> Key {
        let private = format!("{SCRATCH}/keys/{name}");
        self.mkdir(&format!("{SCRATCH}/keys"), 0o700);
        let comment = format!("{name}@e2e");
        self.run_ok(&[
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            &comment,
            "-f",
            &private,
        ]);
        let public = self
            .read_file(&format!("{private}.pub"))
            .unwrap_or_else(|e| panic!("reading public key {name}: {e}"))
            .trim()
            .to_string();
        Key {
            name: name.to_string(),
            private,
            public,
        }
    }

    /// Appends `pubkey` to the account's own `~/.ssh/authorized_keys`, with
    /// the ownership and modes sshd's StrictModes wants.
    pub fn authorize_owner_key(&self, user: &str, pubkey: &str) {
        let (uid, gid, home) = self.passwd_entry(user);
        let ssh_dir = format!("{home}/.ssh");
        let dir = self.path(&ssh_dir);
        if !dir.exists() {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {ssh_dir}: {e}"));
        }
        set_owner_mode(&dir, uid, gid, 0o700);
        let file = format!("{ssh_dir}/authorized_keys");
        let mut text = self.read_file(&file).unwrap_or_default();
        text.push_str(pubkey.trim());
        text.push('\n');
        self.write_file(&file, &text, uid, gid, 0o600);
    }

    /// Replaces the grant file atomically: write a temp file, then rename.
    pub fn write_grants(&self, text: &str) {
        let tmp = self.path("/etc/vmshare/.grants.toml.tmp");
        write_owned(&tmp, text, 0, 0, 0o644);
        rename(&tmp, &self.path(GRANTS));
    }

    /// Rewrites the grant file in place (truncate and write the same inode).
    pub fn write_grants_in_place(&self, text: &str) {
        let path = self.path(GRANTS);
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .create(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {GRANTS}: {e}"));
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .unwrap_or_else(|e| panic!("writing {GRANTS}: {e}"));
        set_owner_mode(&path, 0, 0, 0o644);
    }

    /// Saves the grant file the way vim does by default: rename the old file
    /// to `grants.toml~`, write a new file, remove the backup.
    pub fn write_grants_vim_style(&self, text: &str) {
        let path = self.path(GRANTS);
        let backup = self.path("/etc/vmshare/grants.toml~");
        if path.exists() {
            rename(&path, &backup);
        }
        write_owned(&path, text, 0, 0, 0o644);
        if backup.exists() {
            fs::remove_file(&backup).unwrap_or_else(|e| panic!("removing grants.toml~: {e}"));
        }
    }

    /// Changes the grant file's owner and mode (to test the permission rule).
    pub fn set_grants_owner_mode(&self, uid: u32, gid: u32, mode: u32) {
        set_owner_mode(&self.path(GRANTS), uid, gid, mode);
    }

    pub fn remove_grants(&self) {
        let path = self.path(GRANTS);
        if path.exists() {
            fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {GRANTS}: {e}"));
        }
    }

    /// The ssh client command for `user@127.0.0.1` with only `key`.
    pub fn ssh_command(&self, user: &str, key: &Key, cmd: &str) -> Command {
        let dest = format!("{user}@127.0.0.1");
        self.command(&[
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            &key.private,
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "-p",
            "22",
            &dest,
            cmd,
        ])
    }

    /// Runs `cmd` over ssh as `user` with `key` and waits for it.
    pub fn ssh(&self, user: &str, key: &Key, cmd: &str) -> Output {
        output_within(self.ssh_command(user, key, cmd), SSH_TIMEOUT)
            .unwrap_or_else(|e| panic!("ssh {user}@host with key {} `{cmd}`: {e}", key.name))
    }

    /// Starts a long-lived ssh session; stdin, stdout and stderr are piped.
    /// Teardown kills it with the rest of the host.
    pub fn ssh_spawn(&self, user: &str, key: &Key, cmd: &str) -> Child {
        let mut command = self.ssh_command(user, key, cmd);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
            .spawn()
            .unwrap_or_else(|e| panic!("starting ssh {user}@host: {e}"))
    }

    /// Asserts that `key` opens a shell as `user` in which `id -un` prints
    /// `expected`.
    #[track_caller]
    pub fn assert_logs_in_as(&self, user: &str, key: &Key, expected: &str) {
        let out = self.ssh(user, key, "id -un");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || stdout.trim() != expected {
            panic!(
                "key {} logging in as {user}: expected a shell as {expected}, \
                 but ssh exited with {}\nstdout: {stdout}\nstderr: {}",
                key.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Asserts that `key` cannot log in as `user`: ssh itself fails (exit
    /// 255) and no command ran.
    #[track_caller]
    pub fn assert_refused(&self, user: &str, key: &Key) {
        let out = self.ssh(user, key, "id -un");
        if out.status.code() != Some(255) || !out.stdout.is_empty() {
            panic!(
                "key {} logging in as {user}: expected the login to be refused, \
                 but ssh exited with {}\nstdout: {}\nstderr: {}",
                key.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// sshd's log so far (debug level), for diagnostics.
    pub fn sshd_log(&self) -> String {
        self.read_file(SSHD_LOG)
            .unwrap_or_else(|e| format!("<no sshd log: {e}>"))
    }

    /// Creates a root-owned directory inside the host (parents as needed).
    pub fn mkdir(&self, inside: &str, mode: u32) {
        let path = self.path(inside);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {inside}: {e}"));
        set_owner_mode(&path, 0, 0, mode);
    }

    /// Copies a file from outside into the host, root-owned with `mode`.
    pub fn install_file(&self, from: &Path, inside: &str, mode: u32) {
        let to = self.path(inside);
        fs::copy(from, &to)
            .unwrap_or_else(|e| panic!("installing {} as {inside}: {e}", from.display()));
        set_owner_mode(&to, 0, 0, mode);
    }

    /// A `sh` that puts itself into this host's cgroup, then execs its
    /// arguments.
    fn in_cgroup(&self) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.cgroup.join("cgroup.procs"))
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root");
        cmd
    }

    fn start_holder(&mut self) {
        for layer in ["etc.upper", "etc.work", "usr.upper", "usr.work"] {
            let path = self.dir.join(layer).display().to_string();
            assert!(
                !path.contains([',', ':', '\\']),
                "overlay layer path {path} contains a character mount options cannot carry"
            );
        }
        let setup = r#"set -e
ip link set lo up
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/etc.upper,workdir=$1/etc.work" /etc
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$1/usr.upper,workdir=$1/usr.work" /usr
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0755 /run/sshd
mkdir -m 0700 /run/vmshare-e2e
mount -t tmpfs -o mode=0755 tmpfs /home
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /var/log
echo ready
exec sleep infinity"#;
        let mut cmd = self.in_cgroup();
        cmd.args([
            "unshare",
            "--mount",
            "--net",
            "--propagation",
            "private",
            "--",
        ])
        .args(["sh", "-c", setup, "sh"])
        .arg(&self.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting the namespace holder: {e}"));
        self.holder_pid = child.id();
        let stdout = child.stdout.take();
        self.holder = Some(child);

        let mut line = String::new();
        if let Some(stdout) = stdout {
            // The holder prints nothing after "ready"; the pipe may close.
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        if line.trim() != "ready" {
            let mut stderr = String::new();
            if let Some(child) = self.holder.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
            }
            panic!("setting up the test namespace failed:\n{stderr}");
        }
    }

    fn install(&self) {
        self.mkdir("/usr/libexec/vmshare", 0o755);
        let binaries = [
            (
                env!("CARGO_BIN_EXE_vmshare-keys"),
                "/usr/libexec/vmshare/vmshare-keys",
            ),
            (
                env!("CARGO_BIN_EXE_vmshare-pam"),
                "/usr/libexec/vmshare/vmshare-pam",
            ),
            (env!("CARGO_BIN_EXE_vmshare"), "/usr/bin/vmshare"),
            (env!("CARGO_BIN_EXE_vmshared"), "/usr/sbin/vmshared"),
        ];
        for (from, to) in binaries {
            self.install_file(Path::new(from), to, 0o755);
        }

        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        self.mkdir("/etc/ssh/sshd_config.d", 0o755);
        self.install_file(
            &repo.join("config/sshd_config.d/vmshare.conf"),
            "/etc/ssh/sshd_config.d/vmshare.conf",
            0o644,
        );
        self.install_file(
            &repo.join("config/pam.d/vmshare"),
            "/etc/pam.d/vmshare",
            0o644,
        );
        let pam = self
            .read_file("/etc/pam.d/sshd")
            .unwrap_or_else(|e| panic!("reading /etc/pam.d/sshd: {e}"));
        let mut included = false;
        let mut new_pam = String::new();
        for line in pam.lines() {
            new_pam.push_str(line);
            new_pam.push('\n');
            if !included && line.trim() == "@include common-session" {
                new_pam.push_str("@include vmshare\n");
                included = true;
            }
        }
        assert!(
            included,
            "/etc/pam.d/sshd has no `@include common-session` line to add vmshare after"
        );
        self.write_file("/etc/pam.d/sshd", &new_pam, 0, 0, 0o644);

        self.run_ok(&[
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "_vmshare",
        ]);
        self.run_ok(&["ssh-keygen", "-A"]);

        self.mkdir("/etc/vmshare", 0o755);
        let config = format!(
            "grants = \"/etc/vmshare/grants.toml\"\n\
             run_dir = \"/run/vmshare\"\n\
             \n\
             [enforcement]\n\
             backend = \"cgroup\"\n\
             cgroup_root = {}\n",
            toml_string(&self.sessions_cgroup().display().to_string())
        );
        self.write_file(AGENT_CONFIG, &config, 0, 0, 0o644);
    }

    fn start_sshd(&mut self) {
        let check = self.run(&["/usr/sbin/sshd", "-t"]);
        if !check.status.success() {
            panic!(
                "sshd -t rejects the host's configuration:\n{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let mut cmd = self.command(&[
            "/usr/sbin/sshd",
            "-D",
            "-E",
            SSHD_LOG,
            "-o",
            "PidFile=/run/sshd.pid",
            "-o",
            "LogLevel=DEBUG1",
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // The log survives restarts: wait for a new "listening" line.
        let before = self.sshd_log().matches("Server listening on").count();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting sshd: {e}"));
        self.sshd = Some(child);

        let deadline = Instant::now() + SSHD_START_TIMEOUT;
        loop {
            if self.sshd_log().matches("Server listening on").count() > before {
                return;
            }
            let exited = match self.sshd.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(how) = exited {
                panic!("sshd exited before listening ({how}):\n{}", self.sshd_log());
            }
            if Instant::now() > deadline {
                panic!("sshd did not start listening in time:\n{}", self.sshd_log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn teardown(&mut self) -> Result<(), String> {
        let killed = kill_cgroup_tree(&self.cgroup);
        for child in [self.sshd.take(), self.holder.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        killed?;
        remove_cgroup_tree(&self.cgroup)?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .map_err(|e| format!("removing {}: {e}", self.dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if thread::panicking() && self.holder.is_some() {
            eprintln!(
                "---- sshd log of host {} ----\n{}\n---- end of sshd log ----",
                self.id,
                self.sshd_log()
            );
        }
        if let Err(e) = self.teardown() {
            eprintln!("vmshare e2e: tearing down host {}: {e}", self.id);
        }
    }
}

/// Panics unless this machine can run the end-to-end tests.
fn preflight() {
    let euid = fs::metadata("/proc/self").map(|m| m.uid());
    if !matches!(euid, Ok(0)) {
        panic!(
            "the end-to-end tests need root (they start sshd in private namespaces); \
             run them as root, e.g. through scripts/test-all"
        );
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        panic!("/usr/sbin/sshd is missing: install openssh-server");
    }
    for (tool, package) in [
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("useradd", "passwd"),
        ("usermod", "passwd"),
    ] {
        let found = PATH
            .split(':')
            .any(|dir| Path::new(dir).join(tool).exists());
        if !found {
            panic!("`{tool}` is missing: install {package}");
        }
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_else(|e| panic!("reading /proc/self/mountinfo: {e}"));
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        if let Some(mount_point) = left.split(' ').nth(4) {
            return PathBuf::from(unescape_mountinfo(mount_point));
        }
    }
    panic!("no cgroup v2 file system is mounted (see /proc/self/mountinfo)");
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where hosts keep their overlay layers: below the shared scratch base,
/// which lies outside every path the namespace mounts over, so layers
/// mounted late (the package test's /var) stay reachable.
fn base_dir() -> PathBuf {
    scratch::base().join("vmshare-e2e")
}

/// The current test's name, made safe for file and cgroup names.
fn test_label() -> String {
    let name = thread::current().name().unwrap_or("test").to_string();
    let name = name.rsplit("::").next().unwrap_or("test");
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect()
}

/// Removes hosts left behind by test processes that died without teardown
/// (SIGKILL, abort). Hosts of live processes are left alone.
fn sweep_stale(cgroup2: &Path, base: &Path) {
    let owner_is_dead = |name: &str| match name.split('-').next().map(str::parse::<u32>) {
        Some(Ok(pid)) => !Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    };
    if let Ok(entries) = fs::read_dir(cgroup2) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(CGROUP_PREFIX) {
                if owner_is_dead(rest) {
                    let path = entry.path();
                    let result = kill_cgroup_tree(&path).and_then(|()| remove_cgroup_tree(&path));
                    if let Err(e) = result {
                        eprintln!("vmshare e2e: removing stale cgroup: {e}");
                    }
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(base) {
        for entry in entries.flatten() {
            if owner_is_dead(&entry.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Every cgroup directory at and below `root`, children before parents.
fn cgroup_dirs_bottom_up(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(cgroup_dirs_bottom_up(&entry.path()));
            }
        }
    }
    if root.is_dir() {
        out.push(root.to_path_buf());
    }
    out
}

fn cgroup_pids(root: &Path) -> Vec<String> {
    cgroup_dirs_bottom_up(root)
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|procs| procs.lines().map(str::to_string).collect::<Vec<String>>())
        .collect()
}

/// Kills every process in the group and its subgroups and waits until they
/// are gone.
fn kill_cgroup_tree(root: &Path) -> Result<(), String> {
    if !root.exists() {
        return Ok(());
    }
    let kill_file = root.join("cgroup.kill");
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    loop {
        let pids = cgroup_pids(root);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "processes {pids:?} are still in {} after killing it",
                root.display()
            ));
        }
        // cgroup.kill (Linux 5.14+) kills the whole subtree without racing
        // forks; on older kernels kill what we see and look again.
        if fs::write(&kill_file, "1").is_err() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn remove_cgroup_tree(root: &Path) -> Result<(), String> {
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    for dir in cgroup_dirs_bottom_up(root) {
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // EBUSY while the last exits are still being accounted.
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("removing cgroup {}: {e}", dir.display()))
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    Ok(())
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

fn write_owned(path: &Path, contents: &str, uid: u32, gid: u32, mode: u32) {
    let mut file =
        File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    set_owner_mode(path, uid, gid, mode);
}

fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: u32) {
    chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn rename(from: &Path, to: &Path) {
    fs::rename(from, to)
        .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", from.display(), to.display()));
}

fn show_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where the daemon's log goes inside the host.
pub const DAEMON_LOG: &str = "/run/vmshare-e2e/vmshared.log";

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
}

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
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// A live ssh session whose remote side left a `setsid nohup` escapee
/// behind, both marked so the test can see whether they still run.
pub struct LiveSession {
    pub child: Child,
    pub escapee: String,
    pub foreground: String,
}

impl LiveSession {
    /// Opens the session and waits until both processes run.
    pub fn open(host: &Host, user: &str, key: &Key) -> LiveSession {
        let m = unique_marker();
        let escapee = format!("{m}1");
        let foreground = format!("{m}2");
        let cmd = format!(
            "setsid nohup sleep {escapee} >/dev/null 2>&1 </dev/null & echo up; exec sleep {foreground}"
        );
        let mut child = host.ssh_spawn(user, key, &cmd);
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let session = LiveSession {
            child,
            escapee,
            foreground,
        };
        if line.trim() != "up" {
            panic!(
                "session of key {} as {user} did not start (got {line:?}):\n{}",
                key.name,
                host.sshd_log()
            );
        }
        assert!(
            wait_until(Duration::from_secs(10), || session.processes() == 2),
            "session processes did not appear"
        );
        session
    }

    /// How many of the session's two marked processes run.
    pub fn processes(&self) -> usize {
        pids_with_cmdline(&["sleep", &self.escapee]).len()
            + pids_with_cmdline(&["sleep", &self.foreground]).len()
    }

    /// Whether the session is completely gone: both processes and the
    /// client's connection.
    pub fn is_gone(&mut self) -> bool {
        self.processes() == 0 && matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until the session is gone; returns how long that took.
    pub fn wait_gone(&mut self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        wait_until(timeout, || self.is_gone()).then(|| started.elapsed())
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- Faults and races ----

impl Daemon {
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

/// Where the daemon keeps its snapshot and session records inside the host.
pub const RUN_DIR: &str = "/run/vmshare";
pub const SNAPSHOT: &str = "/run/vmshare/snapshot";
pub const SESSIONS_DIR: &str = "/run/vmshare/sessions";

impl Host {
    /// Pid of the listening sshd.
    pub fn sshd_pid(&self) -> u32 {
        self.sshd
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("sshd is not running"))
    }

    /// Stops the listening sshd with `signal`, as a service manager would on
    /// restart, waits until it has exited, and starts a fresh one. The
    /// per-connection sshd processes (live sessions) are left alone.
    pub fn restart_sshd(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut old) = self.sshd.take() {
            let pid = nix::unistd::Pid::from_raw(old.id() as i32);
            nix::sys::signal::kill(pid, signal)
                .unwrap_or_else(|e| panic!("sending {signal} to sshd: {e}"));
            let exited = wait_until(SSHD_START_TIMEOUT, || matches!(old.try_wait(), Ok(Some(_))));
            assert!(exited, "sshd did not exit on {signal}");
        }
        self.start_sshd();
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
        use vmshare::snapshot::{read_owner, Lookup};
        let grants = self.path(GRANTS);
        let bytes = fs::read(&grants).ok()?;
        let version = vmshare::source::FileVersion::of(&fs::metadata(&grants).ok()?);
        match read_owner(
            &self.path(SNAPSHOT),
            Path::new(GRANTS),
            Some(&version),
            owner,
        ) {
            Ok(Lookup::Fresh { header, lines })
                if header.sha256 == vmshare::source::sha256_hex(&bytes) =>
            {
                Some(sorted_lines(&lines))
            }
            _ => None,
        }
    }

    /// The session records in the run dir (unreadable ones are skipped).
    pub fn session_records(&self) -> Vec<vmshare::sessions::SessionRecord> {
        vmshare::sessions::list(&self.path(SESSIONS_DIR)).0
    }

    /// Replaces the grant file by rename, without the fsyncs of
    /// `write_grants`: for storms of thousands of edits.
    pub fn write_grants_fast(&self, text: &str) {
        let tmp = self.path("/etc/vmshare/.grants.toml.storm");
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        set_owner_mode(&tmp, 0, 0, 0o644);
        rename(&tmp, &self.path(GRANTS));
    }

    /// Rewrites the grant file in place without fsync.
    pub fn write_grants_in_place_fast(&self, text: &str) {
        let path = self.path(GRANTS);
        fs::write(&path, text).unwrap_or_else(|e| panic!("writing {GRANTS}: {e}"));
    }
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
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    cmdlines.contains(&want)
}

impl LiveSession {
    /// Like `open`, but `None` when the login is refused or the session
    /// does not come up.
    pub fn try_open(host: &Host, user: &str, key: &Key) -> Option<LiveSession> {
        let m = unique_marker();
        let escapee = format!("{m}1");
        let foreground = format!("{m}2");
        let cmd = format!(
            "setsid nohup sleep {escapee} >/dev/null 2>&1 </dev/null & echo up; exec sleep {foreground}"
        );
        let mut child = host.ssh_spawn(user, key, &cmd);
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let session = LiveSession {
            child,
            escapee,
            foreground,
        };
        // Dropping a session that did not come up kills its client.
        (line.trim() == "up").then_some(session)
    }
}

/// What a session prints when its command runs.
const RAN: &str = "vmshare-e2e-command-ran";

impl Host {
    /// Asserts that `key` gets no command run as `user`, and returns ssh's
    /// exit code: 255 when sshd refused the key, 254 when the PAM session
    /// stack refused the session (sshd 9.2 then keeps the connection but
    /// runs nothing, and the client gets 254).
    #[track_caller]
    pub fn assert_no_session(&self, user: &str, key: &Key) -> i32 {
        let out = self.ssh(user, key, &format!("echo {RAN}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(code @ (254 | 255)) if !stdout.contains(RAN) => code,
            _ => panic!(
                "key {} logging in as {user}: expected no session, \
                 but ssh exited with {}\nstdout: {stdout}\nstderr: {}",
                key.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Asserts that `key` is accepted by sshd but its session refused by
    /// the PAM hook: no command runs and the connection is dropped, yet
    /// ssh never reports the key itself as refused.
    #[track_caller]
    pub fn assert_session_refused(&self, user: &str, key: &Key) {
        let out = self.ssh(user, key, &format!("echo {RAN}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let refused = matches!(out.status.code(), Some(254 | 255)) && !stdout.contains(RAN);
        if !refused || stderr.contains("Permission denied") {
            panic!(
                "key {} logging in as {user}: expected the key accepted and the \
                 session refused, but ssh exited with {}\nstdout: {stdout}\nstderr: {stderr}",
                key.name, out.status
            );
        }
    }

    /// Puts /etc/vmshare on a tmpfs (keeping its files), so storms of
    /// thousands of renames are not throttled by the disk: ext4 flushes
    /// a file's data when it is renamed over another. Call before starting
    /// the daemon, which watches the directory.
    pub fn grants_dir_on_tmpfs(&self) {
        let config = self
            .read_file(AGENT_CONFIG)
            .unwrap_or_else(|e| panic!("reading {AGENT_CONFIG}: {e}"));
        let grants = self.read_file(GRANTS).ok();
        self.run_ok(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "mode=0755,size=16m",
            "tmpfs",
            "/etc/vmshare",
        ]);
        self.write_file(AGENT_CONFIG, &config, 0, 0, 0o644);
        if let Some(text) = grants {
            self.write_file(GRANTS, &text, 0, 0, 0o644);
        }
    }
}
