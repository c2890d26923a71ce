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
#   cold and small only: `cat` of the archive files, sequentially (the block=64 reference).
# Three settings (TEMPS, default "warm cold small"): warm; cold; small, where a second mount's
# daemon and every contender run in a memory cgroup (v1, /sys/fs/cgroup/memory) of
# SMALL_LIMIT (default 320M) bytes, smaller than the 576 MB archive, with SMALL_BATCH_MEMORY
# (default 64M) of batch memory, and the page cache dropped before each measurement: data
# larger than memory, where page faults are served one at a time.
# ROUNDS interleaved rounds, SECONDS per warm measurement and COLD_SECONDS per cold one (a cold
# run warms the cache as it goes: keep it short). Medians; the daemon's peak RSS (VmHWM) and its
# .stats at the end. BATCH_MEMORY (default the mount's) is passed as --batch-memory.
#
#   bench/batches.sh [SECONDS] [ROUNDS] [COLD_SECONDS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECONDS_EACH="${1:-10}"
ROUNDS="${2:-3}"
COLD_EACH="${3:-5}"
bench_setup
bench_batch_data
ZARR="$DATA/annbatch.zarr"
ANNBATCH_PY="$(bash "$ROOT/bench/annbatch-env.sh" 2>/dev/null || true)"
ANNBATCH_CONVERT="not measured (no annbatch venv)"
if [[ -n "$ANNBATCH_PY" ]]; then
  [[ -d "$ZARR" ]] && rm -rf "$ZARR"
  ANNBATCH_CONVERT="$("$ANNBATCH_PY" "$ROOT/bench/annbatch_reads.py" convert "$DATA/bench.h5ad" "$ZARR" 2>/dev/null)"
fi
TEMPS="${TEMPS:-warm cold small}"
CGROUP=/sys/fs/cgroup/memory/scdl-fs-bench
MNT="$(mktemp -d)"
SMALL_MNT="$(mktemp -d)"
RESULTS="$(mktemp)"
unmount() { umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || true; rmdir "$1"; }
trap 'unmount "$MNT"; unmount "$SMALL_MNT"; rm -f "$RESULTS" "$RESULTS".*; rmdir "$CGROUP" 2>/dev/null || true' EXIT
daemon_of() { ps -eo pid=,args= | awk -v m="$1" '$0 ~ " mount " m " " && !/awk/ { print $1; exit }'; }
"$BIN" mount "$MNT" --store "$STORE" --read-only ${BATCH_MEMORY:+--batch-memory "$BATCH_MEMORY"}
DAEMON="$(daemon_of "$MNT")"
# in_cgroup TEMP CMD...: runs CMD in the small-memory cgroup for TEMP small, as is otherwise.
in_cgroup() {
  local temp=$1; shift
  if [[ $temp == small ]]; then
    sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CGROUP" "$@"
  else
    "$@"
  fi
}
if [[ " $TEMPS " == *" small "* ]]; then
  mkdir -p "$CGROUP"
  echo "${SMALL_LIMIT:-320M}" >"$CGROUP/memory.limit_in_bytes"
  in_cgroup small "$BIN" mount "$SMALL_MNT" --store "$STORE" --read-only --batch-memory "${SMALL_BATCH_MEMORY:-64M}"
  SMALL_DAEMON="$(daemon_of "$SMALL_MNT")"
fi
mnt_of() { [[ $1 == small ]] && echo "$SMALL_MNT" || echo "$MNT"; }
FILES=("$ARCHIVE/data.npy" "$ARCHIVE/col_ptr.npy" "$ARCHIVE/row_ptr.npy")

prepare() {  # warm|cold|small
  if [[ $1 != warm ]]; then
    sync; echo 1 >/proc/sys/vm/drop_caches
  else
    cat "${FILES[@]}" "$COPY"/*.npy >/dev/null
    [[ -d "$ZARR" ]] && find "$ZARR" -type f -exec cat {} + >/dev/null
  fi
}
# record TEMP LABEL < "rows R bytes B seconds S" lines (summed; the longest seconds)
record() {
  awk -v l="$1_$2" '{ r += $2; b += $4; if ($6 > s) s = $6 } END { if (s > 0) printf "%s %.0f %.1f\n", l, r / s, b / s / 1e6 }' >>"$RESULTS"
}
# contender TEMP LABEL CMD...: runs one in-process contender (in the cgroup for small); a failure
# (the cgroup's OOM killer, for one) is reported and leaves that measurement out.
contender() {
  local temp=$1 label=$2 rc=0; shift 2
  in_cgroup "$temp" "$@" >"$RESULTS.out" 2>/dev/null || rc=$?
  [[ $rc -ne 0 ]] && echo "$temp $label: exit $rc$([[ $rc -eq 137 ]] && echo ' (killed: out of memory)')" | tee -a "$RESULTS.failed" >&2
  record "$temp" "$label" <"$RESULTS.out"
}
mount_mode() {  # TEMP SECS BLOCK FMT READERS
  local plan="size=256,block=$3,seed=$RANDOM$RANDOM" start=$(($(date +%s) + 2)) w
  for ((w = 0; w < $5; w++)); do
    SCDL_BENCH_START=$start in_cgroup "$1" "$PY" "$READ" mount "$(mnt_of "$1")" bench "$plan" "$2" --fmt "$4" --worker $w --workers "$5" >"$RESULTS.$w" &
  done
  wait
  cat "$RESULTS".[0-9]* | record "$1" "b$3_$4_x$5"
  rm -f "$RESULTS".[0-9]*
}
cat_mode() {  # TEMP
  local t0 t1 bytes
  bytes=$(stat -c %s "${FILES[@]}" | awk '{ s += $1 } END { print s }')
  t0=$(date +%s.%N); in_cgroup "$1" cat "${FILES[@]}" >/dev/null; t1=$(date +%s.%N)
  echo "rows 0 bytes $bytes seconds $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" | record "$1" cat
}
MODES=(b1_npz_x1 b1_safetensors_x1 b64_npz_x1 b64_safetensors_x1 b1_npz_x4 b1_safetensors_x4 b64_npz_x4 b64_safetensors_x4 bionemo gather)
[[ -n "$ANNBATCH_PY" ]] && MODES+=(annbatch)
for round in $(seq "$ROUNDS"); do
  for temp in $TEMPS; do
    secs=$SECONDS_EACH; [[ $temp != warm ]] && secs=$COLD_EACH
    echo "round $round/$ROUNDS $temp" >&2
    for mode in "${MODES[@]}"; do
      prepare $temp
      case $mode in
        bionemo) contender $temp bionemo "$PY" "$READ" bionemo "$COPY" "$secs" ;;
        annbatch) contender $temp annbatch "$ANNBATCH_PY" "$ROOT/bench/annbatch_reads.py" read "$ZARR" "$secs" ;;
        gather) contender $temp gather sh -c '"$0" "$1" "$2" "$3" | awk "/^numpy_gather / { print \"rows\", \$2, \"bytes 0 seconds 1\" }"' "$PY" "$ROOT/bench/gather.py" "$ARCHIVE" "$secs" ;;
        *) IFS=_ read -r b fmt x <<<"$mode"; mount_mode $temp "$secs" "${b#b}" "$fmt" "${x#x}" ;;
      esac
    done
    [[ $temp != warm ]] && { prepare $temp; cat_mode $temp; }
  done
  grep -h '^VmHWM\|^VmRSS' "/proc/$DAEMON/status" | tr -s ' ' | sed "s/^/round $round daemon /" >&2
  [[ -n "${SMALL_DAEMON:-}" ]] && grep -h '^VmHWM' "/proc/$SMALL_DAEMON/status" | tr -s ' ' | sed "s/^/round $round small-memory daemon /" >&2
done
med() { { grep "^$1 " "$RESULTS" || true; } | cut -d' ' -f"$2" | median; }
runs() { { grep "^$1 " "$RESULTS" || true; } | cut -d' ' -f"$2" | paste -sd, | sed 's/,/, /g'; }
for temp in $TEMPS; do
  echo "### $temp (medians of $ROUNDS rounds)"
  echo "| mode | median rows/s | runs | median MB/s of files | vs bionemo rows/s |"
  echo "|---|---|---|---|---|"
  bio=$(med ${temp}_bionemo 2)
  labels=("${MODES[@]}"); [[ $temp != warm ]] && labels+=(cat)
  for mode in "${labels[@]}"; do
    l=${temp}_$mode
    ratio=$(awk -v m="$(med "$l" 2)" -v b="$bio" 'BEGIN { if (b > 0 && m > 0) printf "%.2fx", m / b; else print "-" }')
    echo "| $mode | $(med "$l" 2) | $(runs "$l" 2) | $(med "$l" 3) | $ratio |"
  done
  echo
done
for temp in cold small; do
  cat_mb=$(med ${temp}_cat 3)
  [[ -n "$cat_mb" ]] && echo "$temp block=64 MB/s vs cat: $(awk -v c="$cat_mb" -v a="$(med ${temp}_b64_npz_x1 3)" -v b="$(med ${temp}_b64_npz_x4 3)" -v s="$(med ${temp}_b64_safetensors_x4 3)" 'BEGIN { printf "npz x1 %.0f%%, npz x4 %.0f%%, safetensors x4 %.0f%% of cat %.0f MB/s", 100*a/c, 100*b/c, 100*s/c, c }')"
done
echo "annbatch conversion: $ANNBATCH_CONVERT"
[[ -s "$RESULTS.failed" ]] && { echo "failed measurements:"; cat "$RESULTS.failed"; }
echo "daemon: $(grep -h '^VmHWM\|^VmRSS' "/proc/$DAEMON/status" | tr -s ' ' | paste -sd' ')"
[[ -n "${SMALL_DAEMON:-}" ]] && echo "small-memory daemon: $(grep -h '^VmHWM\|^VmRSS' "/proc/$SMALL_DAEMON/status" | tr -s ' ' | paste -sd' ')"
echo "daemon .stats:"
cat "$MNT/.stats"
