//! One reconcile of one `Builder`: observe, plan, act, report.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kiln_crds::builder::{Builder, BuilderStatus, SecurityMode};
use kiln_crds::condition;
use kiln_crds::validation::parse_duration;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{Instrument, info, info_span, instrument, warn};

use super::desired::{self, FIELD_MANAGER, FINALIZER};
use super::plan::{self, Action, Inputs, Load, Member};
use super::status::{self, Observed};
use super::{Context, requeue};

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
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Self::NoNamespace(_) => "no_namespace",
            Self::List { .. } => "list",
            Self::Apply { .. } => "apply",
            Self::Pod { .. } => "pod",
            Self::DeleteClaim { .. } => "delete_claim",
            Self::Status { .. } => "status",
            Self::Draining(_) => "draining",
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
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
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.kind() == "draining" => "draining",
        Err(_) => "error",
    };
    ctx.metrics.reconciled(outcome, started.elapsed());
    result
}

pub fn error_policy(b: Arc<Builder>, e: &Error, ctx: Arc<Context>) -> Requeue {
    if e.kind() == "draining" {
        return Requeue::requeue(Duration::from_secs(2));
    }
    ctx.metrics.error(e.kind());
    warn!(builder = %b.name_any(), error = %e, "reconcile failed");
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

/// Why the spec cannot be acted on, in words that name the fields.
fn invalid(b: &Builder) -> Option<String> {
    let mut problems = Vec::new();
    if let Err(errors) = b.spec.validate() {
        problems.push(errors.to_string());
    }
    if b.spec.template.security_mode == SecurityMode::Rootless {
        problems.push(
            "spec.template.securityMode: rootless builders are not supported by kilnd yet; use privileged"
                .to_owned(),
        );
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

async fn apply<K>(api: &Api<K>, kind: &'static str, object: &K) -> Result<(), Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .map(drop)
        .map_err(|source| Error::Apply { kind, name, source })
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn read_load(ctx: &Context, pod: &Pod) -> Option<Load> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_deref()?;
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() };
    let url = format!("http://{host}:{}/load", desired::DEBUG_PORT);
    match ctx.http.get(&url).send().await.and_then(reqwest::Response::error_for_status) {
        Ok(response) => response.json().await.ok(),
        Err(e) => {
            warn!(pod = %pod.name_any(), error = %e, "reading kilnd's load");
            None
        }
    }
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

/// Observes the pool, acts on the plan, writes the status. With `deleting`,
/// drains every pod and fails with `Draining` until none is left, which
/// keeps the finalizer.
async fn pool(b: &Builder, ctx: &Context, deleting: bool) -> Result<Requeue, Error> {
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let client = ctx.client.clone();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let now = Timestamp::now();

    let invalid = invalid(b);
    let config = desired::kilnd_config(&b.spec).unwrap_or_default();
    let hash = desired::template_hash(b, &ctx.defaults, &config);
    if invalid.is_none() && !deleting {
        apply(
            &Api::<ConfigMap>::namespaced(client.clone(), &ns),
            "ConfigMap",
            &desired::config_map(b, &config),
        )
        .await?;
        apply(&Api::<Service>::namespaced(client.clone(), &ns), "Service", &desired::service(b)).await?;
        apply(
            &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
            "PodDisruptionBudget",
            &desired::disruption_budget(b),
        )
        .await?;
    }

    let selector = ListParams::default().labels(&desired::selector_string(b));
    let list_error = |what| {
        let builder = name.clone();
        move |source| Error::List { what, builder, source }
    };
    let pods: Vec<Pod> = pods_api
        .list(&selector)
        .await
        .map_err(list_error("pods"))?
        .items
        .into_iter()
        .filter(|p| desired::ordinal_of(b, &p.name_any()).is_some())
        .collect();
    let claims = claims_api.list(&selector).await.map_err(list_error("cache volume claims"))?.items;

    let loads = futures::future::join_all(pods.iter().map(|p| read_load(ctx, p))).await;
    let members: Vec<Member> = pods
        .iter()
        .zip(loads)
        .filter_map(|(pod, load)| {
            Some(Member {
                ordinal: desired::ordinal_of(b, &pod.name_any())?,
                name: pod.name_any(),
                current: pod.labels().get(desired::LABEL_TEMPLATE_HASH) == Some(&hash),
                ready: is_ready(pod),
                terminating: pod.metadata.deletion_timestamp.is_some(),
                draining_for: draining_for(pod, now),
                load,
            })
        })
        .collect();

    let target = desired::target(b, now);
    let inputs = Inputs {
        target,
        idle_timeout: parse_duration(&b.spec.idle_timeout).unwrap_or(Duration::from_secs(600)),
        drain_grace: Duration::from_secs(desired::DRAIN_GRACE_SECONDS as u64),
        deleting,
    };
    // An invalid spec leaves the pods as they are (no half-understood
    // change), except that a deleted Builder still drains.
    let actions = if invalid.is_some() && !deleting { Vec::new() } else { plan::plan(&members, &inputs) };
    let recorder = Recorder::new(client.clone(), ctx.reporter.clone());
    for action in &actions {
        act(b, ctx, &recorder, &pods_api, &claims_api, action, &hash, now).await?;
    }

    let previous = b.status.as_ref();
    let observed = Observed {
        pods: &pods,
        claims: &claims,
        members: &members,
        target,
        deleting,
        generation: b.metadata.generation,
        selector: desired::selector_string(b),
        invalid,
        now,
    };
    let status = status::compute(previous, &observed);
    report_degraded(b, &recorder, previous, &status).await;
    ctx.metrics.pool(
        &ns,
        &b.name_any(),
        [
            ("desired", i64::from(target)),
            ("replicas", i64::from(status.replicas)),
            ("ready", i64::from(status.ready_replicas)),
            ("busy", i64::from(status.busy_replicas)),
        ],
    );
    if previous != Some(&status) {
        Api::<Builder>::namespaced(client.clone(), &ns)
            .patch_status(&b.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await
            .map_err(|source| Error::Status { builder: b.name_any(), source })?;
    }

    if deleting {
        if !members.is_empty() {
            return Err(Error::Draining(members.len()));
        }
        if !b.spec.cache.retain {
            for claim in &claims {
                match claims_api.delete(&claim.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(Error::DeleteClaim { name: claim.name_any(), source }),
                }
            }
        }
        ctx.metrics.forget_pool(&ns, &b.name_any());
        info!("pool drained and removed");
        return Ok(Requeue::await_change());
    }
    let settled = actions.is_empty()
        && members.iter().all(|m| m.ready && m.current && m.draining_for.is_none() && !m.terminating)
        && members.len() == target as usize;
    Ok(requeue(!settled || status.busy_replicas > 0))
}

#[allow(clippy::too_many_arguments)]
async fn act(
    b: &Builder,
    ctx: &Context,
    recorder: &Recorder,
    pods: &Api<Pod>,
    claims: &Api<PersistentVolumeClaim>,
    action: &Action,
    hash: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let (reason, note, counter) = match action {
        Action::Create(ordinal) => {
            apply(claims, "PersistentVolumeClaim", &desired::claim(b, *ordinal)).await?;
            apply(pods, "Pod", &desired::pod(b, *ordinal, &ctx.defaults, hash)).await?;
            (
                "Created",
                format!("created builder pod {} (ordinal {ordinal})", desired::pod_name(b, *ordinal)),
                "create",
            )
        }
        Action::Drain(name) => {
            let patch = json!({"metadata": {
                "labels": {desired::LABEL_DRAINING: "true"},
                "annotations": {desired::ANNOTATION_DRAIN_STARTED: now.to_string()},
            }});
            pods.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(|source| Error::Pod { action: "draining", name: name.clone(), source })?;
            (
                "Draining",
                format!("builder pod {name} takes no new builds and goes when its builds end"),
                "drain",
            )
        }
        Action::Undrain(name) => {
            let patch = json!({"metadata": {
                "labels": {desired::LABEL_DRAINING: null},
                "annotations": {desired::ANNOTATION_DRAIN_STARTED: null},
            }});
            pods.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(|source| Error::Pod { action: "undraining", name: name.clone(), source })?;
            ("Undrained", format!("builder pod {name} is wanted again and takes builds"), "undrain")
        }
        Action::Delete(name) => {
            match pods.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(Error::Pod { action: "deleting", name: name.clone(), source }),
            }
            ("Deleted", format!("removed builder pod {name}"), "delete")
        }
    };
    info!(%note, "pool");
    ctx.metrics.action(counter);
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "Scale".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &b.object_ref(&())).await {
        warn!(error = %e, "publishing an event");
    }
    Ok(())
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
