#!/usr/bin/env python3
"""Side-by-side random file reads from several directories, interleaved so that the machine's
background load falls on all of them alike: round after round, each target for --seconds (the
order reversed every other round); medians of the rounds.

    PY=$(scripts/test-env.sh | tail -n 1)
    "$PY" bench/ab_reads.py [--seconds 2] [--rounds 7] [--mode read|npload|npz] LABEL=DIR:PATTERN:N ...

PATTERN names a file from a random index i < N ("{}.npy" -> DIR/<i>.npy); for --mode npz it names a
1,024-row range from its first row ("{}-{}.npz" -> DIR/<a>-<a+1024>.npz, a + 1024 <= N).
  read    open + read the whole file + close (files/s)
  npload  numpy.load (files/s)
  npz     scipy.sparse.load_npz (rows/s)
Prints one line per target, then one JSON line.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

RANGE_ROWS = 1024


def reader(mode):
    if mode == "read":
        def op(path):
            with open(path, "rb") as fh:
                fh.read()
            return 1
        return op
    if mode == "npload":
        import numpy as np

        return lambda path: (np.load(path), 1)[1]
    import scipy.sparse as sp

    return lambda path: sp.load_npz(path).shape[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--mode", choices=["read", "npload", "npz"], default="read")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("targets", nargs="+", metavar="LABEL=DIR:PATTERN:N")
    args = ap.parse_args()
    targets = []
    for t in args.targets:
        try:
            label, rest = t.split("=", 1)
            d, pattern, n = rest.rsplit(":", 2)
            targets.append((label, d, pattern, int(n)))
        except ValueError:
            ap.error(f"target {t!r} is not LABEL=DIR:PATTERN:N")
    op = reader(args.mode)
    rng = random.Random(args.seed)

    def path_of(d, pattern, n):
        if args.mode == "npz":
            a = rng.randrange(n - RANGE_ROWS + 1)
            return os.path.join(d, pattern.format(a, a + RANGE_ROWS))
        return os.path.join(d, pattern.format(rng.randrange(n)))

    runs = {t[0]: [] for t in targets}
    for r in range(args.rounds):
        for label, d, pattern, n in targets if r % 2 == 0 else targets[::-1]:
            start = time.perf_counter()
            count = 0
            while time.perf_counter() - start < args.seconds:
                for _ in range(16):
                    count += op(path_of(d, pattern, n))
            runs[label].append(count / (time.perf_counter() - start))
    unit = "rows/s" if args.mode == "npz" else "files/s"
    result = {"mode": args.mode, "seconds": args.seconds, "rounds": args.rounds, "unit": unit}
    for label, v in runs.items():
        med = statistics.median(v)
        result[label] = {"median": round(med, 1), "runs": [round(x, 1) for x in v]}
        print(f"{args.mode} {label}: median {med:,.0f} {unit}; runs {', '.join(f'{x:,.0f}' for x in v)}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
