//! `moby.upload.v1.Upload/Pull` on the client: a build context the client
//! streams itself (buildx `build - < ctx.tar`, every bollard build), named
//! by the frontend attr `context` as `http://buildkit-session/<id>`
//! (buildkit-protocol.md §4.8).
//!
//! BuildKit fetches such a URL with its HTTP source, whose transport turns
//! the host `buildkit-session` into a Pull on the build's sessions
//! (`source/http/transport.go`). kilnd does the same as a source of its
//! own: one file in a new layer, keyed by its content digest.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use kiln_proto::buildkit::moby::upload::v1::BytesMessage;
use kiln_proto::buildkit::moby::upload::v1::upload_client::UploadClient;
use tonic::Code;
use tonic::metadata::MetadataValue;

use super::{SessionError, SessionManager, origin};
use crate::cache::CacheError;

/// The host that names a session upload instead of a server.
pub const SESSION_HOST: &str = "buildkit-session";
const METHOD: &str = "/moby.upload.v1.Upload/Pull";
/// How long each of the build's sessions is waited for (§3.3).
const SESSION_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("invalid {attr} {value:?} on {url}: {reason}")]
    InvalidAttr { url: String, attr: &'static str, value: String, reason: &'static str },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("no session of this build serves uploads, so {url} cannot be read")]
    NoSession { url: String },
    #[error("pulling {url} from the client: {status}")]
    Pull { url: String, status: tonic::Status },
    #[error("writing {url} to {}: {source}", path.display())]
    Write { url: String, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The path (`/<id>`) of a session upload URL; `None` for any other URL.
pub fn upload_path(url: &str) -> Option<&str> {
    let path = url.strip_prefix("http://")?.strip_prefix(SESSION_HOST)?;
    (path.len() > 1 && path.starts_with('/')).then_some(path)
}

/// Opens the Pull of `url` on the first of the build's sessions that serves
/// uploads; the client answers with the bytes, then ends the stream.
pub async fn open(
    sessions: &SessionManager,
    session_ids: &[String],
    url: &str,
) -> Result<tonic::Streaming<BytesMessage>, UploadError> {
    let path = upload_path(url).unwrap_or(url);
    for id in session_ids.iter().filter(|s| !s.is_empty()) {
        let session = match sessions.get(id, SESSION_WAIT).await {
            Ok(s) => s,
            Err(SessionError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        if !session.supports(METHOD) {
            continue;
        }
        let mut request = tonic::Request::new(futures::stream::empty::<BytesMessage>());
        // The client finds the upload by the URL's path (`session/upload/upload.go`).
        let md = request.metadata_mut();
        md.insert("urlpath", ascii(url, path)?);
        md.insert("urlhost", MetadataValue::from_static(SESSION_HOST));
        let mut client =
            UploadClient::with_origin(session.channel(), origin()).max_decoding_message_size(usize::MAX);
        match client.pull(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if status.code() == Code::Unimplemented => continue,
            Err(status) => return Err(UploadError::Pull { url: url.to_owned(), status }),
        }
    }
    Err(UploadError::NoSession { url: url.to_owned() })
}

fn ascii(url: &str, value: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, UploadError> {
    value.parse().map_err(|_| UploadError::InvalidAttr {
        url: url.to_owned(),
        attr: "url",
        value: value.to_owned(),
        reason: "the path is not printable ASCII",
    })
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
