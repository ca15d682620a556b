//! The LLBBridge: the frontend API that buildx drives for gateway-forwarded
//! builds (buildkit-protocol.md §2.2 phases B–C, §9.4).
//!
//! `Control.Solve` with neither a definition nor a frontend registers the
//! build here under its ref and waits; the client then calls LLBBridge
//! methods (header `buildkit-controlapi-buildid` = ref) and ends with
//! `Return`, whose result the waiting Solve exports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_proto::buildkit::moby::buildkit::v1::VertexWarning;
use kiln_proto::buildkit::moby::buildkit::v1::apicaps::ApiCap;
use kiln_proto::buildkit::moby::buildkit::v1::frontend as fe;
use kiln_proto::buildkit::moby::buildkit::v1::frontend::llb_bridge_server::LlbBridge;
use kiln_proto::buildkit::moby::buildkit::v1::{StatusResponse, frontend::ReturnRequest};
use kiln_proto::buildkit::pb::Definition;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::arrivals::Arrivals;
use crate::cache::Snapshot;
use crate::control::{Controller, frontend_status, solve_status};
use crate::frontend::dockerfile::builder as dockerfile;
use crate::solver::llb::Graph;
use crate::solver::scheduler::BuildContext;
use crate::worker::random_id;

/// The header every LLBBridge call carries (§1).
pub const BUILD_ID_HEADER: &str = "buildkit-controlapi-buildid";
/// How long a bridge call waits for its Solve to register (upstream: 3 s, §3.4).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Frontend API capabilities kilnd implements (`frontend/gateway/pb/caps.go`).
/// Advertising `return` and `proto.refarray` keeps clients off the legacy
/// result path (§2.5); `reference.output` says returned refs carry their
/// definitions, which bake turns into other targets' contexts.
pub const FRONTEND_CAPS: &[&str] =
    &["return", "proto.refarray", "returnmap", "frontend.inputs", "gateway.warnings", "reference.output"];

/// Several exporters in one Solve (`solver/pb/caps.go` `CapMultipleExporters`).
const EXPORTER_MULTIPLE: &str = "exporter.multiple";

/// The LLB capabilities Ping answers with (§2.5): the LLB the built-in
/// frontend emits and several exporters per Solve. An empty list makes the
/// client assume the frozen pre-capability set, and buildx then refuses a
/// second `--output`.
fn llb_caps() -> Vec<ApiCap> {
    let mut ids = crate::frontend::llb::caps::ALL.to_vec();
    ids.push(EXPORTER_MULTIPLE);
    caps(&ids)
}

pub fn caps(ids: &[&str]) -> Vec<ApiCap> {
    ids.iter().map(|id| ApiCap { id: (*id).to_owned(), enabled: true, ..ApiCap::default() }).collect()
}

/// A build waiting for its client to drive the frontend API.
#[derive(Debug)]
pub struct ForwardedBuild {
    pub id: String,
    pub ctx: Arc<BuildContext>,
    pub frontend_attrs: HashMap<String, String>,
    pub frontend_inputs: HashMap<String, Definition>,
    returned: Mutex<Option<oneshot::Sender<ReturnRequest>>>,
    /// Results handed to the client, by the ref id it will name them with.
    refs: Mutex<HashMap<String, Option<Snapshot>>>,
}

impl ForwardedBuild {
    fn add_ref(&self, snapshot: Option<Snapshot>) -> Result<String, Status> {
        let id = random_id().map_err(|e| Status::internal(format!("making a ref id: {e}")))?;
        self.refs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.clone(), snapshot);
        Ok(id)
    }

    /// The snapshot behind a ref id the client returned.
    pub fn get_ref(&self, id: &str) -> Option<Option<Snapshot>> {
        self.refs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned()
    }
}

/// Forwarded builds by ref.
#[derive(Debug, Default)]
pub struct Bridge {
    builds: Mutex<HashMap<String, Arc<ForwardedBuild>>>,
    arrivals: Arrivals,
}

/// Unregisters its build when dropped.
#[derive(Debug)]
pub struct BridgeGuard {
    bridge: Arc<Bridge>,
    id: String,
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        self.bridge.lock().remove(&self.id);
    }
}

impl Bridge {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ForwardedBuild>>> {
        self.builds.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a build; the receiver yields the client's `Return`.
    pub fn register(
        self: &Arc<Self>,
        ctx: Arc<BuildContext>,
        frontend_attrs: HashMap<String, String>,
        frontend_inputs: HashMap<String, Definition>,
    ) -> (BridgeGuard, Arc<ForwardedBuild>, oneshot::Receiver<ReturnRequest>) {
        let (tx, rx) = oneshot::channel();
        let id = ctx.job.id.clone();
        let build = Arc::new(ForwardedBuild {
            id: id.clone(),
            ctx,
            frontend_attrs,
            frontend_inputs,
            returned: Mutex::new(Some(tx)),
            refs: Mutex::new(HashMap::new()),
        });
        self.lock().insert(id.clone(), Arc::clone(&build));
        self.arrivals.announce();
        (BridgeGuard { bridge: Arc::clone(self), id }, build, rx)
    }

    async fn lookup(&self, id: &str) -> Result<Arc<ForwardedBuild>, Status> {
        let find = || self.lock().get(id).cloned();
        self.arrivals
            .wait_for(LOOKUP_TIMEOUT, find)
            .await
            .map_err(|_| Status::not_found(format!("no build {id:?} is waiting for the frontend API")))
    }

    /// The build a bridge call belongs to, from its header.
    async fn build_of<T>(&self, request: &Request<T>) -> Result<Arc<ForwardedBuild>, Status> {
        let id = request
            .metadata()
            .get(BUILD_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Status::invalid_argument(format!("no {BUILD_ID_HEADER} header")))?;
        self.lookup(id).await
    }
}

/// BuildKit's `moby.buildkit.v1.frontend.LLBBridge` service.
#[derive(Debug, Clone)]
pub struct LlbBridgeService {
    c: Arc<Controller>,
}

impl LlbBridgeService {
    pub fn new(controller: Arc<Controller>) -> Self {
        Self { c: controller }
    }

    fn count(&self, method: &str) {
        self.c.metrics.rpc("LLBBridge", method);
    }
}

fn not_built(what: &str) -> Status {
    Status::unimplemented(format!("LLBBridge.{what} is not implemented by kilnd yet"))
}

#[tonic::async_trait]
impl LlbBridge for LlbBridgeService {
    #[instrument(skip_all)]
    async fn ping(&self, request: Request<fe::PingRequest>) -> Result<Response<fe::PongResponse>, Status> {
        self.count("Ping");
        self.c.bridge.build_of(&request).await?;
        Ok(Response::new(fe::PongResponse {
            frontend_api_caps: caps(FRONTEND_CAPS),
            llb_caps: llb_caps(),
            workers: vec![self.c.worker.record()],
        }))
    }

    #[instrument(skip_all)]
    async fn r#return(
        &self,
        request: Request<ReturnRequest>,
    ) -> Result<Response<fe::ReturnResponse>, Status> {
        self.count("Return");
        let build = self.c.bridge.build_of(&request).await?;
        let sender = build.returned.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let sender = sender
            .ok_or_else(|| Status::failed_precondition(format!("build {} already returned", build.id)))?;
        // The Solve may be gone if its client left; then nobody needs the result.
        let _ = sender.send(request.into_inner());
        Ok(Response::new(fe::ReturnResponse {}))
    }

    #[instrument(skip_all)]
    async fn inputs(
        &self,
        request: Request<fe::InputsRequest>,
    ) -> Result<Response<fe::InputsResponse>, Status> {
        self.count("Inputs");
        let build = self.c.bridge.build_of(&request).await?;
        Ok(Response::new(fe::InputsResponse { definitions: build.frontend_inputs.clone() }))
    }

    #[instrument(skip_all)]
    async fn warn(&self, request: Request<fe::WarnRequest>) -> Result<Response<fe::WarnResponse>, Status> {
        self.count("Warn");
        let build = self.c.bridge.build_of(&request).await?;
        let w = request.into_inner();
        build.ctx.job.progress.send(StatusResponse {
            warnings: vec![VertexWarning {
                vertex: w.digest,
                level: w.level,
                short: w.short,
                detail: w.detail,
                url: w.url,
                info: w.info,
                ranges: w.ranges,
            }],
            ..StatusResponse::default()
        });
        Ok(Response::new(fe::WarnResponse {}))
    }

    async fn resolve_image_config(
        &self,
        _request: Request<fe::ResolveImageConfigRequest>,
    ) -> Result<Response<fe::ResolveImageConfigResponse>, Status> {
        self.count("ResolveImageConfig");
        Err(not_built("ResolveImageConfig"))
    }

    async fn resolve_source_meta(
        &self,
        _request: Request<fe::ResolveSourceMetaRequest>,
    ) -> Result<Response<fe::ResolveSourceMetaResponse>, Status> {
        self.count("ResolveSourceMeta");
        Err(not_built("ResolveSourceMeta"))
    }

    #[instrument(skip_all)]
    async fn solve(&self, request: Request<fe::SolveRequest>) -> Result<Response<fe::SolveResponse>, Status> {
        self.count("Solve");
        let build = self.c.bridge.build_of(&request).await?;
        let req = request.into_inner();
        let definition = req.definition.filter(|d| !d.def.is_empty());
        let (id, def) = match (definition, req.frontend.as_str()) {
            (Some(def), "") => {
                let graph = Graph::parse(&def).map_err(|e| Status::invalid_argument(e.to_string()))?;
                let snapshot =
                    self.c.solver.solve(&graph, Arc::clone(&build.ctx)).await.map_err(solve_status)?;
                (build.add_ref(snapshot)?, Some(def))
            }
            (None, "") => (String::new(), None),
            (_, "dockerfile.v0") => {
                let session = build.ctx.session_ids.first().cloned().unwrap_or_default();
                let result = dockerfile::build(
                    &self.c.solver,
                    &self.c.sources,
                    &build.ctx,
                    &req.frontend_opt,
                    &req.frontend_inputs,
                    &session,
                )
                .await
                .map_err(frontend_status)?;
                let r = result.refs.into_gateway(req.allow_result_array_ref, |s| build.add_ref(s))?;
                return Ok(Response::new(fe::SolveResponse {
                    r#ref: String::new(),
                    result: Some(fe::Result {
                        result: Some(r),
                        metadata: result.metadata,
                        ..Default::default()
                    }),
                }));
            }
            (_, other) => return Err(Status::invalid_argument(format!("unknown frontend {other:?}"))),
        };
        let result = if req.allow_result_array_ref {
            fe::result::Result::Ref(fe::Ref { id, def })
        } else {
            fe::result::Result::RefDeprecated(id)
        };
        Ok(Response::new(fe::SolveResponse {
            r#ref: String::new(),
            result: Some(fe::Result { result: Some(result), ..Default::default() }),
        }))
    }

    async fn read_file(
        &self,
        _request: Request<fe::ReadFileRequest>,
    ) -> Result<Response<fe::ReadFileResponse>, Status> {
        self.count("ReadFile");
        Err(not_built("ReadFile"))
    }

    async fn read_dir(
        &self,
        _request: Request<fe::ReadDirRequest>,
    ) -> Result<Response<fe::ReadDirResponse>, Status> {
        self.count("ReadDir");
        Err(not_built("ReadDir"))
    }

    async fn stat_file(
        &self,
        _request: Request<fe::StatFileRequest>,
    ) -> Result<Response<fe::StatFileResponse>, Status> {
        self.count("StatFile");
        Err(not_built("StatFile"))
    }

    async fn evaluate(
        &self,
        _request: Request<fe::EvaluateRequest>,
    ) -> Result<Response<fe::EvaluateResponse>, Status> {
        self.count("Evaluate");
        Err(not_built("Evaluate"))
    }

    async fn new_container(
        &self,
        _request: Request<fe::NewContainerRequest>,
    ) -> Result<Response<fe::NewContainerResponse>, Status> {
        Err(not_built("NewContainer"))
    }

    async fn release_container(
        &self,
        _request: Request<fe::ReleaseContainerRequest>,
    ) -> Result<Response<fe::ReleaseContainerResponse>, Status> {
        Err(not_built("ReleaseContainer"))
    }

    type ExecProcessStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<fe::ExecMessage, Status>> + Send + 'static>>;

    async fn exec_process(
        &self,
        _request: Request<tonic::Streaming<fe::ExecMessage>>,
    ) -> Result<Response<Self::ExecProcessStream>, Status> {
        Err(not_built("ExecProcess"))
    }

    async fn read_file_container(
        &self,
        _request: Request<fe::ReadFileRequest>,
    ) -> Result<Response<fe::ReadFileResponse>, Status> {
        Err(not_built("ReadFileContainer"))
    }

    async fn read_dir_container(
        &self,
        _request: Request<fe::ReadDirRequest>,
    ) -> Result<Response<fe::ReadDirResponse>, Status> {
        Err(not_built("ReadDirContainer"))
    }

    async fn stat_file_container(
        &self,
        _request: Request<fe::StatFileRequest>,
    ) -> Result<Response<fe::StatFileResponse>, Status> {
        Err(not_built("StatFileContainer"))
    }
}
