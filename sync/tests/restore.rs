//! vmshare-sync when the etcd cluster's history changes under it: restored
//! from an older snapshot, replaced by an empty cluster, compacted past the
//! agent's revision, a member replaced (a real 3-member cluster, the agent a
//! real process). In each the grant file ends up as the latest document, or
//! shares nothing and says so, and no status the agent writes claims a
//! revision the cluster it was written to had not reached.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

mod cluster;

use cluster::{wait_until, Agent, Cluster, Relay, CLIENT_PORT};
use serde_json::Value;
use vmshare::grant::parse;

const VM: &str = "vm-a";
/// A key the agent does not watch: writes to it only move the revision on.
const OTHER: &str = "vm-other";
/// Long enough that strict staleness never decides a test: what the grant
/// file says comes from what the agent read.
const CONFIG: &str = "max_staleness = \"1h\"";
/// A generous bound for anything the agent does (these machines are noisy).
const BOUND: Duration = Duration::from_secs(60);

const BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkW bob@laptop";

/// Owner `daemon` shares with accepted guest bob (`sharing` as given); `note`
/// tells writes of the same grant apart.
fn doc(sharing: bool, note: &str) -> String {
    format!(
        "# {note}\n[owners.daemon]\nsharing = {sharing}\n\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{BOB}\"]\n"
    )
}

/// The grant file for a valid document applied at `revision`.
fn applied(revision: i64, doc: &str) -> String {
    format!("# vmshare-sync: /vmshare/v1/vms/{VM} at revision {revision}\n{doc}")
}

/// The VM's status in etcd, checked to be honest: the agent writes a status
/// after it has read what it reports, so a revision it claims is always
/// below the status's own revision in the cluster that holds it.
fn honest_status(cluster: &Cluster) -> Option<Value> {
    let (status, written_at) = cluster.status(VM)?;
    if let Some(claimed) = status["applied_revision"].as_i64() {
        assert!(
            claimed < written_at,
            "the status claims revision {claimed} but was written at revision {written_at}: {status}"
        );
    }
    Some(status)
}

/// Waits for the grant file to hold exactly `text`, every status seen on the
/// way honest.
fn wait_grants(cluster: &Cluster, agent: &mut Agent, text: &str) {
    let ok = wait_until(BOUND, || {
        honest_status(cluster);
        agent.grants().as_deref() == Some(text)
    });
    assert!(
        ok,
        "grant file is {:?}, expected {text:?}; log:\n{}",
        agent.grants(),
        agent.log()
    );
    assert!(agent.alive(), "agent exited; log:\n{}", agent.log());
}

/// Waits until the status in etcd and `vmshare-sync status --json` both say
/// `state` for the key at `mod_revision` (`None`: the key does not exist),
/// read from this cluster (its id) at a revision it has reached; returns it.
fn wait_status(cluster: &Cluster, agent: &Agent, state: &str, mod_revision: Option<i64>) -> Value {
    let truthful = |s: &Value, cluster_id: u64, now: i64| {
        let applied = s["applied_revision"].as_i64().unwrap_or(0);
        s["outcome"]["state"] == state
            && s["applied_mod_revision"].as_i64() == mod_revision
            && s["cluster_id"].as_str() == Some(cluster_id.to_string().as_str())
            && applied >= mod_revision.unwrap_or(1)
            && applied <= now
    };
    let mut last = None;
    let ok = wait_until(BOUND, || {
        let (cluster_id, now) = cluster.header();
        let local: Value = serde_json::from_str(&agent.status_cmd(true)).unwrap();
        last = honest_status(cluster);
        last.as_ref()
            .is_some_and(|s| truthful(s, cluster_id, now) && truthful(&local, cluster_id, now))
    });
    assert!(
        ok,
        "status in etcd {last:?}, on the VM {}; log:\n{}",
        agent.status_cmd(true),
        agent.log()
    );
    last.unwrap()
}

/// Waits for the grant file and the status to show `doc` at `revision`.
fn wait_applied(cluster: &Cluster, agent: &mut Agent, revision: i64, doc: &str) {
    wait_grants(cluster, agent, &applied(revision, doc));
    wait_status(cluster, agent, "applied", Some(revision));
}

/// The agent follows VM's key, through `endpoints`, and has applied `doc`.
fn synced_agent(cluster: &Cluster, endpoints: &[String], doc: &str) -> Agent {
    let rev = cluster.put_grants(VM, doc);
    let mut agent = Agent::start(cluster, VM, endpoints, CONFIG);
    wait_applied(cluster, &mut agent, rev, doc);
    agent
}

/// A snapshot of the cluster as it is, then `writes` more documents (bob
/// granted) that the agent follows; returns the snapshot's file and the
/// revision the cluster reached.
fn snapshot_then_writes(cluster: &Cluster, agent: &mut Agent, writes: usize) -> (PathBuf, i64) {
    let snapshot = cluster.dir.path().join("snapshot.db");
    cluster.snapshot(&snapshot);
    let mut last = (0, String::new());
    for i in 0..writes {
        let doc = doc(true, &format!("write {i}"));
        last = (cluster.put_grants(VM, doc.as_str()), doc);
    }
    wait_applied(cluster, agent, last.0, &last.1);
    (snapshot, cluster.header().1)
}

fn wait_disconnected(agent: &Agent) {
    let ended = wait_until(BOUND, || agent.log().contains("etcd session ended"));
    assert!(
        ended,
        "the agent did not lose its connection:\n{}",
        agent.log()
    );
}

/// The case: a snapshot while bob is granted, 30 more writes the
/// agent follows, the cluster restored from the snapshot (its revision goes
/// back below the agent's) and a revoke written: the revoke reaches the
/// grant file, and the status never claims the old history's revisions.
#[test]
fn a_restore_from_an_older_snapshot_is_read_again_and_the_revoke_after_it_applied() {
    let mut cluster = Cluster::start(&[VM]);
    let mut agent = synced_agent(&cluster, &cluster.endpoints(), &doc(true, "first"));
    let (snapshot, before) = snapshot_then_writes(&cluster, &mut agent, 30);

    cluster.restore(&snapshot);
    let revoke = cluster.put_grants(VM, doc(false, "revoke"));
    assert!(revoke < before, "restored at {revoke}, was at {before}");
    wait_applied(&cluster, &mut agent, revoke, &doc(false, "revoke"));
}

/// A restore the agent cannot tell by the revision: while it is cut off,
/// the restored cluster takes a revoke and then moves past every revision
/// the agent saw before. A resumed watch would start after the revoke; the
/// agent reads its key again instead.
#[test]
fn a_restored_cluster_past_the_agents_revision_is_read_again_not_resumed() {
    let mut cluster = Cluster::start(&[VM]);
    let relay = Relay::start(&cluster.members[0].ip, CLIENT_PORT);
    let through_relay = [format!("https://{}", relay.addr)];
    let mut agent = synced_agent(&cluster, &through_relay, &doc(true, "first"));
    let (snapshot, before) = snapshot_then_writes(&cluster, &mut agent, 10);

    relay.cut();
    wait_disconnected(&agent);
    cluster.restore(&snapshot);
    let revoke = cluster.put_grants(VM, doc(false, "revoke"));
    let mut now = revoke;
    while now <= before + 5 {
        now = cluster.put_grants(OTHER, "");
    }
    relay.restore();
    wait_grants(
        &cluster,
        &mut agent,
        &applied(revoke, &doc(false, "revoke")),
    );
    let status = wait_status(&cluster, &agent, "applied", Some(revoke));
    assert!(status["applied_revision"].as_i64() >= Some(now), "{status}");
}

/// The cluster replaced by an empty one on the same addresses (same names
/// and token, so even the cluster id is the same; the revision starts over):
/// the VM shares nothing and reports the key missing, then follows the new
/// cluster.
#[test]
fn an_empty_cluster_in_place_of_the_old_one_shares_nothing_and_says_so() {
    let mut cluster = Cluster::start(&[VM]);
    let mut agent = synced_agent(&cluster, &cluster.endpoints(), &doc(true, "first"));
    for i in 0..10 {
        cluster.put_grants(OTHER, format!("{i}"));
    }

    cluster.wipe(&[VM]);
    let ok = wait_until(BOUND, || {
        honest_status(&cluster);
        agent.grants().is_some_and(|t| {
            parse::parse(&t).is_ok_and(|g| g.owners.is_empty()) && t.contains("does not exist")
        })
    });
    assert!(ok, "{:?}; log:\n{}", agent.grants(), agent.log());
    let status = wait_status(&cluster, &agent, "missing", None);
    assert!(status["last_error"].as_str().is_some(), "{status}");
    assert!(
        agent
            .status_cmd(false)
            .contains("no grants key: sharing nothing"),
        "{}",
        agent.status_cmd(false)
    );

    let rev = cluster.put_grants(VM, doc(true, "new cluster"));
    wait_applied(&cluster, &mut agent, rev, &doc(true, "new cluster"));
}

/// History compacted past the agent's revision, while it follows the key
/// (the routine case of auto-compaction: other keys move the revision on)
/// and while it is cut off (the key changed meanwhile): no revoke is lost.
#[test]
fn compaction_past_the_agents_revision_loses_no_revoke() {
    let cluster = Cluster::start(&[VM]);
    let relay = Relay::start(&cluster.members[0].ip, CLIENT_PORT);
    let through_relay = [format!("https://{}", relay.addr)];
    let mut agent = synced_agent(&cluster, &through_relay, &doc(true, "first"));

    let mut now = 0;
    for i in 0..10 {
        now = cluster.put_grants(OTHER, format!("{i}"));
    }
    cluster.compact(now);
    let revoke = cluster.put_grants(VM, doc(false, "revoke"));
    wait_applied(&cluster, &mut agent, revoke, &doc(false, "revoke"));

    relay.cut();
    wait_disconnected(&agent);
    for i in 0..5 {
        cluster.put_grants(VM, doc(i % 2 == 0, &format!("away {i}")));
    }
    let last = cluster.put_grants(VM, doc(false, "last"));
    cluster.compact(last);
    relay.restore();
    wait_applied(&cluster, &mut agent, last, &doc(false, "last"));
}

/// The member the agent talks to is replaced (removed, its data thrown
/// away, a new member on the same address catching up from the others):
/// the agent follows the key through the new member, in the same cluster.
#[test]
fn a_replaced_member_serves_the_agent_the_latest_document() {
    let mut cluster = Cluster::start(&[VM]);
    let only_member_0 = [cluster.endpoints()[0].clone()];
    let mut agent = synced_agent(&cluster, &only_member_0, &doc(true, "first"));
    let (cluster_id, _) = cluster.header();

    cluster.replace_member(0);
    let revoke = cluster.put_grants(VM, doc(false, "revoke"));
    wait_grants(
        &cluster,
        &mut agent,
        &applied(revoke, &doc(false, "revoke")),
    );
    let status = wait_status(&cluster, &agent, "applied", Some(revoke));
    assert_eq!(status["cluster_id"], cluster_id.to_string());
}
