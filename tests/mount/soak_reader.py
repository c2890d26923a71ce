#!/usr/bin/env python3
"""One reader of the soak test (tests/soak.rs): random reads of a mounted dataset for a fixed time,
each checked against an oracle read from the source .h5ad with h5py (no scdl-fs code involved).

    "$PY" tests/mount/soak_reader.py MNT NAME SOURCE.h5ad [--seconds 60] [--seed 0] [--max-range 64]

SOURCE must hold X as a CSR group (data, indices, indptr, shape) and var/_index, as
bench/make_h5ad.py and anndata write it; the dataset must be SOURCE converted as one feature block.

After loading the oracle it prints "ready" and then, for --seconds, picks at random (weights 5:2:2:1):
  row    rows/<i>.npy          np.load: 1-D (n_vars,), the source dtype, values equal to row i
  range  rows/<a>-<b>.npy      np.load: 2-D (b-a, n_vars), dense rows a..b-1 equal
  csr    csr/<a>-<b>.npz       scipy.sparse.load_npz: CSR (b-a, n_vars), indptr, indices and data
                               identical to the source's (order and explicit zeros kept)
  feat   features/<k>.json     k in [0, 1]: 0.json describes the one block (first_row 0, num_rows,
                               num_vars, a column equal to the var ids); 1.json must not exist
Every file is opened, read whole and closed (that is the latency measured); fstat's size must equal
the bytes read. Ranges are 1..--max-range rows. Any exception or mismatch counts as an error.

Prints one JSON line: {"ops", "errors", "error_samples", "bytes", "seconds", "counts": {kind: n},
"lat_us": {kind: [latency in microseconds, ...]}}. Exit status 0 when the run completed (errors are
reported, not fatal), 2 on a usage or environment error.
"""

import argparse
import io
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "oracle")))
from venv_switch import ensure  # noqa: E402

if __name__ == "__main__":
    ensure("soak_reader", ["h5py", "scipy", "numpy"])

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

KINDS = ["row", "range", "csr", "feat"]
WEIGHTS = [5, 2, 2, 1]
MAX_ERROR_SAMPLES = 5


class Mismatch(Exception):
    pass


def as_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


class Oracle:
    def __init__(self, path):
        with h5py.File(path, "r") as f:
            x = f["X"]
            if not isinstance(x, h5py.Group) or "indptr" not in x:
                raise SystemExit(f"soak_reader: {path}: X is not a CSR group")
            enc = as_str(x.attrs.get("encoding-type", "csr_matrix"))
            if enc != "csr_matrix":
                raise SystemExit(f"soak_reader: {path}: X is {enc}, not csr_matrix")
            self.n_rows, self.n_vars = (int(v) for v in x.attrs["shape"])
            self.data = x["data"][...]
            self.indices = x["indices"][...].astype(np.int64)
            self.indptr = x["indptr"][...].astype(np.int64)
            var = f["var"]
            self.var_ids = [as_str(v) for v in var[as_str(var.attrs["_index"])][...]]
        self.dtype = self.data.dtype

    def csr(self, a, b):
        s, t = int(self.indptr[a]), int(self.indptr[b])
        return self.indptr[a : b + 1] - s, self.indices[s:t], self.data[s:t]

    def dense(self, a, b):
        ptr, idx, val = self.csr(a, b)
        out = np.zeros((b - a, self.n_vars), dtype=self.dtype)
        rows = np.repeat(np.arange(b - a), np.diff(ptr))
        out[rows, idx] = val
        return out


def read_whole(path):
    """Bytes of `path` (open, read to EOF, close) after checking fstat's size against them."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = fh.read()
    if len(buf) != size:
        raise Mismatch(f"{path}: fstat size {size}, {len(buf)} bytes read")
    return buf


def same(got, want, what):
    if got.shape != want.shape:
        raise Mismatch(f"{what}: shape {got.shape}, expected {want.shape}")
    if got.dtype != want.dtype:
        raise Mismatch(f"{what}: dtype {got.dtype}, expected {want.dtype}")
    if not np.array_equal(got, want):
        k = int(np.flatnonzero((got != want).ravel())[0])
        raise Mismatch(f"{what}: element {k} is {got.ravel()[k]!r}, expected {want.ravel()[k]!r}")


class Reader:
    def __init__(self, args, oracle):
        self.args, self.o = args, oracle
        self.root = os.path.join(args.mnt, args.name)
        self.rng = np.random.default_rng(args.seed)

    def pick_range(self):
        n = self.o.n_rows
        length = int(self.rng.integers(1, min(self.args.max_range, n) + 1))
        a = int(self.rng.integers(0, n - length + 1))
        return a, a + length

    def op(self, kind):
        """Returns (latency in seconds of the file read, bytes read); raises on any mismatch."""
        o = self.o
        if kind == "row":
            i = int(self.rng.integers(0, o.n_rows))
            path = os.path.join(self.root, "rows", f"{i}.npy")
        elif kind in ("range", "csr"):
            a, b = self.pick_range()
            path = os.path.join(self.root, "rows" if kind == "range" else "csr",
                                f"{a}-{b}.{'npy' if kind == 'range' else 'npz'}")
        else:
            k = int(self.rng.integers(0, 2))
            path = os.path.join(self.root, "features", f"{k}.json")
            if k == 1:
                t0 = time.perf_counter()
                try:
                    read_whole(path)
                except FileNotFoundError:
                    return time.perf_counter() - t0, 0
                raise Mismatch(f"{path} exists; the dataset has one feature block")
        t0 = time.perf_counter()
        buf = read_whole(path)
        dt = time.perf_counter() - t0
        if kind == "row":
            same(np.load(io.BytesIO(buf), allow_pickle=False), o.dense(i, i + 1)[0], path)
        elif kind == "range":
            same(np.load(io.BytesIO(buf), allow_pickle=False), o.dense(a, b), path)
        elif kind == "csr":
            m = sp.load_npz(io.BytesIO(buf))
            if m.format != "csr" or m.shape != (b - a, o.n_vars):
                raise Mismatch(f"{path}: {m.format} of shape {m.shape}, expected csr {(b - a, o.n_vars)}")
            ptr, idx, val = o.csr(a, b)
            same(m.indptr.astype(np.int64), ptr, f"{path} indptr")
            same(m.indices.astype(np.int64), idx, f"{path} indices")
            same(m.data, val, f"{path} data")
        else:
            j = json.loads(buf)
            want = {"first_row": 0, "num_rows": o.n_rows, "num_vars": o.n_vars}
            got = {k: j.get(k) for k in want}
            if got != want:
                raise Mismatch(f"{path}: {got}, expected {want}")
            cols = j.get("columns") or {}
            if not any([as_str(v) for v in vals] == o.var_ids for vals in cols.values()):
                raise Mismatch(f"{path}: no column equals the var ids (columns {list(cols)[:5]})")
        return dt, len(buf)

    def run(self):
        lat = {k: [] for k in KINDS}
        errors, samples, nbytes = 0, [], 0
        p = np.asarray(WEIGHTS, dtype=float) / sum(WEIGHTS)
        start = time.monotonic()
        end = start + self.args.seconds
        while time.monotonic() < end:
            kind = KINDS[int(self.rng.choice(len(KINDS), p=p))]
            try:
                dt, n = self.op(kind)
                lat[kind].append(int(round(dt * 1e6)))
                nbytes += n
            except Exception as e:  # noqa: BLE001  every failure is counted, none stops the run
                errors += 1
                if len(samples) < MAX_ERROR_SAMPLES:
                    samples.append(f"{kind}: {type(e).__name__}: {e}")
        return {
            "ops": sum(len(v) for v in lat.values()) + errors,
            "errors": errors,
            "error_samples": samples,
            "bytes": nbytes,
            "seconds": round(time.monotonic() - start, 3),
            "counts": {k: len(v) for k, v in lat.items()},
            "lat_us": lat,
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mnt")
    ap.add_argument("name")
    ap.add_argument("source")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-range", type=int, default=64)
    args = ap.parse_args()
    if args.seconds <= 0 or args.max_range < 1:
        ap.error("--seconds must be > 0 and --max-range >= 1")
    oracle = Oracle(args.source)
    if oracle.n_rows < 1:
        ap.error(f"{args.source} has no rows")
    print("ready", flush=True)
    print(json.dumps(Reader(args, oracle).run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
