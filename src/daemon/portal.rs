//! The daemon's side of the guest portal (`ssh vmshare@HOST`): the shares
//! of the key that authenticated a portal session, and a guest's answer.
//!
//! The portal program only asks; the daemon decides. It answers only a
//! caller inside a recorded portal session (found by the caller's process,
//! as for `whoami`), and only for the key that session's record names: the
//! PAM hook wrote the record from what sshd said authenticated the login,
//! so no argument of the caller's can name another key. An answer is
//! applied with the same lifecycle rules and the same locked, atomic edit
//! as the CLI's, and audited.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::control::{Answer, Response, Share};
use crate::grant::lifecycle::{Change, SetLimits};
use crate::grant::model::{Grants, Guest, Status};
use crate::store::config::Config;
use crate::store::records::SessionRecord;
use crate::store::source::{self, Outcome};
use crate::sys::accounts::SystemAccounts;
use crate::sys::log::audit;

/// How long an answer waits for another edit of the grant file to finish:
/// below the client's own timeout.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// What the first line of a grant file that vmshare-sync writes starts with.
const SYNC_MARK: &str = "# vmshare-sync:";

/// The grant file, valid, and whether vmshare-sync writes it.
fn grants(config: &Config) -> Result<(Grants, bool), String> {
    let loaded = source::load(&config.grants, &SystemAccounts);
    let managed = loaded.source.starts_with(SYNC_MARK);
    match loaded.outcome {
        Outcome::Valid { grants, .. } => Ok((grants, managed)),
        Outcome::Missing => Ok((Grants::default(), managed)),
        Outcome::Invalid(_) => Err(
            "the VM's grant file is invalid right now; nothing can be shown or answered (the operator is told)"
                .into(),
        ),
    }
}

/// Every (owner, guest) whose keys include `fingerprint`, any status.
fn shares_of<'g>(grants: &'g Grants, fingerprint: &str) -> Vec<(&'g str, bool, &'g Guest)> {
    grants
        .owners
        .iter()
        .flat_map(|o| {
            o.guests
                .iter()
                .filter(|g| g.keys.iter().any(|k| &*k.fingerprint == fingerprint))
                .map(move |g| (o.name.as_str(), o.sharing, g))
        })
        .collect()
}

fn share(owner: &str, sharing: bool, g: &Guest, now: i64) -> Share {
    let expired = g.limits.expired(now);
    Share {
        owner: owner.to_string(),
        guest: g.name.clone(),
        status: g.status,
        sharing,
        access: g.has_access(sharing) && !expired,
        expires: g.limits.expires.map(crate::grant::civil::utc),
        expired,
        from: g.limits.from_texts(),
        admin: g.admin,
    }
}

/// Whether the portal session asks for its own key.
fn own_key(record: &SessionRecord, fingerprint: &str) -> bool {
    record.fingerprint == fingerprint
}

const OTHER_KEY: &str =
    "this portal session logged in with another key; answers are taken only for the key that logged in";

fn error(message: &str) -> Response {
    Response::Error {
        message: message.into(),
    }
}

/// `portal_list`.
pub fn list(config: &Config, record: &SessionRecord, fingerprint: &str, now: i64) -> Response {
    if !own_key(record, fingerprint) {
        return error(OTHER_KEY);
    }
    match grants(config) {
        Ok((grants, managed_by_fleet)) => Response::Shares {
            shares: shares_of(&grants, fingerprint)
                .into_iter()
                .map(|(o, sharing, g)| share(o, sharing, g, now))
                .collect(),
            managed_by_fleet,
        },
        Err(e) => error(&e),
    }
}

/// `portal_answer`: returns a reason to re-apply the grant file when it
/// changed.
pub fn answer(
    config: &Config,
    record: &SessionRecord,
    fingerprint: &str,
    owner: &str,
    answer: Answer,
    now: i64,
) -> (Response, Option<&'static str>) {
    if !own_key(record, fingerprint) {
        return (error(OTHER_KEY), None);
    }
    let (grants, managed) = match grants(config) {
        Ok(g) => g,
        Err(e) => return (error(&e), None),
    };
    if managed {
        return (
            error("this VM's shares are managed by its fleet's control plane: give your answer where the invitation came from; nothing was changed here"),
            None,
        );
    }
    let mine = shares_of(&grants, fingerprint);
    let Some(&(_, sharing, guest)) = mine.iter().find(|(o, _, _)| *o == owner) else {
        return (
            error(&format!(
                "no invitation from {owner} for the key you logged in with; nothing was changed"
            )),
            None,
        );
    };
    let ip = record.remote.parse::<IpAddr>().ok();
    if answer == Answer::Accept {
        if let Some(at) = guest.limits.expires.filter(|_| guest.limits.expired(now)) {
            let when = crate::grant::civil::utc(at);
            return (
                error(&format!("{owner}'s invitation ended at {when}: ask {owner} to extend it; nothing was changed")),
                None,
            );
        }
        if !guest.limits.admits_address(ip) {
            return (
                error(&format!(
                    "{owner} shares only with logins from {}; you are connecting from {}: accept from an allowed address; nothing was changed",
                    guest
                        .limits
                        .from
                        .iter()
                        .flatten()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    record.remote
                )),
                None,
            );
        }
    }
    let (owner, name) = (owner.to_string(), guest.name.clone());
    let change = match answer {
        Answer::Accept => Change::Accept {
            owner: owner.clone(),
            guest: name.clone(),
            limits: SetLimits::default(),
        },
        Answer::Reject => Change::Reject {
            owner: owner.clone(),
            guest: name.clone(),
        },
        Answer::Leave => Change::Leave {
            owner: owner.clone(),
            guest: name.clone(),
        },
    };
    let edited =
        crate::store::edit::edit_file_within(&config.grants, &change, &SystemAccounts, LOCK_WAIT);
    let done = match edited {
        Ok(done) => done,
        Err(e) => return (error(&format!("{e}; nothing was changed")), None),
    };
    let status = match answer {
        Answer::Accept => Status::Accepted,
        Answer::Reject => Status::Rejected,
        Answer::Leave => Status::Left,
    };
    let mut notes = Vec::new();
    if answer == Answer::Accept && !sharing {
        notes.push(format!(
            "{owner} has sharing turned off: you can log in once {owner} turns it on"
        ));
    }
    let kind = match answer {
        Answer::Accept => audit::Kind::Accept,
        Answer::Reject => audit::Kind::Reject,
        Answer::Leave => audit::Kind::Leave,
    };
    super::audit_event(
        &audit::Event {
            kind: Some(kind),
            owner: &owner,
            guest: &name,
            fingerprint,
            remote: &record.remote,
            session: &record.id,
            message: &format!("guest answered through the portal: {}", answer.as_str()),
        },
        "",
    );
    let reapply = done.changed.then_some("portal answer");
    (
        Response::Answered {
            owner,
            guest: name,
            status,
            changed: done.changed,
            notes,
        },
        reapply,
    )
}

/// The portal session `pid` (a process of uid `uid`) is in.
pub fn session_of(dir: &Path, pid: i32, uid: u32) -> Option<SessionRecord> {
    let (records, _) = crate::store::records::list(dir);
    crate::session::membership::session_of(&records, pid)
        .filter(|r| r.uid == uid)
        .cloned()
}
