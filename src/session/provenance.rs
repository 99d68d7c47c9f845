//! Whose a key is by the key ledger, as the PAM hook asks it on every
//! login: the ledger is read once, on first use, within its size bound.
//! Where the ledger cannot be trusted (or is not there), what the session
//! records still prove stands in: the keys of the owner's recorded guest
//! sessions.

use std::cell::OnceCell;

use crate::session::hook::AuthKey;
use crate::store::config::Config;
use crate::store::ledger::{self, Entry, OnBad, Origin, Updated};
use crate::store::records;
use crate::sys::log::syslog::{self, Level};

const IDENT: &str = "vmshare-pam";

/// The `SHA256:` fingerprint by which the ledger knows a key: the key's
/// own, or for a certificate its CA's (a `cert-authority` line names the
/// CA, and the CA is what a planted line lets in).
pub fn fingerprint(key: &AuthKey) -> Option<String> {
    if key.is_certificate() {
        return crate::grant::key::certificate_authority_fingerprint(&key.algorithm, &key.blob);
    }
    crate::grant::key::parse_key(&format!("{} {}", key.algorithm, key.blob))
        .ok()
        .map(|k| k.fingerprint.to_string())
}

/// One owner's keys as the ledger knows them, for one login.
pub struct Provenance<'a> {
    config: &'a Config,
    owner: &'a str,
    /// The ledger's text, once read (`None`: none, or not trusted).
    ledger: OnceCell<Option<String>>,
    /// (fingerprint, guest) of the owner's recorded sessions: what stands
    /// in for a ledger that is not trusted.
    records: OnceCell<Vec<(String, String)>>,
}

impl<'a> Provenance<'a> {
    pub fn new(config: &'a Config, owner: &'a str) -> Self {
        Provenance {
            config,
            owner,
            ledger: OnceCell::new(),
            records: OnceCell::new(),
        }
    }

    /// The guest the ledger names for `key`, if any.
    pub fn guest_of(&self, key: &AuthKey) -> Option<String> {
        let fp = fingerprint(key)?;
        match self.in_ledger(&fp) {
            Some(found) => found,
            None => self
                .records()
                .iter()
                .find(|(f, _)| *f == fp)
                .map(|(_, g)| g.clone()),
        }
    }

    /// The ledger's answer for `fp`: `None` where the ledger is missing or
    /// not trusted (the frame, or the lines naming the key, damaged).
    fn in_ledger(&self, fp: &str) -> Option<Option<String>> {
        let text = self
            .ledger
            .get_or_init(|| match ledger::read_text(&self.config.ledger_path()) {
                Ok(text) => text,
                Err(why) => {
                    distrust(&why);
                    None
                }
            })
            .as_deref()?;
        match ledger::lookup(text, self.owner, fp) {
            Ok(found) => Some(found.map(|e| e.guest.to_string())),
            Err(e) => {
                distrust(&format!("{}: {e}", self.config.ledger_path().display()));
                None
            }
        }
    }

    fn records(&self) -> &[(String, String)] {
        self.records.get_or_init(|| {
            let (list, _) = records::list(&self.config.sessions_dir());
            list.into_iter()
                .filter(|r| r.owner == self.owner)
                .map(|r| (r.fingerprint, r.guest))
                .collect()
        })
    }

    /// Records that `guest` authenticated with `key`, unless the ledger
    /// has it as that guest's already. A ledger that cannot be trusted is
    /// left for the daemon to repair (the session record keeps the key
    /// known meanwhile); one that cannot be written is an error.
    pub fn record(&self, guest: &str, key: &AuthKey, now: i64) -> Result<(), String> {
        let Some(fp) = fingerprint(key) else {
            return Ok(());
        };
        if self.in_ledger(&fp).flatten().as_deref() == Some(guest) {
            return Ok(());
        }
        let entry = Entry {
            owner: self.owner.to_string(),
            fingerprint: fp,
            guest: guest.to_string(),
            origin: Origin::Authenticated,
            since: now,
        };
        match ledger::update(&self.config.state_dir, OnBad::Keep, |l, _| l.record(entry))? {
            Updated::LeftBad(why) => syslog::log(
                IDENT,
                Level::Error,
                &format!("key ledger not trusted, not recorded there: {why}"),
            ),
            Updated::Unchanged | Updated::Written | Updated::Repaired(_) => {}
        }
        Ok(())
    }
}

fn distrust(why: &str) {
    syslog::log(
        IDENT,
        Level::Error,
        &format!("key ledger not trusted, judging by the session records: {why}"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_known_by_its_ca() {
        // ssh-keygen -s ca -I x -n alice holder.pub; the CA's fingerprint.
        let cert = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIAvp5zEAq90w8K9AS8Yz9l0n9a7E2kWfP7niuo/F6TmvAAAAILrnlZzjlGZXeh3Oj2hmv5/PJI2UuGeofO6gNdnM0U1eAAAAAAAAAAAAAAABAAAAAXgAAAAJAAAABWFsaWNlAAAAAAAAAAD//////////wAAAAAAAACCAAAAFXBlcm1pdC1YMTEtZm9yd2FyZGluZwAAAAAAAAAXcGVybWl0LWFnZW50LWZvcndhcmRpbmcAAAAAAAAAFnBlcm1pdC1wb3J0LWZvcndhcmRpbmcAAAAAAAAACnBlcm1pdC1wdHkAAAAAAAAADnBlcm1pdC11c2VyLXJjAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIB3vNcAubG10MJPHtuXD/r9+mlfHWzMluFOL2jalj016AAAAUwAAAAtzc2gtZWQyNTUxOQAAAED9qEF1ViaBnPyZI/gQCYdmEDlnMdz9CN9BgEYqflnrV+j568rWetoAiRfIJKrYIy3JIvnPy37qYWfK4elg/0QJ";
        let (algorithm, blob) = cert.split_once(' ').unwrap();
        let key = AuthKey {
            algorithm: algorithm.into(),
            blob: blob.into(),
        };
        assert!(key.is_certificate());
        assert_eq!(fingerprint(&key).as_deref(), Some(CA));
        // RSA and ECDSA keys signed by the same CA.
        for cert in [RSA_CERT, ECDSA_CERT] {
            let (algorithm, blob) = cert.split_once(' ').unwrap();
            let key = AuthKey {
                algorithm: algorithm.into(),
                blob: blob.into(),
            };
            assert_eq!(fingerprint(&key).as_deref(), Some(CA), "{algorithm}");
            // Cut short, or under another type name: unknown.
            let cut = AuthKey {
                algorithm: algorithm.into(),
                blob: blob[..blob.len() / 2].into(),
            };
            assert_eq!(fingerprint(&cut), None);
        }
        let renamed = AuthKey {
            algorithm: "ssh-rsa-cert-v01@openssh.com".into(),
            blob: blob.into(),
        };
        assert_eq!(fingerprint(&renamed), None);
    }

    const CA: &str = "SHA256:LlsufbCpUnrzR9OMPkHB54NnaftYcDrHeNei91a/Ekg";
    const RSA_CERT: &str = "ssh-rsa-cert-v01@openssh.com AAAAHHNzaC1yc2EtY2VydC12MDFAb3BlbnNzaC5jb20AAAAgqP0ncZnbK0ZYYuRDunwRFD2q2UL1hhkkrJ0tU0U1FngAAAADAQABAAABgQDZFLOyPDDxeYkTXCYsz+wxC7J+jRNbfIlSwNO2bLRnT/6bvpI1hNC3mcVWji3rHwX5nPxChecGZI8u8Z4xCirX/7XYU3z7ZmkA0ZR7TDE+dSSOU6hykGfqE/wbdv504UNJbnMdjdn9WPrwPTTseslQmEG5lhEY5gFV/AWcOiqbpkg2RLxLLq6BIF0QGCbmQtIrf6J475D68uz+A5UQbJX8WJQ6911DWjOZsJXSnYc3q7h6D+phIfsBdf9SP4MZgMTYnIVY50LoWcpybhZYf3ke9qwQYQNOW3ov8v7ge0Z2kiT7L/EsyuYBMK5vl+EXQvS71VIE+SYrjYg8FjQzrVZFRdeNR3x6fSG3PaobrUjjX/V6soJpkaDgG85KrUjH/Lr/m1aNONCbuE29VBMLGQOeW32M3uUGve59D8xjO/WjZJj8vi7X1cEbI9eO86fCd1tKxxlAnBjg+eY6bDWzcV/ddInvQv3U6vwqB2v6g6/jqy7AenZifc0FYHtC5AvpTFEAAAAAAAAAAAAAAAEAAAABeAAAAAkAAAAFYWxpY2UAAAAAAAAAAP//////////AAAAAAAAAIIAAAAVcGVybWl0LVgxMS1mb3J3YXJkaW5nAAAAAAAAABdwZXJtaXQtYWdlbnQtZm9yd2FyZGluZwAAAAAAAAAWcGVybWl0LXBvcnQtZm9yd2FyZGluZwAAAAAAAAAKcGVybWl0LXB0eQAAAAAAAAAOcGVybWl0LXVzZXItcmMAAAAAAAAAAAAAADMAAAALc3NoLWVkMjU1MTkAAAAgHe81wC5sbXQwk8e25cP+v36aV8dbMyW4U4vaNqWPTXoAAABTAAAAC3NzaC1lZDI1NTE5AAAAQBeHAq0QKL41Z2XOZB9x39euuPPrfdf7ZAgoEYTvLnKhWEic4aNWrO1o//VGoK/UVhf4pmTyXr3HVDRdpf32wgk=";
    const ECDSA_CERT: &str = "ecdsa-sha2-nistp256-cert-v01@openssh.com AAAAKGVjZHNhLXNoYTItbmlzdHAyNTYtY2VydC12MDFAb3BlbnNzaC5jb20AAAAgWoDfHcckAytVuKTJ6Ou7a6fdw7LARwtyx4GBEWH4UVgAAAAIbmlzdHAyNTYAAABBBPSR3djWEuraLdWiu7tQyGx1+2/m0uuZVHscnPrXqLswrcmkv3ZFwLBjm82+YHtJFY9BQw8m5y3Rcgh/BNtSsbcAAAAAAAAAAAAAAAEAAAABeAAAAAkAAAAFYWxpY2UAAAAAAAAAAP//////////AAAAAAAAAIIAAAAVcGVybWl0LVgxMS1mb3J3YXJkaW5nAAAAAAAAABdwZXJtaXQtYWdlbnQtZm9yd2FyZGluZwAAAAAAAAAWcGVybWl0LXBvcnQtZm9yd2FyZGluZwAAAAAAAAAKcGVybWl0LXB0eQAAAAAAAAAOcGVybWl0LXVzZXItcmMAAAAAAAAAAAAAADMAAAALc3NoLWVkMjU1MTkAAAAgHe81wC5sbXQwk8e25cP+v36aV8dbMyW4U4vaNqWPTXoAAABTAAAAC3NzaC1lZDI1NTE5AAAAQLS08txGP9r1fe9EGiqL1eRL4IqQwJqic+OO2uCha1dhRrXzpKGGamoX4YmTiVsXMO1lQmGQTeDARI/vPbDFWgc=";
}
