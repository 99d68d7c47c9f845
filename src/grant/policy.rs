//! Who may log in with which key: the grant file compiled against the local
//! account database. Pure: the account database is a parameter.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::grant::diag::Diagnostic;
use crate::grant::limits::Limits;
use crate::grant::model::Grants;

/// The part of a local account the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
}

/// The local account database.
pub trait Accounts {
    /// `Ok(None)` when no such account exists; `Err` when the database could
    /// not answer (the caller must then fail closed).
    fn lookup(&self, name: &str) -> Result<Option<Account>, String>;
}

/// One key that may log in as an owner, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedKey {
    pub guest: Arc<str>,
    pub algorithm: String,
    pub blob: Arc<str>,
    pub fingerprint: Arc<str>,
    /// The guest's limits as sshd options ([`Limits::options`]); empty if
    /// none.
    pub options: String,
    /// The guest's deadline, if any.
    pub expires: Option<i64>,
}

/// Everything that may log in as one owner through vmshare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerAccess {
    pub uid: u32,
    pub keys: Vec<GrantedKey>,
}

/// The compiled grant file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Owners that are local, non-root accounts, by name.
    pub owners: BTreeMap<String, OwnerAccess>,
    /// Findings that do not invalidate the file (owners that are not local
    /// accounts, and so are inert).
    pub notes: Vec<Diagnostic>,
}

/// The comment that tags each key line with its guest.
pub const GUEST_TAG: &str = "vmshare:";

impl OwnerAccess {
    /// The authorized_keys text the key lookup prints for this owner.
    pub fn authorized_keys(&self) -> String {
        let mut out = String::new();
        for k in &self.keys {
            push_key_line(&mut out, k);
        }
        out
    }

    /// The line for key (`algorithm`, `blob`), if it is granted.
    pub fn key_line(&self, algorithm: &str, blob: &str) -> Option<String> {
        self.keys
            .iter()
            .find(|k| k.algorithm == algorithm && *k.blob == *blob)
            .map(key_line)
    }

    /// The earliest deadline of this owner's keys, if any has one.
    pub fn earliest_deadline(&self) -> Option<i64> {
        self.keys.iter().filter_map(|k| k.expires).min()
    }
}

impl Policy {
    /// The first deadline after `now` of any granted key: when the daemon
    /// must look at the sessions again.
    pub fn next_deadline(&self, now: i64) -> Option<i64> {
        self.owners
            .values()
            .flat_map(|a| &a.keys)
            .filter_map(|k| k.expires)
            .filter(|&at| at > now)
            .min()
    }
}

/// One authorized_keys line, tagged with the guest it belongs to:
/// `[OPTIONS ]TYPE BASE64 vmshare:GUEST`.
pub fn key_line(key: &GrantedKey) -> String {
    let mut line = String::new();
    push_key_line(&mut line, key);
    line
}

/// The length of [`key_line`] for `key`, without writing it.
pub fn key_line_len(key: &GrantedKey) -> usize {
    let options = if key.options.is_empty() {
        0
    } else {
        key.options.len() + 1
    };
    options + key.algorithm.len() + key.blob.len() + GUEST_TAG.len() + key.guest.len() + 3
}

/// Appends [`key_line`] to `out` (no allocation of its own).
pub fn push_key_line(out: &mut String, key: &GrantedKey) {
    if !key.options.is_empty() {
        out.push_str(&key.options);
        out.push(' ');
    }
    for piece in [
        &key.algorithm,
        " ",
        &key.blob,
        " ",
        GUEST_TAG,
        &key.guest,
        "\n",
    ] {
        out.push_str(piece);
    }
}

/// One line of [`OwnerAccess::authorized_keys`], taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLine<'a> {
    /// Empty when the guest has no limits.
    pub options: &'a str,
    pub algorithm: &'a str,
    pub blob: &'a str,
    pub guest: &'a str,
}

impl<'a> KeyLine<'a> {
    /// Reads a line as [`push_key_line`] writes it (without its newline);
    /// `None` for anything else.
    pub fn parse(line: &'a str) -> Option<Self> {
        // Five words at most are looked at: a line of more is no line of
        // ours (and judging thousands of lines allocates nothing, and
        // finds the spaces in one search).
        let mut words: [Option<&str>; 5] = [None; 5];
        let mut start = 0;
        let ends = memchr::memchr_iter(b' ', line.as_bytes()).chain([line.len()]);
        for (word, end) in words.iter_mut().zip(ends) {
            *word = line.get(start..end);
            start = end + 1;
        }
        let (options, algorithm, blob, tag) = match words {
            [Some(o), Some(a), Some(b), Some(t), None] if !o.is_empty() => (o, a, b, t),
            [Some(a), Some(b), Some(t), None, None] => ("", a, b, t),
            _ => return None,
        };
        let guest = tag.strip_prefix(GUEST_TAG)?;
        (!algorithm.is_empty() && !blob.is_empty()).then_some(KeyLine {
            options,
            algorithm,
            blob,
            guest,
        })
    }

    /// The guest's limits; `None` if the options cannot be read (then the
    /// key grants nothing).
    pub fn limits(&self) -> Option<Limits> {
        Limits::from_options(self.options)
    }
}

/// Whether `line` (one line of [`OwnerAccess::authorized_keys`], with or
/// without its newline) is the line of key (`algorithm`, `blob`): the same
/// test as [`line_in_lines`].
pub fn is_line_of(line: &str, algorithm: &str, blob: &str) -> bool {
    let line = line.strip_suffix('\n').unwrap_or(line);
    !line.contains('\n') && line_in_lines(line, algorithm, blob).is_some()
}

/// The line of key (`algorithm`, `blob`) in authorized_keys text produced
/// by [`OwnerAccess::authorized_keys`]: the first, if there are several.
pub fn line_in_lines<'a>(lines: &'a str, algorithm: &str, blob: &str) -> Option<KeyLine<'a>> {
    lines
        .lines()
        .filter_map(KeyLine::parse)
        .find(|l| l.algorithm == algorithm && l.blob == blob)
}

/// Finds the guest whose key (`algorithm`, `blob`) appears in authorized_keys
/// text produced by [`OwnerAccess::authorized_keys`].
pub fn guest_in_lines<'a>(lines: &'a str, algorithm: &str, blob: &str) -> Option<&'a str> {
    line_in_lines(lines, algorithm, blob).map(|l| l.guest)
}

/// Whether an owner's line (as [`push_key_line`] writes it, with or without
/// its newline) is still good at `now`: a line whose deadline has passed,
/// or whose options cannot be read, is not printed.
pub fn line_is_current(line: &str, now: i64) -> bool {
    KeyLine::parse(line.strip_suffix('\n').unwrap_or(line))
        .and_then(|l| l.limits())
        .is_some_and(|limits| !limits.expired(now))
}

/// The lines of `lines` that are current at `now` ([`line_is_current`]).
pub fn current_lines(lines: &str, now: i64) -> String {
    lines
        .split_inclusive('\n')
        .filter(|l| line_is_current(l, now))
        .collect()
}

/// What the index keeps per key: its type, its guest and the guest's
/// limits (`None`: unreadable, so nothing is granted).
type Indexed = (String, String, Option<Limits>);

/// An owner's granted keys indexed by key, for judging many sessions at
/// once: the same answer as [`line_in_lines`] on the owner's lines. Keyed
/// by the blob (which encodes the key type too), so a lookup allocates
/// nothing.
#[derive(Debug, Default)]
pub struct KeyIndex(HashMap<String, Indexed>);

impl KeyIndex {
    /// The keys of `access` whose blob `keep` wants: a pass indexes only
    /// the keys of the sessions it judges, not every key of the owner.
    pub fn of(access: &OwnerAccess, keep: impl Fn(&str) -> bool) -> Self {
        let mut index = KeyIndex::default();
        for k in access.keys.iter().filter(|k| keep(&k.blob)) {
            index.add(
                &k.algorithm,
                &k.blob,
                &k.guest,
                Limits::from_options(&k.options),
            );
        }
        index
    }

    /// The first line for a key wins, as in `line_in_lines`.
    fn add(&mut self, algorithm: &str, blob: &str, guest: &str, limits: Option<Limits>) {
        self.0
            .entry(blob.to_string())
            .or_insert_with(|| (algorithm.to_string(), guest.to_string(), limits));
    }

    /// The guest key (`algorithm`, `blob`) belongs to, if any.
    pub fn guest(&self, algorithm: &str, blob: &str) -> Option<&str> {
        self.grant(algorithm, blob).map(|(guest, _)| guest)
    }

    /// The guest key (`algorithm`, `blob`) belongs to and its limits.
    pub fn grant(&self, algorithm: &str, blob: &str) -> Option<(&str, Option<&Limits>)> {
        self.0
            .get(blob)
            .filter(|(a, ..)| a == algorithm)
            .map(|(_, guest, limits)| (guest.as_str(), limits.as_ref()))
    }
}

/// Compiles validated grants against the account database. `source` is the
/// grant file text, for positions in findings. Errors make the whole file
/// grant nothing.
pub fn compile(
    grants: &Grants,
    source: &str,
    accounts: &dyn Accounts,
) -> Result<Policy, Vec<Diagnostic>> {
    let mut policy = Policy::default();
    let mut errors = Vec::new();
    for owner in &grants.owners {
        let account = match accounts.lookup(&owner.name) {
            Ok(Some(account)) => account,
            Ok(None) => {
                policy.notes.push(Diagnostic::at(
                    source,
                    owner.offset,
                    format!(
                        "owner `{}` is not a local account; its guests get no access",
                        owner.name
                    ),
                ));
                continue;
            }
            Err(e) => {
                errors.push(Diagnostic::at(source, owner.offset, e));
                continue;
            }
        };
        if account.uid == 0 {
            errors.push(Diagnostic::at(
                source,
                owner.offset,
                format!("owner `{}` has uid 0; root is never shared", owner.name),
            ));
            continue;
        }
        let granted = owner
            .guests
            .iter()
            .filter(|g| g.has_access(owner.sharing))
            .map(|g| g.keys.len())
            .sum();
        let mut access = OwnerAccess {
            uid: account.uid,
            keys: Vec::with_capacity(granted),
        };
        for guest in &owner.guests {
            if !guest.has_access(owner.sharing) {
                continue;
            }
            let options = guest.limits.options();
            // The guest's name once for all its keys; blobs and
            // fingerprints shared with the grants, not copied.
            let name: Arc<str> = Arc::from(guest.name.as_str());
            for key in &guest.keys {
                access.keys.push(GrantedKey {
                    guest: Arc::clone(&name),
                    algorithm: key.algorithm.clone(),
                    blob: Arc::clone(&key.blob),
                    fingerprint: Arc::clone(&key.fingerprint),
                    options: options.clone(),
                    expires: guest.limits.expires,
                });
            }
        }
        policy.owners.insert(owner.name.clone(), access);
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::grant::model::Status;
    use crate::grant::parse::parse;
    use crate::grant::parse::tests::{KEY_A, KEY_B};
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// An account database held in memory.
    pub struct FakeAccounts(pub HashMap<String, u32>);

    impl FakeAccounts {
        pub fn with(names: &[(&str, u32)]) -> Self {
            FakeAccounts(names.iter().map(|(n, u)| (n.to_string(), *u)).collect())
        }
    }

    impl Accounts for FakeAccounts {
        fn lookup(&self, name: &str) -> Result<Option<Account>, String> {
            Ok(self.0.get(name).map(|&uid| Account { uid }))
        }
    }

    fn compiled(src: &str, accounts: &FakeAccounts) -> Result<Policy, Vec<Diagnostic>> {
        compile(&parse(src).expect("valid grants"), src, accounts)
    }

    #[test]
    fn accepted_guest_of_sharing_owner_is_printed_and_tagged() {
        let src = format!(
            "[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\n[owners.alice.guests.carol]\nkeys = [\"{KEY_B}\"]\n"
        );
        let p = compiled(&src, &FakeAccounts::with(&[("alice", 1000)])).unwrap();
        let text = p.owners["alice"].authorized_keys();
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGg3"));
        assert!(text.ends_with(" vmshare:bob\n"));
        let blob = KEY_A.split(' ').nth(1).unwrap();
        assert_eq!(guest_in_lines(&text, "ssh-ed25519", blob), Some("bob"));
        let other = KEY_B.split(' ').nth(1).unwrap();
        assert_eq!(guest_in_lines(&text, "ssh-ed25519", other), None);
    }

    #[test]
    fn root_owner_invalidates_the_file() {
        let src = "[owners.root]\nsharing = true\n[owners.alice]\nsharing = true\n";
        let e = compiled(src, &FakeAccounts::with(&[("root", 0), ("alice", 1000)])).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("root is never shared"));
        assert_eq!(e[0].line, 1);
    }

    #[test]
    fn unknown_owner_is_inert_and_reported() {
        let src = format!(
            "[owners.ghost]\nsharing = true\n[owners.ghost.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\n[owners.alice]\nsharing = true\n"
        );
        let p = compiled(&src, &FakeAccounts::with(&[("alice", 1000)])).unwrap();
        assert!(!p.owners.contains_key("ghost"));
        assert!(p.owners.contains_key("alice"));
        assert_eq!(p.notes.len(), 1);
        assert!(p.notes[0].message.contains("not a local account"));
    }

    #[test]
    fn account_database_failure_fails_closed() {
        struct Broken;
        impl Accounts for Broken {
            fn lookup(&self, _: &str) -> Result<Option<Account>, String> {
                Err("nss down".into())
            }
        }
        let src = "[owners.alice]\nsharing = true\n";
        assert!(compile(&parse(src).unwrap(), src, &Broken).is_err());
    }

    // Property: for any generated grant file, the lookup emits exactly the
    // keys of accepted guests of sharing owners, each once.
    fn arb_key() -> impl Strategy<Value = String> {
        prop::array::uniform32(any::<u8>()).prop_map(|bytes| {
            let key = ssh_key::public::Ed25519PublicKey(bytes);
            ssh_key::PublicKey::from(key).to_openssh().expect("encodes")
        })
    }

    fn arb_status() -> impl Strategy<Value = Option<Status>> {
        prop::option::of(prop::sample::select(Status::ALL.to_vec()))
    }

    prop_compose! {
        fn arb_guest()(name in "[a-z0-9][a-z0-9._-]{0,8}", status in arb_status(),
                       keys in prop::collection::vec(arb_key(), 0..3)) -> (String, Option<Status>, Vec<String>) {
            (name, status, keys)
        }
    }

    prop_compose! {
        fn arb_owner()(name in "[a-z][a-z0-9]{0,6}", sharing in prop::option::of(any::<bool>()),
                       local in any::<bool>(),
                       guests in prop::collection::vec(arb_guest(), 0..4)) -> (String, Option<bool>, bool, Vec<(String, Option<Status>, Vec<String>)>) {
            (name, sharing, local, guests)
        }
    }

    type GenOwner = (
        String,
        Option<bool>,
        bool,
        Vec<(String, Option<Status>, Vec<String>)>,
    );

    /// Renders generated owners as a grant file, with the account database
    /// and, per owner, the `guest blob` pairs that must be printed.
    fn render(owners: &[GenOwner]) -> (String, HashMap<String, u32>, HashMap<String, Vec<String>>) {
        let mut src = String::new();
        let mut accounts = HashMap::new();
        let mut expected: HashMap<String, Vec<String>> = HashMap::new();
        let mut seen_owner = std::collections::HashSet::new();
        for (oname, sharing, local, guests) in owners {
            if !seen_owner.insert(oname.clone()) {
                continue;
            }
            if *local {
                accounts.insert(oname.clone(), 1000 + accounts.len() as u32);
            }
            src.push_str(&format!("[owners.\"{oname}\"]\n"));
            if let Some(s) = sharing {
                src.push_str(&format!("sharing = {s}\n"));
            }
            let mut seen_guest = std::collections::HashSet::new();
            for (gname, status, keys) in guests {
                if !seen_guest.insert(gname.clone()) {
                    continue;
                }
                src.push_str(&format!("[owners.\"{oname}\".guests.\"{gname}\"]\n"));
                if let Some(st) = status {
                    src.push_str(&format!("status = \"{st}\"\n"));
                }
                let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
                src.push_str(&format!("keys = [{}]\n", quoted.join(", ")));
                if *local && sharing == &Some(true) && status == &Some(Status::Accepted) {
                    for k in keys {
                        let blob = k.split(' ').nth(1).unwrap().to_string();
                        expected
                            .entry(oname.clone())
                            .or_default()
                            .push(format!("{gname} {blob}"));
                    }
                }
            }
        }
        (src, accounts, expected)
    }

    /// A line taken apart by `str::split`, as the key line's reader did:
    /// what the one-search reader must give.
    fn key_line_by_split(line: &str) -> Option<(&str, &str, &str, &str)> {
        let mut words = line.split(' ');
        let words: [Option<&str>; 5] = std::array::from_fn(|_| words.next());
        let (o, a, b, t) = match words {
            [Some(o), Some(a), Some(b), Some(t), None] if !o.is_empty() => (o, a, b, t),
            [Some(a), Some(b), Some(t), None, None] => ("", a, b, t),
            _ => return None,
        };
        let guest = t.strip_prefix(GUEST_TAG)?;
        (!a.is_empty() && !b.is_empty()).then_some((o, a, b, guest))
    }

    proptest! {
        #[test]
        fn a_key_line_is_read_as_split_reads_it(
            words in proptest::collection::vec("[ab=,\"]{0,3}|vmshare:[a-c]{0,2}", 0..7),
            gaps in proptest::collection::vec(" |  ", 6),
        ) {
            let mut line = String::new();
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    line.push_str(&gaps[i - 1]);
                }
                line.push_str(w);
            }
            let read = KeyLine::parse(&line).map(|l| (l.options, l.algorithm, l.blob, l.guest));
            prop_assert_eq!(read, key_line_by_split(&line), "{:?}", line);
        }
    }

    #[test]
    fn a_key_lines_length_is_known_before_it_is_written() {
        let key = |options: &str| GrantedKey {
            guest: "bob".into(),
            algorithm: "ssh-ed25519".into(),
            blob: "AAAA".into(),
            fingerprint: "SHA256:x".into(),
            options: options.into(),
            expires: None,
        };
        for options in ["", "from=\"192.0.2.1\"", "no-agent-forwarding,no-user-rc"] {
            let k = key(options);
            assert_eq!(key_line_len(&k), key_line(&k).len(), "{options:?}");
        }
    }

    #[test]
    fn a_key_line_has_three_or_four_words() {
        let read = |l| KeyLine::parse(l).map(|l| (l.options, l.algorithm, l.blob, l.guest));
        assert_eq!(read("a b vmshare:c"), Some(("", "a", "b", "c")));
        assert_eq!(read("o a b vmshare:c"), Some(("o", "a", "b", "c")));
        assert_eq!(read("o a b vmshare:c d"), None);
        assert_eq!(read("a  b vmshare:c"), None);
        assert_eq!(read("a b c"), None);
    }

    proptest! {
        #[test]
        fn lookup_emits_exactly_the_accepted_keys(owners in prop::collection::vec(arb_owner(), 0..4)) {
            let (src, accounts, expected) = render(&owners);
            // Random 32-byte keys never collide, so generated files are valid.
            let grants = parse(&src).expect("generated file is valid");
            let policy = compile(&grants, &src, &FakeAccounts(accounts.clone())).expect("compiles");
            for (oname, ..) in &owners {
                let printed = policy.owners.get(oname).map(|a| a.authorized_keys()).unwrap_or_default();
                let mut got: Vec<String> = printed.lines().map(|l| {
                    let p: Vec<&str> = l.split(' ').collect();
                    format!("{} {}", p[2].strip_prefix(GUEST_TAG).unwrap(), p[1])
                }).collect();
                let mut want = expected.get(oname).cloned().unwrap_or_default();
                got.sort();
                want.sort();
                prop_assert_eq!(got, want);
                if !accounts.contains_key(oname) {
                    prop_assert!(!policy.owners.contains_key(oname));
                }
            }
        }

        #[test]
        fn any_invalid_file_grants_nothing(
            owners in prop::collection::vec(arb_owner(), 1..4),
            flaw in 0..6usize,
            key in arb_key(),
        ) {
            let (mut src, mut accounts, _) = render(&owners);
            let first_owner = &owners[0].0;
            match flaw {
                0 => src.push_str("[owners.x.guests.y]\nstauts = \"accepted\"\n"),
                1 => src.push_str(&format!("[owners.\"{first_owner}\"]\n")),
                2 => src.push_str("[owners.x.guests.y]\nkeys = [\"not a key\"]\n"),
                3 => src.push_str(&format!("[owners.x.guests.y]\nkeys = [\"{key}\"]\n[owners.x.guests.z]\nkeys = [\"{key}\"]\n")),
                4 => {
                    src.push_str("[owners.root]\nsharing = true\n");
                    accounts.insert("root".into(), 0);
                }
                _ => src.push_str("[owners.x.guests.\"Y\"]\n"),
            }
            let result = parse(&src).map_err(|_| ()).and_then(|g| {
                compile(&g, &src, &FakeAccounts(accounts)).map_err(|_| ())
            });
            prop_assert!(result.is_err(), "flaw {} accepted:\n{}", flaw, src);
        }
    }

    #[test]
    fn limits_ride_on_the_line_and_expired_lines_are_not_current() {
        let src = format!(
            "[owners.alice]\nsharing = true\n[owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\nexpires = 2026-12-01T18:00:00Z\nfrom = [\"127.0.0.2\", \"::1\"]\nforwarding = false\n[owners.alice.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{KEY_B}\"]\n"
        );
        let p = compiled(&src, &FakeAccounts::with(&[("alice", 1000)])).unwrap();
        let text = p.owners["alice"].authorized_keys();
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("expiry-time=\"20261201180000Z\",from=\"127.0.0.2,::1\",restrict,pty ssh-ed25519 AAAA"),
            "{first}"
        );
        let blob = KEY_A.split(' ').nth(1).unwrap();
        let line = line_in_lines(&text, "ssh-ed25519", blob).unwrap();
        assert_eq!(line.guest, "bob");
        let limits = line.limits().unwrap();
        assert_eq!(limits.expires, Some(1_796_148_000));
        assert!(!limits.forwarding);
        assert_eq!(current_lines(&text, 1_796_147_999), text);
        let after = current_lines(&text, 1_796_148_000);
        assert_eq!(after.lines().count(), 1);
        assert!(after.ends_with(" vmshare:carol\n"));
        let index = KeyIndex::of(&p.owners["alice"], |_| true);
        assert_eq!(index.grant("ssh-ed25519", blob).map(|g| g.0), Some("bob"));
        assert_eq!(
            index.grant("ssh-ed25519", blob).and_then(|g| g.1),
            Some(&limits)
        );
        assert_eq!(p.next_deadline(0), Some(1_796_148_000));
        // A line whose options vmshare did not write is never current.
        assert!(!line_is_current(
            "command=\"x\" ssh-ed25519 A vmshare:bob",
            0
        ));
        assert!(line_is_current("ssh-ed25519 A vmshare:bob\n", 0));
    }

    #[test]
    fn key_index_answers_like_the_lines() {
        let src = format!(
            "[owners.alice]\nsharing = true\n\
             [owners.alice.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{KEY_A}\"]\n\
             [owners.alice.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{KEY_B}\"]\n"
        );
        let p = compiled(&src, &FakeAccounts::with(&[("alice", 1000)])).unwrap();
        let access = &p.owners["alice"];
        let lines = access.authorized_keys();
        let index = KeyIndex::of(access, |_| true);
        let (a, b) = (
            KEY_A.split(' ').nth(1).unwrap(),
            KEY_B.split(' ').nth(1).unwrap(),
        );
        for (algorithm, blob) in [
            ("ssh-ed25519", a),
            ("ssh-ed25519", b),
            ("ssh-rsa", a),
            ("x", "y"),
        ] {
            assert_eq!(
                index.guest(algorithm, blob),
                guest_in_lines(&lines, algorithm, blob),
                "{algorithm} {blob}"
            );
        }
        assert_eq!(index.guest("ssh-ed25519", a), Some("bob"));
        // Indexing only the keys asked about answers the same for them,
        // and grants nothing else.
        let wanted: std::collections::HashSet<&str> = [a, "Z"].into();
        let some = KeyIndex::of(access, |blob| wanted.contains(blob));
        assert_eq!(some.guest("ssh-ed25519", a), Some("bob"));
        assert_eq!(some.guest("ssh-ed25519", b), None);
        assert_eq!(some.guest("x", "Z"), None);
    }

    /// How lines were taken apart before (one `Vec` per line): the
    /// allocation-free reading must agree with it.
    fn key_line_by_vec(line: &str) -> Option<KeyLine<'_>> {
        let words: Vec<&str> = line.split(' ').collect();
        let (options, rest) = match words[..] {
            [o, a, b, t] if !o.is_empty() => (o, [a, b, t]),
            [a, b, t] => ("", [a, b, t]),
            _ => return None,
        };
        let [algorithm, blob, tag] = rest;
        let guest = tag.strip_prefix(GUEST_TAG)?;
        (!algorithm.is_empty() && !blob.is_empty()).then_some(KeyLine {
            options,
            algorithm,
            blob,
            guest,
        })
    }

    proptest! {
        #[test]
        fn key_lines_read_as_before(line in "[ ab=\"vmshare:]{0,24}") {
            prop_assert_eq!(KeyLine::parse(&line), key_line_by_vec(&line));
        }
    }
}
