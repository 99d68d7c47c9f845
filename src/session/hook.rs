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
use crate::grant::policy::{guest_in_lines, line_in_lines, KeyLine};
use crate::session::backend::{self, Login};
use crate::session::owner_keys::{self, Client, When};
use crate::session::provenance::{fingerprint, Provenance};
use crate::store::config::Config;
use crate::store::lookup::{owner_key_line, owner_lines};
use crate::store::records::{self, SessionRecord};
use crate::sys::accounts::SystemAccounts;
use crate::sys::as_user::{self, Reader, UserFile};
use crate::sys::log::audit;
use crate::sys::log::syslog::Level;
use crate::sys::procfs;

const IDENT: &str = "vmshare-pam";

/// One public key from `SSH_AUTH_INFO_0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthKey {
    pub algorithm: String,
    pub blob: String,
}

impl AuthKey {
    pub fn is_certificate(&self) -> bool {
        self.algorithm.contains("-cert-")
    }
}

/// The public keys that authenticated, from sshd's `SSH_AUTH_INFO_0`: one
/// line per method, `publickey ALGORITHM BASE64 …` for keys.
pub fn parse_auth_info(info: &str) -> Vec<AuthKey> {
    info.lines()
        .filter_map(|line| {
            let mut words = line.split_ascii_whitespace();
            if words.next()? != "publickey" {
                return None;
            }
            let algorithm = words.next()?;
            let blob = words.next()?;
            let sane = |s: &str| {
                !s.is_empty()
                    && s.len() <= 16 * 1024
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=@.-_".contains(&b))
            };
            (sane(algorithm) && sane(blob)).then(|| AuthKey {
                algorithm: algorithm.to_string(),
                blob: blob.to_string(),
            })
        })
        .collect()
}

/// What to do with a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not a guest: the owner's own login, or a method vmshare never grants.
    Owner(&'static str),
    /// A guest currently granted access with this key.
    Guest {
        guest: String,
        key: AuthKey,
    },
    /// A key the key ledger names as this guest's, granted to nobody now
    /// (laundered into the owner's files, or planted there): the guest's
    /// login if the guest still has access, refused if not.
    Ledger {
        guest: String,
        key: AuthKey,
    },
    Deny(String),
}

/// Decides from the authenticating keys, the owner's current vmshare lines
/// (`Err` if the grant file cannot be trusted), and whether sshd would have
/// let a key in through the owner's own key files.
///
/// A key granted to a guest right now makes the login that guest's,
/// whatever the owner's files say: a guest runs as the owner and can write
/// those files. So does a key the key ledger (`ledger`: the guest it names
/// for a key) gives to a guest, granted or not. Only when no key is a
/// guest's does the owner's own key pass, and then every key must be the
/// owner's.
pub fn classify(
    keys: &[AuthKey],
    lines: &Result<String, String>,
    ledger: &dyn Fn(&AuthKey) -> Option<String>,
    is_owners_own: &dyn Fn(&AuthKey) -> bool,
) -> Decision {
    // vmshare never grants certificates: sshd let those in on its own,
    // through a `cert-authority` line. The ledger may still know the CA.
    let plain: Vec<&AuthKey> = keys.iter().filter(|k| !k.is_certificate()).collect();
    let all: Vec<&AuthKey> = keys.iter().collect();
    if let Ok(lines) = lines {
        let granted: Vec<(&str, &AuthKey)> = plain
            .iter()
            .filter_map(|k| guest_in_lines(lines, &k.algorithm, &k.blob).map(|g| (g, *k)))
            .collect();
        if let Some(&(guest, key)) = granted.first() {
            // Refused rather than recorded: a session record names one
            // guest and one key, and the daemon ends the session when that
            // grant goes. A login that took two guests' keys (sshd's
            // `AuthenticationMethods publickey,publickey`) would outlive
            // the other guest's revoke. Refusing is fail-closed and leaves
            // the records as they are.
            if let Some((other, _)) = granted.iter().find(|(g, _)| *g != guest) {
                return Decision::Deny(two_guests(guest, other));
            }
            if let Some(other) = other_guest_in_ledger(&all, guest, ledger) {
                return Decision::Deny(two_guests(guest, &other));
            }
            return Decision::Guest {
                guest: guest.to_string(),
                key: key.clone(),
            };
        }
    }
    // No key is granted now. One the ledger knows is a guest's wherever
    // sshd found it (a certificate, by its CA).
    if let Some((key, guest)) = all.iter().find_map(|k| ledger(k).map(|g| (*k, g))) {
        if let Some(other) = other_guest_in_ledger(&all, &guest, ledger) {
            return Decision::Deny(two_guests(&guest, &other));
        }
        return Decision::Ledger {
            guest,
            key: key.clone(),
        };
    }
    if plain.is_empty() {
        return Decision::Owner("no plain public key authenticated this session");
    }
    // Only the owner's own files can have let them in; any other key was
    // revoked between sshd's lookup and here.
    match plain.iter().find(|k| !is_owners_own(k)) {
        None => Decision::Owner("the authenticating key is the owner's own"),
        Some(key) => Decision::Deny(match lines {
            Ok(_) => format!(
                "key {} {}… is neither the owner's nor granted to any guest now",
                key.algorithm,
                key.blob.chars().take(16).collect::<String>()
            ),
            Err(e) => e.clone(),
        }),
    }
}

fn two_guests(one: &str, other: &str) -> String {
    format!("keys of two guests ({one} and {other}) authenticated one login")
}

/// A guest other than `guest` that the ledger names for one of `keys`.
fn other_guest_in_ledger(
    keys: &[&AuthKey],
    guest: &str,
    ledger: &dyn Fn(&AuthKey) -> Option<String>,
) -> Option<String> {
    keys.iter()
        .filter_map(|k| ledger(k))
        .find(|g| g.as_str() != guest)
}

/// The owner's own key files, expanded like sshd's `AuthorizedKeysFile`.
pub fn owner_key_files(patterns: &[String], user: &str, home: &str) -> Vec<PathBuf> {
    patterns
        .iter()
        .map(|p| {
            let mut out = String::new();
            let mut chars = p.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('h') => out.push_str(home),
                    Some('u') => out.push_str(user),
                    Some('%') => out.push('%'),
                    Some(other) => {
                        out.push('%');
                        out.push(other);
                    }
                    None => out.push('%'),
                }
            }
            let path = PathBuf::from(out);
            if path.is_absolute() {
                path
            } else {
                PathBuf::from(home).join(path)
            }
        })
        .collect()
}

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
            Err(e) => finish(&Env::default(), Decision::Deny(e)),
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
    let config = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            // Without configuration nothing can be granted, but the owner's
            // own key still gets in (and a key the ledger at its default
            // place gives to a guest does not).
            let fallback = Config::default();
            let owners = owners_own_checker(&fallback, env);
            let provenance = Provenance::new(&fallback, &env.user);
            let why = Err(format!("bad configuration: {e}"));
            return match classify(&keys, &why, &|k| provenance.guest_of(k), &owners) {
                Decision::Ledger { guest, .. } => refuse(env, &guest, format!("{e}")),
                decision => finish(env, decision),
            };
        }
    };
    let owners = owners_own_checker(&config, env);
    let provenance = Provenance::new(&config, &env.user);
    let lines = lines_of_keys(&config, &env.user, &keys);
    let decision = classify(&keys, &lines, &|k| provenance.guest_of(k), &owners);
    // A guest's login: the guest, the key that holds the grant (and ends
    // the session when it goes), and the key that authenticated.
    let login = match decision {
        Decision::Deny(why) => return finish(env, Decision::Deny(why)),
        Decision::Owner(_) => None,
        Decision::Guest { guest, key } => Some((guest, key.clone(), key)),
        Decision::Ledger { guest, key } => match granted_key_of(&config, &env.user, &guest) {
            Ok(Some(grant)) => Some((guest, grant, key)),
            Ok(None) => {
                let why = format!(
                    "the key is guest {guest}'s (key ledger), and {guest} has no access now"
                );
                return refuse(env, &guest, why);
            }
            Err(e) => return refuse(env, &guest, e),
        },
    };
    // A login whose ssh client runs inside a guest session (through a
    // forwarded agent, or a key left in the owner's home) is that guest's.
    let origin = match monitor() {
        Ok(m) => nested_origin(&config, m.pid),
        Err(_) => None,
    };
    match (login, origin) {
        (Some((guest, ..)), Some(parent)) if parent.guest != guest => finish(
            env,
            Decision::Deny(format!(
                "a login from inside guest {}'s session with guest {guest}'s key",
                parent.guest
            )),
        ),
        (Some((guest, grant, key)), _) => {
            match admit_guest(&config, env, &guest, &grant, Some((&key, &provenance))) {
                Ok(limits) => {
                    tell_guest(env, &guest, &limits);
                    ExitCode::SUCCESS
                }
                Err(e) => refuse(env, &guest, e),
            }
        }
        // The owner's own key (or no key) used from inside a guest's session:
        // the guest's login, held to the guest's grant with the key the
        // guest's own session authenticated with.
        (None, Some(parent)) => {
            let key = AuthKey {
                algorithm: parent.key_algorithm.clone(),
                blob: parent.key_blob.clone(),
            };
            match admit_guest(&config, env, &parent.guest, &key, None) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => refuse(env, &parent.guest, e),
            }
        }
        (None, None) => ExitCode::SUCCESS,
    }
}

/// One of `guest`'s keys granted now, if the guest has access: what a
/// login with a ledger key is held to.
fn granted_key_of(config: &Config, owner: &str, guest: &str) -> Result<Option<AuthKey>, String> {
    let answer = owner_lines(config, owner, &SystemAccounts)?;
    Ok(answer
        .lines
        .lines()
        .filter_map(KeyLine::parse)
        .find(|l| l.guest == guest)
        .map(|l| AuthKey {
            algorithm: l.algorithm.to_string(),
            blob: l.blob.to_string(),
        }))
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
    let text = guest_notice(guest, &env.user, limits, unix_now());
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

fn finish(env: &Env, decision: Decision) -> ExitCode {
    match decision {
        Decision::Owner(_) => ExitCode::SUCCESS,
        Decision::Guest { .. } => ExitCode::SUCCESS,
        Decision::Ledger { guest, .. } => refuse(env, &guest, "a key of the ledger".into()),
        Decision::Deny(why) => refuse(env, "", why),
    }
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

/// Most of an owner's key file the hook reads (sshd has no limit; a key
/// file this large is a mistake or an attack).
const OWNER_KEYS_LIMIT: u64 = 16 << 20;

/// Longest the hook waits for one of the owner's key files.
const OWNER_KEYS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether sshd would have let a key in through the owner's own key files
/// for this login. The files are read on first use only: a guest's login
/// never needs them.
fn owners_own_checker<'a>(config: &'a Config, env: &'a Env) -> impl Fn(&AuthKey) -> bool + 'a {
    let texts = std::cell::OnceCell::new();
    let client = client(env);
    let when = When {
        now: unix_now(),
        utc_offset: crate::sys::timezone::fixed_utc_offset(),
    };
    move |key: &AuthKey| {
        texts
            .get_or_init(|| owner_key_texts(config, &env.user))
            .iter()
            .any(|text: &String| owner_keys::accepts(text, key, &client, &when))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The client as sshd's `from=` sees it: `PAM_RHOST` (set by sshd, not
/// forgeable from the PAM environment) is the address unless `UseDNS`
/// made it a name; then the address comes from `SSH_CONNECTION`.
fn client(env: &Env) -> Client {
    let connected = env
        .connection
        .split_ascii_whitespace()
        .next()
        .and_then(|a| a.parse::<std::net::IpAddr>().ok());
    let ip = env.rhost.parse().ok().or(connected);
    let host = match (env.rhost.is_empty(), ip) {
        (true, Some(ip)) => ip.to_string(),
        _ => env.rhost.clone(),
    };
    Client { host, ip }
}

/// The texts of the owner's key files, each read as the owner. A file that
/// cannot be read, or that sshd would refuse, contributes nothing.
fn owner_key_texts(config: &Config, user: &str) -> Vec<String> {
    let Ok(Some(account)) = nix::unistd::User::from_name(user) else {
        return Vec::new();
    };
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            log_unread(user, &format!("cannot find this program: {e}"));
            return Vec::new();
        }
    };
    let reader = Reader {
        program: &program,
        uid: account.uid.as_raw(),
        gid: account.gid.as_raw(),
        home: &account.dir,
        limit: OWNER_KEYS_LIMIT,
        timeout: OWNER_KEYS_TIMEOUT,
    };
    owner_key_files(
        &config.authorized_keys_files,
        user,
        &account.dir.to_string_lossy(),
    )
    .iter()
    .filter_map(|file| match reader.read(file) {
        UserFile::Text(text) => Some(text),
        UserFile::Missing => None,
        UserFile::Refused(why) => {
            log_unread(user, &why);
            None
        }
    })
    .collect()
}

fn log_unread(user: &str, why: &str) {
    crate::sys::log::syslog::log(
        IDENT,
        Level::Notice,
        &format!("{user}'s key file does not count as the owner's: {why}"),
    );
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

fn session_id(monitor: &procfs::Stat) -> String {
    format!("s{}-{}", monitor.pid, monitor.start)
}

/// Confines and records the session, then checks the grant once more, with
/// its limits; returns them.
///
/// `key` is the guest's granted key, by which the session is judged from
/// then on; `authenticated`, the key the login used (when it is not the
/// owner's own, used from inside a guest session) and the ledger to record
/// it in. The record names the authenticated key's fingerprint.
fn admit_guest(
    config: &Config,
    env: &Env,
    guest: &str,
    key: &AuthKey,
    authenticated: Option<(&AuthKey, &Provenance)>,
) -> Result<Limits, String> {
    let monitor = monitor()?;
    let id = session_id(&monitor);
    let uid = nix::unistd::User::from_name(&env.user)
        .ok()
        .flatten()
        .map_or(u32::MAX, |u| u.uid.as_raw());
    let fingerprint = fingerprint(authenticated.map_or(key, |(k, _)| k)).unwrap_or_default();
    let logind_session = env.logind_session.clone();
    let backend = backend::for_login(config, logind_session.as_deref())?;
    let placement = backend.place(&Login {
        id: &id,
        monitor: &monitor,
        hook: std::process::id() as i32,
    })?;
    let record = SessionRecord {
        id: id.clone(),
        owner: env.user.clone(),
        guest: guest.to_string(),
        fingerprint: fingerprint.clone(),
        key_algorithm: key.algorithm.clone(),
        key_blob: key.blob.clone(),
        remote: env.rhost.clone(),
        since: unix_now(),
        monitor_pid: monitor.pid,
        monitor_start: monitor.start,
        uid,
        placement,
    };
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
            if let Some((k, provenance)) = authenticated {
                if let Err(e) = provenance.record(guest, k, unix_now()) {
                    let _ = records::remove(&dir, &id);
                    return Err(format!("cannot record the key in the key ledger: {e}"));
                }
            }
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

    /// [`classify`] with an empty ledger.
    fn classify_plain(
        keys: &[AuthKey],
        lines: &Result<String, String>,
        own: &dyn Fn(&AuthKey) -> bool,
    ) -> Decision {
        classify(keys, lines, &|_| None, own)
    }

    fn key(blob: &str) -> AuthKey {
        AuthKey {
            algorithm: "ssh-ed25519".into(),
            blob: blob.into(),
        }
    }

    #[test]
    fn auth_info_yields_public_keys_only() {
        let info = "publickey ssh-ed25519 AAAAC3Nza+/x=\npassword\npublickey bad key\\n\npublickey";
        assert_eq!(parse_auth_info(info), vec![key("AAAAC3Nza+/x=")]);
        assert!(parse_auth_info("").is_empty());
        assert!(parse_auth_info("keyboard-interactive\n").is_empty());
    }

    #[test]
    fn owners_own_key_passes_even_if_grant_file_is_broken() {
        let own = |_: &AuthKey| true;
        let d = classify_plain(&[key("A")], &Err("invalid".into()), &own);
        assert!(matches!(d, Decision::Owner(_)));
    }

    #[test]
    fn granted_guest_key_is_a_guest() {
        let lines = Ok("ssh-ed25519 A vmshare:bob\n".to_string());
        let d = classify_plain(&[key("A")], &lines, &|_| false);
        assert_eq!(
            d,
            Decision::Guest {
                guest: "bob".into(),
                key: key("A")
            }
        );
    }

    #[test]
    fn foreign_key_not_granted_is_denied() {
        // A guest key revoked between key lookup and session: not the
        // owner's, not granted now.
        let lines = Ok("ssh-ed25519 B vmshare:carol\n".to_string());
        assert!(matches!(
            classify_plain(&[key("A")], &lines, &|_| false),
            Decision::Deny(_)
        ));
        assert!(matches!(
            classify_plain(&[key("A")], &Err("bad".into()), &|_| false),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn no_key_or_certificate_is_not_ours() {
        assert!(matches!(
            classify_plain(&[], &Err("x".into()), &|_| false),
            Decision::Owner(_)
        ));
        let cert = AuthKey {
            algorithm: "ssh-ed25519-cert-v01@openssh.com".into(),
            blob: "A".into(),
        };
        assert!(matches!(
            classify_plain(std::slice::from_ref(&cert), &Err("x".into()), &|_| false),
            Decision::Owner(_)
        ));
        // Unless the ledger knows its CA (a planted cert-authority line).
        let ledger = |k: &AuthKey| k.is_certificate().then(|| "bob".to_string());
        let d = classify(&[cert], &Ok(String::new()), &ledger, &|_| false);
        assert!(
            matches!(&d, Decision::Ledger { guest, .. } if guest == "bob"),
            "{d:?}"
        );
    }

    #[test]
    fn a_granted_key_is_a_guest_even_in_the_owners_files() {
        // bob wrote his key into the owner's authorized_keys.
        let lines = Ok("ssh-ed25519 A vmshare:bob\n".to_string());
        let d = classify_plain(&[key("A")], &lines, &|_| true);
        assert!(matches!(d, Decision::Guest { guest, .. } if guest == "bob"));
    }

    #[test]
    fn every_authenticating_key_counts() {
        let lines = Ok(
            "ssh-ed25519 B vmshare:bob\nssh-ed25519 C vmshare:carol\nssh-ed25519 D vmshare:bob\n"
                .to_string(),
        );
        let own = |k: &AuthKey| k.blob == "O";
        // The owner's key first, a guest's second: still the guest's login.
        let d = classify_plain(&[key("O"), key("B")], &lines, &own);
        assert!(matches!(d, Decision::Guest { guest, key } if guest == "bob" && key.blob == "B"));
        // Two keys of one guest: that guest.
        let d = classify_plain(&[key("B"), key("D")], &lines, &own);
        assert!(matches!(d, Decision::Guest { guest, .. } if guest == "bob"));
        // Two guests' keys: refused, whatever else authenticated.
        for keys in [vec![key("B"), key("C")], vec![key("O"), key("C"), key("B")]] {
            let d = classify_plain(&keys, &lines, &own);
            assert!(
                matches!(&d, Decision::Deny(why) if why.contains("two guests")),
                "{d:?}"
            );
        }
        // No key granted: all must be the owner's.
        assert!(matches!(
            classify_plain(&[key("O"), key("X")], &lines, &own),
            Decision::Deny(_)
        ));
        assert!(matches!(
            classify_plain(&[key("O"), key("O")], &lines, &own),
            Decision::Owner(_)
        ));
    }

    #[test]
    fn a_ledger_key_is_the_guests_wherever_sshd_found_it() {
        // bob's key, revoked, still in alice's authorized_keys.
        let ledger = |k: &AuthKey| (k.blob == "B" || k.blob == "P").then(|| "bob".to_string());
        let own = |k: &AuthKey| k.blob != "X";
        let none = Ok(String::new());
        for lines in [&none, &Err("grant file invalid".to_string())] {
            let d = classify(&[key("B")], lines, &ledger, &own);
            assert!(
                matches!(&d, Decision::Ledger { guest, key } if guest == "bob" && key.blob == "B"),
                "{d:?}"
            );
            // With the owner's own key beside it: still bob's.
            let d = classify(&[key("O"), key("P")], lines, &ledger, &own);
            assert!(
                matches!(&d, Decision::Ledger { guest, .. } if guest == "bob"),
                "{d:?}"
            );
        }
        // Granted now to carol, but the ledger says bob's: not one guest.
        let lines = Ok("ssh-ed25519 C vmshare:carol\n".to_string());
        let d = classify(&[key("C"), key("B")], &lines, &ledger, &own);
        assert!(
            matches!(&d, Decision::Deny(why) if why.contains("two guests")),
            "{d:?}"
        );
        // A granted key the ledger also knows is the grant's guest.
        let lines = Ok("ssh-ed25519 B vmshare:bob\n".to_string());
        let d = classify(&[key("B")], &lines, &ledger, &own);
        assert!(
            matches!(&d, Decision::Guest { guest, .. } if guest == "bob"),
            "{d:?}"
        );
        // The owner's key the ledger does not know stays the owner's.
        assert!(matches!(
            classify(&[key("O")], &none, &ledger, &own),
            Decision::Owner(_)
        ));
    }

    #[test]
    fn the_client_address_comes_from_sshd() {
        let env = |rhost: &str, connection: &str| Env {
            rhost: rhost.into(),
            connection: connection.into(),
            ..Env::default()
        };
        let c = client(&env("192.0.2.1", "192.0.2.9 5000 192.0.2.2 22"));
        assert_eq!(
            (c.host.as_str(), c.ip),
            ("192.0.2.1", "192.0.2.1".parse().ok())
        );
        let c = client(&env("laptop.example.org", "192.0.2.9 5000 192.0.2.2 22"));
        assert_eq!(
            (c.host.as_str(), c.ip),
            ("laptop.example.org", "192.0.2.9".parse().ok())
        );
        let c = client(&env("", "2001:db8::1 5000 ::1 22"));
        assert_eq!(
            (c.host.as_str(), c.ip),
            ("2001:db8::1", "2001:db8::1".parse().ok())
        );
        assert_eq!(client(&env("", "")).ip, None);
    }

    #[test]
    fn key_file_patterns_expand_like_sshd() {
        let files = owner_key_files(
            &[
                ".ssh/authorized_keys".into(),
                "/etc/keys/%u".into(),
                "%h/k%%".into(),
            ],
            "alice",
            "/home/alice",
        );
        assert_eq!(
            files,
            [
                PathBuf::from("/home/alice/.ssh/authorized_keys"),
                PathBuf::from("/etc/keys/alice"),
                PathBuf::from("/home/alice/k%"),
            ]
        );
    }

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
