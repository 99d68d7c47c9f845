//! The guest portal: `ssh vmshare@HOST`, the guest's side of "Share VM".
//!
//! One service account, `vmshare`, whose login shell is this program and
//! whose home is root's, with nothing in it: no startup file of anyone's
//! runs. The key lookup answers for it with every guest's keys, each line
//! `restrict,pty,command="vmshare-portal FINGERPRINT"`, so sshd runs this
//! program for any request, with no forwarding of any kind. A guest sees
//! the invitations of the key it logged in with and answers them; the
//! daemon decides, from the PAM hook's record of which key logged in, and
//! applies the answer as the CLI would.

use std::ffi::OsString;
use std::io::{self, BufRead, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use crate::control::{self, Answer, Request, Response, Share};
use crate::grant::model::Status;
use crate::store::config::Config;

/// The portal's account.
pub const ACCOUNT: &str = "vmshare";

/// Where the portal program is installed (the account's shell, and the
/// forced command of its key lines).
pub const PROGRAM: &str = "/usr/libexec/vmshare/vmshare-portal";

/// The longest a portal session runs: answering takes a person a minute.
const LIMIT: Duration = Duration::from_secs(300);

/// The longest command or answer line taken.
const MAX_LINE: usize = 256;

/// What the portal takes, for its refusals.
const USAGE: &str =
    "the portal takes: list | accept OWNER | reject OWNER | leave OWNER (each with --json), or a terminal and no command";

/// The key lookup's line for one guest key of the portal account.
pub fn key_line(algorithm: &str, blob: &str, fingerprint: &str) -> String {
    format!("restrict,pty,command=\"{PROGRAM} {fingerprint}\" {algorithm} {blob} vmshare-portal\n")
}

/// What a guest asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// A terminal and no command: show and ask.
    Interactive,
    List,
    Answer(Answer, String),
}

/// A request the portal understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub verb: Verb,
    pub json: bool,
}

/// The fingerprint the forced command names: run as the account's shell
/// (`vmshare-portal -c "vmshare-portal SHA256:…"`) or directly.
pub fn fingerprint_of(args: &[OsString]) -> Result<String, String> {
    let words: Vec<String> = match args.get(1..).unwrap_or(&[]) {
        [flag, command] if flag == "-c" => command
            .to_str()
            .unwrap_or("")
            .split_ascii_whitespace()
            .skip(1)
            .map(String::from)
            .collect(),
        rest => rest
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    };
    match words.as_slice() {
        [fp] if is_fingerprint(fp) => Ok(fp.clone()),
        _ => Err("the portal runs only as its key lines' forced command".into()),
    }
}

fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}

/// Reads the client's request (`SSH_ORIGINAL_COMMAND`; `None` when it
/// asked for a shell).
pub fn parse_request(command: Option<&str>) -> Result<Asked, String> {
    let Some(command) = command.filter(|c| !c.trim().is_empty()) else {
        return Ok(Asked {
            verb: Verb::Interactive,
            json: false,
        });
    };
    if command.len() > MAX_LINE || command.chars().any(char::is_control) {
        return Err(format!("that is not a portal command; {USAGE}"));
    }
    let mut words: Vec<&str> = command.split_ascii_whitespace().collect();
    let json = words.contains(&"--json");
    words.retain(|w| *w != "--json");
    let first = words.first().copied().unwrap_or("");
    if first == "scp" || first.contains("sftp") || first == "rsync" {
        return Err("the portal offers no file transfer".into());
    }
    let verb = match words.as_slice() {
        ["list"] => Verb::List,
        [verb @ ("accept" | "reject" | "leave"), owner] => {
            crate::grant::parse::check_owner_name(owner)
                .map_err(|_| format!("`{owner}` is not an account name; {USAGE}"))?;
            let answer = match *verb {
                "accept" => Answer::Accept,
                "reject" => Answer::Reject,
                _ => Answer::Leave,
            };
            Verb::Answer(answer, owner.to_string())
        }
        [verb, ..] if verb.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            return Err(format!("`{verb}` is not a portal command; {USAGE}"))
        }
        _ => return Err(format!("that is not a portal command; {USAGE}")),
    };
    if json && verb == Verb::Interactive {
        return Err(format!("--json needs a command; {USAGE}"));
    }
    Ok(Asked { verb, json })
}

/// Runs the portal; the one place where outcomes become the exit code.
pub fn run(args: Vec<OsString>) -> ExitCode {
    let fingerprint = match fingerprint_of(&args) {
        Ok(f) => f,
        Err(e) => return refuse(&e),
    };
    let command = std::env::var("SSH_ORIGINAL_COMMAND").ok();
    let asked = match parse_request(command.as_deref()) {
        Ok(a) => a,
        Err(e) => return refuse(&e),
    };
    // A portal session ends itself, whatever the client does.
    std::thread::spawn(|| {
        std::thread::sleep(LIMIT);
        let _ = writeln!(
            io::stderr(),
            "\r\nvmshare: the portal's time is up; nothing more was changed"
        );
        std::process::exit(1);
    });
    let config = match Config::load(None) {
        Ok(c) => c,
        Err(e) => return refuse(&format!("the portal is not configured: {e}")),
    };
    let portal = Portal {
        socket: config.socket_path(),
        fingerprint,
    };
    let result = match &asked.verb {
        Verb::List => portal.list().and_then(|r| print_list(&r, asked.json)),
        Verb::Answer(answer, owner) => portal
            .answer(owner, *answer)
            .and_then(|r| print_answered(&r, asked.json)),
        Verb::Interactive => {
            if !io::IsTerminal::is_terminal(&io::stdin()) {
                return refuse(&format!("no terminal and no command; {USAGE}"));
            }
            portal.interact(&mut io::stdin().lock(), &mut io::stdout().lock())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => refuse(&e),
    }
}

fn refuse(why: &str) -> ExitCode {
    let _ = writeln!(io::stderr(), "vmshare: {why}");
    ExitCode::FAILURE
}

struct Portal {
    socket: std::path::PathBuf,
    fingerprint: String,
}

impl Portal {
    fn call(&self, request: &Request) -> Result<Response, String> {
        match control::call(&self.socket, request) {
            Ok(Response::Error { message }) => Err(message),
            Ok(r) => Ok(r),
            Err(e) => Err(format!(
                "the vmshare agent is not answering ({e}); try again in a moment"
            )),
        }
    }

    fn list(&self) -> Result<Response, String> {
        self.call(&Request::PortalList {
            fingerprint: self.fingerprint.clone(),
        })
    }

    fn answer(&self, owner: &str, answer: Answer) -> Result<Response, String> {
        self.call(&Request::PortalAnswer {
            fingerprint: self.fingerprint.clone(),
            owner: owner.to_string(),
            answer,
        })
    }

    /// Shows the invitations and asks about each pending one, then shows
    /// every share.
    fn interact(&self, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<(), String> {
        let Response::Shares {
            shares,
            managed_by_fleet,
        } = self.list()?
        else {
            return Err("unexpected answer from the agent".into());
        };
        let w = |out: &mut dyn Write, text: String| {
            write!(out, "{text}\r\n")
                .and_then(|()| out.flush())
                .map_err(|e| format!("writing to the terminal: {e}"))
        };
        let Some(first) = shares.first() else {
            return w(
                out,
                format!(
                    "Hello. No one on this VM has invited the key you logged in with ({}).",
                    self.fingerprint
                ),
            );
        };
        w(out, format!("Hello {}.", first.guest))?;
        if managed_by_fleet {
            w(out, "This VM's shares are managed by its fleet: answer invitations where they came from.".into())?;
        }
        for share in shares.iter().filter(|s| s.status == Status::Invited) {
            w(
                out,
                format!(
                    "{0} invited you to share {0}'s account on this VM{1}.",
                    share.owner,
                    limits_text(share)
                ),
            )?;
            if managed_by_fleet {
                continue;
            }
            let answer = ask(input, out, &share.owner)?;
            let Some(answer) = answer else {
                w(out, "Skipped; you can answer later.".into())?;
                continue;
            };
            match self.answer(&share.owner, answer) {
                Ok(r) => {
                    let mut text = String::new();
                    print_answered_to(&r, &mut text);
                    for line in text.lines() {
                        w(out, line.to_string())?;
                    }
                }
                Err(e) => w(out, format!("vmshare: {e}"))?,
            }
        }
        if let Ok(r) = self.list() {
            let mut text = String::new();
            list_to(&r, &mut text);
            for line in text.lines() {
                w(out, line.to_string())?;
            }
        }
        Ok(())
    }
}

/// Asks about one invitation until the answer is one of the three.
fn ask(
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    owner: &str,
) -> Result<Option<Answer>, String> {
    for _ in 0..3 {
        write!(
            out,
            "Accept {owner}'s invitation? [a]ccept / [r]eject / [s]kip: "
        )
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing to the terminal: {e}"))?;
        let line = read_line(input)?;
        match line.trim().to_ascii_lowercase().as_str() {
            "a" | "accept" | "y" | "yes" => return Ok(Some(Answer::Accept)),
            "r" | "reject" | "n" | "no" => return Ok(Some(Answer::Reject)),
            "s" | "skip" | "" => return Ok(None),
            _ => {
                let _ = write!(out, "\r\nPlease type a, r or s.\r\n");
            }
        }
    }
    Ok(None)
}

/// One line of at most [`MAX_LINE`] bytes; a closed terminal is an error
/// (nothing is answered).
fn read_line(input: &mut dyn BufRead) -> Result<String, String> {
    let mut bytes = Vec::new();
    let read = input
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut bytes)
        .map_err(|e| format!("reading the terminal: {e}"))?;
    if read == 0 {
        return Err("the terminal closed before an answer; nothing was changed".into());
    }
    if bytes.len() > MAX_LINE {
        return Err("that answer is too long; nothing was changed".into());
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.chars().filter(|c| !c.is_control()).collect())
}

fn limits_text(s: &Share) -> String {
    let mut parts = Vec::new();
    if let Some(at) = &s.expires {
        parts.push(format!("until {at}"));
    }
    if let Some(from) = &s.from {
        parts.push(format!("from {}", from.join(", ")));
    }
    if s.admin {
        parts.push("with admin rights".into());
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The host name to tell a guest to log in to: the address this
/// connection reached (sshd's `SSH_CONNECTION`), else this VM's name.
fn host() -> String {
    std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|c| c.split_ascii_whitespace().nth(2).map(String::from))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "HOST".into())
}

fn list_to(r: &Response, out: &mut String) {
    let Response::Shares {
        shares,
        managed_by_fleet,
    } = r
    else {
        return;
    };
    if shares.is_empty() {
        out.push_str("No share on this VM names the key you logged in with.\n");
        return;
    }
    out.push_str("Your shares on this VM:\n");
    for s in shares {
        let access = if s.access {
            "you can log in".to_string()
        } else if s.expired {
            "ended".into()
        } else if s.status == Status::Accepted && !s.sharing {
            "sharing is off".into()
        } else {
            "no access".into()
        };
        out.push_str(&format!(
            "  {} (as guest {}): {}, {access}{}\n",
            s.owner,
            s.guest,
            s.status,
            limits_text(s)
        ));
    }
    if *managed_by_fleet {
        out.push_str(
            "These shares are managed by the fleet: answer where the invitation came from.\n",
        );
    }
}

fn print_list(r: &Response, json: bool) -> Result<(), String> {
    if json {
        return print_json(r);
    }
    let mut text = String::new();
    list_to(r, &mut text);
    print!("{text}");
    Ok(())
}

fn print_answered_to(r: &Response, out: &mut String) {
    let Response::Answered {
        owner,
        status,
        changed,
        notes,
        ..
    } = r
    else {
        return;
    };
    let done = match (status, changed) {
        (_, false) => format!("Already {status} for {owner}; nothing changed."),
        (Status::Accepted, true) => format!("Accepted {owner}'s invitation."),
        (Status::Rejected, true) => format!("Rejected {owner}'s invitation."),
        (Status::Left, true) => format!("You left {owner}'s account; your sessions there end now."),
        (Status::Invited, true) => format!("{owner}: invited."),
    };
    out.push_str(&done);
    out.push('\n');
    for note in notes {
        out.push_str(&format!("Note: {note}.\n"));
    }
    if *status == Status::Accepted {
        let host = host();
        out.push_str(&format!(
            "Log in with: ssh {owner}@{host}\nor put this in your ~/.ssh/config and run `ssh {owner}-on-{host}`:\n  Host {owner}-on-{host}\n      HostName {host}\n      User {owner}\n"
        ));
    }
}

fn print_answered(r: &Response, json: bool) -> Result<(), String> {
    if json {
        return print_json(r);
    }
    let mut text = String::new();
    print_answered_to(r, &mut text);
    print!("{text}");
    Ok(())
}

fn print_json(r: &Response) -> Result<(), String> {
    let text = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn the_forced_command_names_the_key() {
        let args = |list: &[&str]| -> Vec<OsString> { list.iter().map(Into::into).collect() };
        let as_shell = args(&["vmshare-portal", "-c", &format!("{PROGRAM} {FP}")]);
        assert_eq!(fingerprint_of(&as_shell).unwrap(), FP);
        assert_eq!(fingerprint_of(&args(&["p", FP])).unwrap(), FP);
        for bad in [
            args(&["p"]),
            args(&["p", "-c", "/bin/sh -i"]),
            args(&["p", "-c", &format!("{PROGRAM} {FP} extra")]),
            args(&["p", "SHA256:short"]),
        ] {
            assert!(fingerprint_of(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_read_strictly() {
        let ok = |c: &str| parse_request(Some(c)).unwrap();
        assert_eq!(ok("list").verb, Verb::List);
        assert!(ok("list --json").json);
        assert_eq!(
            ok("accept alice").verb,
            Verb::Answer(Answer::Accept, "alice".into())
        );
        assert_eq!(
            ok("leave alice --json"),
            Asked {
                verb: Verb::Answer(Answer::Leave, "alice".into()),
                json: true
            }
        );
        assert_eq!(parse_request(None).unwrap().verb, Verb::Interactive);
        for (bad, said) in [
            ("internal-sftp", "no file transfer"),
            ("/usr/lib/openssh/sftp-server", "no file transfer"),
            ("scp -t /tmp", "no file transfer"),
            ("bash", "`bash` is not a portal command"),
            ("accept", "`accept` is not a portal command"),
            ("accept ../etc", "not an account name"),
            ("accept alice bob", "not a portal command"),
            ("list\u{1b}[2J", "not a portal command"),
        ] {
            let e = parse_request(Some(bad)).unwrap_err();
            assert!(e.contains(said), "{bad:?}: {e}");
        }
        assert!(parse_request(Some(&"x".repeat(MAX_LINE + 1))).is_err());
    }

    #[test]
    fn answers_at_the_prompt() {
        let mut out = Vec::new();
        for (typed, want) in [
            ("a\n", Some(Answer::Accept)),
            ("Reject\r\n", Some(Answer::Reject)),
            ("\n", None),
            ("what\nno\n", Some(Answer::Reject)),
            ("x\ny\nz\n", Some(Answer::Accept)),
            ("x\nx\nx\n", None),
        ] {
            let got = ask(&mut typed.as_bytes(), &mut out, "alice").unwrap();
            assert_eq!(got, want, "{typed:?}");
        }
        // A closed terminal answers nothing.
        assert!(ask(&mut "".as_bytes(), &mut out, "alice").is_err());
        let long = format!("{}\n", "a".repeat(MAX_LINE + 10));
        assert!(ask(&mut long.as_bytes(), &mut out, "alice").is_err());
    }
}
