//! cargo-fuzz target `control`: the body is `bodies::control`, shared with tests/fuzz_seeds.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::control(data));
