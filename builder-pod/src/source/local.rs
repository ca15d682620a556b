//! `local://NAME`: a directory of the client's, brought in through its
//! session (buildkit-protocol.md §3.3, §4.1).
//!
//! Each (name, shared-key hint, client shared key) has a directory under the
//! cache root that keeps the last transfer, so sending the same project again
//! moves only what changed. A build gets an immutable layer made of hard links
//! to that directory: the receiver replaces changed files by renaming new
//! ones in, never writing into an existing inode, so a layer never changes
//! under a build. The source's cache key is the hash of the tree's content
//! and metadata, not of the session, so an identical context is `CACHED`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cache::contenthash::{HashCache, WalkError, content_hash, err, sorted_entries};
use crate::cache::{CacheError, CacheManager};
use crate::fsutil::{Differ, ReceiveOptions, ReceiveReport};
use crate::session::filesync::{FileSyncError, SyncRequest, sync};
use crate::session::{Session, SessionManager};

/// How long the named session is waited for (§3.3).
const SESSION_WAIT: Duration = Duration::from_secs(5);

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
    Snapshot { name: String, path: PathBuf, source: std::io::Error },
}

/// What the source op asks for.
#[derive(Debug, Clone, Default)]
pub struct LocalSource {
    pub name: String,
    pub session: Option<String>,
    pub shared_key_hint: String,
    pub request: SyncRequest,
    pub differ: Differ,
}

impl LocalSource {
    /// Reads `local://NAME` and its attributes (`solver/pb/attr.go`).
    pub fn parse(name: &str, attrs: &BTreeMap<String, String>) -> Result<Self, LocalError> {
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
        // `local.session` of the form `a:b` names session b and local `a-NAME` (§3.3).
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

/// A transferred local directory, as a layer and a content key.
#[derive(Debug)]
pub struct Transferred {
    /// The committed layer holding the tree.
    pub layer: String,
    pub content_key: String,
    pub report: ReceiveReport,
}

/// The session to read `src` from: the one its op names, else the build's,
/// each waited for a bounded time (§3.3).
pub async fn find_session(
    sessions: &SessionManager,
    session_ids: &[String],
    src: &LocalSource,
) -> Result<Arc<Session>, LocalError> {
    let mut ids: Vec<&String> = Vec::new();
    // The op usually names the build's own session: wait for each id once.
    for id in src.session.iter().chain(session_ids).filter(|s| !s.is_empty()) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut last_err = String::from("the build names no session");
    for id in ids {
        match sessions.get(id, SESSION_WAIT).await {
            Ok(s) => return Ok(s),
            Err(e) => last_err = e.to_string(),
        }
    }
    Err(LocalError::NoSession { name: src.name.clone(), reason: last_err })
}

/// Transfers `src` from `session` into its kept directory and snapshots it.
/// Concurrent transfers into one directory must be serialised by the caller
/// (`sync_dir` names the directory).
pub async fn transfer(
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
    let previous = hashes.take_last(&dir).filter(|(_, layer)| cache.layer_path(layer).is_dir());
    let report = sync(session, &src.request, &dir, opts).await?;
    // Nothing written or removed: the tree is the one last snapshotted (the
    // receiver is the only writer of this directory), so is its key; this
    // spares a walk of every entry on an unchanged re-send.
    if report.written == 0
        && report.deleted == 0
        && let Some((content_key, layer)) = previous.clone()
    {
        hashes.remember(&dir, &content_key, &layer);
        return Ok(Transferred { layer, content_key, report });
    }

    let (name, sync) = (src.name.clone(), dir.clone());
    let content_key = tokio::task::block_in_place(|| content_hash(&sync, &[""], hashes))
        .map_err(|(path, source)| LocalError::Snapshot { name, path, source })?;
    // The same content as last time (only mtimes moved): its layer is still exactly this tree.
    if let Some((_, layer)) = previous.filter(|(key, _)| *key == content_key) {
        hashes.remember(&dir, &content_key, &layer);
        return Ok(Transferred { layer, content_key, report });
    }
    let pending = cache.new_layer()?;
    let layer_path = pending.path().to_owned();
    tokio::task::block_in_place(|| link_tree(&dir, &layer_path, Path::new("")))
        .map_err(|(path, source)| LocalError::Snapshot { name: src.name.clone(), path, source })?;
    let id = cache.commit_layer(pending)?;
    hashes.remember(&dir, &content_key, &id);
    Ok(Transferred { layer: id, content_key, report })
}

/// The directory kept for one client project: `<name>:<hint>:<shared key>` (§3.3).
pub fn sync_dir(cache: &CacheManager, src: &LocalSource, shared_key: &str) -> PathBuf {
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
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(err(&to))?;
            link_tree(src, dest, &rel)?;
            copy_dir_metadata(&to, &meta).map_err(err(&to))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(err(&from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(err(&to))?;
            std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid())).map_err(err(&to))?;
        } else {
            std::fs::hard_link(&from, &to).map_err(err(&to))?;
        }
    }
    Ok(())
}

fn copy_dir_metadata(to: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
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
}
