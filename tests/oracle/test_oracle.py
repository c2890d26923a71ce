"""Self-tests of the oracle (verify.py) and the fixtures, independent of the Rust code.

    PY=$(scripts/test-env.sh) && "$PY" -m pytest -q tests/oracle

Archives are written by reference_convert.py into pytest's tmp_path; verify.py must pass on them and fail
once a single value (or any other part of the contract) is corrupted.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "h5ad")
VERIFY = os.path.join(HERE, "verify.py")

sys.path.insert(0, HERE)
import reference_convert  # noqa: E402
import verify  # noqa: E402

with open(os.path.join(FIXTURES, "MANIFEST.json")) as _fh:
    MANIFEST = json.load(_fh)
# non-float32-exact sources: the float32 reference archive is a lossy cast, verified with --data-dtype
LOSSY_IN_F32 = {"dense_f64_frac.h5ad"}


def run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def convert(out, *sources, opts=()):
    reference_convert.main([str(out), *map(str, sources), *opts])  # in-process: saves an interpreter start
    return out


def check(archive, *sources, opts=()):
    """verify.py on a reference archive; wide index dtypes (reference_convert's default) unless opts say."""
    if "--index-dtypes" not in opts:
        opts = (*opts, "--index-dtypes", "wide")
    return run(VERIFY, archive, *sources, *opts)


def tree_hash(path):
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, path).encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ fixtures
def test_fixture_sizes():
    sizes = {e["file"]: os.path.getsize(os.path.join(FIXTURES, e["file"])) for e in MANIFEST}
    assert max(sizes.values()) < 200_000, sizes
    assert sum(sizes.values()) < 3_000_000


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_manifest_matches_file(entry):
    src = verify.read_source(os.path.join(FIXTURES, entry["file"]), "auto")
    assert src.which == ("raw.X" if entry["matrix_default"] == "raw" else "X")
    assert (src.n_rows, src.n_vars, len(src.data)) == (entry["n_obs"], entry["n_vars"], entry["nnz"])


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_h5py_fallback_agrees_with_anndata(entry):
    """The h5py reader (used where anndata fails) must read what anndata reads."""
    path = os.path.join(FIXTURES, entry["file"])
    for matrix in ("auto", "X") + (("layers/counts",) if entry["file"] == "layers_counts.h5ad" else ()):
        try:
            a = verify.read_with_anndata(path, matrix)
        except Exception:  # noqa: BLE001  e.g. float16 data: only the h5py reader can read it
            assert entry["file"] == "csr_f16.h5ad"
            continue
        b = verify.read_with_h5py(path, matrix)
        assert (a.which, a.n_vars, a.ids) == (b.which, b.n_vars, b.ids)
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
        assert a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data, equal_nan=True)


def test_reference_convert_cli(tmp_path):
    src = os.path.join(FIXTURES, "csr_u8.h5ad")
    rc, text = run(os.path.join(HERE, "reference_convert.py"), tmp_path / "a", src, "--data-dtype", "uint8")
    assert rc == 0, text
    assert json.loads((tmp_path / "a" / "dtypes.json").read_text())["data.npy"] == "uint8"
    assert check(tmp_path / "a", src, opts=("--readers", "raw,0.0.5"))[0] == 0


def test_usage_errors_exit_2(tmp_path):
    assert check(tmp_path, os.path.join(FIXTURES, "nope.h5ad"))[0] == 2
    assert check(tmp_path, os.path.join(FIXTURES, "csr_f32.h5ad"), opts=("--readers", "0.2.0"))[0] == 2


def test_directory_order():
    assert [os.path.relpath(p, FIXTURES) for p in verify.list_sources([os.path.join(FIXTURES, "dir")])] == [
        "dir/a.h5ad", "dir/b/c.h5ad", "dir/b/d.h5ad"]


# ------------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_reference_archive_passes(entry, tmp_path):
    src = os.path.join(FIXTURES, entry["file"])
    archive = convert(tmp_path / "a", src)
    opts = ("--data-dtype", "float32") if entry["file"] in LOSSY_IN_F32 else ()
    # The reference converter writes the matrix, features and obs, no neighbor graph or obsm.
    opts += ("--neighbors", "none", "--obsm", "none")
    rc, text = check(archive, src, opts=opts)
    assert rc == 0, text
    assert text.count(": PASS") == 4, text


def test_lossy_cast_fails_without_data_dtype(tmp_path):
    src = os.path.join(FIXTURES, "dense_f64_frac.h5ad")
    rc, text = check(convert(tmp_path / "a", src), src, opts=("--readers", "raw"))
    assert rc == 1 and "raw: FAIL" in text and "--data-dtype" in text, text


def test_directory_and_order(tmp_path):
    d = os.path.join(FIXTURES, "dir")
    archive = convert(tmp_path / "a", d)
    rc, text = check(archive, d)
    assert rc == 0 and "3 feature block(s)" in text, text
    rc, text = check(archive, os.path.join(d, "b"), os.path.join(d, "a.h5ad"), opts=("--readers", "raw"))
    assert rc == 1, text


def test_matrix_choice(tmp_path):
    src = os.path.join(FIXTURES, "layers_counts.h5ad")
    archive = convert(tmp_path / "a", src, opts=("--matrix", "layers/counts"))
    assert check(archive, src, opts=("--matrix", "layers/counts"))[0] == 0
    assert check(archive, src, opts=("--readers", "raw"))[0] == 1
    src = os.path.join(FIXTURES, "raw_more_genes.h5ad")
    archive = convert(tmp_path / "b", src, opts=("--matrix", "X"))
    assert check(archive, src, opts=("--matrix", "X", "--readers", "raw"))[0] == 0
    assert check(archive, src, opts=("--readers", "raw"))[0] == 1


@pytest.mark.parametrize("dtype", ["uint16", "float64", "float16"])
def test_data_dtypes_with_header(dtype, tmp_path):
    src = os.path.join(FIXTURES, f"csr_{ {'uint16': 'u16', 'float64': 'f64', 'float16': 'f16'}[dtype]}.h5ad")
    archive = convert(tmp_path / "a", src, opts=("--data-dtype", dtype, "--header"))
    rc, text = check(archive, src)
    assert rc == 0, text


@pytest.mark.parametrize("name", ["csr_f32.h5ad", "large_csr_f32.h5ad", "csr_u16.h5ad"])
def test_narrow_index_dtypes_load_in_both_bionemo_versions(name, tmp_path):
    """bionemo-scdl 0.1.3's rule (uint8/uint16 here), declared in dtypes.json and header.sch: every reader
    passes; the wide expectation is refused, naming the file."""
    src = os.path.join(FIXTURES, name)
    dtype = "uint16" if name == "csr_u16.h5ad" else "float32"
    archive = convert(tmp_path / "a", src, opts=("--index-dtypes", "narrow", "--header", "--data-dtype", dtype))
    dtypes = json.loads((archive / "dtypes.json").read_text())
    assert dtypes["col_ptr.npy"] in ("uint8", "uint16") and dtypes["row_ptr.npy"] in ("uint8", "uint16"), dtypes
    rc, text = check(archive, src, opts=("--index-dtypes", "narrow"))
    assert rc == 0 and "0.0.5: PASS" in text and "0.1.3: PASS" in text, text
    rc, text = check(archive, src, opts=("--index-dtypes", "wide", "--readers", "raw"))
    assert rc == 1 and "dtypes.json: col_ptr.npy" in text, text


def test_wide_archive_fails_the_narrow_expectation(tmp_path):
    src = os.path.join(FIXTURES, "csr_f32.h5ad")
    archive = convert(tmp_path / "a", src)
    rc, text = check(archive, src, opts=("--index-dtypes", "narrow", "--readers", "raw"))
    assert rc == 1 and "uint32" in text and "'uint8'" in text, text


@pytest.mark.parametrize("name,smallest", [
    ("csr_f32.h5ad", None), ("csr_f16.h5ad", "float16"), ("csr_f64.h5ad", "float32"), ("csr_i8.h5ad", "float16"),
    ("csr_u16.h5ad", "uint16"), ("csr_u32.h5ad", "uint32"),
    ("csr_u64.h5ad", "float32"),  # powers of two up to 2^63: exact in float32, half the size of uint64
    ("dense_f64_frac.h5ad", "float64"),
])
def test_auto_data_dtype_is_the_smallest_exact_type(name, smallest, tmp_path):
    src = verify.read_source(os.path.join(FIXTURES, name), "auto")
    got = verify.auto_dtype([src])
    if smallest is not None:
        assert got == smallest
    # Independently of the order of candidates: it holds every value, and no smaller type does.
    v = src.data
    back = v.astype(got).astype(v.dtype)
    assert np.array_equal(back, v, equal_nan=True), (name, got)
    smaller = [d for d in verify.AUTO_CANDIDATES if np.dtype(d).itemsize < np.dtype(got).itemsize]
    assert not any(verify.holds_exactly(v, d) for d in smaller), (name, got)


def test_auto_data_dtype_is_declared(tmp_path):
    src = os.path.join(FIXTURES, "csr_u16.h5ad")
    archive = convert(tmp_path / "a", src, opts=("--data-dtype", "uint16", "--header"))
    assert check(archive, src, opts=("--data-dtype", "auto"))[0] == 0
    wider = convert(tmp_path / "b", src, opts=("--data-dtype", "uint32", "--header"))
    rc, text = check(wider, src, opts=("--data-dtype", "auto", "--readers", "raw"))
    assert rc == 1 and "data.npy is uint32, expected uint16" in text, text


def test_bionemo_013_needs_header_for_non_float32(tmp_path):
    src = os.path.join(FIXTURES, "csr_f64.h5ad")
    archive = convert(tmp_path / "a", src, opts=("--data-dtype", "float64"))
    rc, text = check(archive, src)
    assert rc == 1 and "raw: PASS" in text and "0.0.5: PASS" in text and "0.1.3: FAIL" in text, text
    assert "header.sch" in text


def test_sorted_copy_of_unsorted_source_passes_with_note(tmp_path):
    src = os.path.join(FIXTURES, "csr_unsorted.h5ad")
    a = convert(tmp_path / "a", src)
    ptr = np.fromfile(a / "row_ptr.npy", dtype="<u8").astype(np.int64)
    cols, data = np.fromfile(a / "col_ptr.npy", dtype="<u4"), np.fromfile(a / "data.npy", dtype="<f4")
    for r in range(len(ptr) - 1):
        s, e = ptr[r], ptr[r + 1]
        order = np.argsort(cols[s:e])
        cols[s:e], data[s:e] = cols[s:e][order], data[s:e][order]
    cols.tofile(a / "col_ptr.npy")
    data.tofile(a / "data.npy")
    rc, text = check(a, src)
    assert rc == 0 and text.count("column order differs") == 3, text


def test_bionemo_readers_leave_archive_untouched(tmp_path):
    src = os.path.join(FIXTURES, "csr_f32.h5ad")
    archive = convert(tmp_path / "a", src)
    before = tree_hash(archive)
    assert check(archive, src)[0] == 0
    assert tree_hash(archive) == before


# ------------------------------------------------------------------------------------------------ corruption
def flip_value(a):
    data = np.fromfile(a / "data.npy", dtype="<f4")
    data[17] += 1
    data.tofile(a / "data.npy")


def flip_column(a):
    cols = np.fromfile(a / "col_ptr.npy", dtype="<u4")
    cols[5] = (cols[5] + 1) % 30
    cols.tofile(a / "col_ptr.npy")


def move_row_boundary(a):
    ptr = np.fromfile(a / "row_ptr.npy", dtype="<u8")
    ptr[3] += 1
    ptr.tofile(a / "row_ptr.npy")


def npy_header(a):
    np.save(a / "data.npy", np.fromfile(a / "data.npy", dtype="<f4"))  # a real .npy: header + values


def wrong_num_rows(a):
    (a / "metadata.json").write_text(json.dumps({"num_rows": 39}))


def wrong_gene_ids(a):
    import pandas as pd

    p = a / "features" / "dataframe_0.parquet"
    df = pd.read_parquet(p)
    df["feature_id"] = [f"X{i}" for i in range(len(df))]
    df.to_parquet(p, index=False)


def wrong_block_rows(a):
    np.save(a / "features" / "cumulative_sum_index.npy", np.array([-1, 41], dtype=np.int64))


def garbage_parquet(a):
    (a / "features" / "dataframe_0.parquet").write_bytes(b"not a parquet file")


def no_dtypes(a):
    os.remove(a / "dtypes.json")


def wrong_obs_value(a):
    import pandas as pd

    p = a / "obs_features" / "dataframe_0.parquet"
    df = pd.read_parquet(p)
    df.loc[3, "cell_type"] = "not-a-cell-type"
    df.to_parquet(p, index=False)


def no_obs(a):
    import shutil

    shutil.rmtree(a / "obs_features")


CORRUPTIONS = {
    "value": (flip_value, ("raw", "0.0.5", "0.1.3")),
    "column": (flip_column, ("raw", "0.0.5", "0.1.3")),
    "row_ptr": (move_row_boundary, ("raw", "0.0.5", "0.1.3")),
    "npy_header": (npy_header, ("raw",)),
    "num_rows": (wrong_num_rows, ("raw",)),
    "gene_ids": (wrong_gene_ids, ("raw",)),
    "block_rows": (wrong_block_rows, ("raw", "0.0.5", "0.1.3")),
    "dtypes_json": (no_dtypes, ("raw",)),
    "parquet": (garbage_parquet, ("raw", "0.0.5", "0.1.3")),
    "obs_value": (wrong_obs_value, ("raw", "0.1.3")),
    "obs_missing": (no_obs, ("raw",)),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_is_caught(name, tmp_path):
    src = os.path.join(FIXTURES, "csr_f32.h5ad")
    archive = convert(tmp_path / "a", src)
    corrupt, failing = CORRUPTIONS[name]
    corrupt(archive)
    rc, text = check(archive, src)
    assert rc == 1, text
    for reader in failing:
        assert f"{reader}: FAIL" in text, text
