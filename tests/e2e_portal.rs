//! The guest portal end to end (`ssh vmshare@HOST`): a real sshd with the
//! shipped drop-in, the package's portal account, real PAM, the daemon,
//! real ssh clients driving a terminal as a person would.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::{Duration, Instant};

use harness::{wait_until, Host, Key, LiveSession, TtySession, GRANTS};

const SHOWN_WITHIN: Duration = Duration::from_secs(20);
const GONE_WITHIN: Duration = Duration::from_secs(10);

/// alice, an owner with her own key; the daemon running.
fn host_with_alice() -> (Host, Key, harness::Daemon) {
    let host = Host::start();
    host.add_user("alice");
    let alice = host.keypair("alice");
    host.authorize_owner_key("alice", &alice.public);
    let daemon = host.start_daemon();
    (host, alice, daemon)
}

fn invite(host: &Host, owner: &str, guest: &Key) {
    host.run_ok(&[
        "vmshare",
        "invite",
        owner,
        &guest.name,
        "--key",
        &guest.public,
    ]);
}

/// `ssh vmshare@host COMMAND` with `key`: (exit code, stdout, stderr).
fn portal(host: &Host, key: &Key, command: &str) -> (Option<i32>, String, String) {
    let out = host.ssh("vmshare", key, command);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_of(host: &Host, owner: &str, guest: &str) -> Option<String> {
    let out = host.run_ok(&["vmshare", "status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["owners"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == owner)?["guests"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == guest)
        .map(|g| g["status"].as_str().unwrap_or("").to_string())
}

#[test]
fn an_invited_guest_accepts_at_a_terminal_and_then_logs_in() {
    let (host, alice, _daemon) = host_with_alice();
    let journal = host.capture_journal();
    let bob = host.keypair("bob");
    invite(&host, "alice", &bob);
    host.run_ok(&["vmshare", "sharing", "alice", "on"]);
    host.assert_refused("alice", &bob);

    let mut tty = TtySession::open(&host, "vmshare", &bob, "");
    let asked = tty.wait_for(SHOWN_WITHIN, |s| {
        s.contains("Accept alice's invitation?").then_some(())
    });
    assert!(asked.is_some(), "no prompt on the terminal:\n{}", tty.shown);
    assert!(tty.shown.contains("Hello bob."), "{}", tty.shown);
    assert!(
        tty.shown
            .contains("alice invited you to share alice's account on this VM"),
        "{}",
        tty.shown
    );
    tty.type_in("a\r");
    let done = tty.wait_for(SHOWN_WITHIN, |s| {
        s.contains("Your shares on this VM").then_some(())
    });
    assert!(done.is_some(), "{}", tty.shown);
    assert!(
        tty.shown.contains("Accepted alice's invitation."),
        "{}",
        tty.shown
    );
    assert!(tty.shown.contains("ssh alice@127.0.0.1"), "{}", tty.shown);
    assert!(tty.shown.contains("User alice"), "{}", tty.shown);
    assert!(
        tty.shown.contains("accepted, you can log in"),
        "{}",
        tty.shown
    );
    drop(tty);

    assert_eq!(
        status_of(&host, "alice", "bob").as_deref(),
        Some("accepted")
    );
    host.assert_logs_in_as("alice", &bob, "alice");
    host.assert_logs_in_as("alice", &alice, "alice");
    let fp = vmshare::grant::key::parse_key(&bob.public)
        .unwrap()
        .fingerprint
        .to_string();
    assert!(
        journal
            .wait_for(
                &[
                    "VMSHARE_EVENT=accept",
                    "VMSHARE_OWNER=alice",
                    "VMSHARE_GUEST=bob",
                    &format!("VMSHARE_FINGERPRINT={fp}"),
                ],
                Duration::from_secs(10)
            )
            .is_some(),
        "no accept event: {:?}",
        journal.events()
    );
}

/// Each key answers for its own invitations only: a guest sees only its
/// own shares, cannot answer another guest's invitation nor an owner's it
/// does not have; a key of no guest does not reach the portal at all.
#[test]
fn a_key_answers_for_itself_only() {
    let (host, _alice, _daemon) = host_with_alice();
    host.add_user("dave");
    let bob = host.keypair("bob");
    let carol = host.keypair("carol");
    let frank = host.keypair("frank");
    invite(&host, "alice", &bob);
    invite(&host, "alice", &carol);
    invite(&host, "dave", &bob);
    host.run_ok(&["vmshare", "sharing", "alice", "on"]);

    let (code, out, _) = portal(&host, &carol, "list --json");
    assert_eq!(code, Some(0), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let shares = json["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 1, "{out}");
    assert_eq!(shares[0]["owner"], "alice");
    assert_eq!(shares[0]["guest"], "carol");
    assert!(!out.contains("bob") && !out.contains("dave"), "{out}");

    // carol accepts: her own invitation, not bob's.
    let (code, out, err) = portal(&host, &carol, "accept alice");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        status_of(&host, "alice", "carol").as_deref(),
        Some("accepted")
    );
    assert_eq!(status_of(&host, "alice", "bob").as_deref(), Some("invited"));
    // dave never invited carol.
    let before = host.read_file(GRANTS).unwrap();
    let (code, _, err) = portal(&host, &carol, "accept dave");
    assert_eq!(code, Some(1));
    assert!(err.contains("no invitation from dave"), "{err}");
    assert_eq!(host.read_file(GRANTS).unwrap(), before);

    // bob rejects alice, and cannot log in; dave's invitation stays.
    let (code, out, err) = portal(&host, &bob, "reject alice");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Rejected alice's invitation."), "{out}");
    assert_eq!(
        status_of(&host, "alice", "bob").as_deref(),
        Some("rejected")
    );
    assert_eq!(status_of(&host, "dave", "bob").as_deref(), Some("invited"));
    host.assert_refused("alice", &bob);

    // No guest's key: sshd is given no line for it.
    host.assert_refused("vmshare", &frank);
}

/// Answers follow the lifecycle rules, and each is answered clearly.
#[test]
fn answers_follow_the_lifecycle() {
    let (host, _alice, _daemon) = host_with_alice();
    let bob = host.keypair("bob");
    invite(&host, "alice", &bob);

    // Sharing off: accepted, with a note.
    let (code, out, _) = portal(&host, &bob, "accept alice");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("sharing turned off"), "{out}");
    // Twice: nothing changes.
    let (code, out, _) = portal(&host, &bob, "accept alice");
    assert_eq!(code, Some(0));
    assert!(out.contains("Already accepted"), "{out}");

    // An expired invitation cannot be accepted.
    let carol = host.keypair("carol");
    host.run_ok(&[
        "vmshare",
        "invite",
        "alice",
        "carol",
        "--key",
        &carol.public,
        "--expires",
        "2s",
    ]);
    std::thread::sleep(Duration::from_secs(3));
    let before = host.read_file(GRANTS).unwrap();
    let (code, _, err) = portal(&host, &carol, "accept alice");
    assert_eq!(code, Some(1));
    assert!(err.contains("invitation ended at"), "{err}");
    assert_eq!(host.read_file(GRANTS).unwrap(), before);

    // Only from allowed addresses: accepting from elsewhere is refused.
    let erin = host.keypair("erin");
    host.run_ok(&[
        "vmshare",
        "invite",
        "alice",
        "erin",
        "--key",
        &erin.public,
        "--from",
        "192.0.2.0/24",
    ]);
    let (code, _, err) = portal(&host, &erin, "accept alice");
    assert_eq!(code, Some(1));
    assert!(err.contains("you are connecting from 127.0.0.1"), "{err}");
    assert_eq!(
        status_of(&host, "alice", "erin").as_deref(),
        Some("invited")
    );

    // After a revoke there is nothing to answer (and sshd has no line).
    host.run_ok(&["vmshare", "revoke", "alice", "bob"]);
    host.assert_refused("vmshare", &bob);
}

#[test]
fn leaving_through_the_portal_ends_live_sessions() {
    let (host, alice, _daemon) = host_with_alice();
    let bob = host.keypair("bob");
    invite(&host, "alice", &bob);
    host.run_ok(&["vmshare", "accept", "alice", "bob"]);
    host.run_ok(&["vmshare", "sharing", "alice", "on"]);
    let mut session = LiveSession::open(&host, "alice", &bob);
    let started = Instant::now();
    let (code, out, err) = portal(&host, &bob, "leave alice --json");
    assert_eq!(code, Some(0), "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["result"], "answered");
    assert_eq!(json["status"], "left");
    assert!(
        session.wait_gone(GONE_WITHIN).is_some(),
        "bob's session outlived his leaving:\n{}",
        host.daemon_log()
    );
    eprintln!("left → session gone in {:?}", started.elapsed());
    assert_eq!(status_of(&host, "alice", "bob").as_deref(), Some("left"));
    host.assert_refused("alice", &bob);
    host.assert_logs_in_as("alice", &alice, "alice");
}

/// The portal offers nothing but its commands: no shell, no file transfer,
/// no forwarding, no idle connection; hostile input is refused, and
/// nothing changes.
#[test]
fn the_portal_offers_nothing_else() {
    let (host, _alice, _daemon) = host_with_alice();
    let bob = host.keypair("bob");
    invite(&host, "alice", &bob);
    let grants = host.read_file(GRANTS).unwrap();
    let unchanged = |what: &str| {
        assert_eq!(
            host.read_file(GRANTS).unwrap(),
            grants,
            "{what} changed the grant file"
        );
    };

    for (command, said) in [
        ("bash -c id", "not a portal command"),
        ("accept alice; id", "not a portal command"),
        ("internal-sftp", "no file transfer"),
        ("scp -t /tmp/x", "no file transfer"),
        ("list\u{7f}\u{1b}[2J", "not a portal command"),
        ("frobnicate", "`frobnicate` is not a portal command"),
    ] {
        let (code, out, err) = portal(&host, &bob, command);
        assert_eq!(code, Some(1), "{command:?}: {out}{err}");
        assert!(err.contains(said), "{command:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{command:?}: {err}");
        unchanged(command);
    }
    let long = format!("accept {}", "a".repeat(5000));
    let (code, _, err) = portal(&host, &bob, &long);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a portal command"), "{err}");
    unchanged("a long line");

    // sftp and legacy scp reach the portal, which refuses them.
    let key_opts = |cmd: &mut std::process::Command| {
        cmd.args(["-i", &bob.private]).args(harness::CLIENT_OPTIONS);
    };
    let mut sftp = host.command(&["sftp", "-b", "/dev/null"]);
    key_opts(&mut sftp);
    let out = sftp.arg("vmshare@127.0.0.1").output().unwrap();
    assert!(!out.status.success(), "sftp worked: {out:?}");
    let mut scp = host.command(&["scp", "-O"]);
    key_opts(&mut scp);
    let out = scp
        .args(["/etc/hostname", "vmshare@127.0.0.1:/tmp/portal-x"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "scp worked: {out:?}");
    assert!(host.read_file("/tmp/portal-x").is_err());

    // No forwarding of any kind.
    let out = host
        .ssh_command_with(&["-W", "127.0.0.1:22"], "vmshare", &bob, "list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let out = host
        .ssh_command_with(
            &["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22"],
            "vmshare",
            &bob,
            "list",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    // Environment sent by the client has no effect.
    let out = host
        .ssh_command_with(&["-o", "SetEnv=LC_PORTAL=accept"], "vmshare", &bob, "list")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    unchanged("forwarding and environment");

    // -N runs nothing, and sshd ends it soon.
    let mut idle = host
        .ssh_command_to(&["-N"], "vmshare@127.0.0.1", &bob, None)
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || matches!(
            idle.try_wait(),
            Ok(Some(_))
        )),
        "an idle portal connection stayed"
    );
    unchanged("-N");

    // A terminal closed at the prompt answers nothing.
    let mut tty = TtySession::open(&host, "vmshare", &bob, "");
    assert!(tty
        .wait_for(SHOWN_WITHIN, |s| s
            .contains("Accept alice's invitation?")
            .then_some(()))
        .is_some());
    drop(tty);
    std::thread::sleep(Duration::from_millis(500));
    unchanged("a closed terminal");
    assert_eq!(status_of(&host, "alice", "bob").as_deref(), Some("invited"));

    // Answers only from a portal session: from inside the owner's account
    // the control socket refuses them.
    host.run_ok(&["vmshare", "accept", "alice", "bob"]);
    host.run_ok(&["vmshare", "sharing", "alice", "on"]);
    let carol = host.keypair("carol");
    invite(&host, "alice", &carol);
    let fp = vmshare::grant::key::parse_key(&carol.public)
        .unwrap()
        .fingerprint
        .to_string();
    let forged = format!(
        "python3 -c 'import socket,struct,json,sys\nb=json.dumps({{\"op\":\"portal_answer\",\"fingerprint\":\"{fp}\",\"owner\":\"alice\",\"answer\":\"accept\"}}).encode()\ns=socket.socket(socket.AF_UNIX);s.connect(\"/run/vmshare/control.sock\");s.sendall(struct.pack(\">I\",len(b))+b);n=struct.unpack(\">I\",s.recv(4))[0];print(s.recv(n).decode())'"
    );
    let out = host.ssh("alice", &bob, &forged);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("not a guest portal session"), "{said}{out:?}");
    assert_eq!(
        status_of(&host, "alice", "carol").as_deref(),
        Some("invited")
    );
}

#[test]
fn invite_says_what_to_tell_the_guest() {
    let (host, _alice, _daemon) = host_with_alice();
    let bob = host.keypair("bob");
    let said = host.run_ok(&["vmshare", "invite", "alice", "bob", "--key", &bob.public]);
    assert!(
        said.contains("tell bob: to accept, run `ssh vmshare@"),
        "{said}"
    );
}

/// On a fleet VM (the grant file written by vmshare-sync) the portal shows
/// the shares and says where answers are given; it never edits the file.
#[test]
fn a_fleet_vm_shows_and_sends_answers_to_the_fleet() {
    let (host, _alice, _daemon) = host_with_alice();
    let bob = host.keypair("bob");
    host.write_grants(&format!(
        "# vmshare-sync: /vmshare/v1/vms/vm-1 at revision 7\n[owners.alice]\nsharing = true\n\n[owners.alice.guests.bob]\nstatus = \"invited\"\nkeys = [\"{}\"]\n",
        bob.public
    ));
    host.hold("alice");
    let grants = host.read_file(GRANTS).unwrap();
    let (code, out, _) = portal(&host, &bob, "list");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("managed by the fleet"), "{out}");
    let (code, _, err) = portal(&host, &bob, "accept alice");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("managed by its fleet's control plane"),
        "{err}"
    );
    assert_eq!(host.read_file(GRANTS).unwrap(), grants);
}
