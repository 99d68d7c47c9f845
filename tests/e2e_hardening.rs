//! What a guest can try from inside a session to keep access or to disturb
//! enforcement, end to end with a real sshd, real PAM (Debian's own
//! /etc/pam.d/sshd, which reads `~/.pam_environment`) and the daemon.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use harness::{pids_with_cmdline, wait_until, Host, Key, LiveSession};

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
    host.hold("alice");
    (host, cast)
}

/// The SHA256 fingerprint of `key`, as ssh-keygen prints it.
fn fingerprint(host: &Host, key: &Key) -> String {
    let out = host.run_ok(&["ssh-keygen", "-lf", &format!("{}.pub", key.private)]);
    out.split_whitespace().nth(1).unwrap().to_string()
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

/// Writes `user`'s `~/.ssh/NAME` (as the owner or a guest running as the
/// owner would), with the modes sshd wants unless told otherwise.
fn write_key_file(host: &Host, user: &str, name: &str, text: &str, mode: u32) -> String {
    let (uid, gid, home) = host.passwd_entry(user);
    let path = format!("{home}/.ssh/{name}");
    let _ = std::fs::remove_file(host.path(&path));
    host.write_file(&path, text, uid, gid, mode);
    path
}

/// Replaces `user`'s `~/.ssh/NAME` with a symlink to `target`, owned by
/// the user.
fn link_key_file(host: &Host, user: &str, name: &str, target: &str) {
    let (uid, gid, home) = host.passwd_entry(user);
    let path = host.path(&format!("{home}/.ssh/{name}"));
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(target, &path).unwrap();
    std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).unwrap();
}

/// Adds sshd configuration lines (a drop-in read before vmshare's) and
/// restarts sshd.
fn configure_sshd(host: &mut Host, lines: &str) {
    host.write_file(
        "/etc/ssh/sshd_config.d/00-e2e-test.conf",
        lines,
        0,
        0,
        0o644,
    );
    host.restart_sshd(nix::sys::signal::Signal::SIGTERM);
}

/// ssh with several keys (for `AuthenticationMethods publickey,publickey`).
fn ssh_with_keys(host: &Host, user: &str, keys: &[&Key], cmd: &str) -> std::process::Output {
    let mut args: Vec<String> = vec!["ssh".into(), "-F".into(), "/dev/null".into()];
    for k in keys {
        args.extend(["-i".into(), k.private.clone()]);
    }
    for o in [
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "IdentitiesOnly=yes",
        "ConnectTimeout=5",
        "LogLevel=ERROR",
    ] {
        args.extend(["-o".into(), o.into()]);
    }
    args.extend([format!("{user}@127.0.0.1"), cmd.into()]);
    host.run(&args)
}

/// bob writes his own key into alice's authorized_keys in forms sshd does
/// not honour (a comment, behind a `from=` the login does not come from,
/// with an `expiry-time` long past). His login must stay his: recorded as
/// bob and ended by bob's revoke.
#[test]
fn a_guest_key_in_the_owners_files_is_still_the_guests() {
    let (host, c) = setup();
    let _daemon = host.start_daemon();
    let own = host.read_file("/home/alice/.ssh/authorized_keys").unwrap();
    for form in [
        format!("# {}", c.bob.public),
        format!("from=\"192.0.2.1\" {}", c.bob.public),
        format!("expiry-time=\"20000101\",no-pty {}", c.bob.public),
    ] {
        write_key_file(
            &host,
            "alice",
            "authorized_keys",
            &format!("{own}{form}\n"),
            0o600,
        );
        host.write_grants(&grants(&c, true));
        let mut session = LiveSession::open(&host, "alice", &c.bob);
        let records = host.session_records();
        assert!(
            records.iter().any(|r| r.guest == "bob"),
            "bob's login with `{form}` in alice's file was not recorded as bob's: {records:?}"
        );
        host.write_grants(&grants(&c, false));
        assert!(
            session.wait_gone(GONE_WITHIN).is_some(),
            "bob's session (`{form}` in alice's file) survived bob's revoke:\n{}",
            host.daemon_log()
        );
    }
}

/// The owner's own key, plain or with options sshd honours for this login,
/// is the owner's: a shell as alice, no guest record. Each form is the
/// line vmshare holds for her (taken over from her home file, then
/// replaced with `vmshare owner-keys remove` and `add`).
#[test]
fn the_owners_own_key_with_options_stays_the_owners() {
    let host = Host::start();
    host.add_user("alice");
    let alice = host.keypair("alice");
    let bob = host.keypair("bob");
    host.write_grants(&format!(
        "[owners.alice]\nsharing = true\n\n[owners.alice.guests.bob]\n\
         status = \"accepted\"\nkeys = [\"{}\"]\n",
        bob.public
    ));
    host.authorize_owner_key("alice", "# first a comment");
    host.authorize_owner_key("alice", &alice.public);
    let said = host.hold("alice");
    assert!(said.contains("(1 line)"), "{said}");
    let own = fingerprint(&host, &alice);
    for form in [
        alice.public.clone(),
        format!("from=\"127.0.0.1\",no-pty {}", alice.public),
        format!(
            "no-agent-forwarding,expiry-time=\"20991231Z\" {}",
            alice.public
        ),
        format!("FROM=\"!192.0.2.1,127.0.0.0/8\",restrict {}", alice.public),
        format!("environment=\"A=b, c\",no-X11-forwarding {}", alice.public),
    ] {
        host.run_ok(&["vmshare", "owner-keys", "remove", "alice", &own]);
        host.run_ok(&["vmshare", "owner-keys", "add", "alice", "--line", &form]);
        host.assert_logs_in_as("alice", &alice, "alice");
        let _session = LiveSession::open(&host, "alice", &alice);
        assert!(
            host.session_records().is_empty(),
            "alice's own login (`{form}`) was recorded as a guest's"
        );
    }
}

/// alice's `authorized_keys` is a symlink to /dev/zero, then a FIFO, when
/// root imports what appeared in her home files. The import neither hangs
/// nor counts it; it takes the new key of her `authorized_keys2`, with
/// which alice gets in, and bob's login is still recorded as his.
#[test]
fn a_key_file_pointing_at_a_device_or_fifo_neither_hangs_nor_counts() {
    let (host, c) = setup();
    let own = host.read_file("/home/alice/.ssh/authorized_keys").unwrap();
    write_key_file(&host, "alice", "authorized_keys2", &own, 0o600);
    let (uid, gid, _) = host.passwd_entry("alice");
    for target in ["/dev/zero", "fifo"] {
        if target == "fifo" {
            let fifo = "/home/alice/.ssh/authorized_keys";
            let _ = std::fs::remove_file(host.path(fifo));
            host.run_ok(&["mkfifo", "-m", "0600", fifo]);
            std::os::unix::fs::lchown(host.path(fifo), Some(uid), Some(gid)).unwrap();
        } else {
            link_key_file(&host, "alice", "authorized_keys", target);
        }
        let started = std::time::Instant::now();
        let alice = host.keypair(&format!(
            "alice-{}",
            target.trim_start_matches('/').replace('/', "-")
        ));
        let mut text = own.clone();
        text.push_str(&alice.public);
        text.push('\n');
        write_key_file(&host, "alice", "authorized_keys2", &text, 0o600);
        let out = host.run(&["vmshare", "owner-keys", "import", "alice", "--yes"]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("added 1;"),
            "importing with {target} as alice's authorized_keys: {out:?}"
        );
        let before = host.session_records().len();
        let _alice = LiveSession::open(&host, "alice", &alice);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "import and login took {:?}",
            started.elapsed()
        );
        assert_eq!(
            host.session_records().len(),
            before,
            "alice's login was recorded"
        );
        let _bob = LiveSession::open(&host, "alice", &c.bob);
        assert!(
            host.session_records().len() == before + 1
                && host.session_records().iter().all(|r| r.guest == "bob"),
            "bob's login was not recorded with {target} as alice's key file"
        );
    }
}

/// sshd lets a key in from a file vmshare does not serve (a `Match` block
/// read before vmshare's, standing in for a grant revoked between sshd's
/// key lookup and the session), and alice's own files hold that key only
/// in forms sshd would not honour: a comment, a `from=` elsewhere, an
/// expired line, a CA line, a world-writable file, a link to a file only
/// root can read. None makes it the owner's key: the session is refused.
#[test]
fn a_key_in_the_owners_files_only_in_forms_sshd_refuses_is_not_the_owners() {
    let (mut host, _c) = setup();
    let mallory = host.keypair("mallory");
    host.mkdir("/etc/ssh/extra_keys", 0o755);
    host.write_file(
        "/etc/ssh/extra_keys/alice",
        &format!("{}\n", mallory.public),
        0,
        0,
        0o644,
    );
    configure_sshd(
        &mut host,
        "Match User alice\n\
         \tAuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2 /etc/ssh/extra_keys/%u\n",
    );
    let own = host.read_file("/home/alice/.ssh/authorized_keys").unwrap();
    host.write_file(
        "/etc/root-only-keys",
        &format!("{}\n", mallory.public),
        0,
        0,
        0o600,
    );
    /// Where alice's `authorized_keys2` points, if anywhere.
    enum Second {
        Absent,
        WorldWritable,
        RootOnlyLink,
    }
    let key = &mallory.public;
    let forms = [
        ("a comment", format!("#{key}\n"), Second::Absent),
        (
            "from= elsewhere",
            format!("from=\"192.0.2.0/24\" {key}\n"),
            Second::Absent,
        ),
        (
            "expired",
            format!("expiry-time=\"200001010000Z\" {key}\n"),
            Second::Absent,
        ),
        (
            "cert-authority",
            format!("cert-authority {key}\n"),
            Second::Absent,
        ),
        (
            "a world-writable file",
            String::new(),
            Second::WorldWritable,
        ),
        (
            "a link to a root-only file",
            String::new(),
            Second::RootOnlyLink,
        ),
    ];
    for (what, extra, second) in &forms {
        write_key_file(
            &host,
            "alice",
            "authorized_keys",
            &format!("{own}{extra}"),
            0o600,
        );
        match second {
            Second::Absent => {}
            Second::WorldWritable => {
                write_key_file(
                    &host,
                    "alice",
                    "authorized_keys2",
                    &format!("{key}\n"),
                    0o666,
                );
            }
            Second::RootOnlyLink => {
                link_key_file(&host, "alice", "authorized_keys2", "/etc/root-only-keys")
            }
        }
        let out = host.ssh("alice", &mallory, "echo in");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("in"),
            "mallory's key, in alice's files only as {what}, passed as alice's own: {out:?}"
        );
        host.assert_session_refused("alice", &mallory);
    }
}

/// With `AuthenticationMethods publickey,publickey`, one login can take
/// bob's and carol's keys together. It cannot be ended by either revoke
/// alone, so it is refused; the owner's key with bob's is bob's login.
#[test]
fn a_login_with_two_guests_keys_is_refused() {
    let (mut host, c) = setup();
    let _daemon = host.start_daemon();
    configure_sshd(&mut host, "AuthenticationMethods publickey,publickey\n");
    let out = ssh_with_keys(&host, "alice", &[&c.bob, &c.carol], "echo ran-as-$(id -un)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("ran-as") && !stderr.contains("Permission denied"),
        "a login with bob's and carol's keys was not refused by the hook: {out:?}\nrecords: {:?}",
        host.session_records()
    );

    // The owner's key with one guest's: that guest's login, let in.
    let alice = Key {
        name: "alice".into(),
        private: "/run/vmshare-e2e/keys/alice".into(),
        public: String::new(),
    };
    let out = ssh_with_keys(&host, "alice", &[&alice, &c.bob], "id -un");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "alice",
        "{out:?}"
    );
}

/// Puts `key`'s private half in alice's home, as a guest with a forwarded
/// agent (or an owner who left a key there) would have it.
fn key_in_home(host: &Host, key: &Key, name: &str) -> String {
    let path = format!("/home/alice/.ssh/{name}");
    host.run_ok(&[
        "install",
        "-o",
        "alice",
        "-g",
        "alice",
        "-m",
        "600",
        &key.private,
        &path,
    ]);
    path
}

/// An ssh login to alice@127.0.0.1 run from inside a session, leaving a
/// `setsid` child marked `escapee`; prints "nested" if it ran.
fn nested_login(identity: &str, escapee: &str) -> String {
    format!(
        "ssh -F /dev/null -i {identity} -o BatchMode=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR \
         alice@127.0.0.1 'setsid nohup sleep {escapee} >/dev/null 2>&1 </dev/null & echo nested'"
    )
}

/// carol, from inside her session, logs in again as alice with the owner's
/// own key: that nested login is carol's (recorded as hers, ended by her
/// revoke), not the owner's. With bob's key it is refused.
#[test]
fn a_login_from_inside_a_guest_session_is_that_guests() {
    let (host, c) = setup();
    let own = host.keypair("alice-own");
    host.run_ok(&[
        "vmshare",
        "owner-keys",
        "add",
        "alice",
        "--line",
        &own.public,
    ]);
    let _daemon = host.start_daemon();
    let owner_key = key_in_home(&host, &own, "id_owner");
    let bob_key = key_in_home(&host, &c.bob, "id_bob");

    // carol's own session, kept open while she works from it.
    let carol = harness::LiveSession::open(&host, "alice", &c.carol);

    let escapee = format!("{}1", harness::unique_marker());
    let out = host.ssh("alice", &c.carol, &nested_login(&owner_key, &escapee));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nested",
        "the nested login with the owner's key did not run: {out:?}\n{}",
        host.sshd_log()
    );
    assert!(wait_until(Duration::from_secs(10), || pids_with_cmdline(
        &["sleep", &escapee]
    )
    .len()
        == 1));
    // The nested login's child is confined in a session recorded as carol's.
    let pid = pids_with_cmdline(&["sleep", &escapee])[0];
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let records = host.session_records();
    let holder = records
        .iter()
        .find(|r| cgroup.contains(&format!("/{}\n", r.id)));
    assert_eq!(
        holder.map(|r| r.guest.as_str()),
        Some("carol"),
        "the nested login's child ({cgroup:?}) is in no session of carol's: {records:?}"
    );

    // With bob's key from inside carol's session: refused.
    let bobs = format!("{}1", harness::unique_marker());
    let out = host.ssh("alice", &c.carol, &nested_login(&bob_key, &bobs));
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nested",
        "a login with bob's key from inside carol's session ran"
    );
    assert!(pids_with_cmdline(&["sleep", &bobs]).is_empty());

    // carol is revoked: her session and the nested one's child end.
    host.write_grants(&format!(
        "[owners.alice]\nsharing = true\n\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
        c.bob.public
    ));
    assert!(
        wait_until(GONE_WITHIN, || pids_with_cmdline(&["sleep", &escapee])
            .is_empty()),
        "the nested login's child survived carol's revoke:\n{}",
        host.daemon_log()
    );
    drop(carol);
    // The owner's own key from outside any guest session is still the owner's.
    host.assert_logs_in_as("alice", &own, "alice");
}
