//! `scripts/bench fleet`: revokes through etcd, timed from the write's
//! acknowledgement to the guest session's cgroup reporting `populated 0`
//! (full VMs) or to the grant file being replaced (the sync-only tier).
//!
//! The writer is one long-lived HTTPS connection to etcd's JSON gateway
//! (python3, in the fabric namespace) that stamps CLOCK_MONOTONIC the moment
//! each acknowledgement arrives, so no process start or TLS handshake is
//! counted. Full VMs are hosts as in the end-to-end tests; the sync-only
//! tier runs agents in the fabric, each writing its own grant file.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::Duration;

use inotify::{Inotify, WatchMask};

use crate::harness::fleet::{
    emptied, grants_key, populated_session_group, sync_binary, Fabric, HostAgent,
};
use crate::harness::{wait_until, Daemon, Host, Key, LiveSession, GRANTS};
use crate::{percentile, Row};

const FULL_VMS: usize = 50;
const SYNC_ONLY: usize = 1000;
const ONE_VM_TRIALS: usize = 100;
const ALL_VMS_TRIALS: usize = 10;
const FAN_OUT_TRIALS: usize = 3;
/// etcd's default limit of operations in one transaction is 128.
const TXN_OPS: usize = 100;

const WRITER: &str = r#"
import base64, http.client, json, ssl, sys, time
ip, certs = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=certs + "/ca.pem")
ctx.load_cert_chain(certs + "/gateway.pem", certs + "/gateway-key.pem")
conn = http.client.HTTPSConnection(ip, 2379, context=ctx)
def call(path, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    conn.request("POST", path, json.dumps(body), headers)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise SystemExit("%s: %d %s" % (path, r.status, data))
    return json.loads(data)
token = call("/v3/auth/authenticate", {"name": "root", "password": "root-password"})["token"]
b64 = lambda s: base64.b64encode(s.encode()).decode()
for line in sys.stdin:
    ops = [{"requestPut": {"key": b64(k), "value": b64(v)}}
           for k, v in json.loads(line)]
    out = call("/v3/kv/txn", {"success": ops}, token)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    print(out["header"]["revision"], now, flush=True)
"#;

/// Writes to etcd in transactions; each returns its revision and the
/// CLOCK_MONOTONIC time its acknowledgement arrived.
struct Writer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Writer {
    fn start(fabric: &Fabric) -> Writer {
        let mut child = fabric
            .in_fabric("python3")
            .args(["-c", WRITER, crate::harness::fleet::MEMBER_IPS[0]])
            .arg(fabric.certs())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Writer {
            child,
            stdin,
            stdout,
        }
    }

    fn txn(&mut self, puts: &[(String, String)]) -> (i64, i128) {
        let line = serde_json::to_string(puts).unwrap();
        writeln!(self.stdin, "{line}").unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        let mut words = answer.split_whitespace();
        let revision = words.next().and_then(|w| w.parse().ok());
        let at = words.next().and_then(|w| w.parse().ok());
        match (revision, at) {
            (Some(r), Some(t)) => (r, t),
            _ => panic!("the etcd writer failed: {answer:?}"),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn monotonic_ns() -> i128 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
}

fn since(ack: i128, at: i128) -> Duration {
    Duration::from_nanos((at - ack).max(0) as u64)
}

fn doc(bob: &str, sharing: bool) -> String {
    format!(
        "[owners.alice]\nsharing = {sharing}\n\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{bob}\"]\n"
    )
}

fn applied_header(vm: &str, revision: i64) -> String {
    format!("# vmshare-sync: {} at revision ", grants_key(vm)) + &revision.to_string() + "\n"
}

struct Vm {
    name: String,
    host: Host,
    bob: Key,
    _daemon: Daemon,
    _agent: HostAgent,
}

impl Vm {
    /// Waits until the grant file is at `revision` or later.
    fn wait_applied(&self, revision: i64) {
        let prefix = format!("# vmshare-sync: {} at revision ", grants_key(&self.name));
        let ok = wait_until(Duration::from_secs(60), || {
            self.host.read_file(GRANTS).is_ok_and(|t| {
                t.strip_prefix(&prefix)
                    .and_then(|r| r.split('\n').next())
                    .and_then(|r| r.parse::<i64>().ok())
                    .is_some_and(|r| r >= revision)
            })
        });
        assert!(ok, "{}: revision {revision} not applied", self.name);
    }

    fn open_session(&self) -> (LiveSession, PathBuf) {
        let session = LiveSession::open(&self.host, "alice", &self.bob);
        let group = populated_session_group(&self.host.sessions_cgroup()).expect("session cgroup");
        (session, group)
    }
}

pub fn bench_fleet() -> Vec<Row> {
    let full: Vec<String> = (0..FULL_VMS).map(|i| format!("vm-{i:03}")).collect();
    let tier: Vec<String> = (0..SYNC_ONLY).map(|i| format!("sync-{i:04}")).collect();
    let all: Vec<String> = full.iter().chain(&tier).cloned().collect();
    eprintln!("fleet: starting etcd with {} VM users", all.len());
    let mut fabric = Fabric::start(&all);
    let binary = sync_binary(true);
    let mut writer = Writer::start(&fabric);

    eprintln!("fleet: starting {FULL_VMS} full VMs");
    let vms: Vec<Vm> = full
        .iter()
        .map(|name| {
            let host = Host::start();
            host.add_user("alice");
            let bob = host.keypair("bob");
            fabric.connect(&host);
            let (revision, _) = writer.txn(&[(grants_key(name), doc(&bob.public, true))]);
            let agent = fabric.start_host_agent(&host, name, &binary, "");
            let daemon = host.start_daemon();
            let vm = Vm {
                name: name.clone(),
                host,
                bob,
                _daemon: daemon,
                _agent: agent,
            };
            vm.wait_applied(revision);
            vm
        })
        .collect();

    let mut rows = Vec::new();

    // One VM's revoke, again and again; interleaved with the baseline, the
    // same revoke written straight to the grant file (no etcd, no agent).
    let vm = &vms[0];
    let mut one = Vec::new();
    let mut direct = Vec::new();
    for trial in 0..2 * ONE_VM_TRIALS {
        let (revision, _) = writer.txn(&[(grants_key(&vm.name), doc(&vm.bob.public, true))]);
        vm.wait_applied(revision);
        let (mut session, group) = vm.open_session();
        if trial % 2 == 0 {
            let (_, ack) = writer.txn(&[(grants_key(&vm.name), doc(&vm.bob.public, false))]);
            while !emptied(&group) {}
            one.push(since(ack, monotonic_ns()));
        } else {
            let started = monotonic_ns();
            vm.host.write_grants(&doc(&vm.bob.public, false));
            while !emptied(&group) {}
            direct.push(since(started, monotonic_ns()));
        }
        assert!(session.wait_gone(Duration::from_secs(10)).is_some());
    }
    rows.push(row(
        &format!(
            "baseline: grant file written → guest cgroup empty, same VM ({ONE_VM_TRIALS} trials)"
        ),
        direct,
        0.99,
        "(baseline)",
        Duration::MAX,
    ));
    rows.push(row(
        &format!("etcd ack → guest cgroup empty, one VM ({ONE_VM_TRIALS} trials)"),
        one,
        0.99,
        "p99 ≤ 100 ms",
        Duration::from_millis(100),
    ));

    // Every full VM revoked in one transaction; the slowest VM per trial.
    let mut slowest = Vec::new();
    for _ in 0..ALL_VMS_TRIALS {
        let grant: Vec<(String, String)> = vms
            .iter()
            .map(|v| (grants_key(&v.name), doc(&v.bob.public, true)))
            .collect();
        let (revision, _) = writer.txn(&grant);
        let mut open = Vec::new();
        for v in &vms {
            v.wait_applied(revision);
            open.push(v.open_session());
        }
        let revoke: Vec<(String, String)> = vms
            .iter()
            .map(|v| (grants_key(&v.name), doc(&v.bob.public, false)))
            .collect();
        let (_, ack) = writer.txn(&revoke);
        let mut done: Vec<Option<i128>> = vec![None; open.len()];
        while done.iter().any(Option::is_none) {
            for (i, (_, group)) in open.iter().enumerate() {
                if done[i].is_none() && emptied(group) {
                    done[i] = Some(monotonic_ns());
                }
            }
        }
        let worst = done.iter().flatten().max().copied().unwrap_or(ack);
        slowest.push(since(ack, worst));
        for (mut session, _) in open {
            assert!(session.wait_gone(Duration::from_secs(10)).is_some());
        }
    }
    rows.push(row(
        &format!("etcd ack → every guest cgroup empty, {FULL_VMS} VMs in one txn, slowest VM ({ALL_VMS_TRIALS} trials)"),
        slowest,
        0.99,
        "p99 ≤ 500 ms",
        Duration::from_millis(500),
    ));
    drop(vms);

    // The sync-only tier: grant files only.
    eprintln!("fleet: starting {SYNC_ONLY} sync-only agents");
    let base = fabric.dir.path().join("tier");
    let mut inotify = Inotify::init().unwrap();
    let mut by_watch = HashMap::new();
    let mut files = Vec::new();
    for (i, name) in tier.iter().enumerate() {
        let dir = base.join(name);
        let grants = fabric.start_fabric_agent(name, &dir, &binary, "");
        let wd = inotify.watches().add(&dir, WatchMask::MOVED_TO).unwrap();
        by_watch.insert(wd, i);
        files.push(grants);
    }
    let bob = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkW bob@laptop";
    let mut fan_out = Vec::new();
    for trial in 0..=FAN_OUT_TRIALS {
        // Trial 0 only brings every agent to a granted document.
        let sharing = trial % 2 == 0;
        let mut acks = Vec::new();
        for chunk in tier.chunks(TXN_OPS) {
            let puts: Vec<(String, String)> = chunk
                .iter()
                .map(|n| (grants_key(n), doc(bob, sharing)))
                .collect();
            acks.push(writer.txn(&puts));
        }
        let mut done: Vec<Option<i128>> = vec![None; tier.len()];
        let mut buffer = [0u8; 64 << 10];
        let deadline = monotonic_ns() + 120_000_000_000;
        while done.iter().any(Option::is_none) {
            assert!(
                monotonic_ns() < deadline,
                "fan-out not complete within 120 s"
            );
            let events = inotify.read_events_blocking(&mut buffer).unwrap();
            let now = monotonic_ns();
            for e in events {
                if e.name.is_some_and(|n| n == "grants.toml") {
                    if let Some(&i) = by_watch.get(&e.wd) {
                        let (revision, _) = acks[i / TXN_OPS];
                        let current = fs::read_to_string(&files[i]).unwrap_or_default();
                        if done[i].is_none()
                            && current.starts_with(&applied_header(&tier[i], revision))
                        {
                            done[i] = Some(now);
                        }
                    }
                }
            }
        }
        if trial > 0 {
            for (i, at) in done.iter().enumerate() {
                fan_out.push(since(acks[i / TXN_OPS].1, at.unwrap_or(0)));
            }
        }
    }
    rows.push(row(
        &format!("etcd ack → grant file replaced, {SYNC_ONLY} sync-only agents, {} txns of {TXN_OPS} ({FAN_OUT_TRIALS} trials)", SYNC_ONLY.div_ceil(TXN_OPS)),
        fan_out,
        0.99,
        "p99 ≤ 500 ms",
        Duration::from_millis(500),
    ));
    rows
}

fn row(figure: &str, times: Vec<Duration>, p: f64, goal: &str, limit: Duration) -> Row {
    let p50 = percentile(times.clone(), 0.5);
    let pp = percentile(times.clone(), p);
    let max = percentile(times, 1.0);
    Row {
        figure: figure.into(),
        measured: format!("p50 {p50:.1?}, p99 {pp:.1?}, max {max:.1?}"),
        goal: goal.into(),
        met: pp <= limit,
    }
}
