//! cargo-fuzz target `archive`: the body is `bodies::archive`, shared with tests/fuzz_seeds.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::archive(data));
