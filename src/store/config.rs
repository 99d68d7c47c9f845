//! The agent configuration, `/etc/vmshare/vmshare.toml`. Every key has a
//! built-in default; unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::grant::diag::{Diagnostic, FileErrors};
use crate::sys::fsutil;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmshare/vmshare.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The grant file.
    pub grants: PathBuf,
    /// Snapshot, session records and control socket.
    pub run_dir: PathBuf,
    /// What must outlive a reboot: the owners' held keys, what the user
    /// manager watcher knows of each account.
    pub state_dir: PathBuf,
    /// The owners' own key files, as sshd's `AuthorizedKeysFile` names them
    /// (`%h`, `%u`, `%%`; relative paths are under the home directory). A
    /// key found there is the owner's own login, never a guest's.
    pub authorized_keys_files: Vec<String>,
    pub enforcement: Enforcement,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Enforcement {
    pub backend: Backend,
    /// Directory under which per-session cgroups are made; empty means
    /// `vmshare` under the cgroup v2 mount.
    pub cgroup_root: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Logind,
    Cgroup,
    Signal,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grants: PathBuf::from("/etc/vmshare/grants.toml"),
            run_dir: PathBuf::from("/run/vmshare"),
            state_dir: PathBuf::from("/var/lib/vmshare"),
            authorized_keys_files: vec![
                ".ssh/authorized_keys".into(),
                ".ssh/authorized_keys2".into(),
            ],
            enforcement: Enforcement::default(),
        }
    }
}

impl Default for Enforcement {
    fn default() -> Self {
        Enforcement {
            backend: Backend::Auto,
            cgroup_root: PathBuf::new(),
        }
    }
}

impl Config {
    /// Parses configuration text.
    pub fn parse(source: &str) -> Result<Config, Diagnostic> {
        let config: Config = toml::from_str(source).map_err(|e| match e.span() {
            Some(span) => Diagnostic::at(source, span.start, e.message().trim_end()),
            None => Diagnostic::whole_file(e.message().trim_end()),
        })?;
        for (name, path) in [
            ("grants", &config.grants),
            ("run_dir", &config.run_dir),
            ("state_dir", &config.state_dir),
        ] {
            if !path.is_absolute() {
                return Err(Diagnostic::whole_file(format!(
                    "`{name}` must be an absolute path, not {}",
                    path.display()
                )));
            }
        }
        let root = &config.enforcement.cgroup_root;
        if !root.as_os_str().is_empty() && !root.is_absolute() {
            return Err(Diagnostic::whole_file(format!(
                "`enforcement.cgroup_root` must be an absolute path, not {}",
                root.display()
            )));
        }
        Ok(config)
    }

    /// Loads the configuration. A missing file at the default path means
    /// the defaults; a file named explicitly must exist. The file must be
    /// root-owned and not writable by group or others, since it names the
    /// grant file.
    pub fn load(path: Option<&Path>) -> Result<Config, FileErrors> {
        let (path, explicit) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        let fail = |d: Diagnostic| FileErrors {
            file: path.to_path_buf(),
            errors: vec![d],
        };
        let text = match fsutil::read_strict(path, 1 << 20) {
            Ok(Some((text, _))) => text,
            Ok(None) if !explicit => return Ok(Config::default()),
            Ok(None) => return Err(fail(Diagnostic::whole_file("no such file"))),
            Err(e) => return Err(fail(Diagnostic::whole_file(e))),
        };
        Config::parse(&text).map_err(fail)
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.run_dir.join("snapshot")
    }

    pub fn sessions_dir(&self) -> PathBuf {
        self.run_dir.join("sessions")
    }

    /// Records of guest portal sessions (apart from the guest sessions the
    /// daemon enforces).
    pub fn portal_dir(&self) -> PathBuf {
        self.run_dir.join("portal")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn shipped_config_is_the_defaults() {
        let text = include_str!("../../config/vmshare.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn keys_are_read() {
        let c = Config::parse(
            "grants = \"/x/g.toml\"\nrun_dir = \"/r\"\n[enforcement]\nbackend = \"cgroup\"\ncgroup_root = \"/sys/fs/cgroup/v\"\n",
        )
        .unwrap();
        assert_eq!(c.grants, Path::new("/x/g.toml"));
        assert_eq!(c.enforcement.backend, Backend::Cgroup);
    }

    #[test]
    fn unknown_keys_and_relative_paths_are_errors() {
        let e = Config::parse("grant = \"/x\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
        assert!(Config::parse("[enforcement]\nbackend = \"magic\"\n").is_err());
        assert!(Config::parse("grants = \"g.toml\"\n").is_err());
    }
}
