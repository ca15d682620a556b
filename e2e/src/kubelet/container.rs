//! One container of a pod as a local process: started through `unshare` into
//! a private mount namespace where the stand-in's `container-init` binds the
//! volumes and execs the program; probed; restarted with back-off per the
//! restart policy; stopped with SIGTERM, grace, then SIGKILL of its process
//! group. Every change of its status goes to the pod worker.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt as _;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{info, instrument, warn};

use super::probe::{Outcome, Prober, Verdict};
use super::{Ctx, PodEvents};

/// A bind mount into the container's mount namespace.
#[derive(Debug, Clone)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything needed to run one container, resolved from the pod spec.
#[derive(Debug, Clone)]
pub struct Launch {
    pub index: usize,
    pub spec: Container,
    pub image_id: String,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub log: PathBuf,
    pub pod_ip: IpAddr,
    pub restart_policy: String,
    /// The pod's terminationGracePeriodSeconds, for probe-failure kills.
    pub grace: Duration,
    /// `name_namespace(uid)`, as the kubelet names a pod in its messages.
    pub pod_label: String,
}

/// How the pod worker ends a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, then SIGKILL after the grace period.
    Graceful(Duration),
    /// SIGKILL now: the pod is gone or the stand-in exits.
    Kill,
}

pub type Updates = mpsc::UnboundedSender<(usize, ContainerStatus)>;

/// How a run of the process ended.
enum RunEnd {
    Exited(ExitStatus),
    /// A startup or liveness probe failed and the process was killed for it.
    Unhealthy(ExitStatus),
    Stopped(Option<ExitStatus>),
}

/// Supervises one container until the pod worker stops it; returns its last status.
#[instrument(skip_all, fields(container = %launch.spec.name))]
pub async fn supervise(
    ctx: Arc<Ctx>,
    launch: Launch,
    events: PodEvents,
    updates: Updates,
    mut stop: watch::Receiver<Option<Stop>>,
) -> ContainerStatus {
    let mut c = Supervisor { status: initial_status(&launch), ctx, launch, events, updates };
    let mut backoff = c.ctx.backoff.initial;
    // Whether this run is a restart, and whether the next restart waits.
    let (mut restarting, mut backing_off) = (false, false);
    loop {
        if restarting {
            c.status.restart_count += 1;
        }
        let started = Timestamp::now();
        let run_start = Instant::now();
        let end = match c.spawn(started) {
            Ok(child) => c.run(child, &mut stop).await,
            Err(message) => {
                c.events.publish(EventType::Warning, "Failed", "Start", message.clone()).await;
                c.set_state(waiting("RunContainerError", &message), None);
                RunEnd::Exited(ExitStatus::from_raw(127 << 8))
            }
        };
        let (exit, unhealthy) = match end {
            RunEnd::Stopped(exit) => {
                if let Some(exit) = exit {
                    let terminated = terminated(exit, started, None);
                    c.note(&format!("exited with code {} on the pod's stop", terminated.exit_code));
                    c.set_state(ContainerState { terminated: Some(terminated), ..Default::default() }, None);
                }
                c.status.ready = false;
                return c.status;
            }
            RunEnd::Exited(exit) => (exit, false),
            RunEnd::Unhealthy(exit) => (exit, true),
        };
        let last = terminated(exit, started, unhealthy.then_some("Error"));
        let code = last.exit_code;
        let restart = match c.launch.restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0 || unhealthy,
            _ => true,
        };
        info!(container = %c.launch.spec.name, code, restart, "container exited");
        c.note(&format!("exited with code {code}"));
        if !restart {
            c.set_state(ContainerState { terminated: Some(last), ..Default::default() }, None);
            // Nothing more to run: wait for the pod to be stopped.
            stopped(&mut stop).await;
            return c.status;
        }
        // A container that ran long enough starts its back-off over (the kubelet's rule).
        if run_start.elapsed() > 2 * c.ctx.backoff.max {
            backoff = c.ctx.backoff.initial;
            backing_off = false;
        }
        let last_state = ContainerState { terminated: Some(last), ..Default::default() };
        // The first restart is immediate, later ones wait their back-off.
        if backing_off {
            let message = format!(
                "back-off {} restarting failed container={} pod={}",
                show_duration(backoff),
                c.launch.spec.name,
                c.launch.pod_label
            );
            c.events
                .publish(
                    EventType::Warning,
                    "BackOff",
                    "Restart",
                    "Back-off restarting failed container".into(),
                )
                .await;
            c.set_state(waiting("CrashLoopBackOff", &message), Some(last_state));
            tokio::select! {
                () = sleep(backoff) => {}
                _ = stopped(&mut stop) => {
                    c.status.ready = false;
                    return c.status;
                }
            }
            backoff = (backoff * 2).min(c.ctx.backoff.max);
        } else {
            c.status.last_state = Some(last_state);
        }
        restarting = true;
        backing_off = true;
    }
}

struct Supervisor {
    ctx: Arc<Ctx>,
    launch: Launch,
    events: PodEvents,
    updates: Updates,
    status: ContainerStatus,
}

impl Supervisor {
    fn publish(&self) {
        // The pod worker outlives its containers; a closed channel means it is shutting down.
        let _ = self.updates.send((self.launch.index, self.status.clone()));
    }

    /// A line from the stand-in in the pod's log, between the program's output.
    fn note(&self, what: &str) {
        let line = format!("--- kubelet stand-in: container {} {what}\n", self.launch.spec.name);
        let file = std::fs::OpenOptions::new().append(true).open(&self.launch.log);
        if let Err(e) = file.and_then(|mut f| f.write_all(line.as_bytes())) {
            warn!(error = %e, log = %self.launch.log.display(), "writing to the pod log failed");
        }
    }

    fn set_state(&mut self, state: ContainerState, last_state: Option<ContainerState>) {
        let running = state.running.is_some();
        self.status.state = Some(state);
        if let Some(last) = last_state {
            self.status.last_state = Some(last);
        }
        if !running {
            self.status.ready = false;
            self.status.started = Some(false);
        }
        self.publish();
    }

    /// `unshare --mount --propagation private -- <self> container-init … -- BINARY ARGS…`
    fn spawn(&mut self, started: Timestamp) -> Result<Child, String> {
        let launch = &self.launch;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(|e| format!("opening the log {}: {e}", launch.log.display()))?;
        let _ = writeln!(
            log,
            "--- kubelet stand-in: container {} starting (restart {}) at {started}: {}",
            launch.spec.name,
            self.status.restart_count,
            super::env::show(&launch.binary, &launch.args)
        );
        let err_log =
            log.try_clone().map_err(|e| format!("opening the log {}: {e}", launch.log.display()))?;
        let mut cmd = Command::new(&self.ctx.unshare);
        cmd.args(["--mount", "--propagation", "private", "--"])
            .arg(&self.ctx.self_exe)
            .arg("container-init")
            .arg("--parent")
            .arg(std::process::id().to_string());
        for mount in &launch.mounts {
            let mode = if mount.read_only { "ro" } else { "rw" };
            cmd.arg("--bind").arg(&mount.source).arg(&mount.target).arg(mode);
        }
        let workdir = launch.spec.working_dir.as_deref().filter(|d| !d.is_empty()).unwrap_or("/");
        cmd.arg("--workdir").arg(workdir).arg("--").arg(&launch.binary);
        cmd.args(launch.args.iter().map(OsString::from));
        cmd.env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            // Its own process group, so whatever it starts can be killed with it.
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", self.ctx.unshare.display()))?;
        let pid = child.id().unwrap_or_default();
        info!(container = %launch.spec.name, pid, "container started");
        self.status.container_id = Some(format!("kiln-stand-in://{pid}"));
        let has_startup = launch.spec.startup_probe.is_some();
        let has_readiness = launch.spec.readiness_probe.is_some();
        self.status.started = Some(!has_startup);
        self.status.state = Some(ContainerState {
            running: Some(ContainerStateRunning { started_at: Some(Time(started)) }),
            ..Default::default()
        });
        self.status.ready = !has_startup && !has_readiness;
        self.publish();
        Ok(child)
    }

    async fn run(&mut self, mut child: Child, stop: &mut watch::Receiver<Option<Stop>>) -> RunEnd {
        let spec = self.launch.spec.clone();
        let now = Instant::now();
        let mut startup = spec.startup_probe.as_ref().map(|p| Prober::new("Startup", p, now));
        let mut liveness = spec.liveness_probe.as_ref().map(|p| Prober::new("Liveness", p, now));
        let mut readiness = spec.readiness_probe.as_ref().map(|p| Prober::new("Readiness", p, now));
        let has_readiness = readiness.is_some();
        let pid = child.id();
        self.events
            .publish(EventType::Normal, "Started", "Start", format!("Started container {}", spec.name))
            .await;
        loop {
            let started_ok = self.status.started == Some(true);
            let next = if started_ok {
                [liveness.as_ref(), readiness.as_ref()].into_iter().flatten().map(|p| p.next).min()
            } else {
                startup.as_ref().map(|p| p.next)
            };
            tokio::select! {
                exit = child.wait() => {
                    kill_group(pid);
                    return match exit {
                        Ok(status) => RunEnd::Exited(status),
                        Err(e) => {
                            warn!(container = %spec.name, error = %e, "waiting for the container failed");
                            RunEnd::Exited(ExitStatus::from_raw(255 << 8))
                        }
                    };
                }
                mode = stopped(stop) => {
                    return RunEnd::Stopped(terminate(&mut child, mode).await);
                }
                () = sleep_until(next.unwrap_or(now)), if next.is_some() => {
                    let ip = self.launch.pod_ip;
                    let probers = if started_ok {
                        vec![liveness.as_mut(), readiness.as_mut()]
                    } else {
                        vec![startup.as_mut()]
                    };
                    for prober in probers.into_iter().flatten() {
                        if prober.next > Instant::now() {
                            continue;
                        }
                        let (outcome, verdict) = prober.attempt(&spec, ip).await;
                        if let Outcome::Failure(why) = &outcome {
                            let note = format!("{} probe failed: {why}", prober.kind);
                            self.events.publish(EventType::Warning, "Unhealthy", "Probe", note).await;
                        }
                        match (prober.kind, verdict) {
                            ("Startup", Some(Verdict::Passed)) => {
                                self.status.started = Some(true);
                                self.status.ready = !has_readiness;
                                self.publish();
                            }
                            ("Readiness", Some(Verdict::Passed)) if !self.status.ready => {
                                self.status.ready = true;
                                self.publish();
                            }
                            ("Readiness", Some(Verdict::Failed(_))) if self.status.ready => {
                                self.status.ready = false;
                                self.publish();
                            }
                            ("Startup" | "Liveness", Some(Verdict::Failed(_))) => {
                                let note = format!(
                                    "Container {} failed {} probe, will be restarted",
                                    spec.name,
                                    prober.kind.to_lowercase()
                                );
                                self.events.publish(EventType::Normal, "Killing", "Kill", note).await;
                                self.status.ready = false;
                                self.publish();
                                let exit = terminate(&mut child, Stop::Graceful(self.launch.grace)).await;
                                return RunEnd::Unhealthy(exit.unwrap_or(ExitStatus::from_raw(Signal::SIGKILL as i32)));
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

/// Waits for the pod worker's stop; a vanished worker means kill.
async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    match stop.wait_for(Option::is_some).await {
        Ok(mode) => (*mode).unwrap_or(Stop::Kill),
        Err(_) => Stop::Kill,
    }
}

/// Stops the process as `mode` says; its exit status when it could be reaped.
pub async fn terminate(child: &mut Child, mode: Stop) -> Option<ExitStatus> {
    let pid = child.id();
    if let (Stop::Graceful(grace), Some(pid)) = (mode, pid) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if let Ok(Ok(status)) = timeout(grace, child.wait()).await {
            kill_group(Some(pid));
            return Some(status);
        }
    }
    kill_group(pid);
    let _ = child.start_kill();
    child.wait().await.ok()
}

/// SIGKILL to what is left of a container's process group (what it started).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

fn initial_status(launch: &Launch) -> ContainerStatus {
    ContainerStatus {
        name: launch.spec.name.clone(),
        image: launch.spec.image.clone().unwrap_or_default(),
        image_id: launch.image_id.clone(),
        started: Some(false),
        state: Some(waiting("ContainerCreating", "")),
        ..Default::default()
    }
}

pub fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: (!message.is_empty()).then(|| message.to_owned()),
        }),
        ..Default::default()
    }
}

/// The terminated state of a run: a signal death reads as 128+signal, like a shell.
fn terminated(exit: ExitStatus, started: Timestamp, reason: Option<&str>) -> ContainerStateTerminated {
    let (code, signal) = match (exit.code(), exit.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (255, None),
    };
    let reason = reason.unwrap_or(if code == 0 { "Completed" } else { "Error" });
    ContainerStateTerminated {
        exit_code: code,
        signal,
        reason: Some(reason.to_owned()),
        started_at: Some(Time(started)),
        finished_at: Some(Time(Timestamp::now())),
        ..Default::default()
    }
}

/// `1s`, `2m0s`: Go's duration format, as in the kubelet's back-off message.
fn show_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 { format!("{}m{}s", secs / 60, secs % 60) } else { format!("{secs}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_as_the_kubelet_shows_them() {
        let t = Timestamp::now();
        let ok = terminated(ExitStatus::from_raw(0), t, None);
        assert_eq!((ok.exit_code, ok.reason.as_deref()), (0, Some("Completed")));
        let failed = terminated(ExitStatus::from_raw(3 << 8), t, None);
        assert_eq!((failed.exit_code, failed.reason.as_deref()), (3, Some("Error")));
        let killed = terminated(ExitStatus::from_raw(Signal::SIGKILL as i32), t, None);
        assert_eq!((killed.exit_code, killed.signal), (137, Some(9)));
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(show_duration(Duration::from_secs(2)), "2s");
        assert_eq!(show_duration(Duration::from_secs(80)), "1m20s");
    }
}
