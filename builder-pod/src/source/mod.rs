//! Sources of build inputs, one child per LLB source kind (BuildKit's
//! `source/`): container images, the client's local directories, HTTP(S)
//! downloads and git repositories; [`Sources`] dispatches a source op to
//! its kind, as BuildKit's source manager does.
//!
//! SourceOp: where a build's inputs come from. `docker-image://` resolves
//! to a manifest digest (the cache key) and, on a miss, pulls and unpacks
//! the layers, each layer unpacked once and shared by every image that has
//! it; `local://` transfers the client's directory (see `source::local`);
//! `http(s)://` downloads one file (`source::http`); `git://` resolves a ref
//! to a commit and checks it out on a miss (`source::git`).

pub(crate) mod git;
pub(crate) mod http;
pub(crate) mod image;
pub(crate) mod local;
pub(crate) mod upload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_proto::buildkit::pb;

use crate::cache::contenthash::HashCache;
use crate::cache::{CacheError, CacheManager, Snapshot};
use crate::content::{ContentError, ContentStore};
use crate::locks::KeyedLocks;
use crate::metrics::Metrics;
use crate::progress::{Progress, now};
use crate::session::Group;
use crate::session::secrets::{SecretError, get_secret};
use crate::session::sshforward::{self, AgentSocket, SshError};
use crate::snapshot::{SnapshotError, apply_layer, decompress};
use kiln_proto::buildkit::moby::buildkit::v1::VertexStatus;

use self::git::{GitError, GitSource};
use self::http::{HttpError, HttpSource};
use self::image::{ImageError, Platform, Reference, Registry, ResolvedImage};
use self::local::{LocalError, LocalSource, find_session, sync_dir, transfer};
use self::upload::{UploadError, UploadSource, Uploads};

/// A source's identity, found before the cache is consulted.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// What the content is: a manifest digest, a content hash.
    pub key: String,
    /// The snapshot, when resolving already produced it (a transferred local directory).
    pub snapshot: Option<Snapshot>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {0:?} is not supported by kilnd yet")]
    Unsupported(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("unpacking layer {digest}: {source}")]
    Unpack { digest: String, source: SnapshotError },
    #[error("unpacking layer {digest}: the task failed")]
    Join { digest: String },
    #[error("image {0} was not resolved before it was pulled")]
    NotResolved(String),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("making the HTTP client: {0}")]
    HttpClient(reqwest::Error),
    #[error("failed to retrieve HTTP auth secret {name}: the client does not provide it")]
    HttpAuthSecret { name: String },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Upload(#[from] UploadError),
}

/// Sources: the registry, the content store, and the client's directories.
#[derive(Debug)]
pub(crate) struct Sources {
    pub cache: Arc<CacheManager>,
    pub metrics: Arc<Metrics>,
    pub content: ContentStore,
    pub registry: Registry,
    hashes: Arc<HashCache>,
    /// Resolved images by the key their op was cached under, until pulled.
    /// Images resolved recently, by manifest digest, for the load that may
    /// follow. Loads read them without taking them out: two vertices (of one
    /// build or of concurrent builds) can resolve to the same image and load
    /// at the same time.
    resolved: Mutex<RecentImages>,
    /// One transfer at a time into each kept local directory; one unpack per
    /// layer; one download per URL; one checkout per git key.
    locks: KeyedLocks,
    /// Made on first use: most daemons never download a file.
    http: tokio::sync::OnceCell<reqwest::Client>,
    /// Resolved git refs by the key their op was cached under, until checked out.
    git: Mutex<HashMap<String, git::Resolved>>,
    /// Client uploads, pulled once per build.
    uploads: Uploads,
}

/// What a git command needs of the client while it runs: the forwarded SSH
/// agent's socket and the scratch directory holding it and known hosts.
struct GitAccess {
    access: git::Access,
    _agent: Option<AgentSocket>,
    _scratch: Option<tempfile::TempDir>,
}

/// The last `RECENT_IMAGES` resolved images, oldest dropped first.
#[derive(Debug, Default)]
struct RecentImages {
    images: HashMap<String, ResolvedImage>,
    order: std::collections::VecDeque<String>,
}

const RECENT_IMAGES: usize = 256;

impl RecentImages {
    fn insert(&mut self, key: String, image: ResolvedImage) {
        if self.images.insert(key.clone(), image).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > RECENT_IMAGES {
            if let Some(old) = self.order.pop_front() {
                self.images.remove(&old);
            }
        }
    }

    fn get(&self, key: &str) -> Option<ResolvedImage> {
        self.images.get(key).cloned()
    }
}

fn platform_of(op: &pb::Op) -> Platform {
    match &op.platform {
        Some(p) => Platform::new(&p.os, &p.architecture, Some(p.variant.as_str()).filter(|v| !v.is_empty())),
        None => Platform::linux_amd64(),
    }
}

impl Sources {
    pub(crate) fn new(
        cache: Arc<CacheManager>,
        content: ContentStore,
        registry: Registry,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cache,
            metrics,
            content,
            registry,
            hashes: Arc::default(),
            resolved: Mutex::new(RecentImages::default()),
            locks: KeyedLocks::default(),
            http: tokio::sync::OnceCell::new(),
            git: Mutex::new(HashMap::new()),
            uploads: Uploads::default(),
        }
    }

    /// File hashes kept across builds, for content keys.
    pub(crate) fn hashes(&self) -> &HashCache {
        &self.hashes
    }

    fn client(&self, sessions: &Group) -> image::RegistryClient {
        self.registry.client(Arc::new(sessions.clone()))
    }

    /// An image's manifest and config for one platform, with the build's credentials.
    pub(crate) async fn resolve_image(
        &self,
        reference: &Reference,
        platform: &Platform,
        sessions: &Group,
    ) -> Result<ResolvedImage, SourceError> {
        Ok(self.client(sessions).resolve(reference, platform).await?)
    }

    /// What the source op of vertex `digest` stands for; a local transfer
    /// reports its size on `progress`.
    pub(crate) async fn resolve(
        &self,
        digest: &str,
        op: &pb::Op,
        source: &pb::SourceOp,
        sessions: &Group,
        progress: &Progress,
    ) -> Result<Resolved, SourceError> {
        let id = source.identifier.as_str();
        if let Some(upload) = UploadSource::parse(id, &source.attrs) {
            let fetched = self.uploads.fetch(&upload?, &self.cache, sessions).await?;
            return Ok(Resolved {
                key: fetched.key,
                snapshot: Some(Snapshot::default().with(fetched.layer)),
            });
        }
        if let Some(reference) = id.strip_prefix("docker-image://") {
            let reference = Reference::parse(reference)?;
            let image = self.resolve_image(&reference, &platform_of(op), sessions).await?;
            let key = image.manifest_digest.to_string();
            self.resolved
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key.clone(), image);
            return Ok(Resolved { key, snapshot: None });
        }
        if let Some(name) = id.strip_prefix("local://") {
            let local = LocalSource::parse(name, &source.attrs)?;
            let session = find_session(sessions, &local).await?;
            let _one_at_a_time =
                self.locks.lock(&sync_dir(&self.cache, &local, &session.shared_key).to_string_lossy()).await;
            let started = now();
            let t = transfer(&self.cache, &session, &local, &self.hashes).await?;
            self.metrics.local_transfer(name, t.report.files_requested, t.report.bytes_received);
            // What buildx shows as "transferring context: 2.1kB done".
            let label = format!("transferring {name}:");
            progress.status(VertexStatus {
                id: label.clone(),
                vertex: digest.to_owned(),
                name: label,
                current: i64::try_from(t.report.bytes_received).unwrap_or(i64::MAX),
                timestamp: Some(now()),
                started: Some(started),
                completed: Some(now()),
                ..VertexStatus::default()
            });
            tracing::info!(
                local = %name,
                files = t.report.files_requested,
                bytes = t.report.bytes_received,
                layers = t.snapshot.layers.len(),
                "local source transferred"
            );
            return Ok(Resolved { key: t.content_key, snapshot: Some(t.snapshot) });
        }
        if id.starts_with("http://") || id.starts_with("https://") {
            let src = HttpSource::parse(id, &source.attrs)?;
            // A pinned file is known by its checksum: fetched only on a miss.
            if let Some(key) = src.pinned_key() {
                return Ok(Resolved { key, snapshot: None });
            }
            let fetched = self.download(&src, sessions).await?;
            return Ok(Resolved {
                key: fetched.key,
                snapshot: Some(Snapshot { layers: vec![fetched.layer] }),
            });
        }
        if let Some(rest) = id.strip_prefix("git://") {
            let src = GitSource::parse(rest, &source.attrs)?;
            let access = self.git_access(&src, sessions).await?;
            let resolved = git::resolve(&src, &access.access).await?;
            let key = resolved.key.clone();
            self.git.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key.clone(), resolved);
            return Ok(Resolved { key, snapshot: None });
        }
        Err(SourceError::Unsupported(id.to_owned()))
    }

    /// Downloads an HTTP source with the client's credentials for its host
    /// (`HTTP_AUTH_HEADER_<host>`, `HTTP_AUTH_TOKEN_<host>`) or the secret it names.
    async fn download(&self, src: &HttpSource, sessions: &Group) -> Result<http::Fetched, SourceError> {
        let client =
            self.http.get_or_try_init(|| async { http::client() }).await.map_err(SourceError::HttpClient)?;
        let authorization = match (&src.auth_header_secret, src.host()) {
            (Some(name), _) => match get_secret(sessions, name).await? {
                Some(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                None => return Err(SourceError::HttpAuthSecret { name: name.clone() }),
            },
            // The defaults are optional: a client without them downloads anonymously.
            (None, Some(host)) => {
                let secret = |name: String| async move { get_secret(sessions, &name).await.ok().flatten() };
                match secret(format!("HTTP_AUTH_TOKEN_{host}")).await {
                    Some(token) => Some(format!("Bearer {}", String::from_utf8_lossy(&token))),
                    None => secret(format!("HTTP_AUTH_HEADER_{host}"))
                        .await
                        .map(|v| String::from_utf8_lossy(&v).into_owned()),
                }
            }
            (None, None) => None,
        };
        let _one_at_a_time = self.locks.lock(&format!("http:{}", src.url)).await;
        Ok(http::fetch(&self.cache, client, src, authorization.as_deref()).await?)
    }

    /// Auth for an HTTP remote, the client's SSH agent for one that asks
    /// for it, and known hosts (`getAuthToken`, `mountSSHAuthSock`).
    async fn git_access(&self, src: &GitSource, sessions: &Group) -> Result<GitAccess, SourceError> {
        let mut access = git::Access::default();
        if src.is_http() {
            for (name, token) in src.auth_secret_names() {
                if let Some(v) = get_secret(sessions, &name).await? {
                    access.authorization = Some(git::authorization(&v, token));
                    break;
                }
            }
        }
        let mut agent = None;
        let scratch = if src.mount_ssh_sock.is_empty() && src.known_ssh_hosts.is_empty() {
            None
        } else {
            Some(self.cache.temp_dir("git-ssh-")?)
        };
        if let Some(dir) = &scratch {
            access.scratch = Some(dir.path().to_owned());
        }
        if let (false, Some(dir)) = (src.mount_ssh_sock.is_empty(), &scratch) {
            let id = src.mount_ssh_sock.clone();
            if let Some(session) = sshforward::find(sessions, &id).await? {
                let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
                agent = Some(sshforward::listen(session, &id, dir.path(), uid, gid, 0o600)?);
            }
            match &agent {
                Some(socket) => access.ssh_auth_sock = Some(socket.path.clone()),
                None => return Err(SshError::NotForwarded { id }.into()),
            }
        }
        Ok(GitAccess { access, _agent: agent, _scratch: scratch })
    }

    /// The snapshot of a source whose cache record was missing.
    pub(crate) async fn load(
        &self,
        resolved: Option<Resolved>,
        source: &pb::SourceOp,
        sessions: &Group,
    ) -> Result<Snapshot, SourceError> {
        let resolved = resolved.ok_or_else(|| SourceError::NotResolved(source.identifier.clone()))?;
        if let Some(snapshot) = resolved.snapshot {
            return Ok(snapshot);
        }
        let id = source.identifier.as_str();
        if id.starts_with("http://") || id.starts_with("https://") {
            let src = HttpSource::parse(id, &source.attrs)?;
            let fetched = self.download(&src, sessions).await?;
            return Ok(Snapshot { layers: vec![fetched.layer] });
        }
        if let Some(rest) = id.strip_prefix("git://") {
            let src = GitSource::parse(rest, &source.attrs)?;
            let _once = self.locks.lock(&format!("git:{}:{}", src.remote, resolved.key)).await;
            let access = self.git_access(&src, sessions).await?;
            let known =
                self.git.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&resolved.key);
            // Another build may have taken the resolution; resolving again is
            // cheap, but must still name the commit the key stands for.
            let found = match known {
                Some(r) => r,
                None => Some(git::resolve(&src, &access.access).await?)
                    .filter(|r| r.key == resolved.key)
                    .ok_or_else(|| SourceError::NotResolved(src.display_remote()))?,
            };
            return Ok(Snapshot {
                layers: vec![git::checkout(&self.cache, &src, &found, &access.access).await?],
            });
        }
        let image = self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&resolved.key)
            .ok_or_else(|| SourceError::NotResolved(source.identifier.clone()))?;
        self.client(sessions).pull(&image, &self.content).await?;
        let mut snapshot = Snapshot::default();
        for layer in image.layers() {
            snapshot.layers.push(self.unpacked(&layer.digest.to_string(), &layer.media_type).await?);
        }
        Ok(snapshot)
    }

    /// The layer directory of a layer blob, unpacked on first use.
    async fn unpacked(&self, digest: &str, media_type: &str) -> Result<String, SourceError> {
        let key = format!("layer:{digest}");
        let _once = self.locks.lock(&key).await;
        if let Some(record) = self.cache.get(&key)?
            && let Some(id) = record.outputs.first().and_then(|s| s.layers.first())
        {
            return Ok(id.clone());
        }
        let layer = self.cache.new_layer()?;
        let blob =
            self.content.blob_path(&digest.parse().map_err(|_| SourceError::NotResolved(digest.to_owned()))?);
        let (dir, media_type, d) = (layer.path().to_owned(), media_type.to_owned(), digest.to_owned());
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&blob)
                .map_err(|source| SnapshotError::ReadTree { path: blob.clone(), source })?;
            apply_layer(decompress(std::io::BufReader::new(file), Some(&media_type))?, &dir)
        })
        .await
        .map_err(|_| SourceError::Join { digest: d.clone() })?
        .map_err(|source| SourceError::Unpack { digest: d, source })?;
        let id = self.cache.commit_layer(layer)?;
        self.cache.put(&key, vec![Snapshot { layers: vec![id.clone()] }], digest)?;
        Ok(id)
    }
}
