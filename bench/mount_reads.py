#!/usr/bin/env python3
"""Read benchmark of a mounted scdl-fs dataset, one reader, with bionemo-scdl 0.1.3 side by side.

    PY=$(scripts/test-env.sh | tail -n 1)
    "$PY" bench/mount_reads.py MNT NAME [--archive STORE_PATH] [--seconds 10] [--range-rows 1024] [--seed 0]
                               [--max-ops 1000000]

Measures, each loop for --seconds (and at most --max-ops operations):
  rows_npy     random rows MNT/NAME/rows/<i>.npy: open + read the whole file + close; rows/s, MB/s,
               latency p50/p99
  csr_npz      random MNT/NAME/csr/<a>-<b>.npz of --range-rows rows inside one feature block (the whole block
               when it is smaller), scipy.sparse.load_npz; ranges/s, rows/s (= rows loaded / s), latency p50/p99
  bionemo      (with --archive STORE_PATH, the real archive directory, not the mount) bionemo-scdl 0.1.3
               in this process on a temporary copy of it (bionemo opens its memmaps r+): random
               SingleCellMemMapDataset.get_row(i), the row's values and columns copied out of the memmap
               (so the bytes are really read); rows/s, latency p50/p99
Random choices come from --seed. Prints a markdown table, then one JSON line with every number.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TORCH_STUB = os.path.join(REPO, "tests", "oracle", "torch_stub")

sys.path.insert(0, os.path.join(REPO, "tests", "oracle"))
from venv_switch import DEFAULT_VENV, ensure  # noqa: E402

if __name__ == "__main__":
    ensure("mount_reads", ["numpy", "scipy"])

import numpy as np  # noqa: E402

BATCH = 4096  # random indices drawn at a time


def venv_dir():
    if os.environ.get("SCDL_FS_TEST_VENV"):
        return os.environ["SCDL_FS_TEST_VENV"]
    if os.path.isdir(os.path.join(sys.prefix, "bionemo-0.1.3")):
        return sys.prefix
    return DEFAULT_VENV


def die(msg):
    print(f"mount_reads: {msg}", file=sys.stderr)
    sys.exit(2)


def read_json(path):
    with open(path, "rb") as fh:
        return json.loads(fh.read())


def blocks_of(root, limit=1_000_000):
    """[(first_row, num_rows)] of the feature blocks with rows, from features/<k>.json."""
    out = []
    for k in range(limit):
        try:
            j = read_json(os.path.join(root, "features", f"{k}.json"))
        except FileNotFoundError:
            break
        if j["num_rows"] > 0:
            out.append((int(j["first_row"]), int(j["num_rows"])))
    return out


def timed_loop(seconds, max_ops, op):
    """Call op(k) until `seconds` passed or `max_ops` calls. op returns a count (rows, bytes, ...) as a tuple.
    Returns (elapsed seconds, calls, summed counts, latencies in seconds)."""
    lat = np.empty(min(max_ops, 1 << 20), dtype=np.float64)  # latencies kept for the first 1M calls
    totals = None
    n = 0
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end and n < max_ops:
        t0 = now
        got = op(n)
        now = time.perf_counter()
        if n < len(lat):
            lat[n] = now - t0
        totals = got if totals is None else tuple(a + b for a, b in zip(totals, got))
        n += 1
    return now - start, n, totals or (), lat[: min(n, len(lat))]


def summarize(prefix, elapsed, n, lat):
    out = {f"{prefix}_ops": n, f"{prefix}_seconds": round(elapsed, 3)}
    if n:
        out[f"{prefix}_p50_us"] = round(float(np.percentile(lat, 50)) * 1e6, 1)
        out[f"{prefix}_p99_us"] = round(float(np.percentile(lat, 99)) * 1e6, 1)
    return out


def bench_rows(root, n_rows, args, rng):
    idx = []

    def op(k):
        if k % BATCH == 0:
            idx[:] = rng.integers(0, n_rows, size=BATCH).tolist()
        with open(os.path.join(root, "rows", f"{idx[k % BATCH]}.npy"), "rb") as fh:
            return (len(fh.read()),)

    elapsed, n, (nbytes,), lat = timed_loop(args.seconds, args.max_ops, op)
    out = summarize("rows_npy", elapsed, n, lat)
    out["rows_npy_rows_per_s"] = round(n / elapsed, 1)
    out["rows_npy_mb_per_s"] = round(nbytes / elapsed / 1e6, 2)
    return out


def bench_csr(root, blocks, args, rng):
    import scipy.sparse as sp

    weights = np.array([n for _, n in blocks], dtype=np.float64)
    weights /= weights.sum()

    def op(k):
        first, n = blocks[int(rng.choice(len(blocks), p=weights))] if len(blocks) > 1 else blocks[0]
        length = min(args.range_rows, n)
        a = first + int(rng.integers(0, n - length + 1))
        m = sp.load_npz(os.path.join(root, "csr", f"{a}-{a + length}.npz"))
        return (m.shape[0], int(m.nnz))

    elapsed, n, (rows, nnz), lat = timed_loop(args.seconds, args.max_ops, op)
    out = summarize("csr_npz", elapsed, n, lat)
    out["csr_npz_ranges_per_s"] = round(n / elapsed, 2)
    out["csr_npz_rows_per_s"] = round(rows / elapsed, 1)
    out["csr_npz_values_per_s"] = round(nnz / elapsed, 1)
    return out


def bench_bionemo(archive, n_rows, args, rng):
    target = os.path.join(venv_dir(), "bionemo-0.1.3")
    if not os.path.isdir(target):
        die(f"{target} missing; run scripts/test-env.sh")
    sys.path[:0] = [target, TORCH_STUB]
    with tempfile.TemporaryDirectory(prefix="scdl-bench-") as tmp:
        copy = os.path.join(tmp, "archive")
        shutil.copytree(archive, copy)  # bionemo opens its memmaps r+: never hand it the original
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset

            t0 = time.perf_counter()
            ds = SingleCellMemMapDataset(copy)
            open_s = time.perf_counter() - t0
        have = int(ds.number_of_rows())
        if have != n_rows:
            die(f"--archive has {have} rows, the mounted dataset {n_rows}")
        idx = []

        def op(k):
            if k % BATCH == 0:
                idx[:] = rng.integers(0, n_rows, size=BATCH).tolist()
            values, cols = ds.get_row(idx[k % BATCH])[0]
            values, cols = np.array(values), np.array(cols)  # copied out of the memmap: the bytes are read
            return (len(values),)

        elapsed, n, _, lat = timed_loop(args.seconds, args.max_ops, op)
        del ds
    out = summarize("bionemo_get_row", elapsed, n, lat)
    out["bionemo_get_row_rows_per_s"] = round(n / elapsed, 1)
    out["bionemo_open_s"] = round(open_s, 3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mnt")
    ap.add_argument("name")
    ap.add_argument("--archive", help="the dataset's real archive directory (not the mount), for bionemo 0.1.3")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per loop (default 10)")
    ap.add_argument("--range-rows", type=int, default=1024, help="rows per csr/<a>-<b>.npz (default 1024)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-ops", type=int, default=1_000_000, help="at most this many operations per loop")
    args = ap.parse_args()
    if args.seconds <= 0 or args.range_rows < 1 or args.max_ops < 1:
        ap.error("--seconds must be > 0, --range-rows and --max-ops >= 1")
    root = os.path.join(args.mnt, args.name)
    if not os.path.isdir(root):
        die(f"{root} is not a directory")
    if args.archive and not os.path.isfile(os.path.join(args.archive, "metadata.json")):
        die(f"--archive {args.archive} is not an SCDL archive (no metadata.json)")
    status = read_json(os.path.join(root, "status.json"))
    if status.get("state") != "ready":
        die(f"{args.name} is not ready: {status}")
    n_rows = int(read_json(os.path.join(root, "metadata.json"))["num_rows"])
    blocks = blocks_of(root)
    if n_rows == 0 or not blocks:
        die(f"{args.name} has no rows")

    res = {"mount": os.path.abspath(args.mnt), "name": args.name, "n_rows": n_rows, "blocks": len(blocks),
           "seconds": args.seconds, "range_rows": args.range_rows, "seed": args.seed}
    res.update(bench_rows(root, n_rows, args, np.random.default_rng(args.seed)))
    res.update(bench_csr(root, blocks, args, np.random.default_rng(args.seed + 1)))
    if args.archive:
        res.update(bench_bionemo(args.archive, n_rows, args, np.random.default_rng(args.seed + 2)))

    def g(k, unit=""):
        return f"{res[k]:,}{unit}" if k in res else "n/a"

    rows = [
        ("rows/<i>.npy rows/s", g("rows_npy_rows_per_s")),
        ("rows/<i>.npy MB/s", g("rows_npy_mb_per_s")),
        ("rows/<i>.npy latency p50", g("rows_npy_p50_us", " µs")),
        ("rows/<i>.npy latency p99", g("rows_npy_p99_us", " µs")),
        (f"csr/<a>-<b>.npz ({args.range_rows} rows) ranges/s", g("csr_npz_ranges_per_s")),
        (f"csr/<a>-<b>.npz ({args.range_rows} rows) rows/s", g("csr_npz_rows_per_s")),
        ("csr/<a>-<b>.npz latency p50", g("csr_npz_p50_us", " µs")),
        ("csr/<a>-<b>.npz latency p99", g("csr_npz_p99_us", " µs")),
        ("bionemo-scdl 0.1.3 get_row rows/s (in-process, local archive)", g("bionemo_get_row_rows_per_s")),
        ("bionemo-scdl 0.1.3 get_row latency p50", g("bionemo_get_row_p50_us", " µs")),
        ("bionemo-scdl 0.1.3 get_row latency p99", g("bionemo_get_row_p99_us", " µs")),
    ]
    print(f"{args.name}: {n_rows:,} rows, {len(blocks)} block(s); {args.seconds:g} s per loop, one reader")
    print()
    print("| metric | value |")
    print("| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
