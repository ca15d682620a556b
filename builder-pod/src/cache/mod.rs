//! The cache manager: immutable snapshots made of layers, and the records
//! that map a vertex's cache key to its snapshot.
//!
//! A layer is a directory in overlayfs format under `<root>/layers/<id>`;
//! a snapshot is a stack of layers, bottom first, mounted with overlayfs
//! when something needs to see or change it. Layers are built under
//! `<root>/tmp` and renamed into place once complete, and a record is only
//! written after its layers exist, so a daemon killed at any point restarts
//! with a consistent store: anything under `tmp` and any layer no record
//! names is removed at start.

pub(crate) mod contenthash;
pub(crate) mod mount;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// cache key → JSON [`Record`].
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// Facts derived from layers that are worth keeping (e.g. a layer's compressed blob).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cache metadata ({action}): {source}")]
    Db { action: &'static str, source: Box<redb::Error> },
    #[error("cache record {key}: {source}")]
    Record { key: String, source: serde_json::Error },
    #[error("cache metadata {key}: {source}")]
    Meta { key: String, source: serde_json::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_owned(), source }
}

fn db_err<E: Into<redb::Error>>(action: &'static str) -> impl FnOnce(E) -> CacheError {
    move |e| CacheError::Db { action, source: Box::new(e.into()) }
}

/// An immutable file system: layers bottom first. Empty is scratch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub layers: Vec<String>,
}

impl Snapshot {
    /// This snapshot with `layer` on top.
    pub(crate) fn with(&self, layer: String) -> Self {
        let mut layers = self.layers.clone();
        layers.push(layer);
        Self { layers }
    }
}

/// What is stored under a cache key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// One snapshot per output of the vertex.
    pub outputs: Vec<Snapshot>,
    pub description: String,
    pub created: u64,
}

/// A layer directory being built; dropped unfinished, it is removed.
#[derive(Debug)]
pub(crate) struct PendingLayer {
    id: String,
    path: PathBuf,
    committed: bool,
}

impl PendingLayer {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PendingLayer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[derive(Debug)]
pub(crate) struct CacheManager {
    root: PathBuf,
    db: redb::Database,
    /// Sizes of committed layers, measured once: a layer never changes.
    sizes: std::sync::Mutex<HashMap<String, u64>>,
}

impl CacheManager {
    /// Opens (or creates) the store under `root` and removes what an earlier
    /// run left half-made.
    pub(crate) fn open(root: &Path) -> Result<Self, CacheError> {
        for dir in ["layers", "tmp", "empty", "empty-2"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let db_path = root.join("metadata.redb");
        let db = redb::Database::create(&db_path).map_err(db_err("opening the database"))?;
        let tx = db.begin_write().map_err(db_err("starting a write"))?;
        tx.open_table(RECORDS).map_err(db_err("creating the records table"))?;
        tx.open_table(META).map_err(db_err("creating the meta table"))?;
        tx.commit().map_err(db_err("committing"))?;
        let manager = Self { root: root.to_owned(), db, sizes: Default::default() };
        manager.remove_leftovers()?;
        Ok(manager)
    }

    fn remove_leftovers(&self) -> Result<(), CacheError> {
        // A daemon killed mid-build leaves its overlay and tmpfs mounts;
        // they go first, so removing their mount points touches no layer.
        let entries = crate::mountinfo::read().map_err(io_err(Path::new("/proc/self/mountinfo")))?;
        for point in crate::mountinfo::mounts_under(&entries, &self.root) {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
        let tmp = self.root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
        self.remove_unreferenced_layers()?;
        Ok(())
    }

    /// Removes every layer no record names; returns the bytes freed.
    pub(crate) fn remove_unreferenced_layers(&self) -> Result<u64, CacheError> {
        let mut freed = 0;
        for id in self.unreferenced_layers()? {
            let path = self.layer_path(&id);
            freed += self.layer_size(&id);
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            self.sizes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
        }
        Ok(freed)
    }

    /// The layers no record names.
    pub(crate) fn unreferenced_layers(&self) -> Result<Vec<String>, CacheError> {
        let live: HashSet<String> =
            self.records()?.into_iter().flat_map(|(_, r)| r.outputs).flat_map(|s| s.layers).collect();
        let layers = self.root.join("layers");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&layers).map_err(io_err(&layers))? {
            let id = entry.map_err(io_err(&layers))?.file_name().to_string_lossy().into_owned();
            if !live.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub(crate) fn remove_record(&self, key: &str) -> Result<(), CacheError> {
        let tx = self.db.begin_write().map_err(db_err("starting a write"))?;
        {
            let mut table = tx.open_table(RECORDS).map_err(db_err("opening records"))?;
            table.remove(key).map_err(db_err("removing a record"))?;
        }
        tx.commit().map_err(db_err("committing"))
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// An empty directory, the lower layer of scratch.
    pub(crate) fn empty_dir(&self) -> PathBuf {
        self.root.join("empty")
    }

    /// Bytes a committed layer uses, walked the first time only.
    pub(crate) fn layer_size(&self, id: &str) -> u64 {
        if let Some(size) = self.sizes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id) {
            return *size;
        }
        let size = dir_size(&self.layer_path(id));
        self.sizes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_owned(), size);
        size
    }

    pub(crate) fn layer_path(&self, id: &str) -> PathBuf {
        self.root.join("layers").join(id)
    }

    /// A directory for scratch work (mount points, overlay work dirs), removed at next start.
    pub(crate) fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir, CacheError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new().prefix(prefix).tempdir_in(&tmp).map_err(io_err(&tmp))
    }

    pub(crate) fn new_layer(&self) -> Result<PendingLayer, CacheError> {
        let id = new_id();
        let path = self.root.join("tmp").join(format!("layer-{id}"));
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(PendingLayer { id, path, committed: false })
    }

    /// Moves a finished layer into place and returns its id.
    pub(crate) fn commit_layer(&self, mut pending: PendingLayer) -> Result<String, CacheError> {
        let dest = self.layer_path(&pending.id);
        std::fs::rename(&pending.path, &dest).map_err(io_err(&dest))?;
        pending.committed = true;
        Ok(pending.id.clone())
    }

    /// Commits a layer that is the upper directory of an overlay over
    /// `base` and returns `base` with it on top. The base is remembered, so
    /// the layer's blob can leave out what the kernel copied up unchanged
    /// (see [`Self::layer_base`]).
    pub(crate) fn commit_layer_over(
        &self,
        pending: PendingLayer,
        base: &Snapshot,
    ) -> Result<Snapshot, CacheError> {
        let key = base_key(&pending.id);
        let bytes =
            serde_json::to_vec(base).map_err(|source| CacheError::Meta { key: key.clone(), source })?;
        // Written before the layer moves into place: a committed layer never lacks it.
        self.put_meta(&key, &bytes)?;
        let id = self.commit_layer(pending)?;
        Ok(base.with(id))
    }

    /// The snapshot a layer was made over with [`Self::commit_layer_over`];
    /// none for layers made whole (image layers, sources, uploads).
    pub(crate) fn layer_base(&self, id: &str) -> Result<Option<Snapshot>, CacheError> {
        let key = base_key(id);
        let Some(bytes) = self.get_meta(&key)? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| CacheError::Meta { key, source })
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<Record>, CacheError> {
        let tx = self.db.begin_read().map_err(db_err("starting a read"))?;
        let table = tx.open_table(RECORDS).map_err(db_err("opening records"))?;
        let Some(value) = table.get(key).map_err(db_err("reading a record"))? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(value.value())
            .map_err(|source| CacheError::Record { key: key.into(), source })?;
        // A record whose layers are gone (removed by hand) is a miss, not an error.
        if record.outputs.iter().flat_map(|s| &s.layers).all(|l| self.layer_path(l).is_dir()) {
            Ok(Some(record))
        } else {
            Ok(None)
        }
    }

    pub(crate) fn put(
        &self,
        key: &str,
        outputs: Vec<Snapshot>,
        description: &str,
    ) -> Result<Record, CacheError> {
        let record = Record {
            outputs,
            description: description.to_owned(),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        let bytes =
            serde_json::to_vec(&record).map_err(|source| CacheError::Record { key: key.into(), source })?;
        let tx = self.db.begin_write().map_err(db_err("starting a write"))?;
        {
            let mut table = tx.open_table(RECORDS).map_err(db_err("opening records"))?;
            table.insert(key, bytes.as_slice()).map_err(db_err("writing a record"))?;
        }
        tx.commit().map_err(db_err("committing a record"))?;
        Ok(record)
    }

    pub(crate) fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let tx = self.db.begin_read().map_err(db_err("starting a read"))?;
        let table = tx.open_table(META).map_err(db_err("opening meta"))?;
        Ok(table.get(key).map_err(db_err("reading meta"))?.map(|v| v.value().to_vec()))
    }

    pub(crate) fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), CacheError> {
        let tx = self.db.begin_write().map_err(db_err("starting a write"))?;
        {
            let mut table = tx.open_table(META).map_err(db_err("opening meta"))?;
            table.insert(key, value).map_err(db_err("writing meta"))?;
        }
        tx.commit().map_err(db_err("committing meta"))
    }

    /// Every record, for disk usage and pruning.
    pub(crate) fn records(&self) -> Result<Vec<(String, Record)>, CacheError> {
        let tx = self.db.begin_read().map_err(db_err("starting a read"))?;
        let table = tx.open_table(RECORDS).map_err(db_err("opening records"))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err("listing records"))? {
            let (k, v) = entry.map_err(db_err("reading a record"))?;
            let key = k.value().to_owned();
            let record = serde_json::from_slice(v.value())
                .map_err(|source| CacheError::Record { key: key.clone(), source })?;
            out.push((key, record));
        }
        Ok(out)
    }
}

/// Bytes used by the files under `path` (a file with several links counts once per link).
pub(crate) fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map_or(0, |entries| entries.flatten().map(|e| dir_size(&e.path())).sum())
}

fn base_key(layer: &str) -> String {
    format!("base:{layer}")
}

/// 16 random hex characters: short, because overlayfs mount options must fit in a page.
fn new_id() -> String {
    let mut bytes = [0u8; 8];
    // /dev/urandom does not fail on Linux; a clock fallback keeps ids unique if it ever does.
    if std::fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes)).is_err()
    {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_layers_survive_a_restart_and_leftovers_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let cache = CacheManager::open(dir.path()).unwrap();
            let layer = cache.new_layer().unwrap();
            std::fs::write(layer.path().join("f"), "x").unwrap();
            let id = cache.commit_layer(layer).unwrap();
            cache.put("k1", vec![Snapshot::default().with(id.clone())], "mkfile /f").unwrap();

            // A layer being built when the daemon dies, and a committed layer no record names.
            let half = cache.new_layer().unwrap();
            std::fs::write(half.path().join("g"), "y").unwrap();
            std::mem::forget(half);
            let orphan = cache.new_layer().unwrap();
            let orphan = cache.commit_layer(orphan).unwrap();
            assert!(cache.layer_path(&orphan).exists());
            id
        };
        let cache = CacheManager::open(dir.path()).unwrap();
        let record = cache.get("k1").unwrap().unwrap();
        assert_eq!(record.outputs, vec![Snapshot { layers: vec![id.clone()] }]);
        assert_eq!(std::fs::read_to_string(cache.layer_path(&id).join("f")).unwrap(), "x");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.path().join("layers")).unwrap().count(), 1);
        assert!(cache.get("k2").unwrap().is_none());
    }

    #[test]
    fn a_record_whose_layer_is_gone_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(dir.path()).unwrap();
        let id = cache.commit_layer(cache.new_layer().unwrap()).unwrap();
        cache.put("k", vec![Snapshot { layers: vec![id.clone()] }], "").unwrap();
        std::fs::remove_dir_all(cache.layer_path(&id)).unwrap();
        assert!(cache.get("k").unwrap().is_none());
    }

    #[test]
    fn a_layer_made_over_a_base_remembers_it_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (base, on_top, whole) = {
            let cache = CacheManager::open(dir.path()).unwrap();
            let base = Snapshot::default().with(cache.commit_layer(cache.new_layer().unwrap()).unwrap());
            let on_top = cache.commit_layer_over(cache.new_layer().unwrap(), &base).unwrap();
            cache.put("k", vec![on_top.clone()], "run").unwrap();
            (base.clone(), on_top, base.layers[0].clone())
        };
        let cache = CacheManager::open(dir.path()).unwrap();
        assert_eq!(on_top.layers[..1], base.layers[..]);
        assert!(cache.layer_path(&on_top.layers[1]).is_dir());
        assert_eq!(cache.layer_base(&on_top.layers[1]).unwrap(), Some(base));
        assert_eq!(cache.layer_base(&whole).unwrap(), None, "a layer committed whole has no base");
    }

    #[test]
    fn an_unfinished_layer_is_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(dir.path()).unwrap();
        let layer = cache.new_layer().unwrap();
        let path = layer.path().to_owned();
        drop(layer);
        assert!(!path.exists());
    }
}
