# shellcheck shell=bash
# The one build configuration shared by scripts/build.sh and scripts/test.sh, so the binary, the
# test binaries and the image all come from one compilation: a static (crt-static) release build
# for x86_64-unknown-linux-gnu with the git commit baked in.
TARGET=x86_64-unknown-linux-gnu
COMMENTS_BIN=$ROOT/target/$TARGET/release/comments
export COMMENTS_GIT_COMMIT=${COMMENTS_GIT_COMMIT:-$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
export RUSTFLAGS="-C target-feature=+crt-static"
export COMMENTS_BIN
