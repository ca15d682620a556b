//! The pools the gateway serves and how a client connection finds its own:
//! by the TLS server name it asks for (buildx `--driver-opt servername=`),
//! `NAME` or `NAME.NAMESPACE` of the `Builder`; a client that names none
//! (plain TCP, or a name that is no pool's) gets the default pool, or the
//! only one. In cluster mode the set changes as Builders come and go, and
//! until the first list of Builders has arrived nobody is served: a pool is
//! never served before its access list is known.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::PoolEntry;

/// How long a connection waits for the first list of Builders.
const SYNC_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Pools {
    entries: RwLock<Vec<Arc<PoolEntry>>>,
    /// `NAME` or `NAME.NAMESPACE` of the pool for clients that name none.
    default: Option<String>,
    synced: watch::Sender<bool>,
}

impl Pools {
    /// A set that never changes (static mode).
    pub fn fixed(entries: Vec<Arc<PoolEntry>>) -> Arc<Self> {
        let (synced, _) = watch::channel(true);
        Arc::new(Self { entries: RwLock::new(entries), default: None, synced })
    }

    /// A set filled by watching the cluster; empty and not yet synced.
    pub fn watched(default: Option<String>) -> Arc<Self> {
        let (synced, _) = watch::channel(false);
        Arc::new(Self { entries: RwLock::default(), default, synced })
    }

    pub fn snapshot(&self) -> Vec<Arc<PoolEntry>> {
        self.entries.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The pool of Builder `namespace/name`, if served.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<PoolEntry>> {
        self.snapshot().into_iter().find(|e| e.is(namespace, name))
    }

    pub fn insert(&self, entry: Arc<PoolEntry>) {
        self.entries.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(entry);
    }

    /// Stops serving Builder `namespace/name`; connections already on it
    /// keep it until they close.
    pub fn remove(&self, namespace: &str, name: &str) -> Option<Arc<PoolEntry>> {
        let mut entries = self.entries.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = entries.iter().position(|e| e.is(namespace, name))?;
        Some(entries.remove(at))
    }

    /// `name` names a pool (`NAME` or `NAME.NAMESPACE`).
    pub fn names(&self, name: &str) -> bool {
        self.snapshot().iter().any(|e| e.names.iter().any(|n| n == name))
    }

    /// The first complete list of pools has arrived.
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// The pool for a connection that asked for `server_name`, once the
    /// pools are known.
    pub async fn resolve(&self, server_name: Option<&str>) -> Result<Arc<PoolEntry>, String> {
        let mut synced = self.synced.subscribe();
        if tokio::time::timeout(SYNC_WAIT, synced.wait_for(|s| *s)).await.is_err() {
            return Err("kiln gateway: the gateway does not know its pools yet; try again shortly".into());
        }
        resolve(&self.snapshot(), self.default.as_deref(), server_name)
    }
}

/// Which of `entries` a client asking for `server_name` gets. The messages
/// name only what the client asked for: a client learns nothing about the
/// pools it may not use.
pub fn resolve(
    entries: &[Arc<PoolEntry>],
    default: Option<&str>,
    server_name: Option<&str>,
) -> Result<Arc<PoolEntry>, String> {
    let named = |name: &str| -> Vec<&Arc<PoolEntry>> {
        entries.iter().filter(|e| e.names.iter().any(|n| n == name)).collect()
    };
    if let Some(name) = server_name {
        match named(name).as_slice() {
            [one] => return Ok(Arc::clone(one)),
            [] => {}
            _ => {
                return Err(format!(
                    "kiln gateway: more than one pool is named {name:?}; name it with its namespace, \
                     buildx --driver-opt servername={name}.NAMESPACE"
                ));
            }
        }
    }
    if let Some(default) = default {
        return match named(default).as_slice() {
            [one] => Ok(Arc::clone(one)),
            _ => Err(format!(
                "kiln gateway: no pool is named {:?}, and the default pool is not served; set the pool's name \
                 with buildx --driver-opt servername=NAME",
                server_name.unwrap_or_default()
            )),
        };
    }
    match entries {
        [only] => Ok(Arc::clone(only)),
        _ => Err(format!(
            "kiln gateway: no pool is named {:?}; ask the gateway's operator which server name to set with \
             buildx --driver-opt servername=",
            server_name.unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::pool::Pool;
    use super::*;

    fn entry(namespace: &str, name: &str) -> Arc<PoolEntry> {
        PoolEntry::for_builder(namespace, name, Pool::new(Vec::new(), 1))
    }

    fn names(result: Result<Arc<PoolEntry>, String>) -> String {
        result.map(|e| e.names[1].clone()).unwrap_or_else(|e| e)
    }

    #[test]
    fn a_server_name_picks_a_pool_by_name_or_name_and_namespace() {
        let pools = [entry("team-a", "fast"), entry("team-b", "fast"), entry("team-a", "arm")];
        assert_eq!(names(resolve(&pools, None, Some("arm"))), "arm.team-a");
        assert_eq!(names(resolve(&pools, None, Some("fast.team-b"))), "fast.team-b");
        let ambiguous = names(resolve(&pools, None, Some("fast")));
        assert!(ambiguous.contains("more than one pool is named \"fast\""), "{ambiguous}");
        let unknown = names(resolve(&pools, None, Some("gpu")));
        assert!(unknown.contains("no pool is named \"gpu\""), "{unknown}");
        assert!(!unknown.contains("team-a"), "another pool's name leaked: {unknown}");
    }

    #[test]
    fn a_client_naming_no_pool_gets_the_default_or_the_only_one() {
        let pools = [entry("kiln", "default"), entry("kiln", "arm")];
        assert_eq!(names(resolve(&pools, Some("default.kiln"), None)), "default.kiln");
        assert_eq!(names(resolve(&pools, Some("default"), Some("kiln.example.com"))), "default.kiln");
        assert!(resolve(&pools, None, None).is_err(), "two pools and no default");
        assert_eq!(names(resolve(&pools[1..], None, None)), "arm.kiln");
        let gone = names(resolve(&pools[1..], Some("default"), None));
        assert!(gone.contains("default pool is not served"), "{gone}");
    }

    #[tokio::test]
    async fn nobody_is_served_before_the_pools_are_known() {
        let pools = Pools::watched(None);
        pools.insert(entry("kiln", "default"));
        let early = tokio::time::timeout(Duration::from_millis(100), pools.resolve(None)).await;
        assert!(early.is_err(), "resolved before the first list of Builders");
        let waiting = tokio::spawn({
            let pools = Arc::clone(&pools);
            async move { pools.resolve(None).await.map(|e| e.names[0].clone()) }
        });
        pools.mark_synced();
        assert_eq!(waiting.await.unwrap().unwrap(), "default");
        assert!(pools.remove("kiln", "default").is_some());
        assert!(pools.resolve(Some("default")).await.is_err());
    }
}
