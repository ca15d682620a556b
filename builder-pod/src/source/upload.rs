//! A build context the client streams itself (`http://buildkit-session/<id>`,
//! see `session::upload`) as an LLB source: one file in a new layer, keyed
//! by its content digest, as BuildKit's HTTP source stores a download.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::cache::{CacheError, CacheManager};
use crate::session::Group;
use crate::session::upload::{PullError, open, upload_path};
use crate::util::strconv;

/// The mode of the file when the source names none (upstream `source/http`).
const DEFAULT_PERM: u32 = 0o600;

/// LLB attrs of an HTTP source (`solver/pb/attr.go`).
const ATTR_FILENAME: &str = "http.filename";
const ATTR_PERM: &str = "http.perm";
const ATTR_UID: &str = "http.uid";
const ATTR_GID: &str = "http.gid";

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("invalid {attr} {value:?} on {url}: {reason}")]
    InvalidAttr { url: String, attr: &'static str, value: String, reason: &'static str },
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("writing {url} to {}: {source}", path.display())]
    Write { url: String, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// A session upload as an LLB source: the URL and how to store the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UploadSource {
    pub url: String,
    /// A single path component.
    pub filename: String,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What [`UploadSource::fetch`] made: a committed layer and its cache key.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub key: String,
    pub layer: String,
}

impl UploadSource {
    /// The source an LLB identifier and its attrs describe, when the
    /// identifier is a session upload URL.
    pub(crate) fn parse(
        identifier: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Option<Result<Self, UploadError>> {
        let path = upload_path(identifier)?;
        Some(Self::from_attrs(identifier, path, attrs))
    }

    fn from_attrs(url: &str, path: &str, attrs: &BTreeMap<String, String>) -> Result<Self, UploadError> {
        let invalid = |attr, value: &str, reason| UploadError::InvalidAttr {
            url: url.to_owned(),
            attr,
            value: value.to_owned(),
            reason,
        };
        // Upstream: the attr, else the URL path's last element.
        let filename = match attrs.get(ATTR_FILENAME).filter(|f| !f.is_empty()) {
            Some(name) => {
                let base = Path::new(name).file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if base.is_empty() || base == ".." {
                    return Err(invalid(ATTR_FILENAME, name, "it names no file"));
                }
                base.to_owned()
            }
            None => path.rsplit('/').next().unwrap_or(path).to_owned(),
        };
        // Upstream reads these with `strconv.ParseInt(v, 0, 64)`, as the
        // HTTP source does (`source::http`).
        let number = |v: &str| strconv::parse_int(v, 0, 64).ok().and_then(|n| u32::try_from(n).ok());
        let perm = match attrs.get(ATTR_PERM) {
            Some(v) => number(v)
                .filter(|p| *p <= 0o7777)
                .ok_or_else(|| invalid(ATTR_PERM, v, "expected a mode such as 0644"))?,
            None => 0,
        };
        let id = |attr| match attrs.get(attr) {
            Some(v) => number(v).ok_or_else(|| invalid(attr, v, "expected a numeric id")),
            None => Ok(0),
        };
        Ok(Self {
            url: url.to_owned(),
            filename,
            perm: if perm == 0 { DEFAULT_PERM } else { perm },
            uid: id(ATTR_UID)?,
            gid: id(ATTR_GID)?,
        })
    }

    /// Pulls the upload into a new layer as one file with the source's mode
    /// and owner and mtime 0, as upstream's HTTP source stores a download
    /// without `Last-Modified`.
    pub(crate) async fn fetch(&self, cache: &CacheManager, sessions: &Group) -> Result<Fetched, UploadError> {
        let mut pull = open(sessions, &self.url).await?;
        let layer = cache.new_layer()?;
        let path = layer.path().join(&self.filename);
        let write_err = |source| UploadError::Write { url: self.url.clone(), path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.perm)
            .open(&path)
            .map_err(write_err)?;
        let mut hash = Sha256::new();
        while let Some(data) = pull.chunk().await? {
            hash.update(&data);
            // Chunks are at most a few MiB; a blocking write of one is short.
            file.write_all(&data).map_err(write_err)?;
        }
        // The umask narrowed the mode at creation.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(self.perm)).map_err(write_err)?;
        file.set_modified(SystemTime::UNIX_EPOCH).map_err(write_err)?;
        drop(file);
        if self.uid != 0 || self.gid != 0 {
            std::os::unix::fs::chown(&path, Some(self.uid), Some(self.gid)).map_err(write_err)?;
        }
        let digest = hex::encode(hash.finalize());
        let layer = cache.commit_layer(layer)?;
        Ok(Fetched {
            key: format!(
                "session-upload:{}:{:o}:{}:{}:sha256:{digest}",
                self.filename, self.perm, self.uid, self.gid
            ),
            layer,
        })
    }
}

/// How many fetched uploads [`Uploads`] remembers; each serves one build.
const REMEMBERED: usize = 64;

/// Uploads already fetched, by URL. The client hands out each upload once
/// (its provider forgets the id on the first Pull) while a build resolves
/// the source in every solve that reaches it, so later solves reuse the
/// first fetch.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    fetched: Mutex<Remembered>,
}

/// One cell per URL, and the URLs oldest first.
type Remembered = (HashMap<String, Arc<tokio::sync::OnceCell<Fetched>>>, VecDeque<String>);

impl Uploads {
    /// The fetch of `source`, made at most once; a failed fetch is not kept.
    pub(crate) async fn fetch(
        &self,
        source: &UploadSource,
        cache: &CacheManager,
        sessions: &Group,
    ) -> Result<Fetched, UploadError> {
        let cell = {
            let mut guard = self.fetched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (cells, order) = &mut *guard;
            match cells.get(&source.url) {
                Some(cell) => Arc::clone(cell),
                None => {
                    if order.len() >= REMEMBERED
                        && let Some(oldest) = order.pop_front()
                    {
                        cells.remove(&oldest);
                    }
                    order.push_back(source.url.clone());
                    Arc::clone(cells.entry(source.url.clone()).or_default())
                }
            }
        };
        cell.get_or_try_init(|| source.fetch(cache, sessions)).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionManager;

    #[test]
    fn only_session_urls_are_uploads() {
        assert!(UploadSource::parse("https://example.com/x", &BTreeMap::new()).is_none());
    }
    #[test]
    fn attrs_set_the_file_name_mode_and_owner() {
        let url = "http://buildkit-session/up1";
        let plain = UploadSource::parse(url, &BTreeMap::new()).unwrap().unwrap();
        assert_eq!((plain.filename.as_str(), plain.perm, plain.uid, plain.gid), ("up1", 0o600, 0, 0));
        let attrs = BTreeMap::from([
            (ATTR_FILENAME.to_owned(), "context".to_owned()),
            (ATTR_PERM.to_owned(), "0644".to_owned()),
            (ATTR_UID.to_owned(), "1000".to_owned()),
            (ATTR_GID.to_owned(), "50".to_owned()),
        ]);
        let set = UploadSource::parse(url, &attrs).unwrap().unwrap();
        assert_eq!((set.filename.as_str(), set.perm, set.uid, set.gid), ("context", 0o644, 1000, 50));
        // A path-like name keeps only its last element, so it stays in the layer.
        let attrs = BTreeMap::from([(ATTR_FILENAME.to_owned(), "../../etc/ctx".to_owned())]);
        assert_eq!(UploadSource::parse(url, &attrs).unwrap().unwrap().filename, "ctx");
    }

    #[test]
    fn bad_attrs_are_named() {
        let url = "http://buildkit-session/up1";
        for (attr, value) in
            [(ATTR_PERM, "rw-r--r--"), (ATTR_PERM, "0999"), (ATTR_UID, "root"), (ATTR_FILENAME, "..")]
        {
            let attrs = BTreeMap::from([(attr.to_owned(), value.to_owned())]);
            let err = UploadSource::parse(url, &attrs).unwrap().unwrap_err().to_string();
            assert!(err.contains(attr) && err.contains(value), "{err}");
        }
    }

    #[test]
    fn modes_and_ids_parse_as_go_integers() {
        let url = "http://buildkit-session/up1";
        let parsed = |attr: &str, value: &str| {
            let attrs = BTreeMap::from([(attr.to_owned(), value.to_owned())]);
            UploadSource::parse(url, &attrs).unwrap().ok()
        };
        for (value, mode) in [("0644", 0o644), ("0o755", 0o755), ("420", 420), ("0x1ff", 0o777), ("0b111", 7)]
        {
            assert_eq!(parsed(ATTR_PERM, value).map(|s| s.perm), Some(mode), "{value}");
        }
        // 0 means the default mode.
        assert_eq!(parsed(ATTR_PERM, "0").map(|s| s.perm), Some(DEFAULT_PERM));
        for value in ["08", "0o10000", "-1"] {
            assert!(parsed(ATTR_PERM, value).is_none(), "{value}");
        }
        assert_eq!(parsed(ATTR_UID, "1_000").map(|s| s.uid), Some(1000));
        assert_eq!(parsed(ATTR_GID, "0x10").map(|s| s.gid), Some(16));
        assert!(parsed(ATTR_UID, "4294967296").is_none());
    }

    /// Plays the client: serves one upload (in `chunks`) on a session
    /// registered with `manager`, recording the `urlpath` it was asked for.
    mod client {
        use std::sync::{Arc, Mutex};

        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::service::TowerToHyperService;
        use kiln_proto::buildkit::moby::upload::v1::BytesMessage;
        use kiln_proto::buildkit::moby::upload::v1::upload_server::{Upload, UploadServer};
        use tokio::sync::mpsc;
        use tokio_stream::wrappers::ReceiverStream;
        use tonic::metadata::{MetadataMap, MetadataValue};

        use super::*;
        use crate::session::tunnel::Tunnel;
        use crate::session::{HEADER_METHOD, HEADER_UUID};

        pub(super) struct Uploader {
            pub chunks: Vec<Vec<u8>>,
            pub asked: Arc<Mutex<Vec<String>>>,
        }

        #[tonic::async_trait]
        impl Upload for Uploader {
            type PullStream = futures::stream::Iter<std::vec::IntoIter<Result<BytesMessage, tonic::Status>>>;

            async fn pull(
                &self,
                request: tonic::Request<tonic::Streaming<BytesMessage>>,
            ) -> Result<tonic::Response<Self::PullStream>, tonic::Status> {
                let path = request.metadata().get("urlpath").unwrap().to_str().unwrap().to_owned();
                self.asked.lock().unwrap().push(path);
                let messages: Vec<_> =
                    self.chunks.iter().map(|c| Ok(BytesMessage { data: c.clone() })).collect();
                Ok(tonic::Response::new(futures::stream::iter(messages)))
            }
        }

        pub(super) async fn serve(manager: &Arc<SessionManager>, id: &str, uploader: Uploader) {
            let mut md = MetadataMap::new();
            md.insert(HEADER_UUID, id.parse().unwrap());
            // bollard lower-cases method names; the daemon must not care.
            md.append(HEADER_METHOD, MetadataValue::from_static("/moby.upload.v1.Upload/pull"));
            let (to_daemon, from_client) = mpsc::channel(64);
            let from_daemon = manager.handle(&md, ReceiverStream::new(from_client)).await.unwrap();
            let routes = tonic::service::Routes::new(UploadServer::new(uploader));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(
                        TokioIo::new(Tunnel::new(from_daemon, to_daemon)),
                        TowerToHyperService::new(routes),
                    )
                    .await;
            });
        }
    }

    #[tokio::test]
    async fn an_upload_becomes_one_file_in_a_layer_keyed_by_its_content() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let manager = SessionManager::new();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let chunks = vec![b"FROM scratch\n".to_vec(), Vec::new(), b"COPY . /\n".to_vec()];
        client::serve(&manager, "s1", client::Uploader { chunks, asked: asked.clone() }).await;

        let attrs = BTreeMap::from([(ATTR_FILENAME.to_owned(), "context".to_owned())]);
        let source = UploadSource::parse("http://buildkit-session/up1", &attrs).unwrap().unwrap();
        let sessions = Group::new(Arc::clone(&manager), [String::new(), "s1".to_owned()]);
        let fetched = source.fetch(&cache, &sessions).await.unwrap();
        assert_eq!(asked.lock().unwrap().as_slice(), ["/up1"]);

        let file = cache.layer_path(&fetched.layer).join("context");
        assert_eq!(std::fs::read(&file).unwrap(), b"FROM scratch\nCOPY . /\n");
        let meta = std::fs::metadata(&file).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o600, 0));
        let digest = hex::encode(Sha256::digest(b"FROM scratch\nCOPY . /\n"));
        assert_eq!(fetched.key, format!("session-upload:context:600:0:0:sha256:{digest}"));
    }

    #[tokio::test]
    async fn a_build_that_resolves_an_upload_twice_pulls_it_once() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let manager = SessionManager::new();
        let asked = Arc::new(Mutex::new(Vec::new()));
        client::serve(
            &manager,
            "s1",
            client::Uploader { chunks: vec![b"tar".to_vec()], asked: asked.clone() },
        )
        .await;
        let uploads = Uploads::default();
        let source = UploadSource::parse("http://buildkit-session/once", &BTreeMap::new()).unwrap().unwrap();
        let sessions = Group::new(Arc::clone(&manager), ["s1".to_owned()]);
        let first = uploads.fetch(&source, &cache, &sessions).await.unwrap();
        let second = uploads.fetch(&source, &cache, &sessions).await.unwrap();
        assert_eq!((first.layer, first.key), (second.layer, second.key));
        assert_eq!(asked.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_upload_nobody_serves_is_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let source = UploadSource::parse("http://buildkit-session/up1", &BTreeMap::new()).unwrap().unwrap();
        let sessions = Group::new(SessionManager::new(), [String::new()]);
        let err = source.fetch(&cache, &sessions).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no session of this build serves uploads, so http://buildkit-session/up1 cannot be read"
        );
    }
}
