//! One pod bound to the stand-in's node, from first sight to deletion: an IP,
//! its volumes, env and images resolved (waiting with the kubelet's reason
//! while they cannot be), a supervisor per container, the status written back
//! on every change, and on deletion SIGTERM → grace → SIGKILL, then the final
//! delete with gracePeriodSeconds=0 that lets the API server remove it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, instrument, warn};

use super::container::{self, Launch, Mount, Stop};
use super::{Blocked, Ctx, Error, LOG_ANNOTATION, PodEvents, env, status, volumes};

/// What the main loop tells a pod worker.
#[derive(Debug)]
pub enum PodSignal {
    /// The latest version of the pod (a deletionTimestamp starts the graceful stop).
    Updated(Box<Pod>),
    /// The pod is gone from the API, or the stand-in exits: kill at once.
    Vanished,
}

/// How the worker's wait ended.
enum End {
    /// Deleted gracefully: stop within this grace, then remove the pod.
    Delete(Duration),
    Vanished,
}

struct Worker {
    ctx: Arc<Ctx>,
    pod: Pod,
    name: String,
    namespace: String,
    uid: String,
    ip: Ipv4Addr,
    events: PodEvents,
    start_time: Time,
    statuses: Vec<ContainerStatus>,
    log: PathBuf,
    dir: PathBuf,
}

#[instrument(skip_all, fields(pod = %key(&pod), uid = pod.metadata.uid.as_deref().unwrap_or_default()))]
pub async fn run(ctx: Arc<Ctx>, pod: Pod, mut signals: mpsc::UnboundedReceiver<PodSignal>) {
    let preferred = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok());
    let ip = ctx.allocate_ip(preferred);
    let Some(ip) = ip else {
        warn!("no free loopback address for the pod");
        let mut worker = Worker::new(ctx, pod, Ipv4Addr::UNSPECIFIED);
        worker
            .block(&Blocked::everywhere(
                "ContainerCreating",
                "no free 127.0.0.N address left on the kubelet stand-in",
            ))
            .await;
        let end = worker.wait_for_end(&mut signals).await;
        worker.finish(end, Vec::new()).await;
        return;
    };
    let mut worker = Worker::new(ctx.clone(), pod, ip);
    if let Some(grace) = worker.deleting() {
        // Seen first while being deleted (a stand-in restart, or a late watch
        // event for a pod already finished): nothing runs, only the delete is due.
        worker.finish(End::Delete(grace), Vec::new()).await;
        ctx.release_ip(ip);
        return;
    }
    worker.announce_log().await;
    worker.write_status().await;

    // Resolve images, volumes and env; until that works, wait and retry as the kubelet does.
    let mut shown: Option<String> = None;
    let launches = loop {
        if worker.deleting().is_some() {
            break None;
        }
        match worker.prepare().await {
            Ok(launches) => break Some(launches),
            Err(blocked) => {
                if shown.as_deref() != Some(blocked.message.as_str()) {
                    let reason = if blocked.reason == "ErrImagePull" { "Failed" } else { "FailedMount" };
                    worker
                        .events
                        .publish(EventType::Warning, reason, "Prepare", blocked.message.clone())
                        .await;
                    shown = Some(blocked.message.clone());
                }
                worker.block(&blocked).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            signal = signals.recv() => match signal {
                Some(PodSignal::Updated(pod)) => worker.update(*pod),
                None | Some(PodSignal::Vanished) => break None,
            },
        }
    };
    let Some(launches) = launches else {
        let end = worker.end_now();
        worker.finish(end, Vec::new()).await;
        ctx.release_ip(ip);
        return;
    };

    let (stop_tx, stop_rx) = watch::channel(None);
    let (updates_tx, mut updates) = mpsc::unbounded_channel();
    let mut containers = JoinSet::new();
    for launch in launches {
        let events = worker.events.clone();
        containers.spawn(container::supervise(
            ctx.clone(),
            launch,
            events,
            updates_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(updates_tx);

    let end = loop {
        if let Some(grace) = worker.deleting() {
            break End::Delete(grace);
        }
        tokio::select! {
            update = updates.recv() => {
                let Some((index, status)) = update else { continue };
                worker.set_container(index, status);
                // Coalesce a burst of changes into one write.
                while let Ok((index, status)) = updates.try_recv() {
                    worker.set_container(index, status);
                }
                worker.write_status().await;
            }
            signal = signals.recv() => match signal {
                Some(PodSignal::Updated(pod)) => worker.update(*pod),
                None | Some(PodSignal::Vanished) => break End::Vanished,
            },
        }
    };
    let mode = match end {
        End::Delete(grace) => {
            let note = format!("Stopping container(s) with a grace period of {}s", grace.as_secs());
            worker.events.publish(EventType::Normal, "Killing", "Kill", note).await;
            Stop::Graceful(grace)
        }
        End::Vanished => Stop::Kill,
    };
    info!(?mode, "stopping the pod's containers");
    let _ = stop_tx.send(Some(mode));
    let mut last = Vec::new();
    while let Some(done) = containers.join_next().await {
        match done {
            Ok(status) => last.push(status),
            Err(e) => warn!(error = %e, "a container supervisor failed"),
        }
    }
    worker.finish(end, last).await;
    ctx.release_ip(ip);
}

impl Worker {
    fn new(ctx: Arc<Ctx>, pod: Pod, ip: Ipv4Addr) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let events = PodEvents::new(&ctx, &pod);
        let start_time =
            pod.status.as_ref().and_then(|s| s.start_time.clone()).unwrap_or_else(|| Time(Timestamp::now()));
        let statuses = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                started: Some(false),
                state: Some(container::waiting("ContainerCreating", "")),
                ..Default::default()
            })
            .collect();
        let log = ctx.state.join("logs").join(format!("{namespace}_{name}_{uid}.log"));
        let dir = ctx.state.join("pods").join(&uid);
        Self { ctx, pod, name, namespace, uid, ip, events, start_time, statuses, log, dir }
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    /// Takes a newer version of the pod; an older one (a late watch event) is ignored.
    fn update(&mut self, pod: Pod) {
        let version = |p: &Pod| p.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok());
        if version(&pod) >= version(&self.pod) || version(&pod).is_none() {
            self.pod = pod;
        }
    }

    /// The grace period when the pod is being deleted.
    fn deleting(&self) -> Option<Duration> {
        self.pod.metadata.deletion_timestamp.as_ref()?;
        let secs = self.pod.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0);
        Some(Duration::from_secs(secs as u64))
    }

    /// How a pod that never ran ends: deleted if that was asked, else it vanished.
    fn end_now(&self) -> End {
        self.deleting().map_or(End::Vanished, End::Delete)
    }

    async fn wait_for_end(&mut self, signals: &mut mpsc::UnboundedReceiver<PodSignal>) -> End {
        loop {
            if let Some(grace) = self.deleting() {
                return End::Delete(grace);
            }
            match signals.recv().await {
                Some(PodSignal::Updated(pod)) => self.update(*pod),
                None | Some(PodSignal::Vanished) => return End::Vanished,
            }
        }
    }

    /// Records where the pod's output goes, for anyone debugging a failing test.
    async fn announce_log(&self) {
        if let Some(parent) = self.log.parent()
            && let Err(e) = std::fs::create_dir_all(parent)
        {
            warn!(error = %e, dir = %parent.display(), "creating the log directory failed");
        }
        let patch = json!({"metadata": {"annotations": {LOG_ANNOTATION: self.log.display().to_string()}}});
        if let Err(e) = self.api().patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            warn!(error = %e, "annotating the pod with its log path failed");
        }
    }

    async fn prepare(&self) -> Result<Vec<Launch>, Blocked> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(Blocked::everywhere(
                "CreateContainerConfigError",
                "init containers are not supported by the kubelet stand-in",
            ));
        }
        // Images first: an unmapped image is the most telling failure.
        let mut binaries = Vec::new();
        for (index, c) in spec.containers.iter().enumerate() {
            let image = c.image.as_deref().unwrap_or_default();
            match self.ctx.images.resolve(image) {
                Some(binary) => binaries.push(self.ctx.absolute(binary)),
                None => {
                    return Err(Blocked {
                        reason: "ErrImagePull".into(),
                        message: format!(
                            "Failed to pull image {image:?}: the kubelet stand-in maps no binary to it \
                             (give --image NAME=PATH)"
                        ),
                        container: Some(index),
                    });
                }
            }
        }
        let volume_paths = volumes::prepare(&self.ctx, &self.pod, &self.dir).await?;
        let restart_policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
        let grace = Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
        let pod_ip = self.ip.to_string();
        let mut launches = Vec::new();
        for (index, (c, binary)) in spec.containers.iter().zip(binaries).enumerate() {
            let env = env::environment(&self.ctx, &self.pod, c, &pod_ip).await.map_err(|message| {
                Blocked { reason: "CreateContainerConfigError".into(), message, container: Some(index) }
            })?;
            let args = env::arguments(c, &env);
            let env = env::for_exec(&self.ctx.env, &self.pod, &env);
            let mut mounts = Vec::new();
            for m in c.volume_mounts.iter().flatten() {
                let Some(source) = volume_paths.get(&m.name) else {
                    return Err(Blocked {
                        reason: "CreateContainerConfigError".into(),
                        message: format!("volumeMount {:?} names no volume of the pod", m.name),
                        container: Some(index),
                    });
                };
                let sub = m.sub_path.as_deref().filter(|s| !s.is_empty());
                mounts.push(Mount {
                    source: sub.map_or_else(|| source.clone(), |s| source.join(s)),
                    target: PathBuf::from(&m.mount_path),
                    read_only: m.read_only.unwrap_or(false),
                });
            }
            launches.push(Launch {
                index,
                spec: c.clone(),
                image_id: format!("kiln-stand-in://{}", binary.display()),
                binary,
                args,
                env,
                mounts,
                log: self.log.clone(),
                pod_ip: IpAddr::V4(self.ip),
                restart_policy: restart_policy.clone(),
                grace,
                pod_label: format!("{}_{}({})", self.name, self.namespace, self.uid),
            });
        }
        Ok(launches)
    }

    /// Every container waits with the blocker's reason (the one it names gets
    /// the message, the others wait behind it).
    async fn block(&mut self, blocked: &Blocked) {
        for (index, status) in self.statuses.iter_mut().enumerate() {
            let state = match blocked.container {
                Some(i) if i != index => container::waiting("ContainerCreating", ""),
                _ => container::waiting(&blocked.reason, &blocked.message),
            };
            status.state = Some(state);
        }
        self.write_status().await;
    }

    fn set_container(&mut self, index: usize, status: ContainerStatus) {
        if let Some(slot) = self.statuses.get_mut(index) {
            *slot = status;
        }
    }

    /// Writes the whole status with a strategic merge patch, as the kubelet does.
    async fn write_status(&mut self) {
        let now = Time(Timestamp::now());
        let restart_policy =
            self.pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
        let phase = status::phase(restart_policy, &self.statuses);
        let conditions = status::conditions(&self.pod, &self.statuses, &now);
        let ip = (!self.ip.is_unspecified()).then(|| self.ip.to_string());
        let patch = json!({
            "status": {
                "phase": phase,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": ip,
                "podIPs": ip.as_ref().map(|ip| vec![json!({"ip": ip})]),
                "startTime": self.start_time,
                "conditions": conditions,
                "containerStatuses": self.statuses,
            }
        });
        match self.api().patch_status(&self.name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
            Ok(pod) => self.update(pod),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(error = %Error::WritePodStatus { pod: key(&self.pod), source: e }, "status not written")
            }
        }
    }

    /// Last status, then the final delete (graceful case), then the pod's files.
    async fn finish(&mut self, end: End, last: Vec<ContainerStatus>) {
        for status in last {
            if let Some(slot) = self.statuses.iter_mut().find(|s| s.name == status.name) {
                *slot = status;
            }
        }
        if let End::Delete(_) = end {
            self.write_status().await;
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
                ..DeleteParams::default()
            };
            match self.api().delete(&self.name, &params).await {
                Ok(_) => info!("pod deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => {
                    warn!(error = %Error::DeletePod { pod: key(&self.pod), source: e }, "pod not deleted")
                }
            }
        }
        remove_dir(&self.dir);
    }
}

fn remove_dir(dir: &Path) {
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        warn!(error = %e, dir = %dir.display(), "removing the pod's directory failed");
    }
}

/// `namespace/name`, for logs and errors.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}
