//! The kubelet stand-in of the cluster test tier (README.md, "Tests"): a test
//! double for the kubelet alone. It registers a Node and keeps it Ready; runs
//! each pod the real scheduler binds to that node as local processes (one
//! loopback address 127.0.0.N per pod, each container in a private mount
//! namespace with its volumes bound at their mountPaths, the image mapped to
//! a local binary); probes, restarts and stops them as the kubelet would; and
//! writes the pod status back. Alongside runs the local volume provisioner
//! stand-in that backs the `kiln-local` StorageClass with host directories.
//!
//! The `kiln-kubelet-standin` binary runs [`run`]; tests start that binary
//! with [`KubeletStandIn::spawn`] and get a [`Handle`] that stops it on drop.

#![warn(clippy::unwrap_used, clippy::expect_used)]

mod container;
mod env;
mod expand;
mod images;
mod init;
mod ips;
mod node;
mod pod;
mod probe;
mod provisioner;
mod status;
mod volumes;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, instrument, warn};

pub use images::{ImageMap, repository};
pub use init::{Bind, InitArgs, container_init};
pub use provisioner::{PROVISIONER, STORAGE_CLASS};

use ips::IpPool;
use pod::PodSignal;

/// The Node name when none is given.
pub const DEFAULT_NODE: &str = "kiln-local";
/// The pod annotation that holds the path of the pod's output log.
pub const LOG_ANNOTATION: &str = "kiln.dev/stand-in-log";
/// The server-side-apply field manager of everything the stand-in applies.
pub const FIELD_MANAGER: &str = "kiln-kubelet-standin";
/// Written into the state directory once the Node is registered and the
/// watches run; [`KubeletStandIn::spawn`] waits for it.
pub const READY_FILE: &str = "ready";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--image {spec:?} is not NAME=PATH")]
    ImageSpec { spec: String },
    #[error("reading the kubeconfig {path}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("finding a kubeconfig (none given, none in the environment)")]
    InferConfig { source: kube::config::InferConfigError },
    #[error("making a Kubernetes client")]
    Client { source: kube::Error },
    #[error("creating {path}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("writing {path}")]
    WriteFile { path: PathBuf, source: std::io::Error },
    #[error("removing {path}")]
    RemoveDir { path: PathBuf, source: std::io::Error },
    #[error("no `unshare` (util-linux) on PATH: the stand-in runs each container in its own mount namespace")]
    NoUnshare,
    #[error("finding the stand-in's own executable")]
    SelfExe { source: std::io::Error },
    #[error("registering node {node}")]
    RegisterNode { node: String, source: kube::Error },
    #[error("renewing the lease of node {node}")]
    RenewLease { node: String, source: kube::Error },
    #[error("removing node {node}")]
    DeregisterNode { node: String, source: kube::Error },
    #[error("applying StorageClass {STORAGE_CLASS}")]
    ApplyStorageClass { source: kube::Error },
    #[error("creating PersistentVolume {volume}")]
    ProvisionVolume { volume: String, source: kube::Error },
    #[error("deleting PersistentVolume {volume}")]
    DeleteVolume { volume: String, source: kube::Error },
    #[error("writing the status of pod {pod}")]
    WritePodStatus { pod: String, source: kube::Error },
    #[error("deleting pod {pod}")]
    DeletePod { pod: String, source: kube::Error },
    #[error("installing the {signal} handler")]
    Signal { signal: &'static str, source: std::io::Error },
    #[error("setting the parent-death signal")]
    ParentDeathSignal { source: nix::Error },
    #[error("the kubelet stand-in (pid {parent}) exited before the container started")]
    StandInGone { parent: u32 },
    #[error("creating the mount point {path}")]
    MountPoint { path: PathBuf, source: std::io::Error },
    #[error("bind-mounting {source_path} at {target}")]
    Mount { source_path: PathBuf, target: PathBuf, source: nix::Error },
    #[error("entering the working directory {path}")]
    WorkingDir { path: PathBuf, source: std::io::Error },
    #[error("executing {program}")]
    Exec { program: PathBuf, source: std::io::Error },
    #[error("starting {binary}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("the kubelet stand-in exited with {status} before it was ready; its log ({log}):\n{text}")]
    ExitedEarly { status: ExitStatus, log: PathBuf, text: String },
    #[error("the kubelet stand-in was not ready after {waited:?}; its log ({log}):\n{text}")]
    NotReady { waited: Duration, log: PathBuf, text: String },
}

/// The restart back-off: the kubelet's 10 s doubling to 5 min, scaled down for tests.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max: Duration::from_secs(20) }
    }
}

/// What [`run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// None: `$KUBECONFIG` or the in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    pub node: String,
    /// Logs, per-pod directories, the ready marker.
    pub state: PathBuf,
    /// Where provisioned volumes live; `<state>/volumes` when None. Stand-ins
    /// that share a cluster should share it: any of them may provision a claim.
    pub volumes: Option<PathBuf>,
    pub images: ImageMap,
    pub backoff: Backoff,
}

/// What every task of the stand-in shares.
pub(crate) struct Ctx {
    client: Client,
    node: String,
    state: PathBuf,
    volumes: PathBuf,
    images: ImageMap,
    machine: node::Machine,
    since: Time,
    env: env::Base,
    ips: Mutex<IpPool>,
    recorder: Recorder,
    self_exe: PathBuf,
    unshare: PathBuf,
    backoff: Backoff,
    cwd: PathBuf,
}

impl Ctx {
    fn allocate_ip(&self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.ips.lock().unwrap_or_else(PoisonError::into_inner).allocate(preferred)
    }

    fn release_ip(&self, ip: Ipv4Addr) {
        self.ips.lock().unwrap_or_else(PoisonError::into_inner).release(ip);
    }

    /// Image binaries given relative resolve against the stand-in's directory.
    fn absolute(&self, path: &Path) -> PathBuf {
        self.cwd.join(path)
    }
}

/// Events about one pod, as the kubelet posts them (Started, Killing, Unhealthy, …).
#[derive(Clone)]
pub(crate) struct PodEvents {
    recorder: Recorder,
    reference: ObjectReference,
}

impl PodEvents {
    fn new(ctx: &Ctx, pod: &Pod) -> Self {
        Self { recorder: ctx.recorder.clone(), reference: pod.object_ref(&()) }
    }

    /// Posts an event; failing to is only logged (events are best effort).
    async fn publish(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &self.reference).await {
            warn!(error = %e, reason, "posting an event failed");
        }
    }
}

/// Why a pod's containers cannot start yet: the kubelet's waiting reason and message.
#[derive(Debug, Clone)]
pub(crate) struct Blocked {
    reason: String,
    message: String,
    /// The container it is about, or None for all.
    container: Option<usize>,
}

impl Blocked {
    fn everywhere(reason: &str, message: &str) -> Self {
        Self { reason: reason.into(), message: message.into(), container: None }
    }
}

/// Runs the stand-in until SIGTERM or SIGINT, then kills every process it
/// started and removes its Node.
#[instrument(skip_all, fields(node = %config.node))]
pub async fn run(config: Config) -> Result<(), Error> {
    let client_config = match &config.kubeconfig {
        Some(path) => {
            let read = |source| Error::Kubeconfig { path: path.clone(), source };
            let file = kube::config::Kubeconfig::read_from(path).map_err(read)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(read)?
        }
        None => kube::Config::infer().await.map_err(|source| Error::InferConfig { source })?,
    };
    let api_host =
        client_config.cluster_url.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']).to_owned();
    let api_port = client_config.cluster_url.port_u16().unwrap_or(443);
    let client = Client::try_from(client_config).map_err(|source| Error::Client { source })?;

    let volumes = config.volumes.clone().unwrap_or_else(|| config.state.join("volumes"));
    for dir in [config.state.clone(), config.state.join("logs"), config.state.join("pods"), volumes.clone()] {
        std::fs::create_dir_all(&dir).map_err(|source| Error::CreateDir { path: dir.clone(), source })?;
    }
    let ready_file = config.state.join(READY_FILE);
    let _ = std::fs::remove_file(&ready_file);
    let host_path = std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let unshare = std::env::split_paths(&host_path)
        .map(|d| d.join("unshare"))
        .find(|p| p.is_file())
        .ok_or(Error::NoUnshare)?;
    let reporter =
        Reporter { controller: "kiln.dev/kubelet-stand-in".into(), instance: Some(config.node.clone()) };
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        node: config.node.clone(),
        state: config.state.clone(),
        volumes,
        images: config.images.clone(),
        machine: node::Machine::detect(),
        since: Time(Timestamp::now()),
        env: env::Base { path: host_path, api_host, api_port },
        ips: Mutex::new(IpPool::default()),
        self_exe: std::env::current_exe().map_err(|source| Error::SelfExe { source })?,
        unshare,
        backoff: config.backoff,
        cwd: std::env::current_dir().map_err(|source| Error::SelfExe { source })?,
    });

    let mut term =
        signal(SignalKind::terminate()).map_err(|source| Error::Signal { signal: "SIGTERM", source })?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|source| Error::Signal { signal: "SIGINT", source })?;

    node::register(&ctx).await?;
    provisioner::ensure_storage_class(&ctx).await?;
    let heartbeat = tokio::spawn(node::keep_ready(ctx.clone()));
    let provisioner = tokio::spawn(provisioner::run(ctx.clone()));

    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.node);
    let mut pod_events =
        watcher(pods, watcher::Config::default().fields(&selector)).default_backoff().boxed();
    let mut workers = Workers::default();
    let mut ready = false;
    info!(state = %ctx.state.display(), "kubelet stand-in running");
    loop {
        tokio::select! {
            event = pod_events.next() => match event {
                Some(Ok(event)) => {
                    if matches!(event, watcher::Event::InitDone) && !ready {
                        std::fs::write(&ready_file, b"")
                            .map_err(|source| Error::WriteFile { path: ready_file.clone(), source })?;
                        ready = true;
                        info!("kubelet stand-in ready");
                    }
                    workers.handle(&ctx, event);
                }
                Some(Err(e)) => warn!(error = %e, "watching pods"),
                None => break,
            },
            _ = term.recv() => { info!("SIGTERM: stopping every container"); break; }
            _ = int.recv() => { info!("SIGINT: stopping every container"); break; }
        }
    }
    heartbeat.abort();
    provisioner.abort();
    workers.kill_all().await;
    let _ = std::fs::remove_file(&ready_file);
    node::deregister(&ctx).await
}

/// The pod workers by pod UID.
#[derive(Default)]
struct Workers {
    by_uid: HashMap<String, (mpsc::UnboundedSender<PodSignal>, JoinHandle<()>)>,
    /// UIDs listed since the last watch (re)start, to find pods that vanished meanwhile.
    listed: Option<Vec<String>>,
}

impl Workers {
    fn handle(&mut self, ctx: &Arc<Ctx>, event: watcher::Event<Pod>) {
        self.by_uid.retain(|_, (_, task)| !task.is_finished());
        match event {
            watcher::Event::Init => self.listed = Some(Vec::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(listed) = &mut self.listed {
                    listed.push(pod.metadata.uid.clone().unwrap_or_default());
                }
                self.apply(ctx, pod);
            }
            watcher::Event::InitDone => {
                let listed = self.listed.take().unwrap_or_default();
                let gone: Vec<String> =
                    self.by_uid.keys().filter(|uid| !listed.contains(uid)).cloned().collect();
                for uid in gone {
                    self.vanish(&uid);
                }
            }
            watcher::Event::Apply(pod) => self.apply(ctx, pod),
            watcher::Event::Delete(pod) => self.vanish(pod.metadata.uid.as_deref().unwrap_or_default()),
        }
    }

    fn apply(&mut self, ctx: &Arc<Ctx>, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        if let Some((tx, _)) = self.by_uid.get(&uid) {
            let _ = tx.send(PodSignal::Updated(Box::new(pod)));
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let terminal = matches!(phase, Some("Succeeded" | "Failed"));
        if terminal && pod.metadata.deletion_timestamp.is_none() {
            // Finished before this stand-in started: nothing to run.
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(pod::run(ctx.clone(), pod, rx));
        self.by_uid.insert(uid, (tx, task));
    }

    fn vanish(&mut self, uid: &str) {
        if let Some((tx, _)) = self.by_uid.get(uid) {
            let _ = tx.send(PodSignal::Vanished);
        }
    }

    /// Kills every container and waits (boundedly) for the workers to finish.
    async fn kill_all(&mut self) {
        for (tx, _) in self.by_uid.values() {
            let _ = tx.send(PodSignal::Vanished);
        }
        for (uid, (_, task)) in self.by_uid.drain() {
            if tokio::time::timeout(Duration::from_secs(10), task).await.is_err() {
                warn!(uid, "a pod worker did not finish in 10 s");
            }
        }
    }
}

/// How a test starts the stand-in binary.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `kiln-kubelet-standin` binary (in tests: `env!("CARGO_BIN_EXE_kiln-kubelet-standin")`).
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    pub node: String,
    pub state: PathBuf,
    /// The provisioned volumes' root. Every stand-in on a cluster may
    /// provision any claim, so tests share one: `$TMPDIR/kiln-kubelet-standin-volumes`.
    pub volumes: PathBuf,
    /// (image NAME or `*`, binary) pairs.
    pub images: Vec<(String, PathBuf)>,
    pub ready_timeout: Duration,
}

impl Options {
    pub fn new(
        binary: impl Into<PathBuf>,
        kubeconfig: impl Into<PathBuf>,
        state: impl Into<PathBuf>,
    ) -> Self {
        Self {
            binary: binary.into(),
            kubeconfig: kubeconfig.into(),
            node: DEFAULT_NODE.into(),
            state: state.into(),
            volumes: std::env::temp_dir().join("kiln-kubelet-standin-volumes"),
            images: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }

    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = node.into();
        self
    }

    pub fn volumes(mut self, dir: impl Into<PathBuf>) -> Self {
        self.volumes = dir.into();
        self
    }

    pub fn image(mut self, name: impl Into<String>, binary: impl Into<PathBuf>) -> Self {
        self.images.push((name.into(), binary.into()));
        self
    }
}

/// Starts the stand-in binary for tests.
#[derive(Debug)]
pub struct KubeletStandIn;

impl KubeletStandIn {
    /// Starts `kiln-kubelet-standin` and waits until its Node is registered
    /// and its pod watch runs. Its log goes to `<state>/kubelet-standin.log`.
    pub fn spawn(options: &Options) -> Result<Handle, Error> {
        let state = &options.state;
        std::fs::create_dir_all(state).map_err(|source| Error::CreateDir { path: state.clone(), source })?;
        let ready = state.join(READY_FILE);
        let _ = std::fs::remove_file(&ready);
        let log = state.join("kubelet-standin.log");
        let file =
            std::fs::File::create(&log).map_err(|source| Error::WriteFile { path: log.clone(), source })?;
        let err_file = file.try_clone().map_err(|source| Error::WriteFile { path: log.clone(), source })?;
        let mut cmd = Command::new(&options.binary);
        cmd.arg("--kubeconfig")
            .arg(&options.kubeconfig)
            .arg("--node")
            .arg(&options.node)
            .arg("--state")
            .arg(state);
        cmd.arg("--volumes").arg(&options.volumes);
        for (name, binary) in &options.images {
            let mut spec = std::ffi::OsString::from(format!("{name}="));
            spec.push(binary);
            cmd.arg("--image").arg(spec);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .spawn()
            .map_err(|source| Error::Spawn { binary: options.binary.clone(), source })?;
        let mut handle = Handle { child, node: options.node.clone(), log, state: state.clone() };
        let start = Instant::now();
        while !ready.exists() {
            if let Ok(Some(status)) = handle.child.try_wait() {
                return Err(Error::ExitedEarly { status, log: handle.log.clone(), text: handle.log_text() });
            }
            if start.elapsed() > options.ready_timeout {
                return Err(Error::NotReady {
                    waited: options.ready_timeout,
                    log: handle.log.clone(),
                    text: handle.log_text(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(handle)
    }
}

/// A running stand-in; dropping it stops it (SIGTERM: it kills its containers
/// and removes its Node; SIGKILL if that takes over 20 s).
#[derive(Debug)]
pub struct Handle {
    child: Child,
    node: String,
    log: PathBuf,
    state: PathBuf,
}

impl Handle {
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stand-in's own log.
    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the stand-in keeps pod logs and per-pod directories.
    pub fn state(&self) -> &Path {
        &self.state
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the stand-in; its exit status, or None if it had to be killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}
