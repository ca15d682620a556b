//! kilnd, a BuildKit-compatible build daemon.
//!
//! Modules carry BuildKit's nouns: `control` holds the gRPC services,
//! `worker` what the daemon can run. See ARCHITECTURE.md for the map of
//! what is still to come.

pub mod arrivals;
pub mod cache;
pub mod config;
pub mod content;
pub mod control;
pub mod debug;
pub mod executor;
pub mod exporter;
pub mod frontend;
pub mod fsutil;
pub mod gc;
pub mod metrics;
pub mod mountinfo;
pub mod rootless;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod solver;
pub mod source;
pub mod telemetry;
pub mod util;
pub mod worker;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::CacheManager;
use crate::config::Config;
use crate::content::ContentStore;
use crate::control::{ControlService, Controller, HealthService};
use crate::executor::RuncExecutor;
use crate::executor::network::Networks;
use crate::executor::rundir::RunDir;
use crate::exporter::Exporters;
use crate::frontend::gateway::{Bridge, LlbBridgeService};
use crate::metrics::Metrics;
use crate::server::Services;
use crate::session::SessionManager;
use crate::solver::Jobs;
use crate::solver::ops::WorkerOps;
use crate::solver::ops::exec::CacheMounts;
use crate::solver::ops::source::Sources;
use crate::solver::scheduler::Solver;
use crate::source::image::{Registry, RegistryHosts};
use crate::worker::Worker;

/// Runs the daemon until SIGTERM or SIGINT, then drains: listeners stop
/// accepting, calls in flight get `shutdown_grace` to finish, a second
/// signal ends the process at once.
pub async fn run(config: Config) -> anyhow::Result<()> {
    rootless::check_privileges().map_err(anyhow::Error::msg)?;
    let _lock = lock_root(&config.root)?;
    // Mount points are found by path, so the root must be absolute and canonical.
    let root = std::fs::canonicalize(&config.root)
        .with_context(|| format!("resolving {}", config.root.display()))?;
    let config = Config { root, ..config };
    let mut worker = Worker::new(&config.root, &config.oci_binary, &config.worker_labels)?;
    worker.gc_policy = config.gc.iter().map(gc::Policy::to_proto).collect();
    let worker = Arc::new(worker);
    let collector = gc::Collector::new(config.gc.clone());
    let metrics = Arc::new(Metrics::new()?);
    let serving = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();

    for warning in &config.warnings {
        warn!("{warning}");
    }
    let cache = Arc::new(CacheManager::open(&config.root.join("cache"))?);
    let sessions = SessionManager::new();
    let networks = Networks::start(&config.network).await.context(
        "setting up the network for RUN steps (kilnd needs root for it, or set \
         [worker.oci] networkMode = \"host\" / --oci-worker-net=host)",
    )?;
    // Runtime state, bundles and secrets live on a tmpfs, never under the root.
    let run_dir = RunDir::open(&config.root)?;
    let secrets_dir = run_dir.path().join("secrets");
    std::fs::create_dir(&secrets_dir).with_context(|| format!("creating {}", secrets_dir.display()))?;
    // Where earlier kilnds kept them, on the persistent root.
    let _ = std::fs::remove_dir_all(config.root.join("executor"));
    let mut executor = RuncExecutor::new(&worker.runtime, run_dir.path().join("executor"), networks.clone())?;
    if !config.process_sandbox {
        executor = executor.without_process_sandbox();
    }
    if !config.seccomp {
        executor = executor.without_seccomp();
    } else if !executor.seccomp() {
        warn!("this kernel has no seccomp: RUN steps run without the default seccomp profile");
    }
    let seccomp = executor.seccomp();
    let content = ContentStore::open(config.root.join("content"))?;
    let mut hosts = RegistryHosts::new();
    for (host, cfg) in &config.registries {
        hosts.insert(host.clone(), cfg.clone());
    }
    let registry = Registry::new(hosts)?;
    let exporters = Exporters {
        cache: Arc::clone(&cache),
        content: content.clone(),
        registry: registry.clone(),
        sessions: Arc::clone(&sessions),
    };
    let sources =
        Arc::new(Sources::new(Arc::clone(&cache), content, registry, Arc::clone(&sessions), metrics.clone()));
    let ops = Arc::new(WorkerOps {
        cache: Arc::clone(&cache),
        sessions: Arc::clone(&sessions),
        sources: Arc::clone(&sources),
        executor: Arc::new(executor),
        cache_mounts: CacheMounts::default(),
        secrets_dir,
    });
    let controller = Arc::new(Controller {
        worker: worker.clone(),
        metrics: metrics.clone(),
        sessions,
        jobs: Jobs::new(),
        bridge: Bridge::new(),
        solver: Solver::new(cache, ops),
        sources,
        exporters,
        serving: serving.clone(),
        started: std::time::Instant::now(),
        gc: Arc::clone(&collector),
        entitlements: config.entitlements.clone(),
    });
    let services = Services {
        control: ControlService::new(Arc::clone(&controller)),
        bridge: LlbBridgeService::new(Arc::clone(&controller)),
        health: HealthService::new(serving.clone()),
        tls: config.tls.as_ref().map(server::tls_config).transpose()?,
    };

    tokio::spawn(Arc::clone(&collector).run(Arc::clone(controller.solver.cache()), shutdown.clone()));
    let mut tasks = JoinSet::new();
    if let Some(addr) = &config.debug_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on debug address {addr}"))?;
        let load: Arc<dyn debug::LoadSource> = controller.clone();
        let router = debug::router(metrics.clone(), serving.clone(), load);
        let token = shutdown.clone();
        tasks.spawn(async move {
            debug::serve(listener, router, token).await.context("serving the debug endpoint")
        });
        info!(%addr, "debug endpoint serving /metrics, /healthz, /readyz");
    }
    for addr in &config.addrs {
        let listener = server::bind(addr).await?;
        let (addr, services, token) = (addr.clone(), services.clone(), shutdown.clone());
        info!(%addr, "serving the BuildKit API");
        tasks.spawn(async move { Ok(server::serve(addr, listener, services, token).await?) });
    }
    serving.store(true, Ordering::Relaxed);
    let entitlements: Vec<&str> = config.entitlements.iter().map(|e| e.as_str()).collect();
    info!(
        worker.id = %worker.id,
        root = %config.root.display(),
        runtime = %worker.runtime.display(),
        seccomp,
        entitlements = ?entitlements,
        "kilnd ready"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
        Some(result) = tasks.join_next() => {
            // A listener ended on its own: that is an error worth exiting on.
            result??;
            anyhow::bail!("a listener stopped unexpectedly");
        }
    }
    // Drain: refuse new builds, let running ones finish (they still need
    // further calls on their connections, so the servers stay up), then stop
    // the servers, which ends the clients' connections cleanly.
    serving.store(false, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    let builds_done = async {
        while !controller.jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = builds_done => info!("no builds running"),
        () = tokio::time::sleep_until(deadline) => warn!(grace = ?config.shutdown_grace, "grace period over; cancelling the running builds"),
        _ = term.recv() => { warn!("second signal; exiting now"); return Ok(()); }
        _ = int.recv() => { warn!("second signal; exiting now"); return Ok(()); }
    }
    shutdown.cancel();
    let drained = async {
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result.map_err(anyhow::Error::from).and_then(|r| r) {
                warn!(error = %e, "while draining");
            }
        }
    };
    tokio::select! {
        () = drained => info!("drained; exiting"),
        () = tokio::time::sleep(Duration::from_secs(5)) => warn!("connections still open after 5 s; exiting"),
        _ = term.recv() => warn!("second signal; exiting now"),
        _ = int.recv() => warn!("second signal; exiting now"),
    }
    networks.stop().await;
    Ok(())
}

/// Creates the state directory and takes an exclusive lock on it, so two
/// daemons never share one root.
fn lock_root(root: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(root).with_context(|| format!("creating root directory {}", root.display()))?;
    let path: PathBuf = root.join("kilnd.lock");
    let file = File::create(&path).with_context(|| format!("opening {}", path.display()))?;
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => {
            anyhow::anyhow!("another kilnd is using root directory {}", root.display())
        }
        std::fs::TryLockError::Error(e) => {
            anyhow::Error::new(e).context(format!("locking {}", path.display()))
        }
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_is_used_by_one_daemon_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let held = lock_root(&root).unwrap();
        let err = lock_root(&root).unwrap_err().to_string();
        assert!(err.contains("another kilnd is using root directory"), "{err}");
        drop(held);
        lock_root(&root).unwrap();
    }
}
