#!/usr/bin/env bash
# Restarts of one checkpoint, loopback only: ROUNDS restarts of an aggregator (AGGREGATOR,
# default the release build) on fresh copies of a work directory that bench-recovery.sh kept
# (KEEP_WORK=1: its broker's logs, checkpoints and output), each timed as bench-recovery.sh's
# step 4 times its restart. Before each, the page cache is dropped where permitted and the
# checkpoints are read back into it, as a kill leaves them. QUERY and WANT are the ones
# bench-recovery.sh printed ("query:" and "ad_0 over the hour:"). Builds can be compared on the
# same checkpoint: a build reads the part formats up to its own.
# Usage: scripts/bench-restart.sh KEPT_DIR QUERY WANT   (env: ROUNDS=3 AGGREGATOR= WORKERS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
kept=${1:?the kept work directory} query=${2:?the query} want=${3:?the answer}
source scripts/lib/bench.sh
for round in $(seq "${ROUNDS:-3}"); do
  echo "== round $round: ${AGGREGATOR:-$B/adclick-aggregator} on a copy of $kept"
  rm -rf "${work:?}"/*
  cp -a "$kept/kafka" "$kept/checkpoints" "$work/"
  cp "$kept/out.ndjson" "$work/"
  start_broker
  sync
  echo 3 2>/dev/null >/proc/sys/vm/drop_caches || true
  cat "$work"/checkpoints/*/* >/dev/null 2>&1 || true
  restart_timed "$want" --workers "${WORKERS:-2}" --output "$work/out.ndjson" \
    --checkpoint-dir "$work/checkpoints"
  # Both go before the next copy: pids are stopped newest first, as cleanup does.
  for p in "$agg_pid" "$broker_pid"; do
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
done
