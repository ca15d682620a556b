//! kilnd's edge: the gRPC services it serves (BuildKit's `Control` and
//! `LLBBridge`, gRPC health) and the one translation of its errors into
//! gRPC statuses (`status`).

mod bridge;
mod health;
mod status;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kiln_proto::buildkit::moby::buildkit::v1 as api;
use kiln_proto::buildkit::moby::buildkit::v1::control_server::Control;
use kiln_proto::buildkit::moby::buildkit::v1::frontend as fe;
use kiln_proto::buildkit::pb::Definition;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

pub(crate) use bridge::LlbBridgeService;
pub(crate) use health::HealthService;

use self::status::{ClientResult, OwnResult};
use crate::cache::Snapshot;
use crate::exporter::{ExportSource, Exporters};
use crate::frontend::dockerfile::builder::{self as dockerfile, FrontendRefs, FrontendResult};
use crate::frontend::gateway::{Bridge, ForwardedBuild};
use crate::gc;
use crate::metrics::Metrics;
use crate::session::{Group, SessionManager};
use crate::solver::entitlements::Entitlements;
use crate::solver::llb::Graph;
use crate::solver::scheduler::{BuildContext, Solver};
use crate::solver::{JobGuard, Jobs};
use crate::source::Sources;
use crate::worker::{self, Worker};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What every service of the daemon shares.
#[derive(Debug)]
pub(crate) struct Controller {
    pub worker: Arc<Worker>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<SessionManager>,
    pub jobs: Arc<Jobs>,
    pub bridge: Arc<Bridge>,
    pub solver: Arc<Solver>,
    pub sources: Arc<Sources>,
    pub exporters: Exporters,
    /// False while the daemon drains: running builds finish, new ones are refused.
    pub serving: Arc<std::sync::atomic::AtomicBool>,
    /// When the daemon started: a builder that never built is idle since then.
    pub started: std::time::Instant,
    /// Keeps collection and builds apart.
    pub gc: Arc<gc::Collector>,
    /// What this daemon lets a build have beyond the sandbox.
    pub entitlements: Entitlements,
}

impl crate::debug::LoadSource for Controller {
    fn load(&self) -> crate::debug::Load {
        crate::debug::Load {
            builds: self.jobs.running(),
            sessions: self.sessions.len(),
            idle_seconds: self.jobs.idle_for(self.started).map(|d| d.as_secs()),
            serving: self.serving.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// BuildKit's `moby.buildkit.v1.Control` service.
#[derive(Debug, Clone)]
pub(crate) struct ControlService {
    c: Arc<Controller>,
}

/// How long `Status` waits for the Solve that creates its job (upstream: 6 s,
/// docs/protocol.md §3.4).
const STATUS_WAIT: Duration = Duration::from_secs(6);
/// The response header of `Status` carrying the server's clock (docs/protocol.md §1).
const TIMESTAMP_HEADER: &str = "buildkit-current-timestamp";

impl ControlService {
    pub(crate) fn new(controller: Arc<Controller>) -> Self {
        Self { c: controller }
    }

    /// Registers the build's job and its context. The client going away drops
    /// the Solve future, and with it the returned guard, which cancels the build.
    fn start_build(
        &self,
        req: &api::SolveRequest,
    ) -> Result<(JobGuard, tokio_util::sync::DropGuard, Arc<BuildContext>), Status> {
        // Refused before the build exists: nothing of it runs or is looked up.
        let entitlements = self.c.entitlements.grant(&req.entitlements)?;
        let job = self.c.jobs.create(&req.r#ref)?;
        let cancel = CancellationToken::new();
        let ctx = Arc::new(BuildContext {
            job: Arc::clone(&job.job),
            sessions: Group::new(Arc::clone(&self.c.sessions), [req.session.clone()]),
            entitlements,
            cancel: cancel.clone(),
        });
        Ok((job, cancel.drop_guard(), ctx))
    }

    /// A build of an LLB definition (`buildctl build` with LLB on stdin).
    async fn solve_definition(
        &self,
        req: api::SolveRequest,
        def: &Definition,
    ) -> Result<api::SolveResponse, Status> {
        let graph = Graph::parse(def)?;
        let (_job, _cancel_on_drop, ctx) = self.start_build(&req)?;
        let result = self.c.solver.solve(&graph, Arc::clone(&ctx)).await?;
        self.export(&req, &ExportSource::Single { snapshot: result, image_config: None }, &ctx).await
    }

    /// `buildctl build --frontend dockerfile.v0`: the frontend runs in the daemon.
    async fn solve_frontend(&self, req: api::SolveRequest) -> Result<api::SolveResponse, Status> {
        let (_job, _cancel_on_drop, ctx) = self.start_build(&req)?;
        let result = dockerfile::build(
            &self.c.solver,
            &self.c.sources,
            &ctx,
            &req.frontend_attrs,
            &req.frontend_inputs,
            &req.session,
        )
        .await?;
        self.export(&req, &frontend_source(result)?, &ctx).await
    }

    /// A build driven by the client through the LLBBridge (buildx's path):
    /// registered before anything slow, done when the client calls Return.
    async fn solve_forwarded(&self, req: api::SolveRequest) -> Result<api::SolveResponse, Status> {
        let (_job, _cancel_on_drop, ctx) = self.start_build(&req)?;
        let (_registration, build, returned) = self.c.bridge.register(ctx, req.frontend_inputs.clone());
        let ret = returned
            .await
            .map_err(|_| Status::internal(format!("build {} ended without a result", req.r#ref)))?;
        if let Some(err) = ret.error {
            return Err(Status::new(tonic::Code::from_i32(err.code), err.message));
        }
        let (single, refs) = match ret.result.as_ref().and_then(|r| r.result.as_ref()) {
            Some(fe::result::Result::Ref(r)) => {
                (self.returned_ref(&build, &r.id, r.def.as_ref()).await?, None)
            }
            Some(fe::result::Result::RefDeprecated(id)) => (self.returned_ref(&build, id, None).await?, None),
            Some(fe::result::Result::Refs(map)) => {
                let mut refs = HashMap::new();
                for (platform, r) in &map.refs {
                    refs.insert(platform.clone(), self.returned_ref(&build, &r.id, r.def.as_ref()).await?);
                }
                (None, Some(refs))
            }
            Some(fe::result::Result::RefsDeprecated(map)) => {
                let mut refs = HashMap::new();
                for (platform, id) in &map.refs {
                    refs.insert(platform.clone(), self.returned_ref(&build, id, None).await?);
                }
                (None, Some(refs))
            }
            None => (None, None),
        };
        let no_metadata = HashMap::new();
        let metadata = ret.result.as_ref().map_or(&no_metadata, |r| &r.metadata);
        let source = ExportSource::from_result(single, refs, metadata).map_err(ClientResult)?;
        self.export(&req, &source, &build.ctx).await
    }

    /// The snapshot a returned ref names: one the bridge handed out, or the
    /// client's own definition solved now.
    async fn returned_ref(
        &self,
        build: &ForwardedBuild,
        id: &str,
        def: Option<&Definition>,
    ) -> Result<Option<Snapshot>, Status> {
        if let Some(snapshot) = build.get_ref(id) {
            return Ok(snapshot);
        }
        match def {
            Some(def) => {
                let graph = Graph::parse(def)?;
                Ok(self.c.solver.solve(&graph, Arc::clone(&build.ctx)).await?)
            }
            None if id.is_empty() => Ok(None),
            None => Err(Status::invalid_argument(format!("returned ref {id:?} is unknown"))),
        }
    }

    /// Runs every exporter of the request on the result and merges their responses.
    async fn export(
        &self,
        req: &api::SolveRequest,
        source: &ExportSource,
        ctx: &BuildContext,
    ) -> Result<api::SolveResponse, Status> {
        let mut exporter_response = HashMap::new();
        for (index, exporter) in exporters(req).iter().enumerate() {
            let response = self.c.exporters.export(index, exporter, source, ctx).await?;
            exporter_response.extend(response);
        }
        Ok(api::SolveResponse { exporter_response })
    }
}

/// The exporters' view of what the built-in frontend returned.
fn frontend_source(result: FrontendResult) -> Result<ExportSource, Status> {
    let (single, refs) = match result.refs {
        FrontendRefs::Single(r) => (r.snapshot, None),
        FrontendRefs::Platforms(list) => {
            (None, Some(list.into_iter().map(|(id, r)| (id, r.snapshot)).collect()))
        }
    };
    Ok(ExportSource::from_result(single, refs, &result.metadata).map_err(OwnResult)?)
}

/// The exporters of a request: `Exporters`, or the legacy single one (docs/protocol.md §5).
fn exporters(req: &api::SolveRequest) -> Vec<api::Exporter> {
    if !req.exporters.is_empty() {
        return req.exporters.clone();
    }
    if req.exporter_deprecated.is_empty() {
        return Vec::new();
    }
    vec![api::Exporter {
        r#type: req.exporter_deprecated.clone(),
        attrs: req.exporter_attrs_deprecated.clone(),
    }]
}

/// Calls kilnd does not serve yet. buildx treats `Unimplemented` from the
/// history calls as "no history API" and goes on (docs/protocol.md §2.2).
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
        self.c.metrics.rpc("Control", "DiskUsage");
        let cache = Arc::clone(self.c.solver.cache());
        let record = tokio::task::spawn_blocking(move || gc::disk_usage(&cache))
            .await
            .map_err(status::task_failed)??;
        Ok(Response::new(api::DiskUsageResponse { record }))
    }

    type PruneStream = Stream_<api::UsageRecord>;

    #[instrument(skip_all)]
    async fn prune(
        &self,
        request: Request<api::PruneRequest>,
    ) -> Result<Response<Self::PruneStream>, Status> {
        self.c.metrics.rpc("Control", "Prune");
        // Removing layers under a running build would break it.
        let Some(exclusive) = self.c.gc.exclusive() else {
            return Err(Status::failed_precondition(
                "builds are running; prune again when they have finished",
            ));
        };
        let req = request.into_inner();
        let keep = Duration::from_nanos(u64::try_from(req.keep_duration).unwrap_or(0));
        let cache = Arc::clone(self.c.solver.cache());
        let removed = tokio::task::spawn_blocking(move || {
            let _exclusive = exclusive;
            gc::prune(&cache, req.all, keep)
        })
        .await
        .map_err(status::task_failed)??;
        Ok(Response::new(Box::pin(futures::stream::iter(removed.into_iter().map(Ok)))))
    }

    #[instrument(skip_all, fields(build.ref = %request.get_ref().r#ref, session.id = %request.get_ref().session))]
    async fn solve(
        &self,
        request: Request<api::SolveRequest>,
    ) -> Result<Response<api::SolveResponse>, Status> {
        self.c.metrics.rpc("Control", "Solve");
        let req = request.into_inner();
        if req.r#ref.is_empty() {
            return Err(Status::invalid_argument("Solve needs a ref"));
        }
        if !self.c.serving.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Status::unavailable("kilnd is shutting down and takes no new builds"));
        }
        // Collection waits while any build runs (it would remove layers
        // under it); it runs again once this one ends.
        let build = self.c.gc.building().await;
        let result = match (&req.definition, req.frontend.as_str()) {
            (None, "") => self.solve_forwarded(req).await.map(Response::new),
            (Some(def), "") => {
                let def = def.clone();
                self.solve_definition(req, &def).await.map(Response::new)
            }
            (None, "dockerfile.v0") => self.solve_frontend(req).await.map(Response::new),
            (None, frontend) => Err(Status::invalid_argument(format!(
                "unknown frontend {frontend:?} (kilnd has dockerfile.v0, or send LLB)"
            ))),
            (Some(_), _) => Err(Status::invalid_argument("Solve takes a definition or a frontend, not both")),
        };
        drop(build);
        result
    }

    type StatusStream = Stream_<api::StatusResponse>;

    #[instrument(skip_all, fields(build.ref = %request.get_ref().r#ref))]
    async fn status(
        &self,
        request: Request<api::StatusRequest>,
    ) -> Result<Response<Self::StatusStream>, Status> {
        self.c.metrics.rpc("Control", "Status");
        let job = self.c.jobs.get(&request.get_ref().r#ref, STATUS_WAIT).await?;
        let stream = futures::StreamExt::map(job.progress.follow(), Ok);
        let mut response = Response::new(Box::pin(stream) as Self::StatusStream);
        let now = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        if let Ok(now) = now.parse() {
            response.metadata_mut().insert(TIMESTAMP_HEADER, now);
        }
        Ok(response)
    }

    type SessionStream = Stream_<api::BytesMessage>;

    #[instrument(skip_all)]
    async fn session(
        &self,
        request: Request<Streaming<api::BytesMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.c.metrics.rpc("Control", "Session");
        let (metadata, _, incoming) = request.into_parts();
        let outgoing = self.c.sessions.handle(&metadata, incoming).await?;
        Ok(Response::new(Box::pin(outgoing)))
    }

    #[instrument(skip_all)]
    async fn list_workers(
        &self,
        _request: Request<api::ListWorkersRequest>,
    ) -> Result<Response<api::ListWorkersResponse>, Status> {
        self.c.metrics.rpc("Control", "ListWorkers");
        Ok(Response::new(api::ListWorkersResponse { record: vec![self.c.worker.record()] }))
    }

    #[instrument(skip_all)]
    async fn info(&self, _request: Request<api::InfoRequest>) -> Result<Response<api::InfoResponse>, Status> {
        self.c.metrics.rpc("Control", "Info");
        Ok(Response::new(api::InfoResponse { buildkit_version: Some(worker::version()) }))
    }

    type ListenBuildHistoryStream = Stream_<api::BuildHistoryEvent>;

    #[instrument(skip_all)]
    async fn listen_build_history(
        &self,
        _request: Request<api::BuildHistoryRequest>,
    ) -> Result<Response<Self::ListenBuildHistoryStream>, Status> {
        self.c.metrics.rpc("Control", "ListenBuildHistory");
        Err(not_built("the build history API"))
    }

    #[instrument(skip_all)]
    async fn update_build_history(
        &self,
        _request: Request<api::UpdateBuildHistoryRequest>,
    ) -> Result<Response<api::UpdateBuildHistoryResponse>, Status> {
        self.c.metrics.rpc("Control", "UpdateBuildHistory");
        Err(not_built("the build history API"))
    }
}
