#!/usr/bin/env python3
"""Independent oracle: does an SCDL archive hold exactly the matrix of its .h5ad source(s)?

    PY=$(scripts/test-env.sh)
    "$PY" tests/oracle/verify.py ARCHIVE SOURCE [SOURCE...] [--matrix auto|X|raw|layers/NAME]
                                 [--readers raw,0.0.5,0.1.3] [--data-dtype DTYPE|auto]
                                 [--index-dtypes narrow|wide] [--obs all|none|COL,...]
                                 [--neighbors auto|none|KEY] [--obsm all|none|KEY,...]

SOURCE is an .h5ad file or a directory (every *.h5ad below it, sorted by path); the rows of all sources are
stacked in order. The expected matrix of each source is read with anndata (h5py for layouts anndata cannot
read) and kept as stored: explicit zeros of sparse sources stay, dense sources lose their zeros, CSC is
converted to CSR. auto = raw.X if the file has .raw, else X. With --data-dtype the expected values are the
source values cast to that dtype, and dtypes.json must name it; --data-dtype auto expects the smallest of
uint8, uint16, float16, uint32, float32, uint64, float64 that holds every source value exactly (found here
from the source values). Otherwise values must be equal exactly (compared as float64, NaN == NaN).
Index dtypes (dtypes.json, and the arrays read in them): narrow (default) = bionemo-scdl 0.1.3's rule, the
smallest unsigned type holding the largest column index (widest source - 1) and the number of values (for
a dense source: rows x columns, the most it can hold); wide = uint32 / uint64.

Per-cell arrays (tests/oracle/cell_arrays.py): the obsp graph --neighbors names (auto: next_cell_ids when
a source has it) stacked block-diagonally, and the obsm keys --obsm names, read from the sources with
anndata; the raw reader compares neighbor_*.npy and obsm/<KEY>.npy exactly (dtypes too), bionemo 0.1.3
loads the archive with load_neighbors=True, neighbor_key=KEY and its per-cell indices and weights must
be the source's, in stored order and dtype.

Readers:
  raw     the archive's files read directly, by the contract scdl-fs writes (see check_raw).
  0.0.5   bionemo-scdl 0.0.5's SingleCellMemMapDataset(ARCHIVE) in a subprocess   } on a temporary copy:
  0.1.3   bionemo-scdl 0.1.3's SingleCellMemMapDataset(ARCHIVE) in a subprocess   } bionemo opens with r+
Every row is compared (bionemo readers: all rows up to 20,000, else a fixed sample). Rows are compared
sorted by column; a change of the stored column order is reported, not failed.

Prints one line per reader ("raw: PASS ...", "0.1.3: FAIL row 17: ...") and a final line.
Exit 0 if every reader passes (a bionemo reader may be UNSUPPORTED on an empty archive), 1 on a mismatch,
2 on a usage or environment error.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_STUB = os.path.join(HERE, "torch_stub")

sys.path.insert(0, HERE)
from venv_switch import DEFAULT_VENV, ensure  # noqa: E402

if __name__ == "__main__":
    ensure("verify", ["anndata"])

import numpy as np  # noqa: E402

import cell_arrays  # noqa: E402

BIONEMO_VERSIONS = ("0.0.5", "0.1.3")
BIONEMO_ALL_ROWS_LIMIT = 20_000
BIONEMO_SAMPLE = 5_000
WIDE_INDEX_DTYPES = {"col_ptr.npy": "uint32", "row_ptr.npy": "uint64"}
# --data-dtype auto: smaller first, at equal size the integer type first
AUTO_CANDIDATES = ("uint8", "uint16", "float16", "uint32", "float32", "uint64", "float64")


class Mismatch(Exception):
    """The archive differs from the sources (message says where)."""


def die(msg):
    """A usage or environment error (not a verdict on the archive): exit 2."""
    print(f"verify: {msg}", file=sys.stderr)
    sys.exit(2)


def venv_dir():
    if os.environ.get("SCDL_FS_TEST_VENV"):
        return os.environ["SCDL_FS_TEST_VENV"]
    if os.path.isdir(os.path.join(sys.prefix, "bionemo-" + BIONEMO_VERSIONS[0])):
        return sys.prefix
    return DEFAULT_VENV


def as_strings(values):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


# =========================================================================================== sources
class Source:
    """One source's matrix as CSR arrays (as stored) plus its var ids."""

    def __init__(self, path, which, indptr, indices, data, n_vars, ids, reader, dense=False):
        self.path, self.which, self.reader, self.dense = path, which, reader, dense
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.data = np.asarray(data)  # source dtype kept
        self.n_rows, self.n_vars = len(self.indptr) - 1, int(n_vars)
        self.ids = as_strings(ids)
        if len(self.ids) != self.n_vars:
            raise ValueError(f"{path}: {len(self.ids)} var ids for {self.n_vars} columns")
        self.obs = None  # pandas DataFrame of the cells, when it could be read


def legacy_obs_index_only(path, obs):
    """A pre-0.7 file's obs is one compound dataset: by the contract (docs/FORMAT.md) only its index is
    carried over, as for var."""
    import h5py

    with h5py.File(path, "r") as f:
        legacy = "obs" in f and isinstance(f["obs"], h5py.Dataset)
    return obs[[]] if legacy and obs is not None else obs


def read_obs(path):
    """The source's obs as anndata reads it (None when anndata cannot read the file's obs)."""
    import anndata as ad
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "obs" not in f:
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obs = ad.io.read_elem(f["obs"])
    except Exception:  # noqa: BLE001  legacy layouts: obs is not checked
        return None
    return legacy_obs_index_only(path, obs)


def list_sources(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(
                os.path.join(d, f) for d, _, files in os.walk(p) for f in files if f.endswith(".h5ad")
            )
            if not found:
                die(f"no *.h5ad under {p}")
            out.extend(found)
        elif os.path.isfile(p):
            out.append(p)
        else:
            die(f"no such source: {p}")
    return out


def csr_arrays(M):
    """(indptr, indices, data, n_cols) of a scipy sparse matrix or dense array, structure as stored."""
    import scipy.sparse as sp

    if sp.issparse(M):
        if M.format == "csr":
            return M.indptr, M.indices, M.data, M.shape[1]
        M = M.tocsr()  # CSC -> CSR keeps explicit zeros
        return M.indptr, M.indices, M.data, M.shape[1]
    M = np.asarray(M)
    if M.ndim != 2:
        raise ValueError(f"matrix is {M.ndim}-dimensional")
    rows, cols = np.nonzero(M)  # row-major order; NaN counts as non-zero
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=M.shape[0]))])
    return indptr, cols, M[rows, cols], M.shape[1]


def read_with_anndata(path, matrix):
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ad.read_h5ad(path)
    if matrix == "auto":
        matrix = "raw" if a.raw is not None else "X"
    if matrix == "raw":
        if a.raw is None:
            raise ValueError(f"{path}: --matrix raw but the file has no .raw")
        M, ids = a.raw.X, a.raw.var_names
    elif matrix == "X":
        M, ids = a.X, a.var_names
    else:
        name = matrix.split("/", 1)[1]
        if name not in a.layers:
            raise ValueError(f"{path}: no layer {name!r}")
        M, ids = a.layers[name], a.var_names
    if M is None:
        raise ValueError(f"{path}: {matrix} is empty (None)")
    import scipy.sparse as sp

    indptr, indices, data, n = csr_arrays(M)
    which = "raw.X" if matrix == "raw" else matrix
    src = Source(path, which, indptr, indices, data, n, list(ids), "anndata", dense=not sp.issparse(M))
    src.obs = legacy_obs_index_only(path, a.obs)
    return src


def h5_var_ids(node):
    """Var ids of an h5 dataframe: a modern group (attr _index) or a legacy compound dataset ("index")."""
    import h5py

    if isinstance(node, h5py.Dataset):  # anndata < 0.7: structured array with an "index" field
        return as_strings(node["index"])
    idx = node[node.attrs.get("_index", "_index")]
    if isinstance(idx, h5py.Group):  # categorical index
        cats = as_strings(idx["categories"][...])
        return [cats[c] for c in idx["codes"][...]]
    return as_strings(idx[...])


def read_with_h5py(path, matrix):
    """Fallback for layouts anndata cannot read (e.g. float16 data)."""
    import h5py
    import scipy.sparse as sp

    with h5py.File(path, "r") as f:
        if matrix == "auto":
            matrix = "raw" if ("raw" in f or "raw.X" in f) else "X"
        if matrix == "raw":
            if "raw" in f:
                node, var = f["raw/X"], f["raw/var"]
            elif "raw.X" in f:
                node, var = f["raw.X"], f["raw.var"]
            else:
                raise ValueError(f"{path}: --matrix raw but the file has no raw")
        elif matrix == "X":
            node, var = f["X"], f["var"]
        else:
            node, var = f["layers"][matrix.split("/", 1)[1]], f["var"]
        ids = h5_var_ids(var)
        dense = isinstance(node, h5py.Dataset)
        if dense:
            indptr, indices, data, n = csr_arrays(node[...])
        else:
            fmt = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format", ""))
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            shape = tuple(int(x) for x in node.attrs.get("shape", node.attrs.get("h5sparse_shape")))
            data, indices, indptr = node["data"][...], node["indices"][...], node["indptr"][...]
            if fmt.startswith("csc"):
                # scipy has no float16: convert the structure with positions, then take the values
                pos = sp.csc_matrix((np.arange(1, len(data) + 1, dtype=np.float64), indices, indptr), shape=shape)
                csr = pos.tocsr()
                indptr, indices, data = csr.indptr, csr.indices, data[csr.data.astype(np.int64) - 1]
            elif not fmt.startswith("csr"):
                raise ValueError(f"{path}: unknown sparse format {fmt!r}")
            n = shape[1]
    which = "raw.X" if matrix == "raw" else matrix
    src = Source(path, which, indptr, indices, data, n, ids, "h5py", dense=dense)
    src.obs = read_obs(path)
    return src


def read_source(path, matrix):
    try:
        return read_with_anndata(path, matrix)
    except Exception as e:  # noqa: BLE001  anndata cannot read every layout
        try:
            return read_with_h5py(path, matrix)
        except Exception as e2:  # noqa: BLE001
            die(f"cannot read {path}: anndata: {e!r}; h5py: {e2!r}")


def smallest_uint(x):
    """bionemo-scdl 0.1.3's smallest_uint_dtype: the smallest unsigned type holding x (>= 0)."""
    for name, bits in (("uint8", 8), ("uint16", 16), ("uint32", 32), ("uint64", 64)):
        if x < (1 << bits):
            return name
    raise ValueError(f"{x} does not fit 64 bits")


def holds_exactly(values, dtype):
    """Whether every value converts to dtype and back unchanged (NaN == NaN), compared as Python numbers
    (int == float comparisons are exact in Python)."""
    t = np.dtype(dtype)
    for v in np.unique(values):  # NaNs may repeat in unique(): harmless
        x = v.item()
        if isinstance(x, float) and np.isnan(x):
            if t.kind != "f":
                return False
            continue
        if t.kind == "u":
            if isinstance(x, float) and not (np.isfinite(x) and x.is_integer()):
                return False
            if not (0 <= x <= np.iinfo(t).max):
                return False
        else:
            with np.errstate(all="ignore"):
                y = t.type(x).item()
            if y != x:
                return False
    return True


def auto_dtype(sources):
    values = [s.data for s in sources if len(s.data)]
    for name in AUTO_CANDIDATES:
        if all(holds_exactly(v, name) for v in values):
            return name
    raise ValueError("no archive dtype holds every value exactly")


class Expected:
    """All sources stacked: CSR with int64 indptr/indices and float64 values, and the dtypes the archive
    must declare (data_dtype None: whatever it declares)."""

    def __init__(self, sources, data_dtype=None, index_dtypes="narrow"):
        self.sources = sources
        self.n_rows = sum(s.n_rows for s in sources)
        if isinstance(data_dtype, str) and data_dtype == "auto":
            data_dtype = np.dtype(auto_dtype(sources))
        self.data_dtype = data_dtype
        ptrs, base = [np.zeros(1, np.int64)], 0
        for s in sources:
            ptrs.append(s.indptr[1:] + base)
            base += int(s.indptr[-1])
        self.indptr = np.concatenate(ptrs)
        self.indices = np.concatenate([s.indices for s in sources] + [np.zeros(0, np.int64)])
        vals = []
        for s in sources:
            v = s.data
            if data_dtype is not None:
                with np.errstate(all="ignore"):
                    v = v.astype(data_dtype)
            vals.append(v.astype(np.float64))
        self.data = np.concatenate(vals + [np.zeros(0)])
        self.nnz = len(self.data)
        self.n_vars_of_row = np.repeat([s.n_vars for s in sources], [s.n_rows for s in sources])
        if index_dtypes == "wide":
            self.index_dtypes = dict(WIDE_INDEX_DTYPES)
        else:
            most_values = sum(s.n_rows * s.n_vars if s.dense else len(s.data) for s in sources)
            widest = max([s.n_vars for s in sources] + [0])
            self.index_dtypes = {"col_ptr.npy": smallest_uint(max(widest - 1, 0)),
                                 "row_ptr.npy": smallest_uint(most_values)}


# =========================================================================================== comparison
def row_of(indptr):
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def same_values(a, b):
    return (a == b) | (np.isnan(a) & np.isnan(b))


def compare_csr(indptr, indices, data, exp, rows=None):
    """Compare CSR arrays (for `rows` of exp, or all) with exp. Rows are compared sorted by column.
    Raises Mismatch at the first differing row; returns the number of rows whose stored order differs."""
    e_ptr, e_ind, e_dat = exp.indptr, exp.indices, exp.data
    if rows is not None:  # restrict the expectation to the sampled rows
        lens = e_ptr[rows + 1] - e_ptr[rows]
        take = np.concatenate([np.arange(e_ptr[r], e_ptr[r + 1]) for r in rows] + [np.zeros(0, np.int64)])
        e_ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        e_ind, e_dat = e_ind[take], e_dat[take]
    else:
        rows = np.arange(exp.n_rows)
    g_ptr = np.asarray(indptr, dtype=np.int64)
    if len(g_ptr) != len(e_ptr):
        raise Mismatch(f"{len(g_ptr) - 1} rows, expected {len(e_ptr) - 1}")
    g_len, e_len = np.diff(g_ptr), np.diff(e_ptr)
    bad = np.flatnonzero(g_len != e_len)
    if bad.size:
        k = bad[0]
        raise Mismatch(f"row {rows[k]}: {g_len[k]} stored entries, expected {e_len[k]}")
    g_ind = np.asarray(indices).astype(np.int64)
    g_dat = np.asarray(data).astype(np.float64)
    rid = row_of(e_ptr)
    too_big = np.flatnonzero(g_ind >= exp.n_vars_of_row[rows][rid])
    if too_big.size:
        k = too_big[0]
        raise Mismatch(f"row {rows[rid[k]]}: column {g_ind[k]} >= n_vars {exp.n_vars_of_row[rows][rid[k]]}")
    go, eo = np.lexsort((g_ind, rid)), np.lexsort((e_ind, rid))
    ok = (g_ind[go] == e_ind[eo]) & same_values(g_dat[go], e_dat[eo])
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        r = rid[eo][k]
        s, e = e_ptr[r], e_ptr[r + 1]
        gi, gd = g_ind[go][s:e], g_dat[go][s:e]
        ei, ed = e_ind[eo][s:e], e_dat[eo][s:e]
        j = k - s
        raise Mismatch(
            f"row {rows[r]}: entry {j} (sorted by column): stored (col {gi[j]}, {float(gd[j])!r}), "
            f"expected (col {ei[j]}, {float(ed[j])!r}); row cols {gi[:8].tolist()} vs {ei[:8].tolist()}"
        )
    order_changed = np.unique(rid[g_ind != e_ind]).size
    return int(order_changed)


# =========================================================================================== reader "raw"
def load_json(path):
    with open(path) as fh:
        return json.load(fh)


def read_raw_array(path, dtype):
    dt = np.dtype(dtype).newbyteorder("<")
    size = os.path.getsize(path)
    if size % dt.itemsize:
        raise Mismatch(f"{os.path.basename(path)}: {size} bytes is not a multiple of {dt.itemsize} ({dtype})")
    return np.fromfile(path, dtype=dt)


def feature_blocks(archive):
    """[(parquet path, first_row, n_rows)] from features/, checking its files."""
    fdir = os.path.join(archive, "features")
    for f in ("cumulative_sum_index.npy", "labels.npy", "version.npy"):
        if not os.path.isfile(os.path.join(fdir, f)):
            raise Mismatch(f"features/{f} missing")
    csum = np.load(os.path.join(fdir, "cumulative_sum_index.npy"), allow_pickle=False)
    if csum.dtype != np.int64 or csum.ndim != 1 or len(csum) < 1 or csum[0] != -1:
        raise Mismatch(f"features/cumulative_sum_index.npy must be int64 [-1, end0, ...], got {csum.dtype} "
                       f"{csum[:5].tolist()}")
    labels = np.load(os.path.join(fdir, "labels.npy"), allow_pickle=False)
    np.load(os.path.join(fdir, "version.npy"), allow_pickle=False)
    n_blocks = len(csum) - 1
    if labels.dtype.kind != "U" or labels.shape != (n_blocks,):
        raise Mismatch(f"features/labels.npy: want {n_blocks} unicode labels, got {labels.dtype} {labels.shape}")
    names = sorted(f for f in os.listdir(fdir) if f.endswith(".parquet"))
    nums = [re.fullmatch(r"dataframe_(\d+)\.parquet", f) for f in names]
    if None in nums or [int(m.group(1)) for m in nums] != list(range(n_blocks)):
        raise Mismatch(f"features/: want dataframe_<i>.parquet for i in 0..{n_blocks - 1} in sorted order "
                       f"(zero-padded), got {names[:6]}")
    ends = [max(int(c), 0) for c in csum]
    if any(b < a for a, b in zip(ends, ends[1:])):
        raise Mismatch(f"features/cumulative_sum_index.npy decreases: {csum.tolist()[:10]}")
    return [(os.path.join(fdir, names[i]), ends[i], ends[i + 1] - ends[i]) for i in range(n_blocks)]


def check_block(path, src_group):
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    src = src_group[0]
    if table.num_rows != src.n_vars:
        raise Mismatch(f"{os.path.basename(path)}: {table.num_rows} rows, source {src.path} has {src.n_vars} vars")
    for name in table.column_names:
        if as_strings(table.column(name).to_pylist()) == src.ids:
            return name
    raise Mismatch(f"{os.path.basename(path)}: no column equals the var ids of {src.path} "
                   f"({src.ids[:3]}...); columns {table.column_names}")


def match_blocks(blocks, sources):
    """Assign consecutive sources to each block: one source per block, or several with identical var ids.
    0-row sources may have a 0-row block of their own or none. Returns [(block, [sources])]."""
    out, j = [], 0
    for bi, (path, first, n) in enumerate(blocks):
        while j < len(sources) and sources[j].n_rows == 0 and n > 0:
            j += 1  # a 0-row source left out
        if j >= len(sources):
            raise Mismatch(f"feature block {bi} (rows {first}..{first + n}) has no source left")
        group, rows = [sources[j]], sources[j].n_rows
        j += 1
        while rows < n and j < len(sources) and (sources[j].n_rows == 0 or sources[j].ids == group[0].ids):
            if sources[j].n_rows:
                group.append(sources[j])
            rows += sources[j].n_rows
            j += 1
        if rows != n:
            raise Mismatch(f"feature block {bi} covers {n} rows from row {first}; its source(s) "
                           f"{[s.path for s in group]} give {rows} (blocks merge only sources with identical var)")
        out.append(((path, first, n), group))
    while j < len(sources) and sources[j].n_rows == 0:
        j += 1
    if j != len(sources):
        raise Mismatch(f"sources from {sources[j].path} on are not covered by a feature block")
    return out


# =========================================================================================== obs
def norm(v):
    """A value as compared: missing (None, NaN, pd.NA) -> None, numbers -> float, bytes -> str."""
    import pandas as pd

    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return None if np.isnan(v) else float(v)
    return str(v)


def expected_obs_columns(obs, choice):
    """[(name, values)] of the obs the archive should keep for one source, by the contract: the index
    first, as a column named after it (`_index` when unnamed; suffixed `_index` while it clashes with a
    column, left out if a column of that name already holds it), then the chosen columns in order."""
    name = obs.index.name if obs.index.name not in (None, "", "_index", "index") else "_index"
    index = [norm(v) for v in obs.index]
    cols = list(obs.columns) if choice == "all" else [c for c in choice.split(",") if c in obs.columns]
    out = []
    if not any(c == name and [norm(v) for v in obs[c]] == index for c in cols):
        while name in obs.columns:
            name += "_index"
        out.append((name, index))
    for c in cols:
        out.append((str(c), [norm(v) for v in obs[c].astype(object)]))
    return out


def expected_obs_rows(sources, choice):
    """Per row of the archive: [(column, value)], or None when a source's obs could not be read."""
    rows = []
    for s in sources:
        if s.obs is None:
            return None
        cols = expected_obs_columns(s.obs, choice)
        for i in range(s.n_rows):
            rows.append([(n, v[i]) for n, v in cols])
    return rows


def check_obs_raw(archive, exp, choice):
    """obs_features/ read with pyarrow: a feature-index layout (cumulative_sum_index.npy from -1, labels,
    version, dataframe_<i>.parquet) whose concatenated rows are the sources' obs rows."""
    import pyarrow.parquet as pq

    odir = os.path.join(archive, "obs_features")
    if choice == "none":
        if os.path.exists(odir):
            raise Mismatch("obs_features/ exists although --obs none")
        return "no obs (as asked)"
    want = expected_obs_rows(exp.sources, choice)
    if want is None:
        return "obs not checked (a source's obs is not readable by anndata)"
    if not os.path.isdir(odir):
        raise Mismatch("obs_features/ missing")
    csum = np.load(os.path.join(odir, "cumulative_sum_index.npy"), allow_pickle=False)
    labels = np.load(os.path.join(odir, "labels.npy"), allow_pickle=False)
    np.load(os.path.join(odir, "version.npy"), allow_pickle=False)
    names = sorted(f for f in os.listdir(odir) if f.endswith(".parquet"))
    if csum.dtype != np.int64 or csum[0] != -1 or len(csum) != len(names) + 1 or labels.shape != (len(names),):
        raise Mismatch(f"obs_features/: cumulative_sum_index {csum.tolist()[:6]}, {len(names)} parquet files, "
                       f"labels {labels.shape}")
    got = []
    for i, f in enumerate(names):
        t = pq.read_table(os.path.join(odir, f))
        if t.num_rows != int(csum[i + 1]) - max(int(csum[i]), 0):
            raise Mismatch(f"obs_features/{f}: {t.num_rows} rows, cumulative_sum_index says "
                           f"{int(csum[i + 1]) - max(int(csum[i]), 0)}")
        cols = {c: t.column(c).to_pylist() for c in t.column_names}
        for r in range(t.num_rows):
            got.append([(c, norm(cols[c][r])) for c in t.column_names])
    if len(got) != len(want):
        raise Mismatch(f"obs_features/ has {len(got)} rows, expected {len(want)}")
    for r, (g, w) in enumerate(zip(got, want)):
        if g != w:
            raise Mismatch(f"obs row {r}: {g[:6]} != expected {w[:6]}")
    n_cols = sorted({len(w) for w in want})
    return f"obs {len(got)} rows x {'/'.join(map(str, n_cols))} columns in {len(names)} block(s)"


def check_raw(archive, exp, obs_choice="all"):
    """Reader 'raw': headerless little-endian arrays + dtypes.json, metadata.json, version.json, features/."""
    for f in ("data.npy", "col_ptr.npy", "row_ptr.npy", "dtypes.json", "metadata.json", "version.json", "features"):
        if not os.path.exists(os.path.join(archive, f)):
            raise Mismatch(f"{f} missing")
    dtypes = load_json(os.path.join(archive, "dtypes.json"))
    for k, want in exp.index_dtypes.items():
        if dtypes.get(k) != want:
            raise Mismatch(f"dtypes.json: {k} is {dtypes.get(k)!r}, expected {want!r}")
    try:
        data_dtype = str(np.dtype(dtypes["data.npy"]))
    except (KeyError, TypeError) as e:
        raise Mismatch(f"dtypes.json: no usable data.npy dtype ({e!r})") from None
    if exp.data_dtype is not None and data_dtype != str(exp.data_dtype):
        raise Mismatch(f"dtypes.json: data.npy is {data_dtype}, expected {exp.data_dtype}")
    meta = load_json(os.path.join(archive, "metadata.json"))
    if meta.get("num_rows") != exp.n_rows:
        raise Mismatch(f"metadata.json num_rows {meta.get('num_rows')!r}, expected {exp.n_rows}")
    load_json(os.path.join(archive, "version.json"))
    with open(os.path.join(archive, "data.npy"), "rb") as fh:
        if fh.read(6) == b"\x93NUMPY":
            raise Mismatch("data.npy starts with an npy header; the contract is raw values")
    data = read_raw_array(os.path.join(archive, "data.npy"), data_dtype)
    cols = read_raw_array(os.path.join(archive, "col_ptr.npy"), exp.index_dtypes["col_ptr.npy"])
    ptr = read_raw_array(os.path.join(archive, "row_ptr.npy"), exp.index_dtypes["row_ptr.npy"])
    if len(ptr) != exp.n_rows + 1:
        raise Mismatch(f"row_ptr.npy has {len(ptr)} entries, expected num_rows+1 = {exp.n_rows + 1}")
    if len(data) != len(cols) or int(ptr[-1]) != len(data) or ptr[0] != 0:
        raise Mismatch(f"row_ptr [0]={ptr[0]} [-1]={ptr[-1]}, data.npy {len(data)} values, col_ptr.npy {len(cols)}")
    if not np.array_equal(ptr.astype(np.int64), exp.indptr):
        r = int(np.flatnonzero(ptr.astype(np.int64) != exp.indptr)[0])
        raise Mismatch(f"row_ptr[{r}] = {ptr[r]}, expected {exp.indptr[r]}")
    try:
        changed = compare_csr(ptr, cols, data, exp)
    except Mismatch as m:
        hint = ""
        if data_dtype != str(exp.sources[0].data.dtype):
            hint = f" (archive data is {data_dtype}, source {exp.sources[0].data.dtype}; see --data-dtype)"
        raise Mismatch(f"{m}{hint}") from None
    groups = match_blocks(feature_blocks(archive), exp.sources)
    id_cols = {check_block(path, group) for (path, _, _), group in groups}
    notes = [f"{exp.n_rows} rows", f"{exp.nnz} values ({data_dtype})",
             f"col_ptr {exp.index_dtypes['col_ptr.npy']}, row_ptr {exp.index_dtypes['row_ptr.npy']}",
             f"{len(groups)} feature block(s), ids in column {'/'.join(sorted(id_cols)) or '-'}"]
    if changed:
        notes.append(f"column order differs from the source in {changed} row(s) (compared sorted)")
    if obs_choice is not None:  # None: obs not checked (a mount that does not list obs_features/)
        notes.append(check_obs_raw(archive, exp, obs_choice))
    return ", ".join(notes)


# =========================================================================================== bionemo readers
def bionemo_rows(n_rows):
    """Rows the bionemo readers compare: all, or a fixed sample plus the first and last row."""
    if n_rows <= BIONEMO_ALL_ROWS_LIMIT:
        return np.arange(n_rows, dtype=np.int64), f"all {n_rows} rows"
    pick = np.random.default_rng(0).choice(n_rows, BIONEMO_SAMPLE, replace=False)
    rows = np.unique(np.concatenate([pick, [0, n_rows - 1]]).astype(np.int64))
    return rows, f"{rows.size} sampled rows of {n_rows}"


class BionemoReader:
    """One bionemo-scdl version reading a temporary copy of the archive in its own process. Started before
    the sources are read, so that its (slow) imports overlap with ours."""

    def __init__(self, version, archive, tmp, obs_choice="all", graph=None):
        self.version, self.archive, self.obs_choice = version, archive, obs_choice
        # (key, expected graph) when bionemo 0.1.3 should load neighbors; the graph is filled in later
        self.graph = graph if version == "0.1.3" else None
        target = os.path.join(venv_dir(), f"bionemo-{version}")
        if not os.path.isdir(target):
            die(f"{target} missing; run scripts/test-env.sh")
        copy = os.path.join(tmp, f"archive-{version}")
        shutil.copytree(archive, copy)  # bionemo opens its memmaps r+: never hand it the original
        self.out = os.path.join(tmp, f"rows-{version}.npz")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--bionemo-child", target, copy, self.out]
            + ([self.graph[0]] if self.graph else []),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        )

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def result(self, exp):
        """(status, detail); raises Mismatch."""
        try:
            stdout, stderr = self.proc.communicate(timeout=1800)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Mismatch("reader process timed out") from None
        try:
            res = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise Mismatch(f"reader process failed (exit {self.proc.returncode}): {stderr.strip()[-1500:]}") from None
        try:
            return self.judge(exp, res)
        except Mismatch as m:
            raise Mismatch(f"{m}{self.dtype_hint()}") from None

    def judge(self, exp, res):
        if "open_error" in res:
            if exp.n_rows == 0 or exp.nnz == 0:
                return "UNSUPPORTED", f"bionemo cannot map an empty archive ({res['open_error']})"
            raise Mismatch(f"SingleCellMemMapDataset(ARCHIVE) failed: {res['open_error']}")
        if res["number_of_rows"] != exp.n_rows:
            raise Mismatch(f"number_of_rows() = {res['number_of_rows']}, expected {exp.n_rows}")
        if res["number_nonzero_values"] != exp.nnz:
            raise Mismatch(f"number_nonzero_values() = {res['number_nonzero_values']}, expected {exp.nnz}")
        if "row_error" in res:
            raise Mismatch(res["row_error"])
        rows, what = bionemo_rows(exp.n_rows)
        got = np.load(self.out)
        changed = compare_csr(got["indptr"], got["indices"], got["data"], exp, rows=rows)
        note = f", column order differs in {changed} row(s)" if changed else ""
        if "obs" in res:
            note += self.judge_obs(exp, rows, res["obs"])
        if self.graph:
            try:
                note += cell_arrays.judge_bionemo(got, self.graph[1], rows)
            except cell_arrays.CellMismatch as m:
                raise Mismatch(str(m)) from None
        return "PASS", f"{what} via get_row, number_of_rows {exp.n_rows}, number_nonzero_values {exp.nnz}{note}"

    def judge_obs(self, exp, rows, got):
        """bionemo 0.1.3's get_row(i, return_obs_features=True) values against the sources' obs."""
        if self.obs_choice == "none":
            if any(g for g in got):
                raise Mismatch("get_row returned obs features although --obs none")
            return ""
        want = expected_obs_rows(exp.sources, self.obs_choice)
        if want is None:
            return ", obs not checked"
        for r, g in zip(rows, got):
            w = [v for _, v in want[int(r)]]
            if g != w:
                raise Mismatch(f"row {int(r)}: get_row obs features {g[:6]} != expected {w[:6]}")
        return f", obs features of {len(got)} rows via get_row(return_obs_features=True)"

    def dtype_hint(self):
        try:
            dt = load_json(os.path.join(self.archive, "dtypes.json")).get("data.npy")
        except (OSError, ValueError):
            return ""
        if self.version != "0.1.3" or dt in (None, "float32"):
            return ""
        if dt.startswith("int"):
            return f" (hint: bionemo 0.1.3 takes dtypes from header.sch, which has no signed integers; data is {dt})"
        if not os.path.exists(os.path.join(self.archive, "header.sch")):
            return f" (hint: bionemo 0.1.3 ignores dtypes.json; data.npy is {dt}, but without header.sch it reads float32)"
        return ""


def bionemo_child(target, archive, out, neighbor_key=None):
    """Runs in its own process: open the archive with one bionemo-scdl version and read its rows into `out`."""
    sys.path[:0] = [target, TORCH_STUB]
    warnings.simplefilter("ignore")
    res = {}
    try:
        from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset

        ds = SingleCellMemMapDataset(archive)
        res["number_of_rows"] = int(ds.number_of_rows())
        res["number_nonzero_values"] = int(ds.number_nonzero_values())
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"open_error": f"{type(e).__name__}: {e}"[:500]}))
        return
    ptr, ind, dat = [0], [], []
    obs = []
    # 0.1.3 keeps obs (0.0.5 has no such thing); without obs_features/ its lookup raises.
    with_obs = hasattr(ds, "obs_features") and os.path.isdir(os.path.join(archive, "obs_features"))
    r = None
    try:
        for r in bionemo_rows(res["number_of_rows"])[0]:
            # 0.0.5: get_row -> ((values, cols), features); 0.1.3: ((values, cols), var_features, obs_features)
            if with_obs:
                got = ds.get_row(int(r), return_obs_features=True)
                obs.append([norm(v) for v in (got[2] or [])])
            values, cols = ds.get_row(int(r))[0]
            ind.append(np.asarray(cols).astype(np.int64))
            dat.append(np.asarray(values).astype(np.float64))
            ptr.append(ptr[-1] + len(values))
    except Exception as e:  # noqa: BLE001
        res["row_error"] = f"row {r}: get_row raised {type(e).__name__}: {e}"[:500]
    graph = {}
    if neighbor_key is not None and "row_error" not in res:
        try:
            graph = cell_arrays.bionemo_graph(archive, neighbor_key, bionemo_rows(res["number_of_rows"])[0])
        except Exception as e:  # noqa: BLE001
            res["row_error"] = f"load_neighbors=True, neighbor_key={neighbor_key!r}: {type(e).__name__}: {e}"[:500]
    np.savez(out, indptr=np.asarray(ptr, np.int64), indices=np.concatenate(ind + [np.zeros(0, np.int64)]),
             data=np.concatenate(dat + [np.zeros(0)]), **graph)
    if with_obs and "row_error" not in res:
        res["obs"] = obs
    print(json.dumps(res))


# =========================================================================================== main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--bionemo-child"]:
        bionemo_child(*argv[1:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive")
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--matrix", default="auto")
    ap.add_argument("--readers", default="raw," + ",".join(BIONEMO_VERSIONS))
    ap.add_argument("--data-dtype", default=None)
    ap.add_argument("--index-dtypes", choices=("narrow", "wide"), default="narrow")
    ap.add_argument("--obs", default="all", help="the --obs the archive was converted with: all, none or COL,...")
    ap.add_argument("--neighbors", default="auto", help="the --neighbors it was converted with: auto, none or KEY")
    ap.add_argument("--obsm", default="all", help="the --obsm it was converted with: all, none or KEY,...")
    args = ap.parse_args(argv)
    if args.matrix not in ("auto", "X", "raw") and not re.fullmatch(r"layers/.+", args.matrix):
        ap.error(f"--matrix must be auto, X, raw or layers/NAME, not {args.matrix!r}")
    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    unknown = [r for r in readers if r not in ("raw",) + BIONEMO_VERSIONS]
    if unknown or not readers:
        ap.error(f"unknown reader(s) {unknown}; choose from raw,{','.join(BIONEMO_VERSIONS)}")
    data_dtype = args.data_dtype if args.data_dtype in (None, "auto") else np.dtype(args.data_dtype)
    if not os.path.isdir(args.archive):
        print(f"verify: FAIL: archive {args.archive} is not a directory")
        return 1
    source_paths = list_sources(args.sources)

    failed = []
    with tempfile.TemporaryDirectory(prefix="scdl-verify-") as tmp:
        bionemo = {}
        try:
            key = cell_arrays.graph_key(source_paths, args.neighbors)
            graph = [key, None] if key else None
            for r in readers:
                if r != "raw":
                    bionemo[r] = BionemoReader(r, args.archive, tmp, args.obs, graph)
            if graph:
                graph[1] = cell_arrays.expected_graph(source_paths, args.neighbors)
            exp = Expected([read_source(p, args.matrix) for p in source_paths], data_dtype, args.index_dtypes)
            for reader in readers:
                try:
                    if reader == "raw":
                        status, detail = "PASS", check_raw(args.archive, exp, args.obs)
                        detail += ", " + cell_arrays.check_raw(args.archive, source_paths, args.neighbors, args.obsm)
                    else:
                        status, detail = bionemo[reader].result(exp)
                except Mismatch as m:
                    status, detail = "FAIL", str(m)
                except Exception as e:  # noqa: BLE001  an unreadable archive file is a failure too
                    status, detail = "FAIL", f"{type(e).__name__}: {e}"
                if status == "FAIL":
                    failed.append(reader)
                print(f"{reader}: {status} {detail}", flush=True)
        finally:
            for b in bionemo.values():
                b.kill()
    what = f"{len(source_paths)} source(s), matrix {args.matrix}, {exp.n_rows} rows, {exp.nnz} values"
    if failed:
        print(f"verify: FAIL ({', '.join(failed)}) {what}")
        return 1
    print(f"verify: PASS ({', '.join(readers)}) {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
