#!/usr/bin/env bash
# Tansu: an Apache Kafka-compatible broker from crates.io, our real broker process for
# durability and failure tests (the embedded mock broker keeps records only in memory).
#   scripts/tansu.sh install           # build once, cached in $TANSU_ROOT; prints the binary path
#   scripts/tansu.sh run PORT DIR      # run a broker on 127.0.0.1:PORT, SQLite storage in DIR
# The SQLite engine keeps records across a broker restart and reports correct offsets; the
# memory engine reported a wrong latest offset when we tried it, so we do not use it.
set -euo pipefail
TANSU_VERSION=0.6.0
TANSU_ROOT=${TANSU_ROOT:-$HOME/.cache/adclick/tansu}

find_bin() {
  for b in "${TANSU_BIN:-}" "$TANSU_ROOT/bin/tansu" /opt/tansu/bin/tansu "$(command -v tansu || true)"; do
    if [[ -n "$b" && -x "$b" ]] && "$b" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
      echo "$b"; return 0
    fi
  done
  return 1
}

case "${1:-}" in
  install)
    if bin=$(find_bin); then echo "$bin"; exit 0; fi
    echo "building tansu $TANSU_VERSION (once; 7-12 minutes on 2 cores) into $TANSU_ROOT" >&2
    # --locked: without it some features fail to compile against newer dependencies.
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
      --root "$TANSU_ROOT" >&2
    echo "$TANSU_ROOT/bin/tansu"
    ;;
  run)
    port=${2:?port}; dir=${3:?dir}
    bin=$(find_bin) || { echo "tansu not installed: $0 install" >&2; exit 1; }
    mkdir -p "$dir"; cd "$dir"
    exec "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine sqlite://tansu.db
    ;;
  *) echo "usage: $0 install | run PORT DIR" >&2; exit 2 ;;
esac
