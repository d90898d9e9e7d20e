//! `cargo fuzz run program --features libfuzzer`: see `loyalty_fuzz::program`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loyalty_fuzz::program(data));
