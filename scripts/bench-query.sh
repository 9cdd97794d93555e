#!/usr/bin/env bash
# Query latency under concurrent load while ingesting (issue 4), loopback only: the load
# generator preloads DURATION seconds of event time (24 h by default, ending at the last whole
# minute) over ADS ads at RATE clicks per simulated second into the embedded Kafka broker
# (hosted by an idle adclick-redirect); a streaming adclick-aggregator (2 workers) with its
# query server reads it; once its watermark has reached the end of the preload, a --realtime
# load generator keeps LIVE_RATE clicks/s flowing, and benches/query_load.rs runs CONCURRENCY
# keep-alive clients for SECONDS per phase: /healthz (baseline), one ad's count over the
# preloaded range, top-N. Prints the figures, the data volume and the aggregator's memory.
# Usage: scripts/bench-query.sh
#   (env: ADS=100000 RATE=100 DURATION=86400 LIVE_RATE=2000 CONCURRENCY=8 SECONDS=20
#         TOP_COUNT=10 TOP_WINDOWS=1,5,60 IDLE_MS=2000)
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
IDLE_MS=${IDLE_MS:-2000}
KEY=demo-admin-key-not-secret
cargo build --release --quiet --bins
cargo bench --quiet --bench query_load --no-run 2>/dev/null
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
B=target/release
now_ms() { date +%s%3N; }
iso() { date -u -d "@$(($1 / 1000))" +%Y-%m-%dT%H:%M:%SZ; }
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %.0f MiB  ", $1, $2 / 1024}' "/proc/$1/status"; echo; }

ADCLICK_REDIRECT_SPOOL_DIR="$work/spool" "$B/adclick-redirect" --config config/demo.toml \
  --embedded-kafka --listen 127.0.0.1:0 >"$work/redirect.out" 2>/dev/null &
pids+=($!)
broker_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/redirect.out" 2>/dev/null && break; sleep 0.1; done
brokers=$(sed -n 's/^embedded kafka: //p' "$work/redirect.out")

# The preload: DURATION seconds of event time ending at the last whole minute.
end_ms=$(($(now_ms) / 60000 * 60000))
start_ms=$((end_ms - DURATION * 1000))
from=$(iso "$start_ms") to=$(iso "$end_ms")
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   ads: $ADS   rate: $RATE clicks per simulated s over [$from, $to)"
t0=$(date +%s.%N)
"$B/adclick-loadgen" --config config/demo.toml --output kafka --brokers "$brokers" \
  --ads "$ADS" --rate "$RATE" --duration "$DURATION" --start "$start_ms" --seed 1 \
  --truth "$work/truth.json" 2>"$work/preload.log"
t1=$(date +%s.%N)
preload=$(tail -n 1 "$work/preload.log")
emitted=$(sed -n 's/.*emitted \([0-9]*\).*/\1/p' <<<"$preload")
echo "preload: $preload"
awk -v a="$t0" -v b="$t1" -v n="$emitted" \
  'BEGIN {printf "preload into the broker: %.0f s (%.0f events/s)\n", b-a, n/(b-a)}'

ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS=$IDLE_MS "$B/adclick-aggregator" --config config/demo.toml \
  --brokers "$brokers" --workers 2 --query-listen 127.0.0.1:0 --output "$work/out.ndjson" \
  >"$work/aggregator.out" 2>"$work/aggregator.log" &
pids+=($!)
agg_pid=$!
t0=$(date +%s.%N)
for _ in $(seq 100); do grep -q "query server:" "$work/aggregator.out" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^query server: //p' "$work/aggregator.out")
health() { curl -sf -H "Authorization: Bearer $KEY" "${base}api/v1/health"; }
# Caught up: every partition read to its end and the watermark within a minute of the end.
for i in $(seq 3600); do
  kill -0 "$agg_pid" 2>/dev/null || { echo "the aggregator died:"; tail "$work/aggregator.log"; exit 1; }
  h=$(health || true)
  if [ -n "$h" ] && jq -e --argjson e "$end_ms" \
    '(.watermark_ms // 0) >= $e - 60000 and ([.partitions[].lag] | add // 1) == 0' \
    >/dev/null <<<"$h"; then break; fi
  [ "$i" = 3600 ] && { echo "the aggregator did not catch up within an hour: $h"; exit 1; }
  ((i % 30)) || echo "  catching up: $(jq -c '{watermark, lag: ([.partitions[].lag] | add)}' <<<"$h" 2>/dev/null)"
  sleep 1
done
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v n="$emitted" \
  'BEGIN {printf "aggregator caught up: %.0f s (%.0f events/s end to end, 2 workers)\n", b-a, n/(b-a)}'
echo "health: $(jq -c '{watermark, tallies}' <<<"$h")"
# Distinct minute rows (minute x ad x campaign x advertiser x publisher x country x device):
# each is reported once as complete when its window closes.
rows=$(grep -c '"granularity":"minute".*"status":"complete"' "$work/out.ndjson" || true)
echo "minute rows in the preloaded range: $rows ($(du -h "$work/out.ndjson" | cut -f1) of NDJSON reports)"
echo "aggregator memory after the preload: $(rss "$agg_pid")"

# Ingest continues during the queries.
"$B/adclick-loadgen" --config config/demo.toml --output kafka --brokers "$brokers" \
  --ads "$ADS" --rate "$LIVE_RATE" --duration 86400 --realtime --seed 2 \
  --truth "$work/live-truth.json" >/dev/null 2>"$work/live.log" &
pids+=($!)
sleep 10
h0=$(health)
echo "live ingest at $LIVE_RATE clicks/s: $(jq -c '{watermark_delay_ms, received: .tallies.received}' <<<"$h0")"

cargo bench --quiet --bench query_load -- "$base" "$KEY" "$ADS" "$CONCURRENCY" \
  "$SECONDS_PER_PHASE" "$from" "$to" "$TOP_COUNT" "$TOP_WINDOWS"

h1=$(health)
jq -rn --argjson a "$h0" --argjson b "$h1" \
  '"during the queries: \($b.tallies.received - $a.tallies.received) records received, watermark delay \($b.watermark_delay_ms) ms at the end"'
echo "aggregator memory at the end: $(rss "$agg_pid")"
echo "broker (adclick-redirect) memory: $(rss "$broker_pid")"
