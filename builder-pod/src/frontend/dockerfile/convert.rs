//! Dockerfile to LLB (`frontend/dockerfile/dockerfile2llb`, BuildKit v0.29).
//!
//! [`convert`] parses the Dockerfile, splits it into stages, expands build
//! arguments, resolves base images through an [`ImageResolver`], dispatches
//! the instructions of every stage the target needs onto [`llb`] states and
//! marshals the target stage. It also returns the image config the target
//! stage describes, as `dockerspec.DockerOCIImage` JSON.
//!
//! Vertex names, op bytes, source attrs, history entries and error texts
//! follow upstream, so progress, cache keys and messages look the way they
//! do under buildkitd. Upstream's randomness (the `--link` progress group id)
//! is replaced by values derived from the input, so a conversion is
//! reproducible byte for byte.

mod attrs;
mod config;
mod copy;
mod dispatch;
mod error;
mod image;
mod named;
mod resolve;
mod run;
mod stages;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use kiln_proto::buildkit::pb;
use sha2::{Digest as _, Sha256};
use tracing::instrument;

pub(crate) use self::error::{ConvertError, ConvertErrorKind};
use self::error::{Fail, Lines, Result};
pub(crate) use self::image::{Empty, Image};
pub(crate) use self::named::NamedContexts;

use super::instructions::{self, ArgCommand, Command, InstructionError, Stage, StageError};
use super::linter::{CheckConfig, Rule, Warning};
use super::parser;
use super::shell::Lexer;
use crate::frontend::llb::{
    self, EnvList, HostIp, NetMode, Placeholder, Platform, ProxyEnv, ResolveMode, SourceLocation, SourceMap,
    State, Ulimit,
};
use crate::fsutil::PatternMatcher;
use crate::util::strconv;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `emptyImageName`.
const SCRATCH: &str = "scratch";
/// The description key BuildKit puts the Dockerfile line under.
const DESCRIPTION_COMMAND: &str = "com.docker.dockerfile.v1.command";

/// A base image resolved to one platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedConfig {
    /// The normalised reference with the digest it resolved to,
    /// `docker.io/library/busybox:latest@sha256:…`.
    pub pinned_reference: String,
    /// The image config JSON.
    pub config: Vec<u8>,
}

/// Looks up base images (`llb.ImageMetaResolver`). The daemon implements
/// it with its registry client and shows `[internal] load metadata for
/// <reference>` while it runs.
#[async_trait]
pub(crate) trait ImageResolver: Send + Sync {
    /// `reference` is normalised (`docker.io/library/busybox:latest`).
    async fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedConfig, BoxError>;
}

/// What the Dockerfile frontend's attributes ask for (`dockerui.Config`,
/// docs/protocol.md §6). [`ConvertOptions::from_frontend_attrs`] reads
/// them from a Solve's frontend attributes.
#[derive(Clone, Debug)]
pub(crate) struct ConvertOptions {
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// `None`: the build platform, chosen implicitly (a base image of
    /// another platform the worker supports is then used as is).
    pub target_platform: Option<Platform>,
    pub build_platform: Platform,
    /// Several platforms are being built: vertex names carry the platform.
    pub multi_platform: bool,
    pub session_id: String,
    /// The local that holds the build context (`context`).
    pub context_name: String,
    /// Shown in errors and recorded in the source map (`Dockerfile`).
    pub dockerfile_name: String,
    /// The LLB that loads the Dockerfile, for the source map.
    pub dockerfile_definition: Option<pb::Definition>,
    /// `.dockerignore` patterns, already read.
    pub dockerignore: Vec<String>,
    /// The build context when it is not the client's `context` directory
    /// (an uploaded archive); used as it is, without `.dockerignore`.
    pub main_context: Option<State>,
    /// `local.sharedkeyhint` of the context; the context name when unset.
    pub shared_key_hint: Option<String>,
    /// Stages built without cache: `Some(empty)` means all.
    pub no_cache_stages: Option<Vec<String>>,
    pub force_network_mode: NetMode,
    pub extra_hosts: Vec<HostIp>,
    pub hostname: String,
    pub ulimits: Vec<Ulimit>,
    pub shm_size: i64,
    pub cgroup_parent: String,
    /// `BUILDKIT_CACHE_MOUNT_NS`: prefix of cache mount ids.
    pub cache_id_namespace: String,
    pub image_resolve_mode: ResolveMode,
    /// `SOURCE_DATE_EPOCH`, seconds; also read from the build args.
    pub epoch: Option<i64>,
    /// LLB caps the solver supports.
    pub llb_caps: BTreeSet<String>,
    /// `BUILDKIT_DOCKERFILE_CHECK`; the `# check=` directive when unset.
    pub check: Option<CheckConfig>,
    /// `--build-context` contexts that replace stages and images by name.
    pub named_contexts: NamedContexts,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            target_platform: None,
            build_platform: llb::default_platform(),
            multi_platform: false,
            session_id: String::new(),
            context_name: "context".to_owned(),
            dockerfile_name: "Dockerfile".to_owned(),
            dockerfile_definition: None,
            dockerignore: Vec::new(),
            main_context: None,
            shared_key_hint: None,
            no_cache_stages: None,
            force_network_mode: NetMode::Unset,
            extra_hosts: Vec::new(),
            hostname: String::new(),
            ulimits: Vec::new(),
            shm_size: 0,
            cgroup_parent: String::new(),
            cache_id_namespace: String::new(),
            image_resolve_mode: ResolveMode::Default,
            epoch: None,
            llb_caps: llb::caps::ALL.iter().map(|c| (*c).to_owned()).collect(),
            check: None,
            named_contexts: NamedContexts::default(),
        }
    }
}

/// The result of a conversion.
#[derive(Clone, Debug)]
pub(crate) struct Converted {
    /// The target stage's LLB; no ops at all when it is plain scratch.
    pub definition: pb::Definition,
    /// The target's image config JSON, as buildkitd's frontend returns it.
    pub image_config: Vec<u8>,
    pub warnings: Vec<Warning>,
}

/// A stage, or an image used by `COPY --from`/`RUN --mount from=`, being
/// converted (`dispatchState`).
#[derive(Debug)]
struct DispatchState {
    stage: Stage,
    stage_name: String,
    state: State,
    image: Image,
    base_image: Option<Image>,
    platform: Option<Platform>,
    base: Option<usize>,
    /// The named context that replaces this stage (`--build-context NAME=…`).
    named: Option<named::Found>,
    /// States this one reads from, with the lines of the command that does.
    deps: Vec<(usize, Lines)>,
    commands: Vec<Cmd>,
    ctx_paths: BTreeSet<String>,
    dispatched: bool,
    resolved: bool,
    onbuild_init: bool,
    ignore_cache: bool,
    unregistered: bool,
    build_args: Vec<(String, Option<String>)>,
    cmd_index: usize,
    cmd_total: usize,
    cmd_is_onbuild: bool,
    workdir_set: bool,
    cmd_set: Option<Lines>,
    entrypoint_set: Option<Lines>,
    healthcheck_set: Option<Lines>,
}

impl DispatchState {
    fn new(stage: Stage, unregistered: bool) -> Self {
        Self {
            stage_name: String::new(),
            stage,
            state: State::scratch(),
            image: Image::default(),
            base_image: None,
            platform: None,
            base: None,
            named: None,
            deps: Vec::new(),
            commands: Vec::new(),
            ctx_paths: BTreeSet::new(),
            dispatched: false,
            resolved: false,
            onbuild_init: false,
            ignore_cache: false,
            unregistered,
            build_args: Vec::new(),
            cmd_index: 0,
            cmd_total: 0,
            cmd_is_onbuild: false,
            workdir_set: false,
            cmd_set: None,
            entrypoint_set: None,
            healthcheck_set: None,
        }
    }

    fn lines(&self) -> Lines {
        (self.stage.start_line, self.stage.end_line)
    }
}

/// An instruction of a stage with the states it reads from: one for
/// `COPY --from`, one per `--mount` of RUN.
#[derive(Clone, Debug)]
struct Cmd {
    command: Command,
    sources: Vec<usize>,
    is_onbuild: bool,
}

impl Cmd {
    fn lines(&self) -> Lines {
        (self.command.start_line, self.command.end_line)
    }
}

/// Converts `dockerfile` to LLB for `opts.target` (the last stage when unset).
#[instrument(skip_all, fields(target = opts.target.as_deref().unwrap_or(""), session.id = %opts.session_id))]
pub(crate) async fn convert(
    dockerfile: &str,
    opts: &ConvertOptions,
    resolver: &dyn ImageResolver,
) -> Result<Converted, ConvertError> {
    let mut converter = match Converter::new(dockerfile, opts) {
        Ok(c) => c,
        Err(f) => return Err(finish(f, opts)),
    };
    converter.run(resolver).await.map_err(|f| finish(f, opts))
}

fn finish(f: Fail, opts: &ConvertOptions) -> ConvertError {
    ConvertError { kind: f.kind, lines: f.lines, filename: opts.dockerfile_name.clone() }
}

struct Converter<'a> {
    opts: &'a ConvertOptions,
    lexer: Lexer,
    stages: Vec<Stage>,
    meta_args: Vec<ArgCommand>,
    global_args: EnvList,
    /// Keys of the ARGs before the first FROM.
    meta_arg_keys: BTreeSet<String>,
    states: Vec<DispatchState>,
    by_name: HashMap<String, usize>,
    proxy_env: Option<ProxyEnv>,
    target_platform: Platform,
    build_platforms: Vec<Platform>,
    implicit_target: bool,
    check: CheckConfig,
    warnings: Vec<Warning>,
    called_rules: BTreeSet<&'static str>,
    source_map: Arc<SourceMap>,
    context: Placeholder,
    dockerignore: Option<PatternMatcher>,
    epoch: Option<i64>,
    digest_seed: String,
}

impl<'a> Converter<'a> {
    fn new(dockerfile: &str, opts: &'a ConvertOptions) -> Result<Self> {
        if dockerfile.is_empty() {
            return Err(ConvertErrorKind::EmptyDockerfile.into());
        }
        let check = match &opts.check {
            Some(c) => c.clone(),
            None => {
                let value = parser::parse_directive("check", dockerfile).map(|d| d.value).unwrap_or_default();
                CheckConfig::parse(&value).map_err(ConvertErrorKind::CheckOptions)?
            }
        };
        let ast = parser::parse(dockerfile)
            .map_err(|e| Fail::new(ConvertErrorKind::Parse(e.kind)).at((e.start_line, e.end_line)))?;
        let mut warnings: Vec<Warning> =
            ast.warnings.iter().filter(|w| check.enabled(w.rule)).cloned().collect();
        let parsed = instructions::parse_stages_with_checks(&ast, &check).map_err(|e| {
            let lines = match &e {
                StageError::Instruction(InstructionError { start_line, end_line, .. })
                | StageError::NoStage { start_line, end_line } => (*start_line, *end_line),
            };
            Fail::new(ConvertErrorKind::Stages(e)).at(lines)
        })?;
        warnings.extend(parsed.warnings);
        if parsed.stages.is_empty() {
            return Err(ConvertErrorKind::NoStages.into());
        }
        let called_rules = warnings.iter().map(|w| w.rule.name).collect();

        let build_platforms = vec![opts.build_platform.normalize()];
        let implicit_target = opts.target_platform.is_none();
        let target_platform =
            opts.target_platform.as_ref().map_or_else(|| build_platforms[0].clone(), Platform::normalize);
        let dockerignore =
            if opts.dockerignore.is_empty() { None } else { PatternMatcher::new(&opts.dockerignore).ok() };
        let source_map = Arc::new(SourceMap {
            filename: opts.dockerfile_name.clone(),
            language: "Dockerfile".to_owned(),
            data: dockerfile.as_bytes().to_vec(),
            definition: opts.dockerfile_definition.clone(),
        });
        let digest_seed = hex::encode(Sha256::digest(dockerfile.as_bytes()));
        Ok(Self {
            opts,
            lexer: Lexer::new(ast.escape_token),
            stages: parsed.stages,
            meta_args: parsed.meta_args,
            global_args: EnvList::default(),
            meta_arg_keys: BTreeSet::new(),
            states: Vec::new(),
            by_name: HashMap::new(),
            proxy_env: proxy_env(&opts.build_args),
            target_platform,
            build_platforms,
            implicit_target,
            check,
            warnings,
            called_rules,
            source_map,
            context: Placeholder::new(),
            dockerignore,
            epoch: opts.epoch,
            digest_seed,
        })
    }

    async fn run(&mut self, resolver: &dyn ImageResolver) -> Result<Converted> {
        let target_name = match self.opts.target.as_deref() {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => self.stages.last().map(|s| s.name.clone()).unwrap_or_default(),
        };
        let defaults = self.default_args(&target_name);
        self.validate_base_images_with_default_args(&defaults);
        let (global, keys) = self.meta_args(defaults, Some(&self.opts.build_args))?;
        self.global_args = global;
        self.meta_arg_keys = keys;
        if self.epoch.is_none()
            && let Some(v) = self.global_args.get("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty())
        {
            let value = v.to_owned();
            let epoch = strconv::parse_int(&value, 10, 64);
            self.epoch = Some(epoch.map_err(|source| ConvertErrorKind::SourceDateEpoch { value, source })?);
        }

        self.build_dispatch_states()?;
        let target = self.resolve_target()?;
        self.build_dependency_graph()?;
        let reachable = self.resolve_stages(target, resolver).await?;
        self.dispatch_stages(&reachable)?;
        self.finalize(target)
    }

    /// Records a check that fired, if the config reports it.
    fn warn(&mut self, rule: &'static Rule, message: String, lines: Lines, comments: &[String]) {
        if !self.check.with_comments(comments).enabled(rule) {
            return;
        }
        self.called_rules.insert(rule.name);
        self.warnings.push(Warning::new(rule, message, lines.0, lines.1));
    }

    /// Per-line ranges of `lines` in the Dockerfile, as source-map locations;
    /// none for line 0 (a state no instruction names).
    fn location(&self, (start, end): Lines) -> SourceLocation {
        let end = end.max(start);
        let ranges = (start..=end)
            .filter(|line| *line > 0)
            .map(|line| {
                let pos = pb::Position { line: line as i32, character: 0 };
                pb::Range { start: Some(pos), end: Some(pos) }
            })
            .collect();
        SourceLocation { map: Arc::clone(&self.source_map), ranges }
    }
}

/// `proxyEnvFromBuildArgs`: proxy build args, in any case, go to the exec
/// outside its cache key.
fn proxy_env(args: &BTreeMap<String, String>) -> Option<ProxyEnv> {
    let mut pe = ProxyEnv::default();
    let mut set = false;
    for (k, v) in args {
        let slot = match k.to_lowercase().as_str() {
            "http_proxy" => &mut pe.http_proxy,
            "https_proxy" => &mut pe.https_proxy,
            "ftp_proxy" => &mut pe.ftp_proxy,
            "no_proxy" => &mut pe.no_proxy,
            "all_proxy" => &mut pe.all_proxy,
            _ => continue,
        };
        slot.clone_from(v);
        set = true;
    }
    set.then_some(pe)
}
