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
    encoding: &'static str,
    shape: Vec<i64>,
    data: Vec<f32>,
    indices: Vec<i64>,
    indptr: Vec<i64>,
}

impl Csr {
    fn good() -> Csr {
        // 3 x 4: row 0 = {0: 1, 2: 2}, row 1 empty, row 2 = {3: 3}
        Csr {
            encoding: "csr_matrix",
            shape: vec![3, 4],
            data: vec![1.0, 2.0, 3.0],
            indices: vec![0, 2, 3],
            indptr: vec![0, 2, 2, 3],
        }
    }

    fn write(&self, path: &Path) {
        let f = hdf5::File::create(path).unwrap();
        let x = f.create_group("X").unwrap();
        str_attr(&x, "encoding-type", self.encoding);
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
        self.fails_with(&[])
    }

    /// As `fails`, converting with the options `args`; the exit status is 1.
    fn fails_with(&self, args: &[&str]) -> String {
        let before = std::fs::read(&self.input).unwrap();
        let listing_before = listing(self.dir.path());
        let out = self.dir.path().join("out");
        let mut all = vec![
            "convert",
            self.input.to_str().unwrap(),
            out.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let o = scdl(&all);
        let err = stderr(&o);
        assert!(!o.status.success(), "conversion should fail; stderr: {err}");
        assert_eq!(o.status.code(), Some(1), "exit 1 expected: {err}");
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

/// The good matrix, then `edit` applied to the file (opened read-write).
fn good_then(edit: impl FnOnce(&hdf5::File)) -> Case {
    Case::new(|p| {
        Csr::good().write(p);
        edit(&hdf5::File::open_rw(p).unwrap());
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
    // Three values: row offsets fit uint8 (docs/FORMAT.md, index widths).
    let dtypes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dtypes.json")).unwrap()).unwrap();
    assert_eq!(dtypes["row_ptr.npy"], "uint8");
    assert_eq!(
        std::fs::read(out.join("row_ptr.npy")).unwrap(),
        [0, 2, 2, 3]
    );
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

/// A pseudo-random byte string (xorshift; deterministic).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[test]
fn random_bytes() {
    let err = Case::new(|p| std::fs::write(p, noise(4096, 7)).unwrap()).fails();
    assert_mentions(&err, &["in.h5ad", "not an HDF5 file"]);
}

#[test]
fn hdf5_signature_then_garbage() {
    let err = Case::new(|p| {
        let mut b = b"\x89HDF\r\n\x1a\n".to_vec();
        b.extend(noise(4096, 11));
        std::fs::write(p, b).unwrap()
    })
    .fails();
    assert_mentions(&err, &["in.h5ad", "cannot open as HDF5"]);
}

#[test]
fn csc_indptr_decreasing() {
    // As CSC (4 columns): indptr needs 5 entries.
    let err = csr_case(|m| {
        m.encoding = "csc_matrix";
        m.indptr = vec![0, 2, 1, 3, 3];
        m.indices = vec![0, 2, 1];
    })
    .fails();
    assert_mentions(&err, &["/X/indptr", "decreases at column 1"]);
}

#[test]
fn csc_row_index_out_of_range() {
    let err = csr_case(|m| {
        m.encoding = "csc_matrix";
        m.indptr = vec![0, 1, 2, 3, 3];
        m.indices = vec![0, 9, 1];
    })
    .fails();
    assert_mentions(&err, &["/X/indices", "index 9 out of range 0..3"]);
}

#[test]
fn unknown_sparse_encoding() {
    let err = csr_case(|m| m.encoding = "coo_matrix").fails();
    assert_mentions(&err, &["/X", "unsupported matrix encoding 'coo_matrix'"]);
}

#[test]
fn huge_attribute_value_is_cut_in_the_message() {
    let huge: &'static str = Box::leak("x".repeat(1 << 20).into_boxed_str());
    let err = csr_case(|m| m.encoding = huge).fails();
    assert_mentions(&err, &["/X", "unsupported matrix encoding"]);
    assert!(
        err.len() < 400,
        "the message stays short ({} bytes)",
        err.len()
    );
}

#[test]
fn negative_shape() {
    let err = csr_case(|m| m.shape = vec![-1, 4]).fails();
    assert_mentions(&err, &["/X", "invalid shape [-1, 4]"]);
}

#[test]
fn compound_x() {
    let err = Case::new(|p| {
        #[derive(hdf5::H5Type, Clone, Copy)]
        #[repr(C)]
        struct Pair {
            a: f32,
            b: i32,
        }
        let f = hdf5::File::create(p).unwrap();
        let x = f.new_dataset::<Pair>().shape((2, 2)).create("X").unwrap();
        x.write_raw(&[Pair { a: 1.0, b: 2 }; 4]).unwrap();
    })
    .fails();
    assert_mentions(&err, &["/X", "must be numeric"]);
}

#[test]
fn one_dimensional_dense_x() {
    let err = Case::new(|p| {
        let f = hdf5::File::create(p).unwrap();
        f.new_dataset_builder()
            .with_data(&[1.0f32, 2.0, 3.0])
            .create("X")
            .unwrap();
    })
    .fails();
    assert_mentions(&err, &["/X", "must be 2-D"]);
}

#[test]
fn float_indices() {
    let err = good_then(|f| {
        let x = f.group("X").unwrap();
        x.unlink("indices").unwrap();
        x.new_dataset_builder()
            .with_data(&[0.0f64, 2.0, 3.0])
            .create("indices")
            .unwrap();
    })
    .fails();
    assert_mentions(&err, &["/X/indices", "expected integers"]);
}

#[test]
fn two_dimensional_data() {
    let err = good_then(|f| {
        let x = f.group("X").unwrap();
        x.unlink("data").unwrap();
        let d = x.new_dataset::<f32>().shape((3, 1)).create("data").unwrap();
        d.write_raw(&[1.0f32, 2.0, 3.0]).unwrap();
    })
    .fails();
    assert_mentions(&err, &["/X/data", "expected a 1-D array"]);
}

#[test]
fn missing_indptr() {
    let err = good_then(|f| {
        f.group("X").unwrap().unlink("indptr").unwrap();
    })
    .fails();
    assert_mentions(&err, &["/X/indptr", "missing"]);
}

#[test]
fn var_shorter_than_the_matrix() {
    let err = good_then(|f| {
        let var = f.create_group("var").unwrap();
        str_attr(&var, "encoding-type", "dataframe");
        str_attr(&var, "_index", "_index");
        let ids: Vec<VarLenUnicode> = ["g1", "g2"].iter().map(|s| s.parse().unwrap()).collect();
        var.new_dataset_builder()
            .with_data(&ids)
            .create("_index")
            .unwrap();
    })
    .fails();
    assert_mentions(&err, &["/var", "has 2 rows but the matrix has 4 columns"]);
}

#[test]
fn deeply_nested_group_instead_of_a_matrix() {
    let err = Case::new(|p| {
        let f = hdf5::File::create(p).unwrap();
        let mut g = f.create_group("X").unwrap();
        for i in 0..64 {
            g = g.create_group(&format!("level{i}")).unwrap();
        }
    })
    .fails();
    assert_mentions(&err, &["/X", "not a sparse matrix"]);
}

#[test]
fn raw_asked_for_but_absent() {
    let c = csr_case(|_| {});
    let out = c.dir.path().join("out");
    let o = scdl(&[
        "convert",
        c.input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--matrix",
        "raw",
    ]);
    assert!(!o.status.success());
    assert_mentions(&stderr(&o), &["/raw", "no raw matrix"]);
    assert!(!out.exists());
}

#[test]
fn obs_shorter_than_the_matrix() {
    let err = good_then(|f| {
        let obs = f.create_group("obs").unwrap();
        str_attr(&obs, "_index", "_index");
        str_attr(&obs, "encoding-type", "dataframe");
        let ids: Vec<VarLenUnicode> = ["a", "b"].iter().map(|s| s.parse().unwrap()).collect();
        obs.new_dataset_builder()
            .with_data(&ids)
            .create("_index")
            .unwrap();
    })
    .fails();
    assert_mentions(&err, &["/obs", "has 2 rows but the matrix has 3 rows"]);
}

/// A hostile input made by the fixture script, copied into a case directory.
fn hostile(name: &str) -> Case {
    Case::new(|p| {
        std::fs::copy(common::hostile_fixtures().join(name), p).unwrap();
    })
}

const HOSTILE: [&str; 15] = [
    "var_index_not_utf8.h5ad",
    "var_category_not_utf8.h5ad",
    "var_column_name_not_utf8.h5ad",
    "declares_2e40_rows.h5ad",
    "declares_2e28_rows.h5ad",
    "dense_unwritten.h5ad",
    "csc_declares_2e33_rows.h5ad",
    "csc_unwritten_values.h5ad",
    "obsp_dense.h5ad",
    "obsp_not_square.h5ad",
    "obsp_not_n_obs_wide.h5ad",
    "obsp_neighbor_out_of_range.h5ad",
    "obsm_rows_differ.h5ad",
    "obsm_strings.h5ad",
    "obs_longer_than_x.h5ad",
];

/// Per-cell arrays that break their contract (made by anndata, then broken with h5py by the
/// fixture script): each refused by the default conversion, naming the object and position.
#[test]
fn malformed_graphs_obsm_and_obs_are_refused() {
    for (file, parts) in [
        (
            "obsp_dense.h5ad",
            &["/obsp/next_cell_ids", "a dense array"][..],
        ),
        (
            "obsp_not_square.h5ad",
            &["/obsp/next_cell_ids", "shape (6, 7) is not square"],
        ),
        (
            "obsp_not_n_obs_wide.h5ad",
            &["/obsp/next_cell_ids", "(5, 5) is not n_obs wide", "(6, 6)"],
        ),
        (
            "obsp_neighbor_out_of_range.h5ad",
            &[
                "/obsp/next_cell_ids/indices",
                "index 6 out of range 0..6 at row 1",
            ],
        ),
        (
            "obsm_rows_differ.h5ad",
            &[
                "/obsm/X_pca",
                "has 7 rows (first dimension) but the file has 6 cells",
            ],
        ),
        (
            "obsm_strings.h5ad",
            &["/obsm/names", "values must be numeric"],
        ),
        (
            "obs_longer_than_x.h5ad",
            &["/obs", "has 7 rows but the matrix has 6 rows"],
        ),
    ] {
        assert_mentions(&hostile(file).fails(), parts);
    }
}

/// A key asked for that the file does not have: named with what the file has.
#[test]
fn requested_keys_the_file_lacks_are_named() {
    let c = hostile("obsm_strings.h5ad");
    let err = c.fails_with(&["--neighbors", "knn"]);
    assert_mentions(
        &err,
        &[
            "/obsp/knn",
            "no such obsp matrix (--neighbors)",
            "next_cell_ids",
        ],
    );
    let err = c.fails_with(&["--obsm", "X_umap"]);
    assert_mentions(
        &err,
        &[
            "/obsm/X_umap",
            "no such obsm key (--obsm)",
            "X_pca, names, spatial",
        ],
    );
    let err = c.fails_with(&["--obs", "donor", "--obsm", "none"]);
    assert_mentions(&err, &["/obs/donor", "no such obs column"]);
}

#[test]
fn var_index_not_utf8_is_refused_up_front() {
    let err = hostile("var_index_not_utf8.h5ad").fails();
    assert_mentions(
        &err,
        &["/var/_index", "string 1 is not valid UTF-8", "\\xff"],
    );
}

#[test]
fn var_category_not_utf8_is_refused_up_front() {
    let err = hostile("var_category_not_utf8.h5ad").fails();
    assert_mentions(
        &err,
        &["/var/kind/categories", "string 1 is not valid UTF-8"],
    );
}

#[test]
fn var_column_name_not_utf8_is_refused_up_front() {
    let err = hostile("var_column_name_not_utf8.h5ad").fails();
    assert_mentions(&err, &["/var@column-order", "not valid UTF-8"]);
}

/// 2^40 declared rows need 8 TiB of row_ptr: refused before a byte is written, naming the
/// bytes needed and available.
#[test]
fn an_output_bigger_than_the_disk_is_refused_up_front() {
    let err = hostile("declares_2e40_rows.h5ad").fails();
    assert_mentions(
        &err,
        &[
            "out: needs",
            "TiB",
            "available, less a reserve of",
            "refused before writing",
        ],
    );
}

/// 2^28 declared rows fit on the disk (2 GiB of row_ptr) but the file does not hold them.
#[test]
fn rows_the_file_does_not_store_are_refused() {
    let err = hostile("declares_2e28_rows.h5ad").fails();
    assert_mentions(
        &err,
        &["/X/indptr", "declares 268435457 values", "stores only"],
    );
}

/// A dense X whose chunks were never written: hours of reading zeros, refused at once (or, on
/// a disk smaller than its 32 GiB worst case, refused for want of room).
#[test]
fn a_dense_matrix_the_file_does_not_store_is_refused() {
    let err = hostile("dense_unwritten.h5ad").fails();
    assert!(
        err.contains("/X: declares 4294967296 values") || err.contains("out: needs"),
        "{err}"
    );
}

#[test]
fn a_csc_with_more_rows_than_the_file_can_describe_is_refused() {
    let err = hostile("csc_declares_2e33_rows.h5ad").fails();
    assert!(
        err.contains("declares 8589934592 rows, more than a") || err.contains("out: needs"),
        "{err}"
    );
}

/// CSC values declared but never written: the transpose would write 64 GiB of bucket files.
#[test]
fn csc_values_the_file_does_not_store_are_refused() {
    let err = hostile("csc_unwritten_values.h5ad").fails();
    assert!(
        err.contains("/X/data: declares 4294967296 values") || err.contains("out: needs"),
        "{err}"
    );
}

/// The same malformed files dropped into a mount: each ends as a failed dataset with the error
/// `scdl-fs convert` prints, its input stays, and the daemon serves a good file next to them.
#[test]
fn the_corpus_dropped_into_a_mount() {
    let cases: Vec<Case> = vec![
        csr_case(|m| m.indptr = vec![0, 2, 1, 3]),
        csr_case(|m| m.indices = vec![0, 2, 4]),
        csr_case(|m| m.indices = vec![0, 2]),
        csr_case(|m| m.shape = vec![1 << 40, 4]),
        csr_case(|m| {
            m.encoding = "csc_matrix";
            m.indptr = vec![0, 1, 2, 3, 3];
            m.indices = vec![0, 9, 1];
        }),
        Case::new(|p| std::fs::write(p, noise(4096, 7)).unwrap()),
        Case::new(|p| std::fs::write(p, b"").unwrap()),
        Case::new(|p| {
            let f = hdf5::File::create(p).unwrap();
            f.create_group("obs").unwrap();
        }),
    ]
    .into_iter()
    .chain(HOSTILE.iter().map(|h| hostile(h)))
    .collect();
    let m = common::TestMount::start();
    let store_before = common::total_size(&m.store);
    let inputs: u64 = cases
        .iter()
        .map(|c| std::fs::metadata(&c.input).unwrap().len())
        .sum();
    for (i, c) in cases.iter().enumerate() {
        locked(|| std::fs::copy(&c.input, m.mnt.join(format!("bad{i}.h5ad")))).unwrap();
    }
    for (i, c) in cases.iter().enumerate() {
        let st = m.wait_done(&format!("bad{i}"));
        assert_eq!(st["state"], "failed", "bad{i}: {st}");
        let in_mount = st["error"].as_str().unwrap().to_string();
        let cli = c.fails();
        // Same message after the file name (the paths differ: store vs. test directory).
        let tail = |e: &str| {
            e.split_once(".h5ad: ")
                .map(|(_, t)| t.trim().to_string())
                .unwrap_or_default()
        };
        assert_eq!(tail(&in_mount), tail(&cli), "bad{i}");
        assert_eq!(
            std::fs::read(m.mnt.join(format!("bad{i}.h5ad"))).unwrap(),
            std::fs::read(&c.input).unwrap()
        );
    }
    // Failed conversions took no room beyond their inputs (and the failure records).
    let store_after = common::total_size(&m.store);
    assert!(
        store_after <= store_before + inputs + (1 << 20),
        "store grew from {store_before} to {store_after} bytes for {inputs} bytes of inputs"
    );
    locked(|| {
        std::fs::copy(
            common::fixtures().join("csr_f32.h5ad"),
            m.mnt.join("good.h5ad"),
        )
    })
    .unwrap();
    assert_eq!(m.wait_done("good")["state"], "ready");
}

/// Mutation testing on a real anndata file (a stable stand-in for fuzzing the reader): random
/// bytes overwritten at random places. libhdf5 crashes on some of these; whatever happens,
/// `scdl-fs convert` must exit 0 with a valid archive or 1 with one line, and leave nothing.
/// The converter runs confined: whatever libhdf5 does on a malformed file, it must never be a
/// system call the seccomp filter kills (SIGSYS), which would mean the filter lacks one that
/// conversion needs.
#[test]
fn mutated_files_never_crash_the_command() {
    let src = std::fs::read(common::fixtures().join("csr_f32.h5ad")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0xdead_beef_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut outcomes = [0usize; 2];
    for i in 0..120 {
        let mut bytes = src.clone();
        for _ in 0..[1, 4, 16, 64][(next() % 4) as usize] {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        let input = dir.path().join(format!("m{i}.h5ad"));
        std::fs::write(&input, &bytes).unwrap();
        let out = dir.path().join(format!("out{i}"));
        let o = scdl(&["convert", input.to_str().unwrap(), out.to_str().unwrap()]);
        let err = stderr(&o);
        match o.status.code() {
            Some(0) => {
                outcomes[0] += 1;
                let info = scdl(&["info", out.to_str().unwrap()]);
                assert!(
                    info.status.success(),
                    "mutant {i}: converted into an unreadable archive: {}",
                    stderr(&info)
                );
                std::fs::remove_dir_all(&out).unwrap();
            }
            Some(1) => {
                outcomes[1] += 1;
                assert_eq!(err.trim_end().lines().count(), 1, "mutant {i}: {err}");
                assert!(!err.contains("SIGSYS"), "mutant {i}: {err}");
                assert!(!out.exists(), "mutant {i}: output left behind");
            }
            other => panic!("mutant {i}: exit {other:?}: {err}"),
        }
        std::fs::remove_file(&input).unwrap();
        let left: Vec<String> = listing(dir.path());
        assert!(left.is_empty(), "mutant {i} left {left:?}");
    }
    assert!(
        outcomes[1] > 0,
        "some mutants must be rejected: {outcomes:?}"
    );
}
