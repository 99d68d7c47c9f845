//! The `admin` check: run by `pam_exec.so` in the `sudo`, `su` and
//! `polkit-1` (pkexec) PAM stacks, it refuses a caller that runs inside a
//! guest session unless that guest has `admin = true`. Guests run as the
//! owner, so without it every guest of a sudo-capable owner is root.
//!
//! The caller is the process that runs the PAM stack (our parent). Its
//! session is found from where the session was placed (its cgroup or
//! logind scope) and from descent from the session's sshd process, never
//! from anything the caller can set. Anyone not found in a guest session
//! (the owner, other users, root) passes without the grant file being
//! read, so the owner's own sudo works whatever state vmshare is in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::grant::model::Grants;
use crate::session::backend::cgroup;
use crate::session::membership::session_in;
use crate::store::config::Config;
use crate::store::records::{self, SessionRecord};
use crate::sys::accounts::SystemAccounts;
use crate::sys::log::audit;
use crate::sys::log::syslog::Level;
use crate::sys::{procfs, stderr_of};

/// The hook's first argument for this check.
pub const MODE: &str = "admin_check";

const IDENT: &str = "vmshare-pam";

/// Whose session a caller runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No guest session: the owner, another user, a service.
    NotAGuest,
    /// This recorded guest session.
    Guest(SessionRecord),
    /// A session group of vmshare's own that no record names (the record
    /// was lost): a guest's, but whose is unknown.
    Unrecorded(PathBuf),
}

/// Finds the session of a process in cgroup `group` that descends from
/// `ancestors`. `session_root` is the directory vmshare makes session groups
/// in: every group below it holds a guest session, recorded or not.
pub fn caller(
    records: &[SessionRecord],
    group: Option<&Path>,
    ancestors: &[procfs::Stat],
    session_root: Option<&Path>,
) -> Caller {
    if let Some(record) = session_in(records, group, ancestors) {
        return Caller::Guest(record.clone());
    }
    match (group, session_root) {
        (Some(g), Some(root)) if g != root && g.starts_with(root) => {
            Caller::Unrecorded(g.to_path_buf())
        }
        _ => Caller::NotAGuest,
    }
}

/// Whether the caller may go on to become root: `Err` holds the message
/// the caller sees. `grants` is the grant file now (`Err`: why it grants
/// nothing); it is read only for a guest.
pub fn decide(
    caller: &Caller,
    grants: impl FnOnce() -> Result<Grants, String>,
) -> Result<(), String> {
    let record = match caller {
        Caller::NotAGuest => return Ok(()),
        Caller::Unrecorded(group) => {
            return Err(format!(
                "vmshare: this process runs in a guest session ({}) that has no record, and may not become root",
                group.display()
            ))
        }
        Caller::Guest(record) => record,
    };
    let (owner, guest) = (&record.owner, &record.guest);
    let why = match grants() {
        Err(e) => format!("the grant file grants nothing: {e}"),
        Ok(grants) => match grants
            .owner(owner)
            .and_then(|o| o.guest(guest).map(|g| (o, g)))
        {
            Some((o, g)) if g.has_access(o.sharing) && g.admin => return Ok(()),
            Some((o, g)) if g.has_access(o.sharing) => "admin = false".to_string(),
            _ => "no current grant".to_string(),
        },
    };
    Err(format!(
        "vmshare: {guest} is a guest in {owner}'s account and may not become root ({why})"
    ))
}

/// The argument that shows a refusal on the caller's own stderr, for PAM
/// stacks whose program cannot show PAM messages: pkexec aborts on any
/// (and skips the account check when polkit says yes without a password,
/// so only its session lines see a guest).
pub const CALLER_STDERR: &str = "--caller-stderr";

/// Runs the check for the process that runs the PAM stack; the exit code is
/// PAM's answer. The message goes to stdout (pam_exec's `stdout` option
/// shows it to the caller), with `--caller-stderr` to that process's stderr
/// instead, and to the audit trail.
pub fn run(args: &[std::ffi::OsString]) -> ExitCode {
    let mut config_path = None;
    let mut caller_stderr = false;
    let mut rest = args.iter().skip(2);
    while let Some(arg) = rest.next() {
        if arg.to_str() == Some(CALLER_STDERR) {
            caller_stderr = true;
            continue;
        }
        match (arg.to_str(), rest.next()) {
            (Some("--config"), Some(path)) => config_path = Some(PathBuf::from(path)),
            // A PAM line this program does not understand must not lock
            // anyone out; guests are still judged with the defaults.
            _ => log(
                Level::Error,
                &format!("admin_check: ignoring argument {arg:?}"),
            ),
        }
    }
    // Without a readable configuration the defaults still name where
    // sessions are recorded and placed.
    let config = Config::load(config_path.as_deref()).unwrap_or_default();
    let pid = nix::unistd::getppid().as_raw();
    let (records, _) = records::list(&config.sessions_dir());
    let who = caller(
        &records,
        cgroup::group_of(pid).as_deref(),
        &procfs::ancestors(pid),
        cgroup::session_root(&config).as_deref(),
    );
    let loaded = || {
        let loaded = crate::store::source::load(&config.grants, &SystemAccounts);
        loaded
            .grants()
            .cloned()
            .ok_or_else(|| loaded.outcome.state().to_string())
    };
    match decide(&who, loaded) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            if caller_stderr {
                if let Err(e) = stderr_of::write(pid, &format!("{message}\n")) {
                    log(
                        Level::Warning,
                        &format!("admin_check: cannot tell process {pid} why: {e}"),
                    );
                }
            } else {
                println!("{message}");
            }
            let (owner, guest, fingerprint, session) = match &who {
                Caller::Guest(r) => (&*r.owner, &*r.guest, &*r.fingerprint, &*r.id),
                _ => ("", "", "", ""),
            };
            // To the log only: pam_exec shows the caller this program's
            // stderr too, and the message above says it all.
            audit::record(
                IDENT,
                Level::Notice,
                &audit::Event {
                    kind: Some(audit::Kind::Refusal),
                    owner,
                    guest,
                    fingerprint,
                    remote: "",
                    session,
                    message: &message,
                },
            );
            ExitCode::FAILURE
        }
    }
}

fn log(level: Level, message: &str) {
    crate::sys::log::syslog::log(IDENT, level, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::parse::parse;
    use crate::session::backend::Placement;
    use crate::store::records::tests::sample;

    fn guest_record(group: &str) -> SessionRecord {
        let mut r = sample("s1-2");
        r.monitor_pid = i32::MAX;
        r.placement = Placement::Cgroup {
            group: PathBuf::from(group),
        };
        r
    }

    fn grants(bob: &str) -> impl FnOnce() -> Result<Grants, String> {
        let text = format!("[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\n{bob}\n");
        move || parse(&text).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn the_caller_is_found_by_its_group() {
        let records = [guest_record("/cg/vmshare/s1-2")];
        let root = Some(Path::new("/cg/vmshare"));
        let at = |g: &str| caller(&records, Some(Path::new(g)), &[], root);
        assert_eq!(at("/cg/vmshare/s1-2"), Caller::Guest(records[0].clone()));
        assert_eq!(
            at("/cg/vmshare/s1-2/sub"),
            Caller::Guest(records[0].clone())
        );
        assert_eq!(
            at("/cg/vmshare/s9-9"),
            Caller::Unrecorded(PathBuf::from("/cg/vmshare/s9-9"))
        );
        assert_eq!(at("/cg/vmshare"), Caller::NotAGuest);
        assert_eq!(at("/cg/user.slice"), Caller::NotAGuest);
        assert_eq!(caller(&records, None, &[], root), Caller::NotAGuest);
        // By descent from the session's sshd process, wherever it runs.
        let sshd = procfs::stat(std::process::id() as i32).unwrap();
        let mut bob = records[0].clone();
        (bob.monitor_pid, bob.monitor_start) = (sshd.pid, sshd.start);
        let bob = [bob];
        assert_eq!(
            caller(&bob, None, &[sshd], root),
            Caller::Guest(bob[0].clone())
        );
    }

    #[test]
    fn only_an_accepted_admin_guest_passes() {
        let bob = Caller::Guest(guest_record("/g"));
        assert_eq!(
            decide(&bob, grants("status = \"accepted\"\nadmin = true")),
            Ok(())
        );
        let refused = decide(&bob, grants("status = \"accepted\"")).unwrap_err();
        assert_eq!(
            refused,
            "vmshare: bob is a guest in alice's account and may not become root (admin = false)"
        );
        for bob_now in ["status = \"left\"\nadmin = true", "admin = true"] {
            let e = decide(&bob, grants(bob_now)).unwrap_err();
            assert!(e.ends_with("(no current grant)"), "{e}");
        }
        let e = decide(&bob, || Err("invalid".into())).unwrap_err();
        assert!(
            e.contains("may not become root (the grant file grants nothing: invalid)"),
            "{e}"
        );
        let lost = Caller::Unrecorded(PathBuf::from("/cg/vmshare/s9-9"));
        assert!(decide(&lost, grants("admin = true")).is_err());
    }

    #[test]
    fn others_pass_without_reading_the_grant_file() {
        assert_eq!(
            decide(&Caller::NotAGuest, || -> Result<Grants, String> {
                panic!("read the grant file")
            }),
            Ok(())
        );
    }
}
