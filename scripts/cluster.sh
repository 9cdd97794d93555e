#!/usr/bin/env bash
# A supervised aggregator cluster on this host, in the background: a thin wrapper around
# `adclick-aggregator cluster` (the supervisor: it generates the hostfile, starts N processes x
# W workers on loopback ports, and restarts the whole cluster from the newest checkpoint when
# any process exits). README.md, "Running a cluster", walks through it.
#
#   scripts/cluster.sh start [OPTIONS...]  # options of adclick-aggregator and of its `cluster`
#                                          # subcommand, e.g. --brokers 127.0.0.1:9092
#                                          # --processes 2 --workers 2 --checkpoint-dir DIR
#   scripts/cluster.sh status              # state, restarts and their last cause, pids, health
#   scripts/cluster.sh kill P              # kill -9 process P of the cluster (watch it recover)
#   scripts/cluster.sh stop                # SIGTERM: the supervisor stops every process, exits
#
# Settings (environment):
#   RUN_DIR=target/cluster   the supervisor's files: cluster.log (every process's log, each
#                            line prefixed [pN]), cluster.json (its status), hosts, supervisor.pid
#   AGGREGATOR=              the binary (default: $CARGO_TARGET_DIR or target, /debug/adclick-aggregator,
#                            built if missing)
#   CONFIG=config/demo.toml  passed as --config
#   ADMIN_KEY=demo-admin-key-not-secret   the query key `status` asks health with
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN_DIR=${RUN_DIR:-$ROOT/target/cluster}
# Plain log lines in cluster.log (no ANSI colours), from the supervisor and every process.
export NO_COLOR=${NO_COLOR-1}
CONFIG=${CONFIG:-$ROOT/config/demo.toml}
ADMIN_KEY=${ADMIN_KEY:-demo-admin-key-not-secret}
AGGREGATOR=${AGGREGATOR:-}
PIDFILE=$RUN_DIR/supervisor.pid
STATUS=$RUN_DIR/cluster.json
LOG=$RUN_DIR/cluster.log

die() { echo "cluster.sh: $*" >&2; exit 1; }
running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
# The query server's address, as process 0 last printed it.
query_url() { sed -n 's/^query server: //p' "$LOG" 2>/dev/null | tail -n 1; }

status() {
  if ! running; then
    echo "supervisor: not running"
    [[ -f $STATUS ]] && jq -r '"last state: \(.state), restarts: \(.restarts)"' "$STATUS"
    return 1
  fi
  echo "supervisor: pid $(cat "$PIDFILE"), log $LOG"
  if [[ -f $STATUS ]]; then
    jq -r '"state: \(.state), \(.processes) process(es) x \(.workers) worker(s), restarts: \(.restarts)",
      "last restart cause: \(.last_cause // "none")",
      (.children[] | "process \(.process): pid \(.pid)")' "$STATUS"
  fi
  local url
  url=$(query_url)
  if [[ -n $url ]]; then
    echo "query server: $url"
    curl -sf -H "Authorization: Bearer $ADMIN_KEY" "${url}api/v1/health" |
      jq -r '"health: \(.status), watermark \(.watermark // "none"), restarts \(.restarts), tallies \(.tallies | tostring)"' ||
      echo "health: not answering (the cluster is starting?)"
  fi
}

case ${1:-} in
  start)
    shift
    running && die "already running (pid $(cat "$PIDFILE")); scripts/cluster.sh stop first"
    if [[ -z $AGGREGATOR ]]; then
      AGGREGATOR=${CARGO_TARGET_DIR:-$ROOT/target}/debug/adclick-aggregator
      [[ -x $AGGREGATOR ]] || (cd "$ROOT" && cargo build --quiet --bin adclick-aggregator)
    fi
    mkdir -p "$RUN_DIR"
    rm -f "$STATUS"
    nohup "$AGGREGATOR" --config "$CONFIG" cluster --run-dir "$RUN_DIR" "$@" >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 600); do
      running || { tail -n 20 "$LOG" >&2; die "the supervisor exited; log above ($LOG)"; }
      [[ -f $STATUS ]] && [[ $(jq -r .state "$STATUS") == running ]] && break
      sleep 0.1
    done
    grep '^embedded kafka' "$LOG" || true
    status || true
    ;;
  status)
    status
    ;;
  kill)
    p=${2:?usage: scripts/cluster.sh kill PROCESS}
    running || die "not running"
    pid=$(jq -r --argjson p "$p" '.children[] | select(.process == $p) | .pid' "$STATUS")
    [[ -n $pid ]] || die "no process $p (state: $(jq -r .state "$STATUS"))"
    kill -9 "$pid"
    echo "killed process $p (pid $pid) with SIGKILL; the supervisor restarts the cluster"
    ;;
  stop)
    running || die "not running"
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "the supervisor (pid $pid) did not stop in 30 s"
    rm -f "$PIDFILE"
    echo "stopped ($(jq -r '"state: \(.state), restarts: \(.restarts)"' "$STATUS"))"
    ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
