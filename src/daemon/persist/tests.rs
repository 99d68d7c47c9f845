//! The watcher's judgement on scratch trees standing in for the cgroup
//! mount, the linger flags, the spools and a home.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use super::account::Account;
use super::facts::Roots;
use super::look::{look_at, EMPTY_SCOPE_LOOKS, SETTLE_LOOKS};
use super::revoke::end_revoked;
use crate::session::backend::Placement;
use crate::store::escapes::Report;
use crate::store::records::tests::sample;
use crate::store::records::SessionRecord;
use crate::store::watched;

struct Tree {
    _dir: tempfile::TempDir,
    roots: Roots,
    home: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let roots = Roots {
            cgroups: base.join("cg"),
            linger: base.join("linger"),
            crontabs: base.join("crontabs"),
            atjobs: base.join("atjobs"),
            run_user: base.join("run-user"),
            sessions: base.join("sessions"),
        };
        for d in [
            roots.manager_group(1000).join("app.slice"),
            roots.linger.clone(),
            roots.crontabs.clone(),
            roots.atjobs.clone(),
            roots.run_user.join("1000/systemd/transient"),
            roots.sessions.clone(),
            base.join("home/.config/systemd/user"),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        Tree {
            home: base.join("home"),
            _dir: dir,
            roots,
        }
    }

    /// A unit the user manager runs: its group, and for a transient
    /// one its file in the runtime directory.
    fn unit(&self, name: &str, transient: bool) {
        let group = self.roots.manager_group(1000).join("app.slice").join(name);
        fs::create_dir_all(&group).unwrap();
        fs::write(group.join("cgroup.procs"), "").unwrap();
        fs::write(group.join("cgroup.events"), "populated 0\n").unwrap();
        if transient {
            let file = self
                .roots
                .run_user
                .join("1000/systemd/transient")
                .join(name);
            fs::write(file, "").unwrap();
        }
    }

    fn session(&self, id: &str, live: bool) {
        let scope = self
            .roots
            .user_slice(1000)
            .join(format!("session-{id}.scope"));
        if live {
            fs::create_dir_all(scope).unwrap();
        } else {
            let _ = fs::remove_dir(scope);
        }
    }

    fn account(&self) -> Account {
        Account {
            name: "alice".into(),
            uid: 1000,
            home: self.home.clone(),
            ..Account::default()
        }
    }

    fn look(&self, a: &mut Account, records: &[SessionRecord], created: &[&str]) -> Vec<Report> {
        let created: Vec<String> = created
            .iter()
            .map(|id| format!("session-{id}.scope"))
            .collect();
        let mut found = Vec::new();
        look_at(a, &self.roots, records, &created, 5, &mut found);
        found
    }
}

fn guest_session(guest: &str, logind: &str) -> SessionRecord {
    let mut r = sample(&format!("{guest}-{logind}"));
    r.guest = guest.into();
    r.placement = Placement::Logind {
        session: logind.into(),
    };
    r
}

fn summary(found: &[Report]) -> Vec<String> {
    found
        .iter()
        .map(|r| format!("{} {} {} {}", r.kind, r.what, r.guests.join(","), r.action))
        .collect()
}

#[test]
fn one_guest_alone_owns_what_appears_and_the_owners_jobs_stay_the_owners() {
    let t = Tree::new();
    let mut a = t.account();
    // The owner's own job, started before any guest came.
    t.unit("owner-job.service", true);
    // The lingering user manager's own session (systemd 256 and later)
    // is no one's login.
    t.session("2", true);
    fs::write(t.roots.sessions.join("2"), "UID=1000\nCLASS=manager\n").unwrap();
    assert!(t.look(&mut a, &[], &[]).is_empty());
    let bob = [guest_session("bob", "7")];
    t.session("7", true);
    assert!(t.look(&mut a, &bob, &["7"]).is_empty());

    t.unit("guest-run.service", true);
    t.unit("guest-scope.scope", false);
    // The owner's timer starting its own unit file's service: not judged.
    t.unit("backup.service", false);
    let user = t.home.join(".config/systemd/user");
    fs::write(user.join("evil.service"), "[Service]\n").unwrap();
    fs::create_dir_all(user.join("default.target.wants")).unwrap();
    std::os::unix::fs::symlink(
        "../evil.service",
        user.join("default.target.wants/evil.service"),
    )
    .unwrap();
    fs::write(t.roots.linger.join("alice"), "").unwrap();
    fs::write(t.roots.crontabs.join("alice"), "17 3 * * * true\n").unwrap();
    // The scope, empty here, is judged once it has been empty a while.
    let mut found = Vec::new();
    for _ in 0..EMPTY_SCOPE_LOOKS {
        found.extend(summary(&t.look(&mut a, &bob, &[])));
    }
    for want in [
        "unit guest-run.service bob stopped when",
        "unit guest-scope.scope bob stopped when",
        "unit-file ~/.config/systemd/user/evil.service bob its unit is stopped",
        "unit-file ~/.config/systemd/user/default.target.wants/evil.service bob reported",
        "linger alice bob turned off when",
        "crontab ",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(want)),
            "{want}: {found:?}"
        );
    }
    assert!(
        !found
            .iter()
            .any(|f| f.contains("backup") || f.contains("owner-job")),
        "{found:?}"
    );
    assert_eq!(found.len(), 6, "{found:?}");
    assert_eq!(
        a.guest_units.keys().map(String::as_str).collect::<Vec<_>>(),
        ["evil.service", "guest-run.service", "guest-scope.scope"]
    );
    assert_eq!(a.guest_linger.as_deref(), Some("bob"));
    // The guest's own unit, started later (by its timer, say), is
    // still the guest's.
    t.session("7", false);
    t.unit("evil.service", false);
    let found = summary(&t.look(&mut a, &[], &[]));
    assert!(found[0].starts_with("unit evil.service bob"), "{found:?}");
    // Nothing new: nothing reported twice.
    assert!(t.look(&mut a, &[], &[]).is_empty());
}

/// logind makes bob's session scope before the session hook records
/// it as bob's, and bob starts a unit at once: judged when the record
/// is there, it is bob's, not "someone else was logged in".
#[test]
fn a_unit_started_before_the_guests_record_is_the_guests() {
    let t = Tree::new();
    let mut a = t.account();
    t.look(&mut a, &[], &[]);
    t.session("7", true);
    t.unit("run-early.service", true);
    assert!(t.look(&mut a, &[], &["7"]).is_empty());
    assert!(t.look(&mut a, &[], &[]).is_empty());
    let bob = [guest_session("bob", "7")];
    let found = summary(&t.look(&mut a, &bob, &[]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("unit run-early.service bob stopped when"),
        "{found:?}"
    );
}

#[test]
fn with_the_owner_or_an_unseen_session_present_it_is_reported_not_pinned() {
    let t = Tree::new();
    let mut a = t.account();
    t.look(&mut a, &[], &[]);
    let bob = [guest_session("bob", "7")];
    t.session("7", true);
    t.session("8", true);
    t.look(&mut a, &bob, &["7", "8"]);
    t.unit("run-u1.service", true);
    // Session 8 has no guest record: judged once it has had time to
    // get one, as someone else's.
    for _ in 2..SETTLE_LOOKS {
        assert!(t.look(&mut a, &bob, &[]).is_empty());
    }
    let found = summary(&t.look(&mut a, &bob, &[]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("unit run-u1.service bob reported, not stopped"),
        "{found:?}"
    );
    assert!(a.guest_units.is_empty());

    // A scope still empty (its process not moved in yet) waits for it.
    t.unit("run-r9.scope", false);
    assert!(t.look(&mut a, &bob, &[]).is_empty());
    assert_eq!(a.empty_scopes.get("run-r9.scope"), Some(&1));
    // Empty for good: judged on who was there.
    let mut found = Vec::new();
    for _ in 1..EMPTY_SCOPE_LOOKS {
        found.extend(summary(&t.look(&mut a, &bob, &[])));
    }
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("unit run-r9.scope bob reported"),
        "{found:?}"
    );
    assert!(a.empty_scopes.is_empty());

    // The owner left; a session came and went between two looks.
    t.session("8", false);
    t.look(&mut a, &bob, &[]);
    t.look(&mut a, &bob, &[]);
    t.unit("run-u2.service", true);
    let found = summary(&t.look(&mut a, &bob, &["9"]));
    assert!(
        found[0].starts_with("unit run-u2.service bob reported"),
        "{found:?}"
    );
    // No one present: the owner's.
    t.session("7", false);
    t.look(&mut a, &[], &[]);
    t.look(&mut a, &[], &[]);
    t.unit("run-u3.service", true);
    fs::write(t.roots.crontabs.join("alice"), "x\n").unwrap();
    assert!(t.look(&mut a, &[], &[]).is_empty());
    assert!(a.guest_units.is_empty());
}

/// Ends what guests left with no valid grant file (no guest has
/// access): the reports, and the uids whose lingering was turned off.
fn no_one_has_access(t: &Tree, a: &mut Account) -> (Vec<String>, Vec<u32>) {
    let asked = std::cell::RefCell::new(Vec::new());
    let disable = |uid: u32| {
        asked.borrow_mut().push(uid);
        Ok(())
    };
    let mut found = Vec::new();
    end_revoked(a, &t.roots, None, 9, &disable, &mut found);
    (summary(&found), asked.into_inner())
}

/// bob, alone in alice's account, starts a service and turns lingering
/// on: both pinned on him.
fn bob_left_a_unit_and_lingering(t: &Tree) -> (Account, [SessionRecord; 1]) {
    let mut a = t.account();
    t.look(&mut a, &[], &[]);
    t.session("7", true);
    let bob = [guest_session("bob", "7")];
    t.look(&mut a, &bob, &["7"]);
    t.unit("run-u1.service", true);
    fs::write(t.roots.linger.join("alice"), "").unwrap();
    assert_eq!(t.look(&mut a, &bob, &[]).len(), 2);
    (a, bob)
}

/// The daemon stops while bob is logged in, after it pinned a unit and
/// lingering on him; a unit appears while it is down. The restarted
/// daemon reads what it saved: the new unit is reported (anyone
/// granted might have been there), bob's unit and lingering are still
/// his and end with his access.
#[test]
fn a_restart_forgets_nothing_and_takes_nothing_as_the_owners() {
    let t = Tree::new();
    let (a, bob) = bob_left_a_unit_and_lingering(&t);

    let state = crate::sys::fsutil::tests::scratch();
    let saved = BTreeMap::from([("alice".to_string(), a.saved())]);
    watched::write(state.path(), &saved).unwrap();
    drop(a);
    t.unit("run-u2.service", true);
    let back = watched::read(state.path())
        .unwrap()
        .remove("alice")
        .unwrap();
    let mut a = Account::resume("alice", t.home.clone(), back);
    a.wake(BTreeSet::from(["bob".to_string(), "carol".to_string()]));
    let found = summary(&t.look(&mut a, &bob, &[]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("unit run-u2.service bob,carol reported, not stopped"),
        "{found:?}"
    );
    assert_eq!(
        a.guest_units.keys().map(String::as_str).collect::<Vec<_>>(),
        ["run-u1.service"]
    );
    assert_eq!(no_one_has_access(&t, &mut a).1, [1000]);
    // Woken once: later looks judge by who is there again.
    t.look(&mut a, &bob, &[]);
    t.unit("run-u3.service", true);
    let found = summary(&t.look(&mut a, &bob, &[]));
    assert!(
        found[0].starts_with("unit run-u3.service bob stopped when"),
        "{found:?}"
    );
}

#[test]
fn a_revoked_guests_lingering_is_turned_off_and_units_gone_are_forgotten() {
    let t = Tree::new();
    let (mut a, _) = bob_left_a_unit_and_lingering(&t);
    let (found, asked) = no_one_has_access(&t, &mut a);
    assert_eq!(asked, [1000]);
    assert_eq!(
        found,
        ["linger alice bob turned off: the guest's access ended"]
    );
    assert!(a.guest_linger.is_none());
    // The unit's group is empty: nothing to stop. Once gone (no group,
    // no transient file) it is forgotten.
    assert!(a.guest_units.contains_key("run-u1.service"));
    let group = t.roots.manager_group(1000).join("app.slice/run-u1.service");
    fs::remove_dir_all(group).unwrap();
    fs::remove_file(
        t.roots
            .run_user
            .join("1000/systemd/transient/run-u1.service"),
    )
    .unwrap();
    assert_eq!(no_one_has_access(&t, &mut a), (vec![], vec![]));
    assert!(a.guest_units.is_empty());
}
