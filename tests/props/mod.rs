//! Properties of the code that reads hostile input, shared by the fuzz
//! targets (`fuzz/`) and their short proptest versions
//! (`tests/fuzz_props.rs`). Each `check_*` takes one input and panics when
//! the property does not hold.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use vmshare::control::{self, Request};
use vmshare::grant::lifecycle::{Change, EditError, Layout, SetLimits};
use vmshare::grant::model::{Grants, Status};
use vmshare::grant::policy::{Account, Accounts, GUEST_TAG};
use vmshare::session::hook::{self, AuthKey, Decision, OwnerKeys};
use vmshare::store::edit::apply_explained;
use vmshare::store::snapshot::{self, Lookup};
use vmshare::store::source::{self, FileVersion};

/// Real public keys of the types sshd accepts (and one it no longer does).
pub const KEYS: [&str; 6] = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJ4DD4yKSzEaReQiW3Zq+shurNhgh1qY1tGmZ3lMmkW k@x",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNaFPlrBLiayZstrypSItk1wj697Z7P+QAJY5pEY5oc k2@x",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDv/Jcqnd7XFO4MlCghccvSPZCSM36NQX1VUF9H6yB1C k3@x",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBMzqCPSJyE1Im61L/0OvhBBtkCV39DU3ad3EjNClZDLChyh05mothzD/v9pto7OvM1RAS8quho+24vx2qy2rASA= k@x",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDdY36PpdGmJHE2BY4V5ngXxgCIULo2bAMOGDetoKt73iSBFIcA92q0btRfkAIrMxu4BPfcd62uEyIvuELW0Zskg2hj3B3V8hhyEaekRnLO2Owsy78XJEW9kWuhMYf1R7HCeQVERNV2fh8SiwbkAx6HaRSpFvQ9xkARmZw3pKG/3Q== k@x",
    "ssh-dss AAAAB3NzaC1kc3MAAACBAObmtYejwmWZYZqYhIecOtzmJ9k2vPfJlStLblRe3J5Agjq9pDCAK+sVMe3G07rhKPEih6CZ5S4l0Ez3EgR2hpj793U3ZzeRU3vDRa3mkP09VlTSvSF6MGvOMKs0RKuTtq9CgHhFYVWHLPr16VWe5yG6sUL4q8GVEZatSwYydCudAAAAFQDE3/x538IAJG/Q3HfxCrAunG0kDwAAAIAF9DXpLUn4uwvPDi24cu8dGn6LKcO2g5+vTSc/upQo9lD2SVaps3845QczTsuGpt830V3ikxWhI1dtahuypYF1f8xZjYgc9oGbM3F0/LBpr7oDZtAjHYJOtV2A5M0+TIyjdgjL3/WZzTSWB8LuICVVCR8bHcHBhlYJEoxqMTgJ1AAAAIAPWr928BTRKw81jl3INemOJKXMK82mPfv6kDblKElNfL5zDU/1Ff3v41S5/qGnKXEu6eedx2nhob1h87sinFjJW1stct54NGUc3lBM+ucOHttzxahisQQtQLsHOCR2N7aa8ssq2msx//YYG9pfDzf0VCMVhgxkiUzom9nxxKis1Q== k@x",
];

/// An account database held in memory: two ordinary accounts, root, and
/// another uid 0 account.
pub struct MemAccounts;

pub const MEM_ACCOUNTS: [(&str, u32); 5] = [
    ("alice", 1000),
    ("carol", 1001),
    ("daemon", 1),
    ("root", 0),
    ("toor", 0),
];

impl Accounts for MemAccounts {
    fn lookup(&self, name: &str) -> Result<Option<Account>, String> {
        Ok(MEM_ACCOUNTS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, uid)| Account { uid }))
    }
}

fn uid_of(name: &str) -> Option<u32> {
    MEM_ACCOUNTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, u)| u)
}

/// The grant-file parser and validator never panic; when they accept a file,
/// every line the key lookup would print re-parses as a plain key of an
/// accepted guest of a sharing owner, and every such key is printed once.
/// Every edit verb gives the reader's verdict too ([`check_edits`]).
pub fn check_grants(src: &str) {
    check_edits(src);
    let lines_in_file = src.lines().count() + 1;
    let parsed = vmshare::grant::parse::parse(src);
    let grants = match parsed {
        Ok(g) => g,
        Err(errors) => {
            assert!(!errors.is_empty(), "invalid without a reason");
            for d in &errors {
                assert!(d.line <= lines_in_file, "error past the end: {d:?}");
                assert!(!d.message.is_empty());
            }
            return;
        }
    };
    for owner in &grants.owners {
        vmshare::grant::parse::check_owner_name(&owner.name).expect("accepted owner name is valid");
        for guest in &owner.guests {
            vmshare::grant::parse::check_guest_name(&guest.name)
                .expect("accepted guest name is valid");
        }
    }
    let policy = match vmshare::grant::policy::compile(&grants, src, &MemAccounts) {
        Ok(p) => p,
        Err(errors) => {
            // With this account database the only possible error is root.
            assert!(
                grants.owners.iter().any(|o| uid_of(&o.name) == Some(0)),
                "compile failed without a uid 0 owner: {errors:?}"
            );
            return;
        }
    };
    for owner in &grants.owners {
        match uid_of(&owner.name) {
            Some(0) => panic!("uid 0 owner `{}` compiled", owner.name),
            Some(uid) => assert_eq!(policy.owners.get(&owner.name).map(|a| a.uid), Some(uid)),
            None => assert!(!policy.owners.contains_key(&owner.name)),
        }
    }
    for (name, access) in &policy.owners {
        let owner = grants.owner(name).expect("compiled owner is in the file");
        let text = access.authorized_keys();
        let mut printed = Vec::new();
        for full in text.lines() {
            // Options first, if the guest has limits: those vmshare writes,
            // and they read back as the guest's limits.
            let parts = vmshare::grant::policy::KeyLine::parse(full)
                .unwrap_or_else(|| panic!("printed line {full:?} does not read back"));
            let line = full
                .strip_prefix(parts.options)
                .map_or(full, str::trim_start);
            let key = vmshare::grant::key::parse_key(line)
                .unwrap_or_else(|e| panic!("printed line {line:?} is not a plain key: {e}"));
            assert_eq!(line.split(' ').count(), 3, "{line:?}");
            // The blob is compared as text (one key, one guest; the PAM
            // hook): it must be the key's one canonical spelling, as sshd
            // writes it in SSH_AUTH_INFO_0.
            let canonical = ssh_key::PublicKey::from_openssh(line)
                .and_then(|k| k.to_openssh())
                .expect("printed key re-encodes");
            assert_eq!(
                canonical.split(' ').nth(1),
                Some(&*key.blob),
                "{line:?} is not canonical"
            );
            let guest_name = key
                .comment
                .strip_prefix(GUEST_TAG)
                .unwrap_or_else(|| panic!("line {line:?} is not tagged"));
            let guest = owner
                .guest(guest_name)
                .unwrap_or_else(|| panic!("line {line:?} names no guest of `{name}`"));
            assert!(owner.sharing, "owner `{name}` does not share: {line:?}");
            assert_eq!(guest.status, Status::Accepted, "{line:?}");
            assert_eq!(parts.options, guest.limits.options(), "{full:?}");
            assert_eq!(parts.limits().as_ref(), Some(&guest.limits), "{full:?}");
            assert!(
                guest
                    .keys
                    .iter()
                    .any(|k| k.algorithm == key.algorithm && k.blob == key.blob),
                "{line:?} is not a key of guest `{guest_name}`"
            );
            printed.push(key.blob);
        }
        let expected: usize = owner
            .guests
            .iter()
            .filter(|g| g.has_access(owner.sharing))
            .map(|g| g.keys.len())
            .sum();
        assert_eq!(printed.len(), expected, "owner `{name}`: {text:?}");
        printed.sort();
        printed.dedup();
        assert_eq!(printed.len(), expected, "a key printed twice for `{name}`");
    }
}

/// The edits tried on a file: every verb, on each owner and guest it has,
/// on the owners `more`, and on a guest it has not.
pub fn edits_of<'a>(grants: &'a Grants, more: &[&'a str]) -> Vec<Change> {
    let mut owners: Vec<&str> = grants.owners.iter().map(|o| o.name.as_str()).collect();
    for &more in more {
        if !owners.contains(&more) {
            owners.push(more);
        }
    }
    let mut changes = Vec::new();
    for owner in owners {
        let mut guests: Vec<&str> = grants
            .owner(owner)
            .map(|o| o.guests.iter().map(|g| g.name.as_str()).collect())
            .unwrap_or_default();
        guests.push("zed");
        for on in [false, true] {
            changes.push(Change::Sharing {
                owner: owner.into(),
                on,
            });
        }
        for guest in guests {
            let (o, g) = (owner.to_string(), guest.to_string());
            let limits = SetLimits {
                expires: Some(1_900_000_000),
                ..SetLimits::default()
            };
            changes.extend([
                Change::Revoke {
                    owner: o.clone(),
                    guest: g.clone(),
                },
                Change::Leave {
                    owner: o.clone(),
                    guest: g.clone(),
                },
                Change::Invite {
                    owner: o.clone(),
                    guest: g.clone(),
                    keys: vec![KEYS[2].into()],
                    limits: SetLimits::default(),
                },
                Change::Accept {
                    owner: o.clone(),
                    guest: g.clone(),
                    limits,
                },
                Change::Reject {
                    owner: o.clone(),
                    guest: g.clone(),
                },
                Change::Extend {
                    owner: o.clone(),
                    guest: g.clone(),
                    expires: 1_900_000_000,
                },
                Change::Admin {
                    owner: o,
                    guest: g,
                    on: true,
                },
            ]);
        }
    }
    changes
}

/// Each owner's key lines as the key lookup prints them (with the in-memory
/// account database), or `None` where the file does not compile.
fn lines_by_owner(src: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let grants = vmshare::grant::parse::parse(src).ok()?;
    let policy = vmshare::grant::policy::compile(&grants, src, &MemAccounts).ok()?;
    Some(
        policy
            .owners
            .iter()
            .map(|(name, access)| {
                let lines = access
                    .authorized_keys()
                    .lines()
                    .map(str::to_string)
                    .collect();
                (name.clone(), lines)
            })
            .collect(),
    )
}

/// Whether `e` is a fair refusal of `change` on a valid file where the guest
/// has `status`: decided from what the file says, not how it is written;
/// and only edits that do not end access may find the layout beyond them.
pub fn fair_refusal(change: &Change, status: Option<Status>, e: &EditError) -> bool {
    match e {
        EditError::NotAGuest { .. } | EditError::UnknownOwner(_) => status.is_none(),
        EditError::Transition { .. } => {
            !change.ends_access()
                || matches!(change, Change::Leave { .. })
                    && !matches!(status, Some(Status::Accepted | Status::Left))
        }
        EditError::KeyTaken { .. } => matches!(change, Change::Invite { .. }),
        EditError::Layout(Layout::Unexpected { .. } | Layout::NotFound(_) | Layout::Misread) => {
            !change.ends_access()
        }
        _ => false,
    }
}

/// Editing and reading accept exactly the same files. On a file the reader
/// refuses, every edit refuses with the reader's own findings. On a file it
/// accepts, an edit applies or refuses for a reason that is not about
/// reading the file; and the edits that end access (revoke, sharing off,
/// leave) always apply, whatever the layout, and the result denies that
/// access and keeps every other.
pub fn check_edits(src: &str) {
    let grants = match vmshare::grant::parse::parse(src) {
        Ok(grants) => grants,
        Err(errors) => {
            for change in edits_of(&Grants::default(), &["alice", "carol"]) {
                match apply_explained(src, &change) {
                    Err(EditError::InvalidFile(found)) => {
                        assert_eq!(found.errors, errors, "{change:?} on {src}")
                    }
                    other => panic!("{change:?} on a file the reader refuses: {other:?}\n{src}"),
                }
            }
            return;
        }
    };
    let before = lines_by_owner(src);
    for change in edits_of(&grants, &["alice", "carol"]) {
        let (owner, guest) = (change.owner(), change.guest());
        let status = grants
            .owner(owner)
            .and_then(|o| o.guest(guest))
            .map(|g| g.status);
        let applied = match apply_explained(src, &change) {
            Ok(applied) => applied,
            Err(e) => {
                assert!(
                    fair_refusal(&change, status, &e),
                    "{change:?} refused on a valid file: {e:?}\n{src}"
                );
                continue;
            }
        };
        let after = vmshare::grant::parse::parse(&applied.text).unwrap_or_else(|e| {
            panic!("{change:?} wrote an invalid file: {e:?}\n{}", applied.text)
        });
        if !change.ends_access() {
            continue;
        }
        // Access ends as intended, and nothing else changes.
        let in_effect = match &change {
            Change::Revoke { .. } => after.owner(owner).and_then(|o| o.guest(guest)).is_none(),
            Change::Leave { .. } => {
                after
                    .owner(owner)
                    .and_then(|o| o.guest(guest))
                    .map(|g| g.status)
                    == Some(Status::Left)
            }
            _ => after.owner(owner).is_none_or(|o| !o.sharing),
        };
        assert!(
            in_effect,
            "{change:?}: {}\n{}",
            applied.summary, applied.text
        );
        let (Some(mut want), Some(got)) = (before.clone(), lines_by_owner(&applied.text)) else {
            continue;
        };
        let tag = format!(" {GUEST_TAG}{guest}");
        if let Some(lines) = want.get_mut(owner) {
            match change {
                Change::Sharing { .. } => lines.clear(),
                _ => lines.retain(|l| !l.ends_with(&tag)),
            }
        }
        assert_eq!(
            got, want,
            "{change:?}: {}\n{src}\n{}",
            applied.summary, applied.text
        );
    }
}

/// A grant file, config and run dir on disk that pass the strict checks, for
/// the key lookup. Owner `daemon` shares one key with guest `bob`.
pub struct LookupFixture {
    pub config: PathBuf,
    pub grants: PathBuf,
    pub snapshot: PathBuf,
    pub version: FileVersion,
    pub sha256: String,
    /// The snapshot format this build writes.
    pub format: u32,
    /// The guests' lines the lookup serves for `daemon` (were her keys
    /// held: see [`check_lookup_args`]).
    pub daemon_lines: String,
}

impl LookupFixture {
    /// Builds the fixture: grant file and config in `dir`, which must be
    /// root-owned and not writable by group or others, like every directory
    /// above it; the snapshot in `run_dir` (which needs no such checks).
    /// `snapshot`: whether to write a current snapshot of the grant file.
    pub fn new(dir: &Path, run_dir: &Path, snapshot: bool) -> LookupFixture {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let grants = dir.join("grants.toml");
        let config = dir.join("vmshare.toml");
        fs::create_dir_all(run_dir).expect("run dir");
        fs::write(
            &grants,
            format!(
                "[owners.daemon]\nsharing = true\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n[owners.nobody]\n[owners.nobody.guests.carol]\nstatus = \"accepted\"\nkeys = [\"{}\"]\n",
                KEYS[0], KEYS[1]
            ),
        )
        .expect("grants");
        // The state dir holds no owner's keys: what the program prints does
        // not depend on whether `daemon` is in the owners' group here.
        fs::write(
            &config,
            format!(
                "grants = {:?}\nrun_dir = {:?}\nstate_dir = {:?}\n",
                grants.display().to_string(),
                run_dir.display().to_string(),
                dir.join("state").display().to_string()
            ),
        )
        .expect("config");
        for f in [&grants, &config] {
            fs::set_permissions(f, fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let loaded = source::load(&grants, &vmshare::sys::accounts::SystemAccounts);
        let policy = loaded.policy().expect("fixture grant file is valid");
        let daemon_lines = policy.owners["daemon"].authorized_keys();
        assert_eq!(daemon_lines.lines().count(), 1);
        let version = loaded.version.expect("fixture grant file exists");
        let snapshot_path = run_dir.join("snapshot");
        // Written well after the grant file's last change: not racy.
        let written = version.mtime_ns.max(version.ctime_ns) + 10_000_000_000;
        snapshot::write(&snapshot_path, &loaded, written).expect("snapshot");
        let format = snapshot::read_header(&snapshot_path)
            .expect("snapshot header")
            .format;
        if !snapshot {
            fs::remove_file(&snapshot_path).expect("remove snapshot");
        }
        LookupFixture {
            config,
            grants,
            snapshot: snapshot_path,
            version,
            sha256: loaded.sha256.clone(),
            format,
            daemon_lines,
        }
    }

    /// What the key lookup printed (bytes: nothing checks that the snapshot
    /// body is UTF-8, and sshd does not need it), and whether it succeeded.
    fn lookup(&self, args: Vec<OsString>) -> (Vec<u8>, bool) {
        let mut argv = vec![OsString::from("vmshare-keys")];
        argv.extend(args);
        argv.push("--config".into());
        argv.push(self.config.clone().into_os_string());
        let mut out = Vec::new();
        let code = vmshare::keys_command::run(argv, &mut out);
        let ok = code == std::process::ExitCode::SUCCESS;
        (out, ok)
    }
}

/// Splits fuzz bytes into arguments at NUL bytes (an argument cannot hold
/// one); they need not be UTF-8.
pub fn split_args(data: &[u8]) -> Vec<OsString> {
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// The key lookup with any arguments (besides its own `--config`) serves,
/// for a sharing owner, all her guests' lines when called as
/// `USER [FP [TYPE]]`, only the line of key `TYPE KEY` when called as
/// `USER FP TYPE KEY`, and nothing otherwise. The program serves guests'
/// lines only to an owner in the owners' group whose keys vmshare holds,
/// which the fixture's owner is not: so the program prints nothing, failing
/// only on a wrong number of arguments, and the lines it would serve are
/// checked through the library calls it makes for each form of call.
pub fn check_lookup_args(fixture: &LookupFixture, args: Vec<OsString>) {
    let args: Vec<OsString> = args.into_iter().filter(|a| a != "--config").collect();
    let want = if (1..=4).contains(&args.len()) && args[0] == "daemon" {
        match (
            args.get(2).and_then(|a| a.to_str()),
            args.get(3).map(|k| k.to_str()),
        ) {
            (Some(algorithm), Some(Some(blob))) => fixture
                .daemon_lines
                .lines()
                .find(|l| vmshare::grant::policy::is_line_of(l, algorithm, blob))
                .map_or(String::new(), |l| format!("{l}\n")),
            (_, Some(_)) => String::new(),
            (_, None) => fixture.daemon_lines.clone(),
        }
    } else {
        String::new()
    };
    let (out, ok) = fixture.lookup(args.clone());
    assert_eq!(
        String::from_utf8_lossy(&out),
        "",
        "printed keys for an owner whose keys are not held: args {args:?}"
    );
    assert_eq!(
        ok,
        (1..=4).contains(&args.len()),
        "exit status: args {args:?}"
    );

    let Some(user) = args.first().and_then(|u| u.to_str()) else {
        return;
    };
    let config = vmshare::store::config::Config::load(Some(&fixture.config)).expect("config");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let accounts = vmshare::sys::accounts::SystemAccounts;
    let answer = match &args[..] {
        [_] | [_, _] | [_, _, _] => {
            vmshare::store::lookup::current_owner_lines(&config, user, now, &accounts)
        }
        [_, _, algorithm, blob] => match (algorithm.to_str(), blob.to_str()) {
            (Some(algorithm), Some(blob)) => vmshare::store::lookup::owner_key_line(
                &config,
                user,
                algorithm,
                blob,
                Some(now),
                &accounts,
            ),
            _ => return,
        },
        _ => return,
    };
    match answer {
        Ok(answer) => assert_eq!(answer.lines, want, "args {args:?}"),
        Err(e) => panic!("the lookup refused a valid grant file: {e}: args {args:?}"),
    }
}

/// Makes fuzz bytes describe a snapshot of the fixture's grant file where
/// they ask to: `"$FORMAT"`, `"$GRANTS"`, `"$VERSION"` and `$SHA256` become
/// the snapshot format, the grant file's path, version and hash; a header
/// with `"digests":"$AUTO"` gets the digests of the body ranges it names.
pub fn fill_snapshot(fixture: &LookupFixture, data: &[u8]) -> Vec<u8> {
    let grants = serde_json::to_string(&fixture.grants).expect("path json");
    let version = serde_json::to_string(&fixture.version).expect("version json");
    let data = replace(data, b"\"$FORMAT\"", fixture.format.to_string().as_bytes());
    let data = replace(&data, b"\"$GRANTS\"", grants.as_bytes());
    let data = replace(&data, b"\"$VERSION\"", version.as_bytes());
    let data = replace(&data, b"$SHA256", fixture.sha256.as_bytes());
    let Some(end) = data.iter().position(|&b| b == b'\n') else {
        return data;
    };
    let (line, body) = (&data[..end], &data[end + 1..]);
    let Ok(serde_json::Value::Object(mut header)) = serde_json::from_slice(line) else {
        return data;
    };
    if header.get("digests").and_then(|d| d.as_str()) != Some("$AUTO") {
        return data;
    }
    let mut digests = serde_json::Map::new();
    for (owner, range) in header
        .get("owners")
        .and_then(|o| o.as_object())
        .into_iter()
        .flatten()
    {
        let at = |i| range.get(i).and_then(serde_json::Value::as_u64);
        let (Some(offset), Some(len)) = (at(0), at(1)) else {
            continue;
        };
        let bytes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| body.get(o..o.checked_add(l)?));
        if let Some(bytes) = bytes {
            digests.insert(owner.clone(), snapshot::body_digest(bytes).into());
        }
    }
    header.insert("digests".into(), digests.into());
    let mut out = serde_json::to_vec(&header).expect("header json");
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// Whether `lines` is empty, or whole lines of `body` starting at `offset`.
fn is_whole_lines_at(body: &[u8], offset: u64, lines: &[u8]) -> bool {
    if lines.is_empty() {
        return true;
    }
    let Ok(start) = usize::try_from(offset) else {
        return false;
    };
    start
        .checked_add(lines.len())
        .and_then(|end| body.get(start..end))
        == Some(lines)
        && (start == 0 || body[start - 1] == b'\n')
        && lines.ends_with(b"\n")
}

/// The snapshot reader, on any snapshot bytes, returns a current answer only
/// for the grant file's current version, and then only whole lines of the
/// snapshot body; the key lookup reading that snapshot prints nothing, or
/// such lines, or (from a stale snapshot) what the grant file itself says.
pub fn check_snapshot(fixture: &LookupFixture, data: &[u8]) {
    let data = fill_snapshot(fixture, data);
    fs::write(&fixture.snapshot, &data).expect("write snapshot");
    let body = data
        .iter()
        .position(|&b| b == b'\n')
        .map_or(&[][..], |i| &data[i + 1..]);
    for current in [Some(&fixture.version), None] {
        for owner in ["daemon", "nobody", ""] {
            let got = snapshot::read_owner(&fixture.snapshot, &fixture.grants, current, owner);
            if let Ok(Lookup::Fresh { header, lines }) = got {
                assert_eq!(header.grants_path, fixture.grants);
                assert_eq!(header.version.as_ref(), current);
                let at = header.owners.get(owner).map_or(0, |r| r.0);
                assert!(
                    is_whole_lines_at(body, at, lines.as_bytes()),
                    "{lines:?} is not whole lines of the body at {at}"
                );
            }
        }
    }
    // The lookup for one key prints nothing or one whole line of that key.
    for key in [KEYS[0], KEYS[1]] {
        let mut words = key.split(' ');
        let (algorithm, blob) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let (out, _) = fixture.lookup(vec![
            "daemon".into(),
            "SHA256:x".into(),
            algorithm.into(),
            blob.into(),
        ]);
        if !out.is_empty() {
            let line = std::str::from_utf8(&out).expect("a printed line is UTF-8");
            assert!(
                vmshare::grant::policy::is_line_of(line, algorithm, blob) && line.ends_with('\n'),
                "printed {line:?} for key {blob}"
            );
            assert!(
                out == fixture.daemon_lines.as_bytes() || body.windows(out.len()).any(|w| w == out),
                "printed {line:?}, not a line of the snapshot body or the grant file"
            );
        }
    }
    let (out, _) = fixture.lookup(vec!["daemon".into()]);
    if out.is_empty() || out == fixture.daemon_lines.as_bytes() {
        return;
    }
    let header = snapshot::read_header(&fixture.snapshot).expect("printed from a header");
    assert!(header.valid, "printed keys from an invalid snapshot");
    assert_eq!(header.version, Some(fixture.version), "stale snapshot used");
    assert_eq!(
        header.grants_path, fixture.grants,
        "another file's snapshot"
    );
    if header.is_racy() {
        assert_eq!(header.sha256, fixture.sha256, "racy snapshot not hashed");
    }
    let at = header.owners.get("daemon").map_or(0, |r| r.0);
    assert!(
        is_whole_lines_at(body, at, &out),
        "printed {:?}, not whole lines of the snapshot body",
        String::from_utf8_lossy(&out)
    );
}

/// Owners of the index property's snapshots; `bob` has none.
const INDEX_OWNERS: [&str; 3] = ["alice", "carol", "bob"];
const INDEX_KEYS: u32 = 12;

/// One of the index property's keys: ed25519, from `n`.
fn index_key(n: u32) -> (String, String) {
    let mut bytes = [0x33u8; 32];
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    let key = ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey(bytes))
        .to_openssh()
        .expect("encode key");
    let mut words = key.split(' ');
    let algorithm = words.next().unwrap_or_default().to_string();
    (algorithm, words.next().unwrap_or_default().to_string())
}

/// The index property's input: grants, then damage. Byte 0 is how many
/// grant bytes follow (mod 32); each grant byte gives owner (bit 0: alice
/// or carol), key (bits 1–4, mod 12) and guest (bits 5–7). The rest are
/// damage triples (position high, low, xor; xor 0 truncates there)
/// applied to the written snapshot; bit 7 of byte 0 keeps the damage out
/// of the header.
pub struct IndexInput {
    pub grants: Vec<(usize, u32, u8)>,
    pub damage: Vec<(u16, u8)>,
    pub body_only: bool,
}

pub fn index_input(data: &[u8]) -> IndexInput {
    let (first, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let n = usize::from(first % 32).min(rest.len());
    let (grants, damage) = rest.split_at(n);
    IndexInput {
        grants: grants
            .iter()
            .map(|&b| {
                (
                    usize::from(b & 1),
                    u32::from(b >> 1 & 0xf) % INDEX_KEYS,
                    b >> 5,
                )
            })
            .collect(),
        damage: damage
            .chunks_exact(3)
            .map(|c| (u16::from_be_bytes([c[0], c[1]]), c[2]))
            .collect(),
        body_only: first & 0x80 != 0,
    }
}

/// The key index, on a snapshot of generated grants, damaged or not: it
/// never yields a line for a key the owner did not grant, nor any line but
/// the granted one; undamaged (or damaged past the header only) it always
/// yields the granted line, or (damaged) an error that sends the key
/// lookup to the grant file.
pub fn check_index(path: &Path, input: &IndexInput) {
    use vmshare::grant::policy::{GrantedKey, OwnerAccess, Policy};
    let mut policy = Policy::default();
    for (i, owner) in INDEX_OWNERS[..2].iter().enumerate() {
        policy.owners.insert(
            owner.to_string(),
            OwnerAccess {
                uid: 1000 + i as u32,
                keys: Vec::new(),
            },
        );
    }
    for &(owner, key, guest) in &input.grants {
        let access = policy
            .owners
            .get_mut(INDEX_OWNERS[owner])
            .expect("generated owner");
        let (algorithm, blob) = index_key(key);
        // One key, one guest of an owner (the grant file's rule).
        if access.keys.iter().all(|k| *k.blob != *blob) {
            access.keys.push(GrantedKey {
                guest: format!("g{guest}").into(),
                algorithm,
                blob: blob.into(),
                fingerprint: "".into(),
                options: String::new(),
                expires: None,
            });
        }
    }
    let grants_path = Path::new("/nonexistent/grants.toml");
    let loaded = source::Loaded {
        path: grants_path.to_path_buf(),
        version: None,
        sha256: String::new(),
        source: String::new(),
        outcome: source::Outcome::Valid {
            grants: Default::default(),
            policy: policy.clone(),
        },
    };
    let mut data = snapshot::encode(&loaded, 0).expect("encode snapshot");
    let body = data.iter().position(|&b| b == b'\n').expect("header line") + 1;
    let mut body_intact = true;
    for &(at, xor) in &input.damage {
        let span = if input.body_only {
            data.len() - body
        } else {
            data.len()
        };
        if span == 0 {
            break;
        }
        let at = usize::from(at) % span + data.len() - span;
        body_intact = false;
        if xor == 0 {
            data.truncate(at);
        } else {
            data[at] ^= xor;
        }
    }
    let header_intact = body_intact || input.body_only;
    fs::write(path, &data).expect("write snapshot");
    let opened = match snapshot::open(path, grants_path, None) {
        Ok(Some(opened)) => opened,
        Ok(None) | Err(_) => {
            assert!(!header_intact, "an intact header refused");
            return;
        }
    };
    for owner in INDEX_OWNERS {
        for key in 0..INDEX_KEYS {
            let (algorithm, blob) = index_key(key);
            let granted = policy
                .owners
                .get(owner)
                .and_then(|a| a.key_line(&algorithm, &blob));
            let got = opened.key_line(owner, &algorithm, &blob);
            match (&got, &granted) {
                (Ok(Some(line)), Some(want)) => assert_eq!(line, want.as_bytes()),
                (Ok(Some(line)), None) => panic!(
                    "{owner}: a line for key {key}, not granted: {:?}",
                    String::from_utf8_lossy(line)
                ),
                (Ok(None), None) => {}
                (Ok(None), Some(_)) => {
                    assert!(!header_intact, "{owner}: granted key {key} not found")
                }
                (Err(e), _) => assert!(!body_intact, "{owner}: key {key}: {e}"),
            }
        }
    }
}

/// A frame's length prefix is accepted exactly up to the limit; a request
/// is decoded only from an object holding `op` alone, and round-trips.
pub fn check_frame(data: &[u8]) {
    let mut prefix = [0u8; 4];
    for (p, b) in prefix.iter_mut().zip(data) {
        *p = *b;
    }
    let value = u32::from_be_bytes(prefix) as usize;
    match control::frame_len(prefix) {
        Ok(n) => assert!(n == value && n <= control::MAX_FRAME),
        Err(_) => assert!(value > control::MAX_FRAME),
    }
    let body = data.get(4..).unwrap_or_default();
    for body in [data, body] {
        let Ok(request) = control::decode_request(body) else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_slice(body).expect("decoded from JSON");
        let fields = value.as_object().expect("a request is an object");
        // Exactly the fields of its op: what the request encodes to.
        let own = serde_json::to_value(&request).expect("encode");
        let mut names: Vec<&String> = fields.keys().collect();
        let mut own_names: Vec<&String> = own.as_object().expect("an object").keys().collect();
        names.sort();
        own_names.sort();
        assert_eq!(names, own_names, "{value}");
        let op = fields["op"].as_str().expect("op is a string");
        assert!(
            ["whoami", "leave", "confirm_leave", "reload"].contains(&op),
            "{op}"
        );
        if op != "confirm_leave" {
            assert_eq!(fields.len(), 1, "{value}");
        }
        let frame = control::encode(&request).expect("encode");
        let len = control::frame_len(frame[..4].try_into().expect("prefix")).expect("len");
        assert_eq!(len, frame.len() - 4);
        assert_eq!(control::decode_request(&frame[4..]).ok(), Some(request));
        let _: Request = control::decode(&frame[4..]).expect("plain decode");
    }
    let _ = control::decode::<control::Response>(data);
}

/// Splits fuzz bytes into the hook's inputs: a flags byte (whether the grant
/// file is trusted; which keys count as the owner's own), `SSH_AUTH_INFO_0`,
/// and the owner's current vmshare lines, separated by the first NUL.
pub fn auth_inputs(data: &[u8]) -> (u8, String, String) {
    let (flags, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let text = String::from_utf8_lossy(rest);
    let (info, lines) = text.split_once('\0').unwrap_or((&text, ""));
    (flags, info.to_string(), lines.to_string())
}

/// `SSH_AUTH_INFO_0` yields only sane keys that sshd listed as `publickey`;
/// the decision is a guest's login exactly when the current lines grant one
/// or more of the plain keys the owner does not hold to one guest and the
/// owner's keys are held, refused when they grant keys of two guests, and
/// otherwise lets the login through only if every plain key is one the
/// owner holds (or her keys are not held at all, and no guest's key is
/// there), whatever state the grant file is in.
pub fn check_auth_info(flags: u8, info: &str, lines: &str) {
    let keys = hook::parse_auth_info(info);
    let listed: Vec<Vec<&str>> = info
        .lines()
        .map(|l| l.split_ascii_whitespace().collect::<Vec<_>>())
        .filter(|w| w.first() == Some(&"publickey"))
        .collect();
    assert!(keys.len() <= listed.len());
    let sane = |s: &str| {
        !s.is_empty()
            && s.len() <= 16 * 1024
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=@.-_".contains(&b))
    };
    for k in &keys {
        assert!(sane(&k.algorithm) && sane(&k.blob), "{k:?}");
        assert!(
            listed
                .iter()
                .any(|w| w.get(1) == Some(&k.algorithm.as_str())
                    && w.get(2) == Some(&k.blob.as_str())),
            "{k:?} is not in {info:?}"
        );
    }
    let divisor = usize::from(flags >> 1) % 3 + 2;
    let own = move |k: &AuthKey| k.blob.len().is_multiple_of(divisor);
    let lines: Result<String, String> = if flags & 1 == 0 {
        Ok(lines.to_string())
    } else {
        Err("grant file is invalid".to_string())
    };
    let held = flags & 0x10 == 0;
    let owner = if held {
        OwnerKeys::Held(
            keys.iter()
                .filter(|k| own(k))
                .map(|k| k.blob.clone())
                .collect(),
        )
    } else {
        OwnerKeys::NotHeld
    };
    let decision = hook::classify(&keys, &lines, &owner);
    let plain: Vec<&AuthKey> = keys.iter().filter(|k| !k.is_certificate()).collect();
    let is_held = |k: &AuthKey| held && own(k);
    let granted: std::collections::BTreeSet<&str> = match &lines {
        Ok(text) => plain
            .iter()
            .filter(|k| !is_held(k))
            .filter_map(|k| vmshare::grant::policy::guest_in_lines(text, &k.algorithm, &k.blob))
            .collect(),
        Err(_) => Default::default(),
    };
    let all_held = plain.iter().all(|k| is_held(k));
    match &decision {
        Decision::Owner(why) => assert!(
            granted.is_empty() && (all_held || !held),
            "passed as the owner's ({why:?}) with guests {granted:?} or a key she does not hold"
        ),
        Decision::Guest { guest, key } => {
            assert!(held, "{decision:?} for an owner whose keys are not held");
            assert_eq!(granted.len(), 1, "{decision:?} with guests {granted:?}");
            assert!(granted.contains(guest.as_str()));
            assert!(plain.contains(&key), "{key:?} did not authenticate");
            let text = lines.as_ref().expect("a guest only from trusted lines");
            assert!(
                text.lines()
                    .filter_map(vmshare::grant::policy::KeyLine::parse)
                    .any(|l| l.algorithm == key.algorithm
                        && l.blob == key.blob
                        && l.guest == guest),
                "guest {guest} not granted in {text:?}"
            );
        }
        Decision::Deny(why) => assert!(
            granted.len() > 1
                || (granted.len() == 1 && !held)
                || (granted.is_empty() && held && !all_held),
            "refused ({why}) although guests {granted:?}, all held {all_held}, held {held}"
        ),
    }
}

/// A fresh directory for a fuzz target's fixture: `name` next to the fuzz
/// binary (whose ancestors pass the strict checks), and its run dir of the
/// same name on tmpfs, where rewriting the snapshot is cheap.
#[allow(dead_code)] // for the fuzz targets only
pub fn fuzz_fixture_dirs(name: &str) -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.with_file_name(format!("fixture-{name}"));
    let run_dir = Path::new("/dev/shm").join(format!("vmshare-fuzz-{name}"));
    for d in [&dir, &run_dir] {
        let _ = fs::remove_dir_all(d);
        fs::create_dir(d).expect("fixture dir");
    }
    vmshare::sys::fsutil::check_trusted_dirs(&dir.join("x")).expect("fixture dir is trusted");
    (dir, run_dir)
}
