#!/usr/bin/env bash
# Shuffled batches in-process (the library pieces without the mount; bench/batches.sh measures
# them through the mount), on the conversion benchmark's dataset (200,000 x 20,000), warm page
# cache, side by side in one run:
# examples/batches_bench.rs (rows/s turned into finished .npz/.safetensors batch files of 256
# rows, block=1 and block=64; and the time to find a batch of a fresh epoch at 10^8 rows) and
# bench/gather.py (numpy gather of 256 random rows over the archive's memmaps into scipy CSR),
# ROUNDS interleaved rounds of SECONDS per mode; medians.
#
#   bench/batches_lib.sh [SECONDS] [ROUNDS] [THREADS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECONDS_EACH="${1:-5}"
ROUNDS="${2:-3}"
THREADS="${3:-16}"
bench_setup --example batches_bench
ARCHIVE="$STORE/bench"
bench_input "$DATA/bench.h5ad" make_h5ad.py
bench_archive "$DATA/bench.h5ad" "$ARCHIVE"
cat "$ARCHIVE"/data.npy "$ARCHIVE"/col_ptr.npy "$ARCHIVE"/row_ptr.npy >/dev/null  # warm
RESULTS="$(mktemp)"
trap 'rm -f "$RESULTS"' EXIT
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  "$ROOT/target/release/examples/batches_bench" "$ARCHIVE" "$SECONDS_EACH" "$THREADS" >>"$RESULTS"
  "$PY" "$ROOT/bench/gather.py" "$ARCHIVE" "$SECONDS_EACH" >>"$RESULTS"
done
echo "| mode | median rows/s | runs | vs numpy gather | median CPU µs per batch | runs |"
echo "|---|---|---|---|---|---|"
gather=$(grep "^numpy_gather " "$RESULTS" | cut -d' ' -f2 | median)
runs_of() { { grep "^$1 " "$RESULTS" || true; } | cut -d' ' -f2 | paste -sd, | sed 's/,/, /g'; }
for mode in block1_npz block1_safetensors block64_npz block64_safetensors numpy_gather; do
  med=$(grep "^$mode " "$RESULTS" | cut -d' ' -f2 | median)
  ratio=$(awk -v m="$med" -v g="$gather" 'BEGIN { printf "%.2fx", m / g }')
  cpu=-
  [[ -n "$(runs_of "${mode}_cpu_us")" ]] && cpu=$(grep "^${mode}_cpu_us " "$RESULTS" | cut -d' ' -f2 | median)
  echo "| $mode | $med | $(runs_of "$mode") | $ratio | ${cpu:--} | $(runs_of "${mode}_cpu_us") |"
done
echo
echo "order_us_10e8 (µs to find a batch of a fresh epoch at 10^8 rows): median $(grep "^order_us_10e8 " "$RESULTS" | cut -d' ' -f2 | median), runs $(runs_of order_us_10e8)"
