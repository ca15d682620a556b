//! kilnd driven over the wire by our own gRPC clients: a connection, the
//! LLBBridge calls of a forwarded build, a client's session serving callbacks
//! to the daemon, and raw calls whose framing no generated client would send.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use kiln_proto::buildkit::health::health_check_response::ServingStatus;
use kiln_proto::buildkit::health::health_server::{Health, HealthServer};
use kiln_proto::buildkit::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use kiln_proto::buildkit::moby::buildkit::v1::BytesMessage;
use kiln_proto::buildkit::moby::buildkit::v1::control_client::ControlClient;
use kiln_proto::buildkit::moby::buildkit::v1::frontend::llb_bridge_client::LlbBridgeClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Service;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Server};

/// BuildKit's message limit on both sides (docs/protocol.md §1).
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// A connection to `addr` (`tcp://HOST:PORT`).
pub async fn connect(addr: &str) -> Channel {
    let hostport = addr.trim_start_matches("tcp://");
    Channel::from_shared(format!("http://{hostport}")).unwrap().connect().await.unwrap()
}

/// A Control client that sends and takes messages up to BuildKit's limit.
pub fn control(channel: Channel) -> ControlClient<Channel> {
    ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE_SIZE)
}

/// An LLBBridge client whose calls name the forwarded build `build_ref` in
/// the header buildx sends (docs/protocol.md §2.2).
pub fn bridge_for(
    channel: Channel,
    build_ref: &str,
) -> LlbBridgeClient<InterceptedService<Channel, impl Interceptor>> {
    let value: MetadataValue<_> = build_ref.parse().unwrap();
    LlbBridgeClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("buildkit-controlapi-buildid", value.clone());
        Ok(req)
    })
}

/// The client's end of a session (docs/protocol.md §3.1): it opens
/// `Control.Session` and serves gRPC over that byte stream as the HTTP/2
/// server, so the daemon can call the services in `routes` (and the health
/// check). Dropping it ends the stream, which closes the session.
#[derive(Debug)]
pub struct ClientSession {
    pub id: String,
    tasks: Vec<JoinHandle<()>>,
}

impl ClientSession {
    /// Opens session `id` offering `methods` (`/pkg.Service/Method`) besides
    /// the health check; the daemon's HTTP/2 connection is served by `routes`.
    pub async fn open(
        channel: Channel,
        id: &str,
        methods: &[&str],
        routes: Routes,
    ) -> Result<Self, tonic::Status> {
        let (to_daemon, outgoing) = mpsc::channel::<BytesMessage>(64);
        let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
        let md = request.metadata_mut();
        md.insert("x-docker-expose-session-uuid", id.parse().unwrap());
        md.insert("x-docker-expose-session-sharedkey", MetadataValue::from_static(""));
        for method in std::iter::once(&"/grpc.health.v1.Health/Check").chain(methods) {
            md.append("x-docker-expose-session-grpc-method", method.parse().unwrap());
        }
        let mut from_daemon = control(channel).session(request).await?.into_inner();

        // The stream carries raw HTTP/2 bytes with no framing of their own:
        // a pipe between it and an in-process server is the whole tunnel.
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (mut read, mut write) = tokio::io::split(ours);
        let up = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = read.read(&mut buf).await {
                if to_daemon.send(BytesMessage { data: buf[..n].to_vec() }).await.is_err() {
                    break;
                }
            }
        });
        let down = tokio::spawn(async move {
            while let Ok(Some(msg)) = from_daemon.message().await {
                if write.write_all(&msg.data).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let routes = routes.add_service(HealthServer::new(Serving));
        let serve = tokio::spawn(async move {
            // One connection, and the server stays up until the session is dropped.
            let incoming =
                futures::stream::iter([Ok::<_, Infallible>(theirs)]).chain(futures::stream::pending());
            let _ = Server::builder().add_routes(routes).serve_with_incoming(incoming).await;
        });
        Ok(Self { id: id.to_owned(), tasks: vec![up, down, serve] })
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The session's health service: always serving, as a live client is.
#[derive(Debug, Clone, Copy)]
struct Serving;

#[tonic::async_trait]
impl Health for Serving {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }))
    }

    async fn list(
        &self,
        _request: tonic::Request<HealthListRequest>,
    ) -> Result<tonic::Response<HealthListResponse>, tonic::Status> {
        Ok(tonic::Response::new(HealthListResponse::default()))
    }

    type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("the test client does not watch"))
    }
}

/// One gRPC message as it travels: compressed flag, big-endian length, bytes.
pub fn frame(compressed: u8, message: &[u8]) -> Vec<u8> {
    let len = u32::try_from(message.len()).unwrap();
    let mut out = vec![compressed];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// POSTs `body` to the gRPC method `path` exactly as given, framing
/// included, and returns the status the server ends the call with (from
/// the trailers, or from the headers of a trailers-only answer); Err says
/// how the HTTP/2 stream failed when it ended without one.
pub async fn raw_call(
    channel: Channel,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<tonic::Status, String> {
    let mut request =
        http::Request::post(path).header("content-type", "application/grpc").header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(tonic::body::Body::new(Full::new(Bytes::from(body)))).unwrap();
    let mut channel = channel;
    let call = async move {
        futures::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| e.to_string())?;
        let response = channel.call(request).await.map_err(|e| format!("request: {e}"))?;
        let (parts, body) = response.into_parts();
        if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
            return Ok(status);
        }
        let collected = body.collect().await.map_err(|e| format!("response body: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        tonic::Status::from_header_map(&trailers)
            .ok_or_else(|| format!("{path} ended with neither a status header nor status trailers"))
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| panic!("{path} did not answer in {timeout:?}"))
}
