//! Ending what guests without access left: their units (each time one
//! comes back, as a restarting unit does) and the lingering they turned on;
//! and the `persistence` event for each report.

use std::collections::BTreeSet;
use std::time::Duration;

use super::account::Account;
use super::facts::{self, Roots};
use crate::grant::policy::Policy;
use crate::session::backend::cgroup;
use crate::store::escapes::Report;
use crate::sys::log::audit;

/// How long killing one unit's processes may take.
const UNIT_KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// The guests granted `owner`'s account now.
pub(super) fn granted(policy: Option<&Policy>, owner: &str) -> BTreeSet<String> {
    policy
        .and_then(|p| p.owners.get(owner))
        .map(|a| a.keys.iter().map(|k| k.guest.to_string()).collect())
        .unwrap_or_default()
}

/// Whether `guest` may still log in as `owner`: an accepted grant with a
/// key not past its deadline. No valid grant file: no one may.
fn has_access(policy: Option<&Policy>, owner: &str, guest: &str, now: i64) -> bool {
    policy.and_then(|p| p.owners.get(owner)).is_some_and(|a| {
        a.keys
            .iter()
            .any(|k| *k.guest == *guest && k.expires.is_none_or(|e| e > now))
    })
}

/// Ends what guests without access left: their units (each time one comes
/// back, as a restarting unit does) and the lingering they turned on.
pub(super) fn end_revoked(
    account: &mut Account,
    roots: &Roots,
    policy: Option<&Policy>,
    now: i64,
    disable_linger: &dyn Fn(u32) -> Result<(), String>,
    found: &mut Vec<Report>,
) {
    let revoked: Vec<(String, String)> = account
        .guest_units
        .iter()
        .filter(|(_, g)| !has_access(policy, &account.name, g, now))
        .map(|(u, g)| (u.clone(), g.clone()))
        .collect();
    if !revoked.is_empty() {
        let groups = facts::unit_groups(roots, account.uid);
        for (unit, guest) in revoked {
            let Some(group) = groups.get(&unit) else {
                // Gone: a transient unit does not come back.
                if !roots.transient(account.uid, &unit) && !account.unit_files.contains_key(&unit) {
                    account.guest_units.remove(&unit);
                }
                continue;
            };
            if !cgroup::is_populated(group).unwrap_or(false) {
                continue;
            }
            let action = match cgroup::kill_processes(group, UNIT_KILL_TIMEOUT) {
                Ok(()) => "stopped: the guest's access ended".to_string(),
                Err(e) => format!("could not be stopped: {e}"),
            };
            found.push(Report {
                at: now,
                owner: account.name.clone(),
                guests: vec![guest],
                kind: "unit".into(),
                what: unit,
                action,
            });
        }
    }
    if let Some(guest) = account.guest_linger.clone() {
        if !has_access(policy, &account.name, &guest, now) {
            let action = match disable_linger(account.uid) {
                Ok(()) => "turned off: the guest's access ended".to_string(),
                Err(e) => format!("could not be turned off: {e}"),
            };
            account.guest_linger = None;
            found.push(Report {
                at: now,
                owner: account.name.clone(),
                guests: vec![guest],
                kind: "linger".into(),
                what: account.name.clone(),
                action,
            });
        }
    }
}

/// One `persistence` event per report.
pub(super) fn emit(report: &Report) {
    let guests = report.guests.join(",");
    let message = format!(
        "{} {} in {}'s account ({}): {}",
        report.kind, report.what, report.owner, guests, report.action
    );
    crate::daemon::audit_event(
        &audit::Event {
            kind: Some(audit::Kind::Persistence),
            owner: &report.owner,
            guest: &guests,
            message: &message,
            ..audit::Event::default()
        },
        "",
    );
}
