//! The sync agent's configuration, `/etc/vmshare/sync.toml`. Unknown keys
//! are errors; every error names the file and the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use vmshare::grant::diag::{Diagnostic, FileErrors};
use vmshare::sys::fsutil;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmshare/sync.toml";
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(5 * 60);

/// What the agent does when it has had no confirmed contact with etcd for
/// `max_staleness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Share nothing until contact returns (guests out, owners unaffected).
    #[default]
    Strict,
    /// Keep the last applied document.
    BestEffort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// etcd client URLs (`https://host:port`).
    pub endpoints: Vec<String>,
    /// This VM's id: its grants are at `/vmshare/v1/vms/<vm_id>`.
    pub vm_id: String,
    /// The grant file the agent writes (the one vmshared watches).
    pub grants: PathBuf,
    /// Where the agent keeps its status for `vmshare-sync status`.
    pub run_dir: PathBuf,
    pub tls: Option<Tls>,
    /// etcd user and password; without them, a client certificate's common
    /// name is the etcd user.
    pub credentials: Option<(String, String)>,
    pub max_staleness: Duration,
    pub mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The CA that signed the etcd members' certificates.
    pub ca: PathBuf,
    /// This VM's client certificate and key (both or neither).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    endpoints: Vec<String>,
    vm_id: String,
    #[serde(default = "default_grants")]
    grants: PathBuf,
    #[serde(default = "default_run_dir")]
    run_dir: PathBuf,
    tls: Option<Tls>,
    user: Option<String>,
    password: Option<String>,
    max_staleness: Option<String>,
    #[serde(default)]
    mode: Mode,
}

fn default_grants() -> PathBuf {
    PathBuf::from("/etc/vmshare/grants.toml")
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/vmshare-sync")
}

impl Config {
    /// Parses configuration text; a finding names the field it is about.
    pub fn parse(source: &str) -> Result<Config, Diagnostic> {
        let raw: Raw = toml::from_str(source).map_err(|e| match e.span() {
            Some(span) => Diagnostic::at(source, span.start, e.message().trim_end()),
            None => Diagnostic::whole_file(e.message().trim_end()),
        })?;
        let field = |name: &str, what: String| Diagnostic::whole_file(format!("`{name}`: {what}"));

        if raw.endpoints.is_empty() {
            return Err(field("endpoints", "needs at least one etcd URL".into()));
        }
        for e in &raw.endpoints {
            let rest = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                return Err(field(
                    "endpoints",
                    format!("{e:?} is not http(s)://host:port"),
                ));
            }
            if e.starts_with("https://") && raw.tls.is_none() {
                return Err(field(
                    "tls",
                    format!("endpoint {e:?} is https but there is no [tls] table with `ca`"),
                ));
            }
        }
        check_vm_id(&raw.vm_id).map_err(|w| field("vm_id", w))?;
        for (name, path) in [("grants", &raw.grants), ("run_dir", &raw.run_dir)] {
            if !path.is_absolute() {
                return Err(field(
                    name,
                    format!("must be an absolute path, not {}", path.display()),
                ));
            }
        }
        if let Some(tls) = &raw.tls {
            let paths = [
                ("tls.ca", Some(&tls.ca)),
                ("tls.cert", tls.cert.as_ref()),
                ("tls.key", tls.key.as_ref()),
            ];
            for (name, path) in paths {
                if let Some(p) = path.filter(|p| !p.is_absolute()) {
                    return Err(field(
                        name,
                        format!("must be an absolute path, not {}", p.display()),
                    ));
                }
            }
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(field(
                    if tls.cert.is_some() {
                        "tls.key"
                    } else {
                        "tls.cert"
                    },
                    "a client certificate needs both `cert` and `key`".into(),
                ));
            }
        }
        let credentials = match (raw.user, raw.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
            (Some(_), Some(_)) => return Err(field("user", "must not be empty".into())),
            (None, None) => None,
            (Some(_), None) => return Err(field("password", "`user` is set without it".into())),
            (None, Some(_)) => return Err(field("user", "`password` is set without it".into())),
        };
        let max_staleness = match raw.max_staleness {
            None => DEFAULT_MAX_STALENESS,
            Some(s) => parse_duration(&s).map_err(|w| field("max_staleness", w))?,
        };
        Ok(Config {
            endpoints: raw.endpoints,
            vm_id: raw.vm_id,
            grants: raw.grants,
            run_dir: raw.run_dir,
            tls: raw.tls,
            credentials,
            max_staleness,
            mode: raw.mode,
        })
    }

    /// Loads the configuration from `path`. The file must be root-owned and
    /// not writable by group or others (it names the grant file); when it
    /// holds a password, not readable by them either.
    pub fn load(path: &Path) -> Result<Config, FileErrors> {
        let fail = |d: Diagnostic| FileErrors {
            file: path.to_path_buf(),
            errors: vec![d],
        };
        let (text, meta) = match fsutil::read_strict(path, 1 << 20) {
            Ok(Some(found)) => found,
            Ok(None) => return Err(fail(Diagnostic::whole_file("no such file"))),
            Err(e) => return Err(fail(Diagnostic::whole_file(e))),
        };
        let config = Config::parse(&text).map_err(fail)?;
        if config.credentials.is_some() {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o044 != 0 {
                return Err(fail(Diagnostic::whole_file(
                    "`password`: the file is readable by group or others (make it 0600)",
                )));
            }
        }
        Ok(config)
    }

    /// The key holding this VM's grant file.
    pub fn grants_key(&self) -> String {
        grants_key(&self.vm_id)
    }

    /// The key this VM reports its status to.
    pub fn status_key(&self) -> String {
        status_key(&self.vm_id)
    }

    pub fn status_path(&self) -> PathBuf {
        self.run_dir.join("status.json")
    }
}

pub fn grants_key(vm_id: &str) -> String {
    format!("/vmshare/v1/vms/{vm_id}")
}

pub fn status_key(vm_id: &str) -> String {
    format!("/vmshare/v1/status/{vm_id}")
}

/// A VM id is one key segment: 1–128 of `A-Z a-z 0-9 . _ -`, not starting
/// with a dot (so never `.` or `..`, never a `/`).
pub fn check_vm_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a VM id (1-128 of A-Z a-z 0-9 . _ -, not starting with a dot)"
        ))
    }
}

/// `500ms`, `30s`, `5m`, `1h`: a positive whole number and a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"30s\" or \"5m\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{text:?} has no unit among ms, s, m, h (such as \"30s\" or \"5m\")"
            ))
        }
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const MINIMAL: &str = "endpoints = [\"http://127.0.0.1:2379\"]\nvm_id = \"vm-1\"\n";

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().message
    }

    #[test]
    fn minimal_config_takes_the_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.max_staleness, Duration::from_secs(300));
        assert_eq!(c.mode, Mode::Strict);
        assert_eq!(c.grants, Path::new("/etc/vmshare/grants.toml"));
        assert_eq!(c.grants_key(), "/vmshare/v1/vms/vm-1");
        assert_eq!(c.status_key(), "/vmshare/v1/status/vm-1");
        assert_eq!(c.credentials, None);
    }

    #[test]
    fn shipped_example_parses() {
        let c = Config::parse(include_str!("../sync.example.toml")).unwrap();
        assert_eq!(c.mode, Mode::Strict);
        assert!(c.tls.as_ref().is_some_and(|t| t.cert.is_some()));
    }

    #[test]
    fn full_config() {
        let c = Config::parse(
            "endpoints = [\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]\n\
             vm_id = \"vm-1\"\nmax_staleness = \"90s\"\nmode = \"best_effort\"\n\
             user = \"vm-1\"\npassword = \"pw\"\n\
             [tls]\nca = \"/etc/ca.pem\"\ncert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.max_staleness, Duration::from_secs(90));
        assert_eq!(c.mode, Mode::BestEffort);
        assert_eq!(c.credentials, Some(("vm-1".into(), "pw".into())));
    }

    #[test]
    fn unknown_fields_are_errors_with_a_position() {
        let d = Config::parse(&format!("{MINIMAL}mdoe = \"strict\"\n")).unwrap_err();
        assert_eq!((d.line, d.column), (3, 1));
        assert!(d.message.contains("mdoe"), "{}", d.message);
        let d =
            Config::parse(&format!("{MINIMAL}[tls]\nca = \"/ca\"\ncrt = \"/c\"\n")).unwrap_err();
        assert!(d.message.contains("crt"), "{}", d.message);
    }

    #[test]
    fn missing_required_fields_are_named() {
        assert!(err("vm_id = \"a\"\n").contains("endpoints"));
        assert!(err("endpoints = [\"http://a:1\"]\n").contains("vm_id"));
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("endpoints = []\nvm_id = \"a\"\n", "`endpoints`"),
            ("endpoints = [\"a:1\"]\nvm_id = \"a\"\n", "`endpoints`"),
            ("endpoints = [\"https://a:1\"]\nvm_id = \"a\"\n", "`tls`"),
            (
                "endpoints = [\"http://a:1\"]\nvm_id = \"../b\"\n",
                "`vm_id`",
            ),
            ("endpoints = [\"http://a:1\"]\nvm_id = \"a/b\"\n", "`vm_id`"),
            ("endpoints = [\"http://a:1\"]\nvm_id = \"\"\n", "`vm_id`"),
            (&format!("{MINIMAL}mode = \"lax\"\n"), "lax"),
            (
                &format!("{MINIMAL}max_staleness = \"5\"\n"),
                "`max_staleness`",
            ),
            (
                &format!("{MINIMAL}max_staleness = \"0s\"\n"),
                "`max_staleness`",
            ),
            (
                &format!("{MINIMAL}max_staleness = \"m\"\n"),
                "`max_staleness`",
            ),
            (&format!("{MINIMAL}grants = \"g.toml\"\n"), "`grants`"),
            (&format!("{MINIMAL}run_dir = \"run\"\n"), "`run_dir`"),
            (&format!("{MINIMAL}user = \"u\"\n"), "`password`"),
            (&format!("{MINIMAL}password = \"p\"\n"), "`user`"),
            (&format!("{MINIMAL}[tls]\nca = \"ca.pem\"\n"), "`tls.ca`"),
            (
                &format!("{MINIMAL}[tls]\nca = \"/ca\"\ncert = \"/c\"\n"),
                "`tls.key`",
            ),
            (
                &format!("{MINIMAL}[tls]\nca = \"/ca\"\nkey = \"/k\"\n"),
                "`tls.cert`",
            ),
        ];
        for (text, what) in cases {
            let message = err(text);
            assert!(message.contains(what), "{text:?}: {message}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "5", "5 m", "-1s", "1.5s", "s", "0ms", "5d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// A scratch dir whose ancestors pass the strict checks (not /tmp).
    pub(crate) fn scratch() -> tempfile::TempDir {
        let build = std::env::current_exe().unwrap();
        let base = build.parent().unwrap();
        let base = if fsutil::check_trusted_dirs(&base.join("x")).is_ok() {
            base
        } else {
            Path::new("/run")
        };
        tempfile::Builder::new()
            .prefix("vmshare-sync-test")
            .tempdir_in(base)
            .unwrap()
    }

    #[test]
    fn load_names_the_file_and_guards_a_password() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch();
        let path = dir.path().join("sync.toml");
        let missing = Config::load(&path).unwrap_err().to_string();
        assert!(missing.contains("sync.toml: no such file"), "{missing}");

        std::fs::write(&path, format!("{MINIMAL}user = \"u\"\npassword = \"p\"\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: `password`", path.display())),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&path).unwrap().credentials.is_some());

        std::fs::write(&path, format!("{MINIMAL}vm_id = \"again\"\n")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:3:1:", path.display())), "{e}");
    }
}
