//! The `vmshare` CLI end to end: the built binary, a config whose grant file
//! and run dir live in a scratch directory, and real local accounts as
//! owners (`daemon`, `nobody`; tests may not add accounts to the host).
//!
//! `invite`, `accept` and `sharing on` take the owner's keys over: they put
//! her in group vmshare-owners (`groupadd`, `gpasswd`) and keep her lines
//! in the default state dir. So each test's CLI runs in a private overlay
//! of /etc and /var/lib: what one run changes there, the test's later runs
//! see, and the host never does.
//!
//! Scratch directories are under the build tree: the strict checks refuse a
//! grant file with a group- or world-writable directory above it, as /tmp is.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod scratch;
mod system_overlay;

use system_overlay::SystemOverlay;

const BIN: &str = env!("CARGO_BIN_EXE_vmshare");
/// Local accounts that exist on any Debian host.
const OWNER: &str = "daemon";
const OWNER2: &str = "nobody";
const NOT_AN_ACCOUNT: &str = "vmshare-no-such-user";

struct Env {
    /// Dropped before the directory that holds its layers.
    system: SystemOverlay,
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    grants: PathBuf,
    run_dir: PathBuf,
}

fn env() -> Env {
    env_with("")
}

fn env_with(extra_config: &str) -> Env {
    let dir = scratch::trusted_tempdir("cli");
    let root = dir.path().to_path_buf();
    let etc = root.join("etc");
    let run_dir = root.join("run");
    fs::create_dir(&etc).expect("etc");
    fs::create_dir(&run_dir).expect("run");
    let grants = etc.join("grants.toml");
    let config = etc.join("vmshare.toml");
    write_file(
        &config,
        &format!(
            "grants = \"{}\"\nrun_dir = \"{}\"\n{extra_config}",
            grants.display(),
            run_dir.display()
        ),
        0o644,
    );
    Env {
        system: SystemOverlay::new(&root.join("overlay")),
        _dir: dir,
        root,
        config,
        grants,
        run_dir,
    }
}

fn write_file(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Env {
    /// The CLI with this config and `args`, in the test's overlay.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.system.command(BIN);
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run vmshare")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vmshare {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and expects exit 1 without touching the grant file; returns
    /// stderr.
    fn refused(&self, args: &[&str]) -> String {
        let before = fs::read(&self.grants).ok();
        let meta_before = fs::metadata(&self.grants)
            .ok()
            .map(|m| (m.ino(), m.mtime_nsec()));
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "vmshare {args:?} should be refused:\n{}{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            fs::read(&self.grants).ok(),
            before,
            "{args:?} changed the file"
        );
        let meta_after = fs::metadata(&self.grants)
            .ok()
            .map(|m| (m.ino(), m.mtime_nsec()));
        assert_eq!(meta_after, meta_before, "{args:?} rewrote the file");
        stderr
    }

    fn text(&self) -> String {
        fs::read_to_string(&self.grants).expect("grant file")
    }

    fn status_json(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status json")
    }
}

/// A valid OpenSSH ed25519 public key line, distinct per `n`.
fn key(n: u32) -> String {
    let mut bytes = [7u8; 32];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    let data = ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(bytes));
    ssh_key::PublicKey::new(data, format!("guest{n}@laptop"))
        .to_openssh()
        .expect("encode key")
}

fn guest<'a>(status: &'a Value, owner: &str, guest: &str) -> Option<&'a Value> {
    status["owners"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == owner)?["guests"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == guest)
}

/// Whether the grant file now gives `guest` of the owner `admin = true`.
fn is_admin(e: &Env, guest: &str) -> bool {
    vmshare::grant::parse::parse(&e.text())
        .unwrap()
        .owner(OWNER)
        .and_then(|o| o.guest(guest))
        .unwrap()
        .admin
}

#[test]
fn admin_only_with_the_flag() {
    let e = env();
    e.ok(&["invite", OWNER, "bob", "--key", &key(1)]);
    e.ok(&["accept", OWNER, "bob"]);
    assert!(!is_admin(&e, "bob"));
    assert!(!e.text().contains("admin"), "{}", e.text());

    let said = e.ok(&["accept", OWNER, "bob", "--admin"]);
    assert!(said.contains("now has admin = true"), "{said}");
    assert!(is_admin(&e, "bob"));
    assert!(e.text().contains("admin = true\n"), "{}", e.text());

    e.ok(&["invite", OWNER, "carol", "--key", &key(2), "--admin"]);
    assert!(is_admin(&e, "carol"));
    // A refused invite sets nothing.
    e.refused(&["invite", OWNER, "dave", "--key", "junk", "--admin"]);
    assert!(!e.text().contains("dave"), "{}", e.text());
}

#[test]
fn lifecycle_end_to_end() {
    let e = env();
    // A missing grant file is created root:root 0644.
    assert!(e
        .ok(&["sharing", OWNER, "on"])
        .contains("sharing is now on"));
    let meta = fs::metadata(&e.grants).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o644, 0, 0)
    );
    assert!(e.text().starts_with("# Who may log in as whom on this VM."));
    assert!(e.ok(&["sharing", OWNER, "on"]).contains("unchanged"));

    let k1 = key(1);
    e.ok(&["invite", OWNER, "bob", "--key", &k1]);
    let s = e.status_json();
    let bob = guest(&s, OWNER, "bob").expect("bob listed");
    assert_eq!(bob["status"], "invited");
    assert_eq!(bob["access"], false);
    assert!(bob["keys"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("SHA256:"));

    e.ok(&["accept", OWNER, "bob"]);
    assert_eq!(
        guest(&e.status_json(), OWNER, "bob").unwrap()["access"],
        true
    );
    assert!(e.ok(&["accept", OWNER, "bob"]).contains("unchanged"));

    // A second key, from a file with comments.
    let keyfile = e.root.join("keys.pub");
    write_file(&keyfile, &format!("# bob's desktop\n\n{}\n", key(2)), 0o644);
    e.ok(&[
        "invite",
        OWNER,
        "bob",
        "--key-file",
        keyfile.to_str().unwrap(),
    ]);
    let s = e.status_json();
    let bob = guest(&s, OWNER, "bob").unwrap();
    assert_eq!(bob["keys"].as_array().unwrap().len(), 2);
    assert_eq!(bob["status"], "accepted");

    e.ok(&["leave", OWNER, "bob"]);
    assert_eq!(
        guest(&e.status_json(), OWNER, "bob").unwrap()["status"],
        "left"
    );
    let err = e.refused(&["accept", OWNER, "bob"]);
    assert!(err.contains("invite them again"), "{err}");

    e.ok(&["invite", OWNER, "bob", "--key", &k1]);
    assert_eq!(
        guest(&e.status_json(), OWNER, "bob").unwrap()["status"],
        "invited"
    );
    e.ok(&["reject", OWNER, "bob"]);
    assert_eq!(
        guest(&e.status_json(), OWNER, "bob").unwrap()["status"],
        "rejected"
    );

    e.ok(&["revoke", OWNER, "bob"]);
    assert!(guest(&e.status_json(), OWNER, "bob").is_none());
    let err = e.refused(&["revoke", OWNER, "bob"]);
    assert!(err.contains("not a guest"), "{err}");

    e.ok(&["sharing", OWNER, "off"]);
    assert_eq!(e.status_json()["owners"][0]["sharing"], false);
    assert!(e.ok(&["check"]).contains("ok"));
}

#[test]
fn refused_changes_leave_the_file_byte_identical() {
    let e = env();
    let (k1, k2) = (key(1), key(2));
    e.ok(&["invite", OWNER, "bob", "--key", &k1]);
    e.ok(&["invite", OWNER, "carol", "--key", &k2]);
    e.ok(&["accept", OWNER, "carol"]);
    e.ok(&["leave", OWNER, "carol"]);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["accept", OWNER, "zed"], "not a guest"),
        (vec!["reject", OWNER, "zed"], "not a guest"),
        (vec!["leave", OWNER, "bob"], "use `reject`"),
        (vec!["accept", OWNER, "carol"], "invite them again"),
        (vec!["reject", OWNER, "carol"], "is left"),
        (
            vec!["invite", OWNER, "dave", "--key", "ssh-ed25519 AAAAnotakey"],
            "bad key",
        ),
        (
            vec![
                "invite",
                OWNER,
                "dave",
                "--key",
                "command=\"/bin/sh\" ssh-ed25519 AAAA",
            ],
            "options",
        ),
        (
            vec!["invite", OWNER, "dave", "--key", &k1],
            "already belongs to guest `bob`",
        ),
        (
            vec!["invite", OWNER, "Dave", "--key", &k2],
            "invalid guest name",
        ),
        (vec!["accept", OWNER2, "bob"], "not in the grant file"),
        (vec!["reject", OWNER2, "bob"], "not in the grant file"),
        (vec!["revoke", OWNER2, "bob"], "not in the grant file"),
        (vec!["leave", OWNER2, "bob"], "not in the grant file"),
        (
            vec!["invite", NOT_AN_ACCOUNT, "bob", "--key", &k1],
            "not a local account",
        ),
        (vec!["sharing", NOT_AN_ACCOUNT, "on"], "not a local account"),
        (vec!["sharing", "root", "on"], "root is never shared"),
        (
            vec!["invite", "root", "bob", "--key", &k1],
            "root is never shared",
        ),
        (vec!["accept", "root", "bob"], "root is never shared"),
        (vec!["sharing", "Not/An/Owner", "on"], "invalid owner name"),
    ];
    for (args, expected) in &cases {
        let err = e.refused(args);
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in:\n{err}"
        );
        assert!(err.contains("nothing was changed"), "{args:?}: {err}");
    }

    // Usage errors: no key, unknown switch state.
    let out = e.run(&["invite", OWNER, "dave"]);
    assert_eq!(out.status.code(), Some(2));
    let out = e.run(&["sharing", OWNER, "maybe"]);
    assert_eq!(out.status.code(), Some(2));
    let empty = e.root.join("empty.pub");
    write_file(&empty, "# nothing\n", 0o644);
    e.refused(&[
        "invite",
        OWNER,
        "dave",
        "--key-file",
        empty.to_str().unwrap(),
    ]);

    // An invalid file is never edited, whatever the change.
    let broken = format!(
        "{}\n[owners.{OWNER}.guests.erin]\nstauts = \"accepted\"\n",
        e.text()
    );
    write_file(&e.grants, &broken, 0o644);
    for args in [
        vec!["accept", OWNER, "bob"],
        vec!["revoke", OWNER, "bob"],
        vec!["sharing", OWNER, "on"],
        vec!["invite", OWNER, "frank", "--key", &k2],
    ] {
        let err = e.refused(&args);
        assert!(err.contains("invalid") && err.contains("stauts"), "{err}");
        assert!(err.contains(&format!("{}:", e.grants.display())), "{err}");
    }

    // Neither is an untrusted one.
    write_file(&e.grants, "", 0o666);
    let err = e.refused(&["sharing", OWNER, "on"]);
    assert!(err.contains("writable"), "{err}");
}

#[test]
fn fifty_concurrent_invites_all_land() {
    let e = env();
    e.ok(&["sharing", OWNER, "on"]);
    let keys: Vec<String> = (0..50).map(|n| key(100 + n)).collect();
    let children: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(n, k)| {
            e.cmd(&["invite", OWNER, &format!("guest{n}"), "--key", k])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = e.status_json();
    assert_eq!(s["grants"]["state"], "valid");
    let guests = s["owners"][0]["guests"].as_array().unwrap();
    assert_eq!(guests.len(), 50);
    for n in 0..50 {
        assert!(
            guest(&s, OWNER, &format!("guest{n}")).is_some(),
            "guest{n} lost"
        );
    }
    e.ok(&["check"]);
}

#[test]
fn hand_written_comments_and_order_survive_edits() {
    let e = env();
    let (k1, k2, k3) = (key(1), key(2), key(3));
    let original = format!(
        r#"# Grants for this VM. Managed partly by hand.

# nobody first, on purpose
[owners.{OWNER2}]
sharing = false   # not yet

[owners.{OWNER}]   # the build account
sharing = true

# bob: friend from work
[owners.{OWNER}.guests.bob]
keys = [
  "{k1}", # laptop
]
status = "invited"   # waiting for him

[owners.{OWNER}.guests.alice]
status = "accepted"
keys = ["{k2}"]
"#
    );
    write_file(&e.grants, &original, 0o640);
    e.ok(&["accept", OWNER, "bob"]);
    let expected = original.replace(
        "status = \"invited\"   # waiting for him",
        "status = \"accepted\"   # waiting for him",
    );
    assert_eq!(e.text(), expected);
    // Mode and owner are kept.
    assert_eq!(fs::metadata(&e.grants).unwrap().mode() & 0o7777, 0o640);

    e.ok(&["invite", OWNER, "bob", "--key", &k3]);
    let expected = expected.replace(
        &format!("  \"{k1}\", # laptop\n]"),
        &format!("  \"{k1}\", # laptop\n  \"{k3}\",\n]"),
    );
    assert_eq!(e.text(), expected);

    e.ok(&["revoke", OWNER, "alice"]);
    let expected = expected.replace(
        &format!("\n[owners.{OWNER}.guests.alice]\nstatus = \"accepted\"\nkeys = [\"{k2}\"]\n"),
        "",
    );
    assert_eq!(e.text(), expected);
}

fn session_record(id: &str, owner: &str, guest: &str, since: i64) -> String {
    format!(
        r#"{{
  "id": "{id}",
  "owner": "{owner}",
  "guest": "{guest}",
  "fingerprint": "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
  "key_algorithm": "ssh-ed25519",
  "key_blob": "AAAA",
  "remote": "192.0.2.7",
  "since": {since},
  "monitor_pid": 999999999,
  "monitor_start": 1,
  "uid": 1,
  "cgroup": null,
  "logind_session": null
}}"#
    )
}

/// `--expires`, `--from`, `--no-forwarding` and `extend`: validated, in
/// the file, in status; a bad value is a usage error that changes nothing.
#[test]
fn limits_from_the_command_line_and_in_status() {
    let e = env();
    e.ok(&["sharing", OWNER, "on"]);
    e.ok(&[
        "invite",
        OWNER,
        "bob",
        "--key",
        &key(1),
        "--expires",
        "2h",
        "--from",
        "10.0.0.0/8",
        "--from",
        "::1",
        "--no-forwarding",
    ]);
    e.ok(&["accept", OWNER, "bob"]);
    let text = e.text();
    assert!(
        text.contains("from = [\"10.0.0.0/8\", \"::1\"]\nforwarding = false\n"),
        "{text}"
    );
    let s = e.status_json();
    let bob = guest(&s, OWNER, "bob").unwrap();
    assert_eq!(bob["access"], true);
    assert_eq!(bob["expired"], false);
    let left = bob["expires_in"].as_i64().unwrap();
    assert!((7000..=7200).contains(&left), "{left}");
    assert_eq!(bob["from"], serde_json::json!(["10.0.0.0/8", "::1"]));
    assert_eq!(bob["forwarding"], false);
    assert_eq!(bob["admin"], false);
    let shown = e.ok(&["status"]);
    assert!(shown.contains("bob: accepted (access, expires "), "{shown}");
    assert!(
        shown.contains("from 10.0.0.0/8 ::1, no forwarding"),
        "{shown}"
    );

    // --admin beside a limit, in one invite: both land, status shows both.
    e.ok(&[
        "invite",
        OWNER,
        "dave",
        "--key",
        &key(7),
        "--admin",
        "--expires",
        "1d",
    ]);
    let dave = guest(&e.status_json(), OWNER, "dave").unwrap().clone();
    assert_eq!(dave["admin"], true, "{dave}");
    assert!(dave["expires"].is_string(), "{dave}");
    let shown = e.ok(&["status"]);
    assert!(shown.contains("admin (may become root)"), "{shown}");

    e.ok(&["extend", OWNER, "bob", "--expires", "2999-01-01T00:00:00Z"]);
    let bob_now = e.status_json();
    assert_eq!(
        guest(&bob_now, OWNER, "bob").unwrap()["expires"],
        "2999-01-01T00:00:00Z"
    );
    for bad in [
        vec!["extend", OWNER, "bob", "--expires", "2020-01-01T00:00:00Z"],
        vec!["extend", OWNER, "bob", "--expires", "2026-12-01T18:00:00"],
        vec!["extend", OWNER, "bob", "--expires", "soon"],
        vec!["accept", OWNER, "bob", "--from", "10.0.0.1/8"],
        vec![
            "invite",
            OWNER,
            "carol",
            "--key",
            &key(2),
            "--from",
            "example.org",
        ],
    ] {
        let before = e.text();
        let out = e.run(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert_eq!(e.text(), before, "{bad:?} changed the file");
    }
    e.refused(&["extend", OWNER, "nobody", "--expires", "1d"]);

    // A deadline passed (written by hand): marked, no access.
    fs::write(&e.grants, e.text().replace("2999-01-01", "2001-01-01")).unwrap();
    let s = e.status_json();
    let bob = guest(&s, OWNER, "bob").unwrap();
    assert_eq!(
        (bob["access"].clone(), bob["expired"].clone()),
        (false.into(), true.into())
    );
    assert_eq!(bob["expires_in"], 0);
    assert!(e
        .ok(&["status"])
        .contains("bob: accepted (no access: EXPIRED at 2001-01-01T00:00:00Z"));
}

#[test]
fn status_and_sessions_json() {
    let e = env();
    e.ok(&["sharing", OWNER, "on"]);
    e.ok(&["invite", OWNER, "bob", "--key", &key(1)]);
    e.ok(&["accept", OWNER, "bob"]);
    e.ok(&["invite", OWNER, "carol", "--key", &key(2)]);
    let sessions = e.run_dir.join("sessions");
    fs::create_dir(&sessions).unwrap();
    write_file(
        &sessions.join("s1.json"),
        &session_record("s1", OWNER, "bob", 1_700_000_000),
        0o600,
    );
    write_file(
        &sessions.join("s2.json"),
        &session_record("s2", OWNER, "carol", 1_700_000_100),
        0o600,
    );

    let out: Value = serde_json::from_str(&e.ok(&["sessions", "--json"])).unwrap();
    assert_eq!(out["format"], 1);
    let list = out["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let s1 = &list[0];
    assert_eq!(s1["id"], "s1");
    assert_eq!(s1["owner"], OWNER);
    assert_eq!(s1["guest"], "bob");
    assert_eq!(s1["from"], "192.0.2.7");
    assert_eq!(s1["since"], 1_700_000_000);
    assert_eq!(
        s1["fingerprint"],
        "SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    );
    assert_eq!(s1["alive"], false);
    assert_eq!(out["unreadable"].as_array().unwrap().len(), 0);

    let text = e.ok(&["sessions"]);
    assert!(
        text.contains("OWNER") && text.contains("2023-11-14T22:13:20Z"),
        "{text}"
    );

    let s = e.status_json();
    assert_eq!(s["format"], 3);
    assert_eq!(s["grants"]["state"], "valid");
    assert_eq!(s["grants"]["path"], e.grants.display().to_string());
    assert_eq!(s["snapshot"]["present"], false);
    let bob = guest(&s, OWNER, "bob").unwrap();
    assert_eq!(bob["sessions"][0]["id"], "s1");
    // carol has no access, so her session is one the daemon must end.
    assert_eq!(
        guest(&s, OWNER, "carol").unwrap()["sessions"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(s["sessions_without_access"][0]["id"], "s2");
    assert_eq!(s["owners"][0]["local"], true);
    // `sharing on` took the owner's keys over: none in her home, so none held.
    assert_eq!(s["owners"][0]["keys_held"], true, "{s}");
    assert_eq!(s["owners"][0]["held_lines"], 0, "{s}");

    // The snapshot says when the file was last applied, and whether it is
    // the current version.
    let loaded = vmshare::store::source::load(&e.grants, &vmshare::sys::accounts::SystemAccounts);
    vmshare::store::snapshot::write(
        &e.run_dir.join("snapshot"),
        &loaded,
        1_700_000_000_000_000_000,
    )
    .unwrap();
    let s = e.status_json();
    assert_eq!(s["snapshot"]["present"], true);
    assert_eq!(
        s["snapshot"]["written_ns"].as_i64(),
        Some(1_700_000_000_000_000_000)
    );
    assert_eq!(s["snapshot"]["current"], true);
    assert!(e
        .ok(&["status"])
        .contains("applied: 2023-11-14T22:13:20Z (matches the grant file)"));
    e.ok(&["reject", OWNER, "carol"]);
    assert_eq!(e.status_json()["snapshot"]["current"], false);

    // Human output names owners, guests, keys and sessions.
    let text = e.ok(&["status"]);
    assert!(
        text.contains(&format!("owner {OWNER}: sharing on")),
        "{text}"
    );
    assert!(
        text.contains("bob: accepted (access, 1 live session)"),
        "{text}"
    );
    assert!(text.contains("key SHA256:"), "{text}");
    assert!(text.contains("session s1 from 192.0.2.7"), "{text}");

    // An inert owner is a note; an invalid file is reported with positions
    // and exit 1.
    let with_ghost = format!("{}\n[owners.{NOT_AN_ACCOUNT}]\nsharing = true\n", e.text());
    write_file(&e.grants, &with_ghost, 0o644);
    let s = e.status_json();
    assert!(s["grants"]["notes"][0]["message"]
        .as_str()
        .unwrap()
        .contains("not a local account"));
    let invalid = format!("{with_ghost}[owners.{OWNER}.guests.x]\nstauts = 1\n");
    write_file(&e.grants, &invalid, 0o644);
    let out = e.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["grants"]["state"], "invalid");
    let line = invalid
        .lines()
        .position(|l| l.starts_with("stauts"))
        .unwrap()
        + 1;
    assert_eq!(s["grants"]["errors"][0]["line"], line);
    let out = e.run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{}:{line}:1: unknown field", e.grants.display())),
        "{text}"
    );
}

#[test]
fn completions_and_man_page() {
    let e = env();
    let bash = e.ok(&["completions", "bash"]);
    assert!(bash.contains("invite") && bash.contains("--key-file"));
    let man = e.ok(&["man"]);
    assert!(
        man.contains(".TH vmshare") && man.contains("invite"),
        "{man}"
    );
    let invite = e.ok(&["man", "invite"]);
    assert!(
        invite.contains(".TH vmshare-invite") && invite.contains("key\\-file"),
        "{invite}"
    );
    let dir = e.root.join("man");
    fs::create_dir(&dir).unwrap();
    e.ok(&["man", "--out-dir", dir.to_str().unwrap()]);
    for page in ["vmshare.1", "vmshare-invite.1", "vmshare-doctor.1"] {
        assert!(dir.join(page).exists(), "{page}");
    }
    assert_eq!(e.run(&["man", "nonsense"]).status.code(), Some(2));
}

/// A host setup that `doctor` finds healthy, in the scratch dir.
struct DoctorSetup {
    sshd_config: PathBuf,
    pam_dir: PathBuf,
    libexec: PathBuf,
    host_key: PathBuf,
}

/// The shipped sshd drop-in, its key lookup run as `nobody` (the build host
/// has no `_vmshare`).
fn drop_in() -> String {
    include_str!("../config/sshd_config.d/vmshare.conf").replace(
        "AuthorizedKeysCommandUser _vmshare",
        "AuthorizedKeysCommandUser nobody",
    )
}

const GOOD_PAM_SSHD: &str = "@include common-auth\naccount required pam_nologin.so\n@include common-account\nsession required pam_loginuid.so\n@include common-session\n@include vmshare\n@include common-password\n";
const GOOD_PAM_VMSHARE: &str = include_str!("../config/pam.d/vmshare");

fn doctor_setup(e: &Env) -> DoctorSetup {
    let host_key = e.root.join("host_key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    let pam_dir = e.root.join("pam.d");
    fs::create_dir(&pam_dir).unwrap();
    let libexec = e.root.join("libexec");
    fs::create_dir(&libexec).unwrap();
    for program in ["vmshare-keys", "vmshare-pam"] {
        write_file(&libexec.join(program), "#!/bin/sh\nexit 1\n", 0o755);
    }
    let setup = DoctorSetup {
        sshd_config: e.root.join("sshd_config"),
        pam_dir,
        libexec,
        host_key,
    };
    setup.sshd(e, "");
    setup.pam(GOOD_PAM_SSHD, Some(GOOD_PAM_VMSHARE));
    write_file(
        &e.grants,
        &format!("[owners.{OWNER}]\nsharing = true\n"),
        0o644,
    );
    e.ok(&["owner-keys", "import", OWNER]);
    setup
}

impl DoctorSetup {
    /// Writes sshd_config: a host key, PAM, and the shipped drop-in last;
    /// `replace` is `FROM => TO` applied to that text.
    fn sshd(&self, _e: &Env, replace: &str) {
        let mut text = format!(
            "HostKey {}\nUsePAM yes\n{}",
            self.host_key.display(),
            drop_in()
        );
        assert!(text.contains("\tAuthorizedKeysCommandUser nobody\n"));
        if let Some((from, to)) = replace.split_once(" => ") {
            text = text.replace(from, to);
        }
        write_file(&self.sshd_config, &text, 0o644);
    }

    fn pam(&self, sshd: &str, vmshare: Option<&str>) {
        write_file(&self.pam_dir.join("sshd"), sshd, 0o644);
        let path = self.pam_dir.join("vmshare");
        match vmshare {
            Some(text) => write_file(&path, text, 0o644),
            None => {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Runs doctor in the test's overlay, in a mount namespace of its own
    /// with an empty /run, since `sshd -T` wants its privilege separation
    /// directory.
    fn doctor(&self, e: &Env, extra: &[&str]) -> (i32, String) {
        let out = e
            .system
            .command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && exec \"$@\"")
            .arg("sh")
            .arg(BIN)
            .arg("--config")
            .arg(&e.config)
            .arg("doctor")
            .arg("--sshd-config")
            .arg(&self.sshd_config)
            .arg("--pam-dir")
            .arg(&self.pam_dir)
            .arg("--libexec-dir")
            .arg(&self.libexec)
            .args(extra)
            .output()
            .expect("run doctor");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }
}

fn assert_problem(code: i32, text: &str, expected: &str) {
    assert_eq!(code, 1, "expected a problem {expected:?}:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("PROBLEM") && l.contains(expected));
    assert!(line.is_some(), "expected PROBLEM {expected:?} in:\n{text}");
}

#[test]
fn doctor_on_good_and_broken_setups() {
    let e = env();
    let setup = doctor_setup(&e);
    let socket = e.run_dir.join("control.sock");
    let listener = UnixListener::bind(&socket).expect("bind control socket");

    let (code, text) = setup.doctor(&e, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("PROBLEM"), "{text}");
    for area in ["sshd", "pam", "programs", "grants", "daemon", "cgroup"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(area)),
            "no ok for {area}:\n{text}"
        );
    }

    assert!(
        text.lines().any(|l| l.starts_with("ok")
            && l.contains(&format!("owner `{OWNER}`: keys held by vmshare"))),
        "{text}"
    );

    // sshd, for the owner.
    setup.sshd(
        &e,
        "\tAuthorizedKeysCommand /usr/libexec/vmshare/vmshare-keys %u %f %t %k\n => ",
    );
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(
        code,
        &text,
        &format!("sshd runs no AuthorizedKeysCommand for owner `{OWNER}`"),
    );
    setup.sshd(
        &e,
        "AuthorizedKeysCommandUser nobody => AuthorizedKeysCommandUser vmshare-no-such-user",
    );
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "which is no account");
    setup.sshd(
        &e,
        "/usr/libexec/vmshare/vmshare-keys %u %f %t %k => /usr/bin/other-agent %u",
    );
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "not the vmshare key lookup");
    // A Match block read before vmshare's lets sshd read the owner's home.
    setup.sshd(
        &e,
        &format!(
            "Match Group vmshare-owners => Match User {OWNER}\n\tAuthorizedKeysFile .ssh/authorized_keys\nMatch Group vmshare-owners"
        ),
    );
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(
        code,
        &text,
        &format!("for owner `{OWNER}` sshd's AuthorizedKeysFile is `.ssh/authorized_keys`"),
    );
    setup.sshd(
        &e,
        &format!(
            "Match Group vmshare-owners => Match User {OWNER}\n\tHostbasedAuthentication yes\nMatch Group vmshare-owners"
        ),
    );
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "HostbasedAuthentication");
    // An owner of the grant file whose keys are not held.
    setup.sshd(&e, "");
    let good = e.text();
    write_file(
        &e.grants,
        &format!("{good}[owners.{OWNER2}]\nsharing = true\n"),
        0o644,
    );
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(
        code,
        &text,
        &format!("owner `{OWNER2}`: not in group vmshare-owners"),
    );
    assert!(
        text.contains(&format!("`vmshare owner-keys import {OWNER2}`")),
        "{text}"
    );
    write_file(&e.grants, &good, 0o644);

    // sshd, for the host.
    setup.sshd(&e, "UsePAM yes => UsePAM no");
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "UsePAM is off");
    setup.sshd(
        &e,
        "UsePAM yes => UsePAM yes\nAuthorizedKeysFile .ssh/authorized_keys",
    );
    let (code, text) = setup.doctor(&e, &[]);
    assert_eq!(
        code, 0,
        "the agent reading other files is a warning:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("warning")
            && l.contains("sshd's AuthorizedKeysFile is `.ssh/authorized_keys`")),
        "{text}"
    );
    setup.sshd(&e, "UsePAM yes => UsePAM maybe");
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "`sshd -T` failed");
    setup.sshd(&e, "");

    // PAM
    setup.pam(
        &GOOD_PAM_SSHD.replace("@include vmshare\n", ""),
        Some(GOOD_PAM_VMSHARE),
    );
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "does not include vmshare");
    let early = GOOD_PAM_SSHD.replace("@include vmshare\n", "").replace(
        "@include common-session\n",
        "@include vmshare\n@include common-session\n",
    );
    setup.pam(&early, Some(GOOD_PAM_VMSHARE));
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "before `@include common-session`");
    let systemd_late = GOOD_PAM_SSHD.replace(
        "@include common-password\n",
        "session optional pam_systemd.so\n",
    );
    setup.pam(&systemd_late, Some(GOOD_PAM_VMSHARE));
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "before pam_systemd");
    setup.pam(GOOD_PAM_SSHD, None);
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "vmshare is missing");
    setup.pam(
        GOOD_PAM_SSHD,
        Some(&GOOD_PAM_VMSHARE.replace("required", "optional")),
    );
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "is `optional`");
    setup.pam(GOOD_PAM_SSHD, Some(GOOD_PAM_VMSHARE));

    // Programs
    fs::set_permissions(
        setup.libexec.join("vmshare-keys"),
        fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "sshd will refuse to run it");
    fs::remove_file(setup.libexec.join("vmshare-keys")).unwrap();
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "vmshare-keys");
    write_file(&setup.libexec.join("vmshare-keys"), "#!/bin/sh\n", 0o755);

    // Grant file
    let good = e.text();
    write_file(&e.grants, &good, 0o666);
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "writable");
    write_file(&e.grants, "[owners.daemon]\nsharing = yes\n", 0o644);
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "grant file is invalid");
    write_file(&e.grants, &good, 0o644);

    // cgroup v2
    let mountinfo = e.root.join("mountinfo");
    write_file(
        &mountinfo,
        "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        0o644,
    );
    let (code, text) = setup.doctor(&e, &["--mountinfo", mountinfo.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning") && l.contains("no cgroup v2")),
        "{text}"
    );

    // Daemon
    drop(listener);
    let (code, text) = setup.doctor(&e, &[]);
    assert_problem(code, &text, "vmshared is not reachable");
}

#[test]
fn doctor_requires_cgroup_v2_for_the_cgroup_backend() {
    let e = env_with("[enforcement]\nbackend = \"cgroup\"\n");
    let setup = doctor_setup(&e);
    let _listener = UnixListener::bind(e.run_dir.join("control.sock")).unwrap();
    let mountinfo = e.root.join("mountinfo");
    write_file(&mountinfo, "", 0o644);
    let (code, text) = setup.doctor(&e, &["--mountinfo", mountinfo.to_str().unwrap()]);
    assert_problem(code, &text, "no cgroup v2");
}

/// What the daemon found guests left behind (its `persistence.json`) is
/// shown by status, in the text and in --json; without the file, nothing.
#[test]
fn status_shows_what_guests_left_behind() {
    let e = env();
    e.ok(&["sharing", OWNER, "on"]);
    assert_eq!(e.status_json()["persistence"], serde_json::json!([]));
    assert!(!e.ok(&["status"]).contains("left behind"));
    let reports = [vmshare::store::escapes::Report {
        at: 1_700_000_000,
        owner: OWNER.into(),
        guests: vec!["bob".into(), "carol".into()],
        kind: "unit".into(),
        what: "run-u12.service".into(),
        action: "reported, not stopped: started while more than one person was logged in".into(),
    }];
    vmshare::store::escapes::write(&e.run_dir, &reports).unwrap();
    let s = e.status_json();
    assert_eq!(s["persistence"][0]["what"], "run-u12.service");
    assert_eq!(s["persistence"][0]["guests"][1], "carol");
    let text = e.ok(&["status"]);
    assert!(
        text.contains(&format!(
            "2023-11-14T22:13:20Z {OWNER}: unit run-u12.service (guests: bob, carol): reported, not stopped"
        )),
        "{text}"
    );
}
