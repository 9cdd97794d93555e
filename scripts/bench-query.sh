#!/usr/bin/env bash
# Query latency under concurrent load while ingesting (issue 4), loopback only: a streaming
# adclick-aggregator (2 workers, query server on) reads the embedded Kafka broker (hosted by an
# idle adclick-redirect) while the load generator preloads DURATION seconds of event time (24 h
# by default, ending at the last whole minute) over ADS ads at RATE clicks per simulated
# second; once the watermark has reached the end of the preload, a --realtime load generator
# keeps LIVE_RATE clicks/s flowing (0: none, queries on a settled frontier) and
# benches/query_load.rs runs CONCURRENCY keep-alive clients for SECONDS per phase: /healthz
# (the baseline), one ad's count over the preloaded range, top-N. Prints the figures, the
# data volume and the aggregator's memory.
# Usage: scripts/bench-query.sh
#   (env: ADS=100000 RATE=100 DURATION=86400 LIVE_RATE=2000 CONCURRENCY=8 SECONDS=20
#         TOP_COUNT=10 TOP_WINDOWS=1,5,60 IDLE_MS=5000 CHUNK_EVENTS=80000
#         AGGREGATOR=target/release/adclick-aggregator, to bench another build)
set -euo pipefail
cd "$(dirname "$0")/.."
ADS=${ADS:-100000}
RATE=${RATE:-100}
DURATION=${DURATION:-86400}
LIVE_RATE=${LIVE_RATE:-2000}
CONCURRENCY=${CONCURRENCY:-8}
# SECONDS is also bash's clock: read the value from the environment.
SECONDS_PER_PHASE=$(printenv SECONDS || echo 20)
TOP_COUNT=${TOP_COUNT:-10}
TOP_WINDOWS=${TOP_WINDOWS:-1,5,60}
CHUNK_EVENTS=${CHUNK_EVENTS:-80000}
cargo build --release --quiet --bins
cargo bench --quiet --bench query_load --no-run 2>/dev/null
source scripts/lib/bench.sh
start_broker
start_aggregator aggregator --workers 2 --output "$work/out.ndjson"

# The preload: DURATION seconds of event time ending at the last whole minute.
end_ms=$(($(now_ms) / 60000 * 60000))
start_ms=$((end_ms - DURATION * 1000))
from=$(iso "$start_ms") to=$(iso "$end_ms")
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   ads: $ADS   rate: $RATE clicks per simulated s over [$from, $to)"
t0=$(date +%s.%N)
preload "$start_ms" "$end_ms"
awk -v s="$preload_s" -v n="$emitted" -v c="$chunks" \
  'BEGIN {printf "preload: %d records (%d chunks) produced and read in %.0f s (%.0f records/s)\n", n, c, s, n/s}'
echo "the load generators' truth: $counted clicks to count"
# Caught up: the watermark within a minute of the end (partitions idle after IDLE_MS).
wait_watermark "$end_ms"
h=$(health)
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v n="$emitted" \
  'BEGIN {printf "watermark at the end of the preload after %.0f s (%.0f records/s end to end, 2 workers)\n", b-a, n/(b-a)}'
echo "health: $(jq -c '{watermark, tallies}' <<<"$h")"
check_received
# Distinct rows (window x ad x campaign x advertiser x publisher x country x device): each is
# reported once as complete when its window closes (then corrected, then final).
echo "window reports written ($(du -h "$work/out.ndjson" | cut -f1) of NDJSON):"
awk -F'"granularity":"' 'NF > 1 && /"type":"window"/ {
    split($2, g, "\""); match($0, /"status":"[a-z]+"/)
    n[g[1] " " substr($0, RSTART + 10, RLENGTH - 11)]++
    if (g[1] == "minute") {
      match($0, /"window_start_ms":.*,"clicks"/); k = substr($0, RSTART, RLENGTH)
      if (!(k in rows)) { rows[k]; distinct++ }
    }
  } END {
    for (k in n) printf "  %-20s %d\n", k, n[k]
    printf "  distinct minute rows %d\n", distinct
  }' "$work/out.ndjson" | sort
echo "aggregator memory after the preload: $(rss "$agg_pid")"

# The queries: first on the settled frontier, then while LIVE_RATE clicks/s keep arriving.
bench() {
  cargo bench --quiet --bench query_load -- "$base" "$KEY" "$ADS" "$CONCURRENCY" \
    "$SECONDS_PER_PHASE" "$from" "$to" "$TOP_COUNT" "$TOP_WINDOWS" 2>&1 |
    grep -v '^ *at \|^ *[0-9]*: \|^Stack backtrace:' || status=1
  if grep -q panicked "$agg_log" || ! h1=$(health); then
    echo "the aggregator failed during the queries:"
    grep -A 2 panicked "$agg_log" | head -n 6
    exit 1
  fi
  jq -rn --argjson a "$h0" --argjson b "$h1" '"during the queries: \($b.tallies.received -
    $a.tallies.received) records received, watermark delay \($b.watermark_delay_ms) ms at the end"'
  echo "aggregator memory: $(rss "$agg_pid")"
}
status=0
echo
echo "== queries on the settled frontier (no ingest)"
h0=$(health)
bench
if ((LIVE_RATE > 0)); then
  "$B/adclick-loadgen" --config config/demo.toml --output kafka --brokers "$brokers" \
    --ads "$ADS" --rate "$LIVE_RATE" --duration 86400 --realtime --seed 0 \
    --truth "$work/live-truth.json" >/dev/null 2>"$work/live.log" &
  pids+=($!)
  sleep 10
  echo
  echo "== queries while ingesting $LIVE_RATE clicks/s (real time)"
  h0=$(health)
  echo "ingest: $(jq -c '{watermark_delay_ms, received: .tallies.received}' <<<"$h0")"
  bench
fi
echo "broker (adclick-redirect) memory: $(rss "$broker_pid")"
exit "$status"
