//! The solver's job bookkeeping: every build (a `Solve` with its `Ref`) is a
//! job that `Status` callers can find and follow.

pub(crate) mod entitlements;
pub(crate) mod file;
pub(crate) mod llb;
pub(crate) mod ops;
pub(crate) mod scheduler;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::arrivals::Arrivals;
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("a build with ref {0:?} is already running")]
    Duplicate(String),
    #[error("no build with ref {0:?} (waited {1:?})")]
    NotFound(String, Duration),
}

/// One build as `Status` sees it.
#[derive(Debug)]
pub(crate) struct Job {
    pub id: String,
    pub progress: Progress,
}

/// How many ended builds `Status` can still find.
const KEEP_FINISHED: usize = 16;

/// Running builds by ref, and the last few that ended: a client's `Status`
/// may arrive after a quick `Solve` (buildx's capability probe) is over, and
/// must then end at once, not wait for a build that never comes (the client
/// would stall for its 5 s status inactivity timeout).
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    finished: Mutex<VecDeque<Arc<Job>>>,
    arrivals: Arrivals,
    /// When the last build ended (or the daemon started): how long the
    /// builder has been idle, which the operator's scale-down waits on.
    last_end: Mutex<Option<std::time::Instant>>,
}

/// Removes its job when dropped, however the build ends (success, error, or
/// the client going away, which drops the Solve future).
#[derive(Debug)]
pub(crate) struct JobGuard {
    jobs: Arc<Jobs>,
    pub job: Arc<Job>,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.job.progress.close();
        let mut finished = self.jobs.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if finished.len() == KEEP_FINISHED {
            finished.pop_front();
        }
        finished.push_back(Arc::clone(&self.job));
        drop(finished);
        self.jobs.lock().remove(&self.job.id);
        *self.jobs.last_end.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(std::time::Instant::now());
    }
}

impl Jobs {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn create(self: &Arc<Self>, id: &str) -> Result<JobGuard, JobError> {
        let job = Arc::new(Job { id: id.to_owned(), progress: Progress::new() });
        {
            let mut jobs = self.lock();
            if jobs.contains_key(id) {
                return Err(JobError::Duplicate(id.to_owned()));
            }
            jobs.insert(id.to_owned(), Arc::clone(&job));
        }
        self.arrivals.announce();
        Ok(JobGuard { jobs: Arc::clone(self), job })
    }

    /// Whether no build is running.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many builds are running.
    pub(crate) fn running(&self) -> usize {
        self.lock().len()
    }

    /// How long no build has run, measured from the end of the last one or,
    /// before any, from `since`; `None` while builds run.
    pub(crate) fn idle_for(&self, since: std::time::Instant) -> Option<Duration> {
        if !self.is_empty() {
            return None;
        }
        let last = *self.last_end.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(last.unwrap_or(since).elapsed())
    }

    fn find(&self, id: &str) -> Option<Arc<Job>> {
        if let Some(job) = self.lock().get(id) {
            return Some(Arc::clone(job));
        }
        let finished = self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        finished.iter().rev().find(|j| j.id == id).cloned()
    }

    /// The job `id`, running or recently ended, waiting up to `timeout`:
    /// `Status` may arrive before the `Solve` that creates the job
    /// (docs/protocol.md §3.4).
    pub(crate) async fn get(&self, id: &str, timeout: Duration) -> Result<Arc<Job>, JobError> {
        self.arrivals
            .wait_for(timeout, || self.find(id))
            .await
            .map_err(|waited| JobError::NotFound(id.to_owned(), waited))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_counts_from_the_last_build_and_stops_while_one_runs() {
        let jobs = Jobs::new();
        let start = std::time::Instant::now() - Duration::from_secs(60);
        assert!(jobs.idle_for(start).unwrap() >= Duration::from_secs(60), "idle since start");
        let guard = jobs.create("r1").unwrap();
        assert_eq!(jobs.running(), 1);
        assert_eq!(jobs.idle_for(start), None, "busy");
        drop(guard);
        assert_eq!(jobs.running(), 0);
        assert!(jobs.idle_for(start).unwrap() < Duration::from_secs(5), "idle since the build ended");
    }

    #[tokio::test]
    async fn a_job_is_found_while_it_runs_and_refs_are_unique() {
        let jobs = Jobs::new();
        let waiter = {
            let jobs = Arc::clone(&jobs);
            tokio::spawn(async move { jobs.get("r1", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let guard = jobs.create("r1").unwrap();
        assert_eq!(waiter.await.unwrap().unwrap().id, "r1");
        assert!(matches!(jobs.create("r1"), Err(JobError::Duplicate(_))));
        drop(guard);
        assert!(jobs.is_empty());
        jobs.create("r1").unwrap();
        let err = jobs.get("r2", Duration::from_millis(20)).await.unwrap_err();
        assert!(matches!(err, JobError::NotFound(..)), "{err}");
    }

    #[tokio::test]
    async fn a_status_after_the_build_ended_replays_it_and_ends() {
        use futures::StreamExt as _;
        let jobs = Jobs::new();
        drop(jobs.create("quick").unwrap());
        let start = std::time::Instant::now();
        let job = jobs.get("quick", Duration::from_secs(5)).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(1), "waited {:?}", start.elapsed());
        let updates =
            tokio::time::timeout(Duration::from_secs(1), job.progress.follow().collect::<Vec<_>>()).await;
        assert!(updates.is_ok(), "the stream of an ended build ends");
        // Only the last few ended builds are kept.
        for i in 0..KEEP_FINISHED {
            drop(jobs.create(&format!("later-{i}")).unwrap());
        }
        assert!(jobs.get("quick", Duration::from_millis(20)).await.is_err());
        assert_eq!(jobs.get("later-0", Duration::ZERO).await.unwrap().id, "later-0");
    }
}
