//! The `kiln` binary's Prometheus metrics and its HTTP endpoint: `/metrics`,
//! `/healthz`, `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::task::JoinSet;
use tracing::{Instrument, error, info_span};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    pool: IntGaugeVec,
    actions: IntCounterVec,
    leader: IntGauge,
    sessions: IntCounterVec,
    solves: IntCounterVec,
    queue: IntGauge,
    queue_wait: prometheus::Histogram,
    bytes: IntCounterVec,
    gateway_errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("kiln_controller_reconciles_total", "Reconciles of Builders, by result"),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("kiln_controller_reconcile_errors_total", "Failed reconciles, by kind of error"),
            &["kind"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("kiln_controller_reconcile_duration_seconds", "How long a reconcile took")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["result"],
        )?;
        let pool = IntGaugeVec::new(
            Opts::new("kiln_builder_pods", "Builder pods per pool: desired, existing, ready and busy"),
            &["namespace", "builder", "state"],
        )?;
        let actions = IntCounterVec::new(
            Opts::new("kiln_controller_pod_actions_total", "Pods created, drained and deleted"),
            &["action"],
        )?;
        let leader = IntGauge::new("kiln_controller_leader", "1 while this controller holds the lease")?;
        let sessions = IntCounterVec::new(
            Opts::new(
                "kiln_gateway_sessions_total",
                "Sessions placed, by pool, builder and how it was chosen",
            ),
            &["pool", "builder", "choice"],
        )?;
        let solves = IntCounterVec::new(
            Opts::new("kiln_gateway_solves_total", "Builds routed, by pool and builder"),
            &["pool", "builder"],
        )?;
        let queue = IntGauge::new("kiln_gateway_queued_sessions", "Sessions waiting for a free builder")?;
        let queue_wait = prometheus::Histogram::with_opts(
            HistogramOpts::new("kiln_gateway_queue_wait_seconds", "How long sessions waited for a builder")
                .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0]),
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("kiln_gateway_bytes_total", "Bytes relayed, to builders and to clients"),
            &["direction"],
        )?;
        let gateway_errors =
            IntCounterVec::new(Opts::new("kiln_gateway_errors_total", "Gateway errors, by kind"), &["kind"])?;
        for m in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(pool.clone()),
            Box::new(actions.clone()),
            Box::new(leader.clone()),
            Box::new(sessions.clone()),
            Box::new(solves.clone()),
            Box::new(queue.clone()),
            Box::new(queue_wait.clone()),
            Box::new(bytes.clone()),
            Box::new(gateway_errors.clone()),
        ] {
            registry.register(m)?;
        }
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            pool,
            actions,
            leader,
            sessions,
            solves,
            queue,
            queue_wait,
            bytes,
            gateway_errors,
        })
    }

    pub fn gateway_session(&self, pool: &str, builder: &str, choice: &str, waited: Duration) {
        self.sessions.with_label_values(&[pool, builder, choice]).inc();
        self.queue_wait.observe(waited.as_secs_f64());
    }

    pub fn gateway_solve(&self, pool: &str, builder: &str) {
        self.solves.with_label_values(&[pool, builder]).inc();
    }

    pub fn gateway_queue(&self, delta: i64) {
        self.queue.add(delta);
    }

    pub fn gateway_bytes(&self, direction: &str, n: usize) {
        self.bytes.with_label_values(&[direction]).inc_by(n as u64);
    }

    pub fn gateway_error(&self, kind: &str) {
        self.gateway_errors.with_label_values(&[kind]).inc();
    }

    pub fn reconciled(&self, result: &str, took: Duration) {
        self.reconciles.with_label_values(&[result]).inc();
        self.duration.with_label_values(&[result]).observe(took.as_secs_f64());
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    pub fn pool(&self, namespace: &str, builder: &str, counts: [(&str, i64); 4]) {
        for (state, n) in counts {
            self.pool.with_label_values(&[namespace, builder, state]).set(n);
        }
    }

    pub fn forget_pool(&self, namespace: &str, builder: &str) {
        for state in ["desired", "replicas", "ready", "busy"] {
            let _ = self.pool.remove_label_values(&[namespace, builder, state]);
        }
    }

    pub fn action(&self, action: &str) {
        self.actions.with_label_values(&[action]).inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Whether the command is ready to serve (`/readyz`).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Ready as soon as it runs.
pub fn always_ready() -> Readiness {
    Arc::new(|| true)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` from a task in
/// `tasks`, so the endpoint lasts as long as the command that owns them (a
/// drain included).
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    ready: Readiness,
    tasks: &mut JoinSet<()>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let serving = async move {
        if let Err(e) = axum::serve(listener, router(metrics, ready)).await {
            error!(error = %e, "metrics endpoint stopped");
        }
    };
    tasks.spawn(serving.instrument(info_span!("metrics", %addr)));
    Ok(())
}

fn router(metrics: Arc<Metrics>, ready: Readiness) -> Router {
    let readyz = move || {
        let ready = ready();
        async move {
            if ready { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
        }
    };
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

async fn serve_metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_text_format() {
        let m = Metrics::new().unwrap();
        m.reconciled("ok", Duration::from_millis(20));
        m.error("apply");
        m.pool("builds", "ci", [("desired", 3), ("replicas", 2), ("ready", 2), ("busy", 1)]);
        m.action("create");
        m.set_leader(true);
        let text = m.encode();
        for line in [
            r#"kiln_controller_reconciles_total{result="ok"} 1"#,
            r#"kiln_controller_reconcile_errors_total{kind="apply"} 1"#,
            r#"kiln_builder_pods{builder="ci",namespace="builds",state="busy"} 1"#,
            r#"kiln_controller_pod_actions_total{action="create"} 1"#,
            "kiln_controller_leader 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        m.gateway_session("ci", "tcp://10.0.0.1:1234", "affinity_hit", Duration::from_millis(3));
        m.gateway_solve("ci", "tcp://10.0.0.1:1234");
        m.gateway_queue(1);
        m.gateway_bytes("to_builder", 10);
        m.gateway_error("builder_lost");
        let text = m.encode();
        for line in [
            r#"kiln_gateway_sessions_total{builder="tcp://10.0.0.1:1234",choice="affinity_hit",pool="ci"} 1"#,
            r#"kiln_gateway_solves_total{builder="tcp://10.0.0.1:1234",pool="ci"} 1"#,
            "kiln_gateway_queued_sessions 1",
            r#"kiln_gateway_bytes_total{direction="to_builder"} 10"#,
            r#"kiln_gateway_errors_total{kind="builder_lost"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        m.forget_pool("builds", "ci");
        assert!(!m.encode().contains(r#"builder="ci""#));
    }
}
