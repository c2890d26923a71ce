//! Every input layout, converted by the real binary and checked by the independent oracle
//! (tests/oracle/verify.py): the source read with anndata/h5py/scipy, the archive read raw with
//! numpy and loaded by bionemo-scdl 0.0.5 and 0.1.3. Fixtures were made by real anndata
//! (tests/fixtures/make_fixtures.py).

mod common;

use std::path::{Path, PathBuf};

use common::{convert_fails, fixtures, scdl, stderr, verify};

/// Converts `input` with `args` into a fresh directory; returns (tempdir, archive path).
fn convert(input: &Path, args: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("archive");
    let mut all = vec!["convert", input.to_str().unwrap(), out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = scdl(&all);
    assert!(
        o.status.success(),
        "convert {} {args:?} failed: {}",
        input.display(),
        stderr(&o)
    );
    (dir, out)
}

/// Converts and verifies; `verify_args` go to the oracle (e.g. the matrix it should expect).
fn check(name: &str, convert_args: &[&str], verify_args: &[&str]) {
    let input = fixtures().join(name);
    let (_dir, out) = convert(&input, convert_args);
    let o = verify(&out, &[&input], verify_args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "oracle rejected {name} {convert_args:?}:\n{text}"
    );
}

macro_rules! fixture_tests {
    ($($test:ident: $file:expr, [$($c:expr),*], [$($v:expr),*];)*) => {
        $(
            #[test]
            fn $test() {
                check($file, &[$($c),*], &[$($v),*]);
            }
        )*
    };
}

fixture_tests! {
    csr_float32: "csr_f32.h5ad", [], [];
    csc_is_transposed: "csc_f32.h5ad", [], [];
    dense_float32: "dense_f32.h5ad", [], [];
    dense_float64_kept_exactly: "dense_f64_frac.h5ad", ["--data-dtype", "float64"], ["--data-dtype", "float64"];
    float16_data: "csr_f16.h5ad", [], [];
    float16_kept: "csr_f16.h5ad", ["--data-dtype", "keep"], ["--data-dtype", "float16"];
    float64_data: "csr_f64.h5ad", [], [];
    int8_data: "csr_i8.h5ad", [], [];
    int16_data: "csr_i16.h5ad", [], [];
    int32_data: "csr_i32.h5ad", [], [];
    int64_data: "csr_i64.h5ad", [], [];
    uint8_data: "csr_u8.h5ad", [], [];
    uint8_kept: "csr_u8.h5ad", ["--data-dtype", "keep"], ["--data-dtype", "uint8"];
    uint16_data: "csr_u16.h5ad", [], [];
    uint32_data: "csr_u32.h5ad", [], [];
    uint64_data: "csr_u64.h5ad", [], [];
    uint64_kept: "csr_u64.h5ad", ["--data-dtype", "keep"], ["--data-dtype", "uint64"];
    int64_indices: "csr_idx_i64.h5ad", [], [];
    unsigned_indices: "csr_idx_u32_u64.h5ad", [], [];
    gzip_chunked: "csr_gzip.h5ad", [], [];
    lzf_chunked: "csr_lzf.h5ad", [], [];
    unsorted_columns: "csr_unsorted.h5ad", [], [];
    explicit_zeros: "csr_explicit_zeros.h5ad", [], [];
    empty_rows: "csr_empty_rows.h5ad", [], [];
    zero_rows: "csr_zero_rows.h5ad", [], [];
    zero_nonzeros: "csr_zero_nnz.h5ad", [], [];
    nan_and_inf_preserved: "csr_nan_inf.h5ad", [], [];
    larger_gzip_matrix: "large_csr_f32.h5ad", [], [];
    raw_chosen_by_default: "raw_more_genes.h5ad", [], ["--matrix", "raw"];
    raw_explicitly: "raw_more_genes.h5ad", ["--matrix", "raw"], ["--matrix", "raw"];
    x_instead_of_raw: "raw_more_genes.h5ad", ["--matrix", "X"], ["--matrix", "X"];
    layer_counts: "layers_counts.h5ad", ["--matrix", "layers/counts"], ["--matrix", "layers/counts"];
    legacy_h5sparse_layout: "legacy_h5sparse.h5ad", [], [];
    legacy_raw_layout: "legacy_raw.h5ad", [], ["--matrix", "raw"];
    var_index_categorical: "var_index_categorical.h5ad", [], [];
    var_index_named_column: "var_index_named.h5ad", [], [];
    var_nullable_columns: "var_nullable.h5ad", [], [];
    directory_of_files: "dir", [], [];
    wide_indices: "large_csr_f32.h5ad", ["--index-dtypes", "wide"], ["--index-dtypes", "wide"];
    wide_directory: "dir", ["--index-dtypes", "wide"], ["--index-dtypes", "wide"];
    auto_counts_in_float32: "csr_f32.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_counts_in_csc: "csc_f32.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_dense_counts: "dense_f32.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_dense_fractions: "dense_f64_frac.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_float16: "csr_f16.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_float64_source: "csr_f64.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_signed: "csr_i8.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_large_signed: "csr_i32.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_uint16: "csr_u16.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_uint32: "csr_u32.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_uint64_powers_of_two: "csr_u64.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_nan_and_inf: "csr_nan_inf.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_no_values: "csr_zero_nnz.h5ad", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    auto_layer: "layers_counts.h5ad", ["--data-dtype", "auto", "--matrix", "layers/counts"], ["--data-dtype", "auto", "--matrix", "layers/counts"];
    auto_directory: "dir", ["--data-dtype", "auto"], ["--data-dtype", "auto"];
    obs_of_every_kind: "obs_rich.h5ad", [], [];
    obs_none: "obs_rich.h5ad", ["--obs", "none"], ["--obs", "none"];
    obs_chosen_columns: "obs_rich.h5ad", ["--obs", "donor,pct_mito,flag"], ["--obs", "donor,pct_mito,flag"];
    obs_of_a_legacy_file: "legacy_raw.h5ad", [], ["--matrix", "raw"];
    neighbors_under_the_default_key_in_stored_order: "neighbors_csr.h5ad", [], [];
    neighbors_of_a_csc_graph_by_key: "neighbors_csc.h5ad", ["--neighbors", "knn"], ["--neighbors", "knn"];
    neighbors_absent_without_the_default_key: "neighbors_csc.h5ad", [], [];
    neighbors_and_obsm_beside_a_dense_x: "neighbors_dense_x.h5ad", [], [];
    neighbors_none_and_one_obsm_key: "neighbors_csr.h5ad", ["--neighbors", "none", "--obsm", "spatial"], ["--neighbors", "none", "--obsm", "spatial"];
    obsm_none: "neighbors_csr.h5ad", ["--obsm", "none"], ["--obsm", "none"];
    neighbors_of_a_directory_are_block_diagonal: "cells_dir", [], [];
}

/// A synthetic CSR input of `rows` x `cols` (bench/make_h5ad.py: float32 counts 1..49).
fn synthetic(dir: &Path, rows: u32, cols: u32, density: &str) -> PathBuf {
    let out = dir.join(format!("synthetic_{rows}x{cols}.h5ad"));
    let o = std::process::Command::new(common::python())
        .arg(common::repo().join("bench/make_h5ad.py"))
        .arg(&out)
        .args(["--rows", &rows.to_string(), "--cols", &cols.to_string()])
        .args(["--density", density])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn info_json(archive: &Path) -> serde_json::Value {
    let o = scdl(&["info", archive.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn more_values_and_genes_than_uint16_holds_widen_the_indices() {
    // 70,000 genes (column indices past 65,535) and ~100,000 values (row offsets past 65,535).
    let dir = tempfile::tempdir().unwrap();
    let input = synthetic(dir.path(), 200, 70_000, "0.007");
    for (args, data) in [
        (&[][..], "float32"),
        (&["--data-dtype", "auto"][..], "uint8"),
    ] {
        let (_out_dir, out) = convert(&input, args);
        let info = info_json(&out);
        assert_eq!(info["dtypes"]["col_ptr"], "uint32", "{info}");
        assert_eq!(info["dtypes"]["row_ptr"], "uint32", "{info}");
        assert_eq!(info["dtypes"]["data"], data, "{info}");
        let o = verify(&out, &[&input], args);
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn info_states_the_types_auto_chose() {
    let (_dir, out) = convert(
        &fixtures().join("large_csr_f32.h5ad"),
        &["--data-dtype", "auto"],
    );
    let o = scdl(&["info", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    // 500 genes, 35,000 values, counts below 50.
    assert!(
        text.contains("dtypes    data uint8, col_ptr uint16, row_ptr uint16"),
        "{text}"
    );
}

#[test]
fn an_obs_column_the_file_lacks_is_named() {
    let err = convert_fails(&fixtures().join("obs_rich.h5ad"), &["--obs", "donor,nope"]);
    assert!(
        err.contains("/obs/nope")
            && err.contains("no such obs column")
            && err.contains("cell_type"),
        "{err}"
    );
}

#[test]
fn info_lists_the_obs_columns_and_kinds() {
    let (_dir, out) = convert(&fixtures().join("obs_rich.h5ad"), &[]);
    let o = scdl(&["info", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cols = &info["obs"]["blocks"][0]["columns"];
    let names: Vec<&str> = cols
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "barcode",
            "cell_type",
            "donor",
            "pct_mito",
            "n_genes",
            "is_doublet",
            "n_int",
            "flag",
            "label"
        ]
    );
    assert_eq!(info["obs"]["blocks"][0]["rows"], 40);
    let text = scdl(&["info", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("pct_mito: Float64"), "{text}");
}

#[test]
fn fractional_float64_is_refused_as_float32() {
    let err = convert_fails(&fixtures().join("dense_f64_frac.h5ad"), &[]);
    assert!(
        err.contains("/X: value") && err.contains("float32"),
        "{err}"
    );
}

#[test]
fn negative_values_cannot_be_kept_unsigned() {
    // keep on int8 means uint8 (SCDL has no signed types): -128 must be refused by name.
    let err = convert_fails(&fixtures().join("csr_i8.h5ad"), &["--data-dtype", "keep"]);
    assert!(err.contains("uint8") && err.contains("value -"), "{err}");
}

#[test]
fn missing_layer_lists_what_exists() {
    let err = convert_fails(
        &fixtures().join("layers_counts.h5ad"),
        &["--matrix", "layers/nope"],
    );
    assert!(
        err.contains("/layers/nope") && err.contains("counts"),
        "{err}"
    );
}

#[test]
fn info_describes_a_directory_conversion() {
    let (_dir, out) = convert(&fixtures().join("dir"), &[]);
    let o = scdl(&["info", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["rows"], 45);
    assert_eq!(info["dtypes"]["data"], "float32");
    let blocks = info["feature_blocks"].as_array().unwrap();
    let shape: Vec<(u64, u64, u64)> = blocks
        .iter()
        .map(|b| {
            (
                b["first_row"].as_u64().unwrap(),
                b["rows"].as_u64().unwrap(),
                b["num_vars"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shape, vec![(0, 20, 30), (20, 15, 25), (35, 10, 40)]);
}
