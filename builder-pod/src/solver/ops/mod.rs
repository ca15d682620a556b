//! How kilnd carries out each kind of LLB op on this machine.

pub(crate) mod exec;
pub(crate) mod fileop;
pub(crate) mod merge;

use std::sync::Arc;

use kiln_proto::buildkit::pb;

use super::llb::Vertex;
use super::scheduler::{BuildContext, OpError, Ops};
use crate::cache::{CacheManager, Snapshot};
use crate::executor::Executor;
use crate::source::{Resolved, Sources};

/// The ops of kilnd's one worker: sources through the client's session and
/// registries, file changes through overlay mounts, steps through the OCI runtime.
pub(crate) struct WorkerOps {
    pub cache: Arc<CacheManager>,
    pub sources: Arc<Sources>,
    pub executor: Arc<dyn Executor>,
    pub cache_mounts: exec::CacheMounts,
    /// Where steps' secret files are mounted: on the run directory's
    /// tmpfs, never under the root.
    pub secrets_dir: std::path::PathBuf,
}

impl std::fmt::Debug for WorkerOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOps").field("cache", &self.cache.root()).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpsError {
    #[error("{0} ops are not supported by kilnd yet")]
    UnsupportedOp(&'static str),
    #[error("LLB op has no operation")]
    Empty,
}

#[async_trait::async_trait]
impl Ops for WorkerOps {
    async fn resolve_source(&self, vertex: &Vertex, ctx: &BuildContext) -> Result<Resolved, OpError> {
        let Some(pb::op::Op::Source(source)) = vertex.operation() else {
            return Err(OpsError::Empty.into());
        };
        Ok(self.sources.resolve(&vertex.digest, &vertex.op, source, &ctx.sessions, &ctx.job.progress).await?)
    }

    async fn selected_keys(
        &self,
        vertex: &Vertex,
        inputs: &[Snapshot],
    ) -> Result<Vec<Option<String>>, OpError> {
        match vertex.operation() {
            Some(pb::op::Op::File(op)) => {
                Ok(fileop::selected_keys(&self.cache, self.sources.hashes(), op, inputs).await?)
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn run(
        &self,
        vertex: &Vertex,
        inputs: Vec<Snapshot>,
        resolved: Option<Resolved>,
        ctx: &BuildContext,
    ) -> Result<Vec<Snapshot>, OpError> {
        match vertex.operation().ok_or(OpsError::Empty)? {
            pb::op::Op::Merge(op) => Ok(vec![merge::merge(op, &inputs)?]),
            pb::op::Op::Diff(op) => Ok(vec![merge::diff(op, &inputs)?]),
            pb::op::Op::Source(s) => Ok(vec![self.sources.load(resolved, s, &ctx.sessions).await?]),
            pb::op::Op::Exec(op) => {
                let cx = exec::ExecContext {
                    cache: &self.cache,
                    cache_mounts: &self.cache_mounts,
                    executor: self.executor.as_ref(),
                    secrets_dir: &self.secrets_dir,
                    digest: &vertex.digest,
                };
                Ok(exec::run(cx, op, &inputs, ctx).await?)
            }
            pb::op::Op::File(op) => Ok(fileop::run(&self.cache, op, &inputs).await?),
            pb::op::Op::Build(_) => Err(OpsError::UnsupportedOp("build").into()),
        }
    }
}
