//! A sharing owner's keys held by root, end to end: a real sshd with the
//! shipped drop-in, real PAM, the cgroup backend, the daemon, real ssh
//! clients. A guest runs as the owner and can write anything in her home;
//! for a sharing owner sshd reads nothing there, so nothing a guest writes
//! ever logs in, before or after the guest's revoke, and the owner's own
//! keys stay hers throughout.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use harness::{wait_until, Host, Key, LiveSession, STATE_DIR};

const GONE_WITHIN: Duration = Duration::from_secs(10);

fn grants(bob: &Key, with_bob: bool) -> String {
    let guest = if with_bob {
        format!(
            "[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
            bob.public
        )
    } else {
        String::new()
    };
    format!("[owners.alice]\nsharing = true\n\n{guest}")
}

/// alice with her own key in her authorized_keys, bob her accepted guest,
/// alice's keys taken over as ops do for a hand-edited grant file.
fn setup() -> (Host, Key, Key) {
    let host = Host::start();
    host.add_user("alice");
    let alice = host.keypair("alice");
    host.authorize_owner_key("alice", &alice.public);
    let bob = host.keypair("bob");
    host.write_grants(&grants(&bob, true));
    let said = host.hold("alice");
    assert!(said.contains("now held by vmshare (1 line)"), "{said}");
    (host, alice, bob)
}

/// bob, logged in as alice, runs `script` in a one-shot login.
fn as_bob(host: &Host, bob: &Key, script: &str) {
    let out = host.ssh("alice", bob, &format!("set -e; {script}; echo done"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "done",
        "bob's script failed: {script}\n{out:?}"
    );
}

/// alice's own key logs in as alice, and the login is hers: not placed
/// in a guest session's cgroup (where a guest's login is confined).
fn alice_is_alice(host: &Host, alice: &Key) {
    host.assert_logs_in_as("alice", alice, "alice");
    let out = host.ssh("alice", alice, "cat /proc/self/cgroup");
    let cgroup = String::from_utf8_lossy(&out.stdout);
    let sessions = host.sessions_cgroup();
    let inner = sessions
        .strip_prefix(host.cgroup().parent().unwrap())
        .unwrap();
    assert!(
        out.status.success() && !cgroup.contains(&*inner.to_string_lossy()),
        "alice's own login was confined as a guest's: {cgroup}"
    );
}

/// Every way bob can think of to leave a key behind in alice's home. None
/// of them logs in as alice, while bob has access, with the daemon down,
/// or after his revoke; alice's own key logs in as alice throughout.
#[test]
fn nothing_a_guest_writes_in_the_home_logs_in() {
    let (host, alice, bob) = setup();
    let daemon = host.start_daemon();
    let planted: Vec<Key> = (1..=8).map(|i| host.keypair(&format!("p{i}"))).collect();
    let ca = host.keypair("ca");
    let cert_key = host.keypair("cert");
    host.run_ok(&[
        "ssh-keygen",
        "-q",
        "-s",
        &ca.private,
        "-I",
        "planted",
        "-n",
        "alice",
        &format!("{}.pub", cert_key.private),
    ]);
    let p = |i: usize| planted[i].public.clone();
    let attacks = [
        // Append.
        format!("echo '{}' >> ~/.ssh/authorized_keys", p(0)),
        // Rename into place.
        format!(
            "cp ~/.ssh/authorized_keys ~/.ssh/t && echo '{}' >> ~/.ssh/t && mv ~/.ssh/t ~/.ssh/authorized_keys",
            p(1)
        ),
        // A hard link written through, then removed.
        format!("ln ~/.ssh/authorized_keys ~/n && echo '{}' >> ~/n && rm ~/n", p(2)),
        // The second key file.
        format!("echo '{}' >> ~/.ssh/authorized_keys2", p(3)),
        // A certificate authority of bob's.
        format!("echo 'cert-authority {}' >> ~/.ssh/authorized_keys", ca.public),
        // The owner's own line taken out and put back; her key as a CA.
        format!(
            "grep -v '{own}' ~/.ssh/authorized_keys > ~/t; cat ~/t > ~/.ssh/authorized_keys; sleep 1; echo '{own}' >> ~/.ssh/authorized_keys; echo 'cert-authority {own}' >> ~/.ssh/authorized_keys",
            own = alice.public
        ),
        // bob's own key, copied in.
        format!("echo '{}' >> ~/.ssh/authorized_keys", bob.public),
        // A new ~/.ssh.
        format!(
            "mv ~/.ssh ~/.x && mkdir -m 700 ~/.ssh && cp ~/.x/authorized_keys ~/.ssh/ && echo '{}' >> ~/.ssh/authorized_keys",
            p(4)
        ),
        // A symlinked ~/.ssh.
        format!(
            "mkdir -m 700 ~/.y && cp ~/.ssh/authorized_keys ~/.y/ && echo '{}' >> ~/.y/authorized_keys && rm -rf ~/.ssh && ln -s ~/.y ~/.ssh",
            p(5)
        ),
    ];
    for attack in &attacks {
        as_bob(&host, &bob, attack);
    }
    // A session that stays, writing while the daemon is down.
    let mut session = LiveSession::open(&host, "alice", &bob);
    daemon.kill();
    as_bob(
        &host,
        &bob,
        &format!("echo '{}' >> ~/.ssh/authorized_keys", p(6)),
    );
    let daemon = host.start_daemon();

    let refused = |when: &str| {
        for key in planted.iter().take(7).chain([&ca, &cert_key]) {
            let out = host.ssh("alice", key, "id -un");
            assert!(
                out.status.code() == Some(255) && out.stdout.is_empty(),
                "{when}: planted key {} logged in as alice: {out:?}",
                key.name
            );
        }
    };
    refused("while bob has access");
    alice_is_alice(&host, &alice);
    // bob's own key is still bob's, not the owner's.
    assert!(host.session_records().iter().any(|r| r.guest == "bob"));

    host.write_grants(&grants(&bob, false));
    assert!(
        session.wait_gone(GONE_WITHIN).is_some(),
        "bob's session survived his revoke:\n{}",
        host.daemon_log()
    );
    refused("after bob's revoke");
    host.assert_refused("alice", &bob);
    alice_is_alice(&host, &alice);
    assert!(
        wait_until(GONE_WITHIN, || host.session_records().is_empty()),
        "records left: {:?}",
        host.session_records()
    );
    drop(daemon);
}

/// The owner's lines keep their options when vmshare serves them: sshd
/// refuses or restricts the logins as the options say.
#[test]
fn the_owners_options_are_kept() {
    let host = Host::start();
    host.add_user("alice");
    let plain = host.keypair("plain");
    let elsewhere = host.keypair("elsewhere");
    let forced = host.keypair("forced");
    let expired = host.keypair("expired");
    host.authorize_owner_key("alice", &plain.public);
    host.authorize_owner_key("alice", &format!("from=\"192.0.2.1\" {}", elsewhere.public));
    host.authorize_owner_key(
        "alice",
        &format!("command=\"echo forced-by-option\" {}", forced.public),
    );
    host.authorize_owner_key(
        "alice",
        &format!("expiry-time=\"20000101\" {}", expired.public),
    );
    let bob = host.keypair("bob");
    host.write_grants(&grants(&bob, true));
    let said = host.hold("alice");
    assert!(said.contains("(4 lines)"), "{said}");
    let listed = host.run_ok(&["vmshare", "owner-keys", "list", "alice"]);
    assert!(listed.contains("from=\"192.0.2.1\""), "{listed}");
    // The home file is out of the picture from now on.
    host.write_file(
        &format!("{}/.ssh/authorized_keys", host.passwd_entry("alice").2),
        "",
        host.passwd_entry("alice").0,
        host.passwd_entry("alice").1,
        0o600,
    );

    host.assert_logs_in_as("alice", &plain, "alice");
    host.assert_refused("alice", &elsewhere);
    host.assert_refused("alice", &expired);
    let out = host.ssh("alice", &forced, "id -un");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "forced-by-option",
        "{out:?}"
    );
    host.assert_logs_in_as("alice", &bob, "alice");
}

/// An owner vmshare does not hold is untouched: sshd reads her home files
/// as before. And guests of an owner in the grant file whose keys are not
/// held get no access, even with a key sshd finds in her home; status and
/// doctor say why and how to fix it.
#[test]
fn owners_not_held_are_untouched_and_get_no_guests() {
    let host = Host::start();
    host.add_user("carol");
    let carol = host.keypair("carol");
    host.authorize_owner_key("carol", &carol.public);
    host.add_user("dave");
    let dave = host.keypair("dave");
    host.authorize_owner_key("dave", &dave.public);
    let erin = host.keypair("erin");
    // dave is in the grant file by a hand edit, never taken over.
    host.write_grants(&format!(
        "[owners.dave]\nsharing = true\n\n[owners.dave.guests.erin]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
        erin.public
    ));
    host.assert_logs_in_as("carol", &carol, "carol");
    host.assert_logs_in_as("dave", &dave, "dave");
    let sshd_t = |user: &str| {
        host.run_ok(&[
            "/usr/sbin/sshd",
            "-T",
            "-C",
            &format!("user={user},host=localhost,addr=127.0.0.1"),
        ])
    };
    assert!(sshd_t("carol").contains("authorizedkeysfile .ssh/authorized_keys"));
    // sshd does not ask vmshare for dave: erin's key is unknown to it.
    host.assert_refused("dave", &erin);
    // A key of erin's that sshd finds in dave's home gets no session.
    host.authorize_owner_key("dave", &erin.public);
    host.assert_session_refused("dave", &erin);
    host.assert_logs_in_as("dave", &dave, "dave");
    let status = host.run(&["vmshare", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("own keys: NOT HELD") && text.contains("owner-keys import dave"),
        "{text}"
    );
    let doctor = host.run(&["vmshare", "doctor"]);
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{said}");
    assert!(
        said.contains("owner `dave`: not in group vmshare-owners"),
        "{said}"
    );

    // Taking dave over: the key granted to erin is left out, so it is
    // hers (a guest's, confined), not dave's; sshd reads dave's home no more.
    let said = host.hold("dave");
    assert!(said.contains("(1 line)"), "{said}");
    assert!(sshd_t("dave").contains("authorizedkeysfile none"));
    host.assert_logs_in_as("dave", &erin, "dave");
    assert!(host.session_records().iter().any(|r| r.guest == "erin"));
    host.assert_logs_in_as("dave", &dave, "dave");
}

/// `import` lists what appeared in the home files since the takeover and
/// takes it only with --yes; `release` gives the home files back once the
/// owner is out of the grant file, leaving out (and listing) what appeared
/// while guests had access until root confirms.
#[test]
fn import_and_release_take_nothing_without_root_saying_so() {
    let (host, alice, bob) = setup();
    let _daemon = host.start_daemon();
    let added = host.keypair("added");
    as_bob(
        &host,
        &bob,
        &format!("echo '{}' >> ~/.ssh/authorized_keys", added.public),
    );
    host.assert_refused("alice", &added);

    let listed = host.run_ok(&["vmshare", "owner-keys", "import", "alice"]);
    assert!(listed.contains("1 line(s) appeared"), "{listed}");
    assert!(listed.contains("none added"), "{listed}");
    host.assert_refused("alice", &added);

    // bob's copy of his own key is never taken over as alice's.
    as_bob(
        &host,
        &bob,
        &format!("echo '{}' >> ~/.ssh/authorized_keys", bob.public),
    );
    let out = host.run(&["vmshare", "owner-keys", "import", "alice", "--yes"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("added 1"), "{said}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("granted to a guest"),
        "{out:?}"
    );
    host.assert_logs_in_as("alice", &added, "alice");

    // alice leaves the grant file; bob revoked with her. A line bob wrote
    // meanwhile keeps her held until root says yes.
    let late = host.keypair("late");
    as_bob(
        &host,
        &bob,
        &format!("echo '{}' >> ~/.ssh/authorized_keys", late.public),
    );
    host.write_grants("");
    let out = host.run(&["vmshare", "owner-keys", "release", "alice"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("appeared in the home files"), "{said}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not released"),
        "{out:?}"
    );
    host.assert_refused("alice", &late);
    host.assert_refused("alice", &bob);
    host.assert_logs_in_as("alice", &alice, "alice");
    let status = host.run_ok(&["vmshare", "status"]);
    assert!(status.contains("owner-keys release alice"), "{status}");

    host.run_ok(&["vmshare", "owner-keys", "release", "alice", "--yes"]);
    // Root said yes: the home files apply again, all of them.
    host.assert_logs_in_as("alice", &late, "alice");
    host.assert_logs_in_as("alice", &alice, "alice");
    assert!(host
        .read_file(&format!("{STATE_DIR}/owner-keys/alice"))
        .is_err());
}

/// One key is never both the owner's and a guest's: the edits that would
/// make it so are refused, with the reason, and change nothing.
#[test]
fn a_key_is_never_both_the_owners_and_a_guests() {
    let (host, alice, bob) = setup();
    let out = host.run(&[
        "vmshare",
        "invite",
        "alice",
        "carol",
        "--key",
        &alice.public,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("one of alice's own keys"),
        "{out:?}"
    );
    let out = host.run(&[
        "vmshare",
        "owner-keys",
        "add",
        "alice",
        "--line",
        &bob.public,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("granted to a guest"),
        "{out:?}"
    );
    let grants = host.read_file(harness::GRANTS).unwrap();
    assert!(!grants.contains("carol"), "{grants}");
    host.assert_logs_in_as("alice", &alice, "alice");
    // A hand edit that grants alice's key to bob anyway: it stays hers.
    host.write_grants(&format!(
        "[owners.alice]\nsharing = true\n\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\", \"{}\"]\n",
        bob.public, alice.public
    ));
    host.assert_logs_in_as("alice", &alice, "alice");
    assert!(host.session_records().is_empty());
    let status = host.run_ok(&["vmshare", "status"]);
    assert!(status.contains("is alice's own"), "{status}");
}

/// `vmshare invite` takes the owner's keys over itself.
#[test]
fn invite_takes_the_owners_keys_over() {
    let host = Host::start();
    host.add_user("alice");
    let alice = host.keypair("alice");
    host.authorize_owner_key("alice", &alice.public);
    let bob = host.keypair("bob");
    let said = host.run_ok(&["vmshare", "invite", "alice", "bob", "--key", &bob.public]);
    assert!(said.contains("now held by vmshare"), "{said}");
    host.run_ok(&["vmshare", "accept", "alice", "bob"]);
    host.run_ok(&["vmshare", "sharing", "alice", "on"]);
    host.assert_logs_in_as("alice", &bob, "alice");
    host.assert_logs_in_as("alice", &alice, "alice");
    let groups = host.run_ok(&["id", "-nG", "alice"]);
    assert!(
        groups.split_whitespace().any(|g| g == "vmshare-owners"),
        "{groups}"
    );
}
