//! A `Builder`'s status from what the controller observed: counts, phase, and
//! the `Ready`, `Degraded` and `Scaling` conditions, with messages a user can
//! act on. Pure; `reconcile` writes the result.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kiln_crds::builder::{BuilderPhase, BuilderStatus};
use kiln_crds::condition::{self, reason, status as cs};
use kube::ResourceExt;

use super::plan::Member;

/// How long a cache claim may stay Pending before the pool is Degraded.
pub const UNBOUND_AFTER: Duration = Duration::from_secs(60);

/// Everything the status is computed from.
#[derive(Debug)]
pub struct Observed<'a> {
    pub pods: &'a [Pod],
    pub claims: &'a [PersistentVolumeClaim],
    pub members: &'a [Member],
    pub target: u32,
    pub deleting: bool,
    pub generation: Option<i64>,
    pub selector: String,
    /// The spec cannot be reconciled; the message lists what to fix.
    pub invalid: Option<String>,
    pub now: Timestamp,
}

/// Why the pool needs a person, if it does: `(reason, message)`.
pub fn degraded(o: &Observed<'_>) -> Option<(&'static str, String)> {
    if let Some(message) = &o.invalid {
        return Some((reason::INVALID_SPEC, message.clone()));
    }
    for pod in o.pods {
        let name = pod.name_any();
        let status = pod.status.as_ref();
        for c in status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default() {
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
            let why = waiting.and_then(|w| w.reason.as_deref()).unwrap_or_default();
            let detail = waiting.and_then(|w| w.message.as_deref()).unwrap_or_default();
            if matches!(why, "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName") {
                return Some((
                    reason::IMAGE_PULL_FAILED,
                    format!(
                        "pod {name}: image {} cannot be pulled ({why}{}); fix spec.template.image or the \
                         registry credentials of the pod's service account",
                        c.image,
                        if detail.is_empty() { String::new() } else { format!(": {detail}") }
                    ),
                ));
            }
            if why == "CrashLoopBackOff" {
                let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                let exit = last.map(|t| format!(", last exit code {}", t.exit_code)).unwrap_or_default();
                return Some((
                    reason::CRASH_LOOP,
                    format!(
                        "pod {name}: kilnd keeps exiting ({} restarts{exit}); see `kubectl logs {name} \
                         --previous`",
                        c.restart_count
                    ),
                ));
            }
        }
        let unschedulable =
            status.and_then(|s| s.conditions.as_deref()).unwrap_or_default().iter().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            });
        if let Some(c) = unschedulable {
            return Some((
                reason::UNSCHEDULABLE,
                format!(
                    "pod {name} fits no node: {}; check spec.platforms, spec.template.nodeSelector, \
                     tolerations and resources",
                    c.message.as_deref().unwrap_or("the scheduler gave no reason")
                ),
            ));
        }
    }
    for claim in o.claims {
        let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        let age = claim
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Duration::ZERO, |t| o.now.duration_since(t.0).unsigned_abs());
        if pending && age >= UNBOUND_AFTER {
            let class =
                claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("(default)");
            return Some((
                reason::VOLUME_UNBOUND,
                format!(
                    "cache volume claim {} has been Pending for {}s: no volume of storage class {class} \
                     was provisioned; check spec.cache.storageClassName and the class's provisioner",
                    claim.name_any(),
                    age.as_secs()
                ),
            ));
        }
    }
    None
}

fn cond(type_: &str, status: &str, reason: &str, message: String, o: &Observed<'_>) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(o.now),
        observed_generation: o.generation,
    }
}

/// The new status; `previous` keeps the conditions' transition times.
pub fn compute(previous: Option<&BuilderStatus>, o: &Observed<'_>) -> BuilderStatus {
    let live: Vec<&Member> = o.members.iter().filter(|m| !m.terminating).collect();
    let replicas = live.len() as i32;
    let ready = live.iter().filter(|m| m.ready).count() as i32;
    let ready_wanted = live
        .iter()
        .filter(|m| m.ready && m.current && m.draining_for.is_none() && m.ordinal < o.target)
        .count() as u32;
    let busy = live.iter().filter(|m| m.load.is_some_and(|l| l.builds > 0)).count() as i32;
    let missing = (0..o.target).filter(|&i| !live.iter().any(|m| m.ordinal == i)).count();
    let surplus = o.members.iter().any(|m| m.ordinal >= o.target);
    let outdated = live.iter().any(|m| !m.current);

    let mut conditions = previous.map(|s| s.conditions.clone()).unwrap_or_default();
    let degraded = degraded(o);
    let (status, why, message) = match &degraded {
        Some((why, message)) => (cs::TRUE, *why, message.clone()),
        None => (cs::FALSE, reason::AS_EXPECTED, "nothing needs attention".to_owned()),
    };
    condition::set(&mut conditions, cond(condition::DEGRADED, status, why, message, o));

    let (status, why, message) = if o.target == 0 && !o.deleting {
        (cs::TRUE, reason::SCALED_TO_ZERO, "no builder runs; the pool scales up when a build arrives".into())
    } else if ready_wanted >= o.target && !o.deleting {
        (cs::TRUE, reason::ALL_REPLICAS_READY, format!("{ready_wanted} of {} builders ready", o.target))
    } else {
        (cs::FALSE, reason::REPLICAS_NOT_READY, format!("{ready_wanted} of {} builders ready", o.target))
    };
    condition::set(&mut conditions, cond(condition::READY, status, why, message, o));

    let (status, why, message) = if missing > 0 {
        (cs::TRUE, reason::SCALING_UP, format!("creating {missing} builder(s) towards {}", o.target))
    } else if surplus {
        (cs::TRUE, reason::SCALING_DOWN, format!("draining builders above {}", o.target))
    } else if outdated {
        (cs::TRUE, reason::ROLLING_UPDATE, "replacing builders one at a time with the new template".into())
    } else {
        (cs::FALSE, reason::STABLE, format!("{} builder(s), all current", o.target))
    };
    let scaling = status == cs::TRUE;
    condition::set(&mut conditions, cond(condition::SCALING, status, why, message, o));

    let phase = if o.deleting {
        BuilderPhase::Terminating
    } else if degraded.is_some() {
        BuilderPhase::Degraded
    } else if o.target == 0 && replicas == 0 {
        BuilderPhase::Idle
    } else if ready == 0 {
        BuilderPhase::Pending
    } else if scaling || ready_wanted < o.target {
        BuilderPhase::Scaling
    } else {
        BuilderPhase::Ready
    };
    BuilderStatus {
        replicas,
        ready_replicas: ready,
        busy_replicas: busy,
        phase: Some(phase),
        conditions,
        endpoint: previous.and_then(|s| s.endpoint.clone()),
        observed_generation: o.generation,
        selector: Some(o.selector.clone()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::plan::Load;
    use super::*;

    fn member(ordinal: u32, ready: bool, builds: u32) -> Member {
        Member {
            ordinal,
            name: format!("x-{ordinal}"),
            current: true,
            ready,
            terminating: false,
            draining_for: None,
            load: ready.then_some(Load { builds, sessions: builds, idle_seconds: None }),
        }
    }

    fn observed<'a>(
        pods: &'a [Pod],
        claims: &'a [PersistentVolumeClaim],
        members: &'a [Member],
    ) -> Observed<'a> {
        Observed {
            pods,
            claims,
            members,
            target: 2,
            deleting: false,
            generation: Some(4),
            selector: "kiln.dev/builder=x".into(),
            invalid: None,
            now: Timestamp::from_second(1_000_000).unwrap(),
        }
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "x-0"}, "status": status})).unwrap()
    }

    fn reason_of(s: &BuilderStatus, type_: &str) -> String {
        condition::find(&s.conditions, type_).unwrap().reason.clone()
    }

    #[test]
    fn a_full_ready_pool_is_ready_and_counts_its_busy_pods() {
        let members = [member(0, true, 1), member(1, true, 0)];
        let s = compute(None, &observed(&[], &[], &members));
        assert_eq!((s.replicas, s.ready_replicas, s.busy_replicas), (2, 2, 1));
        assert_eq!(s.phase, Some(BuilderPhase::Ready));
        assert_eq!(reason_of(&s, condition::READY), reason::ALL_REPLICAS_READY);
        assert_eq!(reason_of(&s, condition::SCALING), reason::STABLE);
        assert_eq!(reason_of(&s, condition::DEGRADED), reason::AS_EXPECTED);
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.selector.as_deref(), Some("kiln.dev/builder=x"));
    }

    #[test]
    fn a_growing_pool_is_scaling_up_and_not_ready() {
        let members = [member(0, true, 0)];
        let s = compute(None, &observed(&[], &[], &members));
        assert_eq!(s.phase, Some(BuilderPhase::Scaling));
        let ready = condition::find(&s.conditions, condition::READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.message.as_str()), ("False", "1 of 2 builders ready"));
        assert_eq!(reason_of(&s, condition::SCALING), reason::SCALING_UP);
    }

    #[test]
    fn an_image_that_cannot_be_pulled_degrades_the_pool_and_names_the_image() {
        let pods = [pod(json!({"containerStatuses": [{"name": "kilnd", "image": "kiln/kilnd:nope",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}))];
        let s = compute(None, &observed(&pods, &[], &[]));
        let d = condition::find(&s.conditions, condition::DEGRADED).unwrap();
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", reason::IMAGE_PULL_FAILED));
        assert!(d.message.contains("kiln/kilnd:nope") && d.message.contains("not found"), "{}", d.message);
        assert_eq!(s.phase, Some(BuilderPhase::Degraded));
    }

    #[test]
    fn a_crash_loop_says_how_often_and_where_to_look() {
        let pods = [pod(json!({"containerStatuses": [{"name": "kilnd", "image": "i", "imageID": "",
            "ready": false, "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 2}}}]}))];
        let (why, message) = degraded(&observed(&pods, &[], &[])).unwrap();
        assert_eq!(why, reason::CRASH_LOOP);
        assert!(message.contains("5 restarts, last exit code 2") && message.contains("kubectl logs x-0"));
    }

    #[test]
    fn a_claim_pending_for_a_minute_is_reported_with_its_class() {
        let claim = |age: i64| -> PersistentVolumeClaim {
            serde_json::from_value(json!({
                "metadata": {"name": "cache-x-0",
                    "creationTimestamp": Timestamp::from_second(1_000_000 - age).unwrap().to_string()},
                "spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}}))
            .unwrap()
        };
        assert_eq!(degraded(&observed(&[], &[claim(10)], &[])), None, "binding takes a moment");
        let (why, message) = degraded(&observed(&[], &[claim(120)], &[])).unwrap();
        assert_eq!(why, reason::VOLUME_UNBOUND);
        assert!(message.contains("cache-x-0") && message.contains("120s") && message.contains("fast"));
    }

    #[test]
    fn an_invalid_spec_wins_over_everything_else() {
        let mut o = observed(&[], &[], &[]);
        o.invalid = Some("spec.config: is not valid TOML".into());
        let s = compute(None, &o);
        let d = condition::find(&s.conditions, condition::DEGRADED).unwrap();
        assert_eq!(
            (d.reason.as_str(), d.message.as_str()),
            (reason::INVALID_SPEC, "spec.config: is not valid TOML")
        );
    }

    #[test]
    fn scaled_to_zero_is_ready_and_idle() {
        let mut o = observed(&[], &[], &[]);
        o.target = 0;
        let s = compute(None, &o);
        assert_eq!(s.phase, Some(BuilderPhase::Idle));
        assert_eq!(reason_of(&s, condition::READY), reason::SCALED_TO_ZERO);
    }

    #[test]
    fn transition_times_survive_an_unchanged_status() {
        let members = [member(0, true, 0), member(1, true, 0)];
        let first = compute(None, &observed(&[], &[], &members));
        let mut later = observed(&[], &[], &members);
        later.now = Timestamp::from_second(2_000_000).unwrap();
        let second = compute(Some(&first), &later);
        assert_eq!(first.conditions, second.conditions, "nothing changed, nothing moves");
    }
}
