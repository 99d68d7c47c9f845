//! Who left something behind in an owner's account: a unit in the owner's
//! user manager, a unit file, lingering, a crontab or at job. Guests run as
//! the owner, so nothing the kernel keeps says which of them (or the owner)
//! made it. What can be told apart, in order of strength:
//!
//! 1. The kernel's audit session id (`/proc/PID/sessionid`) of a unit's
//!    processes. pam_loginuid sets it at login, children inherit it, and no
//!    one without CAP_AUDIT_CONTROL can change it; logind names its
//!    sessions by it. A `systemd-run --user --scope` process keeps the id of
//!    the login it was started from, so a scope is proven to be that
//!    session's. (A unit the user manager forks carries the manager's id,
//!    not the caller's: no proof either way.)
//! 2. Who was logged in to the account when it appeared. A change seen
//!    while only one guest's sessions were present, no session of the
//!    owner's and no session the watcher could not identify, is that
//!    guest's: the owner had no session to make it from.
//! 3. Anything else is unclear: it is reported, naming the guests that were
//!    present, and never ended.
//!
//! Only transient units (made by `systemd-run`, the kind that appears from
//! nowhere) and units whose file a guest wrote are judged: a unit of the
//! owner's own that its timer starts while a guest is logged in is neither.
//! The functions here are pure; the daemon's watcher gathers the facts.

use std::collections::BTreeSet;

/// Who was logged in to an owner's account over some interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// Guests with a recorded session.
    pub guests: BTreeSet<String>,
    /// A session that is not a guest's: the owner's own, or one that came
    /// and went before the watcher could tell whose it was.
    pub others: bool,
}

impl Presence {
    /// Presence over an interval: whoever was present at either end, or in
    /// between.
    pub fn union(&self, other: &Presence) -> Presence {
        Presence {
            guests: self.guests.union(&other.guests).cloned().collect(),
            others: self.others || other.others,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.guests.is_empty() && !self.others
    }
}

/// What the processes of a unit prove, through their audit session ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// A process of the unit was started from this guest's login.
    Guest(String),
    /// A process of the unit was started from a login that is not a
    /// guest's (the owner's, or another account's).
    NotGuest,
    /// Nothing: no process carries a login's id (services the user manager
    /// forks), or the ids disagree.
    None,
}

/// The verdict on one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Made by this guest: ended with its access.
    Guest(String),
    /// Made while guests were present, but not provably by one of them:
    /// reported, naming them, and left alone.
    Unclear(Vec<String>),
    /// The owner's (no guest was present, or a login of another's made it).
    Owner,
}

/// Judges a change that appeared while `window` was present.
pub fn attribute(window: &Presence, proof: &Proof) -> Verdict {
    match proof {
        Proof::Guest(guest) => return Verdict::Guest(guest.clone()),
        Proof::NotGuest => return Verdict::Owner,
        Proof::None => {}
    }
    if window.guests.is_empty() {
        return Verdict::Owner;
    }
    if window.guests.len() == 1 && !window.others {
        if let Some(guest) = window.guests.iter().next() {
            return Verdict::Guest(guest.clone());
        }
    }
    Verdict::Unclear(window.guests.iter().cloned().collect())
}

/// The proof the audit session ids of a unit's processes give. `guest_of`
/// names the guest whose recorded login has that id. Ids of no login
/// (`4294967295`) and the user manager's own (`manager`: its PAM stack may
/// run pam_loginuid, and every service it forks inherits that id) prove
/// nothing; a login that is no guest's proves the unit is not a guest's;
/// two guests' ids in one unit prove nothing about which of them made it.
pub fn proof_from_sessions(
    ids: &[u32],
    manager: Option<u32>,
    guest_of: &dyn Fn(u32) -> Option<String>,
) -> Proof {
    let mut guests = BTreeSet::new();
    for &id in ids {
        if id == NO_SESSION || Some(id) == manager {
            continue;
        }
        match guest_of(id) {
            Some(guest) => {
                guests.insert(guest);
            }
            None => return Proof::NotGuest,
        }
    }
    match guests.len() {
        1 => guests.into_iter().next().map_or(Proof::None, Proof::Guest),
        _ => Proof::None,
    }
}

/// The audit session id of a process outside any login.
pub const NO_SESSION: u32 = u32::MAX;

/// Which units under the owner's user manager are judged at all: transient
/// ones (`systemd-run`; every scope is transient), and ones named in a unit
/// file a guest wrote. Unit cgroups are named `NAME.service` or
/// `NAME.scope`; `init.scope` is the manager itself.
pub fn is_judged(unit: &str, transient: bool, guest_unit_file: bool) -> bool {
    if unit == "init.scope" {
        return false;
    }
    unit.ends_with(".scope") || (unit.ends_with(".service") && (transient || guest_unit_file))
}

/// The unit a file in `~/.config/systemd/user` configures: the unit file
/// itself, a drop-in directory `NAME.d`, or a link in `TARGET.wants/` or
/// `TARGET.requires/` (which names the unit it enables).
pub fn unit_of_file(relative: &str) -> Option<&str> {
    let mut parts = relative.split('/');
    let first = parts.next()?;
    let second = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let name = match second {
        None => first,
        Some(inner) if first.ends_with(".wants") || first.ends_with(".requires") => inner,
        Some(_) => first.strip_suffix(".d")?,
    };
    valid_unit_name(name).then_some(name)
}

/// A unit name as systemd accepts it: `NAME.TYPE`, of systemd's unit name
/// characters, at most 255 bytes.
pub fn valid_unit_name(name: &str) -> bool {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "target",
        "device",
        "mount",
        "automount",
        "swap",
        "timer",
        "path",
        "slice",
        "scope",
    ];
    let Some((stem, kind)) = name.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty()
        && name.len() <= 255
        && TYPES.contains(&kind)
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

/// Logind session ids that appeared for the account and were never seen
/// live: their sessions came and went between two looks, so no one can say
/// whose they were.
pub fn unseen(created: &[String], seen: &BTreeSet<String>) -> bool {
    created.iter().any(|id| !seen.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(guests: &[&str], others: bool) -> Presence {
        Presence {
            guests: guests.iter().map(|g| g.to_string()).collect(),
            others,
        }
    }

    #[test]
    fn one_guest_alone_made_it() {
        assert_eq!(
            attribute(&present(&["bob"], false), &Proof::None),
            Verdict::Guest("bob".into())
        );
    }

    #[test]
    fn no_guest_present_means_the_owner() {
        assert_eq!(attribute(&present(&[], true), &Proof::None), Verdict::Owner);
        assert_eq!(
            attribute(&present(&[], false), &Proof::None),
            Verdict::Owner
        );
    }

    #[test]
    fn the_owner_or_a_second_guest_present_makes_it_unclear() {
        assert_eq!(
            attribute(&present(&["bob"], true), &Proof::None),
            Verdict::Unclear(vec!["bob".into()])
        );
        assert_eq!(
            attribute(&present(&["carol", "bob"], false), &Proof::None),
            Verdict::Unclear(vec!["bob".into(), "carol".into()])
        );
    }

    #[test]
    fn a_login_id_decides_whoever_was_present() {
        assert_eq!(
            attribute(
                &present(&["bob", "carol"], true),
                &Proof::Guest("carol".into())
            ),
            Verdict::Guest("carol".into())
        );
        // The owner's own scope, started while bob was alone... cannot be:
        // but a login that is no guest's is never a guest's unit.
        assert_eq!(
            attribute(&present(&["bob"], false), &Proof::NotGuest),
            Verdict::Owner
        );
    }

    #[test]
    fn presence_over_an_interval_is_both_ends() {
        let before = present(&["bob"], false);
        let after = present(&["carol"], false);
        let window = before.union(&after);
        assert_eq!(window, present(&["bob", "carol"], false));
        assert!(!window.is_empty());
        assert!(Presence::default().is_empty());
        assert!(!present(&[], true).is_empty());
    }

    #[test]
    fn audit_session_ids_prove_a_unit_only_when_they_agree() {
        let guest_of = |id: u32| match id {
            7 => Some("bob".to_string()),
            9 => Some("carol".to_string()),
            _ => None,
        };
        let proof = |ids: &[u32]| proof_from_sessions(ids, Some(2), &guest_of);
        assert_eq!(proof(&[7, NO_SESSION, 7]), Proof::Guest("bob".into()));
        assert_eq!(proof(&[NO_SESSION]), Proof::None);
        assert_eq!(proof(&[]), Proof::None);
        assert_eq!(proof(&[7, 9]), Proof::None);
        // Any process from a login that is no guest's: never a guest's.
        assert_eq!(proof(&[7, 3]), Proof::NotGuest);
        // The user manager's own id (a service it forked) proves nothing.
        assert_eq!(proof(&[2]), Proof::None);
        assert_eq!(proof(&[2, 7]), Proof::Guest("bob".into()));
        assert_eq!(proof_from_sessions(&[2], None, &guest_of), Proof::NotGuest);
    }

    #[test]
    fn only_transient_and_guest_written_units_are_judged() {
        assert!(is_judged("run-u12.service", true, false));
        assert!(is_judged("run-r3.scope", true, false));
        assert!(is_judged("guest.scope", false, false));
        assert!(is_judged("evil.service", false, true));
        // The owner's own unit, started by its timer: not judged.
        assert!(!is_judged("backup.service", false, false));
        assert!(!is_judged("init.scope", true, true));
        assert!(!is_judged("app.slice", true, true));
    }

    #[test]
    fn files_name_the_unit_they_configure() {
        assert_eq!(unit_of_file("evil.service"), Some("evil.service"));
        assert_eq!(
            unit_of_file("default.target.wants/evil.service"),
            Some("evil.service")
        );
        assert_eq!(
            unit_of_file("timers.target.wants/poll.timer"),
            Some("poll.timer")
        );
        assert_eq!(
            unit_of_file("backup.service.d/override.conf"),
            Some("backup.service")
        );
        assert_eq!(unit_of_file("x@.service"), Some("x@.service"));
        for bad in [
            "README",
            "a/b/c.service",
            "default.target.wants/../../x.service",
            "notes.d/x",
            ".service",
            "evil.exe",
        ] {
            assert_eq!(unit_of_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn sessions_never_seen_live_are_unknown() {
        let seen: BTreeSet<String> = ["4".to_string()].into();
        assert!(!unseen(&["4".into()], &seen));
        assert!(unseen(&["4".into(), "5".into()], &seen));
        assert!(!unseen(&[], &seen));
    }
}
