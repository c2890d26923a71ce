"""Checks shuffled batch files against their source .h5ad files, read by anndata, for
tests/batches_render.rs. Nothing here shares code with scdl-fs: the rows each batch must hold
come from order_oracle.py (written from docs/SEMANTICS.md), the values from anndata, and the
files are read with scipy.sparse.load_npz, numpy.load and safetensors.numpy.

    check_batches.py MANIFEST.json

MANIFEST: {"sources": [h5ad, ...] (in archive order, one feature block each),
           "data_dtype": "float32", "batches": [{"path", "plan", "epoch", "k", "format"}, ...]}
Prints "checked N batch files" and exits 0, or names the first mismatch and exits 1.
"""

import json
import os
import sys

import anndata as ad
import numpy as np
import scipy.sparse as sp
from safetensors import safe_open
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import order_oracle  # noqa: E402


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def load_sources(paths, dtype):
    """Every source row as (feature block, width, column indices, values in the archive dtype)."""
    rows = []
    for block, path in enumerate(paths):
        x = ad.read_h5ad(path).X
        if not sp.issparse(x):
            x = sp.csr_matrix(x)
        x = sp.csr_matrix(x)
        width = x.shape[1]
        for r in range(x.shape[0]):
            a, b = x.indptr[r], x.indptr[r + 1]
            rows.append((block, width, x.indices[a:b].astype(np.int64), x.data[a:b].astype(dtype)))
    return rows


def expect_csr(what, data, indices, indptr, shape, row_ids, feature_block, want_rows, source, dtype):
    if list(row_ids) != want_rows:
        fail(f"{what}: row_ids {list(row_ids)} but the order says {want_rows}")
    n = len(want_rows)
    width = max(source[r][1] for r in want_rows) if want_rows else 0
    if tuple(shape) != (n, width):
        fail(f"{what}: shape {tuple(shape)}, expected {(n, width)}")
    if data.dtype != dtype or indices.dtype != np.int32 or indptr.dtype != np.int64:
        fail(f"{what}: dtypes data {data.dtype} indices {indices.dtype} indptr {indptr.dtype}")
    if row_ids.dtype != np.int64 or feature_block.dtype != np.int32:
        fail(f"{what}: dtypes row_ids {row_ids.dtype} feature_block {feature_block.dtype}")
    if len(indptr) != n + 1 or indptr[0] != 0 or indptr[-1] != len(data) or len(indices) != len(data):
        fail(f"{what}: inconsistent indptr {list(indptr)} for {len(data)} values")
    for i, r in enumerate(want_rows):
        block, _, cols, vals = source[r]
        a, b = indptr[i], indptr[i + 1]
        if feature_block[i] != block:
            fail(f"{what}: row {r} in feature block {feature_block[i]}, source says {block}")
        if not np.array_equal(indices[a:b], cols):
            fail(f"{what}: row {r} columns {list(indices[a:b])}, source {list(cols)}")
        if not np.array_equal(data[a:b], vals, equal_nan=True):
            fail(f"{what}: row {r} values {list(data[a:b])}, source {list(vals)}")


def check_npz(path, want_rows, source, dtype):
    z = np.load(path)
    expect_csr(path, z["data"], z["indices"], z["indptr"], z["shape"], z["row_ids"],
               z["feature_block"], want_rows, source, dtype)
    # scipy reads the same matrix (it may narrow the index dtypes it keeps in memory).
    m = sp.load_npz(path)
    if not sp.issparse(m) or m.format != "csr" or m.shape != tuple(z["shape"]):
        fail(f"{path}: load_npz gave {type(m)} {getattr(m, 'shape', None)}")
    for name in ["data", "indices", "indptr"]:
        if not np.array_equal(getattr(m, name), z[name], equal_nan=True):
            fail(f"{path}: scipy's {name} differs from the file's")
    return {k: z[k] for k in z.files}


def check_safetensors(path, want_rows, source, dtype):
    t = load_file(path)
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
    if meta.get("format") != "csr":
        fail(f"{path}: __metadata__ format {meta.get('format')!r}")
    shape = json.loads(meta["shape"])
    expect_csr(path, t["data"], t["indices"], t["indptr"], shape, t["row_ids"], t["feature_block"],
               want_rows, source, dtype)
    # The same matrix through scipy, as a loader would build it.
    m = sp.csr_matrix((t["data"], t["indices"], t["indptr"]), shape=tuple(shape))
    if m.shape != tuple(shape):
        fail(f"{path}: scipy shape {m.shape}")


def main():
    manifest = json.load(open(sys.argv[1]))
    dtype = np.dtype(manifest["data_dtype"])
    source = load_sources(manifest["sources"], dtype)
    n = len(source)
    npz_arrays = {}
    for b in manifest["batches"]:
        plan = order_oracle.parse_plan(b["plan"])
        _, want = order_oracle.batch(plan, n, b["epoch"], b["k"])
        if want is None:
            fail(f"{b['path']}: the order has no batch {b['k']} for {b['plan']} epoch {b['epoch']}")
        if os.path.getsize(b["path"]) != b["size"]:
            fail(f"{b['path']}: {os.path.getsize(b['path'])} bytes, stat said {b['size']}")
        key = (b["plan"], b["epoch"], b["k"])
        if b["format"] == "npz":
            npz_arrays[key] = check_npz(b["path"], want, source, dtype)
        else:
            check_safetensors(b["path"], want, source, dtype)
    # Both formats of one batch hold the same arrays.
    for b in manifest["batches"]:
        key = (b["plan"], b["epoch"], b["k"])
        if b["format"] == "safetensors" and key in npz_arrays:
            t = load_file(b["path"])
            for name in ["data", "indices", "indptr", "row_ids", "feature_block"]:
                if not np.array_equal(t[name], npz_arrays[key][name], equal_nan=True):
                    fail(f"{b['path']}: {name} differs from the .npz")
    print(f"checked {len(manifest['batches'])} batch files of {n} rows")


if __name__ == "__main__":
    main()
