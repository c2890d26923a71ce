"""Copies a benchmark .h5ad and adds per-cell metadata training uses, for the conversion benchmark
with metadata (bench/convert.sh with CELLS=1):

  obs   ten columns: cell_type, donor, assay, batch, sex (categoricals; donor with missing values),
        n_genes, n_counts (int64), pct_mito, doublet_score (float64, some NaN), is_doublet (bool)
  obsp  next_cell_ids (bionemo-scdl's default neighbor key): a 15-nearest-neighbor graph, CSR, float32
        distances. The neighbors are drawn from a band of nearby rows (synthetic: no real kNN search
        over 200,000 cells), each row's 15 stored in distance order.
  obsm  X_pca: (rows, 50) float32

Written block by block with h5py (the matrix copied as stored), so it needs little memory.
Deterministic (seeded).

    python bench/add_cell_metadata.py IN.h5ad OUT.h5ad
"""
import argparse
import shutil

import h5py
import numpy as np

K, PCS, BLOCK = 15, 50, 20_000


def str_attr(obj, name, value):
    obj.attrs.create(name, value, dtype=h5py.string_dtype())


def enc(obj, kind, version):
    str_attr(obj, "encoding-type", kind)
    str_attr(obj, "encoding-version", version)


def categorical(obs, name, cats, codes):
    g = obs.create_group(name)
    enc(g, "categorical", "0.2.0")
    g.attrs["ordered"] = False
    g.create_dataset("categories", data=np.array(cats, dtype=object), dtype=h5py.string_dtype())
    g.create_dataset("codes", data=codes.astype(np.int8))


def add_obs(f, n, rng):
    obs = f["obs"]
    cols = []
    for name, cats in [("cell_type", [f"type{i}" for i in range(30)]), ("donor", [f"d{i}" for i in range(12)]),
                       ("assay", ["10x 3' v3", "10x 5' v2", "Smart-seq2"]), ("batch", [f"b{i}" for i in range(8)]),
                       ("sex", ["female", "male", "unknown"])]:
        codes = rng.integers(0, len(cats), n)
        if name == "donor":
            codes[::97] = -1
        categorical(obs, name, cats, codes)
        cols.append(name)
    for name, data in [("n_genes", rng.integers(200, 8000, n)), ("n_counts", rng.integers(500, 60000, n))]:
        enc(obs.create_dataset(name, data=data.astype(np.int64)), "array", "0.2.0")
        cols.append(name)
    for name in ("pct_mito", "doublet_score"):
        v = rng.random(n)
        v[::53] = np.nan
        enc(obs.create_dataset(name, data=v), "array", "0.2.0")
        cols.append(name)
    enc(obs.create_dataset("is_doublet", data=rng.random(n) < 0.05), "array", "0.2.0")
    cols.append("is_doublet")
    obs.attrs.create("column-order", np.array(cols, dtype=object), dtype=h5py.string_dtype())


def add_graph(f, n, rng):
    g = f.require_group("obsp").create_group("next_cell_ids")
    enc(g, "csr_matrix", "0.1.0")
    g.attrs["shape"] = np.array([n, n], dtype=np.int64)
    g.create_dataset("indptr", data=np.arange(0, n * K + 1, K, dtype=np.int64))
    ind = g.create_dataset("indices", shape=(n * K,), dtype=np.int32)
    dat = g.create_dataset("data", shape=(n * K,), dtype=np.float32)
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        rows = np.arange(a, b)[:, None]
        offs = rng.integers(1, 500, (b - a, K)) * rng.choice([-1, 1], (b - a, K))
        nb = (rows + offs) % n  # wrapped: every stored neighbor distinct
        dist = np.sort(rng.random((b - a, K)).astype(np.float32) * 10, axis=1)
        ind[a * K:b * K] = nb.ravel()
        dat[a * K:b * K] = dist.ravel()


def add_obsm(f, n, rng):
    m = f.require_group("obsm")
    enc(m, "dict", "0.1.0")
    d = m.create_dataset("X_pca", shape=(n, PCS), dtype=np.float32)
    enc(d, "array", "0.2.0")
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        d[a:b] = rng.standard_normal((b - a, PCS)).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    args = ap.parse_args()
    shutil.copyfile(args.input, args.output)
    rng = np.random.default_rng(13)
    with h5py.File(args.output, "r+") as f:
        n = int(f["X"].attrs["shape"][0])
        add_obs(f, n, rng)
        for group in ("obsp", "obsm"):
            if group in f:
                del f[group]
        add_graph(f, n, rng)
        add_obsm(f, n, rng)
        if "obsp" in f:
            enc(f["obsp"], "dict", "0.1.0")
    print(f"wrote {args.output}: {n} cells, 10 obs columns, a {K}-NN graph, X_pca ({n}, {PCS})")


if __name__ == "__main__":
    main()
