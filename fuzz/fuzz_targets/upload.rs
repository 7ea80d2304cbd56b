#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| backless_fuzz::upload(data));
