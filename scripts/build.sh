#!/usr/bin/env bash
# Builds the one static release binary that the tests, the image and the benchmark all use, and
# prints its path: target/x86_64-unknown-linux-gnu/release/comments. Static (glibc crt-static) so
# the image can be FROM scratch; COMMENTS_GIT_COMMIT (default: HEAD) ends up in /version.
# It is built by `cargo test --no-run`, exactly as scripts/test.sh builds it: a plain
# `cargo build` resolves dependency features without the dev-dependencies and would compile
# everything a second time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib/build-env.sh"
cd "$ROOT"
cargo test --locked --release --target "$TARGET" --no-run "$@" >&2
echo "$COMMENTS_BIN"
