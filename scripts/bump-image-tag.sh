#!/usr/bin/env bash
# Points the chart at a newly pushed image, for ArgoCD to deploy: sets `image.tag` in
# charts/comments/values.yaml to TAG, commits that one file with a message that marks the commit as
# automated (so it starts no new build), and pushes it to the branch ArgoCD tracks. buildspec.yml
# calls it after `docker push` succeeded, and only then.
#
#   scripts/bump-image-tag.sh TAG
#
# Environment:
#   GIT_BRANCH      branch to push to (default main); the checkout may be a detached HEAD, as in
#                   CodeBuild
#   GIT_REMOTE      remote to push to (default origin)
#   VALUES_FILE     values file, relative to the repository root (default charts/comments/values.yaml)
#   PUSH_ATTEMPTS   pushes to try when the branch moved meanwhile (default 5)
#   GIT_AUTHOR_NAME, GIT_AUTHOR_EMAIL, GIT_COMMITTER_*: who the commit is from (default comments-ci)
#
# Only the `tag:` line of the top-level `image:` block changes; comments, order and formatting of
# the file stay as they are. Fails, saying why, when that line is missing or the push is refused.
set -euo pipefail

die() { echo "bump-image-tag: error: $*" >&2; exit 1; }
say() { echo "bump-image-tag: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 TAG"
TAG=$1
# A Docker tag: 1 to 128 of [A-Za-z0-9_.-], not starting with . or -.
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "'$TAG' is not a valid image tag"

GIT_BRANCH=${GIT_BRANCH:-main}
GIT_REMOTE=${GIT_REMOTE:-origin}
VALUES_FILE=${VALUES_FILE:-charts/comments/values.yaml}
PUSH_ATTEMPTS=${PUSH_ATTEMPTS:-5}
export GIT_AUTHOR_NAME=${GIT_AUTHOR_NAME:-comments-ci}
export GIT_AUTHOR_EMAIL=${GIT_AUTHOR_EMAIL:-comments-ci@users.noreply.example.com}
export GIT_COMMITTER_NAME=${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}
export GIT_COMMITTER_EMAIL=${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}
# The marker the buildspec and the webhook filter look for (see docs/delivery.md).
MESSAGE="ci: bump image tag to $TAG [skip ci]"

cd "$(git rev-parse --show-toplevel)" || die "not inside a git repository"
[ -f "$VALUES_FILE" ] || die "no $VALUES_FILE in $(pwd)"

# set_tag FILE : rewrites the value of the `tag:` key that sits directly in the top-level
# `image:` block, quoted (a short hash such as 1234567 or 12e4567 would otherwise read as a number),
# keeping the indentation and any trailing comment. Exits 3 unless exactly one such line exists.
set_tag() {
  local file=$1 tmp
  tmp=$(mktemp "$file.XXXXXX")
  if awk -v tag="$TAG" '
      # A top-level key opens or closes the block; comments and blank lines do neither.
      /^[^[:space:]#]/ { in_image = ($0 ~ /^image:[[:space:]]*(#.*)?$/); child_indent = "" }
      in_image && /^[[:space:]]+[^[:space:]#]/ {
        match($0, /^[[:space:]]+/)
        indent = substr($0, 1, RLENGTH)
        if (child_indent == "") child_indent = indent
        # Only a direct child of image: (a deeper "tag:" belongs to something else).
        if (indent == child_indent && match($0, /^[[:space:]]+tag:[[:space:]]*/)) {
          key = substr($0, 1, RLENGTH)
          rest = substr($0, RLENGTH + 1)
          comment = ""
          if (match(rest, /[[:space:]]+#.*$/)) comment = substr(rest, RSTART)
          $0 = key "\"" tag "\"" comment
          found++
        }
      }
      { print }
      END { exit found == 1 ? 0 : 3 }
    ' "$file" >"$tmp"; then
    cat "$tmp" >"$file" # keeps the file's mode
    rm -f "$tmp"
  else
    rm -f "$tmp"
    die "$file has no single \`tag:\` line directly under the top-level \`image:\` block; not bumping"
  fi
}

set_tag "$VALUES_FILE"
if git diff --quiet -- "$VALUES_FILE"; then
  say "$VALUES_FILE already has image.tag \"$TAG\": nothing to commit"
  exit 0
fi
git commit --quiet -m "$MESSAGE" -- "$VALUES_FILE"
say "committed '$MESSAGE' ($(git rev-parse --short HEAD))"

# Push; when the branch moved since the checkout (a person pushed meanwhile), replay the bump on
# top of it and try again. A conflict means values.yaml changed there too (say, a newer build
# already bumped the tag): stop rather than overwrite it.
attempt=1
while :; do
  if push_output=$(git push "$GIT_REMOTE" "HEAD:refs/heads/$GIT_BRANCH" 2>&1); then
    say "pushed image.tag \"$TAG\" to $GIT_REMOTE/$GIT_BRANCH ($(git rev-parse --short HEAD))"
    exit 0
  fi
  if ! grep -qE 'non-fast-forward|fetch first|\[rejected\]' <<<"$push_output"; then
    echo "$push_output" >&2
    die "$GIT_REMOTE refused the push to $GIT_BRANCH (see above); the chart still points at the old tag"
  fi
  [ "$attempt" -lt "$PUSH_ATTEMPTS" ] \
    || die "$GIT_BRANCH kept moving: gave up after $PUSH_ATTEMPTS pushes; the chart still points at the old tag"
  say "$GIT_REMOTE/$GIT_BRANCH moved meanwhile (push $attempt of $PUSH_ATTEMPTS rejected): rebasing onto it"
  if ! git pull --quiet --rebase "$GIT_REMOTE" "$GIT_BRANCH"; then
    git rebase --abort 2>/dev/null || true
    die "cannot rebase the bump onto $GIT_REMOTE/$GIT_BRANCH: $VALUES_FILE changed there too; not overwriting it"
  fi
  attempt=$((attempt + 1))
done
