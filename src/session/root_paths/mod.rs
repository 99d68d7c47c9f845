//! Ways an owner becomes root that the admin check cannot gate. The check
//! (see [`crate::session::admin`]) runs in the PAM stacks of sudo, su and
//! pkexec; a guest runs as the owner, so whatever else makes the owner root
//! without those stacks makes every guest root too, `admin` or not:
//!
//! - sudo that leaves PAM no say: `!pam_acct_mgmt` and `!pam_session`
//!   together for the owner, or a sudo without PAM. Learnt from sudo itself
//!   (`sudo -V`, `sudo -l -U OWNER` as root), never by reading sudoers;
//! - a `permit` rule for the owner (by name or a group) in `/etc/doas.conf`;
//! - groups that are root in all but name ([`ROOT_GROUPS`]);
//! - polkit rules returning `polkit.Result.YES` for the owner (see
//!   `polkit.rs` for the heuristic).
//!
//! [`find`] decides from plain facts; [`HostFacts::gather`] and
//! [`OwnerFacts::gather`] ask the system. Anything that cannot be read or
//! understood is a path too ([`RootPath::Unknown`]): fail closed.

mod doas;
mod gather;
mod polkit;

use std::fmt;

pub use gather::{of_owner, refuse_without_admin};

/// Groups whose members are root in all but name: they can run a
/// container or VM over the host's files (docker, lxd, incus-admin,
/// libvirt), write the disks under the file system (disk), or read every
/// password hash (shadow).
pub const ROOT_GROUPS: [&str; 6] = ["docker", "lxd", "incus-admin", "libvirt", "disk", "shadow"];

/// Where doas (OpenBSD's, and Debian's opendoas) reads its rules.
pub const DOAS_CONF: &str = "/etc/doas.conf";

/// Where polkitd reads JavaScript rules: the admin's, then packages'.
pub const POLKIT_RULE_DIRS: [&str; 2] = ["/etc/polkit-1/rules.d", "/usr/share/polkit-1/rules.d"];

/// One way to root the admin check cannot see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootPath {
    /// sudo lets the owner run commands and PAM has no say in it.
    Sudo { password: bool, why: SudoUngated },
    /// A doas rule permits the owner.
    Doas {
        file: String,
        line: usize,
        password: bool,
    },
    /// The owner is in one of [`ROOT_GROUPS`].
    Group(String),
    /// A polkit rule says yes to the owner without authentication.
    Polkit { file: String, line: usize },
    /// vmshare could not tell: `via` is where it looked (a [`kind`](Self::kind)),
    /// `why` what failed.
    Unknown { via: &'static str, why: String },
}

/// Why PAM has no say in the owner's sudo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SudoUngated {
    /// `!pam_acct_mgmt` and `!pam_session` both apply to the owner.
    PamOff,
    /// This sudo does not authenticate through PAM at all.
    NoPam,
}

impl RootPath {
    /// `sudo`, `doas`, `group`, `polkit` (or `account` for an account
    /// that could not be looked up): where the path goes through.
    pub fn kind(&self) -> &'static str {
        match self {
            RootPath::Sudo { .. } => "sudo",
            RootPath::Doas { .. } => "doas",
            RootPath::Group(_) => "group",
            RootPath::Polkit { .. } => "polkit",
            RootPath::Unknown { via, .. } => via,
        }
    }

    /// How to close it, for `owner`.
    pub fn fix(&self, owner: &str) -> String {
        match self {
            RootPath::Sudo {
                why: SudoUngated::PamOff,
                ..
            } => format!(
                "drop `!pam_acct_mgmt` or `!pam_session` from the sudoers Defaults that apply to {owner} (`sudo -l -U {owner}` lists them)"
            ),
            RootPath::Sudo {
                why: SudoUngated::NoPam,
                ..
            } => format!("use a sudo built with PAM (Debian's), or take {owner}'s sudo rules away"),
            RootPath::Doas { file, line, .. } => {
                format!("remove the rule at {file} line {line}, or limit it to other users")
            }
            RootPath::Group(group) => format!("take {owner} out of it: `gpasswd -d {owner} {group}`"),
            RootPath::Polkit { file, line } => format!(
                "change the rule at {file} line {line} so that it does not answer polkit.Result.YES for {owner}"
            ),
            RootPath::Unknown { via: "sudo", .. } => format!(
                "make `sudo -n -l -U {owner}` work for root, so that vmshare can tell"
            ),
            RootPath::Unknown { .. } => {
                "make what could not be read readable by root (or remove it), so that vmshare can tell"
                    .into()
            }
        }
    }
}

/// How the owner becomes root, to follow "OWNER can become root".
impl fmt::Display for RootPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with = |password: bool| {
            if password {
                "with the account's password"
            } else {
                "without a password"
            }
        };
        match self {
            RootPath::Sudo {
                password,
                why: SudoUngated::PamOff,
            } => write!(
                f,
                "{} through sudo with !pam_acct_mgmt and !pam_session",
                with(*password)
            ),
            RootPath::Sudo {
                password,
                why: SudoUngated::NoPam,
            } => write!(
                f,
                "{} through sudo, which does not use PAM",
                with(*password)
            ),
            RootPath::Doas {
                file,
                line,
                password,
            } => write!(f, "{} through doas ({file} line {line})", with(*password)),
            RootPath::Group(group) => write!(f, "as a member of group {group}"),
            RootPath::Polkit { file, line } => {
                write!(
                    f,
                    "without authentication through polkit ({file} line {line})"
                )
            }
            RootPath::Unknown {
                via: "account",
                why,
            } => {
                write!(f, "perhaps (vmshare cannot tell: {why})")
            }
            RootPath::Unknown { via, why } => {
                write!(f, "perhaps through {via} (vmshare cannot tell: {why})")
            }
        }
    }
}

/// "alice can become root A; B: a guest would be root in all but name".
pub fn summary(owner: &str, paths: &[RootPath]) -> String {
    let hows: Vec<String> = paths.iter().map(ToString::to_string).collect();
    format!(
        "{owner} can become root {}: a guest would be root in all but name",
        hows.join("; ")
    )
}

/// What `invite` and `accept` say when they refuse a guest without admin.
pub fn refusal(owner: &str, paths: &[RootPath]) -> String {
    format!("{}; fix the host or pass --admin", summary(owner, paths))
}

/// The host's side: sudo's build, doas's and polkit's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub sudo: SudoBuild,
    /// [`DOAS_CONF`]: `None` if there is none.
    pub doas: Option<Result<RulesFile, String>>,
    /// Each polkit rules file; `Err` for one that could not be read.
    pub polkit: Vec<Result<RulesFile, String>>,
}

/// A rules file and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesFile {
    pub path: String,
    pub text: String,
}

/// What `sudo -V` (as root) says about how sudo authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SudoBuild {
    /// No sudo installed.
    Absent,
    /// "Authentication methods" lists pam.
    Pam,
    /// It lists others only.
    NoPam,
    /// sudo did not say, or could not be run.
    Unknown(String),
}

/// One owner's side: who they are and what sudo lets them do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerFacts {
    pub name: String,
    pub uid: u32,
    /// The owner's groups, by name and gid.
    pub groups: Vec<(String, u32)>,
    /// `sudo -l -U NAME` as root, in the C locale (ignored without sudo).
    pub sudo_list: Result<String, String>,
}

/// Every way `owner` becomes root that the admin check cannot gate.
pub fn find(host: &HostFacts, owner: &OwnerFacts) -> Vec<RootPath> {
    let mut out = Vec::new();
    out.extend(sudo_path(&host.sudo, &owner.name, &owner.sudo_list));
    match &host.doas {
        None => {}
        Some(Ok(file)) => out.extend(doas::doas_rule(file, owner)),
        Some(Err(why)) => out.push(RootPath::Unknown {
            via: "doas",
            why: why.clone(),
        }),
    }
    for (group, _) in &owner.groups {
        if ROOT_GROUPS.contains(&group.as_str()) && !out.contains(&RootPath::Group(group.clone())) {
            out.push(RootPath::Group(group.clone()));
        }
    }
    for file in &host.polkit {
        match file {
            Ok(file) => out.extend(polkit::polkit_rules(file, owner)),
            Err(why) => out.push(RootPath::Unknown {
                via: "polkit",
                why: why.clone(),
            }),
        }
    }
    out
}

/// The sudo path, from sudo's build and its listing for the owner.
fn sudo_path(build: &SudoBuild, owner: &str, list: &Result<String, String>) -> Option<RootPath> {
    if *build == SudoBuild::Absent {
        return None;
    }
    let unknown = |why: String| RootPath::Unknown { via: "sudo", why };
    let list = match list {
        Ok(text) => text,
        Err(why) => return Some(unknown(why.clone())),
    };
    let rules_at = list.find(&format!("User {owner} may run the following commands"));
    let Some(rules_at) = rules_at else {
        if list.contains(&format!("User {owner} is not allowed to run sudo")) {
            return None;
        }
        return Some(unknown(format!(
            "`sudo -l -U {owner}` printed neither the commands {owner} may run nor that there are none"
        )));
    };
    let (defaults, rules) = list.split_at(rules_at);
    let settings = SudoDefaults::read(defaults);
    let password = !(rules.contains("NOPASSWD:") || settings.off("authenticate"));
    match build {
        SudoBuild::Absent | SudoBuild::Pam => (settings.off("pam_acct_mgmt")
            && settings.off("pam_session"))
        .then_some(RootPath::Sudo {
            password,
            why: SudoUngated::PamOff,
        }),
        SudoBuild::NoPam => Some(RootPath::Sudo {
            password,
            why: SudoUngated::NoPam,
        }),
        SudoBuild::Unknown(why) => Some(unknown(why.clone())),
    }
}

/// The boolean Defaults of a `sudo -l -U` listing.
struct SudoDefaults<'a> {
    /// The "Matching Defaults entries" in order: the last one of a name wins.
    matching: Vec<&'a str>,
    /// The runas- and command-specific entries: they apply to some
    /// commands only, so one that turns a setting off counts.
    specific: Vec<&'a str>,
}

impl<'a> SudoDefaults<'a> {
    fn read(text: &'a str) -> SudoDefaults<'a> {
        let (matching, specific) = match text.find("Runas and Command-specific defaults") {
            Some(at) => text.split_at(at),
            None => (text, ""),
        };
        let words = |part: &'a str| -> Vec<&'a str> {
            part.lines()
                .skip(1)
                .flat_map(|l| l.split([',', ' ', '\t']))
                .filter(|w| !w.is_empty())
                .collect()
        };
        SudoDefaults {
            matching: words(matching),
            specific: words(specific),
        }
    }

    /// Whether boolean `name` is off for the owner (for some command, at
    /// least).
    fn off(&self, name: &str) -> bool {
        // `!!name` is `name`: what counts is the number of `!`.
        let negated = |word: &str| -> Option<bool> {
            let bare = word.trim_start_matches('!');
            (bare == name).then_some((word.len() - bare.len()) % 2 == 1)
        };
        let last = self.matching.iter().rev().find_map(|w| negated(w));
        last == Some(true) || self.specific.iter().any(|w| negated(w) == Some(true))
    }
}

/// What `sudo -V` printed, as a [`SudoBuild`].
pub fn sudo_build(version: &str) -> SudoBuild {
    let Some(line) = version
        .lines()
        .find_map(|l| l.strip_prefix("Authentication methods:"))
    else {
        return SudoBuild::Unknown("`sudo -V` does not list its authentication methods".into());
    };
    if line
        .split([' ', ','])
        .any(|m| m.trim_matches('\'') == "pam")
    {
        SudoBuild::Pam
    } else {
        SudoBuild::NoPam
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const SUDO_LIST_OFF: &str = "Matching Defaults entries for alice on vm:
    env_reset, mail_badpass,
    secure_path=/usr/local/sbin\\:/usr/local/bin\\:/usr/sbin\\:/usr/bin\\:/sbin\\:/bin,
    use_pty, !pam_acct_mgmt, !pam_session

User alice may run the following commands on vm:
    (ALL : ALL) NOPASSWD: ALL
";

    pub const NO_SUDO: &str = "User alice is not allowed to run sudo on vm.\n";

    pub fn owner(sudo_list: &str, groups: &[&str]) -> OwnerFacts {
        OwnerFacts {
            name: "alice".into(),
            uid: 1000,
            groups: std::iter::once(("alice".to_string(), 1000))
                .chain(
                    groups
                        .iter()
                        .zip(2000..)
                        .map(|(g, gid)| (g.to_string(), gid)),
                )
                .collect(),
            sudo_list: Ok(sudo_list.into()),
        }
    }

    pub fn host() -> HostFacts {
        HostFacts {
            sudo: SudoBuild::Pam,
            doas: None,
            polkit: Vec::new(),
        }
    }

    fn sudo_with(defaults: &str, rules: &str) -> String {
        format!(
            "Matching Defaults entries for alice on vm:\n    env_reset, {defaults}\n\nUser alice may run the following commands on vm:\n    {rules}\n"
        )
    }

    #[test]
    fn sudo_counts_only_with_both_pam_phases_off() {
        let paths = find(&host(), &owner(SUDO_LIST_OFF, &[]));
        assert_eq!(
            paths,
            [RootPath::Sudo {
                password: false,
                why: SudoUngated::PamOff
            }]
        );
        assert_eq!(
            refusal("alice", &paths),
            "alice can become root without a password through sudo with !pam_acct_mgmt and !pam_session: a guest would be root in all but name; fix the host or pass --admin"
        );
        for (defaults, counts) in [
            ("!pam_acct_mgmt", false),
            ("!pam_session", false),
            ("!pam_session, !pam_acct_mgmt", true),
            // The last setting of a name wins.
            ("!pam_session, !pam_acct_mgmt, pam_session", false),
            ("pam_session, !pam_acct_mgmt, !pam_session", true),
            ("!!pam_session, !pam_acct_mgmt", false),
            ("!pam_sessions, !pam_acct_mgmt", false),
        ] {
            let list = sudo_with(defaults, "(ALL : ALL) ALL");
            let paths = find(&host(), &owner(&list, &[]));
            assert_eq!(!paths.is_empty(), counts, "{defaults}: {paths:?}");
        }
    }

    #[test]
    fn command_specific_defaults_count_and_passwords_are_told() {
        let list = "Matching Defaults entries for alice on vm:
    env_reset, !pam_acct_mgmt

Runas and Command-specific defaults for alice:
    Defaults>root !pam_session    Defaults!/usr/bin/id lecture=never

User alice may run the following commands on vm:
    (ALL : ALL) ALL
";
        assert_eq!(
            find(&host(), &owner(list, &[])),
            [RootPath::Sudo {
                password: true,
                why: SudoUngated::PamOff
            }]
        );
        let list = sudo_with("!pam_acct_mgmt, !pam_session, !authenticate", "(ALL) ALL");
        let paths = find(&host(), &owner(&list, &[]));
        assert!(
            paths[0].to_string().starts_with("without a password"),
            "{paths:?}"
        );
    }

    #[test]
    fn sudo_without_pam_counts_for_anyone_it_lets_in() {
        let host = HostFacts {
            sudo: sudo_build("Sudo version 1.9\nAuthentication methods: 'passwd'\n"),
            ..host()
        };
        let list = sudo_with("mail_badpass", "(root) /usr/bin/apt");
        assert_eq!(
            find(&host, &owner(&list, &[])),
            [RootPath::Sudo {
                password: true,
                why: SudoUngated::NoPam
            }]
        );
        let none = "User alice is not allowed to run sudo on vm.\n";
        assert!(find(&host, &owner(none, &[])).is_empty());
        assert_eq!(
            sudo_build("Authentication methods: 'pam' 'sssd'"),
            SudoBuild::Pam
        );
    }

    #[test]
    fn sudo_that_cannot_be_understood_is_a_path() {
        let mut facts = owner("", &[]);
        facts.sudo_list = Err("`sudo -n -l -U alice` failed".into());
        let paths = find(&host(), &facts);
        assert!(
            matches!(&paths[..], [RootPath::Unknown { via: "sudo", .. }]),
            "{paths:?}"
        );
        let paths = find(&host(), &owner("sudo: something new\n", &[]));
        assert!(
            matches!(&paths[..], [RootPath::Unknown { via: "sudo", .. }]),
            "{paths:?}"
        );
        // Unknown build, but no rules for the owner: nothing to gain.
        let host = HostFacts {
            sudo: sudo_build("sudo-rs 0.2.5\n"),
            ..host()
        };
        let none = "User alice is not allowed to run sudo on vm.\n";
        assert!(find(&host, &owner(none, &[])).is_empty());
        let list = sudo_with("env_reset", "(ALL) ALL");
        assert!(matches!(
            &find(&host, &owner(&list, &[]))[..],
            [RootPath::Unknown { via: "sudo", .. }]
        ));
        // No sudo at all: no listing is asked for.
        let absent = HostFacts {
            sudo: SudoBuild::Absent,
            ..HostFacts::clone(&host)
        };
        assert!(find(&absent, &owner("", &[])).is_empty());
    }

    #[test]
    fn root_groups_count_each_once() {
        let paths = find(
            &host(),
            &owner(NO_SUDO, &["docker", "sudo", "shadow", "docker"]),
        );
        assert_eq!(
            paths,
            [
                RootPath::Group("docker".into()),
                RootPath::Group("shadow".into())
            ]
        );
        assert_eq!(
            summary("alice", &paths),
            "alice can become root as a member of group docker; as a member of group shadow: a guest would be root in all but name"
        );
    }

    #[test]
    fn unreadable_rules_are_paths() {
        let host = HostFacts {
            doas: Some(Err("cannot read /etc/doas.conf: denied".into())),
            polkit: vec![Err("cannot read /etc/polkit-1/rules.d: denied".into())],
            ..host()
        };
        let kinds: Vec<&str> = find(&host, &owner(NO_SUDO, &[]))
            .iter()
            .map(RootPath::kind)
            .collect();
        assert_eq!(kinds, ["doas", "polkit"]);
    }
}
