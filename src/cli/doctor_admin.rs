//! `vmshare doctor`, the `admin` area: can a guest without `admin = true`
//! still become root? Checks the stacks that make root include
//! vmshare-admin, and warns about what the check cannot see: the owner's
//! groups that are root in all but name, the user manager, the signal
//! backend.

use std::path::Path;

use super::doctor::{bad, ok, Finding, Verdict};
use crate::grant::model::Grants;

/// The PAM stacks that make root, as the package wires them.
pub const STACKS: [&str; 4] = ["sudo", "sudo-i", "su", "polkit-1"];

/// Groups whose members are root in all but name: they can run a
/// container or VM over the host's files (docker, lxd, incus-admin,
/// libvirt) or write the disks under the file system (disk).
pub const ROOT_GROUPS: [&str; 5] = ["docker", "lxd", "incus-admin", "libvirt", "disk"];

/// What the admin checks look at.
pub struct AdminFacts<'a> {
    /// Each stack of [`STACKS`] the host has, with its text (from
    /// /etc/pam.d, or else /usr/lib/pam.d).
    pub stacks: &'a [(String, String)],
    /// The valid grant file, if it is.
    pub grants: Option<&'a Grants>,
    /// The groups an account is in.
    pub groups_of: &'a dyn Fn(&str) -> Vec<String>,
    /// Whether systemd runs the host (each owner has a user manager).
    pub systemd: bool,
    /// Whether new guest sessions get the signal backend (no placement).
    pub signal_backend: bool,
}

pub fn check_admin(facts: &AdminFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    for (path, text) in facts.stacks {
        let wired = text.lines().any(|l| {
            let words: Vec<&str> = l
                .split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            words == ["@include", "vmshare-admin"]
                || (words.contains(&"pam_exec.so") && words.contains(&crate::session::admin::MODE))
        });
        out.push(if wired {
            ok("admin", format!("{path} includes vmshare-admin"))
        } else {
            bad(
                "admin",
                Verdict::Warning,
                format!("{path} does not include vmshare-admin: a guest without admin = true gets root through it"),
                format!("add `@include vmshare-admin` before `@include common-account` in {path} (reinstalling vmshare does it)"),
            )
        });
    }
    let Some(grants) = facts.grants else {
        return out;
    };
    // Owners with a guest who may log in but is not to become root.
    let owners = grants
        .owners
        .iter()
        .filter(|o| o.guests.iter().any(|g| g.has_access(o.sharing) && !g.admin));
    for owner in owners {
        let groups: Vec<String> = (facts.groups_of)(&owner.name)
            .into_iter()
            .filter(|g| ROOT_GROUPS.contains(&g.as_str()))
            .collect();
        if !groups.is_empty() {
            out.push(bad(
                "admin",
                Verdict::Warning,
                format!(
                    "owner `{}` is in group(s) {}, which are root in all but name; guests have the owner's groups, so admin = false does not keep them from root",
                    owner.name,
                    groups.join(", ")
                ),
                format!("take `{}` out of those groups, or share only with guests you would make admin", owner.name),
            ));
        }
        if facts.systemd {
            out.push(bad(
                "admin",
                Verdict::Warning,
                format!(
                    "owner `{}` has a user manager: a guest can run sudo through `systemd-run --user`, outside the guest's session, where it counts as the owner's",
                    owner.name
                ),
                "share only with guests you would make admin, or take sudo from the owner",
            ));
        }
    }
    if facts.signal_backend {
        out.push(bad(
            "admin",
            Verdict::Warning,
            "guest sessions get the signal backend, which places nothing: a guest's double-forked process is not known as the guest's, and sudo takes it for the owner's",
            "use the cgroup backend (cgroup v2) or logind",
        ));
    }
    out
}

/// The stacks of [`STACKS`] this host has, each from `pam_dir` or else
/// from `vendor_dir`.
pub fn read_stacks(pam_dir: &Path, vendor_dir: &Path) -> Vec<(String, String)> {
    STACKS
        .iter()
        .filter_map(|stack| {
            [pam_dir, vendor_dir].iter().find_map(|dir| {
                let path = dir.join(stack);
                let text = std::fs::read_to_string(&path).ok()?;
                Some((path.display().to_string(), text))
            })
        })
        .collect()
}

/// The names of the groups `user` is in (NSS), empty if unknown.
pub fn groups_of(user: &str) -> Vec<String> {
    use nix::unistd::{getgrouplist, Group, User};
    let Ok(Some(account)) = User::from_name(user) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user) else {
        return Vec::new();
    };
    getgrouplist(&name, account.gid)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|gid| Group::from_gid(gid).ok().flatten().map(|g| g.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(bob: &str) -> Grants {
        crate::grant::parse::parse(&format!(
            "[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\nstatus = \"accepted\"\n{bob}\n"
        ))
        .unwrap()
    }

    fn warnings(facts: &AdminFacts) -> Vec<String> {
        check_admin(facts)
            .into_iter()
            .filter(|f| f.verdict != Verdict::Ok)
            .map(|f| f.message)
            .collect()
    }

    #[test]
    fn stacks_without_the_include_are_named() {
        let stacks = [
            (
                "/etc/pam.d/sudo".to_string(),
                "@include vmshare-admin\n@include common-account\n".to_string(),
            ),
            (
                "/etc/pam.d/su".to_string(),
                "# @include vmshare-admin\n@include common-account\n".to_string(),
            ),
        ];
        let w = warnings(&AdminFacts {
            stacks: &stacks,
            grants: None,
            groups_of: &|_| Vec::new(),
            systemd: false,
            signal_backend: false,
        });
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("/etc/pam.d/su does not include"), "{w:?}");
    }

    #[test]
    fn root_groups_and_escapes_matter_for_owners_of_non_admin_guests() {
        let g = grants("");
        let groups = |_: &str| {
            vec![
                "alice".to_string(),
                "docker".to_string(),
                "sudo".to_string(),
            ]
        };
        let w = warnings(&AdminFacts {
            stacks: &[],
            grants: Some(&g),
            groups_of: &groups,
            systemd: true,
            signal_backend: true,
        });
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].contains("owner `alice` is in group(s) docker,"),
            "{w:?}"
        );
        assert!(w[1].contains("systemd-run --user"), "{w:?}");
        assert!(w[2].contains("signal backend"), "{w:?}");
        // Only admin guests: nothing a guest could gain.
        let admins = grants("admin = true");
        let w = warnings(&AdminFacts {
            stacks: &[],
            grants: Some(&admins),
            groups_of: &groups,
            systemd: true,
            signal_backend: false,
        });
        assert!(w.is_empty(), "{w:?}");
    }
}
