//! What a guest can try from inside a session to keep access or to disturb
//! enforcement, end to end with a real sshd, real PAM (Debian's own
//! /etc/pam.d/sshd, which reads `~/.pam_environment`) and the daemon.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use harness::{pids_with_cmdline, wait_until, Host, Key};

/// Generous bound for a kill in tests; the benchmark measures the real figure.
const GONE_WITHIN: Duration = Duration::from_secs(10);

struct Cast {
    bob: Key,
    carol: Key,
}

fn grants(c: &Cast, with_bob: bool) -> String {
    let bob = if with_bob {
        format!(
            "[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n\n",
            c.bob.public
        )
    } else {
        String::new()
    };
    format!(
        "[owners.alice]\nsharing = true\n\n{bob}\
         [owners.alice.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
        c.carol.public
    )
}

fn setup() -> (Host, Cast) {
    let host = Host::start();
    host.add_user("alice");
    let own = host.keypair("alice");
    host.authorize_owner_key("alice", &own.public);
    let cast = Cast {
        bob: host.keypair("bob"),
        carol: host.keypair("carol"),
    };
    host.write_grants(&grants(&cast, true));
    (host, cast)
}

fn blob(key: &Key) -> &str {
    key.public.split(' ').nth(1).unwrap()
}

/// bob forges the hook's input through `~/.pam_environment` (which
/// `pam_env user_readenv=1` loads after the hook ran at open, so it is in
/// the PAM environment at close): a second `PAM_TYPE` saying open_session
/// and carol's key as `SSH_AUTH_INFO_0`. He logs out of a session that left
/// a `setsid` child. The close run must not re-admit that child as carol:
/// it stays bob's, and bob's revoke ends it.
#[test]
fn forged_pam_environment_does_not_turn_bob_into_carol() {
    let (host, c) = setup();
    let _daemon = host.start_daemon();

    let forged = format!(
        "PAM_TYPE OVERRIDE=open_session\n\
         SSH_AUTH_INFO_0 OVERRIDE=\"publickey ssh-ed25519 {}\"\n",
        blob(&c.carol)
    );
    let out = host.ssh(
        "alice",
        &c.bob,
        &format!("printf '%s' '{forged}' > ~/.pam_environment && echo written"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "written",
        "{out:?}"
    );

    // A session that leaves a setsid child and ends when its input closes.
    let escapee = format!("{}1", harness::unique_marker());
    let mut client = host.ssh_spawn(
        "alice",
        &c.bob,
        &format!("setsid nohup sleep {escapee} >/dev/null 2>&1 </dev/null & echo up; read line"),
    );
    let line = harness::first_line(&mut client, Duration::from_secs(30));
    assert_eq!(line.trim(), "up", "bob's session did not start");
    assert!(wait_until(Duration::from_secs(10), || pids_with_cmdline(
        &["sleep", &escapee]
    )
    .len()
        == 1));
    // bob covers his tracks, then logs out; his setsid child stays.
    host.ssh("alice", &c.bob, "rm -f ~/.pam_environment");
    drop(client.stdin.take());
    assert!(
        harness::wait_until(Duration::from_secs(10), || matches!(
            client.try_wait(),
            Ok(Some(_))
        )),
        "bob's login did not end"
    );
    assert_eq!(
        pids_with_cmdline(&["sleep", &escapee]).len(),
        1,
        "the setsid child should outlive the logout"
    );
    // Give the close run time to do its work.
    std::thread::sleep(Duration::from_millis(500));
    let records = host.session_records();
    assert!(
        records.iter().all(|r| r.guest != "carol"),
        "a session was recorded as carol: {records:?}"
    );
    assert!(
        records.iter().any(|r| r.guest == "bob"),
        "bob's lingering session lost its record: {records:?}"
    );

    host.write_grants(&grants(&c, false));
    assert!(
        wait_until(GONE_WITHIN, || pids_with_cmdline(&["sleep", &escapee])
            .is_empty()),
        "bob's setsid child survived bob's revoke:\n{}",
        host.daemon_log()
    );
    // carol was never touched: she still logs in.
    host.assert_logs_in_as("alice", &c.carol, "alice");
}
