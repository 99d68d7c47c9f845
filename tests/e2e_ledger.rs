//! The key ledger end to end, with a real sshd, real PAM, the cgroup
//! backend and the daemon: a guest runs as the owner and can copy a key
//! into the owner's authorized_keys; revoking the guest still ends every
//! way in through that key, while the owner's own keys stay the owner's.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use harness::{wait_until, Host, Journal, Key, LiveSession, STATE_DIR};
use vmshare::store::ledger::Ledger;

/// Generous bound for a kill in tests; the benchmark measures the real figure.
const GONE_WITHIN: Duration = Duration::from_secs(10);
const EVENT_WITHIN: Duration = Duration::from_secs(10);

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

/// alice with her own key in her authorized_keys; bob her accepted guest.
fn setup() -> (Host, Key, Key) {
    let host = Host::start();
    host.add_user("alice");
    let alice = host.keypair("alice");
    host.authorize_owner_key("alice", &alice.public);
    let bob = host.keypair("bob");
    host.write_grants(&grants(&bob, true));
    (host, alice, bob)
}

fn fingerprint(key: &Key) -> String {
    vmshare::grant::key::parse_key(&key.public)
        .unwrap()
        .fingerprint
        .to_string()
}

/// bob, logged in as alice, appends `key` to alice's authorized_keys in a
/// one-shot login.
fn launder(host: &Host, bob: &Key, key: &Key) {
    let out = host.ssh(
        "alice",
        bob,
        &format!(
            "echo '{}' >> ~/.ssh/authorized_keys && echo done",
            key.public
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "done",
        "bob could not write alice's authorized_keys: {out:?}"
    );
}

fn ledger_path() -> String {
    format!("{STATE_DIR}/ledger")
}

fn ledger(host: &Host) -> Ledger {
    let text = host.read_file(&ledger_path()).unwrap();
    Ledger::parse(&text).unwrap_or_else(|e| panic!("ledger: {e}\n{text}"))
}

/// bob copies his own key into alice's file and opens a second session
/// with it. The revoke ends both, and his key is refused afterwards though
/// alice's file still lists it; alice's own key keeps working.
#[test]
fn a_laundered_key_ends_with_the_grant() {
    let (host, alice, bob) = setup();
    let journal = host.capture_journal();
    let _daemon = host.start_daemon();
    let mut first = LiveSession::open(&host, "alice", &bob);
    launder(&host, &bob, &bob);
    let mut second = LiveSession::open(&host, "alice", &bob);
    // The laundering login is over (its record goes as sshd closes its
    // session, which may be just after its client has returned): count
    // the sessions that still have processes.
    let bobs = || {
        host.session_records()
            .iter()
            .filter(|r| r.guest == "bob" && r.placement.backend().is_live(r))
            .count()
    };
    assert!(
        wait_until(GONE_WITHIN, || bobs() == 2),
        "both of bob's live sessions are his: {:?}",
        host.session_records()
    );

    host.write_grants(&grants(&bob, false));
    for session in [&mut first, &mut second] {
        assert!(
            session.wait_gone(GONE_WITHIN).is_some(),
            "a session of bob's survived his revoke:\n{}",
            host.daemon_log()
        );
    }
    host.assert_session_refused("alice", &bob);
    assert!(
        journal
            .wait_for(
                &[
                    "VMSHARE_EVENT=refusal",
                    "VMSHARE_OWNER=alice",
                    "VMSHARE_GUEST=bob",
                    &format!("VMSHARE_FINGERPRINT={}", fingerprint(&bob)),
                ],
                EVENT_WITHIN
            )
            .is_some(),
        "no refusal naming bob: {:?}",
        journal.events()
    );
    assert!(
        wait_until(GONE_WITHIN, || host.session_records().is_empty()),
        "records left after the revoke: {:?}",
        host.session_records()
    );
    host.assert_logs_in_as("alice", &alice, "alice");
}

/// The owner's keys: one from before any sharing, one added while no
/// guest is there; neither is ever in the ledger, both stay the owner's
/// after a guest came, laundered and went.
#[test]
fn the_owners_own_keys_stay_the_owners() {
    let (host, alice, bob) = setup();
    let _daemon = host.start_daemon();
    launder(&host, &bob, &bob);
    host.write_grants(&grants(&bob, false));
    host.assert_session_refused("alice", &bob);

    // alice adds a key herself, with no guest around.
    let laptop = host.keypair("laptop");
    let (uid, gid, home) = host.passwd_entry("alice");
    let file = format!("{home}/.ssh/authorized_keys");
    let text = host.read_file(&file).unwrap();
    host.write_file(
        &file,
        &format!("{text}{}\n", laptop.public),
        uid,
        gid,
        0o600,
    );
    for key in [&alice, &laptop] {
        host.assert_logs_in_as("alice", key, "alice");
        let _session = LiveSession::open(&host, "alice", key);
        assert!(
            host.session_records().is_empty(),
            "alice's own key {} was taken for a guest's",
            key.name
        );
        assert!(ledger(&host).get("alice", &fingerprint(key)).is_none());
    }
    assert_eq!(
        ledger(&host)
            .get("alice", &fingerprint(&bob))
            .unwrap()
            .guest,
        "bob"
    );
}

/// Only root gives a ledger key back to the owner; then it is hers.
#[test]
fn root_releases_a_key_and_no_one_else_can() {
    let (host, _alice, bob) = setup();
    let journal = host.capture_journal();
    let _daemon = host.start_daemon();
    launder(&host, &bob, &bob);
    let fp = fingerprint(&bob);

    // Not while it is granted: the next pass would make it bob's again.
    let out = host.run(&["vmshare", "keys", "release", "alice", &fp]);
    assert!(!out.status.success(), "released a granted key: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("granted to alice's guest bob"));

    host.write_grants(&grants(&bob, false));
    host.assert_session_refused("alice", &bob);
    let out = host.run(&[
        "setpriv",
        "--reuid=alice",
        "--regid=alice",
        "--clear-groups",
        "vmshare",
        "keys",
        "release",
        "alice",
        &fp,
    ]);
    assert!(!out.status.success(), "alice released a key: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only root"),
        "{out:?}"
    );
    host.assert_session_refused("alice", &bob);
    assert!(ledger(&host).get("alice", &fp).is_some());

    let out = host.run(&["vmshare", "keys", "release", "alice", &fp]);
    assert!(out.status.success(), "root could not release: {out:?}");
    assert!(
        journal
            .wait_for(
                &[
                    "VMSHARE_EVENT=key-release",
                    "VMSHARE_OWNER=alice",
                    "VMSHARE_GUEST=bob",
                    &format!("VMSHARE_FINGERPRINT={fp}"),
                ],
                EVENT_WITHIN
            )
            .is_some(),
        "no key-release event: {:?}",
        journal.events()
    );
    // alice's file lists it, nothing else claims it: alice's own login.
    host.assert_logs_in_as("alice", &bob, "alice");
    let _session = LiveSession::open(&host, "alice", &bob);
    assert!(host.session_records().is_empty());
    let again = host.run(&["vmshare", "keys", "release", "alice", &fp]);
    assert!(!again.status.success(), "released twice: {again:?}");
}

/// With the daemon down, bob is granted, logs in, launders his key, and
/// is revoked: the hook recorded his key at login, so the laundered key is
/// refused.
#[test]
fn the_hook_records_keys_with_the_daemon_down() {
    let (host, alice, bob) = setup();
    assert!(host.read_file(&ledger_path()).is_err(), "a ledger already");
    launder(&host, &bob, &bob);
    let entry = ledger(&host).get("alice", &fingerprint(&bob)).cloned();
    assert_eq!(entry.map(|e| e.guest).as_deref(), Some("bob"));
    host.write_grants(&grants(&bob, false));
    host.assert_session_refused("alice", &bob);
    host.assert_logs_in_as("alice", &alice, "alice");
}

/// A corrupt, truncated, wrongly owned, group-writable or huge ledger:
/// alice still gets in, bob's laundered key (known from his recorded
/// session) is not taken for hers, doctor reports the ledger, and the
/// daemon rebuilds it.
#[test]
fn a_hostile_ledger_neither_locks_out_nor_lets_a_guest_key_pass() {
    let (host, alice, bob) = setup();
    launder(&host, &bob, &bob);
    let (uid, gid, _) = host.passwd_entry("alice");
    let path = ledger_path();
    let fp = fingerprint(&bob);
    type Spoil<'a> = &'a dyn Fn(&str);
    let cases: [(&str, Spoil); 5] = [
        ("corrupt", &|good| {
            host.write_file(&path, &good.replace("key alice", "kex alice"), 0, 0, 0o600)
        }),
        ("truncated", &|good| {
            host.write_file(&path, &good[..good.len() / 2], 0, 0, 0o600)
        }),
        ("wrongly owned", &|good| {
            host.write_file(&path, good, uid, gid, 0o600)
        }),
        ("group-writable", &|good| {
            host.write_file(&path, good, 0, 0, 0o620)
        }),
        ("huge", &|good| {
            // Past the 16 MiB bound.
            let filler = format!("# {}\n", "x".repeat(1000)).repeat(17_000);
            host.write_file(&path, &format!("{good}{filler}"), 0, 0, 0o600)
        }),
    ];
    for (name, spoil) in cases {
        host.write_grants(&grants(&bob, true));
        let mut session = LiveSession::open(&host, "alice", &bob);
        let good = host.read_file(&path).unwrap();
        assert!(Ledger::parse(&good).is_ok(), "{name}: {good}");
        let _ = std::fs::remove_file(host.path(&path));
        spoil(&good);
        // Revoked with the daemon down: bob's session stays, recorded.
        host.write_grants(&grants(&bob, false));
        host.assert_logs_in_as("alice", &alice, "alice");
        host.assert_session_refused("alice", &bob);

        let doctor = host.run(&["vmshare", "doctor"]);
        let text = String::from_utf8_lossy(&doctor.stdout);
        assert!(
            text.lines()
                .any(|l| l.contains("ledger") && l.contains("cannot be trusted")),
            "{name}: doctor did not report the ledger:\n{text}"
        );
        assert!(!doctor.status.success(), "{name}: doctor passed");

        let daemon = host.start_daemon();
        assert!(
            session.wait_gone(GONE_WITHIN).is_some(),
            "{name}: bob's session survived:\n{}",
            host.daemon_log()
        );
        let repaired = ledger(&host);
        assert_eq!(
            repaired.get("alice", &fp).map(|e| e.guest.as_str()),
            Some("bob"),
            "{name}: the rebuilt ledger forgot bob's key"
        );
        let meta = std::fs::metadata(host.path(&path)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600), "{name}");
        host.assert_session_refused("alice", &bob);
        host.assert_logs_in_as("alice", &alice, "alice");
        daemon.kill();
    }
}

/// bob, from a session whose shell stays, appends `line` to alice's
/// authorized_keys; waits for the daemon to record it as bob's.
fn plant(host: &Host, journal: &Journal, bob: &Key, line: &str, fp: &str) {
    let mut writer = host.ssh_spawn(
        "alice",
        bob,
        &format!("echo '{line}' >> ~/.ssh/authorized_keys; echo up; read line"),
    );
    let up = harness::first_line(&mut writer, Duration::from_secs(30));
    assert_eq!(up.trim(), "up", "bob's writing session did not start");
    assert_planted(host, journal, fp);
    drop(writer.stdin.take());
    let _ = writer.wait();
}

/// A key-planted event names bob's `fp`, and the ledger holds it as his.
fn assert_planted(host: &Host, journal: &Journal, fp: &str) {
    assert!(
        journal
            .wait_for(
                &[
                    "VMSHARE_EVENT=key-planted",
                    "VMSHARE_OWNER=alice",
                    "VMSHARE_GUEST=bob",
                    &format!("VMSHARE_FINGERPRINT={fp}"),
                ],
                EVENT_WITHIN
            )
            .is_some(),
        "no key-planted event for bob's {fp}: {:?}\n{}",
        journal.events(),
        host.daemon_log()
    );
    let entry = ledger(host).get("alice", fp).cloned().unwrap();
    assert_eq!(
        (entry.guest.as_str(), entry.origin.as_str()),
        ("bob", "planted")
    );
}

/// A login with `key` is bob's while he has access (known by `fp`),
/// ends with his revoke, and is refused after it, with a refusal naming
/// him; alice's own key still works.
fn bobs_until_revoked(host: &Host, journal: &Journal, alice: &Key, bob: &Key, key: &Key, fp: &str) {
    let mut session = LiveSession::open(host, "alice", key);
    assert!(
        host.session_records()
            .iter()
            .any(|r| r.guest == "bob" && r.fingerprint == fp),
        "the login with {} was not recorded as bob's: {:?}",
        key.name,
        host.session_records()
    );
    host.write_grants(&grants(bob, false));
    assert!(
        session.wait_gone(GONE_WITHIN).is_some(),
        "the session with {} survived bob's revoke",
        key.name
    );
    host.assert_session_refused("alice", key);
    assert!(
        journal
            .wait_for(
                &[
                    "VMSHARE_EVENT=refusal",
                    "VMSHARE_GUEST=bob",
                    &format!("VMSHARE_FINGERPRINT={fp}"),
                ],
                EVENT_WITHIN
            )
            .is_some(),
        "no refusal naming bob: {:?}",
        journal.events()
    );
    host.assert_logs_in_as("alice", alice, "alice");
}

/// bob, in a session, adds a fresh key of his own to alice's file. The
/// daemon sees his session write it: the key is bob's (planted), its
/// logins are his, and it is refused after his revoke.
#[test]
fn a_key_planted_by_a_guest_session_is_the_guests() {
    a_fresh_key_is_bobs(false);
}

/// The same in a one-shot login (`ssh … 'echo KEY >> …'`): the writing
/// shell, and its whole session, are gone by the time the daemon judges
/// the change; the session the file was opened from still says whose it
/// is.
#[test]
fn a_key_written_by_a_one_shot_login_is_the_guests() {
    a_fresh_key_is_bobs(true);
}

fn a_fresh_key_is_bobs(one_shot: bool) {
    let (host, alice, bob) = setup();
    let journal = host.capture_journal();
    let _daemon = host.start_daemon();
    let fresh = host.keypair("fresh");
    let fp = fingerprint(&fresh);
    if one_shot {
        launder(&host, &bob, &fresh);
        assert_planted(&host, &journal, &fp);
    } else {
        plant(&host, &journal, &bob, &fresh.public, &fp);
    }
    bobs_until_revoked(&host, &journal, &alice, &bob, &fresh, &fp);
}

/// A key line moved into alice's file from elsewhere while bob is logged
/// in: no write to the watched directory tells who made it, so it is not
/// guessed. It keeps working (as alice's), a persistence event names the
/// file, the key and bob, and `vmshare status` shows it.
#[test]
fn a_change_that_cannot_be_attributed_is_reported_not_guessed() {
    let (host, alice, bob) = setup();
    let journal = host.capture_journal();
    let _daemon = host.start_daemon();
    let _bob_here = LiveSession::open(&host, "alice", &bob);
    let other = host.keypair("other");
    let fp = fingerprint(&other);
    let out = host.ssh(
        "alice",
        &alice,
        &format!(
            "cp ~/.ssh/authorized_keys ~/ak.new && echo '{}' >> ~/ak.new && mv ~/ak.new ~/.ssh/authorized_keys && echo moved",
            other.public
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "moved",
        "{out:?}"
    );
    let event = journal.wait_for(
        &[
            "VMSHARE_EVENT=persistence",
            "VMSHARE_OWNER=alice",
            "VMSHARE_GUEST=bob",
            &format!("VMSHARE_FINGERPRINT={fp}"),
        ],
        EVENT_WITHIN,
    );
    let event = event.unwrap_or_else(|| {
        panic!(
            "no persistence event: {:?}\n{}",
            journal.events(),
            host.daemon_log()
        )
    });
    assert!(
        event.contains("/home/alice/.ssh/authorized_keys"),
        "{event}"
    );
    let status = host.run_ok(&["vmshare", "status"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains(&fp) && l.contains("authorized_keys") && l.contains("bob")),
        "status does not show the change:\n{status}"
    );
    assert!(
        ledger(&host).get("alice", &fp).is_none(),
        "guessed: {fp} in the ledger"
    );
    host.assert_logs_in_as("alice", &other, "alice");
}

/// bob's session adds a `cert-authority` line for a CA of his: a
/// certificate it signed is bob's login, and refused after his revoke.
#[test]
fn a_certificate_through_a_planted_authority_is_the_guests() {
    let (host, alice, bob) = setup();
    let journal = host.capture_journal();
    let _daemon = host.start_daemon();
    let ca = host.keypair("ca");
    let holder = host.keypair("holder");
    // holder's key signed by the CA for principal alice: ssh offers
    // `holder-cert.pub` beside the private key.
    let holder_pub = format!("{}.pub", holder.private);
    host.run_ok(&[
        "ssh-keygen",
        "-q",
        "-s",
        &ca.private,
        "-I",
        "bob-cert",
        "-n",
        "alice",
        &holder_pub,
    ]);
    let ca_fp = fingerprint(&ca);
    plant(
        &host,
        &journal,
        &bob,
        &format!("cert-authority {}", ca.public),
        &ca_fp,
    );
    // The hook knows a certificate login by its CA.
    bobs_until_revoked(&host, &journal, &alice, &bob, &holder, &ca_fp);
}
