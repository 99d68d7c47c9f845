//! `vmshare status [--json]`: owners, switches, guests and their keys, live
//! sessions, the grant file's health and when the daemon last applied it.

use std::io;
use std::process::ExitCode;

use serde::Serialize;

use super::output::{self, STATUS_FORMAT};
use super::session_list::{load_sessions, SessionJson, UnreadableJson};
use crate::grant::diag::Diagnostic;
use crate::grant::model::Grants;
use crate::grant::policy::Accounts;
use crate::session::root_paths;
use crate::store::config::Config;
use crate::store::escapes::{self, Report};
use crate::store::owner_keys;
use crate::store::snapshot;
use crate::store::source::{self, FileVersion, GrantFileState, Outcome};
use crate::sys::accounts::SystemAccounts;
use crate::sys::owners_group;

/// How many errors of an invalid grant file the text output shows.
const SHOWN_ERRORS: usize = 5;

#[derive(Debug, Serialize)]
struct StatusJson {
    format: u32,
    grants: GrantsJson,
    snapshot: SnapshotJson,
    owners: Vec<OwnerJson>,
    /// Live sessions whose guest has no access now (the daemon ends them).
    sessions_without_access: Vec<SessionJson>,
    unreadable_sessions: Vec<UnreadableJson>,
    /// Owners whose keys vmshare still holds though they are not in the
    /// grant file (`vmshare owner-keys release OWNER` gives them back).
    held_not_sharing: Vec<String>,
    /// What guests may have left behind in owners' accounts (units in the
    /// user manager, lingering, crontab and at jobs), oldest first.
    persistence: Vec<Report>,
}

#[derive(Debug, Serialize)]
struct GrantsJson {
    path: String,
    state: GrantFileState,
    errors: Vec<DiagJson>,
    notes: Vec<DiagJson>,
}

#[derive(Debug, Serialize)]
struct DiagJson {
    /// 1-based; 0 for the file as a whole.
    line: usize,
    column: usize,
    message: String,
}

#[derive(Debug, Serialize)]
struct SnapshotJson {
    present: bool,
    /// When the daemon (or key lookup) last compiled the grant file, ns
    /// since the epoch.
    written_ns: Option<i64>,
    /// Whether it was compiled from the grant file as it is now.
    current: bool,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct OwnerJson {
    name: String,
    /// A local, non-root account (otherwise the owner is inert).
    local: bool,
    sharing: bool,
    /// vmshare holds the owner's own keys and sshd reads none from her home
    /// (she is in group vmshare-owners). Without it no guest gets in.
    keys_held: bool,
    /// Why the keys do not count as held, when they do not.
    keys_not_held: Option<String>,
    /// How many of the owner's own key lines are held.
    held_lines: usize,
    /// Fingerprints granted to a guest in the grant file that are also the
    /// owner's own: they log in as the owner only.
    owner_keys_granted: Vec<String>,
    /// Ways the owner becomes root that vmshare's admin check cannot gate:
    /// every guest has them, `admin` or not.
    root_paths: Vec<RootPathJson>,
    /// The same as one sentence, for the text output.
    #[serde(skip)]
    root_summary: Option<String>,
    guests: Vec<GuestJson>,
}

#[derive(Debug, Serialize)]
struct RootPathJson {
    /// `sudo`, `doas`, `group`, `polkit`, `account`.
    kind: &'static str,
    /// How, to follow "OWNER can become root".
    how: String,
}

#[derive(Debug, Serialize)]
struct GuestJson {
    name: String,
    status: crate::grant::model::Status,
    /// Whether the guest may log in now.
    access: bool,
    /// When access ends (RFC 3339, UTC), if it does.
    expires: Option<String>,
    /// Seconds until then (0 once passed).
    expires_in: Option<i64>,
    /// The deadline has passed: no access.
    expired: bool,
    /// The client addresses and networks allowed; `null`: any.
    from: Option<Vec<String>>,
    /// Port, agent and X11 forwarding allowed.
    forwarding: bool,
    /// May become root through the owner's rights (sudo, su, pkexec).
    admin: bool,
    keys: Vec<KeyJson>,
    sessions: Vec<SessionJson>,
}

#[derive(Debug, Serialize)]
struct KeyJson {
    algorithm: String,
    fingerprint: String,
    comment: String,
}

fn diag(d: &Diagnostic) -> DiagJson {
    DiagJson {
        line: d.line,
        column: d.column,
        message: d.message.clone(),
    }
}

fn gather(config: &Config) -> StatusJson {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(i64::MAX, |d| d.as_secs() as i64);
    let loaded = source::load(&config.grants, &SystemAccounts);
    let state = loaded.outcome.state();
    let errors = match &loaded.outcome {
        Outcome::Invalid(e) => e.errors.iter().map(diag).collect(),
        Outcome::Missing | Outcome::Valid { .. } => Vec::new(),
    };
    let valid = state == GrantFileState::Valid;
    // An invalid file may still parse (an error found only against the
    // account database): show what it says, with no access.
    let parsed: Option<Grants> = loaded
        .grants()
        .cloned()
        .or_else(|| crate::grant::parse::parse(&loaded.source).ok());

    let current = std::fs::metadata(&config.grants)
        .ok()
        .map(|m| FileVersion::of(&m));
    let snapshot = match snapshot::read_header(&config.snapshot_path()) {
        Ok(h) => SnapshotJson {
            present: true,
            written_ns: Some(h.written_ns),
            current: h.grants_path == config.grants && h.version == current,
            error: None,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => SnapshotJson {
            present: false,
            written_ns: None,
            current: false,
            error: None,
        },
        Err(e) => SnapshotJson {
            present: true,
            written_ns: None,
            current: false,
            error: Some(e.to_string()),
        },
    };

    let (sessions, unreadable_sessions) = load_sessions(config);
    let mut placed = vec![false; sessions.len()];
    let mut owners = Vec::new();
    let host = std::cell::OnceCell::new();
    for owner in parsed.iter().flat_map(|g| &g.owners) {
        let local = matches!(SystemAccounts.lookup(&owner.name), Ok(Some(a)) if a.uid != 0);
        let held = held_keys(config, &owner.name);
        let held_blobs: Vec<&str> = held.as_ref().map_or(Vec::new(), |h| {
            h.lines.iter().map(|l| l.blob.as_str()).collect()
        });
        let owner_keys_granted = owner
            .guests
            .iter()
            .flat_map(|g| &g.keys)
            .filter(|k| held_blobs.contains(&&*k.blob))
            .map(|k| k.fingerprint.to_string())
            .collect();
        let root_paths = if local {
            root_paths::of_owner(host.get_or_init(root_paths::HostFacts::gather), &owner.name)
        } else {
            Vec::new()
        };
        let guests = owner
            .guests
            .iter()
            .map(|g| {
                let expired = g.limits.expired(now);
                let access =
                    valid && local && held.is_ok() && g.has_access(owner.sharing) && !expired;
                let mut own = Vec::new();
                for (i, s) in sessions.iter().enumerate() {
                    if s.owner == owner.name && s.guest == g.name && access {
                        placed[i] = true;
                        own.push(s.clone());
                    }
                }
                GuestJson {
                    name: g.name.clone(),
                    status: g.status,
                    access,
                    expires: g.limits.expires.map(output::utc),
                    expires_in: g.limits.expires.map(|at| (at - now).max(0)),
                    expired,
                    from: g.limits.from_texts(),
                    forwarding: g.limits.forwarding,
                    admin: g.admin,
                    keys: g
                        .keys
                        .iter()
                        .map(|k| KeyJson {
                            algorithm: k.algorithm.clone(),
                            fingerprint: k.fingerprint.to_string(),
                            comment: k.comment.clone(),
                        })
                        .collect(),
                    sessions: own,
                }
            })
            .collect();
        owners.push(OwnerJson {
            name: owner.name.clone(),
            local,
            sharing: owner.sharing,
            keys_held: held.is_ok(),
            held_lines: held.as_ref().map_or(0, |h| h.lines.len()),
            keys_not_held: held.err(),
            owner_keys_granted,
            root_paths: root_paths
                .iter()
                .map(|p| RootPathJson {
                    kind: p.kind(),
                    how: p.to_string(),
                })
                .collect(),
            root_summary: (!root_paths.is_empty())
                .then(|| root_paths::summary(&owner.name, &root_paths)),
            guests,
        });
    }
    let sessions_without_access = sessions
        .into_iter()
        .zip(placed)
        .filter(|(_, placed)| !placed)
        .map(|(s, _)| s)
        .collect();
    StatusJson {
        format: STATUS_FORMAT,
        grants: GrantsJson {
            path: config.grants.display().to_string(),
            state,
            errors,
            notes: loaded.notes().iter().map(diag).collect(),
        },
        snapshot,
        owners,
        sessions_without_access,
        unreadable_sessions,
        held_not_sharing: owner_keys::held_owners(&config.state_dir)
            .into_iter()
            .filter(|o| parsed.as_ref().is_none_or(|g| g.owner(o).is_none()))
            .collect(),
        persistence: escapes::read(&config.run_dir),
    }
}

/// The owner's held keys, if they count as held: she is in the owners'
/// group (so sshd reads nothing in her home) and her held file is there.
fn held_keys(config: &Config, owner: &str) -> Result<owner_keys::Held, String> {
    if !owners_group::is_member(owner)? {
        return Err(format!(
            "not in group {}: sshd reads {owner}'s home key files, so no guest gets in (`vmshare owner-keys import {owner}`)",
            owners_group::GROUP
        ));
    }
    owner_keys::read(&config.state_dir, owner)?.ok_or_else(|| {
        format!("vmshare holds no keys for {owner}: no guest gets in (`vmshare owner-keys import {owner}`)")
    })
}

/// Exit 0 when the grant file is valid or missing, 1 when it is invalid.
pub fn run(config: &Config, json: bool) -> ExitCode {
    let status = gather(config);
    let code = if status.grants.state == GrantFileState::Invalid {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    if json {
        let printed = output::print_json(&status);
        return if printed == ExitCode::SUCCESS {
            code
        } else {
            printed
        };
    }
    print!("{}", render(&status));
    code
}

fn with_path(path: &str, d: &DiagJson) -> String {
    if d.line == 0 {
        format!("{path}: {}", d.message)
    } else {
        format!("{path}:{}:{}: {}", d.line, d.column, d.message)
    }
}

fn render(s: &StatusJson) -> String {
    let mut out = String::new();
    let g = &s.grants;
    match g.state {
        GrantFileState::Missing => out.push_str(&format!(
            "grant file {}: missing (nothing is shared)\n",
            g.path
        )),
        GrantFileState::Invalid => {
            out.push_str(&format!(
                "grant file {}: INVALID: no guest gets in anywhere until it is fixed\n",
                g.path
            ));
            for e in g.errors.iter().take(SHOWN_ERRORS) {
                out.push_str(&format!("  error: {}\n", with_path(&g.path, e)));
            }
            if g.errors.len() > SHOWN_ERRORS {
                out.push_str(&format!(
                    "  ... and {} more (`vmshare check`)\n",
                    g.errors.len() - SHOWN_ERRORS
                ));
            }
        }
        GrantFileState::Valid => {
            let guests: usize = s.owners.iter().map(|o| o.guests.len()).sum();
            let access = s
                .owners
                .iter()
                .flat_map(|o| &o.guests)
                .filter(|g| g.access)
                .count();
            out.push_str(&format!(
                "grant file {}: valid ({} owners, {guests} guests, {access} with access)\n",
                g.path,
                s.owners.len()
            ));
        }
    }
    for n in &g.notes {
        out.push_str(&format!("  note: {}\n", with_path(&g.path, n)));
    }
    let snap = &s.snapshot;
    match (snap.present, snap.written_ns, &snap.error) {
        (false, ..) => out.push_str("applied: never (no snapshot; is vmshared running?)\n"),
        (true, _, Some(e)) => {
            out.push_str(&format!("applied: unknown (snapshot unreadable: {e})\n"))
        }
        (true, Some(ns), None) => {
            let when = output::utc(ns.div_euclid(1_000_000_000));
            if snap.current {
                out.push_str(&format!("applied: {when} (matches the grant file)\n"));
            } else {
                out.push_str(&format!(
                    "applied: {when} (from an older grant file; the key lookup reads the file itself meanwhile; is vmshared running?)\n"
                ));
            }
        }
        (true, None, None) => out.push_str("applied: unknown\n"),
    }
    for o in &s.owners {
        let switch = if o.sharing { "on" } else { "off" };
        let inert = if o.local {
            ""
        } else {
            " (not a local account: inert)"
        };
        out.push_str(&format!("\nowner {}{inert}: sharing {switch}\n", o.name));
        match &o.keys_not_held {
            None => out.push_str(&format!(
                "  own keys: held by vmshare ({} line{}); sshd reads no key file in the home\n",
                o.held_lines,
                if o.held_lines == 1 { "" } else { "s" }
            )),
            Some(why) => out.push_str(&format!("  own keys: NOT HELD: {why}\n")),
        }
        for fp in &o.owner_keys_granted {
            out.push_str(&format!(
                "  warning: key {fp} is granted to a guest but is {}'s own: it logs in as {} only\n",
                o.name, o.name
            ));
        }
        if let Some(summary) = &o.root_summary {
            out.push_str(&format!(
                "  warning: {summary}, even without admin = true (`vmshare doctor`)\n"
            ));
        }
        if o.guests.is_empty() {
            out.push_str("  no guests\n");
        }
        for guest in &o.guests {
            let mut access = if guest.access { "access" } else { "no access" }.to_string();
            match (&guest.expires, guest.expires_in) {
                (Some(at), _) if guest.expired => access.push_str(&format!(": EXPIRED at {at}")),
                (Some(at), Some(left)) => access.push_str(&format!(
                    ", expires {at} (in {})",
                    crate::grant::civil::span(left)
                )),
                _ => {}
            }
            if let Some(from) = &guest.from {
                access.push_str(&format!(", from {}", from.join(" ")));
            }
            if !guest.forwarding {
                access.push_str(", no forwarding");
            }
            if guest.admin {
                access.push_str(", admin (may become root)");
            }
            let sessions = match guest.sessions.len() {
                0 => String::new(),
                1 => ", 1 live session".into(),
                n => format!(", {n} live sessions"),
            };
            out.push_str(&format!(
                "  {}: {} ({access}{sessions})\n",
                guest.name, guest.status
            ));
            for k in &guest.keys {
                let line = format!("    key {} {} {}", k.fingerprint, k.algorithm, k.comment);
                out.push_str(line.trim_end());
                out.push('\n');
            }
            for session in &guest.sessions {
                out.push_str(&format!(
                    "    session {} from {} since {}\n",
                    session.id,
                    session.from,
                    output::utc(session.since)
                ));
            }
        }
    }
    if !s.sessions_without_access.is_empty() {
        out.push_str("\nsessions of guests without access (being ended):\n");
        for session in &s.sessions_without_access {
            out.push_str(&format!(
                "  {} {} as {} from {} since {}\n",
                session.id,
                session.guest,
                session.owner,
                session.from,
                output::utc(session.since)
            ));
        }
    }
    for u in &s.unreadable_sessions {
        out.push_str(&format!(
            "warning: unreadable session record {}: {}\n",
            u.path, u.error
        ));
    }
    for o in &s.held_not_sharing {
        out.push_str(&format!(
            "\nowner {o}: not in the grant file, keys still held by vmshare (sshd reads no key file in the home): `vmshare owner-keys release {o}`\n"
        ));
    }
    render_persistence(&s.persistence, &mut out);
    out
}

/// What guests may have left behind, as the daemon found it.
fn render_persistence(reports: &[Report], out: &mut String) {
    if reports.is_empty() {
        return;
    }
    out.push_str("\nleft behind in owners' accounts (persistence):\n");
    for r in reports {
        out.push_str(&format!(
            "  {} {}: {} {} (guests: {}): {}\n",
            output::utc(r.at),
            r.owner,
            r.kind,
            r.what,
            r.guests.join(", "),
            r.action
        ));
    }
}
