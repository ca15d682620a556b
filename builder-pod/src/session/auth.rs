//! `moby.filesync.v1.Auth` on the client: registry logins come from the
//! client's docker config, asked for only when a registry challenges
//! (docs/protocol.md §4.4). For a token registry the client is first asked
//! to fetch the token itself (`Auth/FetchToken`, as BuildKit does), so its
//! secrets stay with it; a client without it is asked for credentials and
//! the daemon fetches the token (`source::image` runs that flow).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_proto::buildkit::moby::filesync::v1::auth_client::AuthClient;
use kiln_proto::buildkit::moby::filesync::v1::{CredentialsRequest, FetchTokenRequest};
use tonic::Code;

use super::{SessionManager, origin};
use crate::source::image::{AuthError, ClientToken, Credentials, RegistryAuth};

const METHOD: &str = "/moby.filesync.v1.Auth/Credentials";
const FETCH_TOKEN: &str = "/moby.filesync.v1.Auth/FetchToken";
/// The client id BuildKit sends with `FetchToken`.
const CLIENT_ID: &str = "buildkit-client";
const SESSION_WAIT: Duration = Duration::from_secs(5);

/// Credentials from the build's sessions, first session first.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    pub sessions: Arc<SessionManager>,
    pub session_ids: Vec<String>,
}

#[async_trait]
impl RegistryAuth for SessionAuth {
    async fn credentials(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        for id in self.session_ids.iter().filter(|s| !s.is_empty()) {
            let Ok(session) = self.sessions.get(id, SESSION_WAIT).await else { continue };
            if !session.supports(METHOD) {
                continue;
            }
            let mut client = AuthClient::with_origin(session.channel(), origin());
            match client.credentials(CredentialsRequest { host: host.to_owned() }).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    if resp.username.is_empty() && resp.secret.is_empty() {
                        continue;
                    }
                    return Ok(Some(Credentials { username: resp.username, secret: resp.secret }));
                }
                Err(status) if status.code() == Code::Unimplemented => continue,
                Err(status) => {
                    return Err(format!("asking the client for credentials of {host}: {status}").into());
                }
            }
        }
        Ok(None)
    }

    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Option<ClientToken>, AuthError> {
        for id in self.session_ids.iter().filter(|s| !s.is_empty()) {
            let Ok(session) = self.sessions.get(id, SESSION_WAIT).await else { continue };
            if !session.supports(FETCH_TOKEN) {
                continue;
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
                Ok(resp) => {
                    let resp = resp.into_inner();
                    if resp.token.is_empty() {
                        continue;
                    }
                    let expires_in = u64::try_from(resp.expires_in).ok().filter(|s| *s > 0);
                    return Ok(Some(ClientToken { token: resp.token, expires_in }));
                }
                Err(status) if status.code() == Code::Unimplemented => continue,
                Err(status) => {
                    return Err(format!(
                        "the client could not fetch a token for {host} from {realm}: {status}"
                    )
                    .into());
                }
            }
        }
        Ok(None)
    }
}
