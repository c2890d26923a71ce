#!/usr/bin/env python3
"""Check a converted dataset through a mounted scdl-fs filesystem, with ordinary file reads only.

    PY=$(scripts/test-env.sh | tail -n 1)
    "$PY" tests/mount/read_check.py MNT NAME SOURCE [SOURCE...] [--matrix auto|X|raw|layers/NAME]
          [--data-dtype D] [--index-dtypes narrow|wide] [--samples N] [--seed S] [--wait SECONDS] [--bionemo]

MNT is the mount point, NAME the dataset (MNT/NAME/ is its directory), SOURCE the .h5ad file(s) or
directories it was made from, in row order. The expected matrix is built exactly as tests/oracle/verify.py
builds it (its loader is imported, not copied): sources stacked, explicit zeros kept, CSC/dense turned into
CSR, values compared as float64 with NaN == NaN; with --data-dtype the expected values are cast to D first.
col_ptr.npy/row_ptr.npy must have the index dtypes verify.py expects (--index-dtypes, default narrow).

Check groups (one output line each, "PASS group: detail" or "FAIL group: detail"):
  status    MNT/NAME/status.json: state "ready", rows_total == rows_done == the expected row count, no error
  archive   verify.py's raw reader on MNT/NAME: metadata.json, dtypes.json, version.json, features/ parquet,
            data.npy/col_ptr.npy/row_ptr.npy read with np.fromfile through the mount, obs_features/ with
            pyarrow, neighbor_*.npy and obsm/<KEY>.npy with numpy (tests/oracle/cell_arrays.py)
  memmap    the same three arrays through np.memmap(mode="r") (mmap through the mount)
  features  features/<k>.json for every block: first_row/num_rows/num_vars match the block partition (and
            features/cumulative_sum_index.npy), a column equals the block's var ids; features/<last+1>.json
            does not exist
  rows      rows/<i>.npy via np.load for every row (n_rows <= 200) or --samples random rows plus the first
            and last row of every block: 1-D, length num_vars of the row's block, archive dtype, values
  sizes     os.path.getsize == bytes read, for status.json, features/<k>.json, rows/<i>.npy, range files
  ranges    rows/<a>-<b>.npy for ranges inside one block (1 row, last row, a middle range, the full block
            when it has <= 8M cells): 2-D (b-a, num_vars), archive dtype, values
  missing   FileNotFoundError for rows/<n_rows>.npy, rows/abc.npy, rows/<n-1>-<n+1>.npy and (with >= 2
            blocks) a range crossing a block boundary
  csr       csr/<a>-<b>.npz for the same ranges: scipy.sparse.load_npz gives CSR of shape (b-a, num_vars)
            equal to the expected rows (zeros and entry order ignored, NaN == NaN); np.load(allow_pickle=False)
            reads it with members format/shape/data/indices/indptr
  listing   MNT/NAME lists status.json, data.npy, rows, csr, features; MNT/NAME/rows lists exactly
            0.npy..<n-1>.npy (n_rows <= 10000; else os.scandir's first 10 names are 0.npy..9.npy in order)
  cells     obs/<i>.json, obs/<a>-<b>.parquet, neighbors/<i>.npz, obsm/<KEY>/<i>.npy and <a>-<b>.npy
            read with json, pandas, pyarrow and numpy against the sources (tests/mount/cells_check.py)
  readonly  open(data.npy, "r+b") and creating MNT/NAME/new.txt fail (PermissionError / EROFS / EACCES)
  bionemo-0.1.3, bionemo-0.0.5 (with --bionemo): SingleCellMemMapDataset(MNT/NAME) in a subprocess with a
            read-only shim (bionemo asks for r+), get_row compared like verify.py does (all rows up to
            20,000, else a fixed sample); UNSUPPORTED (counted as a pass) for an archive without values

Exit status: 0 if every group passes, 1 otherwise, 2 on a usage or environment error.
"""

import argparse
import errno
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.normpath(os.path.join(HERE, "..", "oracle"))

sys.path.insert(0, ORACLE)
from venv_switch import ensure  # noqa: E402

if __name__ == "__main__":
    ensure("read_check", ["anndata", "scipy"])

import numpy as np  # noqa: E402

import verify as V  # noqa: E402  tests/oracle/verify.py: source loader, CSR comparison, bionemo reader
import cells_check  # noqa: E402  the "cells" group (per-cell metadata)

ALL_ROWS_LIMIT = 200  # every row is read when n_rows <= this
FULL_LISTING_LIMIT = 10_000  # rows/ is listed completely up to this many rows
FULL_BLOCK_MAX_CELLS = 8 * 1024 * 1024  # largest dense range read as "the full block"
MAX_BLOCKS_FOR_RANGES = 6  # ranges are taken from at most this many blocks (first, last, random others)
SIZE_CHECK_MAX = 60  # files whose getsize is compared with their content, per kind
BIONEMO_TIMEOUT = 1800


class Fail(Exception):
    """A check group failed (message says where)."""


# =========================================================================================== helpers
def read_bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def read_json(path):
    return json.loads(read_bytes(path))


def expect_missing(path):
    """None if `path` does not exist (FileNotFoundError on open and stat), else a description."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
        return f"{path} opens (first bytes {head!r})"
    except FileNotFoundError:
        pass
    except OSError as e:
        return f"{path}: open raised {type(e).__name__} errno {e.errno} ({e.strerror}), expected FileNotFoundError"
    try:
        os.stat(path)
        return f"{path}: open raised FileNotFoundError but stat succeeds"
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path}: stat raised {type(e).__name__} errno {e.errno}, expected FileNotFoundError"


def fmt_val(x):
    return repr(float(x))


def first_diff(got, want):
    """Index of the first element where got != want (float64, NaN == NaN), or None."""
    g = np.asarray(got).astype(np.float64).ravel()
    w = np.asarray(want).astype(np.float64).ravel()
    bad = np.flatnonzero(~V.same_values(g, w))
    return int(bad[0]) if bad.size else None


class Block:
    def __init__(self, k, first, n, n_vars):
        self.k, self.first, self.n, self.n_vars = k, first, n, n_vars

    @property
    def end(self):
        return self.first + self.n

    def __repr__(self):
        return f"block {self.k} rows [{self.first}, {self.end}) x {self.n_vars} vars"


class Ctx:
    """Everything the check groups share."""

    def __init__(self, args, exp):
        self.args, self.exp = args, exp
        self.mnt = args.mnt
        self.root = os.path.join(args.mnt, args.name)
        self.n = exp.n_rows
        self.rng = np.random.default_rng(args.seed)
        self.data_dtype = None  # the archive's data dtype, from dtypes.json (set by ensure_dtype)
        self.blocks = None  # [Block] with rows, from features/<k>.json or the sources (set by ensure_blocks)
        self.block_note = ""
        self.ranges = None

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    # ------------------------------------------------------------------------------ shared facts
    def ensure_dtype(self):
        if self.data_dtype is None:
            d = read_json(self.path("dtypes.json"))
            try:
                self.data_dtype = np.dtype(d["data.npy"])
            except (KeyError, TypeError) as e:
                raise Fail(f"dtypes.json has no usable data.npy dtype: {d!r} ({e!r})") from None
        return self.data_dtype

    def ensure_blocks(self):
        """Blocks with rows. From features/<k>.json when they are usable, else one per non-empty source."""
        if self.blocks is not None:
            return self.blocks
        try:
            blocks = [b for b in self.json_blocks() if b.n > 0]
            if sum(b.n for b in blocks) != self.n:
                raise Fail("features/<k>.json blocks do not cover the rows")
            self.blocks = blocks
        except Exception as e:  # noqa: BLE001
            self.blocks, first = [], 0
            for k, s in enumerate(self.exp.sources):
                if s.n_rows:
                    self.blocks.append(Block(k, first, s.n_rows, s.n_vars))
                first += s.n_rows
            self.block_note = f" (block partition taken from the sources: features/<k>.json unusable: {e})"
        return self.blocks

    def json_blocks(self):
        """Read features/0.json, 1.json, ... until FileNotFoundError. Returns [Block] (all, incl. 0-row)."""
        out, limit = [], len(self.exp.sources) + 1
        for k in range(limit + 1):
            p = self.path("features", f"{k}.json")
            try:
                raw = read_bytes(p)
            except FileNotFoundError:
                return out
            try:
                j = json.loads(raw)
            except ValueError as e:
                raise Fail(f"features/{k}.json is not JSON: {e}") from None
            if not isinstance(j, dict):
                raise Fail(f"features/{k}.json is {type(j).__name__}, not an object")
            for key in ("first_row", "num_rows", "num_vars"):
                if not isinstance(j.get(key), int) or isinstance(j.get(key), bool) or j[key] < 0:
                    raise Fail(f"features/{k}.json: {key} = {j.get(key)!r}, want a non-negative integer")
            b = Block(k, j["first_row"], j["num_rows"], j["num_vars"])
            b.json = j
            out.append(b)
        raise Fail(f"features/{limit}.json exists, but there are only {len(self.exp.sources)} source(s)")

    def block_of(self, row):
        for b in self.ensure_blocks():
            if b.first <= row < b.end:
                return b
        raise Fail(f"row {row} is in no block{self.block_note}")

    def row_sample(self):
        if self.n <= ALL_ROWS_LIMIT:
            return np.arange(self.n, dtype=np.int64), f"all {self.n} rows"
        k = min(self.args.samples, self.n)
        pick = self.rng.choice(self.n, size=k, replace=False).astype(np.int64)
        edges = [0, self.n - 1] + [x for b in self.ensure_blocks() for x in (b.first, b.end - 1)]
        rows = np.unique(np.concatenate([pick, np.asarray(edges, np.int64)]))
        return rows, f"{rows.size} rows ({k} random of {self.n}, seed {self.args.seed}, + first/last of each block)"

    def choose_ranges(self):
        """[(a, b, block)]: ranges inside one block. Deterministic for a given seed and block partition."""
        if self.ranges is None:
            self.ranges = choose_ranges(self.ensure_blocks(), self.args.seed)
        return self.ranges

    # ------------------------------------------------------------------------------ expectations
    def expected_dense(self, a, b, n_vars):
        e = self.exp
        s, t = int(e.indptr[a]), int(e.indptr[b])
        rid = V.row_of(e.indptr[a : b + 1] - s)
        out = np.zeros((b - a, n_vars), dtype=np.float64)
        out[rid, e.indices[s:t]] = e.data[s:t]
        return out

    def expected_csr(self, a, b, n_vars):
        import scipy.sparse as sp

        e = self.exp
        s, t = int(e.indptr[a]), int(e.indptr[b])
        return sp.csr_matrix(
            (e.data[s:t].copy(), e.indices[s:t].copy(), (e.indptr[a : b + 1] - s).copy()), shape=(b - a, n_vars)
        )


def choose_ranges(blocks, seed):
    """Ranges [a, b) inside single blocks: per chosen block a 1-row range at its start, its last row,
    a random middle range (<= 64 rows) and the full block (or its first rows, when it has > 8M cells)."""
    blocks = [b for b in blocks if b.n > 0]
    if not blocks:
        return []
    rng = np.random.default_rng(seed + 1)
    chosen = [0, len(blocks) - 1]
    if len(blocks) > 2:
        extra = rng.choice(np.arange(1, len(blocks) - 1), size=min(MAX_BLOCKS_FOR_RANGES - 2, len(blocks) - 2),
                           replace=False)
        chosen += [int(x) for x in extra]
    out = []
    for bi in sorted(set(chosen)):
        b = blocks[bi]
        rs = [(b.first, b.first + 1), (b.end - 1, b.end)]
        if b.n > 2:
            a = b.first + int(rng.integers(0, b.n - 1))
            rs.append((a, min(b.end, a + 1 + int(rng.integers(1, 64)))))
        full = max(1, min(b.n, FULL_BLOCK_MAX_CELLS // max(b.n_vars, 1)))
        rs.append((b.first, b.first + full))
        for r in rs:
            if (r[0], r[1], b) not in out:
                out.append((r[0], r[1], b))
    return out


# =========================================================================================== check groups
def check_status(ctx):
    p = ctx.path("status.json")
    deadline = time.time() + ctx.args.wait
    while True:
        try:
            st = read_json(p)
        except (FileNotFoundError, ValueError):  # not there yet, or caught mid-update
            if time.time() >= deadline:
                raise
            st = {}
        if st.get("state") in ("ready", "failed") or time.time() >= deadline:
            break
        time.sleep(0.2)
    problems = []
    if st.get("state") != "ready":
        problems.append(f"state {st.get('state')!r} (error {st.get('error')!r})")
    if st.get("rows_total") != ctx.n:
        problems.append(f"rows_total {st.get('rows_total')!r}, expected {ctx.n}")
    if st.get("rows_done") != st.get("rows_total"):
        problems.append(f"rows_done {st.get('rows_done')!r} != rows_total {st.get('rows_total')!r}")
    if st.get("error") is not None:
        problems.append(f"error {st.get('error')!r}")
    if problems:
        raise Fail("status.json: " + "; ".join(problems) + f" ({json.dumps(st)[:300]})")
    note = "" if st.get("name") == ctx.args.name else f"; note: name {st.get('name')!r}"
    return f"ready, rows_total {ctx.n}{note}"


def check_archive(ctx):
    try:
        detail = V.check_raw(ctx.root, ctx.exp, obs_choice="all")
        paths = [s.path for s in ctx.exp.sources]
        return detail + ", " + V.cell_arrays.check_raw(ctx.root, paths, "auto", "all")
    except (V.Mismatch, V.cell_arrays.CellMismatch) as m:
        raise Fail(str(m)) from None


def check_cells(ctx):
    try:
        return cells_check.check(ctx)
    except cells_check.CellsFail as m:
        raise Fail(str(m)) from None


def check_memmap(ctx):
    dt = ctx.ensure_dtype().newbyteorder("<")
    arrays = {}
    index = {name: np.dtype(d).newbyteorder("<") for name, d in ctx.exp.index_dtypes.items()}
    for name, dtype in (("data.npy", dt), ("col_ptr.npy", index["col_ptr.npy"]), ("row_ptr.npy", index["row_ptr.npy"])):
        p = ctx.path(name)
        size = os.path.getsize(p)
        if size % dtype.itemsize:
            raise Fail(f"{name}: {size} bytes is not a multiple of {dtype.itemsize}")
        if size == 0:  # numpy cannot map an empty file
            arrays[name] = np.zeros(0, dtype)
            continue
        arrays[name] = np.memmap(p, dtype=dtype, mode="r")
    ptr = arrays["row_ptr.npy"]
    if len(ptr) != ctx.n + 1:
        raise Fail(f"row_ptr.npy maps {len(ptr)} entries, expected {ctx.n + 1}")
    if int(ptr[-1]) != len(arrays["data.npy"]) or len(arrays["col_ptr.npy"]) != len(arrays["data.npy"]):
        raise Fail(f"row_ptr[-1] {int(ptr[-1])}, data {len(arrays['data.npy'])}, col_ptr {len(arrays['col_ptr.npy'])}")
    try:
        V.compare_csr(np.asarray(ptr), np.asarray(arrays["col_ptr.npy"]), np.asarray(arrays["data.npy"]), ctx.exp)
    except V.Mismatch as m:
        raise Fail(f"through np.memmap: {m}") from None
    return f"np.memmap(mode='r') of data.npy ({dt}), col_ptr.npy, row_ptr.npy equals the expected CSR ({ctx.exp.nnz} values)"


def check_features(ctx):
    blocks = ctx.json_blocks()
    n_json = len(blocks)
    if not blocks:
        raise Fail("features/0.json does not exist")
    first = 0
    for b in blocks:
        if b.first != first:
            raise Fail(f"features/{b.k}.json first_row {b.first}, expected {first} (end of the previous block)")
        first = b.end
    if first != ctx.n:
        raise Fail(f"blocks cover {first} rows, expected {ctx.n}")
    try:
        groups = V.match_blocks([(None, b.first, b.n) for b in blocks], ctx.exp.sources)
    except V.Mismatch as m:
        raise Fail(f"features/<k>.json partition: {m}") from None
    id_cols = set()
    for b, (_, group) in zip(blocks, groups):
        src = group[0]
        if b.n_vars != src.n_vars:
            raise Fail(f"features/{b.k}.json num_vars {b.n_vars}, source {src.path} has {src.n_vars}")
        cols = b.json.get("columns")
        if not isinstance(cols, dict) or not cols:
            raise Fail(f"features/{b.k}.json: columns is {type(cols).__name__} {str(cols)[:80]}, want a non-empty object")
        for name, vals in cols.items():
            if not isinstance(vals, list) or len(vals) != b.n_vars:
                raise Fail(f"features/{b.k}.json: column {name!r} has "
                           f"{len(vals) if isinstance(vals, list) else type(vals).__name__} values, want {b.n_vars}")
        hit = [name for name, vals in cols.items() if V.as_strings(vals) == src.ids]
        if not hit:
            raise Fail(f"features/{b.k}.json: no column equals the var ids of {src.path} ({src.ids[:3]}...); "
                       f"columns {list(cols)[:8]}")
        id_cols.add(hit[0])
        if "label" not in b.json:
            raise Fail(f"features/{b.k}.json has no label")
    # the same partition as the real feature index (features/cumulative_sum_index.npy)
    try:
        real = V.feature_blocks(ctx.root)
    except V.Mismatch as m:
        raise Fail(f"features/ index: {m}") from None
    if [(f, n) for _, f, n in real] != [(b.first, b.n) for b in blocks]:
        raise Fail(f"features/<k>.json blocks {[(b.first, b.n) for b in blocks]} differ from "
                   f"cumulative_sum_index.npy {[(f, n) for _, f, n in real]}")
    miss = expect_missing(ctx.path("features", f"{n_json}.json"))
    if miss:
        raise Fail(miss)
    return (f"{n_json} block(s) {[(b.first, b.n, b.n_vars) for b in blocks]}, ids in column "
            f"{'/'.join(sorted(id_cols))}, features/{n_json}.json absent")


def load_npy(path):
    return np.load(path, allow_pickle=False)


def check_rows(ctx):
    dt = ctx.ensure_dtype()
    rows, what = ctx.row_sample()
    for r in rows:
        r = int(r)
        b = ctx.block_of(r)
        p = ctx.path("rows", f"{r}.npy")
        got = load_npy(p)
        if got.ndim != 1 or got.shape[0] != b.n_vars:
            raise Fail(f"rows/{r}.npy has shape {got.shape}, expected ({b.n_vars},) ({b})")
        if got.dtype != dt:
            raise Fail(f"rows/{r}.npy has dtype {got.dtype}, archive dtype is {dt}")
        want = ctx.expected_dense(r, r + 1, b.n_vars)[0]
        k = first_diff(got, want)
        if k is not None:
            raise Fail(f"rows/{r}.npy column {k}: {fmt_val(got[k])}, expected {fmt_val(want[k])} "
                       f"(nonzero cols got {np.flatnonzero(got)[:8].tolist()}, expected {np.flatnonzero(want)[:8].tolist()})")
    if not rows.size:
        return "no rows to read (0-row dataset)"
    return f"{what} equal (np.load, dtype {dt}){ctx.block_note}"


def check_sizes(ctx):
    files = ["status.json"]
    try:
        files += [f"features/{b.k}.json" for b in ctx.json_blocks()][:SIZE_CHECK_MAX]
    except Fail:
        pass
    rows, _ = ctx.row_sample()
    files += [f"rows/{int(r)}.npy" for r in rows[:SIZE_CHECK_MAX]]
    for a, b, _ in ctx.choose_ranges()[:SIZE_CHECK_MAX]:
        files += [f"rows/{a}-{b}.npy", f"csr/{a}-{b}.npz"]
    for f in files:
        p = ctx.path(*f.split("/"))
        size = os.path.getsize(p)
        with open(p, "rb") as fh:
            fsize = os.fstat(fh.fileno()).st_size
            n = len(fh.read())
        if size != n or fsize != n:
            raise Fail(f"{f}: stat size {size} (fstat {fsize}), but {n} bytes read")
    return f"stat size == bytes read for {len(files)} files"


def check_ranges(ctx):
    dt = ctx.ensure_dtype()
    ranges = ctx.choose_ranges()
    for a, b, blk in ranges:
        p = ctx.path("rows", f"{a}-{b}.npy")
        try:
            got = load_npy(p)
        except FileNotFoundError:
            raise Fail(f"rows/{a}-{b}.npy does not exist ({blk})") from None
        if got.shape != (b - a, blk.n_vars):
            raise Fail(f"rows/{a}-{b}.npy has shape {got.shape}, expected {(b - a, blk.n_vars)}")
        if got.dtype != dt:
            raise Fail(f"rows/{a}-{b}.npy has dtype {got.dtype}, archive dtype is {dt}")
        want = ctx.expected_dense(a, b, blk.n_vars)
        k = first_diff(got, want)
        if k is not None:
            i, j = divmod(k, blk.n_vars)
            raise Fail(f"rows/{a}-{b}.npy [{i}, {j}] (row {a + i}): {fmt_val(got[i, j])}, expected {fmt_val(want[i, j])}")
    if not ranges:
        return "no rows, no ranges"
    return f"{len(ranges)} ranges equal: {[(a, b) for a, b, _ in ranges][:12]}"


def crossing_ranges(ctx):
    blocks = ctx.ensure_blocks()
    out = []
    for b0, b1 in zip(blocks, blocks[1:]):
        out.append((b0.end - 1, b1.first + 1))
        if len(out) >= 3:
            break
    return out


def check_missing(ctx):
    n = ctx.n
    paths = [f"rows/{n}.npy", "rows/abc.npy", f"rows/{n + 1000}.npy"]
    if n:
        paths.append(f"rows/{n - 1}-{n + 1}.npy")
    paths += [f"rows/{a}-{b}.npy" for a, b in crossing_ranges(ctx)]
    problems = [m for m in (expect_missing(ctx.path(*p.split("/"))) for p in paths) if m]
    if problems:
        raise Fail("; ".join(problems[:4]))
    return f"FileNotFoundError for {', '.join(paths)}"


def canonical_csr(m):
    """float64 CSR, duplicates summed, column-sorted, explicit zeros dropped (NaN kept)."""
    import scipy.sparse as sp

    m = sp.csr_matrix(m).astype(np.float64, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    return m


def check_csr(ctx):
    import scipy.sparse as sp

    ranges = ctx.choose_ranges()
    dtypes = set()
    for a, b, blk in ranges:
        p = ctx.path("csr", f"{a}-{b}.npz")
        try:
            m = sp.load_npz(p)
        except FileNotFoundError:
            raise Fail(f"csr/{a}-{b}.npz does not exist ({blk})") from None
        except Exception as e:  # noqa: BLE001
            raise Fail(f"csr/{a}-{b}.npz: scipy.sparse.load_npz raised {type(e).__name__}: {e}") from None
        if m.format != "csr":
            raise Fail(f"csr/{a}-{b}.npz loads as {m.format}, not csr")
        if tuple(m.shape) != (b - a, blk.n_vars):
            raise Fail(f"csr/{a}-{b}.npz has shape {m.shape}, expected {(b - a, blk.n_vars)}")
        dtypes.add(str(m.dtype))
        g, e = canonical_csr(m), canonical_csr(ctx.expected_csr(a, b, blk.n_vars))
        gl, el = np.diff(g.indptr), np.diff(e.indptr)
        if not np.array_equal(gl, el):
            i = int(np.flatnonzero(gl != el)[0])
            raise Fail(f"csr/{a}-{b}.npz row {a + i}: {gl[i]} non-zero entries, expected {el[i]}")
        ok = (g.indices == e.indices) & V.same_values(g.data, e.data)
        if not ok.all():
            k = int(np.flatnonzero(~ok)[0])
            i = int(np.searchsorted(g.indptr, k, side="right") - 1)
            raise Fail(f"csr/{a}-{b}.npz row {a + i}: entry (col {g.indices[k]}, {fmt_val(g.data[k])}), "
                       f"expected (col {e.indices[k]}, {fmt_val(e.data[k])})")
        with np.load(p, allow_pickle=False) as z:
            names = set(z.files)
            need = {"format", "shape", "data", "indices", "indptr"}
            if not need <= names:
                raise Fail(f"csr/{a}-{b}.npz members {sorted(names)}, missing {sorted(need - names)}")
            for k in sorted(names):
                z[k]  # every member must load without pickle
    note = ""
    try:
        cross = crossing_ranges(ctx)
        if cross:
            a, b = cross[0]
            note = f"; crossing csr/{a}-{b}.npz " + ("absent" if expect_missing(ctx.path("csr", f"{a}-{b}.npz")) is None
                                                   else "exists")
    except Exception:  # noqa: BLE001
        pass
    if not ranges:
        return "no rows, no ranges"
    return f"{len(ranges)} ranges equal via scipy.sparse.load_npz (data dtype {'/'.join(sorted(dtypes))}){note}"


def check_listing(ctx):
    names = set(os.listdir(ctx.root))
    need = {"status.json", "data.npy", "rows", "csr", "features"}
    if not need <= names:
        raise Fail(f"{ctx.args.name}/ lists {sorted(names)[:20]}, missing {sorted(need - names)}")
    rdir = ctx.path("rows")
    if ctx.n <= FULL_LISTING_LIMIT:
        got = os.listdir(rdir)
        want = {f"{i}.npy" for i in range(ctx.n)}
        if len(got) != ctx.n or set(got) != want:
            extra, missing = sorted(set(got) - want), sorted(want - set(got), key=lambda s: int(s[:-4]))
            raise Fail(f"rows/ lists {len(got)} entries, expected {ctx.n} (0.npy..{ctx.n - 1}.npy); "
                       f"extra {extra[:5]}, missing {missing[:5]}")
        return f"{ctx.args.name}/ has {sorted(need)}; rows/ lists exactly {ctx.n} entries"
    first = []
    with os.scandir(rdir) as it:
        for entry in it:
            first.append(entry.name)
            if len(first) == 10:
                break
    want = [f"{i}.npy" for i in range(10)]
    if first != want:
        raise Fail(f"rows/: os.scandir's first names {first}, expected {want}")
    return f"{ctx.args.name}/ has {sorted(need)}; rows/ starts 0.npy..9.npy"


def check_readonly(ctx):
    ok_errnos = (errno.EROFS, errno.EACCES, errno.EPERM)
    problems = []
    p = ctx.path("data.npy")
    try:
        fh = open(p, "r+b")
        fh.close()
        problems.append("open(data.npy, 'r+b') succeeded")
    except PermissionError as e:
        how1 = f"PermissionError errno {e.errno}"
    except OSError as e:
        if e.errno not in ok_errnos:
            problems.append(f"open(data.npy, 'r+b') raised {type(e).__name__} errno {e.errno} ({e.strerror})")
        how1 = f"OSError errno {e.errno} ({errno.errorcode.get(e.errno, '?')})"
    p = ctx.path("new.txt")
    try:
        with open(p, "xb") as fh:
            fh.write(b"x")
        problems.append("creating new.txt succeeded")
        try:
            os.unlink(p)
        except OSError:
            pass
    except OSError as e:
        how2 = f"{type(e).__name__} errno {e.errno} ({errno.errorcode.get(e.errno, '?')})"
    if problems:
        raise Fail("; ".join(problems))
    return f"open r+b: {how1}; create: {how2}"


# =========================================================================================== bionemo
class RoMemmapShim:
    """Installed in the bionemo child: bionemo opens an existing archive with np.memmap(mode="r+") and
    open(metadata.json, "r+"), which a read-only mount refuses. Below `root`, r+ opens become r; a
    memmap asked for r+ ("readwrite") is made read-only. Nothing else changes."""

    def __init__(self, root):
        self.root = os.path.realpath(root) + os.sep

    def under_root(self, file):
        try:
            return os.path.realpath(os.fsdecode(file)).startswith(self.root)
        except (TypeError, ValueError):
            return False

    def install(self):
        import builtins

        shim = self
        orig_open = builtins.open

        def ro_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and mode in ("r+", "r+b", "rb+", "r+t", "rt+") \
                    and shim.under_root(file):
                mode = mode.replace("+", "")
            return orig_open(file, mode, *args, **kwargs)

        class ReadOnlyMemmap(np.memmap):
            def __new__(subtype, filename, dtype=np.uint8, mode="r+", offset=0, shape=None, order="C"):
                if mode in ("r+", "readwrite") and shim.under_root(filename):
                    mode = "r"
                return super().__new__(subtype, filename, dtype=dtype, mode=mode, offset=offset, shape=shape,
                                       order=order)

        builtins.open = ro_open
        np.memmap = ReadOnlyMemmap


def bionemo_child(target, archive, out, neighbor_key=None):
    """In the child process: the read-only shim, then verify.py's bionemo reader."""
    RoMemmapShim(archive).install()
    V.bionemo_child(target, archive, out, neighbor_key)


def neighbor_key(ctx, version):
    """The graph bionemo 0.1.3 should load (None: none, or 0.0.5, which has no neighbors)."""
    paths = [s.path for s in ctx.exp.sources]
    return V.cell_arrays.graph_key(paths, "auto") if version == "0.1.3" else None


def check_bionemo(ctx, version, proc, out):
    try:
        stdout, stderr = proc.communicate(timeout=BIONEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise Fail(f"reader process did not finish in {BIONEMO_TIMEOUT}s") from None
    try:
        res = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise Fail(f"reader process failed (exit {proc.returncode}): {stderr.strip()[-1200:]}") from None
    judge = V.BionemoReader.__new__(V.BionemoReader)  # verify.py's judgement, without its copy of the archive
    judge.version, judge.archive, judge.out = version, ctx.root, out
    judge.obs_choice, key = "all", neighbor_key(ctx, version)
    paths = [s.path for s in ctx.exp.sources]
    judge.graph = [key, V.cell_arrays.expected_graph(paths, "auto")] if key else None
    try:
        status, detail = judge.judge(ctx.exp, res)
    except V.Mismatch as m:
        raise Fail(f"{m}{judge.dtype_hint()}") from None
    return f"{status}: {detail} (read-only shim: r+ opens as r)"


def start_bionemo(ctx, tmp):
    procs = {}
    for version in V.BIONEMO_VERSIONS:
        target = os.path.join(V.venv_dir(), f"bionemo-{version}")
        if not os.path.isdir(target):
            V.die(f"{target} missing; run scripts/test-env.sh")
        out = os.path.join(tmp, f"rows-{version}.npz")
        p = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--bionemo-child", target, ctx.root, out]
            + ([neighbor_key(ctx, version)] if neighbor_key(ctx, version) else []),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        )
        procs[version] = (p, out)
    return procs


# =========================================================================================== main
GROUPS = [
    ("status", check_status),
    ("archive", check_archive),
    ("memmap", check_memmap),
    ("features", check_features),
    ("rows", check_rows),
    ("sizes", check_sizes),
    ("ranges", check_ranges),
    ("missing", check_missing),
    ("csr", check_csr),
    ("listing", check_listing),
    ("cells", check_cells),
    ("readonly", check_readonly),
]


def run_group(name, fn, *args):
    try:
        detail = fn(*args)
        ok = True
    except Fail as f:
        ok, detail = False, str(f)
    except Exception as e:  # noqa: BLE001  an unreadable file is a failure of that group
        ok, detail = False, f"{type(e).__name__}: {e}"
    detail = " ".join(str(detail).split())
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mnt", help="the mount point")
    ap.add_argument("name", help="the dataset: MNT/NAME/ is checked")
    ap.add_argument("sources", nargs="+", help=".h5ad file(s) or directories, in row order")
    ap.add_argument("--matrix", default="auto", help="auto | X | raw | layers/NAME (default auto)")
    ap.add_argument("--data-dtype", default=None, help="the archive's data dtype, when it differs from the source's")
    ap.add_argument("--index-dtypes", choices=("narrow", "wide"), default="narrow",
                    help="col_ptr.npy/row_ptr.npy dtypes expected: narrow (smallest unsigned, default) or wide")
    ap.add_argument("--samples", type=int, default=200, help="random rows read when n_rows > 200 (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the row and range choice (default 0)")
    ap.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for status ready")
    ap.add_argument("--bionemo", action="store_true", help="also read through bionemo-scdl 0.1.3 and 0.0.5")
    args = ap.parse_args(argv)
    if args.matrix not in ("auto", "X", "raw") and not re.fullmatch(r"layers/.+", args.matrix):
        ap.error(f"--matrix must be auto, X, raw or layers/NAME, not {args.matrix!r}")
    if args.data_dtype is not None:
        try:
            args.data_dtype = np.dtype(args.data_dtype)
        except TypeError:
            ap.error(f"--data-dtype {args.data_dtype!r} is not a numpy dtype")
    if args.samples < 1 or args.wait < 0:
        ap.error("--samples must be >= 1 and --wait >= 0")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--bionemo-child"]:
        if len(argv) not in (4, 5):
            V.die("usage: --bionemo-child TARGET ARCHIVE OUT [NEIGHBOR_KEY]")
        bionemo_child(*argv[1:5])
        return 0
    args = parse_args(argv)
    source_paths = V.list_sources(args.sources)  # exit 2 when a source is missing
    root = os.path.join(args.mnt, args.name)
    if not os.path.isdir(args.mnt):
        V.die(f"mount point {args.mnt} is not a directory")
    deadline = time.time() + args.wait
    while not os.path.isdir(root) and time.time() < deadline:
        time.sleep(0.2)
    if not os.path.isdir(root):
        print(f"FAIL dataset: {root} is not a directory")
        print("read_check: FAIL (dataset)")
        return 1
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="scdl-read-check-") as tmp:
        ctx = None
        procs = {}
        try:
            exp = V.Expected([V.read_source(p, args.matrix) for p in source_paths], args.data_dtype,
                             args.index_dtypes)
            ctx = Ctx(args, exp)
            results = {}
            results["status"] = run_group("status", check_status, ctx)  # waits for ready (--wait)
            if args.bionemo:
                procs = start_bionemo(ctx, tmp)  # they read while the other groups are checked
            for name, fn in GROUPS[1:]:
                results[name] = run_group(name, fn, ctx)
            for version, (p, out) in procs.items():
                results[f"bionemo-{version}"] = run_group(f"bionemo-{version}", check_bionemo, ctx, version, p, out)
        finally:
            for p, _ in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
    failed = [k for k, ok in results.items() if not ok]
    what = f"{args.name}: {len(source_paths)} source(s), {exp.n_rows} rows, {exp.nnz} values"
    if failed:
        print(f"read_check: FAIL ({', '.join(failed)}) {what}")
        return 1
    print(f"read_check: PASS ({len(results)} groups) {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
