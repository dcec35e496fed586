#!/usr/bin/env bash
# Proves the Helm chart (charts/comments) and the ArgoCD app of apps (argocd/) with real tools, as
# far as a machine without a cluster can:
#   tools           installs what follows (pinned, idempotent, through scripts/lib/tools.sh)
#   lint            helm lint --strict, for each value file of charts/comments/ci/ and for argocd/;
#                   Chart.yaml's version is the crate's; the repository URL is named once
#   render          helm template for each ci/ value file x Kubernetes 1.28 and 1.33, and argocd/
#   kube_validate   kubernetes-validate --strict on the built-in objects, for that version
#   models          kubernetes-models validate() on every object (Prometheus Operator and Argo CD
#                   CRDs included), after checking it catches a broken object
#   behaviour       what the chart promises, on the rendered objects: SQLite = 1 replica, Recreate,
#                   PVC; PostgreSQL = rolling update with maxUnavailable 0, HPA, PDB, spread;
#                   probes, grace period, ServiceMonitor job, NetworkPolicy, checksum rollout
#   negative        values that must not render, each with its message
#   sources         files/rules.yaml and files/dashboard.json are embedded as they are, whatever
#                   valid content they hold; broken ones fail with a message
#   checkov_chart   checkov --framework helm, zero failed checks, for each ci/ value file
#   contract        the real binary run with the rendered container's env, ports and mounts:
#                   probes, ServiceMonitor scrape, NOTES, helm test script, shutdown (SQLite and
#                   PostgreSQL renders)
#   argocheck_tree  the app of apps rendered end to end from a git snapshot of this working tree
# Usage: scripts/test-chart.sh   (exit 1 if any stage fails; prints each stage's time)
# "check && check || complain" below means: complain when either check fails.
# shellcheck disable=SC2015
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
. scripts/lib/tools.sh

CHART=charts/comments
APPS=argocd
BINARY=$ROOT/target/x86_64-unknown-linux-gnu/release/comments
KUBE_VERSIONS=(1.28.0 1.33.0)
PLACEHOLDER_REPO=https://github.com/example/comments.git
OUT=$(mktemp -d /tmp/comments-chart-test.XXXXXX)
PG_DB=
cleanup() {
  [ -n "$PG_DB" ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1
  rm -rf "$OUT"
}
trap cleanup EXIT

tools() {
  ensure_helm || return 1
  pip_tool 'kubernetes-validate==1.37.0' 'checkov==3.3.30' 'argocheck==0.5.0' \
    'prometheus-client==0.26.0' 'pyyaml==6.0.3' || return 1
  npm_tool 'kubernetes-models@5.1.0' '@kubernetes-models/argo-cd@4.0.0' \
    '@kubernetes-models/prometheus-operator@6.0.0' 'yaml@2.9.1' || return 1
  [ -x "$BINARY" ] || { log "no binary at $BINARY: run scripts/build.sh"; return 1; }
  # kubernetes-validate ships schemas per Kubernetes minor; make sure the ones tested are there.
  local version
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n' >"$OUT/probe.yaml"
  for version in "${KUBE_VERSIONS[@]}"; do
    kubernetes-validate -k "$version" --strict --quiet "$OUT/probe.yaml" \
      || { log "kubernetes-validate has no schemas for Kubernetes $version"; return 1; }
  done
}

lint() {
  local values
  for values in "$CHART"/ci/*-values.yaml; do
    helm lint --strict --quiet "$CHART" -f "$values" || return 1
  done
  helm lint --strict --quiet "$APPS" || return 1
  # The chart ships with the binary: its version and appVersion are the crate's.
  local crate
  crate=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
  grep -qx "version: $crate" "$CHART/Chart.yaml" && grep -qx "appVersion: \"$crate\"" "$CHART/Chart.yaml" ||
    { log "$CHART/Chart.yaml version/appVersion differ from the crate's $crate"; return 1; }
  # The Git repository is named in one place: argocd/values.yaml.
  local named
  named=$(grep -rnF "$PLACEHOLDER_REPO" "$APPS")
  [ "$(wc -l <<<"$named")" -eq 1 ] && [[ $named == "$APPS/values.yaml:"*":repoURL: $PLACEHOLDER_REPO" ]] ||
    { log "the repository URL must appear once, as repoURL in $APPS/values.yaml:"; echo "$named"; return 1; }
  echo "chart $crate = crate $crate; repository URL named once: $named"
}

render() {
  local values version name
  for values in "$CHART"/ci/*-values.yaml; do
    name=$(basename "$values" -values.yaml)
    for version in "${KUBE_VERSIONS[@]}"; do
      helm template comments "$CHART" --namespace comments -f "$values" --kube-version "$version" \
        >"$OUT/$name-$version.yaml" || return 1
    done
  done
  # The app of apps with its root Application (bootstrap), as a user applies it.
  helm template comments-apps "$APPS" --namespace argocd --set bootstrap=true >"$OUT/argocd.yaml" || return 1
  # With the HPA on, ArgoCD must leave the Deployment's replicas to it.
  helm template comments-apps "$APPS" --namespace argocd \
    --set-json 'comments.values={"database":{"existingSecret":"comments-database"},"autoscaling":{"enabled":true}}' \
    >"$OUT/argocd-hpa.yaml" || return 1
  grep -q -- '- /spec/replicas' "$OUT/argocd-hpa.yaml" && ! grep -q -- '- /spec/replicas' "$OUT/argocd.yaml" ||
    { log "ignoreDifferences on /spec/replicas should be there exactly when the HPA is on"; return 1; }
  # The chart declares kubeVersion >=1.25: an older cluster is refused.
  if helm template comments "$CHART" --kube-version 1.24.0 >/dev/null 2>&1; then
    log "rendering for Kubernetes 1.24 should fail (kubeVersion >=1.25.0-0)"; return 1
  fi
  (cd "$OUT" && echo rendered: *.yaml)
}

kube_validate() {
  local file version report
  for file in "$OUT"/*-1.*.yaml; do
    version=${file##*-}; version=${version%.yaml}
    python "$ROOT/scripts/chart-test/builtin-objects.py" "$file" "$file.builtin" || return 1
    report=$(kubernetes-validate --strict -k "$version" "$file.builtin" 2>&1)
    local status=$?
    echo "$report" | grep -v '^INFO' || true
    echo "$(basename "$file"): $(grep -c ' passed for resource ' <<<"$report") objects pass for Kubernetes $version"
    # A WARN means an object it has no schema for: it would have passed without being checked.
    [ $status -eq 0 ] && ! echo "$report" | grep -q '^\(WARN\|ERROR\)' || return 1
  done
}

models() {
  local broken=$OUT/broken.yaml
  # First, that the validator catches mistakes at all: a port number where a name goes, a rule
  # group with no name, a sync retry limit that is not a number.
  cat >"$broken" <<'EOF'
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: broken}
spec: {selector: {}, endpoints: [{port: 9090}]}
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: broken}
spec: {groups: [{rules: [{record: x, expr: up}]}]}
---
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: broken}
spec: {project: p, destination: {}, source: {repoURL: x}, syncPolicy: {retry: {limit: ten}}}
EOF
  local caught
  caught=$(node scripts/chart-test/validate-models.mjs "$NODE_PREFIX/node_modules" "$broken" 2>&1)
  echo "$caught" | grep -q '^models: 0 passed, 3 failed$' || { echo "$caught"; log "the models missed a broken object"; return 1; }
  node scripts/chart-test/validate-models.mjs "$NODE_PREFIX/node_modules" "$OUT"/*-1.*.yaml "$OUT"/argocd*.yaml \
    | grep -v '^ok   .*(kubernetes-models)$'
}

# expect_failure WHAT MESSAGE HELM_ARGS... : helm template must fail and say MESSAGE.
expect_failure() {
  local what=$1 message=$2 output
  shift 2
  if output=$(helm template comments "$CHART" "$@" 2>&1); then
    log "rendered, but should not have: $what"; return 1
  fi
  if ! grep -qF -- "$message" <<<"$output"; then
    log "$what failed without saying \"$message\":"; echo "$output"; return 1
  fi
  echo "ok   $what: $(grep -F -- "$message" <<<"$output" | head -n 1)"
}

behaviour() {
  python scripts/chart-test/behaviour.py "$CHART"
}

negative() {
  expect_failure "SQLite with 3 replicas" \
    "replicaCount is 3, but the embedded SQLite store serves a single replica" --set replicaCount=3 &&
  expect_failure "SQLite with autoscaling" \
    "autoscaling.enabled needs PostgreSQL (database.existingSecret)" --set autoscaling.enabled=true &&
  expect_failure "a PDB that blocks every eviction" \
    "podDisruptionBudget.minAvailable (1) is not below the replica count (1)" --set podDisruptionBudget.enabled=true &&
  expect_failure "a string for replicaCount" \
    "at '/replicaCount': got string, want integer" --set-string replicaCount=three &&
  expect_failure "an unknown top-level key" \
    "additional properties 'replicas' not allowed" --set replicas=2 &&
  expect_failure "an unknown nested key (typo)" \
    "additional properties 'intervall' not allowed" --set serviceMonitor.intervall=10s &&
  expect_failure "an OTLP protocol the binary does not know" \
    "at '/otel/protocol'" --set otel.protocol=http/json &&
  CHART=$APPS expect_failure "a typo in the app of apps' values" \
    "additional properties 'chartVerison' not allowed" --set monitoring.chartVerison=1.0.0
}

checkov_chart() {
  local values summary
  for values in "$CHART"/ci/*-values.yaml; do
    # checkov runs `helm template` from PATH, and skips a chart that fails to render without
    # failing: the resource count proves it scanned something.
    summary=$(checkov --framework helm --skip-download --quiet --compact -o json -d "$CHART" \
      --config-file "$CHART/.checkov.yaml" --var-file "$values" |
      python -c 'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; s=d.get("summary",{}); print(s.get("resource_count",0), s.get("passed",0), s.get("failed",-1), s.get("skipped",0))') || return 1
    read -r resources passed failed skipped <<<"$summary"
    echo "$values: $resources resources, $passed passed, $failed failed, $skipped skipped (justified in place)"
    if [ "$resources" -eq 0 ] || [ "$failed" -ne 0 ]; then
      checkov --framework helm --skip-download --quiet --compact -d "$CHART" --config-file "$CHART/.checkov.yaml" --var-file "$values"
      return 1
    fi
  done
}

# notes VALUES_ARGS... : the NOTES helm prints after an install (client-side dry run, no cluster).
notes() {
  KUBECONFIG=/nonexistent helm install comments "$CHART" --namespace comments --dry-run=client "$@" |
    sed -n '/^NOTES:/,$p'
}

# The PrometheusRule and the dashboard ConfigMap embed files/rules.yaml and files/dashboard.json
# (owned by monitoring/) as they are, whatever valid content those hold: checked with the current
# files, and with samples full of what could trip an embedding (Prometheus {{ }} templates, quotes,
# block scalars, non-ASCII) in a copy of the chart; broken files fail with a clear message.
sources() {
  local on=(--set prometheusRule.enabled=true --set dashboard.enabled=true)
  helm template comments "$CHART" "${on[@]}" >"$OUT/sources.yaml" &&
    python scripts/chart-test/embedded-sources.py "$OUT/sources.yaml" "$CHART/files/rules.yaml" "$CHART/files/dashboard.json" || return 1
  local copy=$OUT/chart-copy
  cp -r "$CHART" "$copy" && cp scripts/chart-test/samples/rules.yaml scripts/chart-test/samples/dashboard.json "$copy/files/" || return 1
  helm template comments "$copy" "${on[@]}" >"$OUT/sources-samples.yaml" &&
    python scripts/chart-test/embedded-sources.py "$OUT/sources-samples.yaml" "$copy/files/rules.yaml" "$copy/files/dashboard.json" &&
    node scripts/chart-test/validate-models.mjs "$NODE_PREFIX/node_modules" "$OUT/sources-samples.yaml" | grep -v '^ok   .*(kubernetes-models)$' ||
    return 1
  local CHART=$copy # for expect_failure
  echo 'rules: [not a rule file]' >"$copy/files/rules.yaml"
  expect_failure "a rule file without groups" "files/rules.yaml must be a Prometheus rule file with a top-level \`groups:\` list" \
    --set prometheusRule.enabled=true || return 1
  echo '{"title": "unterminated' >"$copy/files/dashboard.json"
  expect_failure "a dashboard that is not JSON" "files/dashboard.json is not valid JSON" --set dashboard.enabled=true
}

contract() {
  # The default render (SQLite), with the ServiceMonitor that tells Prometheus where to scrape.
  helm template comments "$CHART" --namespace comments --set serviceMonitor.enabled=true >"$OUT/contract-sqlite.yaml" || return 1
  notes --set serviceMonitor.enabled=true >"$OUT/notes-sqlite.txt" || return 1
  python scripts/chart-test/contract.py --binary "$BINARY" --rendered "$OUT/contract-sqlite.yaml" \
    --notes "$OUT/notes-sqlite.txt" || return 1

  # The PostgreSQL render (HPA, admin token, traces...), on a database of its own.
  ensure_postgres || return 1
  PG_DB=comments_chart_test_$$
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $PG_DB" || return 1
  helm template comments "$CHART" --namespace comments -f "$CHART/ci/postgres-values.yaml" >"$OUT/contract-postgres.yaml" || return 1
  python scripts/chart-test/contract.py --binary "$BINARY" --rendered "$OUT/contract-postgres.yaml" \
    --secret "comments-database/url=postgres://postgres@127.0.0.1:5432/$PG_DB" \
    --secret "comments-admin/token=contract-test-token-$$" || return 1
}

argocheck_tree() {
  # argocheck clones repoURL like ArgoCD does, and `git clone /work/main` would only see what is
  # committed: snapshot the working tree (tracked and new files, minus .gitignore'd) into a
  # throwaway repository, and point the placeholder URL at it with git's insteadOf.
  local repo=$OUT/repo
  mkdir -p "$repo"
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do [ -e "$file" ] && printf '%s\0' "$file"; done |
    tar --null -T - -cf - | tar -C "$repo" -xf - || return 1
  git -C "$repo" init -q -b main &&
    git -C "$repo" add -A &&
    git -C "$repo" -c user.name=test -c user.email=test@example.com commit -q -m snapshot || return 1
  helm template comments-apps "$repo/$APPS" --namespace argocd --set bootstrap=true \
    --show-only templates/root.yaml >"$OUT/root.yaml" || return 1
  grep -q "repoURL: $PLACEHOLDER_REPO" "$OUT/root.yaml" || { log "root Application does not use $PLACEHOLDER_REPO"; return 1; }
  # A private helm home: argocheck's `helm repo add` must not touch the user's.
  GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0="url.file://$repo.insteadOf" GIT_CONFIG_VALUE_0="$PLACEHOLDER_REPO" \
    HELM_CONFIG_HOME=$OUT/helm/config HELM_CACHE_HOME=$OUT/helm/cache HELM_DATA_HOME=$OUT/helm/data \
    python scripts/chart-test/argocheck_tree.py "$OUT/root.yaml" "$OUT/argocheck" || return 1
  # What ArgoCD would apply for the comments Application (its valuesObject included): schema-valid.
  python scripts/chart-test/builtin-objects.py "$OUT/argocheck/comments.yaml" "$OUT/argocheck/comments.builtin" &&
    kubernetes-validate --strict --quiet -k "${KUBE_VERSIONS[-1]}" "$OUT/argocheck/comments.builtin" &&
    node scripts/chart-test/validate-models.mjs "$NODE_PREFIX/node_modules" \
      "$OUT/argocheck/comments.yaml" "$OUT/argocheck/comments-root.yaml" | grep -v '^ok   .*(kubernetes-models)$'
}

failed=0
for step in tools lint render kube_validate models behaviour negative sources checkov_chart contract argocheck_tree; do
  if ! stage "$step" "$step"; then
    failed=$((failed + 1))
    # Without tools or renders, the later stages cannot say anything useful.
    case $step in tools | render) break ;; esac
  fi
done

printf '\n%s\n' "stage times:"
printf '  %s\n' "${STAGE_TIMES[@]}"
echo "chart: $((${#STAGE_TIMES[@]} - failed)) passed, $failed failed"
[ $failed -eq 0 ]
