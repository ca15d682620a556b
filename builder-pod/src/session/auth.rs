//! `moby.filesync.v1.Auth/Credentials` on the client: registry logins come
//! from the client's docker config, asked for only when a registry
//! challenges (buildkit-protocol.md §4.6). The token flow through the client
//! (`FetchToken`) is not used: the daemon fetches tokens itself with the
//! credentials, which upstream also accepts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_proto::buildkit::moby::filesync::v1::CredentialsRequest;
use kiln_proto::buildkit::moby::filesync::v1::auth_client::AuthClient;
use tonic::Code;

use super::{SessionManager, origin};
use crate::source::image::{AuthError, Credentials, RegistryAuth};

const METHOD: &str = "/moby.filesync.v1.Auth/Credentials";
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
}
