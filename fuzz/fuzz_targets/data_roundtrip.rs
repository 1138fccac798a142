#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| mxsend_fuzz::checks::data::check(input));
