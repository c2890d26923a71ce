"""Reading shuffled minibatches from an scdl-fs mount, with numpy and scipy only.

    MNT/NAME/batches/<PLAN>/<EPOCH>/<K>.npz          (scipy.sparse.load_npz reads it too)
    MNT/NAME/batches/<PLAN>/<EPOCH>/<K>.safetensors  (safetensors.numpy / safetensors.torch)

A batch file is read with one read(2) of its whole size (the daemon hands it over in as few
FUSE READs as the kernel allows), then parsed in memory. examples/torch_batches.py builds a
PyTorch Dataset on these functions; the test suite runs them with numpy only
(tests/batches/mount_check.py).
"""

import io
import json
import os
import re
import struct

import numpy as np
import scipy.sparse as sp


def plan_name(size, seed=0, block=1, ranks=1, rank=0):
    """The canonical `<PLAN>` directory name (keys in any order name the same plan)."""
    return f"size={size},seed={seed},block={block},ranks={ranks},rank={rank}"


def epoch_dir(mnt, name, plan, epoch):
    return os.path.join(mnt, name, "batches", plan, str(epoch))


def batch_count(mnt, name, plan, epoch):
    """This rank's number of batches in `epoch` (listing the epoch's directory)."""
    return sum(1 for f in os.listdir(epoch_dir(mnt, name, plan, epoch)) if f.endswith(".npz"))


def batch_path(mnt, name, plan, epoch, k, fmt="npz"):
    return os.path.join(epoch_dir(mnt, name, plan, epoch), f"{k}.{fmt}")


def read_whole(path):
    """The file's bytes in one read of its size (stat gives the exact size)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        chunks, got = [], 0
        while got < size:
            chunk = os.read(fd, size - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER = re.compile(
    r"\{'descr': '([^']+)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), *\}"
)


def npy_array(data, start):
    """The `.npy` file at `data[start:]` as an array viewing `data`, without a copy. The header
    is read with a regular expression: the mount writes it in numpy's own canonical form, and
    numpy's parser (ast.literal_eval, a compile per member) would cost more than the whole read
    of a batch. Anything else is handed to numpy's parser."""
    if data[start : start + 6] != _NPY_MAGIC:
        raise ValueError("not a .npy member")
    major = data[start + 6]
    if major == 1:
        (hlen,), hstart = struct.unpack_from("<H", data, start + 8), start + 10
    else:
        (hlen,), hstart = struct.unpack_from("<I", data, start + 8), start + 12
    header = bytes(data[hstart : hstart + hlen]).decode("latin1")
    m = _NPY_HEADER.match(header)
    if m:
        dtype = np.dtype(m.group(1))
        fortran = m.group(2) == "True"
        shape = tuple(int(d) for d in m.group(3).replace(" ", "").split(",") if d)
    else:
        member = io.BytesIO(bytes(data[start : hstart + hlen]))
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(member)
    count = 1
    for d in shape:
        count *= d
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=hstart + hlen)
    return arr.reshape(shape, order="F" if fortran else "C")


def npz_members(data):
    """The arrays of a stored (uncompressed) `.npz` as {name: array}, viewing `data` without a
    copy: each zip member's local header gives its size, each member is a `.npy` file.
    np.load reads the same file but copies every member and checks its CRC in Python, which
    costs several times the read of the file itself."""
    arrays, at = {}, 0
    while data[at : at + 4] == b"PK\x03\x04":
        method, size = struct.unpack_from("<H", data, at + 8)[0], struct.unpack_from("<I", data, at + 18)[0]
        name_len, extra_len = struct.unpack_from("<HH", data, at + 26)
        if method != 0:
            return None  # compressed: not a batch file as the mount writes it
        name = bytes(data[at + 30 : at + 30 + name_len]).decode()
        start = at + 30 + name_len + extra_len
        arrays[name.removesuffix(".npy")] = npy_array(data, start)
        at = start + size
    return arrays


def parse_npz(data):
    """A batch `.npz` as (scipy CSR matrix, row_ids, feature_block)."""
    z = npz_members(data)
    if z is None:
        z = np.load(io.BytesIO(data))
    m = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(int(d) for d in z["shape"]))
    return m, z["row_ids"], z["feature_block"]


def parse_safetensors(data):
    """A batch `.safetensors` as (scipy CSR matrix, row_ids, feature_block)."""
    from safetensors.numpy import load

    t = load(data)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + header_len])["__metadata__"]
    shape = tuple(json.loads(meta["shape"]))
    m = sp.csr_matrix((t["data"], t["indices"], t["indptr"]), shape=shape)
    return m, t["row_ids"], t["feature_block"]


def read_batch(path):
    """Batch file `path` (either format) as (scipy CSR matrix, row_ids, feature_block)."""
    data = read_whole(path)
    return parse_npz(data) if path.endswith(".npz") else parse_safetensors(data)


def rank_batches(mnt, name, size, epoch, seed=0, block=1, ranks=1, rank=0, fmt="npz"):
    """The paths of one rank's batches of `epoch`, in order."""
    plan = plan_name(size, seed, block, ranks, rank)
    n = batch_count(mnt, name, plan, epoch)
    return [batch_path(mnt, name, plan, epoch, k, fmt) for k in range(n)]
