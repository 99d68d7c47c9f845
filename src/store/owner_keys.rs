//! A sharing owner's own keys, held by root in `STATE_DIR/owner-keys/`.
//!
//! While an owner shares her account, sshd reads no key file from her home
//! (a guest runs as the owner and could write any of them): the key lookup
//! serves these lines instead. Per owner, two files:
//!
//! - `owner-keys/OWNER`, 0644: the lines sshd gets, options verbatim.
//!   Public keys; the key lookup (sshd's `AuthorizedKeysCommandUser`)
//!   reads them.
//! - `owner-keys-home/OWNER`, 0600 in a root-only directory: the key lines
//!   of the home files when vmshare took them over, so that lines which
//!   appeared there later (perhaps written by a guest) can be told apart
//!   and are never taken without root's word. A directory of its own: no
//!   file name there can be mistaken for another owner's held keys.
//!
//! Only root writes here, through `vmshare owner-keys` and the verbs that
//! start sharing.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::grant::owner_lines::{self, OwnerLine};
use crate::grant::parse::is_account_name;
use crate::sys::fsutil;

/// Most bytes a held file may have.
const LIMIT: u64 = 1 << 20;

/// How long a change waits for another one to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The directory of held keys.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("owner-keys")
}

fn held_path(state_dir: &Path, owner: &str) -> Result<PathBuf, String> {
    if !is_account_name(owner) {
        return Err(format!("`{owner}` is not an account name"));
    }
    Ok(dir(state_dir).join(owner))
}

/// The directory of what the home files held at each takeover.
fn home_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("owner-keys-home")
}

fn home_path(state_dir: &Path, owner: &str) -> Result<PathBuf, String> {
    held_path(state_dir, owner)?;
    Ok(home_dir(state_dir).join(owner))
}

/// An owner's held lines, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub lines: Vec<OwnerLine>,
    /// Lines that do not check (1-based number, reason): never served.
    pub bad: Vec<(usize, String)>,
}

/// The owner's held lines; `Ok(None)` if vmshare holds none for her.
pub fn read(state_dir: &Path, owner: &str) -> Result<Option<Held>, String> {
    read_lines(&held_path(state_dir, owner)?)
}

/// The home files' lines when they were taken over; `Ok(None)` if none
/// were recorded.
pub fn read_home(state_dir: &Path, owner: &str) -> Result<Option<Held>, String> {
    read_lines(&home_path(state_dir, owner)?)
}

fn read_lines(path: &Path) -> Result<Option<Held>, String> {
    Ok(fsutil::read_strict(path, LIMIT)?.map(|(text, _)| {
        let (lines, bad) = owner_lines::parse_lines(&text);
        Held { lines, bad }
    }))
}

/// Replaces the owner's held lines.
pub fn write(state_dir: &Path, owner: &str, lines: &[OwnerLine]) -> Result<(), String> {
    let path = held_path(state_dir, owner)?;
    let text = format!(
        "# {owner}'s own keys, held by vmshare while {owner} shares the account.\n\
         # Change them with `vmshare owner-keys` (root); sshd reads no key file in the home.\n{}",
        owner_lines::render(lines)
    );
    place(&path, &text, 0o644)
}

/// Records the home files' lines at takeover.
pub fn write_home(state_dir: &Path, owner: &str, lines: &[OwnerLine]) -> Result<(), String> {
    let path = home_path(state_dir, owner)?;
    place(&path, &owner_lines::render(lines), 0o600)
}

fn place(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    fsutil::atomic_write(path, text.as_bytes(), mode, Some((0, 0)))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Forgets what is held for the owner (both files).
pub fn remove(state_dir: &Path, owner: &str) -> Result<(), String> {
    for path in [held_path(state_dir, owner)?, home_path(state_dir, owner)?] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
        }
    }
    Ok(())
}

/// The owners vmshare holds keys for, sorted.
pub fn held_owners(state_dir: &Path) -> Vec<String> {
    let mut owners: Vec<String> = fs::read_dir(dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_account_name(name))
        .collect();
    owners.sort();
    owners
}

/// Makes the state dir and the held-keys directory, root-owned and not
/// writable by others: the state dir 0711 (the key lookup, which runs as
/// its own account, may pass through but not list), the held-keys
/// directory 0755. Refuses directories someone else could write.
pub fn ensure_dirs(state_dir: &Path) -> Result<(), String> {
    ensure_dir(state_dir, 0o711)?;
    ensure_dir(&dir(state_dir), 0o755)?;
    ensure_dir(&home_dir(state_dir), 0o700)
}

fn ensure_dir(dir: &Path, mode: u32) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be a directory owned by root and not writable by group or others",
            dir.display()
        ));
    }
    if meta.mode() & 0o777 != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Holds the lock under which held keys change (one change at a time).
pub fn lock(state_dir: &Path) -> Result<nix::fcntl::Flock<fs::File>, String> {
    ensure_dirs(state_dir)?;
    let path = dir(state_dir).join(".lock");
    fsutil::lock_exclusive(&path, LOCK_WAIT).map_err(|e| match e {
        fsutil::LockError::Busy => format!(
            "cannot lock {}: still held after {LOCK_WAIT:?}",
            path.display()
        ),
        fsutil::LockError::Failed(why) => why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIoTB1TQTQtfNa9bsqcg4oHfPwhc18+zOZcJWYYyr1aX t";

    #[test]
    fn held_lines_round_trip_and_names_are_checked() {
        let dir = fsutil::tests::scratch();
        let state = dir.path().join("state");
        ensure_dirs(&state).unwrap();
        assert_eq!(read(&state, "alice").unwrap(), None);
        let line = owner_lines::check_line(&format!("from=\"10.0.0.1\" {ED}"))
            .unwrap()
            .unwrap();
        write(&state, "alice", std::slice::from_ref(&line)).unwrap();
        let held = read(&state, "alice").unwrap().unwrap();
        assert_eq!(held.lines, vec![line.clone()]);
        assert!(held.bad.is_empty());
        write_home(&state, "alice", std::slice::from_ref(&line)).unwrap();
        // What the home held is no owner's held keys, whatever its name.
        assert_eq!(held_owners(&state), vec!["alice".to_string()]);
        assert_eq!(read(&state, "alice.home").unwrap(), None);
        assert!(read(&state, "../etc").is_err());
        remove(&state, "alice").unwrap();
        assert_eq!(read(&state, "alice").unwrap(), None);
        let mode = fs::metadata(&state).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o711);
    }
}
