//! Scratch directories for every test that needs one outside the system's
//! own paths: the trusted files of the CLI, hostile-grant, logind and
//! property tests, and the overlay layers of the end-to-end hosts.
//!
//! One rule picks the base. The build tree's scratch dir is used when
//!
//! - the strict checks accept it: it and every directory above it are
//!   root-owned and not group or world writable (a checkout under /tmp,
//!   which is world writable, fails this), and
//! - it is not below a path that some test mounts over: the end-to-end
//!   namespace overlays /etc, /usr and (for the package test) /var and puts
//!   private tmpfs on /run, /home, /tmp and /var/log, and the doctor tests
//!   put a tmpfs on /run. Layers or files below those would be hidden, or
//!   would overlap the overlay they belong to.
//!
//! Otherwise the base is `/srv/vmshare-tests`, created root-owned 0755.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use vmshare::sys::fsutil::check_trusted_dirs;

/// Paths that tests mount something over (see the module docs).
const MOUNTED_OVER: [&str; 6] = ["/etc", "/usr", "/var", "/run", "/home", "/tmp"];

/// The base when the build tree does not qualify.
const FALLBACK: &str = "/srv/vmshare-tests";

/// The scratch base, by the rule in the module docs. Created if missing.
pub fn base() -> PathBuf {
    let build = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&build).expect("target tmpdir");
    if qualifies(&build) {
        return build;
    }
    let fallback = PathBuf::from(FALLBACK);
    fs::create_dir_all(&fallback).expect("fallback scratch base");
    fs::set_permissions(&fallback, fs::Permissions::from_mode(0o755)).expect("chmod");
    if let Err(e) = check_trusted_dirs(&fallback.join("x")) {
        panic!("neither the build tree nor {FALLBACK} can hold test files: {e}");
    }
    fallback
}

fn qualifies(dir: &Path) -> bool {
    let mounted_over = MOUNTED_OVER.iter().any(|p| dir.starts_with(p));
    !mounted_over && check_trusted_dirs(&dir.join("x")).is_ok()
}

/// A fresh root-owned 0755 directory under `base()`; removed when dropped.
pub fn trusted_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base())
        .expect("scratch dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
