//! Cluster mode: the gateway's pool is a `Builder`'s pods, as the API server
//! sees them (Ready, draining, gone), and the gateway tells the controller
//! how much the pool is asked for, so it scales, from zero too.
//!
//! Demand goes on the Builder as two annotations: `kiln.dev/demand` (open
//! plus waiting sessions) and `kiln.dev/demand-at` (when it was measured,
//! RFC 3339), refreshed while it lasts so a gateway that is gone stops
//! counting. The controller turns it into pods (`controller::desired::target`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kiln_crds::builder::Builder;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use super::PoolEntry;
use super::pool::Pool;
use crate::controller::desired::{
    ANNOTATION_DEMAND, ANNOTATION_DEMAND_AT, DEMAND_REFRESH, GRPC_PORT, LABEL_BUILDER, LABEL_DRAINING,
};

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pool members the pods make: (address, ready, draining).
pub fn members(pods: &[Arc<Pod>]) -> Vec<(String, bool, bool)> {
    let mut out: Vec<(String, bool, bool)> = pods
        .iter()
        .filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
            let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() };
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let draining =
                terminating || pod.labels().get(LABEL_DRAINING).map(String::as_str) == Some("true");
            Some((format!("tcp://{host}:{GRPC_PORT}"), is_ready(pod) && !terminating, draining))
        })
        .collect();
    out.sort();
    out
}

/// Keeps the pool equal to the pods of Builder `name` in `namespace`, its
/// per-builder session limit equal to the Builder's `maxParallelBuilds`, and
/// its access list equal to `access.clients`.
pub async fn watch(client: Client, namespace: String, name: String, entry: Arc<PoolEntry>) {
    let pool = Arc::clone(&entry.pool);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("{LABEL_BUILDER}={name}"));
    let pod_events = watcher(pods, config).default_backoff().reflect(writer).applied_objects();
    let builders: Api<Builder> = Api::namespaced(client, &namespace);
    let builder_config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let builder_events = watcher(builders, builder_config).default_backoff().applied_objects();
    tokio::pin!(pod_events, builder_events);
    let update = |store: &Store<Pod>| {
        let m = members(&store.state());
        pool.set_members(&m);
    };
    loop {
        tokio::select! {
            event = pod_events.next() => match event {
                Some(Ok(_)) => update(&store),
                Some(Err(e)) => warn!(error = %e, "watching builder pods"),
                None => return,
            },
            event = builder_events.next() => match event {
                Some(Ok(b)) => {
                    pool.set_max_sessions(usize::try_from(b.spec.max_parallel_builds).unwrap_or(1));
                    entry.set_access(b.spec.access.clients.clone());
                }
                Some(Err(e)) => warn!(error = %e, "watching the Builder"),
                None => return,
            },
            // Deletions show in the store without an applied object.
            () = tokio::time::sleep(Duration::from_secs(1)) => update(&store),
        }
    }
}

/// Writes the pool's demand on the Builder when it changes, and refreshes it
/// while it is above zero.
pub async fn report_demand(client: Client, namespace: String, name: String, pool: Arc<Pool>) {
    let api: Api<Builder> = Api::namespaced(client, &namespace);
    let mut last: Option<(usize, tokio::time::Instant)> = None;
    loop {
        let demand = pool.demand();
        let stale = last.is_none_or(|(d, at)| d != demand || (demand > 0 && at.elapsed() >= DEMAND_REFRESH));
        if stale {
            let patch = serde_json::json!({"metadata": {"annotations": {
                ANNOTATION_DEMAND: demand.to_string(),
                ANNOTATION_DEMAND_AT: Timestamp::now().to_string(),
            }}});
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {
                    if last.is_none_or(|(d, _)| d != demand) {
                        info!(builder = %name, demand, "reported demand");
                    }
                    last = Some((demand, tokio::time::Instant::now()));
                }
                Err(e) => warn!(builder = %name, error = %e, "reporting demand"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Arc<Pod> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn ready_draining_and_terminating_pods_become_members() {
        let ready = json!([{"type": "Ready", "status": "True"}]);
        let pods = [
            pod(json!({"metadata": {"name": "x-0"}, "status": {"podIP": "10.0.0.1", "conditions": ready}})),
            pod(json!({"metadata": {"name": "x-1", "labels": {"kiln.dev/draining": "true"}},
                "status": {"podIP": "10.0.0.2", "conditions": ready}})),
            pod(json!({"metadata": {"name": "x-2", "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"podIP": "10.0.0.3", "conditions": ready}})),
            pod(json!({"metadata": {"name": "x-3"}, "status": {}})),
        ];
        assert_eq!(
            members(&pods),
            [
                ("tcp://10.0.0.1:1234".to_owned(), true, false),
                ("tcp://10.0.0.2:1234".to_owned(), true, true),
                ("tcp://10.0.0.3:1234".to_owned(), false, true),
            ]
        );
    }
}
