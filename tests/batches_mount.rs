//! Shuffled batches through a real mount (`NAME/batches/<PLAN>/<EPOCH>/<K>.npz|.safetensors`):
//! tests/batches/mount_check.py lists and reads every batch of several plans (scipy, safetensors
//! and the examples' own reading), compares it with the source read by anndata and with the
//! order re-implemented from docs/SEMANTICS.md, and checks each epoch's coverage (one rank:
//! every row once; W ranks: disjoint, equal counts, at most W - 1 batches left out). Two daemons
//! over one store, and a daemon restarted, serve the same bytes. Bad names are ENOENT, and many
//! plans read at once stay within `--batch-memory`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLANS: [&str; 4] = [
    "size=64",
    "seed=3,block=16,size=100",
    "size=50,ranks=3,seed=5",
    "size=256,block=64,seed=11",
];

/// Runs mount_check.py on NAME at `mnt` with `plans`; returns the digest of every file read.
fn mount_check(mnt: &Path, name: &str, sources: &[PathBuf], plans: &[&str]) -> String {
    let mut cmd = Command::new(common::python());
    cmd.arg(common::repo().join("tests/batches/mount_check.py"))
        .arg(mnt)
        .arg(name)
        .args(sources);
    for p in plans {
        cmd.arg("--plan").arg(p);
    }
    let o = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "mount_check {name} on {}:\n{said}{}",
        mnt.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(said.starts_with("checked "), "{said}");
    said.lines()
        .find_map(|l| l.strip_prefix("digest "))
        .expect("a digest line")
        .to_string()
}

fn fixture(name: &str) -> PathBuf {
    common::fixtures().join(name)
}

fn drop_into(mnt: &Path, name: &str, source: &Path) {
    std::fs::copy(source, mnt.join(format!("{name}.h5ad"))).unwrap();
    common::wait_ready(mnt, name);
}

#[test]
fn batches_hold_every_row_once_per_epoch_and_the_source_values() {
    let m = common::TestMount::start();
    drop_into(&m.mnt, "big", &fixture("large_csr_f32.h5ad"));
    mount_check(&m.mnt, "big", &[fixture("large_csr_f32.h5ad")], &PLANS);
    // Feature blocks of different widths (a concat of two inputs): batches take the widest.
    let dir = common::fixtures().join("dir");
    let (a, c) = (dir.join("a.h5ad"), dir.join("b/c.h5ad"));
    drop_into(&m.mnt, "a", &a);
    drop_into(&m.mnt, "c", &c);
    std::fs::write(m.mnt.join(".control"), "concat mixed a c\n").unwrap();
    common::wait_ready(&m.mnt, "mixed");
    mount_check(
        &m.mnt,
        "mixed",
        &[a, c],
        &["size=8", "size=6,block=4,seed=2", "size=7,ranks=2,seed=1"],
    );
}

#[test]
fn two_daemons_and_a_restart_serve_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&store, &a, &b] {
        std::fs::create_dir(d).unwrap();
    }
    let source = fixture("large_csr_f32.h5ad");
    common::place_input(&store, "big", &source);
    common::mount(&a, &store, &[]);
    common::mount(&b, &store, &[]);
    let plans = &PLANS[1..3];
    let sources = std::slice::from_ref(&source);
    common::wait_ready(&a, "big");
    common::wait_ready(&b, "big");
    let first = mount_check(&a, "big", sources, plans);
    assert_eq!(first, mount_check(&b, "big", sources, plans), "two daemons");
    let status = Command::new("umount").arg(&b).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !common::daemons(&b).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    common::mount(&b, &store, &[]);
    common::wait_ready(&b, "big");
    assert_eq!(
        first,
        mount_check(&b, "big", sources, plans),
        "after a restart"
    );
    for m in [&a, &b] {
        common::unmount_and_kill(m);
    }
}

fn not_found(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

#[test]
fn bad_names_are_enoent_and_many_plans_stay_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (mnt, store) = (dir.path().join("mnt"), dir.path().join("store"));
    std::fs::create_dir(&mnt).unwrap();
    let budget = 256 << 10;
    common::mount(&mnt, &store, &["--batch-memory", "256K"]);
    drop_into(&mnt, "big", &fixture("large_csr_f32.h5ad"));
    let batches = mnt.join("big/batches");
    // 1,400 rows in batches of 64: 21 full ones and a last one of 56 rows.
    assert!(batches.join("size=64/0/21.npz").is_file());
    for bad in [
        "size=0/0/0.npz",
        "size=65537/0/0.npz",
        "seed=1/0/0.npz",
        "size=64,size=64/0/0.npz",
        "size=64,rank=1/0/0.npz",
        "size=64,colour=red/0/0.npz",
        "size=064/0/0.npz",
        "size=64,/0/0.npz",
        "size=64/01/0.npz",
        "size=64/-1/0.npz",
        "size=64/4294967296/0.npz",
        "size=64/0/22.npz",
        "size=64/0/00.npz",
        "size=64/0/0.npy",
        "size=64/0/0.NPZ",
        "size=64/0/0",
        "size=64/0/18446744073709551616.npz",
        "size=64,ranks=2,rank=1/0/11.npz",
    ] {
        assert!(not_found(&batches.join(bad)), "{bad} should not exist");
    }
    assert!(batches
        .join("size=64,ranks=2,rank=1/0/10.safetensors")
        .is_file());
    // Many distinct plans open at once, each read whole: the cache keeps within the budget.
    let mut open: Vec<(std::fs::File, u64)> = (0..60)
        .map(|seed| {
            let p = batches.join(format!("size=64,seed={seed}/0/0.npz"));
            let len = std::fs::metadata(&p).unwrap().len();
            (std::fs::File::open(&p).unwrap(), len)
        })
        .collect();
    for (f, len) in &mut open {
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, *len);
    }
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join(".stats")).unwrap()).unwrap();
    assert_eq!(stats["batch_memory"], budget);
    let held = stats["prefetch"]["bytes"].as_u64().unwrap();
    assert!(
        held <= budget,
        "{held} bytes held over a {budget}-byte budget"
    );
    let reads = &stats["requests"]["batches"]["read"];
    assert!(reads["requests"].as_u64().unwrap() >= 60, "{stats}");
    assert!(reads["bytes"].as_u64().unwrap() >= open.iter().map(|(_, l)| l).sum::<u64>());
    drop(open);
    common::unmount_and_kill(&mnt);
}

/// Reads the daemon's `.stats` document.
fn stats(mnt: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(mnt.join(".stats")).unwrap()).unwrap()
}

#[test]
fn batch_files_read_are_forgotten() {
    let m = common::TestMount::start();
    drop_into(&m.mnt, "big", &fixture("large_csr_f32.h5ad"));
    let plan = m.mnt.join("big/batches/size=8,seed=4");
    // 1,400 rows in batches of 8: 175 per epoch; three epochs, both formats, each read whole.
    let mut read = 0;
    for epoch in 0..3 {
        for k in 0..175 {
            for ext in ["npz", "safetensors"] {
                let p = plan.join(format!("{epoch}/{k}.{ext}"));
                let len = std::fs::metadata(&p).unwrap().len();
                assert_eq!(std::fs::read(&p).unwrap().len() as u64, len);
                read += 1;
            }
        }
    }
    assert_eq!(read, 1050);
    // Names are dropped 512 closes at a time (1,024 of the 1,050 here), and the kernel sends its
    // forgets in the background: wait for them. What may stay is the plan, its three epoch
    // directories and the 26 files closed since.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let nodes = stats(&m.mnt)["batch_nodes"].as_u64().expect("batch_nodes");
        if nodes <= 4 + 26 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{nodes} batch nodes still held after reading {read} batch files"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
