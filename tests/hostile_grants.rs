//! Hostile grant files, seen the way a user sees them: the key lookup sshd
//! runs (`vmshare-keys --config CFG USER …`) prints no guest's key where the
//! file is invalid, only the owner's own, and says why; `vmshare check`
//! names the file, line, column and the problem; and the owner's own key
//! still gets through the PAM hook.
//!
//! Owners are real local accounts (`daemon`, `nobody`): tests may not add
//! accounts to the host. Their keys are held by vmshare (root's `vmshare
//! owner-keys`), which changes the owners' group and the state dir: every
//! program runs in a private overlay of /etc and /var/lib, so none of it
//! reaches the host. Scratch directories are under the build tree (or
//! /run), since the strict checks refuse a grant file or config with a
//! group- or world-writable directory above it, as /tmp is.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod catalogue;
mod scratch;
mod system_overlay;

use catalogue::{valid, with_mallory, BOB, EVE};
use system_overlay::SystemOverlay;

use vmshare::grant::model::MAX_GRANT_FILE_BYTES;
use vmshare::grant::policy::{Account, Accounts};
use vmshare::session::hook::{self, Decision};
use vmshare::store::config::Config;
use vmshare::sys::accounts::SystemAccounts;

const KEYS_BIN: &str = env!("CARGO_BIN_EXE_vmshare-keys");
const CLI_BIN: &str = env!("CARGO_BIN_EXE_vmshare");
/// Local accounts that exist on any Debian host.
const OWNER: &str = "daemon";
const OWNER2: &str = "nobody";

/// The owner's own key (held by vmshare for her, never in the grant file).
const OWN: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDv/Jcqnd7XFO4MlCghccvSPZCSM36NQX1VUF9H6yB1C owner@desk";

fn blob(key: &str) -> &str {
    key.split(' ').nth(1).expect("key blob")
}

/// What the key lookup prints of the owner's own keys: her held line.
fn own_line() -> String {
    format!("{OWN}\n")
}

struct Env {
    /// Dropped before the directory that holds its layers.
    system: SystemOverlay,
    _dir: tempfile::TempDir,
    root: PathBuf,
    etc: PathBuf,
    config: PathBuf,
    grants: PathBuf,
}

/// What one program run showed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn env() -> Env {
    let dir = scratch::trusted_tempdir("hostile");
    let root = dir.path().to_path_buf();
    let etc = root.join("etc");
    let run_dir = root.join("run");
    fs::create_dir(&etc).expect("etc");
    fs::create_dir(&run_dir).expect("run");
    let grants = etc.join("grants.toml");
    let config = etc.join("vmshare.toml");
    write_file(
        &config,
        format!(
            "grants = {:?}\nrun_dir = {:?}\n",
            grants.display().to_string(),
            run_dir.display().to_string()
        ),
        0o644,
    );
    let e = Env {
        system: SystemOverlay::new(&root.join("overlay")),
        _dir: dir,
        root,
        etc,
        config,
        grants,
    };
    // Root takes both owners' keys over (they have none in their homes)
    // and gives daemon hers.
    for args in [
        &["owner-keys", "add", OWNER, "--line", OWN][..],
        &["owner-keys", "import", OWNER2],
    ] {
        let r = run(e.cli().args(args));
        assert_eq!(
            r.code,
            Some(0),
            "vmshare {args:?}: {}{}",
            r.stdout,
            r.stderr
        );
    }
    e
}

fn write_file(path: &Path, data: impl AsRef<[u8]>, mode: u32) {
    fs::write(path, data).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs a program, failing the test if it hangs.
fn run(cmd: &mut Command) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut out, mut err) = (
        child.stdout.take().expect("stdout"),
        child.stderr.take().expect("stderr"),
    );
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&reader.join().expect("stdout")).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().expect("stderr")).into_owned(),
    }
}

impl Env {
    fn write_grants(&self, text: impl AsRef<[u8]>) {
        write_file(&self.grants, text, 0o644);
    }

    /// The key lookup with this config, in the overlay; add its arguments.
    fn keys(&self) -> Command {
        let mut cmd = self.system.command(KEYS_BIN);
        cmd.arg("--config").arg(&self.config);
        cmd
    }

    /// The CLI with this config, in the overlay; add its arguments.
    fn cli(&self) -> Command {
        let mut cmd = self.system.command(CLI_BIN);
        cmd.arg("--config").arg(&self.config);
        cmd
    }

    /// The key lookup, as sshd runs it: `%u %f %t %k`.
    fn lookup(&self, user: &str) -> Run {
        run(self
            .keys()
            .args([user, "SHA256:x", "ssh-ed25519", blob(BOB)]))
    }

    fn check(&self) -> Run {
        run(self.cli().arg("check"))
    }

    /// What the lookup prints for `owner` now, or why it refuses.
    fn owner_lines(&self) -> Result<String, String> {
        let config = Config::load(Some(&self.config)).map_err(|e| e.to_string())?;
        vmshare::store::lookup::owner_lines(&config, OWNER, &SystemAccounts).map(|a| a.lines)
    }

    /// No guest gets in anywhere and the failure is reported: the lookup
    /// prints the owners' own lines only (daemon's key, none for nobody,
    /// nothing for root, whom vmshare never holds); the owner's own key
    /// still passes the PAM hook. Returns the lookup's log line.
    fn assert_no_guest_access(&self, why: &str) -> String {
        for (user, own) in [
            (OWNER, own_line()),
            (OWNER2, String::new()),
            ("root", String::new()),
        ] {
            let r = self.lookup(user);
            assert_eq!(r.stdout, own, "lookup for {user}: {}", r.stderr);
            assert_eq!(r.code, Some(0), "lookup for {user}: {}", r.stderr);
        }
        let r = self.lookup(OWNER);
        assert!(
            r.stderr.contains("no guest keys") && r.stderr.contains(why),
            "the lookup's log should say {why:?}: {}",
            r.stderr
        );
        self.assert_owner_unaffected();
        r.stderr
    }

    /// The owner's own key is let through by the PAM hook whatever the grant
    /// file's state; a guest key is not.
    fn assert_owner_unaffected(&self) {
        let lines = self.owner_lines();
        let own = hook::parse_auth_info(&format!("publickey ssh-ed25519 {}", blob(OWN)));
        let guest = hook::parse_auth_info(&format!("publickey ssh-ed25519 {}", blob(BOB)));
        let held = hook::OwnerKeys::Held(vec![blob(OWN).to_string()]);
        assert!(
            matches!(hook::classify(&own, &lines, &held), Decision::Owner(_)),
            "the owner's own key was refused"
        );
        if lines.as_ref().map_or(true, |l| l.is_empty()) {
            assert!(
                matches!(hook::classify(&guest, &lines, &held), Decision::Deny(_)),
                "a guest got in"
            );
        }
    }

    /// `vmshare check` fails and prints `error: FILE:LINE:COL: ` followed by
    /// a message containing `what`.
    fn assert_check_error(&self, line: usize, column: usize, what: &str) {
        let r = self.check();
        assert_eq!(r.code, Some(1), "check: {}{}", r.stdout, r.stderr);
        let prefix = format!("error: {}:{line}:{column}: ", self.grants.display());
        assert!(
            r.stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(what)),
            "check should print {prefix}…{what}…, printed:\n{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("no guest gets in anywhere"),
            "{}",
            r.stderr
        );
    }

    /// `vmshare check` fails with a finding about the whole file.
    fn assert_check_file_error(&self, what: &str) {
        let r = self.check();
        assert_eq!(r.code, Some(1), "check: {}{}", r.stdout, r.stderr);
        let prefix = format!("error: {}: ", self.grants.display());
        assert!(
            r.stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(what)),
            "check should print {prefix}…{what}…, printed:\n{}",
            r.stderr
        );
    }

    /// The grant file is invalid: no guest access, and `vmshare check`
    /// reports `what` at `line`:`column`.
    fn assert_invalid_at(&self, line: usize, column: usize, what: &str) {
        self.assert_no_guest_access("invalid");
        self.assert_check_error(line, column, what);
    }
}

/// 1-based line and column (in characters) of the last `needle` in `text`
/// (hostile parts come after the valid part).
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.rfind(needle).expect("needle in text");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, column)
}

#[test]
fn the_valid_file_grants_bob_so_an_empty_lookup_means_something() {
    let e = env();
    e.write_grants(valid());
    let r = e.lookup(OWNER);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!("{}ssh-ed25519 {} vmshare:bob\n", own_line(), blob(BOB))
    );
    let c = e.check();
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(c.stdout.contains("ok: 1 owners, 1 guests, 1 with access"));
    e.assert_owner_unaffected();
}

/// Every document of the catalogue (the families below, with their
/// positions, and a few more), as a whole: no guest gets in, it is reported.
#[test]
fn every_document_of_the_catalogue_grants_no_guest() {
    let e = env();
    for (family, text) in catalogue::documents() {
        e.write_grants(&text);
        let c = e.check();
        assert_eq!(c.code, Some(1), "{family}: {}{}", c.stdout, c.stderr);
        e.assert_no_guest_access("invalid");
    }
}

/// Every good document (other layouts, TOML 1.1 spellings) is enforced as
/// the usual layout is: `check` passes and bob gets in.
#[test]
fn every_good_document_of_the_catalogue_grants_bob() {
    let e = env();
    for (name, text) in catalogue::good_documents() {
        e.write_grants(&text);
        let c = e.check();
        assert_eq!(c.code, Some(0), "{name}: {}{}", c.stdout, c.stderr);
        let r = e.lookup(OWNER);
        assert_eq!(r.code, Some(0), "{name}: {}", r.stderr);
        assert!(
            r.stdout
                .ends_with(&format!("ssh-ed25519 {} vmshare:bob\n", blob(BOB))),
            "{name}: {}",
            r.stdout
        );
    }
}

#[test]
fn an_empty_file_is_valid_and_shares_nothing() {
    let e = env();
    for text in ["", "# nothing shared yet\n", "\n\n"] {
        e.write_grants(text);
        for (user, own) in [(OWNER, own_line()), (OWNER2, String::new())] {
            let r = e.lookup(user);
            assert_eq!((r.code, r.stdout), (Some(0), own), "{}", r.stderr);
        }
        let c = e.check();
        assert_eq!(c.code, Some(0), "{}", c.stderr);
        assert!(c.stdout.contains("ok: 0 owners"), "{}", c.stdout);
        e.assert_owner_unaffected();
    }
}

#[test]
fn a_missing_file_shares_nothing_and_is_reported() {
    let e = env();
    let r = e.lookup(OWNER);
    assert_eq!((r.code, r.stdout), (Some(0), own_line()));
    assert!(
        r.stderr.contains("no grant file") && r.stderr.contains("nothing is shared"),
        "{}",
        r.stderr
    );
    let c = e.check();
    assert_eq!(c.code, Some(1));
    assert!(
        c.stderr
            .contains(&format!("{}: no such file", e.grants.display())),
        "{}",
        c.stderr
    );
    e.assert_owner_unaffected();
}

#[test]
fn a_deleted_file_ends_access_even_with_a_snapshot_of_it() {
    let e = env();
    e.write_grants(valid());
    let config = Config::load(Some(&e.config)).expect("config");
    let loaded = vmshare::store::source::load(&e.grants, &SystemAccounts);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64;
    vmshare::store::snapshot::write(&config.snapshot_path(), &loaded, now).expect("snapshot");
    assert!(e.lookup(OWNER).stdout.contains("vmshare:bob"));

    fs::remove_file(&e.grants).expect("delete");
    let r = e.lookup(OWNER);
    assert_eq!(
        r.stdout,
        own_line(),
        "a deleted grant file still granted access"
    );
    assert!(r.stderr.contains("nothing is shared"), "{}", r.stderr);
    e.assert_owner_unaffected();
}

#[test]
fn keys_with_line_breaks_are_errors() {
    let e = env();
    let cases = catalogue::keys_with_line_breaks();
    for keys in cases {
        let text = with_mallory(&keys);
        e.write_grants(&text);
        let (line, _) = position(&text, "keys = [");
        e.assert_no_guest_access("invalid");
        e.assert_check_error(line, 9, "key contains a line break");
    }
}

#[test]
fn keys_with_options_are_errors() {
    let e = env();
    for keys in catalogue::keys_with_options() {
        let text = with_mallory(&keys);
        e.write_grants(&text);
        let (line, _) = position(&text, "keys = [");
        e.assert_invalid_at(line, 9, "options such as command= or from= are not allowed");
    }
}

/// Hostile values of `expires`, `from` and `forwarding`: each makes the
/// whole file invalid, with its position and what is wrong.
#[test]
fn hostile_limits_are_positioned_errors() {
    let e = env();
    for (field, at, what) in catalogue::hostile_limits() {
        let text = catalogue::with_limit(&field);
        e.write_grants(&text);
        let (line, column) = position(&text, &field);
        let value = field.find(at).expect("value in field");
        e.assert_invalid_at(line, column + value, what);
    }
}

/// A deadline in the past, written by hand, is valid and grants nothing;
/// the other guests keep their access.
#[test]
fn a_past_deadline_grants_nothing() {
    let e = env();
    let text = format!(
        "[owners.daemon]\nsharing = true\n\n[owners.daemon.guests.bob]\nstatus = \"accepted\"\nkeys = [\"{BOB}\"]\nexpires = 2001-01-01T00:00:00Z\n"
    );
    e.write_grants(&text);
    let r = e.lookup(OWNER);
    assert_eq!((r.code, r.stdout), (Some(0), own_line()), "{}", r.stderr);
    let c = e.check();
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    e.write_grants(text.replace("2001-01-01", "2999-01-01"));
    let r = e.lookup(OWNER);
    assert!(
        r.stdout
            .strip_prefix(&own_line())
            .is_some_and(|guest| guest.starts_with("expiry-time=\"29990101000000Z\" ssh-ed25519 ")),
        "{}",
        r.stdout
    );
}

#[test]
fn nul_bytes_are_errors() {
    let e = env();
    // Escaped, in a key and in names; raw, in a comment, a string and a key.
    for (text, at, what) in catalogue::nul_bytes() {
        e.write_grants(&text);
        let (line, column) = position(&text, &at);
        e.assert_invalid_at(line, column, what);
    }
}

#[test]
fn a_file_over_the_size_limit_is_refused() {
    let e = env();
    let mut text = valid();
    text.push('#');
    text.push_str(&"x".repeat(MAX_GRANT_FILE_BYTES + 1 - text.len()));
    e.write_grants(&text);
    e.assert_no_guest_access("limit");
    e.assert_check_file_error(&format!(
        "is {} bytes; the limit is {MAX_GRANT_FILE_BYTES}",
        MAX_GRANT_FILE_BYTES + 1
    ));
}

#[test]
fn a_large_valid_file_works() {
    let e = env();
    let mut text = valid();
    for i in 0..5000u32 {
        let mut bytes = [0x5au8; 32];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        let key = ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey(bytes))
            .to_openssh()
            .expect("encode key");
        text.push_str(&format!(
            "\n[owners.daemon.guests.g{i}]\nstatus = \"{}\"\nkeys = [\"{key} g{i}@example.org\"]\n",
            if i % 2 == 0 { "accepted" } else { "invited" }
        ));
    }
    // Pad with comments to within a megabyte of the limit.
    let pad = MAX_GRANT_FILE_BYTES - (1 << 20) - text.len();
    text.push_str(&format!("#{}\n", "x".repeat(pad - 2)));
    assert!(text.len() < MAX_GRANT_FILE_BYTES);
    e.write_grants(&text);
    // Asked for one key (as sshd asks), the lookup prints that key's line
    // after the owner's own; asked for the owner alone, all of them.
    let r = e.lookup(OWNER);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let guest = r.stdout.strip_prefix(&own_line()).unwrap_or_default();
    assert_eq!(guest.lines().count(), 1, "{}", r.stdout);
    assert!(guest.contains(blob(BOB)), "{}", r.stdout);
    let r = run(e.keys().arg(OWNER));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.starts_with(&own_line()), "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 1 + 1 + 2500);
    assert!(r.stdout.lines().all(|l| l.starts_with("ssh-ed25519 ")));
    let c = e.check();
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(
        c.stdout.contains("5001 guests, 2501 with access"),
        "{}",
        c.stdout
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let e = env();
    for text in catalogue::deep_nesting() {
        e.write_grants(text);
        e.assert_no_guest_access("invalid");
        let c = e.check();
        assert_eq!(c.code, Some(1), "crashed? {}", c.stderr);
        assert!(c.stderr.contains("error: "), "{}", c.stderr);
    }
}

#[test]
fn duplicate_tables_and_keys_are_errors() {
    let e = env();
    let v = valid();
    for text in catalogue::duplicates() {
        e.write_grants(&text);
        // The finding points past the valid part, at the duplicate.
        let after = v.lines().count();
        e.assert_no_guest_access("invalid");
        let c = e.check();
        assert_eq!(c.code, Some(1));
        let line = c
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix(&format!("error: {}:", e.grants.display())))
            .and_then(|rest| rest.split(':').next()?.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no file:line:column in {}", c.stderr));
        assert!(line > after, "{text}\n{}", c.stderr);
        assert!(
            c.stderr.contains("duplicate") || c.stderr.contains("redefin"),
            "{text}\n{}",
            c.stderr
        );
    }
}

#[test]
fn look_alike_names_are_errors_that_show_the_character() {
    let e = env();
    for (hostile, at, what, code_point) in catalogue::look_alikes() {
        let text = format!("{}\n{hostile}", valid());
        e.write_grants(&text);
        let (line, column) = position(&text, at);
        e.assert_invalid_at(line, column, what);
        if let Some(code_point) = code_point {
            e.assert_check_error(line, column, code_point);
        }
    }
}

#[test]
fn root_as_owner_is_an_error() {
    let e = env();
    let text = catalogue::root_as_owner();
    e.write_grants(&text);
    let (line, column) = position(&text, "root]");
    e.assert_invalid_at(line, column, "owner `root` has uid 0; root is never shared");
}

#[test]
fn any_uid_0_account_as_owner_is_an_error() {
    // The host has no second uid 0 account and tests may not add one: use
    // an account database that has one.
    struct WithToor;
    impl Accounts for WithToor {
        fn lookup(&self, name: &str) -> Result<Option<Account>, String> {
            Ok(match name {
                "toor" => Some(Account { uid: 0 }),
                "daemon" => Some(Account { uid: 1 }),
                _ => None,
            })
        }
    }
    let text = format!(
        "{}\n[owners.toor]\nsharing = true\n[owners.toor.guests.eve]\nstatus = \"accepted\"\nkeys = [\"{EVE}\"]\n",
        valid()
    );
    let grants = vmshare::grant::parse::parse(&text).expect("well-formed");
    let errors =
        vmshare::grant::policy::compile(&grants, &text, &WithToor).expect_err("uid 0 owner");
    let (line, column) = position(&text, "toor]");
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].column), (line, column));
    assert!(errors[0]
        .message
        .contains("owner `toor` has uid 0; root is never shared"));
}

#[test]
fn a_symlink_to_a_world_writable_file_is_refused() {
    let e = env();
    let target = e.etc.join("real.toml");
    write_file(&target, valid(), 0o666);
    symlink(&target, &e.grants).expect("symlink");
    e.assert_no_guest_access("must not be writable by group or others");
    e.assert_check_file_error("has mode 666; it must not be writable by group or others");

    // A safe file in a world-writable directory, reached by a symlink.
    let open = e.root.join("open");
    fs::create_dir(&open).expect("open dir");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).expect("chmod");
    let target = open.join("grants.toml");
    write_file(&target, valid(), 0o644);
    fs::remove_file(&e.grants).expect("unlink");
    symlink(&target, &e.grants).expect("symlink");
    e.assert_no_guest_access("must be owned by root and not writable by group or others");
    e.assert_check_file_error(&format!(
        "directory {} (owner uid 0, mode 1777) must be owned by root",
        open.display()
    ));
}

#[test]
fn wrong_owner_or_mode_is_refused() {
    let e = env();
    e.write_grants(valid());
    chown(&e.grants, Some(1), Some(1)).expect("chown");
    e.assert_no_guest_access("owned by uid 1, not root");
    e.assert_check_file_error("is owned by uid 1, not root");

    chown(&e.grants, Some(0), Some(0)).expect("chown");
    for (mode, shown) in [(0o664, "664"), (0o646, "646"), (0o622, "622")] {
        fs::set_permissions(&e.grants, fs::Permissions::from_mode(mode)).expect("chmod");
        e.assert_no_guest_access("must not be writable by group or others");
        e.assert_check_file_error(&format!(
            "has mode {shown}; it must not be writable by group or others"
        ));
    }
}

#[test]
fn a_writable_directory_above_is_refused() {
    let e = env();
    e.write_grants(valid());
    for (mode, owner, shown) in [
        (0o775, 0, "owner uid 0, mode 775"),
        (0o757, 0, "owner uid 0, mode 757"),
        (0o755, 1, "owner uid 1, mode 755"),
    ] {
        fs::set_permissions(&e.etc, fs::Permissions::from_mode(mode)).expect("chmod");
        chown(&e.etc, Some(owner), None).expect("chown");
        // The config is in the same directory: the lookup refuses it first,
        // serving the owner's own keys alone, from the default state dir.
        let r = e.lookup(OWNER);
        assert_eq!((r.code, r.stdout), (Some(0), own_line()), "{}", r.stderr);
        assert!(
            r.stderr.contains("no guest keys: bad configuration") && r.stderr.contains(shown),
            "{}",
            r.stderr
        );
        e.assert_owner_unaffected();
        // Checked by path, the grant file itself is refused too.
        let c = run(e.cli().arg("check").arg(&e.grants));
        assert_ne!(c.code, Some(0));
        assert!(
            c.stderr
                .contains(&format!("directory {} ({shown})", e.etc.display())),
            "{}",
            c.stderr
        );
    }
    fs::set_permissions(&e.etc, fs::Permissions::from_mode(0o755)).expect("chmod");
    chown(&e.etc, Some(0), None).expect("chown");

    // A group-writable directory above the grant file only.
    let sub = e.etc.join("shared");
    fs::create_dir(&sub).expect("mkdir");
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o775)).expect("chmod");
    let grants = sub.join("grants.toml");
    write_file(&grants, valid(), 0o644);
    write_file(
        &e.config,
        format!(
            "grants = {:?}\nrun_dir = {:?}\n",
            grants.display().to_string(),
            e.root.join("run").display().to_string()
        ),
        0o644,
    );
    e.assert_no_guest_access(&format!(
        "directory {} (owner uid 0, mode 775) must be owned by root",
        sub.display()
    ));
}

#[test]
fn a_fifo_or_device_in_place_of_the_file_is_refused_without_hanging() {
    let e = env();
    nix::unistd::mkfifo(&e.grants, nix::sys::stat::Mode::from_bits_truncate(0o644))
        .expect("mkfifo");
    e.assert_no_guest_access("is not a regular file");
    e.assert_check_file_error("is not a regular file");
    fs::remove_file(&e.grants).expect("unlink");
    symlink("/dev/zero", &e.grants).expect("symlink");
    e.assert_no_guest_access("is not a regular file");
    fs::remove_file(&e.grants).expect("unlink");
    fs::create_dir(&e.grants).expect("mkdir");
    e.assert_no_guest_access("is not a regular file");
}

#[test]
fn admin_of_the_wrong_type_is_an_error_at_its_value() {
    let e = env();
    for value in catalogue::ADMIN_NOT_BOOLEAN {
        let text = format!("{}admin = {value}\n", valid());
        e.write_grants(&text);
        let (line, column) = position(&text, value);
        e.assert_invalid_at(line, column, "invalid type");
    }
    // A misspelt field is no admin right either.
    let text = format!("{}admn = true\n", valid());
    e.write_grants(&text);
    let (line, column) = position(&text, "admn");
    e.assert_invalid_at(line, column, "unknown field `admn`");
    // Set twice.
    let text = format!("{}admin = false\nadmin = true\n", valid());
    e.write_grants(&text);
    e.assert_no_guest_access("invalid");
}
