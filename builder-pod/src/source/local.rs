//! `local://NAME`: a directory of the client's, brought in through its
//! session (docs/protocol.md §3.3, §4.1).
//!
//! Each (name, shared-key hint, client shared key) has a directory under the
//! cache root that keeps the last transfer, so sending the same project again
//! moves only what changed. A build gets an immutable snapshot made of hard
//! links to that directory: the whole tree in one layer, or, when few entries
//! changed, the last snapshot with a layer of just the changes on top
//! (whiteouts for what was removed). The receiver replaces changed files by
//! renaming new ones in, never writing into an existing inode, so a layer
//! never changes under a build. The source's cache key is the hash of the
//! tree's content and metadata, not of the session, so an identical context
//! is `CACHED`.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cache::contenthash::{HashCache, WalkError, content_hash, err, sorted_entries};
use crate::cache::{CacheError, CacheManager, Snapshot};
use crate::fsutil::{Change, Differ, ReceiveOptions, ReceiveReport};
use crate::session::filesync::{FileSyncError, SyncRequest, sync};
use crate::session::{Group, Session};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no session to read local {name:?} from: {reason}")]
    NoSession { name: String, reason: String },
    #[error(transparent)]
    Sync(#[from] FileSyncError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("local {name:?}: attribute {attr} is not a JSON list of strings: {source}")]
    Attr { name: String, attr: String, source: serde_json::Error },
    #[error("snapshotting local {name:?} at {path}: {source}")]
    Snapshot { name: String, path: PathBuf, source: io::Error },
}

/// What the source op asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalSource {
    pub name: String,
    pub session: Option<String>,
    pub shared_key_hint: String,
    pub request: SyncRequest,
    pub differ: Differ,
}

impl LocalSource {
    /// Reads `local://NAME` and its attributes (`solver/pb/attr.go`).
    pub(crate) fn parse(name: &str, attrs: &BTreeMap<String, String>) -> Result<Self, LocalError> {
        let list = |attr: &str| -> Result<Vec<String>, LocalError> {
            match attrs.get(attr) {
                None => Ok(Vec::new()),
                Some(v) => serde_json::from_str(v).map_err(|source| LocalError::Attr {
                    name: name.to_owned(),
                    attr: attr.to_owned(),
                    source,
                }),
            }
        };
        // `local.session` of the form `a:b` names session b and local `a-NAME` (docs/protocol.md §3.3).
        let (dir_name, session) = match attrs.get("local.session") {
            Some(s) => match s.split_once(':') {
                Some((prefix, id)) => (format!("{prefix}-{name}"), Some(id.to_owned())),
                None => (name.to_owned(), Some(s.clone())),
            },
            None => (name.to_owned(), None),
        };
        Ok(Self {
            name: name.to_owned(),
            session: session.filter(|s| !s.is_empty()),
            shared_key_hint: attrs.get("local.sharedkeyhint").cloned().unwrap_or_default(),
            request: SyncRequest {
                dir_name,
                include_patterns: list("local.includepattern")?,
                exclude_patterns: list("local.excludepatterns")?,
                follow_paths: list("local.followpaths")?,
            },
            differ: match attrs.get("local.differ").map(String::as_str) {
                Some("none") => Differ::None,
                _ => Differ::Metadata,
            },
        })
    }
}

/// A transferred local directory, as a snapshot and a content key.
#[derive(Debug)]
pub(crate) struct Transferred {
    /// The whole tree in one layer, or the last snapshot with a layer of
    /// the difference on top.
    pub snapshot: Snapshot,
    pub content_key: String,
    pub report: ReceiveReport,
}

/// A snapshot made as a difference over the last one is stacked at most
/// this deep; the next is the whole tree in one layer again.
const MAX_STACKED: usize = 8;

/// A difference is made when at most one entry in this many changed: past
/// that, linking the whole tree costs little more than the difference.
const DIFFERENCE_RATIO: u64 = 8;

/// The session to read `src` from: the one its op names, else the build's
/// (docs/protocol.md §3.3).
pub(crate) async fn find_session(sessions: &Group, src: &LocalSource) -> Result<Arc<Session>, LocalError> {
    sessions
        .preferring(src.session.as_deref())
        .first()
        .await
        .map_err(|e| LocalError::NoSession { name: src.name.clone(), reason: e.to_string() })
}

/// Transfers `src` from `session` into its kept directory and snapshots it.
/// Concurrent transfers into one directory must be serialised by the caller
/// (`sync_dir` names the directory).
pub(crate) async fn transfer(
    cache: &CacheManager,
    session: &Session,
    src: &LocalSource,
    hashes: &Arc<HashCache>,
) -> Result<Transferred, LocalError> {
    let dir = sync_dir(cache, src, &session.shared_key);
    std::fs::create_dir_all(&dir).map_err(|source| LocalError::Snapshot {
        name: src.name.clone(),
        path: dir.clone(),
        source,
    })?;
    let opts =
        ReceiveOptions { differ: src.differ, hashes: Some(Arc::clone(hashes)), ..ReceiveOptions::default() };
    // The last snapshot's record is taken out while the directory changes: a
    // transfer that fails half-way leaves a tree that is neither that
    // snapshot nor the sender's, and must not be taken for the first.
    let previous = hashes
        .take_last(&dir)
        .filter(|(_, snapshot)| snapshot.layers.iter().all(|l| cache.layer_path(l).is_dir()));
    let report = sync(session, &src.request, &dir, opts).await?;
    let snap_err = |(path, source)| LocalError::Snapshot { name: src.name.clone(), path, source };
    // Nothing written or removed: the tree is the one last snapshotted (the
    // receiver is the only writer of this directory), so is its key.
    let content_key = match (&previous, report.written + report.deleted, &report.content_key) {
        (Some((key, _)), 0, _) => key.clone(),
        (_, _, Some(key)) => key.clone(),
        _ => tokio::task::block_in_place(|| content_hash(&dir, &[""], hashes)).map_err(snap_err)?,
    };
    // The same content as last time (only mtimes moved): that snapshot is still exactly this tree.
    if let Some((_, snapshot)) = previous.as_ref().filter(|(key, _)| *key == content_key) {
        hashes.remember(&dir, &content_key, snapshot);
        return Ok(Transferred { snapshot: snapshot.clone(), content_key, report });
    }
    let pending = cache.new_layer()?;
    let snapshot = match (previous, &report.changes) {
        (Some((_, base)), Some(changes))
            if base.layers.len() < MAX_STACKED
                && changes.len() as u64 * DIFFERENCE_RATIO <= report.entries =>
        {
            tokio::task::block_in_place(|| difference_tree(&dir, pending.path(), changes))
                .map_err(snap_err)?;
            cache.commit_layer_over(pending, &base)?
        }
        _ => {
            tokio::task::block_in_place(|| link_tree(&dir, pending.path(), Path::new("")))
                .map_err(snap_err)?;
            Snapshot::default().with(cache.commit_layer(pending)?)
        }
    };
    hashes.remember(&dir, &content_key, &snapshot);
    Ok(Transferred { snapshot, content_key, report })
}

/// The directory kept for one client project: `<name>:<hint>:<shared key>` (docs/protocol.md §3.3).
pub(crate) fn sync_dir(cache: &CacheManager, src: &LocalSource, shared_key: &str) -> PathBuf {
    let key = format!("{}:{}:{}", src.name, src.shared_key_hint, shared_key);
    cache.root().join("local").join(hex::encode(Sha256::digest(key.as_bytes())))
}

/// Mirrors `src/rel` into `dest/rel`: directories and symlinks anew with
/// their metadata, everything else as hard links.
fn link_tree(src: &Path, dest: &Path, rel: &Path) -> Result<(), WalkError> {
    for name in sorted_entries(&src.join(rel))? {
        let rel = rel.join(&name);
        let (from, to) = (src.join(&rel), dest.join(&rel));
        let meta = std::fs::symlink_metadata(&from).map_err(err(&from))?;
        if meta.is_dir() {
            std::fs::create_dir(&to).map_err(err(&to))?;
            link_tree(src, dest, &rel)?;
            copy_dir_metadata(&to, &meta).map_err(err(&to))?;
        } else {
            link_entry(&from, &to, &meta)?;
        }
    }
    Ok(())
}

/// A symlink anew with its owner; anything else but a directory as a hard link.
fn link_entry(from: &Path, to: &Path, meta: &std::fs::Metadata) -> Result<(), WalkError> {
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).map_err(err(from))?;
        std::os::unix::fs::symlink(&target, to).map_err(err(to))?;
        std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).map_err(err(to))
    } else {
        std::fs::hard_link(from, to).map_err(err(to))
    }
}

/// Makes in `dest` the layer that turns the last snapshot of `src` into
/// `src` as it is now, from the receiver's list of changes: each written
/// entry as `link_tree` would make it, a whiteout for each removed one, and
/// the directories above them with their metadata.
fn difference_tree(src: &Path, dest: &Path, changes: &[Change]) -> Result<(), WalkError> {
    // The directories made, in the order made.
    let mut dirs: Vec<&Path> = Vec::new();
    let mut made: HashSet<&Path> = HashSet::new();
    let mut make_dir = |rel| -> Result<(), WalkError> {
        if made.insert(rel) {
            let to = dest.join(rel);
            std::fs::create_dir(&to).map_err(err(&to))?;
            dirs.push(rel);
        }
        Ok(())
    };
    for change in changes {
        let (Change::Written(rel) | Change::Deleted(rel)) = change;
        let mut parents: Vec<&Path> =
            rel.ancestors().skip(1).take_while(|p| !p.as_os_str().is_empty()).collect();
        parents.reverse();
        for parent in parents {
            make_dir(parent)?;
        }
        let to = dest.join(rel);
        match change {
            Change::Deleted(_) => {
                crate::snapshot::make_whiteout(&to).map_err(|e| (to, io::Error::other(e)))?
            }
            Change::Written(_) => {
                let from = src.join(rel);
                let meta = std::fs::symlink_metadata(&from).map_err(err(&from))?;
                if meta.is_dir() {
                    make_dir(rel)?;
                } else {
                    link_entry(&from, &to, &meta)?;
                }
            }
        }
    }
    // Deepest first: making an entry in a directory moves its mtime.
    for rel in dirs.into_iter().rev() {
        let from = src.join(rel);
        let meta = std::fs::symlink_metadata(&from).map_err(err(&from))?;
        let to = dest.join(rel);
        copy_dir_metadata(&to, &meta).map_err(err(&to))?;
    }
    Ok(())
}

fn copy_dir_metadata(to: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let times = std::fs::FileTimes::new().set_modified(meta.modified()?).set_accessed(meta.accessed()?);
    std::fs::File::open(to)?.set_times(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_like_buildkit() {
        let attrs = BTreeMap::from([
            ("local.session".to_owned(), "abc".to_owned()),
            ("local.sharedkeyhint".to_owned(), "context".to_owned()),
            ("local.excludepatterns".to_owned(), r#"["*.log","!keep.log"]"#.to_owned()),
            ("local.followpaths".to_owned(), r#"["a.txt"]"#.to_owned()),
            ("local.differ".to_owned(), "none".to_owned()),
        ]);
        let s = LocalSource::parse("context", &attrs).unwrap();
        assert_eq!(s.session.as_deref(), Some("abc"));
        assert_eq!(s.request.dir_name, "context");
        assert_eq!(s.request.exclude_patterns, ["*.log", "!keep.log"]);
        assert_eq!(s.request.follow_paths, ["a.txt"]);
        assert_eq!(s.differ, Differ::None);

        let prefixed = BTreeMap::from([("local.session".to_owned(), "ctx:sess".to_owned())]);
        let s = LocalSource::parse("context", &prefixed).unwrap();
        assert_eq!((s.request.dir_name.as_str(), s.session.as_deref()), ("ctx-context", Some("sess")));

        let bad = BTreeMap::from([("local.followpaths".to_owned(), "a.txt".to_owned())]);
        let err = LocalSource::parse("context", &bad).unwrap_err().to_string();
        assert!(err.contains("local.followpaths"), "{err}");
    }

    fn snapshot(src: &Path, hashes: &HashCache) -> (tempfile::TempDir, String) {
        let dest = tempfile::tempdir().unwrap();
        let key = content_hash(src, &[""], hashes).unwrap();
        link_tree(src, dest.path(), Path::new("")).unwrap();
        (dest, key)
    }

    #[test]
    fn the_snapshot_links_the_tree_and_its_key_follows_content_not_mtimes() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/a.txt"), "a").unwrap();
        std::fs::write(src.path().join("b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("d/a.txt", src.path().join("link")).unwrap();
        let hashes = HashCache::default();
        let (dest, key1) = snapshot(src.path(), &hashes);
        assert_eq!(std::fs::read_to_string(dest.path().join("d/a.txt")).unwrap(), "a");
        assert_eq!(std::fs::read_link(dest.path().join("link")).unwrap(), Path::new("d/a.txt"));
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&src.path().join("b.txt")), ino(&dest.path().join("b.txt")), "files are hard links");

        // Same content again: same key. A touched file with the same bytes: same key.
        assert_eq!(snapshot(src.path(), &hashes).1, key1);
        let f = std::fs::File::options().write(true).open(src.path().join("b.txt")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(snapshot(src.path(), &HashCache::default()).1, key1);

        // New content, as the receiver writes it (a new file renamed in): another key.
        std::fs::write(src.path().join("b.new"), "B").unwrap();
        std::fs::rename(src.path().join("b.new"), src.path().join("b.txt")).unwrap();
        assert_ne!(snapshot(src.path(), &hashes).1, key1);
        // And the earlier snapshot still has the old bytes.
        assert_eq!(std::fs::read_to_string(dest.path().join("b.txt")).unwrap(), "b");
    }

    /// Sends `client` into `kept` as a build's context transfer does.
    async fn receive_into(client: &Path, kept: &Path, hashes: &Arc<HashCache>) -> ReceiveReport {
        use futures::StreamExt;
        use tokio_stream::wrappers::ReceiverStream;
        let (to_receiver, from_sender) = tokio::sync::mpsc::channel(16);
        let (to_sender, from_receiver) = tokio::sync::mpsc::channel(16);
        let opts = ReceiveOptions { hashes: Some(Arc::clone(hashes)), ..ReceiveOptions::default() };
        let filter = crate::fsutil::WalkFilter::default();
        let (sent, received) = tokio::join!(
            crate::fsutil::send(client, &filter, ReceiverStream::new(from_receiver).map(Ok), to_receiver),
            crate::fsutil::receive(kept, ReceiverStream::new(from_sender).map(Ok), to_sender, opts),
        );
        sent.unwrap();
        received.unwrap()
    }

    /// Every entry below `root`: mode, owner, mtime (but a symlink's) and content or target.
    fn listing(root: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            for name in sorted_entries(&root.join(&rel)).unwrap() {
                let rel = rel.join(name);
                let path = root.join(&rel);
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let what = if meta.is_dir() {
                    todo.push(rel.clone());
                    format!("dir {}", meta.mtime_nsec() + meta.mtime() * 1_000_000_000)
                } else if meta.is_symlink() {
                    format!("-> {}", std::fs::read_link(&path).unwrap().display())
                } else {
                    format!("{:?} {}", std::fs::read(&path).unwrap(), meta.mtime())
                };
                out.insert(rel, format!("{:o} {}:{} {what}", meta.mode(), meta.uid(), meta.gid()));
            }
        }
        out
    }

    #[tokio::test]
    async fn a_layer_of_the_changes_over_the_last_snapshot_shows_the_tree_sent() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let (client, kept) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let c = |rel: &str| client.path().join(rel);
        for dir in ["a", "b/deep", "gone-dir/sub", "to-file", "kept-dir"] {
            std::fs::create_dir_all(c(dir)).unwrap();
        }
        for file in ["a/1.txt", "a/2.txt", "b/deep/x", "gone.txt", "gone-dir/sub/y", "to-dir", "to-file/z"] {
            std::fs::write(c(file), format!("{file} first")).unwrap();
        }
        std::os::unix::fs::symlink("a/1.txt", c("link")).unwrap();
        let hashes = Arc::new(HashCache::default());
        receive_into(client.path(), kept.path(), &hashes).await;
        let pending = cache.new_layer().unwrap();
        link_tree(kept.path(), pending.path(), Path::new("")).unwrap();
        let base = Snapshot::default().with(cache.commit_layer(pending).unwrap());
        let before = listing(client.path());

        // Every kind of change: content, removal (of a file and of a tree),
        // a file turned directory and back, new entries deep down, a mode.
        std::fs::write(c("a/1.txt"), "a/1.txt second, longer").unwrap();
        std::fs::remove_file(c("gone.txt")).unwrap();
        std::fs::remove_dir_all(c("gone-dir")).unwrap();
        std::fs::remove_file(c("to-dir")).unwrap();
        std::fs::create_dir(c("to-dir")).unwrap();
        std::fs::write(c("to-dir/inside"), "inside").unwrap();
        std::fs::remove_dir_all(c("to-file")).unwrap();
        std::fs::write(c("to-file"), "now a file").unwrap();
        std::fs::create_dir_all(c("new/deeper")).unwrap();
        std::fs::write(c("new/deeper/f"), "new").unwrap();
        std::fs::set_permissions(c("b"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_file(c("link")).unwrap();
        std::os::unix::fs::symlink("a/2.txt", c("link")).unwrap();
        let report = receive_into(client.path(), kept.path(), &hashes).await;
        let changes = report.changes.unwrap();
        assert!(changes.len() < 20, "{changes:?}");
        let pending = cache.new_layer().unwrap();
        difference_tree(kept.path(), pending.path(), &changes).unwrap();
        let snapshot = cache.commit_layer_over(pending, &base).unwrap();
        assert_eq!(snapshot.layers.len(), 2);

        let view = crate::cache::mount::mount(&cache, &snapshot, None).unwrap();
        assert_eq!(listing(view.path()), listing(client.path()));
        // The earlier snapshot is untouched.
        let old = crate::cache::mount::mount(&cache, &base, None).unwrap();
        assert_eq!(listing(old.path()), before);
    }
}
