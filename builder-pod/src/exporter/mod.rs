//! Exporters: what happens to a build's result (buildkit-protocol.md §2.2
//! "Per-output specifics", §4.3, §5). `local` and `tar` send the file
//! system back to the client; `image` builds an image and pushes it; `oci`
//! and `docker` send an image layout as a tar.

pub mod image;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use kiln_proto::buildkit::moby::buildkit::v1::{Exporter, Vertex};
use kiln_proto::buildkit::moby::filesync::v1::BytesMessage;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::cache::mount::{MountError, mount};
use crate::cache::{CacheManager, Snapshot};
use crate::content::ContentStore;
use crate::fsutil::{self, FsutilError, WalkFilter};
use crate::session::filesend::{BytesUpload, CHUNK, FileSendError, open_packets};
use crate::session::{SessionError, SessionManager};
use crate::snapshot::{DiffOptions, SnapshotError, diff_to_tar};
use crate::solver::progress::now;
use crate::solver::scheduler::BuildContext;
use crate::source::image::Registry;

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
    /// Runs exporter `index` on `result` and returns its response values.
    /// `image_config` is the frontend's `containerimage.config`, if any.
    pub async fn export(
        &self,
        index: usize,
        exporter: &Exporter,
        result: Option<&Snapshot>,
        image_config: Option<&[u8]>,
        ctx: &BuildContext,
    ) -> Result<HashMap<String, String>, ExportError> {
        let scratch = Snapshot::default();
        let result = result.unwrap_or(&scratch);
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
                "local" => self.local(index, result, ctx).await,
                "tar" => self.tar(index, result, ctx).await,
                "oci" | "docker" => {
                    let docker = exporter.r#type == "docker";
                    let opts = ImageOptions::parse(attrs, !docker)?;
                    let built = image::build(self, result, image_config, &opts).await?;
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
                    let built = image::build(self, result, image_config, &opts).await?;
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

    /// `-o type=local`: the daemon is the fsutil sender (§4.3).
    async fn local(
        &self,
        index: usize,
        result: &Snapshot,
        ctx: &BuildContext,
    ) -> Result<HashMap<String, String>, ExportError> {
        let session = self.session(ctx).await?;
        let view = mount(&self.cache, result, None)?;
        let (tx, incoming) = open_packets(&session, index)?;
        fsutil::send(view.path(), &WalkFilter::default(), incoming, tx).await?;
        Ok(HashMap::new())
    }

    /// `-o type=tar`: the file system as one tar, in chunks (§4.3).
    async fn tar(
        &self,
        index: usize,
        result: &Snapshot,
        ctx: &BuildContext,
    ) -> Result<HashMap<String, String>, ExportError> {
        let session = self.session(ctx).await?;
        let view = mount(&self.cache, result, None)?;
        let upload = BytesUpload::open(&session, index, &HashMap::new())?;
        let tx = upload.sender().ok_or(ExportError::Join)?;
        let root = view.path().to_owned();
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
