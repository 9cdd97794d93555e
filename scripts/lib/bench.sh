# Shared by the benchmark scripts (sourced from the repository root, after `set -euo
# pipefail`): a work directory and its processes cleaned up on exit, the embedded broker,
# aggregators and their health, and the chunked preload of event time. KEEP_WORK=1 leaves
# the work directory (checkpoints, logs, the broker's data) in place for a look afterwards.
source scripts/lib/stats.sh
B=${CARGO_TARGET_DIR:-target}/release
KEY=demo-admin-key-not-secret
work=$(mktemp -d)
pids=()
cleanup() {
  # Newest first: a live load generator flushes to the broker while it still runs.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.2; done
    kill -9 "${pids[i]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "work directory kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM
now_ms() { date +%s%3N; }
iso() { date -u -d "@$(($1 / 1000))" +%Y-%m-%dT%H:%M:%SZ; }
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %.0f MiB  ", $1, $2 / 1024}' "/proc/$1/status"; echo; }

# The embedded broker (built in, keeps every record; logs in $work/kafka), hosted by an
# idle adclick-redirect: sets `brokers` and `broker_pid`.
start_broker() {
    ADCLICK_REDIRECT_SPOOL_DIR="$work/spool" ADCLICK_KAFKA_EMBEDDED_DIR="$work/kafka" \
    "$B/adclick-redirect" --config config/demo.toml \
    --embedded-kafka --listen 127.0.0.1:0 >"$work/redirect.out" 2>/dev/null &
  pids+=($!)
  broker_pid=$!
  for _ in $(seq 600); do grep -q "listening on" "$work/redirect.out" 2>/dev/null && break; sleep 0.1; done
  brokers=$(sed -n 's/^embedded kafka: //p' "$work/redirect.out")
}

# Fails the benchmark unless the aggregator's `received` tally equals the records produced
# (`emitted`) and nothing was lost to a gap: a benchmark counts what it claims.
check_received() {
  local h="" r=0 l=0
  for _ in $(seq 600); do
    h=$(health || true)
    r=$(jq '.tallies.received // 0' <<<"$h")
    l=$(jq '.lost_records // 0' <<<"$h")
    ((l == 0)) || { echo "FAIL: $l records were deleted before they were read: $h"; exit 1; }
    ((r == emitted)) && { echo "   received $r = the $emitted records produced"; return 0; }
    sleep 0.5
  done
  echo "FAIL: the aggregator received $r of the $emitted records produced"
  exit 1
}

# A streaming aggregator named NAME (its logs are $work/NAME.out and .log) with the query
# server on, reading `brokers`, with the extra arguments given: sets `agg_pid` and `base`.
start_aggregator() {
  local name=$1
  shift
  ADCLICK_AGGREGATOR_IDLE_TIMEOUT_MS=${IDLE_MS:-5000} "${AGGREGATOR:-$B/adclick-aggregator}" \
    --config config/demo.toml --brokers "$brokers" --query-listen 127.0.0.1:0 "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  agg_pid=$!
  agg_log="$work/$name.log"
  for _ in $(seq 600); do grep -q "query server:" "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
  base=$(sed -n 's/^query server: //p' "$work/$name.out")
}
health() { curl -sf -H "Authorization: Bearer $KEY" "${base}api/v1/health"; }
alive() { kill -0 "$agg_pid" 2>/dev/null || { echo "the aggregator died:"; tail "$agg_log"; exit 1; }; }

# preload START_MS END_MS [LOADGEN ARGS...]: event time [START_MS, END_MS) at RATE clicks per
# simulated second over ADS ads, in chunks of about CHUNK_EVENTS records, each once the
# aggregator has read everything before it (the partitions' read offsets add up to the
# records produced), so the benchmark measures reading as the records arrive. Adds to `emitted` and `counted`; sets `preload_s`,
# and `preload_cpu_s`: the CPU seconds the aggregator spent meanwhile, which on a shared
# machine varies less than the wall clock.
emitted=0 counted=0 chunks=0
preload() {
  local start=$1 end=$2 c d line read_to t0 t1 cpu0
  shift 2
  cpu0=$(cpu_s "$agg_pid")
  local chunk_s=$((CHUNK_EVENTS / RATE / 60 * 60))
  ((chunk_s >= 60)) || chunk_s=60
  t0=$(date +%s.%N)
  for ((c = start; c < end; c += chunk_s * 1000)); do
    d=$(((end - c) / 1000))
    ((d <= chunk_s)) || d=$chunk_s
    "$B/adclick-loadgen" --config config/demo.toml --output kafka --brokers "$brokers" \
      --ads "$ADS" --rate "$RATE" --duration "$d" --start "$c" --seed "$((chunks + 1))" \
      --truth "$work/truth.json" "$@" 2>"$work/preload.log"
    line=$(tail -n 1 "$work/preload.log")
    emitted=$((emitted + $(sed -n 's/.*emitted \([0-9]*\).*/\1/p' <<<"$line")))
    counted=$((counted + $(sed -n 's/.*counted \([0-9]*\).*/\1/p' <<<"$line")))
    chunks=$((chunks + 1))
    for _ in $(seq 6000); do
      alive
      read_to=$(health | jq '[.partitions[].offset] | add // 0' || echo 0)
      ((read_to < emitted)) || break
      sleep 0.2
    done
    ((read_to >= emitted)) || { echo "the aggregator stopped reading at $read_to of $emitted"; exit 1; }
    ((chunks % 20)) || echo "  $chunks chunks, $emitted records read; aggregator $(rss "$agg_pid")"
  done
  t1=$(date +%s.%N)
  preload_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
  preload_cpu_s=$(awk -v a="$cpu0" -v b="$(cpu_s "$agg_pid")" 'BEGIN {printf "%.1f", b - a}')
}

# CPU seconds (user and system) process PID has used so far.
cpu_s() {
  # The fields after the command name, which may hold spaces: utime and stime are 12th and 13th.
  sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($12 + $13) / hz}'
}

# wait_watermark MS: until the aggregator's watermark is within a minute of MS.
wait_watermark() {
  local i h
  for i in $(seq 600); do
    alive
    h=$(health || true)
    jq -e --argjson e "$1" '(.watermark_ms // 0) >= $e - 60000' >/dev/null <<<"$h" && return 0
    sleep 0.5
  done
  echo "the watermark did not reach $(iso "$1"): $h"
  exit 1
}

# The answer to `query` (a path under the query server) that a restart must give again.
answer() { curl -sf -H "Authorization: Bearer $KEY" "${base}$query" | jq -c '{count, duplicates, complete}'; }

# restart_timed WANT ARGS...: starts the aggregator `restarted` with ARGS (on a checkpoint
# directory, after a kill) and prints when its query server is up, when `query` answers WANT
# again (serving again), when every worker's dedup state is built (counting again: health's
# restoring_workers, absent in builds before it, is 0), the restore's log lines and its
# memory. PROFILE_RESTORE=FILE: `perf record -g` of it until it serves again, into FILE.
restart_timed() {
  local want=$1 t0 t1 t2 t3 perf_pid
  shift
  t0=$(date +%s.%N)
  start_aggregator restarted "$@"
  t1=$(date +%s.%N)
  if [ -n "${PROFILE_RESTORE:-}" ]; then
    perf record -F 499 -g -o "$PROFILE_RESTORE" -p "$agg_pid" 2>"$work/perf.log" &
    perf_pid=$!
  fi
  for _ in $(seq 6000); do
    alive
    [ "$(answer 2>/dev/null || true)" = "$want" ] && break
    sleep 0.05
  done
  t2=$(date +%s.%N)
  if [ -n "${PROFILE_RESTORE:-}" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  [ "$(answer)" = "$want" ] || {
    echo "the restarted aggregator answers $(answer), not $want;" \
      "tallies: $(health | jq -c '{watermark_ms, tallies: (.tallies | {received, counted, late, duplicates})}')"
    exit 1
  }
  for _ in $(seq 6000); do
    alive
    [ "$(health | jq '.restoring_workers // 0')" = 0 ] && break
    sleep 0.05
  done
  t3=$(date +%s.%N)
  sed 's/\x1b\[[0-9;]*m//g' "$agg_log" |
    grep -E "restoring checkpoint|dedup state restored|restored state readable" |
    sed -E 's/^[^ ]+ +INFO +[^ ]+ //; s/^/   /'
  awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" 'BEGIN {
    printf "   query server up after %.2f s; the same answer after %.2f s (serving again)\n", b-a, c-a
    printf "   every dedup state built after %.2f s (counting again)\n", d-a}'
  echo "   aggregator after the restart: $(rss "$agg_pid")"
}

# threads_cpu PID: one "NAME TICKS" line per live thread of PID (digits dropped from NAME, so
# that a pool's threads add up; spaces made underscores) and "(ended) TICKS" for what threads
# no longer alive used.
threads_cpu() {
  local pid=$1 total
  total=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
  for t in /proc/"$pid"/task/*/stat; do cat "$t" 2>/dev/null || true; done |
    awk -v total="$total" '{
      name = $0; sub(/^[0-9]+ \(/, "", name); sub(/\) .*/, "", name); gsub(/[0-9]+/, "#", name); gsub(/ /, "_", name)
      rest = $0; sub(/.*\) /, "", rest); split(rest, f, " ")
      t[name] += f[12] + f[13]; live += f[12] + f[13]
    } END {for (n in t) print n, t[n]; print "(ended)", total - live}'
}

# threads_cpu_report BEFORE AFTER RECORDS: the CPU µs a record of each thread name between
# two threads_cpu snapshots (files), the largest first: where a phase's CPU went.
threads_cpu_report() {
  awk -v n="$3" -v hz="$(getconf CLK_TCK)" 'FNR == NR {b[$1] = $2; next} {d[$1] = $2 - b[$1]}
    END {for (k in d) if (d[k] > 0) printf "%.2f %s\n", d[k] / hz * 1e6 / n, k}' "$1" "$2" |
    sort -rn | head -12 | awk '{printf "%s %s µs;", $2, $1} END {print ""}' | sed 's/^/   CPU a record by thread: /'
}
