//! `Builder`: a pool of `kilnd` pods that buildx reaches through the gateway.
//!
//! ## `kubectl scale` and `spec.replicas`
//!
//! `spec.replicas` holds the pool's bounds, `min` and `max`, and `desired`,
//! the size the pool should have now. The `/scale` subresource reads and writes
//! `spec.replicas.desired` and reports `status.replicas`, so `kubectl scale
//! bldr/x --replicas=3` (or a demand autoscaler, through the same subresource)
//! sets `desired`, and the API server refuses a value outside `[min, max]`
//! with a message naming the bounds, rather than the controller clamping it
//! quietly. While `desired` is unset the pool runs `min` pods and the
//! subresource reports `spec.replicas: 0`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{
    DURATION_PATTERN, FieldErrors, PLATFORM_PATTERN, QUANTITY_RULE, check_platforms, parse_duration,
    parse_quantity_bytes,
};

/// What a pool of builders should look like.
// kube's printcolumn(...) lists repeat keys such as `type_ = "integer"`, which
// clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "Builder",
    namespaced,
    shortname = "bldr",
    category = "kiln",
    status = "BuilderStatus",
    derive = "PartialEq",
    doc = "A pool of kilnd builder pods that buildx reaches through Kiln's gateway.",
    scale(
        spec_replicas_path = ".spec.replicas.desired",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Busy", type_ = "integer", json_path = ".status.busyReplicas"),
    printcolumn(name = "Min", type_ = "integer", json_path = ".spec.replicas.min"),
    printcolumn(name = "Max", type_ = "integer", json_path = ".spec.replicas.max"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas.desired", priority = 1),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(KEEP_BYTES_RULE).message(Message::Expression(KEEP_BYTES_MESSAGE.into())))]
#[serde(rename_all = "camelCase")]
pub struct BuilderSpec {
    /// How many builder pods the pool may and should run.
    #[serde(default)]
    pub replicas: Replicas,

    /// How long a builder pod stays without a build before scale-down may
    /// remove it (Go duration syntax: 90s, 10m, 1h30m).
    #[serde(default = "default_idle_timeout")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub idle_timeout: String,

    /// The platforms the pool builds natively, as os/arch[/variant]. Each puts
    /// its builders on nodes of that OS and architecture. Empty: the platform
    /// of whichever nodes the pods land on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(PLATFORM_PATTERN)), length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub platforms: Vec<String>,

    /// How many builds one builder pod runs at once; the gateway sends
    /// further builds to other pods or queues them.
    #[serde(default = "default_max_parallel_builds")]
    #[schemars(range(min = 1))]
    pub max_parallel_builds: i32,

    /// The builder pods.
    #[serde(default)]
    pub template: BuilderTemplate,

    /// The build cache: one PersistentVolumeClaim per builder ordinal, mounted
    /// at kilnd's root, so a pod that comes back finds its cache.
    #[serde(default)]
    pub cache: CacheSpec,

    /// Garbage collection of the build cache. Unset fields keep kilnd's
    /// defaults.
    #[serde(default)]
    pub gc: GcSpec,

    /// Extra kilnd configuration, in kilnd's TOML format (the shape of
    /// buildkitd.toml). The operator sets the listen address, root and
    /// debug address itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub config: Option<String>,

    /// Which clients may build on this pool.
    #[serde(default)]
    pub access: AccessSpec,

    /// Entitlements a build on this pool may be granted when its client asks
    /// (`buildx build --allow …`): `network.host` (a step in the builder's
    /// own network) and `security.insecure` (a privileged step: root on the
    /// node). Empty: none, and the gateway refuses builds that ask.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(ENTITLEMENT_PATTERN)), length(max = 2))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub entitlements: Vec<String>,

    /// The network of build steps.
    #[serde(default, skip_serializing_if = "NetworkSpec::is_unset")]
    pub network: NetworkSpec,
}

/// `network.host` or `security.insecure`.
const ENTITLEMENT_PATTERN: &str = r"^(network\.host|security\.insecure)$";

/// Where build steps may connect.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The IPv4 networks (CIDR) steps may reach. Unset: everywhere the
    /// builder can reach, as on BuildKit; empty: nowhere. The builder's
    /// own API is out of reach of steps either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub egress_allow: Option<Vec<String>>,
}

impl NetworkSpec {
    fn is_unset(&self) -> bool {
        self == &Self::default()
    }
}

/// The bounds of the pool and the size it should have now.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new(MIN_MAX_RULE).message(MIN_MAX_MESSAGE))]
#[x_kube(validation = Rule::new(DESIRED_RULE).message(DESIRED_MESSAGE))]
pub struct Replicas {
    /// The fewest builder pods; 0 lets an idle pool scale to zero.
    #[serde(default = "default_min")]
    #[schemars(range(min = 0))]
    pub min: i32,

    /// The most builder pods.
    #[serde(default = "default_max")]
    #[schemars(range(min = 1))]
    pub max: i32,

    /// How many builder pods to run now, between min and max. `kubectl scale`
    /// and Kiln's demand scaling write it through the /scale subresource;
    /// unset, the pool runs `min` pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<i32>,
}

impl Default for Replicas {
    fn default() -> Self {
        Self { min: default_min(), max: default_max(), desired: None }
    }
}

impl Replicas {
    /// The number of pods the pool should run now.
    pub fn target(&self) -> i32 {
        self.desired.unwrap_or(self.min)
    }
}

/// How builder pods are made.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BuilderTemplate {
    /// The kilnd image. Unset: the image the operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// CPU and memory for the kilnd container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the pods must match, on top of the platform's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Node and pod affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// The PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub priority_class_name: Option<String>,

    /// The ServiceAccount the pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub service_account_name: Option<String>,

    /// How kilnd runs build steps.
    #[serde(default)]
    pub security_mode: SecurityMode,
}

/// How kilnd runs build steps inside its pod.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    /// A privileged container running kilnd as root: works on every node.
    #[default]
    Privileged,
    /// kilnd as an unprivileged user in a user namespace: needs nodes that
    /// allow unprivileged user namespaces.
    Rootless,
}

/// The per-builder cache volume.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new(STORAGE_CLASS_RULE).message(STORAGE_CLASS_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// The size of each builder's cache volume. It can grow (where the
    /// storage class allows expansion) but not shrink.
    #[serde(default = "default_cache_size")]
    #[schemars(schema_with = "quantity_string")]
    #[x_kube(validation = Rule::new(CACHE_SHRINK_RULE).message(CACHE_SHRINK_MESSAGE))]
    pub size: Quantity,

    /// The StorageClass of the cache volumes. Unset: the cluster's default.
    /// It cannot change once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub storage_class_name: Option<String>,

    /// Keep the cache volumes when the Builder is deleted (scale-down always
    /// keeps them, so a returning pod finds its cache).
    #[serde(default = "default_true")]
    pub retain: bool,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self { size: default_cache_size(), storage_class_name: None, retain: true }
    }
}

/// When kilnd removes build cache.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GcSpec {
    /// Remove the least recently used cache above this size; at most
    /// `cache.size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "quantity_string")]
    pub keep_bytes: Option<Quantity>,

    /// Remove cache unused for longer than this (Go duration syntax: 168h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub keep_duration: Option<String>,
}

/// Who may build on the pool.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessSpec {
    /// Client identities allowed to use the pool: the Common Name of the
    /// client certificate the gateway verified, or `*` for every client the
    /// gateway admits. Empty: nobody.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 253)), length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub clients: Vec<String>,
}

/// What the controller last saw of the pool.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BuilderStatus {
    /// Builder pods that exist.
    #[serde(default)]
    pub replicas: i32,

    /// Builder pods whose kilnd answers its readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Builder pods running at least one build.
    #[serde(default)]
    pub busy_replicas: i32,

    /// A one-word summary for people; programs read `conditions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BuilderPhase>,

    /// `Ready`, `Degraded` and `Scaling`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The address buildx uses for this pool through the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The label selector of the pool's pods, for the /scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// A one-word summary of a pool.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuilderPhase {
    /// Pods are being created and none is Ready yet.
    Pending,
    /// No pod runs; the pool scales up when a build arrives.
    Idle,
    /// The pool is changing size or rolling its pods.
    Scaling,
    /// The desired pods are Ready.
    Ready,
    /// Something needs attention; the `Degraded` condition says what.
    Degraded,
    /// The Builder is being deleted and its pods drained.
    Terminating,
}

const MIN_MAX_RULE: &str = "self.min <= self.max";
// The API server's cost estimate of `string(int)` is unbounded, so these
// messages cannot quote the numbers; `validate` does.
const MIN_MAX_MESSAGE: &str = "replicas.min must not be greater than replicas.max";
const DESIRED_RULE: &str = "!has(self.desired) || (self.desired >= self.min && self.desired <= self.max)";
const DESIRED_MESSAGE: &str =
    "replicas.desired (what kubectl scale sets) must be between replicas.min and replicas.max";
const KEEP_BYTES_RULE: &str = "!has(self.gc) || !has(self.gc.keepBytes) || !has(self.cache) \
     || !isQuantity(self.gc.keepBytes) || !isQuantity(self.cache.size) \
     || quantity(self.gc.keepBytes).compareTo(quantity(self.cache.size)) <= 0";
const KEEP_BYTES_MESSAGE: &str = "'gc.keepBytes (' + self.gc.keepBytes + ') must not be greater than cache.size (' \
     + self.cache.size + '): the cache volume would fill up before garbage collection starts'";
const CACHE_SHRINK_RULE: &str =
    "!isQuantity(self) || !isQuantity(oldSelf) || quantity(self).compareTo(quantity(oldSelf)) >= 0";
const CACHE_SHRINK_MESSAGE: &str = "cache.size cannot shrink: a PersistentVolumeClaim can only grow";
const STORAGE_CLASS_RULE: &str = "(has(self.storageClassName) ? self.storageClassName : '') \
     == (has(oldSelf.storageClassName) ? oldSelf.storageClassName : '')";
const STORAGE_CLASS_MESSAGE: &str = "cache.storageClassName cannot change: the cache volumes keep their class; \
     create a new Builder for another class";

fn default_idle_timeout() -> String {
    "10m".into()
}

fn default_max_parallel_builds() -> i32 {
    4
}

fn default_min() -> i32 {
    1
}

fn default_max() -> i32 {
    1
}

fn default_cache_size() -> Quantity {
    Quantity("20Gi".into())
}

fn default_true() -> bool {
    true
}

/// A quantity field as a string the API server checks with CEL, rather than
/// `Quantity`'s own int-or-string schema that accepts any string.
fn quantity_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 64,
        "x-kubernetes-validations": [{
            "rule": QUANTITY_RULE,
            "message": "must be a size such as 20Gi, 500M or 1.5Ti",
        }],
    })
}

impl BuilderSpec {
    /// Checks everything the schema and its CEL rules check, and what they
    /// cannot (the kilnd configuration), with messages that name the field.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors(Vec::new());
        let r = &self.replicas;
        if r.min < 0 {
            errors.push("spec.replicas.min", format!("must be 0 or more, not {}", r.min));
        }
        if r.max < 1 {
            errors.push("spec.replicas.max", format!("must be 1 or more, not {}", r.max));
        }
        if r.min > r.max {
            errors.push(
                "spec.replicas",
                format!("replicas.min ({}) must not be greater than replicas.max ({})", r.min, r.max),
            );
        }
        if let Some(desired) = r.desired
            && (desired < r.min || desired > r.max)
        {
            errors.push(
                "spec.replicas",
                format!(
                    "replicas.desired ({desired}) must be between replicas.min ({}) and replicas.max ({})",
                    r.min, r.max
                ),
            );
        }
        if let Err(e) = parse_duration(&self.idle_timeout) {
            errors.push("spec.idleTimeout", e);
        }
        check_platforms("spec.platforms", &self.platforms, &mut errors);
        if self.max_parallel_builds < 1 {
            errors.push(
                "spec.maxParallelBuilds",
                format!(
                    "must be 1 or more, not {}: a builder must be able to run a build",
                    self.max_parallel_builds
                ),
            );
        }
        let t = &self.template;
        for (field, value) in [
            ("spec.template.image", &t.image),
            ("spec.template.priorityClassName", &t.priority_class_name),
            ("spec.template.serviceAccountName", &t.service_account_name),
            ("spec.cache.storageClassName", &self.cache.storage_class_name),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                errors.push(field, "must not be empty; leave it out for the default");
            }
        }
        let cache_size = match parse_quantity_bytes(&self.cache.size.0) {
            Ok(0) => {
                errors.push("spec.cache.size", "must be more than 0");
                None
            }
            Ok(bytes) => Some(bytes),
            Err(e) => {
                errors.push("spec.cache.size", e);
                None
            }
        };
        if let Some(keep) = &self.gc.keep_bytes {
            match parse_quantity_bytes(&keep.0) {
                Ok(bytes) if cache_size.is_some_and(|size| bytes > size) => errors.push(
                    "spec.gc.keepBytes",
                    format!(
                        "gc.keepBytes ({}) must not be greater than cache.size ({}): \
                         the cache volume would fill up before garbage collection starts",
                        keep.0, self.cache.size.0
                    ),
                ),
                Ok(_) => {}
                Err(e) => errors.push("spec.gc.keepBytes", e),
            }
        }
        if let Some(keep) = &self.gc.keep_duration {
            match parse_duration(keep) {
                Ok(d) if d.is_zero() => errors.push(
                    "spec.gc.keepDuration",
                    "must be longer than 0; leave it out to keep cache by size only",
                ),
                Ok(_) => {}
                Err(e) => errors.push("spec.gc.keepDuration", e),
            }
        }
        if let Some(config) = &self.config
            && let Err(e) = config.parse::<toml::Table>()
        {
            errors.push("spec.config", format!("is not valid TOML: {}", e.message()));
        }
        for (i, allowed) in self.entitlements.iter().enumerate() {
            if !["network.host", "security.insecure"].contains(&allowed.as_str()) {
                errors.push(
                    format!("spec.entitlements[{i}]"),
                    format!("{allowed:?} is not an entitlement (network.host, security.insecure)"),
                );
            }
        }
        for (i, cidr) in self.network.egress_allow.iter().flatten().enumerate() {
            if !is_ipv4_cidr(cidr) {
                errors.push(
                    format!("spec.network.egressAllow[{i}]"),
                    format!("{cidr:?} is not an IPv4 network like 10.0.0.0/8"),
                );
            }
        }
        for (i, client) in self.access.clients.iter().enumerate() {
            if client.trim().is_empty() {
                errors.push(format!("spec.access.clients[{i}]"), "must name a client identity");
            } else if self.access.clients[..i].contains(client) {
                errors.push(format!("spec.access.clients[{i}]"), format!("{client} is listed twice"));
            }
        }
        errors.into_result()
    }
}

/// `a.b.c.d/n` with every part in range.
fn is_ipv4_cidr(text: &str) -> bool {
    let Some((addr, prefix)) = text.split_once('/') else { return false };
    addr.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use super::*;

    /// A pool as a user would write it, every field set.
    const FULL: &str = r#"{
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "Builder",
        "metadata": {"name": "ci", "namespace": "builds"},
        "spec": {
            "replicas": {"min": 0, "max": 8, "desired": 2},
            "idleTimeout": "15m",
            "platforms": ["linux/amd64", "linux/arm64"],
            "maxParallelBuilds": 2,
            "template": {
                "image": "ghcr.io/kiln-dev/kilnd:0.1.0",
                "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
                "nodeSelector": {"pool": "builders"},
                "tolerations": [{"key": "builders", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}},
                "priorityClassName": "builders",
                "serviceAccountName": "kilnd",
                "securityMode": "rootless"
            },
            "cache": {"size": "100Gi", "storageClassName": "fast", "retain": false},
            "gc": {"keepBytes": "80Gi", "keepDuration": "168h"},
            "config": "[worker.oci]\nmax-parallelism = 4\n",
            "access": {"clients": ["ci", "release"]}
        }
    }"#;

    fn spec(value: Value) -> BuilderSpec {
        serde_json::from_value(value).unwrap()
    }

    fn messages(spec: &BuilderSpec) -> Vec<String> {
        spec.validate().unwrap_err().0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_full_spec_round_trips_and_is_valid() {
        let parsed: Builder = serde_json::from_str(FULL).unwrap();
        let s = &parsed.spec;
        assert_eq!(s.replicas, Replicas { min: 0, max: 8, desired: Some(2) });
        assert_eq!(s.template.security_mode, SecurityMode::Rootless);
        assert_eq!(s.template.tolerations[0].key.as_deref(), Some("builders"));
        assert_eq!(s.cache.size, Quantity("100Gi".into()));
        assert!(!s.cache.retain);
        assert_eq!(s.access.clients, ["ci", "release"]);
        s.validate().unwrap();

        let back = serde_json::to_value(&parsed).unwrap();
        let original: Value = serde_json::from_str(FULL).unwrap();
        assert_eq!(back, original, "serialising gives back what the user wrote");
    }

    #[test]
    fn an_empty_spec_gets_the_defaults() {
        let s = spec(json!({}));
        assert_eq!(s.replicas, Replicas { min: 1, max: 1, desired: None });
        assert_eq!(s.replicas.target(), 1);
        assert_eq!(s.idle_timeout, "10m");
        assert!(s.platforms.is_empty());
        assert_eq!(s.max_parallel_builds, 4);
        assert_eq!(s.template, BuilderTemplate::default());
        assert_eq!(s.template.security_mode, SecurityMode::Privileged);
        assert_eq!(
            s.cache,
            CacheSpec { size: Quantity("20Gi".into()), storage_class_name: None, retain: true }
        );
        assert_eq!(s.gc, GcSpec::default());
        assert_eq!(s.access, AccessSpec::default());
        s.validate().unwrap();
    }

    #[test]
    fn desired_sets_the_target() {
        assert_eq!(spec(json!({"replicas": {"min": 1, "max": 5, "desired": 3}})).replicas.target(), 3);
        assert_eq!(spec(json!({"replicas": {"min": 2, "max": 5}})).replicas.target(), 2);
    }

    #[test]
    fn status_round_trips() {
        let status = json!({
            "replicas": 2, "readyReplicas": 1, "busyReplicas": 1, "phase": "Scaling",
            "conditions": [{"type": "Ready", "status": "False", "reason": "ReplicasNotReady",
                            "message": "1 of 2 builders ready", "lastTransitionTime": "2026-01-02T03:04:05Z",
                            "observedGeneration": 3}],
            "endpoint": "tcp://kiln-gateway.kiln:1234", "observedGeneration": 3,
            "selector": "kiln.dev/builder=ci"
        });
        let parsed: BuilderStatus = serde_json::from_value(status.clone()).unwrap();
        assert_eq!(parsed.phase, Some(BuilderPhase::Scaling));
        assert_eq!(parsed.conditions[0].type_, crate::condition::READY);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), status);
    }

    #[test]
    fn min_above_max_names_both_bounds() {
        assert_eq!(
            messages(&spec(json!({"replicas": {"min": 3, "max": 2}}))),
            ["spec.replicas: replicas.min (3) must not be greater than replicas.max (2)"]
        );
    }

    #[test]
    fn desired_outside_the_bounds_is_refused() {
        assert_eq!(
            messages(&spec(json!({"replicas": {"min": 1, "max": 4, "desired": 9}}))),
            ["spec.replicas: replicas.desired (9) must be between replicas.min (1) and replicas.max (4)"]
        );
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let s = spec(json!({
            "replicas": {"min": -1, "max": 0},
            "idleTimeout": "10 minutes",
            "platforms": ["linux/amd64", "windows"],
            "maxParallelBuilds": 0,
            "template": {"image": ""},
            "cache": {"size": "20GB"},
            "gc": {"keepDuration": "0s"},
            "config": "[worker.oci\n",
            "access": {"clients": ["ci", "ci", " "]}
        }));
        let got = messages(&s);
        let expected = [
            "spec.replicas.min: must be 0 or more, not -1",
            "spec.replicas.max: must be 1 or more, not 0",
            "spec.idleTimeout: \"10 minutes\" is not a duration like 90s, 10m or 1h30m: unknown unit \" minutes\" (use ns, us, ms, s, m or h)",
            "spec.platforms[1]: \"windows\" is not a platform like linux/amd64 or linux/arm/v7 (lowercase os/arch[/variant])",
            "spec.maxParallelBuilds: must be 1 or more, not 0: a builder must be able to run a build",
            "spec.template.image: must not be empty; leave it out for the default",
            "spec.cache.size: \"20GB\" is not a size like 20Gi, 500M or 1.5Ti: unknown suffix (use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E)",
            "spec.gc.keepDuration: must be longer than 0; leave it out to keep cache by size only",
            "spec.access.clients[1]: ci is listed twice",
            "spec.access.clients[2]: must name a client identity",
        ];
        for e in expected {
            assert!(got.iter().any(|g| g == e), "missing {e:?} in {got:#?}");
        }
        assert!(got.iter().any(|g| g.starts_with("spec.config: is not valid TOML: ")), "{got:#?}");
        assert_eq!(got.len(), expected.len() + 1, "{got:#?}");
    }

    #[test]
    fn gc_may_not_keep_more_than_the_volume_holds() {
        assert_eq!(
            messages(&spec(json!({"cache": {"size": "50Gi"}, "gc": {"keepBytes": "60Gi"}}))),
            ["spec.gc.keepBytes: gc.keepBytes (60Gi) must not be greater than cache.size (50Gi): \
                 the cache volume would fill up before garbage collection starts"]
        );
        spec(json!({"cache": {"size": "50Gi"}, "gc": {"keepBytes": "50Gi"}})).validate().unwrap();
        spec(json!({"cache": {"size": "50Gi"}, "gc": {"keepBytes": "40G"}})).validate().unwrap();
    }

    fn crd() -> Value {
        serde_json::to_value(Builder::crd()).unwrap()
    }

    fn schema_of(crd: &Value) -> &Value {
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    }

    #[test]
    fn the_crd_names_the_resource() {
        let crd = crd();
        assert_eq!(crd["metadata"]["name"], "builders.kiln.dev");
        assert_eq!(crd["spec"]["group"], crate::GROUP);
        assert_eq!(crd["spec"]["versions"][0]["name"], crate::VERSION);
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["bldr"]));
        assert_eq!(crd["spec"]["names"]["categories"], json!(["kiln"]));
    }

    #[test]
    fn the_crd_has_the_scale_and_status_subresources() {
        let crd = crd();
        let sub = &crd["spec"]["versions"][0]["subresources"];
        assert_eq!(sub["status"], json!({}));
        assert_eq!(
            sub["scale"],
            json!({"specReplicasPath": ".spec.replicas.desired", "statusReplicasPath": ".status.replicas",
                   "labelSelectorPath": ".status.selector"})
        );
    }

    #[test]
    fn the_crd_has_printer_columns() {
        let crd = crd();
        let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"].as_array().unwrap();
        let names: Vec<_> = columns.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Phase", "Ready", "Replicas", "Busy", "Min", "Max", "Desired", "Endpoint", "Age"]);
        let endpoint = columns.iter().find(|c| c["name"] == "Endpoint").unwrap();
        assert_eq!(endpoint["priority"], 1, "the endpoint is for -o wide");
    }

    #[test]
    fn the_schema_carries_the_cel_rules_and_formats() {
        let crd = crd();
        let spec = &schema_of(&crd)["properties"]["spec"];
        let rules = |v: &Value| -> Vec<String> {
            v["x-kubernetes-validations"]
                .as_array()
                .map(|a| a.iter().map(|r| r["rule"].as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let replicas = &spec["properties"]["replicas"];
        assert_eq!(rules(replicas), [MIN_MAX_RULE, DESIRED_RULE]);
        assert_eq!(replicas["x-kubernetes-validations"][0]["message"], MIN_MAX_MESSAGE);
        assert_eq!(spec["x-kubernetes-validations"][0]["messageExpression"], KEEP_BYTES_MESSAGE);
        assert_eq!(rules(spec), [KEEP_BYTES_RULE]);
        assert_eq!(rules(&spec["properties"]["cache"]), [STORAGE_CLASS_RULE]);
        assert_eq!(
            rules(&spec["properties"]["cache"]["properties"]["size"]),
            [QUANTITY_RULE, CACHE_SHRINK_RULE]
        );
        assert_eq!(spec["properties"]["cache"]["properties"]["size"]["type"], "string");
        assert_eq!(rules(&spec["properties"]["gc"]["properties"]["keepBytes"]), [QUANTITY_RULE]);
        assert_eq!(spec["properties"]["maxParallelBuilds"]["minimum"], 1.0);
        assert_eq!(spec["properties"]["replicas"]["properties"]["min"]["minimum"], 0.0);
        assert_eq!(spec["properties"]["idleTimeout"]["pattern"], DURATION_PATTERN);
        assert_eq!(spec["properties"]["platforms"]["items"]["pattern"], PLATFORM_PATTERN);
        assert_eq!(spec["properties"]["platforms"]["x-kubernetes-list-type"], "set");
        assert_eq!(
            spec["properties"]["template"]["properties"]["securityMode"]["enum"],
            json!(["privileged", "rootless"])
        );
        let conditions = &schema_of(&crd)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    }

    #[test]
    fn the_schema_declares_the_defaults() {
        let crd = crd();
        let spec = &schema_of(&crd)["properties"]["spec"]["properties"];
        assert_eq!(spec["replicas"]["default"], json!({"min": 1, "max": 1}));
        assert_eq!(spec["idleTimeout"]["default"], "10m");
        assert_eq!(spec["maxParallelBuilds"]["default"], 4);
        assert_eq!(spec["cache"]["default"], json!({"size": "20Gi", "retain": true}));
        assert_eq!(spec["template"]["properties"]["securityMode"]["default"], "privileged");
    }

    /// The CEL rules themselves, evaluated as the API server would, on the
    /// same cases as `validate`.
    mod cel {
        use kube::core::cel::Validator;

        use super::*;

        fn check(object: &Value, old: Option<&Value>) -> Result<(), String> {
            let crd = crd();
            Validator::new().validate(schema_of(&crd), object, old).map_err(|e| format!("{e:?}"))
        }

        fn builder(spec_value: Value) -> Value {
            serde_json::to_value(Builder::new("x", spec(spec_value))).unwrap()
        }

        #[test]
        fn valid_specs_pass() {
            check(&serde_json::from_str(FULL).unwrap(), None).unwrap();
            check(&builder(json!({})), None).unwrap();
            check(&builder(json!({"replicas": {"min": 0, "max": 3, "desired": 3}})), None).unwrap();
        }

        #[test]
        fn min_above_max_fails() {
            let err = check(&builder(json!({"replicas": {"min": 3, "max": 2}})), None).unwrap_err();
            assert!(err.contains(MIN_MAX_MESSAGE), "{err}");
        }

        #[test]
        fn desired_outside_the_bounds_fails() {
            let err =
                check(&builder(json!({"replicas": {"min": 1, "max": 4, "desired": 5}})), None).unwrap_err();
            assert!(err.contains(DESIRED_MESSAGE), "{err}");
        }

        #[test]
        fn keep_bytes_above_the_cache_size_fails() {
            let err = check(&builder(json!({"cache": {"size": "50Gi"}, "gc": {"keepBytes": "60Gi"}})), None)
                .unwrap_err();
            assert!(err.contains("gc.keepBytes (60Gi) must not be greater than cache.size (50Gi)"), "{err}");
            check(&builder(json!({"cache": {"size": "50Gi"}, "gc": {"keepBytes": "40G"}})), None).unwrap();
        }

        #[test]
        fn a_size_that_is_not_a_quantity_fails() {
            let err = check(&builder(json!({"cache": {"size": "lots"}})), None).unwrap_err();
            assert!(err.contains("must be a size such as 20Gi"), "{err}");
        }

        #[test]
        fn the_cache_cannot_shrink_or_change_class() {
            let old = builder(json!({"cache": {"size": "50Gi", "storageClassName": "fast"}}));
            check(&builder(json!({"cache": {"size": "60Gi", "storageClassName": "fast"}})), Some(&old))
                .unwrap();
            let err =
                check(&builder(json!({"cache": {"size": "40Gi", "storageClassName": "fast"}})), Some(&old))
                    .unwrap_err();
            assert!(err.contains("cache.size cannot shrink"), "{err}");
            let err =
                check(&builder(json!({"cache": {"size": "50Gi", "storageClassName": "slow"}})), Some(&old))
                    .unwrap_err();
            assert!(err.contains("cache.storageClassName cannot change"), "{err}");
        }
    }
}
