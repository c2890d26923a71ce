#!/usr/bin/env bash
# Read benchmark through the mount, on the conversion benchmark's dataset (200,000 x 20,000), one
# reader.
#  1. Side by side, interleaved (bench/ab_reads.py): random rows/<i>.npy read over FUSE over
#     io_uring, over /dev/fuse (--no-io-uring), and from a bare FUSE file system serving files of
#     the same size (examples/bare_fuse.rs: the ceiling of a fuser server); open+read and np.load;
#     then 1,024-row csr/<a>-<b>.npz over both transports.
#  2. bench/mount_reads.py on the io_uring mount: rows, csr ranges and bionemo-scdl 0.1.3's
#     in-process get_row in the same run.
#  3. Daemon RSS after reading 10^6 distinct row files of a 1,000,000-row dataset.
# Needs root (mounts; offering FUSE over io_uring via /sys/module/fuse/parameters/enable_uring).
#
#   bench/mount.sh [SECONDS] [ROUNDS]
# With BASELINE=/path/to/another/scdl-fs (say, a build of main), the store is also mounted with
# that binary (io_uring) and read in the same interleaved rounds, labelled baseline.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECONDS_EACH="${1:-10}"
ROUNDS="${2:-7}"
MNT="$(mktemp -d)"
bench_setup --example bare_fuse
BARE="$ROOT/target/release/examples/bare_fuse"
URING_PARAM=/sys/module/fuse/parameters/enable_uring
[[ -w "$URING_PARAM" ]] && echo Y > "$URING_PARAM"
bench_input "$DATA/bench.h5ad" make_h5ad.py
bench_archive "$DATA/bench.h5ad" "$STORE/bench"
bench_input "$DATA/tall.h5ad" make_h5ad.py --rows 1000000 --cols 2000 --density 0.01
bench_archive "$DATA/tall.h5ad" "$STORE/tall"
PLAIN="$(mktemp -d)"
BAREMNT="$(mktemp -d)"
trap 'for m in "$MNT" "$PLAIN" "$BAREMNT"; do umount "$m" 2>/dev/null || true; rmdir "$m"; done; rm -f "${ROW_FILE:-}"' EXIT
"$BIN" mount "$MNT" --store "$STORE"
"$BIN" mount "$PLAIN" --store "$STORE" --no-io-uring
BASEMNT="$(mktemp -d)"
trap 'for m in "$MNT" "$PLAIN" "$BAREMNT" "$BASEMNT"; do umount "$m" 2>/dev/null || true; rmdir "$m"; done; rm -f "${ROW_FILE:-}"' EXIT
rows_baseline=() npz_baseline=()
if [[ -n "${BASELINE:-}" ]]; then
  "$BASELINE" mount "$BASEMNT" --store "$STORE"
  rows_baseline=(baseline="$BASEMNT/bench/rows:{}.npy:200000")
  npz_baseline=(baseline="$BASEMNT/bench/csr:{}-{}.npz:200000")
fi
ROW_BYTES=$(stat -c %s "$MNT/bench/rows/0.npy")
ROW_FILE="$(mktemp)"
cp "$MNT/bench/rows/0.npy" "$ROW_FILE"  # the bare file system serves copies of a real row
"$BARE" "$BAREMNT" 200000 "@$ROW_FILE" 4 &
for _ in $(seq 50); do mountpoint -q "$BAREMNT" && break; sleep 0.1; done
echo "## uname: $(uname -r); FUSE over io_uring offered: $(cat "$URING_PARAM" 2>/dev/null || echo no)"
echo "## random rows/<i>.npy ($ROW_BYTES bytes), side by side, $ROUNDS rounds of 2 s"
for mode in read npload; do
  "$PY" "$ROOT/bench/ab_reads.py" --mode "$mode" --rounds "$ROUNDS" \
    io_uring="$MNT/bench/rows:{}.npy:200000" dev_fuse="$PLAIN/bench/rows:{}.npy:200000" \
    bare_fuse="$BAREMNT:{}:200000" "${rows_baseline[@]}"
done
echo "## random 1,024-row csr/<a>-<b>.npz, side by side"
"$PY" "$ROOT/bench/ab_reads.py" --mode npz --rounds "$ROUNDS" \
  io_uring="$MNT/bench/csr:{}-{}.npz:200000" dev_fuse="$PLAIN/bench/csr:{}-{}.npz:200000" \
  "${npz_baseline[@]}"
umount "$BAREMNT" "$PLAIN"
[[ -n "${BASELINE:-}" ]] && umount "$BASEMNT"
echo "## reads with bionemo-scdl side by side (io_uring mount), one reader, ${SECONDS_EACH}s per loop"
"$PY" "$ROOT/bench/mount_reads.py" "$MNT" bench --archive "$STORE/bench" --seconds "$SECONDS_EACH"

pid=$(pgrep -f -- "mount $MNT" | head -n 1)
rss() { awk '/VmRSS/ { print int($2 / 1024) }' "/proc/$pid/status"; }
echo "## daemon RSS: $(rss) MB before reading 10^6 distinct rows/<i>.npy of tall (1,000,000 x 2,000)"
"$PY" - "$MNT/tall/rows" <<'PY'
import os, sys, time
d = sys.argv[1]
t = time.time()
for i in range(1_000_000):
    with open(f"{d}/{i}.npy", "rb") as f:
        f.read()
print(f"read 1,000,000 distinct row files in {time.time() - t:.1f} s")
PY
echo "## daemon RSS: $(rss) MB after"
