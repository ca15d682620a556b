//! BuildKit's `moby.buildkit.v1.frontend.LLBBridge` service: the gRPC face
//! of the forwarded builds in `frontend::gateway`.

use std::path::Path;
use std::sync::Arc;

use kiln_proto::buildkit::moby::buildkit::v1::frontend as fe;
use kiln_proto::buildkit::moby::buildkit::v1::frontend::llb_bridge_server::LlbBridge;
use kiln_proto::buildkit::moby::buildkit::v1::{StatusResponse, frontend::ReturnRequest};
use kiln_proto::buildkit::moby::buildkit::v1::{Vertex, VertexWarning};
use kiln_proto::buildkit::pb;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{Controller, frontend_status, solve_status};
use crate::cache::mount::mount;
use crate::frontend::dockerfile::builder as dockerfile;
use crate::frontend::gateway::{
    BridgeError, FRONTEND_CAPS, ForwardedBuild, caps, check_resolve_mode, llb_caps, platform_of, read_dir,
    read_file, stat_file,
};
use crate::progress::now;
use crate::solver::llb::Graph;
use crate::source::image::{Platform, Reference, ResolvedImage};

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

    /// Runs `read` on a read-only mount of ref `id`, off the async runtime.
    async fn in_ref<T, F>(&self, build: &ForwardedBuild, id: &str, read: F) -> Result<T, BridgeError>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T, BridgeError> + Send + 'static,
    {
        let snapshot = build.snapshot_for_read(id)?;
        let cache = Arc::clone(self.c.solver.cache());
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let view = mount(&cache, &snapshot, None).map_err(|source| BridgeError::Mount { id, source })?;
            read(view.path())
        })
        .await?
    }

    /// One platform's manifest and config for `reference`, with the build's
    /// credentials, shown to the client as a vertex named `log_name`
    /// (upstream `llbBridge.ResolveSourceMetadata`).
    async fn resolve_image(
        &self,
        build: &ForwardedBuild,
        reference: &str,
        platform: Option<&pb::Platform>,
        resolve_mode: &str,
        log_name: &str,
    ) -> Result<(Reference, ResolvedImage), BridgeError> {
        check_resolve_mode(resolve_mode)?;
        let parsed = Reference::parse(reference)
            .map_err(|source| BridgeError::Reference { reference: reference.to_owned(), source })?;
        let platform = platform
            .or_else(|| self.c.worker.platforms.first())
            .map_or_else(Platform::linux_amd64, platform_of);
        let name = if log_name.is_empty() {
            format!("resolve image config for docker-image://{parsed}")
        } else {
            log_name.to_owned()
        };
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(format!("{name} {platform}"))));
        let mut vertex = Vertex { digest, name, started: Some(now()), ..Vertex::default() };
        build.ctx.job.progress.vertex(vertex.clone());
        let result = self.c.sources.resolve_image(&parsed, &platform, &build.ctx.sessions).await;
        vertex.completed = Some(now());
        if let Err(e) = &result {
            vertex.error = e.to_string();
        }
        build.ctx.job.progress.vertex(vertex);
        let image =
            result.map_err(|source| BridgeError::ResolveImage { reference: parsed.to_string(), source })?;
        Ok((parsed, image))
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

    #[instrument(skip_all, fields(build.ref, image.ref))]
    async fn resolve_image_config(
        &self,
        request: Request<fe::ResolveImageConfigRequest>,
    ) -> Result<Response<fe::ResolveImageConfigResponse>, Status> {
        self.count("ResolveImageConfig");
        let build = self.c.bridge.build_of(&request).await?;
        let req = request.into_inner();
        tracing::Span::current()
            .record("build.ref", build.id.as_str())
            .record("image.ref", req.r#ref.as_str());
        // Resolver type 1 is an OCI layout in the client's session content store.
        if req.resolver_type != 0 {
            return Err(not_built("ResolveImageConfig from an OCI layout"));
        }
        let (reference, image) = self
            .resolve_image(&build, &req.r#ref, req.platform.as_ref(), &req.resolve_mode, &req.log_name)
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
        let build = self.c.bridge.build_of(&request).await?;
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
        let (_, image) = self
            .resolve_image(&build, reference, req.platform.as_ref(), &req.resolve_mode, &req.log_name)
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
                let session = build.ctx.sessions.ids().first().cloned().unwrap_or_default();
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

    #[instrument(skip_all, fields(build.ref, result.ref = %request.get_ref().r#ref))]
    async fn read_file(
        &self,
        request: Request<fe::ReadFileRequest>,
    ) -> Result<Response<fe::ReadFileResponse>, Status> {
        self.count("ReadFile");
        let build = self.c.bridge.build_of(&request).await?;
        tracing::Span::current().record("build.ref", build.id.as_str());
        let req = request.into_inner();
        let data = self
            .in_ref(&build, &req.r#ref, move |root| read_file(root, &req.file_path, req.range.as_ref()))
            .await?;
        Ok(Response::new(fe::ReadFileResponse { data }))
    }

    #[instrument(skip_all, fields(build.ref, result.ref = %request.get_ref().r#ref))]
    async fn read_dir(
        &self,
        request: Request<fe::ReadDirRequest>,
    ) -> Result<Response<fe::ReadDirResponse>, Status> {
        self.count("ReadDir");
        let build = self.c.bridge.build_of(&request).await?;
        tracing::Span::current().record("build.ref", build.id.as_str());
        let req = request.into_inner();
        let entries = self
            .in_ref(&build, &req.r#ref, move |root| read_dir(root, &req.dir_path, &req.include_pattern))
            .await?;
        Ok(Response::new(fe::ReadDirResponse { entries }))
    }

    #[instrument(skip_all, fields(build.ref, result.ref = %request.get_ref().r#ref))]
    async fn stat_file(
        &self,
        request: Request<fe::StatFileRequest>,
    ) -> Result<Response<fe::StatFileResponse>, Status> {
        self.count("StatFile");
        let build = self.c.bridge.build_of(&request).await?;
        tracing::Span::current().record("build.ref", build.id.as_str());
        let req = request.into_inner();
        let stat = self.in_ref(&build, &req.r#ref, move |root| stat_file(root, &req.path)).await?;
        Ok(Response::new(fe::StatFileResponse { stat: Some(stat) }))
    }

    /// Refs are solved when LLBBridge.Solve returns them, so evaluating one
    /// only checks that it exists.
    #[instrument(skip_all, fields(build.ref, result.ref = %request.get_ref().r#ref))]
    async fn evaluate(
        &self,
        request: Request<fe::EvaluateRequest>,
    ) -> Result<Response<fe::EvaluateResponse>, Status> {
        self.count("Evaluate");
        let build = self.c.bridge.build_of(&request).await?;
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
