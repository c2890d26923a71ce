# Shared by the bench scripts: medians and the markdown result table.
# results file lines: "LABEL WALL_SECONDS PEAK_RSS_KB"

median() { sort -n | awk '{ v[NR]=$1 } END { print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2 }'; }

# table RESULTS MEGABYTES LABEL... : one markdown row per label (median wall, MB/s, RSS, all runs)
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
