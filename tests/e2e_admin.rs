//! No root for guests, end to end: a real sshd, the host's own sudo and su
//! with vmshare's `vmshare-admin` PAM lines included the way the package
//! includes them, an owner whom sudoers lets do anything without a
//! password. A guest without `admin = true` is refused with a clear message
//! however they call sudo or su; a guest with it gets root; the owner's own
//! sudo works in every case, while guests are logged in and whatever state
//! vmshare is in.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Output};
use std::sync::mpsc;
use std::time::Duration;

use harness::{Host, Key, LiveSession, SESSIONS_DIR};

const BOB_REFUSED: &str =
    "vmshare: bob is a guest in alice's account and may not become root (admin = false)";

struct Cast {
    own: Key,
    bob: Key,
    carol: Key,
}

/// bob is a guest without `admin`, carol one with it.
fn grants(c: &Cast, bob: &str) -> String {
    format!(
        "[owners.alice]\nsharing = true\n\n\
         [owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n{bob}\n\n\
         [owners.alice.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{}\"]\nadmin = true\n",
        c.bob.public, c.carol.public
    )
}

fn setup() -> (Host, Cast) {
    let host = Host::start();
    host.add_user("alice");
    host.make_sudoer("alice");
    host.include_admin_check();
    let cast = Cast {
        own: host.keypair("alice"),
        bob: host.keypair("bob"),
        carol: host.keypair("carol"),
    };
    host.authorize_owner_key("alice", &cast.own.public);
    host.write_grants(&grants(&cast, ""));
    host.hold("alice");
    (host, cast)
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cmd` run as alice with `key` printed uid 0 (it became root).
#[track_caller]
fn assert_root(host: &Host, key: &Key, cmd: &str) {
    let out = host.ssh("alice", key, cmd);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0",
        "{} running `{cmd}` should have become root:\n{}",
        key.name,
        text(&out)
    );
}

/// `cmd` run as alice with `key` failed, printed no uid 0, and showed
/// `message`.
#[track_caller]
fn assert_refused_root(host: &Host, key: &Key, cmd: &str, message: &str) {
    let out = host.ssh("alice", key, cmd);
    let all = text(&out);
    assert!(
        !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "0"),
        "{} became root with `{cmd}`:\n{all}",
        key.name
    );
    assert!(
        all.contains(message),
        "`{cmd}` should say {message:?}:\n{all}"
    );
}

/// A shell in a guest's session that runs commands typed into it.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Shell {
    fn open(host: &Host, key: &Key) -> Shell {
        let mut child = host.ssh_spawn("alice", key, "exec sh 2>&1");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut shell = Shell {
            child,
            stdin,
            lines,
        };
        assert_eq!(shell.run("echo up"), "up", "the shell did not start");
        shell
    }

    /// Runs `cmd` (stdout and stderr) in the shell; returns what it printed
    /// and its exit code, as `OUTPUT\nexit N`.
    fn run(&mut self, cmd: &str) -> String {
        let end = "vmshare-e2e-end";
        writeln!(self.stdin, "{cmd}; echo {end} $?").unwrap();
        self.stdin.flush().unwrap();
        let mut out = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("`{cmd}` did not finish; printed {out:?}"));
            if let Some(code) = line.strip_prefix(end) {
                if code.trim() == "0" && out.len() == 1 && out[0] == "up" {
                    return "up".into();
                }
                out.push(format!("exit{code}"));
                return out.join("\n");
            }
            out.push(line);
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_guest_without_admin_does_not_become_root() {
    let (host, c) = setup();
    // The owner, before any guest.
    assert_root(&host, &c.own, "sudo -n id -u");
    assert_root(&host, &c.own, "su -c 'id -u'");

    for cmd in [
        "sudo -n id -u",
        "sudo -n -i id -u",
        "sudo -n -s id -u",
        "su -c 'id -u'",
        "su - -c 'id -u'",
        // Out of the session's process tree: still in its group.
        "setsid sh -c 'sudo -n id -u' </dev/null",
        // Forged environment means nothing.
        "env -i PATH=/usr/bin:/bin SSH_CONNECTION= XDG_SESSION_ID=1 sudo -n id -u",
    ] {
        assert_refused_root(&host, &c.bob, cmd, BOB_REFUSED);
    }
    // The guest cannot leave its group: the groups are root's.
    let escape = format!(
        "echo $$ > {}/cgroup.procs && sudo -n id -u",
        host.cgroup().display()
    );
    assert_refused_root(&host, &c.bob, &escape, "Permission denied");

    // A guest with `admin = true` becomes root.
    assert_root(&host, &c.carol, "sudo -n id -u");
    assert_root(&host, &c.carol, "su -c 'id -u'");

    // The owner, while both guests are logged in.
    let _bob = LiveSession::open(&host, "alice", &c.bob);
    let _carol = LiveSession::open(&host, "alice", &c.carol);
    assert_root(&host, &c.own, "sudo -n id -u");
    assert_root(&host, &c.own, "sudo -n -i id -u");
    assert_root(&host, &c.own, "su -c 'id -u'");

    // Granting admin takes effect at bob's next sudo; taking it back too.
    host.write_grants(&grants(&c, "admin = true"));
    assert_root(&host, &c.bob, "sudo -n id -u");
    host.write_grants(&grants(&c, "admin = false"));
    assert_refused_root(&host, &c.bob, "sudo -n id -u", BOB_REFUSED);
}

/// `cmd` (sudo or su, with the command given after it) run by `key` ran
/// nothing as root: no uid 0 printed, no file left in the root-only
/// directory, and the caller saw `message`.
#[track_caller]
fn assert_no_root_process(host: &Host, key: &Key, cmd: &str, message: &str) {
    let marker = format!("ran-{}", harness::unique_marker());
    let full = format!("{cmd} {}", host.root_marker_command(&marker));
    assert_refused_root(host, key, &full, message);
    assert!(
        !host.ran_as_root(&marker),
        "{} ran a command as root with `{full}`",
        key.name
    );
}

/// sudo set to skip one of its two PAM phases still runs the other, and
/// that one refuses: with `!pam_acct_mgmt` the session lines (whose refusal
/// sudo must not take for a session it may run without), with
/// `!pam_session` the account lines. The owner and an admin guest keep root.
#[test]
fn sudo_skipping_a_pam_phase_still_refuses_a_guest() {
    for setting in ["!pam_acct_mgmt", "!pam_session"] {
        let (host, c) = setup();
        host.sudo_defaults("alice", &[setting]);
        assert_root(&host, &c.own, "sudo -n id -u");
        assert_root(&host, &c.own, "sudo -n -i id -u");
        for sudo in ["sudo -n", "sudo -n -i", "setsid sudo -n"] {
            assert_no_root_process(&host, &c.bob, sudo, BOB_REFUSED);
        }
        assert_root(&host, &c.carol, "sudo -n id -u");
        let _bob = LiveSession::open(&host, "alice", &c.bob);
        assert_root(&host, &c.own, "sudo -n id -u");
        eprintln!("{setting}: refused");
    }
}

/// A way to root that PAM cannot gate, set up on a host and taken away.
struct RootPath {
    /// How doctor, status and the refusals say alice becomes root.
    how: &'static str,
    /// `kind` in `status --json`.
    kind: &'static str,
    set: Box<dyn Fn(&Host)>,
    unset: Box<dyn Fn(&Host)>,
    /// A command by which a guest becomes root through it, if the test
    /// can run one here.
    guest_root: Option<&'static str>,
}

impl RootPath {
    /// A way made by writing `text` to `file` (root's, `mode`), taken
    /// away by removing it.
    fn file(
        how: &'static str,
        kind: &'static str,
        (file, text, mode): (&'static str, &'static str, u32),
        guest_root: Option<&'static str>,
    ) -> RootPath {
        RootPath {
            how,
            kind,
            set: Box::new(move |h| h.write_file(file, text, 0, 0, mode)),
            unset: Box::new(move |h| {
                h.run_ok(&["rm", file]);
            }),
            guest_root,
        }
    }
}

fn root_paths() -> Vec<RootPath> {
    let mut paths = vec![
        RootPath {
            how: "without a password through sudo with !pam_acct_mgmt and !pam_session",
            kind: "sudo",
            set: Box::new(|h| h.sudo_defaults("alice", &["!pam_acct_mgmt", "!pam_session"])),
            unset: Box::new(|h| {
                h.run_ok(&["rm", "/etc/sudoers.d/alice-defaults"]);
            }),
            guest_root: Some("sudo -n id -u"),
        },
        RootPath::file(
            "without a password through doas (/etc/doas.conf line 1)",
            "doas",
            (DOAS_CONF, "permit nopass alice as root\n", 0o400),
            Some("doas -n id -u"),
        ),
        // alice is in wheel (see make_sudoer).
        RootPath::file(
            "with the account's password through doas (/etc/doas.conf line 2)",
            "doas",
            (DOAS_CONF, "# admins\npermit persist :wheel\n", 0o400),
            None,
        ),
        RootPath::file(
            "without authentication through polkit (/etc/polkit-1/rules.d/20-e2e.rules line 2)",
            "polkit",
            (
                "/etc/polkit-1/rules.d/20-e2e.rules",
                "// units for alice\npolkit.addRule(function(action, subject) {\n    \
                 if (action.id == \"org.freedesktop.systemd1.manage-units\" && subject.user == \"alice\") {\n        \
                 return polkit.Result.YES;\n    }\n});\n",
                0o644,
            ),
            None,
        ),
    ];
    for (group, how) in [
        ("docker", "as a member of group docker"),
        ("lxd", "as a member of group lxd"),
        ("incus-admin", "as a member of group incus-admin"),
        ("libvirt", "as a member of group libvirt"),
        ("disk", "as a member of group disk"),
        ("shadow", "as a member of group shadow"),
    ] {
        paths.push(RootPath {
            how,
            kind: "group",
            set: Box::new(move |h| h.add_to_group("alice", group)),
            unset: Box::new(move |h| h.remove_from_group("alice", group)),
            guest_root: None,
        });
    }
    paths
}

const DOAS_CONF: &str = "/etc/doas.conf";

/// bob accepted without admin, carol with it, dave invited.
fn grants_with_dave(c: &Cast, dave: &Key) -> String {
    format!(
        "{}\n[owners.alice.guests.dave]\nstatus = \"invited\"\nkeys = [\"{}\"]\n",
        grants(c, ""),
        dave.public
    )
}

/// Runs `vmshare ARGS` in the host.
fn vmshare(host: &Host, args: &[&str]) -> Output {
    let mut all = vec!["vmshare"];
    all.extend(args);
    host.run(&all)
}

/// Where the owner becomes root without PAM's say, a guest would be root
/// whatever `admin` says: doctor fails naming the way, status shows it
/// beside the owner, and invite and accept refuse a guest without admin
/// (with `--admin` they go ahead). Without such a way (sudo that skips one
/// PAM phase only is gated) nothing is refused.
#[test]
fn an_owner_who_becomes_root_where_pam_cannot_see_gets_no_guest_without_admin() {
    let (host, c) = setup();
    assert!(
        host.path("/usr/bin/doas").exists(),
        "/usr/bin/doas is missing: install opendoas"
    );
    let dave = host.keypair("dave");
    let erin = host.keypair("erin");
    let invite_erin = ["invite", "alice", "erin", "--key", erin.public.as_str()];
    let reset = || host.write_grants(&grants_with_dave(&c, &dave));

    // Nothing ungated: sudo skipping one PAM phase is still gated.
    host.sudo_defaults("alice", &["!pam_acct_mgmt"]);
    reset();
    assert_eq!(host.doctor_admin_problems(), Vec::<String>::new());
    let status = String::from_utf8_lossy(&vmshare(&host, &["status"]).stdout).into_owned();
    assert!(!status.contains("can become root"), "{status}");
    for args in [&invite_erin[..], &["accept", "alice", "dave"]] {
        let out = vmshare(&host, args);
        assert!(out.status.success(), "{args:?}:\n{}", text(&out));
    }
    host.run_ok(&["rm", "/etc/sudoers.d/alice-defaults"]);

    for path in root_paths() {
        reset();
        (path.set)(&host);
        let how = path.how;
        if let Some(cmd) = path.guest_root {
            // What doctor and the refusals warn of: bob is root.
            assert_root(&host, &c.bob, cmd);
        }

        let problems = host.doctor_admin_problems();
        assert!(
            problems.len() == 1
                && problems[0].contains(&format!(
                    "owner `alice` can become root {how}, which vmshare's admin check cannot gate"
                )),
            "{how}: doctor said {problems:?}"
        );

        let status = String::from_utf8_lossy(&vmshare(&host, &["status"]).stdout).into_owned();
        let warning = format!(
            "\n  warning: alice can become root {how}: a guest would be root in all but name, even without admin = true"
        );
        assert!(
            status.contains("owner alice: sharing on\n"),
            "{how}: status said\n{status}"
        );
        assert!(status.contains(&warning), "{how}: status said\n{status}");
        let json: serde_json::Value =
            serde_json::from_slice(&vmshare(&host, &["status", "--json"]).stdout).unwrap();
        assert_eq!(
            json["owners"][0]["root_paths"],
            serde_json::json!([{"kind": path.kind, "how": how}]),
            "{how}"
        );

        let refusal = format!(
            "vmshare: alice can become root {how}: a guest would be root in all but name; fix the host or pass --admin\nvmshare: nothing was changed\n"
        );
        let before = host.read_file(harness::GRANTS).unwrap();
        for args in [&invite_erin[..], &["accept", "alice", "dave"]] {
            let out = vmshare(&host, args);
            assert!(!out.status.success(), "{how}: {args:?} went ahead");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                refusal,
                "{how}: {args:?}"
            );
        }
        assert_eq!(host.read_file(harness::GRANTS).unwrap(), before, "{how}");
        for args in [
            &[&invite_erin[..], &["--admin"]].concat()[..],
            &["accept", "alice", "dave", "--admin"],
        ] {
            let out = vmshare(&host, args);
            assert!(out.status.success(), "{how}: {args:?}:\n{}", text(&out));
        }
        let now = host.read_file(harness::GRANTS).unwrap();
        assert_eq!(now.matches("admin = true").count(), 3, "{how}:\n{now}");

        (path.unset)(&host);
        assert_eq!(host.doctor_admin_problems(), Vec::<String>::new(), "{how}");
        eprintln!("{how}: refused");
    }
}

/// bob logs in again from inside his session with his own key, brought
/// along: that login is bob's too. A key he plants in the owner's
/// authorized_keys logs in from nowhere, not even the owner's own session.
#[test]
fn a_nested_login_is_still_the_guest() {
    let (host, c) = setup();
    let (uid, gid, home) = host.passwd_entry("alice");
    let brought = format!("{home}/.ssh/bob");
    let private = host.read_file(&c.bob.private).unwrap();
    host.write_file(&brought, &private, uid, gid, 0o600);
    let ssh = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR";
    let nested = format!("{ssh} -i ~/.ssh/bob alice@127.0.0.1 sudo -n id -u");
    assert_refused_root(&host, &c.bob, &nested, BOB_REFUSED);

    let planted = format!(
        "rm -f ~/.ssh/nested; ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/nested \
         && cat ~/.ssh/nested.pub >> ~/.ssh/authorized_keys \
         && {ssh} -i ~/.ssh/nested alice@127.0.0.1 sudo -n id -u"
    );
    assert_refused_root(&host, &c.bob, &planted, "Permission denied");
    assert_refused_root(
        &host,
        &c.own,
        &format!("{ssh} -i ~/.ssh/nested alice@127.0.0.1 sudo -n id -u"),
        "Permission denied",
    );
}

/// Whatever breaks in vmshare, the owner keeps sudo, and a guest inside a
/// session stays without root.
#[test]
fn the_owner_keeps_sudo_whatever_state_vmshare_is_in() {
    let (host, c) = setup();
    let mut bob = Shell::open(&host, &c.bob);
    let mut carol = Shell::open(&host, &c.carol);
    let mut own = Shell::open(&host, &c.own);

    // The daemon never ran in this test; now the grant file is invalid.
    host.write_grants("[owners.alice\n");
    let said = bob.run("sudo -n id -u");
    assert!(
        said.contains("bob is a guest in alice's account and may not become root (the grant file grants nothing"),
        "{said}"
    );
    let said = carol.run("sudo -n id -u");
    assert!(said.contains("carol is a guest"), "{said}");
    assert_root(&host, &c.own, "sudo -n id -u");

    // The session records are lost: the session groups still say guest.
    host.write_grants(&grants(&c, "admin = true"));
    host.run_ok(&["rm", "-rf", SESSIONS_DIR]);
    let said = bob.run("sudo -n id -u");
    assert!(
        said.contains("runs in a guest session") && said.contains("has no record"),
        "{said}"
    );
    assert_root(&host, &c.own, "sudo -n id -u");

    // The agent's configuration is unreadable. (The owner is logged in
    // already: with no configuration the key lookup looks for her held
    // keys in the default state dir, not this host's.)
    host.run_ok(&["chmod", "0600", "/etc/vmshare/vmshare.toml"]);
    host.write_file("/etc/vmshare/vmshare.toml", "bogus = [", 0, 0, 0o666);
    for cmd in ["sudo -n id -u", "su -c 'id -u'"] {
        let said = own.run(cmd);
        assert_eq!(said, "0\nexit 0", "alice running `{cmd}`");
    }
}

/// pkexec through the real polkitd on a system bus: the owner's pkexec is
/// allowed without a password by a polkit rule, so what a guest meets is
/// the polkit-1 PAM stack. pkexec skips the account check when polkit says
/// yes without a password; the session lines refuse, and say why on the
/// caller's stderr (pkexec cannot show PAM messages).
#[test]
fn pkexec_refuses_a_guest_without_admin() {
    let (host, c) = setup();
    let _polkit = host.start_polkit("alice");
    let pkexec = "pkexec id -u";
    assert_root(&host, &c.own, pkexec);

    assert_refused_root(&host, &c.bob, pkexec, BOB_REFUSED);
    assert_refused_root(
        &host,
        &c.bob,
        "setsid sh -c 'pkexec id -u' </dev/null",
        BOB_REFUSED,
    );
    assert_root(&host, &c.carol, pkexec);

    // The owner, while both guests are logged in.
    let _bob = LiveSession::open(&host, "alice", &c.bob);
    let _carol = LiveSession::open(&host, "alice", &c.carol);
    assert_root(&host, &c.own, pkexec);
    assert_refused_root(&host, &c.bob, pkexec, BOB_REFUSED);
}
