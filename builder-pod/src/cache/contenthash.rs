//! Content hashes of file trees: what a source's or a selection's cache
//! key is made of (BuildKit's `cache/contenthash`). Paths, types, modes,
//! owners, link targets and file contents count; mtimes do not.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::Snapshot;

/// A failed walk: the path and what went wrong there.
pub(crate) type WalkError = (PathBuf, std::io::Error);

pub(crate) fn err(p: &Path) -> impl FnOnce(std::io::Error) -> WalkError {
    let p = p.to_owned();
    move |e| (p, e)
}

/// A directory's entry names in byte order.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<std::ffi::OsString>, WalkError> {
    let mut names = std::fs::read_dir(dir)
        .map_err(err(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err(dir))?;
    names.sort();
    Ok(names)
}

/// File content hashes by (inode, size, mtime): a file the receiver did not
/// replace keeps its inode, so its hash need not be computed again.
#[derive(Debug, Default)]
pub(crate) struct HashCache {
    known: Mutex<HashMap<FileIdentity, [u8; 32]>>,
    /// Per kept directory: the content key and snapshot last made of it.
    last: Mutex<HashMap<PathBuf, (String, Snapshot)>>,
}

impl HashCache {
    /// Records the content hash of a file just written, by its identity.
    pub(crate) fn record(&self, meta: &std::fs::Metadata, digest: [u8; 32]) {
        let mut known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.insert(identity(meta), digest);
    }

    /// Takes out the content key and snapshot last made of `dir`.
    pub(crate) fn take_last(&self, dir: &Path) -> Option<(String, Snapshot)> {
        self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(dir)
    }

    pub(crate) fn remember(&self, dir: &Path, key: &str, snapshot: &Snapshot) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.insert(dir.to_owned(), (key.to_owned(), snapshot.clone()));
    }
}

/// Inode, device, size and mtime in ns.
type FileIdentity = (u64, u64, u64, i64);

fn identity(meta: &std::fs::Metadata) -> FileIdentity {
    (meta.ino(), meta.dev(), meta.size(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec())
}

/// What the content key takes from an entry's metadata: its mode (with the
/// type bits), owner and, for a file, its identity in the hash cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryInfo {
    mode: u32,
    uid: u32,
    gid: u32,
    identity: FileIdentity,
}

impl EntryInfo {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Self {
        Self { mode: meta.mode(), uid: meta.uid(), gid: meta.gid(), identity: identity(meta) }
    }
}

/// The hash of the entries `paths` (relative to `root`; "" is the root
/// itself) with everything below them. A missing path hashes as missing.
pub(crate) fn content_hash(root: &Path, paths: &[&str], hashes: &HashCache) -> Result<String, WalkError> {
    let mut h = Sha256::new();
    for rel in paths {
        let rel = Path::new(rel.trim_start_matches('/'));
        h.update(b"\0path\0");
        h.update(rel.as_os_str().as_encoded_bytes());
        if rel.as_os_str().is_empty() {
            hash_tree(root, rel, &mut h, hashes)?;
            continue;
        }
        match std::fs::symlink_metadata(root.join(rel)) {
            Ok(_) => hash_entry(root, rel, &mut h, hashes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => h.update(b"missing"),
            Err(e) => return Err((root.join(rel), e)),
        }
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Hashes every entry's path, type, mode, owner and content under `src/rel`
/// into `h`, in sorted order; mtimes are left out, as content is what counts.
pub(crate) fn hash_tree(src: &Path, rel: &Path, h: &mut Sha256, hashes: &HashCache) -> Result<(), WalkError> {
    for name in sorted_entries(&src.join(rel))? {
        hash_entry(src, &rel.join(&name), h, hashes)?;
    }
    Ok(())
}

/// One entry, and everything below it if it is a directory.
fn hash_entry(src: &Path, rel: &Path, h: &mut Sha256, hashes: &HashCache) -> Result<(), WalkError> {
    let path = src.join(rel);
    let meta = std::fs::symlink_metadata(&path).map_err(err(&path))?;
    hash_one(src, rel, &EntryInfo::of(&meta), h, hashes)?;
    if meta.is_dir() {
        hash_tree(src, rel, h, hashes)?;
    }
    Ok(())
}

/// One entry alone, with its metadata already read; a directory's entries
/// follow it in the hash.
fn hash_one(
    src: &Path,
    rel: &Path,
    e: &EntryInfo,
    h: &mut Sha256,
    hashes: &HashCache,
) -> Result<(), WalkError> {
    let path = src.join(rel);
    h.update(rel.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(format!("{:o} {} {} ", e.mode, e.uid, e.gid).as_bytes());
    let kind = rustix::fs::FileType::from_raw_mode(e.mode);
    if kind == rustix::fs::FileType::Directory {
        h.update(b"dir\n");
    } else if kind == rustix::fs::FileType::Symlink {
        let target = std::fs::read_link(&path).map_err(err(&path))?;
        h.update(b"symlink ");
        h.update(target.as_os_str().as_encoded_bytes());
        h.update(b"\n");
    } else {
        if kind == rustix::fs::FileType::RegularFile {
            h.update(file_hash(&path, e.identity, hashes).map_err(err(&path))?);
        }
        h.update(b"\n");
    }
    Ok(())
}

/// The key `content_hash(root, &[""])` gives, made from the tree's entries
/// in pre-order with siblings by name, as a receiver that has just walked
/// the tree already has them: no second walk.
#[derive(Debug)]
pub(crate) struct TreeKey<'a> {
    root: &'a Path,
    hashes: &'a HashCache,
    h: Sha256,
}

impl<'a> TreeKey<'a> {
    pub(crate) fn new(root: &'a Path, hashes: &'a HashCache) -> Self {
        let mut h = Sha256::new();
        h.update(b"\0path\0");
        Self { root, hashes, h }
    }

    /// The next entry, `rel` relative to the root, with its metadata.
    pub(crate) fn entry(&mut self, rel: &Path, info: &EntryInfo) -> Result<(), WalkError> {
        hash_one(self.root, rel, info, &mut self.h, self.hashes)
    }

    pub(crate) fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.h.finalize()))
    }
}

fn file_hash(path: &Path, key: FileIdentity, hashes: &HashCache) -> std::io::Result<[u8; 32]> {
    if let Some(h) = hashes.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
        return Ok(*h);
    }
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let digest: [u8; 32] = h.finalize().into();
    hashes.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, digest);
    Ok(digest)
}
