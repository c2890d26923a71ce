#!/usr/bin/env bash
# Warm block=1 batches against bionemo-scdl 0.1.3 in pairs: the ratio the issue's warm goal is
# stated in, measured so that the machine's background load falls on both sides of each ratio.
# bench/batches.sh runs each contender for its SECONDS one after the other; on a shared 2-vCPU
# host either side's rate drifts by 20 % within minutes, and the ratio of two medians taken
# minutes apart carries that drift. Here each pair is one scdl-fs loop and one bionemo loop of
# SECONDS each, back to back (the order swapped every other pair); the figure is the median of
# the pairs' ratios, with their spread.
#
#   bench/batches_paired.sh [PAIRS] [SECONDS] [FORMAT]     (defaults 9 3 npz; FORMAT npz|safetensors)
# Needs root (mounts).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PAIRS="${1:-9}"
SECONDS_EACH="${2:-3}"
FMT="${3:-npz}"
bench_setup
bench_batch_data
MNT="$(mktemp -d)"
trap 'umount "$MNT" 2>/dev/null || umount -l "$MNT"; rmdir "$MNT"' EXIT
"$BIN" mount "$MNT" --store "$STORE" --read-only
cat "$ARCHIVE"/*.npy "$COPY"/*.npy >/dev/null  # warm: the page cache holds both archives
rate() { awk '{ printf "%.0f\n", $2 / $6 }'; }
ours() { "$PY" "$READ" mount "$MNT" bench "size=256,seed=$RANDOM$1" "$SECONDS_EACH" --fmt "$FMT" | rate; }
theirs() { "$PY" "$READ" bionemo "$COPY" "$SECONDS_EACH" | rate; }
RATIOS="$(mktemp)"
trap 'umount "$MNT" 2>/dev/null || umount -l "$MNT"; rmdir "$MNT"; rm -f "$RATIOS"' EXIT
echo "| pair | scdl-fs b1 $FMT x1 rows/s | bionemo rows/s | ratio |"
echo "|---|---|---|---|"
for p in $(seq "$PAIRS"); do
  if (( p % 2 )); then a=$(ours "$p"); b=$(theirs); else b=$(theirs); a=$(ours "$p"); fi
  r=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')
  echo "$r" >>"$RATIOS"
  echo "| $p | $a | $b | ${r}x |"
done
sorted=$(sort -n "$RATIOS" | paste -sd' ')
echo
echo "median ratio $(median <"$RATIOS")x over $PAIRS pairs of ${SECONDS_EACH} s (all, sorted: $sorted)"
