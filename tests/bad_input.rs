//! Malformed inputs through the real `scdl-fs convert`: each must fail with a one-line error
//! naming the problem and its place, exit non-zero, leave no output and no temporary files, and
//! leave the input byte-for-byte unchanged. The files are written here with the hdf5 crate,
//! breaking one invariant at a time.

mod common;

use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;

use common::{listing, stderr};

fn scdl(args: &[&str]) -> std::process::Output {
    locked(|| common::scdl(args))
}

fn str_attr(loc: &hdf5::Location, name: &str, value: &str) {
    let v: VarLenUnicode = value.parse().unwrap();
    loc.new_attr::<VarLenUnicode>()
        .create(name)
        .unwrap()
        .write_scalar(&v)
        .unwrap();
}

/// A CSR matrix written field by field, so each test can break one thing.
struct Csr {
    shape: Vec<i64>,
    data: Vec<f32>,
    indices: Vec<i64>,
    indptr: Vec<i64>,
}

impl Csr {
    fn good() -> Csr {
        // 3 x 4: row 0 = {0: 1, 2: 2}, row 1 empty, row 2 = {3: 3}
        Csr {
            shape: vec![3, 4],
            data: vec![1.0, 2.0, 3.0],
            indices: vec![0, 2, 3],
            indptr: vec![0, 2, 2, 3],
        }
    }

    fn write(&self, path: &Path) {
        let f = hdf5::File::create(path).unwrap();
        let x = f.create_group("X").unwrap();
        str_attr(&x, "encoding-type", "csr_matrix");
        str_attr(&x, "encoding-version", "0.1.0");
        x.new_attr::<i64>()
            .shape(self.shape.len())
            .create("shape")
            .unwrap()
            .write_raw(&self.shape)
            .unwrap();
        x.new_dataset_builder()
            .with_data(&self.data)
            .create("data")
            .unwrap();
        x.new_dataset_builder()
            .with_data(&self.indices)
            .create("indices")
            .unwrap();
        x.new_dataset_builder()
            .with_data(&self.indptr)
            .create("indptr")
            .unwrap();
    }
}

/// Serialises writing HDF5 files and running the binary: a child process inherits the HDF5
/// file descriptors (and their locks) that other test threads hold open at fork time.
static HDF5_FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn locked<T>(f: impl FnOnce() -> T) -> T {
    let _guard = HDF5_FILES.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

struct Case {
    dir: tempfile::TempDir,
    input: PathBuf,
}

impl Case {
    fn new(write: impl FnOnce(&Path)) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.h5ad");
        locked(|| write(&input));
        Case { dir, input }
    }

    /// Converts and checks the failure contract; returns the error line.
    fn fails(&self) -> String {
        let before = std::fs::read(&self.input).unwrap();
        let listing_before = listing(self.dir.path());
        let out = self.dir.path().join("out");
        let o = scdl(&[
            "convert",
            self.input.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert!(!o.status.success(), "conversion should fail; stderr: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one-line error expected, got: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "no output after a failure");
        assert_eq!(
            listing(self.dir.path()),
            listing_before,
            "no temporary files left"
        );
        assert_eq!(
            std::fs::read(&self.input).unwrap(),
            before,
            "input unchanged"
        );
        err
    }
}

fn csr_case(edit: impl FnOnce(&mut Csr)) -> Case {
    Case::new(|p| {
        let mut m = Csr::good();
        edit(&mut m);
        m.write(p);
    })
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error should mention {p:?}: {err}");
    }
}

#[test]
fn the_good_matrix_converts() {
    let c = csr_case(|_| {});
    let out = c.dir.path().join("out");
    let o = scdl(&["convert", c.input.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let row_ptr = std::fs::read(out.join("row_ptr.npy")).unwrap();
    let row_ptr: Vec<u64> = row_ptr
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(row_ptr, vec![0, 2, 2, 3]);
}

#[test]
fn indptr_not_monotonic() {
    let err = csr_case(|m| m.indptr = vec![0, 2, 1, 3]).fails();
    assert_mentions(&err, &["in.h5ad", "/X/indptr", "decreases at row 1"]);
}

#[test]
fn indptr_not_ending_at_nnz() {
    let err = csr_case(|m| m.indptr = vec![0, 1, 1, 2]).fails();
    assert_mentions(&err, &["/X/indptr", "ends at 2", "3 values"]);
}

#[test]
fn indptr_not_starting_at_zero() {
    let err = csr_case(|m| m.indptr = vec![1, 2, 2, 3]).fails();
    assert_mentions(&err, &["/X/indptr", "starts at 1"]);
}

#[test]
fn indptr_negative() {
    let err = csr_case(|m| m.indptr = vec![0, -1, 2, 3]).fails();
    assert_mentions(&err, &["/X/indptr", "negative"]);
}

#[test]
fn column_index_out_of_range() {
    let err = csr_case(|m| m.indices = vec![0, 2, 4]).fails();
    assert_mentions(&err, &["/X/indices", "index 4 out of range 0..4", "row 2"]);
}

#[test]
fn column_index_negative() {
    let err = csr_case(|m| m.indices = vec![0, -3, 1]).fails();
    assert_mentions(&err, &["/X/indices", "index -3", "row 0"]);
}

#[test]
fn data_and_indices_lengths_differ() {
    let err = csr_case(|m| m.indices = vec![0, 2]).fails();
    assert_mentions(&err, &["/X/indices", "has 2 entries but data has 3"]);
}

#[test]
fn shape_disagrees_with_indptr() {
    let err = csr_case(|m| m.shape = vec![5, 4]).fails();
    assert_mentions(&err, &["/X/indptr", "has 4 entries", "(5, 4) needs 6"]);
}

#[test]
fn absurd_shape() {
    let err = csr_case(|m| m.shape = vec![1 << 40, 4]).fails();
    assert_mentions(&err, &["/X/indptr", "needs 1099511627777"]);
}

#[test]
fn too_many_columns_for_uint32_indices() {
    let err = csr_case(|m| m.shape = vec![3, 1 << 33]).fails();
    assert_mentions(&err, &["/X", "uint32"]);
}

#[test]
fn missing_x() {
    let err = Case::new(|p| {
        let f = hdf5::File::create(p).unwrap();
        f.create_group("obs").unwrap();
    })
    .fails();
    assert_mentions(&err, &["/X", "no X matrix"]);
}

#[test]
fn string_x() {
    let err = Case::new(|p| {
        let f = hdf5::File::create(p).unwrap();
        let v: Vec<VarLenUnicode> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let x = f
            .new_dataset::<VarLenUnicode>()
            .shape((2, 2))
            .create("X")
            .unwrap();
        x.write_raw(&v).unwrap();
    })
    .fails();
    assert_mentions(&err, &["/X", "must be numeric"]);
}

#[test]
fn not_hdf5() {
    let err = Case::new(|p| std::fs::write(p, b"this is not an h5ad file at all").unwrap()).fails();
    assert_mentions(&err, &["in.h5ad", "not an HDF5 file"]);
}

#[test]
fn empty_file() {
    let err = Case::new(|p| std::fs::write(p, b"").unwrap()).fails();
    assert_mentions(&err, &["in.h5ad", "empty file"]);
}

#[test]
fn truncated_files_fail_cleanly() {
    let good = tempfile::tempdir().unwrap();
    let src = good.path().join("good.h5ad");
    locked(|| Csr::good().write(&src));
    let bytes = std::fs::read(&src).unwrap();
    for cut in [16, 512, 1024, 2048, bytes.len() / 2, bytes.len() - 100] {
        let err = Case::new(|p| std::fs::write(p, &bytes[..cut]).unwrap()).fails();
        assert!(err.contains("in.h5ad"), "cut at {cut}: {err}");
    }
}

#[test]
fn lossy_value_is_named() {
    let c = csr_case(|m| m.data = vec![1.0, 70000.0, 3.0]);
    let before = std::fs::read(&c.input).unwrap();
    let out = c.dir.path().join("out");
    let o = scdl(&[
        "convert",
        c.input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--data-dtype",
        "uint16",
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert_mentions(
        &err,
        &[
            "/X/data",
            "value 70000",
            "row 0, column 2",
            "uint16",
            "--allow-lossy",
        ],
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read(&c.input).unwrap(), before);
    // With --allow-lossy it converts (saturating).
    let o = scdl(&[
        "convert",
        c.input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--data-dtype",
        "uint16",
        "--allow-lossy",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let data = std::fs::read(out.join("data.npy")).unwrap();
    assert_eq!(
        data,
        [1u16, 65535, 3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    );
}

#[test]
fn existing_output_is_refused_and_kept() {
    let c = csr_case(|_| {});
    let out = c.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let o = scdl(&["convert", c.input.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_mentions(&stderr(&o), &["already exists"]);
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
}
