#!/usr/bin/env bash
# The replay stress run (issue 16 item 2): a supervised cluster of PROCESSES x WORKERS
# (`adclick-aggregator cluster`) reads a real broker process (Tansu, scripts/tansu.sh) while
# `adclick-loadgen replay --speed max` sends a recording into it, for DURATION seconds:
#   - every KILL_EVERY_S seconds (the first after half of it), kill -9 of a random aggregator process (the supervisor
#     restarts the whole cluster from the newest checkpoint);
#   - once, half way, the broker is killed with SIGKILL and restarted on its storage;
#   - at the end, once the cluster has read every record, it is stopped, `--until-end` goes on
#     from its newest checkpoint and finalizes every window, and `adclick-loadgen compare`
#     holds every final window and the tallies to the batch aggregator's on the same
#     recording, exactly.
# It prints the cluster's throughput over time (records read per second, from health), each
# recovery's time (kill -9 to the restarted cluster's query server answering, and to reading
# past where it was), and the largest lag (records in the topic not yet read). Exits non-zero on any
# difference. Every process listens on 127.0.0.1 only.
#
#   scripts/stress.sh                      # 600 s, release build
#   DURATION=90 KILL_EVERY_S=20 scripts/stress.sh
# tests/stress.rs runs a short form (debug binaries) in CI.
#
# The recording: `adclick-loadgen --output file`, RECORDS events over PARTITIONS files (one per
# partition of the topic), duplicates, late and malformed lines and invalid traffic included,
# its event time spanning DURATION seconds and ending about now. Mind Tansu's SQLite engine:
# a fetch scans the partition from its offset up to the end, so a restore far behind the end
# of a long partition costs more per fetch than the client's request timeout allows (600,000
# records in 4 partitions stopped the cluster reading for minutes, docs/benchmarks.md); keep
# partitions at a few tens of thousands of records. The cluster's idle timeout is
# raised (IDLE_TIMEOUT_MS): its event times are the recording's, not the wall clock's, and a
# stream idle for the timeout (a long broker outage) would move the watermark to the wall
# clock, past the rest of the recording.
#
# Settings (environment), with their defaults:
#   DURATION=600         seconds of stress (kills go on until then, and until the replay ends)
#   RECORDS=             events in the recording [DURATION x 400]
#   KILL_EVERY_S=30      seconds between two kill -9s of a random aggregator process
#   BROKER_DOWN_S=3      seconds the broker stays down at its restart
#   PROCESSES=2 WORKERS=2 PARTITIONS=8
#   CHECKPOINT_MS=2000   the cluster's checkpoint interval
#   IDLE_TIMEOUT_MS=3600000   the cluster's idle timeout (see above)
#   SAMPLE_S=10          seconds between two throughput samples
#   SEED=1               seed of the recording and the kill schedule
#   SPEED=max            replay speed (max: as fast as the broker takes it)
#   RECORDING=           replay these files instead (one per partition, in order)
#   WORK=                directory for logs, checkpoints and outputs (kept); by default a
#                        temporary one, removed on success and kept on failure
#   PROFILE=release      profile to build when the binaries are not given:
#   AGGREGATOR= LOADGEN=   binaries to use (no build)
#   TANSU_BIN= TANSU_PORT=   the broker binary (see scripts/tansu.sh) and its port
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-600}
RECORDS=${RECORDS:-$((DURATION * 400))}
KILL_EVERY_S=${KILL_EVERY_S:-30}
BROKER_DOWN_S=${BROKER_DOWN_S:-3}
PROCESSES=${PROCESSES:-2}
WORKERS=${WORKERS:-2}
PARTITIONS=${PARTITIONS:-8}
CHECKPOINT_MS=${CHECKPOINT_MS:-2000}
IDLE_TIMEOUT_MS=${IDLE_TIMEOUT_MS:-3600000}
SAMPLE_S=${SAMPLE_S:-10}
SEED=${SEED:-1}
SPEED=${SPEED:-max}
PROFILE=${PROFILE:-release}
CONFIG=$ROOT/config/demo.toml
ADMIN_KEY=demo-admin-key-not-secret # config/demo.toml's public demo admin key
RANDOM=$SEED

RUN_NAME=stress
source scripts/lib/run.sh
need_tools curl jq
build_binaries AGGREGATOR LOADGEN
"$AGGREGATOR" cluster --help >/dev/null 2>&1 \
  || die "$AGGREGATOR has no \`cluster\` subcommand (the supervised cluster, issue 16 item 1)"
TANSU_BIN=${TANSU_BIN:-$(scripts/tansu.sh install)}
export TANSU_BIN

# --- work directory and cleanup -------------------------------------------------------------
work_dir
tansu_pid="" cluster_pid="" replay_pid=""
ok=0
cleanup() {
  local p
  [[ -n $cluster_pid ]] && kill -TERM "$cluster_pid" 2>/dev/null && sleep 2
  for p in $replay_pid $cluster_pid $(children) $tansu_pid; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((ok && !keep)); then rm -rf "$WORK"; else log "logs, checkpoints and outputs: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the recording and its truth ------------------------------------------------------------
if [[ -n ${RECORDING:-} ]]; then
  # shellcheck disable=SC2206 # a list of paths
  files=($RECORDING)
  PARTITIONS=${#files[@]}
else
  log "recording: $RECORDS events over $PARTITIONS files, ${DURATION} s of event time"
  rate=$(((RECORDS + DURATION - 1) / DURATION))
  "$LOADGEN" --config "$CONFIG" --output file --out-dir "$WORK/recording" --files "$PARTITIONS" \
    --count "$RECORDS" --rate "$rate" --seed "$SEED" --truth "$WORK/loadgen-truth.json" \
    --invalid 0.02 >"$WORK/record.out" 2>"$WORK/record.log" || die "recording failed (record.log)"
  files=()
  for ((k = 0; k < PARTITIONS; k++)); do files+=("$WORK/recording/$(printf 'events-%03d.ndjson' "$k")"); done
fi
log "truth: the batch aggregator on the recording"
"$AGGREGATOR" --config "$CONFIG" --workers "$WORKERS" --input "${files[@]}" \
  --output "$WORK/truth.ndjson" 2>"$WORK/truth.log" || die "the batch aggregator failed (truth.log)"
log "truth: $(tail -n 1 "$WORK/truth.ndjson")"

# --- the broker -----------------------------------------------------------------------------
TANSU_PORT=${TANSU_PORT:-$(free_port)}
BROKERS=127.0.0.1:$TANSU_PORT
start_tansu
create_topics "$PARTITIONS"
log "tansu on $BROKERS (storage $WORK/tansu), clicks with $PARTITIONS partitions"

# --- the supervised cluster -----------------------------------------------------------------
QUERY=127.0.0.1:$(free_port)
export ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS=$CHECKPOINT_MS
export ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS=$IDLE_TIMEOUT_MS
agg_args=(--config "$CONFIG" --brokers "$BROKERS" --checkpoint-dir "$WORK/checkpoints"
  --output "$WORK/live.ndjson" --workers "$WORKERS")
"$AGGREGATOR" "${agg_args[@]}" --processes "$PROCESSES" --query-listen "$QUERY" \
  cluster --run-dir "$WORK/cluster" --backoff-ms 200 --max-backoff-ms 2000 \
  >"$WORK/cluster.out" 2>"$WORK/cluster.log" &
cluster_pid=$!
children() { jq -r '.children[]?.pid' "$WORK/cluster/cluster.json" 2>/dev/null || true; }
restarts() { jq -r '.restarts // 0' "$WORK/cluster/cluster.json" 2>/dev/null || echo 0; }
health() { curl -sf --max-time 2 -H "Authorization: Bearer $ADMIN_KEY" "http://$QUERY/api/v1/health"; }
for _ in $(seq 600); do
  health >/dev/null && break
  alive "$cluster_pid" || die "the cluster's supervisor exited (cluster.log)"
  sleep 0.1
done
health >/dev/null || die "the cluster's query server did not come up on $QUERY"
log "cluster: $PROCESSES processes x $WORKERS workers under the supervisor, query server http://$QUERY"

# --- replay, kills, a broker restart, samples -----------------------------------------------
"$LOADGEN" --config "$CONFIG" replay --brokers "$BROKERS" --speed "$SPEED" "${files[@]}" \
  >"$WORK/replay.out" 2>"$WORK/replay.log" &
replay_pid=$!
log "replaying ${#files[@]} files at speed $SPEED; kill -9 of a random aggregator process every $KILL_EVERY_S s, the broker restarted once"

# The cluster's read positions added up over every partition, and its total lag, from health
# (process 0 gathers every process's positions each second); nothing while it is down.
sample() {
  local h
  h=$(health) || return 1
  # A restarted process 0 answers before every process has reported its partitions.
  (($(jq '.partitions | length' <<<"$h") == PARTITIONS)) || return 1
  jq -r '"\([.partitions[]?.offset] | add // 0) \([.partitions[]?.lag] | add // 0)"' <<<"$h"
}
stress_t0=$(now_ms)
next_kill=$((stress_t0 + KILL_EVERY_S * 500)) # the first half way into the first period
broker_at=$((stress_t0 + DURATION * 500))
broker_done=0 kills=0 max_lag=0 max_rate=0 prev_pos=0 prev_t=$stress_t0
next_sample=$((stress_t0 + SAMPLE_S * 1000))
recoveries=()
echo "   time_s   read_to  records/s      lag   (read_to: records read, as of the last restore)"
record_sample() {
  local s pos lag t rate
  s=$(sample) || return 0
  read -r pos lag <<<"$s"
  t=$(now_ms)
  ((lag > max_lag)) && max_lag=$lag
  rate=$(((pos - prev_pos) * 1000 / (t - prev_t > 0 ? t - prev_t : 1)))
  # Behind the last sample: restored from a checkpoint in between, reading it again.
  ((rate > max_rate)) && max_rate=$rate
  ((rate >= 0)) || rate="restored"
  printf '   %6.0f %9d %10s %8d\n' "$(((t - stress_t0) / 1000))" "$pos" "$rate" "$lag"
  prev_pos=$pos prev_t=$t
}
# kill -9 of one random process. The recovery is then watched while the run goes on
# (check_recovery): the query server answering again for a restarted cluster (serving again),
# then its read positions past where they were at the kill (caught up).
k_at="" k_victim="" k_pid="" k_restarts=0 k_pos=0 k_up=""
kill_random() {
  local pids s
  mapfile -t pids < <(children)
  ((${#pids[@]} > 0)) || return 1
  s=$(sample) || s="0 0"
  read -r k_pos _ <<<"$s"
  k_restarts=$(restarts)
  k_victim=$((RANDOM % ${#pids[@]}))
  k_pid=${pids[k_victim]}
  k_at=$(now_ms) k_up=""
  kill -9 "$k_pid" 2>/dev/null || { k_at=""; return 1; }
  kills=$((kills + 1))
}
check_recovery() {
  local s pos t
  t=$(now_ms)
  ((t - k_at < 300000)) || die "the cluster did not recover within 300 s of kill -9 $kills"
  if [[ -z $k_up ]]; then
    (($(restarts) > k_restarts)) && health >/dev/null || return 0
    k_up=$t
  fi
  s=$(sample) || return 0
  read -r pos _ <<<"$s"
  if ((pos > k_pos)) || { ! alive "$replay_pid" && ((pos >= k_pos)); }; then
    recoveries+=("$((k_up - k_at)) $((t - k_at))")
    log "kill -9 $kills: process $k_victim (pid $k_pid); serving again after $((k_up - k_at))e-3 s, reading past where it was after $((t - k_at))e-3 s"
    k_at=""
  fi
}
restart_broker() {
  kill -9 "$tansu_pid"; wait "$tansu_pid" 2>/dev/null || true
  sleep "$BROKER_DOWN_S"
  start_tansu
  broker_done=1
  log "broker killed (SIGKILL), down $BROKER_DOWN_S s, restarted on its storage"
}
replay_ended() {
  local status=0
  wait "$replay_pid" || status=$?
  replay_pid=""
  ((status == 0)) || die "the replay failed (replay.log)"
  summary=$(grep "^adclick-loadgen replay: sent" "$WORK/replay.log" | tail -n 1)
  log "${summary#adclick-loadgen }"
  sent=$(sed -n 's/^adclick-loadgen replay: sent \([0-9]*\) records.*/\1/p' <<<"$summary")
}
while (($(now_ms) - stress_t0 < DURATION * 1000)) || [[ -n $replay_pid ]]; do
  alive "$cluster_pid" || die "the cluster's supervisor exited (cluster.log)"
  [[ -z $replay_pid ]] || alive "$replay_pid" || replay_ended
  t=$(now_ms)
  if ((t >= next_sample)); then record_sample; next_sample=$((t + SAMPLE_S * 1000)); fi
  if ((!broker_done && t >= broker_at)); then restart_broker; fi
  if [[ -n $k_at ]]; then
    check_recovery
  elif ((t >= next_kill)); then
    if kill_random; then next_kill=$((t + KILL_EVERY_S * 1000)); else next_kill=$((t + 1000)); fi
  fi
  sleep 0.2
done
((broker_done)) || restart_broker

# --- catch up, finalize, reconcile ----------------------------------------------------------
pos=0
log "waiting for the cluster to read all $sent records"
deadline=$(($(now_ms) + 1800000))
while :; do
  alive "$cluster_pid" || die "the cluster's supervisor exited (cluster.log)"
  t=$(now_ms)
  if ((t >= next_sample)); then record_sample; next_sample=$((t + SAMPLE_S * 1000)); fi
  [[ -z $k_at ]] || check_recovery
  if [[ -z $k_at ]] && s=$(sample); then
    read -r pos lag <<<"$s"
    ((pos >= sent && lag == 0)) && break
  fi
  ((t < deadline)) || die "the cluster read $pos of $sent records in 30 minutes"
  sleep 0.5
done
record_sample
stress_s=$((($(now_ms) - stress_t0) / 1000))
kill -TERM "$cluster_pid"
wait "$cluster_pid" || die "the supervisor's shutdown failed (cluster.log)"
cluster_pid=""
log "cluster stopped; --until-end from the newest checkpoint finalizes every window"
"$AGGREGATOR" "${agg_args[@]}" --until-end >/dev/null 2>"$WORK/until-end.log" \
  || die "the --until-end run failed (until-end.log)"
"$LOADGEN" compare "$WORK/truth.ndjson" "$WORK/live.ndjson" >"$WORK/compare.txt" \
  || { cat "$WORK/compare.txt"; die "the cluster's final windows differ from the batch truth"; }
cat "$WORK/compare.txt"

# --- figures ----------------------------------------------------------------------------------
up_max=0 up_sum=0 caught_max=0 caught_sum=0
for r in "${recoveries[@]}"; do
  read -r up caught <<<"$r"
  up_sum=$((up_sum + up)) caught_sum=$((caught_sum + caught))
  ((up > up_max)) && up_max=$up
  ((caught > caught_max)) && caught_max=$caught
done
n=${#recoveries[@]}
((n > 0)) || die "no aggregator process was killed (DURATION $DURATION s, KILL_EVERY_S $KILL_EVERY_S s)"
echo "stress: $sent records replayed into $PROCESSES x $WORKERS workers, ${stress_s} s of stress, read at up to $max_rate records/s;" \
  "$kills kill -9s, $(restarts) cluster restarts, 1 broker restart;" \
  "serving again after a kill: mean $((up_sum / n)) ms, max $up_max ms;" \
  "reading past where it was: mean $((caught_sum / n)) ms, max $caught_max ms;" \
  "max lag $max_lag records; final windows and tallies equal to the batch truth"
ok=1
log "PASSED"
