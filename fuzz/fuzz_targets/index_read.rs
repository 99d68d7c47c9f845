//! The snapshot's key index reader, on snapshots of generated grants,
//! damaged anywhere or not at all.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/props/mod.rs"]
mod props;

fn snapshot_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| props::fuzz_fixture_dirs("index_read").1.join("snapshot"))
}

fuzz_target!(|data: &[u8]| {
    props::check_index(snapshot_path(), &props::index_input(data));
});
