//! What the cache holds and how to free it: `DiskUsage` and `Prune`
//! (buildkit-protocol.md §2.3). Automatic collection by policy is not built
//! yet; pruning is explicit.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_proto::buildkit::google::protobuf::Timestamp;
use kiln_proto::buildkit::moby::buildkit::v1::UsageRecord;

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
    let size =
        record.outputs.first().and_then(|s| s.layers.last()).map_or(0, |l| dir_size(&cache.layer_path(l)));
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

pub fn disk_usage(cache: &CacheManager) -> Result<Vec<UsageRecord>, CacheError> {
    let mut out: Vec<UsageRecord> =
        cache.records()?.iter().map(|(key, record)| record_usage(cache, key, record)).collect();
    out.extend(kept_dirs(cache).iter().map(|(path, kind)| dir_usage(path, kind)));
    Ok(out)
}

/// Removes cache records older than `keep` (all of them when `keep` is zero)
/// and the layers nothing names any more; with `all`, also the kept local
/// directories and cache mounts. Returns what was removed. The caller makes
/// sure no build runs meanwhile.
pub fn prune(cache: &CacheManager, all: bool, keep: Duration) -> Result<Vec<UsageRecord>, CacheError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Snapshot;

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
