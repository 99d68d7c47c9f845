//! `vmshare doctor`: is this host set up so that vmshare lets the right
//! guests in and ends their access when it should? Each check is a function
//! over what it inspects (the text of `sshd -T`, of PAM files, ...), so it is
//! tested without a host; `run` gathers the inputs.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::doctor_admin::{check_admin, read_stacks, AdminFacts};
use super::doctor_sshd::{check_owner, check_sshd, sshd_t, sshd_value};
use crate::grant::policy::Accounts;
use crate::session::backend::cgroup;
use crate::session::root_paths;
use crate::store::config::{Backend, Config};
use crate::store::source::{self, Outcome};
use crate::sys::accounts::SystemAccounts;
use crate::sys::fsutil;

/// What the PAM session hook runs.
pub const PAM_HOOK: &str = "/usr/libexec/vmshare/vmshare-pam";
const LIBEXEC_DIR: &str = "/usr/libexec/vmshare";
const PAM_DIR: &str = "/etc/pam.d";
/// Where packages ship PAM stacks that /etc/pam.d may override.
const VENDOR_PAM_DIR: &str = "/usr/lib/pam.d";

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Check this sshd configuration (`sshd -T -f PATH`) instead of the
    /// system's.
    #[arg(long, value_name = "PATH")]
    pub sshd_config: Option<PathBuf>,
    /// Directory of PAM service files [default: /etc/pam.d].
    #[arg(long, value_name = "DIR")]
    pub pam_dir: Option<PathBuf>,
    /// Where vmshare's helper programs are installed
    /// [default: /usr/libexec/vmshare].
    #[arg(long, value_name = "DIR")]
    pub libexec_dir: Option<PathBuf>,
    /// mountinfo to find cgroup v2 in [default: /proc/self/mountinfo].
    #[arg(long, value_name = "PATH", hide = true)]
    pub mountinfo: Option<PathBuf>,
}

/// How one check came out, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    /// Worth fixing; enforcement still works.
    Warning,
    /// Something that breaks guest access or its enforcement.
    Problem,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Warning => "warning",
            Verdict::Problem => "PROBLEM",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which check: `sshd`, `pam`, `programs`, `grants`, `daemon`, `cgroup`,
    /// `escapes`, `admin`.
    pub area: &'static str,
    pub verdict: Verdict,
    pub message: String,
    /// How to fix it; empty when all is well.
    pub fix: String,
}

pub(super) fn ok(area: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        area,
        verdict: Verdict::Ok,
        message: message.into(),
        fix: String::new(),
    }
}

pub(super) fn bad(
    area: &'static str,
    verdict: Verdict,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        area,
        verdict,
        message: message.into(),
        fix: fix.into(),
    }
}

/// One PAM configuration line, without its comment.
struct PamLine<'a> {
    number: usize,
    words: Vec<&'a str>,
}

fn pam_lines(text: &str) -> Vec<PamLine<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or("").trim();
            (!line.is_empty()).then(|| PamLine {
                number: i + 1,
                words: line.split_ascii_whitespace().collect(),
            })
        })
        .collect()
}

fn is_include(line: &PamLine, what: &str) -> bool {
    line.words.len() >= 2 && line.words[0] == "@include" && line.words[1] == what
}

fn module_of<'a>(line: &PamLine<'a>) -> Option<&'a str> {
    if line.words.first()?.starts_with('@') {
        return None;
    }
    // type control module: control may be `[...]` over several words.
    let mut rest = line.words.iter().skip(1);
    let control = rest.next()?;
    if control.starts_with('[') && !control.ends_with(']') {
        for w in rest.by_ref() {
            if w.ends_with(']') {
                break;
            }
        }
    }
    rest.next().copied()
}

fn is_pam_systemd(line: &PamLine) -> bool {
    module_of(line).is_some_and(|m| m.ends_with("pam_systemd.so"))
}

fn runs_hook(line: &PamLine) -> bool {
    module_of(line).is_some_and(|m| m.ends_with("pam_exec.so")) && line.words.contains(&PAM_HOOK)
}

/// (b) `/etc/pam.d/sshd` includes `vmshare` after the session stack, and
/// `/etc/pam.d/vmshare` runs the hook so that a failure denies. `None`: the
/// file is missing.
pub fn check_pam(pam_dir: &Path, sshd: Option<&str>, vmshare: Option<&str>) -> Vec<Finding> {
    let mut out = Vec::new();
    let sshd_path = pam_dir.join("sshd");
    let vmshare_path = pam_dir.join("vmshare");
    let (sshd_path, vmshare_path) = (sshd_path.display(), vmshare_path.display());
    match sshd {
        None => out.push(bad(
            "pam",
            Verdict::Problem,
            format!("{sshd_path} is missing: sshd runs no PAM session stack of its own"),
            "reinstall openssh-server's PAM file, then add `@include vmshare` after `@include common-session`",
        )),
        Some(text) => {
            let lines = pam_lines(text);
            let hook = lines
                .iter()
                .find(|l| is_include(l, "vmshare") || runs_hook(l));
            let common = lines.iter().find(|l| is_include(l, "common-session"));
            let last_systemd = lines.iter().rfind(|l| is_pam_systemd(l));
            match hook {
                None => out.push(bad(
                    "pam",
                    Verdict::Problem,
                    format!("{sshd_path} does not include vmshare: guest sessions are not checked, recorded or ended"),
                    "add the line `@include vmshare` after `@include common-session`",
                )),
                Some(h) => {
                    let mut misplaced = false;
                    if let Some(c) = common.filter(|c| c.number > h.number) {
                        misplaced = true;
                        out.push(bad(
                            "pam",
                            Verdict::Problem,
                            format!("{sshd_path}:{}: vmshare comes before `@include common-session` (line {})", h.number, c.number),
                            "move `@include vmshare` below `@include common-session`",
                        ));
                    }
                    if let Some(s) = last_systemd.filter(|s| s.number > h.number) {
                        misplaced = true;
                        out.push(bad(
                            "pam",
                            Verdict::Problem,
                            format!("{sshd_path}:{}: vmshare comes before pam_systemd (line {}), so the session is not yet in its logind scope", h.number, s.number),
                            "move `@include vmshare` below every pam_systemd line",
                        ));
                    }
                    if common.is_none() {
                        out.push(bad(
                            "pam",
                            Verdict::Warning,
                            format!("{sshd_path} has no `@include common-session`"),
                            "make sure `@include vmshare` comes after the session modules, pam_systemd included",
                        ));
                    }
                    if !misplaced {
                        out.push(ok("pam", format!("{sshd_path} includes vmshare after the session stack")));
                    }
                }
            }
        }
    }
    match vmshare {
        None => out.push(bad(
            "pam",
            Verdict::Problem,
            format!("{vmshare_path} is missing"),
            format!("install config/pam.d/vmshare as {vmshare_path}"),
        )),
        Some(text) => {
            check_hook_lines(&vmshare_path.to_string(), &pam_lines(text), &mut out);
        }
    }
    out
}

/// The suggested PAM line for the hook at session open.
const OPEN_LINE: &str = "session required pam_exec.so quiet stdout type=open_session /usr/libexec/vmshare/vmshare-pam open_session";

/// The hook's lines in `/etc/pam.d/vmshare`: one that runs it at session
/// open, told so by its argument (not by the PAM environment, which a guest
/// can write to), whose failure denies; one at close.
fn check_hook_lines(path: &str, lines: &[PamLine], out: &mut Vec<Finding>) {
    let hook_lines: Vec<&PamLine> = lines.iter().filter(|l| runs_hook(l)).collect();
    let has_arg = |l: &PamLine, arg: &str| {
        l.words
            .iter()
            .skip_while(|w| **w != PAM_HOOK)
            .any(|w| *w == arg)
    };
    let fix = format!("install config/pam.d/vmshare as {path}");
    let open = hook_lines.iter().find(|l| has_arg(l, "open_session"));
    let Some(l) = open.or(hook_lines.first()) else {
        out.push(bad(
            "pam",
            Verdict::Problem,
            format!("{path} does not run {PAM_HOOK} through pam_exec.so"),
            fix,
        ));
        return;
    };
    let kind = l.words[0].trim_start_matches('-');
    let control = l.words.get(1).copied().unwrap_or("");
    if kind != "session" {
        out.push(bad(
            "pam",
            Verdict::Problem,
            format!(
                "{path}:{}: the hook is a `{kind}` module; it must be `session`",
                l.number
            ),
            fix,
        ));
    } else if control.starts_with('[') {
        out.push(bad(
            "pam",
            Verdict::Warning,
            format!("{path}:{}: the hook has control `{control}…`; make sure a failure denies the session", l.number),
            format!("use `{OPEN_LINE}`"),
        ));
    } else if control != "required" && control != "requisite" {
        out.push(bad(
            "pam",
            Verdict::Problem,
            format!(
                "{path}:{}: the hook is `{control}`, so a refused guest session still opens",
                l.number
            ),
            format!("use `{OPEN_LINE}`"),
        ));
    } else if open.is_none() {
        out.push(bad(
            "pam",
            Verdict::Warning,
            format!(
                "{path}:{}: the hook is not told it runs at session open (no `open_session` argument), so it goes by PAM_TYPE from the PAM environment, which a guest's ~/.pam_environment can write to (the hook refuses a forged duplicate)",
                l.number
            ),
            fix,
        ));
    } else {
        out.push(ok(
            "pam",
            format!("{path} runs the session hook at open ({control})"),
        ));
        // pam_exec's own options come before the program's path.
        let stdout = l
            .words
            .iter()
            .take_while(|w| **w != PAM_HOOK)
            .any(|w| *w == "stdout");
        if !stdout {
            out.push(bad(
                "pam",
                Verdict::Warning,
                format!(
                    "{path}:{}: the hook runs without pam_exec's `stdout` option, so guests are not shown their notice (who they are, whose account, until when) at login",
                    l.number
                ),
                format!("use `{OPEN_LINE}`"),
            ));
        }
        if !hook_lines.iter().any(|l| has_arg(l, "close_session")) {
            out.push(bad(
                "pam",
                Verdict::Warning,
                format!("{path} does not run the hook at session close; records of ended sessions wait for the daemon to forget them"),
                fix,
            ));
        }
    }
}

/// (e) cgroup v2, from mountinfo text.
pub fn check_cgroup(mountinfo: &str, backend: Backend) -> Finding {
    match cgroup::cgroup2_mount_in(mountinfo) {
        Some(mount) => ok(
            "cgroup",
            format!("cgroup v2 is mounted at {}", mount.display()),
        ),
        None => {
            let (verdict, why) = match backend {
                Backend::Cgroup => (Verdict::Problem, "the configured cgroup backend cannot confine or end sessions"),
                Backend::Auto => (Verdict::Warning, "without logind, sessions are ended by signals, which miss processes that escape with setsid"),
                Backend::Logind | Backend::Signal => (Verdict::Warning, "the cgroup backend is unavailable"),
            };
            bad(
                "cgroup",
                verdict,
                format!("no cgroup v2 mount: {why}"),
                "mount cgroup2 (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with systemd.unified_cgroup_hierarchy=1",
            )
        }
    }
}

/// The helper programs sshd runs: present, executable and trusted the way
/// sshd demands (root-owned, no group- or world-writable directory above).
fn check_programs(dir: &Path) -> Vec<Finding> {
    ["vmshare-keys", "vmshare-pam"]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let fix = format!("install {name} as {} (root:root, 0755)", path.display());
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    return bad(
                        "programs",
                        Verdict::Problem,
                        format!("{}: {e}", path.display()),
                        fix,
                    )
                }
            };
            if let Err(why) = fsutil::check_trusted_file(&path, &meta)
                .and_then(|()| fsutil::check_trusted_dirs(&path))
            {
                return bad(
                    "programs",
                    Verdict::Problem,
                    format!("sshd will refuse to run it: {why}"),
                    fix,
                );
            }
            if meta.mode() & 0o111 == 0 {
                return bad(
                    "programs",
                    Verdict::Problem,
                    format!("{} is not executable", path.display()),
                    fix,
                );
            }
            ok("programs", format!("{} is installed", path.display()))
        })
        .collect()
}

/// (c) the grant file: trusted and valid.
fn check_grants(config: &Config) -> Vec<Finding> {
    let path = &config.grants;
    let loaded = source::load(path, &SystemAccounts);
    let mut out = Vec::new();
    match &loaded.outcome {
        Outcome::Missing => out.push(bad(
            "grants",
            Verdict::Warning,
            format!("{} is missing: nothing is shared", path.display()),
            "create it with `vmshare invite` / `vmshare sharing`, or install one (root:root, 0644)",
        )),
        Outcome::Invalid(errors) => {
            let first = errors
                .errors
                .first()
                .map(|d| d.in_file(path).to_string())
                .unwrap_or_default();
            let more = match errors.errors.len() {
                0 | 1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            out.push(bad(
                "grants",
                Verdict::Problem,
                format!("the grant file is invalid, so no guest gets in: {first}{more}"),
                "fix the file (`vmshare check` lists every error); it must be root-owned and not group/world writable",
            ));
        }
        Outcome::Valid { .. } => out.push(ok(
            "grants",
            format!("{} is trusted and valid", path.display()),
        )),
    }
    for note in loaded.notes() {
        out.push(bad(
            "grants",
            Verdict::Warning,
            note.in_file(path).to_string(),
            "remove the owner, or create the account",
        ));
    }
    out
}

/// What the host offers a guest (who runs as the owner) to keep access or
/// reach past its session. None of these stops enforcement; each is a way
/// around it that revoke cannot undo, so each is a warning.
pub struct HostFacts<'a> {
    /// `sshd -T` output, when sshd could be asked.
    pub sshd_t: Option<&'a str>,
    /// /proc/sys/kernel/yama/ptrace_scope, when Yama is there.
    pub ptrace_scope: Option<&'a str>,
    /// Owners whose sharing is on.
    pub sharing_owners: &'a [String],
    /// Whether systemd keeps an owner's user manager running while logged out.
    pub lingers: &'a dyn Fn(&str) -> bool,
}

pub fn check_escapes(facts: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    match facts.ptrace_scope.map(str::trim) {
        Some("1" | "2" | "3") => out.push(ok("escapes", "ptrace is limited to a process's own descendants (Yama)")),
        Some(scope) => out.push(bad(
            "escapes",
            Verdict::Warning,
            format!("kernel.yama.ptrace_scope is {scope}: a guest can attach to the owner's (and other guests') processes and act inside them"),
            "set `kernel.yama.ptrace_scope = 1` in /etc/sysctl.d/ and run `sysctl --system`",
        )),
        None => out.push(bad(
            "escapes",
            Verdict::Warning,
            "the kernel has no Yama ptrace restriction: a guest can attach to any process of the owner's account",
            "use a kernel with Yama (CONFIG_SECURITY_YAMA) and `kernel.yama.ptrace_scope = 1`",
        )),
    }
    if let Some(sshd_t) = facts.sshd_t {
        if sshd_value(sshd_t, "permituserrc") != Some("no") {
            out.push(bad(
                "escapes",
                Verdict::Warning,
                "PermitUserRC is on: a guest can plant ~/.ssh/rc, which runs at every later login of the account, the owner's and other guests' included",
                "set `PermitUserRC no` in sshd_config (owners lose ~/.ssh/rc too), then reload sshd",
            ));
        }
    }
    for owner in facts.sharing_owners {
        if (facts.lingers)(owner) {
            out.push(bad(
                "escapes",
                Verdict::Warning,
                format!("owner `{owner}` shares and has lingering on: jobs a guest starts in the owner's user manager keep running after logout"),
                format!("`loginctl disable-linger {owner}` unless the owner needs it"),
            ));
        }
    }
    out
}

/// (d) the daemon answers on its control socket.
fn check_daemon(config: &Config) -> Finding {
    let socket = config.socket_path();
    match UnixStream::connect(&socket) {
        Ok(_) => ok("daemon", format!("vmshared is listening on {}", socket.display())),
        Err(e) => bad(
            "daemon",
            Verdict::Problem,
            format!("vmshared is not reachable at {} ({e}): revoked guests' live sessions would not be ended", socket.display()),
            "start it: `systemctl enable --now vmshared`",
        ),
    }
}

/// Each owner of the grant file: sshd's settings for her, and whether
/// vmshare holds her keys.
fn check_owners(
    config: &Config,
    args: &DoctorArgs,
    grants: Option<&crate::grant::model::Grants>,
) -> Vec<Finding> {
    let exists = |name: &str| matches!(SystemAccounts.lookup(name), Ok(Some(_)));
    let mut out = Vec::new();
    for owner in grants.iter().flat_map(|g| &g.owners) {
        if !exists(&owner.name) {
            continue; // reported with the grant file: inert
        }
        let held = crate::sys::owners_group::is_member(&owner.name).and_then(|member| {
            if !member {
                return Err(format!(
                    "not in group {}: sshd reads her home key files, so her guests get no access",
                    crate::sys::owners_group::GROUP
                ));
            }
            match crate::store::owner_keys::read(&config.state_dir, &owner.name)? {
                Some(_) => Ok(()),
                None => Err("vmshare holds no keys for her, so her guests get no access".into()),
            }
        });
        match sshd_t(args.sshd_config.as_deref(), Some(&owner.name)) {
            Ok(text) => out.extend(check_owner(&owner.name, &text, &exists, &held)),
            Err(why) => out.push(bad(
                "sshd",
                Verdict::Problem,
                why,
                "fix sshd's configuration",
            )),
        }
    }
    out
}

fn read_optional(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

pub fn run(config: &Config, args: &DoctorArgs) -> ExitCode {
    let mut findings = Vec::new();
    let sshd_text = sshd_t(args.sshd_config.as_deref(), None);
    match &sshd_text {
        Ok(text) => findings.extend(check_sshd(text, &config.authorized_keys_files)),
        Err(why) => findings.push(bad(
            "sshd",
            Verdict::Problem,
            why,
            "install openssh-server and fix its configuration (`sshd -t` shows the error)",
        )),
    }
    let pam_dir = args
        .pam_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(PAM_DIR));
    match (
        read_optional(&pam_dir.join("sshd")),
        read_optional(&pam_dir.join("vmshare")),
    ) {
        (Ok(sshd), Ok(vmshare)) => {
            findings.extend(check_pam(&pam_dir, sshd.as_deref(), vmshare.as_deref()))
        }
        (Err(why), _) | (_, Err(why)) => findings.push(bad(
            "pam",
            Verdict::Problem,
            why,
            "make the PAM files readable",
        )),
    }
    let libexec = args
        .libexec_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(LIBEXEC_DIR));
    findings.extend(check_programs(&libexec));
    findings.extend(check_grants(config));
    findings.push(check_daemon(config));
    let mountinfo = args
        .mountinfo
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/mountinfo"));
    match std::fs::read_to_string(&mountinfo) {
        Ok(text) => findings.push(check_cgroup(&text, config.enforcement.backend)),
        Err(e) => findings.push(bad(
            "cgroup",
            Verdict::Warning,
            format!("cannot read {}: {e}", mountinfo.display()),
            "run doctor as root on the host",
        )),
    }
    let ptrace = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok();
    let loaded = source::load(&config.grants, &SystemAccounts);
    findings.extend(check_owners(config, args, loaded.grants()));
    let sharing: Vec<String> = match &loaded.outcome {
        Outcome::Valid { grants, .. } => grants
            .owners
            .iter()
            .filter(|o| o.sharing)
            .map(|o| o.name.clone())
            .collect(),
        _ => Vec::new(),
    };
    let lingers = |owner: &str| Path::new("/var/lib/systemd/linger").join(owner).exists();
    findings.extend(check_escapes(&HostFacts {
        sshd_t: sshd_text.as_deref().ok(),
        ptrace_scope: ptrace.as_deref(),
        sharing_owners: &sharing,
        lingers: &lingers,
    }));
    let systemd = crate::session::backend::logind::systemd_booted();
    let signal_backend = match config.enforcement.backend {
        Backend::Signal => true,
        Backend::Auto => !systemd && cgroup::session_root(config).is_none(),
        Backend::Cgroup | Backend::Logind => false,
    };
    let host = root_paths::HostFacts::gather();
    findings.extend(check_admin(&AdminFacts {
        stacks: &read_stacks(&pam_dir, Path::new(VENDOR_PAM_DIR)),
        grants: loaded.grants(),
        root_paths: &|owner| root_paths::of_owner(&host, owner),
        systemd,
        signal_backend,
    }));
    print!("{}", render(&findings));
    if findings.iter().any(|f| f.verdict == Verdict::Problem) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!(
            "{:<8} {:<8} {}\n",
            f.verdict.to_string(),
            f.area,
            f.message
        ));
        if !f.fix.is_empty() {
            out.push_str(&format!("{:<17} fix: {}\n", "", f.fix));
        }
    }
    let problems = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Problem)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Warning)
        .count();
    out.push_str(&format!("{problems} problem(s), {warnings} warning(s)\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(findings: &[Finding]) -> Vec<Verdict> {
        findings.iter().map(|f| f.verdict).collect()
    }

    fn problems(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.verdict != Verdict::Ok)
            .map(|f| format!("{}: {}", f.verdict, f.message))
            .collect()
    }

    const DEBIAN_SSHD: &str = "@include common-auth\naccount required pam_nologin.so\n@include common-account\nsession [success=ok ignore=ignore module_unknown=ignore default=bad] pam_selinux.so close\nsession required pam_loginuid.so\n@include common-session\nsession optional pam_motd.so motd=/run/motd.dynamic\n@include vmshare\n@include common-password\n";
    const VMSHARE: &str = include_str!("../../config/pam.d/vmshare");

    #[test]
    fn pam_good() {
        let f = check_pam(Path::new("/etc/pam.d"), Some(DEBIAN_SSHD), Some(VMSHARE));
        assert!(verdicts(&f).iter().all(|l| *l == Verdict::Ok), "{f:?}");
    }

    #[test]
    fn pam_broken_variants() {
        let dir = Path::new("/etc/pam.d");
        let check = |sshd: Option<&str>, vm: Option<&str>| problems(&check_pam(dir, sshd, vm));

        let e = check(
            Some(&DEBIAN_SSHD.replace("@include vmshare\n", "")),
            Some(VMSHARE),
        );
        assert!(e[0].contains("does not include vmshare"), "{e:?}");
        let e = check(
            Some(&DEBIAN_SSHD.replace("@include vmshare\n", "# @include vmshare\n")),
            Some(VMSHARE),
        );
        assert!(e[0].contains("does not include vmshare"), "{e:?}");

        let before = DEBIAN_SSHD.replace("@include vmshare\n", "").replace(
            "@include common-session\n",
            "@include vmshare\n@include common-session\n",
        );
        let e = check(Some(&before), Some(VMSHARE));
        assert!(e[0].contains("before `@include common-session`"), "{e:?}");

        let systemd_after = DEBIAN_SSHD.replace(
            "@include common-password\n",
            "session optional pam_systemd.so\n",
        );
        let e = check(Some(&systemd_after), Some(VMSHARE));
        assert!(e[0].contains("before pam_systemd"), "{e:?}");
        let systemd_before = DEBIAN_SSHD.replace(
            "@include vmshare\n",
            "-session optional pam_systemd.so\n@include vmshare\n",
        );
        assert!(check(Some(&systemd_before), Some(VMSHARE)).is_empty());

        let e = check(Some(DEBIAN_SSHD), None);
        assert!(e[0].contains("/etc/pam.d/vmshare is missing"), "{e:?}");
        let e = check(None, Some(VMSHARE));
        assert!(e[0].contains("/etc/pam.d/sshd is missing"), "{e:?}");

        let optional = VMSHARE.replace("session required", "session optional");
        let e = check(Some(DEBIAN_SSHD), Some(&optional));
        assert!(e[0].contains("is `optional`"), "{e:?}");
        let other = VMSHARE.replace("/usr/libexec/vmshare/vmshare-pam", "/usr/bin/true");
        let e = check(Some(DEBIAN_SSHD), Some(&other));
        assert!(e[0].contains("does not run"), "{e:?}");
        let account = VMSHARE.replace("session required", "account required");
        let e = check(Some(DEBIAN_SSHD), Some(&account));
        assert!(e[0].contains("must be `session`"), "{e:?}");

        // The line from before the mode was an argument: the hook goes by
        // PAM_TYPE, which a guest can write to.
        let legacy = "session required pam_exec.so quiet /usr/libexec/vmshare/vmshare-pam\n";
        let e = check(Some(DEBIAN_SSHD), Some(legacy));
        assert!(e[0].contains("no `open_session` argument"), "{e:?}");
        let no_close = VMSHARE
            .lines()
            .filter(|l| !l.contains("close_session"))
            .collect::<Vec<_>>()
            .join("\n");
        let e = check(Some(DEBIAN_SSHD), Some(&no_close));
        assert!(e[0].contains("not run the hook at session close"), "{e:?}");
        // Without `stdout` the guest's notice goes nowhere.
        let silent = VMSHARE.replace("quiet stdout type=open_session", "quiet type=open_session");
        assert_ne!(silent, VMSHARE);
        let e = check(Some(DEBIAN_SSHD), Some(&silent));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("without pam_exec's `stdout` option"), "{e:?}");
    }

    #[test]
    fn cgroup_found_or_not() {
        let hybrid = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(check_cgroup(hybrid, Backend::Cgroup).verdict, Verdict::Ok);
        let v1 = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(check_cgroup(v1, Backend::Cgroup).verdict, Verdict::Problem);
        assert_eq!(check_cgroup(v1, Backend::Auto).verdict, Verdict::Warning);
    }

    #[test]
    fn escapes_the_host_offers_are_warnings() {
        let sharing = vec!["alice".to_string(), "dave".to_string()];
        let lingers = |o: &str| o == "dave";
        let strict = "permituserrc no\nauthorizedkeysfile .ssh/authorized_keys\n";
        let f = check_escapes(&HostFacts {
            sshd_t: Some(strict),
            ptrace_scope: Some("1\n"),
            sharing_owners: &sharing,
            lingers: &|_| false,
        });
        assert!(f.iter().all(|f| f.verdict == Verdict::Ok), "{f:?}");

        let loose = "permituserrc yes\nauthorizedkeysfile .ssh/authorized_keys /etc/keys/%u\n";
        let f = check_escapes(&HostFacts {
            sshd_t: Some(loose),
            ptrace_scope: Some("0"),
            sharing_owners: &sharing,
            lingers: &lingers,
        });
        let warned = |what: &str| {
            f.iter()
                .any(|x| x.verdict == Verdict::Warning && x.message.contains(what))
        };
        assert!(warned("ptrace_scope is 0"), "{f:?}");
        assert!(warned("PermitUserRC is on"), "{f:?}");
        assert!(warned("owner `dave` shares and has lingering on"), "{f:?}");
        assert!(!warned("owner `alice`"), "{f:?}");
        assert!(f.iter().all(|x| x.verdict != Verdict::Problem));
        // PermitUserRC defaults to yes: absent from `sshd -T` is on.
        let f = check_escapes(&HostFacts {
            sshd_t: Some("authorizedkeysfile /etc/vmshare/owner_keys/%u\n"),
            ptrace_scope: Some("2"),
            sharing_owners: &[],
            lingers: &|_| true,
        });
        assert_eq!(problems(&f).len(), 1, "{f:?}");
        assert!(problems(&f)[0].contains("PermitUserRC"), "{f:?}");

        let f = check_escapes(&HostFacts {
            sshd_t: None,
            ptrace_scope: None,
            sharing_owners: &[],
            lingers: &|_| false,
        });
        assert!(f[0].message.contains("no Yama"), "{f:?}");
    }
}
