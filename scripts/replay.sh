#!/usr/bin/env bash
# Replays recorded traffic into a live aggregator and reconciles it with the batch truth
# (issue 16 item 2). Exits non-zero on any difference, printing the differing windows.
#
#   scripts/replay.sh RECORDING...            # NDJSON event files, seed-003 logs, or a
#                                             # Parquet directory (its raw/ archive)
#   SPEED=10 WORKERS=2 PROCESSES=2 scripts/replay.sh loadgen-out/events-*.ndjson
#
# 1. The truth: the batch aggregator on the recording (the same dataflow, file mode:
#    `adclick-aggregator --input FILES`, or `replay --archive DIR` for an archive).
# 2. A broker (the built-in embedded one, hosted by an idle adclick-redirect, unless BROKERS
#    is given) and a live aggregator reading the topic, with checkpoints: PROCESSES processes
#    of WORKERS workers (more than one process: a hostfile on loopback).
# 3. `adclick-loadgen replay` sends the recording at SPEED, each file (or archived partition)
#    to its own partition, in order; malformed lines as they are.
# 4. Once the live aggregator has read every record (health: its read positions add up to the
#    records sent, no partition lags), it is stopped and `--until-end` goes on from its newest
#    checkpoint to the topic's end and finalizes every window.
# 5. `adclick-loadgen compare TRUTH LIVE`: every final window (minute, hour, day, every
#    dimension) and the tallies must be equal.
#
# Settings (environment), with their defaults:
#   SPEED=max            replay speed: max, or recorded seconds per second (1, 10, 0.5)
#   WORKERS=2 PROCESSES=1  the live aggregator's shape
#   BROKERS=             a running broker whose clicks topic has a partition per file; by
#                        default an embedded one with PARTITIONS partitions
#   PARTITIONS=          partitions of the embedded broker's topic [the number of files, 8
#                        for an archive]
#   CONFIG=config/demo.toml   the configuration every binary reads
#   CHECKPOINT_MS=1000   the live aggregator's checkpoint interval
#   WORK=                directory for logs, checkpoints and outputs (kept); by default a
#                        temporary one, removed on success and kept on failure
#   PROFILE=release      profile to build when the binaries are not given:
#   AGGREGATOR= REDIRECT= LOADGEN=   binaries to use (no build)
#   TIMEOUT_S=600        how long the live aggregator may take to catch up
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
(($# > 0)) || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
recording=()
for r in "$@"; do recording+=("$(realpath "$r")"); done
cd "$ROOT"

SPEED=${SPEED:-max}
WORKERS=${WORKERS:-2}
PROCESSES=${PROCESSES:-1}
CONFIG=${CONFIG:-$ROOT/config/demo.toml}
CHECKPOINT_MS=${CHECKPOINT_MS:-1000}
PROFILE=${PROFILE:-release}
TIMEOUT_S=${TIMEOUT_S:-600}
ADMIN_KEY=demo-admin-key-not-secret # config/demo.toml's public demo admin key

RUN_NAME=replay
source scripts/lib/run.sh
need_tools curl jq
build_binaries AGGREGATOR REDIRECT LOADGEN
work_dir
pids=()
ok=0
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((ok && !keep)); then rm -rf "$WORK"; else log "logs, checkpoints and outputs: $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- what the recording is ------------------------------------------------------------------
archive=""
files=()
for r in "${recording[@]}"; do
  if [[ -d $r/raw ]]; then
    archive=$r
  elif [[ -d $r ]]; then
    while IFS= read -r f; do files+=("$f"); done < <(find "$r" -maxdepth 1 -type f | sort)
  else
    files+=("$r")
  fi
done
[[ -z $archive || ${#files[@]} -eq 0 ]] || die "a replay is either an archive or files, not both"
[[ -n $archive || ${#files[@]} -gt 0 ]] || die "nothing to replay"
if [[ -n $archive ]]; then
  PARTITIONS=${PARTITIONS:-8}
  what="the archive under $archive"
else
  PARTITIONS=${PARTITIONS:-${#files[@]}}
  what="${#files[@]} files"
fi

# --- the truth: the batch aggregator on the recording ---------------------------------------
log "truth: the batch aggregator on $what"
if [[ -n $archive ]]; then
  "$AGGREGATOR" --config "$CONFIG" --output "$WORK/truth.ndjson" replay --archive "$archive" \
    --from 2000-01-01T00:00:00Z --to 2099-01-01T00:00:00Z 2>"$WORK/truth.log" \
    || die "the batch aggregator failed (truth.log)"
else
  "$AGGREGATOR" --config "$CONFIG" --input "${files[@]}" --output "$WORK/truth.ndjson" \
    2>"$WORK/truth.log" || die "the batch aggregator failed (truth.log)"
fi
log "truth: $(tail -n 1 "$WORK/truth.ndjson")"

# --- broker and live aggregator -------------------------------------------------------------
export ADCLICK_AGGREGATOR_CHECKPOINT_INTERVAL_MS=$CHECKPOINT_MS
if [[ -z ${BROKERS:-} ]]; then
  ADCLICK_KAFKA_PARTITIONS=$PARTITIONS ADCLICK_REDIRECT_SPOOL_DIR="$WORK/spool" \
    ADCLICK_KAFKA_EMBEDDED_DIR="$WORK/kafka" \
    "$REDIRECT" --config "$CONFIG" --embedded-kafka --listen 127.0.0.1:0 \
    >"$WORK/broker.out" 2>"$WORK/broker.log" &
  pids+=($!)
  for _ in $(seq 600); do
    grep -q "listening on" "$WORK/broker.out" 2>/dev/null && break
    alive "${pids[-1]}" || die "the broker's host exited (broker.log)"
    sleep 0.1
  done
  BROKERS=$(sed -n 's/^embedded kafka: //p' "$WORK/broker.out")
  [[ -n $BROKERS ]] || die "the embedded broker did not come up (broker.log)"
  log "embedded broker on $BROKERS, clicks with $PARTITIONS partitions"
fi

agg_args=(--config "$CONFIG" --brokers "$BROKERS" --checkpoint-dir "$WORK/checkpoints"
  --output "$WORK/live.ndjson")
hosts=()
if ((PROCESSES > 1)); then
  for _ in $(seq "$PROCESSES"); do
    hosts+=("127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')")
  done
  printf '%s\n' "${hosts[@]}" >"$WORK/hosts"
fi
live_pids=()
for ((i = 0; i < PROCESSES; i++)); do
  shape=(--workers "$WORKERS")
  ((PROCESSES == 1)) || shape+=(--processes "$PROCESSES" --process "$i" --hostfile "$WORK/hosts")
  "$AGGREGATOR" "${agg_args[@]}" "${shape[@]}" --query-listen 127.0.0.1:0 \
    >"$WORK/live-$i.out" 2>"$WORK/live-$i.log" &
  pids+=($!)
  live_pids+=($!)
done
query=""
for _ in $(seq 600); do
  query=$(sed -n 's#^query server: \(http://[^/]*\)/.*#\1#p' "$WORK/live-0.out")
  [[ -n $query ]] && break
  alive "${live_pids[0]}" || die "the live aggregator exited (live-0.log)"
  sleep 0.1
done
[[ -n $query ]] || die "the live aggregator's query server did not come up"
log "live aggregator: $PROCESSES process(es) x $WORKERS workers, query server $query"
health() { curl -sf --max-time 5 -H "Authorization: Bearer $ADMIN_KEY" "$query/api/v1/health"; }

# --- the replay -----------------------------------------------------------------------------
log "replaying $what at speed $SPEED"
if [[ -n $archive ]]; then src=("$archive"); else src=("${files[@]}"); fi
"$LOADGEN" --config "$CONFIG" replay --brokers "$BROKERS" --speed "$SPEED" "${src[@]}" \
  2> >(tee "$WORK/replay.log" >&2) || die "the replay failed (replay.log)"
summary=$(grep "^adclick-loadgen replay: sent" "$WORK/replay.log" | tail -n 1)
log "${summary#adclick-loadgen }"
sent=$(sed -n 's/^adclick-loadgen replay: sent \([0-9]*\) records.*/\1/p' <<<"$summary")

# --- wait for the live aggregator to read it all --------------------------------------------
t_sent=$(now_ms)
deadline=$((t_sent + TIMEOUT_S * 1000))
read_to=0
while :; do
  for p in "${live_pids[@]}"; do alive "$p" || die "a live aggregator process exited"; done
  h=$(health || echo '{}')
  # Read positions of every partition of the cluster (process 0 gathers them each second).
  read_to=$(jq '[.partitions[]?.offset] | add // 0' <<<"$h")
  lagging=$(jq '[.partitions[]? | select(.lag > 0)] | length' <<<"$h")
  ((read_to >= sent && lagging == 0)) && break
  (($(now_ms) < deadline)) || die "the live aggregator read $read_to of $sent records in $TIMEOUT_S s"
  sleep 0.5
done
log "live aggregator read all $sent records $(((($(now_ms) - t_sent)) / 1000)) s after the replay ended; watermark $(jq -r '.watermark' <<<"$h")"

# --- finalize: stop it, go on from its newest checkpoint to the topic's end -----------------
for p in "${live_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${live_pids[@]}"; do
  for _ in $(seq 300); do alive "$p" || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
done
log "live aggregator stopped; --until-end from its newest checkpoint finalizes every window"
"$AGGREGATOR" "${agg_args[@]}" --workers "$WORKERS" --until-end 2>"$WORK/until-end.log" \
  >/dev/null || die "the --until-end run failed (until-end.log)"

# --- reconcile ------------------------------------------------------------------------------
if "$LOADGEN" compare "$WORK/truth.ndjson" "$WORK/live.ndjson" >"$WORK/compare.txt"; then
  cat "$WORK/compare.txt"
else
  cat "$WORK/compare.txt"
  die "the live aggregator's final windows differ from the batch truth"
fi
ok=1
log "PASSED: the live aggregator's final windows and tallies equal the batch aggregator's"
