#!/usr/bin/env bash
# Issue 16 item 4 at CLICKS clicks of dedup state (default 100 M), loopback only, without
# loading them through Kafka first (over an hour on this machine). A work directory that
# bench-recovery.sh kept (KEEP_WORK=1) has its newest checkpoint rewritten as one full
# checkpoint whose winners are grown to CLICKS (benches/inflate_checkpoint.rs: fresh impressions
# spread over the dedup horizon; rows, offsets and output as kept). Then, for each phase of
# PHASES (default "plain checkpointed plain", so that drift shows), a copy of it is restarted
# with 2 workers and, once its dedup state is built, reads LOAD_S s of new event time at RATE
# clicks/s (preloaded in chunks while it reads, as bench-recovery.sh does). That event time
# starts at the checkpoint's frontier and must end in the past: clicks ahead of the clock hold
# the watermark (and those beyond aggregator.max_future_skew_ms are dead-lettered), so run it
# within the hour or so after bench-recovery.sh, which ends its event time at its start.
#  - plain: checkpoints never due (the interval is a day), the baseline;
#  - checkpointed: the aggregator's default interval and chain length (or INTERVAL_MS,
#    FULL_EVERY), its records/s as a ratio to the plain phases' median: the checkpoint cost.
#    It then reads a minute more at a time until its newest checkpoint is the longest chain
#    (the slowest restore), is killed with SIGKILL and restarted, timed as bench-recovery.sh's
#    step 4 (serving again, counting again). The phase and that loop are one whole cycle of
#    the chain (a full checkpoint, then FULL_EVERY links): its records/s and CPU µs a record
#    are the steady cost, however LOAD_S falls against the full checkpoints. Each plain phase
#    then reads as many minutes the same way (a minute at a time, 3 s apart), so that the cycle
#    is compared with plain runs of the same shape: checkpoints are asked by wall time, and a
#    minute at a time reads fewer records per checkpoint than the phase at full speed.
# The first checkpoint after a restore is full, so each checkpointed phase includes one.
# QUERY and WANT are the ones bench-recovery.sh printed for the kept run (its range ends
# before the loaded event time, so the answer stays).
# Usage: scripts/bench-restore-scale.sh KEPT_DIR QUERY WANT
#   (env: CLICKS=100000000 RATE=8000 LOAD_S=1800 ADS=10 PUBLISHERS=2 PHASES= INTERVAL_MS=
#         FULL_EVERY= CHUNK_EVENTS=80000 IDLE_MS=86400000 NO_BUILD= PERF_DIR=)
set -euo pipefail
cd "$(dirname "$0")/.."
kept=${1:?the kept work directory} query=${2:?the query} want=${3:?the answer}
[ -d "$kept/checkpoints" ] || { echo "no checkpoints in $kept"; exit 1; }
CLICKS=${CLICKS:-100000000} RATE=${RATE:-8000} LOAD_S=${LOAD_S:-1800} ADS=${ADS:-10}
PUBLISHERS=${PUBLISHERS:-2} CHUNK_EVENTS=${CHUNK_EVENTS:-80000}
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bins
# Partitions are never idle here: the kept checkpoint's frontier is in the past, and an idle
# stream's watermark would follow the wall clock past it, making every loaded click late.
export IDLE_MS=${IDLE_MS:-86400000}
source scripts/lib/bench.sh
grown=$work/grown
mkdir -p "$grown"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)   $CLICKS clicks of dedup state; then $LOAD_S s at $RATE clicks/s, $ADS ads, $PUBLISHERS publishers, 2 workers"
echo "== growing the newest checkpoint of $kept"
t0=$(date +%s.%N)
cargo bench --quiet --bench inflate_checkpoint -- "$kept/checkpoints" "$grown/checkpoints" "$CLICKS" |
  sed 's/^/   /'
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "   written in %.1f s\n", b - a}'
frontier=$(jq .frontier "$grown"/checkpoints/ckpt-*/MANIFEST.json)
start=$(((frontier / 60000 + 1) * 60000))
((start + LOAD_S * 1000 < $(now_ms) - 60000)) || {
  echo "the load's event time, $LOAD_S s from the checkpoint's frontier ($(iso "$frontier")), would run ahead of the clock: lower LOAD_S"
  exit 1
}

# After a phase: one more minute of event time from end_ms, added to the cycle's records, time
# and CPU, then 3 s for the checkpoints to show in the log.
read_a_minute() {
  local before=$emitted
  preload "$end_ms" "$((end_ms + 60000))" --publishers "$PUBLISHERS"
  cycle_records=$((cycle_records + emitted - before))
  cycle_s=$(awk -v a="$cycle_s" -v b="$preload_s" 'BEGIN {print a + b}')
  cycle_cpu=$(awk -v a="$cycle_cpu" -v b="$preload_cpu_s" 'BEGIN {print a + b}')
  end_ms=$((end_ms + 60000))
  sleep 3
}

stop_perf() {
  if [ -n "${perf_pid:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; perf_pid=; fi
}

phase_args=(--workers 2 --output "$work/out.ndjson" --checkpoint-dir "$work/checkpoints")
rates=() cpus=() cycle_rates=() cycle_cpus=() plain_shape_rates=() plain_shape_cpus=()
for phase in ${PHASES:-plain checkpointed plain}; do
  echo "== $phase"
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  rm -rf "${work:?}/kafka" "$work/checkpoints" "$work/out.ndjson" "$work/spool"
  cp -a "$kept/kafka" "$kept/out.ndjson" "$work/"
  cp -a "$grown/checkpoints" "$work/"
  start_broker
  sync
  echo 3 2>/dev/null >/proc/sys/vm/drop_caches || true
  cat "$work"/checkpoints/*/* >/dev/null 2>&1 || true
  case $phase in
    plain) export ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS=86400000 ;;
    checkpointed)
      export ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS=${INTERVAL_MS:-10000}
      if [ -n "${FULL_EVERY:-}" ]; then export ADCLICK_AGGREGATOR_CHECKPOINT_FULL_EVERY=$FULL_EVERY; fi
      ;;
    *) echo "unknown phase $phase"; exit 1 ;;
  esac
  restart_timed "$want" "${phase_args[@]}"
  # The records already read (the kept run's, all before the checkpoint) count as produced.
  emitted=$(health | jq '[.partitions[].offset] | add') counted=0 chunks=1000
  before=$emitted
  threads_cpu "$agg_pid" >"$work/threads-before"
  # PERF_DIR: a flat profile of each phase's cycle, for `perf report --sort sym` side by side.
  if [ -n "${PERF_DIR:-}" ]; then
    perf_runs=$((${perf_runs:-0} + 1))
    perf record -q -F 99 -p "$agg_pid" -o "$PERF_DIR/$phase-$perf_runs.data" 2>/dev/null &
    perf_pid=$!
  fi
  preload "$start" "$((start + LOAD_S * 1000))" --publishers "$PUBLISHERS"
  loaded=$((emitted - before))
  rate=$(awk -v n="$loaded" -v s="$preload_s" 'BEGIN {printf "%.0f", n / s}')
  cpu_us=$(awk -v n="$loaded" -v s="$preload_cpu_s" 'BEGIN {printf "%.2f", s * 1e6 / n}')
  rates+=("$phase:$rate")
  cpus+=("$phase:$cpu_us")
  echo "   $loaded records in $preload_s s: $rate records/s, $cpu_us CPU µs a record; aggregator $(rss "$agg_pid")"
  if [ "$phase" = plain ]; then
    # The same shape as a checkpointed phase's whole cycle: the phase, then as many minutes
    # read one at a time as the last checkpointed loop took (LOOP_CHUNKS before any), so that
    # the two are compared over the same records read the same way.
    cycle_records=$loaded cycle_s=$preload_s cycle_cpu=$preload_cpu_s end_ms=$((start + LOAD_S * 1000))
    for ((i = 0; i < ${loop_chunks:-${LOOP_CHUNKS:-22}}; i++)); do
      read_a_minute
    done
    awk -v n="$cycle_records" -v s="$cycle_s" -v c="$cycle_cpu" 'BEGIN {
      printf "   the same shape as a whole cycle: %d records in %.1f s: %.0f records/s, %.2f CPU µs a record\n", n, s, n / s, c * 1e6 / n}'
    threads_cpu "$agg_pid" >"$work/threads-after"
    stop_perf
    threads_cpu_report "$work/threads-before" "$work/threads-after" "$cycle_records"
    plain_shape_rates+=("$(awk -v n="$cycle_records" -v s="$cycle_s" 'BEGIN {printf "%.0f", n / s}')")
    plain_shape_cpus+=("$(awk -v n="$cycle_records" -v c="$cycle_cpu" 'BEGIN {printf "%.2f", c * 1e6 / n}')")
  fi
  if [ "$phase" = checkpointed ]; then
    { grep "checkpoint committed" "$agg_log" || true; } | sed 's/\x1b\[[0-9;]*m//g' |
      awk '{for (i = 1; i <= NF; i++) if ($i ~ /^(bytes|duration_ms|links)=/) print $i}' |
      awk -F= '{v[$1] = v[$1] " " $2; n[$1]++; s[$1] += $2}
        END {for (k in v) printf "   checkpoints, %s (mean %.0f):%s\n", k, s[k] / n[k], v[k]}' |
      cut -c1-400
    # The slowest restore reads the longest chain: a minute of event time at a time, on until
    # the newest checkpoint is the last link before a full one.
    end_ms=$((start + LOAD_S * 1000))
    # The phase and this loop together are one cycle of the chain: the full checkpoint a
    # restart writes first, then links up to the longest chain. Its CPU a record is the
    # checkpoints' steady cost, wherever the full ones fall.
    cycle_records=$loaded cycle_s=$preload_s cycle_cpu=$preload_cpu_s
    links() {
      { grep 'checkpoint committed' "$agg_log" || echo links=-1; } | tail -1 |
        sed 's/\x1b\[[0-9;]*m//g; s/.*links=\(-*[0-9]*\).*/\1/'
    }
    loop_chunks=0
    while [ "$(links)" -lt "${FULL_EVERY:-30}" ]; do
      loop_chunks=$((loop_chunks + 1))
      read_a_minute
    done
    echo "   $(grep -c 'checkpoint committed' "$agg_log") checkpoints committed; links of the newest: $(links)"
    awk -v n="$cycle_records" -v s="$cycle_s" -v c="$cycle_cpu" 'BEGIN {
      printf "   the whole cycle (restart to the longest chain): %d records in %.1f s: %.0f records/s, %.2f CPU µs a record\n", n, s, n / s, c * 1e6 / n}'
    threads_cpu "$agg_pid" >"$work/threads-after"
    stop_perf
    threads_cpu_report "$work/threads-before" "$work/threads-after" "$cycle_records"
    cycle_rates+=("$(awk -v n="$cycle_records" -v s="$cycle_s" 'BEGIN {printf "%.0f", n / s}')")
    cycle_cpus+=("$(awk -v n="$cycle_records" -v c="$cycle_cpu" 'BEGIN {printf "%.2f", c * 1e6 / n}')")
    echo "== kill -9 and restart after $phase"
    kill -9 "$agg_pid"
    wait "$agg_pid" 2>/dev/null || true
    restart_timed "$want" "${phase_args[@]}"
  fi
done
echo "== records/s: ${rates[*]}"
plain=$(printf '%s\n' "${rates[@]}" | sed -n 's/^plain://p' | median)
checkpointed=$(printf '%s\n' "${rates[@]}" | sed -n 's/^checkpointed://p' | median)
if [ -n "$plain" ] && [ -n "$checkpointed" ]; then
  awk -v c="$checkpointed" -v p="$plain" \
    'BEGIN {printf "   checkpointed %.0f against plain %.0f (medians): %.3f of the baseline\n", c, p, c / p}'
  pc=$(printf '%s\n' "${cpus[@]}" | sed -n 's/^plain://p' | median)
  cc=$(printf '%s\n' "${cpus[@]}" | sed -n 's/^checkpointed://p' | median)
  awk -v c="$cc" -v p="$pc" \
    'BEGIN {printf "   CPU a record: plain %.2f µs against checkpointed %.2f µs (medians): %.3f\n", p, c, p / c}'
  if [ ${#cycle_cpus[@]} -gt 0 ]; then
    yc=$(printf '%s\n' "${cycle_rates[@]}" | median) yu=$(printf '%s\n' "${cycle_cpus[@]}" | median)
    awk -v r="$yc" -v p="$plain" -v c="$yu" -v q="$pc" 'BEGIN {
      printf "   whole cycles: %.0f records/s (%.3f of plain), %.2f CPU µs a record (plain over it: %.3f)\n", r, r / p, c, q / c}'
    if [ ${#plain_shape_cpus[@]} -gt 0 ]; then
      sr=$(printf '%s\n' "${plain_shape_rates[@]}" | median) su=$(printf '%s\n' "${plain_shape_cpus[@]}" | median)
      awk -v r="$yc" -v p="$sr" -v c="$yu" -v q="$su" 'BEGIN {
        printf "   whole cycles against plain runs of the same shape (%.0f records/s, %.2f CPU µs a record): records/s %.3f, CPU %.3f\n", p, q, r / p, q / c}'
    fi
  fi
fi
