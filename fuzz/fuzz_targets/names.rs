//! cargo-fuzz target `names`: the body is `bodies::names`, shared with tests/fuzz_seeds.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::names(data));
