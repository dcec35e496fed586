#!/usr/bin/env bash
# The benchmark of issue 7: comments (SQLite), comments (PostgreSQL), a bare axum baseline and
# the original Flask app, side by side under the same wrk load. See bench/README.md.
#
#   bench/run.sh           full run (3 rounds of 5 s per server and scenario; about 6 minutes),
#                          writes bench/RESULTS.md
#   bench/run.sh --quick   1 round of 2 s (about 75 seconds), writes bench/RESULTS.quick.md; the
#                          test suite runs it to prove the harness works (no timing assertions)
#
# Exits non-zero when a server does not start or answers wrongly, when a run has no successful
# request, or when the results cannot be written. COMMENTS_BIN runs another comments binary;
# BENCH_IMAGE_SIZE (e.g. "18.6 MB", from scripts/test-image.sh) goes into the results;
# BENCH_KEEP_WORK=1 keeps the raw wrk output and server logs (in /tmp/comments-bench.*).
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib/tools.sh"
cd "$ROOT"

MODE=full
case "${1:-}" in
  "") ;;
  --quick) MODE=quick ;;
  *) die "usage: bench/run.sh [--quick]" ;;
esac
if [ $MODE = quick ]; then
  WARMUP_S=1 DURATION_S=2 ROUNDS=1 STARTS=3 SCRAPES=50 FSYNC_S=2 RESULTS=bench/RESULTS.quick.md
else
  WARMUP_S=2 DURATION_S=5 ROUNDS=3 STARTS=7 SCRAPES=500 FSYNC_S=5 RESULTS=bench/RESULTS.md
fi
CONNECTIONS=64
SERVER_CPU=0 # every server (and what it forks) runs on this core...
CLIENT_CPU=1 # ...and wrk on this one.
COMMENTS_BIN=${COMMENTS_BIN:-$ROOT/target/x86_64-unknown-linux-gnu/release/comments}
BASELINE_BIN=$ROOT/target/bench/x86_64-unknown-linux-gnu/release/comments-bench-baseline
FLASK_VENV=$TOOLS_DIR/bench-flask
SERVERS=(sqlite postgres baseline flask) # the order of every round
SCENARIOS=(health list post v1 mix)

WORK=$(mktemp -d /tmp/comments-bench.XXXXXX)
DB_NAME=comments_bench_$$_$RANDOM
DB_CREATED=
BINARY_INFO= # what was copied from COMMENTS_BIN (see build)
declare -A PID URL METRICS_URL
WRK=() # the wrk command line of the current run
STARTED=() # every PID this script started, killed by PID on exit

STDERR=
exec {STDERR}>&2 # the trap may fire while a run's stderr goes to a file: it logs here

cleanup() {
  local status=$? pid
  exec 2>&"$STDERR"
  # gunicorn first, with SIGTERM: its master then stops and reaps its worker. If it is still up
  # after 5 s, SIGKILL for its worker (read from /proc now, so surely its child) and itself.
  if [ -n "${PID[flask]:-}" ] && kill -TERM "${PID[flask]}" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "${PID[flask]}" 2>/dev/null || break; sleep 0.1; done
    # shellcheck disable=SC2046 # one PID a line
    kill -0 "${PID[flask]}" 2>/dev/null && kill -KILL $(server_pids flask) 2>/dev/null
  fi
  # The rest with SIGKILL: the data is thrown away anyway. `wait` reaps our children and, with
  # 2>/dev/null, keeps bash's "Killed" notices out of the output.
  for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$DB_CREATED" ]; then
    timeout 30 psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 \
      || log "could not drop database $DB_NAME"
  fi
  if [ -n "${BENCH_KEEP_WORK:-}" ]; then log "raw results and logs kept in $WORK"; else rm -rf "$WORK"; fi
  [ ${#STAGE_TIMES[@]} -eq 0 ] || { log "stage times:"; printf '  %s\n' "${STAGE_TIMES[@]}" >&2; }
  if [ $status -eq 0 ]; then log "bench ($MODE) done: $RESULTS"; else log "bench ($MODE) FAILED"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_http URL SECONDS : until URL answers 200, or fail.
wait_http() {
  local deadline=$((SECONDS + $2))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1")" = 200 ]; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

# wait_line FILE REGEX SECONDS PID : prints the first match of REGEX in FILE, waiting for it
# while PID lives.
wait_line() {
  local deadline=$((SECONDS + $3)) found
  until found=$(grep -m1 -oE "$2" "$1" 2>/dev/null); do
    kill -0 "$4" 2>/dev/null || return 1
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.05
  done
  echo "$found"
}

# The Flask peer's own venv, so its pins cannot clash with the shared tools venv; rebuilt when
# requirements.txt changes.
flask_venv() {
  local stamp=$FLASK_VENV/.requirements
  cmp -s bench/peers/flask/requirements.txt "$stamp" && return 0
  rm -rf "$FLASK_VENV"
  python3 -m venv "$FLASK_VENV" || die "cannot create $FLASK_VENV"
  log "pip install -r bench/peers/flask/requirements.txt"
  "$FLASK_VENV/bin/python" -m pip install -q --disable-pip-version-check -r bench/peers/flask/requirements.txt \
    || die "pip install for the Flask peer failed"
  cp bench/peers/flask/requirements.txt "$stamp"
}

tools() {
  apt_install wrk curl util-linux
  ensure_postgres
  with_tools_lock flask_venv
}

build() {
  [ -x "$COMMENTS_BIN" ] || scripts/build.sh >/dev/null
  # What runs is a copy: a rebuild of the original during the run changes nothing measured.
  cp "$COMMENTS_BIN" "$WORK/comments"
  BINARY_INFO="${COMMENTS_BIN#"$ROOT"/}, $(stat -c %s "$WORK/comments") bytes, built $(date -u -r "$COMMENTS_BIN" '+%Y-%m-%d %H:%M UTC'), sha256 $(sha256sum "$WORK/comments" | cut -c1-12)"
  # The baseline is built like comments (static glibc, same target and release profile), into a
  # target dir of its own; a no-op when it is up to date.
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --locked --release \
    --manifest-path bench/baseline/Cargo.toml --target-dir target/bench --target x86_64-unknown-linux-gnu
}

startup() {
  python3 bench/py/startup.py "$WORK/comments" "$WORK" "$STARTS" "$SERVER_CPU" >"$WORK/startup.txt"
  cat "$WORK/startup.txt" >&2
}

# The disk under the SQLite file, alone (before any server runs): the floor of a durable write.
disk() {
  taskset -c $SERVER_CPU python3 bench/py/fsync.py "$WORK" "$FSYNC_S" >"$WORK/fsync.txt" \
    || die "probing the disk's fsync failed"
  cat "$WORK/fsync.txt" >&2
}

# start_comments NAME DATABASE_URL : comments with default settings (metrics and request logs on,
# OTLP off: a clean environment), on port 0; its stdout log goes to a file (see README).
start_comments() {
  local name=$1
  env -i PATH=/usr/bin:/bin COMMENTS_LISTEN=127.0.0.1:0 COMMENTS_METRICS_LISTEN=127.0.0.1:0 \
    COMMENTS_DATABASE_URL="$2" taskset -c $SERVER_CPU "$WORK/comments" >>"$WORK/$name.log" 2>"$WORK/$name.err" &
  PID[$name]=$!
  STARTED+=($!)
  local addr
  addr=$(wait_line "$WORK/$name.log" '"api":"[^"]+"' 30 "${PID[$name]}") \
    || die "comments ($name) did not start: $(tail -n 5 "$WORK/$name.err" "$WORK/$name.log")"
  URL[$name]=http://${addr:7:-1}
  addr=$(wait_line "$WORK/$name.log" '"metrics":"[^"]+"' 30 "${PID[$name]}") \
    || die "comments ($name) logged no metrics address"
  METRICS_URL[$name]=http://${addr:11:-1}
  wait_http "${URL[$name]}/readyz" 30 || die "comments ($name) not ready on ${URL[$name]}/readyz"
}

start_servers() {
  mkdir -p "$WORK/sqlite"
  start_comments sqlite "sqlite://$WORK/sqlite/comments.db"

  psql -q "$PG_URL" -c "CREATE DATABASE $DB_NAME" >/dev/null || die "cannot create database $DB_NAME"
  DB_CREATED=1
  start_comments postgres "${PG_URL%/*}/$DB_NAME"

  taskset -c $SERVER_CPU "$BASELINE_BIN" 127.0.0.1:0 >>"$WORK/baseline.log" 2>&1 &
  PID[baseline]=$!
  STARTED+=($!)
  local addr
  addr=$(wait_line "$WORK/baseline.log" '127\.0\.0\.1:[0-9]+' 30 "${PID[baseline]}") || die "the baseline did not start"
  URL[baseline]=http://$addr
  wait_http "${URL[baseline]}/health-check" 30 || die "the baseline does not answer"

  # As the seeds run it: gunicorn -b HOST:PORT api:app (sync worker, 1 worker). Only
  # --no-control-socket is added: gunicorn 27 would otherwise create ~/.gunicorn/gunicorn.ctl.
  local port
  port=$(free_port)
  (cd bench/peers/flask && PYTHONDONTWRITEBYTECODE=1 exec taskset -c $SERVER_CPU \
    "$FLASK_VENV/bin/gunicorn" -b "127.0.0.1:$port" --no-control-socket api:app) >>"$WORK/flask.log" 2>&1 &
  PID[flask]=$!
  STARTED+=($!)
  URL[flask]=http://127.0.0.1:$port
  wait_http "${URL[flask]}/health-check" 30 || die "the Flask peer did not start: $(tail -n 5 "$WORK/flask.log")"
  local name
  for name in "${SERVERS[@]}"; do log "$name: ${URL[$name]} (pids $(server_pids "$name" | xargs))"; done
}

# server_pids NAME : the server's processes, one a line (gunicorn: the master and its workers).
server_pids() {
  local pid=${PID[$1]}
  echo "$pid"
  cat /proc/"$pid"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true
}

# Seeds every server the same way and checks what they answer: the baseline's and comments'
# bodies must be byte-identical, Flask's equal as JSON (jsonify sorts keys, adds a newline).
declare -A CURSOR
seed_and_check() {
  local name v1 body
  for name in "${SERVERS[@]}"; do
    mkdir -p "$WORK/bodies/$name"
    v1=--v1
    [ "$name" = flask ] && v1= # the original app has no v1 API
    CURSOR[$name]=$(python3 bench/py/seed.py "${URL[$name]}" "$WORK/bodies/$name" $v1) \
      || die "seeding $name failed"
  done
  for name in postgres baseline; do
    for body in health list; do
      cmp -s "$WORK/bodies/sqlite/$body.body" "$WORK/bodies/$name/$body.body" \
        || die "$name answers $body differently from comments (sqlite): $(cat "$WORK/bodies/$name/$body.body")"
    done
  done
  for body in health list; do
    python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' \
      "$WORK/bodies/sqlite/$body.body" "$WORK/bodies/flask/$body.body" \
      || die "flask answers $body differently: $(cat "$WORK/bodies/flask/$body.body")"
  done
  log "every server answers the contract; v1 cursors: sqlite=${CURSOR[sqlite]} postgres=${CURSOR[postgres]} baseline=${CURSOR[baseline]}"
}

# wrk_command SCENARIO NAME SECONDS : sets WRK to the command line of one run (the script's
# arguments last, after --).
wrk_command() {
  local url=${URL[$2]}
  WRK=(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$3"s --latency)
  case $1 in
    health) WRK+=(-s bench/wrk/get.lua "$url/health-check") ;;
    list) WRK+=(-s bench/wrk/get.lua "$url/api/comment/list/1") ;;
    post) WRK+=(-s bench/wrk/post.lua "$url/api/comment/new") ;;
    v1) WRK+=(-s bench/wrk/v1.lua "$url" -- 2 "${CURSOR[$2]}") ;;
    mix) WRK+=(-s bench/wrk/mix.lua "$url" -- 3) ;;
  esac
}

busy_ticks() { # CPU time used on the whole machine, in clock ticks: user + nice + system + steal
  # of the "cpu" line of /proc/stat (irq and softirq left out: mostly our own loopback traffic)
  awk '/^cpu / { print $2 + $3 + $4 + $9 }' /proc/stat
}

cpu_ticks() { # utime + stime of the given processes, in clock ticks
  local pid stat total=0
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    # Fields 14 and 15, counted after the command name, which may hold spaces: "pid (comm) ...".
    total=$((total + $(echo "${stat##*) }" | awk '{ print $12 + $13 }')))
  done
  echo $total
}

rss_kib() { # VmRSS of the given processes, summed
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo $total
}

db_pids() { # PostgreSQL backends serving our database (their CPU is reported apart)
  psql -Atq "$PG_URL" -c "SELECT pid FROM pg_stat_activity WHERE datname = '$DB_NAME'" 2>/dev/null || true
}

# measure SCENARIO NAME ROUND SECONDS : one wrk run; its output and the server's CPU, RSS and log
# problems go to $WORK/raw for report.py. ROUND 0 is the warm-up, which report.py discards.
measure() {
  local scenario=$1 name=$2 round=$3 seconds=$4
  local pids=() dbpids=() raw=$WORK/raw/$scenario.$name.$round
  mapfile -t pids < <(server_pids "$name")
  [ "$name" = postgres ] && mapfile -t dbpids < <(db_pids)
  local ticks0 dbticks0 busy0 t0 t1
  wrk_command "$scenario" "$name" "$seconds"
  # comments' own latency histogram around the run (report.py: the share answered within 5 ms as
  # the server saw it, next to wrk's corrected p99). Scraped outside the timed window.
  local metrics=${METRICS_URL[$name]:-}
  [ -z "$metrics" ] || curl -sf --max-time 5 "$metrics/metrics" >"$raw.metrics0" || die "scraping $name failed"
  ticks0=$(cpu_ticks "${pids[@]}")
  dbticks0=$(cpu_ticks "${dbpids[@]}")
  busy0=$(busy_ticks)
  t0=$(date +%s%N)
  # The wrk process's own CPU time (bash's `time`), to see when the client is the bottleneck.
  local TIMEFORMAT='%U %S'
  { time timeout $((seconds + 30)) "${WRK[@]}" >"$raw.wrk" 2>&1; } 2>"$raw.time" \
    || die "wrk failed (${WRK[*]}): $(tail -n 5 "$raw.wrk")"
  t1=$(date +%s%N)
  [ -z "$metrics" ] || curl -sf --max-time 5 "$metrics/metrics" >"$raw.metrics1" || die "scraping $name failed"
  {
    echo "cmd=${WRK[*]}"
    echo "wall_ns=$((t1 - t0))"
    echo "cpu_ticks=$(($(cpu_ticks "${pids[@]}") - ticks0))"
    echo "db_cpu_ticks=$(($(cpu_ticks "${dbpids[@]}") - dbticks0))"
    echo "busy_ticks=$(($(busy_ticks) - busy0))"
    echo "rss_kib=$(rss_kib "${pids[@]}")"
    echo "client_cpu_s=$(awk '{ print $1 + $2 }' "$raw.time")"
    # Warnings and errors the server logged during the run (comments: JSON lines; gunicorn:
    # [ERROR]/[CRITICAL]); then the log is emptied, so a full run does not fill the disk.
    local log=$WORK/$name.log
    echo "log_problems=$(grep -cE '"level":"(WARN|ERROR)"|\[(ERROR|CRITICAL)\]' "$log" || true)"
    grep -m3 -E '"level":"(WARN|ERROR)"|\[(ERROR|CRITICAL)\]' "$log" | cut -c1-300 | sed 's/^/log_line=/' || true
    : >"$log"
  } >"$raw.stats"
  grep -q '^BENCH ' "$raw.wrk" || die "wrk printed no results (${WRK[*]}): $(tail -n 5 "$raw.wrk")"
}

load() {
  local scenario=$1 round name
  for name in "${SERVERS[@]}"; do
    [ "$scenario" = v1 ] && [ "$name" = flask ] && continue
    measure "$scenario" "$name" 0 $WARMUP_S
  done
  for round in $(seq "$ROUNDS"); do
    for name in "${SERVERS[@]}"; do
      [ "$scenario" = v1 ] && [ "$name" = flask ] && continue
      measure "$scenario" "$name" "$round" $DURATION_S
    done
  done
}

# The cost of a scrape of comments (SQLite) with many label combinations present (after the
# loads, plus a spread of methods, routes and bad inputs): series, bytes, latency.
scrape() {
  taskset -c "$CLIENT_CPU" python3 bench/py/scrape.py "${URL[sqlite]}" "${METRICS_URL[sqlite]}" "$SCRAPES" \
    >"$WORK/scrape.txt" || die "timing the scrapes failed"
  cat "$WORK/scrape.txt" >&2
}

report() {
  local binary_version
  binary_version=$(curl -s --max-time 2 "${URL[sqlite]}/version")
  local dirty=
  [ -z "$(GIT_OPTIONAL_LOCKS=0 git status --porcelain --untracked-files=no 2>/dev/null)" ] || dirty=" (uncommitted changes in the tree)"
  {
    echo "mode=$MODE"
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$dirty"
    echo "binary=$BINARY_INFO, /version $binary_version"
    echo "nproc=$(nproc)"
    echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    echo "kernel=$(uname -sr)"
    echo "loadavg=$LOADAVG_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "wrk=$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"
    echo "postgres=$(psql -Atq "$PG_URL" -c 'SHOW server_version' | cut -d' ' -f1)"
    echo "flask=$(sed -n 's/^flask==//p' bench/peers/flask/requirements.txt), gunicorn $(sed -n 's/^gunicorn==//p' bench/peers/flask/requirements.txt), $("$FLASK_VENV/bin/python" --version)"
    echo "warmup_s=$WARMUP_S"
    echo "duration_s=$DURATION_S"
    echo "rounds=$ROUNDS"
    echo "connections=$CONNECTIONS"
    echo "server_cpu=$SERVER_CPU"
    echo "client_cpu=$CLIENT_CPU"
    echo "clk_tck=$(getconf CLK_TCK)"
    echo "image_size=${BENCH_IMAGE_SIZE:-$(cat target/image-size 2>/dev/null || true)}"
    cat "$WORK/startup.txt"
    cat "$WORK/fsync.txt"
    cat "$WORK/scrape.txt"
  } >"$WORK/run.info"
  python3 bench/py/report.py "$WORK" "$RESULTS"
}

mkdir -p "$WORK/raw"
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
stage "bench: tools" tools
stage "bench: build" build
stage "bench: start-up time" startup
stage "bench: disk fsync" disk
stage "bench: start servers" start_servers
stage "bench: seed and check" seed_and_check
for scenario in "${SCENARIOS[@]}"; do
  stage "bench: load $scenario" load "$scenario"
done
stage "bench: scrape cost" scrape
stage "bench: report" report
