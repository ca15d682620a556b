//! SourceOp: where a build's inputs come from. `docker-image://` resolves
//! to a manifest digest (the cache key) and, on a miss, pulls and unpacks
//! the layers, each layer unpacked once and shared by every image that has
//! it; `local://` transfers the client's directory (see `source::local`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_proto::buildkit::pb;

use super::KeyedLocks;
use crate::cache::contenthash::HashCache;
use crate::cache::{CacheError, CacheManager, Snapshot};
use crate::content::{ContentError, ContentStore};
use crate::metrics::Metrics;
use crate::session::SessionManager;
use crate::session::auth::SessionAuth;
use crate::session::upload::{UploadError, UploadSource, Uploads};
use crate::snapshot::{SnapshotError, apply_layer, decompress};
use crate::solver::progress::now;
use crate::solver::scheduler::{BuildContext, Resolved};
use crate::source::image::{ImageError, Platform, Reference, Registry, ResolvedImage};
use crate::source::local::{LocalError, LocalSource, find_session, sync_dir, transfer};
use kiln_proto::buildkit::moby::buildkit::v1::VertexStatus;

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
    Upload(#[from] UploadError),
}

/// Sources: the registry, the content store, and the client's directories.
#[derive(Debug)]
pub struct Sources {
    pub cache: Arc<CacheManager>,
    pub metrics: Arc<Metrics>,
    pub content: ContentStore,
    pub registry: Registry,
    pub sessions: Arc<SessionManager>,
    hashes: HashCache,
    /// Resolved images by the key their op was cached under, until pulled.
    resolved: Mutex<HashMap<String, ResolvedImage>>,
    /// One transfer at a time into each kept local directory; one unpack per layer.
    locks: KeyedLocks,
    /// Client uploads, pulled once per build.
    uploads: Uploads,
}

fn platform_of(op: &pb::Op) -> Platform {
    match &op.platform {
        Some(p) => Platform::new(&p.os, &p.architecture, Some(p.variant.as_str()).filter(|v| !v.is_empty())),
        None => Platform::linux_amd64(),
    }
}

impl Sources {
    pub fn new(
        cache: Arc<CacheManager>,
        content: ContentStore,
        registry: Registry,
        sessions: Arc<SessionManager>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cache,
            metrics,
            content,
            registry,
            sessions,
            hashes: HashCache::default(),
            resolved: Mutex::new(HashMap::new()),
            locks: KeyedLocks::default(),
            uploads: Uploads::default(),
        }
    }

    /// File hashes kept across builds, for content keys.
    pub fn hashes(&self) -> &HashCache {
        &self.hashes
    }

    fn client(&self, ctx: &BuildContext) -> crate::source::image::RegistryClient {
        self.registry.client(Arc::new(SessionAuth {
            sessions: Arc::clone(&self.sessions),
            session_ids: ctx.session_ids.clone(),
        }))
    }

    /// An image's manifest and config for one platform, with the build's credentials.
    pub async fn resolve_image(
        &self,
        reference: &Reference,
        platform: &Platform,
        ctx: &BuildContext,
    ) -> Result<ResolvedImage, SourceError> {
        Ok(self.client(ctx).resolve(reference, platform).await?)
    }

    pub async fn resolve(
        &self,
        digest: &str,
        op: &pb::Op,
        source: &pb::SourceOp,
        ctx: &BuildContext,
    ) -> Result<Resolved, SourceError> {
        let id = source.identifier.as_str();
        if let Some(upload) = UploadSource::parse(id, &source.attrs) {
            let fetched = self.uploads.fetch(&upload?, &self.cache, &self.sessions, &ctx.session_ids).await?;
            return Ok(Resolved {
                key: fetched.key,
                snapshot: Some(Snapshot::default().with(fetched.layer)),
            });
        }
        if let Some(reference) = id.strip_prefix("docker-image://") {
            let reference = Reference::parse(reference)?;
            let image = self.resolve_image(&reference, &platform_of(op), ctx).await?;
            let key = image.manifest_digest.to_string();
            self.resolved
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key.clone(), image);
            return Ok(Resolved { key, snapshot: None });
        }
        if let Some(name) = id.strip_prefix("local://") {
            let local = LocalSource::parse(name, &source.attrs)?;
            let session = find_session(&self.sessions, &ctx.session_ids, &local).await?;
            let _one_at_a_time =
                self.locks.lock(&sync_dir(&self.cache, &local, &session.shared_key).to_string_lossy()).await;
            let started = now();
            let t = transfer(&self.cache, &session, &local, &self.hashes).await?;
            self.metrics.local_transfer(name, t.report.files_requested, t.report.bytes_received);
            // What buildx shows as "transferring context: 2.1kB done".
            let label = format!("transferring {name}:");
            ctx.job.progress.status(VertexStatus {
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
                "local source transferred"
            );
            let snapshot = Snapshot::default().with(t.layer);
            return Ok(Resolved { key: t.content_key, snapshot: Some(snapshot) });
        }
        Err(SourceError::Unsupported(id.to_owned()))
    }

    /// The snapshot of a source whose cache record was missing.
    pub async fn load(
        &self,
        resolved: Option<Resolved>,
        source: &pb::SourceOp,
        ctx: &BuildContext,
    ) -> Result<Snapshot, SourceError> {
        let resolved = resolved.ok_or_else(|| SourceError::NotResolved(source.identifier.clone()))?;
        if let Some(snapshot) = resolved.snapshot {
            return Ok(snapshot);
        }
        let image = self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&resolved.key)
            .ok_or_else(|| SourceError::NotResolved(source.identifier.clone()))?;
        self.client(ctx).pull(&image, &self.content).await?;
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
