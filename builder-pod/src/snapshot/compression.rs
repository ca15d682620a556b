//! Layer blob encodings: gzip, zstd or none, with both digests an image
//! needs computed in the same pass (the blob digest for the manifest, the
//! uncompressed diffID for the config's `rootfs.diff_ids`).

use std::io::{self, BufRead, BufReader, Read, Write};

use flate2::read::MultiGzDecoder;
use sha2::{Digest as _, Sha256};

use super::SnapshotError;
use super::pgzip::{self, GzipWriter};
use crate::content::Digest;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    /// zlib levels 0–9.
    Gzip {
        level: u32,
    },
    /// zstd levels 1–22 (BuildKit's default is 3).
    Zstd {
        level: i32,
    },
}

impl Compression {
    /// The OCI layer media type of a blob compressed this way.
    pub(crate) fn oci_media_type(self) -> &'static str {
        match self {
            Self::None => "application/vnd.oci.image.layer.v1.tar",
            Self::Gzip { .. } => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd { .. } => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The Docker schema 2 layer media type; for zstd the one containerd
    /// defines and BuildKit writes into Docker manifests
    /// (`util/compression/compression.go`, `MediaTypeDockerSchema2LayerZstd`).
    pub(crate) fn docker_media_type(self) -> &'static str {
        match self {
            Self::None => "application/vnd.docker.image.rootfs.diff.tar",
            Self::Gzip { .. } => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Self::Zstd { .. } => "application/vnd.docker.image.rootfs.diff.tar.zstd",
        }
    }
}

/// The digests and sizes of one compressed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayerDigests {
    /// Digest of the blob as stored and pushed.
    pub digest: Digest,
    pub size: u64,
    /// Digest of the uncompressed tar (the diffID).
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// Wraps `writer` so that an uncompressed layer tar written into it comes out
/// compressed; [`CompressWriter::finish`] returns the digests of both forms.
/// Compression runs on up to [`pgzip::default_threads`] threads; the bytes
/// are the same whatever that number is.
pub(crate) fn compress<W: Write>(
    writer: W,
    compression: Compression,
) -> Result<CompressWriter<W>, SnapshotError> {
    compress_on(writer, compression, pgzip::default_threads())
}

fn compress_on<W: Write>(
    writer: W,
    compression: Compression,
    threads: usize,
) -> Result<CompressWriter<W>, SnapshotError> {
    let sink = HashingWriter { inner: writer, hasher: Sha256::new(), size: 0 };
    let encoder = match compression {
        Compression::None => Encoder::None(sink),
        Compression::Gzip { level } => {
            if level > 9 {
                return Err(SnapshotError::CompressionLevel {
                    algorithm: "gzip",
                    level: level as i32,
                    range: "0-9",
                });
            }
            let encoder =
                GzipWriter::new(sink, level, threads).map_err(|source| SnapshotError::Compress { source })?;
            Encoder::Gzip(encoder)
        }
        Compression::Zstd { level } => {
            if !(1..=22).contains(&level) {
                return Err(SnapshotError::CompressionLevel { algorithm: "zstd", level, range: "1-22" });
            }
            // zstd's multi-threaded mode writes the same frames for any
            // number of workers from one up (but not for zero, its
            // single-threaded mode): always at least one.
            let workers = u32::try_from(threads.max(1)).unwrap_or(1);
            let mut encoder = zstd::stream::write::Encoder::new(sink, level)
                .map_err(|source| SnapshotError::Compress { source })?;
            encoder.multithread(workers).map_err(|source| SnapshotError::Compress { source })?;
            Encoder::Zstd(encoder)
        }
    };
    Ok(CompressWriter { encoder, diff_hasher: Sha256::new(), uncompressed_size: 0 })
}

enum Encoder<W: Write> {
    None(HashingWriter<W>),
    Gzip(GzipWriter<HashingWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, HashingWriter<W>>),
}

/// See [`compress`].
pub(crate) struct CompressWriter<W: Write> {
    encoder: Encoder<W>,
    diff_hasher: Sha256,
    uncompressed_size: u64,
}

impl<W: Write> std::fmt::Debug for CompressWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressWriter")
            .field("uncompressed_size", &self.uncompressed_size)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Write for CompressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.encoder {
            Encoder::None(w) => w.write(buf)?,
            Encoder::Gzip(w) => w.write(buf)?,
            Encoder::Zstd(w) => w.write(buf)?,
        };
        self.diff_hasher.update(&buf[..n]);
        self.uncompressed_size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.encoder {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<W: Write> CompressWriter<W> {
    /// Ends the compressed stream and returns the writer with the digests.
    pub(crate) fn finish(self) -> Result<(W, LayerDigests), SnapshotError> {
        let err = |source| SnapshotError::Compress { source };
        let mut sink = match self.encoder {
            Encoder::None(w) => w,
            Encoder::Gzip(w) => w.finish().map_err(err)?,
            Encoder::Zstd(w) => w.finish().map_err(err)?,
        };
        sink.inner.flush().map_err(err)?;
        let digests = LayerDigests {
            digest: Digest::from_hasher(sink.hasher),
            size: sink.size,
            diff_id: Digest::from_hasher(self.diff_hasher),
            uncompressed_size: self.uncompressed_size,
        };
        Ok((sink.inner, digests))
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Undoes a layer blob's compression. The first bytes decide, as in
/// containerd's `DecompressStream` (registries do serve gzip under the plain
/// tar type and vice versa); `media_type`, when given, must still be a layer
/// type, so a config or manifest handed in by mistake is refused.
pub(crate) fn decompress<'a>(
    reader: impl Read + 'a,
    media_type: Option<&str>,
) -> Result<Box<dyn Read + 'a>, SnapshotError> {
    if let Some(media_type) = media_type.filter(|m| !is_layer_media_type(m)) {
        return Err(SnapshotError::UnsupportedMediaType { media_type: media_type.to_owned() });
    }
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let head = reader.fill_buf().map_err(|source| SnapshotError::Decompress { source })?;
    if head.starts_with(GZIP_MAGIC) {
        Ok(Box::new(DecompressErrors(MultiGzDecoder::new(reader))))
    } else if head.starts_with(ZSTD_MAGIC) {
        let decoder = zstd::stream::read::Decoder::with_buffer(reader)
            .map_err(|source| SnapshotError::Decompress { source })?;
        Ok(Box::new(DecompressErrors(decoder)))
    } else {
        Ok(Box::new(reader))
    }
}

fn is_layer_media_type(media_type: &str) -> bool {
    let base = media_type.split(';').next().unwrap_or(media_type).trim();
    matches!(
        base,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

/// Marks decoder failures as corrupt data, so the tar reader's error says
/// the blob is bad rather than looking like an I/O fault of the disk.
struct DecompressErrors<R>(R);

impl<R: Read> Read for DecompressErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::UnexpectedEof {
                e
            } else {
                io::Error::new(io::ErrorKind::InvalidData, format!("corrupt compressed layer: {e}"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::TarBuilder;
    use super::*;

    fn sample_tar() -> Vec<u8> {
        let mut tar = TarBuilder::new();
        tar.dir("data/", 0o755, 0, 0, 1);
        tar.file("data/big", &b"compressible ".repeat(20_000), 0o644, 0, 0, 1);
        tar.finish()
    }

    #[test]
    fn each_compression_round_trips_and_reports_both_digests() {
        let tar = sample_tar();
        for compression in [Compression::None, Compression::Gzip { level: 6 }, Compression::Zstd { level: 3 }]
        {
            let mut writer = compress(Vec::new(), compression).unwrap();
            writer.write_all(&tar).unwrap();
            let (blob, digests) = writer.finish().unwrap();
            assert_eq!(digests.digest, Digest::of(&blob), "{compression:?}");
            assert_eq!(digests.size, blob.len() as u64);
            assert_eq!(digests.diff_id, Digest::of(&tar));
            assert_eq!(digests.uncompressed_size, tar.len() as u64);
            if compression == Compression::None {
                assert_eq!(blob, tar);
            } else {
                assert!(blob.len() < tar.len() / 10, "{compression:?} compressed to {}", blob.len());
            }
            // Under its OCI and its Docker layer type alike.
            for media_type in [compression.oci_media_type(), compression.docker_media_type()] {
                let mut back = Vec::new();
                decompress(&blob[..], Some(media_type)).unwrap().read_to_end(&mut back).unwrap();
                assert_eq!(back, tar, "{compression:?} as {media_type}");
            }
        }
        assert_eq!(
            Compression::Zstd { level: 3 }.docker_media_type(),
            "application/vnd.docker.image.rootfs.diff.tar.zstd",
            "what BuildKit writes into a Docker manifest"
        );
    }

    #[test]
    fn compression_is_deterministic() {
        let tar = sample_tar();
        for compression in [Compression::Gzip { level: 9 }, Compression::Zstd { level: 19 }] {
            let run = || {
                let mut writer = compress(Vec::new(), compression).unwrap();
                writer.write_all(&tar).unwrap();
                writer.finish().unwrap().1
            };
            assert_eq!(run(), run(), "{compression:?}");
        }
    }

    #[test]
    fn the_thread_count_does_not_change_the_blob() {
        // Several zstd jobs' worth (a job is a few MiB at these levels).
        let mut tar = TarBuilder::new();
        let text: Vec<u8> = (0..400_000u32).flat_map(|i| format!("{i} {}\n", i % 97).into_bytes()).collect();
        tar.file("data/text", &text, 0o644, 0, 0, 1);
        let tar = tar.finish();
        for compression in [Compression::Gzip { level: 6 }, Compression::Zstd { level: 3 }] {
            let blob = |threads| {
                let mut writer = compress_on(Vec::new(), compression, threads).unwrap();
                writer.write_all(&tar).unwrap();
                writer.finish().unwrap()
            };
            let (one, digests) = blob(1);
            assert!(blob(2).0 == one && blob(4).0 == one, "{compression:?}");
            let mut back = Vec::new();
            decompress(&one[..], None).unwrap().read_to_end(&mut back).unwrap();
            assert!(back == tar, "{compression:?}");
            assert_eq!(digests.diff_id, Digest::of(&tar));
        }
    }

    #[test]
    fn the_magic_bytes_win_over_the_media_type() {
        let tar = sample_tar();
        let mut writer = compress(Vec::new(), Compression::Zstd { level: 1 }).unwrap();
        writer.write_all(&tar).unwrap();
        let (blob, _) = writer.finish().unwrap();
        let mut back = Vec::new();
        decompress(&blob[..], Some("application/vnd.docker.image.rootfs.diff.tar.gzip"))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, tar);
    }

    #[test]
    fn non_layer_media_types_and_bad_levels_are_refused() {
        let err = decompress(&b"{}"[..], Some("application/vnd.oci.image.config.v1+json")).err().unwrap();
        assert!(err.to_string().contains("unsupported layer media type"), "{err}");
        let err = compress(Vec::new(), Compression::Gzip { level: 12 }).unwrap_err();
        assert!(err.to_string().contains("out of range for gzip (0-9)"), "{err}");
        let err = compress(Vec::new(), Compression::Zstd { level: 0 }).unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }

    #[test]
    fn corrupt_gzip_fails_to_read() {
        let mut writer = compress(Vec::new(), Compression::Gzip { level: 6 }).unwrap();
        writer.write_all(&sample_tar()).unwrap();
        let (mut blob, _) = writer.finish().unwrap();
        let mid = blob.len() / 2;
        blob[mid..mid + 16].fill(0xff);
        let mut out = Vec::new();
        let err = decompress(&blob[..], None).unwrap().read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
