#!/usr/bin/env python3
"""A tiny reference converter (numpy/pandas/pyarrow only) writing the archive contract that verify.py checks.

It exists to test the oracle itself, not to be used for anything else:

    PY=$(scripts/test-env.sh)
    "$PY" tests/oracle/reference_convert.py OUT SOURCE [SOURCE...] [--matrix auto|X|raw|layers/NAME]
                                             [--data-dtype float32] [--header] [--index-dtypes wide|narrow]

Writes OUT/ with data.npy (raw little-endian values, no npy header), col_ptr.npy and row_ptr.npy (wide:
uint32 and uint64, bionemo-scdl 0.0.5's layout; narrow: the smallest unsigned type holding the largest
column index and the number of values, bionemo-scdl 0.1.3's smallest_uint_dtype), dtypes.json, metadata.json {"num_rows": N}, version.json and features/ (one block per source:
dataframe_<i>.parquet with a feature_id column of var ids, cumulative_sum_index.npy, labels.npy, version.npy).
obs_features/ holds the sources' obs by the same layout (one block per source, the obs index first as a column).
--header also writes header.sch (bionemo-scdl 0.1.3's binary header, which 0.1.3 reads the dtypes from).
Sources are read exactly as verify.py reads them.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyarrow as pa  # noqa: E402
from verify import expected_obs_columns, list_sources, read_source, smallest_uint  # noqa: E402

SCDL_VERSION = "0.1.3"
# bionemo-scdl 0.1.3 header: ArrayDType enum (no signed integers), schema version 0.1.0, backend MEMMAP_V0 = 1
HEADER_DTYPES = {"uint8": 1, "uint16": 2, "uint32": 3, "uint64": 4, "float16": 5, "float32": 6, "float64": 7}


def header_bytes(arrays):
    """SCDL header.sch, network byte order: magic, version, endianness, backend, arrays, feature indices."""
    def string(s):
        b = s.encode()
        return struct.pack(">I", len(b)) + b

    out = b"SCDL" + struct.pack(">BBBBII", 0, 1, 0, 1, 1, len(arrays))
    for name, length, dtype in arrays:
        out += string(name) + struct.pack(">QIB", length, HEADER_DTYPES[dtype], 0)
    return out + struct.pack(">I", 0)


def convert(out, sources, data_dtype, header, index_dtypes="wide"):
    os.makedirs(os.path.join(out, "features"))
    data = np.concatenate([s.data.astype(data_dtype) for s in sources] + [np.zeros(0, data_dtype)])
    if index_dtypes == "wide":
        col_dt, ptr_dt = "uint32", "uint64"
    else:
        col_dt = smallest_uint(max([s.n_vars for s in sources] + [1]) - 1)
        ptr_dt = smallest_uint(sum(len(s.data) for s in sources))
    cols = np.concatenate([s.indices for s in sources] + [np.zeros(0, np.int64)]).astype(np.dtype(col_dt).newbyteorder("<"))
    ptr, base = [np.zeros(1, np.int64)], 0
    for s in sources:
        ptr.append(s.indptr[1:] + base)
        base += int(s.indptr[-1])
    ptr = np.concatenate(ptr).astype(np.dtype(ptr_dt).newbyteorder("<"))
    data.astype(np.dtype(data_dtype).newbyteorder("<")).tofile(os.path.join(out, "data.npy"))
    cols.tofile(os.path.join(out, "col_ptr.npy"))
    ptr.tofile(os.path.join(out, "row_ptr.npy"))

    def dump(name, obj):
        with open(os.path.join(out, name), "w") as fh:
            json.dump(obj, fh)

    dump("dtypes.json", {"data.npy": np.dtype(data_dtype).name, "col_ptr.npy": col_dt, "row_ptr.npy": ptr_dt})
    dump("metadata.json", {"num_rows": int(len(ptr) - 1)})
    dump("version.json", SCDL_VERSION)

    fdir = os.path.join(out, "features")
    width = len(str(len(sources)))
    csum = [-1]
    for i, s in enumerate(sources):
        pd.DataFrame({"feature_id": s.ids}).to_parquet(os.path.join(fdir, f"dataframe_{i:0{width}d}.parquet"),
                                                       index=False)
        csum.append(max(csum[-1], 0) + s.n_rows)
    np.save(os.path.join(fdir, "cumulative_sum_index.npy"), np.array(csum, dtype=np.int64))
    np.save(os.path.join(fdir, "labels.npy"), np.array([os.path.abspath(s.path) for s in sources], dtype=str))
    np.save(os.path.join(fdir, "version.npy"), np.array(SCDL_VERSION))

    odir = os.path.join(out, "obs_features")
    os.makedirs(odir)
    csum = [-1]
    for i, s in enumerate(sources):
        cols = expected_obs_columns(s.obs, "all")
        pa.table({n: pa.array(v) for n, v in cols}).to_pandas().to_parquet(
            os.path.join(odir, f"dataframe_{i:0{width}d}.parquet"), index=False)
        csum.append(max(csum[-1], 0) + s.n_rows)
    np.save(os.path.join(odir, "cumulative_sum_index.npy"), np.array(csum, dtype=np.int64))
    np.save(os.path.join(odir, "labels.npy"), np.array([os.path.abspath(s.path) for s in sources], dtype=str))
    np.save(os.path.join(odir, "version.npy"), np.array(SCDL_VERSION))

    if header:
        name = np.dtype(data_dtype).name
        if name not in HEADER_DTYPES:
            sys.exit(f"reference_convert: header.sch cannot describe {name} data")
        arrays = [("DATA", len(data), name), ("ROWPTR", len(ptr), ptr_dt), ("COLPTR", len(cols), col_dt)]
        with open(os.path.join(out, "header.sch"), "wb") as fh:
            fh.write(header_bytes(arrays))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--matrix", default="auto")
    ap.add_argument("--data-dtype", default="float32")
    ap.add_argument("--header", action="store_true")
    ap.add_argument("--index-dtypes", choices=("wide", "narrow"), default="wide")
    args = ap.parse_args(argv)
    if os.path.exists(args.out):
        sys.exit(f"reference_convert: {args.out} exists")
    sources = [read_source(p, args.matrix) for p in list_sources(args.sources)]
    convert(args.out, sources, np.dtype(args.data_dtype), args.header, args.index_dtypes)


if __name__ == "__main__":
    main()
