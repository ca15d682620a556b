//! `kiln gateway`: one BuildKit endpoint in front of a pool of kilnd
//! builders. buildx and buildctl talk to it as to one daemon; it routes each
//! call of each build to the builder that holds its session (see
//! ARCHITECTURE.md, "The gateway's routing").
//!
//! Static mode: the builders are given with `--backend`. Cluster mode
//! (`--builder NAMESPACE/NAME`): the pool is that `Builder`'s pods, and the
//! gateway reports its demand so the controller scales it, from zero too.
//! One pool per gateway so far: choosing the pool by TLS SNI, mTLS and the
//! `access` list are not built yet.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::{debug, error, info};

use crate::metrics::{self, Metrics};

pub mod cluster;
pub mod grpc;
pub mod pool;
pub mod proxy;

pub use proxy::Gateway;

/// Run the gateway in front of builders.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where buildx connects: tcp://HOST:PORT.
    #[arg(long, env = "KILN_GATEWAY_ADDR", default_value = "tcp://127.0.0.1:1234")]
    pub addr: String,

    /// A builder's BuildKit address (tcp://HOST:PORT); repeat for each.
    #[arg(
        long = "backend",
        value_name = "ADDR",
        required_unless_present = "builder",
        conflicts_with = "builder"
    )]
    pub backends: Vec<String>,

    /// Cluster mode: serve the pool of this Builder (NAMESPACE/NAME), found
    /// through the Kubernetes API (KUBECONFIG or in-cluster).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub builder: Option<String>,

    /// Sessions one builder takes at once; further builds wait in the gateway.
    #[arg(long, env = "KILN_MAX_PARALLEL_BUILDS", default_value_t = 4)]
    pub max_parallel_builds: usize,

    /// Serve /metrics, /healthz and /readyz on HOST:PORT.
    #[arg(long, env = "KILN_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listening on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("{0:?} is not an address like tcp://127.0.0.1:1234")]
    BadAddr(String),
    #[error("setting up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("--builder {0:?} is not NAMESPACE/NAME")]
    BadBuilder(String),
    #[error("connecting to the Kubernetes API (KUBECONFIG or the in-cluster service account): {0}")]
    Client(#[source] kube::Error),
}

/// `tcp://HOST:PORT` → `HOST:PORT`.
pub fn tcp_host_port(addr: &str) -> Result<&str, Error> {
    addr.strip_prefix("tcp://").filter(|hp| hp.contains(':')).ok_or_else(|| Error::BadAddr(addr.to_owned()))
}

/// Binds the gateway's listener (and the metrics endpoint, if asked).
pub async fn bind(addr: &str) -> Result<TcpListener, Error> {
    let hp = tcp_host_port(addr)?;
    TcpListener::bind(hp).await.map_err(|source| Error::Listen { addr: addr.to_owned(), source })
}

pub async fn serve_metrics(addr: &str, metrics: Arc<Metrics>) -> Result<(), Error> {
    let listener =
        TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr: addr.to_owned(), source })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, metrics::router(metrics)).await {
            error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

/// A gateway over `backends`, watching their health.
pub fn start(backends: &[String], max_sessions: usize, metrics: Arc<Metrics>) -> Result<Arc<Gateway>, Error> {
    for b in backends {
        tcp_host_port(b)?;
    }
    let pool = pool::Pool::new(backends.iter().map(|b| pool::Backend::new(b)).collect(), max_sessions);
    let gateway = Gateway::new(pool, metrics);
    tokio::spawn(proxy::watch_health(Arc::clone(&gateway), Duration::from_secs(2)));
    Ok(gateway)
}

/// Accepts client connections until `shutdown`; each is served on its own
/// task with HTTP/2 (prior knowledge, as buildx and buildctl speak it) and
/// no idle timeout: a Solve is silent for as long as the build runs.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    error!(error = %e, "accepting a connection");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let conn = Arc::new(proxy::ClientConn::default());
            let service = service_fn(move |req| Arc::clone(&gateway).handle(req, Arc::clone(&conn)));
            let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(proxy::STREAM_WINDOW)
                .initial_connection_window_size(proxy::CONNECTION_WINDOW)
                .max_frame_size(proxy::MAX_FRAME)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "client connection ended");
            }
        });
    }
}

/// `kiln gateway`: serves until SIGTERM/SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new()?);
    if let Some(addr) = &args.metrics_addr {
        serve_metrics(addr, Arc::clone(&metrics)).await?;
    }
    let gateway = match &args.builder {
        Some(builder) => {
            let (namespace, name) = builder
                .split_once('/')
                .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
                .ok_or_else(|| Error::BadBuilder(builder.clone()))?;
            let client = kube::Client::try_default().await.map_err(Error::Client)?;
            let pool = pool::Pool::new(Vec::new(), args.max_parallel_builds);
            let (ns, n) = (namespace.to_owned(), name.to_owned());
            tokio::spawn(cluster::watch(client.clone(), ns.clone(), n.clone(), Arc::clone(&pool)));
            tokio::spawn(cluster::report_demand(client, ns, n, Arc::clone(&pool)));
            Gateway::new(pool, metrics)
        }
        None => start(&args.backends, args.max_parallel_builds, metrics)?,
    };
    let listener = bind(&args.addr).await?;
    info!(addr = %args.addr, backends = ?args.backends, builder = ?args.builder, "gateway serving the BuildKit API");
    serve(listener, gateway, crate::shutdown_signal()).await;
    Ok(())
}
