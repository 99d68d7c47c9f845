//! The local account database as the policy sees it, from the system's NSS.

use crate::grant::policy::{Account, Accounts};

/// Accounts from the system's NSS, through `getpwnam_r`.
pub struct SystemAccounts;

impl Accounts for SystemAccounts {
    fn lookup(&self, name: &str) -> Result<Option<Account>, String> {
        match nix::unistd::User::from_name(name) {
            Ok(user) => Ok(user.map(|u| Account {
                uid: u.uid.as_raw(),
            })),
            Err(e) => Err(format!("looking up account {name:?}: {e}")),
        }
    }
}
