"""Writes a tall synthetic .h5ad for the 10^8-row checks: ROWS x COLS CSR with VALUES values per
row (defaults 100,000,000 x 2,000, 2 per row), float32 counts, int32 sorted distinct columns
(value j of a row lies in column block j, so no row repeats a column), no obs dataframe (a
positional index, as anndata gives) and a var index of COLS names. Vectorised and written in
blocks of 10^7 rows with h5py, so it needs little memory. Deterministic (seeded).

    python bench/make_huge_h5ad.py OUT.h5ad [--rows N] [--cols N] [--values K]
"""
import argparse

import h5py
import numpy as np

from make_h5ad import csr_x, dataframe

BLOCK = 10_000_000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--cols", type=int, default=2_000)
    ap.add_argument("--values", type=int, default=2)
    a = ap.parse_args()
    k, span = a.values, a.cols // a.values
    nnz = a.rows * k
    rng = np.random.default_rng(7)
    with h5py.File(a.out, "w") as f:
        x = csr_x(f, a.rows, a.cols)
        data = x.create_dataset("data", shape=(nnz,), dtype=np.float32)
        indices = x.create_dataset("indices", shape=(nnz,), dtype=np.int32)
        indptr = x.create_dataset("indptr", shape=(a.rows + 1,), dtype=np.int64)
        for r0 in range(0, a.rows, BLOCK):
            r1 = min(a.rows, r0 + BLOCK)
            n = r1 - r0
            cols = rng.integers(0, span, size=(n, k), dtype=np.int32) + np.arange(k, dtype=np.int32) * span
            indices[r0 * k : r1 * k] = cols.ravel()
            data[r0 * k : r1 * k] = rng.integers(1, 50, size=n * k).astype(np.float32)
            indptr[r0 : r1 + 1] = np.arange(r0, r1 + 1, dtype=np.int64) * k
        dataframe(f, "var", [f"GENE{i:05d}" for i in range(a.cols)])
    print(f"{a.out}: {a.rows} x {a.cols}, {nnz} non-zeros")


if __name__ == "__main__":
    main()
