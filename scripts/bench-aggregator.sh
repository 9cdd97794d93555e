#!/usr/bin/env bash
# Aggregator end to end, loopback only: the load generator preloads N clicks into the embedded
# Kafka broker (the built-in one, hosted by an idle adclick-redirect), then adclick-aggregator reads the
# topic to its end (--until-end) and finalizes every window, on 1 and 2 workers; the same
# clicks as NDJSON files through the file source for comparison. Reports events/s (median of
# ROUNDS). Every run must have received every record produced, with nothing lost, or the
# benchmark fails: it counts what it claims.
# Usage: scripts/bench-aggregator.sh   (env: EVENTS=200000 ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/stats.sh
EVENTS=${EVENTS:-200000}
ROUNDS=${ROUNDS:-3}
cargo build --release --quiet --bins
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
B=${CARGO_TARGET_DIR:-target}/release

ADCLICK_REDIRECT_SPOOL_DIR="$work/spool" ADCLICK_KAFKA_EMBEDDED_DIR="$work/kafka" \
  "$B/adclick-redirect" --config config/demo.toml \
  --embedded-kafka --listen 127.0.0.1:0 >"$work/redirect.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 600); do grep -q "listening on" "$work/redirect.out" 2>/dev/null && break; sleep 0.1; done
brokers=$(sed -n 's/^embedded kafka: //p' "$work/redirect.out")

common=(--config config/demo.toml --count "$EVENTS" --rate "${RATE:-100000}" --seed 1 --truth "$work/truth.json")
"$B/adclick-loadgen" "${common[@]}" --output kafka --brokers "$brokers" 2>"$work/loadgen.log"
"$B/adclick-loadgen" "${common[@]}" --output file --files 8 --out-dir "$work/files" 2>/dev/null

# What the aggregator must receive: every record produced (forged links exist only via HTTP).
expected=$(jq '.tallies.emitted - .tallies.forged' "$work/truth.json")
measure() { # label, args...
  local label=$1; shift
  local rates=()
  for _ in $(seq "$ROUNDS"); do
    local t0 t1
    t0=$(date +%s.%N)
    "$B/adclick-aggregator" --config config/demo.toml "$@" --output "$work/out.ndjson" 2>/dev/null
    t1=$(date +%s.%N)
    # The tallies line: every record produced was received, none lost.
    tail -n 1 "$work/out.ndjson" | jq -e --argjson n "$expected" \
      '.type == "tallies" and .received == $n and (.lost // 0) == 0' >/dev/null || {
      echo "FAIL ($label): expected $expected records received and none lost: $(tail -n 1 "$work/out.ndjson")"
      exit 1
    }
    rates+=("$(awk -v n="$EVENTS" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n/(b-a)}')")
  done
  printf '%-34s %10s events/s  (rounds: %s)\n' "$label" "$(printf '%s\n' "${rates[@]}" | median)" "${rates[*]}"
}
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   events: $EVENTS   $(tail -n 1 "$work/loadgen.log")"
for w in 1 2; do
  measure "kafka --until-end, $w worker(s)" --brokers "$brokers" --until-end --workers "$w"
  measure "files (8), $w worker(s)" --workers "$w" --input "$work"/files/*.ndjson
done
tail -n 1 "$work/out.ndjson"
