//! Condition types and reasons of Kiln's resources, and the one rule for
//! updating a condition list.
//!
//! Reasons are CamelCase words as Kubernetes asks; each says which condition
//! and status it goes with.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Builder: the pool can take builds (its desired pods are Ready, or it is
/// scaled to zero and will scale up on demand).
pub const READY: &str = "Ready";
/// Builder: something needs a person (an image that cannot be pulled, a cache
/// volume that stays unbound, a crash loop, an invalid spec).
pub const DEGRADED: &str = "Degraded";
/// Builder: the pool is changing size or rolling its pods to a new template.
pub const SCALING: &str = "Scaling";
/// Build: `True` when the image was built (and pushed), `False` when it
/// failed, `Unknown` while it is queued or running.
pub const SUCCEEDED: &str = "Succeeded";

/// The `status` strings of a condition.
pub mod status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}

/// Why a condition has its status.
pub mod reason {
    /// Ready=True: every desired builder pod is Ready.
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    /// Ready=True: no pod runs; the pool scales up when a build arrives.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// Ready=False: builder pods are starting or failing their readiness probe.
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    /// Ready=False, Degraded=True (Builder), Succeeded=False (Build): the spec
    /// is refused; the message lists the fields to fix.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Degraded=True: a builder pod's image cannot be pulled.
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    /// Degraded=True: a cache PersistentVolumeClaim stays unbound.
    pub const VOLUME_UNBOUND: &str = "VolumeUnbound";
    /// Degraded=True: a builder pod keeps crashing.
    pub const CRASH_LOOP: &str = "CrashLoop";
    /// Degraded=True: a builder pod cannot be scheduled on any node.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// Degraded=False: nothing needs attention.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Scaling=True: pods are being added.
    pub const SCALING_UP: &str = "ScalingUp";
    /// Scaling=True: idle pods are being drained and removed.
    pub const SCALING_DOWN: &str = "ScalingDown";
    /// Scaling=True: pods are replaced one at a time after a template change.
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    /// Scaling=False: the pool has the size and template it should have.
    pub const STABLE: &str = "Stable";
    /// Succeeded=Unknown: the build waits for a builder.
    pub const QUEUED: &str = "Queued";
    /// Succeeded=Unknown: a builder is running the build.
    pub const RUNNING: &str = "Running";
    /// Succeeded=True: the image was built and every output written.
    pub const BUILT: &str = "Built";
    /// Succeeded=False: a step of the build failed; the message has its error.
    pub const BUILD_FAILED: &str = "BuildFailed";
    /// Succeeded=False: the build ran longer than `spec.timeout`.
    pub const TIMED_OUT: &str = "TimedOut";
    /// Succeeded=False: `spec.builderRef` names no Builder in the namespace.
    pub const BUILDER_NOT_FOUND: &str = "BuilderNotFound";
}

/// The condition of `type_` in `conditions`, if there is one.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Puts `new` into `conditions`, replacing the condition of the same type.
/// When the status did not change, the old `lastTransitionTime` stays: it
/// says when the status last changed, not when the controller last looked.
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn cond(type_: &str, status: &str, reason: &str, at: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} at {at}"),
            last_transition_time: Time(Timestamp::from_second(at).unwrap()),
            observed_generation: Some(at),
        }
    }

    #[test]
    fn same_status_keeps_the_transition_time_and_takes_the_rest() {
        let mut list = vec![cond(READY, status::FALSE, reason::REPLICAS_NOT_READY, 100)];
        set(&mut list, cond(READY, status::FALSE, reason::IMAGE_PULL_FAILED, 200));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].reason, reason::IMAGE_PULL_FAILED);
        assert_eq!(list[0].message, "ImagePullFailed at 200");
        assert_eq!(list[0].observed_generation, Some(200));
        assert_eq!(list[0].last_transition_time.0.as_second(), 100);
    }

    #[test]
    fn a_new_status_or_type_records_its_own_time() {
        let mut list = vec![cond(READY, status::FALSE, reason::REPLICAS_NOT_READY, 100)];
        set(&mut list, cond(READY, status::TRUE, reason::ALL_REPLICAS_READY, 300));
        set(&mut list, cond(SCALING, status::FALSE, reason::STABLE, 400));
        assert_eq!(find(&list, READY).unwrap().last_transition_time.0.as_second(), 300);
        assert_eq!(find(&list, SCALING).unwrap().last_transition_time.0.as_second(), 400);
        assert!(find(&list, DEGRADED).is_none());
    }
}
