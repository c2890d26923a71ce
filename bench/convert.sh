#!/usr/bin/env bash
# Conversion benchmark: scdl-fs convert vs bionemo-scdl 0.1.3 on the same .h5ad, side by side.
# Prints wall time, throughput (input MB/s) and peak RSS for each run, then the medians, and the size
# of each tool's archive (all its files).
#
#   bench/convert.sh [INPUT.h5ad] [RUNS]
#   COMPARE=confinement bench/convert.sh [INPUT.h5ad] [RUNS]
# Default input: bench-data/bench.h5ad, made (once) by bench/make_h5ad.py (200,000 x 20,000, 2.4 %).
# COMPARE=confinement runs scdl-fs with its confined converter (the default) and with
# SCDL_FS_UNCONFINED=1 (no confinement layers: for this comparison only) alternately instead.
# Environment:
#   BASELINE=PATH       also run another scdl-fs binary (e.g. one built from an earlier commit) in the
#                       same rounds, labelled scdl-fs-baseline, for a before/after comparison
#   EXTRA_ARGS="ARGS"   also run scdl-fs convert with these arguments, labelled scdl-fs-extra
#                       (e.g. EXTRA_ARGS="--data-dtype auto")
#   CELLS=1             convert INPUT with per-cell metadata added (bench/add_cell_metadata.py: ten obs
#                       columns, a 15-NN graph under next_cell_ids, a 50-wide X_pca; made once beside
#                       INPUT as NAME-cells.h5ad), bionemo-scdl 0.1.3 with load_neighbors=True
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
BIONEMO_KW=""
if [[ -n "${CELLS:-}" ]]; then
  CELLS_INPUT="${INPUT%.h5ad}-cells.h5ad"
  [[ -f "$CELLS_INPUT" ]] || "$PY" "$ROOT/bench/add_cell_metadata.py" "$INPUT" "$CELLS_INPUT" >&2
  INPUT="$CELLS_INPUT"
  BIONEMO_KW=", load_neighbors=True"
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
labels=(scdl-fs)
[[ -n "${BASELINE:-}" ]] && labels+=(scdl-fs-baseline)
[[ -n "${EXTRA_ARGS:-}" ]] && labels+=(scdl-fs-extra)
labels+=(bionemo-0.1.3)
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/ours"
  measure scdl-fs "$BIN" convert "$INPUT" "$WORK/ours" >>"$results"
  if [[ -n "${BASELINE:-}" ]]; then
    rm -rf "$WORK/baseline"
    measure scdl-fs-baseline "$BASELINE" convert "$INPUT" "$WORK/baseline" >>"$results"
  fi
  if [[ -n "${EXTRA_ARGS:-}" ]]; then
    rm -rf "$WORK/extra"
    # shellcheck disable=SC2086  # EXTRA_ARGS is a list of arguments
    measure scdl-fs-extra "$BIN" convert "$INPUT" "$WORK/extra" $EXTRA_ARGS >>"$results"
  fi
  rm -rf "$WORK/bionemo"
  measure bionemo-0.1.3 env PYTHONPATH="$VENV/bionemo-0.1.3:$ROOT/tests/oracle/torch_stub" "$PY" -W ignore -c \
    "import sys; from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset as D; D(sys.argv[1], h5ad_path=sys.argv[2], use_X_not_raw=True$BIONEMO_KW)" \
    "$WORK/bionemo" "$INPUT" >>"$results"
done
echo "input: $INPUT ($MB MB), $RUNS runs each"
. "$ROOT/bench/lib.sh"
table "$results" "$MB" "${labels[@]}"
echo
echo "| what | archive bytes (all files) | MiB | dtypes.json |"
echo "|---|---|---|---|"
for pair in scdl-fs:ours scdl-fs-baseline:baseline scdl-fs-extra:extra bionemo-0.1.3:bionemo; do
  label=${pair%%:*} dir="$WORK/${pair#*:}"
  [[ -d "$dir" ]] || continue
  bytes=$(find "$dir" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
  types=$(cat "$dir/dtypes.json" 2>/dev/null || echo "(header.sch only)")
  awk -v t="$label" -v b="$bytes" -v d="$types" 'BEGIN { printf "| %s | %d | %.1f | `%s` |\n", t, b, b / 1048576, d }'
done
