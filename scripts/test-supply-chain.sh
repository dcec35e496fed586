#!/usr/bin/env bash
# Supply chain: what Cargo.lock brings in is allowed. Reads Cargo.lock and Cargo.toml only; nothing
# is compiled (except cargo-deny itself, once per machine).
#   tools        cargo-deny, pinned, installed only if that version is not already on PATH
#   cargo deny   `cargo deny check licenses bans sources` with deny.toml: permissive licences only,
#                no OpenSSL crates, crates.io only (why `advisories` is left out: deny.toml)
#   policy bites the same check with a stricter copy of deny.toml fails, so a pass above means
#                the policy was applied, not skipped
#   no OpenSSL   `cargo tree -i` finds no openssl, openssl-sys or native-tls among the normal and
#                build dependencies of the workspace, all features, every target; rustls is there
# Usage: scripts/test-supply-chain.sh   Exit 1 if any stage fails; prints each stage's time.
# shellcheck disable=SC2317 # the stage functions are called by name, through `stage`
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
. scripts/lib/tools.sh

# The newest release (crates.io) at the time of writing; it builds with Rust 1.95 (MSRV 1.88).
CARGO_DENY_VERSION=0.20.2
OPENSSL_CRATES=(openssl openssl-sys native-tls)
# The graph the checks look at: every workspace crate with every feature, Cargo.lock as it is.
GRAPH=(--locked --workspace --all-features)
WORK=$(mktemp -d)

cleanup() {
  rm -rf "$WORK"
  log "stage times:"
  printf '  %s\n' "${STAGE_TIMES[@]}" >&2
}
trap cleanup EXIT

has_cargo_deny() {
  [ "$(cargo deny --version 2>/dev/null)" = "cargo-deny $CARGO_DENY_VERSION" ]
}

# Into cargo's own bin directory (~/.cargo/bin), not .tools/: the build takes minutes, and there it
# outlives this checkout, so fresh clones on the same machine (CI) reuse it.
tools() {
  has_cargo_deny && return 0
  _install_cargo_deny() {
    has_cargo_deny && return 0 # another script installed it while we waited for the lock
    log "cargo install cargo-deny@$CARGO_DENY_VERSION (builds for a few minutes, once per machine)"
    # Without the project's RUSTFLAGS (scripts/lib/build-env.sh: crt-static), which would break
    # cargo-deny's proc-macros in a build without --target.
    env -u RUSTFLAGS cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION"
  }
  with_tools_lock _install_cargo_deny || return 1
  has_cargo_deny || { log "cargo deny --version is not $CARGO_DENY_VERSION after the install"; return 1; }
}

# deny CONFIG LOG : cargo deny check licenses bans sources with CONFIG, output in LOG.
deny() {
  cargo deny "${GRAPH[@]}" --color never --config "$1" check licenses bans sources >"$2" 2>&1
}

cargo_deny() {
  local out=$WORK/deny.log
  if ! deny deny.toml "$out"; then
    cat "$out" >&2
    log "cargo deny check failed"
    return 1
  fi
  # Warnings (several versions of one crate) in one line each; the inclusion graphs are in the
  # full output of the same command.
  grep -E '^(warning|error)\[' "$out" >&2
  tail -n 1 "$out" >&2
}

# A stricter copy of deny.toml must fail, naming the crate or licence it now rejects.
policy_bites() {
  local strict=$WORK/strict.toml out=$WORK/strict.log
  # rustls is in the graph (the TLS stack), so banning it must fail the bans check.
  sed 's/^deny = \[/deny = [ { crate = "rustls", reason = "self-test" },/' deny.toml >"$strict"
  if deny "$strict" "$out" || ! grep -q 'error\[banned\]' "$out" || ! grep -q 'rustls' "$out"; then
    cat "$out" >&2
    log "banning rustls did not fail cargo deny: the bans are not applied"
    return 1
  fi
  # ring is ISC (and Apache-2.0): without ISC in `allow`, the licences check must fail.
  sed '/^ *"ISC",/d' deny.toml >"$strict"
  if deny "$strict" "$out" || ! grep -q 'error\[rejected\]' "$out" || ! grep -q 'ring' "$out"; then
    cat "$out" >&2
    log "dropping ISC did not fail cargo deny: the licence list is not applied"
    return 1
  fi
  log "a ban on rustls and a licence list without ISC both fail, as they should"
}

# cargo tree -i CRATE: the inverted tree of CRATE among normal and build dependencies (dev ones
# never reach the binary), on every target. Empty, or "did not match any packages", when absent.
tree_of() {
  cargo tree "${GRAPH[@]}" --target all -e normal,build -i "$1" 2>&1
}

no_openssl() {
  local crate out status=0
  if grep -E '^name = "(openssl|openssl-sys|native-tls)"$' Cargo.lock >&2; then
    log "Cargo.lock has OpenSSL crates"
    status=1
  fi
  for crate in "${OPENSSL_CRATES[@]}"; do
    out=$(tree_of "$crate")
    if [ -n "$out" ] && ! grep -q 'did not match any packages' <<<"$out"; then
      printf '%s\n' "$out" >&2
      log "$crate is in the dependency tree (above: who pulls it in)"
      status=1
    fi
  done
  # The control: the same query finds the TLS stack we do use, reached from this crate.
  out=$(tree_of rustls)
  if ! grep -q '^rustls v' <<<"$out" || ! grep -q 'comments v' <<<"$out"; then
    printf '%s\n' "$out" >&2
    log "cargo tree -i rustls does not show rustls under comments: the query is broken"
    status=1
  fi
  [ $status -eq 0 ] && log "no ${OPENSSL_CRATES[*]}; TLS is $(head -n 1 <<<"$out")"
  return $status
}

run() { stage "$@" || exit 1; }

run "tools" tools
run "cargo deny" cargo_deny
run "policy bites" policy_bites
run "no OpenSSL" no_openssl
