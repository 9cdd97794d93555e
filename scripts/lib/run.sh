# Shared by the operational runs (chaos.sh, stress.sh, replay.sh), sourced from the
# repository root after `set -euo pipefail`: timestamped log lines, failing with the last lines
# of every log (a CI run keeps only what is printed, not the work directory), the binaries,
# the work directory, free ports and the real broker process. Each script sets RUN_NAME first.

now_ms() { date +%s%3N; }
T0=$(now_ms)
log() { printf '[%s %6.1fs] %s\n' "$RUN_NAME" "$(($(now_ms) - T0))e-3" "$*"; }
# The last lines of every log in $WORK, without ANSI colours or backtrace frames.
show_logs() {
  local f
  for f in "${WORK:-}"/*.log; do
    [[ -s $f ]] || continue
    echo "--- last lines of $(basename "$f")"
    sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -Ev '^ +([0-9]+: |at )' | tail -n 15
  done
}
die() { log "FAILED: $*"; show_logs; exit 1; }
need_tools() {
  local tool
  for tool in "$@"; do command -v "$tool" >/dev/null || die "$tool is needed"; done
}
alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }
sleep_ms() { sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"; }

# A port below the ephemeral range (so no client socket holds it), checked free.
free_port() {
  local p
  for _ in $(seq 50); do
    p=$(shuf -i 20000-32000 -n 1)
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  die "no free port"
}

# Sets each variable named (AGGREGATOR, REDIRECT, LOADGEN) to the $PROFILE build of its
# binary, building them, unless every one named is given.
build_binaries() {
  local var missing=0 flag=() bins=() bin_dir
  for var in "$@"; do [[ -n ${!var:-} ]] || missing=1; done
  ((missing)) || return 0
  [[ $PROFILE == release ]] && flag=(--release)
  for var in "$@"; do bins+=(--bin "adclick-${var,,}"); done
  log "building the binaries ($PROFILE)"
  cargo build --quiet "${flag[@]}" "${bins[@]}"
  bin_dir=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
  for var in "$@"; do printf -v "$var" '%s' "$bin_dir/adclick-${var,,}"; done
}

# Sets WORK (and `keep`: whether it was given, so kept) to the directory for the run's logs
# and state: $WORK when set, else a new temporary one named after the run.
work_dir() {
  if [[ -n ${WORK:-} ]]; then
    keep=1; mkdir -p "$WORK"
  else
    keep=0; WORK=$(mktemp -d "${TMPDIR:-/tmp}/adclick-$RUN_NAME.XXXXXX")
  fi
}

# Starts the real broker (Tansu) on $TANSU_PORT with storage in $WORK/tansu, logging to
# $WORK/tansu.log; sets tansu_pid. Called again after a kill, on the same storage.
start_tansu() {
  scripts/tansu.sh run "$TANSU_PORT" "$WORK/tansu" >>"$WORK/tansu.log" 2>&1 &
  tansu_pid=$!
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$TANSU_PORT") 2>/dev/null && return 0
    alive "$tansu_pid" || die "tansu exited (tansu.log)"
    sleep 0.1
  done
  die "tansu did not come up on 127.0.0.1:$TANSU_PORT"
}

# The topics adclick uses on the Tansu broker: clicks with $1 partitions, the others with one.
create_topics() {
  local topic n
  for topic in clicks clicks-dlq clicks-late click-aggregates; do
    n=1; [[ $topic == clicks ]] && n=$1
    "$TANSU_BIN" topic create "$topic" --partitions "$n" --broker "tcp://127.0.0.1:$TANSU_PORT" \
      >>"$WORK/tansu.log" 2>&1 || die "creating topic $topic"
  done
}
