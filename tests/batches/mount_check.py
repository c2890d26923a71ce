"""Checks the shuffled batches a mounted dataset serves, for tests/batches_mount.rs: listings,
sizes, contents against the source read by anndata (check_batches.py), the rows each batch holds
against order_oracle.py (written from docs/SEMANTICS.md), coverage of every epoch, and the ranks
of a plan disjoint with equal counts. Batches are read three ways: examples/scdl_batches.py (one
read of the whole file, as the examples do), scipy.sparse.load_npz and safetensors.numpy on the
mounted path itself.

    mount_check.py MNT NAME --dtype float32 --plan P [--plan P ...] [--epochs 0,1] SOURCE...

A plan with ranks=W is checked for every rank 0..W-1 (its own rank= is ignored). Prints
"checked N batch files" and "digest HEX" (sha256 of every file, in order), or names the first
mismatch and exits 1.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import scipy.sparse as sp
from safetensors import safe_open
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "..", "examples")]
import check_batches  # noqa: E402
import order_oracle  # noqa: E402
import scdl_batches  # noqa: E402

fail = check_batches.fail


def with_rank(plan_text, rank):
    items = [i for i in plan_text.split(",") if not i.startswith("rank=")]
    return ",".join(items + [f"rank={rank}"])


def check_file(path, want_rows, source, dtype):
    """One batch file read three ways; returns (bytes, row_ids)."""
    data = scdl_batches.read_whole(path)
    if os.stat(path).st_size != len(data):
        fail(f"{path}: stat says {os.stat(path).st_size} bytes, read {len(data)}")
    # The file's own arrays against the source (dtypes, columns, values, rows, blocks).
    if path.endswith(".npz"):
        check_batches.check_npz(path, want_rows, source, dtype)
        direct = sp.load_npz(path)
    else:
        check_batches.check_safetensors(path, want_rows, source, dtype)
        t = load_file(path)
        with safe_open(path, framework="np") as f:
            shape = tuple(json.loads(f.metadata()["shape"]))
        direct = sp.csr_matrix((t["data"], t["indices"], t["indptr"]), shape=shape)
    # The examples' reading gives the same matrix.
    m, row_ids, feature_block = scdl_batches.read_batch(path)
    same = (m.shape == direct.shape and np.array_equal(m.indptr, direct.indptr)
            and np.array_equal(m.indices, direct.indices)
            and np.array_equal(m.data, direct.data, equal_nan=True))
    if not same or list(row_ids) != want_rows:
        fail(f"{path}: the examples' reading disagrees with the library loaders")
    return data, list(row_ids)


def check_epoch(args, plan_text, epoch, source, dtype, digest):
    """Every rank of `plan_text` in `epoch`: listing, contents; then coverage. Returns files."""
    n = len(source)
    plan = order_oracle.parse_plan(plan_text)
    ranks, size = plan["ranks"], plan["size"]
    per_rank, files = [], 0
    for rank in range(ranks):
        text = with_rank(plan_text, rank)
        want_count = order_oracle.batch(dict(plan, rank=rank), n, epoch, 0)[0]
        d = scdl_batches.epoch_dir(args.mnt, args.name, text, epoch)
        names = sorted(os.listdir(d))
        expected = sorted(f"{k}.{ext}" for k in range(want_count) for ext in ("npz", "safetensors"))
        if names != expected:
            fail(f"{d}: lists {len(names)} names, expected {len(expected)} ({names[:4]}...)")
        rows = []
        for k in range(want_count):
            _, want = order_oracle.batch(dict(plan, rank=rank), n, epoch, k)
            got = {}
            for ext in ("npz", "safetensors"):
                path = os.path.join(d, f"{k}.{ext}")
                data, got[ext] = check_file(path, want, source, dtype)
                digest.update(data)
                files += 1
            rows.append(got["npz"])
        per_rank.append(rows)
    check_coverage(plan_text, epoch, n, size, ranks, per_rank)
    return files


def check_coverage(plan_text, epoch, n, size, ranks, per_rank):
    what = f"{plan_text} epoch {epoch}"
    counts = {len(r) for r in per_rank}
    if len(counts) != 1:
        fail(f"{what}: ranks have different batch counts {[len(r) for r in per_rank]}")
    seen = [row for rank in per_rank for batch in rank for row in batch]
    if len(seen) != len(set(seen)):
        fail(f"{what}: a row appears twice in one epoch (across batches or ranks)")
    if any(len(b) > size for rank in per_rank for b in rank):
        fail(f"{what}: a batch holds more than size={size} rows")
    left_out = n - len(seen)
    global_batches = -(-n // size)
    left_batches = global_batches - ranks * counts.pop()
    if ranks == 1 and left_out != 0:
        fail(f"{what}: {left_out} rows missing with one rank")
    if not 0 <= left_batches <= ranks - 1:
        fail(f"{what}: {left_batches} batches left out, at most {ranks - 1} may be")
    if left_out > left_batches * size:
        fail(f"{what}: {left_out} rows left out by {left_batches} batches of {size}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mnt")
    ap.add_argument("name")
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--plan", action="append", required=True)
    ap.add_argument("--epochs", default="0,1")
    args = ap.parse_args()
    dtype = np.dtype(args.dtype)
    source = check_batches.load_sources(args.sources, dtype)
    digest = hashlib.sha256()
    files = 0
    for plan_text in args.plan:
        for epoch in [int(e) for e in args.epochs.split(",")]:
            files += check_epoch(args, plan_text, epoch, source, dtype, digest)
    print(f"checked {files} batch files of {len(source)} rows")
    print(f"digest {digest.hexdigest()}")


if __name__ == "__main__":
    main()
