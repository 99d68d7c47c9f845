//! The key lookup program with any arguments, against a fixed grant file
//! (with and without a current snapshot).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/props/mod.rs"]
mod props;

fn fixtures() -> &'static [props::LookupFixture; 2] {
    static FIXTURES: OnceLock<[props::LookupFixture; 2]> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let (dir, run_dir) = props::fuzz_fixture_dirs("key_lookup_args");
        let (dir2, run_dir2) = props::fuzz_fixture_dirs("key_lookup_args-nosnap");
        [
            props::LookupFixture::new(&dir, &run_dir, true),
            props::LookupFixture::new(&dir2, &run_dir2, false),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let (which, rest) = data.split_first().map_or((0, &[][..]), |(w, r)| (*w, r));
    let fixture = &fixtures()[usize::from(which & 1)];
    props::check_lookup_args(fixture, props::split_args(rest));
});
