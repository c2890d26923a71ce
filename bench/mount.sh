#!/usr/bin/env bash
# Read benchmark through the mount, on the conversion benchmark's dataset (200,000 x 20,000), one
# reader: random rows/<i>.npy and 1,024-row csr/<a>-<b>.npz, with bionemo-scdl 0.1.3's in-process
# get_row measured in the same run; then daemon RSS after reading 10^6 distinct row files of a
# 1,000,000-row dataset.
#
#   bench/mount.sh [SECONDS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/test-env.sh" | tail -n 1)"
SECONDS_EACH="${1:-10}"
DATA="$ROOT/bench-data"
STORE="$DATA/store"
MNT="$(mktemp -d)"
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
BIN="$ROOT/target/release/scdl-fs"
mkdir -p "$STORE"
[[ -f "$DATA/bench.h5ad" ]] || "$PY" "$ROOT/bench/make_h5ad.py" "$DATA/bench.h5ad"
[[ -d "$STORE/bench" ]] || "$BIN" convert "$DATA/bench.h5ad" "$STORE/bench"
[[ -f "$DATA/tall.h5ad" ]] || "$PY" "$ROOT/bench/make_h5ad.py" "$DATA/tall.h5ad" --rows 1000000 --cols 2000 --density 0.01
[[ -d "$STORE/tall" ]] || "$BIN" convert "$DATA/tall.h5ad" "$STORE/tall"
trap 'umount "$MNT" 2>/dev/null || true; rmdir "$MNT"' EXIT
"$BIN" mount "$MNT" --store "$STORE"
echo "## reads, one reader, ${SECONDS_EACH}s per loop"
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
