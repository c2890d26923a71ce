//! Load and soak (needs root and /dev/fuse, like tests/mount.rs): several reader processes read
//! random files of a mounted dataset for a fixed time, every read checked against the source,
//! while the same daemon converts a dropped file and runs a concat; the daemon's memory and
//! descriptors are measured before and after. Then 50 mount/unmount cycles over one store must
//! leave no mount, process, temporary file or descriptor behind.
//!
//! `SCDL_FS_SOAK_SECS` (default 60) sets the reading time, `SCDL_FS_CYCLES` (default 50) the
//! number of cycles. Figures are printed (`cargo test --release --test soak -- --nocapture`);
//! only correctness and generous leak bounds are asserted.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{daemons, dense_rows, fixtures, is_mounted, processes_naming, python, repo};

/// Both tests measure a daemon (memory, descriptors, timings) and the process's own descriptors:
/// they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Resident set size of `pid` in KiB (VmRSS).
fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Targets of the open descriptors of `pid` ("self" for this process).
fn fds(pid: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            Some(
                std::fs::read_link(e.path())
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "?".into()),
            )
        })
        .collect()
}

/// Descriptors of the daemon grouped: the archive a descriptor's file belongs to
/// (`STORE/NAME/...` → NAME), everything else under "other".
fn fd_groups(pid: i32, store: &Path) -> BTreeMap<String, usize> {
    let prefix = format!("{}/", store.display());
    let mut out = BTreeMap::new();
    for t in fds(&pid.to_string()) {
        let key = match t.strip_prefix(&prefix) {
            Some(rest) if !rest.starts_with('.') && rest.contains('/') => {
                rest.split('/').next().unwrap().to_string()
            }
            _ => "other".to_string(),
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

fn status(mnt: &Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(mnt.join(name).join("status.json")).unwrap()).unwrap()
}

/// Waits until NAME is ready (panics if it fails or takes longer than `limit`); returns the time.
fn wait_ready(mnt: &Path, name: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let st = status(mnt, name);
        match st["state"].as_str() {
            Some("ready") => return t0.elapsed(),
            Some("failed") => panic!("{name} failed: {st}"),
            _ if t0.elapsed() > limit => panic!("{name} not ready after {limit:?}: {st}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Unmounts with umount(8) or SIGTERM to the daemon; waits until the mount is gone and the
/// daemon has exited (10 s at most).
fn unmount(mnt: &Path, sigterm: bool) {
    let pids = daemons(mnt);
    assert_eq!(
        pids.len(),
        1,
        "one daemon serves {}: {pids:?}",
        mnt.display()
    );
    let ok = if sigterm {
        Command::new("kill")
            .arg("-TERM")
            .arg(pids[0].to_string())
            .status()
    } else {
        Command::new("umount").arg(mnt).status()
    };
    assert!(ok.unwrap().success(), "unmount (sigterm: {sigterm})");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (is_mounted(mnt) || alive(pids[0])) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!is_mounted(mnt), "still mounted after unmount");
    assert!(!alive(pids[0]), "daemon {} did not exit", pids[0]);
}

/// Lazily unmounts and kills whatever is left when a test fails halfway.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        for pid in daemons(&self.0) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// Warnings, errors and panics the daemon logged (STORE/.scdl-fs/daemon.log) after byte
/// `from`; at the default log level a healthy daemon logs nothing.
fn log_problems(store: &Path, from: usize) -> Vec<String> {
    let log = std::fs::read(store.join(".scdl-fs/daemon.log")).unwrap_or_default();
    String::from_utf8_lossy(&log[from.min(log.len())..])
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
        .map(str::to_owned)
        .collect()
}

fn log_len(store: &Path) -> usize {
    std::fs::metadata(store.join(".scdl-fs/daemon.log")).map_or(0, |m| m.len() as usize)
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn make_h5ad(out: &Path, rows: u32, cols: u32, density: f64) -> std::process::Child {
    Command::new(python())
        .arg(repo().join("bench/make_h5ad.py"))
        .arg(out)
        .args(["--rows", &rows.to_string(), "--cols", &cols.to_string()])
        .args(["--density", &density.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Daemon RSS growth allowed from the end of the warm-up to the end of the run, in KiB, besides
/// the range table (below). No per-read state is kept (row inodes are computed, archives are read
/// with pread, rendered .npz buffers are freed at release), but glibc keeps freed memory: once a
/// large buffer is freed its dynamic mmap threshold rises, later buffers of that size come from
/// the thread's arena heap, which is not given back. The concat inside the daemon (row_ptr in
/// chunks of 2^20 u64: 8 MiB read + 8 MiB rebased) and read_check's whole-block ranges (.npz of
/// ~3.4 MB rendered in one piece, on any of the 4 FUSE threads) raise RSS by 30-45 MiB once; it
/// then stays (measured: with MALLOC_MMAP_THRESHOLD_=131072 the same steps stay at 16 MiB).
/// 64 MiB covers that with room; a leak of 500 bytes per read (~120 k reads per 60 s run here)
/// exceeds it.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// Daemon RSS growth allowed while only the readers run (the conversion, the concat and the
/// read_checks are done, their retention already counted), besides the range table: 16 MiB.
const STEADY_GROWTH_LIMIT_KIB: u64 = 16 * 1024;

/// Bytes of daemon memory per range file read: each distinct `rows/<a>-<b>.npy` or
/// `csr/<a>-<b>.npz` takes an entry in the range-inode table until the kernel forgets it (it keeps
/// the names cached for an hour), and the table's hash maps double as they grow. Measured: 60 k
/// distinct ranges opened add 18 MiB (~300 B each, a resize included); 384 allows for more.
const RANGE_ENTRY_BYTES: u64 = 384;

#[test]
fn readers_stay_correct_under_load_and_memory_stays_flat() {
    let _serial = serial();
    let secs: f64 = env_or("SCDL_FS_SOAK_SECS", 60.0);
    let readers_n: usize = env_or("SCDL_FS_SOAK_READERS", 4);
    let t_all = Instant::now();
    let dirs = tempfile::tempdir().unwrap();
    let (mnt, store) = (dirs.path().join("mnt"), dirs.path().join("store"));
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = Cleanup(mnt.clone());

    // Inputs: the dataset the readers read (20,000 x 2,000, ~2 M values, 17 MB) and the file
    // converted while they read (30,000 x 1,000, ~1.5 M values).
    let (big, conv) = (dirs.path().join("big.h5ad"), dirs.path().join("conv.h5ad"));
    let small = fixtures().join("large_csr_f32.h5ad");
    let gens = [
        make_h5ad(&big, 20_000, 2_000, 0.05),
        make_h5ad(&conv, 30_000, 1_000, 0.05),
    ];
    for g in gens {
        let o = g.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    common::mount(&mnt, &store, &[]);
    std::fs::copy(&big, mnt.join("big.h5ad")).unwrap();
    std::fs::copy(&small, mnt.join("small.h5ad")).unwrap();
    wait_ready(&mnt, "big", Duration::from_secs(120));
    wait_ready(&mnt, "small", Duration::from_secs(120));
    let pids = daemons(&mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid = pids[0];
    let fds_before = fd_groups(pid, &store);
    let rss_start = rss_kib(pid);

    // The readers: each prints "ready" once its oracle is loaded, then one JSON line at the end.
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut children = Vec::new();
    let mut outputs = Vec::new();
    for seed in 0..readers_n {
        let mut child = Command::new(python())
            .arg(repo().join("tests/mount/soak_reader.py"))
            .arg(&mnt)
            .arg("big")
            .arg(&big)
            .args(["--seconds", &secs.to_string(), "--seed", &seed.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let tx = ready_tx.clone();
        outputs.push(std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(out).lines() {
                let line = line.unwrap();
                if line == "ready" {
                    let _ = tx.send(seed);
                }
                lines.push(line);
            }
            let mut e = String::new();
            let _ = err.read_to_string(&mut e);
            (lines, e)
        }));
        children.push(child);
    }
    drop(ready_tx);
    for _ in 0..readers_n {
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("every reader loads its oracle within 120 s");
    }
    let t_read = Instant::now();

    // RSS sampled every 250 ms while they read.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if s.contains("VmRSS:") {
                        samples.push((t_read.elapsed().as_secs_f64(), rss_kib(pid)));
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        })
    };
    let warmup = Duration::from_secs_f64((secs / 6.0).clamp(1.0, 8.0));
    std::thread::sleep(warmup);
    let rss_warm = rss_kib(pid);

    // A conversion and a concat in the same daemon while the readers go on.
    let t_ops = Instant::now();
    std::fs::copy(&conv, mnt.join("conv.h5ad")).unwrap();
    std::fs::write(mnt.join(".control"), b"concat cat big small\n").unwrap();
    wait_ready(&mnt, "conv", Duration::from_secs(120));
    let conv_ready_at = t_ops.elapsed();
    wait_ready(&mnt, "cat", Duration::from_secs(120));
    let cat_ready_at = t_ops.elapsed();
    let ops_done_in_window = t_read.elapsed().as_secs_f64() < secs;
    common::read_check(&mnt, "conv", &[&conv], &["--samples", "50"]);
    common::read_check(&mnt, "cat", &[&big, &small], &["--samples", "50"]);
    let rss_after_ops = rss_kib(pid);
    let after_ops_at = t_read.elapsed();

    // The readers stop by themselves; a hung one fails the test.
    let deadline = t_read + Duration::from_secs_f64(secs) + Duration::from_secs(60);
    for c in &mut children {
        loop {
            if c.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("a reader did not stop by itself within {secs} s + 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let read_wall = t_read.elapsed();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let rss_end = rss_kib(pid);

    // Collect and check the readers' reports.
    let mut lat: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let (mut ops, mut errors, mut bytes, mut rate) = (0u64, 0u64, 0u64, 0f64);
    let mut problems = Vec::new();
    for (i, h) in outputs.into_iter().enumerate() {
        let (lines, err) = h.join().unwrap();
        let report: serde_json::Value = match lines.last().map(|l| serde_json::from_str(l)) {
            Some(Ok(v)) => v,
            _ => panic!("reader {i} gave no report: {lines:?}\n{err}"),
        };
        let e = report["errors"].as_u64().unwrap();
        if e > 0 {
            problems.push(format!(
                "reader {i}: {e} errors, e.g. {}",
                report["error_samples"]
            ));
        }
        for (kind, n) in report["counts"].as_object().unwrap() {
            if n.as_u64() == Some(0) {
                problems.push(format!("reader {i} did no {kind} read"));
            }
        }
        ops += report["ops"].as_u64().unwrap();
        rate += report["ops"].as_f64().unwrap() / report["seconds"].as_f64().unwrap();
        errors += e;
        bytes += report["bytes"].as_u64().unwrap();
        for (kind, v) in report["lat_us"].as_object().unwrap() {
            let all = lat.entry(kind.clone()).or_default();
            all.extend(v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()));
        }
    }

    // Descriptors once the kernel has sent the readers' last RELEASEs (asynchronous): nothing
    // but the two new archives' files (as many as each archive already had) may remain.
    let per_archive = fds_before.get("big").copied().unwrap_or(0);
    let settle = Instant::now() + Duration::from_secs(5);
    let fds_after = loop {
        let g = fd_groups(pid, &store);
        let other = |m: &BTreeMap<String, usize>| m.get("other").copied().unwrap_or(0);
        if other(&g) <= other(&fds_before) + 2 || Instant::now() > settle {
            break g;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    // The report.
    let range_reads = ["range", "csr"]
        .iter()
        .map(|k| lat.get(*k).map_or(0, |v| v.len() as u64))
        .sum::<u64>();
    let range_kib = range_reads * RANGE_ENTRY_BYTES / 1024;
    let mut all: Vec<u64> = lat.values().flatten().copied().collect();
    all.sort_unstable();
    println!(
        "soak: {readers_n} readers x {secs} s (read wall {:.1} s): {ops} reads, {errors} errors, \
         {rate:.0} reads/s, {:.0} MB read",
        read_wall.as_secs_f64(),
        bytes as f64 / 1e6
    );
    println!("soak: latency ms   count      p50      p99      max");
    for (kind, v) in lat.iter_mut() {
        v.sort_unstable();
        println!(
            "soak:   {kind:<8} {:>8} {:>8} {:>8} {:>8}",
            v.len(),
            ms(pct(v, 50.0)),
            ms(pct(v, 99.0)),
            ms(*v.last().unwrap_or(&0))
        );
    }
    println!(
        "soak:   {:<8} {:>8} {:>8} {:>8} {:>8}",
        "all",
        all.len(),
        ms(pct(&all, 50.0)),
        ms(pct(&all, 99.0)),
        ms(*all.last().unwrap_or(&0))
    );
    println!(
        "soak: conversion (conv, 1.5 M values) ready {:.2} s and concat (cat) {:.2} s after being \
         started {:.1} s into the reads; both finished while the readers ran: {ops_done_in_window}",
        conv_ready_at.as_secs_f64(),
        cat_ready_at.as_secs_f64(),
        warmup.as_secs_f64()
    );
    let max_sample = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "soak: daemon RSS MiB: before readers {:.1}, after warm-up {:.1}, after conversion, concat \
         and their read_checks {:.1}, end {:.1}, max sampled {:.1} ({} samples)",
        rss_start as f64 / 1024.0,
        rss_warm as f64 / 1024.0,
        rss_after_ops as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        max_sample as f64 / 1024.0,
        samples.len()
    );
    let timeline: Vec<String> = samples
        .iter()
        .step_by(20)
        .map(|(t, r)| format!("{t:.0}s:{:.1}", *r as f64 / 1024.0))
        .collect();
    println!(
        "soak: RSS MiB every 5 s: {}; steady reading (readers only) from {:.1} s to the end: \
         {:+.1} MiB; allowance for the range table ({range_reads} range files): {:.1} MiB",
        timeline.join(" "),
        after_ops_at.as_secs_f64(),
        (rss_end as f64 - rss_after_ops as f64) / 1024.0,
        range_kib as f64 / 1024.0
    );
    println!("soak: daemon fds before {fds_before:?}, after {fds_after:?}");
    println!("soak: total wall {:.1} s", t_all.elapsed().as_secs_f64());

    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(errors, 0);
    assert!(ops > 0);
    if secs >= 30.0 {
        assert!(
            ops_done_in_window,
            "the conversion and the concat finished only after the readers ({:?}, {:?})",
            conv_ready_at, cat_ready_at
        );
    }
    assert!(
        rss_end <= rss_warm + RSS_GROWTH_LIMIT_KIB + range_kib,
        "daemon RSS grew from {rss_warm} KiB after warm-up to {rss_end} KiB \
         (allowed: {RSS_GROWTH_LIMIT_KIB} + {range_kib} KiB)"
    );
    assert!(
        rss_end <= rss_after_ops + STEADY_GROWTH_LIMIT_KIB + range_kib,
        "daemon RSS grew from {rss_after_ops} KiB to {rss_end} KiB while only the readers ran \
         (allowed: {STEADY_GROWTH_LIMIT_KIB} + {range_kib} KiB)"
    );
    let other = |m: &BTreeMap<String, usize>| m.get("other").copied().unwrap_or(0);
    assert!(
        other(&fds_after) <= other(&fds_before) + 2,
        "daemon descriptors grew: before {fds_before:?}, after {fds_after:?}"
    );
    assert!(per_archive > 0, "the ready archive holds its files open");
    for name in ["big", "small", "conv", "cat"] {
        assert_eq!(
            fds_after.get(name).copied().unwrap_or(0),
            per_archive,
            "{name}: descriptors before {fds_before:?}, after {fds_after:?}"
        );
    }
    // The daemon survived, logged no warning, and stops cleanly.
    assert_eq!(daemons(&mnt), vec![pid]);
    unmount(&mnt, false);
    let logged = log_problems(&store, 0);
    assert!(logged.is_empty(), "daemon.log: {logged:#?}");
}

/// Parses a version 1.0 little-endian float32 1-D .npy.
fn npy_f32(bytes: &[u8]) -> Vec<f32> {
    assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"), "not a .npy v1.0");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + hlen]);
    assert!(header.contains("'<f4'"), "{header}");
    bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Every file below `dir` (relative path → content), directories as entries with no content.
fn snapshot(dir: &Path, skip: &[&str]) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            if p.is_dir() {
                out.insert(rel, None);
                walk(root, &p, skip, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, skip, &mut out);
    out
}

#[test]
fn mount_unmount_cycles_leave_nothing_behind() {
    let _serial = serial();
    let cycles: usize = env_or("SCDL_FS_CYCLES", 50);
    let t_all = Instant::now();
    let dirs = tempfile::tempdir().unwrap();
    let (mnt, store) = (dirs.path().join("mnt"), dirs.path().join("store"));
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = Cleanup(mnt.clone());
    let source = fixtures().join("csr_f32.h5ad");
    let want = dense_rows(&source);

    // A store holding one ready dataset.
    common::mount(&mnt, &store, &[]);
    std::fs::copy(&source, mnt.join("a.h5ad")).unwrap();
    wait_ready(&mnt, "a", Duration::from_secs(60));
    unmount(&mnt, false);
    // The daemon appends to its log at every start; everything else must stay as it is.
    let skip = [".scdl-fs/daemon.log"];
    let before = snapshot(&store, &skip);
    assert!(before.contains_key("a/data.npy"), "{:?}", before.keys());
    let self_fds = fds("self").len();
    let log_from = log_len(&store);

    let (mut mount_us, mut unmount_us) = (Vec::new(), Vec::new());
    for i in 0..cycles {
        let t0 = Instant::now();
        common::mount(&mnt, &store, &[]); // returns once the mount is live
        mount_us.push(t0.elapsed().as_micros() as u64);
        assert!(is_mounted(&mnt), "cycle {i}: not mounted");
        assert_eq!(status(&mnt, "a")["state"], "ready", "cycle {i}");
        let r = i % want.len();
        let got = npy_f32(&std::fs::read(mnt.join(format!("a/rows/{r}.npy"))).unwrap());
        assert_eq!(got, want[r], "cycle {i}: rows/{r}.npy");
        let f: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mnt.join("a/features/0.json")).unwrap()).unwrap();
        assert_eq!(f["num_rows"], want.len(), "cycle {i}: features/0.json");
        let t1 = Instant::now();
        unmount(&mnt, i % 2 == 1); // umount(8) and SIGTERM in turn
        unmount_us.push(t1.elapsed().as_micros() as u64);
    }

    // Nothing left behind.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours = dirs.path().to_string_lossy().to_string();
    let left: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&ours)).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    let procs: Vec<i32> = [&mnt, &store]
        .iter()
        .flat_map(|p| processes_naming(p))
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let after = snapshot(&store, &skip);
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(changed.is_empty(), "store changed: {changed:?}");
    assert_eq!(
        std::fs::read_dir(&mnt).unwrap().count(),
        0,
        "the mountpoint is an empty directory again"
    );
    let logged = log_problems(&store, log_from);
    assert!(logged.is_empty(), "daemon.log: {logged:#?}");
    assert_eq!(
        fds("self").len(),
        self_fds,
        "this process's descriptors: {:?}",
        fds("self")
    );

    mount_us.sort_unstable();
    unmount_us.sort_unstable();
    println!(
        "cycles: {cycles} mount/read/unmount cycles in {:.1} s; mount to ready ms: median {}, max \
         {}; unmount to daemon exit ms: median {}, max {}",
        t_all.elapsed().as_secs_f64(),
        ms(pct(&mount_us, 50.0)),
        ms(*mount_us.last().unwrap_or(&0)),
        ms(pct(&unmount_us, 50.0)),
        ms(*unmount_us.last().unwrap_or(&0)),
    );
}
