//! The snapshot reader and the key lookup on any snapshot bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/props/mod.rs"]
mod props;

fn fixture() -> &'static props::LookupFixture {
    static FIXTURE: OnceLock<props::LookupFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (dir, run_dir) = props::fuzz_fixture_dirs("snapshot_read");
        props::LookupFixture::new(&dir, &run_dir, false)
    })
}

fuzz_target!(|data: &[u8]| {
    props::check_snapshot(fixture(), data);
});
