//! The HTTP/2 proxy: each call is routed by the ids it carries and forwarded
//! with its bytes unchanged (docs/protocol.md §3.4). Streams are relayed
//! frame by frame, never buffered; only unary requests that carry routing ids
//! (Solve, Status) are read whole before they are sent on.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tracing::{Instrument, debug, info, info_span, instrument, warn};

use super::grpc::{self, Body, BoxError, RefOnly, SolveIds, code};
use super::pool::{Backend, Pool, SessionSlot};
use super::pools::Pools;
use super::route::{self, Route};
use crate::metrics::Metrics;

/// How long a call naming a session or build waits for it to be bound: the
/// daemon's own waits (`solver/jobs.go`, 6 s; the session manager, 5 s).
const BIND_WAIT: Duration = Duration::from_secs(6);

const BUILD_ID: &str = "buildkit-controlapi-buildid";

/// HTTP/2 windows: tonic's and hyper's defaults (64 KiB streams) cap a
/// context upload far below loopback speed (docs/benchmarks.md). The
/// connection window is far above the stream window because h2 ends a
/// connection whose unread small DATA frames cost more than half of it, and
/// a many-file context relayed here is mostly small frames (kilnd's
/// session/mod.rs has the arithmetic); memory stays bounded by the streams.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 256 << 20;
pub const MAX_FRAME: u32 = 1 << 20;

/// One HTTP/2 connection per builder, shared by every call to it.
#[derive(Debug, Default)]
struct Upstream {
    sender: tokio::sync::Mutex<Option<SendRequest<Body>>>,
}

/// One pool the gateway serves, and who may use it.
#[derive(Debug)]
pub struct PoolEntry {
    /// What names it: the `Builder` (`name` and `name.namespace`), chosen by
    /// the TLS server name (buildx `--driver-opt servername=…`).
    pub names: Vec<String>,
    /// The `Builder` it serves (namespace, name); `None` in static mode.
    pub builder: Option<(String, String)>,
    pub pool: Arc<Pool>,
    /// Client certificate common names that may use it, `*` for every
    /// client the gateway admits; empty: nobody.
    pub access: Mutex<Vec<String>>,
    /// The entitlements a build on it may be granted; `None` leaves it to
    /// the builders (static mode).
    pub entitlements: Mutex<Option<Vec<String>>>,
    /// The pool's last ListWorkers answer, given while no builder is ready
    /// (scale from zero) so buildx still sees a running builder.
    workers: Mutex<Option<Bytes>>,
    /// Ends the pool's own tasks (the watch of its pods, its demand) once it
    /// is no longer served.
    pub stop: tokio_util::sync::CancellationToken,
}

impl PoolEntry {
    /// A pool of builders given by address (static mode).
    pub fn new(names: Vec<String>, pool: Arc<Pool>, access: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            names,
            builder: None,
            pool,
            access: Mutex::new(access),
            entitlements: Mutex::new(None),
            workers: Mutex::default(),
            stop: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// The pool of Builder `namespace/name`: nobody may use it and no
    /// entitlement is allowed until its spec says otherwise.
    pub fn for_builder(namespace: &str, name: &str, pool: Arc<Pool>) -> Arc<Self> {
        Arc::new(Self {
            names: vec![name.to_owned(), format!("{name}.{namespace}")],
            builder: Some((namespace.to_owned(), name.to_owned())),
            pool,
            access: Mutex::default(),
            entitlements: Mutex::new(Some(Vec::new())),
            workers: Mutex::default(),
            stop: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Serves Builder `namespace/name`.
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        self.builder.as_ref().is_some_and(|(ns, n)| ns == namespace && n == name)
    }

    pub fn set_access(&self, clients: Vec<String>) {
        *self.access.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = clients;
    }

    pub fn set_entitlements(&self, allowed: Vec<String>) {
        *self.entitlements.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(allowed);
    }

    /// Why a build asking for `requested` may not run on this pool, if it
    /// may not.
    fn refuses(&self, requested: &[String]) -> Option<String> {
        let allowed = self.entitlements.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        route::refused_entitlement(allowed.as_deref()?, requested, self.label())
    }

    /// Why `client` may not use this pool, if it may not.
    fn denies(&self, client: Option<&str>) -> Option<String> {
        route::denied(&self.access.lock().unwrap_or_else(std::sync::PoisonError::into_inner), client)
    }

    /// The pool's last ListWorkers answer.
    fn last_workers(&self) -> Option<Bytes> {
        self.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn label(&self) -> &str {
        self.names.first().map_or("default", String::as_str)
    }
}

#[derive(Debug)]
pub struct Gateway {
    pub pools: Arc<Pools>,
    metrics: Arc<Metrics>,
    /// The gateway's client certificate for builders that ask for one.
    pub builder_tls: Option<super::tls::BuilderClient>,
    upstreams: Mutex<std::collections::HashMap<String, Arc<Upstream>>>,
}

/// What a client connection is: the pool its TLS server name chose, the
/// client certificate's name, and the connection's last builder (calls with
/// no id of their own, such as the history API, follow it).
#[derive(Debug)]
pub struct ClientConn {
    entry: Result<Arc<PoolEntry>, String>,
    client: Option<String>,
    last: Mutex<Option<Arc<Backend>>>,
}

impl ClientConn {
    /// The pool's name in metrics.
    fn pool_label(&self) -> &str {
        self.entry.as_ref().map_or("none", |e| e.label())
    }

    fn remember(&self, backend: &Arc<Backend>) {
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(backend));
    }

    fn last(&self) -> Option<Arc<Backend>> {
        self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// The authority of requests to a builder: its host and port, or
/// `localhost` over a unix socket (gRPC servers ignore it).
fn host_port(addr: &str) -> &str {
    if addr.starts_with("unix://") {
        return "localhost";
    }
    addr.strip_prefix("tcp://").unwrap_or(addr)
}

/// Why a call could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connecting to builder {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("HTTP/2 handshake with builder {addr}: {source}")]
    Handshake { addr: String, source: hyper::Error },
    #[error("builder {addr} was lost: {source}")]
    Lost { addr: String, source: hyper::Error },
    #[error("building the request for {addr}: {source}")]
    Request { addr: String, source: http::Error },
}

impl Gateway {
    pub fn new(
        pools: Arc<Pools>,
        metrics: Arc<Metrics>,
        builder_tls: Option<super::tls::BuilderClient>,
    ) -> Arc<Self> {
        Arc::new(Self { pools, metrics, upstreams: Mutex::default(), builder_tls })
    }

    /// Sessions open or waiting for a builder, in every pool: the builds a
    /// drain waits for.
    pub fn sessions(&self) -> usize {
        self.pools.snapshot().iter().map(|p| p.pool.demand()).sum()
    }

    /// The state of a new client connection: its pool by TLS server name
    /// (`pools.rs`), and its certificate's name.
    pub async fn connection(&self, server_name: Option<&str>, client: Option<String>) -> ClientConn {
        let entry = self.pools.resolve(server_name).await;
        ClientConn { entry, client, last: Mutex::default() }
    }

    fn upstream(&self, addr: &str) -> Arc<Upstream> {
        let mut map = self.upstreams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(addr.to_owned()).or_default())
    }

    async fn sender(&self, backend: &Backend) -> Result<SendRequest<Body>, ForwardError> {
        let addr = backend.addr.as_str();
        let upstream = self.upstream(addr);
        let mut slot = upstream.sender.lock().await;
        if let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let stream = super::listen::Stream::connect(addr)
            .await
            .map_err(|source| ForwardError::Connect { addr: addr.to_owned(), source })?;
        let h2 = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .clone();
        let handshake = |source| ForwardError::Handshake { addr: addr.to_owned(), source };
        // A pool's builders take only the gateway, by its certificate.
        let (sender, conn) = match (&self.builder_tls, backend.server_name()) {
            (Some(tls), Some(name)) => {
                let stream = tls
                    .connect(&name, stream)
                    .await
                    .map_err(|source| ForwardError::Connect { addr: addr.to_owned(), source })?;
                let (sender, conn) =
                    h2.handshake::<_, Body>(TokioIo::new(stream)).await.map_err(handshake)?;
                (sender, futures::FutureExt::boxed(conn))
            }
            _ => {
                let (sender, conn) =
                    h2.handshake::<_, Body>(TokioIo::new(stream)).await.map_err(handshake)?;
                (sender, futures::FutureExt::boxed(conn))
            }
        };
        let driving = async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "connection to builder ended");
            }
        };
        tokio::spawn(driving.instrument(info_span!("builder connection", builder = %addr)));
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// Sends `parts` + `body` to `backend`; the response streams back, and a
    /// builder lost mid-call ends it with UNAVAILABLE naming the builder.
    /// `hold` lives as long as the response body (a session's slot).
    async fn forward(
        &self,
        backend: &Arc<Backend>,
        parts: http::request::Parts,
        body: Body,
        hold: Option<SessionSlot>,
    ) -> Response<Body> {
        tracing::Span::current().record("builder", backend.addr.as_str());
        match self.try_forward(backend, parts, body).await {
            Ok(response) => {
                let metrics = Arc::clone(&self.metrics);
                response.map(|inner| Tap::to_client(inner, &backend.addr, metrics, hold).boxed())
            }
            Err(e) => {
                self.metrics.gateway_error("forward");
                warn!(error = %e, "forwarding a call");
                grpc::status(code::UNAVAILABLE, &format!("kiln gateway: {e}"))
            }
        }
    }

    async fn try_forward(
        &self,
        backend: &Arc<Backend>,
        parts: http::request::Parts,
        body: Body,
    ) -> Result<Response<Body>, ForwardError> {
        let addr = &backend.addr;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri =
            format!("http://{}{path}", host_port(addr)).parse().map_err(|e: http::uri::InvalidUri| {
                ForwardError::Request { addr: addr.clone(), source: e.into() }
            })?;
        let mut request = Request::builder()
            .method(parts.method)
            .uri(uri)
            .body(body)
            .map_err(|source| ForwardError::Request { addr: addr.clone(), source })?;
        for (name, value) in &parts.headers {
            if !matches!(
                name.as_str(),
                "host" | "connection" | "keep-alive" | "transfer-encoding" | "upgrade"
            ) {
                request.headers_mut().append(name, value.clone());
            }
        }
        let mut sender = self.sender(backend).await?;
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(source) => {
                // A dead connection: forget it so the next call reconnects.
                *self.upstream(addr).sender.lock().await = None;
                return Err(ForwardError::Lost { addr: addr.clone(), source });
            }
        };
        Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
    }

    /// Reads a whole unary request; `None` (and a counted error) when the
    /// client's body fails.
    async fn read_unary(&self, body: Incoming) -> Option<Bytes> {
        match body.collect().await {
            Ok(collected) => Some(collected.to_bytes()),
            Err(e) => {
                self.metrics.gateway_error("client_body");
                warn!(error = %e, "reading a request");
                None
            }
        }
    }

    /// Routes one call.
    #[instrument(name = "call", skip_all, fields(rpc = %req.uri().path(), builder = tracing::field::Empty))]
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ClientConn>,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        if path == route::HEALTH {
            return Ok(grpc::unary(&[0x08, 0x01]));
        }
        let entry = match &conn.entry {
            Ok(entry) => Arc::clone(entry),
            Err(message) => {
                self.metrics.gateway_error("no_pool");
                return Ok(grpc::status(code::NOT_FOUND, message));
            }
        };
        if let Some(message) = entry.denies(conn.client.as_deref()) {
            self.metrics.gateway_error("access_denied");
            return Ok(grpc::status(code::PERMISSION_DENIED, &message));
        }
        let response = match route::route(&path, || entry.pool.any().is_some()) {
            Route::Session => self.session(req, &entry.pool, &conn).await,
            Route::Solve => self.solve(req, &entry, &conn).await,
            Route::RefInBody => self.by_ref_in_body(req, &entry.pool, &conn).await,
            Route::RefInHeader => self.by_build_header(req, &entry.pool, &conn).await,
            Route::GatewayInfo => grpc::unary(&info_message()),
            Route::GatewayWorkers => grpc::unary(&entry.last_workers().unwrap_or_else(placeholder_workers)),
            Route::ListWorkers => self.list_workers(req, &entry).await,
            Route::FanOut { streaming } => self.fan_out(req, &entry.pool, streaming).await,
            Route::Connection => self.by_connection(req, &entry.pool, &conn).await,
        };
        Ok(response)
    }

    /// ListWorkers of every ready builder, merged and remembered, so that
    /// while none is ready the gateway can answer in their stead and buildx
    /// does not take a pool scaling up from zero for a dead builder.
    async fn list_workers(&self, req: Request<Incoming>, entry: &PoolEntry) -> Response<Body> {
        let response = self.fan_out(req, &entry.pool, false).await;
        if response.headers().get("grpc-status").is_none() {
            let (head, body) = response.into_parts();
            let Ok(collected) = body.collect().await else {
                return grpc::status(code::UNAVAILABLE, "kiln gateway: reading ListWorkers failed");
            };
            let data = collected.to_bytes();
            if let Some(message) = grpc::messages(&data).and_then(|m| m.into_iter().next()) {
                *entry.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(message.clone());
                return grpc::unary(&message);
            }
            return Response::from_parts(head, grpc::full(data));
        }
        response
    }

    async fn session(&self, req: Request<Incoming>, pool: &Arc<Pool>, conn: &ClientConn) -> Response<Body> {
        let header =
            |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let id = header("x-docker-expose-session-uuid");
        let key = header("x-docker-expose-session-sharedkey");
        let queued = Instant::now();
        let (slot, choice) = {
            let _waiting = QueueGauge::enter(&self.metrics);
            pool.open_session(&id, &key).await
        };
        self.metrics.gateway_session(
            conn.pool_label(),
            &slot.backend.addr,
            choice.as_str(),
            queued.elapsed(),
        );
        info!(session = %id, shared_key = %key, builder = %slot.backend.addr, choice = choice.as_str(), "session");
        let backend = Arc::clone(&slot.backend);
        conn.remember(&backend);
        let (parts, body) = req.into_parts();
        let body = Tap::to_builder(body, Arc::clone(&self.metrics)).boxed();
        self.forward(&backend, parts, body, Some(slot)).await
    }

    async fn solve(&self, req: Request<Incoming>, entry: &PoolEntry, conn: &ClientConn) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let Some(bytes) = self.read_unary(body).await else {
            return grpc::status(code::INTERNAL, "kiln gateway: reading the Solve request failed");
        };
        let ids = grpc::messages(&bytes)
            .and_then(|m| m.into_iter().next())
            .and_then(|m| SolveIds::decode(m).ok())
            .unwrap_or_default();
        // Before any builder sees the build.
        if let Some(message) = entry.refuses(&ids.entitlements) {
            self.metrics.gateway_error("entitlement_refused");
            return grpc::status(code::PERMISSION_DENIED, &message);
        }
        let pool = &entry.pool;
        // The session usually opens first; when the Solve wins the race, or
        // the session waits in the queue, wait for it so the build goes where
        // its context is. Meanwhile the build's Status waits too.
        let queued = pool.queue_ref(&ids.r#ref);
        let backend = match pool.session_backend(&ids.session, BIND_WAIT).await {
            Some(b) => b,
            None => match pool.any_within(super::pool::SCALE_UP_WAIT).await {
                Some(b) => b,
                None => return grpc::status(code::UNAVAILABLE, "kiln gateway: no builder is ready"),
            },
        };
        pool.bind_ref(&ids.r#ref, &backend);
        drop(queued);
        self.metrics.gateway_solve(conn.pool_label(), &backend.addr);
        info!(build = %ids.r#ref, session = %ids.session, builder = %backend.addr, "solve");
        conn.remember(&backend);
        self.forward(&backend, parts, grpc::full(bytes), None).await
    }

    async fn by_ref_in_body(
        &self,
        req: Request<Incoming>,
        pool: &Arc<Pool>,
        conn: &ClientConn,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let Some(bytes) = self.read_unary(body).await else {
            return grpc::status(code::INTERNAL, "kiln gateway: reading the request failed");
        };
        let r = grpc::messages(&bytes)
            .and_then(|m| m.into_iter().next())
            .and_then(|m| RefOnly::decode(m).ok())
            .unwrap_or_default()
            .r#ref;
        match pool.ref_backend(&r, BIND_WAIT).await {
            Some(backend) => {
                conn.remember(&backend);
                self.forward(&backend, parts, grpc::full(bytes), None).await
            }
            None => grpc::status(code::NOT_FOUND, &format!("kiln gateway: no build {r:?} on any builder")),
        }
    }

    async fn by_build_header(
        &self,
        req: Request<Incoming>,
        pool: &Pool,
        conn: &ClientConn,
    ) -> Response<Body> {
        let r = req.headers().get(BUILD_ID).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        match pool.ref_backend(&r, BIND_WAIT).await {
            Some(backend) => {
                conn.remember(&backend);
                let (parts, body) = req.into_parts();
                self.forward(&backend, parts, body.map_err(|e| Box::new(e) as BoxError).boxed(), None).await
            }
            None => grpc::status(code::NOT_FOUND, &format!("kiln gateway: no build {r:?} on any builder")),
        }
    }

    async fn by_connection(
        &self,
        req: Request<Incoming>,
        pool: &Arc<Pool>,
        conn: &ClientConn,
    ) -> Response<Body> {
        let Some(backend) = conn.last().or_else(|| pool.any()) else {
            return grpc::status(code::UNAVAILABLE, "kiln gateway: no builder is ready");
        };
        let (parts, body) = req.into_parts();
        self.forward(&backend, parts, body.map_err(|e| Box::new(e) as BoxError).boxed(), None).await
    }

    /// Sends a per-daemon call (ListWorkers, DiskUsage, Prune) to every ready
    /// builder and merges the answers: protobuf messages concatenate into
    /// one whose repeated fields hold every builder's entries.
    async fn fan_out(&self, req: Request<Incoming>, pool: &Pool, streaming: bool) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let Some(bytes) = self.read_unary(body).await else {
            return grpc::status(code::INTERNAL, "kiln gateway: reading the request failed");
        };
        let backends: Vec<_> = pool.backends().into_iter().filter(|b| b.state().ready).collect();
        if backends.is_empty() {
            return grpc::status(code::UNAVAILABLE, "kiln gateway: no builder is ready");
        }
        let calls = backends.iter().map(|b| {
            let mut p = Request::builder().method(parts.method.clone()).uri(parts.uri.clone());
            for (k, v) in &parts.headers {
                p = p.header(k, v);
            }
            let body = grpc::full(bytes.clone());
            async move {
                let (parts, _) = p.body(()).ok()?.into_parts();
                let response = self.try_forward(b, parts, body).await.ok()?;
                let (head, body) = response.into_parts();
                let collected = body.collect().await.ok()?;
                let trailers = collected.trailers().cloned();
                let (status, message) = grpc::call_status(&head.headers, trailers.as_ref());
                let data = collected.to_bytes();
                Some((status, message, grpc::messages(&data)?))
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut merged = Vec::new();
        for (backend, result) in backends.iter().zip(results) {
            match result {
                Some((code::OK, _, messages)) => merged.extend(messages),
                Some((status, message, _)) => {
                    return grpc::status(status, &format!("builder {}: {message}", backend.addr));
                }
                None => {
                    self.metrics.gateway_error("fan_out");
                    return grpc::status(
                        code::UNAVAILABLE,
                        &format!("kiln gateway: builder {} did not answer", backend.addr),
                    );
                }
            }
        }
        if streaming { grpc::streamed(merged) } else { grpc::unary(&merged.concat()) }
    }
}

/// `InfoResponse` with the gateway's version, for a pool with no builder yet.
fn info_message() -> Vec<u8> {
    use kiln_proto::buildkit::moby::buildkit::v1::InfoResponse;
    use kiln_proto::buildkit::moby::buildkit::v1::types::BuildkitVersion;
    InfoResponse {
        buildkit_version: Some(BuildkitVersion {
            package: "kiln.dev/kilnd".into(),
            version: concat!("v", env!("CARGO_PKG_VERSION")).into(),
            revision: String::new(),
        }),
    }
    .encode_to_vec()
}

/// One worker of this machine's platform: what a pool scaling up from zero
/// will offer (its builders run where the gateway runs, or alike).
fn placeholder_workers() -> Bytes {
    use kiln_proto::buildkit::moby::buildkit::v1::ListWorkersResponse;
    use kiln_proto::buildkit::moby::buildkit::v1::types::WorkerRecord;
    use kiln_proto::buildkit::pb::Platform;
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let record = WorkerRecord {
        id: "kiln-pool".into(),
        platforms: vec![Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            ..Platform::default()
        }],
        ..WorkerRecord::default()
    };
    Bytes::from(ListWorkersResponse { record: vec![record] }.encode_to_vec())
}

/// A session counted as queued while it waits for a builder, also when its
/// client gives up meanwhile (the call's future is dropped).
struct QueueGauge<'a>(&'a Metrics);

impl<'a> QueueGauge<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.gateway_queue(1);
        Self(metrics)
    }
}

impl Drop for QueueGauge<'_> {
    fn drop(&mut self) {
        self.0.gateway_queue(-1);
    }
}

/// A body relayed through the gateway: counts its bytes; on the way back to
/// the client (`lost_builder` set) a builder lost mid-call becomes a gRPC
/// status the client can read, naming the builder.
struct Tap<B> {
    inner: B,
    direction: &'static str,
    lost_builder: Option<String>,
    metrics: Arc<Metrics>,
    done: bool,
    /// What must live as long as the body (a session's slot).
    _hold: Option<SessionSlot>,
}

impl<B> Tap<B> {
    fn to_builder(inner: B, metrics: Arc<Metrics>) -> Self {
        Self { inner, direction: "to_builder", lost_builder: None, metrics, done: false, _hold: None }
    }

    fn to_client(inner: B, builder: &str, metrics: Arc<Metrics>, hold: Option<SessionSlot>) -> Self {
        let lost_builder = Some(builder.to_owned());
        Self { inner, direction: "to_client", lost_builder, metrics, done: false, _hold: hold }
    }
}

impl<B> hyper::body::Body for Tap<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.metrics.gateway_bytes(self.direction, data.len());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => match self.lost_builder.clone() {
                Some(builder) => {
                    self.done = true;
                    self.metrics.gateway_error("builder_lost");
                    warn!(%builder, error = %e, "builder lost mid-call");
                    let message = format!("kiln gateway: builder {builder} was lost mid-build: {e}");
                    Poll::Ready(Some(Ok(Frame::trailers(grpc::trailers(code::UNAVAILABLE, &message)))))
                }
                None => Poll::Ready(Some(Err(e.into()))),
            },
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Keeps each builder's readiness current with gRPC health checks, and
/// learns each ready builder's worker id (kept in kilnd's root, so it
/// outlives the address) for affinity.
pub async fn watch_health(gateway: Arc<Gateway>, every: Duration) {
    loop {
        for entry in gateway.pools.snapshot() {
            for backend in entry.pool.backends() {
                let ready = check(&gateway, &backend).await;
                if ready
                    && !backend.has_identity()
                    && let Some(id) = worker_id(&gateway, &backend).await
                {
                    info!(builder = %backend.addr, worker.id = %id, "builder identified");
                    backend.set_identity(&id);
                }
                if ready != backend.state().ready {
                    info!(builder = %backend.addr, ready, "builder readiness changed");
                    backend.set_ready(ready);
                    entry.pool.notify();
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The id of the builder's first worker, from its ListWorkers answer.
async fn worker_id(gateway: &Gateway, backend: &Arc<Backend>) -> Option<String> {
    use kiln_proto::buildkit::moby::buildkit::v1::ListWorkersResponse;
    let (parts, ()) = Request::builder()
        .method("POST")
        .uri("/moby.buildkit.v1.Control/ListWorkers")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .ok()?
        .into_parts();
    let call = async {
        let response = gateway.try_forward(backend, parts, grpc::full(grpc::frame(&[]))).await.ok()?;
        let data = response.into_body().collect().await.ok()?.to_bytes();
        let message = grpc::messages(&data)?.into_iter().next()?;
        let workers = ListWorkersResponse::decode(message).ok()?;
        workers.record.into_iter().next().map(|w| w.id).filter(|id| !id.is_empty())
    };
    tokio::time::timeout(Duration::from_secs(2), call).await.ok().flatten()
}

async fn check(gateway: &Gateway, backend: &Arc<Backend>) -> bool {
    let Ok(request) = Request::builder()
        .method("POST")
        .uri("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
    else {
        return false;
    };
    let (parts, ()) = request.into_parts();
    let call = async {
        let response = gateway.try_forward(backend, parts, grpc::full(grpc::frame(&[]))).await.ok()?;
        let (head, body) = response.into_parts();
        let collected = body.collect().await.ok()?;
        let (status, _) = grpc::call_status(&head.headers, collected.trailers());
        let data = collected.to_bytes();
        let messages = grpc::messages(&data)?;
        // HealthCheckResponse { status: SERVING (1) }
        Some(status == code::OK && messages.first().is_some_and(|m| m.as_ref() == [0x08, 0x01]))
    };
    tokio::time::timeout(Duration::from_secs(2), call).await.ok().flatten().unwrap_or(false)
}
