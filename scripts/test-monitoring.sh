#!/usr/bin/env bash
# Proves monitoring/: the alert rules and the Grafana dashboard (their single sources are
# charts/comments/files/rules.yaml and dashboard.json) and the kube-prometheus-stack values.
#   tools         installs what follows (pinned, idempotent, through scripts/lib/tools.sh)
#   rules         promtool check rules, and promtool unit tests that fire and do not fire each
#                 alert at the right moment (monitoring/tests/rules_*test.yaml)
#   sources       static contract checks of the dashboard and the rules (check_sources.py)
#   alertmanager  amtool check-config on the values' Alertmanager config, and where each
#                 severity is routed
#   dashboard     the dashboard type-checked against Grafana's published types (@grafana/schema,
#                 tsc --noEmit --strict), schemaVersion current
#   chart         the chart rendered as ArgoCD's comments Application renders it embeds both files
#                 as they are, and gives the job label and Deployment label the rules select
#   live          the real binary scraped by a real Prometheus loading rules.yaml, under a known
#                 mix of traffic: every dashboard query and recording rule has data, and the
#                 figures and alerts agree with what was sent (live_test.py)
# Usage: scripts/test-monitoring.sh   (COMMENTS_BIN=/path/to/comments tests another binary)
# Exit 1 if any stage fails; prints each stage's time.
# shellcheck disable=SC2317 # the stage functions are called by name, through `stage`
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
. scripts/lib/tools.sh

BINARY=${COMMENTS_BIN:-$ROOT/target/x86_64-unknown-linux-gnu/release/comments}
TESTS=monitoring/tests
PYTHON=$VENV/bin/python
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in monitoring/tests
WORK=

cleanup() {
  [ -n "$WORK" ] && rm -rf "$WORK"
  log "stage times:"
  printf '  %s\n' "${STAGE_TIMES[@]}" >&2
}
trap cleanup EXIT

# Debian starts a package's service on install wherever services can start. This test runs its
# own Prometheus on a free port: stop and disable those (by their service names only), so none
# is left listening on 9090 (prometheus) or 9093 (alertmanager).
stop_debian_services() {
  local svc
  for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
    if [ -d /run/systemd/system ] && systemctl is-enabled --quiet "$svc" 2>/dev/null; then
      log "disabling the $svc service the package started"
      systemctl disable --now "$svc" >/dev/null 2>&1
    elif [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" status >/dev/null 2>&1; then
      log "stopping the $svc service the package started"
      "/etc/init.d/$svc" stop >/dev/null 2>&1
      update-rc.d "$svc" disable >/dev/null 2>&1
    fi
  done
  return 0
}

tools() {
  # prometheus: the server and promtool; prometheus-alertmanager: amtool.
  apt_install prometheus prometheus-alertmanager || return 1
  stop_debian_services
  pip_tool 'pyyaml==6.0.3' || return 1
  npm_tool 'typescript@5.9.3' '@grafana/schema@13.2.3' \
    '@prometheus-io/lezer-promql@0.315.0' '@lezer/lr@1.4.12' '@lezer/highlight@1.2.5' || return 1
  ensure_helm || return 1
  if [ ! -x "$BINARY" ]; then
    log "no binary at $BINARY: building it"
    scripts/build.sh >/dev/null || return 1
  fi
  log "$(prometheus --version 2>&1 | head -n 1)"
}

rules() {
  promtool check rules charts/comments/files/rules.yaml || return 1
  promtool test rules "$TESTS/rules_test.yaml" "$TESTS/rules_long_test.yaml"
}

sources() {
  "$PYTHON" "$TESTS/check_sources.py"
}

# The Alertmanager config inside monitoring/kube-prometheus-stack/values.yaml: valid, and each
# severity reaches the receiver the README promises.
alertmanager() {
  local config=$WORK/alertmanager.yaml
  "$PYTHON" -c 'import sys, yaml
yaml.safe_dump(yaml.safe_load(open(sys.argv[1]))["alertmanager"]["config"], open(sys.argv[2], "w"))' \
    monitoring/kube-prometheus-stack/values.yaml "$config" || return 1
  amtool check-config "$config" >/dev/null || { amtool check-config "$config"; return 1; }
  local route receiver labels failed=0
  for route in "pager severity=page alertname=CommentsAvailabilityBudgetBurn" "pager severity=critical" \
    "tickets severity=ticket" "chat severity=warning alertname=CommentsStorageErrors" \
    "null severity=info" "null alertname=Watchdog severity=none"; do
    receiver=${route%% *}
    labels=${route#* }
    # shellcheck disable=SC2086 # labels are separate arguments
    if amtool config routes test --config.file="$config" --verify.receivers="$receiver" $labels >/dev/null 2>&1; then
      log "routes $labels -> $receiver"
    else
      log "FAILED: $labels should route to $receiver"
      failed=1
    fi
  done
  return "$failed"
}

dashboard() {
  local dir
  dir=$(mktemp -d "$NODE_PREFIX/dashboard-check.XXXXXX") || return 1
  node "$TESTS/dashboard_types.mjs" charts/comments/files/dashboard.json "$dir"
  local status=$?
  rm -rf "$dir"
  return "$status"
}

chart() {
  "$PYTHON" "$TESTS/chart_contract.py" "$TOOLS_DIR/bin/helm"
}

live() {
  "$PYTHON" "$TESTS/live_test.py" "$BINARY"
}

WORK=$(mktemp -d /tmp/comments-monitoring-test.XXXXXX) || exit 1
failed=0
stage tools tools || exit 1
for name in rules sources alertmanager dashboard chart live; do
  stage "$name" "$name" || failed=1
done
if [ $failed -eq 0 ]; then log "monitoring tests passed"; else log "monitoring tests FAILED"; fi
exit $failed
