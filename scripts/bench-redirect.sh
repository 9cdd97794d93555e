#!/usr/bin/env bash
# Redirect benchmark, loopback only: adclick-redirect (release build, producing every click to
# the embedded Kafka broker) against nginx answering `return 302` on the same machine, in the
# same run, alternating so both see the same noise.
#   max throughput: wrk, 2 threads, 64 connections, ROUNDS rounds of DURATION each, median
#   latency at a fixed rate: hey at RATE req/s for DURATION (p50/p99)
# The broker (the built-in one) runs in a process of its own, so every redirect measured
# produces to the same broker and none is charged for it. With BASELINE_BIN=path, a second
# redirect binary (e.g. an earlier build) is measured in the same rounds, and the ratio of the
# two is printed: what a change costs, against the same noise.
# Usage: scripts/bench-redirect.sh   (env: ROUNDS=3 DURATION=10 RATE=20000 BASELINE_BIN=)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/stats.sh
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
RATE=${RATE:-20000}
scripts/install-deps.sh bench >/dev/null
cargo build --release --quiet --bin adclick-redirect
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

NGINX_PORT=18081 REDIRECT_PORT=18080
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 302 https://shop.example/landing; } }
}
CONF
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' & pids+=($!)

BASE_PORT=18082
ADCLICK_REDIRECT_SPOOL_DIR="$work/broker-spool" ${CARGO_TARGET_DIR:-target}/release/adclick-redirect --config config/demo.toml \
  --embedded-kafka --listen 127.0.0.1:0 >"$work/broker.out" 2>"$work/broker.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/broker.out" 2>/dev/null && break; sleep 0.1; done
brokers=$(sed -n 's/^embedded kafka: //p' "$work/broker.out")
start_redirect() { # binary port name
  ADCLICK_REDIRECT_SPOOL_DIR="$work/spool-$3" "$1" --config config/demo.toml --brokers "$brokers" \
    --listen "127.0.0.1:$2" >"$work/$3.out" 2>"$work/$3.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$work/$3.out" 2>/dev/null && break; sleep 0.1; done
}
start_redirect ${CARGO_TARGET_DIR:-target}/release/adclick-redirect "$REDIRECT_PORT" redirect
[[ -n "${BASELINE_BIN:-}" ]] && start_redirect "$BASELINE_BIN" "$BASE_PORT" baseline
url=$(${CARGO_TARGET_DIR:-target}/release/adclick-redirect --config config/demo.toml sign --impression-id bench-1 \
  --ad-id ad_1 --campaign-id cmp_1 --advertiser-id adv_1 --publisher-id pub_1 \
  --url https://shop.example/landing --base "http://127.0.0.1:$REDIRECT_PORT")
nginx_url="http://127.0.0.1:$NGINX_PORT/api/v1/click/bench-1"
base_url=${url/:$REDIRECT_PORT/:$BASE_PORT}
[[ $(curl -s -o /dev/null -w '%{http_code}' "$url") == 302 ]] || { echo "redirect not answering 302" >&2; exit 1; }

rps() { wrk -t2 -c64 -d"${DURATION}s" "$1" | awk '/Requests\/sec/ {print $2}'; }
declare -a n_rps r_rps b_rps
for i in $(seq "$ROUNDS"); do
  n_rps+=("$(rps "$nginx_url")")
  r_rps+=("$(rps "$url")")
  [[ -n "${BASELINE_BIN:-}" ]] && b_rps+=("$(rps "$base_url")")
  echo "round $i: nginx ${n_rps[-1]} req/s, adclick-redirect ${r_rps[-1]} req/s${BASELINE_BIN:+, baseline ${b_rps[-1]} req/s}" >&2
done
n_med=$(printf '%s\n' "${n_rps[@]}" | median)
r_med=$(printf '%s\n' "${r_rps[@]}" | median)
b_med=$([[ -n "${BASELINE_BIN:-}" ]] && printf '%s\n' "${b_rps[@]}" | median || echo 0)

# hey: -q is per worker; 50 workers x RATE/50.
fixed() { hey -z "${DURATION}s" -c 50 -q $((RATE / 50)) -disable-redirects "$1"; }
h_out=$(fixed "$url")
h_rps=$(awk '/Requests\/sec/ {print $2}' <<<"$h_out")
h_p50=$(awk '/50% in/ {print $3*1000}' <<<"$h_out")
h_p99=$(awk '/99% in/ {print $3*1000}' <<<"$h_out")
h_codes=$(awk '/Status code distribution/ {f=1; next} f && /\[/ {printf "%s%s", sep, $0; sep=","} ' <<<"$h_out" | tr -s ' ')
n_out=$(fixed "$nginx_url")
n_p99=$(awk '/99% in/ {print $3*1000}' <<<"$n_out")

metrics=$(curl -s "http://127.0.0.1:$REDIRECT_PORT/metrics")
redirected=$(awk '/^adclick_redirect_requests_total\{endpoint="click",outcome="redirected"/ {print $2}' <<<"$metrics")
delivered=$(awk '/^adclick_redirect_outbox_delivered_total/ {print $2}' <<<"$metrics")
spooled=$(awk '/^adclick_redirect_outbox_records_total\{route="spool"/ {print $2}' <<<"$metrics")

cat <<OUT
date: $(date -u +%Y-%m-%dT%H:%MZ)   machine: $(nproc) cores   rounds: $ROUNDS x ${DURATION}s
max throughput (wrk -t2 -c64), median of $ROUNDS:
  nginx return 302:   $n_med req/s
  adclick-redirect:   $r_med req/s   ratio $(awk -v a="$r_med" -v b="$n_med" 'BEGIN {printf "%.2f", a/b}')
  baseline binary:    $b_med req/s   this build / baseline $(awk -v a="$r_med" -v b="$b_med" 'BEGIN {if (b > 0) printf "%.3f", a/b; else print "-"}')
fixed rate $RATE req/s (hey -c50), ${DURATION}s:
  adclick-redirect:   achieved $h_rps req/s, p50 ${h_p50} ms, p99 ${h_p99} ms, status $h_codes
  nginx return 302:   p99 ${n_p99} ms
kafka: $redirected clicks redirected, $delivered acknowledged by Kafka, ${spooled:-0} went through the spool
OUT
