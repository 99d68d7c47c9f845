//! vmshare-sync against a real 3-member etcd cluster (TLS client
//! certificates, RBAC), the agent a real process writing a grant file in a
//! scratch dir: what the store says is what the grant file says, bad input
//! shares nothing, contact lost shares nothing (strict), faults lose nothing.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

#[path = "../../tests/catalogue/mod.rs"]
mod catalogue;
mod cluster;

use cluster::{wait_until, Agent, Cluster, Relay, CLIENT_PORT};
use vmshare::grant::model::MAX_GRANT_FILE_BYTES;
use vmshare::grant::parse;
use vmshare::store::source::{self, GrantFileState};
use vmshare::sys::accounts::SystemAccounts;

const BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkW bob@laptop";

/// Owner `daemon` shares with accepted guest bob (`sharing` as given).
fn doc(sharing: bool) -> String {
    format!(
        "[owners.daemon]\nsharing = {sharing}\n\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{BOB}\"]\n"
    )
}

/// The grant file for a valid document applied at `revision`.
fn applied(vm: &str, revision: i64, doc: &str) -> String {
    format!("# vmshare-sync: /vmshare/v1/vms/{vm} at revision {revision}\n{doc}")
}

/// Whether bob may log in as daemon by this grant file (as the core reads it).
fn bob_has_access(text: &str) -> bool {
    parse::parse(text).is_ok_and(|g| {
        g.owner("daemon")
            .is_some_and(|o| o.guest("bob").is_some_and(|b| b.has_access(o.sharing)))
    })
}

/// A grant file the core reads as valid and sharing nothing.
fn shares_nothing(text: &str) -> bool {
    parse::parse(text).is_ok_and(|g| g.owners.is_empty())
}

/// Waits until the agent's grant file shares nothing and mentions `why`.
fn wait_shares_nothing(agent: &mut Agent, why: &str) -> String {
    let ok = wait_until(Duration::from_secs(30), || {
        agent
            .grants()
            .is_some_and(|t| shares_nothing(&t) && t.contains(why))
    });
    assert!(ok, "{:?}; log:\n{}", agent.grants(), agent.log());
    assert!(agent.alive(), "agent exited; log:\n{}", agent.log());
    agent.grants().unwrap()
}

#[test]
fn rbac_lets_a_vm_read_only_its_own_grants_and_write_only_its_own_status() {
    let cluster = Cluster::start(&["vm-a", "vm-b"]);
    cluster.put_grants("vm-a", doc(true));
    cluster.put_grants("vm-b", doc(true));
    let mut a = cluster.client("vm-a");
    cluster.rt.block_on(async {
        let own = a.get("/vmshare/v1/vms/vm-a", None).await.unwrap();
        assert_eq!(own.kvs()[0].value(), doc(true).as_bytes());
        let other = a.get("/vmshare/v1/vms/vm-b", None).await.unwrap_err();
        assert!(other.to_string().contains("permission denied"), "{other}");
        let all = a
            .get(
                "/vmshare/v1/vms/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap_err();
        assert!(all.to_string().contains("permission denied"), "{all}");
        let write_own = a.put("/vmshare/v1/vms/vm-a", "", None).await.unwrap_err();
        assert!(
            write_own.to_string().contains("permission denied"),
            "{write_own}"
        );
        a.put("/vmshare/v1/status/vm-a", "{}", None).await.unwrap();
        let status_b = a
            .put("/vmshare/v1/status/vm-b", "{}", None)
            .await
            .unwrap_err();
        assert!(
            status_b.to_string().contains("permission denied"),
            "{status_b}"
        );
    });
}

#[test]
fn the_grant_file_follows_the_store_and_bad_input_shares_nothing() {
    let cluster = Cluster::start(&["vm-a"]);
    let rev = cluster.put_grants("vm-a", doc(true));
    let mut agent = Agent::start(&cluster, "vm-a", &cluster.endpoints(), "");
    agent.wait_grants(&applied("vm-a", rev, &doc(true)));
    assert!(bob_has_access(&agent.grants().unwrap()));
    let meta = std::fs::metadata(agent.grants_path()).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));

    // Revoke: sharing off.
    let rev = cluster.put_grants("vm-a", doc(false));
    agent.wait_grants(&applied("vm-a", rev, &doc(false)));
    assert!(!bob_has_access(&agent.grants().unwrap()));

    // Status: in etcd and from `vmshare-sync status`, the same.
    let ok = wait_until(Duration::from_secs(30), || {
        cluster
            .status("vm-a")
            .is_some_and(|(s, _)| s["applied_revision"].as_i64() >= Some(rev))
    });
    assert!(ok, "{:?}", cluster.status("vm-a"));
    let (status, _) = cluster.status("vm-a").unwrap();
    assert_eq!(status["outcome"]["state"], "applied");
    assert!(status["last_contact"].as_i64().is_some());
    assert!(status["last_error"].is_null());
    // The applied revision covers the revoke (it may be later: the agent's
    // own status writes are revisions too).
    let printed = agent.status_cmd(false);
    let shown: i64 = printed
        .lines()
        .find_map(|l| l.strip_prefix("applied revision: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(shown >= rev, "{printed}");
    assert!(printed.contains("state:            applied\n"), "{printed}");

    // Invalid TOML: shares nothing, says where, reported.
    cluster.put_grants("vm-a", doc(true));
    let rev = cluster.put_grants("vm-a", "[owners.daemon\nsharing = true\n");
    let text = wait_shares_nothing(&mut agent, &format!("at revision {rev} is invalid"));
    assert!(text.contains("line 1, column"), "{text}");
    let ok = wait_until(Duration::from_secs(30), || {
        cluster.status("vm-a").is_some_and(|(s, _)| {
            s["outcome"]["state"] == "invalid" && s["last_error"].as_str().is_some()
        })
    });
    assert!(ok, "{:?}", cluster.status("vm-a"));

    // Hostile documents: see the next test. Bytes that are not UTF-8.
    let rev = cluster.put_grants("vm-a", b"\xff\xfe[owners]".to_vec());
    wait_shares_nothing(&mut agent, &format!("at revision {rev} is invalid"));

    // A value over the core's size limit.
    let rev = cluster.put_grants("vm-a", "#".repeat(MAX_GRANT_FILE_BYTES + 1));
    let text = wait_shares_nothing(&mut agent, &format!("at revision {rev} is invalid"));
    assert!(text.len() < 4096);

    // Back to valid, then the key deleted: a missing grants key.
    let rev = cluster.put_grants("vm-a", doc(true));
    agent.wait_grants(&applied("vm-a", rev, &doc(true)));
    let rev = cluster.delete_grants("vm-a");
    wait_shares_nothing(&mut agent, &format!("does not exist (revision {rev})"));
    // The status follows the grant file.
    let ok = wait_until(Duration::from_secs(30), || {
        agent
            .status_cmd(false)
            .contains("no grants key: sharing nothing")
    });
    assert!(ok, "{}", agent.status_cmd(false));
    assert!(agent.alive());
}

#[test]
fn compaction_past_the_agents_revision_is_caught_up_by_reading_again() {
    let cluster = Cluster::start(&["vm-a"]);
    let relay = Relay::start(&cluster.members[0].ip, CLIENT_PORT);
    let rev = cluster.put_grants("vm-a", doc(true));
    let mut agent = Agent::start(&cluster, "vm-a", &[format!("https://{}", relay.addr)], "");
    agent.wait_grants(&applied("vm-a", rev, &doc(true)));

    // The agent is cut off; meanwhile the key changes and history is
    // compacted past everything the agent has seen.
    relay.cut();
    assert!(wait_until(Duration::from_secs(30), || agent
        .log()
        .contains("etcd session ended")));
    let mut last = 0;
    for i in 0..5 {
        last = cluster.put_grants("vm-a", doc(i % 2 == 0));
    }
    let last = cluster.put_grants("vm-a", doc(false)).max(last);
    cluster.compact(last);
    relay.restore();
    agent.wait_grants(&applied("vm-a", last, &doc(false)));
}

#[test]
fn a_restarted_cluster_with_the_same_data_is_resumed_without_rewriting() {
    let mut cluster = Cluster::start(&["vm-a"]);
    let rev = cluster.put_grants("vm-a", doc(true));
    let mut agent = Agent::start(&cluster, "vm-a", &cluster.endpoints(), "");
    agent.wait_grants(&applied("vm-a", rev, &doc(true)));
    // A second name for the grant file: a rewrite would replace it.
    let held = agent.dir.path().join("held");
    std::fs::hard_link(agent.grants_path(), &held).unwrap();
    let reported = |c: &Cluster| c.status("vm-a").map_or(0, |(_, r)| r);
    assert!(wait_until(Duration::from_secs(30), || reported(&cluster) > 0));
    let before = reported(&cluster);

    for i in 0..3 {
        cluster.kill_member(i);
    }
    assert!(wait_until(Duration::from_secs(30), || agent
        .log()
        .contains("etcd session ended")));
    for i in 0..3 {
        cluster.start_member(i);
    }
    // The agent reports again once it is back in contact.
    let ok = wait_until(Duration::from_secs(60), || reported(&cluster) > before);
    assert!(ok, "no status after the restart; log:\n{}", agent.log());
    assert_eq!(std::fs::metadata(agent.grants_path()).unwrap().nlink(), 2);
    assert_eq!(agent.grants().unwrap(), applied("vm-a", rev, &doc(true)));

    // And it follows the key again.
    let rev = cluster.put_grants("vm-a", doc(false));
    agent.wait_grants(&applied("vm-a", rev, &doc(false)));
}

#[test]
fn strict_mode_shares_nothing_without_contact_and_recovers() {
    let cluster = Cluster::start(&["vm-a"]);
    let relay = Relay::start(&cluster.members[0].ip, CLIENT_PORT);
    let endpoint = [format!("https://{}", relay.addr)];
    let rev = cluster.put_grants("vm-a", doc(true));

    // First boot without contact: nothing shared, even long before
    // max_staleness.
    relay.cut();
    let mut agent = Agent::start(&cluster, "vm-a", &endpoint, "max_staleness = \"1h\"");
    wait_shares_nothing(&mut agent, "no contact with etcd yet on this boot");
    relay.restore();
    agent.wait_grants(&applied("vm-a", rev, &doc(true)));
    agent.stop();

    // Running with contact, then cut off: nothing shared once
    // max_staleness passes; the current document again once contact
    // returns (a change made meanwhile included).
    let mut agent = Agent::start(&cluster, "vm-a", &endpoint, "max_staleness = \"2s\"");
    agent.wait_grants(&applied("vm-a", rev, &doc(true)));
    relay.cut();
    wait_shares_nothing(&mut agent, "no confirmed contact with etcd since");
    let ok = wait_until(Duration::from_secs(30), || {
        agent
            .status_cmd(false)
            .contains("no contact: sharing nothing")
    });
    assert!(ok, "{}", agent.status_cmd(false));
    let rev = cluster.put_grants("vm-a", doc(true).replace("bob@laptop", "bob@desk"));
    relay.restore();
    agent.wait_grants(&applied(
        "vm-a",
        rev,
        &doc(true).replace("bob@laptop", "bob@desk"),
    ));
}

#[test]
fn best_effort_keeps_the_last_document_without_contact() {
    let cluster = Cluster::start(&["vm-a"]);
    let relay = Relay::start(&cluster.members[0].ip, CLIENT_PORT);
    let rev = cluster.put_grants("vm-a", doc(true));
    let mut agent = Agent::start(
        &cluster,
        "vm-a",
        &[format!("https://{}", relay.addr)],
        "max_staleness = \"1s\"\nmode = \"best_effort\"",
    );
    let text = applied("vm-a", rev, &doc(true));
    agent.wait_grants(&text);
    relay.cut();
    // Well past max_staleness by the agent's own account: its last contact
    // is older than three times max_staleness.
    let ok = wait_until(Duration::from_secs(60), || {
        let status: serde_json::Value = serde_json::from_str(&agent.status_cmd(true)).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        status["last_contact"].as_i64().is_some_and(|t| now - t > 3)
            && status["last_error"].as_str().is_some()
    });
    assert!(ok, "{}", agent.status_cmd(false));
    assert_eq!(agent.grants().unwrap(), text);
    assert!(bob_has_access(&text));
}

#[test]
fn a_leader_killed_during_a_revoke_storm_loses_no_revoke() {
    const VMS: usize = 8;
    let names: Vec<String> = (0..VMS).map(|i| format!("vm-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start(&refs);
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|vm| {
            let rev = cluster.put_grants(vm, doc(true));
            let mut a = Agent::start(&cluster, vm, &cluster.endpoints(), "");
            a.wait_grants(&applied(vm, rev, &doc(true)));
            a
        })
        .collect();

    let leader = {
        let mut c = cluster.admin.clone();
        let status = cluster.rt.block_on(c.status()).unwrap();
        let leader_id = status.leader();
        let members = cluster.rt.block_on(c.member_list()).unwrap();
        let name = members
            .members()
            .iter()
            .find(|m| m.id() == leader_id)
            .map(|m| m.name().to_string())
            .unwrap();
        cluster.members.iter().position(|m| m.name == name).unwrap()
    };

    // Rounds of grant/revoke for every VM, ending in a revoke; the leader is
    // killed mid-storm. A write is retried until etcd acknowledges it.
    let mut finals = [0i64; VMS];
    for round in 0..6 {
        if round == 3 {
            cluster.kill_member(leader);
        }
        let sharing = round % 2 == 0 && round != 5;
        for (i, vm) in names.iter().enumerate() {
            finals[i] = cluster.put_grants(vm, doc(sharing));
        }
    }
    for (i, agent) in agents.iter_mut().enumerate() {
        agent.wait_grants(&applied(&names[i], finals[i], &doc(false)));
        assert!(!bob_has_access(&agent.grants().unwrap()));
    }
    cluster.start_member(leader);
}

/// Every document of the catalogue of hostile grant files (the one the
/// core's hostile-file tests use), put in etcd after a document that grants
/// bob: the VM ends with no guest key at all (as the core reads the grant
/// file), it is reported (the agent's status says invalid, or the core
/// finds the file invalid: root as an owner is well-formed and refused only
/// by the uid check on the VM), and the agent lives on.
#[test]
fn every_hostile_document_of_the_catalogue_grants_no_guest() {
    let cluster = Cluster::start(&["vm-a"]);
    let valid = catalogue::valid();
    let rev = cluster.put_grants("vm-a", valid.as_str());
    let mut agent = Agent::start(&cluster, "vm-a", &cluster.endpoints(), "");
    agent.wait_grants(&applied("vm-a", rev, &valid));
    let documents = catalogue::documents();
    for (family, text) in &documents {
        let rev = cluster.put_grants("vm-a", valid.as_str());
        agent.wait_grants(&applied("vm-a", rev, &valid));
        assert!(bob_has_access(&agent.grants().unwrap()));

        let rev = cluster.put_grants("vm-a", text.as_str());
        let at = format!(" at revision {rev}");
        let reported = wait_until(Duration::from_secs(30), || {
            if !agent.grants().is_some_and(|t| t.contains(&at)) {
                return false;
            }
            let status: serde_json::Value = serde_json::from_str(&agent.status_cmd(true)).unwrap();
            let by_agent = status["outcome"]["state"] == "invalid"
                && status["outcome"]["revision"] == rev
                && status["last_error"].as_str().is_some();
            let by_core = source::load(&agent.grants_path(), &SystemAccounts)
                .outcome
                .state()
                == GrantFileState::Invalid;
            by_agent || by_core
        });
        assert!(
            reported,
            "{family}: revision {rev} not reported invalid:\n{}\nlog:\n{}",
            agent.status_cmd(false),
            agent.log()
        );
        let loaded = source::load(&agent.grants_path(), &SystemAccounts);
        let keys: usize = loaded
            .policy()
            .map_or(0, |p| p.owners.values().map(|o| o.keys.len()).sum());
        assert_eq!(keys, 0, "{family}: a guest key is granted:\n{text}");
        assert!(
            agent.alive(),
            "{family}: agent exited; log:\n{}",
            agent.log()
        );
    }
    assert!(documents.len() > 70, "{}", documents.len());
}
