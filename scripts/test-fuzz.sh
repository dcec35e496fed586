#!/usr/bin/env bash
# cargo fuzz over request parsing and validation (fuzz/fuzz_targets/request_parsing.rs), bounded:
#   tools   cargo-fuzz, pinned, into ~/.cargo/bin (built once per machine), and a nightly toolchain
#   build   the target with AddressSanitizer (its own target dir, fuzz/target)
#   run     libFuzzer for FUZZ_SECONDS (default 60) from the seeds in fuzz/seeds, into a scratch
#           corpus; a crash fails the stage and leaves its input in fuzz/artifacts/ (replay it with
#           `cargo +nightly fuzz run request_parsing <file>`)
# cargo fuzz needs nightly. On a machine without it this says so and skips: the proptest suite
# (tests/api/properties.rs) checks the same parsers on stable.
# Usage: scripts/test-fuzz.sh   Exit 1 if any stage fails; prints each stage's time.
# shellcheck disable=SC2317 # the stage functions are called by name, through `stage`
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
. scripts/lib/tools.sh

CARGO_FUZZ_VERSION=0.13.2
TARGET=request_parsing
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
CORPUS=$(mktemp -d /tmp/comments-fuzz.XXXXXX)

cleanup() {
  rm -rf "$CORPUS"
  log "stage times:"
  printf '  %s\n' "${STAGE_TIMES[@]}" >&2
}
trap cleanup EXIT

if ! cargo +nightly --version >/dev/null 2>&1; then
  log "SKIPPED: no nightly toolchain here (cargo fuzz needs one); tests/api/properties.rs covers these parsers"
  exit 0
fi

# The project's RUSTFLAGS (crt-static, scripts/lib/build-env.sh) are for the service, not this.
unset RUSTFLAGS

tools() {
  [ "$(cargo fuzz --version 2>/dev/null)" = "cargo-fuzz $CARGO_FUZZ_VERSION" ] && return 0
  _install_cargo_fuzz() {
    [ "$(cargo fuzz --version 2>/dev/null)" = "cargo-fuzz $CARGO_FUZZ_VERSION" ] && return 0
    log "cargo install cargo-fuzz@$CARGO_FUZZ_VERSION (once per machine)"
    cargo install --locked --quiet "cargo-fuzz@$CARGO_FUZZ_VERSION"
  }
  with_tools_lock _install_cargo_fuzz
}

build() {
  cargo +nightly fuzz build "$TARGET"
}

run() {
  local out=$CORPUS.log status
  cargo +nightly fuzz run "$TARGET" "$CORPUS" fuzz/seeds/"$TARGET" -- \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1 >"$out" 2>&1
  status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)' "$out" >&2
  if [ $status -ne 0 ]; then
    grep -A2 'panicked at' "$out" >&2
    tail -n 40 "$out" >&2
    log "the fuzzer found a failing input (above; saved under fuzz/artifacts/$TARGET)"
  fi
  return $status
}

failed=0
for step in tools build run; do
  stage "fuzz: $step" "$step" || { failed=1; break; }
done
exit $failed
