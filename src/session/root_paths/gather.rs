//! Asking the host: sudo itself, the rules files, the account database.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::store::config::Config;
use crate::sys::accounts::SystemAccounts;

use super::{
    find, refusal, sudo_build, HostFacts, OwnerFacts, RootPath, RulesFile, SudoBuild, DOAS_CONF,
    POLKIT_RULE_DIRS,
};

/// The sudo programs looked for, first found wins.
const SUDO: [&str; 2] = ["/usr/bin/sudo", "/usr/local/bin/sudo"];

/// How long sudo may take to answer (it may ask LDAP or sssd).
const SUDO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest rules file read (doas.conf, a polkit rules file).
const MAX_RULES_BYTES: u64 = 1 << 20;

impl HostFacts {
    /// Asks this host: `sudo -V`, [`DOAS_CONF`], [`POLKIT_RULE_DIRS`].
    pub fn gather() -> HostFacts {
        let sudo = match SUDO.iter().find(|p| Path::new(p).exists()) {
            None => SudoBuild::Absent,
            // sudo tells its settings and others' rules to root alone.
            Some(_) if !nix::unistd::geteuid().is_root() => {
                SudoBuild::Unknown("only root can ask sudo, and vmshare runs without root".into())
            }
            Some(sudo) => match run_sudo(sudo, &["-V"]) {
                Ok(text) => sudo_build(&text),
                Err(why) => SudoBuild::Unknown(why),
            },
        };
        let doas = read_rules(Path::new(DOAS_CONF)).transpose();
        let mut polkit = Vec::new();
        for dir in POLKIT_RULE_DIRS {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    match entries
                        .map(|e| e.map(|e| e.path()))
                        .collect::<Result<Vec<_>, _>>()
                    {
                        Ok(mut paths) => {
                            paths.retain(|p| p.extension().is_some_and(|e| e == "rules"));
                            paths.sort();
                            polkit.extend(paths.iter().filter_map(|p| read_rules(p).transpose()));
                        }
                        Err(e) => polkit.push(Err(format!("cannot read {dir}: {e}"))),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => polkit.push(Err(format!("cannot read {dir}: {e}"))),
            }
        }
        HostFacts { sudo, doas, polkit }
    }
}

impl OwnerFacts {
    /// Asks this host about local account `name`; `None` if there is no
    /// such account (an owner that is not one is inert anyway).
    pub fn gather(name: &str, host: &HostFacts) -> Result<Option<OwnerFacts>, String> {
        use nix::unistd::{getgrouplist, Group, User};
        let account = match User::from_name(name) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("looking up account {name:?}: {e}")),
        };
        let c_name = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
        let gids = getgrouplist(&c_name, account.gid)
            .map_err(|e| format!("looking up the groups of {name}: {e}"))?;
        let mut groups = Vec::new();
        for gid in gids {
            let group = Group::from_gid(gid).ok().flatten();
            groups.push((group.map(|g| g.name).unwrap_or_default(), gid.as_raw()));
        }
        let sudo_list = match (&host.sudo, SUDO.iter().find(|p| Path::new(p).exists())) {
            (SudoBuild::Absent, _) | (_, None) => Ok(String::new()),
            _ if !nix::unistd::geteuid().is_root() => Err("only root can ask sudo".into()),
            (_, Some(sudo)) => run_sudo(sudo, &["-n", "-l", "-U", name]),
        };
        Ok(Some(OwnerFacts {
            name: name.to_string(),
            uid: account.uid.as_raw(),
            groups,
            sudo_list,
        }))
    }
}

/// Every ungated way to root of local account `owner`, asking this host.
pub fn of_owner(host: &HostFacts, owner: &str) -> Vec<RootPath> {
    match OwnerFacts::gather(owner, host) {
        Ok(Some(facts)) => find(host, &facts),
        Ok(None) => Vec::new(),
        Err(why) => vec![RootPath::Unknown {
            via: "account",
            why,
        }],
    }
}

/// A rules file's text; `None` if it does not exist.
fn read_rules(path: &Path) -> Result<Option<RulesFile>, String> {
    let shown = path.display();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    let mut bytes = Vec::new();
    file.take(MAX_RULES_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_RULES_BYTES {
        return Err(format!("{shown} is larger than {MAX_RULES_BYTES} bytes"));
    }
    Ok(Some(RulesFile {
        path: shown.to_string(),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }))
}

/// Runs sudo with `args` in the C locale, never prompting, within
/// [`SUDO_TIMEOUT`]; its stdout, or why not.
fn run_sudo(sudo: &str, args: &[&str]) -> Result<String, String> {
    let shown = format!("sudo {}", args.join(" "));
    let mut child = Command::new(sudo)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let (tx, rx) = mpsc::channel();
    for (n, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(MAX_RULES_BYTES).read_to_end(&mut bytes);
            }
            let _ = tx.send((n, bytes));
        });
    }
    let deadline = Instant::now() + SUDO_TIMEOUT;
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((0, bytes)) => stdout = Some(bytes),
            Ok((_, bytes)) => stderr = Some(bytes),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{shown}` took longer than {SUDO_TIMEOUT:?}"));
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for `{shown}`: {e}"))?;
    let text = |b: Option<Vec<u8>>| String::from_utf8_lossy(&b.unwrap_or_default()).into_owned();
    if !status.success() {
        return Err(format!(
            "`{shown}` failed ({status}): {}",
            text(stderr).trim()
        ));
    }
    Ok(text(stdout))
}

/// Why `invite` or `accept` must not give `guest` access to `owner`'s
/// account: the owner becomes root where the admin check cannot see, and
/// the guest is not to have `admin = true` (neither `--admin` given nor
/// already so in the grant file). `None`: go ahead.
pub fn refuse_without_admin(
    config: &Config,
    owner: &str,
    guest: &str,
    admin: bool,
) -> Option<String> {
    let loaded = crate::store::source::load(&config.grants, &SystemAccounts);
    let already = loaded
        .grants()
        .and_then(|g| g.owner(owner))
        .and_then(|o| o.guest(guest))
        .is_some_and(|g| g.admin);
    if admin || already {
        return None;
    }
    let paths = of_owner(&HostFacts::gather(), owner);
    (!paths.is_empty()).then(|| refusal(owner, &paths))
}
