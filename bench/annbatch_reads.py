"""annbatch 0.3.1 in the shuffled-batch benchmark (bench/batches.sh), in a venv of its own
(bench/annbatch-env.sh: it needs Python >= 3.12):

    annbatch_reads.py convert H5AD ZARR     its own conversion into a pre-shuffled zarr collection
        -> "convert SECONDS peak_rss_mb MB"
    annbatch_reads.py read ZARR SECONDS     its Loader with default settings (chunk_size 512,
        preload_nchunks 32), shuffle=True, batch_size=256, scipy CSR batches, for SECONDS
        -> "rows ROWS bytes 0 seconds ELAPSED"
"""

import resource
import sys
import time
import warnings

warnings.simplefilter("ignore")
from annbatch import DatasetCollection, Loader  # noqa: E402


def main():
    mode = sys.argv[1]
    if mode == "convert":
        start = time.perf_counter()
        DatasetCollection(sys.argv[3], mode="a").add_adatas([sys.argv[2]])
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"convert {time.perf_counter() - start:.2f} peak_rss_mb {rss:.0f}")
        return
    path, secs = sys.argv[2], float(sys.argv[3])
    loader = Loader(batch_size=256, shuffle=True).use_collection(DatasetCollection(path, mode="r"))
    rows = 0
    start = time.perf_counter()
    while time.perf_counter() - start < secs:
        for batch in loader:
            rows += batch["X"].shape[0]
            if time.perf_counter() - start >= secs:
                break
    print(f"rows {rows} bytes 0 seconds {time.perf_counter() - start:.3f}")


if __name__ == "__main__":
    main()
