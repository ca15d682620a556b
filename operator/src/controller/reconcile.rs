//! One reconcile of one `Builder`, as a pipeline: fetch → validate →
//! desired → apply (server-side apply, one field manager) → status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kiln_crds::builder::{Builder, BuilderStatus};
use kiln_crds::condition;
use kiln_crds::validation::parse_duration;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{Instrument, debug, info, info_span, instrument, warn};

use super::desired::{self, FIELD_MANAGER, FINALIZER};
use super::plan::{self, Action, Inputs, Load, Member};
use super::requeue;
use super::{Context, applied, status, tls};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Builder {0} has no namespace")]
    NoNamespace(String),
    #[error("listing the {what} of Builder {builder}: {source}")]
    List { what: &'static str, builder: String, source: kube::Error },
    #[error("applying {kind} {name}: {source}")]
    Apply { kind: &'static str, name: String, source: kube::Error },
    #[error("{action} pod {name}: {source}")]
    Pod { action: &'static str, name: String, source: kube::Error },
    #[error("deleting cache volume claim {name}: {source}")]
    DeleteClaim { name: String, source: kube::Error },
    #[error("writing the status of Builder {builder}: {source}")]
    Status { builder: String, source: kube::Error },
    #[error("{0} builder pod(s) still draining")]
    Draining(usize),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("issuing kilnd's certificate: {0}")]
    Tls(#[source] tls::TlsError),
}

/// What kind of failure an `Error` is: the label of
/// `kiln_controller_reconcile_errors_total` and of the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NoNamespace,
    List,
    Apply,
    Pod,
    DeleteClaim,
    Status,
    /// Not a failure: a deleted Builder waits for its pods to drain.
    Draining,
    Finalizer,
    Tls,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoNamespace => "no_namespace",
            Self::List => "list",
            Self::Apply => "apply",
            Self::Pod => "pod",
            Self::DeleteClaim => "delete_claim",
            Self::Status => "status",
            Self::Draining => "draining",
            Self::Finalizer => "finalizer",
            Self::Tls => "tls",
        }
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NoNamespace(_) => ErrorKind::NoNamespace,
            Self::List { .. } => ErrorKind::List,
            Self::Apply { .. } => ErrorKind::Apply,
            Self::Pod { .. } => ErrorKind::Pod,
            Self::DeleteClaim { .. } => ErrorKind::DeleteClaim,
            Self::Status { .. } => ErrorKind::Status,
            Self::Draining(_) => ErrorKind::Draining,
            Self::Tls(_) => ErrorKind::Tls,
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => ErrorKind::Finalizer,
            },
        }
    }
}

#[instrument(skip_all, fields(builder = %b.name_any(), namespace = ?b.namespace()))]
pub async fn reconcile(b: Arc<Builder>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = std::time::Instant::now();
    let ns = b.namespace().ok_or_else(|| Error::NoNamespace(b.name_any()))?;
    let api: Api<Builder> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, b, |event| async {
        match event {
            finalizer::Event::Apply(b) => pool(&b, &ctx, false).await,
            finalizer::Event::Cleanup(b) => pool(&b, &ctx, true).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let outcome = match result.as_ref().map_err(Error::kind) {
        Ok(_) => "ok",
        Err(ErrorKind::Draining) => "draining",
        Err(_) => "error",
    };
    ctx.metrics.reconciled(outcome, started.elapsed());
    result
}

/// The one place a failed reconcile is logged (and counted, and published
/// as an event); the controller's stream skips these.
pub fn error_policy(b: Arc<Builder>, e: &Error, ctx: Arc<Context>) -> Requeue {
    let kind = e.kind();
    if kind == ErrorKind::Draining {
        debug!(builder = %b.name_any(), "{e}");
        return Requeue::requeue(Duration::from_secs(2));
    }
    ctx.metrics.error(kind.as_str());
    warn!(builder = %b.name_any(), kind = kind.as_str(), error = %e, "reconcile failed");
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let reference = b.object_ref(&());
    let note = e.to_string();
    let publish = async move {
        let event = Event {
            type_: EventType::Warning,
            reason: "ReconcileFailed".into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let _ = recorder.publish(&event, &reference).await;
    };
    tokio::spawn(publish.instrument(info_span!("event", builder = %b.name_any())));
    Requeue::requeue(Duration::from_secs(5))
}

/// One pass over a Builder's pool: fetch (pods, claims, each kilnd's load)
/// → validate the spec → desired objects and the plan → apply them → status.
/// With `deleting`, drains every pod and fails with `Draining` until none
/// is left, which keeps the finalizer.
async fn pool(b: &Builder, ctx: &Context, deleting: bool) -> Result<Requeue, Error> {
    let pass = Pass::new(b, ctx);
    let fetched = pass.fetch().await?;
    let invalid = validate(b);
    // kilnd's certificate: kept while current, issued when due. A deleted
    // or invalid Builder gets none, and its pods keep the one they have.
    let certificate = match (&ctx.tls, &fetched.tls) {
        (Some(ca), current) if invalid.is_none() && !deleting => {
            let now = time::OffsetDateTime::now_utc();
            let secret = match current {
                Some(s) if ca.is_current(Some(s), now) => s.clone(),
                _ => {
                    let issued = ca.kilnd_secret(b, now).map_err(Error::Tls)?;
                    pass.apply(&pass.apis.secrets, "Secret", &issued).await?;
                    issued
                }
            };
            tls::certificate_fingerprint(&secret)
        }
        (_, Some(current)) => tls::certificate_fingerprint(current),
        _ => String::new(),
    };
    let desired = desired(b, &ctx.defaults, &certificate, pass.now, deleting);
    let members = members(b, &fetched, &desired.hash, pass.now);
    // An invalid spec leaves the pods as they are (no half-understood
    // change), except that a deleted Builder still drains.
    let actions =
        if invalid.is_some() && !deleting { Vec::new() } else { plan::plan(&members, &desired.inputs) };

    if invalid.is_none() && !deleting {
        pass.apply(&pass.apis.config_maps, "ConfigMap", &desired::config_map(b, &desired.config)).await?;
        pass.apply(&pass.apis.services, "Service", &desired::service(b)).await?;
        pass.apply(&pass.apis.budgets, "PodDisruptionBudget", &desired::disruption_budget(b)).await?;
        if let Some(gateway) = &ctx.defaults.gateway {
            pass.apply(&pass.apis.policies, "NetworkPolicy", &desired::network_policy(b, gateway)).await?;
        }
    }
    for action in &actions {
        pass.act(action, &fetched.pods, &desired.hash).await?;
    }

    let status = status::compute(
        b.status.as_ref(),
        &status::Observed {
            pods: &fetched.pods,
            claims: &fetched.claims,
            members: &members,
            target: desired.inputs.target,
            deleting,
            generation: b.metadata.generation,
            selector: desired::selector_string(b),
            invalid,
            now: pass.now,
        },
    );
    pass.report(&status, desired.inputs.target).await?;

    if deleting {
        if !members.is_empty() {
            return Err(Error::Draining(members.len()));
        }
        return pass.remove(&fetched.claims).await;
    }
    let settled = actions.is_empty()
        && members.iter().all(|m| m.ready && m.current && m.draining_for.is_none() && !m.terminating)
        && members.len() == desired.inputs.target as usize;
    Ok(requeue(!settled || status.busy_replicas > 0))
}

/// Why the spec cannot be acted on, in words that name the fields.
fn validate(b: &Builder) -> Option<String> {
    let mut problems = Vec::new();
    if let Err(errors) = b.spec.validate() {
        problems.push(errors.to_string());
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// What the spec asks for, before looking at the pool.
#[derive(Debug)]
struct Desired {
    /// kilnd's configuration file.
    config: String,
    /// The template hash that current pods carry.
    hash: String,
    inputs: Inputs,
}

fn desired(
    b: &Builder,
    defaults: &desired::Defaults,
    certificate: &str,
    now: Timestamp,
    deleting: bool,
) -> Desired {
    let config = desired::kilnd_config(&b.spec).unwrap_or_default();
    let hash = desired::template_hash(b, defaults, &config, certificate);
    let inputs = Inputs {
        target: desired::target(b, now),
        idle_timeout: parse_duration(&b.spec.idle_timeout).unwrap_or(Duration::from_secs(600)),
        drain_grace: Duration::from_secs(desired::DRAIN_GRACE_SECONDS as u64),
        deleting,
    };
    Desired { config, hash, inputs }
}

/// The pool as the API server and each kilnd told it.
#[derive(Debug)]
struct Fetched {
    pods: Vec<Pod>,
    claims: Vec<PersistentVolumeClaim>,
    /// Each pod's `/load`, in the order of `pods`.
    loads: Vec<Option<Load>>,
    /// The pool's TLS Secret, when the controller issues certificates.
    tls: Option<Secret>,
}

/// The pool's members as the planner sees them.
fn members(b: &Builder, fetched: &Fetched, hash: &str, now: Timestamp) -> Vec<Member> {
    fetched
        .pods
        .iter()
        .zip(&fetched.loads)
        .filter_map(|(pod, load)| {
            Some(Member {
                ordinal: desired::ordinal_of(b, &pod.name_any())?,
                name: pod.name_any(),
                current: pod.labels().get(desired::LABEL_TEMPLATE_HASH).map(String::as_str) == Some(hash),
                ready: is_ready(pod),
                terminating: pod.metadata.deletion_timestamp.is_some(),
                draining_for: draining_for(pod, now),
                load: *load,
            })
        })
        .collect()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn draining_for(pod: &Pod, now: Timestamp) -> Option<Duration> {
    if pod.labels().get(desired::LABEL_DRAINING).map(String::as_str) != Some("true") {
        return None;
    }
    let since = pod
        .annotations()
        .get(desired::ANNOTATION_DRAIN_STARTED)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .unwrap_or(now);
    Some(now.duration_since(since).unsigned_abs())
}

/// `applied`, what the controller applied to a pod, with the drain label
/// and annotation set (draining `since`) or left out, which server-side
/// apply turns into removing them.
fn draining(mut applied: Value, name: &str, since: Option<Timestamp>) -> Value {
    applied["apiVersion"] = json!("v1");
    applied["kind"] = json!("Pod");
    let metadata = &mut applied["metadata"];
    metadata["name"] = json!(name);
    match since {
        Some(since) => {
            metadata["labels"][desired::LABEL_DRAINING] = json!("true");
            metadata["annotations"][desired::ANNOTATION_DRAIN_STARTED] = json!(since.to_string());
        }
        None => {
            for (map, key) in
                [("labels", desired::LABEL_DRAINING), ("annotations", desired::ANNOTATION_DRAIN_STARTED)]
            {
                let Some(entries) = metadata.get_mut(map).and_then(Value::as_object_mut) else { continue };
                entries.remove(key);
                if entries.is_empty() {
                    metadata.as_object_mut().map(|m| m.remove(map));
                }
            }
        }
    }
    applied
}

/// The APIs of the objects of one namespace.
struct Apis {
    builders: Api<Builder>,
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    config_maps: Api<ConfigMap>,
    services: Api<Service>,
    budgets: Api<PodDisruptionBudget>,
    secrets: Api<Secret>,
    policies: Api<NetworkPolicy>,
}

/// What one reconcile of one Builder reads and writes with.
struct Pass<'a> {
    b: &'a Builder,
    ctx: &'a Context,
    apis: Apis,
    recorder: Recorder,
    now: Timestamp,
}

impl<'a> Pass<'a> {
    fn new(b: &'a Builder, ctx: &'a Context) -> Self {
        let ns = b.namespace().unwrap_or_default();
        let client = &ctx.client;
        let apis = Apis {
            builders: Api::namespaced(client.clone(), &ns),
            pods: Api::namespaced(client.clone(), &ns),
            claims: Api::namespaced(client.clone(), &ns),
            config_maps: Api::namespaced(client.clone(), &ns),
            services: Api::namespaced(client.clone(), &ns),
            budgets: Api::namespaced(client.clone(), &ns),
            secrets: Api::namespaced(client.clone(), &ns),
            policies: Api::namespaced(client.clone(), &ns),
        };
        let recorder = Recorder::new(client.clone(), ctx.reporter.clone());
        Self { b, ctx, apis, recorder, now: Timestamp::now() }
    }

    /// The Builder's pods and cache claims, and each running kilnd's load.
    async fn fetch(&self) -> Result<Fetched, Error> {
        let selector = ListParams::default().labels(&desired::selector_string(self.b));
        let list_error = |what| {
            let builder = self.b.name_any();
            move |source| Error::List { what, builder, source }
        };
        let pods: Vec<Pod> = self
            .apis
            .pods
            .list(&selector)
            .await
            .map_err(list_error("pods"))?
            .items
            .into_iter()
            .filter(|p| desired::ordinal_of(self.b, &p.name_any()).is_some())
            .collect();
        let claims = self.apis.claims.list(&selector).await.map_err(list_error("cache volume claims"))?.items;
        let loads = futures::future::join_all(pods.iter().map(|p| self.read_load(p))).await;
        let tls = match &self.ctx.tls {
            Some(_) => self
                .apis
                .secrets
                .get_opt(&desired::tls_secret_name(self.b))
                .await
                .map_err(list_error("the TLS Secret"))?,
            None => None,
        };
        Ok(Fetched { pods, claims, loads, tls })
    }

    async fn read_load(&self, pod: &Pod) -> Option<Load> {
        let status = pod.status.as_ref()?;
        if status.phase.as_deref() != Some("Running") {
            return None;
        }
        let ip = status.pod_ip.as_deref()?;
        let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() };
        let url = format!("http://{host}:{}/load", desired::DEBUG_PORT);
        match self.ctx.http.get(&url).send().await.and_then(reqwest::Response::error_for_status) {
            Ok(response) => response.json().await.ok(),
            Err(e) => {
                warn!(pod = %pod.name_any(), error = %e, "reading kilnd's load");
                None
            }
        }
    }

    async fn apply<K>(&self, api: &Api<K>, kind: &'static str, object: &K) -> Result<(), Error>
    where
        K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        api.patch(&name, &apply_params(), &Patch::Apply(object))
            .await
            .map(drop)
            .map_err(|source| Error::Apply { kind, name, source })
    }

    async fn act(&self, action: &Action, pods: &[Pod], hash: &str) -> Result<(), Error> {
        let b = self.b;
        let (reason, note, counter) = match action {
            Action::Create(ordinal) => {
                self.apply(&self.apis.claims, "PersistentVolumeClaim", &desired::claim(b, *ordinal)).await?;
                let pod = desired::pod(b, *ordinal, &self.ctx.defaults, hash);
                self.apply(&self.apis.pods, "Pod", &pod).await?;
                (
                    "Created",
                    format!("created builder pod {} (ordinal {ordinal})", desired::pod_name(b, *ordinal)),
                    "create",
                )
            }
            Action::Drain(name) => {
                self.mark_draining(pods, name, Some(self.now)).await?;
                (
                    "Draining",
                    format!("builder pod {name} takes no new builds and goes when its builds end"),
                    "drain",
                )
            }
            Action::Undrain(name) => {
                self.mark_draining(pods, name, None).await?;
                ("Undrained", format!("builder pod {name} is wanted again and takes builds"), "undrain")
            }
            Action::Delete(name) => {
                match self.apis.pods.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(Error::Pod { action: "deleting", name: name.clone(), source }),
                }
                ("Deleted", format!("removed builder pod {name}"), "delete")
            }
        };
        info!(%note, "pool");
        self.ctx.metrics.action(counter);
        let event = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &b.object_ref(&())).await {
            warn!(error = %e, "publishing an event");
        }
        Ok(())
    }

    /// Applies pod `name` (one of `pods`) again as the controller applied
    /// it, marked draining `since`, or (`None`) no longer draining.
    async fn mark_draining(&self, pods: &[Pod], name: &str, since: Option<Timestamp>) -> Result<(), Error> {
        let action = if since.is_some() { "draining" } else { "undraining" };
        let failed = |source| Error::Pod { action, name: name.to_owned(), source };
        // The plan names only pods it was given; one that is not among them
        // is not applied, since an apply would create it.
        let Some(pod) = pods.iter().find(|p| p.name_any() == name) else { return Ok(()) };
        let live = serde_json::to_value(pod).map_err(|e| failed(kube::Error::SerdeError(e)))?;
        let managed = pod.metadata.managed_fields.as_deref().unwrap_or_default();
        let object = draining(applied::extract(&live, managed, FIELD_MANAGER), name, since);
        self.apis.pods.patch(name, &apply_params(), &Patch::Apply(object)).await.map(drop).map_err(failed)
    }

    /// Reports a newly Degraded pool, updates the pool's gauges, and applies
    /// `status` when it changed.
    async fn report(&self, status: &BuilderStatus, target: u32) -> Result<(), Error> {
        let b = self.b;
        let previous = b.status.as_ref();
        report_degraded(b, &self.recorder, previous, status).await;
        self.ctx.metrics.pool(
            &b.namespace().unwrap_or_default(),
            &b.name_any(),
            [
                ("desired", i64::from(target)),
                ("replicas", i64::from(status.replicas)),
                ("ready", i64::from(status.ready_replicas)),
                ("busy", i64::from(status.busy_replicas)),
            ],
        );
        if previous == Some(status) {
            return Ok(());
        }
        let object = json!({
            "apiVersion": Builder::api_version(&()),
            "kind": Builder::kind(&()),
            "metadata": {"name": b.name_any()},
            "status": status,
        });
        self.apis
            .builders
            .patch_status(&b.name_any(), &apply_params(), &Patch::Apply(object))
            .await
            .map(drop)
            .map_err(|source| Error::Status { builder: b.name_any(), source })
    }

    /// The end of a deleted Builder's drained pool: its cache claims go too
    /// unless it keeps them.
    async fn remove(&self, claims: &[PersistentVolumeClaim]) -> Result<Requeue, Error> {
        let b = self.b;
        if !b.spec.cache.retain {
            for claim in claims {
                match self.apis.claims.delete(&claim.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(Error::DeleteClaim { name: claim.name_any(), source }),
                }
            }
        }
        self.ctx.metrics.forget_pool(&b.namespace().unwrap_or_default(), &b.name_any());
        info!("pool drained and removed");
        Ok(Requeue::await_change())
    }
}

/// Every write is a server-side apply by the controller's one field manager.
fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// A Warning event when the pool becomes Degraded or its reason changes.
async fn report_degraded(
    b: &Builder,
    recorder: &Recorder,
    previous: Option<&BuilderStatus>,
    now: &BuilderStatus,
) {
    let find = |s: &BuilderStatus| {
        condition::find(&s.conditions, condition::DEGRADED)
            .filter(|c| c.status == condition::status::TRUE)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let Some((reason, message)) = find(now) else { return };
    if previous.and_then(find).is_some_and(|(r, _)| r == reason) {
        return;
    }
    let event = Event {
        type_: EventType::Warning,
        reason,
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &b.object_ref(&())).await {
        warn!(error = %e, "publishing an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(extra: &str) -> Builder {
        let yaml = format!(
            "metadata: {{name: ci, namespace: builds}}\nspec: {{replicas: {{min: 2, max: 4}}{extra}}}"
        );
        serde_norway::from_str(&yaml).unwrap()
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_the_pods_ordinals_become_members_with_their_state() {
        let b = builder("");
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let ready = json!([{"type": "Ready", "status": "True"}]);
        let fetched = Fetched {
            pods: vec![
                pod(json!({"metadata": {"name": "ci-0", "labels": {"kiln.dev/template-hash": "h1"}},
                    "status": {"conditions": ready}})),
                pod(json!({"metadata": {"name": "ci-1", "labels": {"kiln.dev/template-hash": "h0",
                    "kiln.dev/draining": "true"}, "annotations": {"kiln.dev/drain-started": "2026-01-01T00:09:00Z"}}})),
                pod(json!({"metadata": {"name": "ci-extra"}})),
            ],
            claims: Vec::new(),
            loads: vec![Some(Load { builds: 1, sessions: 1, idle_seconds: None }), None, None],
            tls: None,
        };
        let members = members(&b, &fetched, "h1", now);
        assert_eq!(
            members,
            [
                Member {
                    ordinal: 0,
                    name: "ci-0".into(),
                    current: true,
                    ready: true,
                    terminating: false,
                    draining_for: None,
                    load: Some(Load { builds: 1, sessions: 1, idle_seconds: None }),
                },
                Member {
                    ordinal: 1,
                    name: "ci-1".into(),
                    current: false,
                    ready: false,
                    terminating: false,
                    draining_for: Some(Duration::from_secs(60)),
                    load: None,
                },
            ]
        );
    }

    #[test]
    fn a_valid_spec_passes_rootless_or_not() {
        assert_eq!(validate(&builder("")), None);
        assert_eq!(validate(&builder(", template: {securityMode: rootless}")), None);
    }

    #[test]
    fn draining_sets_or_leaves_out_the_label_and_annotation_and_keeps_the_rest() {
        let applied = json!({
            "metadata": {"labels": {"kiln.dev/builder": "ci"}, "ownerReferences": [{"uid": "u1"}]},
            "spec": {"containers": [{"name": "kilnd", "image": "kilnd:1"}]},
        });
        let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let drained = draining(applied.clone(), "ci-0", Some(since));
        assert_eq!(
            drained,
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "ci-0",
                    "labels": {"kiln.dev/builder": "ci", "kiln.dev/draining": "true"},
                    "annotations": {"kiln.dev/drain-started": "2026-01-01T00:00:00Z"},
                    "ownerReferences": [{"uid": "u1"}],
                },
                "spec": {"containers": [{"name": "kilnd", "image": "kilnd:1"}]},
            })
        );
        let mut undrained = draining(drained, "ci-0", None);
        let mut want = applied;
        want["apiVersion"] = json!("v1");
        want["kind"] = json!("Pod");
        want["metadata"]["name"] = json!("ci-0");
        assert_eq!(undrained, want);
        // A pod the controller applied nothing to gets just the marks.
        undrained = draining(json!({}), "ci-1", Some(since));
        assert_eq!(undrained["metadata"]["labels"], json!({"kiln.dev/draining": "true"}));
    }

    #[test]
    fn an_error_inside_the_finalizer_keeps_its_kind() {
        let source = kube::Error::SerdeError(serde_json::from_str::<()>("").unwrap_err());
        let inner = Error::Status { builder: "ci".into(), source };
        assert_eq!(
            Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(inner))).kind(),
            ErrorKind::Status
        );
        let draining = Error::Finalizer(Box::new(finalizer::Error::CleanupFailed(Error::Draining(2))));
        assert_eq!(draining.kind(), ErrorKind::Draining);
        let other = Error::Finalizer(Box::new(finalizer::Error::UnnamedObject));
        assert_eq!((other.kind(), other.kind().as_str()), (ErrorKind::Finalizer, "finalizer"));
    }
}
