//! Where kilnd's errors become gRPC statuses. Each module reports what
//! failed in its own terms; this is the one place that picks the code a
//! client acts on (buildx and buildctl print the message and branch on
//! `NotFound`, `Unimplemented`, `Unavailable` and the like).

use tonic::Status;

use crate::cache::CacheError;
use crate::exporter::ExportError;
use crate::frontend::dockerfile::builder::FrontendError;
use crate::frontend::gateway::BridgeError;
use crate::session::SessionError;
use crate::solver::JobError;
use crate::solver::entitlements::EntitlementError;
use crate::solver::llb::LlbError;
use crate::solver::scheduler::SolveError;
use crate::source::SourceError;
use crate::source::image::ImageError;

impl From<SessionError> for Status {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::MissingId => Status::invalid_argument(e.to_string()),
            SessionError::NotFound { .. } | SessionError::NoSession => Status::not_found(e.to_string()),
            SessionError::Handshake { .. } => Status::unavailable(e.to_string()),
        }
    }
}

impl From<JobError> for Status {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Duplicate(_) => Status::already_exists(e.to_string()),
            JobError::NotFound(..) => Status::not_found(e.to_string()),
        }
    }
}

/// A failed build as the client sees it: the message names the step.
impl From<SolveError> for Status {
    fn from(e: SolveError) -> Self {
        match e {
            SolveError::Cancelled => Status::cancelled(e.to_string()),
            SolveError::Entitlement(_) => Status::permission_denied(e.to_string()),
            e => Status::unknown(e.to_string()),
        }
    }
}

/// What the daemon does not allow is refused before the build starts.
impl From<EntitlementError> for Status {
    fn from(e: EntitlementError) -> Self {
        Status::permission_denied(e.to_string())
    }
}

/// A definition that does not parse is the client's.
impl From<LlbError> for Status {
    fn from(e: LlbError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// A frontend failure as the client sees it; Dockerfile errors name their line.
impl From<FrontendError> for Status {
    fn from(e: FrontendError) -> Self {
        match e {
            FrontendError::Solve(e) => e.into(),
            FrontendError::Syntax(_) => Status::unimplemented(e.to_string()),
            FrontendError::Convert(_) | FrontendError::ReadDockerfile(_) => {
                Status::invalid_argument(e.to_string())
            }
            FrontendError::Internal(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<BridgeError> for Status {
    fn from(e: BridgeError) -> Self {
        let message = e.to_string();
        match e {
            BridgeError::Solve(e) => e.into(),
            BridgeError::Frontend(e) => e.into(),
            BridgeError::Definition(e) => e.into(),
            BridgeError::NoBuild { .. } | BridgeError::UnknownRef { .. } | BridgeError::NotFound { .. } => {
                Status::not_found(message)
            }
            BridgeError::Returned { .. } => Status::failed_precondition(message),
            BridgeError::UnknownFrontend(_)
            | BridgeError::NotRegular { .. }
            | BridgeError::NotADirectory { .. }
            | BridgeError::InvalidRange { .. }
            | BridgeError::Pattern { .. }
            | BridgeError::ResolveMode(_)
            | BridgeError::NoSource
            | BridgeError::Reference { .. } => Status::invalid_argument(message),
            BridgeError::ResolveImage {
                source: SourceError::Image(ImageError::InvalidPlatform { .. }),
                ..
            } => Status::invalid_argument(message),
            BridgeError::ResolveImage { .. } => Status::unknown(message),
            BridgeError::RefId(_)
            | BridgeError::Read { .. }
            | BridgeError::Describe { .. }
            | BridgeError::Mount { .. }
            | BridgeError::Task(_) => Status::internal(message),
        }
    }
}

/// An exporter that failed, as BuildKit reports it: `Unknown` with its message.
impl From<ExportError> for Status {
    fn from(e: ExportError) -> Self {
        Status::unknown(e.to_string())
    }
}

/// A result the client returned through the LLBBridge that cannot be
/// exported (refs without their platforms, say) is the client's error.
#[derive(Debug)]
pub(super) struct ClientResult(pub ExportError);

impl From<ClientResult> for Status {
    fn from(ClientResult(e): ClientResult) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// The built-in frontend's own result that cannot be exported is kilnd's bug.
#[derive(Debug)]
pub(super) struct OwnResult(pub ExportError);

impl From<OwnResult> for Status {
    fn from(OwnResult(e): OwnResult) -> Self {
        Status::internal(e.to_string())
    }
}

/// Disk usage and prune read and write the cache's records.
impl From<CacheError> for Status {
    fn from(e: CacheError) -> Self {
        Status::internal(e.to_string())
    }
}

/// A blocking task of the edge's own (disk usage, prune) that panicked.
pub(super) fn task_failed(e: tokio::task::JoinError) -> Status {
    Status::internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_gets_the_code_a_client_acts_on() {
        let code = |s: Status| s.code();
        assert_eq!(code(SessionError::MissingId.into()), Code::InvalidArgument);
        let missing = SessionError::NotFound { id: "s".into(), waited: Duration::ZERO };
        assert_eq!(code(missing.into()), Code::NotFound);
        assert_eq!(code(JobError::Duplicate("r".into()).into()), Code::AlreadyExists);
        assert_eq!(code(JobError::NotFound("r".into(), Duration::ZERO).into()), Code::NotFound);
        assert_eq!(code(SolveError::Cancelled.into()), Code::Cancelled);
        assert_eq!(code(FrontendError::Syntax("x".into()).into()), Code::Unimplemented);
        assert_eq!(code(FrontendError::Solve(SolveError::Cancelled).into()), Code::Cancelled);
        assert_eq!(code(BridgeError::NoBuild { id: "r".into() }.into()), Code::NotFound);
        assert_eq!(code(BridgeError::Returned { build: "r".into() }.into()), Code::FailedPrecondition);
        assert_eq!(code(BridgeError::UnknownFrontend("x".into()).into()), Code::InvalidArgument);
        assert_eq!(code(BridgeError::Solve(SolveError::Cancelled).into()), Code::Cancelled);
        assert_eq!(code(ClientResult(ExportError::NoPlatforms).into()), Code::InvalidArgument);
        assert_eq!(code(OwnResult(ExportError::NoPlatforms).into()), Code::Internal);
        assert_eq!(code(ExportError::NoPlatforms.into()), Code::Unknown);
    }
}
