//! Image building: each layer of the result as a compressed tar blob (made
//! once per layer and compression, then reused), the image config from the
//! frontend with the layers' diff ids, and the manifest; for results per
//! platform one image each and an index over them. Pushing sends the blobs
//! first and the manifest last, so a failed push never leaves a tag
//! pointing at missing blobs.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ExportSource, Exporters};
use crate::cache::mount::{MountError, mount};
use crate::cache::{CacheError, Snapshot};
use crate::content::{ContentError, ContentStore, Digest};
use crate::snapshot::{Compression, DiffOptions, SnapshotError, compress, diff_to_tar};
use crate::solver::scheduler::BuildContext;
use crate::source::image::{
    EarlyUpload, HostConfig, ImageError as RegistryError, Platform, Reference, Registry, RegistryClient,
    RegistryHosts,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("exporter attribute {key}={value:?}: {reason}")]
    Attr { key: String, value: String, reason: &'static str },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("mounting the layers under a layer: {0}")]
    Mount(#[from] MountError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("making layer {layer}: {source}")]
    Layer { layer: String, source: SnapshotError },
    #[error("the image config from the frontend is not JSON: {0}")]
    Config(#[source] serde_json::Error),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the push needs an image name (name=…)")]
    NoName,
    #[error("a layer task failed")]
    Join,
}

/// The exporter attributes kilnd understands.
#[derive(Debug, Clone)]
pub(crate) struct ImageOptions {
    pub names: Vec<String>,
    pub push: bool,
    pub oci: bool,
    pub compression: Compression,
    /// `registry.insecure`: the registries named may be plain HTTP.
    pub insecure: bool,
}

fn flag(attrs: &HashMap<String, String>, key: &str, default: bool) -> Result<bool, ImageError> {
    match attrs.get(key).map(String::as_str) {
        None => Ok(default),
        Some("true") | Some("") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => {
            Err(ImageError::Attr { key: key.into(), value: v.into(), reason: "expected true or false" })
        }
    }
}

impl ImageOptions {
    pub(crate) fn parse(attrs: &HashMap<String, String>, oci_default: bool) -> Result<Self, ImageError> {
        let level = match attrs.get("compression-level") {
            None => None,
            Some(v) => Some(v.parse::<i32>().map_err(|_| ImageError::Attr {
                key: "compression-level".into(),
                value: v.clone(),
                reason: "expected a number",
            })?),
        };
        let compression = match attrs.get("compression").map(String::as_str).unwrap_or("gzip") {
            "gzip" => Compression::Gzip { level: level.map_or(6, |l| l.clamp(0, 9) as u32) },
            "zstd" => Compression::Zstd { level: level.unwrap_or(3) },
            "uncompressed" => Compression::None,
            other => {
                return Err(ImageError::Attr {
                    key: "compression".into(),
                    value: other.into(),
                    reason: "expected gzip, zstd or uncompressed",
                });
            }
        };
        let names = attrs
            .get("name")
            .map(|n| n.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Self {
            names,
            push: flag(attrs, "push", false)?,
            oci: flag(attrs, "oci-mediatypes", oci_default)?,
            compression,
            insecure: flag(attrs, "registry.insecure", false)?,
        })
    }
}

/// A layer's blob as kept in the cache metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerBlob {
    digest: Digest,
    size: u64,
    diff_id: Digest,
}

/// An image, or an index of images, whose blobs are all in the content store.
#[derive(Debug, Clone)]
pub(crate) struct BuiltImage {
    /// The image manifest, or the index.
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub media_type: &'static str,
    /// The config of a single image; an index has one per platform.
    pub config_digest: Option<Digest>,
    /// The layers of a single image, for Docker's `manifest.json`.
    layers: Vec<Digest>,
    /// Every blob under the top manifest: platform manifests, configs, layers.
    blobs: Vec<Digest>,
}

impl BuiltImage {
    /// `containerimage.*` and `image.name` (docs/protocol.md §5).
    pub(crate) fn response(&self, names: &[String]) -> HashMap<String, String> {
        let descriptor = json!({
            "mediaType": self.media_type,
            "digest": self.manifest_digest.to_string(),
            "size": self.manifest.len(),
        });
        let mut r = HashMap::from([
            ("containerimage.digest".to_owned(), self.manifest_digest.to_string()),
            (
                "containerimage.descriptor".to_owned(),
                base64::engine::general_purpose::STANDARD.encode(descriptor.to_string()),
            ),
        ]);
        if let Some(config) = &self.config_digest {
            r.insert("containerimage.config.digest".to_owned(), config.to_string());
        }
        if !names.is_empty() {
            r.insert("image.name".to_owned(), names.join(","));
        }
        r
    }

    /// An OCI image layout as a tar; `docker` adds Docker's `manifest.json`.
    pub(crate) fn write_layout<W: Write>(
        &self,
        content: &ContentStore,
        names: &[String],
        docker: bool,
        writer: W,
    ) -> std::io::Result<()> {
        let mut tar = tar::Builder::new(writer);
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, data)
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut annotations = serde_json::Map::new();
        if let Some(name) = names.first() {
            annotations.insert("io.containerd.image.name".into(), json!(name));
            if let Some((_, tag)) = name.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                annotations.insert("org.opencontainers.image.ref.name".into(), json!(tag));
            }
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": self.media_type,
                "digest": self.manifest_digest.to_string(),
                "size": self.manifest.len(),
                "annotations": annotations,
            }],
        });
        add("index.json", index.to_string().as_bytes())?;
        add(&format!("blobs/sha256/{}", self.manifest_digest.hex()), &self.manifest)?;
        for digest in &self.blobs {
            let data = std::fs::read(content.blob_path(digest))?;
            add(&format!("blobs/sha256/{}", digest.hex()), &data)?;
        }
        if docker && let Some(config) = &self.config_digest {
            let manifest = json!([{
                "Config": format!("blobs/sha256/{}", config.hex()),
                "RepoTags": names,
                "Layers": self.layers.iter().map(|d| format!("blobs/sha256/{}", d.hex())).collect::<Vec<_>>(),
            }]);
            add("manifest.json", manifest.to_string().as_bytes())?;
        }
        tar.into_inner()?.flush()
    }
}

fn compression_tag(c: Compression) -> String {
    match c {
        Compression::None => "none".into(),
        Compression::Gzip { level } => format!("gzip-{level}"),
        Compression::Zstd { level } => format!("zstd-{level}"),
    }
}

/// The blob of one layer, made now or found from an earlier export.
/// A layer made for a push is uploaded to the push's first repository while
/// it is compressed, so the push that follows finds it there.
async fn layer_blob(
    ex: &Exporters,
    layer: &str,
    compression: Compression,
    target: Option<&PushTarget>,
) -> Result<LayerBlob, ImageError> {
    let key = format!("blob:{layer}:{}", compression_tag(compression));
    if let Some(bytes) = ex.cache.get_meta(&key)?
        && let Ok(blob) = serde_json::from_slice::<LayerBlob>(&bytes)
        && ex.content.exists(&blob.digest).await
    {
        return Ok(blob);
    }
    let (dir, content, id) = (ex.cache.layer_path(layer), ex.content.clone(), layer.to_owned());
    let base = ex.cache.layer_base(layer)?.filter(|base| !base.layers.is_empty());
    let cache = ex.cache.clone();
    let early = target.map(|t| t.client.upload_while_made(&t.reference));
    let side = early.as_ref().map(EarlyUpload::sender);
    let blob = tokio::task::spawn_blocking(move || {
        let err = |source| ImageError::Layer { layer: id.clone(), source };
        // A step's layer is compared with the view it was made over, as
        // BuildKit's overlay differ does (util/overlay/overlay_linux.go).
        let below = base.map(|base| mount(&cache, &base, None)).transpose()?;
        let options = DiffOptions { lower: below.as_ref().map(|m| m.path().to_owned()) };
        let ingest = PassOn::new(content.ingest()?, side);
        let writer = compress(ingest, compression).map_err(err)?;
        let writer = diff_to_tar(&dir, writer, &options).map_err(err)?;
        let (ingest, digests) = writer.finish().map_err(err)?;
        ingest.into_inner().commit(Some((&digests.digest, digests.size)))?;
        Ok::<_, ImageError>(LayerBlob {
            digest: digests.digest,
            size: digests.size,
            diff_id: digests.diff_id,
        })
    })
    .await
    .map_err(|_| ImageError::Join)??;
    if let Some(early) = early
        && let Err(e) = early.complete(&blob.digest).await
    {
        // Not the export's failure: the push that follows uploads the blob.
        tracing::debug!(layer, error = %e, "uploading a layer while compressing it failed");
    }
    let bytes = serde_json::to_vec(&blob).map_err(ImageError::Config)?;
    ex.cache.put_meta(&key, &bytes)?;
    Ok(blob)
}

/// Builds the image of `snapshot` into the content store.
pub(crate) async fn build(
    ex: &Exporters,
    snapshot: &Snapshot,
    config: Option<&[u8]>,
    opts: &ImageOptions,
    target: Option<&PushTarget>,
) -> Result<BuiltImage, ImageError> {
    let mut blobs = Vec::with_capacity(snapshot.layers.len());
    for layer in &snapshot.layers {
        blobs.push(layer_blob(ex, layer, opts.compression, target).await?);
    }
    let mut cfg: Value = match config {
        Some(bytes) => serde_json::from_slice(bytes).map_err(ImageError::Config)?,
        None => json!({ "architecture": "amd64", "os": "linux", "config": {} }),
    };
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    cfg["rootfs"] = json!({ "type": "layers", "diff_ids": blobs.iter().map(|b| b.diff_id.to_string()).collect::<Vec<_>>() });
    cfg["history"] = Value::Array(history_for(cfg.get("history"), blobs.len(), &created));
    if cfg.get("created").is_none_or(Value::is_null) {
        cfg["created"] = json!(created);
    }
    let config_bytes = serde_json::to_vec(&cfg).map_err(ImageError::Config)?;
    let config_digest = Digest::of(&config_bytes);
    ex.content.write_bytes(&config_digest, &config_bytes).await?;

    let layer_type =
        if opts.oci { opts.compression.oci_media_type() } else { opts.compression.docker_media_type() };
    let (media_type, config_type) =
        if opts.oci { (OCI_MANIFEST, OCI_CONFIG) } else { (DOCKER_MANIFEST, DOCKER_CONFIG) };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": { "mediaType": config_type, "digest": config_digest.to_string(), "size": config_bytes.len() },
        "layers": blobs.iter().map(|b| json!({
            "mediaType": layer_type,
            "digest": b.digest.to_string(),
            "size": b.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).map_err(ImageError::Config)?;
    let manifest_digest = Digest::of(&manifest);
    ex.content.write_bytes(&manifest_digest, &manifest).await?;
    let layers: Vec<Digest> = blobs.into_iter().map(|b| b.digest).collect();
    let mut all = vec![config_digest.clone()];
    all.extend(layers.iter().cloned());
    Ok(BuiltImage {
        manifest,
        manifest_digest,
        media_type,
        config_digest: Some(config_digest),
        layers,
        blobs: all,
    })
}

/// Builds what an export source describes: its image, or one image per
/// platform and an index whose entries carry their platforms
/// (`exporter/containerimage/writer.go` `Commit`).
pub(crate) async fn build_source(
    ex: &Exporters,
    source: &ExportSource,
    opts: &ImageOptions,
    target: Option<&PushTarget>,
) -> Result<BuiltImage, ImageError> {
    let scratch = Snapshot::default();
    let platforms = match source {
        ExportSource::Single { snapshot, image_config } => {
            return build(ex, snapshot.as_ref().unwrap_or(&scratch), image_config.as_deref(), opts, target)
                .await;
        }
        ExportSource::Platforms(platforms) => platforms,
    };
    let mut images = Vec::with_capacity(platforms.len());
    for p in platforms {
        let built =
            build(ex, p.snapshot.as_ref().unwrap_or(&scratch), p.image_config.as_deref(), opts, target)
                .await?;
        images.push((p.platform.clone(), built));
    }
    let media_type = if opts.oci { OCI_INDEX } else { DOCKER_MANIFEST_LIST };
    let index = index_document(media_type, &images)?;
    let manifest_digest = Digest::of(&index);
    ex.content.write_bytes(&manifest_digest, &index).await?;
    let mut blobs = Vec::new();
    for (_, image) in &images {
        for digest in std::iter::once(&image.manifest_digest).chain(&image.blobs) {
            if !blobs.contains(digest) {
                blobs.push(digest.clone());
            }
        }
    }
    Ok(BuiltImage {
        manifest: index,
        manifest_digest,
        media_type,
        config_digest: None,
        layers: Vec::new(),
        blobs,
    })
}

/// The index over images built per platform, each entry with its platform.
fn index_document(media_type: &str, images: &[(Platform, BuiltImage)]) -> Result<Vec<u8>, ImageError> {
    let manifests: Vec<Value> = images
        .iter()
        .map(|(platform, image)| {
            json!({
                "mediaType": image.media_type,
                "digest": image.manifest_digest.to_string(),
                "size": image.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let index = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests });
    serde_json::to_vec(&index).map_err(ImageError::Config)
}

/// The config's history with exactly one non-empty entry per layer: the
/// frontend's entries as far as they go, generic ones for layers it did not
/// describe (file changes it made without an instruction of their own).
fn history_for(history: Option<&Value>, layers: usize, created: &str) -> Vec<Value> {
    let mut entries: Vec<Value> = history.and_then(Value::as_array).cloned().unwrap_or_default();
    let non_empty = entries.iter().filter(|h| !h["empty_layer"].as_bool().unwrap_or(false)).count();
    if non_empty > layers {
        // Describe at most as many layers as there are, from the last backwards.
        let mut extra = non_empty - layers;
        for h in entries.iter_mut().rev() {
            if extra == 0 {
                break;
            }
            if !h["empty_layer"].as_bool().unwrap_or(false) {
                h["empty_layer"] = json!(true);
                extra -= 1;
            }
        }
    }
    for _ in non_empty..layers {
        entries.push(json!({ "created": created, "created_by": "kilnd", "comment": "kilnd: file changes" }));
    }
    entries
}

/// Pushes the image to every name, blobs first.
pub(crate) async fn push(
    ex: &Exporters,
    built: &BuiltImage,
    opts: &ImageOptions,
    ctx: &BuildContext,
) -> Result<(), ImageError> {
    if opts.names.is_empty() {
        return Err(ImageError::NoName);
    }
    for name in &opts.names {
        let reference = Reference::parse(name)?;
        push_client(ex, opts, &reference, ctx)?
            .push_image(&reference, &ex.content, built.media_type, &built.manifest)
            .await?;
    }
    Ok(())
}

/// Where the layers made for a push are uploaded while they are compressed.
#[derive(Debug)]
pub(crate) struct PushTarget {
    client: RegistryClient,
    reference: Reference,
}

/// The push's first repository, when the export pushes.
pub(crate) fn push_target(
    ex: &Exporters,
    opts: &ImageOptions,
    ctx: &BuildContext,
) -> Result<Option<PushTarget>, ImageError> {
    let Some(name) = opts.names.first().filter(|_| opts.push) else { return Ok(None) };
    let reference = Reference::parse(name)?;
    Ok(Some(PushTarget { client: push_client(ex, opts, &reference, ctx)?, reference }))
}

/// The exporter's registries (plain HTTP for an `insecure` push) with the
/// build's session credentials.
fn push_client(
    ex: &Exporters,
    opts: &ImageOptions,
    reference: &Reference,
    ctx: &BuildContext,
) -> Result<RegistryClient, ImageError> {
    let registry = if opts.insecure {
        let hosts =
            RegistryHosts::new().with(reference.registry.clone(), HostConfig { http: true, insecure: true });
        Registry::new(hosts)?
    } else {
        ex.registry.clone()
    };
    Ok(registry.client(Arc::new(ctx.sessions.clone())))
}

/// Writes through to `inner` and passes the same bytes on, in pieces of
/// about [`PASS_ON_PIECE`], to an upload running at the same time. An
/// upload that has gone away is left behind; the writes go on.
struct PassOn<W> {
    inner: W,
    side: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    piece: bytes::BytesMut,
}

const PASS_ON_PIECE: usize = 1 << 20;

impl<W: Write> PassOn<W> {
    fn new(inner: W, side: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>) -> Self {
        Self { inner, side, piece: bytes::BytesMut::new() }
    }

    fn pass_on(&mut self) {
        let piece = self.piece.split().freeze();
        if let Some(side) = &self.side
            && side.blocking_send(piece).is_err()
        {
            self.side = None;
        }
    }

    /// The writer, after the last piece was passed on.
    fn into_inner(mut self) -> W {
        self.pass_on();
        self.inner
    }
}

impl<W: Write> Write for PassOn<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.side.is_some() {
            self.piece.extend_from_slice(&buf[..n]);
            if self.piece.len() >= PASS_ON_PIECE {
                self.pass_on();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_with_defaults_and_errors_name_the_key() {
        let o = ImageOptions::parse(&HashMap::new(), false).unwrap();
        assert!(!o.push && !o.oci && o.names.is_empty());
        assert_eq!(o.compression, Compression::Gzip { level: 6 });
        let attrs = HashMap::from([
            ("name".to_owned(), "r/a:1, r/b:2".to_owned()),
            ("push".to_owned(), "true".to_owned()),
            ("compression".to_owned(), "zstd".to_owned()),
            ("compression-level".to_owned(), "9".to_owned()),
        ]);
        let o = ImageOptions::parse(&attrs, true).unwrap();
        assert_eq!(o.names, ["r/a:1", "r/b:2"]);
        assert!(o.push && o.oci);
        assert_eq!(o.compression, Compression::Zstd { level: 9 });
        let bad = HashMap::from([("compression".to_owned(), "lz4".to_owned())]);
        let err = ImageOptions::parse(&bad, false).unwrap_err().to_string();
        assert!(err.contains("compression=\"lz4\""), "{err}");
    }

    #[test]
    fn an_index_names_each_images_platform() {
        let image = |n: u8| BuiltImage {
            manifest: vec![n; 10],
            manifest_digest: Digest::of(&[n]),
            media_type: DOCKER_MANIFEST,
            config_digest: None,
            layers: Vec::new(),
            blobs: Vec::new(),
        };
        let images = [
            (Platform::new("linux", "amd64", None), image(1)),
            (Platform::new("linux", "arm", Some("v7")), image(2)),
        ];
        let index: Value =
            serde_json::from_slice(&index_document(DOCKER_MANIFEST_LIST, &images).unwrap()).unwrap();
        assert_eq!(index["mediaType"], DOCKER_MANIFEST_LIST);
        assert_eq!(index["schemaVersion"], 2);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries[0]["digest"], Digest::of(&[1]).to_string());
        assert_eq!(entries[0]["size"], 10);
        assert_eq!(entries[0]["mediaType"], DOCKER_MANIFEST);
        assert_eq!(entries[0]["platform"], json!({"os": "linux", "architecture": "amd64"}));
        assert_eq!(entries[1]["platform"], json!({"os": "linux", "architecture": "arm", "variant": "v7"}));
    }

    #[test]
    fn history_gets_one_non_empty_entry_per_layer() {
        let h = json!([{"created_by": "base"}, {"created_by": "ENV", "empty_layer": true}, {"created_by": "RUN"}]);
        let out = history_for(Some(&h), 4, "now");
        assert_eq!(out.len(), 5);
        assert_eq!(out.iter().filter(|e| !e["empty_layer"].as_bool().unwrap_or(false)).count(), 4);
        let out = history_for(Some(&h), 1, "now");
        assert_eq!(out.iter().filter(|e| !e["empty_layer"].as_bool().unwrap_or(false)).count(), 1);
        assert_eq!(out[0]["created_by"], "base");
    }
}
