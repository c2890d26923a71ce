//! The mounted tree driven directly (no kernel): drops, conversion, lookups, sizes, listings,
//! reads of rows and ranges, `.control`, and refusals. Expected rows come from the source .h5ad
//! read field by field with the hdf5 crate, not through scdl-fs's reader or archive.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use scdl_fs::catalog::CatalogOptions;
use scdl_fs::convert::{self, ConvertOptions, Quiet};
use scdl_fs::namespace::{FsError, Namespace, NamespaceOptions, NodeType, ROOT_INO};
use scdl_fs::store::Store;

use common::{dense_rows, fixtures};

/// Parses a float32 .npy: (shape, values).
fn parse_npy(bytes: &[u8]) -> (Vec<u64>, Vec<f32>) {
    let (descr, shape, offset) = scdl_fs::npy::parse_header(bytes).unwrap();
    assert_eq!(descr, "<f4");
    let vals = bytes[offset..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, vals)
}

struct Fixture {
    _dir: tempfile::TempDir,
    store_path: PathBuf,
    ns: Arc<Namespace>,
}

fn namespace_with(setup: impl FnOnce(&Path)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    std::fs::create_dir(&store_path).unwrap();
    setup(&store_path);
    let ns = Namespace::new(
        Store::open(&store_path).unwrap(),
        NamespaceOptions {
            catalog: CatalogOptions {
                convert: ConvertOptions::default(),
                workers: 1,
                // Conversions in child processes of the real binary, as the mount runs them.
                converter: Some(common::bin()),
                limits: Default::default(),
                confinement: Default::default(),
            },
            writers: None,
            ..Default::default()
        },
    );
    ns.start_workers();
    Fixture {
        _dir: dir,
        store_path,
        ns,
    }
}

fn read_all(ns: &Namespace, ino: u64) -> Vec<u8> {
    let o = ns.open(ino, false, false).unwrap();
    let mut out = Vec::new();
    loop {
        // Odd-sized reads exercise the piecewise rendering.
        let chunk = ns.read(ino, o.fh, out.len() as u64, 1000).unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend(chunk);
    }
    ns.release(o.fh).unwrap();
    out
}

fn path_ino(ns: &Namespace, path: &str) -> Result<u64, FsError> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = ns.lookup(ino, part)?.ino;
    }
    Ok(ino)
}

fn drop_file(ns: &Namespace, name: &str, source: &Path) -> Result<(), FsError> {
    let (_, o) = ns.create(ROOT_INO, name)?;
    let bytes = std::fs::read(source).unwrap();
    for (i, chunk) in bytes.chunks(4096).enumerate() {
        ns.write(o.fh, (i * 4096) as u64, chunk)?;
    }
    ns.release(o.fh)
}

fn status(ns: &Namespace, name: &str) -> serde_json::Value {
    serde_json::from_slice(&read_all(
        ns,
        path_ino(ns, &format!("{name}/status.json")).unwrap(),
    ))
    .unwrap()
}

#[test]
fn a_dropped_file_becomes_readable_rows() {
    let fx = namespace_with(|_| {});
    let ns = &fx.ns;
    let src = fixtures().join("csr_f32.h5ad");
    drop_file(ns, "pbmc.h5ad", &src).unwrap();
    assert!(ns.wait_idle(Duration::from_secs(30)));
    let st = status(ns, "pbmc");
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["rows_done"], st["rows_total"]);
    // The input stays, read-only, byte for byte.
    let input = path_ino(ns, "pbmc.h5ad").unwrap();
    assert_eq!(read_all(ns, input), std::fs::read(&src).unwrap());
    assert_eq!(ns.getattr(input).unwrap().perm, 0o444);
    assert_eq!(ns.open(input, true, false).unwrap_err(), FsError::Access);

    let expected = dense_rows(&src);
    for (i, want) in expected.iter().enumerate() {
        let ino = path_ino(ns, &format!("pbmc/rows/{i}.npy")).unwrap();
        let bytes = read_all(ns, ino);
        assert_eq!(
            ns.getattr(ino).unwrap().size,
            bytes.len() as u64,
            "exact size of row {i}"
        );
        let (shape, vals) = parse_npy(&bytes);
        assert_eq!(shape, vec![want.len() as u64]);
        assert_eq!(&vals, want, "row {i}");
    }
    // A 2-D range equals the stacked rows.
    let ino = path_ino(ns, "pbmc/rows/5-17.npy").unwrap();
    let (shape, vals) = parse_npy(&read_all(ns, ino));
    assert_eq!(shape, vec![12, 30]);
    assert_eq!(vals, expected[5..17].concat());
    // Rows that do not exist.
    let n = expected.len();
    for bad in [
        format!("pbmc/rows/{n}.npy"),
        "pbmc/rows/07.npy".into(),
        "pbmc/rows/3-3.npy".into(),
        format!("pbmc/rows/0-{}.npy", n + 1),
        "pbmc/rows/x.npy".into(),
        "pbmc/csr/2-1.npz".into(),
    ] {
        assert_eq!(path_ino(ns, &bad).unwrap_err(), FsError::NotFound, "{bad}");
    }
    // Archive files are the store's files.
    let data = path_ino(ns, "pbmc/data.npy").unwrap();
    assert_eq!(
        read_all(ns, data),
        std::fs::read(fx.store_path.join("pbmc/data.npy")).unwrap()
    );
    assert_eq!(ns.open(data, true, false).unwrap_err(), FsError::ReadOnly);
}

#[test]
fn npz_sizes_are_exact_and_zip_is_well_formed() {
    let fx = namespace_with(|_| {});
    let ns = &fx.ns;
    drop_file(ns, "a.h5ad", &fixtures().join("csr_f32.h5ad")).unwrap();
    assert!(ns.wait_idle(Duration::from_secs(30)));
    for (a, b) in [(0, 1), (0, 40), (7, 23), (39, 40)] {
        let ino = path_ino(ns, &format!("a/csr/{a}-{b}.npz")).unwrap();
        let bytes = read_all(ns, ino);
        assert_eq!(ns.getattr(ino).unwrap().size, bytes.len() as u64, "{a}-{b}");
        assert_eq!(&bytes[..4], b"PK\x03\x04");
        assert_eq!(&bytes[bytes.len() - 22..bytes.len() - 18], b"PK\x05\x06");
    }
}

#[test]
fn ragged_dataset_blocks_and_ranges() {
    let fx = namespace_with(|store| {
        convert::convert(
            &fixtures().join("dir"),
            &store.join("multi"),
            &ConvertOptions::default(),
            &Quiet,
        )
        .unwrap();
    });
    let ns = &fx.ns;
    assert_eq!(status(ns, "multi")["state"], "ready");
    // Blocks: rows 0..20 (30 genes), 20..35 (25), 35..45 (40).
    let sources =
        ["a.h5ad", "b/c.h5ad", "b/d.h5ad"].map(|f| dense_rows(&fixtures().join("dir").join(f)));
    let all: Vec<&Vec<f32>> = sources.iter().flatten().collect();
    for (i, want) in all.iter().enumerate() {
        let (shape, vals) = parse_npy(&read_all(
            ns,
            path_ino(ns, &format!("multi/rows/{i}.npy")).unwrap(),
        ));
        assert_eq!(
            shape,
            vec![want.len() as u64],
            "row {i} has its block's width"
        );
        assert_eq!(&&vals, want);
    }
    assert!(
        path_ino(ns, "multi/rows/19-21.npy").is_err(),
        "a range may not cross blocks"
    );
    assert!(path_ino(ns, "multi/csr/30-36.npz").is_err());
    assert!(path_ino(ns, "multi/rows/20-35.npy").is_ok());
    for k in 0..3 {
        let j: serde_json::Value = serde_json::from_slice(&read_all(
            ns,
            path_ino(ns, &format!("multi/features/{k}.json")).unwrap(),
        ))
        .unwrap();
        assert_eq!(j["first_row"], [0, 20, 35][k]);
        assert_eq!(j["num_vars"], [30, 25, 40][k]);
    }
    assert!(path_ino(ns, "multi/features/3.json").is_err());
    // The real feature files are listed beside the JSON.
    let names: Vec<String> = ns
        .readdir(path_ino(ns, "multi/features").unwrap(), 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for want in [
        "0.json",
        "2.json",
        "cumulative_sum_index.npy",
        "dataframe_0.parquet",
        "labels.npy",
    ] {
        assert!(names.contains(&want.to_string()), "{names:?}");
    }
}

/// A namespace whose store holds `big`, the 1,400-row fixture.
fn namespace_with_large() -> Fixture {
    namespace_with(|store| {
        convert::convert(
            &fixtures().join("large_csr_f32.h5ad"),
            &store.join("big"),
            &ConvertOptions::default(),
            &Quiet,
        )
        .unwrap();
    })
}

/// The names of the files in directory `dir`, listed `page` entries at a time from the start,
/// each listing continued from the offset of the last entry of the one before.
fn file_names_in_pages(ns: &Namespace, dir: u64, page: usize) -> Vec<String> {
    let (mut offset, mut names) = (0, Vec::new());
    loop {
        let entries = ns.readdir(dir, offset, page).unwrap();
        if entries.is_empty() {
            return names;
        }
        assert!(entries.len() <= page);
        offset = entries.last().unwrap().next;
        names.extend(
            entries
                .into_iter()
                .filter(|e| e.kind == NodeType::File)
                .map(|e| e.name),
        );
    }
}

#[test]
fn rows_listing_streams_by_offset() {
    let fx = namespace_with_large();
    let ns = &fx.ns;
    let rows = path_ino(ns, "big/rows").unwrap();
    let names = file_names_in_pages(ns, rows, 97);
    assert_eq!(names.len(), 1400);
    assert_eq!(names[0], "0.npy");
    assert_eq!(names[1399], "1399.npy");
    // Starting in the middle gives the middle, without the rest.
    let page = ns.readdir(rows, 2 + 700, 3).unwrap();
    assert_eq!(
        page.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["700.npy", "701.npy", "702.npy"]
    );
}

#[test]
fn batch_listings_stream_and_batch_inodes_are_forgotten() {
    let fx = namespace_with_large();
    let ns = &fx.ns;
    // 1,400 rows in batches of 64: 22 batches, two files each, listed a page at a time.
    let epoch = path_ino(ns, "big/batches/size=64,seed=2/0").unwrap();
    let names = file_names_in_pages(ns, epoch, 7);
    assert_eq!(names.len(), 44);
    assert_eq!(names[..3], ["0.npz", "0.safetensors", "1.npz"]);
    assert_eq!(names[43], "21.safetensors");
    let page = ns.readdir(epoch, 2 + 10, 3).unwrap();
    let middle: Vec<_> = page.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(middle, ["5.npz", "5.safetensors", "6.npz"]);
    for name in [
        "batches",
        "batches/size=64,seed=2",
        "batches/size=64,seed=2/0/3.npz",
    ] {
        let attr = path_ino(ns, &format!("big/{name}")).and_then(|i| ns.getattr(i));
        assert!(attr.is_ok(), "{name}");
    }
    // `batches/` and its plans list nothing: their entries exist when named.
    let plans = path_ino(ns, "big/batches").unwrap();
    assert_eq!(ns.readdir(plans, 2, 100).unwrap(), vec![]);
    // Every batch file looked up takes a node until the kernel forgets it; keys in another
    // order name the same plan (and node).
    let before = ns.batch_nodes();
    assert_eq!(before, 3, "the plan, its epoch and 3.npz");
    let files: Vec<u64> = (0..22)
        .map(|k| path_ino(ns, &format!("big/batches/seed=2,size=64/0/{k}.safetensors")).unwrap())
        .collect();
    assert_eq!(ns.batch_nodes(), before + 22);
    for ino in files {
        ns.forget(ino, 1);
    }
    assert_eq!(ns.batch_nodes(), before);
}

#[test]
fn range_inodes_are_forgotten() {
    let fx = namespace_with(|_| {});
    let ns = &fx.ns;
    drop_file(ns, "a.h5ad", &fixtures().join("csr_f32.h5ad")).unwrap();
    assert!(ns.wait_idle(Duration::from_secs(30)));
    let before = ns.range_nodes();
    let mut inos = Vec::new();
    for a in 0..30 {
        inos.push(path_ino(ns, &format!("a/rows/{a}-{}.npy", a + 5)).unwrap());
        inos.push(path_ino(ns, &format!("a/csr/{a}-{}.npz", a + 5)).unwrap());
    }
    assert_eq!(ns.range_nodes(), before + 60);
    for ino in inos {
        ns.forget(ino, 1);
    }
    assert_eq!(ns.range_nodes(), before);
    // Row files need no table at all.
    for i in 0..40 {
        path_ino(ns, &format!("a/rows/{i}.npy")).unwrap();
    }
    assert_eq!(ns.range_nodes(), before);
}

#[test]
fn bad_drops_and_names_are_refused() {
    let fx = namespace_with(|_| {});
    let ns = &fx.ns;
    for bad in [
        "x.txt",
        ".hidden.h5ad",
        "a\u{1}b.h5ad",
        ".h5ad",
        &format!("{}.h5ad", "n".repeat(251)),
    ] {
        assert!(
            matches!(ns.create(ROOT_INO, bad), Err(FsError::Invalid(_))),
            "{bad:?}"
        );
    }
    drop_file(ns, "one.h5ad", &fixtures().join("csr_f32.h5ad")).unwrap();
    assert_eq!(
        ns.create(ROOT_INO, "one.h5ad").unwrap_err(),
        FsError::Exists
    );
    assert!(ns.wait_idle(Duration::from_secs(30)));
    assert_eq!(
        ns.create(ROOT_INO, "one.h5ad").unwrap_err(),
        FsError::Exists,
        "name of a ready dataset"
    );
    let one = path_ino(ns, "one").unwrap();
    assert_eq!(ns.create(one, "x.h5ad").unwrap_err(), FsError::ReadOnly);
    assert_eq!(ns.unlink(one, "data.npy").unwrap_err(), FsError::ReadOnly);
    assert_eq!(path_ino(ns, "nothing").unwrap_err(), FsError::NotFound);
    // Nothing was created outside the store's own places.
    let mut top: Vec<String> = std::fs::read_dir(&fx.store_path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    top.sort();
    assert_eq!(top, [".scdl-fs", "one", "one.h5ad"]);
}

#[test]
fn a_bad_drop_fails_with_the_convert_error_and_the_rest_is_served() {
    let fx = namespace_with(|_| {});
    let ns = &fx.ns;
    let bad = fx._dir.path().join("bad.h5ad");
    std::fs::write(&bad, b"definitely not hdf5").unwrap();
    drop_file(ns, "bad.h5ad", &bad).unwrap();
    drop_file(ns, "good.h5ad", &fixtures().join("csr_f32.h5ad")).unwrap();
    assert!(ns.wait_idle(Duration::from_secs(30)));
    let st = status(ns, "bad");
    assert_eq!(st["state"], "failed");
    let err = st["error"].as_str().unwrap();
    assert!(
        err.contains("bad.h5ad") && err.contains("not an HDF5 file"),
        "{err}"
    );
    // The same message the CLI prints.
    let o = common::scdl(&[
        "convert",
        bad.to_str().unwrap(),
        fx._dir.path().join("x").to_str().unwrap(),
    ]);
    let cli = common::stderr(&o);
    assert!(
        cli.contains("not an HDF5 file (no HDF5 signature)")
            && err.contains("not an HDF5 file (no HDF5 signature)")
    );
    assert_eq!(status(ns, "good")["state"], "ready");
    assert!(path_ino(ns, "bad.h5ad").is_ok(), "the failed input stays");
    assert!(path_ino(ns, "bad/rows").is_err());
    // A restart remembers the failure instead of retrying the same bytes.
    let ns2 = Namespace::new(
        Store::open(&fx.store_path).unwrap(),
        NamespaceOptions::default(),
    );
    assert_eq!(status(&ns2, "bad")["state"], "failed");
    // Removing the input removes the failed dataset.
    ns.unlink(ROOT_INO, "bad.h5ad").unwrap();
    assert!(path_ino(ns, "bad").is_err());
}

#[test]
fn control_delete_and_malformed_commands() {
    let fx = namespace_with(|_| {});
    let ns = &fx.ns;
    drop_file(ns, "gone.h5ad", &fixtures().join("csr_f32.h5ad")).unwrap();
    assert!(ns.wait_idle(Duration::from_secs(30)));
    let control = path_ino(ns, ".control").unwrap();
    let o = ns.open(control, true, false).unwrap();
    for bad in [
        "frobnicate x\n",
        "delete\n",
        "delete a b\n",
        "delete ../etc\n",
        "delete missing\n",
    ] {
        assert!(
            matches!(ns.write(o.fh, 0, bad.as_bytes()), Err(FsError::Invalid(_))),
            "{bad:?}"
        );
    }
    ns.write(o.fh, 0, b"delete gone\n").unwrap();
    ns.release(o.fh).unwrap();
    assert!(path_ino(ns, "gone").is_err());
    assert!(!fx.store_path.join("gone").exists() && !fx.store_path.join("gone.h5ad").exists());
    let log = String::from_utf8(read_all(ns, control)).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["ok"], false);
    assert!(lines[0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown command"));
    assert!(lines[3]["message"]
        .as_str()
        .unwrap()
        .contains("invalid name"));
    assert_eq!(lines[5]["ok"], true);
}

#[test]
fn a_corrupt_archive_is_failed_and_does_not_stop_the_others() {
    let fx = namespace_with(|store| {
        for name in ["ok", "broken"] {
            convert::convert(
                &fixtures().join("csr_f32.h5ad"),
                &store.join(name),
                &ConvertOptions::default(),
                &Quiet,
            )
            .unwrap();
        }
        let data = store.join("broken/data.npy");
        let len = std::fs::metadata(&data).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .unwrap()
            .set_len(len - 8)
            .unwrap();
    });
    let ns = &fx.ns;
    let st = status(ns, "broken");
    assert_eq!(st["state"], "failed");
    assert!(
        st["error"].as_str().unwrap().contains("col_ptr.npy has"),
        "{st}"
    );
    assert_eq!(status(ns, "ok")["state"], "ready");
}

#[test]
fn a_flush_from_a_forked_copy_does_not_publish_a_half_written_drop() {
    // close(2) of an inherited descriptor in a forked child sends FLUSH while the writer goes on:
    // the upload must only be published at release, complete.
    let fx = namespace_with(|_| {});
    let ns = &fx.ns;
    let src = fixtures().join("csr_f32.h5ad");
    let bytes = std::fs::read(&src).unwrap();
    let (_, o) = ns.create(ROOT_INO, "half.h5ad").unwrap();
    let mid = bytes.len() / 2;
    ns.write(o.fh, 0, &bytes[..mid]).unwrap();
    ns.flush(o.fh).unwrap();
    ns.write(o.fh, mid as u64, &bytes[mid..]).unwrap();
    ns.flush(o.fh).unwrap();
    ns.release(o.fh).unwrap();
    assert!(ns.wait_idle(Duration::from_secs(30)));
    assert_eq!(status(ns, "half")["state"], "ready");
    assert_eq!(
        std::fs::read(fx.store_path.join("half.h5ad")).unwrap(),
        bytes
    );
}

/// status.json and `.control` are read as they were at open: a reader whose reads straddle a
/// change gets one whole document (the next open sees the change), not the start of one and the
/// end of another.
#[test]
fn an_open_status_or_control_reads_one_consistent_document() {
    let fx = namespace_with(|_| {});
    let ns = &fx.ns;
    drop_file(ns, "a.h5ad", &fixtures().join("csr_f32.h5ad")).unwrap();
    let status_ino = path_ino(ns, "a/status.json").unwrap();
    let control = path_ino(ns, ".control").unwrap();
    let st = ns.open(status_ino, false, false).unwrap();
    let log = ns.open(control, false, false).unwrap();
    let status_head = ns.read(status_ino, st.fh, 0, 7).unwrap();
    let log_head = ns.read(control, log.fh, 0, 0).unwrap();
    // Both change: the conversion ends, a command is logged.
    assert!(ns.wait_idle(Duration::from_secs(30)));
    let w = ns.open(control, true, false).unwrap();
    assert!(ns.write(w.fh, 0, b"frobnicate\n").is_err());
    ns.release(w.fh).unwrap();
    let rest = |ino, fh, from: &[u8]| {
        let mut all = from.to_vec();
        all.extend(ns.read(ino, fh, from.len() as u64, 1 << 20).unwrap());
        all
    };
    let first: serde_json::Value =
        serde_json::from_slice(&rest(status_ino, st.fh, &status_head)).unwrap();
    assert_ne!(first["state"], "ready", "{first}");
    assert!(rest(control, log.fh, &log_head).is_empty());
    ns.release(st.fh).unwrap();
    ns.release(log.fh).unwrap();
    assert_eq!(status(ns, "a")["state"], "ready");
    assert_eq!(
        String::from_utf8(read_all(ns, control))
            .unwrap()
            .lines()
            .count(),
        1
    );
}
