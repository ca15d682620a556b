# Shared by the scripts of this folder. Everything they print for
# people goes to stderr; stdout carries only `export` lines for `eval`.

set -euo pipefail

ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
. "$ENV_DIR/versions.sh"

# The cluster's Service range; the `kubernetes` Service gets its first address.
SERVICE_CIDR=10.96.0.0/16

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

# install_debs PACKAGE...: apt-get install the packages that are not installed yet.
install_debs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# go_tool NAME KEY BUILD-FUNCTION [BINARY...]: run BUILD-FUNCTION DEST BINARY...
# once per KEY, then link every binary it put in DEST into $KILN_TOOLS. When
# BINARYs are named and a finished DEST lacks one (a cache from before it was
# added, or a tool only some scripts need), the build runs again on DEST as it
# is and only adds what is missing.
go_tool() {
    local name=$1 key=$2 build=$3
    shift 3
    local dest=$KILN_CACHE/tools/$name-$key bin missing=()
    for bin in "$@"; do
        [ -x "$dest/$bin" ] || missing+=("$bin")
    done
    if [ ! -f "$dest/.done" ] || [ ${#missing[@]} -gt 0 ]; then
        if [ -f "$dest/.done" ]; then
            log "adding ${missing[*]} to $dest"
        else
            log "building $name ($key) into $dest; the first time takes minutes"
            rm -rf "$dest"
            mkdir -p "$dest"
        fi
        local start=$SECONDS
        "$build" "$dest" "$@" >&2 || die "building $name failed"
        touch "$dest/.done"
        log "built $name in $((SECONDS - start))s"
    fi
    for bin in "$dest"/*; do
        ln -sfn "$bin" "$KILN_TOOLS/$(basename "$bin")"
    done
}

# A wrapper module's cache key: the pinned version plus its go.mod and go.sum.
module_key() {
    echo "$1-$(cat "$ENV_DIR/go/$2/go.mod" "$ENV_DIR/go/$2/go.sum" | sha256sum | cut -c1-12)"
}

# build_kubernetes DEST CMD...: builds the commands of k8s.io/kubernetes/cmd/
# that DEST does not have yet; each lands under its name only once complete,
# so an interrupted build is not mistaken for a done one.
build_kubernetes() {
    local dest=$1 v=${KUBERNETES_VERSION#v} cmd
    shift
    local flags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION
        -X k8s.io/component-base/version.gitMajor=${v%%.*}
        -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2)
        -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
    for cmd in "$@"; do
        [ -x "$dest/$cmd" ] && continue
        (cd "$ENV_DIR/go/kubernetes" &&
            go build -trimpath -ldflags "$flags" -o "$dest/.$cmd.new" "k8s.io/kubernetes/cmd/$cmd" &&
            mv "$dest/.$cmd.new" "$dest/$cmd") || return 1
    done
}

# kubernetes_tools CMD...: the Kubernetes commands, built from the wrapper
# module in e2e/env/go/kubernetes into one cache directory keyed by it.
kubernetes_tools() {
    command -v go >/dev/null || die "Go is not installed; the Go tools are built from the Go module proxy"
    go_tool kubernetes "$(module_key "$KUBERNETES_VERSION" kubernetes)" build_kubernetes "$@"
}

# The machine's own address, where pods reach the host (the API server, the
# kubelet): the IPv4 address of the interface of the default route (eth0 on
# these machines). KILN_NODE_IP overrides it. Never loopback.
node_ip() {
    if [ -n "${KILN_NODE_IP:-}" ]; then
        echo "$KILN_NODE_IP"
        return 0
    fi
    local dev ip
    dev=$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}')
    [ -n "$dev" ] || dev=eth0
    ip=$(ip -4 -o addr show dev "$dev" scope global 2>/dev/null | awk '{print $4; exit}')
    ip=${ip%/*}
    [ -n "$ip" ] || die "no IPv4 address on $dev (the default route's interface); set KILN_NODE_IP"
    echo "$ip"
}

# ------------------------------------------------ cluster credentials ---

# cert NAME SUBJECT [SAN]: a key and a certificate signed by the cluster CA,
# in $PKI (which cluster-up makes; its callers set PKI).
cert() {
    local name=$1 subj=$2 san=${3:-}
    [ -s "$PKI/$name.crt" ] && return 0
    openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
    openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
    local ext=$PKI/$name.ext
    if [ -n "$san" ]; then
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$ext"
    else
        printf 'extendedKeyUsage=clientAuth\n' >"$ext"
    fi
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$ext"
}

# kubeconfig FILE CERT-NAME: a kubeconfig for the API server on loopback with
# the client certificate CERT-NAME of $PKI.
kubeconfig() {
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kiln-test
  cluster:
    server: https://127.0.0.1:$KILN_APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: kiln-test
  context:
    cluster: kiln-test
    user: $2
current-context: kiln-test
EOF
}

# ---------------------------------------------------------- the real node ---
# Shared by node-up and node-down.

# Configuration, certificates, logs, containerd's content (kept across runs).
NODE_DIR=$KILN_RUN/node
# The kubelet's root dir (it bind-mounts it onto itself) and the pods' logs.
KUBELET_ROOT=$NODE_DIR/kubelet
POD_LOGS=$NODE_DIR/pod-logs
# containerd's state and socket: tmpfs, and short paths for unix sockets.
NODE_RUN=/run/kiln-node
CONTAINERD_SOCK=$NODE_RUN/containerd/containerd.sock
# The pods' network: the CNI bridge and its host-local range.
CNI_BRIDGE=kiln-cni0
POD_CIDR=10.88.0.0/16
# What the kubelet (overcommit, panic, keys), the bridge plugin (ip_forward)
# and kube-proxy may change; node-up saves the values first, node-down puts
# them back.
NODE_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
    kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.route_localnet)

# Directories outside those above that containerd, the CNI plugins and the
# kubelet write whatever they are told (shim sockets and runc state, libcni's
# cache, the device plugin socket, links to the pods' logs). node-up notes
# the ones it had to make; node-down removes those.
NODE_OUTSIDE_DIRS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/containers)

# The node's name: the host name, which must resolve (the API server reaches
# the kubelet by its Hostname address first, for logs and exec).
node_name() {
    hostname | tr '[:upper:]' '[:lower:]'
}
