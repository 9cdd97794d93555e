#!/usr/bin/env bash
# adclick against a peer on the same job and the same files (issue 13), in one run: NDJSON
# event files to final windows. adclick-aggregator in file mode (1 and 2 workers) against
# DuckDB (2 threads) running the equivalent SQL: exact dedup by impression (earliest click),
# minute rows by every dimension, hour and day rollups, the top 10 ads per minute, and the
# ip/user flood rules as window functions (scripts/peers/duckdb.sql). Each system runs
# ROUNDS times, alternating; the script prints every run, the medians, the ratios of events/s
# to DuckDB's, and peak RSS (GNU time's maximum resident set size).
# Usage: scripts/bench-peers.sh
#   (env: COUNT=4000000 FILES=2 RATE=20000 ADS=2000 PUBLISHERS=100 SEED=11 ROUNDS=3
#         WORKERS="1 2" AGGREGATOR=target/release/adclick-aggregator, to bench another build)
# DuckDB is the Python package, installed once into a venv under ~/.cache/adclick.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-4000000}
FILES=${FILES:-2}
RATE=${RATE:-20000}
ADS=${ADS:-2000}
PUBLISHERS=${PUBLISHERS:-100}
SEED=${SEED:-11}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-1 2}
cargo build --release --quiet --bins
source scripts/lib/bench.sh
venv=$HOME/.cache/adclick/duckdb-venv
if ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'duckdb>=1.1'
fi
duck_version=$("$venv/bin/python" -c 'import duckdb; print(duckdb.__version__)')

echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   $COUNT events in $FILES files, seed $SEED, DuckDB $duck_version"
"${LOADGEN:-$B/adclick-loadgen}" --output file --out-dir "$work/data" --files "$FILES" \
  --count "$COUNT" --rate "$RATE" --ads "$ADS" --publishers "$PUBLISHERS" --seed "$SEED" \
  --truth "$work/truth.json" >/dev/null
echo "data: $(du -sh "$work/data" | cut -f1) of NDJSON ($(cat "$work"/data/*.ndjson | wc -l) lines)"

# run NAME CMD...: wall seconds and peak RSS (KiB) of one command, appended to $work/runs.
run() {
  local name=$1 t0 t1 kib
  shift
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/time.out" "$@" >"$work/$name.out" 2>"$work/$name.err" ||
    { echo "FAIL: $name exited non-zero:"; tail -5 "$work/$name.err"; exit 1; }
  t1=$(date +%s.%N)
  kib=$(tail -1 "$work/time.out")
  awk -v n="$name" -v a="$t0" -v b="$t1" -v k="$kib" -v c="$COUNT" \
    'BEGIN {printf "%s %.2f %d\n", n, b-a, k; printf "   %-12s %6.2f s  %8.0f events/s  peak RSS %5.0f MiB\n", n, b-a, c/(b-a), k/1024 > "/dev/stderr"}' \
    >>"$work/runs"
}
adclick() {
  local w=$1
  rm -f "$work/out.ndjson"
  run "adclick-${w}w" "${AGGREGATOR:-$B/adclick-aggregator}" --config config/demo.toml \
    --workers "$w" --input "$work"/data/*.ndjson --output "$work/out.ndjson"
}
duckdb() {
  rm -rf "$work/duck"
  mkdir -p "$work/duck"
  run duckdb env DATA="$work/data" OUT="$work/duck" "$venv/bin/python" scripts/peers/run_duckdb.py
}
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  duckdb
  for w in $WORKERS; do adclick "$w"; done
done

# What each computed, side by side: billable clicks over all minute rows.
adclick_clicks=$(jq -s '[.[] | select(.granularity == "minute" and .status == "final") | .clicks] | add' "$work/out.ndjson")
duck_clicks=$(sed -n 's/^billable //p' "$work/duckdb.out")
echo "billable clicks in final minute rows: adclick $adclick_clicks, DuckDB $duck_clicks" \
  "(DuckDB has no event time: it also counts what adclick rules beyond the allowed lateness)"
echo "== medians over $ROUNDS rounds"
duck_s=$(awk '$1 == "duckdb" {print $2}' "$work/runs" | median)
duck_k=$(awk '$1 == "duckdb" {print $3}' "$work/runs" | median)
for name in $(awk '{print $1}' "$work/runs" | sort -u); do
  s=$(awk -v n="$name" '$1 == n {print $2}' "$work/runs" | median)
  k=$(awk -v n="$name" '$1 == n {print $3}' "$work/runs" | median)
  awk -v n="$name" -v s="$s" -v k="$k" -v ds="$duck_s" -v dk="$duck_k" -v c="$COUNT" 'BEGIN {
    printf "   %-12s %6.2f s  %8.0f events/s  %.2fx DuckDB events/s  peak RSS %5.0f MiB (%.2fx DuckDB)\n",
      n, s, c / s, ds / s, k / 1024, k / dk }'
done
