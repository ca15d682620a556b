//! What to do next with a pool's pods, decided from what was observed: the
//! pure heart of reconciling a `Builder`, kept free of I/O so every rule is a
//! unit test.
//!
//! The pool is ordinals `0..target`. Pods are never killed busy: a pod that
//! must go (surplus after scale-down, outdated after a template change, or
//! the whole pool on deletion) is first *drained* (labelled so the gateway
//! sends it no new builds) and deleted only once it has no build and no
//! session, or when it has drained for longer than the grace period (then
//! kilnd's own SIGTERM drain still lets its builds finish within the pod's
//! termination grace). A rolling update replaces one pod at a time and only
//! while every other pod of the pool is Ready.

use std::time::Duration;

/// What kilnd's `/load` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Load {
    pub builds: u32,
    pub sessions: u32,
    /// Seconds since the last build ended; absent while builds run.
    pub idle_seconds: Option<u64>,
}

impl Load {
    fn is_idle(&self) -> bool {
        self.builds == 0 && self.sessions == 0
    }
}

/// One existing pod of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub ordinal: u32,
    pub name: String,
    /// Made from the current template.
    pub current: bool,
    /// Its kilnd answers the readiness probe.
    pub ready: bool,
    /// Being deleted already.
    pub terminating: bool,
    /// How long it has been draining, if it is.
    pub draining_for: Option<Duration>,
    /// `None` when `/load` could not be read (not running yet, or unreachable).
    pub load: Option<Load>,
}

impl Member {
    /// Whether deleting it now ends no build: it is idle, or it never got as
    /// far as serving (no load to lose).
    fn can_go(&self) -> bool {
        match self.load {
            Some(load) => load.is_idle(),
            None => !self.ready,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    /// How many pods the pool should run (ordinals `0..target`).
    pub target: u32,
    /// How long a surplus pod must have been idle before it goes.
    pub idle_timeout: Duration,
    /// How long a draining pod's builds may go on before it is deleted anyway.
    pub drain_grace: Duration,
    /// The `Builder` is being deleted: every pod drains and goes.
    pub deleting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the pod (and its cache claim) of this ordinal.
    Create(u32),
    /// Stop sending the pod new builds.
    Drain(String),
    /// The pod is wanted again (scaled back up while it drained).
    Undrain(String),
    /// Delete the pod.
    Delete(String),
}

/// Why a pod is leaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    Surplus,
    Outdated,
}

/// The actions that move the pool towards `inputs`, given its pods.
pub fn plan(members: &[Member], inputs: &Inputs) -> Vec<Action> {
    let mut actions = Vec::new();
    let target = if inputs.deleting { 0 } else { inputs.target };
    let live: Vec<&Member> = members.iter().filter(|m| !m.terminating).collect();

    // Missing ordinals: create them, unless the old pod of that name is
    // still terminating (the new one must wait for the name and the volume).
    for ordinal in 0..target {
        if !members.iter().any(|m| m.ordinal == ordinal) {
            actions.push(Action::Create(ordinal));
        }
    }

    // Surplus pods drain, then go once idle for the idle timeout.
    for m in live.iter().filter(|m| m.ordinal >= target) {
        leave(m, Leaving::Surplus, inputs, &mut actions);
    }

    // Wanted pods that drain for scale-down come back; outdated ones keep
    // draining.
    for m in live.iter().filter(|m| m.ordinal < target && m.current && m.draining_for.is_some()) {
        actions.push(Action::Undrain(m.name.clone()));
    }

    // Rolling update, one pod at a time: only when every other wanted pod
    // exists, is Ready and is not on its way out.
    let wanted: Vec<&&Member> = live.iter().filter(|m| m.ordinal < target).collect();
    let outdated: Vec<&&Member> = wanted.iter().copied().filter(|m| !m.current).collect();
    if let Some(next) = pick_outdated(&outdated) {
        let others_ready = (0..target).filter(|&o| o != next.ordinal).all(|o| {
            members.iter().any(|m| m.ordinal == o && !m.terminating && m.ready && m.draining_for.is_none())
        });
        // A pod that is not Ready serves nothing: replacing it cannot make
        // the pool worse, whatever the others do.
        if others_ready || !next.ready {
            leave(next, Leaving::Outdated, inputs, &mut actions);
        }
    }
    actions
}

/// The outdated pod to replace next: one already draining, else an idle
/// one, else the lowest ordinal.
fn pick_outdated<'a>(outdated: &[&'a &'a Member]) -> Option<&'a Member> {
    outdated
        .iter()
        .find(|m| m.draining_for.is_some())
        .or_else(|| outdated.iter().find(|m| m.can_go()))
        .or_else(|| outdated.iter().min_by_key(|m| m.ordinal))
        .map(|m| **m)
}

fn leave(m: &Member, why: Leaving, inputs: &Inputs, actions: &mut Vec<Action>) {
    let Some(draining_for) = m.draining_for else {
        // Never-ready pods of a deleted or shrunk pool have nothing to drain.
        if !m.ready && m.load.is_none() && (inputs.deleting || why == Leaving::Surplus) {
            actions.push(Action::Delete(m.name.clone()));
        } else {
            actions.push(Action::Drain(m.name.clone()));
        }
        return;
    };
    let idle_long_enough = match (why, m.load) {
        // Scale-down waits out the idle timeout; a rollout or a deletion
        // only needs the pod idle.
        (Leaving::Surplus, Some(load)) if !inputs.deleting => {
            load.is_idle() && load.idle_seconds.is_some_and(|s| Duration::from_secs(s) >= inputs.idle_timeout)
        }
        _ => m.can_go(),
    };
    if idle_long_enough || draining_for >= inputs.drain_grace {
        actions.push(Action::Delete(m.name.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Load = Load { builds: 0, sessions: 0, idle_seconds: Some(3600) };
    const FRESH: Load = Load { builds: 0, sessions: 0, idle_seconds: Some(1) };
    const BUSY: Load = Load { builds: 1, sessions: 1, idle_seconds: None };

    fn ready(ordinal: u32, load: Load) -> Member {
        Member {
            ordinal,
            name: format!("x-{ordinal}"),
            current: true,
            ready: true,
            terminating: false,
            draining_for: None,
            load: Some(load),
        }
    }

    fn outdated(m: Member) -> Member {
        Member { current: false, ..m }
    }

    fn draining(m: Member, secs: u64) -> Member {
        Member { draining_for: Some(Duration::from_secs(secs)), ..m }
    }

    fn inputs(target: u32) -> Inputs {
        Inputs {
            target,
            idle_timeout: Duration::from_secs(60),
            drain_grace: Duration::from_secs(600),
            deleting: false,
        }
    }

    fn delete(n: u32) -> Action {
        Action::Delete(format!("x-{n}"))
    }

    fn drain(n: u32) -> Action {
        Action::Drain(format!("x-{n}"))
    }

    #[test]
    fn an_empty_pool_creates_every_ordinal() {
        assert_eq!(plan(&[], &inputs(2)), [Action::Create(0), Action::Create(1)]);
    }

    #[test]
    fn a_settled_pool_does_nothing() {
        assert_eq!(plan(&[ready(0, BUSY), ready(1, IDLE)], &inputs(2)), []);
    }

    #[test]
    fn a_terminating_pod_is_not_recreated_until_it_is_gone() {
        let old = Member { terminating: true, ..ready(0, IDLE) };
        assert_eq!(plan(&[old], &inputs(1)), []);
    }

    #[test]
    fn scale_down_drains_then_deletes_after_the_idle_timeout() {
        let pool = [ready(0, IDLE), ready(1, IDLE), ready(2, FRESH)];
        assert_eq!(plan(&pool, &inputs(1)), [drain(1), drain(2)]);

        let pool = [ready(0, IDLE), draining(ready(1, IDLE), 5), draining(ready(2, FRESH), 5)];
        assert_eq!(plan(&pool, &inputs(1)), [delete(1)], "x-2 finished a build a second ago");
    }

    #[test]
    fn a_busy_surplus_pod_stays_until_idle_or_the_grace_is_over() {
        assert_eq!(plan(&[ready(0, IDLE), draining(ready(1, BUSY), 30)], &inputs(1)), []);
        assert_eq!(plan(&[ready(0, IDLE), draining(ready(1, BUSY), 600)], &inputs(1)), [delete(1)]);
    }

    #[test]
    fn an_unreadable_ready_pod_counts_as_busy() {
        let unknown = Member { load: None, ..ready(1, IDLE) };
        assert_eq!(plan(&[ready(0, IDLE), draining(unknown, 30)], &inputs(1)), []);
    }

    #[test]
    fn a_surplus_pod_that_never_started_goes_at_once() {
        let stuck = Member { ready: false, load: None, ..ready(1, IDLE) };
        assert_eq!(plan(&[ready(0, IDLE), stuck], &inputs(1)), [delete(1)]);
    }

    #[test]
    fn scaling_back_up_keeps_a_draining_pod() {
        let pool = [ready(0, IDLE), draining(ready(1, IDLE), 5)];
        assert_eq!(plan(&pool, &inputs(2)), [Action::Undrain("x-1".into())]);
    }

    #[test]
    fn a_rollout_replaces_an_idle_pod_before_a_busy_one() {
        let pool = [outdated(ready(0, BUSY)), outdated(ready(1, IDLE)), outdated(ready(2, BUSY))];
        assert_eq!(plan(&pool, &inputs(3)), [drain(1)]);
        let pool =
            [outdated(ready(0, BUSY)), draining(outdated(ready(1, IDLE)), 2), outdated(ready(2, BUSY))];
        assert_eq!(plan(&pool, &inputs(3)), [delete(1)]);
    }

    #[test]
    fn a_rollout_waits_for_the_replacement_to_be_ready() {
        let starting = Member { ready: false, load: None, ..ready(1, IDLE) };
        let pool = [outdated(ready(0, IDLE)), starting, outdated(ready(2, IDLE))];
        assert_eq!(plan(&pool, &inputs(3)), []);
        let gone = [outdated(ready(0, IDLE)), outdated(ready(2, IDLE))];
        assert_eq!(plan(&gone, &inputs(3)), [Action::Create(1)], "only the missing pod is made");
    }

    #[test]
    fn a_busy_outdated_pod_drains_and_goes_only_when_its_build_ends() {
        let pool = [ready(0, IDLE), outdated(ready(1, BUSY))];
        assert_eq!(plan(&pool, &inputs(2)), [drain(1)]);
        let pool = [ready(0, IDLE), draining(outdated(ready(1, BUSY)), 120)];
        assert_eq!(plan(&pool, &inputs(2)), [], "its build still runs");
        let pool = [ready(0, IDLE), draining(outdated(ready(1, FRESH)), 130)];
        assert_eq!(plan(&pool, &inputs(2)), [delete(1)], "no idle timeout for a rollout");
    }

    #[test]
    fn a_broken_outdated_pod_is_replaced_even_while_others_are_not_ready() {
        let crashing = Member { ready: false, load: None, ..outdated(ready(0, IDLE)) };
        let other = Member { ready: false, load: None, ..outdated(ready(1, IDLE)) };
        assert_eq!(plan(&[crashing, other], &inputs(2)), [drain(0)]);
    }

    #[test]
    fn deletion_drains_every_pod_and_waits_for_busy_ones() {
        let deleting = Inputs { deleting: true, ..inputs(2) };
        let pool = [ready(0, BUSY), ready(1, FRESH)];
        assert_eq!(plan(&pool, &deleting), [drain(0), drain(1)]);
        let pool = [draining(ready(0, BUSY), 3), draining(ready(1, FRESH), 3)];
        assert_eq!(plan(&pool, &deleting), [delete(1)], "no idle timeout when the Builder goes");
    }
}
