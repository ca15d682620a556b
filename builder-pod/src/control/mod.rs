//! The gRPC services kilnd serves: BuildKit's `Control` and gRPC health.

mod health;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kiln_proto::buildkit::moby::buildkit::v1 as api;
use kiln_proto::buildkit::moby::buildkit::v1::control_server::Control;
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

pub use health::HealthService;

use crate::metrics::Metrics;
use crate::worker::{self, Worker};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// BuildKit's `moby.buildkit.v1.Control` service.
#[derive(Debug, Clone)]
pub struct ControlService {
    worker: Arc<Worker>,
    metrics: Arc<Metrics>,
}

impl ControlService {
    pub fn new(worker: Arc<Worker>, metrics: Arc<Metrics>) -> Self {
        Self { worker, metrics }
    }
}

/// Calls kilnd does not serve yet. buildx treats `Unimplemented` from the
/// history calls as "no history API" and goes on (buildkit-protocol.md §2.2).
fn not_built(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented by kilnd yet"))
}

#[tonic::async_trait]
impl Control for ControlService {
    #[instrument(skip_all)]
    async fn disk_usage(
        &self,
        _request: Request<api::DiskUsageRequest>,
    ) -> Result<Response<api::DiskUsageResponse>, Status> {
        self.metrics.rpc("Control", "DiskUsage");
        // kilnd keeps no build cache yet, so there is nothing to report.
        Ok(Response::new(api::DiskUsageResponse { record: Vec::new() }))
    }

    type PruneStream = Stream_<api::UsageRecord>;

    #[instrument(skip_all)]
    async fn prune(
        &self,
        _request: Request<api::PruneRequest>,
    ) -> Result<Response<Self::PruneStream>, Status> {
        self.metrics.rpc("Control", "Prune");
        // Nothing is cached yet, so nothing is pruned: the stream ends at once.
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }

    #[instrument(skip_all)]
    async fn solve(
        &self,
        _request: Request<api::SolveRequest>,
    ) -> Result<Response<api::SolveResponse>, Status> {
        self.metrics.rpc("Control", "Solve");
        Err(not_built("Solve (running builds)"))
    }

    type StatusStream = Stream_<api::StatusResponse>;

    #[instrument(skip_all)]
    async fn status(
        &self,
        _request: Request<api::StatusRequest>,
    ) -> Result<Response<Self::StatusStream>, Status> {
        self.metrics.rpc("Control", "Status");
        Err(not_built("Status"))
    }

    type SessionStream = Stream_<api::BytesMessage>;

    #[instrument(skip_all)]
    async fn session(
        &self,
        _request: Request<Streaming<api::BytesMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.metrics.rpc("Control", "Session");
        Err(not_built("Session"))
    }

    #[instrument(skip_all)]
    async fn list_workers(
        &self,
        _request: Request<api::ListWorkersRequest>,
    ) -> Result<Response<api::ListWorkersResponse>, Status> {
        self.metrics.rpc("Control", "ListWorkers");
        Ok(Response::new(api::ListWorkersResponse { record: vec![self.worker.record()] }))
    }

    #[instrument(skip_all)]
    async fn info(&self, _request: Request<api::InfoRequest>) -> Result<Response<api::InfoResponse>, Status> {
        self.metrics.rpc("Control", "Info");
        Ok(Response::new(api::InfoResponse { buildkit_version: Some(worker::version()) }))
    }

    type ListenBuildHistoryStream = Stream_<api::BuildHistoryEvent>;

    #[instrument(skip_all)]
    async fn listen_build_history(
        &self,
        _request: Request<api::BuildHistoryRequest>,
    ) -> Result<Response<Self::ListenBuildHistoryStream>, Status> {
        self.metrics.rpc("Control", "ListenBuildHistory");
        Err(not_built("the build history API"))
    }

    #[instrument(skip_all)]
    async fn update_build_history(
        &self,
        _request: Request<api::UpdateBuildHistoryRequest>,
    ) -> Result<Response<api::UpdateBuildHistoryResponse>, Status> {
        self.metrics.rpc("Control", "UpdateBuildHistory");
        Err(not_built("the build history API"))
    }
}
