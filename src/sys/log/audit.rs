//! The audit trail: every guest login, refusal, kill, leave, grant-file
//! change and key release, and every session ended at its deadline, is one event with the
//! same fields, so one query answers "who logged
//! in as alice last week". Sent to journald natively when it runs (fields
//! `VMSHARE_EVENT`, `VMSHARE_OWNER`, `VMSHARE_GUEST`, `VMSHARE_FINGERPRINT`,
//! `VMSHARE_REMOTE`, `VMSHARE_SESSION`), else to syslog as `key=value` text.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

use crate::sys::log::syslog::Level;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
const SYSLOG_SOCKET: &str = "/dev/log";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Login,
    Refusal,
    Logout,
    Kill,
    Leave,
    /// A guest accepted an invitation through the portal.
    Accept,
    /// A guest rejected an invitation through the portal.
    Reject,
    GrantChange,
    /// The daemon ended a guest's access at its `expires` deadline.
    Expiry,
    /// Root changed the keys vmshare holds for an owner (took them over,
    /// added, removed, imported, released).
    OwnerKeys,
    /// A way back in that could not be undone, reported: a user unit,
    /// lingering, a crontab or at job a guest may have left to outlive its
    /// access.
    Persistence,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Refusal => "refusal",
            Kind::Logout => "logout",
            Kind::Kill => "kill",
            Kind::Leave => "leave",
            Kind::Accept => "accept",
            Kind::Reject => "reject",
            Kind::GrantChange => "grant-change",
            Kind::Expiry => "expiry",
            Kind::OwnerKeys => "owner-keys",
            Kind::Persistence => "persistence",
        }
    }
}

/// One audit event. Empty fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event<'a> {
    pub kind: Option<Kind>,
    pub owner: &'a str,
    pub guest: &'a str,
    pub fingerprint: &'a str,
    pub remote: &'a str,
    pub session: &'a str,
    pub message: &'a str,
}

impl Event<'_> {
    fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Some(kind) = self.kind {
            out.push(("VMSHARE_EVENT", kind.as_str()));
        }
        for (name, value) in [
            ("VMSHARE_OWNER", self.owner),
            ("VMSHARE_GUEST", self.guest),
            ("VMSHARE_FINGERPRINT", self.fingerprint),
            ("VMSHARE_REMOTE", self.remote),
            ("VMSHARE_SESSION", self.session),
        ] {
            if !value.is_empty() {
                out.push((name, value));
            }
        }
        out
    }

    /// `message event=login owner=alice …`: the text form, one line.
    pub fn text(&self) -> String {
        let mut line = clean(self.message);
        for (name, value) in self.fields() {
            let key = name.trim_start_matches("VMSHARE_").to_ascii_lowercase();
            line.push_str(&format!(" {key}={}", clean(value).replace(' ', "_")));
        }
        line
    }
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// journald's native protocol: one `KEY=value` line per field. Values are
/// made single-line first, so no value can forge another field.
pub fn journal_datagram(ident: &str, level: Level, event: &Event) -> Vec<u8> {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        out.push_str(name);
        out.push('=');
        out.push_str(&clean(value));
        out.push('\n');
    };
    field("MESSAGE", &event.text());
    field("PRIORITY", &(level as u8).to_string());
    field("SYSLOG_IDENTIFIER", ident);
    field("SYSLOG_FACILITY", "10");
    for (name, value) in event.fields() {
        field(name, value);
    }
    out.into_bytes()
}

/// Records `event`: journald if it listens, else syslog; and stderr (the
/// programs sshd runs have no other log).
pub fn emit(ident: &str, level: Level, event: &Event) {
    record(ident, level, event);
    eprintln!("{ident}: {}", event.text());
}

/// Records `event` in journald or syslog only (the daemon logs to stderr
/// through `tracing` itself).
pub fn record(ident: &str, level: Level, event: &Event) {
    emit_to(
        Path::new(JOURNAL_SOCKET),
        Path::new(SYSLOG_SOCKET),
        ident,
        level,
        event,
    );
}

/// Sends `event` to journald at `journal`, or else to syslog at `syslog`.
pub fn emit_to(journal: &Path, syslog: &Path, ident: &str, level: Level, event: &Event) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let sent = sock
        .send_to(&journal_datagram(ident, level, event), journal)
        .is_ok();
    if !sent {
        let pri = (10u8 << 3) | level as u8;
        let line = format!("<{pri}>{ident}[{}]: {}", std::process::id(), event.text());
        let _ = sock.send_to(line.as_bytes(), syslog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> Event<'static> {
        Event {
            kind: Some(Kind::Login),
            owner: "alice",
            guest: "bob",
            fingerprint: "SHA256:abc",
            remote: "192.0.2.7",
            session: "s1-2",
            message: "guest login",
        }
    }

    #[test]
    fn text_form_carries_every_field() {
        assert_eq!(
            login().text(),
            "guest login event=login owner=alice guest=bob fingerprint=SHA256:abc remote=192.0.2.7 session=s1-2"
        );
    }

    #[test]
    fn journal_form_has_queryable_fields() {
        let d = String::from_utf8(journal_datagram("vmshare-pam", Level::Info, &login())).unwrap();
        for line in [
            "VMSHARE_EVENT=login",
            "VMSHARE_OWNER=alice",
            "VMSHARE_GUEST=bob",
            "VMSHARE_FINGERPRINT=SHA256:abc",
            "VMSHARE_REMOTE=192.0.2.7",
            "VMSHARE_SESSION=s1-2",
            "SYSLOG_IDENTIFIER=vmshare-pam",
            "PRIORITY=6",
        ] {
            assert!(d.lines().any(|l| l == line), "{line} missing in {d}");
        }
    }

    #[test]
    fn newlines_cannot_forge_fields() {
        let e = Event {
            kind: Some(Kind::Refusal),
            owner: "alice\nVMSHARE_GUEST=mallory",
            ..Event::default()
        };
        let d = journal_datagram("x", Level::Warning, &e);
        let text = String::from_utf8_lossy(&d);
        assert!(
            !text.lines().any(|l| l.starts_with("VMSHARE_GUEST")),
            "{text}"
        );
        assert!(text
            .lines()
            .any(|l| l == "VMSHARE_OWNER=alice VMSHARE_GUEST=mallory"));
    }

    #[test]
    fn reaches_journald_or_falls_back_to_syslog() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        let syslog = dir.path().join("log");
        let syslog_sock = UnixDatagram::bind(&syslog).unwrap();
        // No journald: the syslog line arrives.
        emit_to(&journal, &syslog, "vmshare-pam", Level::Info, &login());
        let mut buf = [0u8; 4096];
        let n = syslog_sock.recv(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]);
        assert!(line.starts_with("<86>vmshare-pam["), "{line}");
        assert!(line.ends_with(
            "owner=alice guest=bob fingerprint=SHA256:abc remote=192.0.2.7 session=s1-2"
        ));
        // journald listening: it gets the native datagram instead.
        let journal_sock = UnixDatagram::bind(&journal).unwrap();
        emit_to(&journal, &syslog, "vmshare-pam", Level::Info, &login());
        let n = journal_sock.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("VMSHARE_OWNER=alice\n"));
    }
}
