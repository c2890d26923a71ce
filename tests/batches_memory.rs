//! The epoch order keeps no table: finding a batch of a fresh epoch of a 10^8-row (or 2^40-row)
//! dataset allocates only the batch's own row list, whatever the number of rows. Every
//! allocation of this test binary is counted (one test only, so no other thread allocates).

use std::alloc::System;

use scdl_fs::batches::{EpochOrder, Plan};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn a_batch_of_a_fresh_epoch_allocates_only_its_rows() {
    for (plan, rows) in [
        ("size=256,seed=9", 100_000_000u64),
        ("size=256,seed=9,block=64", 100_000_000),
        ("size=1024,seed=1,ranks=8,rank=5", 1 << 40),
    ] {
        let plan = Plan::parse(plan).unwrap();
        for epoch in [0u32, 12_345, u32::MAX] {
            let region = Region::new(GLOBAL);
            let order = EpochOrder::new(&plan, rows, epoch);
            let k = order.batches() / 2 + 7;
            let batch = order.batch_rows(k).unwrap();
            let allocated = region.change().bytes_allocated;
            assert_eq!(batch.len() as u64, plan.size);
            // The rows (8 bytes each) and the runs they were gathered from (16 bytes each, at
            // most one per row), with room for vector growth: nothing proportional to `rows`.
            let bound = 4 * 24 * plan.size as usize;
            assert!(
                allocated <= bound,
                "{plan} over {rows} rows: {allocated} bytes allocated for one batch (bound {bound})"
            );
            drop(batch);
        }
    }
}
