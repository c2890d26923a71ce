//! Shuffled batches rendered from real converted fixtures, both formats, checked by
//! tests/batches/check_batches.py: the rows each batch must hold from its own re-implementation
//! of the order, the values from the source .h5ad read by anndata, the files read by
//! scipy.sparse.load_npz, numpy and safetensors.numpy. Every size computed without rendering
//! must equal the bytes rendered.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use scdl_fs::archive::Archive;
use scdl_fs::batches::{BatchFormat, BatchLayout, EpochOrder, Plan, ReadPool, Recycler};

fn convert(input: &Path, args: &[&str], out: &Path) {
    let mut all = vec!["convert", input.to_str().unwrap(), out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = common::scdl(&all);
    assert!(o.status.success(), "convert failed: {}", common::stderr(&o));
}

/// Drops the archive's array files from the page cache (they are synced: their pages are
/// clean), so that the next reads go to storage.
fn evict(archive: &Archive) {
    use std::os::fd::AsRawFd;
    for name in ["data.npy", "col_ptr.npy", "row_ptr.npy"] {
        let f = std::fs::File::open(archive.path.join(name)).unwrap();
        // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "posix_fadvise {name}");
    }
}

/// Renders every batch of `plans` × epochs 0 and 1 into `dir`, checking each size, and
/// returns the manifest entries. `uncached` (the same archive, reading row_ptr instead of
/// holding it) renders every batch again from an evicted page cache: the same bytes.
fn render_all(
    archive: &Archive,
    uncached: &Archive,
    plans: &[&str],
    dir: &Path,
) -> Vec<serde_json::Value> {
    let pool = ReadPool::new(8);
    let serial = ReadPool::new(1);
    let threads = ReadPool::threads_only(4);
    let buffers = Recycler::default();
    let mut entries = Vec::new();
    for (p, plan_text) in plans.iter().enumerate() {
        let plan = Plan::parse(plan_text).unwrap();
        for epoch in [0u32, 1] {
            let order = EpochOrder::new(&plan, archive.num_rows, epoch);
            assert!(order.batches() > 0, "{plan_text}: no batches");
            for k in 0..order.batches() {
                let layout = BatchLayout::of_batch(archive, &order, k, &pool)
                    .unwrap()
                    .unwrap();
                for format in BatchFormat::ALL {
                    let size = layout.file_size(archive, format).unwrap();
                    let bytes = layout.render(archive, format, &pool, &buffers).unwrap();
                    assert_eq!(
                        bytes.len() as u64,
                        size,
                        "{plan_text} {epoch} {k} {format:?}"
                    );
                    // Nor may the way the slices are read: one thread's ring, or (with no
                    // ring) cached slices copied here and the others on threads.
                    for readers in [&serial, &threads] {
                        assert_eq!(
                            bytes,
                            layout.render(archive, format, readers, &buffers).unwrap()
                        );
                    }
                    if format == BatchFormat::Safetensors {
                        // Laid out in place, byte for byte what the crate's serialize writes.
                        assert_eq!(
                            bytes,
                            layout
                                .render_safetensors_with_crate(archive, &pool)
                                .unwrap(),
                            "{plan_text} {epoch} {k}"
                        );
                    }
                    // Nor reads from storage, row_ptr read too: on an io_uring, and on the
                    // threads that read where there is none.
                    for (reads, readers) in [("io_uring", &pool), ("threads", &threads)] {
                        evict(uncached);
                        let cold = BatchLayout::of_batch(uncached, &order, k, readers)
                            .unwrap()
                            .unwrap();
                        evict(uncached);
                        assert_eq!(
                            bytes,
                            cold.render(uncached, format, readers, &buffers).unwrap(),
                            "{plan_text} {epoch} {k} {format:?} from storage ({reads})"
                        );
                    }
                    let path = dir.join(format!("{p}-{epoch}-{}", format.file_name(k)));
                    std::fs::write(&path, &bytes).unwrap();
                    entries.push(serde_json::json!({
                        "path": path, "plan": plan_text, "epoch": epoch, "k": k,
                        "format": format.extension(), "size": size,
                    }));
                }
            }
            assert!(
                BatchLayout::of_batch(archive, &order, order.batches(), &pool)
                    .unwrap()
                    .is_none()
            );
        }
    }
    entries
}

fn check(sources: &[PathBuf], convert_args: &[&str], data_dtype: &str, plans: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let archive_path = tmp.path().join("archive");
    let input = if sources.len() == 1 {
        sources[0].clone()
    } else {
        common::fixtures().join("dir")
    };
    convert(&input, convert_args, &archive_path);
    let archive = Archive::open(&archive_path).unwrap();
    assert_eq!(archive.data_dtype.name(), data_dtype);
    let uncached = Archive::open(&archive_path).unwrap().with_row_ptr_reads();
    let entries = render_all(&archive, &uncached, plans, tmp.path());
    let files = entries.len();
    let manifest = serde_json::json!({
        "sources": sources, "data_dtype": data_dtype, "batches": entries,
    });
    let manifest_path = tmp.path().join("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let o = Command::new(common::python())
        .arg(common::repo().join("tests/batches/check_batches.py"))
        .arg(&manifest_path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "check_batches.py rejected {input:?}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.starts_with(&format!(
            "checked {files} batch files of {} rows",
            archive.num_rows
        )),
        "{said}"
    );
}

fn fixture(name: &str) -> Vec<PathBuf> {
    vec![common::fixtures().join(name)]
}

#[test]
fn batches_of_a_large_file_hold_the_source_rows() {
    check(
        &fixture("large_csr_f32.h5ad"),
        &[],
        "float32",
        &[
            "size=64",
            "seed=3,block=16,size=100",
            "size=256,block=64,seed=11",
            "size=50,ranks=3,rank=2,seed=5",
        ],
    );
}

#[test]
fn batches_mixing_feature_blocks_of_different_widths_take_the_widest() {
    let dir = common::fixtures().join("dir");
    let sources = vec![
        dir.join("a.h5ad"),
        dir.join("b/c.h5ad"),
        dir.join("b/d.h5ad"),
    ];
    check(
        &sources,
        &[],
        "float32",
        &[
            "size=8",
            "size=6,block=4,seed=2",
            "size=45",
            "size=7,ranks=2,rank=1",
        ],
    );
}

#[test]
fn batches_keep_stored_column_order_empty_rows_and_special_values() {
    let plans = ["size=8,seed=1", "size=5,block=3,seed=4"];
    check(&fixture("csr_unsorted.h5ad"), &[], "float32", &plans);
    check(&fixture("csr_empty_rows.h5ad"), &[], "float32", &plans);
    check(&fixture("csr_nan_inf.h5ad"), &[], "float32", &plans);
    check(&fixture("csr_zero_nnz.h5ad"), &[], "float32", &plans);
}

#[test]
fn batches_carry_the_archive_data_type() {
    let plans = ["size=16,seed=8"];
    check(
        &fixture("csr_u16.h5ad"),
        &["--data-dtype", "keep"],
        "uint16",
        &plans,
    );
    check(
        &fixture("csr_f64.h5ad"),
        &["--data-dtype", "float64"],
        "float64",
        &plans,
    );
}
