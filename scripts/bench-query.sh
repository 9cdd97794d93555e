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
IDLE_MS=${IDLE_MS:-5000}
CHUNK_EVENTS=${CHUNK_EVENTS:-80000}
KEY=demo-admin-key-not-secret
cargo build --release --quiet --bins
cargo bench --quiet --bench query_load --no-run 2>/dev/null
work=$(mktemp -d)
pids=()
cleanup() {
  # Newest first: the live load generator flushes to the broker while it still runs.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.2; done
    kill -9 "${pids[i]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
B=target/release
AGGREGATOR=${AGGREGATOR:-$B/adclick-aggregator}
now_ms() { date +%s%3N; }
iso() { date -u -d "@$(($1 / 1000))" +%Y-%m-%dT%H:%M:%SZ; }
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %.0f MiB  ", $1, $2 / 1024}' "/proc/$1/status"; echo; }

ADCLICK_REDIRECT_SPOOL_DIR="$work/spool" "$B/adclick-redirect" --config config/demo.toml \
  --embedded-kafka --listen 127.0.0.1:0 >"$work/redirect.out" 2>/dev/null &
pids+=($!)
broker_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/redirect.out" 2>/dev/null && break; sleep 0.1; done
brokers=$(sed -n 's/^embedded kafka: //p' "$work/redirect.out")

ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS=$IDLE_MS "$AGGREGATOR" --config config/demo.toml \
  --brokers "$brokers" --workers 2 --query-listen 127.0.0.1:0 --output "$work/out.ndjson" \
  >"$work/aggregator.out" 2>"$work/aggregator.log" &
pids+=($!)
agg_pid=$!
for _ in $(seq 100); do grep -q "query server:" "$work/aggregator.out" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^query server: //p' "$work/aggregator.out")
health() { curl -sf -H "Authorization: Bearer $KEY" "${base}api/v1/health"; }
alive() { kill -0 "$agg_pid" 2>/dev/null || { echo "the aggregator died:"; tail "$work/aggregator.log"; exit 1; }; }

# The preload: DURATION seconds of event time ending at the last whole minute. The embedded
# broker (librdkafka's mock cluster) keeps only the last 5 MiB of each partition, so the load
# generator produces it in chunks of about CHUNK_EVENTS records, each once the aggregator has
# read everything before it (the partitions' read offsets add up to the records produced).
end_ms=$(($(now_ms) / 60000 * 60000))
start_ms=$((end_ms - DURATION * 1000))
from=$(iso "$start_ms") to=$(iso "$end_ms")
chunk_s=$((CHUNK_EVENTS / RATE / 60 * 60))
((chunk_s >= 60)) || chunk_s=60
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   ads: $ADS   rate: $RATE clicks per simulated s over [$from, $to)"
echo "preload in chunks of $chunk_s s of event time"
emitted=0 counted=0 chunks=0
t0=$(date +%s.%N)
for ((c = start_ms; c < end_ms; c += chunk_s * 1000)); do
  d=$(((end_ms - c) / 1000))
  ((d <= chunk_s)) || d=$chunk_s
  "$B/adclick-loadgen" --config config/demo.toml --output kafka --brokers "$brokers" \
    --ads "$ADS" --rate "$RATE" --duration "$d" --start "$c" --seed "$((chunks + 1))" \
    --truth "$work/truth.json" 2>"$work/preload.log"
  line=$(tail -n 1 "$work/preload.log")
  emitted=$((emitted + $(sed -n 's/.*emitted \([0-9]*\).*/\1/p' <<<"$line")))
  counted=$((counted + $(sed -n 's/.*counted \([0-9]*\).*/\1/p' <<<"$line")))
  chunks=$((chunks + 1))
  for _ in $(seq 6000); do
    alive
    read_to=$(health | jq '[.partitions[].offset] | add // 0' || echo 0)
    ((read_to < emitted)) || break
    sleep 0.2
  done
  ((read_to >= emitted)) || { echo "the aggregator stopped reading at $read_to of $emitted"; exit 1; }
  ((chunks % 20)) || echo "  $chunks chunks, $emitted records read; aggregator $(rss "$agg_pid")"
done
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v n="$emitted" -v c="$chunks" \
  'BEGIN {printf "preload: %d records (%d chunks) produced and read in %.0f s (%.0f records/s)\n", n, c, b-a, n/(b-a)}'
echo "the load generators' truth: $counted clicks to count"
# Caught up: the watermark within a minute of the end (partitions idle after IDLE_MS).
for i in $(seq 600); do
  alive
  h=$(health || true)
  jq -e --argjson e "$end_ms" '(.watermark_ms // 0) >= $e - 60000' >/dev/null <<<"$h" && break
  [ "$i" = 600 ] && { echo "the watermark did not reach the end of the preload: $h"; exit 1; }
  sleep 0.5
done
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v n="$emitted" \
  'BEGIN {printf "watermark at the end of the preload after %.0f s (%.0f records/s end to end, 2 workers)\n", b-a, n/(b-a)}'
echo "health: $(jq -c '{watermark, tallies}' <<<"$h")"
# Distinct rows (window x ad x campaign x advertiser x publisher x country x device): each is
# reported once as complete when its window closes (then corrected, then final).
echo "window reports written ($(du -h "$work/out.ndjson" | cut -f1) of NDJSON):"
awk -F'"granularity":"' 'NF > 1 {
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
  if grep -q panicked "$work/aggregator.log" || ! h1=$(health); then
    echo "the aggregator failed during the queries:"
    grep -A 2 panicked "$work/aggregator.log" | head -n 6
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
