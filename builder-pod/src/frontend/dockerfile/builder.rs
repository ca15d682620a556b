//! The built-in `dockerfile.v0` frontend as a whole (BuildKit's
//! `frontend/dockerfile/builder`): read the Dockerfile and `.dockerignore`
//! from the client through LLB local sources, convert, solve.
//!
//! `# syntax=docker/dockerfile:1…` (and `-upstream`) is this frontend; any
//! other syntax image would need container frontends, which kilnd does not
//! run, and fails with an error saying so (docs/protocol.md §6).

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_proto::buildkit::moby::buildkit::v1::frontend as fe;
use kiln_proto::buildkit::moby::buildkit::v1::{StatusResponse, Vertex, VertexWarning};
use kiln_proto::buildkit::pb;
use sha2::{Digest, Sha256};

use super::convert::{BoxError, ConvertOptions, Converted, ImageResolver, ResolvedConfig, convert};
use super::parser::detect_syntax;
use crate::cache::Snapshot;
use crate::cache::mount::mount;
use crate::frontend::llb::{
    self, Constraints, CopyInfo, DiffType, FileAction, HttpOptions, LocalOptions, MarshalOptions, Platform,
};
use crate::fsutil::patterns::parse_ignore_file;
use crate::progress::now;
use crate::session::upload::upload_path;
use crate::solver::llb::Graph;
use crate::solver::scheduler::{BuildContext, SolveError, Solver};
use crate::source::Sources;
use crate::source::image::Reference;

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("{0}")]
    Convert(String),
    #[error(transparent)]
    Solve(#[from] SolveError),
    #[error("failed to read dockerfile: {0}")]
    ReadDockerfile(String),
    #[error(
        "# syntax={0} needs a container frontend, which kilnd does not run; \
         kilnd builds docker/dockerfile:1 syntax natively (remove the directive or use docker/dockerfile:1)"
    )]
    Syntax(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// What a frontend build produced: one result, or one per platform, and
/// the metadata the exporters read (`containerimage.config[/<platform>]`,
/// `refs.platforms`).
#[derive(Debug)]
pub(crate) struct FrontendResult {
    pub refs: FrontendRefs,
    pub metadata: HashMap<String, Vec<u8>>,
}

/// `Result.Ref` or `Result.Refs`.
#[derive(Debug)]
pub(crate) enum FrontendRefs {
    Single(SolvedRef),
    /// By platform id (`linux/arm64`), in the order the platforms were asked for.
    Platforms(Vec<(String, SolvedRef)>),
}

impl FrontendRefs {
    /// The result as the LLBBridge returns it, each snapshot registered by
    /// `add_ref` under the id it returns; `array` is the client's
    /// `AllowResultArrayRef` (refs with their definitions).
    pub(crate) fn into_gateway<E>(
        self,
        array: bool,
        mut add_ref: impl FnMut(Option<Snapshot>) -> Result<String, E>,
    ) -> Result<fe::result::Result, E> {
        Ok(match self {
            FrontendRefs::Single(r) => {
                let id = add_ref(r.snapshot)?;
                if array {
                    fe::result::Result::Ref(fe::Ref { id, def: Some(r.definition) })
                } else {
                    fe::result::Result::RefDeprecated(id)
                }
            }
            FrontendRefs::Platforms(list) if array => {
                let mut refs = HashMap::new();
                for (platform, r) in list {
                    refs.insert(platform, fe::Ref { id: add_ref(r.snapshot)?, def: Some(r.definition) });
                }
                fe::result::Result::Refs(fe::RefMap { refs })
            }
            FrontendRefs::Platforms(list) => {
                let mut refs = HashMap::new();
                for (platform, r) in list {
                    refs.insert(platform, add_ref(r.snapshot)?);
                }
                fe::result::Result::RefsDeprecated(fe::RefMapDeprecated { refs })
            }
        })
    }
}

/// One solved result and the LLB it came from.
#[derive(Debug)]
pub(crate) struct SolvedRef {
    pub snapshot: Option<Snapshot>,
    pub definition: pb::Definition,
}

/// `exptypes.Platforms` as Go's encoding/json writes it (no JSON tags upstream).
#[derive(Debug, serde::Serialize)]
struct ExportPlatforms<'a> {
    #[serde(rename = "Platforms")]
    platforms: Vec<ExportPlatform<'a>>,
}

#[derive(Debug, serde::Serialize)]
struct ExportPlatform<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    #[serde(rename = "Platform")]
    platform: &'a Platform,
}

/// `dockerui.Client.Build` + `Finalize`: the result metadata for results
/// per platform, as `(id, platform, image config)`. A build that did not
/// ask for several platforms has one plain `containerimage.config`.
fn result_metadata(
    results: &[(String, Platform, Vec<u8>)],
    multi_platform: bool,
) -> Result<HashMap<String, Vec<u8>>, FrontendError> {
    let mut metadata = HashMap::new();
    for (id, _, config) in results {
        let key = if multi_platform {
            format!("containerimage.config/{id}")
        } else {
            "containerimage.config".to_owned()
        };
        metadata.insert(key, config.clone());
    }
    let platforms = ExportPlatforms {
        platforms: results.iter().map(|(id, platform, _)| ExportPlatform { id, platform }).collect(),
    };
    let json = serde_json::to_vec(&platforms).map_err(|e| FrontendError::Internal(e.to_string()))?;
    metadata.insert("refs.platforms".to_owned(), json);
    Ok(metadata)
}

/// Whether `# syntax=` names this frontend: docker/dockerfile[-upstream]:1….
fn is_native_syntax(image: &str) -> bool {
    let name = image.split('@').next().unwrap_or(image);
    let (repo, tag) = name.rsplit_once(':').unwrap_or((name, "latest"));
    let repo = repo.trim_start_matches("docker.io/").trim_start_matches("library/");
    matches!(repo, "docker/dockerfile" | "docker/dockerfile-upstream")
        && (tag == "1" || tag.starts_with("1.") || tag.starts_with("1-") || tag == "latest")
}

/// Runs the frontend for a build whose client session is `session_id`;
/// `inputs` are the Solve's frontend inputs (`input:NAME` contexts).
pub(crate) async fn build(
    solver: &Arc<Solver>,
    sources: &Sources,
    ctx: &Arc<BuildContext>,
    attrs: &HashMap<String, String>,
    inputs: &HashMap<String, pb::Definition>,
    session_id: &str,
) -> Result<FrontendResult, FrontendError> {
    let attrs: BTreeMap<String, String> = attrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(syntax) = attrs.get("build-arg:BUILDKIT_SYNTAX").filter(|s| !is_native_syntax(s)) {
        return Err(FrontendError::Syntax(syntax.clone()));
    }
    let (mut opts, platforms) = ConvertOptions::from_frontend_attrs(&attrs, session_id)
        .map_err(|e| FrontendError::Convert(e.to_string()))?;
    opts.named_contexts.inputs = inputs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut filename = attrs.get("filename").cloned().unwrap_or_else(|| "Dockerfile".into());
    let dockerfile_local = attrs.get("dockerfilekey").cloned().unwrap_or_else(|| "dockerfile".into());
    let context_local = attrs.get("contextkey").cloned().unwrap_or_else(|| "context".into());
    let uploaded = match attrs.get(&context_local).filter(|url| upload_path(url).is_some()) {
        Some(url) => Some(uploaded_context(solver, ctx, url).await?),
        None => None,
    };
    if let Some(name) = uploaded.as_ref().and_then(|u| u.dockerfile_name) {
        filename = name.to_owned();
    }

    // The Dockerfile and its own ignore file, from the `dockerfile` local
    // (or from an uploaded context, unless a local is named for it).
    let ignore_name = format!("{filename}.dockerignore");
    let name = format!("[internal] load build definition from {filename}");
    let paths = [filename.as_str(), ignore_name.as_str()];
    let (dockerfile_def, files) = match uploaded.as_ref().filter(|_| !attrs.contains_key("dockerfilekey")) {
        Some(up) => read_state(solver, ctx, &up.state, &paths).await?,
        None => read_local(solver, ctx, &dockerfile_local, session_id, "dockerfile", &paths, &name).await?,
    };
    let text = files[0].clone().ok_or_else(|| {
        FrontendError::ReadDockerfile(format!("open {filename}: no such file or directory"))
    })?;
    let text = String::from_utf8_lossy(&text).into_owned();
    if let Some(syntax) = detect_syntax(&text).filter(|d| !is_native_syntax(&d.value)) {
        return Err(FrontendError::Syntax(syntax.value));
    }
    let ignore = match &files[1] {
        Some(bytes) => Some(bytes.clone()),
        // Only a client directory is filtered by .dockerignore (dockerui `MainContext`).
        None if uploaded.is_some() => None,
        None => {
            let (_, files) = read_local(
                solver,
                ctx,
                &context_local,
                session_id,
                "context-.dockerignore",
                &[".dockerignore"],
                "[internal] load .dockerignore",
            )
            .await?;
            files.into_iter().next().flatten()
        }
    };
    opts.dockerignore = ignore.map(|b| parse_ignore_file(&String::from_utf8_lossy(&b))).unwrap_or_default();
    // Each named local directory has its own .dockerignore (dockerui `NamedContext.Load`).
    for (key, dir, session) in opts.named_contexts.local_dirs(session_id) {
        let (_, files) = read_local(
            solver,
            ctx,
            &dir,
            &session,
            &format!("context:{key}-.dockerignore"),
            &[".dockerignore"],
            &format!("[context {key}] load .dockerignore"),
        )
        .await?;
        if let Some(bytes) = files.into_iter().next().flatten() {
            let patterns = parse_ignore_file(&String::from_utf8_lossy(&bytes));
            opts.named_contexts.local_excludes.insert(dir, patterns);
        }
    }
    opts.dockerfile_name = filename;
    opts.dockerfile_definition = Some(dockerfile_def);
    opts.main_context = uploaded.map(|u| u.state);

    // One conversion per target platform; none asked for is the default one.
    let targets: Vec<Option<Platform>> =
        if platforms.is_empty() { vec![None] } else { platforms.into_iter().map(Some).collect() };
    let resolver = Resolver { sources, ctx };
    let mut conversions = Vec::with_capacity(targets.len());
    for (index, target) in targets.into_iter().enumerate() {
        let mut opts = opts.clone();
        opts.target_platform.clone_from(&target);
        let converted =
            convert(&text, &opts, &resolver).await.map_err(|e| FrontendError::Convert(e.to_string()))?;
        // The same Dockerfile warns the same for every platform; upstream reports the first's.
        if index == 0 {
            report_warnings(ctx, &converted);
        }
        let id_platform = target.unwrap_or_else(llb::default_platform).normalize();
        conversions.push((llb::format_platform_all(&id_platform), id_platform, converted));
    }
    let solves =
        conversions.iter().map(|(_, _, converted)| solve_definition(solver, ctx, &converted.definition));
    let snapshots = futures::future::try_join_all(solves).await?;

    let described: Vec<(String, Platform, Vec<u8>)> = conversions
        .iter()
        .map(|(id, platform, converted)| (id.clone(), platform.clone(), converted.image_config.clone()))
        .collect();
    let metadata = result_metadata(&described, opts.multi_platform)?;
    let mut solved = conversions
        .into_iter()
        .zip(snapshots)
        .map(|((id, _, converted), snapshot)| (id, SolvedRef { snapshot, definition: converted.definition }));
    let refs = if opts.multi_platform {
        FrontendRefs::Platforms(solved.collect())
    } else {
        let (_, single) =
            solved.next().ok_or_else(|| FrontendError::Internal("no platform was built".into()))?;
        FrontendRefs::Single(single)
    };
    Ok(FrontendResult { refs, metadata })
}

/// Shows the Dockerfile's lint warnings in the build's progress.
fn report_warnings(ctx: &BuildContext, converted: &Converted) {
    for w in &converted.warnings {
        ctx.job.progress.send(StatusResponse {
            warnings: vec![VertexWarning {
                level: 1,
                short: format!("{}: {} (line {})", w.rule.name, w.message, w.start_line).into_bytes(),
                ..VertexWarning::default()
            }],
            ..StatusResponse::default()
        });
    }
}

/// Solves a converted definition; plain scratch has no ops and no snapshot.
async fn solve_definition(
    solver: &Arc<Solver>,
    ctx: &Arc<BuildContext>,
    definition: &pb::Definition,
) -> Result<Option<Snapshot>, FrontendError> {
    if definition.def.is_empty() {
        return Ok(None);
    }
    let graph = Graph::parse(definition).map_err(|e| FrontendError::Internal(e.to_string()))?;
    Ok(solver.solve(&graph, Arc::clone(ctx)).await?)
}

/// A build context the client streamed through its session.
struct UploadedContext {
    state: llb::State,
    /// Set when the upload is not an archive: it is the Dockerfile itself.
    dockerfile_name: Option<&'static str>,
}

/// The context behind a session upload URL, as dockerui's HTTP context: the
/// upload lands as file `context`; an archive is unpacked into the context,
/// anything else is the Dockerfile (`frontend/dockerui/context.go`).
async fn uploaded_context(
    solver: &Arc<Solver>,
    ctx: &Arc<BuildContext>,
    url: &str,
) -> Result<UploadedContext, FrontendError> {
    const FILE: &str = "context";
    let download = llb::http(
        url,
        HttpOptions {
            filename: FILE.to_owned(),
            constraints: Constraints::new().custom_name("[internal] load remote build context"),
            ..HttpOptions::default()
        },
    );
    let (_, view) = solve_and_mount(solver, ctx, &download).await?;
    let mut head = Vec::with_capacity(1024);
    std::fs::File::open(view.path().join(FILE))
        .and_then(|f| f.take(1024).read_to_end(&mut head))
        .map_err(|e| FrontendError::Internal(format!("reading the uploaded context: {e}")))?;
    if !is_archive(&head) {
        return Ok(UploadedContext { state: download, dockerfile_name: Some(FILE) });
    }
    let unpack = CopyInfo { attempt_unpack: true, ..CopyInfo::default() };
    let state = llb::scratch().file(
        FileAction::new().copy(&download, &format!("/{FILE}"), "/", unpack),
        Constraints::new().custom_name("[internal] unpack remote build context"),
    );
    Ok(UploadedContext { state, dockerfile_name: None })
}

/// Whether `head` starts a compressed stream or a tar archive (dockerui
/// `isArchive`: bzip2, gzip, xz magic, else a tar header Go's reader accepts).
fn is_archive(head: &[u8]) -> bool {
    const MAGIC: [&[u8]; 3] = [b"BZh", &[0x1f, 0x8b, 0x08], &[0xfd, b'7', b'z', b'X', b'Z', 0x00]];
    if MAGIC.iter().any(|m| head.starts_with(m)) {
        return true;
    }
    let Some(block) = head.get(..512) else { return false };
    // An all-zero block is the end marker, not a header.
    if block.iter().all(|b| *b == 0) {
        return false;
    }
    let field = String::from_utf8_lossy(&block[148..156]);
    let Ok(recorded) = u32::from_str_radix(field.trim_matches(|c: char| c == ' ' || c == '\0'), 8) else {
        return false;
    };
    // The checksum is the byte sum with its own field read as spaces.
    let sum: u32 =
        block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u32::from(*b) }).sum();
    sum == recorded
}

/// Solves `state` within the build and mounts its result read-only; the
/// definition comes back too, for callers that hand it on.
async fn solve_and_mount(
    solver: &Arc<Solver>,
    ctx: &Arc<BuildContext>,
    state: &llb::State,
) -> Result<(pb::Definition, crate::cache::mount::Mounted), FrontendError> {
    let def = llb::marshal(state, &MarshalOptions::default())
        .map_err(|e| FrontendError::Internal(e.to_string()))?;
    let graph = Graph::parse(&def).map_err(|e| FrontendError::Internal(e.to_string()))?;
    let snapshot = solver.solve(&graph, Arc::clone(ctx)).await?.unwrap_or_default();
    let view = mount(solver.cache(), &snapshot, None).map_err(|e| FrontendError::Internal(e.to_string()))?;
    Ok((def, view))
}

/// Solves `state` and reads `paths` from its result; a missing path is `None`.
async fn read_state(
    solver: &Arc<Solver>,
    ctx: &Arc<BuildContext>,
    state: &llb::State,
    paths: &[&str],
) -> Result<(pb::Definition, Vec<Option<Vec<u8>>>), FrontendError> {
    let (def, view) = solve_and_mount(solver, ctx, state).await?;
    let files =
        paths.iter().map(|p| std::fs::read(view.path().join(p.trim_start_matches('/'))).ok()).collect();
    Ok((def, files))
}

/// Solves a local source that follows `paths` and reads them; a path the
/// client does not have is `None`.
async fn read_local(
    solver: &Arc<Solver>,
    ctx: &Arc<BuildContext>,
    local: &str,
    session_id: &str,
    shared_key_hint: &str,
    paths: &[&str],
    name: &str,
) -> Result<(pb::Definition, Vec<Option<Vec<u8>>>), FrontendError> {
    let state = llb::local(
        local,
        LocalOptions {
            session_id: session_id.to_owned(),
            follow_paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            shared_key_hint: shared_key_hint.to_owned(),
            differ: Some((DiffType::None, false)),
            constraints: Constraints::new().custom_name(name),
            ..LocalOptions::default()
        },
    );
    read_state(solver, ctx, &state, paths).await
}

/// Base image lookups through the registry, with the client's credentials.
struct Resolver<'a> {
    sources: &'a Sources,
    ctx: &'a BuildContext,
}

#[async_trait]
impl ImageResolver for Resolver<'_> {
    async fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedConfig, BoxError> {
        let name = format!("[internal] load metadata for {reference}");
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(format!("{name} {platform:?}"))));
        let mut vertex = Vertex { digest, name, started: Some(now()), ..Vertex::default() };
        self.ctx.job.progress.vertex(vertex.clone());
        let result = async {
            let parsed = Reference::parse(reference)?;
            let image = self.sources.resolve_image(&parsed, platform, &self.ctx.sessions).await?;
            let mut pinned = parsed.clone();
            pinned.digest = None;
            Ok::<_, BoxError>(ResolvedConfig {
                pinned_reference: format!("{pinned}@{}", image.digest()),
                config: image.config.clone(),
            })
        }
        .await;
        vertex.completed = Some(now());
        if let Err(e) = &result {
            vertex.error = e.to_string();
        }
        self.ctx.job.progress.vertex(vertex);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_archives_when_compressed_or_a_tar() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "Dockerfile", &b"FROM"[..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        assert!(is_archive(&bytes[..1024]));
        assert!(is_archive(&[0x1f, 0x8b, 0x08, 0, 0]));
        assert!(is_archive(b"BZh91AY&SY"));
        assert!(is_archive(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]));

        let mut corrupt = bytes[..1024].to_vec();
        corrupt[0] ^= 0xff;
        assert!(!is_archive(&corrupt));
        assert!(!is_archive(b"FROM busybox\nRUN echo hi\n"));
        assert!(!is_archive(&[b'#'; 1024]));
        assert!(!is_archive(&[0; 1024]));
    }

    #[test]
    fn dockerfile_syntax_images_are_this_frontend_and_others_are_not() {
        for native in [
            "docker/dockerfile:1",
            "docker/dockerfile:1.7",
            "docker/dockerfile:1.7.1@sha256:abc",
            "docker.io/docker/dockerfile:1",
            "docker/dockerfile-upstream:1.18.0",
            "docker/dockerfile:1-labs",
        ] {
            assert!(is_native_syntax(native), "{native}");
        }
        for other in ["tonistiigi/dockerfile:x", "example.com/frontend:1", "docker/dockerfile:0.9"] {
            assert!(!is_native_syntax(other), "{other}");
        }
        let err = FrontendError::Syntax("example.com/frontend:1".into()).to_string();
        assert!(err.contains("example.com/frontend:1") && err.contains("container frontend"), "{err}");
    }

    fn described() -> Vec<(String, Platform, Vec<u8>)> {
        vec![
            (
                "linux/amd64".into(),
                Platform::new("linux", "amd64", None),
                b"{\"architecture\":\"amd64\"}".to_vec(),
            ),
            (
                "linux/arm/v7".into(),
                Platform::new("linux", "arm", Some("v7")),
                b"{\"architecture\":\"arm\"}".to_vec(),
            ),
        ]
    }

    #[test]
    fn results_per_platform_carry_their_configs_and_the_platforms_mapping() {
        let m = result_metadata(&described(), true).unwrap();
        assert_eq!(m["containerimage.config/linux/arm/v7"], b"{\"architecture\":\"arm\"}");
        assert_eq!(m["containerimage.config/linux/amd64"], b"{\"architecture\":\"amd64\"}");
        assert!(!m.contains_key("containerimage.config"));
        let platforms: serde_json::Value = serde_json::from_slice(&m["refs.platforms"]).unwrap();
        assert_eq!(
            platforms,
            serde_json::json!({"Platforms": [
                {"ID": "linux/amd64", "Platform": {"os": "linux", "architecture": "amd64"}},
                {"ID": "linux/arm/v7", "Platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            ]})
        );
        // A single platform not asked for as multi-platform is one plain config.
        let m = result_metadata(&described()[..1], false).unwrap();
        assert_eq!(m["containerimage.config"], b"{\"architecture\":\"amd64\"}");
        assert!(m.contains_key("refs.platforms"));
    }

    #[test]
    fn the_gateway_gets_one_ref_per_platform_or_a_single_one() {
        let solved = || SolvedRef { snapshot: None, definition: pb::Definition::default() };
        let refs =
            FrontendRefs::Platforms(vec![("linux/amd64".into(), solved()), ("linux/arm64".into(), solved())]);
        let mut n = 0;
        let mut next_id = |_: Option<Snapshot>| -> Result<String, String> {
            n += 1;
            Ok(format!("ref-{n}"))
        };
        match refs.into_gateway(true, &mut next_id).unwrap() {
            fe::result::Result::Refs(map) => {
                let mut ids: Vec<(&str, &str)> =
                    map.refs.iter().map(|(k, r)| (k.as_str(), r.id.as_str())).collect();
                ids.sort();
                assert_eq!(ids, [("linux/amd64", "ref-1"), ("linux/arm64", "ref-2")]);
                assert!(map.refs.values().all(|r| r.def.is_some()));
            }
            other => panic!("{other:?}"),
        }
        match FrontendRefs::Single(solved()).into_gateway(false, &mut next_id).unwrap() {
            fe::result::Result::RefDeprecated(id) => assert_eq!(id, "ref-3"),
            other => panic!("{other:?}"),
        }
        let failing = |_: Option<Snapshot>| -> Result<String, String> { Err("no ids".into()) };
        assert!(FrontendRefs::Single(solved()).into_gateway(true, failing).is_err());
    }
}
