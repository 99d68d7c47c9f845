//! `SSH_AUTH_INFO_0` parsing and the PAM hook's decision on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/props/mod.rs"]
mod props;

fuzz_target!(|data: &[u8]| {
    let (flags, info, lines) = props::auth_inputs(data);
    props::check_auth_info(flags, &info, &lines);
});
