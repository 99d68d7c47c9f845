//! The grant file: who may log in as whom. Parsing and validation only — no
//! file system, no account database (see `policy` for that). The types it
//! builds are in `model`; single keys are checked in `key`.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use toml::Spanned;

use crate::grant::diag::Diagnostic;
use crate::grant::key::parse_key;
use crate::grant::limits::{self, Limits, Network, MAX_FROM};
use crate::grant::model::{Grants, Guest, GuestKey, Owner, Status, MAX_GRANT_FILE_BYTES};

/// `Default` is what serde's `default` gives a missing field.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    owners: BTreeMap<Spanned<String>, RawOwner>,
}

/// `Default` is what serde's `default` gives a missing field.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    #[serde(default)]
    sharing: bool,
    #[serde(default)]
    guests: BTreeMap<Spanned<String>, RawGuest>,
}

/// `Default` is what serde's `default` gives a missing field.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    keys: Vec<Spanned<String>>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    expires: Option<Spanned<toml::value::Datetime>>,
    #[serde(default)]
    from: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    forwarding: Option<bool>,
}

/// Parses and validates grant file text (TOML 1.1, as `toml` 1.x reads it).
/// Any finding makes the whole file invalid; all findings are returned, in
/// file order.
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
    // Keys are parsed here, in parallel on large files: it is most of the
    // work of a reload.
    let texts: Vec<&str> = raw
        .owners
        .values()
        .flat_map(|o| o.guests.values())
        .flat_map(|g| g.keys.iter())
        .map(|k| k.get_ref().as_str())
        .collect();
    let mut parsed_texts = parse_keys(&texts).into_iter();

    // The raw structures are taken apart as they are checked: names and
    // parsed keys move into the result, nothing is copied.
    let mut owners = Vec::new();
    for (owner_name, raw_owner) in raw.owners {
        let offset = owner_name.span().start;
        let owner_name = owner_name.into_inner();
        if let Err(why) = check_owner_name(&owner_name) {
            errors.push(offset, why);
        }
        let mut guests = Vec::with_capacity(raw_owner.guests.len());
        // Where each key is, in order, and whether every one parsed.
        let mut key_offsets = Vec::new();
        let mut all_parsed = true;
        for (guest_name, raw_guest) in raw_owner.guests {
            let guest_at = guest_name.span().start;
            let guest_name = guest_name.into_inner();
            if let Err(why) = check_guest_name(&guest_name) {
                errors.push(guest_at, why);
            }
            let mut keys = Vec::with_capacity(raw_guest.keys.len());
            for key in &raw_guest.keys {
                let at = key.span().start;
                let parsed = parsed_texts
                    .next()
                    .unwrap_or_else(|| Err("key was not parsed".into()));
                match parsed {
                    Ok(parsed) => {
                        keys.push(parsed);
                        key_offsets.push(at);
                    }
                    Err(why) => {
                        all_parsed = false;
                        errors.push(at, why);
                    }
                }
            }
            let limits = guest_limits(&raw_guest, &mut errors);
            guests.push(Guest {
                name: guest_name,
                status: raw_guest.status.unwrap_or(Status::Invited),
                keys,
                admin: raw_guest.admin,
                limits,
            });
        }
        // One key may belong to one guest of an owner. (Checked only when
        // every key parsed, so keys and their positions line up.)
        if all_parsed {
            let mut seen: HashMap<&str, &str, foldhash::fast::RandomState> =
                HashMap::with_capacity_and_hasher(key_offsets.len(), Default::default());
            let mut key_offsets = key_offsets.into_iter();
            for guest in &guests {
                for key in &guest.keys {
                    let at = key_offsets.next().unwrap_or(offset);
                    if let Some(first) = seen.insert(&*key.blob, guest.name.as_str()) {
                        errors.push(
                            at,
                            format!(
                                "key {} of guest `{}` already belongs to guest `{first}` of owner `{owner_name}`; one key may belong to one guest only",
                                key.fingerprint,
                                guest.name,
                            ),
                        );
                    }
                }
            }
        }
        owners.push(Owner {
            name: owner_name,
            offset,
            sharing: raw_owner.sharing,
            guests,
        });
    }
    errors.finish(Grants { owners })
}

/// A guest's `expires`, `from` and `forwarding`; findings go to `errors`.
fn guest_limits(raw: &RawGuest, errors: &mut Errors) -> Limits {
    let mut limits = Limits {
        forwarding: raw.forwarding.unwrap_or(true),
        ..Limits::default()
    };
    if let Some(value) = &raw.expires {
        match limits::deadline(value.get_ref()) {
            Ok(at) => limits.expires = Some(at),
            Err(why) => errors.push(value.span().start, why),
        }
    }
    if let Some(list) = &raw.from {
        let entries = list.get_ref();
        if entries.is_empty() {
            errors.push(
                list.span().start,
                "`from` is empty; list the client addresses or networks allowed, or leave `from` out to allow any".into(),
            );
        } else if entries.len() > MAX_FROM {
            errors.push(
                list.span().start,
                format!(
                    "`from` has {} entries; the limit is {MAX_FROM}",
                    entries.len()
                ),
            );
        }
        let mut nets: Vec<Network> = Vec::new();
        for entry in entries.iter().take(MAX_FROM + 1) {
            match entry.get_ref().parse::<Network>() {
                Ok(net) if nets.contains(&net) => {
                    errors.push(entry.span().start, format!("`from` lists {net} twice"))
                }
                Ok(net) => nets.push(net),
                Err(why) => errors.push(entry.span().start, format!("`from`: {why}")),
            }
        }
        limits.from = Some(nets);
    }
    limits
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
fn parse_keys(keys: &[&str]) -> Vec<Result<GuestKey, String>> {
    const PER_THREAD_MIN: usize = 2_000;
    let threads = crate::sys::cpus().min(keys.len() / PER_THREAD_MIN).max(1);
    if threads == 1 {
        return keys.iter().map(|k| parse_key(k)).collect();
    }
    let chunk = keys.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|k| parse_key(k)).collect::<Vec<_>>()))
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
    fn admin_is_false_unless_set_true() {
        let g = parse("[owners.alice.guests.bob]\n[owners.alice.guests.carol]\nadmin = true\n[owners.alice.guests.dave]\nadmin = false\n").unwrap();
        let alice = g.owner("alice").unwrap();
        assert!(!alice.guest("bob").unwrap().admin);
        assert!(alice.guest("carol").unwrap().admin);
        assert!(!alice.guest("dave").unwrap().admin);
        for value in ["\"yes\"", "1", "[true]", "{}", "\"true\""] {
            let e = errs(&format!("[owners.alice.guests.bob]\nadmin = {value}\n"));
            assert!(e[0].starts_with("2:9: invalid type"), "{value}: {e:?}");
        }
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
    fn shipped_example_is_valid() {
        let g = parse(include_str!("../../config/grants.example.toml")).unwrap();
        let alice = g.owner("alice").unwrap();
        assert!(alice.sharing);
        assert_eq!(alice.guest("bob").unwrap().status, Status::Accepted);
        assert_eq!(alice.guest("carol").unwrap().status, Status::Invited);
    }

    fn guest_with(fields: &str) -> String {
        format!(
            "[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\n{fields}\n"
        )
    }

    #[test]
    fn limits_parse() {
        let g = parse(&guest_with(
            "expires = 2026-12-01T18:00:00Z\nfrom = [\"203.0.113.0/24\", \"2001:db8::/32\", \"198.51.100.7\"]\nforwarding = false",
        ))
        .unwrap();
        let bob = g.owner("alice").unwrap().guest("bob").unwrap();
        assert_eq!(bob.limits.expires, Some(1_796_148_000));
        assert_eq!(bob.limits.from.as_ref().map(Vec::len), Some(3));
        assert!(!bob.limits.forwarding);
        let plain = parse(&guest_with("")).unwrap();
        assert_eq!(
            plain.owner("alice").unwrap().guest("bob").unwrap().limits,
            Limits::default()
        );
        // A past deadline is valid in the file: it means no access.
        parse(&guest_with("expires = 1999-01-01T00:00:00Z")).unwrap();
    }

    #[test]
    fn bad_limits_are_positioned_errors() {
        let many = vec!["\"10.0.0.1\""; MAX_FROM + 1].join(", ");
        let cases = [
            (
                "expires = 2026-12-01T18:00:00",
                "4:11: `expires` = 2026-12-01T18:00:00 has no UTC offset",
            ),
            (
                "expires = 2026-12-01",
                "4:11: `expires` = 2026-12-01 is a date alone",
            ),
            (
                "expires = 18:00:00",
                "4:11: `expires` = 18:00:00 is a time alone",
            ),
            ("expires = \"2026-12-01T18:00:00Z\"", "4:11:"),
            (
                "expires = 0000-01-01T00:00:00Z",
                "4:11: `expires` = 0000-01-01T00:00:00Z: year 0 is out of range",
            ),
            ("expires = 1", "4:11:"),
            ("from = []", "4:8: `from` is empty"),
            ("from = \"10.0.0.1\"", "4:8:"),
            (
                "from = [\"10.0.0.300\"]",
                "4:9: `from`: \"10.0.0.300\" is not an IPv4 or IPv6 address",
            ),
            (
                "from = [\"10.0.0.1/24\"]",
                "4:9: `from`: \"10.0.0.1/24\" has host bits set",
            ),
            (
                "from = [\"10.0.0.0/8\", \"10.0.0.0/8\"]",
                "4:23: `from` lists 10.0.0.0/8 twice",
            ),
            ("from = [\"*\"]", "4:9:"),
            ("from = [1]", "4:9:"),
            (
                &format!("from = [{many}]"),
                "4:8: `from` has 65 entries; the limit is 64",
            ),
            ("forwarding = \"no\"", "4:14:"),
            ("forwarding = 0", "4:14:"),
        ];
        for (fields, want) in cases {
            let e = errs(&guest_with(fields));
            assert!(e[0].starts_with(want), "{fields}: {e:?}");
        }
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
