//! Several daemons over one store, as on the nodes of a cluster sharing one file system (here:
//! several mounts of one store directory on this machine). What one daemon publishes or deletes
//! the others show within seconds; each input is converted exactly once whichever daemon sees
//! it; two drops of one name through two daemons give one winner and an EEXIST; a dead or
//! silent daemon's work is taken over; a concat interrupted by a crash is restarted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, daemons, fixtures, is_mounted, scdl, stderr};

/// One daemon mounted at `mnt` over a shared store; unmounted and killed on drop.
struct Node {
    mnt: PathBuf,
    /// Taken at start: while the daemon forks a conversion worker, the child briefly shows the
    /// daemon's command line too.
    pid: i32,
}

impl Node {
    fn start(root: &Path, name: &str, store: &Path, env: &[(&str, &str)]) -> Node {
        let mnt = root.join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let o = Command::new(bin())
            .args(["mount", mnt.to_str().unwrap(), "--store"])
            .arg(store)
            .env("RUST_LOG", "scdl_fs=info,fuser=error")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(o.status.success(), "mount {name}: {}", stderr(&o));
        assert!(is_mounted(&mnt));
        let pids = daemons(&mnt);
        assert_eq!(pids.len(), 1, "one daemon per mount");
        Node { mnt, pid: pids[0] }
    }

    fn status(&self, name: &str) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.mnt.join(name).join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until `name` shows `state` here (or panics after `secs`).
    fn wait_state(&self, name: &str, state: &str, secs: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let st = self.status(name);
            if let Some(st) = &st {
                if st["state"] == state {
                    return st.clone();
                }
                assert!(
                    st["state"] != "failed" || state == "failed",
                    "{name} failed on {}: {st}",
                    self.mnt.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} not {state} on {} within {secs} s: {st:?}",
                self.mnt.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> i32 {
        self.pid
    }

    fn control(&self, line: &str) -> std::io::Result<()> {
        std::fs::write(self.mnt.join(".control"), format!("{line}\n"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        common::unmount_and_kill(&self.mnt);
    }
}

fn signal(pid: i32, sig: &str) {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

/// The daemon's children (its conversion workers).
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                // Field 4 (ppid) follows the parenthesised command name.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Lines of the shared daemon log saying that a conversion of `name` started.
fn conversions_started(store: &Path, name: &str) -> usize {
    let log = std::fs::read_to_string(store.join(".scdl-fs/daemon.log")).unwrap_or_default();
    let needle = format!("{name}: converting ");
    log.lines().filter(|l| l.contains(&needle)).count()
}

fn no_leftovers(store: &Path) {
    let temps: Vec<String> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("scdl-tmp"))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
    let uploads = std::fs::read_dir(store.join(".scdl-fs/uploads"))
        .unwrap()
        .count();
    assert_eq!(uploads, 0, "unfinished uploads left");
}

#[test]
fn three_daemons_agree_and_convert_each_input_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(dir.path(), &format!("node{i}"), &store, &[]))
        .collect();

    // Published through one, seen by the others within seconds, with identical bytes.
    let src = fixtures().join("large_csr_f32.h5ad");
    std::fs::copy(&src, nodes[0].mnt.join("a.h5ad")).unwrap();
    nodes[0].wait_state("a", "ready", 60);
    for n in &nodes[1..] {
        n.wait_state("a", "ready", 10);
        assert_eq!(
            std::fs::read(n.mnt.join("a/rows/7.npy")).unwrap(),
            std::fs::read(nodes[0].mnt.join("a/rows/7.npy")).unwrap()
        );
    }
    common::read_check(&nodes[2].mnt, "a", &[&src], &["--samples", "60"]);

    // Inputs put straight into the store (as by hand, or by a node without a mount): every
    // daemon sees them at its next rescan, exactly one converts each.
    let names: Vec<String> = (0..5).map(|i| format!("in{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let fixture = [
            "csr_f32.h5ad",
            "csr_gzip.h5ad",
            "dense_f32.h5ad",
            "csc_f32.h5ad",
        ][i % 4];
        common::place_input(&store, name, &fixtures().join(fixture));
    }
    for name in &names {
        for n in &nodes {
            n.wait_state(name, "ready", 60);
        }
        assert_eq!(
            conversions_started(&store, name),
            1,
            "{name} converted more than once (or never)"
        );
    }

    // Deleted through one: gone from the others within seconds.
    nodes[1].control("delete a").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in &nodes {
        while n.mnt.join("a").exists() {
            assert!(
                Instant::now() < deadline,
                "a still shown on {}",
                n.mnt.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(!store.join("a").exists() && !store.join("a.h5ad").exists());
    no_leftovers(&store);
}

#[test]
fn two_drops_of_one_name_through_two_daemons_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let a = Node::start(dir.path(), "a", &store, &[]);
    let b = Node::start(dir.path(), "b", &store, &[]);
    let (fa, fb) = (
        fixtures().join("csr_f32.h5ad"),
        fixtures().join("csr_i32.h5ad"),
    );
    for round in 0..6 {
        let name = format!("same{round}");
        let file = format!("{name}.h5ad");
        let (winner, e) = common::race_drops(&a.mnt, &b.mnt, &file, &fa, &fb);
        assert!(
            common::refused_drop(&e),
            "round {round}: the loser failed with {e}"
        );
        // The store holds the winner's bytes, and both daemons serve its conversion.
        a.wait_state(&name, "ready", 60);
        b.wait_state(&name, "ready", 60);
        assert_eq!(
            std::fs::read(store.join(&file)).unwrap(),
            std::fs::read(winner).unwrap()
        );
        common::read_check(&b.mnt, &name, &[winner], &["--samples", "60"]);
        assert_eq!(conversions_started(&store, &name), 1);
    }
    no_leftovers(&store);
}

#[test]
fn a_dead_daemons_conversion_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let big = common::big_input(dir.path());
    // a's converter hangs (test-only fault switch), so a is surely mid-conversion when killed.
    let a = Node::start(
        dir.path(),
        "a",
        &store,
        &[("SCDL_FS_CONVERTER_FAULT", "stall")],
    );
    let b = Node::start(dir.path(), "b", &store, &[]);
    std::fs::copy(&big, a.mnt.join("big.h5ad")).unwrap();
    a.wait_state("big", "converting", 30);
    let st = b.wait_state("big", "converting", 10); // shown as another daemon's work
    assert!(
        st["by"]
            .as_str()
            .is_some_and(|by| by.contains(&a.pid().to_string())),
        "{st}"
    );
    let workers = children(a.pid());
    assert!(!workers.is_empty(), "a's conversion worker is running");
    signal(a.pid(), "-KILL");
    // Its conversion worker dies with it (PR_SET_PDEATHSIG, set again after the worker dropped
    // root): none works on for a daemon that is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let alive = |p: &i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    while workers.iter().any(alive) {
        assert!(
            std::time::Instant::now() < deadline,
            "a's workers {workers:?} outlived it"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = b.wait_state("big", "ready", 90);
    assert_eq!(st["rows_total"], 40000);
    common::read_check(&b.mnt, "big", &[&big], &["--samples", "60"]);
    assert_eq!(
        std::fs::read(store.join("big.h5ad")).unwrap(),
        std::fs::read(&big).unwrap()
    );
    no_leftovers(&store);
}

#[test]
fn a_silent_daemons_lease_is_taken_over_and_it_does_not_corrupt_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let big = common::big_input(dir.path());
    let fast = [("SCDL_FS_LEASE_STALE_SECS", "2")];
    let a = Node::start(dir.path(), "a", &store, &fast);
    let b = Node::start(dir.path(), "b", &store, &fast);
    std::fs::copy(&big, a.mnt.join("big.h5ad")).unwrap();
    a.wait_state("big", "converting", 30);
    // Freeze a (alive but silent: a hung node) and its conversion worker.
    let frozen: Vec<i32> = std::iter::once(a.pid()).chain(children(a.pid())).collect();
    for &p in &frozen {
        signal(p, "-STOP");
    }
    let st = b.wait_state("big", "ready", 90);
    assert_eq!(st["rows_total"], 40000);
    // a wakes up, finds its lease gone, and must not replace or damage b's archive.
    for &p in &frozen {
        signal(p, "-CONT");
    }
    a.wait_state("big", "ready", 60);
    std::thread::sleep(Duration::from_secs(1));
    common::read_check(&a.mnt, "big", &[&big], &["--samples", "60"]);
    common::read_check(&b.mnt, "big", &[&big], &["--samples", "60"]);
    let o = scdl(&["info", store.join("big").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !store.join(".scdl-fs/failed/big.json").exists(),
        "a lost race is not a failed input"
    );
    no_leftovers(&store);
}

#[test]
fn an_interrupted_concat_is_restarted_and_an_impossible_one_fails_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = fixtures().join("csr_f32.h5ad");
    {
        let n = Node::start(dir.path(), "first", &store, &[]);
        std::fs::copy(&src, n.mnt.join("x.h5ad")).unwrap();
        std::fs::copy(fixtures().join("csr_gzip.h5ad"), n.mnt.join("y.h5ad")).unwrap();
        n.wait_state("x", "ready", 60);
        n.wait_state("y", "ready", 60);
        signal(n.pid(), "-KILL");
    }
    // What a daemon killed in the middle of `concat xy x y` leaves: the job written down, a
    // half-written temporary archive, and its lease (held by a pid that is gone).
    let jobs = store.join(".scdl-fs/jobs");
    std::fs::write(
        jobs.join("xy.json"),
        r#"{"command": "concat xy x y", "sources": ["x", "y"]}"#,
    )
    .unwrap();
    let temp = store.join(".xy.scdl-tmp.999999.0");
    std::fs::create_dir(&temp).unwrap();
    std::fs::write(temp.join("data.npy"), b"half written").unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(
        store.join(".scdl-fs/leases/xy.lease"),
        format!(
            r#"{{"host": "{}", "pid": 999999, "nonce": 1, "purpose": "concat"}}"#,
            host.trim()
        ),
    )
    .unwrap();
    // And a concat whose source has disappeared since.
    std::fs::write(
        jobs.join("xz.json"),
        r#"{"command": "concat xz x gone", "sources": ["x", "gone"]}"#,
    )
    .unwrap();

    let n = Node::start(dir.path(), "second", &store, &[]);
    let st = n.wait_state("xy", "ready", 60);
    assert_eq!(st["rows_total"], 80);
    let o = common::verify(
        &store.join("xy"),
        &[&src, &fixtures().join("csr_gzip.h5ad")],
        &[],
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let st = n.wait_state("xz", "failed", 30);
    assert!(
        st["error"].as_str().unwrap().contains("gone"),
        "the reason names the missing source: {st}"
    );
    assert!(
        !jobs.join("xy.json").exists(),
        "a finished job is forgotten"
    );
    // A failed concat stays until deleted; deleting it forgets the job.
    n.control("delete xz").unwrap();
    assert!(!n.mnt.join("xz").exists());
    assert!(!jobs.join("xz.json").exists());
    no_leftovers(&store);
}
