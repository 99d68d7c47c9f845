//! A guest leaving from inside their session, with proof that this guest
//! wants to. Guests share the owner's account, so anything one of them
//! plants (`~/.ssh/rc`, `~/.bashrc`, a process injecting keystrokes) runs
//! in another's session, with that session's forwarded agent too. What such
//! code cannot do is read what is written to the session's own terminal:
//! the output side of a pty reaches only the holder of its master, sshd.
//! (A pty the session makes itself — `script`, tmux, a program wrapping the
//! CLI — is refused: code in the session holds its master.)
//! So `leave` writes a one-time code to the pty that sshd allocated for the
//! caller's connection, and only that code, sent back from the same session
//! within [`CODE_LIFETIME`], makes the guest `left`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::control::Response;
use crate::grant::lifecycle::Change;
use crate::store::config::Config;
use crate::store::records::SessionRecord;
use crate::sys::log::audit;
use crate::sys::{procfs, tty};

/// How long a code shown on a terminal stays good.
pub const CODE_LIFETIME: Duration = Duration::from_secs(120);

/// How long a `leave` waits for another edit of the grant file to finish:
/// below the client's own timeout, so the guest hears "busy" rather than a
/// timeout.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// What the typed code was checked against, per session id.
#[derive(Debug, Default)]
pub struct Confirmations {
    pending: BTreeMap<String, Pending>,
}

#[derive(Debug)]
struct Pending {
    code: String,
    until: Instant,
}

/// Why a typed code does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No code was shown for this session (or it was used up).
    NotAsked,
    Expired,
    WrongCode,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::NotAsked => "no confirmation code was asked for in this session",
            Refusal::Expired => "the confirmation code has expired",
            Refusal::WrongCode => "that is not the code shown on your terminal",
        }
    }
}

impl Confirmations {
    pub const fn new() -> Self {
        Confirmations {
            pending: BTreeMap::new(),
        }
    }

    /// Remembers `code` for `session`, replacing an earlier one; forgets
    /// codes that have expired.
    pub fn issue(&mut self, session: &str, code: String, now: Instant) {
        self.pending.retain(|_, p| p.until > now);
        let until = now + CODE_LIFETIME;
        self.pending
            .insert(session.to_string(), Pending { code, until });
    }

    /// Checks a typed code. A code is good for one try: right or wrong, it
    /// is gone afterwards. Only the digits of `typed` count.
    pub fn confirm(&mut self, session: &str, typed: &str, now: Instant) -> Result<(), Refusal> {
        let pending = self.pending.remove(session).ok_or(Refusal::NotAsked)?;
        if now >= pending.until {
            return Err(Refusal::Expired);
        }
        let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
        if digits(typed) != digits(&pending.code) {
            return Err(Refusal::WrongCode);
        }
        Ok(())
    }
}

/// Eight decimal digits from `random`, shown as `1234-5678`.
pub fn code_from(random: u64) -> String {
    let n = random % 100_000_000;
    format!("{:04}-{:04}", n / 10_000, n % 10_000)
}

/// What the daemon writes to the guest's terminal.
pub fn terminal_text(owner: &str, guest: &str, code: &str) -> String {
    let minutes = CODE_LIFETIME.as_secs() / 60;
    format!(
        "\r\nvmshare: a request to make guest {guest} leave {owner}'s VM came from this session.\r\n\
         vmshare: if you want to leave, type this code when asked: {code}\r\n\
         vmshare: (good for {minutes} minutes; if you did not ask to leave, type nothing)\r\n"
    )
}

static PENDING: Mutex<Confirmations> = Mutex::new(Confirmations::new());

fn pending() -> std::sync::MutexGuard<'static, Confirmations> {
    // A panic while holding the lock leaves the map usable.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The ptys sshd allocated for the connection of `record`, while its
/// monitor is still that process.
fn session_ptys(record: &SessionRecord) -> Vec<u32> {
    let alive = || procfs::is_alive(record.monitor_pid, record.monitor_start);
    if !alive() {
        return Vec::new();
    }
    let ptys = tty::sshd_ptys(record.monitor_pid);
    if alive() {
        ptys
    } else {
        Vec::new()
    }
}

/// `leave`: shows a new code on the terminal of the caller's SSH login and
/// asks for it back. The caller's controlling terminal must be a pty sshd
/// allocated for this session's connection: a pty made inside the session
/// (`script`, tmux, a program wrapping the CLI) has a master that code in
/// the session holds, and could read the code back.
pub fn start(record: &SessionRecord, caller: i32) -> Response {
    let refuse = |why: &str| {
        refused(record, why);
        Response::Error {
            message: format!(
                "cannot leave: {why}. Leaving needs the code that vmshare shows on the \
                 terminal of your own SSH login: log in with a terminal (ssh -t …) and run \
                 `vmshare leave` at its prompt, not inside tmux or screen. The VM's operator \
                 can also run `vmshare leave {} {}`",
                record.owner, record.guest
            ),
        }
    };
    let Some(pty) = tty::controlling_pty(caller) else {
        return refuse("the request did not come from a terminal");
    };
    if !session_ptys(record).contains(&pty) {
        return refuse(&format!(
            "pts/{pty} is not a terminal sshd opened for this login"
        ));
    }
    let code = match random_u64() {
        Ok(n) => code_from(n),
        Err(e) => return refuse(&format!("no random code: {e}")),
    };
    let text = terminal_text(&record.owner, &record.guest, &code);
    let shown = tty::open_slave(pty).and_then(|mut t| t.write_all(text.as_bytes()));
    if let Err(e) = shown {
        return refuse(&format!("cannot show the code on pts/{pty}: {e}"));
    }
    pending().issue(&record.id, code, Instant::now());
    Response::Confirm {
        owner: record.owner.clone(),
        guest: record.guest.clone(),
        expires_in: CODE_LIFETIME.as_secs(),
    }
}

/// `confirm_leave`: with the right code, the guest becomes `left`. Returns
/// a reason to re-apply the grant file when it changed.
pub fn finish(
    config: &Config,
    record: &SessionRecord,
    typed: &str,
) -> (Response, Option<&'static str>) {
    if let Err(refusal) = pending().confirm(&record.id, typed, Instant::now()) {
        refused(record, refusal.as_str());
        let message = format!(
            "cannot leave: {}; {} stays. Run `vmshare leave` again for a new code",
            refusal.as_str(),
            record.guest
        );
        return (Response::Error { message }, None);
    }
    let change = Change::Leave {
        owner: record.owner.clone(),
        guest: record.guest.clone(),
    };
    let accounts = crate::sys::accounts::SystemAccounts;
    match crate::store::edit::edit_file_within(&config.grants, &change, &accounts, LOCK_WAIT) {
        Ok(_) => {
            super::audit_event(
                &audit::Event {
                    kind: Some(audit::Kind::Leave),
                    owner: &record.owner,
                    guest: &record.guest,
                    fingerprint: &record.fingerprint,
                    remote: &record.remote,
                    session: &record.id,
                    message: "guest left the shared VM",
                },
                "",
            );
            let left = Response::Left {
                owner: record.owner.clone(),
                guest: record.guest.clone(),
            };
            (left, Some("guest left"))
        }
        Err(e) => {
            let message = format!("cannot leave: {e}");
            (Response::Error { message }, None)
        }
    }
}

fn refused(record: &SessionRecord, why: &str) {
    warn!(
        owner = %record.owner,
        guest = %record.guest,
        session = %record.id,
        "leave refused: {why}"
    );
}

fn random_u64() -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_good_once_for_its_session_until_it_expires() {
        let t0 = Instant::now();
        let mut c = Confirmations::new();
        c.issue("s1", "1234-5678".into(), t0);
        assert_eq!(c.confirm("s2", "1234-5678", t0), Err(Refusal::NotAsked));
        assert_eq!(c.confirm("s1", "12345678\n", t0), Ok(()));
        assert_eq!(c.confirm("s1", "1234-5678", t0), Err(Refusal::NotAsked));

        c.issue("s1", "1234-5678".into(), t0);
        assert_eq!(c.confirm("s1", "1234-5679", t0), Err(Refusal::WrongCode));
        assert_eq!(
            c.confirm("s1", "1234-5678", t0),
            Err(Refusal::NotAsked),
            "a wrong guess uses the code up"
        );

        c.issue("s1", "1234-5678".into(), t0);
        assert_eq!(c.confirm("s1", "", t0), Err(Refusal::WrongCode));

        c.issue("s1", "1111-1111".into(), t0);
        c.issue("s1", "2222-2222".into(), t0);
        assert_eq!(c.confirm("s1", "1111-1111", t0), Err(Refusal::WrongCode));

        c.issue("s1", "1234-5678".into(), t0);
        let late = t0 + CODE_LIFETIME;
        assert_eq!(c.confirm("s1", "1234-5678", late), Err(Refusal::Expired));
    }

    #[test]
    fn expired_codes_are_forgotten_when_new_ones_come() {
        let t0 = Instant::now();
        let mut c = Confirmations::new();
        c.issue("old", "1".into(), t0);
        c.issue("new", "2".into(), t0 + CODE_LIFETIME);
        assert_eq!(c.pending.len(), 1);
    }

    #[test]
    fn codes_are_eight_digits() {
        assert_eq!(code_from(0), "0000-0000");
        assert_eq!(code_from(12_345_678), "1234-5678");
        assert_eq!(code_from(u64::MAX), "0955-1615");
        let text = terminal_text("alice", "carol", "1234-5678");
        assert!(text.contains("guest carol leave alice's VM"));
        assert!(text.contains("1234-5678"));
    }
}
