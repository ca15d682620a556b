# Pinned versions of every peer the tests run against. Sourced by the scripts
# in this folder; change a version here and `up` rebuilds that tool into a new
# cache directory keyed by it.

# The reference pair of buildkit-protocol.md §0: bollard-buildkit-proto 0.9
# tracks BuildKit v0.29.0, and buildx v0.33.0 requires exactly that BuildKit.
BUILDKIT_VERSION=v0.29.0
BUILDX_VERSION=v0.33.0

# k8s-openapi 0.29 covers Kubernetes 1.33–1.37.
KUBERNETES_VERSION=v1.34.4
KUBERNETES_STAGING_VERSION=v0.34.4

HELM_VERSION=v3.19.0
KUBECONFORM_VERSION=v0.7.0

# Ports on 127.0.0.1.
KILN_REGISTRY_PORT=5000
KILN_AUTH_REGISTRY_PORT=5001
KILN_ETCD_PORT=12379
KILN_APISERVER_PORT=16443
