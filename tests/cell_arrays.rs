//! Neighbor graphs and obsm through concat and `info`: a concat of archives converted from the
//! kNN fixtures is checked by the oracle (tests/oracle/verify.py with cell_arrays.py: the sources'
//! graphs stacked block-diagonally and their obsm rows, read with anndata; bionemo-scdl 0.1.3
//! loading the result with load_neighbors=True); inputs that disagree are refused, naming the
//! input and what differs, with nothing left behind.

mod common;

use std::path::Path;

use common::{fixtures, listing, scdl, stderr, verify};

fn convert(src: &str, out: &Path, extra: &[&str]) {
    let (s, o) = (fixtures().join(src), out.to_str().unwrap().to_string());
    let mut args = vec!["convert", s.to_str().unwrap(), &o];
    args.extend_from_slice(extra);
    let r = scdl(&args);
    assert!(r.status.success(), "{}", stderr(&r));
}

fn concat(out: &Path, inputs: &[&Path]) -> std::process::Output {
    let mut args = vec!["concat".to_string(), out.to_str().unwrap().to_string()];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap().to_string()));
    scdl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn concat_carries_neighbors_block_diagonally_and_obsm_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    convert("neighbors_csr.h5ad", &d.join("a"), &[]);
    convert("cells_dir", &d.join("b"), &[]);
    convert("neighbors_dense_x.h5ad", &d.join("c"), &[]);
    let out = d.join("joined");
    let o = concat(&out, &[&d.join("a"), &d.join("b"), &d.join("c")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = fixtures();
    let sources = [
        f.join("neighbors_csr.h5ad"),
        f.join("cells_dir"),
        f.join("neighbors_dense_x.h5ad"),
    ];
    let refs: Vec<&Path> = sources.iter().map(|p| p.as_path()).collect();
    let v = verify(&out, &refs, &[]);
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success(), "oracle: {text}{}", stderr(&v));
    assert!(text.contains("neighbors 'next_cell_ids'"), "{text}");

    let o = scdl(&["info", out.to_str().unwrap()]);
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(
        info.contains("neighbors key next_cell_ids, 463 edges (indices uint32, weights float64)")
            && info.contains("X_pca float32 [101, 8]")
            && info.contains("spatial float64 [101, 2]"),
        "{info}"
    );
}

/// A refused concat: exit 1, a message containing every `needle`, and no output.
fn refused(d: &Path, inputs: &[&Path], needles: &[&str]) {
    let out = d.join("refused");
    let before = listing(d);
    let o = concat(&out, inputs);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    assert_eq!(listing(d), before, "a refused concat left something");
}

#[test]
fn concat_refuses_inputs_whose_graphs_or_obsm_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    convert("neighbors_csr.h5ad", &d.join("with"), &[]);
    convert(
        "neighbors_csr.h5ad",
        &d.join("without"),
        &["--neighbors", "none"],
    );
    convert(
        "neighbors_csr.h5ad",
        &d.join("spatial"),
        &["--obsm", "spatial"],
    );
    let (with, without) = (d.join("with"), d.join("without"));
    refused(
        d,
        &[&with, &without],
        &[
            without.to_str().unwrap(),
            with.to_str().unwrap(),
            "no neighbor graph",
        ],
    );
    let spatial = d.join("spatial");
    refused(
        d,
        &[&with, &spatial],
        &["obsm key 'X_pca'", spatial.to_str().unwrap()],
    );
}
