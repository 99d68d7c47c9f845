//! The vmshare-sync Debian package as built by `cargo deb -p vmshare-sync`:
//! what it installs (the agent, its unit, the example config and docs),
//! what it depends on, what its maintainer scripts do with the unit, and
//! that the packaged agent, with no config yet, says so instead of running.
//! (The installed unit is only started once /etc/vmshare/sync.toml exists:
//! `ConditionPathExists=`.)
//!
//! Fails (never skips) when the package cannot be built.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the package; returns the .deb's path.
fn build_deb() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run(Command::new(cargo)
        .args(["deb", "-p", "vmshare-sync", "--locked"])
        .current_dir(repo));
    // cargo-deb prints the path of the package it wrote.
    let deb = text(&out)
        .lines()
        .last()
        .map(|l| repo.join(l.trim()))
        .unwrap_or_default();
    assert!(deb.is_file(), "cargo deb printed no .deb: {}", text(&out));
    deb
}

#[test]
fn the_package_installs_the_agent_and_its_unit_and_starts_nothing_unconfigured() {
    let deb = build_deb();

    let fields = text(&run(Command::new("dpkg-deb").arg("-f").arg(&deb)));
    assert!(fields.contains("Package: vmshare-sync\n"), "{fields}");
    let depends = fields
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends: {fields}"));
    assert!(
        depends.split(", ").any(|d| d == "vmshare"),
        "the agent's grant file is read by the vmshare package: {depends}"
    );

    // Contents: path → "mode uid/gid".
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    let entry = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" .{path}")))
            .map(|l| {
                let mut words = l.split_whitespace();
                let mode = words.next().unwrap_or("");
                // Owners by name or by number, as the builder stored them.
                let owner = words.next().unwrap_or("").replace("root", "0");
                format!("{mode} {owner}")
            })
            .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"))
    };
    assert_eq!(entry("/usr/sbin/vmshare-sync"), "-rwxr-xr-x 0/0");
    let unit = ["/lib/systemd/system", "/usr/lib/systemd/system"]
        .iter()
        .map(|d| format!("{d}/vmshare-sync.service"))
        .find(|p| listing.lines().any(|l| l.ends_with(&format!(" .{p}"))))
        .unwrap_or_else(|| panic!("no vmshare-sync.service:\n{listing}"));
    assert_eq!(entry(&unit), "-rw-r--r-- 0/0");
    assert_eq!(
        entry("/usr/share/doc/vmshare-sync/examples/sync.toml"),
        "-rw-r--r-- 0/0"
    );
    assert_eq!(
        entry("/usr/share/doc/vmshare-sync/fleet.md"),
        "-rw-r--r-- 0/0"
    );
    // The grant file and the config belong to the admin (and the agent):
    // nothing under /etc, so no conffile either.
    assert!(!listing.lines().any(|l| l.contains(" ./etc/")), "{listing}");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert!(!control.join("conffiles").exists());
    // The unit shipped is the one in the tree (checked by
    // scripts/check-unit), enabled and started by the maintainer scripts.
    let shipped = std::fs::read_to_string(root.join(unit.trim_start_matches('/'))).unwrap();
    let ours = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/vmshare-sync.service"),
    )
    .unwrap();
    assert_eq!(shipped, ours);
    assert!(shipped.contains("\nConditionPathExists=/etc/vmshare/sync.toml\n"));
    let script = |name: &str| {
        std::fs::read_to_string(control.join(name))
            .unwrap_or_else(|e| panic!("no {name} in the package: {e}"))
    };
    let postinst = script("postinst");
    for step in [
        "deb-systemd-helper enable vmshare-sync.service",
        "deb-systemd-invoke $_dh_action vmshare-sync.service",
    ] {
        assert!(
            postinst.contains(step),
            "postinst lacks {step}:\n{postinst}"
        );
    }
    let prerm = script("prerm");
    assert!(
        prerm.contains("deb-systemd-invoke stop vmshare-sync.service"),
        "{prerm}"
    );
    assert!(script("postrm").contains("deb-systemd-helper purge vmshare-sync.service"));

    // The packaged agent: --help names its commands; with no config it
    // fails and names the file it looked for.
    let agent = root.join("usr/sbin/vmshare-sync");
    let help = text(&run(Command::new(&agent).arg("--help")));
    assert!(help.contains("run") && help.contains("status"), "{help}");
    let missing = dir.path().join("absent/sync.toml");
    for command in ["run", "status"] {
        let out = Command::new(&agent)
            .arg("--config")
            .arg(&missing)
            .arg(command)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "{command} without a config: {:?} {stderr}",
            out.status
        );
        assert!(
            stderr.contains(&missing.display().to_string()),
            "{command}: the error should name the config: {stderr}"
        );
    }
}
