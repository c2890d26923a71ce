"""The in-Python reference for shuffled batches: a vectorised numpy gather of 256 distinct
random rows per batch over an SCDL archive's memmaps, assembled into a scipy CSR matrix
(what a Python loader over the archive itself does, in-process).

    python bench/gather.py ARCHIVE SECONDS
        -> prints "numpy_gather ROWS_PER_S" and "numpy_gather_cpu_us CPU_MICROSECONDS_PER_BATCH"
"""

import json
import sys
import time

import numpy as np
import scipy.sparse as sp


def main():
    path, secs = sys.argv[1], float(sys.argv[2])
    dtypes = json.load(open(f"{path}/dtypes.json"))
    data = np.memmap(f"{path}/data.npy", dtype=dtypes["data.npy"], mode="r")
    cols = np.memmap(f"{path}/col_ptr.npy", dtype=dtypes["col_ptr.npy"], mode="r")
    row_ptr = np.memmap(f"{path}/row_ptr.npy", dtype=dtypes["row_ptr.npy"], mode="r")
    n = len(row_ptr) - 1
    width = json.load(open(f"{path}/metadata.json")).get("num_vars") or int(cols.max()) + 1
    rng = np.random.default_rng(0)
    rows_done = 0
    batches = 0
    cpu = time.process_time()
    start = time.perf_counter()
    while time.perf_counter() - start < secs:
        rows = rng.choice(n, 256, replace=False)
        a = row_ptr[rows].astype(np.int64)
        b = row_ptr[rows + 1].astype(np.int64)
        lengths = b - a
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        idx = np.repeat(a - indptr[:-1], lengths) + np.arange(indptr[-1])
        m = sp.csr_matrix((data[idx], cols[idx].astype(np.int32), indptr), shape=(256, width))
        rows_done += m.shape[0]
        batches += 1
    print(f"numpy_gather {rows_done / (time.perf_counter() - start):.0f}")
    print(f"numpy_gather_cpu_us {(time.process_time() - cpu) * 1e6 / batches:.0f}")


if __name__ == "__main__":
    main()
