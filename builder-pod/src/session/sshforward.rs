//! `moby.sshforward.v1.SSH` on the client: its SSH agent, offered to a
//! build step as a unix socket (docs/protocol.md §4.5). Every connection
//! to the socket becomes one `ForwardAgent` stream carrying the agent
//! protocol's bytes both ways.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_proto::buildkit::moby::sshforward::v1::ssh_client::SshClient;
use kiln_proto::buildkit::moby::sshforward::v1::{BytesMessage, CheckAgentRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tracing::debug;

use super::{Group, Session, origin};

const FORWARD: &str = "/moby.sshforward.v1.SSH/ForwardAgent";
/// The agent id a step asks for travels in this header (docs/protocol.md §1).
const ID_HEADER: &str = "buildkit.ssh.id";

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("no SSH agent {id:?} was forwarded by the client (buildx build --ssh {id}=…)")]
    NotForwarded { id: String },
    #[error("checking SSH agent {id:?} with the client: {status}")]
    Check { id: String, status: tonic::Status },
    #[error("making the SSH agent socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
}

/// A socket that forwards to the client's agent while it lives.
#[derive(Debug)]
pub(crate) struct AgentSocket {
    pub path: PathBuf,
    accept: JoinHandle<()>,
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Whether the client forwards agent `id`.
pub(crate) async fn check(session: &Session, id: &str) -> Result<bool, SshError> {
    if !session.supports(FORWARD) {
        return Ok(false);
    }
    let mut client = SshClient::with_origin(session.channel(), origin());
    match client.check_agent(CheckAgentRequest { id: id.to_owned() }).await {
        Ok(_) => Ok(true),
        // The client answers an unknown id with a plain error (docs/protocol.md §4.5).
        Err(status) if status.message().contains("unset ssh forward key") => Ok(false),
        // buildx serves the SSH service always and answers NotFound for an agent it was not given.
        Err(status) if matches!(status.code(), tonic::Code::Unimplemented | tonic::Code::NotFound) => {
            Ok(false)
        }
        Err(status) => Err(SshError::Check { id: id.to_owned(), status }),
    }
}

/// The first session of the build that forwards agent `id`.
pub(crate) async fn find(sessions: &Group, id: &str) -> Result<Option<Arc<Session>>, SshError> {
    sessions.any(|session| async move { Ok(check(&session, id).await?.then_some(session)) }).await
}

/// Listens on `dir/agent.sock` (owned `uid:gid`, mode `mode`) and forwards
/// each connection to the client's agent `id`.
pub(crate) fn listen(
    session: Arc<Session>,
    id: &str,
    dir: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<AgentSocket, SshError> {
    let path = dir.join("agent.sock");
    let err = |source| SshError::Socket { path: path.clone(), source };
    let listener = UnixListener::bind(&path).map_err(err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(if mode == 0 { 0o600 } else { mode }))
        .map_err(err)?;
    chown(&path, Some(uid), Some(gid)).map_err(err)?;
    let id = id.to_owned();
    let accept = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (session, id) = (Arc::clone(&session), id.clone());
            tokio::spawn(async move {
                if let Err(e) = forward(&session, &id, conn).await {
                    debug!(error = %e, "ssh agent connection ended with an error");
                }
            });
        }
    });
    Ok(AgentSocket { path, accept })
}

/// Pumps one agent connection through a `ForwardAgent` stream until either side closes.
async fn forward(session: &Session, id: &str, conn: UnixStream) -> Result<(), tonic::Status> {
    let (mut reader, mut writer) = conn.into_split();
    let (tx, rx) = mpsc::channel::<BytesMessage>(16);
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Ok(v) = MetadataValue::try_from(id) {
        request.metadata_mut().insert(ID_HEADER, v);
    }
    let mut client = SshClient::with_origin(session.channel(), origin());
    let upload = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(BytesMessage { data: buf[..n].to_vec() }).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping the sender half-closes our side of the stream.
    });
    let mut responses = client.forward_agent(request).await?.into_inner();
    while let Some(msg) = responses.message().await? {
        if writer.write_all(&msg.data).await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
    upload.abort();
    Ok(())
}
