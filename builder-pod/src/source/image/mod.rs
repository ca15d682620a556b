//! Image sources: resolving a reference to one platform's manifest and
//! config, pulling its layers into the content store, and pushing images
//! for the exporter.
//!
//! Registry access is a thin client of our own on `reqwest` rather than
//! `oci-client` 0.18, which would also do. The reasons:
//! - credentials come from the build's session and are asked for only when a
//!   registry challenges, per host, through [`RegistryAuth`]; `oci-client`
//!   wants a `RegistryAuth` value up front for every call;
//! - Docker logins with an identity token (empty username) need the OAuth2
//!   refresh-token POST to the token realm, which `oci-client` lacks;
//! - platform choice is per request and a miss must list what the index
//!   offers; `oci-client` fixes one resolver function per client, which only
//!   returns a digest;
//! - `oci-client` 0.18 brings `reqwest` 0.13, whose TLS defaults build
//!   aws-lc beside the ring-based rustls the rest of kilnd uses.
//!
//! BuildKit's counterparts: `source/containerimage` (pull) and
//! `util/imageutil.Config` (resolve); the digest to pin is the one the
//! reference resolved to first, so an index's digest when there is one.

mod auth;
mod manifest;
mod platform;
mod reference;
mod registry;

#[cfg(test)]
mod tests;

use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncRead;
use tracing::instrument;

pub(crate) use manifest::{Descriptor, Index, Manifest};
pub(crate) use platform::Platform;
pub(crate) use reference::{DOCKER_HUB, Reference};
pub(crate) use registry::{BlobPush, HostConfig, Registry, RegistryClient, RegistryHosts, RequestError};

use crate::content::{ContentStore, Digest};

/// Layers fetched at once by [`RegistryClient::pull`].
const PULL_CONCURRENCY: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: &'static str },
    #[error("building the registry HTTP client: {source}")]
    HttpClient { source: reqwest::Error },
    #[error("invalid platform {platform:?}: {reason}")]
    InvalidPlatform { platform: String, reason: &'static str },
    #[error("pulling manifest of {reference}: {source}")]
    PullManifest { reference: String, source: Box<RequestError> },
    #[error("manifest {digest} of {reference} is not valid JSON of its type: {source}")]
    ParseManifest { reference: String, digest: Digest, source: serde_json::Error },
    #[error("{reference}: unsupported manifest type {media_type}")]
    UnsupportedManifest { reference: String, media_type: String },
    #[error("{reference}: no image for platform {platform} in index {index}; it has {available}")]
    NoMatchingPlatform { reference: String, platform: String, index: Digest, available: String },
    #[error("pulling config {digest} of {reference}: {source}")]
    PullConfig { reference: String, digest: Digest, source: Box<RequestError> },
    #[error("pulling blob {digest} of {reference}: {source}")]
    PullBlob { reference: String, digest: Digest, source: Box<RequestError> },
    #[error("pushing blob {digest} to {reference}: {source}")]
    PushBlob { reference: String, digest: Digest, source: Box<RequestError> },
    #[error("pushing manifest to {reference}: {source}")]
    PushManifest { reference: String, source: Box<RequestError> },
    #[error("storing {what} of {reference}: {source}")]
    Store { reference: String, what: &'static str, source: crate::content::ContentError },
}

/// One platform's image as a reference resolved to it.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedImage {
    pub reference: Reference,
    /// The index (or manifest list) the reference pointed to, if it did.
    pub index: Option<IndexDocument>,
    /// The platform's manifest, as fetched.
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    /// The image config blob, as fetched.
    pub config_digest: Digest,
    pub config: Vec<u8>,
}

/// An index as fetched, with its digest.
#[derive(Debug, Clone)]
pub(crate) struct IndexDocument {
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

impl ResolvedImage {
    /// The digest to pin the reference to: the index's when the reference
    /// named one, else the manifest's (what BuildKit's `ResolveImageConfig`
    /// returns).
    pub(crate) fn digest(&self) -> &Digest {
        self.index.as_ref().map_or(&self.manifest_digest, |i| &i.digest)
    }

    pub(crate) fn layers(&self) -> &[Descriptor] {
        &self.manifest.layers
    }
}

/// What [`RegistryClient::pull`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PullStats {
    /// Layers downloaded.
    pub fetched: usize,
    /// Layers the store already had.
    pub present: usize,
    /// Bytes downloaded.
    pub bytes: u64,
}

impl RegistryClient {
    /// Resolves `reference` to the manifest and config for `platform`.
    #[instrument(skip_all, fields(image.ref = %reference, platform = %platform))]
    pub(crate) async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, ImageError> {
        let name = reference.to_string();
        let pull_err =
            |source| ImageError::PullManifest { reference: name.clone(), source: Box::new(source) };
        let top = self.fetch_manifest(reference, &reference.manifest_key()).await.map_err(pull_err)?;
        let top_type = top.media_type.clone().unwrap_or_default();

        let (index, fetched) = if manifest::is_index(&top_type) {
            let index: Index = parse(&name, &top.digest, &top.bytes)?;
            let chosen = choose_platform(&name, &top.digest, &index, platform)?;
            let fetched =
                self.fetch_manifest(reference, &chosen.digest.to_string()).await.map_err(pull_err)?;
            let doc = IndexDocument { digest: top.digest, bytes: top.bytes };
            (Some(doc), fetched)
        } else {
            (None, top)
        };
        let media_type = fetched.media_type.clone().unwrap_or_default();
        if !manifest::is_manifest(&media_type) {
            let media_type =
                if media_type.is_empty() { "(unrecognised document)".to_owned() } else { media_type };
            return Err(ImageError::UnsupportedManifest { reference: name, media_type });
        }
        let manifest: Manifest = parse(&name, &fetched.digest, &fetched.bytes)?;
        let config = self
            .fetch_blob_bytes(reference, &manifest.config.digest, manifest.config.size)
            .await
            .map_err(|source| ImageError::PullConfig {
                reference: name.clone(),
                digest: manifest.config.digest.clone(),
                source: Box::new(source),
            })?;
        Ok(ResolvedImage {
            reference: reference.clone(),
            index,
            manifest_digest: fetched.digest,
            manifest_bytes: fetched.bytes,
            config_digest: manifest.config.digest.clone(),
            manifest,
            config,
        })
    }

    /// Puts the image's documents and layers into `store`, downloading only
    /// the layers it lacks; every blob is verified against its digest.
    #[instrument(skip_all, fields(image.ref = %image.reference, image.digest = %image.digest()))]
    pub(crate) async fn pull(
        &self,
        image: &ResolvedImage,
        store: &ContentStore,
    ) -> Result<PullStats, ImageError> {
        let name = image.reference.to_string();
        let store_err = |what| {
            let name = name.clone();
            move |source| ImageError::Store { reference: name, what, source }
        };
        if let Some(index) = &image.index {
            store.write_bytes(&index.digest, &index.bytes).await.map_err(store_err("the index"))?;
        }
        store
            .write_bytes(&image.manifest_digest, &image.manifest_bytes)
            .await
            .map_err(store_err("the manifest"))?;
        store.write_bytes(&image.config_digest, &image.config).await.map_err(store_err("the config"))?;

        // Owned descriptors: futures borrowing from the image would not be
        // `Send` for every lifetime, which callers in `async_trait`s need.
        let mut layers: Vec<Descriptor> = Vec::new();
        for layer in image.layers() {
            if !layers.iter().any(|l| l.digest == layer.digest) {
                layers.push(layer.clone());
            }
        }
        self.note_sources(&image.reference, layers.iter().map(|l| &l.digest));
        let name = &name;
        let results: Vec<Option<u64>> = futures::stream::iter(layers)
            .map(|layer: Descriptor| async move {
                if store.exists(&layer.digest).await {
                    return Ok(None);
                }
                self.fetch_blob_to_store(&image.reference, &layer.digest, layer.size, store).await.map_err(
                    |source| ImageError::PullBlob {
                        reference: name.clone(),
                        digest: layer.digest.clone(),
                        source: Box::new(source),
                    },
                )?;
                Ok(Some(layer.size))
            })
            .buffer_unordered(PULL_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(PullStats {
            fetched: results.iter().flatten().count(),
            present: results.iter().filter(|r| r.is_none()).count(),
            bytes: results.iter().flatten().sum(),
        })
    }

    /// Pushes one blob to `reference`'s repository unless it is there
    /// already, mounting it from another repository when one is known.
    #[instrument(skip_all, fields(image.ref = %reference, blob.digest = %digest, blob.size = size))]
    pub(crate) async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        body: impl AsyncRead + Send + Sync + 'static,
    ) -> Result<BlobPush, ImageError> {
        let err = |source| ImageError::PushBlob {
            reference: reference.to_string(),
            digest: digest.clone(),
            source: Box::new(source),
        };
        if self.blob_exists(reference, digest).await.map_err(err)? {
            return Ok(BlobPush::Present);
        }
        let pushed = self.upload_blob(reference, digest, size, body).await.map_err(err)?;
        self.note_sources(reference, [digest]);
        Ok(pushed)
    }

    /// Starts uploading a blob that is still being made: the bytes sent on
    /// [`EarlyUpload::sender`] stream into an upload session of
    /// `reference`'s repository as they come, and [`EarlyUpload::complete`]
    /// names the blob once its digest is known. Until then the registry
    /// holds an unfinished upload, never a blob or an image.
    pub(crate) fn upload_while_made(&self, reference: &Reference) -> EarlyUpload {
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(EARLY_UPLOAD_QUEUE);
        let body = reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>),
        );
        let (client, target) = (self.clone(), reference.clone());
        let task = tokio::spawn(async move { client.upload_unfinished(&target, body).await });
        EarlyUpload { tx, task, client: self.clone(), reference: reference.clone() }
    }

    /// Pushes a blob from the content store.
    pub(crate) async fn push_blob_from_store(
        &self,
        reference: &Reference,
        store: &ContentStore,
        digest: &Digest,
    ) -> Result<BlobPush, ImageError> {
        let err = |source: crate::content::ContentError| ImageError::PushBlob {
            reference: reference.to_string(),
            digest: digest.clone(),
            source: Box::new(source.into()),
        };
        let size = store.size(digest).await.map_err(err)?;
        let file = store.open_blob(digest).await.map_err(err)?;
        self.push_blob(reference, digest, size, file).await
    }

    /// Pushes a manifest or index under the reference's tag (by its digest
    /// when the reference has none) and returns its digest.
    #[instrument(skip_all, fields(image.ref = %reference, media_type = media_type))]
    pub(crate) async fn push_manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, ImageError> {
        let digest = Digest::of(bytes);
        let key = reference.tag.clone().unwrap_or_else(|| digest.to_string());
        let err =
            |source| ImageError::PushManifest { reference: reference.to_string(), source: Box::new(source) };
        let response = self.put_manifest(reference, &key, media_type, bytes).await.map_err(err)?;
        let answered = response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok());
        if let Some(answered) = answered.and_then(|a| a.parse::<Digest>().ok())
            && answered != digest
        {
            let url = format!("{reference}");
            return Err(err(RequestError::DigestMismatch { url, expected: digest, actual: answered }));
        }
        Ok(digest)
    }

    /// Pushes a whole image from the content store: every blob first, then
    /// the manifests of an index by digest, and the top manifest or index
    /// under the tag last, so a push that fails part-way never leaves a tag
    /// pointing at missing content.
    #[instrument(skip_all, fields(image.ref = %reference, media_type = media_type))]
    pub(crate) async fn push_image(
        &self,
        reference: &Reference,
        store: &ContentStore,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, ImageError> {
        let name = reference.to_string();
        let top_digest = Digest::of(bytes);
        if manifest::is_index(media_type) {
            let index: Index = parse(&name, &top_digest, bytes)?;
            for child in &index.manifests {
                let child_bytes = store.read(&child.digest).await.map_err(|source| ImageError::PushBlob {
                    reference: name.clone(),
                    digest: child.digest.clone(),
                    source: Box::new(source.into()),
                })?;
                self.push_manifest_blobs(reference, store, &child.digest, &child_bytes).await?;
                let by_digest = Reference { tag: None, ..reference.with_digest(child.digest.clone()) };
                self.push_manifest(&by_digest, &child.media_type, &child_bytes).await?;
            }
        } else {
            self.push_manifest_blobs(reference, store, &top_digest, bytes).await?;
        }
        self.push_manifest(reference, media_type, bytes).await
    }

    async fn push_manifest_blobs(
        &self,
        reference: &Reference,
        store: &ContentStore,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), ImageError> {
        let manifest: Manifest = parse(&reference.to_string(), digest, bytes)?;
        self.push_blob_from_store(reference, store, &manifest.config.digest).await?;
        for layer in &manifest.layers {
            self.push_blob_from_store(reference, store, &layer.digest).await?;
        }
        Ok(())
    }
}

/// Pieces (of about 1 MiB) an early upload may hold before its producer waits.
const EARLY_UPLOAD_QUEUE: usize = 8;

/// A blob being uploaded while it is made; see
/// [`RegistryClient::upload_while_made`].
#[derive(Debug)]
pub(crate) struct EarlyUpload {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    task: tokio::task::JoinHandle<Result<reqwest::Url, RequestError>>,
    client: RegistryClient,
    reference: Reference,
}

impl EarlyUpload {
    /// Where the blob's bytes go, in order. A send fails once the upload
    /// has failed; the producer then goes on without it.
    pub(crate) fn sender(&self) -> tokio::sync::mpsc::Sender<bytes::Bytes> {
        self.tx.clone()
    }

    /// Ends the upload's body and completes it as `digest`. Every sender
    /// must have been dropped (the body ends when the last one is).
    pub(crate) async fn complete(self, digest: &Digest) -> Result<(), RequestError> {
        let EarlyUpload { tx, task, client, reference } = self;
        drop(tx);
        let url = task.await.map_err(|e| RequestError::Protocol {
            url: reference.to_string(),
            detail: format!("the upload task ended: {e}"),
        })??;
        client.complete_upload(&reference, url, digest).await?;
        client.note_sources(&reference, [digest]);
        Ok(())
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    reference: &str,
    digest: &Digest,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::ParseManifest {
        reference: reference.to_owned(),
        digest: digest.clone(),
        source,
    })
}

/// The index entry `platform` runs best. Entries without a platform are
/// eligible after every matching one, as containerd's `images.Manifest`
/// has it; nested indexes are not followed.
fn choose_platform<'a>(
    reference: &str,
    index_digest: &Digest,
    index: &'a Index,
    platform: &Platform,
) -> Result<&'a Descriptor, ImageError> {
    index
        .manifests
        .iter()
        .filter(|d| manifest::is_manifest(&d.media_type))
        .filter_map(|d| match &d.platform {
            Some(p) => platform.match_rank(p).map(|rank| (rank, d)),
            None => Some((usize::MAX, d)),
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
        .ok_or_else(|| {
            let available: Vec<String> =
                index.manifests.iter().filter_map(|d| d.platform.as_ref().map(|p| p.to_string())).collect();
            ImageError::NoMatchingPlatform {
                reference: reference.to_owned(),
                platform: platform.to_string(),
                index: index_digest.clone(),
                available: if available.is_empty() {
                    "no platforms".to_owned()
                } else {
                    available.join(", ")
                },
            }
        })
}
