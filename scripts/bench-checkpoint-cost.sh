#!/usr/bin/env bash
# The cost of checkpointing, builds against each other (issue 16 item 4), loopback only. A work
# directory bench-recovery.sh kept (KEEP_WORK=1) is restarted, a fresh copy each run, with 2
# workers and its partitions never idle; once its dedup state is built it reads LOAD_S s of
# new event time (from the checkpoint's frontier, at RATE clicks/s) as fast as it can, with
# checkpoints every INTERVAL_MS ("ck") or never due ("plain"). The runs alternate builds and
# phases ABBA, ROUNDS times; it prints each run's records/s and CPU time a record and, per
# build, the median checkpointed over the median plain (records/s; plain over checkpointed
# for CPU a record, which a shared machine's load moves less). The loaded event time must end
# before the clock.
# Usage: scripts/bench-checkpoint-cost.sh KEPT_DIR QUERY WANT AGGREGATOR_BIN...
#   (env: LOAD_S=240 RATE=12000 ADS=10 PUBLISHERS=2 INTERVAL_MS=10000 ROUNDS=2 NO_BUILD=)
set -euo pipefail
cd "$(dirname "$0")/.."
kept=${1:?the kept work directory} query=${2:?the query} want=${3:?the answer}
shift 3
(($# > 0)) || { echo "name at least one aggregator binary"; exit 1; }
builds=("$@")
LOAD_S=${LOAD_S:-240} RATE=${RATE:-12000} ADS=${ADS:-10} PUBLISHERS=${PUBLISHERS:-2}
CHUNK_EVENTS=${CHUNK_EVENTS:-80000}
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bins
export IDLE_MS=86400000
source scripts/lib/bench.sh
frontier=$(jq -s 'map(.frontier) | max' "$kept"/checkpoints/ckpt-*/MANIFEST.json)
start=$(((frontier / 60000 + 1) * 60000))
((start + LOAD_S * 1000 < $(now_ms) - 60000)) || {
  echo "the load's event time would run ahead of the clock: lower LOAD_S"
  exit 1
}
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   $LOAD_S s of event time at $RATE clicks/s after $(iso "$frontier"), 2 workers"

# run BUILD PHASE: one restart and load; sets `rate` (records/s). Not in a subshell: the
# processes it starts must stay in `pids`, for the next run and the cleanup to stop.
run() {
  local bin=$1 phase=$2
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  rm -rf "${work:?}/kafka" "$work/checkpoints" "$work/out.ndjson" "$work/spool"
  cp -a "$kept/kafka" "$kept/out.ndjson" "$kept/checkpoints" "$work/"
  start_broker
  case $phase in
    plain) export ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS=86400000 ;;
    ck) export ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS=${INTERVAL_MS:-10000} ;;
  esac
  AGGREGATOR=$bin restart_timed "$want" --workers 2 --output "$work/out.ndjson" \
    --checkpoint-dir "$work/checkpoints" >/dev/null
  emitted=$(health | jq '[.partitions[].offset] | add') counted=0 chunks=1000
  local before=$emitted
  preload "$start" "$((start + LOAD_S * 1000))" --publishers "$PUBLISHERS" >/dev/null
  rate=$(awk -v n="$((emitted - before))" -v s="$preload_s" 'BEGIN {printf "%.0f", n / s}')
  cpu_us=$(awk -v n="$((emitted - before))" -v s="$preload_cpu_s" 'BEGIN {printf "%.2f", s * 1e6 / n}')
}

declare -A rates cpus
for ((r = 0; r < ${ROUNDS:-2}; r++)); do
  # ABBA over builds and phases: every build's phases in one order, then reversed.
  order=()
  for b in "${builds[@]}"; do order+=("$b:plain" "$b:ck"); done
  if ((r % 2)); then
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do reversed+=("${order[i]}"); done
    order=("${reversed[@]}")
    reversed=()
  fi
  for spec in "${order[@]}"; do
    b=${spec%:*} phase=${spec##*:}
    run "$b" "$phase"
    echo "   $b $phase: $rate records/s, $cpu_us CPU µs a record"
    rates[$spec]="${rates[$spec]:-} $rate"
    cpus[$spec]="${cpus[$spec]:-} $cpu_us"
  done
done
for b in "${builds[@]}"; do
  p=$(tr ' ' '\n' <<<"${rates[$b:plain]}" | median) c=$(tr ' ' '\n' <<<"${rates[$b:ck]}" | median)
  pc=$(tr ' ' '\n' <<<"${cpus[$b:plain]}" | median) cc=$(tr ' ' '\n' <<<"${cpus[$b:ck]}" | median)
  awk -v b="$b" -v c="$c" -v p="$p" -v pc="$pc" -v cc="$cc" 'BEGIN {
    printf "%s: checkpointed %.0f against plain %.0f records/s (medians): %.3f\n", b, c, p, c / p
    printf "%s: CPU a record, plain %.2f µs against checkpointed %.2f µs (medians): %.3f\n", b, pc, cc, pc / cc}'
done
