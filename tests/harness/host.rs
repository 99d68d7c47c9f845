//! The host itself: its namespaces and overlays, vmshare installed into
//! it, its files, accounts and keys, the grant-file writers, and teardown.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::thread;
use std::time::Duration;

use super::cgroup::{
    cgroup2_mount, kill_cgroup_tree, remove_cgroup_tree, sweep_stale, CGROUP_PREFIX,
};
use super::{output_within, scratch, show_args, AGENT_CONFIG, GRANTS, SCRATCH};

/// The PATH of every command run in the host.
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

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
    pub(super) dir: PathBuf,
    /// Per-test cgroup v2 group holding every process of this host.
    cgroup: PathBuf,
    holder: Option<Child>,
    holder_pid: u32,
    /// The listening sshd, once started (see ssh.rs).
    pub(super) sshd: Option<Child>,
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
    pub(super) fn create(extra_layers: &[&str]) -> Host {
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

    /// Root's `vmshare owner-keys import OWNER`: vmshare takes over the
    /// owner's keys and sshd reads no key file in her home from then on.
    /// What ops run once for an owner they add to the grant file by hand
    /// (the CLI's `invite` and `sharing on` do it themselves).
    pub fn hold(&self, owner: &str) -> String {
        self.run_ok(&["vmshare", "owner-keys", "import", owner])
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

    /// Puts /etc/vmshare on a tmpfs (keeping its files, the held owner
    /// keys of the state dir among them), so storms of thousands of
    /// renames are not throttled by the disk: ext4 flushes a file's data
    /// when it is renamed over another. Call before starting the daemon,
    /// which watches the directory.
    pub fn grants_dir_on_tmpfs(&self) {
        let kept = format!("{SCRATCH}/etc-vmshare");
        self.run_ok(&["cp", "-a", "/etc/vmshare", &kept]);
        self.run_ok(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "mode=0755,size=16m",
            "tmpfs",
            "/etc/vmshare",
        ]);
        self.run_ok(&["cp", "-a", &format!("{kept}/."), "/etc/vmshare/"]);
        self.run_ok(&["rm", "-rf", &kept]);
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

    pub(super) fn start_holder(&mut self) {
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
            (
                env!("CARGO_BIN_EXE_vmshare-portal"),
                "/usr/libexec/vmshare/vmshare-portal",
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
        // The guest portal's account, as the package makes it: the portal
        // its shell, a root-owned empty home, no password.
        self.mkdir("/etc/vmshare", 0o755);
        self.mkdir("/etc/vmshare/portal-home", 0o755);
        self.run_ok(&[
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/etc/vmshare/portal-home",
            "--shell",
            "/usr/libexec/vmshare/vmshare-portal",
            "vmshare",
        ]);
        self.run_ok(&["usermod", "--password", "*", "vmshare"]);
        self.run_ok(&["ssh-keygen", "-A"]);

        self.mkdir("/etc/vmshare", 0o755);
        let config = format!(
            "grants = \"/etc/vmshare/grants.toml\"\n\
             run_dir = \"/run/vmshare\"\n\
             state_dir = \"{}\"\n\
             \n\
             [enforcement]\n\
             backend = \"cgroup\"\n\
             cgroup_root = {}\n",
            super::STATE_DIR,
            toml_string(&self.sessions_cgroup().display().to_string())
        );
        self.write_file(AGENT_CONFIG, &config, 0, 0, 0o644);
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
