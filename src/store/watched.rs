//! What the user manager watcher knows of each owner's account, kept in
//! the state dir (`<state_dir>/accounts.json`, root, 0600) so that a
//! daemon restart or a reboot forgets neither what it pinned on a guest (a
//! unit, lingering) nor what was there before: whatever appeared while the
//! daemon was not looking is judged at its first look, not taken as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::owner_keys;
use crate::sys::fsutil;

pub const FILE_NAME: &str = "accounts.json";
/// Most of the file read (thousands of units per account fit easily).
const LIMIT: u64 = 16 << 20;

/// One account, as last looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub uid: u32,
    /// Units running under the user manager.
    pub units: BTreeSet<String>,
    /// Files under `~/.config/systemd/user`, with their ctime in ns.
    pub unit_files: BTreeMap<String, i64>,
    pub linger: bool,
    /// The crontab's ctime (ns) and size.
    pub crontab: Option<(i64, u64)>,
    pub atjobs: BTreeSet<String>,
    /// Units pinned on a guest, by unit name.
    pub guest_units: BTreeMap<String, String>,
    /// The guest who turned lingering on.
    pub guest_linger: Option<String>,
    /// Guests logged in at the last look.
    pub guests_present: BTreeSet<String>,
    /// Someone other than a guest was logged in at the last look.
    pub others_present: bool,
}

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The accounts, by owner name; none if the file is not there. A file that
/// cannot be trusted (not root's, writable by others, too big, not ours)
/// is an error naming it.
pub fn read(state_dir: &Path) -> Result<BTreeMap<String, Account>, String> {
    let path = path_in(state_dir);
    match fsutil::read_strict(&path, LIMIT)? {
        None => Ok(BTreeMap::new()),
        Some((text, _)) => {
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

/// Writes the accounts (atomically, root, 0600), making the state dir if
/// it is missing.
pub fn write(state_dir: &Path, accounts: &BTreeMap<String, Account>) -> Result<(), String> {
    owner_keys::ensure_dirs(state_dir)?;
    let path = path_in(state_dir);
    let data = serde_json::to_vec(accounts).map_err(|e| e.to_string())?;
    fsutil::atomic_write(&path, &data, 0o600, Some((0, 0)))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn accounts_round_trip_and_a_bad_file_is_refused_by_name() {
        let tmp = fsutil::tests::scratch();
        let dir = tmp.path().join("state");
        assert_eq!(read(&dir), Ok(BTreeMap::new()));
        let account = Account {
            uid: 1000,
            units: BTreeSet::from(["run-u1.service".to_string()]),
            unit_files: BTreeMap::from([("evil.service".to_string(), 7)]),
            linger: true,
            crontab: Some((5, 17)),
            guest_units: BTreeMap::from([("run-u1.service".to_string(), "bob".to_string())]),
            guest_linger: Some("bob".into()),
            guests_present: BTreeSet::from(["bob".to_string()]),
            ..Account::default()
        };
        let accounts = BTreeMap::from([("alice".to_string(), account)]);
        write(&dir, &accounts).unwrap();
        assert_eq!(read(&dir).unwrap(), accounts);
        let path = path_in(&dir);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, "{\"alice\": {\"uid\": 1, \"extra\": 2}}").unwrap();
        let e = read(&dir).unwrap_err();
        assert!(e.contains("accounts.json"), "{e}");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = read(&dir).unwrap_err();
        assert!(e.contains("accounts.json"), "{e}");
    }
}
