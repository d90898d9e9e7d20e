//! `cargo fuzz run http_bodies --features libfuzzer`: see `loyalty_fuzz::http_bodies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loyalty_fuzz::http_bodies(data));
