//! The content store: blobs (layers, configs, manifests) addressed by their
//! digest, as containerd's content store keeps them, under
//! `<root>/blobs/sha256/<hex>`.
//!
//! A blob only ever appears under its digest once its bytes were checked
//! against it: writers fill a private file under `<root>/ingest/`, verify
//! size and sha256, fsync, then rename it into place. A write that is killed
//! or fails leaves at most a stray ingest file (removed at the next
//! [`ContentStore::open`]), never a wrong blob. Two writers of the same digest
//! each rename their own complete copy; the last rename wins and both copies
//! are identical, so readers always see a whole blob.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A content digest, `sha256:<64 lowercase hex>`. Only sha256 is accepted:
/// it is what every registry and BuildKit produce, and the store lays blobs
/// out under the algorithm's name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher holds.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self { hex: hex::encode(hasher.finalize()) }
    }

    /// The hex part, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = ContentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ContentError::InvalidDigest { digest: s.to_owned() };
        let (algorithm, hex) = s.split_once(':').ok_or_else(invalid)?;
        if algorithm != "sha256"
            || hex.len() != 64
            || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid());
        }
        Ok(Self { hex: hex.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest { digest: String },
    #[error("creating content store directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cleaning stale ingest files in {path}: {source}")]
    CleanIngest { path: PathBuf, source: io::Error },
    #[error("writing blob {digest}: {source}")]
    Write { digest: String, source: io::Error },
    #[error("reading the data of blob {digest}: {source}")]
    ReadSource { digest: String, source: io::Error },
    #[error("blob {expected}: content has digest {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    #[error("committing blob {digest}: {source}")]
    Commit { digest: Digest, source: io::Error },
    #[error("blob {digest} not found in the content store")]
    NotFound { digest: Digest },
    #[error("reading blob {digest}: {source}")]
    Read { digest: Digest, source: io::Error },
}

/// What a finished write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// A content-addressed blob store rooted at one directory.
#[derive(Debug, Clone)]
pub(crate) struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the store under `root` and removes ingest
    /// files a killed writer left behind. Call it once per daemon: the daemon's
    /// root lock keeps a second process from writing at the same time.
    pub(crate) fn open(root: impl Into<PathBuf>) -> Result<Self, ContentError> {
        let store = Self { root: root.into() };
        for dir in [store.blobs_dir(), store.ingest_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| ContentError::CreateDir { path: dir, source })?;
        }
        let ingest = store.ingest_dir();
        let clean = |source| ContentError::CleanIngest { path: ingest.clone(), source };
        for entry in std::fs::read_dir(&ingest).map_err(clean)? {
            let path = entry.map_err(clean)?.path();
            std::fs::remove_file(&path).or_else(ignore_not_found).map_err(clean)?;
        }
        Ok(store)
    }

    /// Where the blob lives (whether or not it is there yet).
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub(crate) async fn exists(&self, digest: &Digest) -> bool {
        tokio::fs::symlink_metadata(self.blob_path(digest)).await.is_ok_and(|m| m.is_file())
    }

    pub(crate) async fn size(&self, digest: &Digest) -> Result<u64, ContentError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) => Err(self.read_error(digest, e)),
        }
    }

    /// The whole blob in memory; for manifests and configs, not layers.
    pub(crate) async fn read(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        tokio::fs::read(self.blob_path(digest)).await.map_err(|e| self.read_error(digest, e))
    }

    /// Opens the blob for streaming reads.
    pub(crate) async fn open_blob(&self, digest: &Digest) -> Result<tokio::fs::File, ContentError> {
        tokio::fs::File::open(self.blob_path(digest)).await.map_err(|e| self.read_error(digest, e))
    }

    /// Removes the blob; `false` when it was not there.
    fn read_error(&self, digest: &Digest, source: io::Error) -> ContentError {
        if source.kind() == io::ErrorKind::NotFound {
            ContentError::NotFound { digest: digest.clone() }
        } else {
            ContentError::Read { digest: digest.clone(), source }
        }
    }

    /// Streams `reader` into the store as blob `expected`, checking the digest
    /// and, when given, the size (a source that runs past the size is cut off
    /// at once rather than read to the end).
    pub(crate) async fn write(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        mut reader: impl AsyncRead + Unpin,
    ) -> Result<BlobInfo, ContentError> {
        let write_err = |source| ContentError::Write { digest: expected.to_string(), source };
        let temp = self.temp_file().map_err(write_err)?;
        let (std_file, temp_path) = temp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|source| ContentError::ReadSource { digest: expected.to_string(), source })?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if let Some(limit) = expected_size.filter(|limit| size > *limit) {
                return Err(ContentError::SizeMismatch {
                    digest: expected.clone(),
                    expected: limit,
                    actual: size,
                });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await.map_err(write_err)?;
        }
        file.sync_all().await.map_err(write_err)?;
        drop(file);
        let info = BlobInfo { digest: Digest::from_hasher(hasher), size };
        check(&info, Some(expected), expected_size)?;
        // The rename and directory fsync are short metadata operations.
        let path = self.blob_path(&info.digest);
        let digest = info.digest.clone();
        let dir = self.blobs_dir();
        tokio::task::spawn_blocking(move || commit(temp_path, &path, &dir))
            .await
            .map_err(|e| ContentError::Commit { digest: digest.clone(), source: io::Error::other(e) })?
            .map_err(|source| ContentError::Commit { digest, source })?;
        Ok(info)
    }

    /// Stores bytes already in memory (manifests, configs).
    pub(crate) async fn write_bytes(
        &self,
        expected: &Digest,
        bytes: &[u8],
    ) -> Result<BlobInfo, ContentError> {
        self.write(expected, Some(bytes.len() as u64), bytes).await
    }

    /// Starts a synchronous write whose digest is learnt at the end, for
    /// producers such as layer compression that run on a blocking thread.
    pub(crate) fn ingest(&self) -> Result<Ingest, ContentError> {
        let temp =
            self.temp_file().map_err(|source| ContentError::Write { digest: "(new blob)".into(), source })?;
        Ok(Ingest { store: self.clone(), temp, hasher: Sha256::new(), size: 0 })
    }

    fn temp_file(&self) -> io::Result<NamedTempFile> {
        tempfile::Builder::new().prefix("blob-").tempfile_in(self.ingest_dir())
    }
}

fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

fn check(info: &BlobInfo, expected: Option<&Digest>, expected_size: Option<u64>) -> Result<(), ContentError> {
    if let Some(expected) = expected.filter(|d| **d != info.digest) {
        return Err(ContentError::DigestMismatch { expected: expected.clone(), actual: info.digest.clone() });
    }
    if let Some(expected_size) = expected_size.filter(|s| *s != info.size) {
        return Err(ContentError::SizeMismatch {
            digest: info.digest.clone(),
            expected: expected_size,
            actual: info.size,
        });
    }
    Ok(())
}

/// Moves a verified, synced temp file under its digest and syncs the
/// directory so the name survives a crash too.
fn commit(temp: tempfile::TempPath, path: &Path, dir: &Path) -> io::Result<()> {
    temp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A blob being written synchronously; see [`ContentStore::ingest`].
/// Dropping it without [`Ingest::commit`] discards the data.
#[derive(Debug)]
pub(crate) struct Ingest {
    store: ContentStore,
    temp: NamedTempFile,
    hasher: Sha256,
    size: u64,
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.temp.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

impl Ingest {
    /// Verifies against `expected` (digest and size) when given, then makes
    /// the blob visible under its digest.
    pub(crate) fn commit(mut self, expected: Option<(&Digest, u64)>) -> Result<BlobInfo, ContentError> {
        let info = BlobInfo { digest: Digest::from_hasher(self.hasher), size: self.size };
        let fail = |source| ContentError::Commit { digest: info.digest.clone(), source };
        self.temp.flush().map_err(fail)?;
        self.temp.as_file().sync_all().map_err(fail)?;
        check(&info, expected.map(|(d, _)| d), expected.map(|(_, s)| s))?;
        commit(self.temp.into_temp_path(), &self.store.blob_path(&info.digest), &self.store.blobs_dir())
            .map_err(fail)?;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().join("content")).unwrap();
        (dir, store)
    }

    #[test]
    fn digests_parse_and_print_in_canonical_form() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_string(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        for bad in [
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:abc",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000",
        ] {
            let err = bad.parse::<Digest>().unwrap_err().to_string();
            assert!(err.contains("invalid digest"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn a_verified_write_is_readable_under_its_digest() {
        let (_dir, store) = store();
        let data = b"layer bytes".repeat(10_000);
        let digest = Digest::of(&data);
        assert!(!store.exists(&digest).await);
        let info = store.write(&digest, Some(data.len() as u64), &data[..]).await.unwrap();
        assert_eq!(info, BlobInfo { digest: digest.clone(), size: data.len() as u64 });
        assert!(store.exists(&digest).await);
        assert_eq!(store.size(&digest).await.unwrap(), data.len() as u64);
        assert_eq!(store.read(&digest).await.unwrap(), data);
        let path = store.blob_path(&digest);
        assert!(path.ends_with(format!("blobs/sha256/{}", digest.hex())), "{}", path.display());
        std::fs::remove_file(&path).unwrap();
        let err = store.read(&digest).await.unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
    }

    #[tokio::test]
    async fn bad_content_never_lands_under_the_digest() {
        let (_dir, store) = store();
        let claimed = Digest::of(b"the real thing");
        let err = store.write(&claimed, None, &b"something else"[..]).await.unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(!store.exists(&claimed).await);

        let err = store.write(&claimed, Some(3), &b"the real thing"[..]).await.unwrap_err();
        assert!(err.to_string().contains("expected 3 bytes"), "{err}");
        assert!(!store.exists(&claimed).await);

        let err = store.write(&claimed, Some(100), &b"the real thing"[..]).await.unwrap_err();
        assert!(err.to_string().contains("expected 100 bytes, got 14"), "{err}");
        assert!(!store.exists(&claimed).await);
        // Failed writes clean their temp files up.
        assert_eq!(std::fs::read_dir(store.root.join("ingest")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn an_interrupted_source_leaves_nothing_behind() {
        let (_dir, store) = store();
        let digest = Digest::of(b"whole");
        let broken = AsyncReadExt::chain(&b"who"[..], FailingReader);
        let err = store.write(&digest, None, broken).await.unwrap_err();
        assert!(matches!(err, ContentError::ReadSource { .. }), "{err}");
        assert!(!store.exists(&digest).await);
        assert_eq!(std::fs::read_dir(store.root.join("ingest")).unwrap().count(), 0);
    }

    struct FailingReader;

    impl AsyncRead for FailingReader {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer went away")))
        }
    }

    #[tokio::test]
    async fn stale_ingest_files_are_removed_on_open() {
        let (dir, store) = store();
        std::fs::write(store.root.join("ingest").join("blob-killed"), b"half a layer").unwrap();
        let store = ContentStore::open(dir.path().join("content")).unwrap();
        assert_eq!(std::fs::read_dir(store.root.join("ingest")).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_of_one_digest_all_succeed() {
        let (_dir, store) = store();
        let data = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>();
        let digest = Digest::of(&data);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, data, digest) = (store.clone(), data.clone(), digest.clone());
            tasks.spawn(async move { store.write(&digest, Some(data.len() as u64), &data[..]).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.unwrap().unwrap().digest, digest);
        }
        assert_eq!(store.read(&digest).await.unwrap(), data);
        assert_eq!(std::fs::read_dir(store.root.join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn a_sync_ingest_learns_its_digest_at_commit() {
        let (_dir, store) = store();
        let mut ingest = store.ingest().unwrap();
        ingest.write_all(b"compressed layer").unwrap();
        let info = ingest.commit(None).unwrap();
        assert_eq!(info.digest, Digest::of(b"compressed layer"));
        assert_eq!(std::fs::read(store.blob_path(&info.digest)).unwrap(), b"compressed layer");

        let mut ingest = store.ingest().unwrap();
        ingest.write_all(b"abc").unwrap();
        let wrong = Digest::of(b"abd");
        let err = ingest.commit(Some((&wrong, 3))).unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(!store.blob_path(&wrong).exists());
        assert!(!store.blob_path(&Digest::of(b"abc")).exists());
    }
}
