#!/usr/bin/env bash
# The delivery pipeline, tested for real without AWS: buildspec.yml's own commands run phase by
# phase (scripts/buildspec-test/run-buildspec.py imitates CodeBuild) in clones of a local bare
# repository standing in for GitHub, with stand-in `aws` and `docker` that record their arguments
# (scripts/buildspec-test/bin). Git, the bump script and helm are the real ones.
#
#   scripts/test-buildspec.sh        (KEEP_WORK=1 keeps the clones and logs in /tmp for a look)
#
# Checks: the image is built and pushed as <repository>:<short commit>; the chart on the remote then
# carries that tag (one line changed, still renders with helm) in a commit marked automated; the
# build that this commit triggers does nothing and succeeds; a bump rebases onto a concurrent push;
# a refused git push, a failed docker push or docker build, and a missing tag line each fail the
# build loudly and leave the remote as it was. First, the bump script alone on a tricky values file.
set -euo pipefail
shopt -s inherit_errexit # failures inside $(...) count too
cd "$(dirname "$0")/.."
. scripts/lib/tools.sh

HERE=$PWD/scripts/buildspec-test
REPOSITORY=123456789012.dkr.ecr.eu-west-1.amazonaws.com/comments
WORK=$(mktemp -d /tmp/comments-buildspec.XXXXXX)
ORIGIN=$WORK/origin.git
DEV=(git -c user.name=dev -c user.email=dev@example.com)

finish() {
  local status=$?
  if [ -n "${KEEP_WORK:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  [ ${#STAGE_TIMES[@]} -eq 0 ] || printf '%s\n' "${STAGE_TIMES[@]}" >&2
  if [ $status -eq 0 ]; then log "buildspec test passed"; else log "buildspec test FAILED"; fi
}
trap finish EXIT

fail() { log "FAILED: $*"; exit 1; }

tools() {
  command -v git >/dev/null || apt_install git
  pip_tool 'PyYAML==6.0.3'
  ensure_helm
  [ -f charts/comments/Chart.yaml ] || fail "no chart at charts/comments"
}

# --- the bump script alone -------------------------------------------------------------------

# A values file with every trap: comments everywhere, other `tag:` keys at other places.
tricky_values() {
  cat <<'EOF'
# The chart's values.
image:   # what to run
  # Where CI pushes.
  repository: registry.example.com/comments

  # Bumped by CI.
  tag: "0.1.0"  # keep this comment
  pullPolicy: IfNotPresent
sidecar:
  image:
    tag: "1.0"
initImage:
  tag: latest
podAnnotations: {tag: keep}
EOF
}

# new_repo DIR : a git repository with tricky values at charts/comments/values.yaml, and a bare
# origin it was pushed to.
new_repo() {
  git init --quiet -b main "$1"
  mkdir -p "$1/charts/comments"
  tricky_values >"$1/charts/comments/values.yaml"
  "${DEV[@]}" -C "$1" add -A
  "${DEV[@]}" -C "$1" commit --quiet -m "chart"
  git init --quiet --bare "$1.git"
  git -C "$1" remote add origin "$1.git"
  git -C "$1" push --quiet origin main
}

bump_script() {
  local repo=$WORK/bump/repo out
  new_repo "$repo"
  out=$(cd "$repo" && "$ROOT/scripts/bump-image-tag.sh" 1234567 2>&1) || fail "bump-image-tag.sh 1234567: $out"
  # Exactly the tag line changed, value quoted (1234567 unquoted would be a number), comment kept.
  diff <(tricky_values | sed 's|^  tag: "0.1.0"  # keep this comment$|  tag: "1234567"  # keep this comment|') \
    <(git -C "$repo.git" show main:charts/comments/values.yaml) || fail "the bump changed more than the tag line"
  [ "$(git -C "$repo.git" log -1 --format=%s main)" = "ci: bump image tag to 1234567 [skip ci]" ] || fail "bump message"
  git -C "$repo.git" show main:charts/comments/values.yaml | python3 -c '
import sys, yaml
v = yaml.safe_load(sys.stdin)
assert v["image"]["tag"] == "1234567", v["image"]
assert v["sidecar"]["image"]["tag"] == "1.0" and v["initImage"]["tag"] == "latest", v
' || fail "values after the bump"

  # The same tag again: nothing to commit, nothing pushed.
  out=$(cd "$repo" && "$ROOT/scripts/bump-image-tag.sh" 1234567 2>&1) || fail "bumping to the same tag: $out"
  grep -q 'nothing to commit' <<<"$out" || fail "bumping to the same tag said: $out"
  [ "$(git -C "$repo.git" rev-list --count main)" = 2 ] || fail "bumping to the same tag made a commit"

  # No tag line directly under image: fails, naming the problem.
  sed -i '/^  tag: /d' "$repo/charts/comments/values.yaml"
  out=$(cd "$repo" && "$ROOT/scripts/bump-image-tag.sh" 7654321 2>&1) && fail "no tag line, yet the bump succeeded"
  grep -q 'no single .tag:. line' <<<"$out" || fail "no tag line: $out"
  out=$(cd "$repo" && "$ROOT/scripts/bump-image-tag.sh" 'bad tag' 2>&1) && fail "an invalid tag was accepted"
  grep -q 'not a valid image tag' <<<"$out" || fail "invalid tag: $out"
}

# --- the buildspec ---------------------------------------------------------------------------

# The bare origin holds the working tree as it is now (tracked and new files, not ignored ones).
seed_origin() {
  local seed=$WORK/seed
  mkdir -p "$seed"
  git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from - --ignore-failed-read -cf - 2>/dev/null | tar -x -C "$seed"
  git -C "$seed" init --quiet -b main
  "${DEV[@]}" -C "$seed" add -A
  "${DEV[@]}" -C "$seed" commit --quiet -m "the working tree"
  git clone --quiet --bare "$seed" "$ORIGIN"
  git clone --quiet "$ORIGIN" "$WORK/dev"
}

# dev_commit MESSAGE [COMMAND] : a developer's commit on origin/main (COMMAND edits the tree; by
# default a line in a notes file), printed as its full hash.
dev_commit() {
  git -C "$WORK/dev" pull --quiet --rebase origin main
  (cd "$WORK/dev" && eval "${2:-echo \"\$1\" >>NOTES}") >/dev/null
  "${DEV[@]}" -C "$WORK/dev" add -A
  "${DEV[@]}" -C "$WORK/dev" commit --quiet -m "$1"
  git -C "$WORK/dev" push --quiet origin HEAD:main
  git -C "$WORK/dev" rev-parse HEAD
}

remote_main() { git -C "$ORIGIN" rev-parse main; }

# run_build NAME COMMIT [VAR=VALUE...] : a CodeBuild run for COMMIT in $WORK/NAME: a shallow clone
# of origin at that commit (detached, as CodeBuild checks out), the stand-ins first on PATH.
# Leaves the log in $WORK/NAME/build.log, the stand-ins' calls in $WORK/NAME/calls.log, and
# the exit status in BUILD_STATUS.
run_build() {
  local name=$1 commit=$2 dir=$WORK/$1
  shift 2
  mkdir -p "$dir/home"
  git clone --quiet --depth 1 --branch main "file://$ORIGIN" "$dir/src"
  git -C "$dir/src" checkout --quiet --detach "$commit"
  touch "$dir/calls.log"
  BUILD_STATUS=0
  (
    cd "$dir/src"
    env -i PATH="$HERE/bin:$PATH" HOME="$dir/home" LANG=C.UTF-8 \
      CODEBUILD_RESOLVED_SOURCE_VERSION="$commit" CODEBUILD_BUILD_ID="comments:$name" \
      CODEBUILD_WEBHOOK_HEAD_REF=refs/heads/main CODEBUILD_WEBHOOK_TRIGGER=branch/main \
      AWS_REGION=eu-west-1 AWS_DEFAULT_REGION=eu-west-1 STANDIN_LOG="$dir/calls.log" "$@" \
      timeout 300 python3 "$HERE/run-buildspec.py" buildspec.yml \
      --secret IMAGE_REPOSITORY="$REPOSITORY" --secret GIT_PUSH_TOKEN=stand-in-token
  ) >"$dir/build.log" 2>&1 || BUILD_STATUS=$?
  log "build $name of ${commit:0:7}: exit $BUILD_STATUS"
}

# expect NAME PATTERN WHAT : build NAME's log shows PATTERN (grep -E), or fail showing the log.
expect() {
  grep -qE -- "$2" "$WORK/$1/build.log" || { cat "$WORK/$1/build.log" >&2; fail "build $1: $3"; }
}
# called NAME LINE : the stand-ins were called with exactly LINE.
called() {
  grep -qxF -- "$2" "$WORK/$1/calls.log" || { cat "$WORK/$1/calls.log" >&2; fail "build $1: no call '$2'"; }
}

# render REV DIR : helm template of the chart as committed at REV on origin.
render() {
  mkdir -p "$2"
  git -C "$ORIGIN" archive "$1" charts/comments | tar -x -C "$2"
  helm template comments "$2/charts/comments" --namespace comments >"$2/rendered.yaml" 2>"$2/helm.err" \
    || fail "helm template at ${1:0:7}: $(cat "$2/helm.err")"
}

build_pushes_and_bumps() {
  seed_origin
  SOURCE=$(dev_commit "feat: something to deploy")
  SHORT=${SOURCE:0:7}
  run_build first "$SOURCE"
  [ $BUILD_STATUS -eq 0 ] || { cat "$WORK/first/build.log" >&2; fail "the build failed"; }

  # The image: logged in with the role's password, tested, built with the commit, pushed.
  called first "aws ecr get-login-password --region eu-west-1"
  called first "docker login --username AWS --password-stdin ${REPOSITORY%%/*}"
  grep -qE '^docker run .* rust:1\.95\.0-bookworm cargo test --locked --release$' "$WORK/first/calls.log" || fail "no cargo test"
  # The storage fault tests mount a tmpfs: without SYS_ADMIN they fail in the container.
  grep -E '^docker run .* cargo test ' "$WORK/first/calls.log" | grep -q -- '--cap-add SYS_ADMIN' ||
    fail "the tests' container lacks --cap-add SYS_ADMIN (the fault tests mount a tmpfs)"
  called first "docker build --build-arg GIT_COMMIT=$SOURCE --build-arg VERSION=0.1.0 --tag $REPOSITORY:$SHORT ."
  called first "docker push $REPOSITORY:$SHORT"
  expect first "Exported variable IMAGE_TAG=$SHORT$" "IMAGE_TAG not exported"

  # The remote: one automated commit on top of the source, changing the tag line only.
  local bump
  bump=$(remote_main)
  [ "$(git -C "$ORIGIN" rev-parse "$bump^")" = "$SOURCE" ] || fail "the bump is not on top of the source commit"
  [ "$(git -C "$ORIGIN" log -1 --format=%B "$bump")" = "ci: bump image tag to $SHORT [skip ci]" ] || fail "bump message"
  [ "$(git -C "$ORIGIN" diff --numstat "$SOURCE" "$bump")" = "$(printf '1\t1\tcharts/comments/values.yaml')" ] \
    || fail "the bump changed more than one line: $(git -C "$ORIGIN" diff "$SOURCE" "$bump")"
  git -C "$ORIGIN" diff -U0 "$SOURCE" "$bump" | grep -qxE "\+ +tag: \"$SHORT\"" || fail "the changed line is not the tag"
  git -C "$ORIGIN" show "$bump:charts/comments/values.yaml" | python3 -c '
import sys, yaml
assert yaml.safe_load(sys.stdin)["image"]["tag"] == sys.argv[1]' "$SHORT" || fail "image.tag is not \"$SHORT\""

  # Helm: still renders (values.schema.json included), and only the image reference changed.
  render "$SOURCE" "$WORK/render-before"
  render "$bump" "$WORK/render-after"
  local old
  old=$(git -C "$ORIGIN" show "$SOURCE:charts/comments/values.yaml" | python3 -c '
import sys, yaml
print(yaml.safe_load(sys.stdin)["image"]["tag"])')
  grep -qE "image: \"?[^\"]+:$SHORT\"?$" "$WORK/render-after/rendered.yaml" || fail "the rendered chart does not run :$SHORT"
  sed "s/$SHORT/$old/g" "$WORK/render-after/rendered.yaml" | diff "$WORK/render-before/rendered.yaml" - >&2 \
    || fail "the bump changed more of the rendered chart than the image tag"

  # The push token: from the environment through the credential helper, never on disk.
  ! grep -rq stand-in-token "$WORK/first/home" "$WORK/first/src/.git" || fail "the git token was written to disk"
  printf 'protocol=https\nhost=github.com\n\n' | HOME=$WORK/first/home GIT_PUSH_TOKEN=stand-in-token git credential fill \
    | grep -qx 'password=stand-in-token' || fail "the credential helper does not hand git the token"
  BUMP=$bump
}

bump_commit_builds_nothing() {
  run_build second "$BUMP"
  [ $BUILD_STATUS -eq 0 ] || { cat "$WORK/second/build.log" >&2; fail "the build of the bump commit failed"; }
  expect second "commit ${BUMP:0:7} is marked \[skip ci\].*nothing to build" "no word on why it skipped"
  [ ! -s "$WORK/second/calls.log" ] || fail "the bump commit's build called: $(cat "$WORK/second/calls.log")"
  [ "$(remote_main)" = "$BUMP" ] || fail "the bump commit's build changed the remote"
}

bump_rebases_onto_a_concurrent_push() {
  local source concurrent head
  source=$(dev_commit "feat: another change")
  # While the image is pushed, a developer pushes to main.
  run_build race "$source" STANDIN_DOCKER_PUSH_HOOK="cd '$WORK/dev' && git pull --quiet --rebase origin main && echo race >>NOTES && git -c user.name=dev -c user.email=dev@example.com commit --quiet -am 'docs: meanwhile' && git push --quiet origin HEAD:main"
  [ $BUILD_STATUS -eq 0 ] || { cat "$WORK/race/build.log" >&2; fail "the build with a concurrent push failed"; }
  expect race "moved meanwhile.*rebasing" "no retry after the rejected push"
  head=$(remote_main)
  concurrent=$(git -C "$ORIGIN" rev-parse "$head^")
  [ "$(git -C "$ORIGIN" log -1 --format=%s "$concurrent")" = "docs: meanwhile" ] || fail "the bump is not on top of the concurrent commit"
  [ "$(git -C "$ORIGIN" log -1 --format=%s "$head")" = "ci: bump image tag to ${source:0:7} [skip ci]" ] || fail "race: bump message"
  [ "$(git -C "$ORIGIN" show "$head:charts/comments/values.yaml" | grep -cx "  tag: \"${source:0:7}\"")" = 1 ] || fail "race: tag"
}

# failed_build NAME WHAT PATTERN EDIT [VAR=VALUE...] : a build of a fresh commit (EDIT changes the
# tree; "" for a plain change) that must fail, saying PATTERN, and leave the remote where it was.
failed_build() {
  local name=$1 what=$2 pattern=$3 edit=$4 source
  shift 4
  source=$(dev_commit "feat: $what" "$edit")
  run_build "$name" "$source" "$@"
  [ $BUILD_STATUS -ne 0 ] || fail "build $name ($what) succeeded"
  expect "$name" "$pattern" "$what: no clear message"
  [ "$(remote_main)" = "$source" ] || fail "build $name ($what) changed the remote"
}

failures_leave_the_remote_untouched() {
  # The remote refuses the bump (a protected branch, a revoked token): armed while the image is
  # pushed, after the source commit went in.
  local hook=$ORIGIN/hooks/pre-receive
  failed_build refused "a refused git push" "refused the push" "" \
    STANDIN_DOCKER_PUSH_HOOK="printf '#!/bin/sh\necho main is protected >&2\nexit 1\n' >'$hook' && chmod +x '$hook'"
  rm -f "$hook"

  failed_build push-fails "a failed docker push" "docker push .* failed: chart not bumped" "" STANDIN_DOCKER_FAIL=push
  failed_build build-fails "a failed docker build" "the build failed: .* not pushed, chart not bumped" "" \
    STANDIN_DOCKER_FAIL=build
  ! grep -q '^docker push' "$WORK/build-fails/calls.log" || fail "a failed docker build was followed by a push"

  failed_build no-tag "a values.yaml without a tag line" 'no single .tag:. line' \
    "sed -i '/^  tag: /d' charts/comments/values.yaml"
}

stage "buildspec: tools" tools
stage "buildspec: bump script" bump_script
stage "buildspec: build, push, bump" build_pushes_and_bumps
stage "buildspec: bump commit skips" bump_commit_builds_nothing
stage "buildspec: concurrent push" bump_rebases_onto_a_concurrent_push
stage "buildspec: failures" failures_leave_the_remote_untouched
