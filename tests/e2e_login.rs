//! Who can log in, end to end: a real sshd with real PAM and vmshare installed
//! as a package, driven by real ssh clients. No daemon (vmshared) runs in
//! these tests: the key lookup and the PAM hook must decide from the grant
//! file alone. Each owner in a grant file has her keys held by vmshare
//! (`Host::hold`), as root does once for an owner added by hand.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use harness::{Host, Key};

/// Creates a local account that logs in with its own key.
fn owner(host: &Host, name: &str) -> Key {
    host.add_user(name);
    let key = host.keypair(name);
    host.authorize_owner_key(name, &key.public);
    key
}

/// `[owners.NAME]`, with `sharing` set or left out.
fn owner_table(name: &str, sharing: Option<bool>) -> String {
    match sharing {
        Some(on) => format!("[owners.{name}]\nsharing = {on}\n\n"),
        None => format!("[owners.{name}]\n\n"),
    }
}

/// `[owners.OWNER.guests.GUEST]` with one key, `status` set or left out.
fn guest_table(owner: &str, guest: &str, status: Option<&str>, key: &Key) -> String {
    let status = status
        .map(|s| format!("status = \"{s}\"\n"))
        .unwrap_or_default();
    format!(
        "[owners.{owner}.guests.{guest}]\n{status}keys = [\"{}\"]\n\n",
        key.public
    )
}

/// A grant file where `alice` shares with `bob`, who accepted.
fn alice_shares_with_bob(bob: &Key) -> String {
    owner_table("alice", Some(true)) + &guest_table("alice", "bob", Some("accepted"), bob)
}

#[test]
fn owner_logs_in_with_own_key() {
    let host = Host::start();
    let alice = owner(&host, "alice");

    // No grant file at all.
    host.assert_logs_in_as("alice", &alice, "alice");

    // A grant file sharing alice's account changes nothing for alice,
    // nor does vmshare taking her keys over.
    let bob = host.keypair("bob");
    host.write_grants(&alice_shares_with_bob(&bob));
    host.assert_logs_in_as("alice", &alice, "alice");
    host.hold("alice");
    host.assert_logs_in_as("alice", &alice, "alice");
}

#[test]
fn accepted_guest_logs_in_as_owner() {
    let host = Host::start();
    owner(&host, "alice");
    let bob = host.keypair("bob");
    host.write_grants(&alice_shares_with_bob(&bob));
    host.hold("alice");

    host.assert_logs_in_as("alice", &bob, "alice");
}

#[test]
fn guests_who_have_not_accepted_are_refused() {
    let host = Host::start();
    owner(&host, "alice");
    let frank = host.keypair("frank");
    let invited = host.keypair("bob");
    let rejected = host.keypair("carol");
    let left = host.keypair("dave");
    let no_status = host.keypair("erin");
    host.write_grants(
        &(owner_table("alice", Some(true))
            + &guest_table("alice", "frank", Some("accepted"), &frank)
            + &guest_table("alice", "bob", Some("invited"), &invited)
            + &guest_table("alice", "carol", Some("rejected"), &rejected)
            + &guest_table("alice", "dave", Some("left"), &left)
            + &guest_table("alice", "erin", None, &no_status)),
    );
    host.hold("alice");

    // The accepted guest of the same owner gets in, so the refusals below
    // are about the status, not a broken setup.
    host.assert_logs_in_as("alice", &frank, "alice");
    for key in [&invited, &rejected, &left, &no_status] {
        host.assert_refused("alice", key);
    }
}

#[test]
fn guests_of_an_owner_not_sharing_are_refused() {
    let host = Host::start();
    owner(&host, "alice");
    owner(&host, "amy");
    owner(&host, "ann");
    let bob = host.keypair("bob");
    let carol = host.keypair("carol");
    let dave = host.keypair("dave");
    host.write_grants(
        &(owner_table("alice", Some(false))
            + &guest_table("alice", "bob", Some("accepted"), &bob)
            + &owner_table("amy", None)
            + &guest_table("amy", "carol", Some("accepted"), &carol)
            + &owner_table("ann", Some(true))
            + &guest_table("ann", "dave", Some("accepted"), &dave)),
    );
    for name in ["alice", "amy", "ann"] {
        host.hold(name);
    }

    host.assert_logs_in_as("ann", &dave, "ann");
    host.assert_refused("alice", &bob);
    host.assert_refused("amy", &carol);
}

#[test]
fn unknown_guest_key_is_refused() {
    let host = Host::start();
    owner(&host, "alice");
    owner(&host, "carl");
    let bob = host.keypair("bob");
    let mallory = host.keypair("mallory");
    host.write_grants(&alice_shares_with_bob(&bob));
    host.hold("alice");
    host.hold("carl");

    host.assert_logs_in_as("alice", &bob, "alice");
    host.assert_refused("alice", &mallory);
    // bob's grant is for alice only.
    host.assert_refused("carl", &bob);
}

#[test]
fn guest_of_an_owner_without_local_account_is_refused() {
    let host = Host::start();
    owner(&host, "alice");
    let bob = host.keypair("bob");
    let carol = host.keypair("carol");
    host.write_grants(
        &(owner_table("ghost", Some(true))
            + &guest_table("ghost", "bob", Some("accepted"), &bob)
            + &owner_table("alice", Some(true))
            + &guest_table("alice", "carol", Some("accepted"), &carol)),
    );
    host.hold("alice");

    host.assert_refused("ghost", &bob);
    host.assert_refused("alice", &bob);
    // The inert owner does not invalidate the rest of the file.
    host.assert_logs_in_as("alice", &carol, "alice");
}

#[test]
fn malformed_grant_file_refuses_every_guest_but_not_the_owner() {
    let host = Host::start();
    let alice = owner(&host, "alice");
    let bob = host.keypair("bob");
    let carol = host.keypair("carol");
    let valid = alice_shares_with_bob(&bob);
    host.write_grants(&valid);
    host.hold("alice");
    host.assert_logs_in_as("alice", &bob, "alice");

    // A typo in one guest's entry invalidates the whole file.
    let typo = format!(
        "{valid}[owners.alice.guests.carol]\nstauts = \"accepted\"\nkeys = [\"{}\"]\n",
        carol.public
    );
    host.write_grants(&typo);
    host.assert_refused("alice", &bob);
    host.assert_refused("alice", &carol);
    host.assert_logs_in_as("alice", &alice, "alice");

    // Not TOML at all.
    host.write_grants(&format!("{valid}[owners.alice\n"));
    host.assert_refused("alice", &bob);
    host.assert_logs_in_as("alice", &alice, "alice");

    // Fixing the file restores access.
    host.write_grants(&valid);
    host.assert_logs_in_as("alice", &bob, "alice");
}

#[test]
fn grant_file_writable_by_others_or_not_owned_by_root_is_ignored() {
    let host = Host::start();
    let alice = owner(&host, "alice");
    let (alice_uid, alice_gid, _) = host.passwd_entry("alice");
    let bob = host.keypair("bob");
    host.write_grants(&alice_shares_with_bob(&bob));
    host.hold("alice");
    host.assert_logs_in_as("alice", &bob, "alice");

    host.set_grants_owner_mode(0, 0, 0o664);
    host.assert_refused("alice", &bob);
    host.set_grants_owner_mode(0, 0, 0o646);
    host.assert_refused("alice", &bob);
    host.set_grants_owner_mode(alice_uid, alice_gid, 0o644);
    host.assert_refused("alice", &bob);
    host.assert_logs_in_as("alice", &alice, "alice");

    host.set_grants_owner_mode(0, 0, 0o644);
    host.assert_logs_in_as("alice", &bob, "alice");
}

/// Accept bob, log in, then revoke him with `write`: the very next login is
/// refused, with no daemon running to notice the edit.
fn revocation_refuses_next_login(write: fn(&Host, &str)) {
    let host = Host::start();
    let alice = owner(&host, "alice");
    let bob = host.keypair("bob");
    let carol = host.keypair("carol");
    let both =
        alice_shares_with_bob(&bob) + &guest_table("alice", "carol", Some("accepted"), &carol);
    write(&host, &both);
    host.hold("alice");
    host.assert_logs_in_as("alice", &bob, "alice");
    host.assert_logs_in_as("alice", &carol, "alice");

    // Stop sharing with bob: his table is gone, carol stays.
    let carol_only =
        owner_table("alice", Some(true)) + &guest_table("alice", "carol", Some("accepted"), &carol);
    write(&host, &carol_only);
    host.assert_refused("alice", &bob);
    host.assert_logs_in_as("alice", &carol, "alice");

    // carol leaves.
    write(
        &host,
        &(owner_table("alice", Some(true)) + &guest_table("alice", "carol", Some("left"), &carol)),
    );
    host.assert_refused("alice", &carol);

    // Re-accepted, then the whole switch goes off.
    write(&host, &both);
    host.assert_logs_in_as("alice", &bob, "alice");
    write(&host, &both.replace("sharing = true", "sharing = false"));
    host.assert_refused("alice", &bob);
    host.assert_refused("alice", &carol);
    host.assert_logs_in_as("alice", &alice, "alice");
}

#[test]
fn revoking_with_atomic_rename_refuses_next_login() {
    revocation_refuses_next_login(Host::write_grants);
}

#[test]
fn revoking_with_in_place_write_refuses_next_login() {
    revocation_refuses_next_login(Host::write_grants_in_place);
}

#[test]
fn revoking_with_vim_style_save_refuses_next_login() {
    revocation_refuses_next_login(Host::write_grants_vim_style);
}

#[test]
fn guest_key_opens_only_the_owner_that_accepted_it() {
    let host = Host::start();
    owner(&host, "alice");
    owner(&host, "carl");
    let bob = host.keypair("bob");
    host.write_grants(
        &(alice_shares_with_bob(&bob)
            + &owner_table("carl", Some(true))
            + &guest_table("carl", "bob", Some("invited"), &bob)),
    );
    host.hold("alice");
    host.hold("carl");

    host.assert_logs_in_as("alice", &bob, "alice");
    host.assert_refused("carl", &bob);
}

#[test]
fn a_fifo_as_the_owners_key_file_does_not_hang_guest_logins() {
    let host = Host::start();
    let alice = owner(&host, "alice");
    let bob = host.keypair("bob");
    host.write_grants(&alice_shares_with_bob(&bob));
    host.hold("alice");
    host.assert_logs_in_as("alice", &bob, "alice");

    // Anyone with alice's account — a guest too — can put a FIFO where
    // alice's own key file was: neither sshd, the key lookup nor the PAM
    // hook may block on it or take it for a file holding bob's key.
    let (uid, gid, home) = host.passwd_entry("alice");
    let file = format!("{home}/.ssh/authorized_keys");
    host.run_ok(&["rm", "-f", &file]);
    host.run_ok(&["mkfifo", "-m", "0600", &file]);
    host.run_ok(&["chown", &format!("{uid}:{gid}"), &file]);

    // A hook blocked on the FIFO would hold the login until ssh's timeout.
    host.assert_logs_in_as("alice", &bob, "alice");
    host.assert_logs_in_as("alice", &alice, "alice");
}
