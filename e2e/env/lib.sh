# Shared by up, down, cluster-up and cluster-down. Everything they print for
# people goes to stderr; stdout carries only `export` lines for `eval`.

set -euo pipefail

ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$ENV_DIR/versions.sh"

# Slow builds live outside the clone so a second clone (CI) reuses them.
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
# Running services keep their state, logs and PID files here.
KILN_RUN=${KILN_RUN:-$KILN_CACHE/run}
KILN_TOOLS=$KILN_CACHE/tools/bin

export GOMODCACHE=${GOMODCACHE:-$KILN_CACHE/go/mod}
export GOCACHE=${GOCACHE:-$KILN_CACHE/go/build}
export GOFLAGS=-buildvcs=false
export GOTOOLCHAIN=local

log() { printf '[kiln-env] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: the tests run runc and buildkitd as root"

mkdir -p "$KILN_RUN" "$KILN_TOOLS"

# pid_alive NAME: true when the process recorded in $KILN_RUN/NAME.pid runs.
pid_alive() {
    local f=$KILN_RUN/$1.pid
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start_daemon NAME CMD...: start CMD in the background with its output in
# $KILN_RUN/NAME.log and its PID in $KILN_RUN/NAME.pid.
start_daemon() {
    local name=$1
    shift
    setsid "$@" >"$KILN_RUN/$name.log" 2>&1 </dev/null &
    echo $! >"$KILN_RUN/$name.pid"
}

# stop_daemon NAME: SIGTERM, up to 10 s of grace, then SIGKILL.
stop_daemon() {
    local name=$1 f=$KILN_RUN/$1.pid pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for i in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop in 10 s; killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$f"
}

# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for i in $(seq $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what did not come up within ${secs}s (logs in $KILN_RUN)"
}

# The htpasswd registry's state; `up` makes the password.
AUTH_DIR=$KILN_RUN/auth-registry
AUTH_USER=kiln

# Pushes only what the registry does not have yet.
push_image() { # SRC DEST [skopeo args...]
    local src=$1 dest=$2
    shift 2
    local repo=${dest#*/} host=${dest%%/*}
    local name=${repo%:*} tag=${repo##*:}
    local auth=()
    [ "$host" = "127.0.0.1:$KILN_AUTH_REGISTRY_PORT" ] && auth=(-u "$AUTH_USER:$(cat "$AUTH_DIR/password")")
    if curl -sf -o /dev/null "${auth[@]}" \
        -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
        "http://$host/v2/$name/manifests/$tag"; then
        return 0
    fi
    log "pushing $dest"
    skopeo copy -q --dest-tls-verify=false "$@" "$src" "docker://$dest" >&2
}
