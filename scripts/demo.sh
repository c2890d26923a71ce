#!/usr/bin/env bash
# The main job on a built-in default: builds scdl-fs, mounts it (default: /mnt/scdl over the
# default store), drops the bundled example (tests/fixtures/h5ad/csr_f32.h5ad, 40 cells x 30 genes)
# in, waits for the conversion and shows what can be read. The mount stays up: `umount MNT` ends it.
#
#   scripts/demo.sh [MOUNTPOINT] [STORE]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/system-deps.sh"
command -v cargo >/dev/null 2>&1 || { echo "demo: install a Rust toolchain (https://rustup.rs) first" >&2; exit 1; }
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
BIN="$ROOT/target/release/scdl-fs"
MNT="${1:-/mnt/scdl}"
mkdir -p "$MNT"
if ! mountpoint -q "$MNT"; then
  "$BIN" mount "$MNT" ${2:+--store "$2"}
fi
echo "mounted: $(grep " $MNT " /proc/mounts | cut -d' ' -f1-3)"
if [[ ! -e "$MNT/example" ]]; then
  cp "$ROOT/tests/fixtures/h5ad/csr_f32.h5ad" "$MNT/example.h5ad"
fi
for _ in $(seq 100); do
  grep -q '"state":"\(ready\|failed\)"' "$MNT/example/status.json" && break
  sleep 0.1
done
echo "\$ cat $MNT/example/status.json"; cat "$MNT/example/status.json"
echo "\$ ls $MNT/example"; ls "$MNT/example"
echo "\$ ls $MNT/example/rows | head -3"; ls "$MNT/example/rows" | head -3
echo "\$ od -A d -t f4 -j 128 $MNT/example/rows/0.npy | head -3   # row 0, dense float32 after the .npy header"
od -A d -t f4 -j 128 "$MNT/example/rows/0.npy" | head -3
echo "read cells with e.g. numpy.load('$MNT/example/rows/0.npy') or scipy.sparse.load_npz('$MNT/example/csr/0-10.npz');"
echo "unmount with: umount $MNT"
