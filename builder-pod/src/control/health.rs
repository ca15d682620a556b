//! `grpc.health.v1.Health`: SERVING while the daemon accepts work.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::Stream;
use kiln_proto::buildkit::health::health_check_response::ServingStatus;
use kiln_proto::buildkit::health::health_server::Health;
use kiln_proto::buildkit::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use tonic::{Request, Response, Status};

/// The services a client may ask about; "" is the server as a whole.
const SERVICES: &[&str] = &["", "moby.buildkit.v1.Control"];

#[derive(Debug, Clone)]
pub(crate) struct HealthService {
    serving: Arc<AtomicBool>,
}

impl HealthService {
    /// `serving` turns false when the daemon starts to drain.
    pub(crate) fn new(serving: Arc<AtomicBool>) -> Self {
        Self { serving }
    }

    fn status(&self) -> HealthCheckResponse {
        let status = if self.serving.load(Ordering::Relaxed) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        HealthCheckResponse { status: status as i32 }
    }

    fn check_known(&self, service: &str) -> Result<HealthCheckResponse, Status> {
        if SERVICES.contains(&service) {
            Ok(self.status())
        } else {
            Err(Status::not_found(format!("unknown service {service:?}")))
        }
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.check_known(&request.get_ref().service).map(Response::new)
    }

    async fn list(
        &self,
        _request: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let statuses: HashMap<_, _> = SERVICES.iter().map(|s| ((*s).to_owned(), self.status())).collect();
        Ok(Response::new(HealthListResponse { statuses }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    /// Sends the current status and keeps the stream open, as the protocol asks.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let first = self.check_known(&request.get_ref().service)?;
        let stream =
            futures::StreamExt::chain(futures::stream::iter([Ok(first)]), futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serving_until_drained_and_unknown_services_are_named() {
        let flag = Arc::new(AtomicBool::new(true));
        let h = HealthService::new(flag.clone());
        let req = |s: &str| Request::new(HealthCheckRequest { service: s.into() });
        assert_eq!(h.check(req("")).await.unwrap().get_ref().status, ServingStatus::Serving as i32);
        flag.store(false, Ordering::Relaxed);
        assert_eq!(h.check(req("")).await.unwrap().get_ref().status, ServingStatus::NotServing as i32);
        let err = h.check(req("nope")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains("nope"));
    }
}
