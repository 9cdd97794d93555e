#!/usr/bin/env bash
# The chaos run (issue 5, item 5), against a real broker process (Tansu, SQLite storage).
#
# adclick-loadgen sends real-time traffic over HTTP through adclick-redirect, writing its exact
# ground truth, while:
#   - the aggregator is killed with SIGKILL at random moments, at least KILLS times and on until
#     the traffic ends, each run restored from the newest checkpoint, on 1 and 2 workers in turn;
#   - the redirect is killed with SIGKILL and restarted on the same port and spool;
#   - the broker is killed with SIGKILL and restarted on the same port and storage.
# The allowed lateness is 40 s (the least the load generator supports), so windows become final,
# and reach the sinks, while the kills go on. Then:
#   - the redirect's outbox drains into Kafka;
#   - one more aggregator run catches up from the newest checkpoint, and its query server's
#     report of the windows final at its frontier (by minute and every dimension) must equal
#     the truth exactly; it is killed too;
#   - a last run goes on from the newest checkpoint to the topic's end, and every sink must
#     equal the truth exactly: the NDJSON output written across every run (every final window,
#     minute, hour and day, reported once, none missing, none extra; the tallies equal to the
#     truth's and adding up), the click-aggregates topic as a reader honouring its commit
#     markers sees it and the published Parquet windows (every final window once), and the
#     raw Parquet archive (every click that reached Kafka once).
# Exits non-zero on any difference. Every process listens on 127.0.0.1 only.
#
#   scripts/chaos.sh                        # long form: release build, 300 s of traffic
#   DURATION=120 KILLS=20 scripts/chaos.sh
# tests/chaos.rs runs a short form of this script (debug binaries, 45 s of traffic) in CI.
#
# The redirect is killed at a quiet moment: the load generator is paused (SIGUSR1: every
# request answered, its connections closed) and the redirect's in-memory queue and spool are
# empty when the SIGKILL comes; it resumes (SIGUSR2) once the redirect is back. Two reasons,
# both documented behaviour: a SIGKILL loses what sits in librdkafka's in-memory queue (clicks
# already answered 302), and the load generator's truth counts every click it sent, whatever
# the answer (it reports failed requests as errors, but cannot take them out of the truth).
# Freezing the load generator (SIGSTOP) is not quiet enough: a request or connection caught
# half way reaches the dead process. The aggregator and the broker are killed at any moment.
#
# Settings (environment), with their defaults:
#   DURATION=300         seconds of traffic          RATE=200       events per second
#   KILLS=10             least number of aggregator SIGKILLs
#   LIFE_MS=700:3000     an aggregator run lives a random time in this range (ms) before its kill
#   REDIRECT_KILLS=2     REDIRECT_DOWN_S=1      redirect SIGKILLs and seconds down each time
#   BROKER_RESTARTS=1    BROKER_DOWN_S=3        broker SIGKILLs and seconds down each time
#   CHECKPOINT_MS=500    aggregator checkpoint interval
#   LATENESS_MS=40000    the aggregator's allowed lateness (the load generator is told too)
#   PARTITIONS=4         partitions of the clicks topic
#   SEED=1               seed of the traffic and of the kill schedule
#   LOADGEN_ARGS=        more adclick-loadgen flags (e.g. "--duplicate-share 0.1")
#   WORK=                directory for logs, spool, checkpoints, output and truth (kept); by
#                        default a temporary one, removed on success and kept on failure
#   PROFILE=release      profile to build when the binaries are not given:
#   AGGREGATOR= REDIRECT= LOADGEN=   binaries to use (no build)
#   CHECKER=             the chaos test binary, which compares the output with the truth
#   TANSU_BIN= TANSU_PORT=           the broker binary (see scripts/tansu.sh) and its port
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-300}
RATE=${RATE:-200}
KILLS=${KILLS:-10}
LIFE_MS=${LIFE_MS:-700:3000}
REDIRECT_KILLS=${REDIRECT_KILLS:-2}
REDIRECT_DOWN_S=${REDIRECT_DOWN_S:-1}
BROKER_RESTARTS=${BROKER_RESTARTS:-1}
BROKER_DOWN_S=${BROKER_DOWN_S:-3}
CHECKPOINT_MS=${CHECKPOINT_MS:-500}
LATENESS_MS=${LATENESS_MS:-40000}
PARTITIONS=${PARTITIONS:-4}
SEED=${SEED:-1}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
PROFILE=${PROFILE:-release}
CONFIG=$ROOT/config/demo.toml
ADMIN_KEY=demo-admin-key-not-secret # config/demo.toml's public demo admin key
LIFE_MIN=${LIFE_MS%%:*}
LIFE_MAX=${LIFE_MS##*:}
RANDOM=$SEED

RUN_NAME=chaos
source scripts/lib/run.sh
need_tools curl
build_binaries AGGREGATOR REDIRECT LOADGEN
if [[ -z ${CHECKER:-} ]]; then
  flag=(); [[ $PROFILE == release ]] && flag=(--release)
  log "building the checker (tests/chaos.rs)"
  CHECKER=$(cargo test --quiet "${flag[@]}" --test chaos --no-run --message-format=json \
    | grep '"kind":\["test"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
  [[ -x $CHECKER ]] || die "no checker built"
fi
TANSU_BIN=${TANSU_BIN:-$(scripts/tansu.sh install)}
export TANSU_BIN

# --- work directory and cleanup -------------------------------------------------------------
work_dir
tansu_pid="" redirect_pid="" agg_pid="" loadgen_pid=""
ok=0
cleanup() {
  for p in $agg_pid $loadgen_pid $redirect_pid $tansu_pid; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((ok && !keep)); then rm -rf "$WORK"; else log "logs, spool, checkpoints, output, truth: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every binary reads the same settings; the load generator must know the partition count.
export ADCLICK_KAFKA_PARTITIONS=$PARTITIONS
export ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS=$CHECKPOINT_MS
export ADCLICK_AGGREGATOR_ALLOWED_LATENESS_MS=$LATENESS_MS
export ADCLICK_REDIRECT_DEGRADED_AFTER_MS=${ADCLICK_REDIRECT_DEGRADED_AFTER_MS:-1000}

# --- the broker -----------------------------------------------------------------------------
TANSU_PORT=${TANSU_PORT:-$(free_port)}
BROKERS=127.0.0.1:$TANSU_PORT
start_tansu
create_topics "$PARTITIONS"
log "tansu on $BROKERS (storage $WORK/tansu), topic clicks with $PARTITIONS partitions"

# --- the redirect ---------------------------------------------------------------------------
redirect_port=0
start_redirect() {
  "$REDIRECT" --config "$CONFIG" --brokers "$BROKERS" --listen "127.0.0.1:$redirect_port" \
    --spool-dir "$WORK/spool" >"$WORK/redirect.out" 2>>"$WORK/redirect.log" &
  redirect_pid=$!
  for _ in $(seq 200); do
    if grep -q "listening on" "$WORK/redirect.out" 2>/dev/null; then
      redirect_port=$(sed -n 's#.*listening on http://127.0.0.1:##p' "$WORK/redirect.out")
      return 0
    fi
    alive "$redirect_pid" || die "the redirect exited (redirect.log)"
    sleep 0.05
  done
  die "the redirect did not come up"
}
# Sum of a metric of the redirect (all label sets).
metric() {
  curl -sf --max-time 2 "http://127.0.0.1:$redirect_port/metrics" \
    | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}
# Waits until the redirect answers nothing new and holds no click but in Kafka: no request
# for 3 looks in a row, 100 ms apart, with its in-memory queue and its spool empty.
settle_redirect() {
  local deadline=$(($(now_ms) + $1 * 1000)) prev=-1 quiet=0 reqs depth spool
  while ((quiet < 3)); do
    ((($(now_ms)) < deadline)) || return 1
    reqs=$(metric adclick_redirect_requests_total)
    depth=$(metric adclick_redirect_outbox_queue_depth)
    spool=$(metric adclick_redirect_outbox_spool_records)
    if [[ $reqs == "$prev" && $depth == 0 && $spool == 0 ]]; then quiet=$((quiet + 1)); else quiet=0; fi
    prev=$reqs
    sleep 0.1
  done
}
start_redirect
log "redirect on 127.0.0.1:$redirect_port (spool $WORK/spool)"

# --- the aggregator -------------------------------------------------------------------------
agg_args=(--config "$CONFIG" --brokers "$BROKERS" --checkpoint-dir "$WORK/checkpoints"
  --output "$WORK/out.ndjson" --parquet-dir "$WORK/parquet")
start_aggregator() {
  "$AGGREGATOR" "${agg_args[@]}" --workers "$1" --query-listen 127.0.0.1:0 \
    >>"$WORK/aggregator.out" 2>>"$WORK/aggregator.log" &
  agg_pid=$!
}
crashes=0
kill_aggregator() {
  local status=0
  kill -9 "$agg_pid" 2>/dev/null || true
  wait "$agg_pid" 2>/dev/null || status=$?
  if ((status != 137)); then
    crashes=$((crashes + 1))
    log "the aggregator had exited by itself with status $status before its kill (aggregator.log)"
  fi
  agg_pid=""
}

# --- chaos ----------------------------------------------------------------------------------
redirect_kills=0 broker_restarts=0 kills=0
pauses=0
kill_redirect() {
  local paused=0
  if alive "$loadgen_pid"; then
    pauses=$((pauses + 1))
    kill -USR1 "$loadgen_pid"
    while (($(grep -c "traffic paused" "$WORK/loadgen.log") < pauses)); do
      alive "$loadgen_pid" || break
      sleep 0.05
    done
    paused=1
  fi
  settle_redirect 60 || die "the redirect did not settle (queue or spool not empty)"
  kill -9 "$redirect_pid"; wait "$redirect_pid" 2>/dev/null || true
  sleep "$REDIRECT_DOWN_S"
  start_redirect
  if ((paused)); then kill -USR2 "$loadgen_pid" 2>/dev/null || true; fi
  redirect_kills=$((redirect_kills + 1))
  log "redirect killed (SIGKILL) and restarted on its spool (${redirect_kills}/$REDIRECT_KILLS)"
}
restart_broker() {
  kill -9 "$tansu_pid"; wait "$tansu_pid" 2>/dev/null || true
  sleep "$BROKER_DOWN_S"
  start_tansu
  broker_restarts=$((broker_restarts + 1))
  log "broker killed (SIGKILL), down ${BROKER_DOWN_S} s, restarted on its storage (${broker_restarts}/$BROKER_RESTARTS)"
}
# The redirect's and broker's turns, spread over the traffic, alternating.
events=() r=$REDIRECT_KILLS b=$BROKER_RESTARTS j=0
while ((r + b > 0)); do
  j=$((j + 1))
  if ((r > 0 && (j % 2 == 1 || b == 0))); then
    events+=("redirect"); r=$((r - 1))
  else
    events+=("broker"); b=$((b - 1))
  fi
done
event_at() { echo $((DURATION * 1000 * ($1 + 1) / (${#events[@]} + 1))); }

# shellcheck disable=SC2086 # LOADGEN_ARGS is a list of flags
"$LOADGEN" --config "$CONFIG" --output http --target "http://127.0.0.1:$redirect_port" \
  --rate "$RATE" --duration "$DURATION" --seed "$SEED" --truth "$WORK/truth.json" \
  --allowed-lateness-ms "$LATENESS_MS" $LOADGEN_ARGS >"$WORK/loadgen.out" 2>"$WORK/loadgen.log" &
loadgen_pid=$!
traffic_t0=$(now_ms)
log "traffic: $RATE events/s for $DURATION s through the redirect; aggregator killed at least $KILLS times"
next=0
while alive "$loadgen_pid" || ((kills < KILLS || next < ${#events[@]})); do
  start_aggregator $((1 + kills % 2))
  life=$((LIFE_MIN + (RANDOM * 32768 + RANDOM) % (LIFE_MAX - LIFE_MIN + 1)))
  sleep_ms $((life / 2))
  if ((next < ${#events[@]})) && (($(now_ms) - traffic_t0 >= $(event_at "$next"))); then
    case ${events[next]} in
      redirect) kill_redirect ;;
      broker) restart_broker ;;
    esac
    next=$((next + 1))
  fi
  sleep_ms $((life - life / 2))
  kill_aggregator
  kills=$((kills + 1))
  ((kills % 10)) || log "aggregator killed $kills times"
done
status=0; wait "$loadgen_pid" || status=$?
loadgen_pid=""
traffic_end=$(date -r "$WORK/truth.json" +%s%3N) # written as the traffic ends
grep "emitted" "$WORK/loadgen.log" | tail -n 1 || true
((status == 0)) || die "the load generator failed (status $status): its truth does not hold (loadgen.log)"

# --- the end: drain, last run, compare ------------------------------------------------------
log "waiting for the redirect's outbox to drain into Kafka"
settle_redirect 300 || die "the redirect's outbox did not drain"
kill -TERM "$redirect_pid"; wait "$redirect_pid" || die "the redirect's graceful shutdown failed"
redirect_pid=""
committed=$(find "$WORK/checkpoints" -name MANIFEST.json | wc -l)
((committed > 0)) || die "no checkpoint was committed"
finals_during=$(grep -c '"status":"final"' "$WORK/out.ndjson" || true)

# The query server of a run restored from the newest checkpoint, once it has caught up: the
# windows final at its frontier (end + lateness at or before it) can no longer change, so its
# report of them must equal the truth.
log "query run: caught up from the newest checkpoint, its query server asked for a report"
"$AGGREGATOR" "${agg_args[@]}" --workers 2 --query-listen 127.0.0.1:0 \
  >"$WORK/query-run.out" 2>>"$WORK/aggregator.log" &
agg_pid=$!
query="" prev="" frontier="" deadline=$(($(now_ms) + 180000))
while ((($(now_ms)) < deadline)); do
  sleep 1
  alive "$agg_pid" || die "the query run exited (aggregator.log)"
  [[ -n $query ]] || query=$(sed -n 's#^query server: \(http://[^/]*\)/.*#\1#p' "$WORK/query-run.out")
  [[ -n $query ]] || continue
  health=$(curl -sf --max-time 5 -H "Authorization: Bearer $ADMIN_KEY" "$query/api/v1/health") || continue
  w=$(grep -o '"watermark_ms":[0-9]*' <<<"$health" | cut -d: -f2 || true)
  # Caught up: every partition read to its end, the frontier where it was a second ago and
  # near the end of the traffic (the last clicks minus the 5 s out-of-orderness bound).
  if [[ -n $w && $w == "$prev" ]] && ((w >= traffic_end - 15000)) \
    && grep -q '"lag":' <<<"$health" && ! grep -q '"lag":[1-9]' <<<"$health"; then
    frontier=$w; break
  fi
  prev=$w
done
[[ -n $frontier ]] || die "the query run did not catch up"
query_from=$(((traffic_t0 - LATENESS_MS - 120000) / 60000 * 60000))
query_to=$(((frontier - LATENESS_MS) / 60000 * 60000))
query_env=()
if ((query_to > query_from)); then
  curl -sf --max-time 60 -H "Authorization: Bearer $ADMIN_KEY" -o "$WORK/query.json" \
    "$query/api/v1/reports/clicks?from=$query_from&to=$query_to&groupBy=minute,ad_id,campaign_id,advertiser_id,publisher_id,country,device" \
    || die "the report query failed"
  query_env=(CHAOS_QUERY="$WORK/query.json" CHAOS_QUERY_FROM="$query_from" CHAOS_QUERY_TO="$query_to")
else
  log "no window is final at the query run's frontier yet (more traffic needed): report not compared"
fi
kill_aggregator
kills=$((kills + 1))
log "last run: --until-end on 2 workers, from the newest checkpoint"
"$AGGREGATOR" "${agg_args[@]}" --workers 2 --until-end \
  >>"$WORK/aggregator.out" 2>>"$WORK/aggregator.log" || die "the last aggregator run failed"
restored=$(grep -c "restoring checkpoint" "$WORK/aggregator.log" || true)
checkpoints=$(grep -c "checkpoint committed" "$WORK/aggregator.log" || true)
runs=$((kills + 1))
log "aggregator: $kills SIGKILLs, $runs runs, $restored restored from a checkpoint, $checkpoints checkpoints committed, $finals_during final window reports written before the last run, $crashes runs exited by themselves"
log "redirect: $redirect_kills SIGKILLs; broker: $broker_restarts SIGKILLs and restarts"
if env "${query_env[@]}" CHAOS_OUTPUT="$WORK/out.ndjson" CHAOS_TRUTH="$WORK/truth.json" CHAOS_BROKERS="$BROKERS" \
  CHAOS_PARQUET="$WORK/parquet" \
  "$CHECKER" --quiet --ignored --exact --nocapture check_output_against_truth \
  >"$WORK/check.log" 2>&1 && grep -q "^chaos check:" "$WORK/check.log"; then
  grep "^chaos check:" "$WORK/check.log"
else
  cat "$WORK/check.log"
  die "the output differs from the truth"
fi
((crashes == 0)) || die "$crashes aggregator runs exited by themselves"
((kills >= KILLS)) || die "only $kills aggregator kills"
((redirect_kills == REDIRECT_KILLS && broker_restarts == BROKER_RESTARTS)) \
  || die "not every redirect kill or broker restart happened"
ok=1
log "PASSED"
