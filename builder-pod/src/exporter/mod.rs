//! Exporters: what happens to a build's result (docs/protocol.md §2.3,
//! §4.2, §5). `local` and `tar` send the file
//! system back to the client; `image` builds an image and pushes it; `oci`
//! and `docker` send an image layout as a tar. A result per platform
//! exports as one subdirectory per platform (`local`, `tar`) or as an
//! image index (`image`, `oci`).

pub(crate) mod image;
mod platforms;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use kiln_proto::buildkit::fsutil::types::Packet;
use kiln_proto::buildkit::moby::buildkit::v1::{Exporter, Vertex, VertexStatus};
use kiln_proto::buildkit::moby::filesync::v1::BytesMessage;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::cache::mount::MountError;
use crate::cache::{CacheManager, Snapshot};
use crate::content::ContentStore;
use crate::fsutil::{self, FsutilError, WalkFilter};
use crate::progress::now;
use crate::session::filesend::{BytesUpload, CHUNK, FileSendError, open_packets};
use crate::session::{Session, SessionError};
use crate::snapshot::{DiffOptions, SnapshotError, diff_to_tar};
use crate::solver::scheduler::BuildContext;
use crate::source::image::{Platform, Registry};

use self::image::{ImageError, ImageOptions};
use self::platforms::ExportTree;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("unknown exporter type {0:?} (kilnd has local, tar, image, registry, oci, docker, cacheonly)")]
    Unknown(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    FileSend(#[from] FileSendError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("sending the result to the client: {0}")]
    Fsutil(#[from] FsutilError),
    #[error("writing the tar: {0}")]
    Tar(#[source] SnapshotError),
    #[error("writing the image layout: {0}")]
    Layout(#[source] std::io::Error),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the export task failed")]
    Join,
    #[error("unable to export multiple refs, missing platforms mapping")]
    NoPlatforms,
    #[error("the result's platforms mapping (refs.platforms) is not valid: {0}")]
    Platforms(#[source] serde_json::Error),
    #[error("failed to find ref for ID {0}")]
    MissingRef(String),
    #[error("docker exporter does not currently support exporting manifest lists")]
    DockerIndex,
    #[error("preparing the per-platform directories at {path}: {source}")]
    PlatformDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("mounting {platform} at {path}: {source}")]
    BindMount { platform: String, path: std::path::PathBuf, source: nix::Error },
    #[error("writing {platform} into the tar: {source}")]
    PlatformTar { platform: String, source: std::io::Error },
}

/// What a build hands its exporters (`exporter.Source`): one result, or
/// one per platform, each with its image config.
#[derive(Debug)]
pub(crate) enum ExportSource {
    Single { snapshot: Option<Snapshot>, image_config: Option<Vec<u8>> },
    Platforms(Vec<PlatformResult>),
}

/// One platform's part of a multi-platform result.
#[derive(Debug)]
pub(crate) struct PlatformResult {
    /// `linux/arm64`: the key of its ref and metadata.
    pub id: String,
    pub platform: Platform,
    pub snapshot: Option<Snapshot>,
    pub image_config: Option<Vec<u8>>,
}

/// `exptypes.Platforms`; Go's encoding/json matches keys case-insensitively.
#[derive(Debug, serde::Deserialize)]
struct PlatformsMeta {
    #[serde(rename = "Platforms", alias = "platforms", default)]
    platforms: Vec<PlatformMeta>,
}

#[derive(Debug, serde::Deserialize)]
struct PlatformMeta {
    #[serde(rename = "ID", alias = "id", alias = "Id")]
    id: String,
    #[serde(rename = "Platform", alias = "platform")]
    platform: Platform,
}

impl ExportSource {
    /// A result as a frontend returns it: a single ref, or `refs` by
    /// platform id with the `refs.platforms` metadata naming them in order
    /// (`exptypes.ParsePlatforms`), and `containerimage.config[/<id>]`.
    pub(crate) fn from_result(
        single: Option<Snapshot>,
        refs: Option<HashMap<String, Option<Snapshot>>>,
        metadata: &HashMap<String, Vec<u8>>,
    ) -> Result<Self, ExportError> {
        const CONFIG: &str = "containerimage.config";
        let Some(mut refs) = refs else {
            return Ok(Self::Single { snapshot: single, image_config: metadata.get(CONFIG).cloned() });
        };
        let meta = metadata.get("refs.platforms").ok_or(ExportError::NoPlatforms)?;
        let parsed: PlatformsMeta = serde_json::from_slice(meta).map_err(ExportError::Platforms)?;
        let mut platforms = Vec::with_capacity(parsed.platforms.len());
        for p in parsed.platforms {
            let snapshot = refs.remove(&p.id).ok_or_else(|| ExportError::MissingRef(p.id.clone()))?;
            let image_config =
                metadata.get(&format!("{CONFIG}/{}", p.id)).or_else(|| metadata.get(CONFIG)).cloned();
            platforms.push(PlatformResult { id: p.id, platform: p.platform, snapshot, image_config });
        }
        Ok(Self::Platforms(platforms))
    }
}

/// What exporters need of the daemon.
#[derive(Debug, Clone)]
pub(crate) struct Exporters {
    pub cache: Arc<CacheManager>,
    pub content: ContentStore,
    pub registry: Registry,
}

impl Exporters {
    /// Runs exporter `index` on `source` and returns its response values.
    pub(crate) async fn export(
        &self,
        index: usize,
        exporter: &Exporter,
        source: &ExportSource,
        ctx: &BuildContext,
    ) -> Result<HashMap<String, String>, ExportError> {
        let attrs = &exporter.attrs;
        let name = match exporter.r#type.as_str() {
            "local" => "exporting to client directory",
            "tar" => "exporting to client tarball",
            "image" | "registry" | "moby" => "exporting to image",
            "oci" | "docker" => "exporting to oci image format",
            "cacheonly" => return Ok(HashMap::new()),
            other => return Err(ExportError::Unknown(other.to_owned())),
        };
        let vertex = progress_vertex(ctx, index, name);
        let outcome = async {
            match exporter.r#type.as_str() {
                "local" => self.local(index, source, ctx).await,
                "tar" => self.tar(index, source, ctx).await,
                "oci" | "docker" => {
                    let docker = exporter.r#type == "docker";
                    if docker && matches!(source, ExportSource::Platforms(_)) {
                        return Err(ExportError::DockerIndex);
                    }
                    let opts = ImageOptions::parse(attrs, !docker)?;
                    let built = image::build_source(self, source, &opts, None).await?;
                    let response = built.response(&opts.names);
                    let session = self.session(ctx).await?;
                    let upload = BytesUpload::open(&session, index, &response)?;
                    let tx = upload.sender().ok_or(ExportError::Join)?;
                    let (content, names) = (self.content.clone(), opts.names.clone());
                    tokio::task::spawn_blocking(move || {
                        let mut writer = ChannelWriter::new(tx);
                        built.write_layout(&content, &names, docker, &mut writer)?;
                        writer.into_inner()
                    })
                    .await
                    .map_err(|_| ExportError::Join)?
                    .map_err(ExportError::Layout)?;
                    upload.finish().await?;
                    Ok(response)
                }
                _ => {
                    let mut opts = ImageOptions::parse(attrs, false)?;
                    if exporter.r#type == "registry" {
                        opts.push = true;
                    }
                    let on = &vertex.digest;
                    let target = image::push_target(self, &opts, ctx)?;
                    let layers = image::build_source(self, source, &opts, target.as_ref());
                    let built = step(ctx, on, "exporting layers".into(), layers).await?;
                    let digest = &built.manifest_digest;
                    step(ctx, on, format!("exporting manifest {digest}"), async { Ok::<_, ExportError>(()) })
                        .await?;
                    if let Some(config) = &built.config_digest {
                        step(ctx, on, format!("exporting config {config}"), async {
                            Ok::<_, ExportError>(())
                        })
                        .await?;
                    }
                    if opts.push {
                        let what =
                            format!("pushing layers and manifest for {}@{digest}", opts.names.join(", "));
                        step(ctx, on, what, image::push(self, &built, &opts, ctx)).await?;
                    }
                    Ok(built.response(&opts.names))
                }
            }
        }
        .await;
        let mut done = vertex.clone();
        done.completed = Some(now());
        if let Err(e) = &outcome {
            done.error = e.to_string();
        }
        ctx.job.progress.vertex(done);
        outcome
    }

    /// The session that receives the result: the build's own, when open.
    async fn session(&self, ctx: &BuildContext) -> Result<Arc<Session>, ExportError> {
        Ok(ctx.sessions.first().await?)
    }

    /// `-o type=local`: the daemon is the fsutil sender (docs/protocol.md §4.2).
    async fn local(
        &self,
        index: usize,
        source: &ExportSource,
        ctx: &BuildContext,
    ) -> Result<HashMap<String, String>, ExportError> {
        let session = self.session(ctx).await?;
        let tree = ExportTree::mount(&self.cache, source)?;
        let (tx, incoming) = open_packets(&session, index)?;
        if tree.parts.is_empty() {
            fsutil::send(&tree.root, &WalkFilter::default(), incoming, tx).await?;
            return Ok(HashMap::new());
        }
        // Stats pass through a rewrite on their way to the client.
        let (inner_tx, mut inner_rx) = mpsc::channel::<Packet>(64);
        let forward = tokio::spawn(async move {
            while let Some(mut packet) = inner_rx.recv().await {
                if let Some(stat) = packet.stat.as_mut() {
                    platforms::rebase_symlink(stat);
                }
                if tx.send(packet).await.is_err() {
                    break;
                }
            }
        });
        let sent = fsutil::send(&tree.root, &WalkFilter::default(), incoming, inner_tx).await;
        forward.await.map_err(|_| ExportError::Join)?;
        sent?;
        Ok(HashMap::new())
    }

    /// `-o type=tar`: the file system as one tar, in chunks (docs/protocol.md §4.2).
    async fn tar(
        &self,
        index: usize,
        source: &ExportSource,
        ctx: &BuildContext,
    ) -> Result<HashMap<String, String>, ExportError> {
        let session = self.session(ctx).await?;
        let tree = ExportTree::mount(&self.cache, source)?;
        let upload = BytesUpload::open(&session, index, &HashMap::new())?;
        let tx = upload.sender().ok_or(ExportError::Join)?;
        let (root, parts, spool) = (tree.root.clone(), tree.parts.clone(), self.cache.root().join("tmp"));
        tokio::task::spawn_blocking(move || {
            if parts.is_empty() {
                let writer = diff_to_tar(&root, ChannelWriter::new(tx), &DiffOptions::default())
                    .map_err(ExportError::Tar)?;
                return writer
                    .into_inner()
                    .map_err(|source| ExportError::Tar(SnapshotError::WriteTar { source }));
            }
            let writer = platforms::platforms_tar(&parts, &spool, ChannelWriter::new(tx))?;
            writer.into_inner().map_err(|source| ExportError::Tar(SnapshotError::WriteTar { source }))
        })
        .await
        .map_err(|_| ExportError::Join)??;
        upload.finish().await?;
        Ok(HashMap::new())
    }
}

/// A vertex of its own for the export step, as BuildKit shows one.
/// A part of an export, shown under its vertex as buildctl and buildx show
/// BuildKit's ("exporting layers 0.3s done"); it completes only on success,
/// the vertex carries the error.
async fn step<T, E>(
    ctx: &BuildContext,
    vertex: &str,
    name: String,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Some(now());
    let status = VertexStatus {
        id: name.clone(),
        vertex: vertex.to_owned(),
        name,
        started,
        timestamp: started,
        ..VertexStatus::default()
    };
    ctx.job.progress.status(status.clone());
    let out = work.await;
    if out.is_ok() {
        let done = Some(now());
        ctx.job.progress.status(VertexStatus { completed: done, timestamp: done, ..status });
    }
    out
}

fn progress_vertex(ctx: &BuildContext, index: usize, name: &str) -> Vertex {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(format!("export:{}:{index}", ctx.job.id))));
    let vertex = Vertex { digest, name: name.to_owned(), started: Some(now()), ..Vertex::default() };
    ctx.job.progress.vertex(vertex.clone());
    vertex
}

/// A blocking writer that sends what is written as `BytesMessage`s of up
/// to [`CHUNK`] bytes; for tar writers running on a blocking thread.
#[derive(Debug)]
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<BytesMessage>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub(crate) fn new(tx: mpsc::Sender<BytesMessage>) -> Self {
        Self { tx, buf: Vec::with_capacity(CHUNK) }
    }

    /// Sends what is buffered; the writer is done.
    pub(crate) fn into_inner(mut self) -> std::io::Result<()> {
        self.flush()
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(BytesMessage { data }).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client closed the transfer")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(layer: &str) -> Option<Snapshot> {
        Some(Snapshot { layers: vec![layer.to_owned()] })
    }

    #[test]
    fn results_per_platform_follow_the_platforms_mapping() {
        let metadata = HashMap::from([
            (
                "refs.platforms".to_owned(),
                br#"{"platforms":[{"id":"linux/arm64","platform":{"os":"linux","architecture":"arm64"}},
                    {"ID":"linux/amd64","Platform":{"os":"linux","architecture":"amd64"}}]}"#
                    .to_vec(),
            ),
            ("containerimage.config/linux/arm64".to_owned(), b"arm".to_vec()),
            ("containerimage.config".to_owned(), b"shared".to_vec()),
        ]);
        let refs =
            HashMap::from([("linux/amd64".to_owned(), snap("a")), ("linux/arm64".to_owned(), snap("b"))]);
        let ExportSource::Platforms(platforms) =
            ExportSource::from_result(None, Some(refs), &metadata).unwrap()
        else {
            panic!("not per platform")
        };
        let seen: Vec<(&str, &str, Option<&[u8]>, &str)> = platforms
            .iter()
            .map(|p| {
                let layer = p.snapshot.as_ref().map_or("", |s| s.layers[0].as_str());
                (p.id.as_str(), p.platform.architecture.as_str(), p.image_config.as_deref(), layer)
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("linux/arm64", "arm64", Some(&b"arm"[..]), "b"),
                ("linux/amd64", "amd64", Some(&b"shared"[..]), "a")
            ]
        );
    }

    #[test]
    fn a_result_per_platform_needs_its_mapping_and_every_ref() {
        let refs = || Some(HashMap::from([("linux/amd64".to_owned(), snap("a"))]));
        let err = ExportSource::from_result(None, refs(), &HashMap::new()).unwrap_err();
        assert_eq!(err.to_string(), "unable to export multiple refs, missing platforms mapping");
        let metadata = HashMap::from([(
            "refs.platforms".to_owned(),
            br#"{"Platforms":[{"ID":"linux/s390x","Platform":{"os":"linux","architecture":"s390x"}}]}"#
                .to_vec(),
        )]);
        let err = ExportSource::from_result(None, refs(), &metadata).unwrap_err();
        assert_eq!(err.to_string(), "failed to find ref for ID linux/s390x");
        let bad = HashMap::from([("refs.platforms".to_owned(), b"[".to_vec())]);
        assert!(matches!(ExportSource::from_result(None, refs(), &bad), Err(ExportError::Platforms(_))));
        let single = ExportSource::from_result(
            snap("s"),
            None,
            &HashMap::from([("containerimage.config".to_owned(), b"c".to_vec())]),
        )
        .unwrap();
        assert!(matches!(single, ExportSource::Single { image_config: Some(c), .. } if c == b"c"));
    }
}
