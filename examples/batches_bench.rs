//! Benchmark of the shuffled-batch library pieces, in-process (no mount): how many rows per
//! second `BatchLayout` + `render` turn into finished batch files (bytes ready for the kernel),
//! for `block=1` and `block=64`, `.npz` and `.safetensors`; and how long finding the rows of a
//! batch of a fresh epoch takes at 10^8 rows.
//!
//!     cargo run --release --example batches_bench -- ARCHIVE [SECONDS] [THREADS]
//!
//! Prints one line per mode: `MODE ROWS_PER_S`, then `MODE_cpu_us MICROSECONDS` (process CPU
//! time per batch, all threads), and `order_us_10e8 MICROSECONDS`, the median over 10,000
//! fresh epochs. bench/batches_lib.sh runs it side by side with a numpy gather.

use std::path::Path;
use std::time::{Duration, Instant};

use scdl_fs::archive::Archive;
use scdl_fs::batches::{BatchFormat, BatchLayout, EpochOrder, Plan, ReadPool, Recycler};

/// CPU time of the whole process (every thread) so far, in seconds, from /proc/self/stat: on a
/// shared machine it says what a batch costs better than wall time does.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Rows per second and CPU microseconds per batch.
fn render_rate(
    archive: &Archive,
    plan: &str,
    format: BatchFormat,
    pool: &ReadPool,
    secs: f64,
) -> (f64, f64) {
    let plan = Plan::parse(plan).expect("plan");
    let mut rows = 0u64;
    let mut batches = 0u64;
    let mut bytes = 0usize;
    let buffers = Recycler::default();
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    let mut epoch = 0u32;
    'outer: loop {
        let order = EpochOrder::new(&plan, archive.num_rows, epoch);
        for k in 0..order.batches() {
            let layout = BatchLayout::of_batch(archive, &order, k, pool)
                .expect("layout")
                .expect("batch");
            let out = layout
                .render(archive, format, pool, &buffers)
                .expect("render");
            bytes += out.len();
            // As the daemon's cache does when it evicts a batch.
            buffers.give(out);
            rows += layout.rows();
            batches += 1;
            if start.elapsed() >= Duration::from_secs_f64(secs) {
                break 'outer;
            }
        }
        epoch += 1;
    }
    std::hint::black_box(bytes);
    let cpu_us = (process_cpu_seconds() - cpu) * 1e6 / batches as f64;
    (rows as f64 / start.elapsed().as_secs_f64(), cpu_us)
}

fn order_micros() -> f64 {
    let plan = Plan::parse("size=256,seed=1").unwrap();
    let mut times: Vec<f64> = (0..10_000u32)
        .map(|epoch| {
            let t = Instant::now();
            let order = EpochOrder::new(&plan, 100_000_000, epoch);
            let rows = order.batch_rows(epoch as u64 % order.batches()).unwrap();
            std::hint::black_box(rows);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: batches_bench ARCHIVE [SECONDS] [THREADS]");
        std::process::exit(2);
    };
    let secs: f64 = args.get(2).map_or(5.0, |s| s.parse().expect("SECONDS"));
    let threads: usize = args.get(3).map_or(16, |s| s.parse().expect("THREADS"));
    let archive = Archive::open(Path::new(path)).unwrap_or_else(|e| {
        eprintln!("batches_bench: {e}");
        std::process::exit(1);
    });
    let pool = ReadPool::new(threads);
    for (name, plan) in [("block1", "size=256"), ("block64", "size=256,block=64")] {
        for format in BatchFormat::ALL {
            let (rate, cpu) = render_rate(&archive, plan, format, &pool, secs);
            println!("{name}_{} {rate:.0}", format.extension());
            println!("{name}_{}_cpu_us {cpu:.0}", format.extension());
        }
    }
    println!("order_us_10e8 {:.2}", order_micros());
}
