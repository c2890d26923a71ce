//! cargo-fuzz target `batches`: the body is `bodies::batches`, shared with tests/fuzz_seeds.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::batches(data));
