"""Writes the conversion benchmark input: a CSR .h5ad of ROWS x COLS at DENSITY (defaults:
200,000 x 20,000 at 2.4 %, ~95.6 M non-zeros, ~776 MB uncompressed), float32 counts, int32
indices, sorted columns, in AnnData's on-disk layout (X csr_matrix, obs and var dataframes).

Written row block by row block with h5py, so it needs little memory. Deterministic (seeded).

    python bench/make_h5ad.py OUT.h5ad [--rows N] [--cols N] [--density D]
"""
import argparse

import h5py
import numpy as np


def str_attr(obj, name, value):
    obj.attrs.create(name, value, dtype=h5py.string_dtype())


def dataframe(f, name, index):
    g = f.create_group(name)
    str_attr(g, "encoding-type", "dataframe")
    str_attr(g, "encoding-version", "0.2.0")
    str_attr(g, "_index", "_index")
    g.attrs.create("column-order", np.array([], dtype=object), dtype=h5py.string_dtype())
    d = g.create_dataset("_index", data=np.array(index, dtype=object), dtype=h5py.string_dtype())
    str_attr(d, "encoding-type", "string-array")
    str_attr(d, "encoding-version", "0.2.0")


def csr_x(f, rows, cols):
    """Marks `f` an AnnData file and creates its X group as a rows x cols csr_matrix (the caller
    adds data, indices and indptr)."""
    str_attr(f, "encoding-type", "anndata")
    str_attr(f, "encoding-version", "0.1.0")
    x = f.create_group("X")
    str_attr(x, "encoding-type", "csr_matrix")
    str_attr(x, "encoding-version", "0.1.0")
    x.attrs["shape"] = np.array([rows, cols], dtype=np.int64)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=20_000)
    ap.add_argument("--density", type=float, default=0.024)
    a = ap.parse_args()
    rng = np.random.default_rng(42)
    per_row = rng.binomial(a.cols, a.density, size=a.rows).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(per_row)])
    nnz = int(indptr[-1])
    with h5py.File(a.out, "w") as f:
        x = csr_x(f, a.rows, a.cols)
        data = x.create_dataset("data", shape=(nnz,), dtype=np.float32)
        indices = x.create_dataset("indices", shape=(nnz,), dtype=np.int32)
        x.create_dataset("indptr", data=indptr)
        step = 10_000
        for r0 in range(0, a.rows, step):
            r1 = min(a.rows, r0 + step)
            s, e = int(indptr[r0]), int(indptr[r1])
            cols = np.empty(e - s, dtype=np.int32)
            at = 0
            for n in per_row[r0:r1]:
                cols[at:at + n] = np.sort(rng.choice(a.cols, size=n, replace=False))
                at += n
            indices[s:e] = cols
            data[s:e] = rng.integers(1, 50, size=e - s).astype(np.float32)
        dataframe(f, "obs", [f"cell{i}" for i in range(a.rows)])
        dataframe(f, "var", [f"GENE{i:05d}" for i in range(a.cols)])
    print(f"{a.out}: {a.rows} x {a.cols}, {nnz} non-zeros")


if __name__ == "__main__":
    main()
