//! `kiln gateway`: one BuildKit endpoint in front of a pool of kilnd
//! builders. buildx and buildctl talk to it as to one daemon; it routes each
//! call of each build to the builder that holds its session (see
//! ARCHITECTURE.md, "The gateway's routing").
//!
//! Static mode: the builders are given with `--backend`. Cluster mode
//! (`--builder NAMESPACE/NAME`, repeatable): each pool is a `Builder`'s
//! pods, and the gateway reports its demand so the controller scales it,
//! from zero too. With TLS the server name a client asks for (buildx
//! `--driver-opt servername=NAME`) picks the pool, and with `--tls-ca` the
//! client certificate's common name must be in the pool's access list.

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
pub mod route;
pub mod tls;

pub use proxy::{Gateway, PoolEntry};

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
        required_unless_present = "builders",
        conflicts_with = "builders"
    )]
    pub backends: Vec<String>,

    /// Cluster mode: serve the pool of this Builder (NAMESPACE/NAME), found
    /// through the Kubernetes API (KUBECONFIG or in-cluster). Repeat for
    /// several pools; TLS server names `NAME` or `NAME.NAMESPACE` pick one.
    #[arg(long = "builder", value_name = "NAMESPACE/NAME")]
    pub builders: Vec<String>,

    /// Serve TLS with this certificate (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The TLS certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Require client certificates signed by this CA (mTLS); a pool's access
    /// list then names the common names that may use it.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Static mode with mTLS: a client common name that may use the pool
    /// (repeat); none: every client the CA signed.
    #[arg(long = "allow-client", value_name = "CN")]
    pub allow_clients: Vec<String>,

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
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
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

/// A gateway over `backends`, watching their health; `allow` is its access list.
pub fn start(
    backends: &[String],
    max_sessions: usize,
    allow: Vec<String>,
    metrics: Arc<Metrics>,
) -> Result<Arc<Gateway>, Error> {
    for b in backends {
        tcp_host_port(b)?;
    }
    let pool = pool::Pool::new(backends.iter().map(|b| pool::Backend::new(b)).collect(), max_sessions);
    let gateway = Gateway::new(vec![PoolEntry::new(Vec::new(), pool, allow)], metrics);
    tokio::spawn(proxy::watch_health(Arc::clone(&gateway), Duration::from_secs(2)));
    Ok(gateway)
}

/// Accepts client connections until `shutdown`; each is served on its own
/// task with HTTP/2 (prior knowledge, as buildx and buildctl speak it) and
/// no idle timeout: a Solve is silent for as long as the build runs.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
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
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                let conn = Arc::new(gateway.connection(None, None));
                serve_connection(gateway, conn, TokioIo::new(stream), peer).await;
                return;
            };
            let stream = match tls.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    info!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let (_, session) = stream.get_ref();
            let server_name = session.server_name().map(str::to_owned);
            let client = session.peer_certificates().and_then(|c| c.first()).and_then(tls::common_name);
            debug!(%peer, server_name = ?server_name, client = ?client, "TLS connection");
            let conn = Arc::new(gateway.connection(server_name.as_deref(), client));
            serve_connection(gateway, conn, TokioIo::new(stream), peer).await;
        });
    }
}

async fn serve_connection<I>(
    gateway: Arc<Gateway>,
    conn: Arc<proxy::ClientConn>,
    io: I,
    peer: std::net::SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| Arc::clone(&gateway).handle(req, Arc::clone(&conn)));
    let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(proxy::STREAM_WINDOW)
        .initial_connection_window_size(proxy::CONNECTION_WINDOW)
        .max_frame_size(proxy::MAX_FRAME)
        .serve_connection(io, service)
        .await;
    if let Err(e) = result {
        debug!(%peer, error = %e, "client connection ended");
    }
}

/// `kiln gateway`: serves until SIGTERM/SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new()?);
    if let Some(addr) = &args.metrics_addr {
        serve_metrics(addr, Arc::clone(&metrics)).await?;
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key, args.tls_ca.as_deref())?),
        _ => None,
    };
    let gateway = if args.builders.is_empty() {
        start(&args.backends, args.max_parallel_builds, args.allow_clients.clone(), metrics)?
    } else {
        let client = kube::Client::try_default().await.map_err(Error::Client)?;
        let mut pools = Vec::new();
        for builder in &args.builders {
            let (namespace, name) = builder
                .split_once('/')
                .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
                .ok_or_else(|| Error::BadBuilder(builder.clone()))?;
            let pool = pool::Pool::new(Vec::new(), args.max_parallel_builds);
            let entry =
                PoolEntry::new(vec![name.to_owned(), format!("{name}.{namespace}")], pool, Vec::new());
            let (ns, n) = (namespace.to_owned(), name.to_owned());
            tokio::spawn(cluster::watch(client.clone(), ns.clone(), n.clone(), Arc::clone(&entry)));
            tokio::spawn(cluster::report_demand(client.clone(), ns, n, Arc::clone(&entry.pool)));
            pools.push(entry);
        }
        Gateway::new(pools, metrics)
    };
    let listener = bind(&args.addr).await?;
    info!(addr = %args.addr, backends = ?args.backends, builders = ?args.builders, tls = tls.is_some(), "gateway serving the BuildKit API");
    serve(listener, gateway, tls, crate::shutdown_signal()).await;
    Ok(())
}
