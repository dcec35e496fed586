#!/usr/bin/env bash
# Hostile input against the real binary: schemathesis generates valid and invalid requests for
# every operation of the service's own /openapi.json and fails on any 5xx, any response the
# document does not describe (status, content type, headers, body schema), any invalid input the
# service accepts, and the checks in scripts/api-fuzz/checks.py (security headers, JSON errors,
# no token echoed, no delete without the token). Runs:
#   admin         every operation, DELETE with the right bearer token (must reach 204)
#   no-token      DELETE without an Authorization header (must be 401)
#   wrong-token   DELETE with another bearer token (must be 401)
#   deleting-off  DELETE against a server with no admin token configured (must be 403)
# After each run the server must still be alive and ready; at the end SIGTERM must stop it with
# exit 0. Everything listens on and talks to 127.0.0.1 only, on ports the OS picks.
# Usage: scripts/test-api-fuzz.sh   (COMMENTS_BIN=/path/to/comments tests another binary;
#        COMMENTS_FUZZ_SEED=N replays or varies the generated inputs; default fixed for CI)
# Reports (JUnit and NDJSON, one directory per run): target/api-fuzz/. Exit 1 if anything fails.
# shellcheck disable=SC2317 # the stage functions are called by name, through `stage`
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
. scripts/lib/tools.sh

BINARY=${COMMENTS_BIN:-$ROOT/target/x86_64-unknown-linux-gnu/release/comments}
SEED=${COMMENTS_FUZZ_SEED:-20261123}
REPORTS=$ROOT/target/api-fuzz
FUZZ=$ROOT/scripts/api-fuzz
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ next to checks.py
# The SIGTERM drain of the fuzzed server: short, but long enough to see /readyz turn 503 first.
SHUTDOWN_DELAY_S=1
SHUTDOWN_TIMEOUT_S=10
WORK=$(mktemp -d)
SERVER_PID=
SERVER_LOG=
API=

cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
  log "stage times:"
  printf '  %s\n' "${STAGE_TIMES[@]}" >&2
}
trap cleanup EXIT

tools() {
  apt_install curl || return 1
  # Its own venv: schemathesis pins its dependencies (hypothesis, jsonschema_rs, click...) in ways
  # the shared tools venv need not agree with. hypothesis is pinned too: it generates the inputs,
  # so the same seed sends the same requests only with the same hypothesis.
  pip_app schemathesis 'schemathesis==4.32.5' 'hypothesis==6.170.15' || return 1
  if [ ! -x "$BINARY" ]; then
    log "no binary at $BINARY: building it"
    scripts/build.sh >/dev/null || return 1
  fi
  log "$(schemathesis --version), seed $SEED"
}

# http_status URL : the status code of a GET, or 000 when nothing answers.
http_status() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1"
}

# start_server NAME [ADMIN_TOKEN] : the binary on 127.0.0.1 free ports, SQLite in $WORK/NAME;
# sets SERVER_PID, SERVER_LOG and API (host:port) once /readyz answers 200.
start_server() {
  local name=$1 token=${2:-}
  local dir=$WORK/$name
  mkdir -p "$dir"
  SERVER_LOG=$dir/server.log
  (
    cd "$dir" || exit 1
    export COMMENTS_LISTEN=127.0.0.1:0 COMMENTS_METRICS_LISTEN=127.0.0.1:0
    export COMMENTS_DATABASE_URL=sqlite://$dir/comments.db
    export COMMENTS_SHUTDOWN_DELAY=${SHUTDOWN_DELAY_S}s COMMENTS_SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT_S}s
    # This stage is about input handling, not durability: fsync at checkpoints only and a storage
    # timeout well above the default 1s, so a disk busy with other builds does not turn into 503s.
    export COMMENTS_SQLITE_SYNCHRONOUS=normal COMMENTS_STORAGE_TIMEOUT=5s
    unset COMMENTS_ADMIN_TOKEN COMMENTS_ADMIN_TOKEN_FILE
    [ -n "$token" ] && export COMMENTS_ADMIN_TOKEN=$token
    exec "$BINARY"
  ) >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  local waited=0
  until API=$(sed -n 's/.*"message":"serving".*"api":"\([^"]*\)".*/\1/p' "$SERVER_LOG" | head -n 1) \
      && [ -n "$API" ]; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; log "the server exited at start"; return 1; }
    [ $waited -ge 100 ] && { cat "$SERVER_LOG" >&2; log "no serving line in 10s"; return 1; }
    sleep 0.1
    waited=$((waited + 1))
  done
  until [ "$(http_status "http://$API/readyz")" = 200 ]; do
    [ $waited -ge 200 ] && { cat "$SERVER_LOG" >&2; log "/readyz not 200 in 20s"; return 1; }
    sleep 0.1
    waited=$((waited + 1))
  done
  log "$name server: pid $SERVER_PID on $API"
}

# fuzz RUN BEARER [schemathesis options...] : one schemathesis run against the server at $API.
# BEARER is sent as the admin_token security scheme of the document (DELETE); empty sends none.
fuzz() {
  local run=$1 bearer=$2
  shift 2
  local dir=$WORK/fuzz-$run
  mkdir -p "$dir"
  rm -rf "${REPORTS:?}/$run"
  mkdir -p "$REPORTS/$run"
  # The document as the service serves it. Loaded from a file, because schemathesis leaves out the
  # operation its document came from when given the URL, and GET /openapi.json is one to test too.
  curl -sf --max-time 5 -o "$dir/openapi.json" "http://$API/openapi.json" \
    || { log "GET /openapi.json failed"; return 1; }
  cp "$FUZZ/schemathesis.toml" "$dir/schemathesis.toml"
  if [ -n "$bearer" ]; then
    # schemathesis itself reads ${FUZZ_BEARER} from the environment, so the token is in no file.
    # shellcheck disable=SC2016
    printf '\n[auth.openapi.admin_token]\nbearer = "${FUZZ_BEARER}"\n' >>"$dir/schemathesis.toml"
  fi
  local status=0
  # Run from $dir: hypothesis and schemathesis drop state directories into the working directory.
  (
    cd "$dir" || exit 1
    FUZZ_RUN=$run FUZZ_SECRET=$SECRET FUZZ_BEARER=$bearer SCHEMATHESIS_HOOKS=$FUZZ/checks.py \
      timeout 240 schemathesis --config-file schemathesis.toml run openapi.json \
      --url "http://$API" --checks all --seed "$SEED" --no-color \
      --report junit,ndjson --report-dir "$REPORTS/$run" "$@"
  ) >"$dir/output.txt" 2>&1 || status=$?
  if [ $status -eq 0 ]; then
    sed -n '/=== SUMMARY ===/,$p' "$dir/output.txt" >&2
  else
    cat "$dir/output.txt" >&2
    log "$run: schemathesis failed (exit $status; 124 is the 240s timeout); reports in $REPORTS/$run"
  fi
  alive_and_ready "$run" || status=1
  return $status
}

# The fuzzed server survived the run: same process, still ready, no panic in its log.
alive_and_ready() {
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; log "$1: the server died"; return 1; }
  local code
  code=$(http_status "http://$API/readyz")
  [ "$code" = 200 ] || { log "$1: /readyz is $code after the run, not 200"; return 1; }
  if grep -E '"handler panicked"|panicked at' "$SERVER_LOG" >&2; then
    log "$1: the server logged a panic"
    return 1
  fi
}

# SIGTERM: /readyz turns 503 during the shutdown delay, then the process exits 0 in time.
stop_server() {
  kill -TERM "$SERVER_PID" || return 1
  local code waited=0 limit=$(((SHUTDOWN_DELAY_S + SHUTDOWN_TIMEOUT_S + 5) * 10))
  code=$(http_status "http://$API/readyz")
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    [ $waited -ge $limit ] && { log "still running $((limit / 10))s after SIGTERM"; return 1; }
    sleep 0.1
    waited=$((waited + 1))
  done
  wait "$SERVER_PID"
  local exit_code=$?
  SERVER_PID=
  [ "$code" = 503 ] || { log "/readyz was $code right after SIGTERM, not 503"; return 1; }
  [ $exit_code -eq 0 ] || { tail -n 20 "$SERVER_LOG" >&2; log "exit $exit_code after SIGTERM, not 0"; return 1; }
  log "stopped by SIGTERM with exit 0"
}

# A fresh random token per run, long enough that finding it in a response means it was echoed.
SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
OTHER=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')

# A failed fuzz run does not stop the others (all findings in one go); a server that cannot
# start, dies or does not stop cleanly ends the script at once.
FAILED=()
run() { stage "$@" || exit 1; }
check() { stage "$@" || FAILED+=("$1"); }

run "tools" tools
run "start (admin token set)" start_server admin "$SECRET"
check "fuzz: admin" fuzz admin "$SECRET"
check "fuzz: no token" fuzz no-token "" --include-method DELETE
check "fuzz: wrong token" fuzz wrong-token "$OTHER" --include-method DELETE
run "SIGTERM (admin token set)" stop_server
run "start (no admin token)" start_server deleting-off
# The secret of this run is whatever the client sends: the server must not echo it either.
SECRET=$OTHER
# With deleting off no credentials can help, so the server answers 403 even without an
# Authorization header (RFC 9110 15.5.4; the document says so); schemathesis' missing-header
# check insists on 401 there, which would be the wrong answer for this server.
check "fuzz: deleting off" fuzz deleting-off "$OTHER" --include-method DELETE \
  --exclude-checks missing_required_header
run "SIGTERM (no admin token)" stop_server
if [ ${#FAILED[@]} -gt 0 ]; then
  log "api fuzz: failed: ${FAILED[*]} (seed $SEED; reports in $REPORTS)"
  exit 1
fi
log "api fuzz: every run passed (seed $SEED)"
