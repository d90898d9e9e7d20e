//! `cargo fuzz run command_envelope --features libfuzzer`: see `loyalty_fuzz::command_envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| loyalty_fuzz::command_envelope(data));
