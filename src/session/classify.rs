//! Whose login this is, from the keys that authenticated it: the PAM
//! hook's decision, a plain function over what the hook read.
//!
//! For a sharing owner sshd reads no key file in the home: every key it
//! accepted came from the key lookup, which serves the owner's held lines
//! and the accepted guests' lines. So a key the owner holds is hers, a key
//! granted to a guest is that guest's, and any other key was revoked
//! between sshd's lookup and this hook.

use std::fmt;

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

/// What vmshare holds of the owner's own keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerKeys {
    /// The owner shares: sshd reads no key file in her home, and these are
    /// the blobs of her own lines (`cert-authority` lines: the CA's).
    Held(Vec<String>),
    /// The owner's keys are not held (she is not in the owners' group, or
    /// no held file is there): sshd reads her home files, which a guest
    /// could have written. Guests of such an owner get no access.
    NotHeld,
}

/// Why a login is the owner's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerLogin {
    /// No plain public key: a password, keyboard-interactive, or a
    /// certificate sshd trusted through `TrustedUserCAKeys` or a held
    /// `cert-authority` line.
    NoPlainKey,
    /// Every key is one the owner holds.
    HeldKey,
    /// An owner whose keys vmshare does not hold, with no guest's key:
    /// vmshare has no say in this login.
    NotSharing,
}

/// Why a login is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Keys of two guests authenticated one login.
    TwoGuests(String, String),
    /// A guest's key for an owner whose keys vmshare does not hold: sshd
    /// may be reading her home files, where a guest could have left a way
    /// back in.
    OwnerKeysNotHeld { guest: String },
    /// A key neither the owner holds nor granted to anyone now (revoked
    /// between sshd's lookup and the hook).
    UnknownKey { algorithm: String, blob: String },
    /// The grant file (or configuration) cannot be trusted, and the key is
    /// not the owner's.
    Untrusted(String),
    /// Anything else the hook could not establish (its environment, its
    /// record, a guest's limits).
    Other(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TwoGuests(one, other) => {
                write!(
                    f,
                    "keys of two guests ({one} and {other}) authenticated one login"
                )
            }
            Refusal::OwnerKeysNotHeld { guest } => write!(
                f,
                "guest {guest}'s key, but vmshare does not hold the owner's keys, so sshd may read key files in the home (run `vmshare owner-keys import OWNER`)"
            ),
            Refusal::UnknownKey { algorithm, blob } => write!(
                f,
                "key {algorithm} {}… is neither the owner's nor granted to any guest now",
                blob.chars().take(16).collect::<String>()
            ),
            Refusal::Untrusted(why) | Refusal::Other(why) => f.write_str(why),
        }
    }
}

/// What to do with a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not a guest's: the owner's own login.
    Owner(OwnerLogin),
    /// A guest currently granted access with this key.
    Guest {
        guest: String,
        key: AuthKey,
    },
    Deny(Refusal),
}

/// Decides from the authenticating keys, the owner's current guest lines
/// (`Err` if the grant file cannot be trusted) and what vmshare holds of
/// the owner's own keys.
///
/// A key the owner holds is hers whatever the grant file says (only root
/// changes either, and the CLI refuses a key in both). A key granted to a
/// guest makes the login that guest's. Any other plain key is refused for
/// a sharing owner: it was revoked after sshd's lookup.
pub fn classify(keys: &[AuthKey], lines: &Result<String, String>, owner: &OwnerKeys) -> Decision {
    // vmshare never grants certificates: sshd let those in through the
    // owner's held `cert-authority` lines or the host's own CA.
    let plain: Vec<&AuthKey> = keys.iter().filter(|k| !k.is_certificate()).collect();
    let held = |k: &AuthKey| matches!(owner, OwnerKeys::Held(blobs) if blobs.contains(&k.blob));
    let granted: Vec<(&str, &AuthKey)> = match lines {
        Ok(lines) => plain
            .iter()
            .filter(|k| !held(k))
            .filter_map(|k| {
                crate::grant::policy::guest_in_lines(lines, &k.algorithm, &k.blob).map(|g| (g, *k))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if let Some(&(guest, key)) = granted.first() {
        // Refused rather than recorded: a session record names one guest
        // and one key, and the daemon ends the session when that grant
        // goes. A login that took two guests' keys (`AuthenticationMethods
        // publickey,publickey`) would outlive the other guest's revoke.
        if let Some((other, _)) = granted.iter().find(|(g, _)| *g != guest) {
            return Decision::Deny(Refusal::TwoGuests(guest.into(), (*other).into()));
        }
        if *owner == OwnerKeys::NotHeld {
            return Decision::Deny(Refusal::OwnerKeysNotHeld {
                guest: guest.into(),
            });
        }
        return Decision::Guest {
            guest: guest.to_string(),
            key: key.clone(),
        };
    }
    if *owner == OwnerKeys::NotHeld {
        return Decision::Owner(OwnerLogin::NotSharing);
    }
    match plain.iter().find(|k| !held(k)) {
        None if plain.is_empty() => Decision::Owner(OwnerLogin::NoPlainKey),
        None => Decision::Owner(OwnerLogin::HeldKey),
        Some(key) => Decision::Deny(match lines {
            Ok(_) => Refusal::UnknownKey {
                algorithm: key.algorithm.clone(),
                blob: key.blob.clone(),
            },
            Err(e) => Refusal::Untrusted(e.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(blob: &str) -> AuthKey {
        AuthKey {
            algorithm: "ssh-ed25519".into(),
            blob: blob.into(),
        }
    }

    fn held(blobs: &[&str]) -> OwnerKeys {
        OwnerKeys::Held(blobs.iter().map(|b| b.to_string()).collect())
    }

    fn bob_has(blob: &str) -> Result<String, String> {
        Ok(format!("ssh-ed25519 {blob} vmshare:bob\n"))
    }

    #[test]
    fn auth_info_yields_public_keys_only() {
        let info = "publickey ssh-ed25519 AAAAC3Nza+/x=\npassword\npublickey bad key\\n\npublickey";
        assert_eq!(parse_auth_info(info), vec![key("AAAAC3Nza+/x=")]);
        assert!(parse_auth_info("").is_empty());
        assert!(parse_auth_info("keyboard-interactive\n").is_empty());
    }

    #[test]
    fn the_owners_held_key_is_hers_even_if_the_grant_file_is_broken() {
        let d = classify(&[key("O")], &Err("invalid".into()), &held(&["O"]));
        assert_eq!(d, Decision::Owner(OwnerLogin::HeldKey));
    }

    #[test]
    fn a_held_key_stays_the_owners_even_if_granted_to_a_guest() {
        // A hand edit gave alice's own key to bob: it logs in as alice.
        let d = classify(&[key("O")], &bob_has("O"), &held(&["O"]));
        assert_eq!(d, Decision::Owner(OwnerLogin::HeldKey));
    }

    #[test]
    fn a_granted_key_is_the_guests() {
        let d = classify(&[key("B")], &bob_has("B"), &held(&["O"]));
        assert_eq!(
            d,
            Decision::Guest {
                guest: "bob".into(),
                key: key("B")
            }
        );
    }

    #[test]
    fn a_key_neither_held_nor_granted_is_refused() {
        // bob's key, revoked between sshd's lookup and the hook.
        let d = classify(&[key("B")], &Ok(String::new()), &held(&["O"]));
        assert!(
            matches!(d, Decision::Deny(Refusal::UnknownKey { .. })),
            "{d:?}"
        );
        let d = classify(&[key("B")], &Err("bad".into()), &held(&["O"]));
        assert!(matches!(d, Decision::Deny(Refusal::Untrusted(_))), "{d:?}");
        // Beside the owner's own key, too.
        let d = classify(&[key("O"), key("X")], &Ok(String::new()), &held(&["O"]));
        assert!(
            matches!(d, Decision::Deny(Refusal::UnknownKey { .. })),
            "{d:?}"
        );
    }

    #[test]
    fn guests_of_an_owner_whose_keys_are_not_held_are_refused() {
        let d = classify(&[key("B")], &bob_has("B"), &OwnerKeys::NotHeld);
        assert!(
            matches!(&d, Decision::Deny(Refusal::OwnerKeysNotHeld { guest }) if guest == "bob"),
            "{d:?}"
        );
        // Her own logins are sshd's business as before.
        let d = classify(&[key("O")], &bob_has("B"), &OwnerKeys::NotHeld);
        assert_eq!(d, Decision::Owner(OwnerLogin::NotSharing));
    }

    #[test]
    fn no_key_or_a_certificate_is_the_owners() {
        let cert = AuthKey {
            algorithm: "ssh-ed25519-cert-v01@openssh.com".into(),
            blob: "C".into(),
        };
        for keys in [vec![], vec![cert]] {
            let d = classify(&keys, &Err("x".into()), &held(&["O"]));
            assert_eq!(d, Decision::Owner(OwnerLogin::NoPlainKey));
        }
    }

    #[test]
    fn every_authenticating_key_counts() {
        let lines = Ok(
            "ssh-ed25519 B vmshare:bob\nssh-ed25519 C vmshare:carol\nssh-ed25519 D vmshare:bob\n"
                .to_string(),
        );
        let owner = held(&["O"]);
        // The owner's key first, a guest's second: the guest's login.
        let d = classify(&[key("O"), key("B")], &lines, &owner);
        assert!(matches!(d, Decision::Guest { guest, key } if guest == "bob" && key.blob == "B"));
        // Two keys of one guest: that guest.
        let d = classify(&[key("B"), key("D")], &lines, &owner);
        assert!(matches!(d, Decision::Guest { guest, .. } if guest == "bob"));
        // Two guests' keys: refused, whatever else authenticated.
        for keys in [vec![key("B"), key("C")], vec![key("O"), key("C"), key("B")]] {
            let d = classify(&keys, &lines, &owner);
            assert!(
                matches!(&d, Decision::Deny(Refusal::TwoGuests(..))),
                "{d:?}"
            );
        }
        assert_eq!(
            classify(&[key("O"), key("O")], &lines, &owner),
            Decision::Owner(OwnerLogin::HeldKey)
        );
    }
}
