//! The pod status the stand-in writes back, derived from its containers'
//! statuses the way the kubelet derives it (pkg/kubelet/kubelet_pods.go
//! `getPhase`, pkg/kubelet/status/generate.go).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The pod phase from its containers (no init containers: the stand-in runs none).
pub fn phase(restart_policy: &str, statuses: &[ContainerStatus]) -> &'static str {
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for status in statuses {
        let state = status.state.as_ref();
        if state.and_then(|s| s.running.as_ref()).is_some() {
            running += 1;
        } else if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
            stopped += 1;
            if terminated.exit_code == 0 {
                succeeded += 1;
            }
        } else if status.last_state.as_ref().and_then(|s| s.terminated.as_ref()).is_some() {
            // Waiting to be restarted: it has run before.
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if statuses.is_empty() || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if restart_policy == "Always" {
        // Every container is between restarts.
        "Running"
    } else if stopped == succeeded {
        "Succeeded"
    } else if restart_policy == "Never" {
        "Failed"
    } else {
        "Running"
    }
}

/// PodScheduled, Initialized, ContainersReady and Ready; a condition whose
/// status did not change keeps its lastTransitionTime.
pub fn conditions(pod: &Pod, statuses: &[ContainerStatus], now: &Time) -> Vec<PodCondition> {
    let previous = pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let unready: Vec<&str> = statuses.iter().filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
    let containers_ready = unready.is_empty() && !statuses.is_empty();
    let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_deref()).unwrap_or_default();
    let unmet_gates: Vec<&str> = gates
        .iter()
        .map(|g| g.condition_type.as_str())
        .filter(|t| !previous.iter().any(|c| c.type_ == *t && c.status == "True"))
        .collect();

    let condition = |type_: &str, ok: bool, reason: Option<String>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        PodCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            last_transition_time: Some(since),
            reason,
            message,
            ..PodCondition::default()
        }
    };
    let not_ready =
        (!containers_ready).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let ready = if !containers_ready {
        condition("Ready", false, Some("ContainersNotReady".into()), not_ready.clone())
    } else if !unmet_gates.is_empty() {
        let message = format!(
            "corresponding condition of pod readiness gate \"{}\" is not True",
            unmet_gates.join(", ")
        );
        condition("Ready", false, Some("ReadinessGatesNotReady".into()), Some(message))
    } else {
        condition("Ready", true, None, None)
    };
    vec![
        condition("PodScheduled", true, None, None),
        condition("Initialized", true, None, None),
        condition(
            "ContainersReady",
            containers_ready,
            (!containers_ready).then(|| "ContainersNotReady".to_owned()),
            not_ready,
        ),
        ready,
    ]
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        PodReadinessGate, PodSpec, PodStatus,
    };
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn running(name: &str, ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            ready,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn waiting(name: &str, has_run: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            last_state: has_run.then(|| ContainerState {
                terminated: Some(ContainerStateTerminated { exit_code: 1, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn terminated(name: &str, exit_code: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated { exit_code, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(phase("Always", &[waiting("a", false)]), "Pending");
        assert_eq!(phase("Always", &[running("a", false), waiting("b", false)]), "Pending");
        assert_eq!(phase("Always", &[running("a", true)]), "Running");
        // A crash loop is still Running: the container has run and will again.
        assert_eq!(phase("Always", &[waiting("a", true)]), "Running");
        assert_eq!(phase("Never", &[terminated("a", 0), terminated("b", 0)]), "Succeeded");
        assert_eq!(phase("OnFailure", &[terminated("a", 0)]), "Succeeded");
        assert_eq!(phase("Never", &[terminated("a", 0), terminated("b", 2)]), "Failed");
        assert_eq!(phase("OnFailure", &[terminated("a", 2)]), "Running");
        assert_eq!(phase("Always", &[]), "Pending");
    }

    fn pod(previous: Vec<PodCondition>, gates: &[&str]) -> Pod {
        Pod {
            spec: Some(PodSpec {
                readiness_gates: Some(
                    gates.iter().map(|g| PodReadinessGate { condition_type: (*g).into() }).collect(),
                ),
                ..Default::default()
            }),
            status: Some(PodStatus { conditions: Some(previous), ..Default::default() }),
            ..Default::default()
        }
    }

    fn find<'a>(conditions: &'a [PodCondition], type_: &str) -> &'a PodCondition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn readiness_needs_every_container_ready() {
        let now = Time(Timestamp::from_second(1_000).unwrap());
        let c = conditions(&pod(vec![], &[]), &[running("a", true), running("b", false)], &now);
        let ready = find(&c, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(ready.message.as_deref(), Some("containers with unready status: [b]"));
        assert_eq!(find(&c, "ContainersReady").status, "False");
        assert_eq!(find(&c, "PodScheduled").status, "True");
        assert_eq!(find(&c, "Initialized").status, "True");

        let c = conditions(&pod(vec![], &[]), &[running("a", true), running("b", true)], &now);
        assert_eq!(find(&c, "Ready").status, "True");
        assert_eq!(find(&c, "ContainersReady").status, "True");
    }

    #[test]
    fn transition_times_change_only_with_the_status() {
        let then = Time(Timestamp::from_second(1_000).unwrap());
        let now = Time(Timestamp::from_second(2_000).unwrap());
        let previous = conditions(&pod(vec![], &[]), &[running("a", false)], &then);
        let same = conditions(&pod(previous.clone(), &[]), &[running("a", false)], &now);
        assert_eq!(find(&same, "Ready").last_transition_time, Some(then.clone()));
        let flipped = conditions(&pod(previous, &[]), &[running("a", true)], &now);
        assert_eq!(find(&flipped, "Ready").last_transition_time, Some(now));
        assert_eq!(find(&flipped, "PodScheduled").last_transition_time, Some(then));
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let now = Time(Timestamp::from_second(1_000).unwrap());
        let c = conditions(&pod(vec![], &["kiln.dev/drained"]), &[running("a", true)], &now);
        assert_eq!(find(&c, "ContainersReady").status, "True");
        let ready = find(&c, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));

        let gate =
            PodCondition { type_: "kiln.dev/drained".into(), status: "True".into(), ..Default::default() };
        let c = conditions(&pod(vec![gate], &["kiln.dev/drained"]), &[running("a", true)], &now);
        assert_eq!(find(&c, "Ready").status, "True");
    }
}
