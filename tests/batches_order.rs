//! The epoch order against tests/batches/order_oracle.py, a re-implementation written from
//! docs/SEMANTICS.md alone: many plans, dataset sizes, epochs and batches must give the same
//! rows and batch counts.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use scdl_fs::batches::{EpochOrder, Plan};

/// A small deterministic generator for the cases (xorshift64*), unrelated to the algorithm
/// under test.
struct Cases(u64);

impl Cases {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

#[test]
fn the_order_agrees_with_the_python_reimplementation_of_semantics() {
    let mut gen = Cases(0x5eed);
    let row_counts = [
        0u64,
        1,
        2,
        3,
        17,
        1000,
        65_537,
        1_000_003,
        100_000_000,
        1 << 40,
    ];
    let mut cases = Vec::new();
    for n in 0..1500 {
        let rows = row_counts[n % row_counts.len()];
        let size = 1 + gen.below(if n % 3 == 0 { 8 } else { 300 });
        let block = if n % 2 == 0 { 1 } else { 1 + gen.below(100) };
        let ranks = 1 + gen.below(if n % 4 == 0 { 1 } else { 9 });
        let rank = gen.below(ranks);
        let seed = if n % 5 == 0 { gen.below(4) } else { gen.0 };
        // Keys in a varying order: the Python side parses the plan on its own.
        let mut items = [
            format!("size={size}"),
            format!("seed={seed}"),
            format!("block={block}"),
            format!("ranks={ranks}"),
            format!("rank={rank}"),
        ];
        items.rotate_left(n % 5);
        let plan_text = items.join(",");
        let epoch = match n % 4 {
            0 => 0,
            1 => u32::MAX,
            _ => gen.below(1 << 32) as u32,
        };
        let order = EpochOrder::new(&Plan::parse(&plan_text).unwrap(), rows, epoch);
        let k = match n % 7 {
            0 => order.batches(), // one past the end: no batch
            1 => order.batches().saturating_sub(1),
            _ => gen.below(order.batches()),
        };
        cases.push((
            plan_text,
            rows,
            epoch,
            k,
            order.batches(),
            order.batch_rows(k),
        ));
    }

    let mut child = Command::new(common::python())
        .arg(common::repo().join("tests/batches/order_oracle.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run order_oracle.py");
    let mut input = String::new();
    for (plan, rows, epoch, k, _, _) in &cases {
        input.push_str(&format!(
            "{{\"plan\": \"{plan}\", \"rows\": {rows}, \"epoch\": {epoch}, \"k\": {k}}}\n"
        ));
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "order_oracle.py failed");
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), cases.len());
    let mut batches_with_rows = 0;
    for ((plan, rows, epoch, k, batches, ours), line) in cases.iter().zip(lines) {
        let theirs: serde_json::Value = serde_json::from_str(line).unwrap();
        let what = format!("plan {plan}, {rows} rows, epoch {epoch}, batch {k}");
        assert_eq!(
            theirs["batches"].as_u64(),
            Some(*batches),
            "{what}: batch count"
        );
        let theirs_rows: Option<Vec<u64>> = serde_json::from_value(theirs["rows"].clone()).unwrap();
        assert_eq!(&theirs_rows, ours, "{what}: rows");
        batches_with_rows += ours.is_some() as usize;
    }
    // The cases must mostly be real batches, not the empty ends.
    assert!(batches_with_rows > cases.len() / 2, "{batches_with_rows}");
}
