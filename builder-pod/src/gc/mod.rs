//! What the cache holds and how to free it: `DiskUsage` and `Prune`
//! (docs/protocol.md §2.4), and collection by policy
//! (buildkitd.toml's `[[worker.oci.gcpolicy]]`), which kilnd runs at start,
//! after builds and every few minutes while no build runs.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_proto::buildkit::google::protobuf::Timestamp;
use kiln_proto::buildkit::moby::buildkit::v1::UsageRecord;
use kiln_proto::buildkit::moby::buildkit::v1::types::GcPolicy;

use crate::cache::{CacheError, CacheManager, Record, dir_size};

/// Kinds of record, as buildx shows them.
const REGULAR: &str = "regular";
const LOCAL: &str = "source.local";
const CACHE_MOUNT: &str = "exec.cachemount";

fn timestamp(secs: u64) -> Timestamp {
    Timestamp { seconds: i64::try_from(secs).unwrap_or(i64::MAX), nanos: 0 }
}

fn record_usage(cache: &CacheManager, key: &str, record: &Record) -> UsageRecord {
    // A record's size is that of the layer it added; the layers below belong to its inputs.
    let size = record.outputs.first().and_then(|s| s.layers.last()).map_or(0, |l| cache.layer_size(l));
    UsageRecord {
        id: key.trim_start_matches("sha256:").to_owned(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        created_at: Some(timestamp(record.created)),
        description: record.description.clone(),
        record_type: REGULAR.into(),
        ..UsageRecord::default()
    }
}

/// The directories kept across builds: transferred local contexts and cache mounts.
fn kept_dirs(cache: &CacheManager) -> Vec<(std::path::PathBuf, &'static str)> {
    let mut out = Vec::new();
    for (dir, kind) in [("local", LOCAL), ("cache-mounts", CACHE_MOUNT)] {
        if let Ok(entries) = std::fs::read_dir(cache.root().join(dir)) {
            out.extend(entries.flatten().map(|e| (e.path(), kind)));
        }
    }
    out
}

fn dir_usage(path: &Path, kind: &str) -> UsageRecord {
    let created = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    UsageRecord {
        id: path.file_name().map(|n| n.to_string_lossy().chars().take(25).collect()).unwrap_or_default(),
        mutable: true,
        size: i64::try_from(dir_size(path)).unwrap_or(i64::MAX),
        created_at: Some(timestamp(created)),
        description: if kind == LOCAL {
            "local source for a client's directory".into()
        } else {
            "cache mount".into()
        },
        record_type: kind.into(),
        ..UsageRecord::default()
    }
}

pub(crate) fn disk_usage(cache: &CacheManager) -> Result<Vec<UsageRecord>, CacheError> {
    let mut out: Vec<UsageRecord> =
        cache.records()?.iter().map(|(key, record)| record_usage(cache, key, record)).collect();
    out.extend(kept_dirs(cache).iter().map(|(path, kind)| dir_usage(path, kind)));
    Ok(out)
}

/// Removes cache records older than `keep` (all of them when `keep` is zero)
/// and the layers nothing names any more; with `all`, also the kept local
/// directories and cache mounts. Returns what was removed. The caller makes
/// sure no build runs meanwhile.
pub(crate) fn prune(cache: &CacheManager, all: bool, keep: Duration) -> Result<Vec<UsageRecord>, CacheError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let cutoff = now.saturating_sub(keep.as_secs());
    let mut removed = Vec::new();
    for (key, record) in cache.records()? {
        if keep.is_zero() || record.created < cutoff {
            removed.push(record_usage(cache, &key, &record));
            cache.remove_record(&key)?;
        }
    }
    cache.remove_unreferenced_layers()?;
    if all {
        for (path, kind) in kept_dirs(cache) {
            removed.push(dir_usage(&path, kind));
            std::fs::remove_dir_all(&path).map_err(|source| CacheError::Io { path: path.clone(), source })?;
        }
    }
    Ok(removed)
}

/// One rule of automatic collection, applied in order with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Policy {
    /// Remove what was made longer ago than this.
    pub keep_duration: Option<Duration>,
    /// Remove the oldest entries while the cache is larger than this.
    pub max_used_space: Option<u64>,
    /// Never remove below this size (for the other limits).
    pub reserved_space: Option<u64>,
    /// Remove the oldest entries while the filesystem has less free space.
    pub min_free_space: Option<u64>,
    /// Also count and remove local context copies and cache mounts.
    pub all: bool,
}

impl Policy {
    /// As `ListWorkers` reports it.
    pub(crate) fn to_proto(self) -> GcPolicy {
        let bytes = |b: Option<u64>| b.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
        GcPolicy {
            all: self.all,
            keep_duration: self.keep_duration.map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            filters: Vec::new(),
            reserved_space: bytes(self.reserved_space),
            max_used_space: bytes(self.max_used_space),
            min_free_space: bytes(self.min_free_space),
        }
    }
}

/// Runs collection by policy when no build runs: builds hold a shared guard,
/// collection (and `Prune`) an exclusive one.
#[derive(Debug)]
pub(crate) struct Collector {
    lock: std::sync::Arc<tokio::sync::RwLock<()>>,
    wake: tokio::sync::Notify,
    policies: Vec<Policy>,
}

/// Held by a build while it runs; wakes the collector when dropped.
#[derive(Debug)]
pub(crate) struct Building<'a> {
    _guard: tokio::sync::RwLockReadGuard<'a, ()>,
    wake: &'a tokio::sync::Notify,
}

impl Drop for Building<'_> {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// How often collection looks again when nothing wakes it.
const INTERVAL: Duration = Duration::from_secs(300);

impl Collector {
    pub(crate) fn new(policies: Vec<Policy>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { lock: Default::default(), wake: tokio::sync::Notify::new(), policies })
    }

    /// Marks a build as running until the guard is dropped.
    pub(crate) async fn building(&self) -> Building<'_> {
        Building { _guard: self.lock.read().await, wake: &self.wake }
    }

    /// The exclusive guard, if no build runs now.
    pub(crate) fn exclusive(&self) -> Option<tokio::sync::OwnedRwLockWriteGuard<()>> {
        std::sync::Arc::clone(&self.lock).try_write_owned().ok()
    }

    /// Collects at start, after builds end and every few minutes, whenever
    /// no build runs, until `stop`.
    pub(crate) async fn run(
        self: std::sync::Arc<Self>,
        cache: std::sync::Arc<CacheManager>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if self.policies.is_empty() {
            return;
        }
        loop {
            // Looked at first without the lock, so a build that starts
            // meanwhile does not wait for the sizes to be added up; the lock
            // is taken only when something is to go.
            let (c, policies) = (std::sync::Arc::clone(&cache), self.policies.clone());
            let due = tokio::task::spawn_blocking(move || collection_due(&c, &policies)).await;
            let due = match due {
                Ok(Ok(due)) => due,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "garbage collection");
                    true
                }
                Err(_) => true,
            };
            if let Some(exclusive) = self.exclusive().filter(|_| due) {
                let (cache, policies) = (std::sync::Arc::clone(&cache), self.policies.clone());
                let result = tokio::task::spawn_blocking(move || {
                    let _exclusive = exclusive;
                    collect(&cache, &policies)
                })
                .await;
                match result {
                    Ok(Ok(removed)) if !removed.is_empty() => {
                        let bytes: i64 = removed.iter().map(|u| u.size).sum();
                        tracing::info!(entries = removed.len(), bytes, "garbage collection freed cache");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "garbage collection"),
                    Err(e) => tracing::warn!(error = %e, "garbage collection task"),
                }
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(INTERVAL) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Something collection may remove, oldest first.
enum Entry {
    Record { key: String, usage: UsageRecord },
    Dir { path: std::path::PathBuf, usage: UsageRecord },
}

impl Entry {
    fn usage(&self) -> &UsageRecord {
        match self {
            Self::Record { usage, .. } | Self::Dir { usage, .. } => usage,
        }
    }

    fn created(&self) -> i64 {
        self.usage().created_at.as_ref().map_or(0, |t| t.seconds)
    }

    fn size(&self) -> u64 {
        u64::try_from(self.usage().size).unwrap_or(0)
    }
}

/// Free bytes of the filesystem holding `path`.
fn free_space(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Applies `policies` in order; returns what was removed. Like `prune`, the
/// caller makes sure no build runs meanwhile.
pub(crate) fn collect(cache: &CacheManager, policies: &[Policy]) -> Result<Vec<UsageRecord>, CacheError> {
    let mut removed = Vec::new();
    for policy in policies {
        for entry in select(cache, policy)? {
            match entry {
                Entry::Record { key, usage } => {
                    cache.remove_record(&key)?;
                    removed.push(usage);
                }
                Entry::Dir { path, usage } => {
                    std::fs::remove_dir_all(&path)
                        .map_err(|source| CacheError::Io { path: path.clone(), source })?;
                    removed.push(usage);
                }
            }
        }
        cache.remove_unreferenced_layers()?;
    }
    Ok(removed)
}

/// Whether [`collect`] would remove anything now. Only reads: a policy that
/// selects nothing leaves the cache as it was for the next one.
pub(crate) fn collection_due(cache: &CacheManager, policies: &[Policy]) -> Result<bool, CacheError> {
    for policy in policies {
        if !select(cache, policy)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(!cache.unreferenced_layers()?.is_empty())
}

/// What `policy` removes, oldest first.
fn select(cache: &CacheManager, policy: &Policy) -> Result<Vec<Entry>, CacheError> {
    let mut entries: Vec<Entry> = cache
        .records()?
        .into_iter()
        .map(|(key, record)| {
            let usage = record_usage(cache, &key, &record);
            Entry::Record { key, usage }
        })
        .collect();
    if policy.all {
        entries.extend(kept_dirs(cache).into_iter().map(|(path, kind)| {
            let usage = dir_usage(&path, kind);
            Entry::Dir { path, usage }
        }));
    }
    entries.sort_by_key(Entry::created);
    let mut total: u64 = entries.iter().map(Entry::size).sum();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let cutoff =
        policy.keep_duration.map(|keep| i64::try_from(now.saturating_sub(keep.as_secs())).unwrap_or(0));
    let reserved = policy.reserved_space.unwrap_or(0);
    let mut freed = 0u64;
    let free_at_start = policy.min_free_space.and_then(|_| free_space(cache.root()));
    let mut selected = Vec::new();
    for entry in entries {
        let too_old = cutoff.is_some_and(|c| entry.created() < c);
        let too_big = policy.max_used_space.is_some_and(|max| total > max);
        let too_full = policy
            .min_free_space
            .zip(free_at_start)
            .is_some_and(|(min, free)| free.saturating_add(freed) < min);
        if !(too_old || too_big || too_full) || total <= reserved {
            continue;
        }
        total = total.saturating_sub(entry.size());
        freed = freed.saturating_add(entry.size());
        selected.push(entry);
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Snapshot;

    fn record(cache: &CacheManager, key: &str, bytes: usize) -> String {
        let layer = cache.new_layer().unwrap();
        std::fs::write(layer.path().join("f"), vec![1u8; bytes]).unwrap();
        let id = cache.commit_layer(layer).unwrap();
        cache.put(key, vec![Snapshot { layers: vec![id.clone()] }], key).unwrap();
        id
    }

    #[test]
    fn a_size_limit_removes_the_oldest_records_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(dir.path()).unwrap();
        let old = record(&cache, "sha256:old", 4000);
        // Creation times are in whole seconds: make "old" older.
        std::thread::sleep(Duration::from_millis(1100));
        let mid = record(&cache, "sha256:mid", 4000);
        let new = record(&cache, "sha256:new", 4000);

        let limit = Policy { max_used_space: Some(9000), ..Policy::default() };
        let removed = collect(&cache, &[limit]).unwrap();
        assert_eq!(removed.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["old"]);
        assert!(!cache.layer_path(&old).exists(), "its layer is freed");
        assert!(cache.layer_path(&mid).exists() && cache.layer_path(&new).exists());

        // Under the limit: nothing more goes.
        assert!(collect(&cache, &[limit]).unwrap().is_empty());
        // Reserved space protects what is left from an age limit.
        let aged =
            Policy { keep_duration: Some(Duration::ZERO), reserved_space: Some(8000), ..Policy::default() };
        std::thread::sleep(Duration::from_millis(1100));
        assert!(collect(&cache, &[aged]).unwrap().is_empty());
        let aged = Policy { keep_duration: Some(Duration::ZERO), ..Policy::default() };
        assert_eq!(collect(&cache, &[aged]).unwrap().len(), 2);
    }

    #[test]
    fn collection_is_due_only_when_a_policy_would_remove_something() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(dir.path()).unwrap();
        let limit = Policy { max_used_space: Some(6000), ..Policy::default() };
        assert!(!collection_due(&cache, &[limit]).unwrap(), "an empty cache");
        record(&cache, "sha256:a", 4000);
        assert!(!collection_due(&cache, &[limit]).unwrap(), "under the limit");
        record(&cache, "sha256:b", 4000);
        assert!(collection_due(&cache, &[limit]).unwrap(), "over it");
        assert_eq!(collect(&cache, &[limit]).unwrap().len(), 1);
        assert!(!collection_due(&cache, &[limit]).unwrap(), "under it again");
        // A layer no record names (a build's leftover) is due too.
        let orphan = cache.new_layer().unwrap();
        cache.commit_layer(orphan).unwrap();
        assert!(collection_due(&cache, &[limit]).unwrap());
        collect(&cache, &[limit]).unwrap();
        assert!(!collection_due(&cache, &[limit]).unwrap());
    }

    #[test]
    fn policies_read_back_through_list_workers() {
        let p = Policy {
            keep_duration: Some(Duration::from_secs(2)),
            max_used_space: Some(10),
            all: true,
            ..Policy::default()
        };
        let proto = p.to_proto();
        assert_eq!((proto.keep_duration, proto.max_used_space, proto.all), (2_000_000_000, 10, true));
    }

    #[test]
    fn usage_lists_records_and_prune_frees_their_layers() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(dir.path()).unwrap();
        let layer = cache.new_layer().unwrap();
        std::fs::write(layer.path().join("f"), vec![0u8; 1000]).unwrap();
        let id = cache.commit_layer(layer).unwrap();
        cache.put("sha256:abc", vec![Snapshot { layers: vec![id.clone()] }], "RUN make").unwrap();
        std::fs::create_dir_all(cache.root().join("cache-mounts/m1")).unwrap();

        let usage = disk_usage(&cache).unwrap();
        let run = usage.iter().find(|u| u.id == "abc").unwrap();
        assert_eq!(
            (run.size, run.description.as_str(), run.record_type.as_str()),
            (1000, "RUN make", REGULAR)
        );
        assert!(usage.iter().any(|u| u.record_type == CACHE_MOUNT && u.mutable));

        // Newer than an hour: kept.
        assert!(prune(&cache, false, Duration::from_secs(3600)).unwrap().is_empty());
        let removed = prune(&cache, false, Duration::ZERO).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!cache.layer_path(&id).exists());
        assert!(cache.root().join("cache-mounts/m1").exists(), "cache mounts stay without --all");
        let removed = prune(&cache, true, Duration::ZERO).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(disk_usage(&cache).unwrap().is_empty());
    }
}
