//! A fleet, end to end: a real 3-member etcd cluster (TLS, RBAC) in a
//! network namespace of its own, and simulated VMs — each a private mount
//! and network namespace host with its own sshd, vmshared, vmshare-sync and
//! a live guest session — reaching it over veth pairs. A revoke written to
//! etcd ends the guest's live session on every VM (its session cgroup
//! empties), while the owner still gets in; a VM cut off from etcd shares
//! nothing once max_staleness passes and is back in sync when its link
//! returns.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::path::PathBuf;
use std::time::Duration;

use harness::fleet::{
    emptied, grants_key, populated_session_group, sync_binary, Fabric, HostAgent,
};
use harness::{wait_until, Host, Key, LiveSession, GRANTS};

/// Simulated VMs in the fleet test.
const VMS: usize = 20;
/// Generous bound for a step in tests; `scripts/bench fleet` measures.
const WITHIN: Duration = Duration::from_secs(30);

fn shared(bob: &Key, sharing: bool) -> String {
    format!(
        "[owners.alice]\nsharing = {sharing}\n\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
        bob.public
    )
}

struct Vm {
    host: Host,
    alice: Key,
    bob: Key,
    link: String,
    session: LiveSession,
    group: PathBuf,
    _daemon: harness::Daemon,
    _agent: HostAgent,
}

/// A host for `vm` with owner alice sharing with bob through etcd, its
/// agent and daemon running and bob's session live.
fn start_vm(fabric: &Fabric, vm: &str, extra: &str) -> Vm {
    let host = Host::start();
    host.add_user("alice");
    let alice = host.keypair("alice");
    host.authorize_owner_key("alice", &alice.public);
    let bob = host.keypair("bob");
    let revision = fabric.put(&grants_key(vm), &shared(&bob, true));
    let link = fabric.connect(&host);
    let agent = fabric.start_host_agent(&host, vm, &sync_binary(false), extra);
    let applied = format!(
        "# vmshare-sync: {} at revision {revision}\n",
        grants_key(vm)
    );
    let ok = wait_until(WITHIN, || {
        host.read_file(GRANTS)
            .is_ok_and(|t| t.starts_with(&applied))
    });
    assert!(ok, "{vm}: not applied; agent log:\n{}", sync_log(&host));
    // vmshare-sync writes the grant file; root holds its owner once, as
    // for a grant file written by hand.
    host.hold("alice");
    let daemon = host.start_daemon();
    let session = LiveSession::open(&host, "alice", &bob);
    let group = populated_session_group(&host.sessions_cgroup()).expect("session cgroup");
    Vm {
        host,
        alice,
        bob,
        link,
        session,
        group,
        _daemon: daemon,
        _agent: agent,
    }
}

fn sync_log(host: &Host) -> String {
    host.read_file("/run/vmshare-e2e/sync.log")
        .unwrap_or_default()
}

#[test]
fn a_revoke_in_etcd_ends_the_guest_session_on_every_vm() {
    let names: Vec<String> = (0..VMS).map(|i| format!("vm-{i:02}")).collect();
    let fabric = Fabric::start(&names);
    let mut vms: Vec<Vm> = names.iter().map(|vm| start_vm(&fabric, vm, "")).collect();

    for (name, vm) in names.iter().zip(&vms) {
        fabric.put(&grants_key(name), &shared(&vm.bob, false));
    }
    for (name, vm) in names.iter().zip(&mut vms) {
        let ok = wait_until(WITHIN, || emptied(&vm.group));
        assert!(
            ok,
            "{name}: bob's session cgroup still populated; agent log:\n{}\ndaemon log:\n{}",
            sync_log(&vm.host),
            vm.host.daemon_log()
        );
        assert!(
            vm.session.wait_gone(WITHIN).is_some(),
            "{name}: session not gone"
        );
        vm.host.assert_refused("alice", &vm.bob);
        vm.host.assert_logs_in_as("alice", &vm.alice, "alice");
    }
}

#[test]
fn a_vm_cut_off_from_etcd_shares_nothing_then_catches_up() {
    let names = vec!["vm-cut".to_string()];
    let fabric = Fabric::start(&names);
    let mut vm = start_vm(&fabric, "vm-cut", "max_staleness = \"2s\"");

    // The link goes down: no connection is closed, the agent just hears
    // nothing. Past max_staleness the guest is out, the owner is not.
    fabric.set_link(&vm.link, false);
    let ok = wait_until(WITHIN, || emptied(&vm.group));
    assert!(ok, "guest still in; agent log:\n{}", sync_log(&vm.host));
    assert!(vm.session.wait_gone(WITHIN).is_some());
    let text = vm.host.read_file(GRANTS).unwrap();
    assert!(text.contains("no confirmed contact with etcd"), "{text}");
    vm.host.assert_refused("alice", &vm.bob);
    vm.host.assert_logs_in_as("alice", &vm.alice, "alice");

    // Meanwhile the document changes (bob gets a second key); when the link
    // returns the VM applies the current document and bob gets in again.
    let second = vm.host.keypair("bob2");
    let doc = shared(&vm.bob, true).replace(
        &format!("keys = [\"{}\"]", vm.bob.public),
        &format!("keys = [\"{}\", \"{}\"]", vm.bob.public, second.public),
    );
    let revision = fabric.put(&grants_key("vm-cut"), &doc);
    fabric.set_link(&vm.link, true);
    let applied = format!("# vmshare-sync: /vmshare/v1/vms/vm-cut at revision {revision}\n{doc}");
    let ok = wait_until(WITHIN, || {
        vm.host.read_file(GRANTS).is_ok_and(|t| t == applied)
    });
    assert!(ok, "not back in sync; agent log:\n{}", sync_log(&vm.host));
    let ok = wait_until(WITHIN, || {
        vm.host.ssh("alice", &second, "id -un").status.success()
    });
    assert!(ok, "bob's new key does not get in:\n{}", vm.host.sshd_log());
}
