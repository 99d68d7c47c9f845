//! A fleet: a real 3-member etcd cluster (TLS client certificates, RBAC)
//! in a network namespace of its own, the "fabric", and hosts wired to it
//! over veth pairs, each running vmshare-sync next to vmshared.
//!
//! Addresses are private to the test's namespaces: the members are
//! 10.98.0.1–3 on the fabric's loopback, link k is a /30 in 10.100.0.0/16
//! (fabric side .1, host side .2). Nothing is added to the machine's own
//! network namespace. The test drives etcd with `etcdctl` as user `root`;
//! each VM's etcd user (its certificate's common name) may read only its
//! grants key and write only its status key.
//!
//! Dropping the fabric kills the members and the fabric's agents; a host's
//! agent dies with its host.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use super::{scratch, wait_until, Host};

#[path = "../../sync/tests/cluster/etcd.rs"]
mod etcd;

pub const MEMBER_IPS: [&str; 3] = ["10.98.0.1", "10.98.0.2", "10.98.0.3"];

/// The vmshare-sync binary, built once per test run (the agent is a crate
/// of its own, so cargo does not build it for the core's tests).
pub fn sync_binary(release: bool) -> PathBuf {
    static BUILD: Once = Once::new();
    static RESULT: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--locked", "-p", "vmshare-sync"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let result = match cmd.output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Err(e.to_string()),
        };
        *RESULT.lock().unwrap() = Some(result);
    });
    if let Some(Err(e)) = RESULT.lock().unwrap().as_ref() {
        panic!("building vmshare-sync failed:\n{e}");
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    target
        .join(if release { "release" } else { "debug" })
        .join("vmshare-sync")
}

pub fn grants_key(vm: &str) -> String {
    format!("/vmshare/v1/vms/{vm}")
}

pub struct Fabric {
    pub dir: tempfile::TempDir,
    holder: Child,
    pub pid: u32,
    members: Vec<Option<Child>>,
    /// `--initial-cluster` of the members, to restart one.
    initial: String,
    /// Sync-only agents running in the fabric itself.
    agents: Vec<Child>,
    links: AtomicUsize,
}

impl Fabric {
    /// The fabric namespace, the cluster, and etcd users for `vms`.
    pub fn start(vms: &[String]) -> Fabric {
        let dir = scratch::trusted_tempdir("vmshare-fleet-");
        let setup = format!(
            "set -e; ip link set lo up; {} echo ready; exec sleep infinity",
            MEMBER_IPS
                .iter()
                .map(|ip| format!("ip addr add {ip}/32 dev lo;"))
                .collect::<String>()
        );
        let mut holder = Command::new("unshare")
            .args(["--net", "sh", "-c", &setup])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the fabric namespace did not come up");
        let pid = holder.id();
        let mut fabric = Fabric {
            dir,
            holder,
            pid,
            members: Vec::new(),
            initial: String::new(),
            agents: Vec::new(),
            links: AtomicUsize::new(0),
        };

        let certs = fabric.certs();
        fs::create_dir_all(&certs).unwrap();
        etcd::make_ca(&certs);
        for ip in MEMBER_IPS {
            etcd::make_cert(&certs, ip, ip, true);
        }
        etcd::make_cert(&certs, "root", "root", false);
        // For etcd's JSON gateway (user root by password).
        etcd::make_cert(&certs, "gateway", "", false);
        // Many VMs: a few openssl at a time.
        for chunk in vms.chunks(8) {
            std::thread::scope(|s| {
                for vm in chunk {
                    let certs = &certs;
                    s.spawn(move || etcd::make_cert(certs, vm, vm, false));
                }
            });
        }
        let names: Vec<(String, &str)> = MEMBER_IPS
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("m{}", i + 1), *ip))
            .collect();
        let pairs: Vec<(&str, &str)> = names.iter().map(|(n, ip)| (n.as_str(), *ip)).collect();
        fabric.initial = etcd::initial_cluster(&pairs);
        for i in 0..MEMBER_IPS.len() {
            fabric.members.push(None);
            fabric.start_member(i);
        }
        let healthy = wait_until(Duration::from_secs(60), || {
            fabric.etcdctl(&["put", "/health", "ok"]).status.success()
        });
        assert!(healthy, "etcd did not come up: {:?}", fabric.dir.path());
        fabric.setup_auth(vms);
        fabric
    }

    /// Starts member `i` (again: with the data it had).
    pub fn start_member(&mut self, i: usize) {
        let (name, ip) = (format!("m{}", i + 1), MEMBER_IPS[i]);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        let child = self
            .in_fabric("etcd")
            .args(etcd::member_args(self.dir.path(), &self.initial, &name, ip))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.members[i] = Some(child);
    }

    /// `kill -9` of member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The index of the member that leads, as the members report it.
    pub fn leader(&self) -> usize {
        let out = self.etcdctl_ok(&["endpoint", "status", "-w", "json"]);
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        let leading = status
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["Status"]["header"]["member_id"] == e["Status"]["leader"])
            .and_then(|e| e["Endpoint"].as_str())
            .unwrap_or_else(|| panic!("no member leads: {out}"));
        MEMBER_IPS
            .iter()
            .position(|ip| leading.contains(&format!("//{ip}:")))
            .unwrap()
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn endpoints(&self) -> String {
        MEMBER_IPS
            .iter()
            .map(|ip| format!("https://{ip}:{}", etcd::CLIENT_PORT))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `program` run inside the fabric's network namespace.
    pub fn in_fabric(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-n", "--", program]);
        cmd
    }

    /// `etcdctl` as etcd user root.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let certs = self.certs();
        self.in_fabric("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints()))
            .arg(format!("--cacert={}", certs.join("ca.pem").display()))
            .arg(format!("--cert={}", certs.join("root.pem").display()))
            .arg(format!("--key={}", certs.join("root-key.pem").display()))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .unwrap()
    }

    fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn setup_auth(&self, vms: &[String]) {
        self.etcdctl_ok(&["user", "add", "root", "--new-user-password=root-password"]);
        self.etcdctl_ok(&["user", "grant-role", "root", "root"]);
        // Many VMs: a few etcdctl at a time.
        for chunk in vms.chunks(8) {
            std::thread::scope(|s| {
                for vm in chunk {
                    s.spawn(move || {
                        // Known by its certificate's common name alone.
                        self.etcdctl_ok(&["user", "add", vm, "--no-password"]);
                        self.etcdctl_ok(&["role", "add", vm]);
                        let grants = grants_key(vm);
                        let status = format!("/vmshare/v1/status/{vm}");
                        self.etcdctl_ok(&["role", "grant-permission", vm, "read", &grants]);
                        self.etcdctl_ok(&["role", "grant-permission", vm, "readwrite", &status]);
                        self.etcdctl_ok(&["user", "grant-role", vm, vm]);
                    });
                }
            });
        }
        self.etcdctl_ok(&["auth", "enable"]);
    }

    /// Puts `value` at `key`, retried until acknowledged; returns the
    /// revision of the write.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let mut revision = None;
        let ok = wait_until(Duration::from_secs(60), || {
            let out = self.etcdctl(&["put", key, value, "-w", "json"]);
            revision = out
                .status
                .success()
                .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
                .flatten()
                .and_then(|v| v["header"]["revision"].as_i64());
            revision.is_some()
        });
        assert!(ok, "etcd never acknowledged the put of {key}");
        revision.unwrap()
    }

    /// A veth pair from the fabric to `host`; returns the fabric side's name.
    pub fn connect(&self, host: &Host) -> String {
        let k = self.links.fetch_add(1, Ordering::SeqCst);
        let (c, d) = (k / 64, (k % 64) * 4);
        let name = format!("vf{k}");
        let ours = format!("10.100.{c}.{}", d + 1);
        let theirs = format!("10.100.{c}.{}", d + 2);
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let holder = host.holder_pid().to_string();
        run(self.in_fabric("ip").args([
            "link", "add", &name, "type", "veth", "peer", "name", "fab0", "netns", &holder,
        ]));
        run(self
            .in_fabric("ip")
            .args(["addr", "add", &format!("{ours}/30"), "dev", &name]));
        run(self.in_fabric("ip").args(["link", "set", &name, "up"]));
        host.run_ok(&["ip", "addr", "add", &format!("{theirs}/30"), "dev", "fab0"]);
        host.run_ok(&["ip", "link", "set", "fab0", "up"]);
        host.run_ok(&["ip", "route", "add", "10.98.0.0/24", "via", &ours]);
        name
    }

    /// Takes link `name` (from [`Fabric::connect`]) down or up: the host is
    /// cut off without any connection being closed.
    pub fn set_link(&self, name: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        let out = self
            .in_fabric("ip")
            .args(["link", "set", name, state])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip link set {name} {state}: {out:?}");
    }

    /// The sync agent's config for `vm`, its files under `etc` (as the
    /// agent sees it) and writing `grants`.
    pub fn agent_config(
        &self,
        vm: &str,
        etc: &str,
        grants: &str,
        run_dir: &str,
        extra: &str,
    ) -> String {
        format!(
            "endpoints = [{}]\nvm_id = \"{vm}\"\ngrants = \"{grants}\"\nrun_dir = \"{run_dir}\"\n{extra}\n\
             [tls]\nca = \"{etc}/ca.pem\"\ncert = \"{etc}/{vm}.pem\"\nkey = \"{etc}/{vm}-key.pem\"\n",
            self.endpoints()
                .split(',')
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Installs vmshare-sync in `host` for `vm` and starts it; its log is
    /// at /run/vmshare-e2e/sync.log inside.
    pub fn start_host_agent(&self, host: &Host, vm: &str, binary: &Path, extra: &str) -> HostAgent {
        host.install_file(binary, "/usr/sbin/vmshare-sync", 0o755);
        host.mkdir("/etc/vmshare/etcd", 0o755);
        let certs = self.certs();
        for (file, mode) in [
            ("ca.pem".to_string(), 0o644),
            (format!("{vm}.pem"), 0o644),
            (format!("{vm}-key.pem"), 0o600),
        ] {
            host.install_file(
                &certs.join(&file),
                &format!("/etc/vmshare/etcd/{file}"),
                mode,
            );
        }
        let config = self.agent_config(
            vm,
            "/etc/vmshare/etcd",
            "/etc/vmshare/grants.toml",
            "/run/vmshare-sync",
            extra,
        );
        host.write_file("/etc/vmshare/sync.toml", &config, 0, 0, 0o600);
        let log = fs::File::create(host.path("/run/vmshare-e2e/sync.log")).unwrap();
        let child = host
            .command(&["/usr/sbin/vmshare-sync", "run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        HostAgent(child)
    }

    /// A sync-only agent for `vm` in the fabric itself, writing
    /// `dir/grants.toml`; returns that path.
    pub fn start_fabric_agent(
        &mut self,
        vm: &str,
        dir: &Path,
        binary: &Path,
        extra: &str,
    ) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        let certs = self.certs();
        let grants = dir.join("grants.toml");
        let config = self.agent_config(
            vm,
            &certs.display().to_string(),
            &grants.display().to_string(),
            &dir.join("run").display().to_string(),
            extra,
        );
        let path = dir.join("sync.toml");
        fs::write(&path, config).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let log = fs::File::create(dir.join("sync.log")).unwrap();
        let child = self
            .in_fabric(&binary.display().to_string())
            .arg("--config")
            .arg(&path)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.push(child);
        grants
    }
}

/// A host's vmshare-sync; killed when dropped (or with its host).
pub struct HostAgent(Child);

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for child in self
            .agents
            .iter_mut()
            .chain(self.members.iter_mut().flatten())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The session group under `root` that has processes in it, if any.
pub fn populated_session_group(root: &Path) -> Option<PathBuf> {
    populated_session_groups(root).into_iter().next()
}

/// Every session group under `root` that has processes.
pub fn populated_session_groups(root: &Path) -> Vec<PathBuf> {
    fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !emptied(p))
        .collect()
}

/// Whether `group` no longer has processes (or is gone).
pub fn emptied(group: &Path) -> bool {
    !fs::read_to_string(group.join("cgroup.events")).is_ok_and(|t| t.contains("populated 1"))
}
