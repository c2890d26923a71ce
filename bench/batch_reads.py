"""One timed loop of the shuffled-batch benchmark (bench/batches.sh runs them side by side):
batches of 256 rows delivered to Python as a scipy CSR matrix, for SECONDS.

    batch_reads.py mount MNT NAME PLAN SECONDS [--fmt npz|safetensors] [--worker W --workers N]
        scdl-fs batches through the mount, read as examples/scdl_batches.py reads them (one read
        of the whole file, parsed in memory); reader W of N reads batches K = W, W+N, ... of
        epoch 0, then of epoch 1, ... (as DataLoader workers do)
    batch_reads.py bionemo ARCHIVE_COPY SECONDS
        bionemo-scdl 0.1.3 in-process: 256 distinct random get_row, assembled into a scipy CSR
        (ARCHIVE_COPY: a copy of the archive, which bionemo opens r+)

Prints "rows ROWS bytes BYTES seconds ELAPSED" (bytes: of batch files; 0 for bionemo).
"""

import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "examples"), os.path.join(REPO, "tests", "oracle")]
from venv_switch import DEFAULT_VENV, ensure  # noqa: E402

if __name__ == "__main__":
    ensure("batch_reads", ["numpy", "scipy", "safetensors"])

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import scdl_batches  # noqa: E402

BATCH = 256


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def start_barrier():
    """Readers started together wait for the same instant (SCDL_BENCH_START, epoch seconds)."""
    at = float(os.environ.get("SCDL_BENCH_START", "0"))
    while time.time() < at:
        time.sleep(0.001)


def bench_mount(mnt, name, plan, secs):
    fmt = arg("--fmt", "npz")
    worker, workers = int(arg("--worker", "0")), int(arg("--workers", "1"))
    count = scdl_batches.batch_count(mnt, name, plan, 0)
    start_barrier()
    rows = nbytes = 0
    epoch, k = 0, worker
    start = time.perf_counter()
    while time.perf_counter() - start < secs:
        if k >= count:
            epoch, k = epoch + 1, worker
        path = scdl_batches.batch_path(mnt, name, plan, epoch, k, fmt)
        data = scdl_batches.read_whole(path)
        parse = scdl_batches.parse_npz if fmt == "npz" else scdl_batches.parse_safetensors
        m, _, _ = parse(data)
        rows += m.shape[0]
        nbytes += len(data)
        k += workers
    return rows, nbytes, time.perf_counter() - start


def bench_bionemo(copy, secs):
    venv = os.environ.get("SCDL_FS_TEST_VENV", DEFAULT_VENV)
    sys.path[:0] = [os.path.join(venv, "bionemo-0.1.3"), os.path.join(REPO, "tests", "oracle", "torch_stub")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset

        ds = SingleCellMemMapDataset(copy)
    n = int(ds.number_of_rows())
    width = int(ds.number_of_variables()[0]) if hasattr(ds, "number_of_variables") else None
    rng = np.random.default_rng(int(time.time()))
    start_barrier()
    rows = 0
    start = time.perf_counter()
    while time.perf_counter() - start < secs:
        values, cols, lengths = [], [], []
        for r in rng.choice(n, BATCH, replace=False):
            v, c = ds.get_row(int(r))[0]
            values.append(np.asarray(v))
            cols.append(np.asarray(c))
            lengths.append(len(v))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        shape = (BATCH, width or int(max((c.max() for c in cols if len(c)), default=0)) + 1)
        m = sp.csr_matrix((np.concatenate(values), np.concatenate(cols).astype(np.int32), indptr), shape=shape)
        rows += m.shape[0]
    return rows, 0, time.perf_counter() - start


def main():
    mode = sys.argv[1]
    if mode == "mount":
        rows, nbytes, secs = bench_mount(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif mode == "bionemo":
        rows, nbytes, secs = bench_bionemo(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {mode}")
    print(f"rows {rows} bytes {nbytes} seconds {secs:.3f}")


if __name__ == "__main__":
    main()
