//! `moby.buildkit.secrets.v1.Secrets/GetSecret` on the client (buildkit-protocol.md §4.5).

use std::time::Duration;

use kiln_proto::buildkit::moby::buildkit::secrets::v1::GetSecretRequest;
use kiln_proto::buildkit::moby::buildkit::secrets::v1::secrets_client::SecretsClient;
use tonic::Code;

use super::{SessionError, SessionManager, origin};

const METHOD: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";
/// How long each of the build's sessions is waited for (§3.3).
const SESSION_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("reading secret {id:?} from the client: {status}")]
    Call { id: String, status: tonic::Status },
}

/// The secret `id` from the first of `session_ids` that has it; `None` when
/// no session provides it (the client answers NotFound or serves no secrets).
pub async fn get_secret(
    sessions: &SessionManager,
    session_ids: &[String],
    id: &str,
) -> Result<Option<Vec<u8>>, SecretError> {
    for session_id in session_ids.iter().filter(|s| !s.is_empty()) {
        let session = match sessions.get(session_id, SESSION_WAIT).await {
            Ok(s) => s,
            Err(SessionError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        if !session.supports(METHOD) {
            continue;
        }
        let mut client = SecretsClient::with_origin(session.channel(), origin());
        match client.get_secret(GetSecretRequest { id: id.to_owned(), ..Default::default() }).await {
            Ok(resp) => return Ok(Some(resp.into_inner().data)),
            Err(status) if matches!(status.code(), Code::NotFound | Code::Unimplemented) => continue,
            Err(status) => return Err(SecretError::Call { id: id.to_owned(), status }),
        }
    }
    Ok(None)
}
