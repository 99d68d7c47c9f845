//! Faults, end to end: the daemon killed in the middle of a storm of edits,
//! a corrupt or truncated snapshot, a missing or full run dir, an inotify
//! queue overflow, and sshd restarted under live sessions. In every case
//! the outcome a user sees must follow the grant file as it is now: accepted
//! guests get in, revoked ones are refused and their sessions end.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::io::{Seek, SeekFrom, Write};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use harness::{realtime_ns, wait_until, Host, Key, LiveSession, RUN_DIR, SNAPSHOT};

/// Generous bound for a kill in tests; the benchmark measures the real figure.
const GONE_WITHIN: Duration = Duration::from_secs(10);

const GUESTS: [&str; 4] = ["bob", "carol", "dave", "erin"];

/// alice, who logs in with her own key, and four guests' keys.
struct Cast {
    alice: Key,
    guests: Vec<Key>,
}

impl Cast {
    fn guest(&self, name: &str) -> &Key {
        self.guests
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("no guest {name}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    Accepted,
    Rejected,
    /// The guest's table is gone.
    Removed,
}

fn setup() -> (Host, Cast) {
    let host = Host::start();
    host.add_user("alice");
    let alice = host.keypair("alice");
    host.authorize_owner_key("alice", &alice.public);
    let guests = GUESTS.iter().map(|g| host.keypair(g)).collect();
    (host, Cast { alice, guests })
}

/// A grant file where alice shares with each guest as given.
fn grants(c: &Cast, states: &[(&str, Grant)]) -> String {
    let mut text = String::from("# alice's VM\n[owners.alice]\nsharing = true\n\n");
    for (name, grant) in states {
        let status = match grant {
            Grant::Accepted => "accepted",
            Grant::Rejected => "rejected",
            Grant::Removed => continue,
        };
        text.push_str(&format!(
            "[owners.alice.guests.{name}]\nstatus = \"{status}\"\nkeys = [\"{}\"]\n\n",
            c.guest(name).public
        ));
    }
    text
}

fn all(grant: Grant) -> Vec<(&'static str, Grant)> {
    GUESTS.iter().map(|g| (*g, grant)).collect()
}

/// The guests' lines of the key lookup and the snapshot for these guests:
/// `KEY vmshare:GUEST`, sorted.
fn expected_lines(c: &Cast, accepted: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = accepted
        .iter()
        .map(|g| {
            let key = c.guest(g).public.rsplit_once(' ').map_or("", |(k, _)| k);
            format!("{key} vmshare:{g}")
        })
        .collect();
    lines.sort();
    lines
}

/// Waits until the snapshot was compiled from the grant file as it is now
/// and says `expected` for alice.
#[track_caller]
fn assert_snapshot_becomes(host: &Host, expected: &[String], within: Duration) {
    let ok = wait_until(within, || {
        host.snapshot_lines("alice").as_deref() == Some(expected)
    });
    assert!(
        ok,
        "the snapshot does not match the grant file: it says {:?}, expected {expected:?}\n{}",
        host.snapshot_lines("alice"),
        host.daemon_log()
    );
}

/// `guests`' lines and alice's own held line, sorted: what the key lookup
/// prints for alice.
fn with_own_line(c: &Cast, guests: &[String]) -> Vec<String> {
    let mut lines = guests.to_vec();
    lines.push(c.alice.public.clone());
    lines.sort();
    lines
}

#[track_caller]
fn assert_lookup(host: &Host, c: &Cast, guests: &[String]) {
    assert_eq!(
        host.key_lookup_lines("alice"),
        with_own_line(c, guests),
        "the key lookup for alice"
    );
}

/// xorshift64*, seeded per run; the seed is printed.
struct Rng(u64);

impl Rng {
    fn new(what: &str) -> Rng {
        let seed = realtime_ns() as u64 | 1;
        eprintln!("{what}: seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn random_grant(rng: &mut Rng) -> Grant {
    [
        Grant::Accepted,
        Grant::Accepted,
        Grant::Rejected,
        Grant::Removed,
    ][rng.below(4) as usize]
}

#[test]
fn daemon_killed_mid_storm_ends_in_the_final_state() {
    const EDITS: usize = 600;
    let (host, c) = setup();
    host.write_grants(&grants(&c, &all(Grant::Accepted)));
    host.hold("alice");
    let daemon = host.start_daemon();
    let mut sessions: Vec<(&str, LiveSession)> = GUESTS
        .iter()
        .map(|g| (*g, LiveSession::open(&host, "alice", c.guest(g))))
        .collect();

    let final_states = [
        ("bob", Grant::Accepted),
        ("carol", Grant::Rejected),
        ("dave", Grant::Removed),
        ("erin", Grant::Accepted),
    ];
    let done = std::sync::atomic::AtomicUsize::new(0);
    // The final edit (which revokes carol) waits for the logins after the
    // restart, however slowly the daemon came back on a loaded machine.
    let logins_done = std::sync::atomic::AtomicBool::new(false);
    let mut rng = Rng::new("storm");
    let plan: Vec<String> = (0..EDITS)
        .map(|i| {
            if i + 1 == EDITS {
                grants(&c, &final_states)
            } else {
                // carol stays in until the last edit, so sessions of hers
                // open while the daemon is down; the others flip.
                let states: Vec<(&str, Grant)> = GUESTS
                    .iter()
                    .map(|&g| match g {
                        "carol" => (g, Grant::Accepted),
                        _ => (g, random_grant(&mut rng)),
                    })
                    .collect();
                grants(&c, &states)
            }
        })
        .collect();

    let _daemon = thread::scope(|s| {
        s.spawn(|| {
            for (i, text) in plan.iter().enumerate() {
                if i + 1 == EDITS {
                    wait_until(Duration::from_secs(120), || {
                        logins_done.load(std::sync::atomic::Ordering::SeqCst)
                    });
                }
                host.write_grants_fast(text);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                thread::sleep(Duration::from_millis(5));
            }
        });
        let reached = |n: usize| {
            wait_until(Duration::from_secs(60), || {
                done.load(std::sync::atomic::Ordering::SeqCst) >= n
            })
        };
        assert!(reached(EDITS / 4));
        daemon.kill();
        let killed_at = done.load(std::sync::atomic::Ordering::SeqCst);
        // Sessions opened while the daemon is down, granted or not at the
        // moment: the hook decides alone.
        for g in GUESTS {
            if let Some(session) = LiveSession::try_open(&host, "alice", c.guest(g)) {
                sessions.push((g, session));
            }
        }
        assert!(reached(EDITS / 2));
        let daemon = host.start_daemon();
        eprintln!(
            "storm: daemon killed after edit {killed_at}, back after edit {} of {EDITS}",
            done.load(std::sync::atomic::Ordering::SeqCst)
        );
        for g in GUESTS {
            if let Some(session) = LiveSession::try_open(&host, "alice", c.guest(g)) {
                sessions.push((g, session));
            }
        }
        logins_done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(reached(EDITS));
        daemon
    });
    let storm_over = Instant::now();

    let expected = expected_lines(&c, &["bob", "erin"]);
    assert_snapshot_becomes(&host, &expected, Duration::from_secs(5));
    assert_lookup(&host, &c, &expected);
    assert!(
        sessions.iter().filter(|(g, _)| *g == "carol").count() >= 3,
        "carol, granted all through the storm, could not log in during it"
    );
    for (guest, session) in &mut sessions {
        if ["carol", "dave"].contains(guest) {
            assert!(
                session.wait_gone(GONE_WITHIN).is_some(),
                "{guest}'s session outlived the storm's final revoke:\n{}",
                host.daemon_log()
            );
        }
    }
    eprintln!(
        "storm: revoked guests' sessions gone {:?} after the storm; {} sessions in all, {} still live",
        storm_over.elapsed(),
        sessions.len(),
        sessions.iter_mut().filter(|(_, s)| s.processes() > 0).count()
    );
    let records = host.session_records();
    for r in &records {
        assert!(
            ["bob", "erin"].contains(&r.guest.as_str()),
            "a session record of revoked guest {} is left: {r:?}",
            r.guest
        );
    }
    host.assert_logs_in_as("alice", c.guest("bob"), "alice");
    host.assert_refused("alice", c.guest("carol"));
    host.assert_refused("alice", c.guest("dave"));
    host.assert_logs_in_as("alice", &c.alice, "alice");
}

/// What a damage does to the snapshot's bytes.
type Damage = fn(&[u8]) -> Vec<u8>;

/// Ways to damage the snapshot, by name.
fn damages() -> Vec<(&'static str, Damage)> {
    vec![
        ("empty", |_| Vec::new()),
        ("junk", |_| {
            b"\x00\xff{ not a snapshot\n\x01ssh-ed25519 AAAA junk\n".to_vec()
        }),
        ("header cut short", |b| b[..b.len().min(40)].to_vec()),
        ("body cut short", |b| {
            let header = b.iter().position(|&c| c == b'\n').map_or(0, |i| i + 1);
            b[..header + (b.len() - header) / 2].to_vec()
        }),
        ("body overwritten with junk", |b| {
            let header = b.iter().position(|&c| c == b'\n').map_or(0, |i| i + 1);
            let mut out = b[..header].to_vec();
            out.extend(
                b[header..]
                    .iter()
                    .map(|&c| if c == b'\n' { c } else { b'x' }),
            );
            out
        }),
        ("header overwritten with junk", |b| {
            let header = b.iter().position(|&c| c == b'\n').unwrap_or(0);
            let mut out = vec![b'#'; header];
            out.extend_from_slice(&b[header..]);
            out
        }),
    ]
}

/// Damages the snapshot in place (same inode, as a stray writer would).
fn damage_snapshot(host: &Host, damage: Damage) {
    let path = host.path(SNAPSHOT);
    let bytes = std::fs::read(&path).expect("reading the snapshot");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("opening the snapshot");
    let new = damage(&bytes);
    file.set_len(0).expect("truncating the snapshot");
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.write_all(&new).expect("writing the snapshot");
}

/// With the snapshot damaged, lookups answer from the grant file: bob gets
/// in, carol does not, alice does.
#[track_caller]
fn assert_answers_from_grant_file(host: &Host, c: &Cast, expected: &[String], how: &str) {
    assert_eq!(
        host.key_lookup_lines("alice"),
        with_own_line(c, expected),
        "key lookup with the snapshot {how}"
    );
    host.assert_logs_in_as("alice", c.guest("bob"), "alice");
    host.assert_no_session("alice", c.guest("carol"));
    host.assert_no_session("alice", c.guest("dave"));
    host.assert_logs_in_as("alice", &c.alice, "alice");
}

#[test]
fn corrupt_or_truncated_snapshot_is_never_trusted() {
    let (host, c) = setup();
    let bob_only = [("bob", Grant::Accepted), ("carol", Grant::Rejected)];
    host.write_grants(&grants(&c, &bob_only));
    host.hold("alice");
    let expected = expected_lines(&c, &["bob"]);

    // Daemon stopped: a damaged snapshot stays until it comes back.
    for (how, damage) in damages() {
        let daemon = host.start_daemon();
        assert_snapshot_becomes(&host, &expected, Duration::from_secs(5));
        daemon.kill();
        damage_snapshot(&host, damage);
        assert_eq!(
            host.snapshot_lines("alice"),
            None,
            "{how}: snapshot still usable"
        );
        assert_answers_from_grant_file(&host, &c, &expected, &format!("{how}, daemon down"));
    }

    // Daemon running: it does not watch the snapshot, so the damage stays
    // until the next change of the grant file.
    let _daemon = host.start_daemon();
    let mut carol_in = false;
    for (how, damage) in damages() {
        let (states, lines) = if carol_in {
            (bob_only, expected.clone())
        } else {
            (
                [("bob", Grant::Accepted), ("carol", Grant::Accepted)],
                expected_lines(&c, &["bob", "carol"]),
            )
        };
        // Flip carol twice so the last write leaves her out again.
        host.write_grants(&grants(&c, &states));
        assert_snapshot_becomes(&host, &lines, Duration::from_secs(5));
        host.write_grants(&grants(&c, &bob_only));
        assert_snapshot_becomes(&host, &expected, Duration::from_secs(5));
        carol_in = !carol_in;
        damage_snapshot(&host, damage);
        assert_answers_from_grant_file(&host, &c, &expected, &format!("{how}, daemon running"));
        // The next change writes a good snapshot again.
        let both = expected_lines(&c, &["bob", "carol"]);
        host.write_grants(&grants(
            &c,
            &[("bob", Grant::Accepted), ("carol", Grant::Accepted)],
        ));
        assert_snapshot_becomes(&host, &both, Duration::from_secs(5));
        host.assert_logs_in_as("alice", c.guest("carol"), "alice");
        host.write_grants(&grants(&c, &bob_only));
        assert_snapshot_becomes(&host, &expected, Duration::from_secs(5));
    }
}

#[test]
fn missing_run_dir_guests_still_judged_and_daemon_recreates_it() {
    let (host, c) = setup();
    host.write_grants(&grants(
        &c,
        &[("bob", Grant::Accepted), ("carol", Grant::Rejected)],
    ));
    host.hold("alice");
    let expected = expected_lines(&c, &["bob"]);
    let daemon = host.start_daemon();
    assert_snapshot_becomes(&host, &expected, Duration::from_secs(5));
    daemon.kill();
    host.run_ok(&["rm", "-rf", RUN_DIR]);

    // The lookup needs no run dir: it reads the grant file.
    assert_lookup(&host, &c, &expected);
    host.assert_refused("alice", c.guest("carol"));
    host.assert_logs_in_as("alice", &c.alice, "alice");
    // The hook recreates the run dir (root-only, 0700) to record a guest
    // session; the lookup, which runs unprivileged, then cannot read a
    // snapshot there and keeps reading the grant file.
    let mut bob = LiveSession::open(&host, "alice", c.guest("bob"));
    let records = host.session_records();
    assert!(
        records.iter().any(|r| r.guest == "bob"),
        "bob's session is not recorded: {records:?}"
    );
    assert_lookup(&host, &c, &expected);

    // The daemon recreates what is missing and enforces on return.
    let _daemon = host.start_daemon();
    let mode = std::fs::metadata(host.path(RUN_DIR)).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o7777
    });
    assert_eq!(
        mode.ok(),
        Some(0o755),
        "run dir mode after the daemon's start"
    );
    assert_snapshot_becomes(&host, &expected, Duration::from_secs(5));
    host.write_grants(&grants(
        &c,
        &[("bob", Grant::Removed), ("carol", Grant::Rejected)],
    ));
    assert!(
        bob.wait_gone(GONE_WITHIN).is_some(),
        "bob's session, recorded while the run dir was missing, survived the revoke"
    );
}

#[test]
fn unusable_run_dir_refuses_guests_not_the_owner() {
    let (host, c) = setup();
    host.write_grants(&grants(&c, &[("bob", Grant::Accepted)]));
    host.hold("alice");
    let expected = expected_lines(&c, &["bob"]);
    // A file where the run dir should be: nothing can be recorded.
    host.run_ok(&["rm", "-rf", RUN_DIR]);
    host.write_file(RUN_DIR, "not a directory\n", 0, 0, 0o644);

    assert_lookup(&host, &c, &expected);
    // bob's key is granted: the session, not the key, must be refused.
    host.assert_session_refused("alice", c.guest("bob"));
    host.assert_logs_in_as("alice", &c.alice, "alice");
}

#[test]
fn full_run_dir_falls_back_to_the_grant_file_and_refuses_unrecordable_guests() {
    let (host, c) = setup();
    host.write_grants(&grants(
        &c,
        &[("bob", Grant::Accepted), ("carol", Grant::Rejected)],
    ));
    host.hold("alice");
    host.mkdir(RUN_DIR, 0o755);
    host.run_ok(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=64k,mode=0755",
        "tmpfs",
        RUN_DIR,
    ]);
    let _daemon = host.start_daemon();
    let bob_only = expected_lines(&c, &["bob"]);
    assert_snapshot_becomes(&host, &bob_only, Duration::from_secs(5));
    let mut bob = LiveSession::open(&host, "alice", c.guest("bob"));

    // Fill it up (cat stops at ENOSPC).
    host.run(&["sh", "-c", &format!("cat /dev/zero > {RUN_DIR}/fill")]);
    let df = host.run_ok(&["df", "--output=avail", "-B1", RUN_DIR]);
    assert!(
        df.lines().nth(1).map(str::trim) == Some("0"),
        "run dir not full: {df}"
    );

    // A change the daemon cannot write a snapshot for: lookups read the
    // grant file and stay right.
    host.write_grants(&grants(
        &c,
        &[("bob", Grant::Accepted), ("carol", Grant::Accepted)],
    ));
    let both = expected_lines(&c, &["bob", "carol"]);
    assert!(
        wait_until(Duration::from_secs(5), || host
            .daemon_log()
            .contains("cannot write snapshot")),
        "the daemon did not report the failed snapshot write:\n{}",
        host.daemon_log()
    );
    assert_eq!(
        host.snapshot_lines("alice"),
        None,
        "a stale snapshot counts as current"
    );
    assert_lookup(&host, &c, &both);
    // carol is granted, but her session cannot be recorded: refused.
    host.assert_session_refused("alice", c.guest("carol"));
    host.assert_logs_in_as("alice", &c.alice, "alice");
    assert!(
        !host.session_records().iter().any(|r| r.guest == "carol"),
        "a refused session left a record"
    );

    // Revokes still end recorded sessions.
    host.write_grants(&grants(
        &c,
        &[("bob", Grant::Rejected), ("carol", Grant::Accepted)],
    ));
    assert!(
        bob.wait_gone(GONE_WITHIN).is_some(),
        "bob survived the revoke with the run dir full:\n{}",
        host.daemon_log()
    );
    assert_lookup(&host, &c, &expected_lines(&c, &["carol"]));

    // With room again, carol gets in and the next change is snapshotted.
    host.run_ok(&["rm", &format!("{RUN_DIR}/fill")]);
    host.assert_logs_in_as("alice", c.guest("carol"), "alice");
    host.write_grants(&grants(
        &c,
        &[("bob", Grant::Accepted), ("carol", Grant::Accepted)],
    ));
    assert_snapshot_becomes(&host, &both, Duration::from_secs(5));
}

/// The bound on a kill after a burst: far below the daemon's 30 s re-read.
const AFTER_BURST: Duration = Duration::from_secs(5);

#[test]
fn inotify_overflow_from_a_burst_of_renames_still_ends_the_session() {
    const EDITS: usize = 20_000;
    let (host, c) = setup();
    let both = [("bob", Grant::Accepted), ("carol", Grant::Accepted)];
    let bob_out = [("bob", Grant::Rejected), ("carol", Grant::Accepted)];
    host.write_grants(&grants(&c, &both));
    host.hold("alice");
    host.grants_dir_on_tmpfs();
    let daemon = host.start_daemon();
    let mut bob = LiveSession::open(&host, "alice", c.guest("bob"));
    let carol = LiveSession::open(&host, "alice", c.guest("carol"));

    // A starved daemon reads nothing while the burst lands, so the queue
    // (16384 events by default) overflows for certain.
    let texts = [grants(&c, &both), grants(&c, &bob_out)];
    daemon.signal(Signal::SIGSTOP);
    let burst = Instant::now();
    for i in 0..EDITS {
        // Ends on bob_out: EDITS is even.
        host.write_grants_fast(&texts[i % 2]);
    }
    eprintln!("overflow: {EDITS} renames in {:?}", burst.elapsed());
    let resumed = Instant::now();
    daemon.signal(Signal::SIGCONT);
    let took = bob.wait_gone(AFTER_BURST).unwrap_or_else(|| {
        panic!(
            "bob's session still alive {AFTER_BURST:?} after the burst:\n{}",
            host.daemon_log()
        )
    });
    eprintln!("overflow: bob's session gone {took:?} after the daemon resumed");
    assert!(resumed.elapsed() < AFTER_BURST);
    // The overflow is the last event queued: the daemon sees it once it has
    // read the rest.
    assert!(
        wait_until(AFTER_BURST, || host
            .daemon_log()
            .contains("inotify overflow")),
        "the queue did not overflow (or the daemon did not say so):\n{}",
        host.daemon_log()
    );
    let carol_only = expected_lines(&c, &["carol"]);
    assert_snapshot_becomes(&host, &carol_only, AFTER_BURST);
    assert_lookup(&host, &c, &carol_only);
    assert_eq!(carol.processes(), 2, "carol, granted throughout, was hit");

    // The daemon still watches after the overflow.
    host.write_grants(&grants(&c, &both));
    assert_snapshot_becomes(&host, &expected_lines(&c, &["bob", "carol"]), AFTER_BURST);
    let mut bob = LiveSession::open(&host, "alice", c.guest("bob"));
    host.write_grants(&grants(&c, &bob_out));
    assert!(
        bob.wait_gone(AFTER_BURST).is_some(),
        "after the overflow the daemon no longer sees revokes"
    );
}

#[test]
fn burst_of_in_place_writes_ends_the_session_within_seconds() {
    const EDITS: usize = 20_000;
    let (host, c) = setup();
    let both = [("bob", Grant::Accepted), ("carol", Grant::Accepted)];
    let bob_out = [("bob", Grant::Rejected), ("carol", Grant::Accepted)];
    host.write_grants(&grants(&c, &both));
    host.hold("alice");
    host.grants_dir_on_tmpfs();
    let _daemon = host.start_daemon();
    let mut bob = LiveSession::open(&host, "alice", c.guest("bob"));

    let texts = [grants(&c, &both), grants(&c, &bob_out)];
    let burst = Instant::now();
    for i in 0..EDITS {
        // Ends on bob_out: EDITS is even.
        host.write_grants_in_place_fast(&texts[i % 2]);
    }
    let last_write = Instant::now();
    let took = bob.wait_gone(AFTER_BURST).unwrap_or_else(|| {
        panic!(
            "bob's session still alive {AFTER_BURST:?} after the burst:\n{}",
            host.daemon_log()
        )
    });
    eprintln!(
        "in-place burst: {EDITS} writes in {:?}; bob gone {took:?} after the last; \
         queue overflowed: {}",
        last_write - burst,
        host.daemon_log().contains("inotify overflow")
    );
    let carol_only = expected_lines(&c, &["carol"]);
    assert_snapshot_becomes(&host, &carol_only, AFTER_BURST);
    assert_lookup(&host, &c, &carol_only);
    host.assert_refused("alice", c.guest("bob"));
    host.assert_logs_in_as("alice", c.guest("carol"), "alice");
}

#[test]
fn sshd_restart_keeps_live_sessions_recorded_and_killable() {
    let (mut host, c) = setup();
    let both = [("bob", Grant::Accepted), ("carol", Grant::Accepted)];
    host.write_grants(&grants(&c, &both));
    host.hold("alice");
    let _daemon = host.start_daemon();
    let mut bob = LiveSession::open(&host, "alice", c.guest("bob"));
    let mut carol = LiveSession::open(&host, "alice", c.guest("carol"));
    let own = LiveSession::open(&host, "alice", &c.alice);

    // A service manager's restart (SIGTERM), then a crash (SIGKILL).
    let mut bob_after = Vec::new();
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let old = host.sshd_pid();
        host.restart_sshd(signal);
        assert_ne!(host.sshd_pid(), old);
        thread::sleep(Duration::from_millis(300));
        for (who, s) in [("bob", &mut bob), ("carol", &mut carol)] {
            assert_eq!(s.processes(), 2, "{who}'s session after sshd {signal}");
            assert!(
                matches!(s.child.try_wait(), Ok(None)),
                "{who}'s connection dropped by sshd {signal}"
            );
        }
        assert_eq!(
            own.processes(),
            2,
            "alice's own session after sshd {signal}"
        );
        let recorded: Vec<String> = host
            .session_records()
            .iter()
            .map(|r| r.guest.clone())
            .collect();
        assert!(
            recorded.iter().filter(|g| *g == "bob").count() > bob_after.len()
                && recorded.iter().any(|g| g == "carol"),
            "records after sshd {signal}: {recorded:?}"
        );
        // The new sshd lets guests in as before.
        bob_after.push(LiveSession::open(&host, "alice", c.guest("bob")));
    }

    host.write_grants(&grants(
        &c,
        &[("bob", Grant::Removed), ("carol", Grant::Accepted)],
    ));
    for s in std::iter::once(&mut bob).chain(bob_after.iter_mut()) {
        assert!(
            s.wait_gone(GONE_WITHIN).is_some(),
            "a bob session survived the revoke after sshd restarts:\n{}",
            host.daemon_log()
        );
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(carol.processes(), 2, "carol was hit");
    assert_eq!(own.processes(), 2, "alice was hit");
    host.assert_refused("alice", c.guest("bob"));
    let records = host.session_records();
    assert!(
        records.iter().all(|r| r.guest != "bob"),
        "bob's records are left: {records:?}"
    );
}

/// Sets the soft descriptor limit of process `pid` (the hard one stays).
fn set_soft_nofile(pid: u32, soft: usize) {
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .output()
        .expect("running prlimit");
    assert!(out.status.success(), "prlimit: {out:?}");
}

/// A pass that cannot read the session records (the daemon is out of
/// descriptors) is retried: once descriptors are free again, the revoke it
/// missed takes effect within a second or two, with no further edit and
/// long before the 30 s backstop.
#[test]
fn a_pass_out_of_descriptors_is_retried_without_waiting_for_the_backstop() {
    let (host, c) = setup();
    let both = [("bob", Grant::Accepted), ("carol", Grant::Accepted)];
    host.write_grants(&grants(&c, &both));
    host.hold("alice");
    let daemon = host.start_daemon();
    let mut bob = LiveSession::open(&host, "alice", c.guest("bob"));

    // Descriptors 0 to 2 are open: the pass can open nothing (EMFILE), not
    // even the sessions directory.
    set_soft_nofile(daemon.pid(), 3);
    host.write_grants(&grants(
        &c,
        &[("bob", Grant::Rejected), ("carol", Grant::Accepted)],
    ));
    assert!(
        wait_until(Duration::from_secs(10), || host
            .daemon_log()
            .contains("Too many open files")),
        "the daemon did not run short of descriptors:\n{}",
        host.daemon_log()
    );
    thread::sleep(Duration::from_millis(500));

    set_soft_nofile(daemon.pid(), 1024);
    let took = bob.wait_gone(Duration::from_secs(3));
    eprintln!("out of descriptors: bob gone {took:?} after they were free again");
    assert!(
        took.is_some(),
        "the failed pass was not retried:\n{}",
        host.daemon_log()
    );
}
