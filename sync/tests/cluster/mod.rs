//! A real 3-member etcd cluster for tests (Debian's `etcd`), with TLS
//! client certificates and RBAC, and the sync agent as a real process.
//!
//! Each cluster listens on its own loopback addresses (127.X.Y.1–3), so
//! tests running at once never race for ports. Certificates come from
//! `openssl`: a CA, one server certificate per member, and one client
//! certificate per etcd user (its common name is the user). Every VM's user
//! has a role that may read only its grants key and read/write only its
//! status key; `root` administers.
//!
//! Dropping a `Cluster` or an `Agent` kills its processes and removes its
//! files, also when the test panics.
// Each test crate uses only part of the harness.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};

#[path = "etcd.rs"]
mod etcd;
#[path = "../../../tests/scratch/mod.rs"]
mod scratch_rule;
pub use etcd::{make_ca, make_cert, member_args, CLIENT_PORT};

pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_vmshare-sync");

/// Polls `check` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch dir whose ancestors are root-owned and not world-writable (the
/// agent refuses a config under /tmp, as the core does), by the core tests'
/// one rule (the build tree, or a fallback when the checkout is under /tmp).
pub fn scratch() -> tempfile::TempDir {
    scratch_rule::trusted_tempdir("vmshare-sync-")
}

use etcd::run;

/// A tokio runtime for the test's own etcd client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A unique 127.X.Y.0 base per cluster in this machine's test runs.
fn loopback_base() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() as usize;
    format!("127.{}.{}", 10 + pid % 240, 1 + (pid / 240 + n * 7) % 250)
}

pub struct Member {
    pub name: String,
    pub ip: String,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub rt: tokio::runtime::Runtime,
    /// The administrator's client (user root, by client certificate).
    pub admin: Client,
}

impl Cluster {
    /// Starts three members, sets up the root user and the given VMs' users
    /// and roles, and enables auth.
    pub fn start(vms: &[&str]) -> Cluster {
        let dir = scratch();
        let base = loopback_base();
        let ips: Vec<String> = (1..=3).map(|i| format!("{base}.{i}")).collect();
        let certs = dir.path().join("certs");
        fs::create_dir_all(&certs).unwrap();
        make_ca(&certs);
        for ip in &ips {
            make_cert(&certs, ip, ip, true);
        }
        make_cert(&certs, "root", "root", false);
        for vm in vms {
            make_cert(&certs, vm, vm, false);
        }
        let members = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Member {
                name: format!("m{}", i + 1),
                ip: ip.clone(),
                child: None,
            })
            .collect();
        let mut members: Vec<Member> = members;
        let initial = initial_cluster(&members);
        for m in &mut members {
            spawn_member(dir.path(), &initial, m);
        }
        let rt = runtime();
        let admin = connect(&rt, &certs, &ips, "root");
        let cluster = Cluster {
            admin,
            dir,
            members,
            rt,
        };
        cluster.wait_healthy();
        cluster.setup_auth(vms);
        cluster
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("https://{}:{CLIENT_PORT}", m.ip))
            .collect()
    }

    /// Restarts member `i` on its data.
    pub fn start_member(&mut self, i: usize) {
        let initial = initial_cluster(&self.members);
        spawn_member(self.dir.path(), &initial, &mut self.members[i]);
    }

    /// `kill -9` of member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client for etcd user `user`, authenticated by its certificate.
    pub fn client(&self, user: &str) -> Client {
        let ips: Vec<String> = self.members.iter().map(|m| m.ip.clone()).collect();
        connect(&self.rt, &self.certs(), &ips, user)
    }

    fn wait_healthy(&self) {
        let mut admin = self.admin.clone();
        let ok = wait_until(Duration::from_secs(60), || {
            self.rt.block_on(admin.get("health", None)).is_ok()
        });
        assert!(
            ok,
            "the etcd cluster did not come up; logs in {:?}",
            self.dir.path()
        );
    }

    fn setup_auth(&self, vms: &[&str]) {
        let mut c = self.admin.clone();
        self.rt.block_on(async {
            c.user_add("root", "root-password", None).await.unwrap();
            c.user_grant_role("root", "root").await.unwrap();
            for vm in vms {
                c.user_add(*vm, format!("{vm}-password"), None)
                    .await
                    .unwrap();
                c.role_add(*vm).await.unwrap();
                let grants = format!("/vmshare/v1/vms/{vm}");
                let status = format!("/vmshare/v1/status/{vm}");
                c.role_grant_permission(*vm, Permission::read(grants))
                    .await
                    .unwrap();
                c.role_grant_permission(*vm, Permission::read_write(status))
                    .await
                    .unwrap();
                c.user_grant_role(*vm, *vm).await.unwrap();
            }
            c.auth_enable().await.unwrap();
        });
    }

    /// Puts `value` at VM `vm`'s grants key, retried until etcd
    /// acknowledges it (a member may be down); returns its revision.
    pub fn put_grants(&self, vm: &str, value: impl Into<Vec<u8>>) -> i64 {
        let value = value.into();
        let c = self.admin.clone();
        let key = format!("/vmshare/v1/vms/{vm}");
        self.acknowledged(
            || {
                let (mut c, key, value) = (c.clone(), key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            },
            |r| r.header().map(|h| h.revision()),
        )
    }

    pub fn delete_grants(&self, vm: &str) -> i64 {
        let c = self.admin.clone();
        let key = format!("/vmshare/v1/vms/{vm}");
        self.acknowledged(
            || {
                let (mut c, key) = (c.clone(), key.clone());
                async move { c.delete(key, None).await }
            },
            |r| r.header().map(|h| h.revision()),
        )
    }

    /// Runs `request` until it succeeds; the revision `revision` reads from
    /// its response.
    fn acknowledged<R, F: std::future::Future<Output = Result<R, etcd_client::Error>>>(
        &self,
        mut request: impl FnMut() -> F,
        revision: impl Fn(&R) -> Option<i64>,
    ) -> i64 {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(60), || {
            match self.rt.block_on(request()) {
                Ok(r) => {
                    last = revision(&r);
                    true
                }
                Err(_) => false,
            }
        });
        assert!(ok, "etcd never acknowledged the write");
        last.unwrap()
    }

    /// The status VM `vm` reported, and the revision it was written at.
    pub fn status(&self, vm: &str) -> Option<(serde_json::Value, i64)> {
        let mut c = self.admin.clone();
        let r = self
            .rt
            .block_on(c.get(format!("/vmshare/v1/status/{vm}"), None))
            .ok()?;
        r.kvs().first().map(|kv| {
            (
                serde_json::from_slice(kv.value()).unwrap(),
                kv.mod_revision(),
            )
        })
    }

    pub fn compact(&self, revision: i64) {
        let mut c = self.admin.clone();
        self.rt.block_on(c.compact(revision, None)).unwrap();
    }
}

fn initial_cluster(members: &[Member]) -> String {
    let pairs: Vec<(&str, &str)> = members
        .iter()
        .map(|m| (m.name.as_str(), m.ip.as_str()))
        .collect();
    etcd::initial_cluster(&pairs)
}

fn connect(rt: &tokio::runtime::Runtime, certs: &Path, ips: &[String], user: &str) -> Client {
    let read = |name: String| fs::read(certs.join(name)).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
        .identity(Identity::from_pem(
            read(format!("{user}.pem")),
            read(format!("{user}-key.pem")),
        ));
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| format!("https://{ip}:{CLIENT_PORT}"))
        .collect();
    rt.block_on(Client::connect(endpoints, Some(options)))
        .unwrap()
}

/// Starts etcd for member `m` (on its data dir under `root`, if any).
fn spawn_member(root: &Path, initial: &str, m: &mut Member) {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join(format!("{}.log", m.name)))
        .unwrap();
    let child = Command::new("etcd")
        .args(member_args(root, initial, &m.name, &m.ip))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    m.child = Some(child);
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

/// A TCP relay the test can cut: the agent's only way to one member, so
/// the test decides when it has contact.
pub struct Relay {
    pub addr: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relays `ip:port+1000` to `ip:port`.
    pub fn start(ip: &str, port: u16) -> Relay {
        let listener = TcpListener::bind((ip, port + 1000)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = format!("{ip}:{}", port + 1000);
        let target = format!("{ip}:{port}");
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, o, s) = (cut.clone(), open.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                // Checked under the lock `cut` takes: no connection slips
                // past a cut.
                let mut list = o.lock().unwrap();
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Relay {
            addr,
            cut,
            open,
            stop,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        let mut open = self.open.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// One vmshare-sync process with its own config, grant file and run dir.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub vm: String,
    child: Option<Child>,
}

impl Agent {
    /// Writes a config for VM `vm` (client certificate from `cluster`) and
    /// starts the agent. `extra` is appended to the config.
    pub fn start(cluster: &Cluster, vm: &str, endpoints: &[String], extra: &str) -> Agent {
        let dir = scratch();
        let certs = cluster.certs();
        let endpoints = endpoints
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "endpoints = [{endpoints}]\nvm_id = \"{vm}\"\ngrants = \"{}\"\nrun_dir = \"{}\"\n{extra}\n\
             [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.path().join("grants.toml").display(),
            dir.path().join("run").display(),
            certs.join("ca.pem").display(),
            certs.join(format!("{vm}.pem")).display(),
            certs.join(format!("{vm}-key.pem")).display(),
        );
        let path = dir.path().join("sync.toml");
        fs::write(&path, config).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let mut agent = Agent {
            dir,
            vm: vm.to_string(),
            child: None,
        };
        agent.spawn();
        agent
    }

    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(AGENT_BIN)
            .arg("--config")
            .arg(self.dir.path().join("sync.toml"))
            .arg("run")
            .env("VMSHARE_SYNC_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running (a crash is a failure).
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn grants_path(&self) -> PathBuf {
        self.dir.path().join("grants.toml")
    }

    pub fn grants(&self) -> Option<String> {
        fs::read_to_string(self.grants_path()).ok()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `vmshare-sync status [--json]`, once the agent has saved a status
    /// (it does so right after its first write of the grant file).
    pub fn status_cmd(&self, json: bool) -> String {
        let saved = self.dir.path().join("run/status.json");
        assert!(
            wait_until(Duration::from_secs(30), || saved.exists()),
            "no status saved; log:\n{}",
            self.log()
        );
        let mut cmd = Command::new(AGENT_BIN);
        cmd.arg("--config")
            .arg(self.dir.path().join("sync.toml"))
            .arg("status");
        if json {
            cmd.arg("--json");
        }
        run(&mut cmd)
    }

    /// Waits for the grant file to hold exactly `text`.
    pub fn wait_grants(&mut self, text: &str) {
        let ok = wait_until(Duration::from_secs(30), || {
            self.grants().as_deref() == Some(text)
        });
        assert!(
            ok,
            "{}: grant file is {:?}, expected {text:?}; log:\n{}",
            self.vm,
            self.grants(),
            self.log()
        );
        assert!(self.alive(), "agent exited; log:\n{}", self.log());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What changes a cluster's history under a connected agent: a restore from
/// a snapshot, an empty cluster in its place, a member replaced.
impl Cluster {
    /// The cluster id and the current revision, as a response header says.
    pub fn header(&self) -> (u64, i64) {
        let mut c = self.admin.clone();
        let mut header = None;
        let ok = wait_until(Duration::from_secs(60), || {
            header = self
                .rt
                .block_on(c.get("health", None))
                .ok()
                .and_then(|r| r.header().map(|h| (h.cluster_id(), h.revision())));
            header.is_some()
        });
        assert!(ok, "etcd did not answer");
        header.unwrap()
    }

    /// `etcdctl` as root against member `i`.
    fn etcdctl(&self, i: usize) -> Command {
        let certs = self.certs();
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints=https://{}:{CLIENT_PORT}",
                self.members[i].ip
            ))
            .arg(format!("--cacert={}", certs.join("ca.pem").display()))
            .arg(format!("--cert={}", certs.join("root.pem").display()))
            .arg(format!("--key={}", certs.join("root-key.pem").display()));
        cmd
    }

    /// `etcdctl snapshot save` from member 0 to `file`.
    pub fn snapshot(&self, file: &Path) {
        run(self.etcdctl(0).arg("snapshot").arg("save").arg(file));
    }

    /// The disaster-recovery procedure: every member stopped, its data
    /// replaced by `etcdctl snapshot restore` of `file` (same names, peer
    /// URLs and cluster token, so the cluster id stays the same), started.
    pub fn restore(&mut self, file: &Path) {
        let initial = initial_cluster(&self.members);
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        for m in &self.members {
            let args = member_args(self.dir.path(), &initial, &m.name, &m.ip);
            let token = args
                .iter()
                .find_map(|a| a.strip_prefix("--initial-cluster-token="))
                .unwrap();
            let data = self.dir.path().join(format!("{}.etcd", m.name));
            fs::remove_dir_all(&data).unwrap();
            run(Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg("snapshot")
                .arg("restore")
                .arg(file)
                .arg(format!("--name={}", m.name))
                .arg(format!("--initial-cluster={initial}"))
                .arg(format!("--initial-cluster-token={token}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://{}:{}",
                    m.ip,
                    etcd::PEER_PORT
                ))
                .arg(format!("--data-dir={}", data.display())));
        }
        for i in 0..self.members.len() {
            self.start_member(i);
        }
        self.wait_healthy();
    }

    /// Every member's data thrown away and a new, empty cluster started on
    /// the same addresses (same names and token: the same cluster id), with
    /// the root user and the given VMs' users and roles again.
    pub fn wipe(&mut self, vms: &[&str]) {
        for i in 0..self.members.len() {
            self.kill_member(i);
            let data = self
                .dir
                .path()
                .join(format!("{}.etcd", self.members[i].name));
            fs::remove_dir_all(&data).unwrap();
        }
        for i in 0..self.members.len() {
            self.start_member(i);
        }
        self.wait_healthy();
        self.setup_auth(vms);
    }

    /// The procedure for a failed member: member `i` removed from the
    /// cluster and its data thrown away, and a new member (a new name and
    /// id, the same address) added and started empty: it catches up from
    /// the others.
    pub fn replace_member(&mut self, i: usize) {
        let mut c = self.admin.clone();
        let name = self.members[i].name.clone();
        let members = self.rt.block_on(c.member_list()).unwrap();
        let id = members
            .members()
            .iter()
            .find(|m| m.name() == name)
            .map(|m| m.id())
            .unwrap();
        // Refused ("unhealthy cluster") until the leader has heard from
        // every member for a while.
        let removed = wait_until(Duration::from_secs(60), || {
            self.rt.block_on(c.member_remove(id)).is_ok()
        });
        assert!(removed, "member {name} was not removed");
        self.kill_member(i);
        fs::remove_dir_all(self.dir.path().join(format!("{name}.etcd"))).unwrap();
        let ip = self.members[i].ip.clone();
        let peer = format!("http://{ip}:{}", etcd::PEER_PORT);
        let added = wait_until(Duration::from_secs(60), || {
            self.rt
                .block_on(c.member_add([peer.as_str()], None))
                .is_ok()
        });
        assert!(added, "no member added at {peer}");
        self.members[i].name = format!("{name}-new");
        let initial = initial_cluster(&self.members);
        let m = &self.members[i];
        let args: Vec<String> = member_args(self.dir.path(), &initial, &m.name, &m.ip)
            .into_iter()
            .map(|a| {
                if a.starts_with("--initial-cluster-state=") {
                    "--initial-cluster-state=existing".into()
                } else {
                    a
                }
            })
            .collect();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .unwrap();
        let child = Command::new("etcd")
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.members[i].child = Some(child);
        // Answering itself, not only through the others.
        let ok = wait_until(Duration::from_secs(60), || {
            self.etcdctl(i)
                .args(["get", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(
            ok,
            "the new member did not come up; logs in {:?}",
            self.dir.path()
        );
    }
}
