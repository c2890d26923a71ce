//! Archives written by bionemo-scdl itself (0.0.5 and 0.1.3, which narrows row_ptr/col_ptr to
//! uint8/16 and keeps dtypes only in header.sch) must open here: `scdl-fs info` describes them
//! and the served rows equal the source .h5ad read field by field with the hdf5 crate.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use scdl_fs::namespace::{Namespace, NamespaceOptions, ROOT_INO};
use scdl_fs::store::Store;

use common::{dense_rows, fixtures, python, repo, scdl, stderr};

/// Writes an archive with bionemo-scdl `version` from `h5ad` into `out`.
fn bionemo_convert(version: &str, h5ad: &Path, out: &Path) {
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
        ", use_X_not_raw=True"
    } else {
        ""
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
