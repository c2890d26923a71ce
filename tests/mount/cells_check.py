"""read_check.py's "cells" group: a dataset's per-cell metadata read through the mount with numpy,
pandas and pyarrow, compared with the sources read by anndata (tests/oracle/cell_arrays.py and
verify.py's obs expectation; the archive converted with the default --obs all, --neighbors auto,
--obsm all).

  obs/<i>.json          json.load: {column: value} equal to the source's obs row (index under its kept
                        name; categoricals as their category; missing and NaN as null)
  obs/<a>-<b>.parquet   pandas.read_parquet and pyarrow.parquet.read_table: those rows
  neighbors/<i>.npz     np.load: indices int64 (global rows) and values (the stored dtype) of row i
  obsm/<KEY>/<i>.npy    np.load: row i (1-D), obsm/<KEY>/<a>-<b>.npy rows [a, b) (2-D), source dtype
  sizes                 os.path.getsize == bytes read, for each of those files
  listing               NAME/ lists obs, obs_features, neighbors, obsm (those present); obs/, neighbors/
                        and obsm/<KEY>/ list 0..n-1 in order (first names only past 10,000 rows)
"""

import json
import os

import numpy as np

import cell_arrays as C
import verify as V


class CellsFail(Exception):
    pass


def read_bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def sized(path, sizes):
    data = read_bytes(path)
    if os.path.getsize(path) != len(data):
        raise CellsFail(f"{path}: getsize {os.path.getsize(path)} but {len(data)} bytes read")
    sizes.append(len(data))
    return data


def json_value(v):
    """A JSON value as V.norm compares obs values."""
    return None if v is None else V.norm(v)


def check_obs(root, rows, ranges, want, sizes):
    for r in rows:
        got = json.loads(sized(os.path.join(root, "obs", f"{r}.json"), sizes))
        w = want[int(r)]
        if list(got) != [n for n, _ in w] or [json_value(v) for v in got.values()] != [v for _, v in w]:
            raise CellsFail(f"obs/{r}.json {got} != expected {dict(w)}")
    import pandas as pd
    import pyarrow.parquet as pq

    for a, b in ranges:
        path = os.path.join(root, "obs", f"{a}-{b}.parquet")
        sized(path, sizes)
        for reader, table in (("pandas", pd.read_parquet(path)), ("pyarrow", pq.read_table(path).to_pandas())):
            if list(table.columns) != [n for n, _ in want[a]]:
                raise CellsFail(f"{reader} obs/{a}-{b}.parquet columns {list(table.columns)}")
            for k, row in enumerate(table.itertuples(index=False)):
                if [V.norm(v) for v in row] != [v for _, v in want[a + k]]:
                    raise CellsFail(f"{reader} obs/{a}-{b}.parquet row {a + k}: {list(row)} != {want[a + k]}")
    return f"obs of {len(rows)} rows as JSON, {len(ranges)} range(s) via pandas and pyarrow"


def check_graph(root, rows, graph, sizes):
    key, indptr, indices, values = graph
    for r in rows:
        with np.load(_file(os.path.join(root, "neighbors", f"{r}.npz"), sizes)) as z:
            s, e = indptr[r], indptr[r + 1]
            if z["indices"].dtype != np.int64 or not np.array_equal(z["indices"], indices[s:e]):
                raise CellsFail(f"neighbors/{r}.npz indices {z['indices']} != {indices[s:e]}")
            if not C.same(z["values"], values[s:e]):
                raise CellsFail(f"neighbors/{r}.npz values {z['values'].dtype} {z['values']} != {values[s:e]}")
    return f"neighbors '{key}' of {len(rows)} rows ({values.dtype})"


def _file(path, sizes):
    import io

    return io.BytesIO(sized(path, sizes))


def check_obsm(root, rows, ranges, obsm, sizes):
    for k, w in obsm.items():
        for r in rows:
            got = np.load(_file(os.path.join(root, "obsm", k, f"{r}.npy"), sizes))
            if not C.same(got, w[r]):
                raise CellsFail(f"obsm/{k}/{r}.npy {got.dtype} {got.shape} != {w.dtype} {w[r].shape}")
        for a, b in ranges:
            got = np.load(_file(os.path.join(root, "obsm", k, f"{a}-{b}.npy"), sizes))
            if not C.same(got, w[a:b]):
                raise CellsFail(f"obsm/{k}/{a}-{b}.npy {got.dtype} {got.shape} != {w.dtype} {w[a:b].shape}")
    return "obsm " + ", ".join(f"{k} {w.dtype} {w.shape[1:]}" for k, w in obsm.items())


def check_listing(root, n, expected):
    have = set(os.listdir(root))
    missing = [d for d in expected if d not in have]
    if missing:
        raise CellsFail(f"NAME/ does not list {missing}")
    for d, ext in (("obs", ".json"), ("neighbors", ".npz")):
        if d not in expected:
            continue
        names = [e.name for _, e in zip(range(min(n, 10)), os.scandir(os.path.join(root, d)))]
        if names != [f"{i}{ext}" for i in range(min(n, 10))]:
            raise CellsFail(f"{d}/ lists {names[:5]}...")
    return "listing " + ", ".join(expected)


def check(ctx):
    """The group: rows and ranges chosen by read_check's context."""
    root, exp = ctx.root, ctx.exp
    paths = [s.path for s in exp.sources]
    rows, _ = ctx.row_sample()
    rows = [int(r) for r in rows]
    ranges = [(a, b) for a, b, _ in ctx.choose_ranges()]
    sizes, notes, listed = [], [], []
    want = V.expected_obs_rows(exp.sources, "all")
    if want is not None and os.path.isdir(os.path.join(root, "obs")):
        obs_ranges = [(a, b) for a, b in ranges if b - a <= 1 << 16]
        notes.append(check_obs(root, rows, obs_ranges, want, sizes))
        listed += ["obs", "obs_features"]
    graph = C.expected_graph(paths, "auto")
    if graph is not None:
        notes.append(check_graph(root, rows, graph, sizes))
        listed.append("neighbors")
    elif os.path.exists(os.path.join(root, "neighbors")):
        raise CellsFail("neighbors/ exists but the sources have no graph under the default key")
    obsm = C.expected_obsm(paths, "all")
    if obsm:
        notes.append(check_obsm(root, rows, ranges, obsm, sizes))
        listed.append("obsm")
    notes.append(check_listing(root, exp.n_rows, listed))
    notes.append(f"{len(sizes)} file sizes exact")
    return "; ".join(notes)
