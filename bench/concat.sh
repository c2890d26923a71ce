#!/usr/bin/env bash
# Concat benchmark: scdl-fs concat of two copies of the 200,000 x 20,000 benchmark archive vs `cp`
# of the same bytes (both archives' files) on the same disk, both followed by fsync of what they
# wrote (concat always fsyncs before publishing). Wall time and peak RSS, medians of RUNS.
#
#   bench/concat.sh [RUNS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-3}"
DATA="$ROOT/bench-data"
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
BIN="$ROOT/target/release/scdl-fs"
if [[ ! -d "$DATA/store/bench" ]]; then
  PY="$(bash "$ROOT/scripts/test-env.sh" | tail -n 1)"
  mkdir -p "$DATA/store"
  [[ -f "$DATA/bench.h5ad" ]] || "$PY" "$ROOT/bench/make_h5ad.py" "$DATA/bench.h5ad"
  "$BIN" convert "$DATA/bench.h5ad" "$DATA/store/bench"
fi
SRC="$DATA/store/bench"
WORK="$(mktemp -d "$DATA/concat-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cp -r "$SRC" "$WORK/copy"           # the second input
BYTES=$(( $(du -sb "$SRC" | cut -f1) * 2 ))
median() { sort -n | awk '{ v[NR]=$1 } END { print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2 }'; }
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/cp" "$WORK/out"; sync
  /usr/bin/time -f "%e %M" -o "$WORK/t" bash -c 'mkdir "$1/cp" && cp -r "$2" "$1/cp/a" && cp -r "$3" "$1/cp/b" && sync -f "$1/cp"' _ "$WORK" "$SRC" "$WORK/copy"
  echo "cp $(cat "$WORK/t")" >>"$WORK/results"
  sync
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$BIN" concat "$WORK/out" "$SRC" "$WORK/copy" 2>/dev/null
  echo "concat $(cat "$WORK/t")" >>"$WORK/results"
done
echo "two copies of $SRC ($((BYTES / 1000000)) MB in all), $RUNS runs each"
. "$ROOT/bench/lib.sh"
table "$WORK/results" "$((BYTES / 1000000))" cp concat
