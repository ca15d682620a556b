//! The LLBBridge's build logic: the frontend API that buildx drives for
//! gateway-forwarded builds (docs/protocol.md §2.2). `control::bridge`
//! serves it over gRPC.
//!
//! `Control.Solve` with neither a definition nor a frontend registers the
//! build here under its ref and waits; the client then calls LLBBridge
//! methods (header `buildkit-controlapi-buildid` = ref) and ends with
//! `Return`, whose result the waiting Solve exports.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_proto::buildkit::fsutil::types::Stat;
use kiln_proto::buildkit::moby::buildkit::v1::apicaps::ApiCap;
use kiln_proto::buildkit::moby::buildkit::v1::frontend as fe;
use kiln_proto::buildkit::moby::buildkit::v1::{StatusResponse, frontend::ReturnRequest};
use kiln_proto::buildkit::moby::buildkit::v1::{Vertex, VertexWarning};
use kiln_proto::buildkit::pb::{self, Definition};
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

use crate::arrivals::Arrivals;
use crate::cache::mount::{MountError, mount};
use crate::cache::{CacheManager, Snapshot};
use crate::executor::rootpath;
use crate::frontend::dockerfile::builder::{self as dockerfile, FrontendError};
use crate::fsutil::stat::{Detail, InodeMap, stat_of};
use crate::fsutil::{FsutilError, PatternError, PatternMatcher};
use crate::progress::now;
use crate::solver::llb::{Graph, LlbError};
use crate::solver::scheduler::{BuildContext, SolveError, Solver};
use crate::source::image::{ImageError, Platform, Reference, ResolvedImage};
use crate::source::{SourceError, Sources};
use crate::worker::random_id;

/// How long a bridge call waits for its Solve to register (upstream: 3 s,
/// docs/protocol.md §3.4).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Frontend API capabilities kilnd implements (`frontend/gateway/pb/caps.go`).
/// Advertising `return` and `proto.refarray` keeps clients off the legacy
/// result path (docs/protocol.md §2.5); `reference.output` says returned
/// refs carry their definitions, which bake turns into other targets'
/// contexts. Solves run eagerly, so `gateway.solve.evaluate` and
/// `gateway.evaluate` hold by construction.
pub(crate) const FRONTEND_CAPS: &[&str] = &[
    "return",
    "proto.refarray",
    "returnmap",
    "frontend.inputs",
    "gateway.warnings",
    "reference.output",
    "readfile",
    "readdir",
    "statfile",
    "gateway.evaluate",
    "gateway.solve.evaluate",
    "resolveimage",
    "resolveimage.resolvemode",
    "source.metaresolver",
];

/// Several exporters in one Solve (`solver/pb/caps.go` `CapMultipleExporters`).
const EXPORTER_MULTIPLE: &str = "exporter.multiple";

/// The LLB capabilities Ping answers with (docs/protocol.md §2.5): the LLB
/// the built-in frontend emits and several exporters per Solve. An empty
/// list makes the client assume the frozen pre-capability set, and buildx
/// then refuses a second `--output`.
pub(crate) fn llb_caps() -> Vec<ApiCap> {
    let mut ids = crate::frontend::llb::caps::ALL.to_vec();
    ids.push(EXPORTER_MULTIPLE);
    caps(&ids)
}

pub(crate) fn caps(ids: &[&str]) -> Vec<ApiCap> {
    ids.iter().map(|id| ApiCap { id: (*id).to_owned(), enabled: true, ..ApiCap::default() }).collect()
}

/// A build waiting for its client to drive the frontend API.
#[derive(Debug)]
pub(crate) struct ForwardedBuild {
    pub id: String,
    pub ctx: Arc<BuildContext>,
    pub frontend_inputs: HashMap<String, Definition>,
    returned: Mutex<Option<oneshot::Sender<ReturnRequest>>>,
    /// Results handed to the client, by the ref id it will name them with.
    refs: Mutex<HashMap<String, Option<Snapshot>>>,
}

/// A failed bridge call, in the bridge's terms; the gRPC edge picks its status.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("no build {id:?} is waiting for the frontend API")]
    NoBuild { id: String },
    #[error("build {build} already returned")]
    Returned { build: String },
    #[error("making a ref id: {0}")]
    RefId(#[source] io::Error),
    #[error("{0}")]
    Definition(#[from] LlbError),
    #[error(transparent)]
    Solve(#[from] SolveError),
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error("unknown frontend {0:?}")]
    UnknownFrontend(String),
    #[error("no such ref {id:?} in build {build}: refs come from this build's LLBBridge.Solve")]
    UnknownRef { build: String, id: String },
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("invalid range of {path}: offset {offset} and length {length} must not be negative")]
    InvalidRange { path: String, offset: i64, length: i64 },
    #[error("invalid include pattern {pattern:?}: {source}")]
    Pattern { pattern: String, source: PatternError },
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("describing {path}: {source}")]
    Describe { path: String, source: FsutilError },
    #[error("mounting ref {id}: {source}")]
    Mount { id: String, source: MountError },
    #[error("a file-system task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("invalid resolve mode {0:?}: expected default, pull or local")]
    ResolveMode(String),
    #[error("resolve source metadata: a source is required")]
    NoSource,
    #[error("invalid image reference {reference:?}: {source}")]
    Reference { reference: String, source: ImageError },
    #[error("resolving image config for {reference}: {source}")]
    ResolveImage { reference: String, source: SourceError },
}

impl ForwardedBuild {
    fn add_ref(&self, snapshot: Option<Snapshot>) -> Result<String, BridgeError> {
        let id = random_id().map_err(BridgeError::RefId)?;
        self.refs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.clone(), snapshot);
        Ok(id)
    }

    /// The snapshot behind a ref id the client returned.
    pub(crate) fn get_ref(&self, id: &str) -> Option<Option<Snapshot>> {
        self.refs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned()
    }

    /// The snapshot behind a ref for reading; scratch is an empty tree.
    /// Refs are solved when LLBBridge.Solve returns them, so this is also
    /// what evaluating one means.
    pub(crate) fn snapshot_for_read(&self, id: &str) -> Result<Snapshot, BridgeError> {
        let snapshot = self
            .get_ref(id)
            .ok_or_else(|| BridgeError::UnknownRef { build: self.id.clone(), id: id.to_owned() })?;
        Ok(snapshot.unwrap_or_default())
    }

    /// Hands the client's `Return` to the waiting Solve.
    pub(crate) fn finish(&self, ret: ReturnRequest) -> Result<(), BridgeError> {
        let sender = self.returned.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let sender = sender.ok_or_else(|| BridgeError::Returned { build: self.id.clone() })?;
        // The Solve may be gone if its client left; then nobody needs the result.
        let _ = sender.send(ret);
        Ok(())
    }

    /// A warning of the client's frontend, shown with the build's progress.
    pub(crate) fn warn(&self, w: fe::WarnRequest) {
        self.ctx.job.progress.send(StatusResponse {
            warnings: vec![VertexWarning {
                vertex: w.digest,
                level: w.level,
                short: w.short,
                detail: w.detail,
                url: w.url,
                info: w.info,
                ranges: w.ranges,
            }],
            ..StatusResponse::default()
        });
    }

    /// LLBBridge.Solve: a definition solved now, or the built-in Dockerfile
    /// frontend run; the results become refs of this build.
    pub(crate) async fn solve(
        &self,
        solver: &Arc<Solver>,
        sources: &Sources,
        req: fe::SolveRequest,
    ) -> Result<fe::SolveResponse, BridgeError> {
        let definition = req.definition.filter(|d| !d.def.is_empty());
        let (id, def) = match (definition, req.frontend.as_str()) {
            (Some(def), "") => {
                let graph = Graph::parse(&def)?;
                let snapshot = solver.solve(&graph, Arc::clone(&self.ctx)).await?;
                (self.add_ref(snapshot)?, Some(def))
            }
            (None, "") => (String::new(), None),
            (_, "dockerfile.v0") => {
                let session = self.ctx.sessions.ids().first().cloned().unwrap_or_default();
                let result = dockerfile::build(
                    solver,
                    sources,
                    &self.ctx,
                    &req.frontend_opt,
                    &req.frontend_inputs,
                    &session,
                )
                .await?;
                let r = result.refs.into_gateway(req.allow_result_array_ref, |s| self.add_ref(s))?;
                return Ok(fe::SolveResponse {
                    r#ref: String::new(),
                    result: Some(fe::Result {
                        result: Some(r),
                        metadata: result.metadata,
                        ..Default::default()
                    }),
                });
            }
            (_, other) => return Err(BridgeError::UnknownFrontend(other.to_owned())),
        };
        let result = if req.allow_result_array_ref {
            fe::result::Result::Ref(fe::Ref { id, def })
        } else {
            fe::result::Result::RefDeprecated(id)
        };
        Ok(fe::SolveResponse {
            r#ref: String::new(),
            result: Some(fe::Result { result: Some(result), ..Default::default() }),
        })
    }

    /// ReadFile in ref `id`.
    pub(crate) async fn read_file(
        &self,
        cache: &Arc<CacheManager>,
        id: &str,
        path: String,
        range: Option<fe::FileRange>,
    ) -> Result<Vec<u8>, BridgeError> {
        self.in_ref(cache, id, move |root| read_file(root, &path, range.as_ref())).await
    }

    /// ReadDir in ref `id`.
    pub(crate) async fn read_dir(
        &self,
        cache: &Arc<CacheManager>,
        id: &str,
        dir: String,
        include: String,
    ) -> Result<Vec<Stat>, BridgeError> {
        self.in_ref(cache, id, move |root| read_dir(root, &dir, &include)).await
    }

    /// StatFile in ref `id`.
    pub(crate) async fn stat_file(
        &self,
        cache: &Arc<CacheManager>,
        id: &str,
        path: String,
    ) -> Result<Stat, BridgeError> {
        self.in_ref(cache, id, move |root| stat_file(root, &path)).await
    }

    /// Runs `read` on a read-only mount of ref `id`, off the async runtime.
    async fn in_ref<T, F>(&self, cache: &Arc<CacheManager>, id: &str, read: F) -> Result<T, BridgeError>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T, BridgeError> + Send + 'static,
    {
        let snapshot = self.snapshot_for_read(id)?;
        let cache = Arc::clone(cache);
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let view = mount(&cache, &snapshot, None).map_err(|source| BridgeError::Mount { id, source })?;
            read(view.path())
        })
        .await?
    }

    /// One platform's manifest and config for `reference` (on `platform`,
    /// else the worker's `default_platform`), with the build's credentials,
    /// shown to the client as a vertex named `log_name` (upstream
    /// `llbBridge.ResolveSourceMetadata`).
    pub(crate) async fn resolve_image(
        &self,
        sources: &Sources,
        reference: &str,
        platform: Option<&pb::Platform>,
        default_platform: Option<&pb::Platform>,
        resolve_mode: &str,
        log_name: &str,
    ) -> Result<(Reference, ResolvedImage), BridgeError> {
        check_resolve_mode(resolve_mode)?;
        let parsed = Reference::parse(reference)
            .map_err(|source| BridgeError::Reference { reference: reference.to_owned(), source })?;
        let platform = platform.or(default_platform).map_or_else(Platform::linux_amd64, platform_of);
        let name = if log_name.is_empty() {
            format!("resolve image config for docker-image://{parsed}")
        } else {
            log_name.to_owned()
        };
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(format!("{name} {platform}"))));
        let mut vertex = Vertex { digest, name, started: Some(now()), ..Vertex::default() };
        self.ctx.job.progress.vertex(vertex.clone());
        let result = sources.resolve_image(&parsed, &platform, &self.ctx.sessions).await;
        vertex.completed = Some(now());
        if let Err(e) = &result {
            vertex.error = e.to_string();
        }
        self.ctx.job.progress.vertex(vertex);
        let image =
            result.map_err(|source| BridgeError::ResolveImage { reference: parsed.to_string(), source })?;
        Ok((parsed, image))
    }
}

/// An I/O failure on `path`; a missing path (or a file where a directory
/// was expected on the way) is NotFound.
fn io_error(path: &str) -> impl FnOnce(io::Error) -> BridgeError + '_ {
    move |source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            BridgeError::NotFound { path: path.to_owned() }
        }
        _ => BridgeError::Read { path: path.to_owned(), source },
    }
}

/// `path` inside the ref mounted at `root`, symlinks followed as if `root`
/// were `/` (upstream `fs.RootPath` in `cache/util/fsutil.go`).
fn resolve_in(root: &Path, path: &str) -> Result<PathBuf, BridgeError> {
    rootpath::resolve(root, path).map_err(|source| BridgeError::Read { path: path.to_owned(), source })
}

/// ReadFile: a regular file's bytes, or `length` bytes from `offset` (fewer
/// at the end of the file), as upstream's `io.NewSectionReader`.
fn read_file(root: &Path, path: &str, range: Option<&fe::FileRange>) -> Result<Vec<u8>, BridgeError> {
    let host = resolve_in(root, path)?;
    let mut file = std::fs::File::open(&host).map_err(io_error(path))?;
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(BridgeError::NotRegular { path: path.to_owned() });
    }
    let read_err = |source| BridgeError::Read { path: path.to_owned(), source };
    let mut data = Vec::new();
    match range {
        None => {
            file.read_to_end(&mut data).map_err(read_err)?;
        }
        Some(r) => {
            let invalid =
                || BridgeError::InvalidRange { path: path.to_owned(), offset: r.offset, length: r.length };
            let offset = u64::try_from(r.offset).map_err(|_| invalid())?;
            let length = u64::try_from(r.length).map_err(|_| invalid())?;
            file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
            file.take(length).read_to_end(&mut data).map_err(read_err)?;
        }
    }
    Ok(data)
}

/// StatFile: the entry at `path`, its `Stat.path` the entry's base name
/// (upstream `fsutil.Stat`).
fn stat_file(root: &Path, path: &str) -> Result<Stat, BridgeError> {
    let host = resolve_in(root, path)?;
    let meta = std::fs::symlink_metadata(&host).map_err(io_error(path))?;
    let name = match host.strip_prefix(root).ok().and_then(Path::file_name) {
        Some(name) => name.to_string_lossy().into_owned(),
        None => "/".to_owned(),
    };
    stat_of(&host, &name, &meta, &mut InodeMap::default(), Detail::Full)
        .map_err(|source| BridgeError::Describe { path: path.to_owned(), source })
}

/// The names in `dir`, in byte order as fsutil's walk visits them.
fn sorted_names(dir: &Path, shown: &str) -> Result<Vec<String>, BridgeError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(shown))? {
        let entry = entry.map_err(io_error(shown))?;
        let name = entry.file_name().into_string().map_err(|_| BridgeError::Describe {
            path: shown.to_owned(),
            source: FsutilError::NonUtf8Path { path: entry.path() },
        })?;
        names.push(name);
    }
    names.sort_unstable();
    Ok(names)
}

/// ReadDir: the entries directly in `dir`. With an include pattern, an entry
/// is listed when it matches or, for a directory, when anything below it
/// matches (fsutil's filtered walk reports such a parent, and the bridge
/// never descends; `cache/util/fsutil.go` `ReadDir`).
fn read_dir(root: &Path, dir: &str, include: &str) -> Result<Vec<Stat>, BridgeError> {
    let matcher = PatternMatcher::new(Some(include).filter(|p| !p.is_empty()))
        .map_err(|source| BridgeError::Pattern { pattern: include.to_owned(), source })?;
    let host = resolve_in(root, dir)?;
    let meta = std::fs::symlink_metadata(&host).map_err(io_error(dir))?;
    if !meta.is_dir() {
        return Err(BridgeError::NotADirectory { path: dir.to_owned() });
    }
    let mut inodes = InodeMap::default();
    let mut entries = Vec::new();
    for name in sorted_names(&host, dir)? {
        let abs = host.join(&name);
        let shown = format!("{}/{name}", dir.trim_end_matches('/'));
        let meta = std::fs::symlink_metadata(&abs).map_err(io_error(&shown))?;
        if !matcher.is_empty() {
            let (hit, info) = matcher.matches_with_parent(&name, None);
            let listed = hit || (meta.is_dir() && matches_below(&matcher, &abs, &name, &info, &shown)?);
            if !listed {
                continue;
            }
        }
        let stat = stat_of(&abs, &name, &meta, &mut inodes, Detail::Full)
            .map_err(|source| BridgeError::Describe { path: shown.clone(), source })?;
        entries.push(stat);
    }
    Ok(entries)
}

/// Whether anything under directory `abs` (relative path `rel`) matches.
fn matches_below(
    matcher: &PatternMatcher,
    abs: &Path,
    rel: &str,
    info: &crate::fsutil::patterns::MatchInfo,
    shown: &str,
) -> Result<bool, BridgeError> {
    for name in sorted_names(abs, shown)? {
        let child_rel = format!("{rel}/{name}");
        let (hit, child_info) = matcher.matches_with_parent(&child_rel, Some(info));
        if hit {
            return Ok(true);
        }
        let child = abs.join(&name);
        let child_shown = format!("{shown}/{name}");
        let meta = std::fs::symlink_metadata(&child).map_err(io_error(&child_shown))?;
        if meta.is_dir() && matches_below(matcher, &child, &child_rel, &child_info, &child_shown)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks a resolve mode the way upstream's `ParseImageResolveMode` does;
/// kilnd always asks the registry, which every mode allows.
fn check_resolve_mode(mode: &str) -> Result<(), BridgeError> {
    match mode {
        "" | "default" | "pull" | "local" => Ok(()),
        other => Err(BridgeError::ResolveMode(other.to_owned())),
    }
}

/// An LLB platform as the registry client matches it.
fn platform_of(p: &pb::Platform) -> Platform {
    let variant = Some(p.variant.as_str()).filter(|v| !v.is_empty());
    Platform::new(&p.os, &p.architecture, variant).normalize()
}

/// Forwarded builds by ref.
#[derive(Debug, Default)]
pub(crate) struct Bridge {
    builds: Mutex<HashMap<String, Arc<ForwardedBuild>>>,
    arrivals: Arrivals,
}

/// Unregisters its build when dropped.
#[derive(Debug)]
pub(crate) struct BridgeGuard {
    bridge: Arc<Bridge>,
    id: String,
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        self.bridge.lock().remove(&self.id);
    }
}

impl Bridge {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ForwardedBuild>>> {
        self.builds.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a build; the receiver yields the client's `Return`.
    pub(crate) fn register(
        self: &Arc<Self>,
        ctx: Arc<BuildContext>,
        frontend_inputs: HashMap<String, Definition>,
    ) -> (BridgeGuard, Arc<ForwardedBuild>, oneshot::Receiver<ReturnRequest>) {
        let (tx, rx) = oneshot::channel();
        let id = ctx.job.id.clone();
        let build = Arc::new(ForwardedBuild {
            id: id.clone(),
            ctx,
            frontend_inputs,
            returned: Mutex::new(Some(tx)),
            refs: Mutex::new(HashMap::new()),
        });
        self.lock().insert(id.clone(), Arc::clone(&build));
        self.arrivals.announce();
        (BridgeGuard { bridge: Arc::clone(self), id }, build, rx)
    }

    /// The build registered under `id`, waiting for its Solve to register it.
    pub(crate) async fn lookup(&self, id: &str) -> Result<Arc<ForwardedBuild>, BridgeError> {
        let find = || self.lock().get(id).cloned();
        self.arrivals
            .wait_for(LOOKUP_TIMEOUT, find)
            .await
            .map_err(|_| BridgeError::NoBuild { id: id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::stat::go_mode;

    /// A ref's tree: files, a directory with a nested match, an empty
    /// directory, and symlinks that point out of the root.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("hello.txt"), b"hello, bridge").unwrap();
        std::fs::write(root.join("b.md"), b"# b").unwrap();
        std::fs::create_dir_all(root.join("src/deep")).unwrap();
        std::fs::write(root.join("src/deep/main.txt"), b"fn main").unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), b"inside the ref").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd-link")).unwrap();
        std::os::unix::fs::symlink("../../../../hello.txt", root.join("src/deep/up")).unwrap();
        std::fs::set_permissions(root.join("b.md"), std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        dir
    }

    fn code(e: BridgeError) -> tonic::Code {
        tonic::Status::from(e).code()
    }

    #[test]
    fn read_file_returns_the_bytes_or_the_range_asked_for() {
        let t = tree();
        assert_eq!(read_file(t.path(), "hello.txt", None).unwrap(), b"hello, bridge");
        assert_eq!(read_file(t.path(), "/src/deep/main.txt", None).unwrap(), b"fn main");
        let range = |offset, length| fe::FileRange { offset, length };
        assert_eq!(read_file(t.path(), "hello.txt", Some(&range(7, 3))).unwrap(), b"bri");
        assert_eq!(read_file(t.path(), "hello.txt", Some(&range(7, 1000))).unwrap(), b"bridge");
        assert_eq!(read_file(t.path(), "hello.txt", Some(&range(100, 4))).unwrap(), b"");
        let err = read_file(t.path(), "hello.txt", Some(&range(-1, 4))).unwrap_err();
        assert_eq!(code(err), tonic::Code::InvalidArgument);
    }

    #[test]
    fn symlinks_resolve_inside_the_ref() {
        let t = tree();
        // An absolute link names the ref's own /etc/passwd, never the host's.
        assert_eq!(read_file(t.path(), "passwd-link", None).unwrap(), b"inside the ref");
        // `..` stops at the ref's root.
        assert_eq!(read_file(t.path(), "src/deep/up", None).unwrap(), b"hello, bridge");
    }

    #[test]
    fn reading_what_is_missing_or_not_a_file_fails_clearly() {
        let t = tree();
        let err = read_file(t.path(), "nope/missing.txt", None).unwrap_err();
        assert_eq!(err.to_string(), "nope/missing.txt: no such file or directory");
        assert_eq!(code(err), tonic::Code::NotFound);
        let err = read_file(t.path(), "hello.txt/below", None).unwrap_err();
        assert_eq!(code(err), tonic::Code::NotFound);
        let err = read_file(t.path(), "src", None).unwrap_err();
        assert_eq!(err.to_string(), "src is not a regular file");
        assert_eq!(code(err), tonic::Code::InvalidArgument);
    }

    #[test]
    fn stat_file_describes_the_entry_with_go_mode_bits() {
        let t = tree();
        let st = stat_file(t.path(), "b.md").unwrap();
        assert_eq!((st.path.as_str(), st.mode, st.size), ("b.md", 0o640, 3));
        let meta = std::fs::metadata(t.path().join("b.md")).unwrap();
        assert_eq!(st.mod_time, crate::fsutil::stat::mtime_ns(&meta));
        let dir = stat_file(t.path(), "src/deep").unwrap();
        assert_eq!((dir.path.as_str(), dir.mode & go_mode::DIR), ("deep", go_mode::DIR));
        // The final link is followed, as `fs.RootPath` does.
        let linked = stat_file(t.path(), "passwd-link").unwrap();
        assert_eq!((linked.path.as_str(), linked.size), ("passwd", 14));
        let err = stat_file(t.path(), "missing").unwrap_err();
        assert_eq!(code(err), tonic::Code::NotFound);
    }

    #[test]
    fn read_dir_lists_direct_entries_in_order() {
        let t = tree();
        let names = |entries: Vec<Stat>| entries.into_iter().map(|s| s.path).collect::<Vec<_>>();
        assert_eq!(
            names(read_dir(t.path(), "/", "").unwrap()),
            ["b.md", "empty", "etc", "hello.txt", "passwd-link", "src"]
        );
        let src = read_dir(t.path(), "src", "").unwrap();
        assert_eq!(src.len(), 1);
        assert_eq!((src[0].path.as_str(), src[0].mode & go_mode::DIR), ("deep", go_mode::DIR));
        let link = read_dir(t.path(), ".", "passwd-link").unwrap();
        assert_eq!(link[0].linkname, "/etc/passwd");
        assert_eq!(link[0].mode & go_mode::SYMLINK, go_mode::SYMLINK);
    }

    #[test]
    fn read_dir_keeps_matches_and_directories_holding_matches() {
        let t = tree();
        let names = |pattern| {
            read_dir(t.path(), ".", pattern).unwrap().into_iter().map(|s| s.path).collect::<Vec<_>>()
        };
        assert_eq!(names("*.txt"), ["hello.txt"]);
        assert_eq!(names("**/*.txt"), ["hello.txt", "src"]);
        assert_eq!(names("src/deep/main.txt"), ["src"]);
        assert_eq!(names("*.rs"), Vec::<String>::new());
    }

    #[test]
    fn read_dir_of_a_file_or_nothing_fails_clearly() {
        let t = tree();
        let err = read_dir(t.path(), "hello.txt", "").unwrap_err();
        assert_eq!(err.to_string(), "hello.txt is not a directory");
        assert_eq!(code(err), tonic::Code::InvalidArgument);
        assert_eq!(code(read_dir(t.path(), "missing", "").unwrap_err()), tonic::Code::NotFound);
        assert_eq!(code(read_dir(t.path(), ".", "[").unwrap_err()), tonic::Code::InvalidArgument);
    }

    #[test]
    fn resolve_modes_are_upstreams() {
        for mode in ["", "default", "pull", "local"] {
            check_resolve_mode(mode).unwrap();
        }
        let err = check_resolve_mode("sometimes").unwrap_err();
        assert_eq!(code(err), tonic::Code::InvalidArgument);
    }
}
