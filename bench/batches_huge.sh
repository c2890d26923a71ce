#!/usr/bin/env bash
# The 10^8-row check of the shuffled batches through the real mount: a synthetic
# 100,000,000 x 2,000 .h5ad with 2 values per row (bench/make_huge_h5ad.py, 2.4 GB), converted
# with --obs none into a 1.6 GB archive, mounted read-only with the default batch memory. Per
# setting (warm: the archive's files read first; cold: page cache dropped first, root only), bench/huge_reads.py
# times the first batch of EPOCHS fresh epochs (open + one read + parse into scipy CSR, each
# of a fresh plan seed, so nothing is cached or prefetched) for block=1 and block=64, then one
# reader's rows/s over SECONDS. The daemon's RSS after mounting and its peak (VmHWM) at the end.
#
#   bench/batches_huge.sh [EPOCHS] [SECONDS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
EPOCHS="${1:-50}"
SECONDS_EACH="${2:-5}"
bench_setup
STORE="$DATA/huge-store"
mkdir -p "$STORE"
bench_input "$DATA/huge.h5ad" make_huge_h5ad.py
bench_archive "$DATA/huge.h5ad" "$STORE/huge" --obs none
MNT="$(mktemp -d)"
trap 'umount "$MNT" 2>/dev/null || umount -l "$MNT"; rmdir "$MNT"' EXIT
"$BIN" mount "$MNT" --store "$STORE" --read-only
DAEMON="$(ps -eo pid=,args= | awk -v m="$MNT" '$0 ~ " mount " m " " && !/awk/ { print $1; exit }')"
echo "daemon after mount: $(grep -h '^VmRSS' "/proc/$DAEMON/status" | tr -s ' ')"
ROWS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['num_rows'])" "$STORE/huge/metadata.json")
for temp in warm cold; do
  if [[ $temp == cold ]]; then
    sync; echo 1 >/proc/sys/vm/drop_caches
  else
    cat "$STORE/huge/"*.npy >/dev/null  # the page cache holds the archive
  fi
  echo "## $temp"
  "$PY" "$ROOT/bench/huge_reads.py" "$MNT" huge "$ROWS" "$EPOCHS" "$SECONDS_EACH"
done
echo "daemon at the end: $(grep -h '^VmHWM\|^VmRSS' "/proc/$DAEMON/status" | tr -s ' ' | paste -sd' ')"
