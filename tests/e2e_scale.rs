//! Logins at scale, end to end: 10,000 guests × 2 keys, a real sshd running
//! the shipped drop-in (`%u %f %t %k`), so the key lookup answers through
//! the snapshot's key index while the daemon runs and from the grant file
//! when it does not.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::fmt::Write as _;
use std::time::Duration;

use harness::{filler_key, wait_until, Host, Key};

const GUESTS: u32 = 10_000;

/// alice shares with guests 0..GUESTS, two keys each; `real` guests hold a
/// real key as their second, the others two filler keys. Guests in
/// `revoked` have left.
fn grants(real: &[(u32, &Key)], revoked: &[u32]) -> String {
    let mut s = String::from("[owners.alice]\nsharing = true\n[owners.carol]\nsharing = true\n");
    for g in 0..GUESTS {
        let second = real
            .iter()
            .find(|(n, _)| *n == g)
            .map_or_else(|| filler_key(g, 2), |(_, k)| k.public.clone());
        let status = if revoked.contains(&g) {
            "left"
        } else {
            "accepted"
        };
        let _ = write!(
            s,
            "[owners.alice.guests.guest{g}]\nstatus = \"{status}\"\nkeys = [\"{}\", \"{second}\"]\n",
            filler_key(g, 1)
        );
    }
    s
}

/// The key lookup exactly as sshd runs it for `key` offered as `user`.
fn lookup_for_key(host: &Host, user: &str, key: &Key) -> String {
    let mut words = key.public.split(' ');
    let (algorithm, blob) = (words.next().unwrap(), words.next().unwrap());
    let out = host.run(&[
        "setpriv",
        "--reuid=_vmshare",
        "--regid=_vmshare",
        "--clear-groups",
        "/usr/libexec/vmshare/vmshare-keys",
        user,
        "SHA256:unused",
        algorithm,
        blob,
    ]);
    assert!(out.status.success(), "key lookup failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn first_middle_and_last_of_ten_thousand_guests() {
    let host = Host::start();
    host.add_user("alice");
    host.add_user("carol");
    let first = host.keypair("first");
    let middle = host.keypair("middle");
    let last = host.keypair("last");
    let real = [(0, &first), (GUESTS / 2, &middle), (GUESTS - 1, &last)];
    host.write_grants(&grants(&real, &[]));
    // Both owners held, with no key of their own: the lookup prints only
    // guests' lines.
    host.hold("alice");
    host.hold("carol");

    let daemon = host.start_daemon();
    assert!(
        wait_until(Duration::from_secs(60), || host
            .snapshot_lines("alice")
            .is_some()),
        "no current snapshot:\n{}",
        host.daemon_log()
    );
    for (g, key) in real {
        host.assert_logs_in_as("alice", key, "alice");
        // The lookup prints that one line, tagged with the guest.
        let line = lookup_for_key(&host, "alice", key);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.ends_with(&format!(" vmshare:guest{g}\n")), "{line}");
    }
    // Another owner's lookup never prints alice's guests' keys.
    assert_eq!(lookup_for_key(&host, "carol", &first), "");
    host.assert_refused("carol", &first);
    // The old drop-in's lookup (`%u` alone) still prints every line.
    assert_eq!(host.key_lookup_lines("alice").len(), 2 * GUESTS as usize);

    // Daemon up: the middle guest leaves; the very next lookup refuses.
    host.write_grants(&grants(&real, &[GUESTS / 2]));
    assert_eq!(lookup_for_key(&host, "alice", &middle), "");
    host.assert_refused("alice", &middle);
    host.assert_logs_in_as("alice", &last, "alice");

    // Daemon down: the first guest leaves too; the lookup reads the grant
    // file and refuses at once, and the last guest still gets in.
    daemon.kill();
    host.write_grants(&grants(&real, &[0, GUESTS / 2]));
    assert_eq!(lookup_for_key(&host, "alice", &first), "");
    host.assert_refused("alice", &first);
    host.assert_refused("alice", &middle);
    host.assert_logs_in_as("alice", &last, "alice");
    assert_eq!(lookup_for_key(&host, "carol", &last), "");
}
