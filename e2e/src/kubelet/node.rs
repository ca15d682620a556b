//! The stand-in's Node: registered with the labels, capacity and addresses
//! the scheduler filters on, kept Ready by a heartbeat on its status and its
//! Lease in kube-node-lease (pkg/kubelet/kubelet_node_status.go,
//! pkg/kubelet/nodelease), and removed when the stand-in exits so no stale
//! Ready node is left for the scheduler.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tracing::{instrument, warn};

use super::{Ctx, Error, FIELD_MANAGER};

/// How often the Ready heartbeat and the Lease are renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;

/// The machine as the Node reports it.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub memory_kib: u64,
    pub arch: &'static str,
    pub kernel: String,
    pub os_image: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        Self {
            cpus,
            memory_kib: mem_total_kib(&meminfo).unwrap_or(1024 * 1024),
            arch: go_arch(std::env::consts::ARCH),
            kernel,
            os_image: pretty_name(&os_release).unwrap_or_else(|| "Linux".into()),
        }
    }
}

/// Rust's architecture names in Go's spelling, which Kubernetes labels use.
pub fn go_arch(rust: &'static str) -> &'static str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn pretty_name(os_release: &str) -> Option<String> {
    let line = os_release.lines().find(|l| l.starts_with("PRETTY_NAME="))?;
    Some(line["PRETTY_NAME=".len()..].trim_matches('"').to_owned())
}

/// The Node object (labels and spec) the stand-in applies.
pub fn node_object(name: &str, machine: &Machine) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": machine.arch,
                "kubernetes.io/hostname": name,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": machine.arch,
            },
        },
    })
}

/// The Node's status at `now`, Ready `since`: capacity, conditions, addresses, info.
pub fn node_status(name: &str, machine: &Machine, since: &Time, now: &Time) -> Value {
    let resources = json!({
        "cpu": machine.cpus.to_string(),
        "memory": format!("{}Ki", machine.memory_kib),
        "pods": "110",
    });
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since,
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("Ready", "True", "KubeletReady", "the kubelet stand-in is posting ready status"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure checks: kubelet stand-in"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure checks: kubelet stand-in"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure checks: kubelet stand-in"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": machine.arch,
                "operatingSystem": "linux",
                "osImage": machine.os_image,
                "kernelVersion": machine.kernel,
                "kubeletVersion": concat!("kiln-kubelet-standin/", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "kiln-stand-in://local-processes",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
        },
    })
}

/// Applies the Node and its status.
#[instrument(skip_all, fields(node = %ctx.node))]
pub async fn register(ctx: &Ctx) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let register = |source| Error::RegisterNode { node: ctx.node.clone(), source };
    nodes
        .patch(&ctx.node, &apply, &Patch::Apply(node_object(&ctx.node, &ctx.machine)))
        .await
        .map_err(register)?;
    heartbeat(ctx).await
}

/// Renews the Ready condition and the Lease.
pub async fn heartbeat(ctx: &Ctx) -> Result<(), Error> {
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let now = Time(Timestamp::now());
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = nodes
        .patch_status(
            &ctx.node,
            &apply,
            &Patch::Apply(node_status(&ctx.node, &ctx.machine, &ctx.since, &now)),
        )
        .await
        .map_err(|source| Error::RegisterNode { node: ctx.node.clone(), source })?;
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": ctx.node,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": ctx.node,
                "uid": node.metadata.uid.unwrap_or_default(),
            }],
        },
        "spec": {
            "holderIdentity": ctx.node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": MicroTime(now.0),
        },
    });
    leases
        .patch(&ctx.node, &apply, &Patch::Apply(lease))
        .await
        .map_err(|source| Error::RenewLease { node: ctx.node.clone(), source })?;
    Ok(())
}

/// Heartbeats until the task is dropped; a failed one is logged and retried.
pub async fn keep_ready(ctx: std::sync::Arc<Ctx>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if let Err(e) = heartbeat(&ctx).await {
            warn!(error = %e, "node heartbeat failed");
        }
    }
}

/// Removes the Node (its Lease goes with it through the owner reference).
pub async fn deregister(ctx: &Ctx) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    match nodes.delete(&ctx.node, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::DeregisterNode { node: ctx.node.clone(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_facts_parse() {
        assert_eq!(mem_total_kib("MemFree: 1 kB\nMemTotal:       24536312 kB\n"), Some(24_536_312));
        assert_eq!(mem_total_kib("nothing"), None);
        assert_eq!(
            pretty_name("ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }

    #[test]
    fn the_node_carries_what_the_scheduler_filters_on() {
        let machine = Machine {
            cpus: 2,
            memory_kib: 1000,
            arch: "amd64",
            kernel: "6.1".into(),
            os_image: "Debian".into(),
        };
        let node = node_object("kiln-local", &machine);
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], "kiln-local");
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/arch"], "amd64");
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/os"], "linux");
        let now = Time(Timestamp::from_second(1).unwrap());
        let status = &node_status("kiln-local", &machine, &now, &now)["status"];
        assert_eq!(status["allocatable"], json!({"cpu": "2", "memory": "1000Ki", "pods": "110"}));
        assert_eq!(status["conditions"][0]["type"], "Ready");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["addresses"][0], json!({"type": "InternalIP", "address": "127.0.0.1"}));
    }
}
