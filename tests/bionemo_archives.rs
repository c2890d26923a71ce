//! Archives written by bionemo-scdl itself (0.0.5 and 0.1.3, which narrows row_ptr/col_ptr to
//! uint8/16 and keeps dtypes only in header.sch) must open here: `scdl-fs info` describes them
//! and the served rows equal the source .h5ad read field by field with the hdf5 crate. One written
//! by 0.1.3 with its neighbor graph, its labels then stored as `labels.json` (bionemo-scdl's layout
//! after 0.1.3), opens with that graph, compared with the source's read by anndata.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use scdl_fs::namespace::{Namespace, NamespaceOptions, ROOT_INO};
use scdl_fs::store::Store;

use common::{dense_rows, fixtures, python, repo, scdl, stderr};

/// Writes an archive with bionemo-scdl `version` from `h5ad` into `out`.
fn bionemo_convert(version: &str, h5ad: &Path, out: &Path) {
    bionemo_convert_with(version, h5ad, out, "");
}

/// As `bionemo_convert`, with more keyword arguments (`, load_neighbors=True`) and then `after`
/// (Python run with `out` as `sys.argv[1]`).
fn bionemo_convert_with(version: &str, h5ad: &Path, out: &Path, more: &str) {
    let py = python();
    let venv = py
        .parent()
        .and_then(Path::parent)
        .expect("venv of the test python");
    let path = format!(
        "{}:{}",
        venv.join(format!("bionemo-{version}")).display(),
        repo().join("tests/oracle/torch_stub").display()
    );
    let extra = if version == "0.1.3" {
        format!(", use_X_not_raw=True{more}")
    } else {
        more.to_string()
    };
    let script = format!(
        "import sys\nfrom bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset as D\n\
         d = D(sys.argv[1], h5ad_path=sys.argv[2]{extra})\nd.save()\n"
    );
    let o = Command::new(&py)
        .env("PYTHONPATH", path)
        .args(["-W", "ignore", "-c", &script])
        .arg(out)
        .arg(h5ad)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bionemo {version}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn check(version: &str) {
    let src: PathBuf = fixtures().join("csr_f32.h5ad");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let archive = store.join("bn");
    bionemo_convert(version, &src, &archive);

    let o = scdl(&["info", archive.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let expected = dense_rows(&src);
    let nnz: usize = expected
        .iter()
        .map(|r| r.iter().filter(|v| **v != 0.0).count())
        .sum();
    assert_eq!(info["rows"], expected.len());
    assert_eq!(info["nnz"], nnz);
    assert_eq!(info["dtypes"]["data"], "float32");
    assert_eq!(info["feature_blocks"][0]["num_vars"], 30);

    let ns: Arc<Namespace> =
        Namespace::new(Store::open(&store).unwrap(), NamespaceOptions::default());
    let ds = ns.lookup(ROOT_INO, "bn").unwrap().ino;
    let rows = ns.lookup(ds, "rows").unwrap().ino;
    for (i, want) in expected.iter().enumerate() {
        let ino = ns.lookup(rows, &format!("{i}.npy")).unwrap().ino;
        let o = ns.open(ino, false, false).unwrap();
        let bytes = ns.read(ino, o.fh, 0, 1 << 20).unwrap();
        let (_, shape, off) = scdl_fs::npy::parse_header(&bytes).unwrap();
        assert_eq!(shape, vec![30]);
        let got: Vec<f32> = bytes[off..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(&got, want, "bionemo {version} archive, row {i}");
    }
}

#[test]
fn archive_written_by_bionemo_0_0_5_opens() {
    check("0.0.5");
}

#[test]
fn archive_written_by_bionemo_0_1_3_opens() {
    check("0.1.3");
}

/// The source's graph as anndata reads it, CSR: (indptr, indices, weights as float32, which is
/// what bionemo 0.1.3 writes).
fn source_graph(h5ad: &Path, key: &str) -> (Vec<u64>, Vec<u64>, Vec<f32>) {
    let script = "import sys, json, anndata as ad, numpy as np\n\
        g = ad.read_h5ad(sys.argv[1]).obsp[sys.argv[2]].tocsr()\n\
        print(json.dumps([g.indptr.tolist(), g.indices.tolist(), g.data.astype(np.float32).tolist()]))\n";
    let o = Command::new(python())
        .args(["-W", "ignore", "-c", script])
        .arg(h5ad)
        .arg(key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn archive_written_by_bionemo_0_1_3_with_neighbors_and_labels_json_opens() {
    let src = fixtures().join("neighbors_csr.h5ad");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("bn");
    bionemo_convert_with("0.1.3", &src, &archive, ", load_neighbors=True");
    // bionemo-scdl after 0.1.3 keeps labels as labels.json: rewrite both indexes that way.
    for index in ["var_features", "obs_features"] {
        let d = archive.join(index);
        let o = Command::new(python())
            .args([
                "-c",
                "import sys, json, numpy as np; d = sys.argv[1]\n\
                 json.dump([str(x) for x in np.load(d + '/labels.npy')], open(d + '/labels.json', 'w'))",
            ])
            .arg(&d)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::remove_file(d.join("labels.npy")).unwrap();
    }
    let o = scdl(&["info", archive.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["feature_blocks"][0]["label"], src.to_str().unwrap());

    let (indptr, indices, weights) = source_graph(&src, "next_cell_ids");
    assert_eq!(info["neighbors"]["nnz"], indices.len());
    let a = scdl_fs::archive::Archive::open(&archive).unwrap();
    let g = a.neighbors().expect("the graph bionemo wrote");
    assert_eq!(g.values_dtype, scdl_fs::dtype::Dtype::F32);
    for row in 0..a.num_rows {
        let (s, e) = g.row_range(row).unwrap();
        let (ws, we) = (
            indptr[row as usize] as usize,
            indptr[row as usize + 1] as usize,
        );
        assert_eq!((s as usize, e as usize), (ws, we), "row {row}");
        assert_eq!(g.indices.read(s, e).unwrap(), indices[ws..we], "row {row}");
        let got: Vec<f32> = g
            .values_bytes(s, e)
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, weights[ws..we], "row {row}");
    }
}
