//! The control socket and the operator's views against a live system: the
//! daemon survives hostile clients, changes are root-only, and `status` /
//! `sessions` show real sshd sessions.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use harness::{Host, Key, LiveSession};

const SOCKET: &str = "/run/vmshare/control.sock";

fn owner(host: &Host, name: &str) -> Key {
    host.add_user(name);
    let key = host.keypair(name);
    host.authorize_owner_key(name, &key.public);
    key
}

fn grants(bob: &Key, carol: &Key) -> String {
    format!(
        "[owners.alice]\nsharing = true\n\n\
         [owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n\n\
         [owners.alice.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
        bob.public, carol.public
    )
}

/// Sends raw bytes, then reads whatever comes back until EOF or timeout.
fn raw_exchange(host: &Host, bytes: &[u8], close_write: bool) -> Vec<u8> {
    let mut s = UnixStream::connect(host.path(SOCKET)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A well-formed whoami from root outside any session: the daemon answers.
fn assert_serving(host: &Host) {
    let reply = vmshare::control::call(&host.path(SOCKET), &vmshare::control::Request::Whoami)
        .unwrap_or_else(|e| panic!("daemon stopped serving: {e}\n{}", host.daemon_log()));
    assert_eq!(reply, vmshare::control::Response::NotAGuest { uid: 0 });
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// One local user holding far more control connections than the daemon has
/// descriptors (its limit is 1024, systemd's default) takes only its own
/// share: root and a guest still get their answers meanwhile.
/// alice shares with bob and carol, both accepted.
fn shared_with_bob_and_carol() -> (Host, Key, Key) {
    let host = Host::start();
    owner(&host, "alice");
    let bob = host.keypair("bob");
    let carol = host.keypair("carol");
    host.write_grants(&grants(&bob, &carol));
    host.hold("alice");
    (host, bob, carol)
}

#[test]
fn one_users_connection_flood_leaves_other_users_their_answers() {
    let (host, bob, _carol) = shared_with_bob_and_carol();
    host.add_user("mallory");
    let _daemon = host.start_daemon_with(&["prlimit", "--nofile=1024:1024", "--"]);

    let _flood = host.flood_control_socket("mallory", 1500);
    std::thread::sleep(Duration::from_secs(2));
    for round in 0..3 {
        let started = Instant::now();
        let root = vmshare::control::call(&host.path(SOCKET), &vmshare::control::Request::Whoami);
        assert!(
            matches!(root, Ok(vmshare::control::Response::NotAGuest { uid: 0 })),
            "round {round}: root's whoami under the flood: {root:?}\n{}",
            host.daemon_log()
        );
        let guest = host.ssh("alice", &bob, "vmshare whoami");
        let text = String::from_utf8_lossy(&guest.stdout);
        assert!(
            guest.status.success() && text.contains("guest bob in alice's account"),
            "round {round}: bob's whoami under the flood: {guest:?}"
        );
        eprintln!("round {round}: both answered in {:?}", started.elapsed());
    }
}

#[test]
fn hostile_clients_are_refused_and_the_daemon_keeps_serving() {
    let (host, _bob, carol) = shared_with_bob_and_carol();
    let _daemon = host.start_daemon();
    assert_serving(&host);

    // Garbage: the first four bytes read as a length far over the limit.
    let reply = raw_exchange(&host, b"GET / HTTP/1.1\r\n\r\n", true);
    assert!(
        String::from_utf8_lossy(&reply).contains("exceeds the limit"),
        "{reply:?}"
    );
    assert_serving(&host);

    // Oversized frame announced.
    let reply = raw_exchange(&host, &(1u32 << 20).to_be_bytes(), true);
    assert!(String::from_utf8_lossy(&reply).contains("exceeds the limit"));
    assert_serving(&host);

    // Truncated frame: 100 bytes announced, 10 sent, then EOF.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(b"{\"op\":\"le");
    let reply = raw_exchange(&host, &truncated, true);
    assert!(
        String::from_utf8_lossy(&reply).contains("bad request"),
        "{reply:?}"
    );
    assert_serving(&host);

    // Well framed but not a request, or a request with extra fields.
    for body in [
        &b"\xff\xfe"[..],
        b"{\"op\":\"format_disk\"}",
        b"{\"op\":\"leave\",\"guest\":\"carol\"}",
    ] {
        let reply = raw_exchange(&host, &frame(body), false);
        assert!(
            String::from_utf8_lossy(&reply).contains("bad request"),
            "{reply:?}"
        );
    }
    assert_serving(&host);

    // Clients that connect and say nothing do not hold others up.
    let idle: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(host.path(SOCKET)).expect("connect"))
        .collect();
    let started = Instant::now();
    assert_serving(&host);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "idle clients delayed an answer"
    );
    drop(idle);

    // A non-root caller asking for a change is refused.
    let script = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect("/run/vmshare/control.sock")
body = b'{"op":"reload"}'
s.sendall(struct.pack(">I", len(body)) + body)
n = struct.unpack(">I", s.recv(4))[0]
sys.stdout.write(s.recv(n).decode())
"#;
    let out = host.run(&[
        "setpriv",
        "--reuid=alice",
        "--regid=alice",
        "--clear-groups",
        "python3",
        "-c",
        script,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("only root"),
        "non-root reload: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Root may.
    let root =
        vmshare::control::call(&host.path(SOCKET), &vmshare::control::Request::Reload).unwrap();
    assert!(
        matches!(root, vmshare::control::Response::Reloaded { .. }),
        "{root:?}"
    );

    // Nothing above touched the grants: carol is still accepted and in.
    assert!(
        host.read_file(harness::GRANTS)
            .unwrap()
            .matches("\"accepted\"")
            .count()
            == 2
    );
    host.assert_logs_in_as("alice", &carol, "alice");
}

#[test]
fn status_and_sessions_show_live_guest_sessions() {
    let (host, bob, _carol) = shared_with_bob_and_carol();
    let _daemon = host.start_daemon();
    let _session = LiveSession::open(&host, "alice", &bob);
    let fingerprint = host.run_ok(&["ssh-keygen", "-lf", &format!("{}.pub", bob.private)]);
    let fingerprint = fingerprint
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string();

    let sessions: serde_json::Value =
        serde_json::from_str(&host.run_ok(&["vmshare", "sessions", "--json"]))
            .expect("sessions JSON");
    assert_eq!(sessions["format"], 1);
    let list = sessions["sessions"].as_array().expect("sessions array");
    assert_eq!(list.len(), 1, "{sessions}");
    let s = &list[0];
    assert_eq!(s["owner"], "alice");
    assert_eq!(s["guest"], "bob");
    assert_eq!(s["from"], "127.0.0.1");
    assert_eq!(s["fingerprint"], fingerprint.as_str());
    assert_eq!(s["alive"], true);

    let status: serde_json::Value =
        serde_json::from_str(&host.run_ok(&["vmshare", "status", "--json"])).expect("status JSON");
    assert_eq!(status["grants"]["state"], "valid");
    assert_eq!(status["snapshot"]["current"], true, "{status}");
    let alice = status["owners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "alice")
        .expect("alice");
    assert_eq!(alice["keys_held"], true, "{status}");
    assert_eq!(alice["held_lines"], 1, "{status}");
    let guests = alice["guests"].as_array().unwrap();
    let bob_status = guests.iter().find(|g| g["name"] == "bob").expect("bob");
    assert_eq!(bob_status["status"], "accepted");
    assert_eq!(bob_status["access"], true);
    assert_eq!(
        bob_status["sessions"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    let carol_status = guests.iter().find(|g| g["name"] == "carol").expect("carol");
    assert_eq!(carol_status["sessions"].as_array().unwrap().len(), 0);

    // The guest sees who they are from inside the session.
    let who = host.ssh("alice", &bob, "vmshare whoami --json");
    let who: serde_json::Value = serde_json::from_slice(&who.stdout).expect("whoami JSON");
    assert_eq!(who["result"], "guest");
    assert_eq!(who["guest"], "bob");
    assert_eq!(who["fingerprint"], fingerprint.as_str());
}
