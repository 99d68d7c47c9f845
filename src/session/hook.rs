//! The PAM session hook, run by `pam_exec.so` in sshd's session stack.
//!
//! On `open_session` it tells an owner's own login (passes untouched) from a
//! guest's. A guest session is first confined and recorded, then the grant
//! is checked again against the current grant file: a revoke either lands
//! before that check (the login is refused) or after the record exists (the
//! daemon kills it). On `close_session` it forgets the record.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::grant::limits::{guest_notice, Limits};
use crate::grant::policy::line_in_lines;
use crate::session::backend::{self, Login};
pub use crate::session::classify::{
    classify, parse_auth_info, AuthKey, Decision, OwnerKeys, Refusal,
};
use crate::store;
use crate::store::config::Config;
use crate::store::lookup::owner_key_line;
use crate::store::records::{self, SessionRecord};
use crate::sys::accounts::SystemAccounts;
use crate::sys::as_user;
use crate::sys::log::audit;
use crate::sys::log::syslog::Level;
use crate::sys::owners_group;
use crate::sys::procfs;

const IDENT: &str = "vmshare-pam";

/// What the hook reads from its environment at `open_session`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Env {
    /// `PAM_TYPE`, as pam_exec sets it.
    pub pam_type: String,
    pub user: String,
    pub rhost: String,
    /// sshd's `SSH_CONNECTION` (client address and port, server address
    /// and port): the address when `PAM_RHOST` is a host name.
    pub connection: String,
    /// sshd's `SSH_AUTH_INFO_0`: the keys that authenticated.
    pub auth_info: String,
    /// pam_systemd's `XDG_SESSION_ID`.
    pub logind_session: Option<String>,
}

/// Whether a name belongs to PAM, sshd or logind: pam_exec passes the PAM
/// environment (where `pam_env user_readenv=1` puts what a guest wrote in
/// `~/.pam_environment`) ahead of its own variables, so such a name seen
/// twice means someone tried to forge it.
fn is_guarded(name: &[u8]) -> bool {
    name.starts_with(b"PAM_") || name.starts_with(b"SSH_") || name.starts_with(b"XDG_")
}

/// Reads the hook's variables from `vars` (the process environment, in
/// order). Refuses a guarded name that appears more than once, or a value
/// that is not UTF-8.
pub fn read_env<I>(vars: I) -> Result<Env, String>
where
    I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
{
    use std::os::unix::ffi::OsStrExt;
    let mut seen = std::collections::HashSet::new();
    let mut env = Env::default();
    for (name, value) in vars {
        let bytes = name.as_bytes();
        if !is_guarded(bytes) {
            continue;
        }
        if !seen.insert(bytes.to_vec()) {
            return Err(format!(
                "{} is set more than once in the PAM environment (forged, e.g. by ~/.pam_environment)",
                name.to_string_lossy()
            ));
        }
        let field = match bytes {
            b"PAM_TYPE" => &mut env.pam_type,
            b"PAM_USER" => &mut env.user,
            b"PAM_RHOST" => &mut env.rhost,
            b"SSH_CONNECTION" => &mut env.connection,
            b"SSH_AUTH_INFO_0" => &mut env.auth_info,
            b"XDG_SESSION_ID" => {
                let id = value
                    .into_string()
                    .map_err(|_| "XDG_SESSION_ID is not UTF-8".to_string())?;
                env.logind_session = Some(id).filter(|s| !s.is_empty());
                continue;
            }
            _ => continue,
        };
        *field = value
            .into_string()
            .map_err(|v| format!("{} is not UTF-8: {v:?}", name.to_string_lossy()))?;
    }
    Ok(env)
}

/// Which PAM call this run serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Open,
    Close,
}

/// The hook's arguments: the mode (`open_session` / `close_session`, as the
/// PAM line's `type=` option ran it) and `--config PATH`.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// `None` for a PAM line from before the mode was an argument.
    pub mode: Option<Mode>,
    pub config: Option<PathBuf>,
}

pub fn parse_args(args: &[std::ffi::OsString]) -> Result<Args, String> {
    let mut parsed = Args {
        mode: None,
        config: None,
    };
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let mode = match arg.to_str() {
            Some("--config") => {
                let path = rest.next().ok_or("--config needs a path")?;
                parsed.config = Some(PathBuf::from(path));
                continue;
            }
            Some("open_session") => Mode::Open,
            Some("close_session") => Mode::Close,
            _ => return Err(format!("unexpected argument {arg:?}")),
        };
        if parsed.mode.replace(mode).is_some() {
            return Err("the mode is given twice".into());
        }
    }
    Ok(parsed)
}

/// The mode to run in: the argument; without one (an older PAM line), a
/// `PAM_TYPE` that was read once. A `PAM_TYPE` that disagrees with the
/// argument is refused.
pub fn resolve_mode(args: &Args, env: &Result<Env, String>) -> Result<Option<Mode>, String> {
    let from_env = match env.as_ref().map(|e| e.pam_type.as_str()) {
        Ok("open_session") => Some(Mode::Open),
        Ok("close_session") => Some(Mode::Close),
        Ok(_) => None,
        Err(e) if args.mode.is_none() => return Err(e.clone()),
        Err(_) => args.mode,
    };
    match (args.mode, from_env) {
        (Some(arg), Some(env)) if arg != env => Err(format!(
            "PAM_TYPE says {env:?} but the hook was run for {arg:?}"
        )),
        (Some(arg), _) => Ok(Some(arg)),
        (None, env) => Ok(env),
    }
}

/// Runs the hook; the one place where outcomes become the exit code PAM sees.
pub fn run(args: Vec<std::ffi::OsString>) -> ExitCode {
    // The helper that reads the owner's key files as the owner.
    if args.get(1).is_some_and(|a| a == as_user::READ_FLAG) {
        return as_user::serve(&args);
    }
    // The `admin` check of the sudo, su and pkexec stacks.
    if args
        .get(1)
        .is_some_and(|a| a == crate::session::admin::MODE)
    {
        return crate::session::admin::run(&args);
    }
    let env = read_env(std::env::vars_os());
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => return refuse_unparsed(&format!("bad arguments: {e}")),
    };
    let mode = match resolve_mode(&args, &env) {
        Ok(m) => m,
        Err(e) => return refuse_unparsed(&e),
    };
    match mode {
        // close_session reads nothing from the environment: what a session
        // is comes from its record, made at open.
        Some(Mode::Close) => {
            close_session(args.config);
            ExitCode::SUCCESS
        }
        Some(Mode::Open) => match env {
            Ok(env) => open_session(args.config, &env),
            Err(e) => refuse(&Env::default(), "", e),
        },
        None => ExitCode::SUCCESS,
    }
}

/// Refuses a run whose mode or environment cannot be trusted: at an open,
/// the session fails; at a close, nothing is done.
fn refuse_unparsed(why: &str) -> ExitCode {
    crate::sys::log::syslog::log(IDENT, Level::Error, &format!("refused: {why}"));
    ExitCode::FAILURE
}

fn open_session(config_path: Option<PathBuf>, env: &Env) -> ExitCode {
    let keys = parse_auth_info(&env.auth_info);
    let (config, lines) = match Config::load(config_path.as_deref()) {
        Ok(c) => {
            let lines = lines_of_keys(&c, &env.user, &keys);
            (c, lines)
        }
        // Without configuration nothing can be granted, but the owner's
        // own key still gets in (held in the default state dir).
        Err(e) => (Config::default(), Err(format!("bad configuration: {e}"))),
    };
    if env.user == crate::portal::ACCOUNT {
        return match open_portal(&config, env, &keys) {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => refuse(env, "", why),
        };
    }
    let owner = owner_keys_of(&config, &env.user);
    // A guest's login: the guest and the key that holds the grant (and
    // ends the session when it goes).
    let login = match classify(&keys, &lines, &owner) {
        Decision::Deny(why) => return refuse(env, "", why.to_string()),
        Decision::Owner(_) => None,
        Decision::Guest { guest, key } => Some((guest, key)),
    };
    // A login whose ssh client runs inside a guest session (through a
    // forwarded agent, or a key the owner keeps on this host) is that
    // guest's.
    let origin = match monitor() {
        Ok(m) => nested_origin(&config, m.pid),
        Err(_) => None,
    };
    match (login, origin) {
        (Some((guest, _)), Some(parent)) if parent.guest != guest => {
            let why = format!(
                "a login from inside guest {}'s session with guest {guest}'s key",
                parent.guest
            );
            refuse(env, &guest, why)
        }
        (Some((guest, key)), _) => match admit_guest(&config, env, &guest, &key, &key) {
            Ok(limits) => {
                tell_guest(env, &guest, &limits);
                ExitCode::SUCCESS
            }
            Err(e) => refuse(env, &guest, e),
        },
        // The owner's own key (or no key) used from inside a guest's
        // session: the guest's login, held to the guest's grant with the
        // key the guest's own session authenticated with.
        (None, Some(parent)) => {
            let grant = AuthKey {
                algorithm: parent.key_algorithm.clone(),
                blob: parent.key_blob.clone(),
            };
            let used = keys.first().cloned().unwrap_or_else(|| grant.clone());
            match admit_guest(&config, env, &parent.guest, &grant, &used) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => refuse(env, &parent.guest, e),
            }
        }
        (None, None) => ExitCode::SUCCESS,
    }
}

/// A login to the guest portal account: one plain key, some guest's (any
/// status), recorded apart from guest sessions so that the daemon can tell
/// which key a portal session logged in with. The portal account runs
/// nothing but the portal program, which ends itself; nothing is placed.
fn open_portal(config: &Config, env: &Env, keys: &[AuthKey]) -> Result<(), String> {
    let [key] = keys else {
        return Err("the portal takes exactly one public key".into());
    };
    let fingerprint = fingerprint(key)
        .filter(|_| !key.is_certificate())
        .ok_or("the portal takes a plain public key, not a certificate")?;
    let loaded = crate::store::source::load(&config.grants, &SystemAccounts);
    let known = loaded.grants().is_some_and(|g| {
        g.owners
            .iter()
            .flat_map(|o| &o.guests)
            .flat_map(|g| &g.keys)
            .any(|k| *k.fingerprint == *fingerprint)
    });
    if !known {
        return Err(format!(
            "portal login with {fingerprint}, which is no guest's key"
        ));
    }
    let monitor = monitor()?;
    let placement = crate::session::backend::Placement::Signal;
    let record = record_of(env, &monitor, "", fingerprint, key, placement);
    let dir = config.portal_dir();
    records::write(&dir, &record)
        .map_err(|e| format!("cannot record the portal session in {}: {e}", dir.display()))
}

/// What vmshare holds of the owner's own keys: held only while she is in
/// the owners' group (so sshd reads nothing in her home) and her held file
/// is there. Anything in doubt is "not held", which admits no guest.
fn owner_keys_of(config: &Config, owner: &str) -> OwnerKeys {
    let held = owners_group::is_member(owner).and_then(|member| {
        if !member {
            return Err(format!("not in group {}", owners_group::GROUP));
        }
        store::owner_keys::read(&config.state_dir, owner)?.ok_or_else(|| "no held file".into())
    });
    match held {
        Ok(held) => OwnerKeys::Held(held.lines.into_iter().map(|l| l.blob).collect()),
        Err(why) => {
            crate::sys::log::syslog::log(
                IDENT,
                Level::Info,
                &format!("{owner}'s keys are not held by vmshare ({why}): no guest gets in"),
            );
            OwnerKeys::NotHeld
        }
    }
}

/// The owner's current lines for these keys, expired ones too (so an
/// expired guest's key is known, and refused): through the snapshot's
/// index, one line per key, so a login costs the same at any number of
/// guests. `Err` as for `owner_lines`: grant nothing.
fn lines_of_keys(config: &Config, owner: &str, keys: &[AuthKey]) -> Result<String, String> {
    let mut lines = String::new();
    for key in keys.iter().filter(|k| !k.is_certificate()) {
        let found = owner_key_line(
            config,
            owner,
            &key.algorithm,
            &key.blob,
            None,
            &SystemAccounts,
        )?;
        lines.push_str(&found.lines);
        if !lines.is_empty() && !lines.ends_with('\n') {
            lines.push('\n');
        }
    }
    Ok(lines)
}

/// The one-line notice for a guest's login, on stdout: the PAM line's
/// `pam_exec … stdout` hands it to sshd, which shows it before the shell
/// of an interactive login (with a terminal and no command) only, like the
/// message of the day; commands, scp and sftp get nothing extra.
fn tell_guest(env: &Env, guest: &str, limits: &Limits) {
    use std::io::Write;
    // The address this connection reached: where the portal is too.
    let host = env
        .connection
        .split_ascii_whitespace()
        .nth(2)
        .unwrap_or("HOST");
    let text = guest_notice(guest, &env.user, limits, unix_now(), host);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// The client's address as sshd gave it: `PAM_RHOST` (set by sshd from
/// the connection, not forgeable through the PAM environment) unless
/// `UseDNS` made it a name; then `SSH_CONNECTION`'s. The two must agree
/// when both are addresses.
pub fn client_address(env: &Env) -> Result<Option<std::net::IpAddr>, String> {
    let connected = env.connection.split_ascii_whitespace().next();
    let connected_ip = connected.and_then(|a| a.parse::<std::net::IpAddr>().ok());
    match (env.rhost.parse::<std::net::IpAddr>().ok(), connected_ip) {
        (Some(rhost), Some(conn)) if rhost != conn => Err(format!(
            "PAM_RHOST {rhost} and SSH_CONNECTION {conn} disagree about the client"
        )),
        (Some(ip), _) | (None, Some(ip)) => Ok(Some(ip)),
        (None, None) => Ok(None),
    }
}

/// The guest's grant for `key` in `lines`, held to its limits at `now` for
/// a client at `ip`: the guest's name and limits, `Ok(None)` if the key is
/// nobody's now, or why the limits refuse the login.
pub fn grant_now(
    lines: &str,
    key: &AuthKey,
    now: i64,
    ip: Option<std::net::IpAddr>,
) -> Result<Option<(String, Limits)>, String> {
    let Some(line) = line_in_lines(lines, &key.algorithm, &key.blob) else {
        return Ok(None);
    };
    let limits = line.limits().ok_or_else(|| {
        format!(
            "guest {}'s key line has options vmshare did not write",
            line.guest
        )
    })?;
    limits
        .check(now, ip)
        .map_err(|breach| format!("guest {}: {breach}", line.guest))?;
    Ok(Some((line.guest.to_string(), limits)))
}

/// The guest session holding the ssh client of this connection, when that
/// client runs on this host.
fn nested_origin(config: &Config, monitor: i32) -> Option<SessionRecord> {
    // With no guest session recorded there is none to be inside, and the
    // search for the client (every process's descriptors) is not made.
    let (records, _) = records::list(&config.sessions_dir());
    if records.is_empty() {
        return None;
    }
    let clients = crate::sys::sockets::local_clients(monitor);
    clients
        .iter()
        .find_map(|&pid| crate::session::membership::session_of(&records, pid).cloned())
}

/// Refuses the session (of `guest`, when known): audited, and the
/// connection dropped.
fn refuse(env: &Env, guest: &str, why: String) -> ExitCode {
    // The first key's (a certificate's CA).
    let fingerprint = parse_auth_info(&env.auth_info)
        .iter()
        .find_map(fingerprint)
        .unwrap_or_default();
    audit::emit(
        IDENT,
        Level::Warning,
        &audit::Event {
            kind: Some(audit::Kind::Refusal),
            owner: &env.user,
            guest,
            fingerprint: &fingerprint,
            remote: &env.rhost,
            message: &format!("guest session refused: {why}"),
            ..audit::Event::default()
        },
    );
    end_connection();
    ExitCode::FAILURE
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Drops the refused connection. A failed PAM session alone does not:
/// sshd logs it and keeps the connection open with no command run (OpenSSH
/// 9.2 and 10.0 alike). So the hook ends the connection's privileged
/// process and everything under it (never itself, never anything outside
/// that tree).
fn end_connection() {
    let Ok(monitor) = monitor() else {
        return;
    };
    // Only ever sshd's own per-connection process.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", monitor.pid)).unwrap_or_default();
    // OpenSSH 9.8 and later name it `sshd-session`.
    if !matches!(comm.trim_end(), "sshd" | "sshd-session") {
        return;
    }
    crate::sys::kill::kill_tree(&monitor, std::process::id() as i32);
}

/// The monitor process this hook serves: our parent, sshd's privileged
/// per-connection process (`sshd: USER [priv]`; from OpenSSH 9.8 on it is
/// the `sshd-session` program, titled `sshd-session: USER [priv]`).
fn monitor() -> Result<procfs::Stat, String> {
    let ppid = nix::unistd::getppid().as_raw();
    procfs::stat(ppid).map_err(|e| format!("cannot read the sshd monitor process {ppid}: {e}"))
}

/// The `SHA256:` fingerprint the audit trail names a key by: the key's
/// own, or for a certificate its CA's.
fn fingerprint(key: &AuthKey) -> Option<String> {
    if key.is_certificate() {
        return crate::grant::key::certificate_authority_fingerprint(&key.algorithm, &key.blob);
    }
    crate::grant::key::parse_key(&format!("{} {}", key.algorithm, key.blob))
        .ok()
        .map(|k| k.fingerprint.to_string())
}

/// The record of this connection's session: a guest's (with the key that
/// holds the grant), or a portal session's (no guest).
fn record_of(
    env: &Env,
    monitor: &procfs::Stat,
    guest: &str,
    fingerprint: String,
    key: &AuthKey,
    placement: crate::session::backend::Placement,
) -> SessionRecord {
    let uid = nix::unistd::User::from_name(&env.user)
        .ok()
        .flatten()
        .map_or(u32::MAX, |u| u.uid.as_raw());
    SessionRecord {
        id: session_id(monitor),
        owner: env.user.clone(),
        guest: guest.to_string(),
        fingerprint,
        key_algorithm: key.algorithm.clone(),
        key_blob: key.blob.clone(),
        remote: env.rhost.clone(),
        since: unix_now(),
        monitor_pid: monitor.pid,
        monitor_start: monitor.start,
        uid,
        placement,
    }
}

fn session_id(monitor: &procfs::Stat) -> String {
    format!("s{}-{}", monitor.pid, monitor.start)
}

/// Confines and records the session, then checks the grant once more, with
/// its limits; returns them.
///
/// `key` is the guest's granted key, by which the session is judged from
/// then on; `authenticated`, the key the login used (the same, unless the
/// owner's own key was used from inside a guest session). The record names
/// the authenticated key's fingerprint.
fn admit_guest(
    config: &Config,
    env: &Env,
    guest: &str,
    key: &AuthKey,
    authenticated: &AuthKey,
) -> Result<Limits, String> {
    let monitor = monitor()?;
    let id = session_id(&monitor);
    let fingerprint = fingerprint(authenticated).unwrap_or_default();
    let logind_session = env.logind_session.clone();
    let backend = backend::for_login(config, logind_session.as_deref())?;
    let placement = backend.place(&Login {
        id: &id,
        monitor: &monitor,
        hook: std::process::id() as i32,
    })?;
    let record = record_of(env, &monitor, guest, fingerprint.clone(), key, placement);
    let dir = config.sessions_dir();
    records::write(&dir, &record)
        .map_err(|e| format!("cannot record session in {}: {e}", dir.display()))?;
    // The re-check: the record exists now, so a revoke from here on is the
    // daemon's to enforce; one that already happened is seen here.
    let still = client_address(env).and_then(|ip| {
        lines_of_keys(config, &env.user, std::slice::from_ref(key))
            .and_then(|lines| grant_now(&lines, key, unix_now(), ip))
    });
    match still {
        Ok(Some((g, limits))) if g == guest => {
            audit::emit(
                IDENT,
                Level::Info,
                &audit::Event {
                    kind: Some(audit::Kind::Login),
                    owner: &env.user,
                    guest,
                    fingerprint: &fingerprint,
                    remote: &env.rhost,
                    session: &id,
                    message: "guest login",
                },
            );
            Ok(limits)
        }
        other => {
            let _ = records::remove(&dir, &id);
            Err(match other {
                Err(e) => e,
                _ => format!("guest {guest}'s access was revoked during login"),
            })
        }
    }
}

/// Forgets the session's record, unless processes of it outlive the login
/// (`setsid nohup …`): then the record stays, so a revoke still ends them,
/// and the daemon forgets it once the group is empty.
fn close_session(config_path: Option<PathBuf>) {
    let (Ok(config), Ok(monitor)) = (Config::load(config_path.as_deref()), monitor()) else {
        return;
    };
    let id = session_id(&monitor);
    let _ = records::remove(&config.portal_dir(), &id);
    let dir = config.sessions_dir();
    let Ok(record) = records::read(&dir.join(SessionRecord::file_name(&id))) else {
        return;
    };
    let login = Login {
        id: &id,
        monitor: &monitor,
        hook: std::process::id() as i32,
    };
    let lingering = record.placement.backend().outlives_login(&record, &login);
    let message = if lingering {
        "guest logged out; processes remain and stay confined"
    } else {
        let _ = records::remove(&dir, &id);
        "guest logged out"
    };
    audit::emit(
        IDENT,
        Level::Info,
        &audit::Event {
            kind: Some(audit::Kind::Logout),
            owner: &record.owner,
            guest: &record.guest,
            fingerprint: &record.fingerprint,
            remote: &record.remote,
            session: &id,
            message,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        list.iter().map(|(n, v)| (n.into(), v.into())).collect()
    }

    #[test]
    fn environment_is_read_once_per_name() {
        let env = read_env(vars(&[
            ("HOME", "/home/alice"),
            ("SSH_AUTH_INFO_0", "publickey ssh-ed25519 A"),
            ("XDG_SESSION_ID", "4"),
            ("PAM_USER", "alice"),
            ("PAM_RHOST", "192.0.2.1"),
            ("PAM_TYPE", "open_session"),
        ]))
        .unwrap();
        assert_eq!(env.pam_type, "open_session");
        assert_eq!(env.user, "alice");
        assert_eq!(env.auth_info, "publickey ssh-ed25519 A");
        assert_eq!(env.logind_session.as_deref(), Some("4"));
    }

    #[test]
    fn forged_duplicates_are_refused() {
        // What ~/.pam_environment puts ahead of pam_exec's own variables.
        for forged in [
            "PAM_TYPE",
            "SSH_AUTH_INFO_0",
            "PAM_USER",
            "XDG_SESSION_ID",
            "SSH_CONNECTION",
        ] {
            let e = read_env(vars(&[
                (forged, "x"),
                ("PAM_TYPE", "close_session"),
                (forged, "y"),
            ]))
            .unwrap_err();
            assert!(e.contains(forged), "{e}");
        }
        // Other names may repeat: they are not read.
        assert!(read_env(vars(&[("LANG", "C"), ("LANG", "C.UTF-8")])).is_ok());
    }

    #[test]
    fn the_mode_comes_from_the_argument() {
        let args = |list: &[&str]| -> Vec<std::ffi::OsString> {
            std::iter::once("vmshare-pam")
                .chain(list.iter().copied())
                .map(Into::into)
                .collect()
        };
        let open = parse_args(&args(&["open_session", "--config", "/c"])).unwrap();
        assert_eq!(open.mode, Some(Mode::Open));
        assert_eq!(open.config, Some(PathBuf::from("/c")));
        assert!(parse_args(&args(&["open_session", "close_session"])).is_err());
        assert!(parse_args(&args(&["--config"])).is_err());
        assert!(parse_args(&args(&["bogus"])).is_err());

        let env = |t: &str| {
            Ok(Env {
                pam_type: t.into(),
                ..Env::default()
            })
        };
        // The argument wins; a PAM_TYPE that disagrees is refused.
        assert_eq!(
            resolve_mode(&open, &env("open_session")),
            Ok(Some(Mode::Open))
        );
        assert!(resolve_mode(&open, &env("close_session")).is_err());
        // A forged environment does not stop a run whose mode is known.
        assert_eq!(
            resolve_mode(&open, &Err("dup".into())),
            Ok(Some(Mode::Open))
        );
        // An older PAM line: PAM_TYPE, only if it was read once.
        let legacy = parse_args(&args(&[])).unwrap();
        assert_eq!(
            resolve_mode(&legacy, &env("close_session")),
            Ok(Some(Mode::Close))
        );
        assert!(resolve_mode(&legacy, &Err("dup".into())).is_err());
        assert_eq!(resolve_mode(&legacy, &env("")), Ok(None));
    }
}
