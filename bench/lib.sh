# Shared by the bench scripts: medians, the markdown result table, and the set-up every read
# benchmark starts with (a release build, the benchmark's .h5ad and its archive, made once).

median() { sort -n | awk '{ v[NR]=$1 } END { print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2 }'; }

# table RESULTS MEGABYTES LABEL... : one markdown row per label (median wall, MB/s, RSS, all
# runs); the results file's lines are "LABEL WALL_SECONDS PEAK_RSS_KB".
table() {
  local results=$1 mb=$2; shift 2
  echo "| what | median wall s | median MB/s | median peak RSS MB | runs (wall s) |"
  echo "|---|---|---|---|---|"
  local what wall rss runs
  for what in "$@"; do
    wall=$(grep "^$what " "$results" | cut -d' ' -f2 | median)
    rss=$(grep "^$what " "$results" | cut -d' ' -f3 | median)
    runs=$(grep "^$what " "$results" | cut -d' ' -f2 | paste -sd, | sed 's/,/, /g')
    awk -v t="$what" -v w="$wall" -v r="$rss" -v mb="$mb" -v runs="$runs" \
      'BEGIN { printf "| %s | %.2f | %.0f | %.0f | %s |\n", t, w, mb / w, r / 1024, runs }'
  done
}

# bench_setup [--example NAME]... : sets ROOT, PY (the test environment's Python, or
# $SCDL_FS_PYTHON), DATA (bench-data/), STORE (bench-data/store) and BIN (a release build of
# scdl-fs, built now with the examples named).
bench_setup() {
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  PY="${SCDL_FS_PYTHON:-$(bash "$ROOT/scripts/test-env.sh" | tail -n 1)}"
  DATA="$ROOT/bench-data"
  STORE="$DATA/store"
  cargo build --release --manifest-path "$ROOT/Cargo.toml" --bin scdl-fs "$@" >&2
  BIN="$ROOT/target/release/scdl-fs"
  mkdir -p "$STORE"
}

# bench_input H5AD MAKER [ARGS...] : makes H5AD with bench/MAKER (a Python script) unless it exists.
bench_input() {
  local h5ad=$1 maker=$2
  shift 2
  [[ -f "$h5ad" ]] || "$PY" "$ROOT/bench/$maker" "$h5ad" "$@"
}

# bench_archive H5AD ARCHIVE [CONVERT ARGS...] : converts H5AD into ARCHIVE unless it exists.
bench_archive() {
  local h5ad=$1 archive=$2
  shift 2
  [[ -d "$archive" ]] || "$BIN" convert "$h5ad" "$archive" "$@"
}

# bench_batch_data : what the shuffled-batch benchmarks read, made once: sets ARCHIVE (the
# benchmark archive in STORE), COPY (a copy of it for bionemo-scdl, which opens its archive r+)
# and READ (bench/batch_reads.py). After bench_setup.
bench_batch_data() {
  ARCHIVE="$STORE/bench"
  COPY="$DATA/bionemo-archive"
  READ="$ROOT/bench/batch_reads.py"
  bench_input "$DATA/bench.h5ad" make_h5ad.py
  bench_archive "$DATA/bench.h5ad" "$ARCHIVE"
  [[ -d "$COPY" ]] || cp -r "$ARCHIVE" "$COPY"
}
