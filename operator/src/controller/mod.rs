//! `kiln controller`: reconciles each `Builder` into a pool of kilnd pods.
//!
//! One process leads at a time (a Lease); the leader runs a kube-runtime
//! controller over Builders and the pods they own. Every reconcile reads the
//! pool as it is (pods, claims, each kilnd's `/load`), asks `plan` what to do
//! next, does it, and writes the status `status` computes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kiln_crds::builder::Builder;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::metrics::{self, Metrics};

mod applied;
pub mod desired;
pub mod leader;
pub mod plan;
mod reconcile;
pub mod status;
pub mod tls;

/// Run the Builder controller.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Watch Builders in this namespace only. Unset: every namespace.
    #[arg(long, env = "KILN_NAMESPACE")]
    pub namespace: Option<String>,

    /// The kilnd image of pods whose Builder names none.
    #[arg(long, env = "KILN_KILND_IMAGE", default_value = concat!("ghcr.io/kiln-dev/kilnd:", env!("CARGO_PKG_VERSION")))]
    pub kilnd_image: String,

    /// Serve /metrics, /healthz and /readyz on HOST:PORT.
    #[arg(long, env = "KILN_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: String,

    /// The namespace of the leader-election Lease (in a cluster: the
    /// controller's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// The name of the leader-election Lease.
    #[arg(long, default_value = "kiln-controller")]
    pub lease_name: String,

    /// How long a lease lasts without renewal (seconds); a standby takes over
    /// this long after the leader stops.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub lease_duration: u64,

    /// This candidate's name in the Lease. Unset: hostname and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// The builder CA (NAMESPACE/NAME of a Secret with tls.crt and tls.key):
    /// every pool's kilnd then serves TLS with a certificate the controller
    /// issues from it and takes only clients it signed (the gateway).
    #[arg(long, env = "KILN_BUILDER_CA_SECRET", value_name = "NAMESPACE/NAME")]
    pub builder_ca_secret: Option<String>,

    /// With --builder-ca-secret: the Secret (NAMESPACE/NAME) the controller
    /// keeps the gateway's client certificate in.
    #[arg(
        long,
        env = "KILN_GATEWAY_CLIENT_SECRET",
        value_name = "NAMESPACE/NAME",
        requires = "builder_ca_secret"
    )]
    pub gateway_client_secret: Option<String>,

    /// The gateway's namespace: with --gateway-labels, each pool gets a
    /// NetworkPolicy that lets only the gateway's pods reach kilnd's API.
    #[arg(long, env = "KILN_GATEWAY_NAMESPACE", requires = "gateway_labels")]
    pub gateway_namespace: Option<String>,

    /// The gateway pods' labels (k=v,k=v).
    #[arg(long, env = "KILN_GATEWAY_LABELS", value_name = "K=V,...", requires = "gateway_namespace")]
    pub gateway_labels: Option<String>,
}

/// `k=v,k=v` → labels.
fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, RunError> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| RunError::Labels(text.to_owned()))
        })
        .collect()
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub defaults: desired::Defaults,
    /// The builder CA, when kilnd serves TLS.
    pub tls: Option<Arc<tls::BuilderCa>>,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("defaults", &self.defaults).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("connecting to the Kubernetes API (KUBECONFIG or the in-cluster service account): {0}")]
    Client(#[source] kube::Error),
    #[error("setting up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("listening on {addr} for metrics: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("building the HTTP client that reads kilnd's /load: {0}")]
    Http(#[source] reqwest::Error),
    #[error(transparent)]
    Leader(#[from] leader::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("--gateway-labels {0:?} is not k=v,k=v")]
    Labels(String),
}

fn identity(args: &Args) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// How long running reconciles may go on after `shutdown`: well inside the
/// 30 s a pod gets by default before it is killed, leaving time to give up
/// the lease.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs until `shutdown` (then lets running reconciles finish and gives up
/// the lease) or until leadership is lost (an error: the process should
/// restart and stand by).
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(Metrics::new()?);
    let mut tasks = JoinSet::new();
    metrics::serve(&args.metrics_addr, metrics.clone(), metrics::always_ready(), &mut tasks)
        .await
        .map_err(|source| RunError::Listen { addr: args.metrics_addr.clone(), source })?;
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");

    let identity = identity(&args);
    let elector = leader::Elector::new(
        Api::namespaced(client.clone(), &args.lease_namespace),
        &args.lease_name,
        &identity,
        Duration::from_secs(args.lease_duration.max(2)),
    );
    info!(lease = %args.lease_name, namespace = %args.lease_namespace, %identity, "waiting to lead");
    tokio::select! {
        result = elector.acquire() => result?,
        () = shutdown.cancelled() => return Ok(()),
    }
    metrics.set_leader(true);
    info!(%identity, "leading: reconciling Builders");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(RunError::Http)?;
    let ca = match &args.builder_ca_secret {
        Some(secret) => {
            let (ns, name) = tls::secret_ref(secret)?;
            let ca = Arc::new(tls::BuilderCa::load(&client, &ns, &name).await?);
            info!(secret = %secret, "kilnd serves TLS to the gateway alone");
            if let Some(gateway) = &args.gateway_client_secret {
                let (ns, name) = tls::secret_ref(gateway)?;
                let keep = tls::keep_gateway_certificate(client.clone(), Arc::clone(&ca), ns, name);
                tasks.spawn(keep.instrument(info_span!("gateway certificate")));
            }
            Some(ca)
        }
        None => {
            warn!("no --builder-ca-secret: builders take any client that reaches them, not only the gateway");
            None
        }
    };
    let gateway = match (&args.gateway_namespace, &args.gateway_labels) {
        (Some(namespace), Some(labels)) => {
            Some(desired::GatewayPeer { namespace: namespace.clone(), labels: parse_labels(labels)? })
        }
        _ => None,
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        defaults: desired::Defaults { image: args.kilnd_image.clone(), builder_tls: ca.is_some(), gateway },
        tls: ca,
        metrics: metrics.clone(),
        reporter: Reporter { controller: desired::FIELD_MANAGER.into(), instance: Some(identity.clone()) },
        http,
    });
    let (builders, pods): (Api<Builder>, Api<Pod>) = match &args.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let pods_config = watcher::Config::default().labels(desired::LABEL_BUILDER);
    let controller = Controller::new(builders, watcher::Config::default())
        .owns(pods, pods_config)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                // error_policy logged it.
                Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => warn!(error = %e, "controller"),
            }
        });
    let past_grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let outcome = tokio::select! {
        () = controller => Ok(()),
        () = past_grace => {
            warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after the grace period; stopping them");
            Ok(())
        }
        lost = elector.hold() => Err(RunError::Leader(lost)),
    };
    metrics.set_leader(false);
    if outcome.is_ok() {
        elector.release().await;
        info!("stopped; lease released");
    }
    outcome
}

/// How soon to look again.
fn requeue(busy: bool) -> Action {
    Action::requeue(if busy { Duration::from_secs(2) } else { Duration::from_secs(15) })
}
