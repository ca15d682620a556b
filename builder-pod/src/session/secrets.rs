//! `moby.buildkit.secrets.v1.Secrets/GetSecret` on the client (docs/protocol.md §4.3).

use kiln_proto::buildkit::moby::buildkit::secrets::v1::GetSecretRequest;
use kiln_proto::buildkit::moby::buildkit::secrets::v1::secrets_client::SecretsClient;
use tonic::Code;

use super::{Group, origin};

const METHOD: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading secret {id:?} from the client: {status}")]
    Call { id: String, status: tonic::Status },
}

/// The secret `id` from the first session of the build that has it; `None`
/// when none provides it (the client answers NotFound or serves no secrets).
pub(crate) async fn get_secret(sessions: &Group, id: &str) -> Result<Option<Vec<u8>>, SecretError> {
    sessions
        .any(|session| async move {
            if !session.supports(METHOD) {
                return Ok(None);
            }
            let mut client = SecretsClient::with_origin(session.channel(), origin());
            match client.get_secret(GetSecretRequest { id: id.to_owned(), ..Default::default() }).await {
                Ok(resp) => Ok(Some(resp.into_inner().data)),
                Err(status) if matches!(status.code(), Code::NotFound | Code::Unimplemented) => Ok(None),
                Err(status) => Err(SecretError::Call { id: id.to_owned(), status }),
            }
        })
        .await
}
