//! Runs an LLB graph: every vertex after its inputs, independent branches
//! concurrently, each vertex cached under a content-addressed key and run at
//! most once at a time across all builds.
//!
//! A vertex's cache key is the sha256 of its op with the inputs left out,
//! the keys of its inputs, and for sources what identifies their content (an
//! image's manifest digest, a local directory's content hash). Per-build ids
//! (session ids) never enter a key, so an identical rebuild is all cached.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use kiln_proto::buildkit::moby::buildkit::v1::Vertex as ProgressVertex;
use kiln_proto::buildkit::pb;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use super::Job;
use super::entitlements::{EntitlementError, Entitlements};
use super::llb::{Graph, Vertex};
use crate::cache::{CacheError, CacheManager, Snapshot};
use crate::progress::now;
use crate::session::Group;
use crate::source::Resolved;

pub(crate) type OpError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// The op's own message, as BuildKit reports it; progress names the step.
    #[error("{source}")]
    Op { name: String, source: OpError },
    #[error("{name}: op has no output {output}")]
    NoOutput { name: String, output: i64 },
    #[error("{name}: {source}")]
    Cache { name: String, source: CacheError },
    #[error("build cancelled")]
    Cancelled,
    #[error(transparent)]
    Entitlement(#[from] EntitlementError),
    #[error("a build step's task failed: {0}")]
    Task(String),
    /// The same failure seen by every build that waited on the vertex.
    #[error("{0}")]
    Shared(Arc<SolveError>),
}

/// What a build brings to the ops that need the client: its sessions and
/// its permissions, and a token that fires when the client goes away.
#[derive(Debug)]
pub(crate) struct BuildContext {
    pub job: Arc<Job>,
    /// The build's session first, then any others it may use.
    pub sessions: Group,
    /// What the daemon allowed of what the client asked for.
    pub entitlements: Entitlements,
    pub cancel: CancellationToken,
}

/// How each kind of op is carried out; the scheduler decides when.
#[async_trait::async_trait]
pub(crate) trait Ops: Send + Sync + fmt::Debug {
    /// Identifies a source op's content.
    async fn resolve_source(&self, vertex: &Vertex, ctx: &BuildContext) -> Result<Resolved, OpError>;

    /// Keys that stand for some of the inputs in the vertex's cache key: the
    /// content the op actually reads of them (a copy's source paths), so a
    /// change elsewhere in that input does not re-run it. `None` keeps the
    /// input's own key.
    async fn selected_keys(
        &self,
        _vertex: &Vertex,
        _inputs: &[Snapshot],
    ) -> Result<Vec<Option<String>>, OpError> {
        Ok(Vec::new())
    }

    /// Runs `vertex` on its input snapshots and returns one snapshot per output.
    async fn run(
        &self,
        vertex: &Vertex,
        inputs: Vec<Snapshot>,
        resolved: Option<Resolved>,
        ctx: &BuildContext,
    ) -> Result<Vec<Snapshot>, OpError>;
}

/// A vertex's result: its key and its outputs.
#[derive(Clone, Debug)]
struct Outcome {
    key: String,
    outputs: Vec<Snapshot>,
}

type SharedRun = Shared<BoxFuture<'static, Result<Vec<Snapshot>, Arc<SolveError>>>>;

#[derive(Debug)]
pub(crate) struct Solver {
    cache: Arc<CacheManager>,
    ops: Arc<dyn Ops>,
    /// Vertices running now, by cache key: a second build needing one waits for it.
    running: Arc<Mutex<HashMap<String, SharedRun>>>,
}

impl Solver {
    pub(crate) fn new(cache: Arc<CacheManager>, ops: Arc<dyn Ops>) -> Arc<Self> {
        Arc::new(Self { cache, ops, running: Arc::default() })
    }

    pub(crate) fn cache(&self) -> &Arc<CacheManager> {
        &self.cache
    }

    /// Solves the graph's result; `None` is an empty result (scratch).
    pub(crate) async fn solve(
        self: &Arc<Self>,
        graph: &Graph,
        ctx: Arc<BuildContext>,
    ) -> Result<Option<Snapshot>, SolveError> {
        // Before anything runs or is looked up: a cached step needs its
        // entitlement as much as one that runs.
        ctx.entitlements.check(graph)?;
        let Some(result) = graph.result else {
            return Ok(None);
        };
        type VertexFuture = Shared<BoxFuture<'static, Result<Outcome, Arc<SolveError>>>>;
        let mut futures: Vec<VertexFuture> = Vec::with_capacity(graph.vertices.len());
        for vertex in &graph.vertices {
            let inputs: Vec<(VertexFuture, i64)> =
                vertex.inputs.iter().map(|e| (futures[e.vertex].clone(), e.output)).collect();
            let input_digests =
                vertex.inputs.iter().map(|e| graph.vertices[e.vertex].digest.clone()).collect();
            let (solver, ctx, vertex) = (Arc::clone(self), Arc::clone(&ctx), vertex.clone());
            let span = info_span!("vertex", vertex.digest = %vertex.digest);
            let fut = async move {
                let outcomes = futures::future::try_join_all(inputs.iter().map(|(f, _)| f.clone())).await?;
                let mut resolved_inputs = Vec::with_capacity(outcomes.len());
                for (outcome, (_, output)) in outcomes.into_iter().zip(&inputs) {
                    let snapshot = usize::try_from(*output)
                        .ok()
                        .and_then(|i| outcome.outputs.get(i).cloned())
                        .ok_or_else(|| SolveError::NoOutput { name: vertex.name(), output: *output })?;
                    resolved_inputs.push((outcome.key, snapshot));
                }
                solver.vertex(&vertex, input_digests, resolved_inputs, &ctx).await.map_err(Arc::new)
            }
            .instrument(span)
            .boxed()
            .shared();
            futures.push(fut);
        }
        let outcome = futures[result.vertex].clone().await.map_err(SolveError::Shared)?;
        usize::try_from(result.output)
            .ok()
            .and_then(|i| outcome.outputs.get(i).cloned())
            .map(Some)
            .ok_or_else(|| SolveError::NoOutput {
                name: graph.vertices[result.vertex].name(),
                output: result.output,
            })
    }

    async fn vertex(
        &self,
        vertex: &Vertex,
        input_digests: Vec<String>,
        inputs: Vec<(String, Snapshot)>,
        ctx: &Arc<BuildContext>,
    ) -> Result<Outcome, SolveError> {
        if ctx.cancel.is_cancelled() {
            return Err(SolveError::Cancelled);
        }
        let name = vertex.name();
        let mut progress = ProgressVertex {
            digest: vertex.digest.clone(),
            inputs: input_digests,
            name: name.clone(),
            ..ProgressVertex::default()
        };
        let op_err = |source| SolveError::Op { name: name.clone(), source };

        let resolved = match vertex.operation() {
            Some(pb::op::Op::Source(_)) => {
                progress.started = Some(now());
                ctx.job.progress.vertex(progress.clone());
                let resolved = self.ops.resolve_source(vertex, ctx).await.map_err(|e| {
                    report_error(ctx, &progress, &e.to_string());
                    op_err(e)
                });
                Some(resolved?)
            }
            _ => None,
        };
        let snapshots: Vec<Snapshot> = inputs.iter().map(|(_, s)| s.clone()).collect();
        let selected = self.ops.selected_keys(vertex, &snapshots).await.map_err(|e| {
            report_error(ctx, &progress, &e.to_string());
            op_err(e)
        })?;
        let key = cache_key(
            vertex,
            inputs
                .iter()
                .enumerate()
                .map(|(i, (k, _))| selected.get(i).and_then(Option::as_deref).unwrap_or(k)),
            resolved.as_ref().map(|r| r.key.as_str()),
        );

        if !vertex.ignore_cache() {
            let hit =
                self.cache.get(&key).map_err(|source| SolveError::Cache { name: name.clone(), source })?;
            if let Some(record) = hit {
                debug!(%key, "cache hit");
                progress.cached = true;
                progress.started = progress.started.or_else(|| Some(now()));
                progress.completed = Some(now());
                ctx.job.progress.vertex(progress);
                return Ok(Outcome { key, outputs: record.outputs });
            }
        }

        progress.started = progress.started.or_else(|| Some(now()));
        ctx.job.progress.vertex(progress.clone());
        let inputs = snapshots;
        let mut result = self.start(vertex, &key, inputs.clone(), resolved.clone(), ctx).await;
        // A run joined from a build whose client went away is cancelled for
        // that build only: run it again for this one.
        if matches!(&result, Err(e) if matches!(**e, SolveError::Cancelled)) && !ctx.cancel.is_cancelled() {
            result = self.start(vertex, &key, inputs, resolved, ctx).await;
        }
        match result {
            Ok(outputs) => {
                progress.completed = Some(now());
                ctx.job.progress.vertex(progress);
                Ok(Outcome { key, outputs })
            }
            Err(e) => {
                report_error(ctx, &progress, &e.to_string());
                Err(SolveError::Shared(e))
            }
        }
    }

    /// The run of `key`: joins one in progress, or starts it. The first build
    /// to start a vertex runs it for everyone; its record is written before
    /// anyone sees the result.
    fn start(
        &self,
        vertex: &Vertex,
        key: &str,
        inputs: Vec<Snapshot>,
        resolved: Option<Resolved>,
        ctx: &Arc<BuildContext>,
    ) -> SharedRun {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(run) = running.get(key) {
            return run.clone();
        }
        let (cache, ops, vertex, key_owned, ctx) =
            (Arc::clone(&self.cache), Arc::clone(&self.ops), vertex.clone(), key.to_owned(), Arc::clone(ctx));
        let table = Arc::clone(&self.running);
        let run = async move {
            let name = vertex.name();
            let result = tokio::select! {
                result = ops.run(&vertex, inputs, resolved, &ctx) => result.map_err(|source| SolveError::Op { name: name.clone(), source }),
                () = ctx.cancel.cancelled() => Err(SolveError::Cancelled),
            };
            let result = result.and_then(|outputs| {
                cache
                    .put(&key_owned, outputs.clone(), &name)
                    .map_err(|source| SolveError::Cache { name, source })?;
                Ok(outputs)
            });
            // Settled: the next build to need this key looks at the cache, or runs it anew after a failure.
            table.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key_owned);
            result.map_err(Arc::new)
        };
        // The run is a task of its own: it goes on (or notices its build's
        // cancellation and stops) whether or not anybody is polling it.
        let task = tokio::spawn(run);
        let run =
            async move { task.await.unwrap_or_else(|e| Err(Arc::new(SolveError::Task(e.to_string())))) }
                .boxed()
                .shared();
        running.insert(key.to_owned(), run.clone());
        run
    }
}

fn report_error(ctx: &BuildContext, progress: &ProgressVertex, message: &str) {
    let mut failed = progress.clone();
    failed.completed = Some(now());
    failed.error = message.to_owned();
    ctx.job.progress.vertex(failed);
}

/// Attributes of a source op that name the client's session rather than the
/// content; they must not split the cache between builds.
const SESSION_ATTRS: &[&str] = &["local.session", "local.unique"];

/// The vertex's cache key (see the module comment).
pub(crate) fn cache_key<'a>(
    vertex: &Vertex,
    input_keys: impl Iterator<Item = &'a str>,
    source_key: Option<&str>,
) -> String {
    let mut op = vertex.op.clone();
    op.inputs.clear();
    match &mut op.op {
        Some(pb::op::Op::Source(source)) => source.attrs.retain(|k, _| !SESSION_ATTRS.contains(&k.as_str())),
        // A changed proxy does not change what a step makes (`ops/exec.go` `CacheMap`).
        Some(pb::op::Op::Exec(exec)) => {
            if let Some(meta) = &mut exec.meta {
                meta.proxy_env = None;
            }
        }
        _ => {}
    }
    let mut h = Sha256::new();
    h.update(b"kiln-cache-key-v1\0");
    // Maps in pb are BTreeMaps, so this encoding is deterministic.
    h.update(op.encode_to_vec());
    for key in input_keys {
        h.update(b"\0input\0");
        h.update(key.as_bytes());
    }
    if let Some(source_key) = source_key {
        h.update(b"\0source\0");
        h.update(source_key.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solver::Jobs;
    use crate::solver::llb::tests::{DefBuilder, mkfile, source};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Sources resolve to a key taken from a table; file ops write their files
    /// into a new layer after a delay; every run is counted.
    #[derive(Debug)]
    struct FakeOps {
        cache: Arc<CacheManager>,
        source_keys: Mutex<HashMap<String, String>>,
        runs: AtomicUsize,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl Ops for FakeOps {
        async fn resolve_source(&self, vertex: &Vertex, _ctx: &BuildContext) -> Result<Resolved, OpError> {
            let Some(pb::op::Op::Source(s)) = vertex.operation() else { unreachable!() };
            let key = self.source_keys.lock().unwrap().get(&s.identifier).cloned();
            Ok(Resolved { key: key.ok_or("unknown source")?, snapshot: None })
        }

        async fn run(
            &self,
            vertex: &Vertex,
            inputs: Vec<Snapshot>,
            _resolved: Option<Resolved>,
            _ctx: &BuildContext,
        ) -> Result<Vec<Snapshot>, OpError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let base = inputs.into_iter().next().unwrap_or_default();
            let layer = self.cache.new_layer()?;
            if let Some(pb::op::Op::File(f)) = vertex.operation() {
                for a in &f.actions {
                    if let Some(pb::file_action::Action::Mkfile(m)) = &a.action {
                        if m.path == "/fail" {
                            return Err("mkfile /fail: refused".into());
                        }
                        std::fs::write(layer.path().join(m.path.trim_start_matches('/')), &m.data)?;
                    }
                }
            }
            Ok(vec![base.with(self.cache.commit_layer(layer)?)])
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        ops: Arc<FakeOps>,
        solver: Arc<Solver>,
        jobs: Arc<Jobs>,
    }

    fn fixture(delay: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(CacheManager::open(dir.path()).unwrap());
        let ops = Arc::new(FakeOps {
            cache: Arc::clone(&cache),
            source_keys: Mutex::new(HashMap::from([
                ("local://a".to_owned(), "content-a".to_owned()),
                ("local://b".to_owned(), "content-b".to_owned()),
            ])),
            runs: AtomicUsize::new(0),
            delay,
        });
        let solver = Solver::new(cache, ops.clone());
        Fixture { _dir: dir, ops, solver, jobs: Jobs::new() }
    }

    impl Fixture {
        async fn solve(
            &self,
            def: &pb::Definition,
            id: &str,
        ) -> (Result<Option<Snapshot>, SolveError>, Vec<ProgressVertex>) {
            let guard = self.jobs.create(id).unwrap();
            let ctx = Arc::new(BuildContext {
                job: Arc::clone(&guard.job),
                sessions: Group::new(crate::session::SessionManager::new(), []),
                entitlements: Entitlements::default(),
                cancel: CancellationToken::new(),
            });
            let result = self.solver.solve(&Graph::parse(def).unwrap(), ctx).await;
            let updates = guard.job.progress.follow();
            drop(guard);
            let vertexes = futures::StreamExt::collect::<Vec<_>>(updates)
                .await
                .into_iter()
                .flat_map(|u| u.vertexes)
                .collect();
            (result, vertexes)
        }

        fn runs(&self) -> usize {
            self.ops.runs.load(Ordering::SeqCst)
        }
    }

    /// Two files on a source, with a session attr that differs per build.
    fn chain(session: &str, second: &str) -> pb::Definition {
        let mut b = DefBuilder::default();
        let mut src = source("local://a");
        if let Some(pb::op::Op::Source(s)) = &mut src.op {
            s.attrs.insert("local.session".into(), session.into());
        }
        let src = b.op(src);
        let one = b.op(mkfile(Some(&src), "/one", "1"));
        let two = b.op(mkfile(Some(&one), "/two", second));
        b.finish(Some(&two))
    }

    /// The final state of every vertex in a progress stream.
    fn last_states(vertexes: &[ProgressVertex]) -> HashMap<String, ProgressVertex> {
        vertexes.iter().map(|v| (v.name.clone(), v.clone())).collect()
    }

    #[test]
    fn the_proxy_of_a_step_is_not_in_its_cache_key() {
        let step = |proxy: &str, args: &[&str]| {
            let meta = pb::Meta {
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                proxy_env: Some(pb::ProxyEnv { http_proxy: proxy.into(), ..Default::default() }),
                ..Default::default()
            };
            let op = pb::Op {
                op: Some(pb::op::Op::Exec(pb::ExecOp { meta: Some(meta), ..Default::default() })),
                ..Default::default()
            };
            Vertex { digest: String::new(), op, inputs: Vec::new(), metadata: pb::OpMetadata::default() }
        };
        let key = |v: &Vertex| cache_key(v, std::iter::empty(), None);
        assert_eq!(key(&step("http://a:1", &["true"])), key(&step("http://b:2", &["true"])));
        assert_ne!(key(&step("http://a:1", &["true"])), key(&step("http://a:1", &["false"])));
    }

    #[tokio::test]
    async fn a_rebuild_is_all_cached_even_from_another_session() {
        let f = fixture(Duration::ZERO);
        let (first, progress) = f.solve(&chain("session-1", "2"), "b1").await;
        let first = first.unwrap().unwrap();
        assert_eq!(f.runs(), 3);
        assert_eq!(first.layers.len(), 3);
        assert!(last_states(&progress).values().all(|v| !v.cached && v.completed.is_some()));

        let (second, progress) = f.solve(&chain("session-2", "2"), "b2").await;
        assert_eq!(second.unwrap().unwrap(), first);
        assert_eq!(f.runs(), 3, "nothing ran again");
        let states = last_states(&progress);
        assert_eq!(states.len(), 3);
        assert!(
            states.values().all(|v| v.cached && v.started.is_some() && v.completed.is_some()),
            "{states:?}"
        );
    }

    #[tokio::test]
    async fn a_change_reruns_only_what_depends_on_it() {
        let f = fixture(Duration::ZERO);
        f.solve(&chain("s", "2"), "b1").await.0.unwrap();
        let (result, progress) = f.solve(&chain("s", "changed"), "b2").await;
        let snapshot = result.unwrap().unwrap();
        assert_eq!(f.runs(), 4, "only the changed step ran");
        let states = last_states(&progress);
        assert!(states["mkfile /one"].cached);
        assert!(!states["mkfile /two"].cached);
        let top = f.solver.cache().layer_path(snapshot.layers.last().unwrap());
        assert_eq!(std::fs::read_to_string(top.join("two")).unwrap(), "changed");

        // A source whose content changed re-runs everything after it.
        f.ops.source_keys.lock().unwrap().insert("local://a".into(), "content-a2".into());
        f.solve(&chain("s", "changed"), "b3").await.0.unwrap();
        assert_eq!(f.runs(), 7);
    }

    #[tokio::test]
    async fn independent_branches_run_concurrently() {
        let f = fixture(Duration::from_millis(300));
        let mut b = DefBuilder::default();
        let a = b.op(source("local://a"));
        let bb = b.op(source("local://b"));
        let fa = b.op(mkfile(Some(&a), "/fa", "a"));
        let fb = b.op(mkfile(Some(&bb), "/fb", "b"));
        let merge = b.op(pb::Op {
            inputs: vec![pb::Input { digest: fa, index: 0 }, pb::Input { digest: fb, index: 0 }],
            op: Some(pb::op::Op::Merge(pb::MergeOp::default())),
            ..Default::default()
        });
        let def = b.finish(Some(&merge));
        let start = Instant::now();
        f.solve(&def, "b1").await.0.unwrap();
        let took = start.elapsed();
        // Two sources, two file ops side by side, then the merge: three rounds, not five.
        assert!(took < Duration::from_millis(1300), "took {took:?}");
        assert_eq!(f.runs(), 5);
    }

    #[tokio::test]
    async fn identical_vertices_of_concurrent_builds_run_once() {
        let f = Arc::new(fixture(Duration::from_millis(200)));
        let (d1, d2) = (chain("s1", "2"), chain("s2", "2"));
        let (r1, r2) = tokio::join!(f.solve(&d1, "b1"), f.solve(&d2, "b2"));
        assert_eq!(r1.0.unwrap(), r2.0.unwrap());
        assert_eq!(f.runs(), 3);
    }

    #[tokio::test]
    async fn a_failing_step_names_itself_in_the_error_and_the_progress() {
        let f = fixture(Duration::ZERO);
        let (result, progress) = f.solve(&failing(), "b1").await;
        let err = result.unwrap_err().to_string();
        assert_eq!(err, "mkfile /fail: refused");
        let states = last_states(&progress);
        assert_eq!(states["[2/2] RUN false"].error, "mkfile /fail: refused");
        // Nothing was recorded for the failed step: a retry runs it again.
        let before = f.runs();
        f.solve(&failing(), "b2").await.0.unwrap_err();
        assert_eq!(f.runs(), before + 1);
    }

    fn failing() -> pb::Definition {
        let mut b = DefBuilder::default();
        let src = b.op(source("local://a"));
        let bad = b.named(mkfile(Some(&src), "/fail", ""), "[2/2] RUN false");
        b.finish(Some(&bad))
    }

    #[tokio::test]
    async fn an_unknown_source_fails_with_its_name() {
        let f = fixture(Duration::ZERO);
        let mut b = DefBuilder::default();
        let src = b.op(source("local://nope"));
        let (result, _) = f.solve(&b.finish(Some(&src)), "b1").await;
        assert_eq!(result.unwrap_err().to_string(), "unknown source");
    }
}
