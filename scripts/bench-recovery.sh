#!/usr/bin/env bash
# Recovery after kill -9, and what checkpoints cost (issue 5), loopback only. On the embedded
# broker (hosted by an idle adclick-redirect), with 2 workers:
#  1. baseline: an aggregator without checkpoints reads BASELINE s of event time at RATE
#     clicks/s (preloaded in chunks while it reads), from empty state: records/s;
#  2. the same amount again, for an aggregator that checkpoints every INTERVAL_MS, from empty
#     state: records/s, the ratio to the baseline measured in the same run;
#  3. that aggregator goes on to DURATION s of event time in all (1 h at 10 k clicks/s: 36 M
#     clicks), waits for a checkpoint past the end, answers one ad's count over the hour, is
#     killed with SIGKILL and started again: time to its query server, time until the same
#     query gives the same answer (serving again), and until every worker's dedup state is
#     built (counting again); checkpoint duration and size.
#  Checkpoints are incremental (FULL_EVERY links between full ones, the aggregator's default
#  when unset; FULL_EVERY=0: every checkpoint full): each checkpoint's bytes, duration and
#  links are listed.
# Usage: scripts/bench-recovery.sh
#   (env: RATE=10000 DURATION=3600 BASELINE=300 ADS=100 PUBLISHERS=10 INTERVAL_MS=10000
#         CHUNK_EVENTS=80000 IDLE_MS=5000 FULL_EVERY= NO_BUILD=: binaries already built in
#         $CARGO_TARGET_DIR/release; PROFILE_RESTORE=FILE: `perf record -g` of the restarted
#         aggregator from its start until it serves again, into FILE)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-10000}
DURATION=${DURATION:-3600}
BASELINE=${BASELINE:-300}
ADS=${ADS:-100}
PUBLISHERS=${PUBLISHERS:-10}
INTERVAL_MS=${INTERVAL_MS:-10000}
CHUNK_EVENTS=${CHUNK_EVENTS:-80000}
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bins
source scripts/lib/bench.sh
start_broker
end_ms=$(($(now_ms) / 60000 * 60000))
hour_start=$((end_ms - DURATION * 1000))
base_start=$((hour_start - BASELINE * 1000))
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   rate: $RATE clicks per simulated s, $ADS ads, $PUBLISHERS publishers, 2 workers"

echo "== 1. baseline: no checkpoints, $BASELINE s of event time"
start_aggregator baseline --workers 2 --output /dev/null
preload "$base_start" "$hour_start" --publishers "$PUBLISHERS"
base_records=$emitted base_s=$preload_s
awk -v n="$base_records" -v s="$base_s" 'BEGIN {printf "   %d records in %.1f s: %.0f records/s\n", n, s, n/s}'
kill -9 "$agg_pid"
wait "$agg_pid" 2>/dev/null || true

echo "== 2. checkpoints every $INTERVAL_MS ms, the same amount from empty state"
ckpt_args=(--workers 2 --output "$work/out.ndjson" --checkpoint-dir "$work/checkpoints")
export ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS=$INTERVAL_MS
if [ -n "${FULL_EVERY:-}" ]; then export ADCLICK_AGGREGATOR_CHECKPOINT_FULL_EVERY=$FULL_EVERY; fi
echo "   checkpoint_full_every: ${FULL_EVERY:-default}"
start_aggregator checkpointed "${ckpt_args[@]}"
before=$emitted
preload "$hour_start" "$((hour_start + BASELINE * 1000))" --publishers "$PUBLISHERS"
awk -v n="$((emitted - before))" -v s="$preload_s" -v b="$base_records" -v bs="$base_s" \
  'BEGIN {printf "   %d records in %.1f s: %.0f records/s, %.3f of the baseline\n", n, s, n/s, (n/s)/(b/bs)}'

echo "== 3. on to $DURATION s of event time in all"
preload "$((hour_start + BASELINE * 1000))" "$end_ms" --publishers "$PUBLISHERS"
wait_watermark "$end_ms"
echo "   $((emitted - before)) records in the hour's state; aggregator $(rss "$agg_pid")"
check_received
metric() { curl -sf "${base}metrics" | sed -n "s/^adclick_aggregator_checkpoint{value=\"$1\"} //p"; }
# The answer compared after the restart must be the range's final one, from a checkpoint that
# holds all of it: the watermark passes the end only once every partition has been idle for
# IDLE_MS (nothing after the end is produced), and a checkpoint past the end follows. An
# earlier answer (watermark at the newest click minus the out-of-orderness bound) misses the
# range's last seconds, which the restarted aggregator then counts: a mismatch by chance.
for _ in $(seq 600); do
  f=$(metric frontier || true)
  [ -n "$f" ] && awk -v f="$f" -v e="$end_ms" 'BEGIN {exit !(f * 1000 >= e)}' && break
  sleep 0.5
done
[ -n "$f" ] && awk -v f="$f" -v e="$end_ms" 'BEGIN {exit !(f * 1000 >= e)}' || {
  echo "FAIL: no checkpoint past the end of the range (newest frontier: ${f:-none}); IDLE_MS=${IDLE_MS:-5000}"
  exit 1
}
echo "   newest checkpoint: $(metric duration) s from request to manifest, $(metric bytes) bytes," \
  "$(metric committed) committed by this process"
grep "checkpoint committed" "$agg_log" | sed 's/\x1b\[[0-9;]*m//g' |
  awk '{for (i = 1; i <= NF; i++) if ($i ~ /^(bytes|duration_ms|links)=/) print $i}' |
  awk -F= '{v[$1] = v[$1] " " $2; n[$1]++; s[$1] += $2}
    END {for (k in v) printf "   all checkpoints, %s (mean %.0f):%s\n", k, s[k] / n[k], v[k]}' |
  cut -c1-600
query="ads/ad_0/aggregated_count?from=$(iso "$hour_start")&to=$(iso "$end_ms")"
want=$(answer)
[ "$(jq .complete <<<"$want")" = true ] || { echo "FAIL: the answer before the kill is not complete: $want"; exit 1; }
echo "   ad_0 over the hour: $want"
echo "   (query: $query)"
echo "   tallies: $(health | jq -c '{watermark_ms, tallies: (.tallies | {received, counted, late, duplicates})}')"

echo "== 4. kill -9 and restart"
kill -9 "$agg_pid"
wait "$agg_pid" 2>/dev/null || true
restart_timed "$want" "${ckpt_args[@]}"
