//! `moby.filesync.v1.Auth` on the client: registry logins come from the
//! client's docker config, asked for only when a registry challenges
//! (docs/protocol.md §4.4). For a token registry the client is first asked
//! to fetch the token itself (`Auth/FetchToken`, as BuildKit does), so its
//! secrets stay with it; a client without it is asked for credentials and
//! the daemon fetches the token (`source::image` runs that flow).

use kiln_proto::buildkit::moby::filesync::v1::auth_client::AuthClient;
use kiln_proto::buildkit::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
};
use tonic::Code;

use super::{Group, origin};

const METHOD: &str = "/moby.filesync.v1.Auth/Credentials";
const FETCH_TOKEN: &str = "/moby.filesync.v1.Auth/FetchToken";
/// The client id BuildKit sends with `FetchToken`.
const CLIENT_ID: &str = "buildkit-client";

#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthCallError {
    #[error("asking the client for credentials of {host}: {status}")]
    Credentials { host: String, status: tonic::Status },
    #[error("the client could not fetch a token for {host} from {realm}: {status}")]
    FetchToken { host: String, realm: String, status: tonic::Status },
}

/// The login for `host` from the first session that has one.
pub(crate) async fn credentials(
    sessions: &Group,
    host: &str,
) -> Result<Option<CredentialsResponse>, AuthCallError> {
    sessions
        .any(|session| async move {
            if !session.supports(METHOD) {
                return Ok(None);
            }
            let mut client = AuthClient::with_origin(session.channel(), origin());
            match client.credentials(CredentialsRequest { host: host.to_owned() }).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    Ok(Some(resp).filter(|r| !r.username.is_empty() || !r.secret.is_empty()))
                }
                Err(status) if status.code() == Code::Unimplemented => Ok(None),
                Err(status) => Err(AuthCallError::Credentials { host: host.to_owned(), status }),
            }
        })
        .await
}

/// A token for `scopes` from `realm`, fetched by the first session that can.
pub(crate) async fn fetch_token(
    sessions: &Group,
    host: &str,
    realm: &str,
    service: Option<&str>,
    scopes: &[String],
) -> Result<Option<FetchTokenResponse>, AuthCallError> {
    sessions
        .any(|session| async move {
            if !session.supports(FETCH_TOKEN) {
                return Ok(None);
            }
            let mut client = AuthClient::with_origin(session.channel(), origin());
            let request = FetchTokenRequest {
                client_id: CLIENT_ID.into(),
                host: host.to_owned(),
                realm: realm.to_owned(),
                service: service.unwrap_or_default().to_owned(),
                scopes: scopes.to_vec(),
            };
            match client.fetch_token(request).await {
                Ok(resp) => Ok(Some(resp.into_inner()).filter(|r| !r.token.is_empty())),
                Err(status) if status.code() == Code::Unimplemented => Ok(None),
                Err(status) => {
                    Err(AuthCallError::FetchToken { host: host.to_owned(), realm: realm.to_owned(), status })
                }
            }
        })
        .await
}
