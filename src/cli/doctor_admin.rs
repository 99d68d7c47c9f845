//! `vmshare doctor`, the `admin` area: can a guest without `admin = true`
//! still become root? Checks the stacks that make root include
//! vmshare-admin, fails for owners who become root where that check cannot
//! see (see [`crate::session::root_paths`]), and warns about the rest it
//! cannot see: the user manager, the signal backend.

use std::path::Path;

use super::doctor::{bad, ok, Finding, Verdict};
use crate::grant::model::{Grants, Status};
use crate::session::root_paths::RootPath;

/// The PAM stacks that make root, as the package wires them.
pub const STACKS: [&str; 4] = ["sudo", "sudo-i", "su", "polkit-1"];

/// What the admin checks look at.
pub struct AdminFacts<'a> {
    /// Each stack of [`STACKS`] the host has, with its text (from
    /// /etc/pam.d, or else /usr/lib/pam.d).
    pub stacks: &'a [(String, String)],
    /// The valid grant file, if it is.
    pub grants: Option<&'a Grants>,
    /// The ways an owner becomes root that the check cannot gate.
    pub root_paths: &'a dyn Fn(&str) -> Vec<RootPath>,
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
    // Owners with a guest who has or may be given access but is not to
    // become root.
    let owners = grants.owners.iter().filter(|o| {
        o.guests
            .iter()
            .any(|g| !g.admin && matches!(g.status, Status::Invited | Status::Accepted))
    });
    for owner in owners {
        for path in (facts.root_paths)(&owner.name) {
            out.push(bad(
                "admin",
                Verdict::Problem,
                format!(
                    "owner `{}` can become root {path}, which vmshare's admin check cannot gate: guests without admin = true would be root in all but name",
                    owner.name
                ),
                format!(
                    "{}; or share only with guests who have admin = true",
                    path.fix(&owner.name)
                ),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// bob, accepted unless `bob` says otherwise.
    fn grants(bob: &str) -> Grants {
        let status = if bob.contains("status") {
            ""
        } else {
            "status = \"accepted\"\n"
        };
        crate::grant::parse::parse(&format!(
            "[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\n{status}{bob}\n"
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
            root_paths: &|_| Vec::new(),
            systemd: false,
            signal_backend: false,
        });
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("/etc/pam.d/su does not include"), "{w:?}");
    }

    #[test]
    fn root_paths_fail_and_escapes_warn_for_owners_of_non_admin_guests() {
        let paths = |owner: &str| {
            assert_eq!(owner, "alice");
            vec![
                RootPath::Group("docker".into()),
                RootPath::Sudo {
                    password: false,
                    why: crate::session::root_paths::SudoUngated::PamOff,
                },
            ]
        };
        fn facts<'a>(g: &'a Grants, paths: &'a dyn Fn(&str) -> Vec<RootPath>) -> AdminFacts<'a> {
            AdminFacts {
                stacks: &[],
                grants: Some(g),
                root_paths: paths,
                systemd: true,
                signal_backend: true,
            }
        }
        for bob in ["", "status = \"invited\"", "admin = false"] {
            let g = grants(bob);
            let found: Vec<Finding> = check_admin(&facts(&g, &paths))
                .into_iter()
                .filter(|f| f.verdict != Verdict::Ok)
                .collect();
            let shown: Vec<(Verdict, &str)> = found
                .iter()
                .map(|f| (f.verdict, f.message.as_str()))
                .collect();
            assert_eq!(found.len(), 4, "{bob}: {shown:?}");
            assert_eq!(found[0].verdict, Verdict::Problem);
            assert_eq!(
                found[0].message,
                "owner `alice` can become root as a member of group docker, which vmshare's admin check cannot gate: guests without admin = true would be root in all but name"
            );
            assert!(
                found[0].fix.contains("gpasswd -d alice docker"),
                "{shown:?}"
            );
            assert_eq!(found[1].verdict, Verdict::Problem);
            assert!(
                found[1].message.contains(
                    "root without a password through sudo with !pam_acct_mgmt and !pam_session"
                ),
                "{shown:?}"
            );
            assert_eq!(found[2].verdict, Verdict::Warning);
            assert!(found[2].message.contains("systemd-run --user"), "{shown:?}");
            assert!(found[3].message.contains("signal backend"), "{shown:?}");
        }
        // Only admin guests, or none who may get access: nothing to gain.
        for bob in ["admin = true", "status = \"left\"", "status = \"rejected\""] {
            let g = grants(bob);
            let w: Vec<String> = warnings(&AdminFacts {
                signal_backend: false,
                ..facts(&g, &paths)
            });
            assert!(w.is_empty(), "{bob}: {w:?}");
        }
    }
}
