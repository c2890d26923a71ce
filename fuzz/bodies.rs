//! The bodies of the fuzz targets, written once and compiled twice:
//!
//! - by the cargo-fuzz targets (`fuzz/fuzz_targets/<name>.rs`, nightly + libFuzzer), and
//! - by the seed replay test (`tests/fuzz_seeds.rs`, stable, part of `cargo test`), which feeds
//!   every committed file under `fuzz/seeds/<name>/` to the same function.
//!
//! Both include this file with `#[path = ".../fuzz/bodies.rs"] mod bodies;`, so a property is
//! checked identically whether it is found by the fuzzer or replayed by the test suite. The
//! file depends only on `scdl_fs`, `tempfile` and std (dependencies both crates have). Each body
//! takes the raw input bytes and panics when a property is violated; everything it creates
//! lives under a temporary directory it removes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use scdl_fs::archive::Archive;
use scdl_fs::batches::{self as batch, BatchFormat, BatchLayout, EpochOrder, Plan, ReadPool};
use scdl_fs::catalog::CatalogOptions;
use scdl_fs::convert::{self, ConvertOptions, Quiet};
use scdl_fs::namespace::{FsError, Namespace, NamespaceOptions, NodeType, ROOT_INO};
use scdl_fs::npy::{self, NpyArray};
use scdl_fs::render::{self, RowSpan};
use scdl_fs::store::Store;

/// A target body: panics when a property does not hold for the input.
pub type Body = fn(&[u8]);

/// Every target by name, for the seed replay test.
pub const TARGETS: [(&str, Body); 5] = [
    ("control", control),
    ("names", names),
    ("npy", npy),
    ("archive", archive),
    ("batches", batches),
];

// ------------------------------------------------------------------------------ templates

/// Archives converted once per process from the test fixtures: `single` (csr_f32.h5ad: 40 rows
/// x 30 vars, one feature block) and `blocks` (the fixture directory: one block per file).
pub struct Templates {
    pub root: PathBuf,
    pub single: PathBuf,
    pub blocks: PathBuf,
}

fn repo() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The main crate's tests compile this file with the repository as manifest dir; the fuzz
    // crate with fuzz/.
    if here.join("tests/fixtures").is_dir() {
        here.to_path_buf()
    } else {
        here.parent().expect("fuzz/ has a parent").to_path_buf()
    }
}

pub fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let tmp = std::env::temp_dir();
        // Statics are never dropped: remove the templates of processes that are gone instead.
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = n.strip_prefix("scdl-fs-fuzz-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let root = tmp.join(format!("scdl-fs-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("template dir");
        let fixtures = repo().join("tests/fixtures/h5ad");
        let single = root.join("single");
        let blocks = root.join("blocks");
        let opts = ConvertOptions::default();
        convert::convert(&fixtures.join("csr_f32.h5ad"), &single, &opts, &Quiet)
            .expect("convert csr_f32.h5ad");
        convert::convert(&fixtures.join("dir"), &blocks, &opts, &Quiet).expect("convert dir/");
        Templates {
            root,
            single,
            blocks,
        }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// Every file below `dir` with its contents, keyed by relative path (symlinks as "->target").
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).expect("below base").to_path_buf();
            let ft = e.file_type().expect("file type");
            if ft.is_symlink() {
                let t = std::fs::read_link(&p).expect("readlink");
                out.insert(rel, format!("->{}", t.display()).into_bytes());
            } else if ft.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(base, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn options(workers: usize) -> NamespaceOptions {
    NamespaceOptions {
        catalog: CatalogOptions {
            workers,
            converter: None,
            ..Default::default()
        },
        ..Default::default()
    }
}

// ------------------------------------------------------------------------------ control

/// One `.control` write of arbitrary bytes (then the release, which runs a last line without
/// newline) to a namespace over a fresh store holding ready archives `a` and `b`, beside an
/// `outside/` directory holding a canary archive `c` and input `c.h5ad`. Never a panic or a
/// hang; a failed write is `Invalid` (EINVAL) or `Io`; `.control` reads back as JSON lines;
/// nothing appears, changes or disappears outside the store; everything in the store is the
/// store's own or has a valid dataset name.
pub fn control(data: &[u8]) {
    let t = templates();
    let dir = tempfile::tempdir_in(&t.root).expect("tempdir");
    let store_path = dir.path().join("store");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&store_path).expect("mkdir store");
    std::fs::create_dir(&outside).expect("mkdir outside");
    copy_dir(&t.single, &store_path.join("a"));
    copy_dir(&t.blocks, &store_path.join("b"));
    copy_dir(&t.single, &outside.join("c"));
    std::fs::write(outside.join("c.h5ad"), b"canary").expect("canary");
    let before = snapshot(&outside);

    let ns = Namespace::new(Store::open(&store_path).expect("store"), options(1));
    // Workers only when a concat may be queued: their rescan thread sleeps 2 s between scans.
    let workers = data
        .windows(6)
        .any(|w| w == b"concat")
        .then(|| ns.start_workers());
    let control = ns.lookup(ROOT_INO, ".control").expect(".control").ino;
    let o = ns.open(control, true, false).expect("open .control");
    let check = |r: &Result<(), FsError>| match r {
        Ok(()) | Err(FsError::Invalid(_)) | Err(FsError::Io(_)) => {}
        Err(e) => panic!("a .control write failed with {e:?}, not Invalid or Io"),
    };
    let written = ns.write(o.fh, 0, data);
    if let Ok(n) = &written {
        assert_eq!(*n as usize, data.len());
    }
    check(&written.map(|_| ()));
    check(&ns.release(o.fh));
    assert!(
        ns.wait_idle(Duration::from_secs(60)),
        "jobs still running 60 s after a .control write"
    );
    if let Some(handles) = workers {
        ns.shutdown();
        // The first handle is the rescan thread (it sleeps up to 2 s): left to end on its own.
        for h in handles.into_iter().skip(1) {
            h.join().expect("worker panicked");
        }
    }
    let o = ns.open(control, false, false).expect("open .control");
    let log = ns.read(control, o.fh, 0, u32::MAX).expect("read .control");
    ns.release(o.fh).expect("release");
    for line in String::from_utf8(log).expect(".control is UTF-8").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect(".control line is JSON");
        assert!(v["ok"].is_boolean(), "{line}");
    }

    assert_eq!(
        names_in(dir.path()),
        ["outside", "store"],
        "something outside the store"
    );
    assert!(before == snapshot(&outside), "outside/ changed");
    for name in names_in(&store_path) {
        let ok = name == ".scdl-fs"
            || scdl_fs::names::DatasetName::parse(&name).is_ok()
            || scdl_fs::names::DatasetName::from_input_file(&name).is_ok()
            || name.contains(".scdl-tmp.");
        assert!(ok, "unexpected store entry {name:?}");
        let meta = std::fs::symlink_metadata(store_path.join(&name)).expect("lstat");
        assert!(
            !meta.file_type().is_symlink(),
            "symlink {name:?} in the store"
        );
    }
    drop(ns);
}

// ------------------------------------------------------------------------------ names

struct NamesFixture {
    _dir: tempfile::TempDir,
    ns: Arc<Namespace>,
}

fn names_fixture() -> &'static NamesFixture {
    static F: OnceLock<NamesFixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = templates();
        let dir = tempfile::tempdir_in(&t.root).expect("tempdir");
        let store = dir.path().join("store");
        std::fs::create_dir(&store).expect("mkdir");
        copy_dir(&t.single, &store.join("a"));
        copy_dir(&t.blocks, &store.join("m"));
        let ns = Namespace::new(Store::open(&store).expect("store"), options(1));
        NamesFixture { _dir: dir, ns }
    })
}

/// Bytes per element of a numpy descr such as `<f4` (the digits after the kind).
fn item_size(descr: &str) -> u64 {
    descr
        .trim_start_matches(['<', '>', '|', '='])
        .get(1..)
        .and_then(|d| d.parse().ok())
        .expect("descr with a size")
}

/// Reads a whole file, or its first and last 4 KiB when it is large; checks that what read
/// returns agrees with `size` (the exact getattr size) and returns the bytes read from 0.
fn read_checked(ns: &Namespace, ino: u64, size: u64) -> Vec<u8> {
    let o = match ns.open(ino, false, false) {
        Ok(o) => o,
        Err(FsError::TooBig) => return Vec::new(),
        Err(e) => panic!("open of a resolved file: {e:?}"),
    };
    let read = |off: u64, len: u32| ns.read(ino, o.fh, off, len).expect("read");
    let head;
    if size <= 1 << 20 {
        let mut all = Vec::new();
        loop {
            // An odd size so reads straddle the header and rows.
            let chunk = read(all.len() as u64, 65_531);
            if chunk.is_empty() {
                break;
            }
            all.extend(chunk);
            assert!(all.len() as u64 <= size, "read past the size {size}");
        }
        assert_eq!(
            all.len() as u64,
            size,
            "bytes read differ from getattr size"
        );
        head = all;
    } else {
        head = read(0, 4096);
        assert_eq!(head.len(), 4096);
        assert_eq!(read(size - 4096, 4096).len(), 4096, "short read at the end");
        assert!(read(size, 4096).is_empty(), "read past the size {size}");
        assert_eq!(read(size - 1, 4096).len(), 1);
    }
    ns.release(o.fh).expect("release");
    head
}

/// Path components (separated by `/` in the input) looked up one after another from the root;
/// every node that resolves is checked: getattr agrees with lookup, a file's reads give exactly
/// its size (and a `.npy` row file's header matches that size), a directory's entries look up
/// to the inodes listed.
pub fn names(data: &[u8]) {
    let ns = &names_fixture().ns;
    let text = String::from_utf8_lossy(data);
    let mut ino = ROOT_INO;
    let mut looked_up = Vec::new();
    for (depth, part) in text.split('/').take(6).enumerate() {
        let attr = match ns.lookup(ino, part) {
            Ok(a) => a,
            Err(FsError::NotFound | FsError::NotDir | FsError::TooBig | FsError::Invalid(_)) => {
                break
            }
            Err(e) => panic!("lookup {part:?} at depth {depth}: {e:?}"),
        };
        looked_up.push(attr.ino);
        let again = ns.getattr(attr.ino).expect("getattr of a resolved node");
        assert_eq!((again.ino, again.kind), (attr.ino, attr.kind), "{part:?}");
        match attr.kind {
            NodeType::File => {
                let head = read_checked(ns, attr.ino, again.size);
                let npy = part.ends_with(".npy") && !head.is_empty() && depth == 2;
                if npy && text.split('/').nth(1) == Some("rows") {
                    let (descr, shape, offset) =
                        npy::parse_header(&head).expect("row file header parses");
                    let body: u64 = shape.iter().product::<u64>() * item_size(&descr);
                    assert_eq!(offset as u64 + body, again.size, "{part:?}: header vs size");
                }
            }
            NodeType::Dir => {
                let entries = ns.readdir(attr.ino, 0, 64).expect("readdir");
                for e in entries.iter().filter(|e| e.name != "." && e.name != "..") {
                    let a = ns.lookup(attr.ino, &e.name).expect("listed name looks up");
                    assert_eq!(a.ino, e.ino, "{}", e.name);
                    ns.forget(a.ino, 1);
                }
            }
        }
        ino = attr.ino;
    }
    // As the kernel would: every lookup is forgotten (range inodes leave the table).
    for i in looked_up {
        ns.forget(i, 1);
    }
    assert_eq!(ns.range_nodes(), 0, "range inodes leak");
}

// ------------------------------------------------------------------------------ npy

/// Byte 0 chooses: 0 — arbitrary bytes through `parse_header`/`read_array` (never a panic, an
/// array never larger than the bytes hold); 1 — `header(descr, shape)` for a valid descr and an
/// arbitrary shape parses back exactly; 2 — int64 and unicode arrays round-trip.
pub fn npy(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok((_, _, offset)) = npy::parse_header(rest) {
                assert!(offset <= rest.len());
            }
            match npy::read_array(rest) {
                Ok(NpyArray::Int64(v)) => assert!(v.len() * 8 <= rest.len()),
                // Empty strings take no room: bounded by the bytes, not by the claimed shape.
                Ok(NpyArray::Unicode(v)) => assert!(v.len() <= rest.len()),
                Err(_) => {}
            }
        }
        1 => {
            let (&spec, rest) = rest.split_first().unwrap_or((&0, &[]));
            let order = ["<", ">", "|", "="][(spec & 3) as usize];
            let kind = ["f", "i", "u", "U", "S", "b", "c", "V"][((spec >> 2) & 7) as usize];
            let size = 1 + (spec as u64 >> 5) * 7;
            let descr = format!("{order}{kind}{size}");
            // numpy allows at most 64 dimensions.
            let shape: Vec<u64> = rest
                .chunks_exact(8)
                .take(64)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            let h = npy::header(&descr, &shape);
            assert_eq!(h.len() % 64, 0, "header not aligned");
            assert_eq!(h.last(), Some(&b'\n'));
            let (d, s, offset) = npy::parse_header(&h).expect("our header parses");
            assert_eq!(
                (d.as_str(), s.as_slice(), offset),
                (descr.as_str(), &shape[..], h.len())
            );
        }
        _ => {
            let ints: Vec<i64> = rest
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            let f = npy::int64_array(&ints);
            assert_eq!(npy::read_array(&f), Ok(NpyArray::Int64(ints)));
            // Strings without NUL (numpy strips trailing NULs), split at 0xff.
            let strings: Vec<String> = String::from_utf8_lossy(rest)
                .split('\u{fffd}')
                .map(|s| s.replace('\0', ""))
                .collect();
            let f = npy::unicode_array(&strings, &[strings.len() as u64]);
            assert_eq!(npy::read_array(&f), Ok(NpyArray::Unicode(strings.clone())));
            let f = npy::unicode_array(&strings[..1], &[]);
            assert_eq!(
                npy::read_array(&f),
                Ok(NpyArray::Unicode(strings[..1].to_vec()))
            );
        }
    }
}

// ------------------------------------------------------------------------------ archive

/// A copy of a valid archive (byte 0 chooses `single` or `blocks`) with up to four mutations of
/// its files, each `[file, op, pos u32 LE, len u16 LE, payload...]`: op 0 truncate at pos,
/// 1 overwrite payload at pos, 2 replace the whole file, 3 delete it, 4 append. Then
/// `Archive::open`, and when it opens, every row and every block's range is rendered through
/// `render` (dense .npy, .npz, feature JSON): Ok or Err, never a panic; sizes agree.
pub fn archive(data: &[u8]) {
    let t = templates();
    let Some((&which, mut rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir_in(&t.root).expect("tempdir");
    let path = dir.path().join("x");
    copy_dir(if which & 1 == 0 { &t.single } else { &t.blocks }, &path);
    let files: Vec<PathBuf> = snapshot(&path)
        .into_iter()
        .filter(|(_, v)| v.as_slice() != b"<dir>")
        .map(|(k, _)| path.join(k))
        .collect();
    let mutated = rest.len() >= 8;
    for _ in 0..4 {
        if rest.len() < 8 {
            break;
        }
        let file = &files[rest[0] as usize % files.len()];
        let op = rest[1] % 5;
        let pos = u32::from_le_bytes(rest[2..6].try_into().expect("4 bytes")) as u64;
        let len = u16::from_le_bytes(rest[6..8].try_into().expect("2 bytes")) as usize;
        let payload = &rest[8..8 + len.min(rest.len() - 8)];
        rest = &rest[8 + payload.len()..];
        let mut bytes = std::fs::read(file).unwrap_or_default();
        let at = (pos as usize).min(bytes.len());
        match op {
            0 => bytes.truncate(at),
            1 => {
                let end = at + payload.len();
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[at..end].copy_from_slice(payload);
            }
            2 => bytes = payload.to_vec(),
            3 => {
                let _ = std::fs::remove_file(file);
                continue;
            }
            _ => bytes.extend_from_slice(payload),
        }
        std::fs::write(file, &bytes).expect("write mutation");
    }
    let a = match Archive::open(&path) {
        Ok(a) => a,
        Err(e) if mutated => {
            let _ = e.to_string();
            return;
        }
        Err(e) => panic!("the intact archive does not open: {e}"),
    };
    let item = a.data_dtype.size() as u64;
    let check_dense = |span: &RowSpan| {
        let size = span.dense_size(&a);
        let head = span.dense_read(&a, 0, 4096);
        let Ok(head) = head else { return };
        let (_, shape, offset) = npy::parse_header(&head).expect("rendered header parses");
        assert_eq!(offset as u64 + shape.iter().product::<u64>() * item, size);
        if size <= 1 << 20 {
            if let Ok(all) = span.dense_read(&a, 0, size as usize + 1) {
                assert_eq!(all.len() as u64, size);
            }
        } else if let Ok(tail) = span.dense_read(&a, size - 100, 4096) {
            assert_eq!(tail.len(), 100);
        }
    };
    let mut first = 0u64;
    for (k, b) in a.features.blocks.iter().enumerate() {
        assert!(render::feature_json(&a, k).is_some());
        let end = first + b.rows;
        for r in first..end.min(first + 64) {
            let span = RowSpan::new(&a, r, r + 1, true).expect("row of a block");
            check_dense(&span);
        }
        if let Some(span) = RowSpan::new(&a, first, end, false) {
            check_dense(&span);
            if let Ok(size) = render::npz_size(&a, &span) {
                if size <= 1 << 24 {
                    if let Ok(z) = render::npz(&a, &span) {
                        assert_eq!(z.len() as u64, size, "npz size");
                    }
                }
            }
        }
        first = end;
    }
}

// ------------------------------------------------------------------------------ batches

/// `batches`: `PLAN/EPOCH/K.EXT` as a user would name it. Parsing never panics and every refusal
/// is one line; an accepted plan spells itself canonically and back; its order never panics and
/// gives distinct rows within the dataset, at most `size` of them; over the fixture archive
/// (three feature blocks of different widths) every batch's computed size is its rendering's.
pub fn batches(data: &[u8]) {
    static FIXTURE: OnceLock<(Archive, ReadPool)> = OnceLock::new();
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '/');
    let plan = match Plan::parse(parts.next().unwrap_or("")) {
        Ok(plan) => plan,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            return;
        }
    };
    assert_eq!(Plan::parse(&plan.canonical()), Ok(plan));
    let epoch = parts.next().and_then(batch::parse_epoch).unwrap_or(0);
    let (k, format) = parts
        .next()
        .and_then(batch::parse_batch_file)
        .unwrap_or((0, BatchFormat::Npz));
    let (archive, pool) = FIXTURE.get_or_init(|| {
        let archive = Archive::open(&templates().blocks).expect("template archive");
        (archive, ReadPool::new(2))
    });
    for rows in [archive.num_rows, 1 << 40] {
        let order = EpochOrder::new(&plan, rows, epoch);
        let k = k % order.batches().max(1);
        let Some(batch) = order.batch_rows(k) else {
            assert_eq!(order.batches(), 0);
            continue;
        };
        assert!(!batch.is_empty() && batch.len() as u64 <= plan.size);
        let distinct: std::collections::HashSet<_> = batch.iter().collect();
        assert_eq!(distinct.len(), batch.len());
        assert!(batch.iter().all(|&r| r < rows));
        if rows == archive.num_rows {
            let layout = BatchLayout::of_batch(archive, &order, k, pool)
                .expect("layout")
                .expect("batch exists");
            assert_eq!(layout.row_ids, batch);
            let size = layout.file_size(archive, format).expect("size");
            let bytes = layout
                .render(archive, format, pool, &batch::Recycler::default())
                .expect("render");
            assert_eq!(bytes.len() as u64, size, "{plan} epoch {epoch} batch {k}");
        }
    }
}
