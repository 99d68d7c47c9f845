//! One TOML grammar for reading and editing the grant file: what `vmshare
//! check` and the agent accept, the edit verbs accept too, and the verbs
//! that end access (revoke, sharing off, leave) never fail on a file the
//! agent enforces. Seen three ways: the programs themselves on the files
//! that once split them, every document of the hostile and good catalogues
//! through the reader, the key lookup and the edit on disk, and generated
//! files in every layout the grammar allows.
//!
//! Owners are real local accounts (`daemon`, `nobody`); scratch directories
//! are under the build tree (see tests/scratch).
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod catalogue;
// The edit properties only.
#[allow(dead_code)]
mod props;
mod scratch;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use proptest::prelude::*;

use catalogue::{BOB, EVE, OWNER};
use vmshare::grant::lifecycle::{Change, EditError};
use vmshare::store::config::Config;
use vmshare::store::edit::edit_file;
use vmshare::store::source::{self, Outcome};
use vmshare::sys::accounts::SystemAccounts;

const CLI_BIN: &str = env!("CARGO_BIN_EXE_vmshare");
/// Another local account that exists on any Debian host.
const OWNER2: &str = "nobody";

struct Env {
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    config: Config,
    grants: PathBuf,
}

fn env() -> Env {
    let dir = scratch::trusted_tempdir("grammar");
    let etc = dir.path().join("etc");
    let run_dir = dir.path().join("run");
    fs::create_dir(&etc).expect("etc");
    fs::create_dir(&run_dir).expect("run");
    let grants = etc.join("grants.toml");
    let config_path = etc.join("vmshare.toml");
    fs::write(
        &config_path,
        format!("grants = {:?}\nrun_dir = {:?}\n", grants, run_dir),
    )
    .expect("config");
    let config = Config::load(Some(&config_path)).expect("config");
    Env {
        _dir: dir,
        config_path,
        config,
        grants,
    }
}

impl Env {
    fn write(&self, text: &str) {
        fs::write(&self.grants, text).expect("write");
        fs::set_permissions(&self.grants, fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(CLI_BIN)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .expect("run vmshare")
    }

    /// The guest lines the key lookup serves for `owner` (the program
    /// serves them only to a sharing owner, whose keys vmshare holds; an
    /// owner of this host's is not one, so they are read through the
    /// library, the same lookup the program makes).
    fn keys(&self, owner: &str) -> String {
        self.lines(owner).unwrap_or_default()
    }

    /// The key lookup's lines for `owner`, in process.
    fn lines(&self, owner: &str) -> Result<String, String> {
        vmshare::store::lookup::owner_lines(&self.config, owner, &SystemAccounts).map(|a| a.lines)
    }
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `file` (which grants daemon's bob) is valid for `vmshare check` and the
/// key lookup, and each verb that ends access ends it through the CLI.
fn check_and_end(file: &str) {
    let e = env();
    for end in [
        &["revoke", OWNER, "bob"][..],
        &["sharing", OWNER, "off"],
        &["leave", OWNER, "bob"],
    ] {
        e.write(file);
        let check = e.cli(&["check"]);
        assert!(check.status.success(), "check: {}", said(&check));
        assert!(
            e.keys(OWNER).contains(" vmshare:bob"),
            "bob does not get in"
        );
        let out = e.cli(end);
        assert!(out.status.success(), "{end:?}: {}", said(&out));
        assert_eq!(e.keys(OWNER), "", "{end:?} left bob's access");
        let check = e.cli(&["check"]);
        assert!(check.status.success(), "after {end:?}: {}", said(&check));
    }
}

#[test]
fn a_status_with_a_hex_escape_is_revoked() {
    check_and_end(&format!(
        "[owners.daemon]\nsharing = true\n\n[owners.daemon.guests.bob]\nstatus = \"acc\\x65pted\"\nkeys = [\"{BOB}\"]\n"
    ));
}

#[test]
fn an_expiry_without_seconds_is_revoked() {
    check_and_end(&format!(
        "[owners.daemon]\nsharing = true\n\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\nexpires = 2030-01-01T00:00Z\nkeys = [\"{BOB}\"]\n"
    ));
}

#[test]
fn an_inline_guest_over_lines_with_a_trailing_comma_is_revoked() {
    check_and_end(&format!(
        "[owners.daemon]\nsharing = true\n\n[owners.daemon.guests]\nbob = {{\n  status = \"accepted\",\n  keys = [\"{BOB}\"],\n}}\n"
    ));
}

/// The edits tried on a catalogue document, on disk.
fn disk_edits(text: &str) -> Vec<Change> {
    let grants = vmshare::grant::parse::parse(text).unwrap_or_default();
    let mut changes = props::edits_of(&grants, &[OWNER, OWNER2]);
    // A guest with another guest's key (mallory has EVE's in some).
    changes.push(Change::Invite {
        owner: OWNER.into(),
        guest: "zed".into(),
        keys: vec![EVE.into()],
        limits: Default::default(),
    });
    changes
}

/// Every document of both catalogues gets one verdict from the reader
/// (`vmshare check`'s), the key lookup and every edit verb: an invalid file
/// is refused by all, with the reader's own findings; a valid one is
/// enforced, and each edit applies or refuses for a reason that is not
/// about reading it; revoke, sharing off and leave always apply and end
/// the access.
#[test]
fn reader_lookup_and_edits_agree_on_every_catalogue_document() {
    let e = env();
    let good = catalogue::good_documents();
    let documents = catalogue::documents()
        .into_iter()
        .map(|(family, text)| (family, text, false))
        .chain(good.into_iter().map(|(name, text)| (name, text, true)));
    for (name, text, valid) in documents {
        e.write(&text);
        let loaded = source::load(&e.grants, &SystemAccounts);
        let lines = e.lines(OWNER);
        let errors = match &loaded.outcome {
            Outcome::Invalid(errors) => {
                assert!(!valid, "{name}: the reader refuses it: {errors}");
                assert!(lines.is_err(), "{name}: the lookup printed {lines:?}");
                Some(errors.clone())
            }
            Outcome::Valid { .. } => {
                assert!(valid, "{name}: the reader accepts it");
                let lines = lines.unwrap_or_else(|e| panic!("{name}: the lookup refused: {e}"));
                assert!(lines.contains(" vmshare:bob"), "{name}: {lines:?}");
                None
            }
            Outcome::Missing => panic!("{name}: missing"),
        };
        for change in disk_edits(&text) {
            e.write(&text);
            let result = edit_file(&e.grants, &change, &SystemAccounts);
            if let Some(errors) = &errors {
                match result {
                    Err(EditError::InvalidFile(found)) => {
                        assert_eq!(&found, errors, "{name}: {change:?}")
                    }
                    // Named before the file is read: root is never shared.
                    Err(EditError::RootOwner(_)) if change.owner() == "root" => {}
                    other => panic!("{name}: {change:?} on an invalid file: {other:?}"),
                }
                assert_eq!(fs::read_to_string(&e.grants).expect("read"), text);
                continue;
            }
            let status = loaded
                .grants()
                .and_then(|g| g.owner(change.owner()))
                .and_then(|o| o.guest(change.guest()))
                .map(|g| g.status);
            match result {
                Ok(done) => {
                    let after = e.lines(change.owner());
                    let after = after.unwrap_or_else(|why| {
                        panic!(
                            "{name}: {change:?} ({}) left a file the lookup refuses: {why}",
                            done.summary
                        )
                    });
                    let tag = format!(" vmshare:{}", change.guest());
                    let ended = match change {
                        Change::Sharing { on: false, .. } => after.is_empty(),
                        Change::Revoke { .. } | Change::Leave { .. } => !after.contains(&tag),
                        _ => true,
                    };
                    assert!(ended, "{name}: {change:?} ({}): {after:?}", done.summary);
                }
                Err(why) => assert!(
                    props::fair_refusal(&change, status, &why),
                    "{name}: {change:?} refused: {why:?}"
                ),
            }
        }
    }
}

/// How a generated guest's fields are spelt.
#[derive(Debug, Clone)]
struct GenGuest {
    name: &'static str,
    key: usize,
    status: Option<(&'static str, u8)>,
    admin: Option<bool>,
    expires: Option<u8>,
    from: bool,
    forwarding: Option<bool>,
    /// 0: `[owners.O.guests.G]`, 1: dotted keys, 2: a dotted inline
    /// table, 3: the same over lines.
    form: u8,
}

#[derive(Debug, Clone)]
struct GenOwner {
    name: &'static str,
    sharing: Option<bool>,
    guests: Vec<GenGuest>,
    /// 0: `[owners.O]`, 1: dotted keys beside the other owners, 2: an inline
    /// table there.
    form: u8,
    /// For form 0: guests 0: each in its own form, 1: `guests = {…}`, 2:
    /// `[owners.O.guests]` with one inline table a line.
    guests_form: u8,
    /// For form 0: whether `[owners.O]` is written when nothing needs it.
    header: bool,
}

/// How the owners are put together: 0: tables, with the dotted and inline
/// owners under `[owners]` (before or after the others); 1: those at the
/// top as `owners.O…` dotted keys; 2: `owners = {…}` over lines.
#[derive(Debug, Clone)]
struct GenFile {
    owners: Vec<GenOwner>,
    style: u8,
    section_first: bool,
}

fn bare(name: &str) -> String {
    if name.contains('.') {
        format!("\"{name}\"")
    } else {
        name.to_string()
    }
}

fn fields(g: &GenGuest) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some((status, spelling)) = g.status {
        let (first, rest) = status.split_at(1);
        let value = match spelling {
            0 => format!("\"{status}\""),
            1 => format!("'{status}'"),
            2 => format!("\"\\u{:04x}{rest}\"", u32::from(first.as_bytes()[0])),
            3 => format!("\"\\x{:02x}{rest}\"", first.as_bytes()[0]),
            _ => format!("\"\"\"{status}\"\"\""),
        };
        out.push(("status".to_string(), value));
    }
    let key = props::KEYS[g.key];
    let keys = if g.key.is_multiple_of(2) {
        format!("[\"{key}\"]")
    } else {
        format!("[\n  '{key}', # laptop\n]")
    };
    out.push(("keys".into(), keys));
    if let Some(admin) = g.admin {
        out.push(("admin".into(), admin.to_string()));
    }
    if let Some(spelling) = g.expires {
        let when = match spelling {
            0 => "2030-01-01T00:00Z",
            1 => "2030-01-01T00:00:00Z",
            2 => "2030-01-01 02:00:00+02:00",
            3 => "2030-01-01T00:00:00.250Z",
            _ => "1999-01-01T00:00:00Z",
        };
        out.push(("expires".into(), when.into()));
    }
    if g.from {
        out.push(("from".into(), "[\"10.0.0.0/8\", \"2001:db8::1\"]".into()));
    }
    if let Some(on) = g.forwarding {
        out.push(("forwarding".into(), on.to_string()));
    }
    out
}

fn inline(pairs: &[(String, String)], over_lines: bool) -> String {
    if over_lines {
        let body: String = pairs
            .iter()
            .map(|(k, v)| format!("  {k} = {v},\n"))
            .collect();
        format!("{{\n{body}}}")
    } else {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        format!("{{ {} }}", body.join(", "))
    }
}

fn inline_guests(guests: &[GenGuest], over_lines: bool) -> String {
    let pairs: Vec<(String, String)> = guests
        .iter()
        .map(|g| (bare(g.name), inline(&fields(g), over_lines)))
        .collect();
    inline(&pairs, false)
}

fn inline_owner(o: &GenOwner, over_lines: bool) -> String {
    let mut pairs = Vec::new();
    if let Some(on) = o.sharing {
        pairs.push(("sharing".to_string(), on.to_string()));
    }
    if !o.guests.is_empty() {
        pairs.push(("guests".to_string(), inline_guests(&o.guests, false)));
    }
    inline(&pairs, over_lines)
}

/// Lines `prefix.KEY = VALUE` for a guest's fields (a dotted guest).
fn dotted(prefix: &str, g: &GenGuest) -> String {
    fields(g)
        .iter()
        .map(|(k, v)| format!("{prefix}{k} = {v}\n"))
        .collect()
}

/// `[owners.O.guests.G]` and the guest's fields.
fn guest_table(owner: &str, g: &GenGuest) -> String {
    format!(
        "\n[owners.{owner}.guests.{}]\n{}",
        bare(g.name),
        dotted("", g)
    )
}

fn render(file: &GenFile) -> String {
    if file.style == 2 {
        let owners: Vec<String> = file
            .owners
            .iter()
            .map(|o| format!("  {} = {},\n", bare(o.name), inline_owner(o, false)))
            .collect();
        return format!("# all inline\nowners = {{\n{}}}\n", owners.concat());
    }
    let prefix = if file.style == 1 { "owners." } else { "" };
    // Lines beside the other owners (under `[owners]`, or at the top), and
    // tables.
    let (mut section, mut tables) = (String::new(), String::new());
    for o in &file.owners {
        let name = bare(o.name);
        match o.form {
            0 => {
                let mut own = String::new();
                let mut later = String::new();
                if let Some(on) = o.sharing {
                    own.push_str(&format!("sharing = {on}\n"));
                }
                match o.guests_form {
                    1 if !o.guests.is_empty() => {
                        own.push_str(&format!("guests = {}\n", inline_guests(&o.guests, true)))
                    }
                    2 if !o.guests.is_empty() => {
                        later.push_str(&format!("\n[owners.{name}.guests]\n"));
                        for g in &o.guests {
                            later.push_str(&format!(
                                "{} = {}\n",
                                bare(g.name),
                                inline(&fields(g), g.form == 3)
                            ));
                        }
                    }
                    _ => {
                        for g in &o.guests {
                            let guest = bare(g.name);
                            match g.form {
                                0 => later.push_str(&guest_table(&name, g)),
                                1 => own.push_str(&dotted(&format!("guests.{guest}."), g)),
                                f => own.push_str(&format!(
                                    "guests.{guest} = {}\n",
                                    inline(&fields(g), f == 3)
                                )),
                            }
                        }
                    }
                }
                if !own.is_empty() || o.header || later.is_empty() {
                    tables.push_str(&format!("\n[owners.{name}]   # {}\n{own}", o.name));
                }
                tables.push_str(&later);
            }
            1 => {
                if let Some(on) = o.sharing {
                    section.push_str(&format!("{prefix}{name}.sharing = {on}\n"));
                }
                for g in &o.guests {
                    let guest = bare(g.name);
                    match g.form {
                        0 => tables.push_str(&guest_table(&name, g)),
                        1 => {
                            section.push_str(&dotted(&format!("{prefix}{name}.guests.{guest}."), g))
                        }
                        _ => section.push_str(&format!(
                            "{prefix}{name}.guests.{guest} = {}\n",
                            inline(&fields(g), false)
                        )),
                    }
                }
            }
            _ => section.push_str(&format!("{prefix}{name} = {}\n", inline_owner(o, true))),
        }
    }
    match file.style {
        1 => format!("{section}{tables}"),
        _ if section.is_empty() => tables,
        _ if file.section_first => format!("[owners]\n{section}{tables}"),
        _ => format!("{tables}\n[owners]\n{section}"),
    }
}

/// A guest's spelling; its name and key are the owner's to give.
fn gen_guest() -> impl Strategy<Value = GenGuest> {
    (
        prop::option::weighted(
            0.9,
            (
                prop::sample::select(vec!["accepted", "accepted", "invited", "rejected", "left"]),
                0..5u8,
            ),
        ),
        prop::option::weighted(0.2, any::<bool>()),
        prop::option::weighted(0.3, 0..5u8),
        prop::bool::weighted(0.2),
        prop::option::weighted(0.2, any::<bool>()),
        0..4u8,
    )
        .prop_map(
            |(status, admin, expires, from, forwarding, form)| GenGuest {
                name: "",
                key: 0,
                status,
                admin,
                expires,
                from,
                forwarding,
                form,
            },
        )
}

fn gen_owner() -> impl Strategy<Value = GenOwner> {
    (
        prop::sample::select(vec!["alice", "carol", "daemon", "ghost"]),
        prop::option::weighted(0.85, prop::bool::weighted(0.8)),
        prop::sample::subsequence(vec!["bob", "eve", "c.d-e_f", "dave"], 0..=4),
        prop::collection::vec(gen_guest(), 4),
        0..3u8,
        0..3u8,
        any::<bool>(),
    )
        .prop_map(
            |(name, sharing, names, spellings, form, guests_form, header)| {
                // Each guest a key of its own: one key, one guest of an owner.
                let guests = names
                    .into_iter()
                    .zip(spellings)
                    .enumerate()
                    .map(|(key, (name, spelling))| GenGuest {
                        name,
                        key,
                        ..spelling
                    })
                    .collect();
                GenOwner {
                    name,
                    sharing,
                    guests,
                    form,
                    guests_form,
                    header,
                }
            },
        )
}

fn gen_file() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(gen_owner(), 1..4),
        0..3u8,
        any::<bool>(),
    )
        .prop_map(|(mut owners, style, section_first)| {
            let mut seen = std::collections::HashSet::new();
            owners.retain(|o| seen.insert(o.name));
            render(&GenFile {
                owners,
                style,
                section_first,
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any valid file, in any layout the grammar allows: the reader accepts
    /// it, and every edit gives its verdict; revoke, sharing off and leave
    /// succeed and deny exactly the access meant.
    #[test]
    fn every_layout_is_edited_and_access_always_ends(file in gen_file()) {
        if let Err(errors) = vmshare::grant::parse::parse(&file) {
            panic!("generated an invalid file: {errors:?}\n{file}");
        }
        props::check_edits(&file);
    }
}
