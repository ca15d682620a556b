//! Leader election on a `coordination.k8s.io` Lease, as client-go's
//! leaderelection does it: the holder renews `renewTime` well within
//! `leaseDurationSeconds`; anyone may take a lease whose holder stopped
//! renewing. Every write carries the resourceVersion it read, so two
//! candidates racing for an expired lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading or writing lease {name}: {source}")]
    Lease { name: String, source: kube::Error },
    #[error("lost the lease {name}: not renewed for {held_for:?}")]
    Lost { name: String, held_for: Duration },
}

#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api, name: name.to_owned(), identity: identity.to_owned(), duration }
    }

    fn lease_error(&self, source: kube::Error) -> Error {
        Error::Lease { name: self.name.clone(), source }
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease; `Ok(false)` when someone else holds it.
    pub async fn try_acquire(&self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await.map_err(|e| self.lease_error(e))? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.lease_error(e)),
            };
        };
        let old = lease.spec.clone().unwrap_or_default();
        let holder = old.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.identity.as_str());
        let expires = old.renew_time.as_ref().map(|t| {
            t.0.saturating_add(SignedDuration::from_secs(i64::from(old.lease_duration_seconds.unwrap_or(15))))
        });
        let expired = holder.is_none() || expires.is_none_or(|at| at.is_ok_and(|at| at < now));
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = old.lease_transitions.unwrap_or(0);
        let spec = if mine {
            self.spec(now, old.acquire_time.map_or(now, |t| t.0), transitions)
        } else {
            self.spec(now, now, transitions + 1)
        };
        let updated = Lease { metadata: lease.metadata, spec: Some(spec) };
        match self.api.replace(&self.name, &PostParams::default(), &updated).await {
            Ok(_) => {
                if !mine {
                    info!(lease = %self.name, identity = %self.identity, previous = ?holder, "took the lease");
                }
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.lease_error(e)),
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) -> Result<(), Error> {
        let retry = self.duration / 5;
        loop {
            match self.try_acquire().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the lease for as long as it can; returns when it was lost
    /// (someone else took it, or renewals failed for the whole duration), so
    /// the caller stops acting as leader.
    pub async fn hold(&self) -> Error {
        let renew = self.duration / 3;
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(renew).await;
            match self.try_acquire().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    return Error::Lost { name: self.name.clone(), held_for: last_renewed.elapsed() };
                }
                Err(e) => warn!(error = %e, "renewing the lease"),
            }
            if last_renewed.elapsed() >= self.duration {
                return Error::Lost { name: self.name.clone(), held_for: last_renewed.elapsed() };
            }
        }
    }

    /// Gives the lease up on a clean exit so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
            warn!(error = %e, "releasing the lease");
        }
    }
}
