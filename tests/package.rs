//! The Debian package, installed the way an admin would: the .deb is built
//! with cargo-deb (scripts/build-deb) and installed with dpkg into a private
//! host (mount namespace, overlays on /etc, /usr and /var, sshd started by
//! hand since there is no service manager). The installed files must carry
//! the whole lifecycle — an accepted guest gets in and is thrown out on
//! revoke, the owner always gets in, a guest does not get the owner's sudo
//! — and remove and purge must put sshd's and the PAM stacks' configuration
//! back byte for byte, and give sharing owners their home key files back.
//! An upgrade from a vmshare that let sshd read those files takes over the
//! keys of every owner already in the grant file.
//!
//! Fails (never skips) when the package cannot be built: the packaging is
//! part of what is tested.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use harness::{Host, Key, LiveSession, ADMIN_STACKS};

const DEB_INSIDE: &str = "/run/vmshare-e2e/vmshare.deb";

/// Builds the package once per test run; returns the .deb's path.
fn build_deb() -> PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(build_deb_now).clone()
}

fn build_deb_now() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(repo.join("scripts/build-deb"))
        .current_dir(repo)
        .output()
        .unwrap_or_else(|e| panic!("running scripts/build-deb: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/build-deb failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = repo.join(stdout.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "build-deb printed no .deb: {stdout}");
    deb
}

/// Type, mode, owner and content of every file under the given paths
/// (inside the host), to compare before and after.
fn snapshot(host: &Host, paths: &[&str]) -> BTreeMap<String, String> {
    fn walk(host: &Host, inside: &str, out: &mut BTreeMap<String, String>) {
        let path = host.path(inside);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            out.insert(inside.to_string(), "absent".into());
            return;
        };
        let head = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
        if meta.is_dir() {
            out.insert(inside.to_string(), format!("dir {head}"));
            let mut names: Vec<String> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                walk(host, &format!("{inside}/{name}"), out);
            }
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).unwrap();
            out.insert(
                inside.to_string(),
                format!("link {head} {}", target.display()),
            );
        } else {
            let bytes = fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            out.insert(inside.to_string(), format!("file {head}\n{text}"));
        }
    }
    let mut out = BTreeMap::new();
    for p in paths {
        walk(host, p, &mut out);
    }
    out
}

#[track_caller]
fn assert_same(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, when: &str) {
    for (path, was) in before {
        let now = after.get(path).map_or("absent", String::as_str);
        assert_eq!(was, now, "{when}: {path} differs from before install");
    }
    for path in after.keys() {
        assert!(
            before.contains_key(path),
            "{when}: {path} was left behind:\n{}",
            after[path]
        );
    }
}

fn dpkg(host: &Host, args: &[&str]) -> String {
    let mut argv = vec!["env", "DEBIAN_FRONTEND=noninteractive", "dpkg"];
    argv.extend_from_slice(args);
    host.run_ok(&argv)
}

fn owner(host: &Host, name: &str) -> Key {
    host.add_user(name);
    let key = host.keypair(name);
    host.authorize_owner_key(name, &key.public);
    key
}

/// The members of group vmshare-owners, or `None` when there is no such
/// group. (The host's /etc is an overlay of the build host's, which may
/// have the group, and members, of its own.)
fn owners_group(host: &Host) -> Option<Vec<String>> {
    let out = host.run(&["getent", "group", "vmshare-owners"]);
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .split(',')
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect()
    })
}

/// The shipped agent config with session groups inside this host's cgroup
/// (on a real host the default is fine).
fn agent_config(host: &Host) -> String {
    include_str!("../config/vmshare.toml").replace(
        "cgroup_root = \"\"",
        &format!("cgroup_root = \"{}\"", host.sessions_cgroup().display()),
    )
}

#[test]
fn package_installs_works_and_purges_cleanly() {
    let deb = build_deb();
    let mut host = Host::start_bare();
    let watched = ["/etc/pam.d", "/etc/ssh"];
    let pristine = snapshot(&host, &watched);

    let alice = owner(&host, "alice");
    let bob = host.keypair("bob");
    host.launch_sshd();
    host.assert_logs_in_as("alice", &alice, "alice");

    // Install.
    host.install_file(&deb, DEB_INSIDE, 0o644);
    dpkg(&host, &["--install", DEB_INSIDE]);
    for (path, mode) in [
        ("/usr/bin/vmshare", 0o755),
        ("/usr/sbin/vmshared", 0o755),
        ("/usr/libexec/vmshare/vmshare-keys", 0o755),
        ("/usr/libexec/vmshare/vmshare-pam", 0o755),
        ("/etc/ssh/sshd_config.d/vmshare.conf", 0o644),
        ("/etc/pam.d/vmshare", 0o644),
        ("/etc/pam.d/vmshare-admin", 0o644),
        ("/etc/vmshare/vmshare.toml", 0o644),
        ("/etc/vmshare/grants.toml", 0o644),
        ("/usr/lib/systemd/system/vmshared.service", 0o644),
        ("/usr/share/man/man1/vmshare.1.gz", 0o644),
    ] {
        let meta = fs::metadata(host.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.mode() & 0o7777, mode, "mode of {path}");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "owner of {path}");
    }
    let etc_vmshare = fs::metadata(host.path("/etc/vmshare")).unwrap();
    assert_eq!(etc_vmshare.mode() & 0o7777, 0o755);
    assert_eq!(host.read_file("/etc/vmshare/grants.toml").unwrap(), "");
    assert_eq!(
        host.read_file("/etc/vmshare/vmshare.toml").unwrap(),
        include_str!("../config/vmshare.toml")
    );
    assert!(host
        .run_ok(&["getent", "passwd", "_vmshare"])
        .contains("/usr/sbin/nologin"));
    // The owners' group is there, without alice: she does not share yet.
    let members = owners_group(&host).expect("no group vmshare-owners");
    assert!(!members.contains(&"alice".to_string()), "{members:?}");
    let pam = host.read_file("/etc/pam.d/sshd").unwrap();
    assert!(
        pam.contains("@include common-session\n@include vmshare\n"),
        "vmshare is not included right after common-session:\n{pam}"
    );
    // Guests do not become root: vmshare-admin is in every stack that makes
    // root (a stack only in /usr/lib/pam.d gets a copy in /etc/pam.d).
    let mut admin_stacks = Vec::new();
    for stack in ADMIN_STACKS {
        let vendor = format!("/usr/lib/pam.d/{stack}");
        let etc = format!("/etc/pam.d/{stack}");
        if !host.path(&etc).exists() && !host.path(&vendor).exists() {
            continue;
        }
        let text = host.read_file(&etc).unwrap();
        assert_eq!(
            text.matches("@include vmshare-admin\n@include common-account\n")
                .count(),
            1,
            "vmshare-admin is not included before common-account in {etc}:\n{text}"
        );
        admin_stacks.push((etc, text));
    }
    for stack in ["sudo", "su", "polkit-1"] {
        assert!(
            admin_stacks.iter().any(|(etc, _)| etc.ends_with(stack)),
            "this host has no {stack} stack: install sudo and pkexec"
        );
    }
    let conffiles = host.run_ok(&["dpkg-query", "-W", "-f=${Conffiles}", "vmshare"]);
    assert!(
        conffiles.contains("/etc/ssh/sshd_config.d/vmshare.conf")
            && conffiles.contains("/etc/pam.d/vmshare"),
        "conffiles: {conffiles}"
    );
    // Installing again (a reinstall, or configure run twice) adds nothing.
    dpkg(&host, &["--install", DEB_INSIDE]);
    assert_eq!(host.read_file("/etc/pam.d/sshd").unwrap(), pam);
    for (etc, text) in &admin_stacks {
        assert_eq!(&host.read_file(etc).unwrap(), text, "{etc} changed again");
    }

    // Keep session groups inside this host's cgroup.
    host.write_file(
        "/etc/vmshare/vmshare.toml",
        &agent_config(&host),
        0,
        0,
        0o644,
    );

    // Run: what systemd would do on a real host.
    host.reload_sshd();
    let daemon = host.start_daemon();
    host.run_ok(&["vmshare", "invite", "alice", "bob", "--key", &bob.public]);
    host.run_ok(&["vmshare", "accept", "alice", "bob"]);
    host.run_ok(&["vmshare", "sharing", "alice", "on"]);
    // The invite took alice's keys over.
    let members = owners_group(&host).expect("no group vmshare-owners");
    assert!(members.contains(&"alice".to_string()), "{members:?}");
    let held = host.run_ok(&["vmshare", "owner-keys", "list", "alice"]);
    assert!(held.contains(&alice.public), "{held}");
    host.assert_logs_in_as("alice", &bob, "alice");
    // The owner may do anything through sudo; bob, a guest without admin,
    // may not.
    host.write_file(
        "/etc/sudoers.d/alice",
        "alice ALL=(ALL:ALL) NOPASSWD: ALL\n",
        0,
        0,
        0o440,
    );
    assert_eq!(host.ssh("alice", &alice, "sudo -n id -u").stdout, b"0\n");
    let refused = host.ssh("alice", &bob, "sudo -n id -u");
    assert!(
        String::from_utf8_lossy(&refused.stdout)
            .contains("bob is a guest in alice's account and may not become root"),
        "{refused:?}"
    );
    let mut session = LiveSession::open(&host, "alice", &bob);
    host.run_ok(&["vmshare", "revoke", "alice", "bob"]);
    assert!(
        session.wait_gone(Duration::from_secs(10)).is_some(),
        "the revoked guest's session survived:\n{}",
        host.daemon_log()
    );
    host.assert_refused("alice", &bob);
    host.assert_logs_in_as("alice", &alice, "alice");
    drop(daemon);

    // Remove: vmshare leaves sshd's PAM stack at once; its configuration
    // stays (as Debian keeps it until purge) and the owner still gets in.
    dpkg(&host, &["--remove", "vmshare"]);
    assert_eq!(
        host.read_file("/etc/pam.d/sshd").unwrap(),
        pristine["/etc/pam.d/sshd"]
            .split_once('\n')
            .map(|(_, text)| text)
            .unwrap(),
        "remove did not restore /etc/pam.d/sshd"
    );
    let pristine_pam = |path: &str| {
        pristine
            .get(path)
            .and_then(|p| p.split_once('\n'))
            .map(|(_, text)| text.to_string())
    };
    for (etc, _) in &admin_stacks {
        assert_eq!(
            host.read_file(etc).ok(),
            pristine_pam(etc),
            "remove did not restore {etc}"
        );
    }
    assert!(host.path("/etc/vmshare/grants.toml").exists());
    assert!(!host.path("/usr/libexec/vmshare/vmshare-pam").exists());
    // alice's home key files apply again: the group is gone.
    assert_eq!(owners_group(&host), None);
    assert_eq!(host.ssh("alice", &alice, "sudo -n id -u").stdout, b"0\n");
    host.run_ok(&["rm", "/etc/sudoers.d/alice"]);
    host.reload_sshd();
    host.assert_logs_in_as("alice", &alice, "alice");
    host.assert_refused("alice", &bob);

    // Purge: everything goes; sshd's files are as they were.
    dpkg(&host, &["--purge", "vmshare"]);
    assert_same(&pristine, &snapshot(&host, &watched), "after purge");
    for gone in [
        "/etc/vmshare",
        "/var/lib/vmshare",
        "/usr/lib/systemd/system/vmshared.service",
        "/etc/systemd/system/multi-user.target.wants/vmshared.service",
    ] {
        assert!(!host.path(gone).exists(), "purge left {gone}");
    }
    assert!(
        !host.run(&["getent", "passwd", "_vmshare"]).status.success(),
        "purge left the _vmshare account"
    );
    host.reload_sshd();
    host.assert_logs_in_as("alice", &alice, "alice");
    host.assert_refused("alice", &bob);
}

/// A host where a vmshare that let sshd read the owners' home files left
/// a grant file: installing this one takes over alice's keys (postinst's
/// `owner-keys import --all`), so her guest gets in and a key a guest
/// leaves in her home does not; removing it gives her home files back.
#[test]
fn an_upgrade_takes_over_the_keys_of_owners_in_the_grant_file() {
    let deb = build_deb();
    let mut host = Host::start_bare();
    let alice = owner(&host, "alice");
    let bob = host.keypair("bob");
    let planted = host.keypair("planted");
    host.mkdir("/etc/vmshare", 0o755);
    host.write_file(
        "/etc/vmshare/vmshare.toml",
        &agent_config(&host),
        0,
        0,
        0o644,
    );
    host.write_grants(&format!(
        "[owners.alice]\nsharing = true\n\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
        bob.public
    ));
    host.launch_sshd();

    host.install_file(&deb, DEB_INSIDE, 0o644);
    dpkg(&host, &["--install", DEB_INSIDE]);
    host.reload_sshd();
    let members = owners_group(&host).expect("no group vmshare-owners");
    assert!(members.contains(&"alice".to_string()), "{members:?}");
    let held = host.run_ok(&["vmshare", "owner-keys", "list", "alice"]);
    assert!(held.contains(&alice.public), "{held}");
    let _daemon = host.start_daemon();
    host.assert_logs_in_as("alice", &bob, "alice");
    host.assert_logs_in_as("alice", &alice, "alice");
    let out = host.ssh(
        "alice",
        &bob,
        &format!(
            "echo '{}' >> ~/.ssh/authorized_keys && echo planted",
            planted.public
        ),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "planted");
    host.assert_refused("alice", &planted);

    dpkg(&host, &["--remove", "vmshare"]);
    assert_eq!(owners_group(&host), None);
    host.reload_sshd();
    host.assert_logs_in_as("alice", &alice, "alice");
    host.assert_refused("alice", &bob);
}
