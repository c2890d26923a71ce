"""Self-test of tests/mount/read_check.py, without scdl-fs's own mount.

    PY=$(scripts/test-env.sh | tail -n 1)
    PYTHONDONTWRITEBYTECODE=1 "$PY" -m pytest -q -p no:cacheprovider tests/mount/test_read_check_selftest.py

A hand-made tree mimics what the scdl-fs mount serves for a dataset (MNT/NAME/status.json, the archive files
made by target/release/scdl-fs convert, features/<k>.json, rows/<i>.npy written by np.save, rows/<a>-<b>.npy,
csr/<a>-<b>.npz written by scipy.sparse.save_npz). read_check.py must pass on it and name the group that a
corruption breaks.

Two ways to serve the tree:
  fuse   a small read-only FUSE passthrough (this file, --serve) that, like scdl-fs, lists only the rows/<i>.npy
         entries while rows/<a>-<b>.npy still open. Needs the pure-python package mfusepy (importable, or in
         the directory named by SCDL_FS_SELFTEST_PYLIB), libfuse3 and /dev/fuse; skipped otherwise.
  plain  the tree as a directory, bind-mounted read-only in a private mount namespace (unshare -rm). The range
         files are then listed in rows/, so the "listing" group must fail and all others pass.
Needs target/release/scdl-fs (skipped without it).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "h5ad")
BIN = os.path.join(REPO, "target", "release", "scdl-fs")
READ_CHECK = os.path.join(HERE, "read_check.py")
RANGE_NAME = re.compile(r"^\d+-\d+\.npy$")

if os.environ.get("SCDL_FS_SELFTEST_PYLIB"):
    sys.path.insert(0, os.environ["SCDL_FS_SELFTEST_PYLIB"])


# =========================================================================================== FUSE server
def serve(backing, mnt):
    """Read-only passthrough of `backing` at `mnt`; range files in */rows/ are hidden from readdir."""
    import errno

    import mfusepy as fuse

    class ReadOnly(fuse.Operations):
        use_ns = True

        def real(self, path):
            return os.path.join(backing, path.lstrip("/"))

        def getattr(self, path, fh=None):
            st = os.lstat(self.real(path))
            keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
            out = {k.replace("_ns", ""): getattr(st, k) for k in keys}
            out["st_mode"] &= ~0o222  # no write bits, like scdl-fs
            return out

        def readdir(self, path, fh):
            names = sorted(os.listdir(self.real(path)), key=lambda s: (len(s), s))
            if os.path.basename(path.rstrip("/")) == "rows":
                names = [n for n in names if not RANGE_NAME.match(n)]
            return [".", ".."] + names

        def open(self, path, flags):
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise fuse.FuseOSError(errno.EROFS)
            return os.open(self.real(path), os.O_RDONLY)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def release(self, path, fh):
            os.close(fh)
            return 0

    fuse.FUSE(ReadOnly(), mnt, foreground=True, ro=True)


def have_fuse():
    if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        return False
    try:
        import mfusepy  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    serve(sys.argv[2], sys.argv[3])
    sys.exit(0)


import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, HERE)
import read_check as RC  # noqa: E402  (its choose_ranges picks the ranges the fake tree must hold)


# =========================================================================================== fake tree
def convert(src, out):
    subprocess.run([BIN, "convert", src, out], check=True, capture_output=True)


def archive_blocks(archive):
    import pyarrow.parquet as pq

    fdir = os.path.join(archive, "features")
    csum = np.load(os.path.join(fdir, "cumulative_sum_index.npy"))
    labels = np.load(os.path.join(fdir, "labels.npy"))
    ends = [max(int(c), 0) for c in csum]
    out = []
    for k in range(len(csum) - 1):
        t = pq.read_table(os.path.join(fdir, f"dataframe_{k}.parquet"))
        cols = {c: [None if v is None else (v if isinstance(v, (int, float, bool)) else str(v))
                    for v in t.column(c).to_pylist()] for c in t.column_names}
        out.append({"first_row": ends[k], "num_rows": ends[k + 1] - ends[k], "num_vars": t.num_rows,
                    "label": str(labels[k]), "columns": cols})
    return out


def build_tree(archive, mnt, name, seed=0):
    """MNT/NAME laid out like the scdl-fs mount serves a ready dataset."""
    import scipy.sparse as sp

    root = os.path.join(mnt, name)
    shutil.copytree(archive, root)
    dtypes = json.load(open(os.path.join(archive, "dtypes.json")))
    data, cols, ptr = (np.fromfile(os.path.join(archive, f), dtype=np.dtype(dtypes[f]).newbyteorder("<"))
                       for f in ("data.npy", "col_ptr.npy", "row_ptr.npy"))
    cols, ptr = cols.astype(np.int64), ptr.astype(np.int64)
    dt = np.dtype(dtypes["data.npy"])
    n = len(ptr) - 1
    blocks = archive_blocks(archive)
    with open(os.path.join(root, "status.json"), "w") as fh:
        json.dump({"name": name, "state": "ready", "rows_done": n, "rows_total": n, "error": None}, fh)
    for k, b in enumerate(blocks):
        with open(os.path.join(root, "features", f"{k}.json"), "w") as fh:
            json.dump(b, fh)

    def dense(a, b, nv):
        out = np.zeros((b - a, nv), dtype=dt)
        for r in range(a, b):
            out[r - a, cols[ptr[r]:ptr[r + 1]]] = data[ptr[r]:ptr[r + 1]]
        return out

    def nvars(r):
        return next(b["num_vars"] for b in blocks if b["first_row"] <= r < b["first_row"] + b["num_rows"])

    os.makedirs(os.path.join(root, "rows"))
    os.makedirs(os.path.join(root, "csr"))
    for r in range(n):
        np.save(os.path.join(root, "rows", f"{r}.npy"), dense(r, r + 1, nvars(r))[0])
    rblocks = [RC.Block(k, b["first_row"], b["num_rows"], b["num_vars"]) for k, b in enumerate(blocks)]
    for a, b, blk in RC.choose_ranges(rblocks, seed):
        np.save(os.path.join(root, "rows", f"{a}-{b}.npy"), dense(a, b, blk.n_vars))
        m = sp.csr_matrix((data[ptr[a]:ptr[b]], cols[ptr[a]:ptr[b]], ptr[a:b + 1] - ptr[a]), shape=(b - a, blk.n_vars))
        sp.save_npz(os.path.join(root, "csr", f"{a}-{b}.npz"), m)
    return root, n


@pytest.fixture(scope="session")
def archives(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.skip(f"{BIN} not built")
    d = tmp_path_factory.mktemp("archives")
    out = {}
    for key, src in [("f32", "csr_f32.h5ad"), ("dir", "dir"), ("large", "large_csr_f32.h5ad"),
                     ("nan", "csr_nan_inf.h5ad"), ("zero", "csr_zero_rows.h5ad")]:
        out[key] = (str(d / key), os.path.join(FIXTURES, src))
        convert(out[key][1], out[key][0])
    return out


# =========================================================================================== running read_check
def run_check(mnt, name, sources, *extra, plain_ro=False):
    cmd = [sys.executable, READ_CHECK, mnt, name, *sources, *extra]
    if plain_ro:  # a private read-only bind mount of the tree, so that writes fail with EROFS
        inner = f'mount --bind -o ro "$0" "$0" && exec "$@"'
        cmd = ["unshare", "-rm", "sh", "-c", inner, mnt, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
                       timeout=1800)
    groups = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^(PASS|FAIL) ([\w.-]+): (.*)$", line)
        if m:
            groups[m.group(2)] = (m.group(1), m.group(3))
    return p, groups


def failed(groups):
    return {g for g, (s, _) in groups.items() if s == "FAIL"}


class FuseMount:
    def __init__(self, backing, mnt):
        self.backing, self.mnt = backing, mnt

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", self.backing, self.mnt],
                                     env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(200):
            if os.path.ismount(self.mnt):
                return self.mnt
            if self.proc.poll() is not None:
                raise RuntimeError(f"FUSE server exited: {self.proc.stderr.read().decode()[-800:]}")
            time.sleep(0.05)
        raise RuntimeError("FUSE mount did not appear")

    def __exit__(self, *exc):
        subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


needs_fuse = pytest.mark.skipif(not have_fuse(), reason="mfusepy / libfuse3 / /dev/fuse not available")
needs_unshare = pytest.mark.skipif(
    not shutil.which("unshare")
    or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0,
    reason="unshare -rm not permitted",
)


def fake(tmp_path, archives, key, name="ds"):
    archive, src = archives[key]
    backing = str(tmp_path / "backing")
    os.makedirs(backing)
    root, n = build_tree(archive, backing, name)
    return backing, root, src, n


# =========================================================================================== tests
@needs_fuse
@pytest.mark.parametrize("key,extra", [("f32", ["--bionemo"]), ("dir", ["--bionemo"]), ("large", ["--samples", "50"]),
                                       ("nan", []), ("zero", [])])
def test_correct_tree_passes(tmp_path, archives, key, extra):
    backing, _, src, _ = fake(tmp_path, archives, key)
    with FuseMount(backing, str(tmp_path / "mnt")) as mnt:
        p, groups = run_check(mnt, "ds", [src], *extra)
    assert p.returncode == 0, p.stdout + p.stderr
    want = {"status", "archive", "memmap", "features", "rows", "sizes", "ranges", "missing", "csr", "listing",
            "readonly"}
    if "--bionemo" in extra:
        want |= {"bionemo-0.1.3", "bionemo-0.0.5"}
    assert set(groups) == want and not failed(groups), p.stdout


def corrupt_row(root, n):
    p = os.path.join(root, "rows", "5.npy")
    a = np.load(p)
    a[3] = a[3] + 7
    np.save(p, a)


def corrupt_range(root, n):
    f = sorted(f for f in os.listdir(os.path.join(root, "rows")) if RANGE_NAME.match(f))[-1]
    a = np.load(os.path.join(root, "rows", f))
    a[-1, -1] += 1
    np.save(os.path.join(root, "rows", f), a)


def corrupt_csr(root, n):
    import scipy.sparse as sp

    f = sorted(os.listdir(os.path.join(root, "csr")))[-1]
    m = sp.load_npz(os.path.join(root, "csr", f))
    m.data[0] += 1
    sp.save_npz(os.path.join(root, "csr", f), m)


def corrupt_csr_pickled(root, n):
    f = sorted(os.listdir(os.path.join(root, "csr")))[0]
    p = os.path.join(root, "csr", f)
    z = dict(np.load(p))
    z["format"] = np.array(["csr"], dtype=object)
    np.savez(p, **z)


def corrupt_data(root, n):
    p = os.path.join(root, "data.npy")
    a = np.fromfile(p, dtype="<f4")
    a[10] += 1
    a.tofile(p)


def corrupt_extra_row(root, n):
    shutil.copy(os.path.join(root, "rows", "0.npy"), os.path.join(root, "rows", f"{n}.npy"))


def corrupt_status(root, n):
    with open(os.path.join(root, "status.json"), "w") as fh:
        json.dump({"name": "ds", "state": "converting", "rows_done": 3, "rows_total": n, "error": None}, fh)


def corrupt_features(root, n):
    p = os.path.join(root, "features", "0.json")
    j = json.load(open(p))
    first = next(iter(j["columns"]))
    for c in j["columns"]:
        j["columns"][c] = list(reversed(j["columns"][c])) if c == first else [0] * j["num_vars"]
    json.dump(j, open(p, "w"))


def corrupt_row_dtype(root, n):
    p = os.path.join(root, "rows", "0.npy")
    np.save(p, np.load(p).astype(np.float64))


@needs_fuse
@pytest.mark.parametrize("corrupt,want", [
    (corrupt_row, {"rows"}),
    (corrupt_range, {"ranges"}),
    (corrupt_csr, {"csr"}),
    (corrupt_csr_pickled, {"csr"}),
    (corrupt_data, {"archive", "memmap"}),
    (corrupt_extra_row, {"missing", "listing"}),
    (corrupt_status, {"status"}),
    (corrupt_features, {"features"}),
    (corrupt_row_dtype, {"rows"}),
])
def test_corruption_is_caught(tmp_path, archives, corrupt, want):
    backing, root, src, n = fake(tmp_path, archives, "f32")
    corrupt(root, n)
    with FuseMount(backing, str(tmp_path / "mnt")) as mnt:
        p, groups = run_check(mnt, "ds", [src])
    assert p.returncode == 1, p.stdout + p.stderr
    assert failed(groups) == want, p.stdout


@needs_fuse
def test_crossing_range_must_not_exist(tmp_path, archives):
    backing, root, src, n = fake(tmp_path, archives, "dir")
    b0 = json.load(open(os.path.join(root, "features", "0.json")))
    end = b0["first_row"] + b0["num_rows"]
    np.save(os.path.join(root, "rows", f"{end - 1}-{end + 1}.npy"), np.zeros((2, b0["num_vars"]), np.float32))
    with FuseMount(backing, str(tmp_path / "mnt")) as mnt:
        p, groups = run_check(mnt, "ds", [src])
    assert p.returncode == 1 and failed(groups) == {"missing"}, p.stdout


@needs_fuse
def test_wrong_source_fails(tmp_path, archives):
    backing, _, _, _ = fake(tmp_path, archives, "f32")
    with FuseMount(backing, str(tmp_path / "mnt")) as mnt:
        p, groups = run_check(mnt, "ds", [os.path.join(FIXTURES, "csr_f64.h5ad")])
    assert p.returncode == 1 and {"archive", "memmap", "rows", "ranges", "csr"} <= failed(groups), p.stdout


@needs_unshare
def test_plain_directory_read_only(tmp_path, archives):
    """Without FUSE: the range files are listed in rows/ (a directory cannot hide them), all else passes."""
    backing, root, src, n = fake(tmp_path, archives, "f32")
    p, groups = run_check(backing, "ds", [src], plain_ro=True)
    assert failed(groups) == {"listing"}, p.stdout + p.stderr
    assert "extra" in groups["listing"][1] and groups["readonly"][0] == "PASS"
    assert p.returncode == 1


@needs_unshare
def test_plain_directory_corrupt_row(tmp_path, archives):
    backing, root, src, n = fake(tmp_path, archives, "f32")
    corrupt_row(root, n)
    p, groups = run_check(backing, "ds", [src], plain_ro=True)
    assert failed(groups) == {"listing", "rows"}, p.stdout + p.stderr
    assert "rows/5.npy column 3" in groups["rows"][1]


def test_writable_directory_fails_readonly(tmp_path, archives):
    backing, root, src, n = fake(tmp_path, archives, "f32")
    p, groups = run_check(backing, "ds", [src])
    assert {"readonly", "listing"} == failed(groups), p.stdout
    assert not os.path.exists(os.path.join(root, "new.txt"))


def test_usage_errors(tmp_path):
    p = subprocess.run([sys.executable, READ_CHECK, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2
    p = subprocess.run([sys.executable, READ_CHECK, str(tmp_path), "x", str(tmp_path / "missing.h5ad")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    p = subprocess.run([sys.executable, READ_CHECK, str(tmp_path), "x", os.path.join(FIXTURES, "csr_f32.h5ad"),
                        "--matrix", "bogus"], capture_output=True, text=True)
    assert p.returncode == 2
    p = subprocess.run([sys.executable, READ_CHECK, str(tmp_path), "x", os.path.join(FIXTURES, "csr_f32.h5ad")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "FAIL dataset" in p.stdout
