#!/usr/bin/env bash
# Memory under a backlog (issue 13, target 5), loopback only: the load generator preloads
# EVENTS clicks into the embedded broker (and the same clicks as NDJSON files), then
# adclick-aggregator (2 workers) reads them all, as a restarted consumer would find them:
# `--until-end` from Kafka, and the files as a batch job. Each runs three ways:
#   - no flow control (read-ahead of 10^12 ms: the sources read as fast as they can, as
#     before issue 13);
#   - the default read-ahead (aggregator.read_ahead_ms);
#   - the default read-ahead and aggregator.memory_budget_mb = BUDGET_MB.
# Prints the resident set over time (sampled every 0.5 s), its peak, the wall time, and fails
# unless every run received every record and counted what the load generator's truth says.
# Usage: scripts/bench-backlog.sh   (env: EVENTS=4000000 RATE=20000 ADS=2000 BUDGET_MB=1500
#                                     FILES=2 MODES="kafka files")
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-4000000}
RATE=${RATE:-20000}
ADS=${ADS:-2000}
BUDGET_MB=${BUDGET_MB:-1500}
FILES=${FILES:-2}
MODES=${MODES:-kafka files}
cargo build --release --quiet --bins
source scripts/lib/bench.sh
start_broker
common=(--config config/demo.toml --count "$EVENTS" --rate "$RATE" --ads "$ADS" --seed 7
  --truth "$work/truth.json")
"$B/adclick-loadgen" "${common[@]}" --output kafka --brokers "$brokers" 2>"$work/loadgen.log"
[[ " $MODES " == *" files "* ]] &&
  "$B/adclick-loadgen" "${common[@]}" --output file --files "$FILES" --out-dir "$work/files" 2>/dev/null
expected=$(jq '.tallies.emitted - .tallies.forged' "$work/truth.json")
want_counted=$(jq '.tallies.counted' "$work/truth.json")
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   $EVENTS events ($expected records, $want_counted billable), 2 workers"

# run LABEL ENV... -- ARGS...: one aggregator run, its RSS sampled every 0.5 s.
run() {
  local label=$1 envs=() t0 t1 pid
  shift
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  t0=$(date +%s.%N)
  env "${envs[@]}" "$B/adclick-aggregator" --config config/demo.toml --workers 2 "$@" \
    --output "$work/out.ndjson" 2>"$work/agg.log" &
  pid=$!
  : >"$work/rss"
  while kill -0 "$pid" 2>/dev/null; do
    awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status" 2>/dev/null >>"$work/rss" || true
    sleep 0.5
  done
  wait "$pid" || { echo "FAIL ($label): exit $?"; tail -5 "$work/agg.log"; exit 1; }
  t1=$(date +%s.%N)
  tail -n 1 "$work/out.ndjson" | jq -e --argjson n "$expected" --argjson c "$want_counted" \
    '.type == "tallies" and .received == $n and (.lost // 0) == 0 and .counted == $c' >/dev/null || {
    echo "FAIL ($label): want $expected received, $want_counted counted: $(tail -n 1 "$work/out.ndjson")"
    exit 1
  }
  awk -v l="$label" -v a="$t0" -v b="$t1" -v n="$EVENTS" '
    { r[NR] = $1; if ($1 > peak) peak = $1 }
    END {
      printf "%-44s %6.1f s  %7.0f events/s  peak RSS %5d MiB\n", l, b - a, n / (b - a), peak
      step = NR > 16 ? int(NR / 16) : 1; s = "   RSS MiB every " step * 0.5 " s:"
      for (i = 1; i <= NR; i += step) s = s " " r[i]
      print s
    }' "$work/rss"
}
unthrottled=ADCLICK_AGGREGATOR_READ_AHEAD_MS=1000000000000
budget=ADCLICK_AGGREGATOR_MEMORY_BUDGET_MB=$BUDGET_MB
for mode in $MODES; do
  case $mode in
    kafka) args=(--brokers "$brokers" --until-end) ;;
    files) args=(--input "$work"/files/*.ndjson) ;;
  esac
  run "$mode, no flow control" "$unthrottled" -- "${args[@]}"
  run "$mode, read-ahead (default)" TZ=UTC -- "${args[@]}"
  run "$mode, read-ahead + budget $BUDGET_MB MiB" "$budget" -- "${args[@]}"
done
