//! Edits of the grant file: the "Share VM" lifecycle transitions as a pure
//! function over text (comments, order and layout are kept), and the one
//! place that applies them to the file on disk, under a lock.
//!
//! Transitions (`-` = the guest has no table):
//!
//! | change  | from                  | to                                   |
//! |---------|-----------------------|--------------------------------------|
//! | invite  | -                     | invited, with the keys               |
//! | invite  | invited / accepted    | same status, new keys added          |
//! | invite  | rejected / left       | invited, new keys added              |
//! | accept  | invited               | accepted                             |
//! | reject  | invited               | rejected                             |
//! | leave   | accepted              | left                                 |
//! | revoke  | any                   | - (table removed)                    |
//! | admin   | any                   | same status, `admin` set             |
//!
//! Repeating a change that is already in effect (accepting an accepted
//! guest, turning on a switch that is on, inviting with keys the guest
//! already has) changes nothing and is not an error. Everything else is.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::diag::FileErrors;
use super::limits::{Limits, Network};
use super::model::{Grants, Status};

/// One change to the grant file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Turn an owner's "Share VM" switch on or off.
    Sharing {
        owner: String,
        on: bool,
    },
    /// Invite a guest with keys, or add keys to a guest.
    Invite {
        owner: String,
        guest: String,
        keys: Vec<String>,
        limits: SetLimits,
    },
    Accept {
        owner: String,
        guest: String,
        limits: SetLimits,
    },
    /// Set a guest's deadline (any status).
    Extend {
        owner: String,
        guest: String,
        expires: i64,
    },
    Reject {
        owner: String,
        guest: String,
    },
    /// Stop sharing with a guest: the guest's table goes.
    Revoke {
        owner: String,
        guest: String,
    },
    /// The guest leaves: status `left`.
    Leave {
        owner: String,
        guest: String,
    },
    /// Whether the guest may become root through the owner's rights.
    Admin {
        owner: String,
        guest: String,
        on: bool,
    },
}

/// Limits set along with an invitation or acceptance (`--expires`,
/// `--from`, `--no-forwarding`); what is not given stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetLimits {
    pub expires: Option<i64>,
    pub from: Option<Vec<Network>>,
    pub no_forwarding: bool,
}

impl SetLimits {
    /// `limits` with these set.
    pub fn applied_to(&self, limits: &Limits) -> Limits {
        Limits {
            expires: self.expires.or(limits.expires),
            from: self.from.clone().or_else(|| limits.from.clone()),
            forwarding: limits.forwarding && !self.no_forwarding,
        }
    }

    /// What is set, for people: `expires 2026-12-01T18:00:00Z, from …`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(at) = self.expires {
            parts.push(format!("expires {}", super::civil::utc(at)));
        }
        if let Some(nets) = &self.from {
            let list: Vec<String> = nets.iter().map(Network::to_string).collect();
            parts.push(format!("from {}", list.join(", ")));
        }
        if self.no_forwarding {
            parts.push("forwarding off".into());
        }
        parts.join(", ")
    }
}

impl Change {
    /// The guest the change is about (empty for `Sharing`).
    pub fn guest(&self) -> &str {
        match self {
            Change::Sharing { .. } => "",
            Change::Invite { guest, .. }
            | Change::Accept { guest, .. }
            | Change::Extend { guest, .. }
            | Change::Reject { guest, .. }
            | Change::Revoke { guest, .. }
            | Change::Leave { guest, .. }
            | Change::Admin { guest, .. } => guest,
        }
    }

    /// The limits an invitation or acceptance sets too.
    fn limits(&self) -> Option<&SetLimits> {
        match self {
            Change::Invite { limits, .. } | Change::Accept { limits, .. } => Some(limits),
            _ => None,
        }
    }

    pub fn owner(&self) -> &str {
        match self {
            Change::Sharing { owner, .. }
            | Change::Invite { owner, .. }
            | Change::Accept { owner, .. }
            | Change::Extend { owner, .. }
            | Change::Reject { owner, .. }
            | Change::Revoke { owner, .. }
            | Change::Leave { owner, .. }
            | Change::Admin { owner, .. } => owner,
        }
    }

    /// Whether the change may add an owner to the file, which must then be
    /// a local account.
    pub fn may_add_owner(&self) -> bool {
        matches!(self, Change::Sharing { .. } | Change::Invite { .. })
    }

    /// Whether the change ends access (revoke, sharing off, leave): such a
    /// change must never fail on a file the agent enforces, whatever its
    /// layout.
    pub fn ends_access(&self) -> bool {
        matches!(
            self,
            Change::Revoke { .. } | Change::Leave { .. } | Change::Sharing { on: false, .. }
        )
    }

    fn verb(&self) -> &'static str {
        match self {
            Change::Sharing { .. } => "change sharing",
            Change::Invite { .. } => "invite",
            Change::Accept { .. } => "accept",
            Change::Extend { .. } => "extend",
            Change::Reject { .. } => "reject",
            Change::Revoke { .. } => "revoke",
            Change::Leave { .. } => "leave",
            Change::Admin { .. } => "change admin",
        }
    }
}

/// Why an edit was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// The current file is invalid; it must be fixed by hand first.
    InvalidFile(FileErrors),
    /// The file cannot be read or trusted.
    Unreadable(String),
    BadOwnerName(String),
    BadGuestName(String),
    BadKey {
        key: String,
        why: String,
    },
    NoKeys,
    /// The key already belongs to another guest of the owner.
    KeyTaken {
        fingerprint: String,
        owner: String,
        guest: String,
    },
    UnknownOwner(String),
    NotLocalAccount(String),
    RootOwner(String),
    NotAGuest {
        owner: String,
        guest: String,
    },
    /// The guest's status does not allow the change.
    Transition {
        verb: &'static str,
        owner: String,
        guest: String,
        status: Status,
        hint: &'static str,
    },
    /// The result would be an invalid grant file.
    ResultInvalid(FileErrors),
    /// The change could not be expressed in this file's layout.
    Layout(Layout),
    /// Another edit held the lock for as long as this one would wait.
    Busy {
        lock: PathBuf,
        waited: Duration,
    },
    Lock(String),
    Io(String),
}

/// Why a change cannot be made in the file's own layout. The file itself is
/// valid: these are limits of the text edit, never parse errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `what` is not of the kind the edit needs (`expected`: "a table", "a
    /// value", "an array").
    Unexpected {
        what: String,
        expected: &'static str,
    },
    /// The table the edit needs is not where the file's layout puts it.
    NotFound(&'static str),
    /// The edited text does not read back as what was intended.
    Misread,
    /// The editor's parser refused a file the reader accepted. They are the
    /// same parser (`toml_parser`), so this is a bug; it is still refused.
    Unreadable(String),
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Unexpected { what, expected } => write!(f, "{what} is not {expected}"),
            Layout::NotFound(what) => write!(f, "{what} not found where expected"),
            Layout::Misread => write!(f, "the edited text does not say what was intended"),
            Layout::Unreadable(why) => write!(f, "the editor cannot read the file: {why}"),
        }
    }
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EditError::InvalidFile(errors) => write!(
                f,
                "the grant file is invalid; fix it by hand first (`vmshare check`):\n{errors}"
            ),
            EditError::Unreadable(why) => write!(f, "{why}"),
            EditError::BadOwnerName(why) | EditError::BadGuestName(why) => write!(f, "{why}"),
            EditError::BadKey { key, why } => write!(f, "bad key {key:?}: {why}"),
            EditError::NoKeys => write!(f, "no keys given; a guest needs at least one key"),
            EditError::KeyTaken {
                fingerprint,
                owner,
                guest,
            } => write!(
                f,
                "key {fingerprint} already belongs to guest `{guest}` of owner `{owner}`; one key may belong to one guest only"
            ),
            EditError::UnknownOwner(owner) => {
                write!(f, "owner `{owner}` is not in the grant file")
            }
            EditError::NotLocalAccount(owner) => write!(
                f,
                "owner `{owner}` is not a local account on this VM; only local accounts can be shared"
            ),
            EditError::RootOwner(owner) => {
                write!(f, "owner `{owner}` has uid 0; root is never shared")
            }
            EditError::NotAGuest { owner, guest } => write!(
                f,
                "`{guest}` is not a guest of owner `{owner}` (never invited, or revoked); invite them first"
            ),
            EditError::Transition {
                verb,
                owner,
                guest,
                status,
                hint,
            } => write!(
                f,
                "cannot {verb}: guest `{guest}` of owner `{owner}` is {status}; {hint}"
            ),
            EditError::ResultInvalid(errors) => {
                write!(f, "refused: the edited grant file would be invalid:\n{errors}")
            }
            EditError::Layout(why) => write!(
                f,
                "cannot make this edit in the file's layout ({why}); edit the file by hand"
            ),
            EditError::Busy { lock, waited } => write!(
                f,
                "the grant file is being edited: another edit has held {} for {}s; try again",
                lock.display(),
                waited.as_secs_f32()
            ),
            EditError::Lock(why) | EditError::Io(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for EditError {}

/// What to do to the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Creates the owner's table if it has none.
    SetSharing(bool),
    /// A new guest table; creates the owner's table (sharing off) if needed.
    AddGuest {
        keys: Vec<String>,
    },
    AddKeys {
        keys: Vec<String>,
        status: Option<Status>,
    },
    SetStatus(Status),
    /// Sets the guest's limits to these (the guest exists, or is added by
    /// an earlier step).
    SetLimits(SetLimits),
    RemoveGuest,
    SetAdmin(bool),
}

/// Decides what `change` does to `grants`: a step, or nothing (already in
/// effect), and a summary; or why it is refused.
pub fn decide(grants: &Grants, change: &Change) -> Result<(Option<Step>, String), EditError> {
    let owner_name = change.owner();
    crate::grant::parse::check_owner_name(owner_name).map_err(EditError::BadOwnerName)?;
    let owner = grants.owner(owner_name);
    let existing = |guest: &str| -> Result<Status, EditError> {
        crate::grant::parse::check_guest_name(guest).map_err(EditError::BadGuestName)?;
        let o = owner.ok_or_else(|| EditError::UnknownOwner(owner_name.to_string()))?;
        o.guest(guest)
            .map(|g| g.status)
            .ok_or_else(|| EditError::NotAGuest {
                owner: owner_name.to_string(),
                guest: guest.to_string(),
            })
    };
    let refuse = |guest: &str, status: Status, hint: &'static str| EditError::Transition {
        verb: change.verb(),
        owner: owner_name.to_string(),
        guest: guest.to_string(),
        status,
        hint,
    };
    let set = |guest: &str, to: Status| {
        (
            Some(Step::SetStatus(to)),
            format!("guest `{guest}` of owner `{owner_name}` is now {to}"),
        )
    };
    let already = |guest: &str, status: Status| {
        (
            None,
            format!("unchanged: guest `{guest}` of owner `{owner_name}` is already {status}"),
        )
    };
    Ok(match change {
        Change::Sharing { on, .. } => {
            let word = if *on { "on" } else { "off" };
            let current = owner.is_some_and(|o| o.sharing);
            if current == *on {
                (
                    None,
                    format!("unchanged: sharing is already {word} for owner `{owner_name}`"),
                )
            } else {
                (
                    Some(Step::SetSharing(*on)),
                    format!("sharing is now {word} for owner `{owner_name}`"),
                )
            }
        }
        Change::Invite { guest, keys, .. } => {
            crate::grant::parse::check_guest_name(guest).map_err(EditError::BadGuestName)?;
            let keys = parse_keys(keys)?;
            if let Some(o) = owner {
                for other in o.guests.iter().filter(|g| g.name != *guest) {
                    for (parsed, _) in &keys {
                        if other.keys.iter().any(|k| k.blob == parsed.blob) {
                            return Err(EditError::KeyTaken {
                                fingerprint: parsed.fingerprint.to_string(),
                                owner: owner_name.to_string(),
                                guest: other.name.clone(),
                            });
                        }
                    }
                }
            }
            match owner.and_then(|o| o.guest(guest)) {
                None => (
                    Some(Step::AddGuest {
                        keys: keys.into_iter().map(|(_, line)| line).collect(),
                    }),
                    format!("invited guest `{guest}` of owner `{owner_name}`"),
                ),
                Some(g) => {
                    let new: Vec<String> = keys
                        .into_iter()
                        .filter(|(p, _)| !g.keys.iter().any(|k| k.blob == p.blob))
                        .map(|(_, line)| line)
                        .collect();
                    let status = match g.status {
                        Status::Rejected | Status::Left => Some(Status::Invited),
                        Status::Invited | Status::Accepted => None,
                    };
                    if new.is_empty() && status.is_none() {
                        (
                            None,
                            format!(
                                "unchanged: guest `{guest}` of owner `{owner_name}` is {} and has these keys",
                                g.status
                            ),
                        )
                    } else {
                        let now = status.unwrap_or(g.status);
                        let summary = format!(
                            "guest `{guest}` of owner `{owner_name}` is {now}; {} key(s) added",
                            new.len()
                        );
                        (Some(Step::AddKeys { keys: new, status }), summary)
                    }
                }
            }
        }
        Change::Accept { guest, .. } => match existing(guest)? {
            Status::Invited => set(guest, Status::Accepted),
            Status::Accepted => already(guest, Status::Accepted),
            s @ Status::Rejected => {
                return Err(refuse(guest, s, "the owner must invite them again first"))
            }
            s @ Status::Left => {
                return Err(refuse(guest, s, "the owner must invite them again first"))
            }
        },
        Change::Reject { guest, .. } => match existing(guest)? {
            Status::Invited => set(guest, Status::Rejected),
            Status::Rejected => already(guest, Status::Rejected),
            s @ Status::Accepted => {
                return Err(refuse(
                    guest,
                    s,
                    "use `leave` to give up access, or `revoke` to remove the guest",
                ))
            }
            s @ Status::Left => return Err(refuse(guest, s, "there is no invitation to reject")),
        },
        Change::Leave { guest, .. } => match existing(guest)? {
            Status::Accepted => set(guest, Status::Left),
            Status::Left => already(guest, Status::Left),
            s @ Status::Invited => {
                return Err(refuse(guest, s, "use `reject` to decline the invitation"))
            }
            s @ Status::Rejected => return Err(refuse(guest, s, "there is nothing to leave")),
        },
        Change::Admin { guest, on, .. } => {
            existing(guest)?;
            let now = owner.and_then(|o| o.guest(guest)).is_some_and(|g| g.admin);
            if now == *on {
                (
                    None,
                    format!("unchanged: guest `{guest}` of owner `{owner_name}` already has admin = {on}"),
                )
            } else {
                (
                    Some(Step::SetAdmin(*on)),
                    format!("guest `{guest}` of owner `{owner_name}` now has admin = {on}"),
                )
            }
        }
        Change::Extend { guest, expires, .. } => {
            existing(guest)?;
            let current = owner.and_then(|o| o.guest(guest)).map(|g| g.limits.expires);
            if current == Some(Some(*expires)) {
                (
                    None,
                    format!(
                        "unchanged: guest `{guest}` of owner `{owner_name}` already expires at {}",
                        super::civil::utc(*expires)
                    ),
                )
            } else {
                (
                    Some(Step::SetLimits(SetLimits {
                        expires: Some(*expires),
                        ..SetLimits::default()
                    })),
                    format!(
                        "guest `{guest}` of owner `{owner_name}` now expires at {}",
                        super::civil::utc(*expires)
                    ),
                )
            }
        }
        Change::Revoke { guest, .. } => {
            existing(guest)?;
            (
                Some(Step::RemoveGuest),
                format!("revoked guest `{guest}` of owner `{owner_name}`"),
            )
        }
    })
}

/// The limits step an invitation or acceptance makes as well, if it
/// changes the guest's limits, with what it says.
pub fn decide_limits(grants: &Grants, change: &Change) -> Option<(Step, String)> {
    let set = change.limits()?;
    let current = grants
        .owner(change.owner())
        .and_then(|o| o.guest(change.guest()))
        .map(|g| g.limits.clone())
        .unwrap_or_default();
    (set.applied_to(&current) != current).then(|| (Step::SetLimits(set.clone()), set.describe()))
}

/// Parses the given keys into their canonical one-line form, dropping
/// repeats of the same key.
fn parse_keys(keys: &[String]) -> Result<Vec<(crate::grant::model::GuestKey, String)>, EditError> {
    if keys.is_empty() {
        return Err(EditError::NoKeys);
    }
    let mut out: Vec<(crate::grant::model::GuestKey, String)> = Vec::new();
    for key in keys {
        let parsed = crate::grant::key::parse_key(key.trim()).map_err(|why| EditError::BadKey {
            key: key.clone(),
            why,
        })?;
        if out.iter().any(|(p, _)| p.blob == parsed.blob) {
            continue;
        }
        let mut line = format!("{} {}", parsed.algorithm, parsed.blob);
        if !parsed.comment.is_empty() {
            line.push(' ');
            line.push_str(&parsed.comment);
        }
        out.push((parsed, line));
    }
    Ok(out)
}

/// What a grant file means, without positions: to check an edit did what
/// was intended.
#[derive(Debug, PartialEq, Eq)]
pub struct Model(BTreeMap<String, (bool, GuestsModel)>);

/// Guest → (status, key blobs, limits, admin).
type GuestsModel = BTreeMap<String, (Status, Vec<String>, Limits, bool)>;

impl Model {
    pub fn of(grants: &Grants) -> Self {
        Model(
            grants
                .owners
                .iter()
                .map(|o| {
                    let guests = o
                        .guests
                        .iter()
                        .map(|g| {
                            let keys = g.keys.iter().map(|k| k.blob.to_string()).collect();
                            (g.name.clone(), (g.status, keys, g.limits.clone(), g.admin))
                        })
                        .collect();
                    (o.name.clone(), (o.sharing, guests))
                })
                .collect(),
        )
    }

    pub fn apply(&mut self, owner: &str, guest: &str, step: &Step) {
        let blobs = |keys: &[String]| -> Vec<String> {
            keys.iter()
                .filter_map(|k| k.split(' ').nth(1).map(str::to_string))
                .collect()
        };
        let entry = self.0.entry(owner.to_string()).or_default();
        match step {
            Step::SetSharing(on) => entry.0 = *on,
            Step::AddGuest { keys } => {
                entry.1.insert(
                    guest.to_string(),
                    (Status::Invited, blobs(keys), Limits::default(), false),
                );
            }
            Step::AddKeys { keys, status } => {
                if let Some(g) = entry.1.get_mut(guest) {
                    g.1.extend(blobs(keys));
                    if let Some(s) = status {
                        g.0 = *s;
                    }
                }
            }
            Step::SetStatus(s) => {
                if let Some(g) = entry.1.get_mut(guest) {
                    g.0 = *s;
                }
            }
            Step::SetLimits(set) => {
                if let Some(g) = entry.1.get_mut(guest) {
                    g.2 = set.applied_to(&g.2);
                }
            }
            Step::RemoveGuest => {
                entry.1.remove(guest);
            }
            Step::SetAdmin(on) => {
                if let Some(g) = entry.1.get_mut(guest) {
                    g.3 = *on;
                }
            }
        }
    }
}
