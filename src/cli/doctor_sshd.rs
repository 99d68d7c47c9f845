//! `vmshare doctor`, the `sshd` area: sshd's effective configuration, for
//! the host and for each owner, as `sshd -T [-C user=OWNER,…]` prints it.
//!
//! For a sharing owner sshd must read no file in her home that it trusts
//! for logging in (a guest runs as the owner and could write any of them):
//! no AuthorizedKeysFile, no AuthorizedPrincipalsFile, no `.shosts` or
//! `.rhosts` (host-based), no `.k5login` (GSSAPI, Kerberos). The shipped
//! drop-in's `Match Group vmshare-owners` block says so; another block
//! matching first, or an old drop-in, would undo it.

use std::path::Path;
use std::process::Command;

use super::doctor::{bad, ok, Finding, Verdict};

/// What sshd must run as its AuthorizedKeysCommand for a sharing owner.
pub const KEYS_COMMAND: &str = "/usr/libexec/vmshare/vmshare-keys %u %f %t %k";
const DROP_IN: &str = "config/sshd_config.d/vmshare.conf (as /etc/ssh/sshd_config.d/vmshare.conf)";
const RELOAD: &str = "then reload sshd (`systemctl reload ssh`)";

/// The value of `key` in `sshd -T` output (keys are lower case there).
pub fn sshd_value<'a>(sshd_t: &'a str, key: &str) -> Option<&'a str> {
    sshd_t.lines().find_map(|line| {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        (k == key).then(|| v.trim())
    })
}

/// The host-wide settings, from plain `sshd -T`. `owner_files` is the
/// agent config's `authorized_keys_files`: what a takeover reads.
pub fn check_sshd(sshd_t: &str, owner_files: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    match sshd_value(sshd_t, "usepam") {
        Some("yes") => out.push(ok("sshd", "UsePAM is on, so the session hook runs")),
        _ => out.push(bad(
            "sshd",
            Verdict::Problem,
            "UsePAM is off: guest sessions are not checked, recorded or ended",
            format!("set `UsePAM yes`, {RELOAD}"),
        )),
    }
    if sshd_value(sshd_t, "pubkeyauthentication") == Some("no") {
        out.push(bad(
            "sshd",
            Verdict::Problem,
            "PubkeyAuthentication is off: guests cannot log in",
            format!("set `PubkeyAuthentication yes`, {RELOAD}"),
        ));
    }
    out.push(check_owner_files(sshd_t, owner_files));
    out
}

/// A takeover reads the files sshd read for the owner before she shared,
/// so the agent must name the same ones.
fn check_owner_files(sshd_t: &str, owner_files: &[String]) -> Finding {
    let mut sshd: Vec<&str> = match sshd_value(sshd_t, "authorizedkeysfile") {
        None | Some("none") => Vec::new(),
        Some(v) => v.split_ascii_whitespace().collect(),
    };
    let mut ours: Vec<&str> = owner_files.iter().map(String::as_str).collect();
    sshd.sort_unstable();
    sshd.dedup();
    ours.sort_unstable();
    ours.dedup();
    if sshd == ours {
        return ok(
            "sshd",
            "AuthorizedKeysFile matches the agent's authorized_keys_files",
        );
    }
    bad(
        "sshd",
        Verdict::Warning,
        format!(
            "sshd's AuthorizedKeysFile is `{}` but the agent's authorized_keys_files is `{}`: when an owner starts sharing, vmshare takes over her keys from the files it names, so a key only sshd knows stops working",
            sshd.join(" "),
            ours.join(" ")
        ),
        "make `authorized_keys_files` in /etc/vmshare/vmshare.toml list exactly sshd's AuthorizedKeysFile entries",
    )
}

/// sshd's settings for one owner of the grant file (`sshd -T -C
/// user=OWNER,…`), and whether vmshare holds her keys (`held`: `Err` why
/// not). Any setting that lets sshd trust a file in her home is a
/// problem: her guests get no access until it is fixed.
pub fn check_owner(
    owner: &str,
    sshd_t: &str,
    account_exists: &dyn Fn(&str) -> bool,
    held: &Result<(), String>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Err(why) = held {
        out.push(bad(
            "sshd",
            Verdict::Problem,
            format!("owner `{owner}`: {why}"),
            format!("`vmshare owner-keys import {owner}` (root)"),
        ));
    }
    match sshd_value(sshd_t, "authorizedkeyscommand") {
        Some(KEYS_COMMAND) => {}
        None | Some("none") | Some("") => out.push(bad(
            "sshd",
            Verdict::Problem,
            format!("sshd runs no AuthorizedKeysCommand for owner `{owner}`: neither she nor her guests can log in with a key"),
            format!("install {DROP_IN}, make sure sshd_config has `Include /etc/ssh/sshd_config.d/*.conf` before any Match block, {RELOAD}"),
        )),
        Some(other) => out.push(bad(
            "sshd",
            Verdict::Problem,
            format!("owner `{owner}`: AuthorizedKeysCommand is `{other}`, not the vmshare key lookup: her held keys and her guests' are not served"),
            format!("use `AuthorizedKeysCommand {KEYS_COMMAND}` for group vmshare-owners (see {DROP_IN}), {RELOAD}"),
        )),
    }
    match sshd_value(sshd_t, "authorizedkeyscommanduser") {
        Some(user) if user != "none" && account_exists(user) => {}
        other => out.push(bad(
            "sshd",
            Verdict::Problem,
            format!(
                "owner `{owner}`: AuthorizedKeysCommandUser is `{}`, which is no account, so sshd never runs the key lookup",
                other.unwrap_or("")
            ),
            format!("set `AuthorizedKeysCommandUser _vmshare` (see {DROP_IN}), {RELOAD}"),
        )),
    }
    // Each way sshd trusts a file in the home, and the value that closes it.
    let closed = [
        ("authorizedkeysfile", "none", "AuthorizedKeysFile"),
        (
            "authorizedprincipalsfile",
            "none",
            "AuthorizedPrincipalsFile",
        ),
        (
            "hostbasedauthentication",
            "no",
            "HostbasedAuthentication (~/.shosts, ~/.rhosts)",
        ),
        (
            "gssapiauthentication",
            "no",
            "GSSAPIAuthentication (~/.k5login)",
        ),
        (
            "kerberosauthentication",
            "no",
            "KerberosAuthentication (~/.k5login)",
        ),
    ];
    for (key, want, name) in closed {
        match sshd_value(sshd_t, key) {
            // An sshd built without Kerberos does not print the setting.
            None if key == "kerberosauthentication" => {}
            Some(v) if v == want => {}
            value => out.push(bad(
                "sshd",
                Verdict::Problem,
                format!(
                    "for owner `{owner}` sshd's {name} is `{}`: it trusts a file in her home, which a guest (running as her) can write, so her guests get no access",
                    value.unwrap_or("(not set)")
                ),
                format!("keep the `Match Group vmshare-owners` block of {DROP_IN} (`{name} {want}`) first among the Match blocks that match her, {RELOAD}"),
            )),
        }
    }
    if out.is_empty() {
        out.push(ok(
            "sshd",
            format!("owner `{owner}`: keys held by vmshare, sshd reads no login file in the home"),
        ));
    }
    out
}

/// `sshd -T` (for `owner`: as a connection of hers from the loopback
/// would be, `-C user=OWNER,host=localhost,addr=127.0.0.1`).
pub fn sshd_t(config_file: Option<&Path>, owner: Option<&str>) -> Result<String, String> {
    let sshd = if Path::new("/usr/sbin/sshd").exists() {
        "/usr/sbin/sshd"
    } else {
        "sshd"
    };
    let mut cmd = Command::new(sshd);
    cmd.arg("-T");
    if let Some(f) = config_file {
        cmd.arg("-f").arg(f);
    }
    if let Some(owner) = owner {
        cmd.arg("-C")
            .arg(format!("user={owner},host=localhost,addr=127.0.0.1"));
    }
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {sshd}: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(format!("`sshd -T` failed: {}", err.trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLOBAL: &str = "port 22\nusepam yes\npubkeyauthentication yes\nauthorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2\nauthorizedkeyscommand none\n";
    const OWNER: &str = "usepam yes\nauthorizedkeysfile none\nauthorizedprincipalsfile none\nhostbasedauthentication no\ngssapiauthentication no\nkerberosauthentication no\nauthorizedkeyscommand /usr/libexec/vmshare/vmshare-keys %u %f %t %k\nauthorizedkeyscommanduser _vmshare\n";

    fn files() -> Vec<String> {
        crate::store::config::Config::default().authorized_keys_files
    }

    fn worst(findings: &[Finding]) -> Option<Verdict> {
        findings.iter().map(|f| f.verdict).max()
    }

    #[test]
    fn the_host_settings() {
        assert_eq!(worst(&check_sshd(GLOBAL, &files())), Some(Verdict::Ok));
        let cases = [
            ("usepam yes", "usepam no", Verdict::Problem),
            (
                "pubkeyauthentication yes",
                "pubkeyauthentication no",
                Verdict::Problem,
            ),
            (
                "authorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2",
                "authorizedkeysfile .ssh/authorized_keys",
                Verdict::Warning,
            ),
        ];
        for (from, to, verdict) in cases {
            let f = check_sshd(&GLOBAL.replace(from, to), &files());
            assert_eq!(worst(&f), Some(verdict), "{to}: {f:?}");
        }
    }

    #[test]
    fn a_sharing_owner_must_have_every_home_file_closed() {
        let exists = |u: &str| u == "_vmshare";
        let f = check_owner("alice", OWNER, &exists, &Ok(()));
        assert_eq!(worst(&f), Some(Verdict::Ok), "{f:?}");
        let cases = [
            (
                "authorizedkeysfile none",
                "authorizedkeysfile .ssh/authorized_keys",
                "AuthorizedKeysFile",
            ),
            (
                "authorizedprincipalsfile none",
                "authorizedprincipalsfile .ssh/principals",
                "AuthorizedPrincipalsFile",
            ),
            (
                "hostbasedauthentication no",
                "hostbasedauthentication yes",
                "Hostbased",
            ),
            (
                "gssapiauthentication no",
                "gssapiauthentication yes",
                "k5login",
            ),
            (
                "kerberosauthentication no",
                "kerberosauthentication yes",
                "k5login",
            ),
            (
                "authorizedkeyscommand /usr/libexec/vmshare/vmshare-keys %u %f %t %k",
                "authorizedkeyscommand none",
                "AuthorizedKeysCommand",
            ),
            (
                "authorizedkeyscommand /usr/libexec/vmshare/vmshare-keys %u %f %t %k",
                "authorizedkeyscommand /usr/bin/other %u",
                "not the vmshare key lookup",
            ),
            (
                "authorizedkeyscommanduser _vmshare",
                "authorizedkeyscommanduser ghost",
                "no account",
            ),
        ];
        for (from, to, named) in cases {
            let f = check_owner("alice", &OWNER.replace(from, to), &exists, &Ok(()));
            assert_eq!(worst(&f), Some(Verdict::Problem), "{to}: {f:?}");
            assert!(
                f.iter()
                    .any(|f| f.message.contains(named) && !f.fix.is_empty()),
                "{to}: {f:?}"
            );
        }
        let f = check_owner(
            "alice",
            OWNER,
            &exists,
            &Err("not in group vmshare-owners".into()),
        );
        assert_eq!(worst(&f), Some(Verdict::Problem));
        assert!(f[0].fix.contains("owner-keys import alice"), "{f:?}");
    }
}
