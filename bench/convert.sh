#!/usr/bin/env bash
# Conversion benchmark: scdl-fs convert vs bionemo-scdl 0.1.3 on the same .h5ad, side by side.
# Prints wall time, throughput (input MB/s) and peak RSS for each run, then the medians.
#
#   bench/convert.sh [INPUT.h5ad] [RUNS]
# With BASELINE=/path/to/another/scdl-fs (say, a build of main), that binary's conversion runs
# in the same rounds too, labelled baseline.
#   COMPARE=confinement bench/convert.sh [INPUT.h5ad] [RUNS]
# Default input: bench-data/bench.h5ad, made (once) by bench/make_h5ad.py (200,000 x 20,000, 2.4 %).
# COMPARE=confinement runs scdl-fs with its confined converter (the default) and with
# SCDL_FS_UNCONFINED=1 (no confinement layers: for this comparison only) alternately instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/test-env.sh" | tail -n 1)"
VENV="$(dirname "$(dirname "$PY")")"
INPUT="${1:-$ROOT/bench-data/bench.h5ad}"
RUNS="${2:-5}"
if [[ ! -f "$INPUT" ]]; then
  mkdir -p "$(dirname "$INPUT")"
  "$PY" "$ROOT/bench/make_h5ad.py" "$INPUT"
fi
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
BIN="$ROOT/target/release/scdl-fs"
WORK="$(mktemp -d "$(dirname "$INPUT")/bench-out.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
MB=$(( $(stat -c %s "$INPUT") / 1000000 ))
cat "$INPUT" >/dev/null   # warm the page cache: both tools read from memory

measure() {  # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
  read -r wall rss <"$WORK/time"
  printf '%s %s %s\n' "$label" "$wall" "$rss"
}

results="$WORK/results"
if [[ "${COMPARE:-}" == confinement ]]; then
  for i in $(seq "$RUNS"); do
    rm -rf "$WORK/ours"
    measure confined "$BIN" convert "$INPUT" "$WORK/ours" >>"$results"
    rm -rf "$WORK/ours"
    measure unconfined env SCDL_FS_UNCONFINED=1 "$BIN" convert "$INPUT" "$WORK/ours" >>"$results"
  done
  echo "input: $INPUT ($MB MB), $RUNS runs each"
  . "$ROOT/bench/lib.sh"
  table "$results" "$MB" confined unconfined
  exit 0
fi
for i in $(seq "$RUNS"); do
  ours() { rm -rf "$WORK/ours"; measure scdl-fs "$BIN" convert "$INPUT" "$WORK/ours" >>"$results"; }
  baseline() {
    [[ -n "${BASELINE:-}" ]] || return 0
    rm -rf "$WORK/baseline"
    measure baseline "$BASELINE" convert "$INPUT" "$WORK/baseline" >>"$results"
  }
  # With a baseline, the two take turns going first (the one after bionemo finds a colder cache).
  if (( i % 2 )); then ours; baseline; else baseline; ours; fi
  rm -rf "$WORK/bionemo"
  measure bionemo-0.1.3 env PYTHONPATH="$VENV/bionemo-0.1.3:$ROOT/tests/oracle/torch_stub" "$PY" -W ignore -c \
    "import sys; from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset as D; D(sys.argv[1], h5ad_path=sys.argv[2], use_X_not_raw=True)" \
    "$WORK/bionemo" "$INPUT" >>"$results"
done
echo "input: $INPUT ($MB MB), $RUNS runs each"
. "$ROOT/bench/lib.sh"
table "$results" "$MB" scdl-fs ${BASELINE:+baseline} bionemo-0.1.3
