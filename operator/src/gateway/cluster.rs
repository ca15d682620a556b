//! Cluster mode: the pools are `Builder`s, as the API server sees them. The
//! gateway follows the Builders it is given (`--builder`) or every one it
//! may see (`--watch-builders`, optionally within namespaces and by label
//! selector): a Builder that appears is served with its access list and
//! entitlements from the start, one that changes is updated in place, one
//! that goes is no longer served (connections already on it keep it until
//! they close). Each pool's members are its pods (Ready, draining, gone),
//! and the gateway tells the controller how much the pool is asked for, so
//! it scales, from zero too.
//!
//! Demand goes on the Builder as two annotations: `kiln.dev/demand` (open
//! plus waiting sessions) and `kiln.dev/demand-at` (when it was measured,
//! RFC 3339), refreshed while it lasts so a gateway that is gone stops
//! counting. The controller turns it into pods (`controller::desired::target`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kiln_crds::builder::Builder;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use super::PoolEntry;
use super::pool::{Member, Pool};
use super::pools::Pools;
use crate::controller::desired::{
    ANNOTATION_DEMAND, ANNOTATION_DEMAND_AT, DEMAND_REFRESH, GRPC_PORT, LABEL_BUILDER, LABEL_DRAINING,
};

/// Which Builders the gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// These, as (namespace, name).
    Named(Vec<(String, String)>),
    /// Every Builder in `namespaces` (all when empty) matching `selector`.
    Watched { namespaces: Vec<String>, selector: Option<String> },
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pool members the pods of Builder `namespace/name` make, known by
/// their pod's name: the ordinal whose volume holds the cache, whatever
/// address the pod has now.
pub fn members(namespace: &str, name: &str, pods: &[Arc<Pod>]) -> Vec<Member> {
    let server_name = crate::controller::tls::server_name(namespace, name);
    let mut out: Vec<Member> = pods
        .iter()
        .filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
            let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() };
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let draining =
                terminating || pod.labels().get(LABEL_DRAINING).map(String::as_str) == Some("true");
            Some(Member {
                addr: format!("tcp://{host}:{GRPC_PORT}"),
                identity: Some(pod.name_any()),
                server_name: Some(server_name.clone()),
                ready: is_ready(pod) && !terminating,
                draining,
            })
        })
        .collect();
    out.sort();
    out
}

/// Serves the Builders of `scope` until the task is dropped. The pools'
/// own tasks (their pods' watch, their demand) live in a set of this task,
/// so they end with it.
pub async fn follow(client: Client, scope: Scope, pools: Arc<Pools>) {
    let sources = sources(&client, &scope);
    let streams: Vec<BuilderEvents> = sources
        .iter()
        .enumerate()
        .map(|(i, (api, config, _))| {
            watcher::watcher(api.clone(), config.clone()).default_backoff().map(move |e| (i, e)).boxed()
        })
        .collect();
    let mut unsynced: HashSet<usize> = (0..streams.len()).collect();
    let mut listing: HashMap<usize, HashSet<(String, String)>> = HashMap::new();
    let mut events = stream::select_all(streams);
    let mut pool_tasks = JoinSet::new();
    if unsynced.is_empty() {
        pools.mark_synced();
    }
    while let Some((source, event)) = events.next().await {
        match event {
            Ok(Event::Init) => {
                listing.insert(source, HashSet::new());
            }
            Ok(Event::InitApply(builder)) => {
                listing.entry(source).or_default().insert(key(&builder));
                serve(&client, &pools, &builder, &mut pool_tasks);
            }
            Ok(Event::InitDone) => {
                // A fresh list (at start, or after the watch was lost):
                // the pools it no longer has are gone.
                let listed = listing.remove(&source).unwrap_or_default();
                for entry in pools.snapshot() {
                    if let Some((ns, n)) = &entry.builder
                        && sources[source].2.covers(ns, n)
                        && !listed.contains(&(ns.clone(), n.clone()))
                    {
                        drop_pool(&pools, ns, n);
                    }
                }
                if unsynced.remove(&source) && unsynced.is_empty() {
                    info!(pools = pools.snapshot().len(), "serving the Builders' pools");
                    pools.mark_synced();
                }
            }
            Ok(Event::Apply(builder)) => serve(&client, &pools, &builder, &mut pool_tasks),
            Ok(Event::Delete(builder)) => {
                let (ns, n) = key(&builder);
                drop_pool(&pools, &ns, &n);
            }
            Err(e) => warn!(error = %e, "watching Builders"),
        }
    }
}

/// The events of one watch of Builders, tagged with the watch's index.
type BuilderEvents = BoxStream<'static, (usize, Result<Event<Builder>, watcher::Error>)>;

/// Which pools one watch of Builders lists.
#[derive(Debug)]
enum Cover {
    Builder(String, String),
    Namespace(String),
    All,
}

impl Cover {
    fn covers(&self, namespace: &str, name: &str) -> bool {
        match self {
            Self::Builder(ns, n) => ns == namespace && n == name,
            Self::Namespace(ns) => ns == namespace,
            Self::All => true,
        }
    }
}

/// The watches of Builders `scope` takes: one per named Builder, per
/// namespace, or one over every namespace.
fn sources(client: &Client, scope: &Scope) -> Vec<(Api<Builder>, watcher::Config, Cover)> {
    match scope {
        Scope::Named(builders) => builders
            .iter()
            .map(|(namespace, name)| {
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let cover = Cover::Builder(namespace.clone(), name.clone());
                (Api::namespaced(client.clone(), namespace), config, cover)
            })
            .collect(),
        Scope::Watched { namespaces, selector } => {
            let mut config = watcher::Config::default();
            if let Some(selector) = selector {
                config = config.labels(selector);
            }
            if namespaces.is_empty() {
                return vec![(Api::all(client.clone()), config, Cover::All)];
            }
            namespaces
                .iter()
                .map(|ns| (Api::namespaced(client.clone(), ns), config.clone(), Cover::Namespace(ns.clone())))
                .collect()
        }
    }
}

fn key(builder: &Builder) -> (String, String) {
    (builder.namespace().unwrap_or_default(), builder.name_any())
}

/// Serves `builder`'s pool: updates it when it is served already, else adds
/// it, its access list and entitlements set before anyone can reach it.
fn serve(client: &Client, pools: &Pools, builder: &Builder, tasks: &mut JoinSet<()>) {
    let (namespace, name) = key(builder);
    let spec = &builder.spec;
    let max_sessions = usize::try_from(spec.max_parallel_builds).unwrap_or(1);
    let update = |entry: &PoolEntry| {
        entry.pool.set_max_sessions(max_sessions);
        entry.set_access(spec.access.clients.clone());
        entry.set_entitlements(spec.entitlements.clone());
    };
    if let Some(entry) = pools.get(&namespace, &name) {
        update(&entry);
        return;
    }
    let entry = PoolEntry::for_builder(&namespace, &name, Pool::new(Vec::new(), max_sessions));
    update(&entry);
    let span = info_span!("pool", builder = %format!("{namespace}/{name}"));
    let members = watch_pods(client.clone(), namespace.clone(), name.clone(), Arc::clone(&entry));
    tasks.spawn(members.instrument(span.clone()));
    let demand = report_demand(client.clone(), namespace.clone(), name.clone(), Arc::clone(&entry));
    tasks.spawn(demand.instrument(span));
    pools.insert(entry);
    info!(builder = %format!("{namespace}/{name}"), "serving a pool");
}

fn drop_pool(pools: &Pools, namespace: &str, name: &str) {
    if let Some(entry) = pools.remove(namespace, name) {
        entry.stop.cancel();
        info!(builder = %format!("{namespace}/{name}"), "no longer serving a pool");
    }
}

/// Keeps the pool's members equal to the pods of Builder `name` in
/// `namespace`, until the pool is no longer served.
async fn watch_pods(client: Client, namespace: String, name: String, entry: Arc<PoolEntry>) {
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("{LABEL_BUILDER}={name}"));
    let pod_events = watcher::watcher(pods, config).default_backoff().reflect(writer).applied_objects();
    tokio::pin!(pod_events);
    let update = |store: &Store<Pod>| entry.pool.set_members(&members(&namespace, &name, &store.state()));
    loop {
        tokio::select! {
            () = entry.stop.cancelled() => return,
            event = pod_events.try_next() => match event {
                Ok(Some(_)) => update(&store),
                Ok(None) => return,
                Err(e) => warn!(error = %e, "watching builder pods"),
            },
            // Deletions show in the store without an applied object.
            () = tokio::time::sleep(Duration::from_secs(1)) => update(&store),
        }
    }
}

/// Writes the pool's demand on the Builder when it changes, and refreshes it
/// while it is above zero, until the pool is no longer served.
async fn report_demand(client: Client, namespace: String, name: String, entry: Arc<PoolEntry>) {
    let api: Api<Builder> = Api::namespaced(client, &namespace);
    let mut last: Option<(usize, tokio::time::Instant)> = None;
    while !entry.stop.is_cancelled() {
        let demand = entry.pool.demand();
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
        tokio::select! {
            () = entry.stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Arc<Pod> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn member(addr: &str, pod: &str, ready: bool, draining: bool) -> Member {
        Member {
            addr: addr.to_owned(),
            identity: Some(pod.to_owned()),
            server_name: Some("x.team-a.builders.kiln".to_owned()),
            ready,
            draining,
        }
    }

    #[test]
    fn ready_draining_and_terminating_pods_become_members_known_by_pod_name() {
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
            members("team-a", "x", &pods),
            [
                member("tcp://10.0.0.1:1234", "x-0", true, false),
                member("tcp://10.0.0.2:1234", "x-1", true, true),
                member("tcp://10.0.0.3:1234", "x-2", false, true),
            ]
        );
    }
}
