#!/usr/bin/env bash
# The demo: embedded Kafka, the redirect, the aggregator with its query server and dashboard,
# and simulated traffic through real HTTP, with a live view of clicks reaching Kafka and
# windows completing. Ctrl-C stops it (or
# set DEMO_SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${DEMO_RATE:-200}
SECONDS_TO_RUN=${DEMO_SECONDS:-3600}
OUT=target/demo
mkdir -p "$OUT"
rm -rf "$OUT/spool" "$OUT/kafka"

# The embedded broker (built in) keeps every record in $OUT/kafka, across restarts.
export ADCLICK_KAFKA_EMBEDDED_DIR=$OUT/kafka
cargo build --quiet --bins
BIN=${CARGO_TARGET_DIR:-target}/debug

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN/adclick-redirect" --config config/demo.toml --embedded-kafka --listen 127.0.0.1:8080 \
  >"$OUT/redirect.out" 2>"$OUT/redirect.log" &
pids+=($!)
for _ in $(seq 600); do grep -q "listening on" "$OUT/redirect.out" 2>/dev/null && break; sleep 0.1; done
brokers=$(sed -n 's/^embedded kafka: //p' "$OUT/redirect.out")
echo "embedded Kafka:   $brokers  ($(sed -n 's/^embedded kafka keeps: //p' "$OUT/redirect.out"))"
echo "redirect:         http://127.0.0.1:8080  (metrics: http://127.0.0.1:8080/metrics)"
echo "a signed click:   $("$BIN/adclick-redirect" --config config/demo.toml sign --impression-id demo-1 \
  --ad-id ad_1 --campaign-id cmp_1 --advertiser-id adv_1 --publisher-id pub_1 --url https://example.com/)"

"$BIN/adclick-aggregator" --config config/demo.toml --brokers "$brokers" --workers 2 \
  --query-listen "${DEMO_QUERY_LISTEN:-127.0.0.1:8081}" \
  --output "$OUT/windows.ndjson" >"$OUT/aggregator.out" 2>"$OUT/aggregator.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "query server:" "$OUT/aggregator.out" 2>/dev/null && break; sleep 0.1; done
query=$(sed -n 's/^query server: //p' "$OUT/aggregator.out")
echo "aggregator:       2 workers; window reports in $OUT/windows.ndjson"
echo "dashboard:        ${query}?key=demo-admin-key-not-secret   (advertiser adv_1: ?key=demo-adv-1-key-not-secret)"
echo "metrics:          ${query}metrics"

"$BIN/adclick-loadgen" --config config/demo.toml --output http --target http://127.0.0.1:8080 \
  --rate "$RATE" --duration "$SECONDS_TO_RUN" --invalid 0.02 --truth "$OUT/truth.json" 2>"$OUT/loadgen.log" &
loadgen=$!
pids+=($loadgen)
echo "traffic:          $RATE clicks/s from adclick-loadgen (ground truth: $OUT/truth.json)"
echo

metric() { curl -s http://127.0.0.1:8080/metrics | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {print s+0}'; }
while kill -0 "$loadgen" 2>/dev/null; do
  sleep 2
  printf '\rredirected %8s   rejected %6s   in Kafka %8s   spool %5s   windows complete %6s ' \
    "$(metric 'adclick_redirect_requests_total\{endpoint="click",outcome="redirected"')" \
    "$(curl -s http://127.0.0.1:8080/metrics | awk '/^adclick_redirect_requests_total\{endpoint="click"/ && !/redirected/ {s+=$2} END {print s+0}')" \
    "$(metric adclick_redirect_outbox_delivered_total)" \
    "$(metric adclick_redirect_outbox_spool_records)" \
    "$(grep -c '"status":"complete"' "$OUT/windows.ndjson" 2>/dev/null || echo 0)"
done
echo
tail -n 1 "$OUT/loadgen.log"
