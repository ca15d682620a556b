//! Sessions: the reverse channel a client exposes to the daemon
//! (docs/protocol.md §3).
//!
//! The client opens `Control.Session` and serves gRPC over it as an HTTP/2
//! *server*; the daemon runs an HTTP/2 *client* on the same byte stream and
//! calls back into the client for its local files, secrets, SSH agent and
//! registry credentials. The [`SessionManager`] keeps the live sessions by
//! id so a build can find the one it names, waiting a bounded time for a
//! session that has not arrived yet.

pub(crate) mod auth;
pub(crate) mod filesend;
pub(crate) mod filesync;
pub(crate) mod group;
pub(crate) mod secrets;
pub(crate) mod sshforward;
pub(crate) mod tunnel;
pub(crate) mod upload;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kiln_proto::buildkit::health::HealthCheckRequest;
use kiln_proto::buildkit::health::health_client::HealthClient;
use kiln_proto::buildkit::moby::buildkit::v1::BytesMessage;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::{Instrument, debug, info, info_span, warn};

pub(crate) use self::group::Group;
use self::tunnel::Tunnel;
use crate::arrivals::Arrivals;

/// Header names, lower-case as grpc-go sends them (docs/protocol.md §1, "Metadata keys").
pub(crate) const HEADER_UUID: &str = "x-docker-expose-session-uuid";
pub(crate) const HEADER_SHARED_KEY: &str = "x-docker-expose-session-sharedkey";
pub(crate) const HEADER_METHOD: &str = "x-docker-expose-session-grpc-method";

/// How often the daemon checks that the client still answers (docs/protocol.md §3.2).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// HTTP/2 windows on the session connection: file data flows client → daemon
/// on it, and the 64 KiB defaults cap a loopback transfer far below the link.
/// The stream window bounds what one stream may have buffered here. The
/// connection window is much larger on purpose: h2 closes a connection
/// (`too_many_data_frames`) once the small DATA frames it holds unread cost
/// more than half of it (each frame under 256 bytes costs 256 minus its
/// length), and a 100,000-file context is exactly that, two frames per file,
/// ~3 bytes of cost per byte of window; 256 MiB leaves room for a few
/// transfers at once whose receivers lag a full window behind, while a flood
/// of near-empty frames still ends the connection.
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;
pub(crate) const CONNECTION_WINDOW: u32 = 256 << 20;
pub(crate) const MAX_FRAME: u32 = 1 << 20;
/// BuildKit's gRPC message limit, on its server and on its session client
/// alike (docs/protocol.md §1).
pub(crate) const MAX_MESSAGE_SIZE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session request has no {HEADER_UUID} header")]
    MissingId,
    #[error("starting HTTP/2 on session {id}: {source}")]
    Handshake { id: String, source: hyper::Error },
    #[error("no active session {id} (waited {waited:?}); the client may have gone away")]
    NotFound { id: String, waited: Duration },
    #[error("the build names no session")]
    NoSession,
}

/// A gRPC transport over one session: every call of every client service
/// shares the client's single HTTP/2 connection.
#[derive(Clone, Debug)]
pub(crate) struct SessionChannel {
    sender: http2::SendRequest<tonic::body::Body>,
}

impl tower::Service<http::Request<tonic::body::Body>> for SessionChannel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.sender.send_request(req))
    }
}

/// The origin of requests on a session connection; Go's side dials "localhost".
pub(crate) fn origin() -> http::Uri {
    http::Uri::from_static("http://localhost")
}

/// One client's session.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: String,
    /// Context directory and client node id, e.g. `myapp:3vj…`; may be empty.
    pub shared_key: String,
    /// Methods the client serves, lower-cased (`/moby.filesync.v1.filesync/diffcopy`).
    methods: HashSet<String>,
    channel: SessionChannel,
    closed: CancellationToken,
}

impl Session {
    /// Whether the client serves `/pkg.Service/Method`; case-insensitive, as upstream.
    pub(crate) fn supports(&self, method: &str) -> bool {
        self.methods.contains(&method.to_ascii_lowercase())
    }

    pub(crate) fn channel(&self) -> SessionChannel {
        self.channel.clone()
    }
}

/// The live sessions by id.
#[derive(Debug, Default)]
pub(crate) struct SessionManager {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    arrivals: Arrivals,
}

pub(crate) type SessionStream = ReceiverStream<Result<BytesMessage, Status>>;

impl SessionManager {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes over a `Control.Session` call: starts the HTTP/2 client on the
    /// stream, registers the session and returns the stream of bytes to send
    /// back. The session lives until the client ends its stream.
    pub(crate) async fn handle<S>(
        self: &Arc<Self>,
        metadata: &MetadataMap,
        incoming: S,
    ) -> Result<SessionStream, SessionError>
    where
        S: futures::Stream<Item = Result<BytesMessage, Status>> + Unpin + Send + 'static,
    {
        let text = |v: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>| {
            v.to_str().unwrap_or_default().to_owned()
        };
        let id =
            metadata.get(HEADER_UUID).map(text).filter(|s| !s.is_empty()).ok_or(SessionError::MissingId)?;
        let shared_key = metadata.get(HEADER_SHARED_KEY).map(text).unwrap_or_default();
        let methods = metadata.get_all(HEADER_METHOD).iter().map(|v| text(v).to_ascii_lowercase()).collect();

        let (tx, rx) = mpsc::channel(64);
        let io = TokioIo::new(Tunnel::new(incoming, tx));
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake(io)
            .await
            .map_err(|source| SessionError::Handshake { id: id.clone(), source })?;

        let session = Arc::new(Session {
            id: id.clone(),
            shared_key,
            methods,
            channel: SessionChannel { sender },
            closed: CancellationToken::new(),
        });
        let span = info_span!("session", session.id = %id);
        let manager = Arc::clone(self);
        let closed = session.closed.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    result = connection => if let Err(e) = result {
                        debug!(error = %e, "session connection ended with an error");
                    },
                    // A failed health check drops the connection, which ends the stream.
                    () = closed.cancelled() => {}
                }
                closed.cancel();
                manager.remove(&id);
                info!("session closed");
            }
            .instrument(span.clone()),
        );
        tokio::spawn(health_check(Arc::clone(&session)).instrument(span.clone()));
        self.insert(Arc::clone(&session));
        span.in_scope(
            || info!(shared_key = %session.shared_key, methods = session.methods.len(), "session open"),
        );
        Ok(ReceiverStream::new(rx))
    }

    fn insert(&self, session: Arc<Session>) {
        self.lock().insert(session.id.clone(), session);
        self.arrivals.announce();
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session `id`, waiting up to `timeout` for it to arrive: a client
    /// may open its session after the Solve that names it (docs/protocol.md §3.4). An id of the
    /// form `prefix:rest` names session `rest` (docs/protocol.md §3.3).
    pub(crate) async fn get(&self, id: &str, timeout: Duration) -> Result<Arc<Session>, SessionError> {
        let id = id.rsplit_once(':').map_or(id, |(_, rest)| rest);
        let find = || self.lock().get(id).filter(|s| !s.closed.is_cancelled()).cloned();
        self.arrivals
            .wait_for(timeout, find)
            .await
            .map_err(|waited| SessionError::NotFound { id: id.to_owned(), waited })
    }

    /// How many sessions are open.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Calls the client's `Health/Check` every 5 s; two failures in a row end the
/// session (upstream: timeout max(30 s, 1.5 × the last call), docs/protocol.md §3.2).
async fn health_check(session: Arc<Session>) {
    let mut client = HealthClient::with_origin(session.channel(), origin());
    let mut timeout = Duration::from_secs(30);
    let mut failures = 0;
    loop {
        tokio::select! {
            () = session.closed.cancelled() => return,
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
        let start = Instant::now();
        let result = tokio::time::timeout(timeout, client.check(HealthCheckRequest::default())).await;
        match result {
            Ok(Ok(_)) => {
                failures = 0;
                timeout = timeout.max(start.elapsed().mul_f32(1.5));
            }
            Ok(Err(status)) => {
                failures += 1;
                warn!(%status, failures, "session health check failed");
            }
            Err(_) => {
                failures += 1;
                warn!(?timeout, failures, "session health check timed out");
            }
        }
        if failures >= 2 {
            warn!("client stopped answering health checks; closing the session");
            session.closed.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::service::TowerToHyperService;
    use kiln_proto::buildkit::health::HealthCheckResponse;
    use kiln_proto::buildkit::health::health_check_response::ServingStatus;
    use kiln_proto::buildkit::health::health_server::{Health, HealthServer};
    use tonic::metadata::MetadataValue;
    use tonic::{Request, Response};

    /// The client's health service: always serving.
    struct ClientHealth;

    #[tonic::async_trait]
    impl Health for ClientHealth {
        async fn check(
            &self,
            _request: Request<HealthCheckRequest>,
        ) -> Result<Response<HealthCheckResponse>, Status> {
            Ok(Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }))
        }

        async fn list(
            &self,
            _request: Request<kiln_proto::buildkit::health::HealthListRequest>,
        ) -> Result<Response<kiln_proto::buildkit::health::HealthListResponse>, Status> {
            Err(Status::unimplemented("list"))
        }

        type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, Status>>;

        async fn watch(
            &self,
            _request: Request<HealthCheckRequest>,
        ) -> Result<Response<Self::WatchStream>, Status> {
            Err(Status::unimplemented("watch"))
        }
    }

    /// Plays buildx's side: opens a session on `manager` and serves gRPC
    /// health on it as an HTTP/2 server. Dropping the sender ends the session.
    async fn open_client(manager: &Arc<SessionManager>, id: &str, key: &str) -> tokio::task::JoinHandle<()> {
        let mut md = MetadataMap::new();
        md.insert(HEADER_UUID, MetadataValue::try_from(id).unwrap());
        md.insert(HEADER_SHARED_KEY, MetadataValue::try_from(key).unwrap());
        md.append(HEADER_METHOD, MetadataValue::from_static("/grpc.health.v1.Health/Check"));
        md.append(HEADER_METHOD, MetadataValue::from_static("/moby.filesync.v1.FileSync/DiffCopy"));
        let (to_daemon, from_client) = mpsc::channel(64);
        let from_daemon = manager.handle(&md, ReceiverStream::new(from_client)).await.unwrap();
        let tunnel = Tunnel::new(from_daemon, to_daemon);
        let routes = tonic::service::Routes::new(HealthServer::new(ClientHealth));
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tunnel), TowerToHyperService::new(routes))
                .await;
        })
    }

    #[tokio::test]
    async fn the_daemon_calls_the_client_over_its_session() {
        let manager = SessionManager::new();
        let client = open_client(&manager, "s1", "ctx:node").await;
        let session = manager.get("s1", Duration::from_secs(1)).await.unwrap();
        assert_eq!(session.shared_key, "ctx:node");
        assert!(session.supports("/moby.filesync.v1.filesync/diffcopy"));
        assert!(session.supports("/grpc.health.v1.Health/Check"));
        assert!(!session.supports("/moby.filesync.v1.FileSend/DiffCopy"));

        let mut health = HealthClient::with_origin(session.channel(), origin());
        let resp = health.check(HealthCheckRequest::default()).await.unwrap();
        assert_eq!(resp.get_ref().status, ServingStatus::Serving as i32);
        // Several calls share the one connection.
        for _ in 0..20 {
            health.check(HealthCheckRequest::default()).await.unwrap();
        }

        // A prefixed id names the same session.
        assert_eq!(manager.get("local:s1", Duration::ZERO).await.unwrap().id, "s1");

        // The client going away closes the session and removes it.
        client.abort();
        tokio::time::timeout(Duration::from_secs(5), session.closed.cancelled()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(manager.len(), 0);
        let err = manager.get("s1", Duration::from_millis(50)).await.unwrap_err();
        assert!(err.to_string().contains("no active session s1"), "{err}");
    }

    #[tokio::test]
    async fn get_waits_for_a_session_that_arrives_late() {
        let manager = SessionManager::new();
        let waiter = {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.get("late", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _other = open_client(&manager, "other", "").await;
        let _client = open_client(&manager, "late", "").await;
        let session = waiter.await.unwrap().unwrap();
        assert_eq!(session.id, "late");
    }

    #[tokio::test]
    async fn a_session_without_an_id_is_refused() {
        let manager = SessionManager::new();
        let (_tx, rx) = mpsc::channel(1);
        let err = manager.handle(&MetadataMap::new(), ReceiverStream::new(rx)).await.unwrap_err();
        assert!(matches!(err, SessionError::MissingId), "{err}");
    }

    #[tokio::test]
    async fn a_group_asks_its_sessions_in_order_until_one_answers() {
        let manager = SessionManager::new();
        let _a = open_client(&manager, "a", "").await;
        let _b = open_client(&manager, "b", "").await;
        let group = Group::new(Arc::clone(&manager), ["a".to_owned(), "b".to_owned()]);
        assert_eq!(group.first().await.unwrap().id, "a");

        let asked = Mutex::new(Vec::new());
        let answer = group
            .any(|session| {
                asked.lock().unwrap().push(session.id.clone());
                async move { Ok::<_, String>((session.id == "b").then_some(session.id.clone())) }
            })
            .await;
        assert_eq!(answer, Ok(Some("b".to_owned())));
        assert_eq!(*asked.lock().unwrap(), ["a", "b"]);

        // An error ends the search: the next session is not asked.
        asked.lock().unwrap().clear();
        let failed = group
            .any(|session| {
                asked.lock().unwrap().push(session.id.clone());
                async { Err::<Option<()>, _>("refused") }
            })
            .await;
        assert_eq!(failed, Err("refused"));
        assert_eq!(*asked.lock().unwrap(), ["a"]);
    }
}
