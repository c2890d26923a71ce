"""The oracle's half for per-cell arrays (imported by verify.py): neighbor graphs from obsp and
embeddings from obsm, read from the sources with anndata and compared with what the archive holds.

  expected_graph(paths, choice)   the sources' obsp graph stacked block-diagonally (CSR, scipy's own
                                  CSC -> CSR conversion for a CSC graph; stored order kept otherwise)
  check_raw(archive, ...)         neighbor_*.npy (dtypes from dtypes.json) and obsm/<KEY>.npy read with numpy
  bionemo_graph(ds, rows)         in the bionemo 0.1.3 child: get_neighbor_indices/weights_for_cell per row
  judge_bionemo(...)              those against the expected graph, weights in the stored dtype
"""

import os

import h5py
import numpy as np
import scipy.sparse as sp

DEFAULT_KEY = "next_cell_ids"


class CellMismatch(Exception):
    """The archive's neighbors or obsm differ from the sources."""


def read_elem(path, name):
    import anndata as ad

    with h5py.File(path, "r") as f:
        return ad.io.read_elem(f[name]) if name in f else None


def members(path, group):
    with h5py.File(path, "r") as f:
        return sorted(f[group].keys()) if group in f else []


def graph_key(paths, choice):
    """The obsp key the archive should hold (None: no graph), by the --neighbors contract."""
    if choice == "none":
        return None
    if choice == "auto":
        return DEFAULT_KEY if any(DEFAULT_KEY in members(p, "obsp") for p in paths) else None
    return choice


def expected_graph(paths, choice):
    """(key, indptr int64, indices int64 global rows, values in the stored dtype) or None."""
    key = graph_key(paths, choice)
    if key is None:
        return None
    ptrs, idx, vals, row0, nnz0 = [np.zeros(1, np.int64)], [], [], 0, 0
    for p in paths:
        g = read_elem(p, f"obsp/{key}")
        m = g.tocsr() if sp.issparse(g) and g.format == "csc" else sp.csr_matrix(g)
        ptrs.append(m.indptr[1:].astype(np.int64) + nnz0)
        idx.append(m.indices.astype(np.int64) + row0)
        vals.append(m.data)
        row0 += m.shape[0]
        nnz0 += m.nnz
    values = np.concatenate(vals)
    if values.dtype.kind == "i":  # SCDL has no signed types: the unsigned type of the same width
        values = values.astype(f"u{values.dtype.itemsize}")
    return key, np.concatenate(ptrs), np.concatenate(idx + [np.zeros(0, np.int64)]), values


def expected_obsm(paths, choice):
    """{key: stacked array in the source dtype} by the --obsm contract."""
    if choice == "none":
        return {}
    keys = members(paths[0], "obsm") if choice == "all" else choice.split(",")
    return {k: np.concatenate([np.asarray(read_elem(p, f"obsm/{k}")) for p in paths]) for k in keys}


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def check_graph_raw(archive, want):
    files = [os.path.join(archive, f) for f in ("neighbor_indptr.npy", "neighbor_indices.npy", "neighbor_values.npy")]
    if want is None:
        if any(os.path.exists(f) for f in files):
            raise CellMismatch("neighbor files exist although no graph was asked for or present")
        return "no neighbors (as expected)"
    import json

    with open(os.path.join(archive, "dtypes.json")) as fh:
        dtypes = json.load(fh)
    key, indptr, indices, values = want
    got = [np.fromfile(f, dtype=dtypes.get(os.path.basename(f), d))
           for f, d in zip(files, ("uint64", "uint32", "float32"))]
    if not np.array_equal(got[0].astype(np.int64), indptr):
        raise CellMismatch(f"neighbor_indptr.npy {got[0][:8]} != expected {indptr[:8]}")
    if not np.array_equal(got[1].astype(np.int64), indices):
        r = int(np.flatnonzero(got[1].astype(np.int64) != indices)[0]) if len(got[1]) == len(indices) else -1
        raise CellMismatch(f"neighbor_indices.npy differs (first at position {r})")
    if not same(got[2], values):
        raise CellMismatch(f"neighbor_values.npy: {got[2].dtype} {got[2][:5]} != expected {values.dtype} {values[:5]}")
    return f"neighbors '{key}' {len(indices)} edges ({values.dtype}) as stored"


def check_obsm_raw(archive, want):
    d = os.path.join(archive, "obsm")
    # (through the mount, obsm/ also holds a directory per key: only the .npy files are the archive's)
    have = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".npy")) if os.path.isdir(d) else []
    if have != sorted(want):
        raise CellMismatch(f"obsm/ holds {have}, expected {sorted(want)}")
    for k, w in want.items():
        got = np.load(os.path.join(d, f"{k}.npy"), mmap_mode="r")
        if not same(np.asarray(got), w):
            raise CellMismatch(f"obsm/{k}.npy: {got.dtype} {got.shape} differs from the sources' {w.dtype} {w.shape}")
    return "obsm " + (", ".join(f"{k} {w.dtype} {w.shape}" for k, w in sorted(want.items())) or "none")


def check_raw(archive, paths, neighbors, obsm):
    return ", ".join([check_graph_raw(archive, expected_graph(paths, neighbors)),
                      check_obsm_raw(archive, expected_obsm(paths, obsm))])


def bionemo_graph(archive, key, rows):
    """Runs in the bionemo 0.1.3 child: the archive opened with load_neighbors=True, neighbor_key=key;
    per row its neighbor indices and weights as bionemo returns them."""
    from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset

    ds = SingleCellMemMapDataset(archive, load_neighbors=True, neighbor_key=key)
    ind = [np.asarray(ds.get_neighbor_indices_for_cell(int(r))) for r in rows]
    wts = [np.asarray(ds.get_neighbor_weights_for_cell(int(r))) for r in rows]
    lens = np.array([len(i) for i in ind], np.int64)
    return {"n_lens": lens, "n_indices": np.concatenate(ind + [np.zeros(0, np.int64)]).astype(np.int64),
            "n_values": np.concatenate(wts) if wts else np.zeros(0)}


def judge_bionemo(got, want, rows):
    """got: the npz of bionemo_graph; want: expected_graph."""
    _, indptr, indices, values = want
    lens = indptr[rows + 1] - indptr[rows]
    if not np.array_equal(got["n_lens"], lens):
        r = rows[int(np.flatnonzero(got["n_lens"] != lens)[0])]
        raise CellMismatch(f"row {r}: get_neighbor_indices_for_cell gives {got['n_lens'][rows == r]} neighbors")
    take = np.concatenate([np.arange(indptr[r], indptr[r + 1]) for r in rows] + [np.zeros(0, np.int64)]).astype(np.int64)
    if not np.array_equal(got["n_indices"], indices[take]):
        raise CellMismatch("get_neighbor_indices_for_cell differs from the source graph")
    if not same(got["n_values"], values[take]):
        raise CellMismatch(f"get_neighbor_weights_for_cell: {got['n_values'].dtype} {got['n_values'][:4]} "
                           f"!= expected {values.dtype} {values[take][:4]}")
    return f", neighbors of {len(rows)} rows via get_neighbor_indices/weights_for_cell ({values.dtype})"
