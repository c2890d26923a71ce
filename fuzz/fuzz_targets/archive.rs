//! cargo-fuzz target `archive`: the body is `bodies::archive`, shared with tests/fuzz_seeds.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(
    // libfuzzer-sys aborts on any panic, even one that is caught. scdl-fs catches the panics
    // of the parquet crate on corrupt files (features::read_parquet) and must be tested doing
    // so: report panics without aborting; an uncaught one still aborts (libfuzzer-sys's own
    // catch_unwind around the body) and is a crash.
    init: std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}\n{}", std::backtrace::Backtrace::force_capture());
    })),
    |data: &[u8]| bodies::archive(data)
);
