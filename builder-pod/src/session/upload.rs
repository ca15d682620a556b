//! `moby.upload.v1.Upload/Pull` on the client: a build context the client
//! streams itself (buildx `build - < ctx.tar`, every bollard build), named
//! by the frontend attr `context` as `http://buildkit-session/<id>`
//! (docs/protocol.md §4.6). BuildKit's HTTP source turns the host
//! `buildkit-session` into a Pull on the build's sessions
//! (`source/http/transport.go`); `source::upload` is kilnd's counterpart.

use kiln_proto::buildkit::moby::upload::v1::BytesMessage;
use kiln_proto::buildkit::moby::upload::v1::upload_client::UploadClient;
use tonic::Code;
use tonic::metadata::MetadataValue;

use super::{Group, origin};

/// The host that names a session upload instead of a server.
pub(crate) const SESSION_HOST: &str = "buildkit-session";
const METHOD: &str = "/moby.upload.v1.Upload/Pull";

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid url {path:?} on {url}: the path is not printable ASCII")]
    InvalidPath { url: String, path: String },
    #[error("no session of this build serves uploads, so {url} cannot be read")]
    NoSession { url: String },
    #[error("pulling {url} from the client: {status}")]
    Pull { url: String, status: tonic::Status },
}

/// The path (`/<id>`) of a session upload URL; `None` for any other URL.
pub(crate) fn upload_path(url: &str) -> Option<&str> {
    let path = url.strip_prefix("http://")?.strip_prefix(SESSION_HOST)?;
    (path.len() > 1 && path.starts_with('/')).then_some(path)
}

/// The bytes of one upload as the client sends them.
#[derive(Debug)]
pub(crate) struct Pull {
    url: String,
    stream: tonic::Streaming<BytesMessage>,
}

impl Pull {
    /// The next chunk; `None` once the client has sent everything.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Vec<u8>>, PullError> {
        let message = self
            .stream
            .message()
            .await
            .map_err(|status| PullError::Pull { url: self.url.clone(), status })?;
        Ok(message.map(|BytesMessage { data }| data))
    }
}

/// Opens the Pull of `url` on the first of the build's sessions that serves
/// uploads; the client answers with the bytes, then ends the stream.
pub(crate) async fn open(sessions: &Group, url: &str) -> Result<Pull, PullError> {
    let path = upload_path(url).unwrap_or(url);
    let stream = sessions
        .any(|session| async move {
            if !session.supports(METHOD) {
                return Ok(None);
            }
            let mut request = tonic::Request::new(futures::stream::empty::<BytesMessage>());
            // The client finds the upload by the URL's path (`session/upload/upload.go`).
            let md = request.metadata_mut();
            let urlpath = path
                .parse()
                .map_err(|_| PullError::InvalidPath { url: url.to_owned(), path: path.to_owned() })?;
            md.insert("urlpath", urlpath);
            md.insert("urlhost", MetadataValue::from_static(SESSION_HOST));
            let mut client =
                UploadClient::with_origin(session.channel(), origin()).max_decoding_message_size(usize::MAX);
            match client.pull(request).await {
                Ok(response) => Ok(Some(response.into_inner())),
                Err(status) if status.code() == Code::Unimplemented => Ok(None),
                Err(status) => Err(PullError::Pull { url: url.to_owned(), status }),
            }
        })
        .await?;
    let stream = stream.ok_or_else(|| PullError::NoSession { url: url.to_owned() })?;
    Ok(Pull { url: url.to_owned(), stream })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_session_urls_are_uploads() {
        assert_eq!(upload_path("http://buildkit-session/abc123"), Some("/abc123"));
        assert_eq!(upload_path("http://buildkit-session/"), None);
        assert_eq!(upload_path("http://buildkit-session"), None);
        assert_eq!(upload_path("https://buildkit-session/abc"), None);
        assert_eq!(upload_path("http://buildkit-sessions/abc"), None);
        assert_eq!(upload_path("http://example.com/abc"), None);
    }
}
