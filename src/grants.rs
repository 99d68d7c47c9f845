//! The grant file: who may log in as whom. Parsing and validation only — no
//! file system, no account database (see `policy` for that).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;
use ssh_key::{HashAlg, PublicKey};
use toml::Spanned;

use crate::diag::Diagnostic;

/// Grant files larger than this are refused outright.
pub const MAX_GRANT_FILE_BYTES: usize = 32 << 20;

/// A guest's place in the "Share VM" lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Invited,
    Accepted,
    Rejected,
    Left,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Invited,
        Status::Accepted,
        Status::Rejected,
        Status::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Invited => "invited",
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::Left => "left",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated grant file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub owners: Vec<Owner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    /// Byte offset of the owner's name in the file, for later findings.
    pub offset: usize,
    pub sharing: bool,
    pub guests: Vec<Guest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub name: String,
    pub status: Status,
    pub keys: Vec<GuestKey>,
}

/// One guest key, reduced to what sshd needs: algorithm and key blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKey {
    /// e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// The base64 key blob, canonical (re-encoded from the parsed key).
    pub blob: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The comment the guest's key carried, if any.
    pub comment: String,
}

impl Grants {
    pub fn owner(&self, name: &str) -> Option<&Owner> {
        self.owners.iter().find(|o| o.name == name)
    }
}

impl Owner {
    pub fn guest(&self, name: &str) -> Option<&Guest> {
        self.guests.iter().find(|g| g.name == name)
    }
}

impl Guest {
    /// Whether this guest may log in as an owner whose switch is `sharing`.
    pub fn has_access(&self, sharing: bool) -> bool {
        sharing && self.status == Status::Accepted
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    owners: BTreeMap<Spanned<String>, RawOwner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    #[serde(default)]
    sharing: bool,
    #[serde(default)]
    guests: BTreeMap<Spanned<String>, RawGuest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    keys: Vec<Spanned<String>>,
}

/// Parses and validates grant file text. Any finding makes the whole file
/// invalid; all findings are returned, in file order.
pub fn parse(source: &str) -> Result<Grants, Vec<Diagnostic>> {
    if source.len() > MAX_GRANT_FILE_BYTES {
        return Err(vec![Diagnostic::whole_file(format!(
            "file is {} bytes; the limit is {} bytes",
            source.len(),
            MAX_GRANT_FILE_BYTES
        ))]);
    }
    let raw: RawFile = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let message = e.message().trim_end().to_string();
            return Err(vec![if e.span().is_some() {
                Diagnostic::at(source, offset, message)
            } else {
                Diagnostic::whole_file(message)
            }]);
        }
    };

    let mut errors = Errors::new(source);
    // Parse every key first, in parallel on large files: it is most of the
    // work of a reload.
    let all_keys: Vec<&Spanned<String>> = raw
        .owners
        .values()
        .flat_map(|o| o.guests.values())
        .flat_map(|g| g.keys.iter())
        .collect();
    let mut parsed_keys = parse_keys(&all_keys).into_iter();

    let mut owners = Vec::new();
    for (owner_name, raw_owner) in &raw.owners {
        let offset = owner_name.span().start;
        if let Err(why) = check_owner_name(owner_name.get_ref()) {
            errors.push(offset, why);
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        let mut guests = Vec::new();
        for (guest_name, raw_guest) in &raw_owner.guests {
            if let Err(why) = check_guest_name(guest_name.get_ref()) {
                errors.push(guest_name.span().start, why);
            }
            let mut keys = Vec::new();
            for key in &raw_guest.keys {
                match parsed_keys.next() {
                    Some(Ok(parsed)) => keys.push(parsed),
                    Some(Err(why)) => errors.push(key.span().start, why),
                    None => errors.push(key.span().start, "key was not parsed".into()),
                }
            }
            guests.push(Guest {
                name: guest_name.get_ref().clone(),
                status: raw_guest.status.unwrap_or(Status::Invited),
                keys,
            });
        }
        // One key may belong to one guest of an owner. (Checked only when
        // every key parsed, so keys and their positions line up.)
        let all_parsed = raw_owner
            .guests
            .values()
            .map(|g| g.keys.len())
            .eq(guests.iter().map(|g| g.keys.len()));
        let mut key_offsets = raw_owner
            .guests
            .values()
            .flat_map(|g| g.keys.iter().map(|k| k.span().start));
        for guest in guests.iter().filter(|_| all_parsed) {
            for key in &guest.keys {
                let at = key_offsets.next().unwrap_or(offset);
                if let Some(first) = seen.insert(key.blob.as_str(), guest.name.as_str()) {
                    errors.push(
                        at,
                        format!(
                            "key {} of guest `{}` already belongs to guest `{first}` of owner `{}`; one key may belong to one guest only",
                            key.fingerprint,
                            guest.name,
                            owner_name.get_ref()
                        ),
                    );
                }
            }
        }
        owners.push(Owner {
            name: owner_name.get_ref().clone(),
            offset,
            sharing: raw_owner.sharing,
            guests,
        });
    }
    errors.finish(Grants { owners })
}

/// Most findings reported for one file; the rest are counted. Positions are
/// costly to compute on a huge file, and nobody reads ten thousand errors.
const MAX_ERRORS: usize = 100;

struct Errors<'a> {
    source: &'a str,
    found: Vec<Diagnostic>,
    more: usize,
}

impl<'a> Errors<'a> {
    fn new(source: &'a str) -> Self {
        Errors {
            source,
            found: Vec::new(),
            more: 0,
        }
    }

    fn push(&mut self, offset: usize, message: String) {
        if self.found.len() < MAX_ERRORS {
            self.found
                .push(Diagnostic::at(self.source, offset, message));
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self, grants: Grants) -> Result<Grants, Vec<Diagnostic>> {
        if self.found.is_empty() {
            return Ok(grants);
        }
        self.found.sort_by_key(|d| (d.line, d.column));
        if self.more > 0 {
            self.found.push(Diagnostic::whole_file(format!(
                "{} more errors not shown",
                self.more
            )));
        }
        Err(self.found)
    }
}

/// Parses keys in order, spread over the available cores when there are
/// many.
fn parse_keys(keys: &[&Spanned<String>]) -> Vec<Result<GuestKey, String>> {
    const PER_THREAD_MIN: usize = 2_000;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(keys.len() / PER_THREAD_MIN)
        .max(1);
    if threads == 1 {
        return keys.iter().map(|k| parse_key(k.get_ref())).collect();
    }
    let chunk = keys.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|k| parse_key(k.get_ref()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("key parser panicked".to_string()); chunk])
            })
            .collect()
    })
}

/// Guest names are platform usernames: 1–64 of `a-z 0-9 . _ -`, starting
/// with a letter or digit.
pub fn check_guest_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid guest name {name:?}{}: expected 1-64 characters of a-z 0-9 . _ -, starting with a letter or digit",
            foreign_char(name)
        ))
    }
}

/// Owner names must be possible local account names: 1–32 of
/// `a-z 0-9 . _ -`, starting with a letter or `_`.
pub fn check_owner_name(name: &str) -> Result<(), String> {
    if is_account_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid owner name {name:?}{}: expected a local account name (1-32 characters of a-z 0-9 . _ -, starting with a letter or _)",
            foreign_char(name)
        ))
    }
}

/// The first character of `name` outside `a-z 0-9 . _ -`, by code point, so
/// that a look-alike (a Cyrillic `а`, a full-width letter, a zero-width
/// joiner) is told apart from the letter it mimics.
fn foreign_char(name: &str) -> String {
    name.chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)))
        .map_or(String::new(), |(i, c)| {
            format!(" (character {} is U+{:04X} {c:?})", i + 1, u32::from(c))
        })
}

/// Whether `name` has the shape of a local account name we accept as owner.
pub fn is_account_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
}

/// authorized_keys options that take no value (the others contain `=`).
const FLAG_OPTIONS: [&str; 14] = [
    "agent-forwarding",
    "cert-authority",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-touch-required",
    "no-user-rc",
    "no-x11-forwarding",
    "port-forwarding",
    "pty",
    "restrict",
    "user-rc",
    "verify-required",
    "x11-forwarding",
];

/// Whether `text` is padded base64 whose unused trailing bits are zero: the
/// only spelling an encoder produces for its bytes.
fn is_canonical_base64(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return false;
    }
    let pad = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    let value = |b: u8| match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let data = &bytes[..bytes.len() - pad];
    if pad > 2 || data.iter().any(|&b| value(b).is_none()) {
        return false;
    }
    let last = data.last().and_then(|&b| value(b)).unwrap_or(0);
    match pad {
        1 => last & 0b11 == 0,
        2 => last & 0b1111 == 0,
        _ => true,
    }
}

/// Parses one plain OpenSSH public key line: `type base64 [comment]`.
pub fn parse_key(line: &str) -> Result<GuestKey, String> {
    if line.contains(['\n', '\r']) {
        return Err("key contains a line break; each key must be one line".into());
    }
    if line.contains('\0') {
        return Err("key contains a NUL byte".into());
    }
    let first = line.split_ascii_whitespace().next().unwrap_or("");
    if first.is_empty() {
        return Err("empty key; expected `type base64 [comment]`".into());
    }
    if first.contains('=')
        || first.contains('"')
        || first.contains(',')
        || FLAG_OPTIONS.iter().any(|o| first.eq_ignore_ascii_case(o))
    {
        return Err(format!(
            "key starts with options ({first}); options such as command= or from= are not allowed, only `type base64 [comment]`"
        ));
    }
    let key = PublicKey::from_openssh(line).map_err(|e| {
        format!("not an OpenSSH public key ({e}); expected `type base64 [comment]`")
    })?;
    let mut words = line.split_ascii_whitespace();
    let algorithm = words.next().unwrap_or_default().to_string();
    let blob = words.next().unwrap_or_default().to_string();
    if algorithm != key.algorithm().as_str() {
        return Err(format!(
            "key type `{first}` does not match the key data (`{}`)",
            key.algorithm().as_str()
        ));
    }
    // The blob is used as text (by the PAM hook and for "one key, one
    // guest"), so it must be the one canonical base64 spelling of the key.
    if !is_canonical_base64(&blob) {
        return Err("key's base64 is not in canonical form".into());
    }
    // The bytes too: ssh-key reads some encodings sshd refuses (an ed25519
    // key whose inner length field is wrong), which would also be a second
    // spelling of a key. Encoded without allocating; the canonical line is
    // never longer than the line it came from.
    let mut buf = vec![0u8; line.len() + 64];
    let canonical = key.encode_openssh(&mut buf).ok();
    if canonical.and_then(|c| c.split(' ').nth(1)) != Some(blob.as_str()) {
        return Err("key data is not in canonical form; sshd would not read this key".into());
    }
    Ok(GuestKey {
        algorithm,
        blob,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        comment: key.comment().to_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGg3Nt1a6dCd8L2F3A0nbpXK1jMo0d3nT3tJ8NQd3uBs a@x";
    pub const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF1hwYoxm+6UfuvTLRSqj2A0s7bF1hCz3wXlpY0R3aVQ b@y";

    fn errs(src: &str) -> Vec<String> {
        parse(src)
            .expect_err("should be invalid")
            .into_iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect()
    }

    #[test]
    fn empty_file_shares_nothing() {
        assert_eq!(parse("").unwrap(), Grants::default());
        assert_eq!(parse("# nothing\n").unwrap(), Grants::default());
    }

    #[test]
    fn defaults_grant_nothing() {
        let g = parse(&format!(
            "[owners.alice.guests.bob]\nkeys = [\"{KEY_A}\"]\n"
        ))
        .unwrap();
        let alice = g.owner("alice").unwrap();
        assert!(!alice.sharing);
        let bob = alice.guest("bob").unwrap();
        assert_eq!(bob.status, Status::Invited);
        assert!(!bob.has_access(alice.sharing));
        assert!(bob.has_access(true) == (bob.status == Status::Accepted));
    }

    #[test]
    fn full_example_parses() {
        let g = parse(&format!(
            "[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\n[owners.alice.guests.carol]\nstatus = \"left\"\nkeys = [\"{KEY_B}\"]\n"
        ))
        .unwrap();
        let alice = g.owner("alice").unwrap();
        assert!(alice.sharing);
        let bob = alice.guest("bob").unwrap();
        assert_eq!(bob.status, Status::Accepted);
        assert_eq!(bob.keys[0].algorithm, "ssh-ed25519");
        assert!(bob.keys[0].fingerprint.starts_with("SHA256:"));
        assert_eq!(bob.keys[0].comment, "a@x");
        assert_eq!(alice.guest("carol").unwrap().status, Status::Left);
    }

    #[test]
    fn typo_field_is_an_error_with_position() {
        let e = errs("[owners.alice.guests.bob]\nstauts = \"accepted\"\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("2:1: unknown field `stauts`"), "{e:?}");
    }

    #[test]
    fn unknown_status_is_an_error() {
        let e = errs("[owners.alice.guests.bob]\nstatus = \"acepted\"\n");
        assert!(e[0].starts_with("2:10: unknown variant `acepted`"), "{e:?}");
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let e = errs("[owners.alice]\nsharing = tru\n");
        assert!(e[0].starts_with("2:11:"), "{e:?}");
    }

    #[test]
    fn wrong_types_are_errors() {
        errs("[owners.alice]\nsharing = \"yes\"\n");
        errs("[owners.alice.guests.bob]\nkeys = \"ssh-ed25519 AAAA\"\n");
        errs("owners = 3\n");
        errs("[other]\n");
    }

    #[test]
    fn duplicate_tables_are_errors() {
        errs("[owners.alice]\n[owners.alice]\n");
    }

    #[test]
    fn bad_guest_names_are_errors() {
        for name in [
            "Bob",
            "-bob",
            ".bob",
            "bo b",
            "bоb",
            &"b".repeat(65),
            "b/../c",
        ] {
            let src = format!("[owners.alice.guests.{name:?}]\n");
            let e = errs(&src);
            assert!(e[0].contains("invalid guest name"), "{name}: {e:?}");
        }
        parse(&format!("[owners.alice.guests.{}]\n", "b".repeat(64))).unwrap();
        parse("[owners.alice.guests.0x.y_z-w]\n").unwrap_err();
        parse("[owners.alice.guests.\"0x.y_z-w\"]\n").unwrap();
    }

    #[test]
    fn look_alike_characters_are_named() {
        let e = errs("[owners.\"d\\u0430emon\"]\n");
        assert!(e[0].contains("(character 2 is U+0430 'а')"), "{e:?}");
        let e = errs("[owners.alice.guests.\"bo\\u200db\"]\n");
        assert!(
            e[0].contains("(character 3 is U+200D '\\u{200d}')"),
            "{e:?}"
        );
        let e = errs("[owners.alice.guests.\"\\uff42ob\"]\n");
        assert!(e[0].contains("(character 1 is U+FF42 'ｂ')"), "{e:?}");
    }

    #[test]
    fn flag_options_are_named_as_options() {
        for option in ["restrict", "no-pty", "cert-authority", "PTY"] {
            let e = parse_key(&format!("{option} {KEY_A}")).unwrap_err();
            assert!(e.contains("options such as"), "{option}: {e}");
        }
    }

    #[test]
    fn bad_owner_names_are_errors() {
        for name in ["Alice", "аlice", "a b", "../x", "", "1abc"] {
            let e = errs(&format!("[owners.{name:?}]\n"));
            assert!(e[0].contains("invalid owner name"), "{name}: {e:?}");
        }
    }

    #[test]
    fn keys_with_options_or_junk_are_errors() {
        let cases = [
            format!("command=\"/bin/sh\" {KEY_A}"),
            format!("no-pty {KEY_A}"),
            format!("restrict {KEY_A}"),
            format!("Cert-Authority {KEY_A}"),
            "ssh-ed25519 AAAAnotbase64!!".to_string(),
            "ssh-ed25519".to_string(),
            String::new(),
            format!("{KEY_A}\\nssh-ed25519 AAAA"),
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGg3Nt1a6dCd8L2F3A0nbpXK1jMo0d3nT3tJ8NQd3uBs"
                .to_string(),
        ];
        for key in cases {
            let src = format!(
                "[owners.alice.guests.bob]\nkeys = [\"{}\"]\n",
                key.replace('"', "\\\"")
            );
            let e = errs(&src);
            assert!(e[0].starts_with("2:"), "{key}: {e:?}");
        }
    }

    #[test]
    fn every_key_type_sshd_offers_parses() {
        let keys = [
            KEY_A,
            "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBMzqCPSJyE1Im61L/0OvhBBtkCV39DU3ad3EjNClZDLChyh05mothzD/v9pto7OvM1RAS8quho+24vx2qy2rASA= k@x",
            "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBGMfQZzZn541FrYdaDcT91Q7A3hQyfuErpEq34Qby6YogoTahnWgd9gSejwrLjowla4Uo2N7eMEtl+/xB1/UgBXa+bf5wwDkyZRpkV1UnUMBm2/JYKjIEICUGqoFaD41Kw== x",
            "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20AAAAIbmlzdHAyNTYAAABBBMzqCPSJyE1Im61L/0OvhBBtkCV39DU3ad3EjNClZDLChyh05mothzD/v9pto7OvM1RAS8quho+24vx2qy2rASAAAAAEc3NoOg== fido@x",
            "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkWAAAABHNzaDo= fido@x",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDdY36PpdGmJHE2BY4V5ngXxgCIULo2bAMOGDetoKt73iSBFIcA92q0btRfkAIrMxu4BPfcd62uEyIvuELW0Zskg2hj3B3V8hhyEaekRnLO2Owsy78XJEW9kWuhMYf1R7HCeQVERNV2fh8SiwbkAx6HaRSpFvQ9xkARmZw3pKG/3Q== k@x",
        ];
        for key in keys {
            let parsed = parse_key(key).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(Some(parsed.algorithm.as_str()), key.split(' ').next());
            assert_eq!(Some(parsed.blob.as_str()), key.split(' ').nth(1));
        }
    }

    #[test]
    fn key_of_two_guests_is_an_error_but_two_owners_is_fine() {
        let e = errs(&format!(
            "[owners.alice.guests.bob]\nkeys = [\"{KEY_A}\"]\n[owners.alice.guests.carol]\nkeys = [\"{KEY_A}\"]\n"
        ));
        assert!(e[0].contains("already belongs to guest `bob`"), "{e:?}");
        parse(&format!(
            "[owners.alice.guests.bob]\nkeys = [\"{KEY_A}\"]\n[owners.dave.guests.bob]\nkeys = [\"{KEY_A}\"]\n"
        ))
        .unwrap();
    }

    #[test]
    fn all_errors_are_reported() {
        let e = errs(&format!(
            "[owners.alice.guests.Bob]\nkeys = [\"junk\"]\n[owners.alice.guests.carol]\nkeys = [\"{KEY_A}\", \"nope\"]\n"
        ));
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn only_canonical_base64_is_accepted() {
        assert!(is_canonical_base64("AAAA"));
        assert!(is_canonical_base64("AAE="));
        assert!(is_canonical_base64("AQ=="));
        assert!(!is_canonical_base64("AAF="), "non-zero trailing bits");
        assert!(!is_canonical_base64("AR=="), "non-zero trailing bits");
        assert!(!is_canonical_base64("AAA"), "unpadded");
        assert!(!is_canonical_base64("A==="));
        assert!(!is_canonical_base64("AA=A"));
        // An RSA key's blob is padded: the same bytes with non-zero
        // trailing bits must not pass as a second spelling of the key.
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDRD8a2xAEbUSXu7gYI3EQ9LBwWAnxRXDyeqHW5Y2ALdOQWj7iGK6Gg6eTlVpD5KvbxEV3BvUx1yWxaEP3fJ7P7TxHAxtaq0m4aGMtdOUGwT5lqjqY3xv+M+z3iyWXmfDRBGlg6SNGXo8xn4tFJjnCjT9LMZN/1WNQzrDubGDXI7w==";
        parse_key(rsa).unwrap();
        assert!(parse_key(&rsa.replace("7w==", "7x==")).is_err());
    }

    #[test]
    fn non_canonical_key_data_is_refused() {
        // KEY_A with its inner length field 0x20 changed to 0x720: canonical
        // base64, and ssh-key reads it, but sshd does not.
        let e = parse_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAHIGg3Nt1a6dCd8L2F3A0nbpXK1jMo0d3nT3tJ8NQd3uBs a@x",
        )
        .unwrap_err();
        assert!(e.contains("not in canonical form"), "{e}");
        parse_key(KEY_A).unwrap();
        parse_key(&KEY_A.replace(" a@x", " a@x  and  more")).unwrap();
    }

    #[test]
    fn shipped_example_is_valid() {
        let g = parse(include_str!("../config/grants.example.toml")).unwrap();
        let alice = g.owner("alice").unwrap();
        assert!(alice.sharing);
        assert_eq!(alice.guest("bob").unwrap().status, Status::Accepted);
        assert_eq!(alice.guest("carol").unwrap().status, Status::Invited);
    }

    #[test]
    fn huge_file_is_refused() {
        let big = "#".repeat(MAX_GRANT_FILE_BYTES + 1);
        assert!(errs(&big)[0].contains("limit"));
    }

    #[test]
    fn deep_nesting_does_not_crash() {
        let src = format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(&src).is_err());
    }
}
