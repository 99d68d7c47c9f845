//! Scratch directories the strict checks accept. The grant file, the agent
//! config and every directory above them must be root-owned and not group
//! or world writable, so /tmp is out: the build tree is used when it
//! qualifies (a checkout under /tmp does not), else /var/lib/vmshare-tests
//! (not /run: some tests mount a private tmpfs over /run).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A fresh root-owned 0755 directory under a trusted parent; removed when
/// dropped.
pub fn trusted_tempdir(prefix: &str) -> tempfile::TempDir {
    let build = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&build).expect("target tmpdir");
    let base = if vmshare::sys::fsutil::check_trusted_dirs(&build.join("x")).is_ok() {
        build
    } else {
        let fallback = PathBuf::from("/var/lib/vmshare-tests");
        fs::create_dir_all(&fallback).expect("fallback scratch base");
        fs::set_permissions(&fallback, fs::Permissions::from_mode(0o755)).expect("chmod");
        fallback
    };
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .expect("scratch dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
