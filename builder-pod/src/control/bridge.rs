//! BuildKit's `moby.buildkit.v1.frontend.LLBBridge` service: the gRPC face
//! of the forwarded builds in `frontend::gateway`.

use std::sync::Arc;

use kiln_proto::buildkit::moby::buildkit::v1::frontend as fe;
use kiln_proto::buildkit::moby::buildkit::v1::frontend::ReturnRequest;
use kiln_proto::buildkit::moby::buildkit::v1::frontend::llb_bridge_server::LlbBridge;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::Controller;
use crate::frontend::gateway::{BridgeError, FRONTEND_CAPS, ForwardedBuild, caps, llb_caps};

/// The header every LLBBridge call carries (docs/protocol.md §1).
const BUILD_ID_HEADER: &str = "buildkit-controlapi-buildid";

/// BuildKit's `moby.buildkit.v1.frontend.LLBBridge` service.
#[derive(Debug, Clone)]
pub(crate) struct LlbBridgeService {
    c: Arc<Controller>,
}

impl LlbBridgeService {
    pub(crate) fn new(controller: Arc<Controller>) -> Self {
        Self { c: controller }
    }

    fn count(&self, method: &str) {
        self.c.metrics.rpc("LLBBridge", method);
    }

    /// The build a bridge call belongs to, from its header.
    async fn build_of<T>(&self, request: &Request<T>) -> Result<Arc<ForwardedBuild>, Status> {
        let id = request
            .metadata()
            .get(BUILD_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Status::invalid_argument(format!("no {BUILD_ID_HEADER} header")))?;
        Ok(self.c.bridge.lookup(id).await?)
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
        self.build_of(&request).await?;
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
        let build = self.build_of(&request).await?;
        build.finish(request.into_inner())?;
        Ok(Response::new(fe::ReturnResponse {}))
    }

    #[instrument(skip_all)]
    async fn inputs(
        &self,
        request: Request<fe::InputsRequest>,
    ) -> Result<Response<fe::InputsResponse>, Status> {
        self.count("Inputs");
        let build = self.build_of(&request).await?;
        Ok(Response::new(fe::InputsResponse { definitions: build.frontend_inputs.clone() }))
    }

    #[instrument(skip_all)]
    async fn warn(&self, request: Request<fe::WarnRequest>) -> Result<Response<fe::WarnResponse>, Status> {
        self.count("Warn");
        let build = self.build_of(&request).await?;
        build.warn(request.into_inner());
        Ok(Response::new(fe::WarnResponse {}))
    }

    #[instrument(skip_all, fields(build.ref, image.ref))]
    async fn resolve_image_config(
        &self,
        request: Request<fe::ResolveImageConfigRequest>,
    ) -> Result<Response<fe::ResolveImageConfigResponse>, Status> {
        self.count("ResolveImageConfig");
        let build = self.build_of(&request).await?;
        let req = request.into_inner();
        tracing::Span::current()
            .record("build.ref", build.id.as_str())
            .record("image.ref", req.r#ref.as_str());
        // Resolver type 1 is an OCI layout in the client's session content store.
        if req.resolver_type != 0 {
            return Err(not_built("ResolveImageConfig from an OCI layout"));
        }
        let (reference, image) = build
            .resolve_image(
                &self.c.sources,
                &req.r#ref,
                req.platform.as_ref(),
                self.c.worker.platforms.first(),
                &req.resolve_mode,
                &req.log_name,
            )
            .await?;
        Ok(Response::new(fe::ResolveImageConfigResponse {
            r#ref: reference.to_string(),
            digest: image.digest().to_string(),
            config: image.config,
        }))
    }

    #[instrument(skip_all, fields(build.ref, source))]
    async fn resolve_source_meta(
        &self,
        request: Request<fe::ResolveSourceMetaRequest>,
    ) -> Result<Response<fe::ResolveSourceMetaResponse>, Status> {
        self.count("ResolveSourceMeta");
        let build = self.build_of(&request).await?;
        let req = request.into_inner();
        let source = req.source.ok_or(BridgeError::NoSource)?;
        tracing::Span::current()
            .record("build.ref", build.id.as_str())
            .record("source", source.identifier.as_str());
        // Other sources carry no metadata kilnd resolves ahead of the solve;
        // the op comes back unchanged, as upstream does without a policy.
        let Some(reference) = source.identifier.strip_prefix("docker-image://") else {
            return Ok(Response::new(fe::ResolveSourceMetaResponse {
                source: Some(source),
                ..Default::default()
            }));
        };
        let (_, image) = build
            .resolve_image(
                &self.c.sources,
                reference,
                req.platform.as_ref(),
                self.c.worker.platforms.first(),
                &req.resolve_mode,
                &req.log_name,
            )
            .await?;
        let no_config = req.image.as_ref().is_some_and(|i| i.no_config);
        Ok(Response::new(fe::ResolveSourceMetaResponse {
            image: Some(fe::ResolveSourceImageResponse {
                digest: image.digest().to_string(),
                config: if no_config { Vec::new() } else { image.config },
                attestation_chain: None,
            }),
            source: Some(source),
            ..Default::default()
        }))
    }

    #[instrument(skip_all)]
    async fn solve(&self, request: Request<fe::SolveRequest>) -> Result<Response<fe::SolveResponse>, Status> {
        self.count("Solve");
        let build = self.build_of(&request).await?;
        let response = build.solve(&self.c.solver, &self.c.sources, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[instrument(skip_all, fields(build.ref, result.ref = %request.get_ref().r#ref))]
    async fn read_file(
        &self,
        request: Request<fe::ReadFileRequest>,
    ) -> Result<Response<fe::ReadFileResponse>, Status> {
        self.count("ReadFile");
        let build = self.build_of(&request).await?;
        tracing::Span::current().record("build.ref", build.id.as_str());
        let req = request.into_inner();
        let data = build.read_file(self.c.solver.cache(), &req.r#ref, req.file_path, req.range).await?;
        Ok(Response::new(fe::ReadFileResponse { data }))
    }

    #[instrument(skip_all, fields(build.ref, result.ref = %request.get_ref().r#ref))]
    async fn read_dir(
        &self,
        request: Request<fe::ReadDirRequest>,
    ) -> Result<Response<fe::ReadDirResponse>, Status> {
        self.count("ReadDir");
        let build = self.build_of(&request).await?;
        tracing::Span::current().record("build.ref", build.id.as_str());
        let req = request.into_inner();
        let entries =
            build.read_dir(self.c.solver.cache(), &req.r#ref, req.dir_path, req.include_pattern).await?;
        Ok(Response::new(fe::ReadDirResponse { entries }))
    }

    #[instrument(skip_all, fields(build.ref, result.ref = %request.get_ref().r#ref))]
    async fn stat_file(
        &self,
        request: Request<fe::StatFileRequest>,
    ) -> Result<Response<fe::StatFileResponse>, Status> {
        self.count("StatFile");
        let build = self.build_of(&request).await?;
        tracing::Span::current().record("build.ref", build.id.as_str());
        let req = request.into_inner();
        let stat = build.stat_file(self.c.solver.cache(), &req.r#ref, req.path).await?;
        Ok(Response::new(fe::StatFileResponse { stat: Some(stat) }))
    }

    #[instrument(skip_all, fields(build.ref, result.ref = %request.get_ref().r#ref))]
    async fn evaluate(
        &self,
        request: Request<fe::EvaluateRequest>,
    ) -> Result<Response<fe::EvaluateResponse>, Status> {
        self.count("Evaluate");
        let build = self.build_of(&request).await?;
        tracing::Span::current().record("build.ref", build.id.as_str());
        build.snapshot_for_read(&request.get_ref().r#ref)?;
        Ok(Response::new(fe::EvaluateResponse {}))
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
