#!/usr/bin/env bash
# Runs every test of the project on this machine, installing what they need first (idempotent):
#   scripts/test.sh
# Stages run in order and the script stops at the first failure; each prints how long it took.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib/tools.sh"
. "$ROOT/scripts/lib/build-env.sh"
cd "$ROOT"

summary() {
  log "stage times:"
  printf '  %s\n' "${STAGE_TIMES[@]}" >&2
}
trap summary EXIT

run() { stage "$@" || exit 1; }

run "postgres" ensure_postgres
run "supply chain" scripts/test-supply-chain.sh
run "cargo fmt --check" cargo fmt --all -- --check
# --target: RUSTFLAGS (crt-static) then apply to our code only, not to proc-macros.
run "cargo clippy" cargo clippy --locked --all-targets --target "$TARGET" -- -D warnings
# One static release compilation serves the binary, the tests, the image and the bench. Built by
# `cargo test` alone: a separate `cargo build` would compile every dependency a second time, with
# the features the dev-dependencies do not add.
run "build (static release)" cargo test --locked --release --target "$TARGET" --no-run
run "cargo test" cargo test --locked --release --target "$TARGET"
run "cargo fuzz" scripts/test-fuzz.sh
run "schemathesis" scripts/test-api-fuzz.sh
run "monitoring (rules, dashboard, live Prometheus)" scripts/test-monitoring.sh
run "chart and argocd" scripts/test-chart.sh
run "image (buildah + podman)" scripts/test-image.sh
run "buildspec (CodeBuild + bump)" scripts/test-buildspec.sh
run "bench (quick)" bench/run.sh --quick
