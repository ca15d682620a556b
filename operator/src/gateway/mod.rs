//! `kiln gateway`: one BuildKit endpoint in front of a pool of kilnd
//! builders. buildx and buildctl talk to it as to one daemon; it routes each
//! call of each build to the builder that holds its session (see
//! docs/architecture.md, "The gateway's routing").
//!
//! Static mode: the builders are given with `--backend`. Cluster mode
//! (`--builder NAMESPACE/NAME`, repeatable, or `--watch-builders` for every
//! Builder it may see): each pool is a `Builder`'s pods, and the gateway
//! reports its demand so the controller scales it, from zero too. With TLS
//! the server name a client asks for (buildx `--driver-opt servername=NAME`)
//! picks the pool (`pools.rs`), and the client certificate's common name
//! must be in the pool's access list (`*`: any client); an empty list admits
//! nobody.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::metrics::{self, Metrics};

pub mod cluster;
pub mod grpc;
pub mod listen;
pub mod pool;
pub mod pools;
pub mod proxy;
pub mod route;
pub mod tls;

pub use proxy::{Gateway, PoolEntry};

/// Run the gateway in front of builders.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where buildx connects: tcp://HOST:PORT or unix:///PATH (a socket only
    /// its owner may use).
    #[arg(long, env = "KILN_GATEWAY_ADDR", default_value = "tcp://127.0.0.1:1234")]
    pub addr: String,

    /// A builder's BuildKit address (tcp://HOST:PORT or unix:///PATH); repeat for each.
    #[arg(
        long = "backend",
        value_name = "ADDR",
        required_unless_present_any = ["builders", "watch_builders"],
        conflicts_with_all = ["builders", "watch_builders"]
    )]
    pub backends: Vec<String>,

    /// Cluster mode: serve the pool of this Builder (NAMESPACE/NAME), found
    /// through the Kubernetes API (KUBECONFIG or in-cluster). Repeat for
    /// several pools; TLS server names `NAME` or `NAME.NAMESPACE` pick one.
    #[arg(long = "builder", value_name = "NAMESPACE/NAME", conflicts_with = "watch_builders")]
    pub builders: Vec<String>,

    /// Cluster mode: serve every Builder the gateway may see, as they come
    /// and go, without a restart (in the --namespace ones only, if given;
    /// those matching --selector only, if given).
    #[arg(long, env = "KILN_WATCH_BUILDERS")]
    pub watch_builders: bool,

    /// With --watch-builders: a namespace whose Builders to serve (repeat).
    /// None: every namespace.
    #[arg(long = "namespace", value_name = "NAMESPACE", requires = "watch_builders", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// With --watch-builders: serve only Builders with these labels
    /// (a Kubernetes label selector, e.g. `team=ml,tier!=test`).
    #[arg(long, value_name = "SELECTOR", requires = "watch_builders")]
    pub selector: Option<String>,

    /// Cluster mode: the pool (NAME or NAME.NAMESPACE) of clients that name
    /// none (plain TCP, or a TLS server name that is no pool's). Unset: such
    /// clients get the only pool, or are refused when there are several.
    #[arg(long, value_name = "POOL")]
    pub default_pool: Option<String>,

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

    /// A CA (PEM) that signs a certificate for each pool name on demand, so
    /// a client verifying the pool name it sends (buildx servername=) trusts
    /// the gateway for every pool, also ones created later; clients trust
    /// this CA (its certificate is their cacert). Needs --tls-issuer-key.
    #[arg(long, value_name = "FILE", requires_all = ["tls_issuer_key", "tls_cert"])]
    pub tls_issuer_cert: Option<std::path::PathBuf>,

    /// The pool issuer's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_issuer_cert")]
    pub tls_issuer_key: Option<std::path::PathBuf>,

    /// Cluster mode: the gateway's client certificate (PEM) for builders
    /// that serve TLS to the gateway alone (the controller's
    /// --builder-ca-secret; it keeps this certificate in its
    /// --gateway-client-secret). Needs --builder-tls-key and --builder-tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["builder_tls_key", "builder_tls_ca"])]
    pub builder_tls_cert: Option<std::path::PathBuf>,

    /// The key of --builder-tls-cert.
    #[arg(long, value_name = "FILE", requires = "builder_tls_cert")]
    pub builder_tls_key: Option<std::path::PathBuf>,

    /// The CA the builders' certificates are signed by.
    #[arg(long, value_name = "FILE", requires = "builder_tls_cert")]
    pub builder_tls_ca: Option<std::path::PathBuf>,

    /// Static mode: a client common name that may use the pool (repeat;
    /// needs --tls-ca). None: every client that reaches the gateway (with
    /// --tls-ca, every certificate the CA signed).
    #[arg(long = "allow-client", value_name = "CN", conflicts_with_all = ["builders", "watch_builders"])]
    pub allow_clients: Vec<String>,

    /// Sessions one builder takes at once; further builds wait in the gateway.
    #[arg(long, env = "KILN_MAX_PARALLEL_BUILDS", default_value_t = 4)]
    pub max_parallel_builds: usize,

    /// Serve /metrics, /healthz and /readyz on HOST:PORT.
    #[arg(long, env = "KILN_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// How long open builds may go on after SIGTERM or SIGINT before their
    /// connections are cut.
    #[arg(long, value_name = "SECONDS", env = "KILN_SHUTDOWN_GRACE", default_value_t = 60)]
    pub shutdown_grace: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listening on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("{0:?} is not an address like tcp://127.0.0.1:1234 or unix:///run/kiln/kiln.sock")]
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

/// Binds the gateway's listener; a unix socket is its owner's alone.
pub async fn bind(addr: &str) -> Result<listen::Listener, Error> {
    listen::Listener::bind(addr, listen::SocketAccess::default()).await
}

/// A gateway over `backends`, its builders' health checked by a task in
/// `tasks`; `allow` is its access list.
pub fn start(
    backends: &[String],
    max_sessions: usize,
    allow: Vec<String>,
    metrics: Arc<Metrics>,
    tasks: &mut JoinSet<()>,
) -> Result<Arc<Gateway>, Error> {
    for b in backends {
        listen::Addr::parse(b)?;
    }
    let pool = pool::Pool::new(backends.iter().map(|b| pool::Backend::new(b)).collect(), max_sessions);
    // Static mode: who reaches the gateway is whom its operator let reach it.
    let allow = if allow.is_empty() { vec![route::ANY_CLIENT.to_owned()] } else { allow };
    let pools = pools::Pools::fixed(vec![PoolEntry::new(Vec::new(), pool, allow)]);
    let gateway = Gateway::new(pools, metrics, None);
    let health = proxy::watch_health(Arc::clone(&gateway), Duration::from_secs(2));
    tasks.spawn(health.instrument(info_span!("health checks")));
    Ok(gateway)
}

/// How long connections get to close after the drain before they are cut.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Accepts client connections until `shutdown`; each is served on its own
/// task with HTTP/2 (prior knowledge, as buildx and buildctl speak it) and
/// no idle timeout: a Solve is silent for as long as the build runs.
///
/// Then drains: no new connections; open and waiting sessions get `grace`
/// to end (their builds need the connections, so those stay as they are);
/// then every connection is asked to close (GOAWAY: calls in flight finish)
/// and gets `CLOSE_WAIT`; whatever is still open then is cut.
pub async fn serve(
    listener: listen::Listener,
    gateway: Arc<Gateway>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: &CancellationToken,
    grace: Duration,
) {
    let closing = CancellationToken::new();
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    error!(error = %e, "accepting a connection");
                    continue;
                }
            },
            // Finished connections, so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.cancelled() => break,
        };
        let connection = connection(Arc::clone(&gateway), stream, tls.clone(), closing.clone());
        connections.spawn(connection.instrument(info_span!("connection", %peer)));
    }
    drop(listener);
    info!(connections = connections.len(), sessions = gateway.sessions(), "stopped accepting; draining");
    let sessions_end = async {
        while gateway.sessions() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(grace, sessions_end).await.is_err() {
        warn!(
            ?grace,
            sessions = gateway.sessions(),
            "sessions still open after the grace period; ending them"
        );
    }
    closing.cancel();
    let closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
        warn!(connections = connections.len(), "connections still open; cutting them");
    } else {
        info!("drained");
    }
}

/// One client connection, with TLS when the gateway serves it.
async fn connection(
    gateway: Arc<Gateway>,
    stream: listen::Stream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    closing: CancellationToken,
) {
    let Some(tls) = tls else {
        let conn = Arc::new(gateway.connection(None, None).await);
        return serve_connection(gateway, conn, TokioIo::new(stream), &closing).await;
    };
    let stream = match tls.accept(stream).await {
        Ok(s) => s,
        Err(e) => {
            info!(error = %e, "TLS handshake failed");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let server_name = session.server_name().map(str::to_owned);
    let client = session.peer_certificates().and_then(|c| c.first()).and_then(tls::common_name);
    debug!(server_name = ?server_name, client = ?client, "TLS connection");
    let conn = Arc::new(gateway.connection(server_name.as_deref(), client).await);
    serve_connection(gateway, conn, TokioIo::new(stream), &closing).await;
}

async fn serve_connection<I>(
    gateway: Arc<Gateway>,
    conn: Arc<proxy::ClientConn>,
    io: I,
    closing: &CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| Arc::clone(&gateway).handle(req, Arc::clone(&conn)));
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(proxy::STREAM_WINDOW)
        .initial_connection_window_size(proxy::CONNECTION_WINDOW)
        .max_frame_size(proxy::MAX_FRAME)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut asked_to_close = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = closing.cancelled(), if !asked_to_close => {
                asked_to_close = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "client connection ended");
    }
}

/// `kiln gateway`: serves until `shutdown`, then drains.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new()?);
    // What serves the open sessions (health checks, the pools' watches,
    // demand, metrics) lasts until the drain is over.
    let mut tasks = JoinSet::new();
    let scope = if args.watch_builders {
        Some(cluster::Scope::Watched { namespaces: args.namespaces.clone(), selector: args.selector.clone() })
    } else if !args.builders.is_empty() {
        let named = args
            .builders
            .iter()
            .map(|b| {
                b.split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
                    .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
                    .ok_or_else(|| Error::BadBuilder(b.clone()))
            })
            .collect::<Result<_, _>>()?;
        Some(cluster::Scope::Named(named))
    } else {
        None
    };
    let gateway = match scope {
        None => start(
            &args.backends,
            args.max_parallel_builds,
            args.allow_clients.clone(),
            Arc::clone(&metrics),
            &mut tasks,
        )?,
        Some(scope) => {
            let client = kube::Client::try_default().await.map_err(Error::Client)?;
            let pools = pools::Pools::watched(args.default_pool.clone());
            let follow = cluster::follow(client, scope, Arc::clone(&pools));
            tasks.spawn(follow.instrument(info_span!("builders")));
            let builder_tls = match (&args.builder_tls_cert, &args.builder_tls_key, &args.builder_tls_ca) {
                (Some(cert), Some(key), Some(ca)) => {
                    Some(tls::BuilderClient::new(cert.clone(), key.clone(), ca.clone())?)
                }
                _ => None,
            };
            Gateway::new(pools, Arc::clone(&metrics), builder_tls)
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let issuer = match (&args.tls_issuer_cert, &args.tls_issuer_key) {
                (Some(cert), Some(key)) => {
                    let pools = Arc::clone(&gateway.pools);
                    let is_pool: tls::IsPool = Arc::new(move |name| pools.names(name));
                    Some(tls::PoolIssuer { cert: cert.clone(), key: key.clone(), is_pool })
                }
                _ => None,
            };
            Some(tls::acceptor(cert, key, args.tls_ca.as_deref(), issuer)?)
        }
        _ => None,
    };
    if let Some(addr) = &args.metrics_addr {
        // Ready once it knows its pools (cluster mode: the first list of Builders).
        let pools = Arc::clone(&gateway.pools);
        metrics::serve(addr, metrics, Arc::new(move || pools.is_synced()), &mut tasks)
            .await
            .map_err(|source| Error::Listen { addr: addr.clone(), source })?;
    }
    let listener = bind(&args.addr).await?;
    info!(
        addr = %args.addr,
        backends = ?args.backends,
        builders = ?args.builders,
        watch_builders = args.watch_builders,
        namespaces = ?args.namespaces,
        tls = tls.is_some(),
        "gateway serving the BuildKit API"
    );
    serve(listener, gateway, tls, &shutdown, Duration::from_secs(args.shutdown_grace)).await;
    tasks.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use bytes::Bytes;
    use futures::channel::mpsc;
    use http_body_util::{BodyExt, Empty, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper::client::conn::http2::SendRequest;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    type Frames = mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>;

    const SESSION: &str = "/moby.buildkit.v1.Control/Session";

    /// A builder whose Session call answers at once and then stays open
    /// until the returned sender is dropped.
    async fn builder() -> (String, mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("tcp://{}", listener.local_addr().unwrap());
        let (open, frames) = mpsc::unbounded();
        let frames: Arc<Mutex<Option<Frames>>> = Arc::new(Mutex::new(Some(frames)));
        tokio::spawn(
            async move {
                let (stream, _) = listener.accept().await.unwrap();
                let service = service_fn(move |_req| {
                    let frames = frames.lock().unwrap().take().unwrap();
                    async move { Ok::<_, Infallible>(http::Response::new(StreamBody::new(frames))) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
            .instrument(info_span!("builder")),
        );
        (addr, open)
    }

    /// A gateway over `builder`, serving on loopback until `shutdown`.
    async fn gateway(
        builder: &str,
        shutdown: &CancellationToken,
        grace: Duration,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let backend = pool::Backend::new(builder);
        backend.set_ready(true);
        let pool = pool::Pool::new(vec![backend], 4);
        let metrics = Arc::new(Metrics::new().unwrap());
        let entry = PoolEntry::new(Vec::new(), pool, vec![route::ANY_CLIENT.to_owned()]);
        let gateway = Gateway::new(pools::Pools::fixed(vec![entry]), metrics, None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = shutdown.clone();
        let serving =
            async move { serve(listen::Listener::Tcp(listener), gateway, None, &shutdown, grace).await };
        (addr, tokio::spawn(serving.instrument(info_span!("gateway"))))
    }

    /// A client connection to the gateway at `addr`.
    async fn client(addr: std::net::SocketAddr) -> SendRequest<Empty<Bytes>> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.instrument(info_span!("client")));
        sender
    }

    /// Calls `path` on `client`; the response body streams on.
    async fn call(client: &mut SendRequest<Empty<Bytes>>, path: &str) -> http::Response<Incoming> {
        let request = http::Request::post(format!("http://gateway{path}"))
            .header("content-type", "application/grpc")
            .header("x-docker-expose-session-uuid", "s1")
            .body(Empty::new())
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none(), "{response:?}");
        response
    }

    #[tokio::test]
    async fn a_drain_stops_accepting_and_waits_for_open_sessions() {
        let (builder, open) = builder().await;
        let shutdown = CancellationToken::new();
        let (addr, serving) = gateway(&builder, &shutdown, Duration::from_secs(30)).await;
        let mut client = client(addr).await;
        let session = call(&mut client, SESSION).await.into_body();

        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!serving.is_finished(), "the open session holds the drain");
        assert!(TcpStream::connect(addr).await.is_err(), "no new connections while draining");
        // A build still makes calls on its connection (Status, bridge calls).
        call(&mut client, route::HEALTH).await.into_body().collect().await.unwrap();

        drop(open);
        tokio::time::timeout(Duration::from_secs(5), session.collect()).await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(2), serving).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_session_still_open_at_the_deadline_is_cut() {
        let (builder, _open) = builder().await;
        let shutdown = CancellationToken::new();
        let (addr, serving) = gateway(&builder, &shutdown, Duration::from_millis(200)).await;
        let session = call(&mut client(addr).await, SESSION).await.into_body();

        shutdown.cancel();
        let waited = Duration::from_millis(200) + CLOSE_WAIT + Duration::from_secs(2);
        tokio::time::timeout(waited, serving).await.unwrap().unwrap();
        let cut = tokio::time::timeout(Duration::from_secs(2), session.collect()).await.unwrap();
        assert!(cut.is_err(), "the client sees its session end abruptly");
    }
}
