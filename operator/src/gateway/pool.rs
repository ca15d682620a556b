//! The gateway's view of a pool: its builders, which session and build
//! lives on which builder, and the choice of a builder for a new session.
//!
//! A session goes where its shared key (the client's context directory and
//! node) went before, so an unchanged context is not sent again: rendezvous
//! hashing over the ready builders, with two bounds so affinity cannot pile
//! everything on one builder: no builder takes more than its share (×1.25,
//! rounded up) of the keys seen, nor more than its even share (rounded up)
//! of the keyed sessions open right now, which is what spreads `buildx bake`
//! targets that share one context. A session that spills over for load does
//! not move its key's home. Beyond a builder's `max_sessions`, sessions wait
//! in the gateway.
//!
//! A builder is scored by its identity, not its address: its pod's name (the
//! ordinal whose volume holds its cache) or kilnd's worker id (kept in its
//! root), so a builder that comes back at a new address, with its cache, is
//! still the home of the keys it had. The hash is SHA-256, the same in every
//! gateway version, so two replicas and an upgraded gateway agree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// Keys remembered for affinity and balance; the oldest go first.
const REMEMBERED_KEYS: usize = 4096;
/// How much above an even share a builder may take.
const BALANCE_SLACK: f64 = 1.25;

/// One builder of the pool.
#[derive(Debug)]
pub struct Backend {
    /// Where its BuildKit API listens (`tcp://host:port`).
    pub addr: String,
    /// What stays when its address changes (pod name, kilnd's worker id);
    /// unknown until learnt.
    identity: Mutex<Option<String>>,
    /// The name its TLS certificate carries, for a builder that serves TLS.
    server_name: Mutex<Option<String>>,
    pub state: Mutex<BackendState>,
}

/// A builder as the pool's source (the pods, or the static list) sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub addr: String,
    pub identity: Option<String>,
    /// The name its TLS certificate carries, when it serves TLS.
    pub server_name: Option<String>,
    pub ready: bool,
    pub draining: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendState {
    /// Answers its health check.
    pub ready: bool,
    /// Takes no new sessions (scale-down, rollout, SIGTERM).
    pub draining: bool,
    /// Sessions open through the gateway.
    pub sessions: usize,
    /// Of those, sessions with a shared key (not buildx's probes).
    pub keyed: usize,
}

impl Backend {
    pub fn new(addr: &str) -> Arc<Self> {
        Arc::new(Self {
            addr: addr.to_owned(),
            identity: Mutex::new(None),
            server_name: Mutex::new(None),
            state: Mutex::new(BackendState { ready: false, draining: false, sessions: 0, keyed: 0 }),
        })
    }

    /// What affinity knows it by: its identity, or its address until that
    /// is known.
    pub fn id(&self) -> String {
        lock(&self.identity).clone().unwrap_or_else(|| self.addr.clone())
    }

    pub fn has_identity(&self) -> bool {
        lock(&self.identity).is_some()
    }

    pub fn set_identity(&self, identity: &str) {
        *lock(&self.identity) = Some(identity.to_owned());
    }

    pub fn server_name(&self) -> Option<String> {
        lock(&self.server_name).clone()
    }

    pub fn state(&self) -> BackendState {
        *lock(&self.state)
    }

    pub fn set_ready(&self, ready: bool) {
        lock(&self.state).ready = ready;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a session's builder was chosen, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The key's builder from before.
    AffinityHit,
    /// The key is new or its builder is gone or full: another builder.
    AffinityMiss,
    /// No key (buildx's probe build): the least loaded builder.
    LeastLoaded,
}

impl Choice {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AffinityHit => "affinity_hit",
            Self::AffinityMiss => "affinity_miss",
            Self::LeastLoaded => "least_loaded",
        }
    }
}

/// An open session on a builder; dropping it frees the builder's slot.
#[derive(Debug)]
pub struct SessionSlot {
    pub backend: Arc<Backend>,
    pool: Arc<Pool>,
    id: String,
    keyed: bool,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        {
            let mut s = lock(&self.backend.state);
            s.sessions = s.sessions.saturating_sub(1);
            if self.keyed {
                s.keyed = s.keyed.saturating_sub(1);
            }
        }
        lock(&self.pool.bindings).sessions.remove(&self.id);
        self.pool.changed.notify_waiters();
    }
}

#[derive(Debug, Default)]
struct Bindings {
    /// Session id → builder.
    sessions: HashMap<String, Arc<Backend>>,
    /// Build ref → builder.
    refs: HashMap<String, Arc<Backend>>,
    /// Refs in the order they were bound, to forget the oldest.
    ref_order: std::collections::VecDeque<String>,
    /// Shared key → builder, most recent last.
    keys: HashMap<String, String>,
    key_order: std::collections::VecDeque<String>,
}

/// Build refs remembered after their Solve (a late Status still finds them).
const REMEMBERED_REFS: usize = 4096;

#[derive(Debug)]
pub struct Pool {
    backends: Mutex<Vec<Arc<Backend>>>,
    bindings: Mutex<Bindings>,
    /// Sessions a builder may hold at once.
    max_sessions: std::sync::atomic::AtomicUsize,
    /// Sessions waiting for a builder, and the refs of Solves waiting for
    /// their session: calls naming them wait as long as they do (a pool
    /// scaling up from zero), not just the usual few seconds.
    pending: Mutex<Pending>,
    /// Signalled when a builder's state, a session or a binding changes.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    sessions: std::collections::HashSet<String>,
    refs: std::collections::HashSet<String>,
}

/// Removes a pending id when the wait ends, however it ends.
#[derive(Debug)]
pub struct PendingGuard<'a> {
    pool: &'a Pool,
    id: String,
    session: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut p = lock(&self.pool.pending);
        if self.session {
            p.sessions.remove(&self.id);
        } else {
            p.refs.remove(&self.id);
        }
    }
}

/// How long a call waits for a pool to get a builder before it fails.
pub const SCALE_UP_WAIT: Duration = Duration::from_secs(600);

/// The rendezvous score of builder `id` for `key`.
fn score(key: &str, id: &str) -> u64 {
    let digest = Sha256::new().chain_update(key).chain_update([0]).chain_update(id).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

impl Pool {
    pub fn new(backends: Vec<Arc<Backend>>, max_sessions: usize) -> Arc<Self> {
        Arc::new(Self {
            backends: Mutex::new(backends),
            bindings: Mutex::default(),
            max_sessions: std::sync::atomic::AtomicUsize::new(max_sessions.max(1)),
            pending: Mutex::default(),
            changed: Notify::new(),
        })
    }

    pub fn backends(&self) -> Vec<Arc<Backend>> {
        lock(&self.backends).clone()
    }

    pub fn max_sessions(&self) -> usize {
        self.max_sessions.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_max_sessions(&self, n: usize) {
        self.max_sessions.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Replaces the pool's members with `members`: builders that stay keep
    /// their state and sessions; sessions on a builder that left end on their
    /// own when its connection does.
    pub fn set_members(&self, members: &[Member]) {
        let mut backends = lock(&self.backends);
        let mut next = Vec::with_capacity(members.len());
        for m in members {
            let b =
                backends.iter().find(|b| b.addr == m.addr).cloned().unwrap_or_else(|| Backend::new(&m.addr));
            if let Some(identity) = &m.identity {
                b.set_identity(identity);
            }
            lock(&b.server_name).clone_from(&m.server_name);
            {
                let mut s = lock(&b.state);
                s.ready = m.ready;
                s.draining = m.draining;
            }
            next.push(b);
        }
        *backends = next;
        drop(backends);
        self.changed.notify_waiters();
    }

    /// Sessions open plus sessions waiting: what the pool should have room for.
    pub fn demand(&self) -> usize {
        let open: usize = self.backends().iter().map(|b| b.state().sessions).sum();
        open + lock(&self.pending).sessions.len()
    }

    fn pending_guard(&self, id: &str, session: bool) -> PendingGuard<'_> {
        let mut p = lock(&self.pending);
        if session {
            p.sessions.insert(id.to_owned());
        } else {
            p.refs.insert(id.to_owned());
        }
        drop(p);
        self.changed.notify_waiters();
        PendingGuard { pool: self, id: id.to_owned(), session }
    }

    fn is_pending(&self, id: &str, session: bool) -> bool {
        let p = lock(&self.pending);
        if session { p.sessions.contains(id) } else { p.refs.contains(id) }
    }

    /// Builders that take new sessions.
    fn available(&self) -> Vec<Arc<Backend>> {
        self.backends()
            .into_iter()
            .filter(|b| {
                let s = b.state();
                s.ready && !s.draining
            })
            .collect()
    }

    /// Wakes waiters after a builder's state changed.
    pub fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// The builder for a new session now, or `None` when every builder is
    /// full (or none is ready).
    /// The third value says whether the key's home becomes this builder.
    fn choose(&self, key: &str) -> Option<(Arc<Backend>, Choice, bool)> {
        let available = self.available();
        let free: Vec<&Arc<Backend>> =
            available.iter().filter(|b| b.state().sessions < self.max_sessions()).collect();
        if free.is_empty() {
            return None;
        }
        if key.is_empty() {
            let b = free.iter().min_by_key(|b| (b.state().sessions, b.addr.clone()))?;
            return Some((Arc::clone(b), Choice::LeastLoaded, false));
        }
        let n = available.len() as f64;
        let open: usize = available.iter().map(|b| b.state().keyed).sum();
        let session_cap = ((open + 1) as f64 / n).ceil() as usize;
        let bindings = lock(&self.bindings);
        let mut per_backend: HashMap<String, usize> = HashMap::new();
        for id in bindings.keys.values() {
            *per_backend.entry(id.clone()).or_default() += 1;
        }
        let previous = bindings.keys.get(key).cloned();
        let known = bindings.keys.len() + usize::from(previous.is_none());
        let key_cap = (known as f64 / n * BALANCE_SLACK).ceil() as usize;
        drop(bindings);

        let mut ranked: Vec<(&Arc<Backend>, String)> = free.iter().map(|b| (*b, b.id())).collect();
        ranked.sort_by_key(|(_, id)| std::cmp::Reverse(score(key, id)));
        let home =
            previous.as_ref().and_then(|prev| ranked.iter().find(|(_, id)| id == prev)).map(|(b, _)| *b);
        if let Some(b) = home
            && b.state().keyed < session_cap
        {
            return Some((Arc::clone(b), Choice::AffinityHit, false));
        }
        let fits = |(b, id): &&(&Arc<Backend>, String)| {
            b.state().keyed < session_cap && per_backend.get(id).copied().unwrap_or(0) < key_cap
        };
        let (chosen, _) = ranked.iter().find(fits).or_else(|| ranked.first())?;
        // Spilling over from a busy home keeps the home; a key whose home is
        // gone (or new) moves here.
        Some((Arc::clone(chosen), Choice::AffinityMiss, home.is_none()))
    }

    /// Places session `id` with shared `key`, waiting while every builder is
    /// full or none is ready; the slot holds the builder's capacity.
    pub async fn open_session(self: &Arc<Self>, id: &str, key: &str) -> (SessionSlot, Choice) {
        let _pending = self.pending_guard(id, true);
        loop {
            let notified = self.changed.notified();
            // A Solve that came first may have placed the session already.
            let bound = lock(&self.bindings).sessions.get(id).cloned();
            let picked = match bound {
                Some(b) if b.state().sessions < self.max_sessions() => Some((b, Choice::AffinityHit, false)),
                Some(_) => None,
                None => self.choose(key),
            };
            if let Some((backend, choice, home)) = picked {
                {
                    let mut s = lock(&backend.state);
                    s.sessions += 1;
                    s.keyed += usize::from(!key.is_empty());
                }
                let mut guard = lock(&self.bindings);
                let bindings = &mut *guard;
                bindings.sessions.insert(id.to_owned(), Arc::clone(&backend));
                if home {
                    remember(&mut bindings.keys, &mut bindings.key_order, key, backend.id(), REMEMBERED_KEYS);
                }
                drop(guard);
                self.changed.notify_waiters();
                let slot = SessionSlot {
                    backend,
                    pool: Arc::clone(self),
                    id: id.to_owned(),
                    keyed: !key.is_empty(),
                };
                return (slot, choice);
            }
            notified.await;
        }
    }

    /// Marks build `r` as waiting for its session's builder until the guard
    /// is dropped, so its Status and bridge calls wait as long as it does.
    pub fn queue_ref(&self, r: &str) -> PendingGuard<'_> {
        self.pending_guard(r, false)
    }

    /// The builder of session `id`, waiting up to `wait` for its Session
    /// call (which may come after the Solve that names it), and for as long
    /// as the session itself waits for a builder.
    pub async fn session_backend(&self, id: &str, wait: Duration) -> Option<Arc<Backend>> {
        let find = || lock(&self.bindings).sessions.get(id).cloned();
        if let Some(b) = self.wait_for(wait, find).await {
            return Some(b);
        }
        if self.is_pending(id, true) {
            return self.wait_for(SCALE_UP_WAIT, find).await;
        }
        None
    }

    /// Binds build `r` to `backend`.
    pub fn bind_ref(&self, r: &str, backend: &Arc<Backend>) {
        let mut bindings = lock(&self.bindings);
        let b = &mut *bindings;
        b.refs.insert(r.to_owned(), Arc::clone(backend));
        b.ref_order.push_back(r.to_owned());
        while b.ref_order.len() > REMEMBERED_REFS {
            if let Some(old) = b.ref_order.pop_front() {
                b.refs.remove(&old);
            }
        }
        drop(bindings);
        self.changed.notify_waiters();
    }

    /// The builder of build `r`, waiting up to `wait` for its Solve, and
    /// for as long as that Solve waits for a builder.
    pub async fn ref_backend(&self, r: &str, wait: Duration) -> Option<Arc<Backend>> {
        let find = || lock(&self.bindings).refs.get(r).cloned();
        if let Some(b) = self.wait_for(wait, find).await {
            return Some(b);
        }
        if self.is_pending(r, false) {
            return self.wait_for(SCALE_UP_WAIT, find).await;
        }
        None
    }

    /// A ready builder for a call that names nothing, waiting up to `wait`
    /// for one (a pool scaling up).
    pub async fn any_within(&self, wait: Duration) -> Option<Arc<Backend>> {
        self.wait_for(wait, || self.any()).await
    }

    /// Any ready builder (for calls with no id), least loaded first.
    pub fn any(&self) -> Option<Arc<Backend>> {
        let available = self.available();
        let ready = if available.is_empty() {
            self.backends().into_iter().filter(|b| b.state().ready).collect()
        } else {
            available
        };
        ready.into_iter().min_by_key(|b| b.state().sessions)
    }

    async fn wait_for<T>(&self, wait: Duration, find: impl Fn() -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            if let Some(found) = find() {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return find();
            }
        }
    }
}

fn remember(
    map: &mut HashMap<String, String>,
    order: &mut std::collections::VecDeque<String>,
    key: &str,
    value: String,
    limit: usize,
) {
    if map.insert(key.to_owned(), value).is_none() {
        order.push_back(key.to_owned());
    }
    while order.len() > limit {
        if let Some(old) = order.pop_front() {
            map.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::Instrument;

    use super::*;

    /// A concurrent caller of the pool, named in what it logs.
    fn spawn<F>(caller: &'static str, call: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(call.instrument(tracing::info_span!("caller", caller)))
    }

    fn member(addr: &str, ready: bool, draining: bool) -> Member {
        Member { addr: addr.to_owned(), identity: None, server_name: None, ready, draining }
    }

    #[tokio::test]
    async fn a_builder_back_at_a_new_address_is_still_its_keys_home() {
        let ids = ["builder-0", "builder-1", "builder-2"];
        let p = Pool::new(Vec::new(), 4);
        let members = |port: u16| -> Vec<Member> {
            ids.iter()
                .enumerate()
                .map(|(i, id)| Member {
                    addr: format!("tcp://10.0.{port}.{i}:1234"),
                    identity: Some((*id).to_owned()),
                    server_name: None,
                    ready: true,
                    draining: false,
                })
                .collect()
        };
        p.set_members(&members(1));
        let (slot, _) = p.open_session("s1", "ctx:/src/app").await;
        let home = slot.backend.id();
        drop(slot);
        // Every builder restarted: new addresses, the same volumes.
        p.set_members(&members(2));
        let (slot, choice) = p.open_session("s2", "ctx:/src/app").await;
        assert_eq!((slot.backend.id(), choice), (home, Choice::AffinityHit));
        assert!(slot.backend.addr.starts_with("tcp://10.0.2."));
    }

    #[test]
    fn scores_are_the_same_in_every_gateway_version() {
        // SHA-256 of "ctx:/src/app\0builder-0", first 8 bytes: any change
        // to the hash would move every key to another builder.
        assert_eq!(score("ctx:/src/app", "builder-0"), 0xff06_8850_6b2c_b710);
    }

    fn pool(n: usize, max: usize) -> Arc<Pool> {
        let backends: Vec<_> = (0..n).map(|i| Backend::new(&format!("tcp://10.0.0.{i}:1234"))).collect();
        for b in &backends {
            b.set_ready(true);
        }
        Pool::new(backends, max)
    }

    #[tokio::test]
    async fn the_same_key_lands_on_the_same_builder() {
        let p = pool(3, 4);
        let (first, choice) = p.open_session("s1", "ctx:/src/app").await;
        assert_eq!(choice, Choice::AffinityMiss, "a new key");
        let addr = first.backend.addr.clone();
        drop(first);
        let (again, choice) = p.open_session("s2", "ctx:/src/app").await;
        assert_eq!((again.backend.addr.as_str(), choice), (addr.as_str(), Choice::AffinityHit));
    }

    #[tokio::test]
    async fn twenty_projects_spread_with_no_builder_over_half() {
        let p = pool(3, 4);
        let mut per: HashMap<String, usize> = HashMap::new();
        for i in 0..20 {
            let (slot, _) = p.open_session(&format!("s{i}"), &format!("ctx:/projects/p{i}")).await;
            *per.entry(slot.backend.addr.clone()).or_default() += 1;
        }
        assert_eq!(per.len(), 3, "{per:?}");
        assert!(per.values().all(|&n| n <= 10), "{per:?}");
    }

    #[tokio::test]
    async fn concurrent_sessions_of_one_key_spread_like_bake_targets() {
        let p = pool(3, 4);
        let slots: Vec<_> = futures::future::join_all((0..3).map(|i| {
            let p = Arc::clone(&p);
            async move { p.open_session(&format!("bake{i}"), "ctx:/src/app").await.0 }
        }))
        .await;
        let mut addrs: Vec<_> = slots.iter().map(|s| s.backend.addr.clone()).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 3, "three open sessions, three builders");
    }

    #[tokio::test]
    async fn probe_sessions_go_to_the_least_loaded_builder() {
        let p = pool(2, 4);
        let (a, choice) = p.open_session("a", "").await;
        assert_eq!(choice, Choice::LeastLoaded);
        let (b, _) = p.open_session("b", "").await;
        assert_ne!(a.backend.addr, b.backend.addr);
    }

    #[tokio::test]
    async fn a_full_pool_queues_until_a_session_ends() {
        let p = pool(1, 1);
        let (first, _) = p.open_session("a", "k").await;
        let waiting = spawn("waiting", {
            let p = Arc::clone(&p);
            async move { p.open_session("b", "k").await.0.backend.addr.clone() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second session waits");
        drop(first);
        let addr = tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        assert_eq!(addr, "tcp://10.0.0.0:1234");
    }

    #[tokio::test]
    async fn draining_and_unready_builders_get_no_sessions() {
        let p = pool(2, 4);
        let backends = p.backends();
        lock(&backends[0].state).draining = true;
        backends[1].set_ready(false);
        let pending = spawn("pending", {
            let p = Arc::clone(&p);
            async move { p.open_session("s", "k").await.0.backend.addr.clone() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pending.is_finished(), "nothing to place it on");
        backends[1].set_ready(true);
        p.notify();
        let addr = tokio::time::timeout(Duration::from_secs(1), pending).await.unwrap().unwrap();
        assert_eq!(addr, backends[1].addr);
    }

    #[tokio::test]
    async fn a_pool_at_zero_holds_the_session_and_its_solve_until_a_builder_comes() {
        let p = Pool::new(Vec::new(), 4);
        let session = spawn("session", {
            let p = Arc::clone(&p);
            async move { p.open_session("s", "k").await.0 }
        });
        let solve = spawn("solve", {
            let p = Arc::clone(&p);
            async move {
                let _queued = p.queue_ref("r");
                p.session_backend("s", Duration::from_millis(50)).await.map(|b| b.addr.clone())
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(p.demand(), 1, "the waiting session is demand");
        assert!(!solve.is_finished(), "the Solve outlives the usual wait while its session waits");
        let status = spawn("status", {
            let p = Arc::clone(&p);
            async move { p.ref_backend("r", Duration::from_millis(50)).await.map(|b| b.addr.clone()) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!status.is_finished(), "so does its Status");
        p.set_members(&[member("tcp://10.0.0.9:1234", true, false)]);
        let slot = tokio::time::timeout(Duration::from_secs(1), session).await.unwrap().unwrap();
        assert_eq!(slot.backend.addr, "tcp://10.0.0.9:1234");
        let b = tokio::time::timeout(Duration::from_secs(1), solve).await.unwrap().unwrap().unwrap();
        p.bind_ref("r", &p.backends()[0]);
        let found = tokio::time::timeout(Duration::from_secs(1), status).await.unwrap().unwrap();
        assert_eq!(found.as_deref(), Some(b.as_str()));
        assert_eq!(p.demand(), 1, "the open session");
        drop(slot);
        assert_eq!(p.demand(), 0);
    }

    #[tokio::test]
    async fn members_keep_their_sessions_across_updates() {
        let p = pool(2, 4);
        let (slot, _) = p.open_session("s", "").await;
        let addr = slot.backend.addr.clone();
        p.set_members(&[member(&addr, true, true)]);
        assert_eq!(p.backends().len(), 1);
        let s = p.backends()[0].state();
        assert_eq!((s.sessions, s.draining), (1, true));
    }

    #[tokio::test]
    async fn calls_for_a_queued_build_wait_past_their_usual_wait() {
        let p = pool(1, 1);
        let (first, _) = p.open_session("a", "k1").await;
        let session = spawn("session", {
            let p = Arc::clone(&p);
            async move { p.open_session("b", "k2").await.0 }
        });
        let solve = spawn("solve", {
            let p = Arc::clone(&p);
            async move {
                let queued = p.queue_ref("rb");
                let backend = p.session_backend("b", Duration::from_millis(20)).await;
                if let Some(backend) = &backend {
                    p.bind_ref("rb", backend);
                }
                drop(queued);
                backend.is_some()
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let status = spawn("status", {
            let p = Arc::clone(&p);
            async move { p.ref_backend("rb", Duration::from_millis(20)).await.is_some() }
        });
        // Well past both waits, the session is still queued and nobody gave up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!solve.is_finished() && !status.is_finished());
        drop(first);
        let _slot = tokio::time::timeout(Duration::from_secs(1), session).await.unwrap().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), solve).await.unwrap().unwrap(),
            "the Solve found it"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(1), status).await.unwrap().unwrap(),
            "the Status too"
        );
        // Once nothing is queued, an unknown build is given up on as before.
        assert!(p.ref_backend("rc", Duration::from_millis(20)).await.is_none());
    }

    #[tokio::test]
    async fn a_ref_bound_late_is_still_found_by_a_waiting_status() {
        let p = pool(1, 4);
        let backend = p.backends()[0].clone();
        let waiter = spawn("waiter", {
            let p = Arc::clone(&p);
            async move { p.ref_backend("r1", Duration::from_secs(2)).await.map(|b| b.addr.clone()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.bind_ref("r1", &backend);
        assert_eq!(waiter.await.unwrap().as_deref(), Some(backend.addr.as_str()));
        assert!(p.ref_backend("unknown", Duration::from_millis(20)).await.is_none());
    }
}
