#!/usr/bin/env bash
# Shuffled batches through the real mount, side by side in one run, on the conversion
# benchmark's dataset (200,000 x 20,000): batches of 256 rows delivered to Python as a scipy CSR
# matrix (bench/batch_reads.py), warm (page cache holding the archive) and cold
# (`echo 1 > /proc/sys/vm/drop_caches` before every measurement; root only):
#   scdl-fs batches/<PLAN>/<EPOCH>/<K>.npz and .safetensors, block=1 and block=64, one reader and
#     4 reader processes (reader w of 4 reads K = w, w+4, ... as DataLoader workers do); a fresh
#     seed for every measurement, so no batch is cached from an earlier one;
#   bionemo-scdl 0.1.3 in-process (256 distinct random get_row into a scipy CSR) on a copy of
#     the archive (bionemo opens it r+);
#   the numpy gather over our archive's memmaps in-process (bench/gather.py);
#   annbatch 0.3.1 (bench/annbatch_reads.py, in its own venv made by bench/annbatch-env.sh: it
#     needs Python >= 3.12), its Loader with default settings over its own pre-shuffled zarr
#     conversion of the .h5ad (timed once, with its peak RSS); left out when no venv can be made;
#   cold only: `cat` of the archive files, sequentially (the cold block=64 reference).
# ROUNDS interleaved rounds, SECONDS per warm measurement and COLD_SECONDS per cold one (a cold
# run warms the cache as it goes: keep it short). Medians; the daemon's peak RSS (VmHWM) and its
# .stats at the end. BATCH_MEMORY (default the mount's) is passed as --batch-memory; TEMPS
# (default "warm cold") chooses the settings measured.
#
#   bench/batches.sh [SECONDS] [ROUNDS] [COLD_SECONDS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/bench/lib.sh"
PY="${SCDL_FS_PYTHON:-$(bash "$ROOT/scripts/test-env.sh" | tail -n 1)}"
SECONDS_EACH="${1:-10}"
ROUNDS="${2:-3}"
COLD_EACH="${3:-5}"
DATA="$ROOT/bench-data"
STORE="$DATA/store"
ARCHIVE="$STORE/bench"
COPY="$DATA/bionemo-archive"
cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin scdl-fs >&2
BIN="$ROOT/target/release/scdl-fs"
mkdir -p "$STORE"
[[ -f "$DATA/bench.h5ad" ]] || "$PY" "$ROOT/bench/make_h5ad.py" "$DATA/bench.h5ad"
[[ -d "$ARCHIVE" ]] || "$BIN" convert "$DATA/bench.h5ad" "$ARCHIVE"
[[ -d "$COPY" ]] || cp -r "$ARCHIVE" "$COPY"
ZARR="$DATA/annbatch.zarr"
ANNBATCH_PY="$(bash "$ROOT/bench/annbatch-env.sh" 2>/dev/null || true)"
ANNBATCH_CONVERT="not measured (no annbatch venv)"
if [[ -n "$ANNBATCH_PY" ]]; then
  [[ -d "$ZARR" ]] && rm -rf "$ZARR"
  ANNBATCH_CONVERT="$("$ANNBATCH_PY" "$ROOT/bench/annbatch_reads.py" convert "$DATA/bench.h5ad" "$ZARR" 2>/dev/null)"
fi
MNT="$(mktemp -d)"
RESULTS="$(mktemp)"
trap 'umount "$MNT" 2>/dev/null || umount -l "$MNT"; rmdir "$MNT"; rm -f "$RESULTS" "$RESULTS".*' EXIT
"$BIN" mount "$MNT" --store "$STORE" --read-only ${BATCH_MEMORY:+--batch-memory "$BATCH_MEMORY"}
DAEMON="$(ps -eo pid=,args= | awk -v m="$MNT" '$0 ~ " mount " m " " && !/awk/ { print $1; exit }')"
READ="$ROOT/bench/batch_reads.py"
FILES=("$ARCHIVE/data.npy" "$ARCHIVE/col_ptr.npy" "$ARCHIVE/row_ptr.npy")

prepare() {  # warm|cold
  if [[ $1 == cold ]]; then
    sync; echo 1 >/proc/sys/vm/drop_caches
  else
    cat "${FILES[@]}" "$COPY"/*.npy >/dev/null
    [[ -d "$ZARR" ]] && find "$ZARR" -type f -exec cat {} + >/dev/null
  fi
}
# record TEMP LABEL < "rows R bytes B seconds S" lines (summed; the longest seconds)
record() {
  awk -v l="$1_$2" '{ r += $2; b += $4; if ($6 > s) s = $6 } END { printf "%s %.0f %.1f\n", l, r / s, b / s / 1e6 }' >>"$RESULTS"
}
mount_mode() {  # TEMP SECS BLOCK FMT READERS
  local plan="size=256,block=$3,seed=$RANDOM$RANDOM" start=$(($(date +%s) + 2)) w
  for ((w = 0; w < $5; w++)); do
    SCDL_BENCH_START=$start "$PY" "$READ" mount "$MNT" bench "$plan" "$2" --fmt "$4" --worker $w --workers "$5" >"$RESULTS.$w" &
  done
  wait
  cat "$RESULTS".[0-9]* | record "$1" "b$3_$4_x$5"
  rm -f "$RESULTS".[0-9]*
}
cat_mode() {
  local t0 t1 bytes
  bytes=$(stat -c %s "${FILES[@]}" | awk '{ s += $1 } END { print s }')
  t0=$(date +%s.%N); cat "${FILES[@]}" >/dev/null; t1=$(date +%s.%N)
  echo "rows 0 bytes $bytes seconds $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" | record cold cat
}
MODES=(b1_npz_x1 b1_safetensors_x1 b64_npz_x1 b64_safetensors_x1 b1_npz_x4 b1_safetensors_x4 b64_npz_x4 b64_safetensors_x4 bionemo gather)
[[ -n "$ANNBATCH_PY" ]] && MODES+=(annbatch)
for round in $(seq "$ROUNDS"); do
  for temp in ${TEMPS:-warm cold}; do
    secs=$SECONDS_EACH; [[ $temp == cold ]] && secs=$COLD_EACH
    echo "round $round/$ROUNDS $temp" >&2
    for mode in "${MODES[@]}"; do
      prepare $temp
      case $mode in
        bionemo) "$PY" "$READ" bionemo "$COPY" "$secs" | record $temp bionemo ;;
        annbatch) "$ANNBATCH_PY" "$ROOT/bench/annbatch_reads.py" read "$ZARR" "$secs" 2>/dev/null | record $temp annbatch ;;
        gather) "$PY" "$ROOT/bench/gather.py" "$ARCHIVE" "$secs" | awk '/^numpy_gather / { print "rows", $2, "bytes 0 seconds 1" }' | record $temp gather ;;
        *) IFS=_ read -r b fmt x <<<"$mode"; mount_mode $temp "$secs" "${b#b}" "$fmt" "${x#x}" ;;
      esac
    done
    [[ $temp == cold ]] && { prepare cold; cat_mode; }
  done
  grep -h '^VmHWM\|^VmRSS' "/proc/$DAEMON/status" | tr -s ' ' | sed "s/^/round $round daemon /" >&2
done
med() { { grep "^$1 " "$RESULTS" || true; } | cut -d' ' -f"$2" | median; }
runs() { { grep "^$1 " "$RESULTS" || true; } | cut -d' ' -f"$2" | paste -sd, | sed 's/,/, /g'; }
for temp in ${TEMPS:-warm cold}; do
  echo "### $temp (medians of $ROUNDS rounds)"
  echo "| mode | median rows/s | runs | median MB/s of files | vs bionemo rows/s |"
  echo "|---|---|---|---|---|"
  bio=$(med ${temp}_bionemo 2)
  labels=("${MODES[@]}"); [[ $temp == cold ]] && labels+=(cat)
  for mode in "${labels[@]}"; do
    l=${temp}_$mode
    ratio=$(awk -v m="$(med "$l" 2)" -v b="$bio" 'BEGIN { if (b > 0 && m > 0) printf "%.2fx", m / b; else print "-" }')
    echo "| $mode | $(med "$l" 2) | $(runs "$l" 2) | $(med "$l" 3) | $ratio |"
  done
  echo
done
cat_mb=$(med cold_cat 3)
[[ -n "$cat_mb" ]] && echo "cold block=64 MB/s vs cat: $(awk -v c="$cat_mb" -v a="$(med cold_b64_npz_x1 3)" -v b="$(med cold_b64_npz_x4 3)" -v s="$(med cold_b64_safetensors_x4 3)" 'BEGIN { printf "npz x1 %.0f%%, npz x4 %.0f%%, safetensors x4 %.0f%% of cat %.0f MB/s", 100*a/c, 100*b/c, 100*s/c, c }')"
echo "annbatch conversion: $ANNBATCH_CONVERT"
echo "daemon: $(grep -h '^VmHWM\|^VmRSS' "/proc/$DAEMON/status" | tr -s ' ' | paste -sd' ')"
echo "daemon .stats:"
cat "$MNT/.stats"
