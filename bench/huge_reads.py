"""The 10^8-row check through the mount (bench/batches_huge.sh runs it): how long the first
batch of a fresh epoch takes (open, one read of the whole file, parse into scipy CSR), then
how many rows per second one reader gets from consecutive batches.

    huge_reads.py MNT NAME ROWS EPOCHS SECONDS

Prints "first_batch_ms BLOCK P50 P99 MAX" for EPOCHS fresh epochs (each epoch of a fresh
plan seed, batch k drawn at random: nothing of it can be cached), then "rows_per_s BLOCK R".
"""

import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(HERE), "examples")]

import scdl_batches  # noqa: E402

SIZE = 256


def first_batches(mnt, name, rows, epochs, block):
    batches = rows // SIZE
    times = []
    for e in range(epochs):
        plan = scdl_batches.plan_name(SIZE, seed=random.getrandbits(31), block=block)
        path = scdl_batches.batch_path(mnt, name, plan, e, random.randrange(batches))
        t = time.perf_counter()
        m, row_ids, _ = scdl_batches.read_batch(path)
        times.append((time.perf_counter() - t) * 1e3)
        assert m.shape[0] == SIZE and len(set(row_ids.tolist())) == SIZE
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)], times[-1]


def rate(mnt, name, secs, block):
    plan = scdl_batches.plan_name(SIZE, seed=random.getrandbits(31), block=block)
    rows, k = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < secs:
        m, _, _ = scdl_batches.read_batch(scdl_batches.batch_path(mnt, name, plan, 0, k))
        rows += m.shape[0]
        k += 1
    return rows / (time.perf_counter() - start)


def main():
    mnt, name, rows, epochs, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    for block in (1, 64):
        p50, p99, worst = first_batches(mnt, name, rows, epochs, block)
        print(f"first_batch_ms {block} {p50:.2f} {p99:.2f} {worst:.2f}")
    for block in (1, 64):
        print(f"rows_per_s {block} {rate(mnt, name, secs, block):.0f}")


if __name__ == "__main__":
    main()
