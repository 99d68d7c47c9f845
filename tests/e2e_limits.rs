//! A guest's limits, end to end with a real sshd and real clients:
//! `expires` (sessions end at the deadline, with or without the daemon up
//! at that moment; the next login is refused), `from` (client addresses,
//! IPv4 and IPv6, checked by sshd and again by the PAM hook), and
//! `forwarding = false` (no port or agent forwarding, no `~/.ssh/rc`, a
//! terminal still works). And what the guest is told at login.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use harness::{Daemon, Host, Key, LiveSession, TtySession, CLIENT_OPTIONS};

/// Generous bound for a kill in tests; the benchmark measures the real
/// figure (goal: 100 ms after the deadline at p99).
const GONE_WITHIN: Duration = Duration::from_secs(3);

fn now_secs() -> i64 {
    (harness::realtime_ns() / 1_000_000_000) as i64
}

fn utc(secs: i64) -> String {
    vmshare::grant::civil::utc(secs)
}

struct Cast {
    host: Host,
    alice: Key,
    bob: Key,
}

/// alice with her own key, held by vmshare from the start (as `vmshare
/// invite` does); each test writes the grant file sharing with bob.
fn setup() -> Cast {
    let host = Host::start();
    host.add_user("alice");
    let alice = host.keypair("alice");
    host.authorize_owner_key("alice", &alice.public);
    host.hold("alice");
    let bob = host.keypair("bob");
    Cast { host, alice, bob }
}

/// Makes sshd also take `key` for alice, as it is, from a root-owned file
/// vmshare does not serve (a `Match` block read before vmshare's). It
/// stands in for a key line whose limits sshd lost, or a lookup that
/// answered just before the deadline: what the PAM hook checks itself.
fn sshd_also_takes(host: &mut Host, key: &Key) {
    host.mkdir("/etc/ssh/extra_keys", 0o755);
    host.write_file(
        "/etc/ssh/extra_keys/alice",
        &format!("{}\n", key.public),
        0,
        0,
        0o644,
    );
    host.write_file(
        "/etc/ssh/sshd_config.d/00-e2e-test.conf",
        "Match User alice\n\tAuthorizedKeysFile /etc/ssh/extra_keys/%u\n",
        0,
        0,
        0o644,
    );
    host.restart_sshd(nix::sys::signal::Signal::SIGTERM);
}

/// alice shares with bob, accepted, with `fields` added to bob's table.
fn grants(c: &Cast, fields: &str) -> String {
    format!(
        "[owners.alice]\nsharing = true\n\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n{fields}\n",
        c.bob.public
    )
}

/// Waits until `session` is gone and returns when that was seen, in ns of
/// CLOCK_REALTIME.
fn gone_at(session: &mut LiveSession) -> Option<i128> {
    session
        .wait_gone(Duration::from_secs(10) + GONE_WITHIN)
        .map(|_| harness::realtime_ns())
}

/// With the daemon up, bob's access ends `secs` from now: the daemon, the
/// deadline, and bob's live session (with an escapee).
fn expiring(c: &Cast, secs: i64) -> (Daemon, i64, LiveSession) {
    let daemon = c.host.start_daemon();
    let deadline = now_secs() + secs;
    c.host
        .write_grants(&grants(c, &format!("expires = {}", utc(deadline))));
    let bob = LiveSession::open(&c.host, "alice", &c.bob);
    (daemon, deadline, bob)
}

#[test]
fn sessions_end_at_the_deadline_and_the_next_login_is_refused() {
    let c = setup();
    let (daemon, deadline, mut bob) = expiring(&c, 4);
    let own = LiveSession::open(&c.host, "alice", &c.alice);

    // Still there shortly before the deadline.
    let before = deadline as i128 * 1_000_000_000 - 300_000_000;
    while harness::realtime_ns() < before {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        bob.processes(),
        2,
        "bob's session ended before its deadline"
    );

    let gone = gone_at(&mut bob).unwrap_or_else(|| {
        panic!(
            "bob's session outlived its deadline:\n{}",
            c.host.daemon_log()
        )
    });
    let late_ms = (gone - deadline as i128 * 1_000_000_000) / 1_000_000;
    eprintln!("bob's session (and escapee) gone {late_ms} ms after the deadline");
    assert!(late_ms >= 0, "ended {late_ms} ms early");
    assert!(
        late_ms <= GONE_WITHIN.as_millis() as i128,
        "ended {late_ms} ms after the deadline"
    );
    // The daemon records the kill once it has confirmed the session gone,
    // which can be just after this test saw it go.
    let logged = |log: &str| log.contains("event=\"expiry\"") || log.contains("event=expiry");
    assert!(
        harness::wait_until(Duration::from_secs(5), || logged(&c.host.daemon_log())),
        "no expiry event in the daemon's log:\n{}",
        c.host.daemon_log()
    );
    assert_eq!(own.processes(), 2, "the owner's own session was hit");
    c.host.assert_refused("alice", &c.bob);
    c.host.assert_logs_in_as("alice", &c.alice, "alice");
    drop(daemon);
}

#[test]
fn with_the_daemon_down_at_the_deadline_logins_are_refused_and_sessions_end_when_it_returns() {
    let mut c = setup();
    let (daemon, deadline, mut bob) = expiring(&c, 4);
    daemon.kill();
    while now_secs() <= deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The key lookup and the hook judge the deadline themselves.
    c.host.assert_refused("alice", &c.bob);
    // bob planted his key in the owner's file while he could: sshd does
    // not read it.
    c.host.authorize_owner_key("alice", &c.bob.public);
    c.host.assert_refused("alice", &c.bob);
    // sshd lets bob's key in all the same: the hook knows it is bob's and
    // refuses.
    sshd_also_takes(&mut c.host, &c.bob);
    c.host.assert_session_refused("alice", &c.bob);
    assert_eq!(
        bob.processes(),
        2,
        "nothing should end it with the daemon down"
    );

    let _daemon = c.host.start_daemon();
    assert!(
        bob.wait_gone(Duration::from_secs(10)).is_some(),
        "the returning daemon left the expired session:\n{}",
        c.host.daemon_log()
    );
    c.host.assert_logs_in_as("alice", &c.alice, "alice");
}

#[test]
fn a_guest_cannot_stay_by_planting_keys_or_changing_the_owners_files() {
    let c = setup();
    let _daemon = c.host.start_daemon();
    let deadline = now_secs() + 5;
    c.host
        .write_grants(&grants(&c, &format!("expires = {}", utc(deadline))));
    // From inside: bob adds his key to the owner's authorized_keys,
    // without options.
    let cmd = format!(
        "printf '%s\\n' '{}' >> ~/.ssh/authorized_keys && echo done",
        c.bob.public
    );
    let out = c.host.ssh("alice", &c.bob, &cmd);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    let mut bob = LiveSession::open(&c.host, "alice", &c.bob);
    assert!(gone_at(&mut bob).is_some(), "bob outlived his deadline");
    // sshd reads no key file in the owner's home, and his deadline has
    // passed: refused.
    c.host.assert_refused("alice", &c.bob);
    c.host.assert_logs_in_as("alice", &c.alice, "alice");
}

/// Runs ssh to `dest` (`user@address`) with client `options`.
fn ssh_to(host: &Host, options: &[&str], dest: &str, key: &Key, cmd: &str) -> std::process::Output {
    let command = (!cmd.is_empty()).then_some(cmd);
    let mut ssh = host.ssh_command_to(options, dest, key, command);
    ssh.stdin(std::process::Stdio::null());
    ssh.output().expect("running ssh")
}

/// A shell command line running ssh as the tests do, with `args` after
/// the test options.
fn ssh_line(key: &Key, args: &str) -> String {
    format!("-i {} {} {args}", key.private, CLIENT_OPTIONS.join(" "))
}

fn logged_in(out: &std::process::Output) -> bool {
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "alice"
}

#[test]
fn from_admits_only_the_listed_addresses() {
    let mut c = setup();
    let _daemon = c.host.start_daemon();
    c.host
        .write_grants(&grants(&c, "from = [\"127.0.0.2\", \"::1\"]"));
    let as_alice = |opts: &[&str], dest: &str| ssh_to(&c.host, opts, dest, &c.bob, "id -un");

    let out = as_alice(&["-b", "127.0.0.2"], "alice@127.0.0.1");
    assert!(
        logged_in(&out),
        "from 127.0.0.2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_alice(&["-b", "127.0.0.1"], "alice@127.0.0.1");
    assert_eq!(out.status.code(), Some(255), "from 127.0.0.1 got in");
    let out = as_alice(&[], "alice@::1");
    assert!(
        logged_in(&out),
        "from ::1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ssh_to(&c.host, &[], "alice@::1", &c.bob, "vmshare whoami --json");
    let who: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("whoami --json: {e}: {out:?}"));
    assert_eq!(
        who["from"],
        serde_json::json!(["127.0.0.2", "::1"]),
        "{who}"
    );
    assert!(
        who["expires"].is_null() && who["expires_in"].is_null(),
        "{who}"
    );
    assert_eq!(who["forwarding"], true, "{who}");

    c.host.write_grants(&grants(&c, "from = [\"127.0.0.2\"]"));
    let out = as_alice(&[], "alice@::1");
    assert_eq!(out.status.code(), Some(255), "from ::1 got in");
    c.host.write_grants(&grants(&c, "from = [\"::1\"]"));
    let out = as_alice(&["-b", "127.0.0.2"], "alice@127.0.0.1");
    assert_eq!(out.status.code(), Some(255), "from 127.0.0.2 got in");

    // Were sshd's option lost (here: bob's key, without `from=`, in a
    // file sshd reads first), the hook still refuses.
    sshd_also_takes(&mut c.host, &c.bob);
    let as_alice = |opts: &[&str], dest: &str| ssh_to(&c.host, opts, dest, &c.bob, "id -un");
    let out = as_alice(&["-b", "127.0.0.2"], "alice@127.0.0.1");
    assert!(
        !logged_in(&out) && matches!(out.status.code(), Some(254 | 255)),
        "the hook let bob in from 127.0.0.2: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = as_alice(&[], "alice@::1");
    assert!(
        logged_in(&out),
        "from ::1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.host.assert_logs_in_as("alice", &c.alice, "alice");
}

#[test]
fn without_forwarding_sshd_refuses_forwards_and_a_terminal_works() {
    let c = setup();
    let _daemon = c.host.start_daemon();
    // The owner's rc marks every login that runs it.
    c.host.run_ok(&[
        "sh",
        "-c",
        "printf 'touch /tmp/rc-ran\\n' > ~alice/.ssh/rc && chown alice: ~alice/.ssh/rc",
    ]);
    for forwarding in [true, false] {
        c.host
            .write_grants(&grants(&c, &format!("forwarding = {forwarding}")));
        c.host.run_ok(&["rm", "-f", "/tmp/rc-ran"]);
        let fwd = [
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "127.0.0.1:2222:127.0.0.1:22",
        ];
        let remote = ssh_to(&c.host, &fwd, "alice@127.0.0.1", &c.bob, "echo up");
        let direct = ssh_to(
            &c.host,
            &["-W", "127.0.0.1:22"],
            "alice@127.0.0.1",
            &c.bob,
            "",
        );
        // -L: the client listens; sshd opens (or refuses) the channel for
        // each connection made through it. Read sshd's banner through it.
        let local = c.host.run(&[
            "bash",
            "-c",
            &format!(
                "ssh {} & sleep 3; exec 3<>/dev/tcp/127.0.0.1/2223 && timeout 5 head -c 7 <&3; kill %1",
                ssh_line(&c.bob, "-N -L 127.0.0.1:2223:127.0.0.1:22 alice@127.0.0.1")
            ),
        ]);
        let agent = c.host.run(&[
            "ssh-agent",
            "sh",
            "-c",
            &format!(
                "ssh {}",
                ssh_line(&c.bob, "-A alice@127.0.0.1 'echo \"[$SSH_AUTH_SOCK]\"'")
            ),
        ]);
        let rc_ran = c.host.run(&["test", "-e", "/tmp/rc-ran"]).status.success();
        let agent_out = String::from_utf8_lossy(&agent.stdout).trim().to_string();
        if forwarding {
            assert!(remote.status.success(), "-R refused with forwarding on");
            assert!(
                direct.stdout.starts_with(b"SSH-2.0-"),
                "-W refused with forwarding on"
            );
            assert_eq!(local.stdout, b"SSH-2.0", "-L refused with forwarding on");
            assert_ne!(agent_out, "[]", "no agent with forwarding on");
            assert!(rc_ran, "~/.ssh/rc did not run with forwarding on");
        } else {
            assert_eq!(remote.status.code(), Some(255), "-R allowed");
            assert!(
                String::from_utf8_lossy(&remote.stderr).contains("forwarding failed"),
                "{}",
                String::from_utf8_lossy(&remote.stderr)
            );
            assert!(direct.stdout.is_empty(), "-W allowed");
            assert!(local.stdout.is_empty(), "-L allowed");
            assert_eq!(agent_out, "[]", "agent forwarded");
            assert!(!rc_ran, "~/.ssh/rc ran");
        }
        let mut tty = TtySession::open(&c.host, "alice", &c.bob, "tty; id -un");
        let shown = tty.wait_for(Duration::from_secs(20), |s| {
            s.contains("alice").then(|| s.to_string())
        });
        assert!(
            shown.as_deref().is_some_and(|s| s.contains("/dev/pts/")),
            "no terminal (forwarding = {forwarding}): {shown:?}"
        );
    }
}

#[test]
fn the_guest_is_told_at_an_interactive_login_and_nowhere_else() {
    let c = setup();
    let _daemon = c.host.start_daemon();
    // Half a minute short of two hours, so the login and whoami below
    // both show "1h59m" however quickly (or slowly, up to 30 s) they run.
    let deadline = now_secs() + 7200 - 30;
    c.host.write_grants(&grants(
        &c,
        &format!("expires = {}\nforwarding = false", utc(deadline)),
    ));
    let notice = "vmshare: you are bob, a guest in alice's account; access ends in 1h59m";

    // An interactive login (a terminal, no command): the notice, then the
    // shell, where whoami says the same.
    let mut tty = TtySession::open(&c.host, "alice", &c.bob, "");
    assert!(
        tty.wait_for(Duration::from_secs(20), |s| s
            .contains(notice)
            .then_some(()))
            .is_some(),
        "no notice on the terminal: {:?}",
        tty.shown
    );
    tty.type_in("vmshare whoami; exit\n");
    let whoami = tty.wait_for(Duration::from_secs(20), |s| {
        (s.contains("in alice's account (session")
            && s.contains("no forwarding; may not become root\r\n"))
        .then(|| s.to_string())
    });
    assert!(
        whoami.as_deref().is_some_and(|s| s
            .contains(&format!("access ends in 1h59m ({})", utc(deadline)))
            && s.contains("no forwarding")),
        "whoami: {whoami:?}"
    );
    // whoami --json says the same.
    let out = c.host.ssh("alice", &c.bob, "vmshare whoami --json");
    let who: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("whoami --json: {e}: {out:?}"));
    assert_eq!(who["format"], 1, "{who}");
    assert_eq!(who["result"], "guest", "{who}");
    assert_eq!(who["guest"], "bob", "{who}");
    assert_eq!(who["expires"], utc(deadline).as_str(), "{who}");
    let left = who["expires_in"].as_i64().unwrap_or(-1);
    assert!((7000..=7200).contains(&left), "{who}");
    assert_eq!(who["expired"], false, "{who}");
    assert!(who["from"].is_null(), "{who}");
    assert_eq!(who["forwarding"], false, "{who}");
    assert_eq!(who["admin"], false, "{who}");

    // A command, with or without a terminal, and sftp: nothing extra.
    let out = c.host.ssh("alice", &c.bob, "echo hi");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("vmshare:"));
    let out = c.host.run(&[
        "sh",
        "-c",
        &format!(
            "ssh {} </dev/null",
            ssh_line(&c.bob, "-tt alice@127.0.0.1 'echo hi'")
        ),
    ]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("vmshare:"));
    let sftp = c.host.run(&[
        "sh",
        "-c",
        &format!(
            "echo pwd | sftp -b - {}",
            ssh_line(&c.bob, "alice@127.0.0.1")
        ),
    ]);
    let sftp_out = String::from_utf8_lossy(&sftp.stdout);
    assert!(
        sftp.status.success(),
        "sftp: {}",
        String::from_utf8_lossy(&sftp.stderr)
    );
    assert!(!sftp_out.contains("vmshare:"), "{sftp_out}");
    // The owner is told nothing.
    let mut own = TtySession::open(&c.host, "alice", &c.alice, "");
    own.type_in("echo owner-shell; exit\n");
    let shown = own.wait_for(Duration::from_secs(20), |s| {
        s.contains("owner-shell\r\n").then(|| s.to_string())
    });
    assert!(
        shown.is_some_and(|s| !s.contains("vmshare:")),
        "owner's terminal: {:?}",
        own.shown
    );
}
