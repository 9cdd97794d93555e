#!/usr/bin/env bash
# Installs what adclick's tests, demo and benchmarks need on a fresh Debian machine.
# Idempotent: installs only what is missing.
#   scripts/install-deps.sh          # build + test: protoc, Debian's Chromium and playwright-core
#                                    # (dashboard test), promtool (Debian's prometheus: checks
#                                    # docs/alerts), Tansu (real broker for failure tests)
#   scripts/install-deps.sh bench    # + wrk, hey, nginx for scripts/bench-*.sh
set -euo pipefail
cd "$(dirname "$0")/.."

want=(protoc:protobuf-compiler chromium:chromium node:nodejs npm:npm promtool:prometheus
  curl:curl jq:jq) # curl and jq: the replay and stress scripts (tests/stress.rs) read health
if [[ "${1:-}" == "bench" ]]; then
  want+=(wrk:wrk hey:hey nginx:nginx-light)
fi
missing=()
for pair in "${want[@]}"; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# playwright-core drives Debian's Chromium; it downloads no browser of its own.
if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  echo "installing tests/browser's node modules" >&2
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund >&2
fi
scripts/tansu.sh install >&2
