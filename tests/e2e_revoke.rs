//! Immediate revoke, end to end: live guest sessions — including processes
//! that escaped with `setsid nohup` — end when the grant goes, however the
//! grant file is saved; nobody else's session is touched; a restarted or
//! stopped daemon loses nothing.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use harness::{Host, Key, LiveSession, TtySession};

/// Generous bound for a kill in tests; the benchmark measures the real figure.
const GONE_WITHIN: Duration = Duration::from_secs(10);

struct Cast {
    alice: Key,
    bob: Key,
    carol: Key,
}

fn owner(host: &Host, name: &str) -> Key {
    host.add_user(name);
    let key = host.keypair(name);
    host.authorize_owner_key(name, &key.public);
    key
}

/// alice shares with bob and carol, both accepted.
fn both_accepted(c: &Cast) -> String {
    grants(c, "accepted", true, true)
}

fn grants(c: &Cast, bob_status: &str, sharing: bool, bob_keeps_key: bool) -> String {
    let bob_keys = if bob_keeps_key {
        format!("\"{}\"", c.bob.public)
    } else {
        String::new()
    };
    format!(
        "# shared VM\n[owners.alice]\nsharing = {sharing}\n\n\
         [owners.alice.guests.bob]\nstatus = \"{bob_status}\"\nkeys = [{bob_keys}]\n\n\
         [owners.alice.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
        c.carol.public
    )
}

fn setup() -> (Host, Cast) {
    let host = Host::start();
    let alice = owner(&host, "alice");
    let cast = Cast {
        alice,
        bob: host.keypair("bob"),
        carol: host.keypair("carol"),
    };
    host.write_grants(&both_accepted(&cast));
    host.hold("alice");
    (host, cast)
}

#[derive(Clone, Copy, Debug)]
enum Save {
    Rename,
    InPlace,
    Vim,
}

fn save(host: &Host, how: Save, text: &str) {
    match how {
        Save::Rename => host.write_grants(text),
        Save::InPlace => host.write_grants_in_place(text),
        Save::Vim => host.write_grants_vim_style(text),
    }
}

/// For each way of saving: bob (with an escapee) is gone after `revoked`
/// is saved; carol's and alice's own sessions survive; bob cannot log in
/// again.
fn revoke_case(name: &str, revoked: impl Fn(&Cast) -> String, carol_survives: bool) {
    let (host, c) = setup();
    let _daemon = host.start_daemon();
    for how in [Save::Rename, Save::InPlace, Save::Vim] {
        host.write_grants(&both_accepted(&c));
        let mut bob = LiveSession::open(&host, "alice", &c.bob);
        let mut carol = LiveSession::open(&host, "alice", &c.carol);
        let mut own = LiveSession::open(&host, "alice", &c.alice);

        let started = std::time::Instant::now();
        save(&host, how, &revoked(&c));
        let took = bob.wait_gone(GONE_WITHIN).unwrap_or_else(|| {
            panic!(
                "{name} by {how:?}: bob's session (and escapee) still alive after {GONE_WITHIN:?}\n{}",
                host.daemon_log()
            )
        });
        eprintln!(
            "{name} by {how:?}: bob's session gone {:?} after the save ({took:?} of polling)",
            started.elapsed()
        );
        // Give a wrong kill time to happen before checking for collateral.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            own.processes(),
            2,
            "{name} by {how:?}: the owner's own session was hit"
        );
        assert!(
            matches!(own.child.try_wait(), Ok(None)),
            "{name} by {how:?}: owner's ssh ended"
        );
        if carol_survives {
            assert_eq!(
                carol.processes(),
                2,
                "{name} by {how:?}: carol's session was hit"
            );
        } else {
            assert!(
                carol.wait_gone(GONE_WITHIN).is_some(),
                "{name} by {how:?}: carol survived"
            );
        }
        host.assert_refused("alice", &c.bob);
        host.assert_logs_in_as("alice", &c.alice, "alice");
    }
}

#[test]
fn removing_the_guest_table_ends_live_sessions() {
    revoke_case(
        "guest table removed",
        |c| {
            format!(
                "[owners.alice]\nsharing = true\n\n[owners.alice.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
                c.carol.public
            )
        },
        true,
    );
}

#[test]
fn status_rejected_ends_live_sessions() {
    revoke_case(
        "status rejected",
        |c| grants(c, "rejected", true, true),
        true,
    );
}

#[test]
fn status_left_ends_live_sessions() {
    revoke_case("status left", |c| grants(c, "left", true, true), true);
}

#[test]
fn status_invited_ends_live_sessions() {
    revoke_case("status invited", |c| grants(c, "invited", true, true), true);
}

#[test]
fn removing_the_key_ends_live_sessions() {
    revoke_case("key removed", |c| grants(c, "accepted", true, false), true);
}

#[test]
fn sharing_off_ends_every_guest_session() {
    revoke_case("sharing off", |c| grants(c, "accepted", false, true), false);
}

#[test]
fn removing_the_owner_table_ends_every_guest_session() {
    revoke_case(
        "owner table removed",
        |_| "# nothing shared\n".to_string(),
        false,
    );
}

#[test]
fn invalid_grant_file_ends_every_guest_session() {
    revoke_case(
        "file made invalid",
        |c| both_accepted(c).replace("status = \"accepted\"", "stauts = \"accepted\""),
        false,
    );
}

#[test]
fn daemon_restart_adopts_live_sessions() {
    let (host, c) = setup();
    let daemon = host.start_daemon();
    let mut bob = LiveSession::open(&host, "alice", &c.bob);
    let carol = LiveSession::open(&host, "alice", &c.carol);
    daemon.kill();
    let _daemon = host.start_daemon();
    // The restart itself ends nothing.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(bob.processes(), 2, "restart ended bob's session");
    host.write_grants(&grants(&c, "rejected", true, true));
    assert!(
        bob.wait_gone(GONE_WITHIN).is_some(),
        "adopted session survived revoke:\n{}",
        host.daemon_log()
    );
    assert_eq!(carol.processes(), 2);
}

#[test]
fn with_daemon_down_revoke_refuses_logins_and_kills_on_return() {
    let (host, c) = setup();
    let daemon = host.start_daemon();
    let mut before = LiveSession::open(&host, "alice", &c.bob);
    daemon.kill();
    // Opened while the daemon is down: still recorded and confined.
    let mut during = LiveSession::open(&host, "alice", &c.bob);
    let carol = LiveSession::open(&host, "alice", &c.carol);
    host.write_grants(&grants(&c, "left", true, true));
    host.assert_refused("alice", &c.bob);
    host.assert_logs_in_as("alice", &c.carol, "alice");
    assert_eq!(during.processes(), 2, "nothing kills without the daemon");
    let _daemon = host.start_daemon();
    assert!(
        before.wait_gone(GONE_WITHIN).is_some(),
        "old session survived the daemon's return"
    );
    assert!(
        during.wait_gone(GONE_WITHIN).is_some(),
        "session opened while down survived the daemon's return"
    );
    assert_eq!(carol.processes(), 2);
}

#[test]
fn leave_ends_the_callers_sessions_only_and_refuses_the_owner() {
    let (host, c) = setup();
    let _daemon = host.start_daemon();
    let mut bob = LiveSession::open(&host, "alice", &c.bob);
    let carol = LiveSession::open(&host, "alice", &c.carol);
    let own = LiveSession::open(&host, "alice", &c.alice);

    let who = host.ssh("alice", &c.bob, "vmshare whoami");
    let who_out = String::from_utf8_lossy(&who.stdout);
    assert!(
        who.status.success() && who_out.contains("bob"),
        "whoami as bob: {who_out} {}",
        String::from_utf8_lossy(&who.stderr)
    );

    let refused = host.ssh("alice", &c.alice, "vmshare leave");
    assert!(
        !refused.status.success(),
        "the owner's own session may not leave"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not in a guest session"));

    // Spoofing the identity through the environment changes nothing.
    let spoof = host.ssh(
        "alice",
        &c.carol,
        "VMSHARE_GUEST=bob SSH_AUTH_INFO_0='publickey x' vmshare whoami",
    );
    assert!(String::from_utf8_lossy(&spoof.stdout).contains("carol"));

    bob_leaves(&host, &c, &mut bob);
    let text = host.read_file(harness::GRANTS).unwrap();
    assert!(text.starts_with("# shared VM"), "comments kept: {text}");
    host.assert_refused("alice", &c.bob);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(carol.processes(), 2, "carol was hit by bob's leave");
    assert_eq!(own.processes(), 2, "the owner was hit by bob's leave");
}

/// What `edit::lock_path` names for the grant file: the edit lock.
const EDIT_LOCK: &str = "/etc/vmshare/.grants.toml.lock";

#[test]
fn a_held_edit_lock_neither_stalls_revokes_nor_hangs_leave() {
    use std::os::unix::fs::OpenOptionsExt;

    let (host, c) = setup();
    let _daemon = host.start_daemon();
    let mut carol = LiveSession::open(&host, "alice", &c.carol);
    let mut bob = LiveSession::open(&host, "alice", &c.bob);

    // Another edit holds the lock for longer than any test waits.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(host.path(EDIT_LOCK))
        .expect("open the edit lock");
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .unwrap_or_else(|(_, e)| panic!("lock: {e}"));

    // bob asks to leave while the lock is held ...
    let started = std::time::Instant::now();
    let mut leave = leave_by_terminal(&host, &c.bob);
    std::thread::sleep(Duration::from_millis(500));

    // ... and carol is revoked meanwhile: she is gone at the usual pace.
    host.write_grants(&only_bob(&c));
    assert!(
        carol.wait_gone(Duration::from_secs(5)).is_some(),
        "a revoke waited behind a held edit lock:\n{}",
        host.daemon_log()
    );

    // The leave answers "busy" well before the lock's own 30 s timeout.
    let busy = leave.wait_for(Duration::from_secs(10), |s| {
        (s.contains("being edited") && s.contains("try again")).then_some(())
    });
    assert!(busy.is_some(), "leave under a held lock: {}", leave.shown);
    assert!(started.elapsed() < Duration::from_secs(15));
    let text = host.read_file(harness::GRANTS).unwrap();
    assert!(!text.contains("\"left\""), "{text}");
    assert_eq!(
        bob.processes(),
        2,
        "bob's session ended though leave failed"
    );

    // Once the lock is free, the same leave goes through.
    drop(held);
    bob_leaves(&host, &c, &mut bob);
}

/// The daemon runs with the descriptor limit systemd gives a unit that
/// sets none (1024), and a local user who is no guest holds more control
/// connections than that: a revoke still ends bob's session at once, and
/// the daemon answers again once the flood stops.
#[test]
fn a_local_users_connection_flood_does_not_stop_a_revoke() {
    let (host, c) = setup();
    host.add_user("mallory");
    let _daemon = host.start_daemon_with(&["prlimit", "--nofile=1024:1024", "--"]);
    let mut bob = LiveSession::open(&host, "alice", &c.bob);
    let carol = LiveSession::open(&host, "alice", &c.carol);

    let flood = host.flood_control_socket("mallory", 1500);
    // Let the flood reach the daemon's limit (or its caps).
    std::thread::sleep(Duration::from_secs(2));
    let started = std::time::Instant::now();
    host.write_grants(&grants(&c, "left", true, true));
    let took = bob.wait_gone(Duration::from_secs(3));
    eprintln!(
        "under the flood, bob's session gone after {:?}",
        started.elapsed()
    );
    assert!(
        took.is_some(),
        "bob's session outlived the revoke by 3 s under a connection flood:\n{}",
        host.daemon_log()
    );
    assert_eq!(carol.processes(), 2, "carol's session was hit");

    drop(flood);
    let socket = host.path("/run/vmshare/control.sock");
    let answers = harness::wait_until(Duration::from_secs(10), || {
        matches!(
            vmshare::control::call(&socket, &vmshare::control::Request::Whoami),
            Ok(vmshare::control::Response::NotAGuest { uid: 0 })
        )
    });
    assert!(answers, "the daemon does not answer after the flood");
}

/// bob leaves from a new session; `bob`, his other session, ends with it.
fn bob_leaves(host: &Host, c: &Cast, bob: &mut LiveSession) {
    let leave = leave_by_terminal(host, &c.bob);
    assert_left(host, "bob", leave);
    assert!(
        bob.wait_gone(GONE_WITHIN).is_some(),
        "bob's other session survived leave:\n{}",
        host.daemon_log()
    );
    assert_eq!(status_of(host, "bob"), "left");
}

/// What vmshared writes before the code on a guest's terminal.
const CODE_SHOWN: &str = "type this code when asked: ";

/// The leave code a terminal showed, if any.
fn shown_code(screen: &str) -> Option<String> {
    let at = screen.find(CODE_SHOWN)? + CODE_SHOWN.len();
    let code = screen.get(at..at + 9)?;
    let digits = code.chars().filter(char::is_ascii_digit).count();
    (digits == 8).then(|| code.to_string())
}

/// A guest of alice runs `vmshare leave` in a new session with a terminal
/// and types back the code shown there.
fn leave_by_terminal(host: &Host, key: &Key) -> TtySession {
    let mut session = TtySession::open(host, "alice", key, "vmshare leave");
    let code = session
        .wait_for(Duration::from_secs(20), shown_code)
        .unwrap_or_else(|| {
            panic!(
                "no leave code shown:\n{}\n{}",
                session.shown,
                host.daemon_log()
            )
        });
    session.type_in(&format!("{code}\n"));
    session
}

/// Waits until `guest` is `left`. The leave's own session ends with the
/// guest's others, so its last words may never reach the client.
fn assert_left(host: &Host, guest: &str, leave: TtySession) {
    let left = harness::wait_until(Duration::from_secs(20), || status_of(host, guest) == "left");
    assert!(
        left,
        "{guest} did not leave: {}\n{}",
        leave.shown,
        host.daemon_log()
    );
}

/// A guest of alice's status in the grant file.
fn status_of(host: &Host, guest: &str) -> String {
    let text = host.read_file(harness::GRANTS).unwrap();
    let grants: toml::Table = text.parse().unwrap();
    grants["owners"]["alice"]["guests"][guest]["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_guest_leaves_by_typing_the_code_shown_on_her_own_terminal() {
    let (host, c) = setup();
    let _daemon = host.start_daemon();
    let mut carol = LiveSession::open(&host, "alice", &c.carol);
    let bob = LiveSession::open(&host, "alice", &c.bob);

    // Without a terminal there is nowhere to show a code: refused, with the
    // ways that work.
    let out = host.ssh("alice", &c.carol, "vmshare leave");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("ssh -t")
            && err.contains("vmshare leave alice carol"),
        "leave without a terminal: {out:?}"
    );
    assert_eq!(status_of(&host, "carol"), "accepted");
    assert_eq!(carol.processes(), 2);

    let leave = leave_by_terminal(&host, &c.carol);
    assert_left(&host, "carol", leave);
    assert!(
        carol.wait_gone(GONE_WITHIN).is_some(),
        "carol's other session survived leave:\n{}",
        host.daemon_log()
    );
    assert_eq!(status_of(&host, "carol"), "left");
    assert_eq!(status_of(&host, "bob"), "accepted");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(bob.processes(), 2, "bob was hit by carol's leave");
}

#[test]
fn a_leave_planted_in_ssh_rc_does_not_make_another_guest_leave() {
    let (host, c) = setup();
    let _daemon = host.start_daemon();
    // bob plants it in the owner's ~/.ssh/rc, which every login runs.
    let planted = host.ssh(
        "alice",
        &c.bob,
        "echo 'vmshare leave' > ~/.ssh/rc && echo planted",
    );
    assert!(String::from_utf8_lossy(&planted.stdout).contains("planted"));

    // carol logs in without a terminal: the rc's leave is refused.
    let out = host.ssh("alice", &c.carol, "echo carol-in");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("carol-in"),
        "{out:?}"
    );
    assert_eq!(status_of(&host, "carol"), "accepted");

    // With a terminal the code appears on carol's screen; the rc cannot
    // answer it, and carol, who did not ask to leave, types nothing.
    let mut login = TtySession::open(&host, "alice", &c.carol, "echo carol-shell; exec sleep 60");
    assert!(
        login
            .wait_for(Duration::from_secs(20), shown_code)
            .is_some(),
        "no code on carol's terminal: {}",
        login.shown
    );
    login.type_in("\n");
    let shell = login.wait_for(Duration::from_secs(20), |s| {
        s.contains("carol-shell").then_some(())
    });
    assert!(shell.is_some(), "carol's login: {}", login.shown);
    assert_eq!(status_of(&host, "carol"), "accepted");
    host.assert_logs_in_as("alice", &c.carol, "alice");
    let log = host.daemon_log();
    assert!(
        log.matches("leave refused").count() >= 2,
        "refusals not logged:\n{log}"
    );
}

/// What bob plants in `~/.ssh/rc`: `vmshare leave` on a terminal of its
/// own, whose screen it reads to type the code back.
const AUTO_ANSWER: &str = r#"
import os, pty, re, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp("vmshare", ["vmshare", "leave"])
seen = b""
deadline = time.time() + 20
while time.time() < deadline:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
    code = re.search(rb"[0-9]{4}-[0-9]{4}", seen)
    if code:
        os.write(fd, code.group(0) + b"\n")
        seen = b""
os.waitpid(pid, 0)
"#;

#[test]
fn a_terminal_made_inside_the_session_cannot_answer_the_code() {
    let (host, c) = setup();
    let _daemon = host.start_daemon();
    let (uid, gid, home) = host.passwd_entry("alice");
    host.write_file(
        &format!("{home}/auto_answer.py"),
        AUTO_ANSWER,
        uid,
        gid,
        0o644,
    );
    let planted = host.ssh(
        "alice",
        &c.bob,
        "echo 'python3 ~/auto_answer.py' > ~/.ssh/rc && echo planted",
    );
    assert!(
        String::from_utf8_lossy(&planted.stdout).contains("planted"),
        "{planted:?}"
    );

    let out = host.ssh("alice", &c.carol, "echo carol-in");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("carol-in"),
        "{out:?}"
    );
    let mut login = TtySession::open(&host, "alice", &c.carol, "echo carol-shell; exec sleep 60");
    let shell = login.wait_for(Duration::from_secs(30), |s| {
        s.contains("carol-shell").then_some(())
    });
    assert!(shell.is_some(), "carol's login: {}", login.shown);
    assert_eq!(status_of(&host, "carol"), "accepted");
    host.assert_logs_in_as("alice", &c.carol, "alice");
    assert!(
        host.daemon_log()
            .contains("is not a terminal sshd opened for this login"),
        "{out:?}\n{}\n{}",
        login.shown,
        host.daemon_log()
    );
}

/// alice shares with bob only; carol's table is gone.
fn only_bob(c: &Cast) -> String {
    format!(
        "# shared VM\n[owners.alice]\nsharing = true\n\n\
         [owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
        c.bob.public
    )
}
