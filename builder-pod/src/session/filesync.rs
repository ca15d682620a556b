//! `moby.filesync.v1.FileSync/DiffCopy` on the client: the upload of a
//! local directory (build context, Dockerfile) into the daemon
//! (docs/protocol.md §4.1). The client is the fsutil sender.

use std::path::Path;

use tokio::sync::mpsc;
use tonic::Request;
use tonic::metadata::{MetadataMap, MetadataValue};

use super::filesend::streaming;
use super::{Session, origin};
use crate::fsutil::{self, FsutilError, ReceiveOptions, ReceiveReport};
use kiln_proto::buildkit::moby::filesync::packet::file_sync_client::FileSyncClient;

const METHOD: &str = "/moby.filesync.v1.FileSync/DiffCopy";

#[derive(Debug, thiserror::Error)]
pub enum FileSyncError {
    #[error("the client's session offers no local files (no FileSync service)")]
    Unsupported,
    #[error("transferring local {name:?} from the client: {source}")]
    Transfer { name: String, source: FsutilError },
}

/// Which local directory to fetch and what of it.
#[derive(Debug, Default, Clone)]
pub(crate) struct SyncRequest {
    pub dir_name: String,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub follow_paths: Vec<String>,
}

/// Pattern lists travel as one metadata value per pattern; if any is not
/// ASCII, all are URL-escaped and `<key>-encoded: 1` says so (docs/protocol.md §4.1).
fn add_list(md: &mut MetadataMap, key: &'static str, values: &[String]) {
    let encode = values.iter().any(|v| !v.is_ascii() || v.bytes().any(|b| b < 0x20));
    for v in values {
        let v = if encode { query_escape(v) } else { v.clone() };
        if let Ok(v) = MetadataValue::try_from(v.as_str()) {
            md.append(key, v);
        }
    }
    if encode && !values.is_empty() {
        let encoded_key = match key {
            "include-patterns" => "include-patterns-encoded",
            "exclude-patterns" => "exclude-patterns-encoded",
            _ => "followpaths-encoded",
        };
        md.insert(encoded_key, MetadataValue::from_static("1"));
    }
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Brings the client's directory `req.dir_name` into `dest`, transferring
/// only what differs from what `dest` already holds.
pub(crate) async fn sync(
    session: &Session,
    req: &SyncRequest,
    dest: &Path,
    opts: ReceiveOptions,
) -> Result<ReceiveReport, FileSyncError> {
    if !session.supports(METHOD) {
        return Err(FileSyncError::Unsupported);
    }
    let (tx, rx) = mpsc::channel(64);
    let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let md = request.metadata_mut();
    if let Ok(name) = MetadataValue::try_from(req.dir_name.as_str()) {
        md.insert("dir-name", name);
    }
    add_list(md, "include-patterns", &req.include_patterns);
    add_list(md, "exclude-patterns", &req.exclude_patterns);
    add_list(md, "followpaths", &req.follow_paths);
    let mut client = FileSyncClient::with_origin(session.channel(), origin())
        .max_decoding_message_size(super::MAX_MESSAGE_SIZE);
    let incoming = streaming(async move { client.diff_copy(request).await });
    fsutil::receive(dest, incoming, tx, opts)
        .await
        .map_err(|source| FileSyncError::Transfer { name: req.dir_name.clone(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_sent_plain_or_all_escaped() {
        let mut md = MetadataMap::new();
        add_list(&mut md, "exclude-patterns", &["*.log".into(), "tmp/".into()]);
        let got: Vec<_> =
            md.get_all("exclude-patterns").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(got, ["*.log", "tmp/"]);
        assert!(md.get("exclude-patterns-encoded").is_none());

        let mut md = MetadataMap::new();
        add_list(&mut md, "followpaths", &["héllo.txt".into(), "a b".into()]);
        let got: Vec<_> = md.get_all("followpaths").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(got, ["h%C3%A9llo.txt", "a+b"]);
        assert_eq!(md.get("followpaths-encoded").unwrap(), "1");
    }
}
