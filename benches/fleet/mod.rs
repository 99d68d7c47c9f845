//! `scripts/bench fleet`: revokes through etcd, timed from the write's
//! acknowledgement to the guest session's cgroup reporting `populated 0`
//! (full VMs) or to the grant file being replaced (the sync-only tier).
//! Parts (`fleet-PART` runs one): `one` VM's revoke, `all` 50 VMs at once,
//! the sync-only `fanout`, a revoke `storm` with the etcd leader killed
//! (`kill -9`) in its middle, and the `cutoff` of one VM from etcd (its
//! veth down) until its guest is out.
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

use inotify::{Inotify, WatchDescriptor, WatchMask};

use crate::harness::fleet::{
    emptied, grants_key, populated_session_group, sync_binary, Fabric, HostAgent, MEMBER_IPS,
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
/// The parts of the bench, in the order they run.
pub const PARTS: [&str; 5] = ["one", "all", "fanout", "storm", "cutoff"];
/// Storm rounds over the whole tier, granting and revoking in turn (the
/// last one revokes); the leader is killed after the first transaction of
/// round [`STORM_KILL_ROUND`].
const STORM_ROUNDS: usize = 8;
const STORM_KILL_ROUND: usize = 3;
/// The issue's bound from acknowledgement to applied in the storm.
const STORM_LIMIT: Duration = Duration::from_secs(10);
/// The cut-off VM's max_staleness (the default, 5 minutes, would make each
/// trial last that long) and its trials.
const CUTOFF_STALENESS: Duration = Duration::from_secs(5);
const CUTOFF_TRIALS: usize = 5;

const WRITER: &str = r#"
import base64, http.client, json, ssl, sys, time
ip, certs = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=certs + "/ca.pem")
ctx.load_cert_chain(certs + "/gateway.pem", certs + "/gateway-key.pem")
conn = http.client.HTTPSConnection(ip, 2379, context=ctx, timeout=30)
def call(path, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    try:
        conn.request("POST", path, json.dumps(body), headers)
        r = conn.getresponse()
        data = r.read()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        return None, "%s: %s" % (path, e)
    if r.status != 200:
        return None, "%s: %d %s" % (path, r.status, data)
    return json.loads(data), None
def authenticate():
    out, err = call("/v3/auth/authenticate", {"name": "root", "password": "root-password"})
    return out["token"] if out else None
token = authenticate()
b64 = lambda s: base64.b64encode(s.encode()).decode()
for line in sys.stdin:
    ops = [{"requestPut": {"key": b64(k), "value": b64(v)}}
           for k, v in json.loads(line)]
    # Puts are idempotent: retried (through a leader election, an expired
    # token) until one is acknowledged.
    deadline = time.monotonic() + 60
    while True:
        out, err = call("/v3/kv/txn", {"success": ops}, token)
        if out:
            break
        if time.monotonic() > deadline:
            raise SystemExit(err)
        time.sleep(0.05)
        token = authenticate() or token
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
    /// A writer through member `ip`.
    fn start(fabric: &Fabric, ip: &str) -> Writer {
        let mut child = fabric
            .in_fabric("python3")
            .args(["-c", WRITER, ip])
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

/// The revision a grant file says it applied, if it is an applied document.
fn applied_revision(vm: &str, text: &str) -> Option<i64> {
    let prefix = format!("# vmshare-sync: {} at revision ", grants_key(vm));
    text.strip_prefix(&prefix)?.split('\n').next()?.parse().ok()
}

struct Vm {
    name: String,
    host: Host,
    bob: Key,
    /// The fabric's side of the VM's veth pair.
    link: String,
    _daemon: Daemon,
    _agent: HostAgent,
}

impl Vm {
    /// A host for `name` with owner alice sharing with bob through etcd,
    /// its agent (config lines `extra`) and daemon running.
    fn start(
        fabric: &Fabric,
        writer: &mut Writer,
        binary: &std::path::Path,
        name: &str,
        extra: &str,
    ) -> Vm {
        let host = Host::start();
        host.add_user("alice");
        let bob = host.keypair("bob");
        let link = fabric.connect(&host);
        let (revision, _) = writer.txn(&[(grants_key(name), doc(&bob.public, true))]);
        let agent = fabric.start_host_agent(&host, name, binary, extra);
        let daemon = host.start_daemon();
        let vm = Vm {
            name: name.to_string(),
            host,
            bob,
            link,
            _daemon: daemon,
            _agent: agent,
        };
        vm.wait_applied(revision);
        // vmshare-sync wrote the grant file; root holds its owner once.
        vm.host.hold("alice");
        vm
    }

    /// Waits until the grant file is at `revision` or later.
    fn wait_applied(&self, revision: i64) {
        let ok = wait_until(Duration::from_secs(60), || {
            self.host
                .read_file(GRANTS)
                .is_ok_and(|t| applied_revision(&self.name, &t).is_some_and(|r| r >= revision))
        });
        assert!(ok, "{}: revision {revision} not applied", self.name);
    }

    fn open_session(&self) -> (LiveSession, PathBuf) {
        let session = LiveSession::open(&self.host, "alice", &self.bob);
        let group = populated_session_group(&self.host.sessions_cgroup()).expect("session cgroup");
        (session, group)
    }
}

pub fn bench_fleet(parts: &[&str]) -> Vec<Row> {
    let part = |p: &str| parts.contains(&p);
    let mut names: Vec<String> = Vec::new();
    let full: Vec<String> = (0..FULL_VMS).map(|i| format!("vm-{i:03}")).collect();
    let tier: Vec<String> = (0..SYNC_ONLY).map(|i| format!("sync-{i:04}")).collect();
    if part("one") || part("all") {
        names.extend(full.iter().cloned());
    }
    if part("fanout") || part("storm") {
        names.extend(tier.iter().cloned());
    }
    if part("cutoff") {
        names.push("vm-cut".into());
    }
    eprintln!("fleet: starting etcd with {} VM users", names.len());
    let mut fabric = Fabric::start(&names);
    // BENCH_SYNC_BINARY: another build of the agent, to compare with.
    let binary =
        std::env::var_os("BENCH_SYNC_BINARY").map_or_else(|| sync_binary(true), PathBuf::from);
    eprintln!("fleet: agent {}", binary.display());
    let mut writer = Writer::start(&fabric, MEMBER_IPS[0]);
    let mut rows = Vec::new();

    if part("one") || part("all") {
        eprintln!("fleet: starting {FULL_VMS} full VMs");
        let vms: Vec<Vm> = full
            .iter()
            .map(|name| Vm::start(&fabric, &mut writer, &binary, name, ""))
            .collect();
        if part("one") {
            rows.extend(one_vm(&vms[0], &mut writer));
        }
        if part("all") {
            rows.push(all_vms(&vms, &mut writer));
        }
    }
    if part("fanout") || part("storm") {
        eprintln!("fleet: starting {SYNC_ONLY} sync-only agents");
        let mut agents = Tier::start(&mut fabric, &tier, &binary);
        if part("fanout") {
            rows.push(fan_out(&mut agents, &mut writer));
        }
        if part("storm") {
            rows.push(storm(&mut agents, &mut fabric));
        }
    }
    if part("cutoff") {
        rows.push(cutoff(&fabric, &mut writer, &binary));
    }
    rows
}

/// One VM's revoke, again and again; interleaved with the baseline, the
/// same revoke written straight to the grant file (no etcd, no agent).
fn one_vm(vm: &Vm, writer: &mut Writer) -> Vec<Row> {
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
    vec![
        row(
            &format!(
                "baseline: grant file written → guest cgroup empty, same VM ({ONE_VM_TRIALS} trials)"
            ),
            direct,
            0.99,
            "(baseline)",
            Duration::MAX,
        ),
        row(
            &format!("etcd ack → guest cgroup empty, one VM ({ONE_VM_TRIALS} trials)"),
            one,
            0.99,
            "p99 ≤ 100 ms",
            Duration::from_millis(100),
        ),
    ]
}

/// Every full VM revoked in one transaction; the slowest VM per trial.
fn all_vms(vms: &[Vm], writer: &mut Writer) -> Row {
    let mut slowest = Vec::new();
    for _ in 0..ALL_VMS_TRIALS {
        let grant: Vec<(String, String)> = vms
            .iter()
            .map(|v| (grants_key(&v.name), doc(&v.bob.public, true)))
            .collect();
        let (revision, _) = writer.txn(&grant);
        let mut open = Vec::new();
        for v in vms {
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
    row(
        &format!("etcd ack → every guest cgroup empty, {FULL_VMS} VMs in one txn, slowest VM ({ALL_VMS_TRIALS} trials)"),
        slowest,
        0.99,
        "p99 ≤ 500 ms",
        Duration::from_millis(500),
    )
}

const BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkW bob@laptop";

/// The sync-only tier: agents in the fabric writing grant files only,
/// watched for the moment each file is replaced.
struct Tier {
    names: Vec<String>,
    files: Vec<PathBuf>,
    inotify: Inotify,
    by_watch: HashMap<WatchDescriptor, usize>,
}

impl Tier {
    fn start(fabric: &mut Fabric, names: &[String], binary: &std::path::Path) -> Tier {
        let base = fabric.dir.path().join("tier");
        let inotify = Inotify::init().unwrap();
        let mut by_watch = HashMap::new();
        let mut files = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let dir = base.join(name);
            let grants = fabric.start_fabric_agent(name, &dir, binary, "");
            let wd = inotify.watches().add(&dir, WatchMask::MOVED_TO).unwrap();
            by_watch.insert(wd, i);
            files.push(grants);
        }
        Tier {
            names: names.to_vec(),
            files,
            inotify,
            by_watch,
        }
    }

    /// Waits up to `wait` for grant files to be replaced; returns, per
    /// replacement seen, the agent, the time and the revision the new file
    /// says it applied (`None`: not an applied document).
    fn replaced(&mut self, wait: Duration) -> Vec<(usize, i128, Option<i64>)> {
        let mut buffer = [0u8; 64 << 10];
        let mut seen = Vec::new();
        let until = monotonic_ns() + wait.as_nanos() as i128;
        while monotonic_ns() < until {
            let events = match self.inotify.read_events(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !seen.is_empty() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => panic!("inotify: {e}"),
            };
            let now = monotonic_ns();
            for e in events {
                if e.name.is_some_and(|n| n == "grants.toml") {
                    if let Some(&i) = self.by_watch.get(&e.wd) {
                        let text = fs::read_to_string(&self.files[i]).unwrap_or_default();
                        seen.push((i, now, applied_revision(&self.names[i], &text)));
                    }
                }
            }
        }
        seen
    }

    /// Runs `write` on a thread of its own while recording the grant files
    /// replaced meanwhile as they are (each is stamped when it is seen, so
    /// the reading must not wait for the writing); returns what `write`
    /// returned and the replacements.
    fn while_writing<W: Send>(
        &mut self,
        write: impl FnOnce() -> W + Send,
    ) -> (W, Vec<(usize, i128, Option<i64>)>) {
        std::thread::scope(|s| {
            let writing = s.spawn(write);
            let mut seen = Vec::new();
            while !writing.is_finished() {
                seen.extend(self.replaced(Duration::from_millis(100)));
            }
            (writing.join().unwrap(), seen)
        })
    }
}

/// `sharing` for every agent named, in transactions of [`TXN_OPS`]: per
/// write (agent, revision, acknowledgement).
fn write_all(names: &[String], writer: &mut Writer, sharing: bool) -> Vec<(usize, i64, i128)> {
    let mut writes = Vec::new();
    for (c, chunk) in names.chunks(TXN_OPS).enumerate() {
        let puts: Vec<(String, String)> = chunk
            .iter()
            .map(|n| (grants_key(n), doc(BOB, sharing)))
            .collect();
        let (revision, ack) = writer.txn(&puts);
        let first = c * TXN_OPS;
        writes.extend((first..first + chunk.len()).map(|i| (i, revision, ack)));
    }
    writes
}

/// For every agent's write (revision, ack): the first time its grant file
/// was seen at that revision or later, measured from the ack.
fn applied_after(
    writes: &[(usize, i64, i128)],
    seen: &[(usize, i128, Option<i64>)],
) -> Vec<Option<Duration>> {
    writes
        .iter()
        .map(|&(agent, revision, ack)| {
            seen.iter()
                .find(|&&(i, _, r)| i == agent && r.is_some_and(|r| r >= revision))
                .map(|&(_, at, _)| since(ack, at))
        })
        .collect()
}

/// Every agent revoked, in transactions of [`TXN_OPS`].
fn fan_out(tier: &mut Tier, writer: &mut Writer) -> Row {
    let mut fan_out = Vec::new();
    for trial in 0..=FAN_OUT_TRIALS {
        // Trial 0 only brings every agent to a granted document.
        let names = tier.names.clone();
        let (writes, mut seen) = tier.while_writing(|| write_all(&names, writer, trial % 2 == 0));
        let until = monotonic_ns() + 120_000_000_000;
        loop {
            seen.extend(tier.replaced(Duration::from_secs(1)));
            let applied = applied_after(&writes, &seen);
            if applied.iter().all(Option::is_some) {
                if trial > 0 {
                    fan_out.extend(applied.into_iter().flatten());
                }
                break;
            }
            assert!(monotonic_ns() < until, "fan-out not complete within 120 s");
        }
    }
    row(
        &format!("etcd ack → grant file replaced, {SYNC_ONLY} sync-only agents, {} txns of {TXN_OPS} ({FAN_OUT_TRIALS} trials)", SYNC_ONLY.div_ceil(TXN_OPS)),
        fan_out,
        0.99,
        "p99 ≤ 500 ms",
        Duration::from_millis(500),
    )
}

/// Rounds of grants and revokes over the whole tier, written as fast as
/// etcd acknowledges them, the leader killed with SIGKILL in the middle:
/// for every revoke, from its acknowledgement to the agent's grant file at
/// that revision or later; a revoke never applied is lost.
fn storm(tier: &mut Tier, fabric: &mut Fabric) -> Row {
    let leader = fabric.leader();
    // The writer goes through a member that survives.
    let mut writer = Writer::start(fabric, MEMBER_IPS[(leader + 1) % MEMBER_IPS.len()]);
    eprintln!(
        "fleet: revoke storm, killing member {} (the leader) in round {STORM_KILL_ROUND}",
        leader + 1
    );
    let names = tier.names.clone();
    let killer = &mut *fabric;
    let (revokes, seen) = tier.while_writing(move || {
        let (first, rest) = names.split_at(TXN_OPS.min(names.len()));
        let mut revokes = Vec::new();
        for round in 0..STORM_ROUNDS {
            let revoking = round % 2 == 1;
            // The first transaction, then the rest (the leader killed
            // between them in STORM_KILL_ROUND).
            let mut writes = write_all(first, &mut writer, !revoking);
            if round == STORM_KILL_ROUND {
                killer.kill_member(leader);
            }
            writes.extend(
                write_all(rest, &mut writer, !revoking)
                    .into_iter()
                    .map(|(i, r, t)| (i + first.len(), r, t)),
            );
            if revoking {
                revokes.extend(writes);
            }
        }
        revokes
    });
    // Then until every agent has its last revoke, or a minute.
    let last: Vec<(usize, i64, i128)> = revokes[revokes.len() - tier.names.len()..].to_vec();
    let mut seen = seen;
    let until = monotonic_ns() + 60_000_000_000;
    while monotonic_ns() < until && applied_after(&last, &seen).iter().any(Option::is_none) {
        seen.extend(tier.replaced(Duration::from_secs(1)));
    }
    fabric.start_member(leader);
    let applied = applied_after(&revokes, &seen);
    let lost = applied.iter().filter(|a| a.is_none()).count();
    // The files as they are now: every agent's last revoke in place.
    let wrong = tier
        .names
        .iter()
        .zip(&tier.files)
        .zip(&last)
        .filter(|((name, file), &(_, revision, _))| {
            fs::read_to_string(file).map_or(true, |t| {
                applied_revision(name, &t) != Some(revision) || !t.contains("sharing = false")
            })
        })
        .count();
    let times: Vec<Duration> = applied.into_iter().flatten().collect();
    let max = times.iter().max().copied().unwrap_or(Duration::MAX);
    let mut r = row(
        &format!(
            "leader kill -9 mid-storm: etcd ack → grant file at that revision, {SYNC_ONLY} agents × {} revokes ({STORM_ROUNDS} rounds of {} txns)",
            STORM_ROUNDS / 2,
            SYNC_ONLY.div_ceil(TXN_OPS)
        ),
        times,
        0.99,
        "all ≤ 10 s, 0 lost",
        Duration::MAX,
    );
    r.measured = format!(
        "{}; lost {lost} of {}; not at the last revoke now: {wrong}",
        r.measured,
        revokes.len()
    );
    r.met = lost == 0 && wrong == 0 && max <= STORM_LIMIT;
    r
}

/// One full VM cut off from etcd (its veth down, no connection closed):
/// from the cut to its guest's cgroup empty, against max_staleness + 1 s.
fn cutoff(fabric: &Fabric, writer: &mut Writer, binary: &std::path::Path) -> Row {
    let extra = format!("max_staleness = \"{}s\"", CUTOFF_STALENESS.as_secs());
    let vm = Vm::start(fabric, writer, binary, "vm-cut", &extra);
    let (revision, _) = writer.txn(&[(grants_key(&vm.name), doc(&vm.bob.public, true))]);
    let mut out = Vec::new();
    for _ in 0..CUTOFF_TRIALS {
        vm.wait_applied(revision);
        let (mut session, group) = vm.open_session();
        let cut = monotonic_ns();
        fabric.set_link(&vm.link, false);
        while !emptied(&group) {
            std::thread::sleep(Duration::from_millis(1));
        }
        out.push(since(cut, monotonic_ns()));
        assert!(session.wait_gone(Duration::from_secs(10)).is_some());
        fabric.set_link(&vm.link, true);
    }
    let limit = CUTOFF_STALENESS + Duration::from_secs(1);
    let (min, p50, max) = (
        percentile(out.clone(), 0.0),
        percentile(out.clone(), 0.5),
        percentile(out, 1.0),
    );
    Row {
        figure: format!(
            "veth down → guest cgroup empty, max_staleness {} s ({CUTOFF_TRIALS} trials)",
            CUTOFF_STALENESS.as_secs()
        ),
        measured: format!("min {min:.1?}, p50 {p50:.1?}, max {max:.1?}"),
        goal: format!("all ≤ max_staleness + 1 s = {} s", limit.as_secs()),
        met: max <= limit,
    }
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
