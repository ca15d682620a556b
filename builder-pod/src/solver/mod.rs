//! The solver's job bookkeeping: every build (a `Solve` with its `Ref`) is a
//! job that `Status` callers can find and follow.

pub mod file;
pub mod llb;
pub mod ops;
pub mod progress;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use self::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("a build with ref {0:?} is already running")]
    Duplicate(String),
    #[error("no build with ref {0:?} (waited {1:?})")]
    NotFound(String, Duration),
}

impl From<JobError> for tonic::Status {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Duplicate(_) => tonic::Status::already_exists(e.to_string()),
            JobError::NotFound(..) => tonic::Status::not_found(e.to_string()),
        }
    }
}

/// One build as `Status` sees it.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub progress: Progress,
}

/// Running builds by ref.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    changed: watch::Sender<u64>,
}

/// Removes its job when dropped, however the build ends (success, error, or
/// the client going away, which drops the Solve future).
#[derive(Debug)]
pub struct JobGuard {
    jobs: Arc<Jobs>,
    pub job: Arc<Job>,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.job.progress.close();
        self.jobs.lock().remove(&self.job.id);
    }
}

impl Jobs {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn create(self: &Arc<Self>, id: &str) -> Result<JobGuard, JobError> {
        let job = Arc::new(Job { id: id.to_owned(), progress: Progress::new() });
        {
            let mut jobs = self.lock();
            if jobs.contains_key(id) {
                return Err(JobError::Duplicate(id.to_owned()));
            }
            jobs.insert(id.to_owned(), Arc::clone(&job));
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(JobGuard { jobs: Arc::clone(self), job })
    }

    /// Whether no build is running.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The job `id`, waiting up to `timeout`: `Status` may arrive before the
    /// `Solve` that creates the job (buildkit-protocol.md §3.4).
    pub async fn get(&self, id: &str, timeout: Duration) -> Result<Arc<Job>, JobError> {
        let start = Instant::now();
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(job) = self.lock().get(id) {
                return Ok(Arc::clone(job));
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() || tokio::time::timeout(left, changed.changed()).await.is_err() {
                return Err(JobError::NotFound(id.to_owned(), start.elapsed()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = jobs.get("r1", Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::NotFound);
        jobs.create("r1").unwrap();
    }
}
