//! The package's generated assets (man pages, shell completions) are kept
//! in `debian/assets/`, so that a plain `cargo deb` builds the package. They
//! must be what the built CLI generates now: a CLI change without refreshing
//! them (`scripts/build-deb` does) fails here.
// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vmshare");
const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/debian/assets");
const REFRESH: &str =
    "run scripts/build-deb (or scripts/build-deb --assets-only) and commit debian/assets";

fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn man_pages_are_current() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .args(["man", "--out-dir"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let generated = files_in(out.path());
    let committed = files_in(&Path::new(ASSETS).join("man"));
    assert!(generated.contains_key("vmshare.1"));
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>(),
        "man pages differ in name: {REFRESH}"
    );
    for (name, text) in &generated {
        assert!(committed[name] == *text, "{name} is stale: {REFRESH}");
    }
}

#[test]
fn completions_are_current() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let committed = fs::read(Path::new(ASSETS).join("completions").join(shell)).unwrap();
        assert!(!out.stdout.is_empty());
        assert!(
            committed == out.stdout,
            "the {shell} completions are stale: {REFRESH}"
        );
    }
}
