//! The grant-file parser and validator on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/props/mod.rs"]
mod props;

fuzz_target!(|data: &[u8]| {
    props::check_grants(&String::from_utf8_lossy(data));
});
