//! The objects a `Builder` should have, computed from its spec alone: the
//! pods `<name>-<ordinal>`, one cache PersistentVolumeClaim per ordinal, the
//! kilnd configuration ConfigMap, a headless Service, a PodDisruptionBudget
//! and, where the controller knows the gateway, a NetworkPolicy that lets
//! only the gateway reach kilnd's API. No I/O here; `reconcile` applies
//! what this returns.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, AppArmorProfile, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kiln_crds::builder::{Builder, BuilderSpec, SecurityMode};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

/// The field manager of every object the controller applies.
pub const FIELD_MANAGER: &str = "kiln-controller";
/// The finalizer that drains a pool before its `Builder` goes.
pub const FINALIZER: &str = "kiln.dev/drain";

/// Names the `Builder` an object belongs to.
pub const LABEL_BUILDER: &str = "kiln.dev/builder";
/// A builder pod's ordinal (also in its name).
pub const LABEL_ORDINAL: &str = "kiln.dev/ordinal";
/// A hash of what a pod was made from; a pod with another hash is outdated.
pub const LABEL_TEMPLATE_HASH: &str = "kiln.dev/template-hash";
/// `"true"` on a pod that takes no new builds: the gateway skips it, and the
/// controller removes it once its running builds end.
pub const LABEL_DRAINING: &str = "kiln.dev/draining";
/// When draining started (RFC 3339), for the drain grace period.
pub const ANNOTATION_DRAIN_STARTED: &str = "kiln.dev/drain-started";

/// Sessions the gateway has open or waiting for this pool (cluster mode).
pub const ANNOTATION_DEMAND: &str = "kiln.dev/demand";
/// When the gateway measured the demand (RFC 3339).
pub const ANNOTATION_DEMAND_AT: &str = "kiln.dev/demand-at";
/// How often the gateway refreshes a demand above zero.
pub const DEMAND_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);
/// A demand older than this is ignored: its gateway is gone.
pub const DEMAND_TTL: std::time::Duration = std::time::Duration::from_secs(90);

/// kilnd's BuildKit API port in the pod.
pub const GRPC_PORT: i32 = 1234;
/// kilnd's debug port: `/metrics`, `/healthz`, `/readyz`, `/load`.
pub const DEBUG_PORT: i32 = 6060;
/// Where the cache volume is mounted; kilnd's `--root`.
pub const ROOT_DIR: &str = "/var/lib/kilnd";
const CONFIG_DIR: &str = "/etc/kiln";
/// The user a rootless kilnd runs as: the kilnd image's `kilnd` user, whose
/// subordinate ids (in the image's /etc/subuid) RootlessKit maps.
pub const ROOTLESS_UID: i64 = 1000;
/// A rootless kilnd's `XDG_RUNTIME_DIR` (its run directory, RootlessKit's
/// state): memory-backed, so secrets there never reach a disk.
const ROOTLESS_RUN_DIR: &str = "/run/user/1000";
const CONFIG_KEY: &str = "kilnd.toml";
/// How long a draining builder's running builds may go on: the pod's
/// termination grace and the longest the controller waits before deleting a
/// busy pod it drains.
pub const DRAIN_GRACE_SECONDS: i64 = 600;

/// What the operator was installed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// The kilnd image when `spec.template.image` is unset.
    pub image: String,
    /// kilnd serves TLS and takes only clients of the builder CA (the
    /// gateway), with the certificate in the pool's TLS Secret.
    pub builder_tls: bool,
    /// Where the gateway runs: only its pods may reach kilnd's API.
    pub gateway: Option<GatewayPeer>,
}

/// The gateway's pods, as a NetworkPolicy names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPeer {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Where kilnd finds its certificate, key and the CA of its clients: not
/// under /etc/kiln, the read-only config volume, in which the runtime
/// cannot make a mount point.
const TLS_DIR: &str = "/etc/kiln-tls";

/// The Secret with kilnd's certificate (`controller/tls.rs`).
pub fn tls_secret_name(b: &Builder) -> String {
    format!("{}-kilnd-tls", b.name_any())
}

/// The labels every object of the pool carries, and that select its pods.
pub fn selector(b: &Builder) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "kilnd".into()),
        ("app.kubernetes.io/instance".into(), b.name_any()),
        ("app.kubernetes.io/managed-by".into(), "kiln".into()),
        (LABEL_BUILDER.into(), b.name_any()),
    ])
}

/// The `/scale` subresource's label selector string.
pub fn selector_string(b: &Builder) -> String {
    format!("{LABEL_BUILDER}={}", b.name_any())
}

pub fn pod_name(b: &Builder, ordinal: u32) -> String {
    format!("{}-{ordinal}", b.name_any())
}

/// StatefulSet's naming, `<volume>-<pod>`, so the claim is easy to find.
pub fn claim_name(b: &Builder, ordinal: u32) -> String {
    format!("cache-{}", pod_name(b, ordinal))
}

pub fn config_map_name(b: &Builder) -> String {
    format!("{}-kilnd-config", b.name_any())
}

pub(crate) fn owner(b: &Builder) -> Option<OwnerReference> {
    b.controller_owner_ref(&())
}

fn meta(b: &Builder, name: String, labels: BTreeMap<String, String>, owned: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: b.namespace(),
        labels: Some(labels),
        owner_references: if owned { owner(b).map(|o| vec![o]) } else { None },
        ..ObjectMeta::default()
    }
}

/// kilnd's TOML: the user's `spec.config` with the pool's own settings,
/// which win over it, in buildkitd.toml's keys: garbage collection in
/// `[worker.oci]` (`gcpolicy` with `maxUsedSpace` and `keepDuration`), the
/// entitlements the pool allows (`insecure-entitlements`, none unless the
/// spec lists them) and the steps' egress (`[worker.oci] egressAllow`).
pub fn kilnd_config(spec: &BuilderSpec) -> Result<String, toml::de::Error> {
    let mut table: toml::Table = spec.config.as_deref().unwrap_or_default().parse()?;
    let mut gc = toml::Table::new();
    if let Some(keep) = &spec.gc.keep_bytes {
        gc.insert("maxUsedSpace".into(), keep.0.clone().into());
    }
    if let Some(keep) = &spec.gc.keep_duration {
        gc.insert("keepDuration".into(), keep.clone().into());
    }
    let strings = |list: &[String]| toml::Value::Array(list.iter().map(|s| s.clone().into()).collect());
    table.insert("insecure-entitlements".into(), strings(&spec.entitlements));
    if !gc.is_empty() {
        let oci = worker_oci(&mut table);
        oci.insert("gc".into(), true.into());
        oci.insert("gcpolicy".into(), toml::Value::Array(vec![gc.into()]));
    }
    if let Some(allow) = &spec.network.egress_allow {
        worker_oci(&mut table).insert("egressAllow".into(), strings(allow));
    }
    Ok(table.to_string())
}

/// `[worker.oci]` of kilnd's TOML, made when missing (a value of another
/// kind under those keys is replaced).
fn worker_oci(table: &mut toml::Table) -> &mut toml::Table {
    table_at(table_at(table, "worker"), "oci")
}

fn table_at<'a>(table: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    let slot = table.entry(key).or_insert_with(|| toml::Table::new().into());
    if !slot.is_table() {
        *slot = toml::Table::new().into();
    }
    match slot {
        toml::Value::Table(t) => t,
        _ => unreachable!("the slot was made a table above"),
    }
}

pub fn config_map(b: &Builder, config: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(b, config_map_name(b), selector(b), true),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), config.to_owned())])),
        ..ConfigMap::default()
    }
}

/// A headless Service: stable DNS names `<pod>.<builder>` for the gateway.
pub fn service(b: &Builder) -> Service {
    let port = |name: &str, port| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    };
    Service {
        metadata: meta(b, b.name_any(), selector(b), true),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(b)),
            ports: Some(vec![port("grpc", GRPC_PORT), port("debug", DEBUG_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// At most one builder away at a time for voluntary disruptions (node
/// drains); the controller's own rolling update goes one at a time too.
pub fn disruption_budget(b: &Builder) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(b, b.name_any(), selector(b), true),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector(b)), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The cache volume of one ordinal. Owned by the `Builder` (so deleted with
/// it) only when `cache.retain` is false; scale-down never deletes it.
pub fn claim(b: &Builder, ordinal: u32) -> PersistentVolumeClaim {
    let mut labels = selector(b);
    labels.insert(LABEL_ORDINAL.into(), ordinal.to_string());
    let cache = &b.spec.cache;
    PersistentVolumeClaim {
        metadata: meta(b, claim_name(b, ordinal), labels, !cache.retain),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: cache.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), cache.size.clone())])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The platform's node labels, added to every required node selector term
/// (or making the only term when the template has none).
fn with_platforms(spec: &BuilderSpec) -> Option<Affinity> {
    let mut affinity = spec.template.affinity.clone();
    if spec.platforms.is_empty() {
        return affinity;
    }
    let values = |i: usize| {
        let mut v: Vec<String> =
            spec.platforms.iter().filter_map(|p| p.split('/').nth(i)).map(str::to_owned).collect();
        v.sort();
        v.dedup();
        v
    };
    let requirements = [
        NodeSelectorRequirement {
            key: "kubernetes.io/os".into(),
            operator: "In".into(),
            values: Some(values(0)),
        },
        NodeSelectorRequirement {
            key: "kubernetes.io/arch".into(),
            operator: "In".into(),
            values: Some(values(1)),
        },
    ];
    let a = affinity.get_or_insert_with(Affinity::default);
    let node = a.node_affinity.get_or_insert_with(NodeAffinity::default);
    let required = node
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector { node_selector_terms: Vec::new() });
    if required.node_selector_terms.is_empty() {
        required.node_selector_terms.push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_expressions.get_or_insert_with(Vec::new).extend(requirements.iter().cloned());
    }
    affinity
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("debug".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The pod spec every ordinal shares, before the ordinal's own volume.
fn pod_spec(b: &Builder, defaults: &Defaults) -> PodSpec {
    let mut spec = pod_spec_privileged(b, defaults);
    if b.spec.template.security_mode == SecurityMode::Rootless {
        make_rootless(&mut spec);
    }
    spec
}

fn pod_spec_privileged(b: &Builder, defaults: &Defaults) -> PodSpec {
    let spec = &b.spec;
    let t = &spec.template;
    let container = Container {
        name: "kilnd".into(),
        image: Some(t.image.clone().unwrap_or_else(|| defaults.image.clone())),
        // $(POD_IP) is expanded by the kubelet: kilnd listens on the pod's
        // address, which the gateway dials.
        args: Some(
            [
                "--addr",
                &format!("tcp://$(POD_IP):{GRPC_PORT}"),
                "--debugaddr",
                &format!("$(POD_IP):{DEBUG_PORT}"),
                "--root",
                ROOT_DIR,
                "--config",
                &format!("{CONFIG_DIR}/{CONFIG_KEY}"),
                "--shutdown-grace",
                &(DRAIN_GRACE_SECONDS - 10).to_string(),
            ]
            .map(str::to_owned)
            .into(),
        ),
        env: Some(vec![
            env_from_field("POD_IP", "status.podIP"),
            env_from_field("POD_NAME", "metadata.name"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: GRPC_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("debug".into()),
                container_port: DEBUG_PORT,
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 2, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: t.resources.clone(),
        // Build steps run in containers of their own (runc, overlayfs
        // mounts): kilnd needs the privileges of a container runtime.
        security_context: Some(SecurityContext { privileged: Some(true), ..SecurityContext::default() }),
        volume_mounts: Some(vec![
            VolumeMount { name: "cache".into(), mount_path: ROOT_DIR.into(), ..VolumeMount::default() },
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let mut container = container;
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(b),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if defaults.builder_tls {
        // Only clients the builder CA signed (the gateway) get in.
        let args = container.args.get_or_insert_with(Vec::new);
        for (flag, file) in [("--tlscert", "tls.crt"), ("--tlskey", "tls.key"), ("--tlscacert", "ca.crt")] {
            args.extend([flag.to_owned(), format!("{TLS_DIR}/{file}")]);
        }
        container.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls_secret_name(b)),
                default_mode: Some(0o400),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    PodSpec {
        containers: vec![container],
        subdomain: Some(b.name_any()),
        termination_grace_period_seconds: Some(DRAIN_GRACE_SECONDS),
        node_selector: (!t.node_selector.is_empty()).then(|| t.node_selector.clone()),
        affinity: with_platforms(spec),
        tolerations: (!t.tolerations.is_empty()).then(|| t.tolerations.clone()),
        priority_class_name: t.priority_class_name.clone(),
        service_account_name: t.service_account_name.clone(),
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// A rootless pool's pod runs kilnd unprivileged, as rootless BuildKit's
/// Kubernetes example does (docs/rootless.md): as the image's `kilnd` user
/// inside RootlessKit's user namespace with the pod's network, no process
/// sandbox (the pod's `/proc` is masked), seccomp and AppArmor unconfined
/// (the profiles forbid the namespaces and mounts RootlessKit makes; kilnd's
/// steps still get BuildKit's default seccomp profile from kilnd), and
/// privilege escalation allowed for the setuid `newuidmap`. The cache volume
/// and the TLS files are the user's through `fsGroup`.
fn make_rootless(spec: &mut PodSpec) {
    let Some(container) = spec.containers.first_mut() else { return };
    container.command = Some(["rootlesskit", "--net=host", "kilnd"].map(str::to_owned).into());
    container.args.get_or_insert_with(Vec::new).push("--oci-worker-no-process-sandbox".into());
    container.env.get_or_insert_with(Vec::new).push(EnvVar {
        name: "XDG_RUNTIME_DIR".into(),
        value: Some(ROOTLESS_RUN_DIR.into()),
        ..EnvVar::default()
    });
    let unconfined = || SeccompProfile { type_: "Unconfined".into(), ..SeccompProfile::default() };
    container.security_context = Some(SecurityContext {
        privileged: Some(false),
        run_as_user: Some(ROOTLESS_UID),
        run_as_group: Some(ROOTLESS_UID),
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(true),
        seccomp_profile: Some(unconfined()),
        app_armor_profile: Some(AppArmorProfile { type_: "Unconfined".into(), ..AppArmorProfile::default() }),
        ..SecurityContext::default()
    });
    container.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
        name: "run".into(),
        mount_path: ROOTLESS_RUN_DIR.into(),
        ..VolumeMount::default()
    });
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: "run".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    for volume in volumes.iter_mut() {
        if let Some(secret) = &mut volume.secret {
            // Readable by the group fsGroup gives it.
            secret.default_mode = Some(0o440);
        }
    }
    spec.security_context =
        Some(PodSecurityContext { fs_group: Some(ROOTLESS_UID), ..PodSecurityContext::default() });
}

/// A short hash of everything a pod is made from (spec, kilnd config and
/// its certificate, by fingerprint): pods carrying another hash are rolled.
pub fn template_hash(b: &Builder, defaults: &Defaults, config: &str, certificate: &str) -> String {
    let spec = serde_json::to_vec(&pod_spec(b, defaults)).unwrap_or_default();
    let digest = Sha256::new()
        .chain_update(&spec)
        .chain_update(config.as_bytes())
        .chain_update(certificate.as_bytes())
        .finalize();
    hex::encode(&digest[..5])
}

/// kilnd's gRPC port open to the gateway's pods alone; the debug port (the
/// controller's `/load`, probes, metrics) open as before.
pub fn network_policy(b: &Builder, gateway: &GatewayPeer) -> NetworkPolicy {
    let from_gateway = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                gateway.namespace.clone(),
            )])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(gateway.labels.clone()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let port = |name: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    };
    NetworkPolicy {
        metadata: meta(b, b.name_any(), selector(b), true),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector(b)), ..LabelSelector::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { from: Some(vec![from_gateway]), ports: Some(vec![port("grpc")]) },
                NetworkPolicyIngressRule { from: None, ports: Some(vec![port("debug")]) },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The pod of `ordinal`.
pub fn pod(b: &Builder, ordinal: u32, defaults: &Defaults, hash: &str) -> Pod {
    let mut labels = selector(b);
    labels.insert(LABEL_ORDINAL.into(), ordinal.to_string());
    labels.insert(LABEL_TEMPLATE_HASH.into(), hash.into());
    let mut spec = pod_spec(b, defaults);
    spec.hostname = Some(pod_name(b, ordinal));
    spec.volumes.get_or_insert_with(Vec::new).insert(
        0,
        Volume {
            name: "cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(b, ordinal),
                read_only: None,
            }),
            ..Volume::default()
        },
    );
    Pod { metadata: meta(b, pod_name(b, ordinal), labels, true), spec: Some(spec), status: None }
}

/// How many pods the pool should run: `spec.replicas.desired` (or `min`),
/// raised to what the gateway's fresh demand needs at `maxParallelBuilds`
/// sessions a pod, never above `max`.
pub fn target(b: &Builder, now: k8s_openapi::jiff::Timestamp) -> u32 {
    let r = &b.spec.replicas;
    let base = r.target().clamp(0, r.max.max(0));
    let annotations = b.annotations();
    let fresh = annotations
        .get(ANNOTATION_DEMAND_AT)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_some_and(|at| now.duration_since(at).unsigned_abs() <= DEMAND_TTL);
    let demand: i64 =
        if fresh { annotations.get(ANNOTATION_DEMAND).and_then(|d| d.parse().ok()).unwrap_or(0) } else { 0 };
    let per_pod = i64::from(b.spec.max_parallel_builds.max(1));
    let needed = i32::try_from((demand.max(0) + per_pod - 1) / per_pod).unwrap_or(i32::MAX);
    u32::try_from(base.max(needed.min(r.max)).max(0)).unwrap_or(0)
}

/// The ordinal a pod's name carries, if it is one of `b`'s.
pub fn ordinal_of(b: &Builder, pod_name: &str) -> Option<u32> {
    pod_name.strip_prefix(&b.name_any())?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const GOLDEN_BUILDER: &str = r#"
apiVersion: kiln.dev/v1alpha1
kind: Builder
metadata: {name: ci, namespace: builds, uid: 0b6f1c2e-0000-4000-8000-000000000001}
spec:
  replicas: {min: 1, max: 4}
  platforms: [linux/amd64, linux/arm64]
  template:
    image: ghcr.io/kiln-dev/kilnd:0.1.0
    resources: {requests: {cpu: "2", memory: 4Gi}}
    nodeSelector: {pool: builders}
    tolerations: [{key: builders, operator: Exists, effect: NoSchedule}]
    serviceAccountName: kilnd
  cache: {size: 50Gi, storageClassName: fast, retain: false}
  gc: {keepBytes: 40Gi, keepDuration: 168h}
  config: |
    [worker.oci]
    labels = { team = "ci" }
"#;

    fn builder(yaml: &str) -> Builder {
        serde_norway::from_str(yaml).unwrap()
    }

    fn defaults() -> Defaults {
        Defaults { image: "ghcr.io/kiln-dev/kilnd:default".into(), builder_tls: false, gateway: None }
    }

    /// Compares with `tests/golden/<name>.yaml`; `KILN_BLESS=1` rewrites it.
    fn golden<T: serde::Serialize>(name: &str, value: &T) {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.yaml"));
        let got = serde_norway::to_string(value).unwrap();
        if std::env::var_os("KILN_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with KILN_BLESS=1 to write it)", path.display()));
        assert_eq!(got, want, "{name} differs from {}", path.display());
    }

    #[test]
    fn the_objects_of_a_full_builder_match_the_golden_files() {
        let b = builder(GOLDEN_BUILDER);
        let config = kilnd_config(&b.spec).unwrap();
        let hash = template_hash(&b, &defaults(), &config, "");
        golden("pod", &pod(&b, 2, &defaults(), &hash));
        golden("claim", &claim(&b, 2));
        golden("config-map", &config_map(&b, &config));
        golden("service", &service(&b));
        golden("disruption-budget", &disruption_budget(&b));
    }

    #[test]
    fn a_rootless_pools_pod_is_unprivileged() {
        let b = builder(&GOLDEN_BUILDER.replacen("template:", "template:\n    securityMode: rootless", 1));
        assert_eq!(b.spec.template.security_mode, SecurityMode::Rootless);
        let tls = Defaults { builder_tls: true, ..defaults() };
        let pod = serde_json::to_value(pod(&b, 0, &tls, "h")).unwrap();
        golden("pod-rootless", &pod);
        let container = &pod["spec"]["containers"][0];
        let context = &container["securityContext"];
        assert_eq!(context["privileged"], false);
        assert_eq!(context["runAsNonRoot"], true);
        assert_eq!(context["runAsUser"], ROOTLESS_UID);
        assert!(context.get("capabilities").is_none(), "no capabilities are added");
        assert_eq!(container["command"], serde_json::json!(["rootlesskit", "--net=host", "kilnd"]));
        assert!(container["args"].as_array().unwrap().contains(&"--oci-worker-no-process-sandbox".into()));
        assert_eq!(pod["spec"]["securityContext"]["fsGroup"], ROOTLESS_UID);
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        let run = volumes.iter().find(|v| v["name"] == "run").unwrap();
        assert_eq!(run["emptyDir"]["medium"], "Memory", "the run directory holds secrets: memory only");
        let tls = volumes.iter().find(|v| v["name"] == "tls").unwrap();
        assert_eq!(tls["secret"]["defaultMode"], 0o440);
    }

    #[test]
    fn with_builder_tls_kilnd_serves_its_certificate_to_the_gateway_alone() {
        let b = builder(GOLDEN_BUILDER);
        let gateway = GatewayPeer {
            namespace: "kiln".into(),
            labels: BTreeMap::from([("app.kubernetes.io/component".into(), "gateway".into())]),
        };
        let tls = Defaults { builder_tls: true, gateway: Some(gateway.clone()), ..defaults() };
        let pod = serde_json::to_value(pod(&b, 0, &tls, "h")).unwrap();
        let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let tail = &args[args.len() - 6..];
        assert_eq!(
            tail,
            [
                "--tlscert",
                "/etc/kiln-tls/tls.crt",
                "--tlskey",
                "/etc/kiln-tls/tls.key",
                "--tlscacert",
                "/etc/kiln-tls/ca.crt"
            ]
        );
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "ci-kilnd-tls"), "{volumes:?}");
        // A new certificate rolls the pool.
        let config = kilnd_config(&b.spec).unwrap();
        assert_ne!(template_hash(&b, &tls, &config, "aa"), template_hash(&b, &tls, &config, "bb"));
        golden("network-policy", &network_policy(&b, &gateway));
    }

    #[test]
    fn gc_settings_are_merged_into_the_users_worker_table() {
        let b = builder(GOLDEN_BUILDER);
        let config: toml::Table = kilnd_config(&b.spec).unwrap().parse().unwrap();
        let oci = &config["worker"]["oci"];
        assert_eq!(oci["labels"]["team"].as_str(), Some("ci"), "the user's keys stay");
        assert_eq!(oci["gc"].as_bool(), Some(true));
        assert_eq!(oci["gcpolicy"][0]["maxUsedSpace"].as_str(), Some("40Gi"));
        assert_eq!(oci["gcpolicy"][0]["keepDuration"].as_str(), Some("168h"));

        let plain = builder("{apiVersion: kiln.dev/v1alpha1, kind: Builder, metadata: {name: x}, spec: {}}");
        assert_eq!(kilnd_config(&plain.spec).unwrap(), "insecure-entitlements = []\n");
    }

    #[test]
    fn entitlements_and_egress_come_from_the_spec_whatever_the_users_config_says() {
        let b = builder(
            "{apiVersion: kiln.dev/v1alpha1, kind: Builder, metadata: {name: x}, spec: {\
             config: 'insecure-entitlements = [\"security.insecure\", \"network.host\"]', \
             entitlements: [network.host], network: {egressAllow: [10.0.0.0/8]}}}",
        );
        let config: toml::Table = kilnd_config(&b.spec).unwrap().parse().unwrap();
        assert_eq!(config["insecure-entitlements"], toml::Value::Array(vec!["network.host".into()]));
        assert_eq!(config["worker"]["oci"]["egressAllow"], toml::Value::Array(vec!["10.0.0.0/8".into()]));
        let closed = builder(
            "{apiVersion: kiln.dev/v1alpha1, kind: Builder, metadata: {name: x}, spec: {network: {egressAllow: []}}}",
        );
        let config: toml::Table = kilnd_config(&closed.spec).unwrap().parse().unwrap();
        assert_eq!(config["worker"]["oci"]["egressAllow"], toml::Value::Array(vec![]));
    }

    #[test]
    fn the_hash_follows_the_template_and_config_but_not_the_replica_count() {
        let b = builder(GOLDEN_BUILDER);
        let h = |b: &Builder| template_hash(b, &defaults(), &kilnd_config(&b.spec).unwrap(), "");
        let base = h(&b);
        assert_eq!(base.len(), 10);

        let mut scaled = b.clone();
        scaled.spec.replicas.desired = Some(3);
        assert_eq!(h(&scaled), base, "scaling does not roll pods");

        let mut image = b.clone();
        image.spec.template.image = Some("ghcr.io/kiln-dev/kilnd:0.2.0".into());
        assert_ne!(h(&image), base);

        let mut config = b.clone();
        config.spec.config = Some("[worker.oci]\nlabels = { team = \"release\" }\n".into());
        assert_ne!(h(&config), base);
    }

    #[test]
    fn retained_caches_have_no_owner_and_the_rest_are_owned() {
        let mut b = builder(GOLDEN_BUILDER);
        assert!(claim(&b, 0).metadata.owner_references.is_some(), "retain: false → deleted with the Builder");
        b.spec.cache.retain = true;
        assert!(claim(&b, 0).metadata.owner_references.is_none(), "retained across deletion");
        assert!(pod(&b, 0, &defaults(), "h").metadata.owner_references.is_some());
    }

    #[test]
    fn platforms_are_added_to_the_users_node_affinity() {
        let mut b = builder(GOLDEN_BUILDER);
        b.spec.platforms = vec!["linux/arm64".into()];
        b.spec.template.affinity = Some(
            serde_json::from_value(serde_json::json!({"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]},
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["nvme"]}]}]}}}))
            .unwrap(),
        );
        let spec = pod(&b, 0, &defaults(), "h").spec.unwrap();
        let terms = spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2, "each of the user's alternatives stays");
        for term in terms {
            let keys: Vec<_> =
                term.match_expressions.unwrap().into_iter().map(|r| (r.key, r.values)).collect();
            assert!(keys.contains(&("kubernetes.io/arch".into(), Some(vec!["arm64".into()]))), "{keys:?}");
        }
    }

    #[test]
    fn fresh_demand_raises_the_target_within_the_bounds() {
        let now = k8s_openapi::jiff::Timestamp::from_second(1_000_000).unwrap();
        let with = |demand: &str, age: i64| {
            let mut b = builder(GOLDEN_BUILDER);
            b.spec.replicas = kiln_crds::builder::Replicas { min: 0, max: 3, desired: None };
            b.spec.max_parallel_builds = 2;
            let at = k8s_openapi::jiff::Timestamp::from_second(1_000_000 - age).unwrap().to_string();
            b.metadata.annotations = Some(
                [(ANNOTATION_DEMAND.to_owned(), demand.to_owned()), (ANNOTATION_DEMAND_AT.to_owned(), at)]
                    .into(),
            );
            target(&b, now)
        };
        assert_eq!(with("0", 1), 0, "an idle pool stays at min");
        assert_eq!(with("1", 1), 1, "one waiting session brings up a builder: scale from zero");
        assert_eq!(with("3", 1), 2, "two sessions a builder");
        assert_eq!(with("40", 1), 3, "never above max");
        assert_eq!(with("3", 600), 0, "a stale demand counts for nothing");
        let mut scaled = builder(GOLDEN_BUILDER);
        scaled.spec.replicas.desired = Some(3);
        assert_eq!(target(&scaled, now), 3, "kubectl scale sets the floor");
    }

    #[test]
    fn ordinals_are_read_back_from_pod_names() {
        let b = builder(GOLDEN_BUILDER);
        assert_eq!(ordinal_of(&b, "ci-3"), Some(3));
        assert_eq!(ordinal_of(&b, "ci-x"), None);
        assert_eq!(ordinal_of(&b, "cis-3"), None);
    }
}
