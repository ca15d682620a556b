//! The HTTP debug endpoint (`--debugaddr`): `/metrics`, `/healthz`, `/readyz`,
//! and `/load`, which Kiln's operator reads to tell busy builders from idle
//! ones before it removes or replaces a pod.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What a builder is doing now, as `/load` reports it (JSON, camelCase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Load {
    /// Builds (Solve calls) running.
    pub builds: usize,
    /// Client sessions open; a session usually comes before its builds.
    pub sessions: usize,
    /// Whole seconds since the last build ended (or since start); absent
    /// while builds run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<u64>,
    /// False once kilnd drains and takes no new builds.
    pub serving: bool,
}

/// Where `/load` reads its figures.
pub(crate) trait LoadSource: Send + Sync {
    fn load(&self) -> Load;
}

#[derive(Clone)]
struct DebugState {
    metrics: Arc<Metrics>,
    /// True once every gRPC listener is bound, false again while draining.
    ready: Arc<AtomicBool>,
    load: Arc<dyn LoadSource>,
}

pub(crate) fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>, load: Arc<dyn LoadSource>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/load", get(load_handler))
        .with_state(DebugState { metrics, ready, load })
}

async fn load_handler(State(s): State<DebugState>) -> impl IntoResponse {
    let body = serde_json::to_string(&s.load.load()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn metrics_handler(State(s): State<DebugState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.encode())
}

async fn readyz(State(s): State<DebugState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        (code, out)
    }

    struct Fixed(Load);

    impl LoadSource for Fixed {
        fn load(&self) -> Load {
            self.0
        }
    }

    #[tokio::test]
    async fn readiness_follows_the_flag_and_metrics_are_served() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let ready = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let load = Arc::new(Fixed(Load { builds: 2, sessions: 1, idle_seconds: None, serving: true }));
        let server = tokio::spawn(serve(listener, router(metrics, ready.clone(), load), token.clone()));

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("kilnd_build_info"), "{body}");
        let (code, body) = get(addr, "/load").await;
        assert_eq!(code, 200);
        assert!(body.ends_with(r#"{"builds":2,"sessions":1,"serving":true}"#), "{body}");

        token.cancel();
        server.await.unwrap().unwrap();
    }
}
