//! Exporters: what happens to a build's result (buildkit-protocol.md §2.2
//! "Per-output specifics", §4.3, §5). `local` and `tar` send the file
//! system back to the client; `image` builds an image and pushes it; `oci`
//! and `docker` send an image layout as a tar. A result per platform
//! exports as one subdirectory per platform (`local`, `tar`) or as an
//! image index (`image`, `oci`).

pub mod image;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use kiln_proto::buildkit::moby::buildkit::v1::{Exporter, Vertex};
use kiln_proto::buildkit::moby::filesync::v1::BytesMessage;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::cache::mount::{MountError, Mounted, mount};
use crate::cache::{CacheManager, Snapshot};
use crate::content::ContentStore;
use crate::fsutil::{self, FsutilError, WalkFilter};
use crate::session::filesend::{BytesUpload, CHUNK, FileSendError, open_packets};
use crate::session::{SessionError, SessionManager};
use crate::snapshot::{DiffOptions, SnapshotError, diff_to_tar};
use crate::solver::progress::now;
use crate::solver::scheduler::BuildContext;
use crate::source::image::{Platform, Registry};

use self::image::{ImageError, ImageOptions};

/// How long the build's session is waited for.
const SESSION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
}

/// What a build hands its exporters (`exporter.Source`): one result, or
/// one per platform, each with its image config.
#[derive(Debug)]
pub enum ExportSource {
    Single { snapshot: Option<Snapshot>, image_config: Option<Vec<u8>> },
    Platforms(Vec<PlatformResult>),
}

/// One platform's part of a multi-platform result.
#[derive(Debug)]
pub struct PlatformResult {
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
    pub fn from_result(
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
            let image_config = metadata.get(&format!("{CONFIG}/{}", p.id)).or_else(|| metadata.get(CONFIG)).cloned();
            platforms.push(PlatformResult { id: p.id, platform: p.platform, snapshot, image_config });
        }
        Ok(Self::Platforms(platforms))
    }
}

/// The file system a `local` or `tar` export sends: the result's, or a
/// directory with one subdirectory per platform (`linux_arm64`, the id
/// with `/` made `_`, as BuildKit's exporters name them), each a bind
/// mount of that platform's result.
struct ExportTree {
    root: std::path::PathBuf,
    /// Declared before the views: the bind mounts go before what they show.
    binds: Vec<BindMount>,
    views: Vec<Mounted>,
    combined: Option<tempfile::TempDir>,
}

/// A bind mount, lazily unmounted when dropped.
struct BindMount(std::path::PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// What exporters need of the daemon.
#[derive(Debug, Clone)]
pub struct Exporters {
    pub cache: Arc<CacheManager>,
    pub content: ContentStore,
    pub registry: Registry,
    pub sessions: Arc<SessionManager>,
}

impl Exporters {
    /// Runs exporter `index` on `source` and returns its response values.
    pub async fn export(
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
                    let built = image::build_source(self, source, &opts).await?;
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
                    let built = image::build_source(self, source, &opts).await?;
                    if opts.push {
                        image::push(self, &built, &opts, ctx).await?;
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

    async fn session(&self, ctx: &BuildContext) -> Result<Arc<crate::session::Session>, ExportError> {
        let id = ctx.session_ids.first().map(String::as_str).unwrap_or_default();
        Ok(self.sessions.get(id, SESSION_WAIT).await?)
    }

    /// Mounts what a `local` or `tar` export sends.
    fn tree(&self, source: &ExportSource) -> Result<ExportTree, ExportError> {
        let scratch = Snapshot::default();
        let platforms = match source {
            ExportSource::Single { snapshot, .. } => {
                let view = mount(&self.cache, snapshot.as_ref().unwrap_or(&scratch), None)?;
                let root = view.path().to_owned();
                return Ok(ExportTree { root, binds: Vec::new(), views: vec![view], combined: None });
            }
            ExportSource::Platforms(platforms) => platforms,
        };
        let combined = self.cache.temp_dir("export-").map_err(MountError::from)?;
        let root = combined.path().to_owned();
        let mut tree = ExportTree { root, binds: Vec::new(), views: Vec::new(), combined: None };
        for p in platforms {
            let view = mount(&self.cache, p.snapshot.as_ref().unwrap_or(&scratch), None)?;
            let dir = combined.path().join(p.id.replace('/', "_"));
            std::fs::create_dir(&dir).map_err(|source| ExportError::PlatformDir { path: dir.clone(), source })?;
            let flags = nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC;
            nix::mount::mount(Some(view.path()), &dir, None::<&str>, flags, None::<&str>).map_err(|source| {
                ExportError::BindMount { platform: p.id.clone(), path: dir.clone(), source }
            })?;
            tree.binds.push(BindMount(dir));
            tree.views.push(view);
        }
        tree.combined = Some(combined);
        Ok(tree)
    }

    /// `-o type=local`: the daemon is the fsutil sender (§4.3).
    async fn local(
        &self,
        index: usize,
        source: &ExportSource,
        ctx: &BuildContext,
    ) -> Result<HashMap<String, String>, ExportError> {
        let session = self.session(ctx).await?;
        let tree = self.tree(source)?;
        let (tx, incoming) = open_packets(&session, index)?;
        fsutil::send(&tree.root, &WalkFilter::default(), incoming, tx).await?;
        Ok(HashMap::new())
    }

    /// `-o type=tar`: the file system as one tar, in chunks (§4.3).
    async fn tar(
        &self,
        index: usize,
        source: &ExportSource,
        ctx: &BuildContext,
    ) -> Result<HashMap<String, String>, ExportError> {
        let session = self.session(ctx).await?;
        let tree = self.tree(source)?;
        let upload = BytesUpload::open(&session, index, &HashMap::new())?;
        let tx = upload.sender().ok_or(ExportError::Join)?;
        let root = tree.root.clone();
        tokio::task::spawn_blocking(move || {
            let writer = diff_to_tar(&root, ChannelWriter::new(tx), &DiffOptions::default())?;
            writer.into_inner().map_err(|source| SnapshotError::WriteTar { source })
        })
        .await
        .map_err(|_| ExportError::Join)?
        .map_err(ExportError::Tar)?;
        upload.finish().await?;
        Ok(HashMap::new())
    }
}

/// A vertex of its own for the export step, as BuildKit shows one.
fn progress_vertex(ctx: &BuildContext, index: usize, name: &str) -> Vertex {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(format!("export:{}:{index}", ctx.job.id))));
    let vertex = Vertex { digest, name: name.to_owned(), started: Some(now()), ..Vertex::default() };
    ctx.job.progress.vertex(vertex.clone());
    vertex
}

/// A blocking writer that sends what is written as `BytesMessage`s of up
/// to [`CHUNK`] bytes; for tar writers running on a blocking thread.
#[derive(Debug)]
pub struct ChannelWriter {
    tx: mpsc::Sender<BytesMessage>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<BytesMessage>) -> Self {
        Self { tx, buf: Vec::with_capacity(CHUNK) }
    }

    /// Sends what is buffered; the writer is done.
    pub fn into_inner(mut self) -> std::io::Result<()> {
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
