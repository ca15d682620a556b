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
mod copy;
mod image;
pub mod lint;
mod named;
mod run;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_proto::buildkit::pb;
use sha2::{Digest as _, Sha256};
use tracing::instrument;

pub use self::image::{Empty, Healthcheck as ImageHealthcheck, History, Image, ImageConfig, RootFs};
pub use self::named::NamedContexts;

use super::instructions::{
    self, ArgCommand, Command, Instruction, InstructionError, InstructionErrorKind, KeyValuePair, Stage,
    StageError,
};
use super::linter::{CheckConfig, LintError, Rule, Warning};
use super::parser::{self, ParseErrorKind};
use super::shell::{Env, Expansion, Lexer, NoEnv, ShellError};
use super::{go_quote, suggest};
use crate::frontend::llb::{
    self, Constraints, EnvList, HostIp, ImageOptions, LlbError, LocalOptions, MarshalOptions, NetMode,
    Placeholder, Platform, ProxyEnv, ResolveMode, SourceLocation, SourceMap, State, Ulimit, format_platform,
    format_platform_all,
};
use crate::fsutil::PatternMatcher;
use crate::source::image::Reference;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `emptyImageName`.
const SCRATCH: &str = "scratch";
/// Build args the frontend reads itself and never puts in a step's env.
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];
/// The description key BuildKit puts the Dockerfile line under.
const DESCRIPTION_COMMAND: &str = "com.docker.dockerfile.v1.command";

/// A base image resolved to one platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedConfig {
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
pub trait ImageResolver: Send + Sync {
    /// `reference` is normalised (`docker.io/library/busybox:latest`).
    async fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedConfig, BoxError>;
}

/// What the Dockerfile frontend's attributes ask for (`dockerui.Config`,
/// buildkit-protocol.md §6). [`ConvertOptions::from_frontend_attrs`] reads
/// them from a Solve's frontend attributes.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
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
pub struct Converted {
    /// The target stage's LLB; no ops at all when it is plain scratch.
    pub definition: pb::Definition,
    /// The target's image config JSON, as buildkitd's frontend returns it.
    pub image_config: Vec<u8>,
    pub image: Image,
    /// The config of the image the target stage is based on, if any.
    pub base_image_config: Option<Vec<u8>>,
    pub warnings: Vec<Warning>,
    pub epoch: Option<i64>,
    /// The target stage is built with `--no-cache` (`Result.IsIgnoreCache`).
    pub ignore_cache: bool,
}

/// A conversion failure; `lines` are the Dockerfile lines it is about.
#[derive(Debug)]
pub struct ConvertError {
    /// Boxed: the kinds carry parser errors and would make every result large.
    pub kind: Box<ConvertErrorKind>,
    pub lines: Option<(usize, usize)>,
    pub filename: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lines {
            Some((start, _)) => write!(f, "{}:{start}: {}", self.filename, self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for ConvertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.kind.as_ref())
    }
}

/// What went wrong; the texts are upstream's.
#[derive(Debug, thiserror::Error)]
pub enum ConvertErrorKind {
    #[error("the Dockerfile cannot be empty")]
    EmptyDockerfile,
    #[error("failed to parse check options: {0}")]
    CheckOptions(LintError),
    #[error("{0}")]
    Parse(ParseErrorKind),
    #[error("{0}")]
    Stages(StageError),
    #[error("dockerfile contains no stages to build")]
    NoStages,
    #[error("{0}")]
    Expand(ShellError),
    #[error("{0}")]
    Instruction(InstructionErrorKind),
    #[error("invalid SOURCE_DATE_EPOCH: {value}: strconv.ParseInt: parsing {}: invalid syntax", go_quote(.value))]
    SourceDateEpoch { value: String },
    #[error("base name ({0}) should not be blank")]
    BlankBaseName(String),
    #[error("failed to process arguments for platform {result}: {source}")]
    PlatformArgs { result: String, source: ShellError },
    #[error("empty platform value from expression {expression}{}", suggestion_text(.suggestion))]
    EmptyPlatform { expression: String, suggestion: Option<String> },
    #[error("failed to parse platform {expression}: {reason}{}", suggestion_text(.suggestion))]
    InvalidPlatform { expression: String, reason: String, suggestion: Option<String> },
    #[error("target stage {} could not be found{}", go_quote(.target), suggestion_text(.suggestion))]
    TargetNotFound { target: String, suggestion: Option<String> },
    #[error(
        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"
    )]
    FromVariable,
    #[error("invalid stage index {0}")]
    StageIndex(i64),
    #[error("circular dependency detected on stage: {0}")]
    CircularDependency(String),
    #[error("onbuild trigger should be a single expression")]
    OnbuildExpression,
    #[error("failed to parse stage name {}: {reason}", go_quote(.name))]
    StageName { name: String, reason: String },
    #[error("failed to parse ref {}: {reason}", go_quote(.reference))]
    PinnedReference { reference: String, reason: String },
    #[error("{name}: {source}{}", suggestion_text(.suggestion))]
    ResolveImage { name: String, source: BoxError, suggestion: Option<String> },
    #[error("failed to parse image config: {0}")]
    ImageConfig(String),
    #[error("cannot copy from stage {}, it needs to be defined before current stage {}", go_quote(.from), go_quote(.stage))]
    CopyFromLater { from: String, stage: String },
    #[error("cannot mount from stage {} to {}, stage needs to be defined before current command", go_quote(.from), go_quote(.target))]
    MountFromLater { from: String, target: String },
    #[error("invalid mount target {}", go_quote(.0))]
    MountTarget(String),
    #[error("one of source, target required")]
    SecretTarget,
    #[error("ssh does not support source")]
    SshSource,
    #[error("parsing produced an invalid run command: [{}]", .0.join(" "))]
    RunCommand(Vec<String>),
    #[error("device feature is only supported in Dockerfile frontend 1.14.0-labs or later")]
    Devices,
    #[error("invalid chmod parameter: '{0}'. it should be octal string and between 0 and 07777")]
    Chmod(String),
    #[error("invalid syntax")]
    ChmodSyntax,
    #[error("checksum can't be specified for COPY")]
    ChecksumForCopy,
    #[error("checksum can't be specified for multiple sources")]
    ChecksumSources,
    #[error("checksum requires HTTP(S) or Git sources")]
    ChecksumSource,
    #[error("source can't be a git ref for COPY")]
    GitForCopy,
    #[error("source can't be a URL for COPY")]
    UrlForCopy,
    #[error("{0}")]
    GitRef(String),
    #[error("inconsistent keep-git-dir configuration")]
    KeepGitDir,
    #[error("checksum mismatch {} != {}", go_quote(.0), go_quote(.1))]
    ChecksumMismatch(String, String),
    #[error("{0}")]
    Digest(&'static str),
    #[error("invalid signal: {0}")]
    Signal(String),
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("{0}")]
    Port(String),
    #[error("lint violation found for rules: {}", .0.join(", "))]
    Lint(Vec<String>),
    #[error("failed to marshal LLB definition: {0}")]
    Llb(LlbError),
    #[error("invalid frontend option {key}: {reason}")]
    FrontendAttr { key: String, reason: String },
    #[error("invalid context name {name}: {reason}")]
    NamedContextName { name: String, reason: String },
    #[error("invalid context specifier {value} for {key}")]
    ContextSpecifier { value: String, key: String },
    #[error("invalid input {name} for {key}")]
    ContextInput { name: String, key: String },
    #[error("unsupported context source {kind} for {key}")]
    ContextSource { kind: String, key: String },
    #[error("named context {key}: {reason}")]
    NamedContext { key: String, reason: String },
}

fn suggestion_text(s: &Option<String>) -> String {
    s.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default()
}

/// Lines an error or op is about.
type Lines = (usize, usize);

/// A failure inside the converter; boxed so results stay small.
struct Fail {
    kind: Box<ConvertErrorKind>,
    lines: Option<Lines>,
}

impl Fail {
    fn new(kind: ConvertErrorKind) -> Self {
        Self { kind: Box::new(kind), lines: None }
    }

    /// `parser.WithLocation`: the innermost location is kept. Line 0 is
    /// no location (a state that no instruction names, such as the image
    /// of a `--mount from=`).
    fn at(mut self, lines: Lines) -> Self {
        if lines.0 > 0 {
            self.lines.get_or_insert(lines);
        }
        self
    }
}

impl From<ConvertErrorKind> for Fail {
    fn from(kind: ConvertErrorKind) -> Self {
        Self::new(kind)
    }
}

impl From<ShellError> for Fail {
    fn from(e: ShellError) -> Self {
        Self::new(ConvertErrorKind::Expand(e))
    }
}

impl From<LlbError> for Fail {
    fn from(e: LlbError) -> Self {
        Self::new(ConvertErrorKind::Llb(e))
    }
}

type Result<T, E = Fail> = std::result::Result<T, E>;

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

fn stage_for(base_name: &str, lines: Option<Lines>) -> Stage {
    let (start_line, end_line) = lines.unwrap_or((0, 0));
    Stage {
        name: String::new(),
        base_name: base_name.to_owned(),
        platform: String::new(),
        orig_cmd: String::new(),
        source_code: String::new(),
        doc_comment: String::new(),
        comments: Vec::new(),
        start_line,
        end_line,
        commands: Vec::new(),
    }
}

/// Converts `dockerfile` to LLB for `opts.target` (the last stage when unset).
#[instrument(skip_all, fields(target = opts.target.as_deref().unwrap_or(""), session.id = %opts.session_id))]
pub async fn convert(
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
            self.epoch = Some(value.parse().map_err(|_| ConvertErrorKind::SourceDateEpoch { value })?);
        }

        self.build_dispatch_states()?;
        let target = self.resolve_target()?;
        self.build_dependency_graph()?;
        let reachable = self.resolve_stages(target, resolver).await?;
        self.dispatch_stages(&reachable)?;
        self.finalize(target)
    }

    /// `defaultArgs`: the automatic platform and target args.
    fn default_args(&self, target: &str) -> EnvList {
        let bp = &self.build_platforms[0];
        let tp = &self.target_platform;
        let values = [
            ("BUILDPLATFORM", format_platform(bp)),
            ("BUILDOS", bp.os.clone()),
            ("BUILDOSVERSION", bp.os_version.clone().unwrap_or_default()),
            ("BUILDARCH", bp.architecture.clone()),
            ("BUILDVARIANT", bp.variant.clone().unwrap_or_default()),
            ("TARGETPLATFORM", format_platform_all(tp)),
            ("TARGETOS", tp.os.clone()),
            ("TARGETOSVERSION", tp.os_version.clone().unwrap_or_default()),
            ("TARGETARCH", tp.architecture.clone()),
            ("TARGETVARIANT", tp.variant.clone().unwrap_or_default()),
            ("TARGETSTAGE", if target.is_empty() { "default".to_owned() } else { target.to_owned() }),
        ];
        let mut env = EnvList::default();
        for (k, v) in values {
            let v = self.opts.build_args.get(k).cloned().unwrap_or(v);
            env.set(k, &v);
        }
        env
    }

    /// `buildMetaArgs`: the ARGs before the first FROM, with build args
    /// taking precedence over defaults.
    fn meta_args(
        &self,
        mut args: EnvList,
        build_args: Option<&BTreeMap<String, String>>,
    ) -> Result<(EnvList, BTreeSet<String>)> {
        let mut keys = BTreeSet::new();
        for cmd in &self.meta_args {
            for kp in &cmd.args {
                let value = match build_args.and_then(|b| b.get(&kp.key)) {
                    Some(v) => Some(v.clone()),
                    None => match &kp.value {
                        Some(v) => Some(
                            self.lexer
                                .process_word(v, &args)
                                .map_err(|e| Fail::from(e).at((cmd.start_line, cmd.end_line)))?,
                        ),
                        None => None,
                    },
                };
                if let Some(v) = value {
                    args.set(&kp.key, &v);
                }
                keys.insert(kp.key.clone());
            }
        }
        Ok((args, keys))
    }

    /// The `InvalidDefaultArgInFrom` check: base names must be valid with
    /// the ARG defaults alone.
    fn validate_base_images_with_default_args(&mut self, defaults: &EnvList) {
        let Ok((args, _)) = self.meta_args(defaults.clone(), None) else { return };
        let mut found = Vec::new();
        for st in &self.stages {
            let Ok(name) = self.lexer.process_word(&st.base_name, &args) else { return };
            if Reference::parse(&name).is_err() {
                found.push((st.base_name.clone(), (st.start_line, st.end_line)));
            }
        }
        // Upstream runs this check with the file's config, not the stage's comments.
        for (base, lines) in found {
            let msg = lint::invalid_default_arg_in_from(&base);
            self.warn(&lint::INVALID_DEFAULT_ARG_IN_FROM, msg, lines, &[]);
        }
    }

    /// Records a check that fired, if the config reports it.
    fn warn(&mut self, rule: &'static Rule, message: String, lines: Lines, comments: &[String]) {
        if !self.check.with_comments(comments).enabled(rule) {
            return;
        }
        self.called_rules.insert(rule.name);
        self.warnings.push(Warning::new(rule, message, lines.0, lines.1));
    }

    fn names(&self) -> Vec<String> {
        self.states.iter().filter(|s| !s.stage_name.is_empty()).map(|s| s.stage_name.clone()).collect()
    }

    fn is_no_cache(&self, name: &str) -> bool {
        match &self.opts.no_cache_stages {
            None => false,
            Some(list) if list.is_empty() => true,
            Some(list) => list.iter().any(|n| n.eq_ignore_ascii_case(name)),
        }
    }

    /// `addState`: a state's base is the stage its base name names.
    fn add_state(&mut self, mut ds: DispatchState) -> usize {
        if let Some(&base) = self.by_name.get(&ds.stage.base_name) {
            ds.base = Some(base);
        }
        let index = self.states.len();
        if !ds.stage.name.is_empty() {
            self.by_name.insert(ds.stage.name.to_lowercase(), index);
        }
        self.states.push(ds);
        index
    }

    /// `buildDispatchStates`: expands base names and platforms and counts
    /// each stage's steps for the `[n/total]` in vertex names.
    fn build_dispatch_states(&mut self) -> Result<()> {
        let stages = std::mem::take(&mut self.stages);
        for (i, mut st) in stages.into_iter().enumerate() {
            let lines = (st.start_line, st.end_line);
            let expansion = self
                .lexer
                .process_word_with_matches(&st.base_name, &self.global_args)
                .map_err(|e| Fail::from(e).at(lines))?;
            self.report_unused_from_args(&expansion, lines, &st.comments);
            if expansion.result.is_empty() {
                return Err(Fail::new(ConvertErrorKind::BlankBaseName(st.base_name.clone())).at(lines));
            }
            st.base_name = expansion.result;

            let mut platform = None;
            if !st.platform.is_empty() {
                let expression = st.platform.clone();
                let m =
                    self.lexer.process_word_with_matches(&expression, &self.global_args).map_err(|e| {
                        Fail::new(ConvertErrorKind::PlatformArgs { result: String::new(), source: e })
                            .at(lines)
                    })?;
                self.report_unused_from_args(&m, lines, &st.comments);
                self.report_platform_checks(&st, &m, lines);
                let suggestion = || {
                    let keys: Vec<String> = self.global_args.keys().map(str::to_owned).collect();
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    m.unmatched.iter().find_map(|u| suggest(u, &keys, true))
                };
                if m.result.is_empty() {
                    let kind = ConvertErrorKind::EmptyPlatform { expression, suggestion: suggestion() };
                    return Err(Fail::new(kind).at(lines));
                }
                let p = Platform::parse(&m.result).map_err(|e| {
                    let kind = ConvertErrorKind::InvalidPlatform {
                        expression: expression.clone(),
                        reason: e.to_string(),
                        suggestion: suggestion(),
                    };
                    Fail::new(kind).at(lines)
                })?;
                platform = Some(p);
            }

            let mut ds = DispatchState::new(st, false);
            ds.platform = platform;
            if !ds.stage.name.is_empty() {
                let p = ds.platform.clone().unwrap_or_else(|| self.target_platform.clone());
                let found = named::lookup(&self.opts.named_contexts, &ds.stage.name, &p)
                    .map_err(|k| Fail::new(k).at(lines))?;
                if let Some(found) = found {
                    // The stage is the named context; its own instructions never run.
                    ds.named = Some(found);
                    ds.stage_name = ds.stage.name.clone();
                    let index = self.add_state(ds);
                    self.states[index].base = None;
                    continue;
                }
            }
            ds.stage_name =
                if ds.stage.name.is_empty() { format!("stage-{i}") } else { ds.stage.name.clone() };
            let index = self.add_state(ds);
            let ds = &self.states[index];
            let mut total = usize::from(ds.stage.base_name != SCRATCH && ds.base.is_none());
            total += ds
                .stage
                .commands
                .iter()
                .filter(|c| {
                    matches!(
                        c.instruction,
                        Instruction::Add(_)
                            | Instruction::Copy(_)
                            | Instruction::Run(_)
                            | Instruction::Workdir(_)
                    )
                })
                .count();
            let ignore_cache = self.is_no_cache(&ds.stage.name);
            let ds = &mut self.states[index];
            ds.cmd_total = total;
            ds.ignore_cache = ignore_cache;
        }
        Ok(())
    }

    /// `UndefinedArgInFrom`: FROM may only use declared (or automatic) args.
    fn report_unused_from_args(&mut self, m: &Expansion, lines: Lines, comments: &[String]) {
        let mut keys: BTreeSet<String> = self.meta_arg_keys.clone();
        keys.extend(self.global_args.keys().map(str::to_owned));
        let options: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut found = Vec::new();
        for arg in &m.unmatched {
            if keys.contains(arg) {
                continue;
            }
            found.push(lint::undefined_arg_in_from(arg, suggest(arg, &options, true).as_deref()));
        }
        for msg in found {
            self.warn(&lint::UNDEFINED_ARG_IN_FROM, msg, lines, comments);
        }
    }

    /// `RedundantTargetPlatform` and `FromPlatformFlagConstDisallowed`.
    fn report_platform_checks(&mut self, st: &Stage, m: &Expansion, lines: Lines) {
        if m.matched.len() == 1
            && m.unmatched.is_empty()
            && m.matched.contains("TARGETPLATFORM")
            && self.global_args.get("TARGETPLATFORM") == Some(m.result.as_str())
        {
            self.warn(
                &lint::REDUNDANT_TARGET_PLATFORM,
                lint::redundant_target_platform(&st.platform),
                lines,
                &st.comments,
            );
        }
        if m.matched.is_empty()
            && m.unmatched.is_empty()
            && let Ok(p) = Platform::parse(&m.result)
            && !st.name.contains(&p.os)
            && !st.name.contains(&p.architecture)
        {
            self.warn(
                &lint::FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                lint::from_platform_const(&m.result),
                lines,
                &st.comments,
            );
        }
    }

    fn resolve_target(&self) -> Result<usize> {
        match self.opts.target.as_deref() {
            None | Some("") => Ok(self.states.len() - 1),
            Some(target) => self.by_name.get(&target.to_lowercase()).copied().ok_or_else(|| {
                let names = self.names();
                let options: Vec<&str> = names.iter().map(String::as_str).collect();
                let suggestion = suggest(target, &options, true);
                Fail::new(ConvertErrorKind::TargetNotFound { target: target.to_owned(), suggestion })
            }),
        }
    }

    /// `toCommand`: finds the states a command reads from, adding states for
    /// images named by `COPY --from` and `--mount from=`.
    fn command_sources(&mut self, command: Command) -> Result<(Cmd, Vec<usize>)> {
        let lines = (command.start_line, command.end_line);
        let mut sources = Vec::new();
        let mut unregistered = Vec::new();
        match &command.instruction {
            Instruction::Copy(c) if !c.from.is_empty() => {
                let from = c.from.clone();
                if self.lexer.process_word(&from, &NoEnv)? != from {
                    return Err(ConvertErrorKind::FromVariable.into());
                }
                let source = match parse_go_int(&from) {
                    Some(index) => {
                        if index < 0 || index as usize >= self.states.len() {
                            return Err(ConvertErrorKind::StageIndex(index).into());
                        }
                        index as usize
                    }
                    None => match self.by_name.get(&from.to_lowercase()) {
                        Some(&i) => i,
                        None => {
                            let i = self.add_state(DispatchState::new(stage_for(&from, Some(lines)), true));
                            unregistered.push(i);
                            i
                        }
                    },
                };
                sources.push(source);
            }
            Instruction::Run(r) => {
                for spec in &r.mount_specs {
                    let from = instructions::parse_mount(spec, None)
                        .map(|m| m.from)
                        .map_err(|e| Fail::new(ConvertErrorKind::Instruction(e)).at(lines))?;
                    let from = if from.is_empty() { SCRATCH.to_owned() } else { from };
                    let source = match self.by_name.get(&from.to_lowercase()) {
                        Some(&i) => i,
                        None => {
                            let i = self.add_state(DispatchState::new(stage_for(&from, None), true));
                            unregistered.push(i);
                            i
                        }
                    };
                    sources.push(source);
                }
            }
            _ => {}
        }
        Ok((Cmd { command, sources, is_onbuild: false }, unregistered))
    }

    fn add_dep(&mut self, state: usize, dep: usize, lines: Lines) {
        let deps = &mut self.states[state].deps;
        match deps.iter_mut().find(|(d, _)| *d == dep) {
            Some(entry) => entry.1 = lines,
            None => deps.push((dep, lines)),
        }
    }

    /// `buildStageDependencyGraph`.
    fn build_dependency_graph(&mut self) -> Result<()> {
        let count = self.states.len();
        for i in 0..count {
            let commands = std::mem::take(&mut self.states[i].stage.commands);
            let mut cmds = Vec::with_capacity(commands.len());
            for command in commands.iter().cloned() {
                let (cmd, _) = self.command_sources(command)?;
                for &source in &cmd.sources {
                    self.add_dep(i, source, cmd.lines());
                }
                cmds.push(cmd);
            }
            self.states[i].stage.commands = commands;
            self.states[i].commands = cmds;
        }
        self.check_cycles()?;
        if self.states.len() == 1 {
            self.states[0].stage_name.clear();
        }
        Ok(())
    }

    /// `validateCircularDependency`.
    fn check_cycles(&self) -> Result<()> {
        fn visit(
            states: &[DispatchState],
            s: usize,
            visited: &mut BTreeSet<usize>,
            path: &mut BTreeSet<usize>,
            trail: &mut Vec<Lines>,
        ) -> bool {
            if !visited.insert(s) {
                return false;
            }
            path.insert(s);
            for &(dep, lines) in &states[s].deps {
                trail.push(lines);
                if path.contains(&dep) || visit(states, dep, visited, path, trail) {
                    return true;
                }
                trail.pop();
            }
            path.remove(&s);
            false
        }
        let mut visited = BTreeSet::new();
        for s in 0..self.states.len() {
            let mut path = BTreeSet::new();
            let mut trail = Vec::new();
            if visit(&self.states, s, &mut visited, &mut path, &mut trail) {
                let kind = ConvertErrorKind::CircularDependency(self.states[s].stage_name.clone());
                let mut fail = Fail::new(kind);
                if let Some(lines) = trail.first() {
                    fail = fail.at(*lines);
                }
                return Err(fail);
            }
        }
        Ok(())
    }

    fn reachable_from(&self, target: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(s) = todo.pop() {
            if !out.insert(s) {
                continue;
            }
            todo.extend(self.states[s].base);
            todo.extend(self.states[s].deps.iter().map(|(d, _)| *d));
        }
        out
    }

    /// `dispatchState.init`: a stage built on another stage starts from it.
    fn init_state(&mut self, i: usize) {
        let Some(base) = self.states[i].base else { return };
        let (state, platform, mut image, base_image, workdir_set, args) = {
            let b = &self.states[base];
            (
                b.state.clone(),
                b.platform.clone(),
                b.image.clone(),
                b.base_image.clone(),
                b.workdir_set,
                b.build_args.clone(),
            )
        };
        image.config.on_build.clear();
        let d = &mut self.states[i];
        d.state = state;
        d.platform = platform;
        d.image = image;
        d.base_image = base_image;
        d.workdir_set = workdir_set;
        for arg in args {
            if !d.build_args.contains(&arg) {
                d.build_args.push(arg);
            }
        }
    }

    /// `resolveStages`: resolves base images and adds ONBUILD triggers until
    /// no trigger brings in a new dependency.
    async fn resolve_stages(
        &mut self,
        target: usize,
        resolver: &dyn ImageResolver,
    ) -> Result<BTreeSet<usize>> {
        loop {
            let reachable = self.reachable_from(target);
            self.resolve_reachable(&reachable, resolver).await?;
            let mut new_deps = false;
            for &i in &reachable {
                self.init_state(i);
                let mut triggers = self.states[i].image.config.on_build.clone();
                if let Some(base) = self.states[i].base
                    && !self.states[i].onbuild_init
                {
                    triggers.extend(self.states[base].commands.iter().filter_map(|c| {
                        match &c.command.instruction {
                            Instruction::Onbuild(expr) => Some(expr.clone()),
                            _ => None,
                        }
                    }));
                    self.states[i].onbuild_init = true;
                }
                if !triggers.is_empty() {
                    let lines = self.states[i].lines();
                    new_deps |= self
                        .init_onbuild_triggers(i, &triggers)
                        .map_err(|f| Fail { lines: Some(lines), ..f })?;
                    self.states[i].image.config.on_build.clear();
                }
            }
            if !new_deps {
                return Ok(reachable);
            }
        }
    }

    /// `initOnBuildTriggers`: parses triggers as commands placed before the
    /// stage's own, located at its FROM line.
    fn init_onbuild_triggers(&mut self, i: usize, triggers: &[String]) -> Result<bool> {
        let (start, end) = self.states[i].lines();
        let mut new_deps = false;
        let mut cmds = Vec::with_capacity(triggers.len());
        for trigger in triggers {
            let ast = parser::parse(trigger).map_err(|e| Fail::new(ConvertErrorKind::Parse(e.kind)))?;
            let [node] = ast.nodes.as_slice() else {
                return Err(ConvertErrorKind::OnbuildExpression.into());
            };
            let mut node = node.clone();
            node.start_line = start;
            node.end_line = end;
            let command = instructions::parse_command(&node)
                .map_err(|e| Fail::new(ConvertErrorKind::Instruction(e.kind)))?;
            let (mut cmd, _) = self.command_sources(command)?;
            cmd.is_onbuild = true;
            new_deps |= !cmd.sources.is_empty();
            for &source in &cmd.sources {
                self.add_dep(i, source, cmd.lines());
            }
            cmds.push(cmd);
        }
        let d = &mut self.states[i];
        d.cmd_total += cmds.len();
        cmds.append(&mut d.commands);
        d.commands = cmds;
        Ok(new_deps)
    }

    /// `resolveReachableStages` + `resolveBaseImage`: scratch stages start
    /// empty; image stages ask the resolver (reachable ones only, all at
    /// once) and start from the pinned image.
    async fn resolve_reachable(
        &mut self,
        reachable: &BTreeSet<usize>,
        resolver: &dyn ImageResolver,
    ) -> Result<()> {
        struct Request {
            index: usize,
            reachable: bool,
            orig_name: String,
            reference: String,
            platform: Platform,
            /// A named context to load instead of the image, and whether
            /// it replaces the whole stage (rather than its base image).
            named: Option<(named::Found, bool)>,
        }
        enum Lookup {
            Image(Result<ResolvedConfig, BoxError>),
            Named(Result<Box<named::Loaded>, ConvertErrorKind>),
        }
        let mut requests = Vec::new();
        for i in 0..self.states.len() {
            let is_reachable = reachable.contains(&i);
            let d = &mut self.states[i];
            if d.base.is_some() || d.dispatched || d.resolved {
                continue;
            }
            d.resolved = is_reachable;
            if d.stage.base_name == SCRATCH && d.named.is_none() {
                d.state = State::scratch();
                d.image = Image::empty(&self.target_platform);
                d.platform = Some(self.target_platform.clone());
                if d.unregistered {
                    d.dispatched = true;
                }
                continue;
            }
            let lines = d.lines();
            let orig_name = d.stage.base_name.clone();
            let reference = match Reference::parse(&orig_name) {
                Ok(r) => r.to_string(),
                Err(e) => {
                    let kind = ConvertErrorKind::StageName { name: orig_name, reason: e.to_string() };
                    return Err(Fail::new(kind).at(lines));
                }
            };
            let platform = d.platform.clone().unwrap_or_else(|| self.target_platform.clone());
            d.stage.base_name.clone_from(&reference);
            let named = match &d.named {
                Some(found) => Some((found.clone(), true)),
                None if is_reachable => named::lookup(&self.opts.named_contexts, &reference, &platform)
                    .map_err(|k| Fail::new(k).at(lines))?
                    .map(|found| (found, false)),
                None => None,
            };
            requests.push(Request {
                index: i,
                reachable: is_reachable,
                orig_name,
                reference,
                platform,
                named,
            });
        }

        let opts = self.opts;
        let lookups = requests.iter().filter(|r| r.reachable).map(|r| async move {
            match &r.named {
                Some((found, _)) => {
                    Lookup::Named(named::load(opts, found, &r.platform, resolver).await.map(Box::new))
                }
                None => Lookup::Image(resolver.resolve(&r.reference, &r.platform).await),
            }
        });
        let mut results = futures::future::join_all(lookups).await.into_iter();
        for req in requests {
            let i = req.index;
            if self.states[i].unregistered {
                self.states[i].dispatched = true;
            }
            let lines = self.states[i].lines();
            let mut platform = req.platform;
            let mut is_scratch = false;
            if req.reachable {
                let result = match results.next() {
                    None => break,
                    Some(Lookup::Image(result)) => result,
                    Some(Lookup::Named(loaded)) => {
                        let loaded = loaded.map_err(|k| Fail::new(k).at(lines))?;
                        let replaces_stage = req.named.as_ref().is_some_and(|(_, whole)| *whole);
                        self.use_named_context(i, *loaded, replaces_stage, platform);
                        continue;
                    }
                };
                let resolved = result.map_err(|source| {
                    let mut options = self.names();
                    options.extend(common_image_names());
                    let options: Vec<&str> = options.iter().map(String::as_str).collect();
                    let suggestion = suggest(&req.orig_name, &options, true);
                    let kind =
                        ConvertErrorKind::ResolveImage { name: req.orig_name.clone(), source, suggestion };
                    Fail::new(kind).at(lines)
                })?;
                let pinned = Reference::parse(&resolved.pinned_reference).map_err(|e| {
                    let kind = ConvertErrorKind::PinnedReference {
                        reference: resolved.pinned_reference.clone(),
                        reason: e.to_string(),
                    };
                    Fail::new(kind).at(lines)
                })?;
                let img: Image = serde_json::from_slice(&resolved.config)
                    .map_err(|e| Fail::new(ConvertErrorKind::ImageConfig(e.to_string())).at(lines))?;
                if self.states[i].platform.is_none() && self.implicit_target {
                    platform = auto_detect_platform(&img, &platform, &self.build_platforms);
                }
                is_scratch = img.rootfs.diff_ids.as_ref().is_none_or(Vec::is_empty)
                    && img.history.iter().all(|h| h.empty_layer);
                let d = &mut self.states[i];
                d.base_image = Some(img.clone());
                d.stage.base_name = pinned.to_string();
                d.image = img;
            }
            let state = if is_scratch {
                State::scratch()
            } else {
                let d = &self.states[i];
                let name = format!("FROM {}", d.stage.base_name);
                let source_code = d.stage.source_code.clone();
                let base_name = d.stage.base_name.clone();
                let custom = self.prefix_command(i, &name, Some(&platform), None);
                let c = Constraints::new()
                    .description(DESCRIPTION_COMMAND, source_code)
                    .platform(platform.clone())
                    .custom_name(custom)
                    .location(self.location(lines));
                llb::image(
                    &base_name,
                    ImageOptions {
                        resolve_mode: self.opts.image_resolve_mode,
                        constraints: c,
                        ..ImageOptions::default()
                    },
                )
            };
            if req.reachable && !is_scratch {
                let actual = self.states[i].image.platform();
                if platform.os != actual.os || platform.architecture != actual.architecture {
                    let msg = lint::invalid_base_image_platform(
                        &req.orig_name,
                        &format_platform_all(&platform.normalize()),
                        &format_platform_all(&actual.normalize()),
                    );
                    self.warn(&lint::INVALID_BASE_IMAGE_PLATFORM, msg, lines, &[]);
                }
            }
            let d = &mut self.states[i];
            d.state = state;
            d.platform = Some(platform);
        }
        Ok(())
    }

    /// `resolveBaseImage` for a named context: it replaces the whole stage
    /// (which is then done, platform from the image if it has one), or
    /// the stage's base image (the stage's platform, an empty config for a
    /// directory).
    fn use_named_context(
        &mut self,
        i: usize,
        loaded: named::Loaded,
        replaces_stage: bool,
        platform: Platform,
    ) {
        let d = &mut self.states[i];
        if replaces_stage {
            d.dispatched = true;
            d.state = loaded.state;
            if let Some(img) = loaded.image {
                if !img.architecture.is_empty() && !img.os.is_empty() {
                    d.platform = Some(img.platform());
                }
                d.image = img;
            }
            return;
        }
        let img = loaded.image.unwrap_or_else(|| Image::empty(&platform));
        d.base_image = Some(img.clone());
        d.image = img;
        d.state = loaded.state.platform(&platform);
        d.platform = Some(platform);
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

    /// `prefixCommand`: `[stage n/total] ` before a step's name.
    fn prefix_command(
        &mut self,
        i: usize,
        s: &str,
        platform: Option<&Platform>,
        env: Option<&EnvList>,
    ) -> String {
        let multi = self.opts.multi_platform;
        let d = &mut self.states[i];
        if d.cmd_total == 0 {
            return s.to_owned();
        }
        let mut out = "[".to_owned();
        if multi && let Some(p) = platform {
            out.push_str(&format_platform_all(p));
            out.push_str(&format_target_platform(p, env.and_then(platform_from_env)));
            out.push(' ');
        }
        if !d.stage_name.is_empty() {
            out.push_str(&d.stage_name);
            out.push(' ');
        }
        d.cmd_index += 1;
        let width = d.cmd_total.to_string().len();
        out.push_str(&format!("{:>width$}/{}] ", d.cmd_index, d.cmd_total));
        if d.cmd_is_onbuild {
            out.push_str("ONBUILD ");
        }
        out.push_str(s);
        out
    }

    /// `dispatchStages`: every needed stage in Dockerfile order.
    fn dispatch_stages(&mut self, reachable: &BTreeSet<usize>) -> Result<()> {
        for i in 0..self.states.len() {
            if !reachable.contains(&i) || self.states[i].dispatched {
                continue;
            }
            self.init_state(i);
            let lines = self.states[i].lines();
            let target_platform = self.target_platform.clone();
            let hostname = self.opts.hostname.clone();
            let network = self.opts.force_network_mode;
            let d = &mut self.states[i];
            d.dispatched = true;
            let platform = d.platform.get_or_insert(target_platform).clone();
            if platform.os != "windows"
                && !d.image.config.env.iter().any(|e| e.split('=').next() == Some("PATH"))
            {
                d.image.config.env.push(format!("PATH={}", llb::DEFAULT_PATH_UNIX));
            }
            for env in d.image.config.env.clone() {
                let (k, v) = env.split_once('=').unwrap_or((&env, ""));
                d.state = d.state.add_env(k, v);
            }
            if !hostname.is_empty() {
                d.state = d.state.hostname(&hostname);
            }
            if !d.image.config.working_dir.is_empty() {
                let wd = d.image.config.working_dir.clone();
                self.dispatch_workdir(i, &wd, None).map_err(|f| f.at(lines))?;
            }
            let d = &mut self.states[i];
            if !d.image.config.user.is_empty() {
                d.state = d.state.user(&d.image.config.user);
            }
            d.state = d.state.network(network);

            let commands = d.commands.clone();
            for cmd in commands {
                let lines = cmd.lines();
                self.dispatch(i, cmd).map_err(|f| f.at(lines))?;
            }
        }
        Ok(())
    }

    /// One instruction (`dispatch`).
    fn dispatch(&mut self, i: usize, cmd: Cmd) -> Result<()> {
        self.states[i].cmd_is_onbuild = cmd.is_onbuild;
        let lines = cmd.lines();
        let comments = cmd.command.comments.clone();
        let mut command = cmd.command.clone();
        self.expand(i, &mut command)?;
        let keyword = command.keyword.clone();
        match command.instruction {
            Instruction::Maintainer(m) => {
                let d = &mut self.states[i];
                d.image.author.clone_from(&m);
                d.image.commit(&format!("MAINTAINER {m}"), false, false, self.epoch);
            }
            Instruction::Env(pairs) => self.dispatch_env(i, &keyword, &pairs, lines, &comments),
            Instruction::Run(run) => {
                self.dispatch_run(i, &command.source_code, &run, &cmd.sources, lines, &comments)?
            }
            Instruction::Workdir(path) => {
                self.dispatch_workdir(i, &path, Some((&command.source_code, lines, &comments)))?
            }
            Instruction::Add(add) => self.dispatch_add(i, &command.source_code, add, lines, &comments)?,
            Instruction::Copy(copy) => self.dispatch_copy(
                i,
                &command.source_code,
                copy,
                cmd.sources.first().copied(),
                lines,
                &comments,
            )?,
            Instruction::Label(pairs) => self.dispatch_label(i, &keyword, &pairs, lines, &comments),
            Instruction::Onbuild(expr) => self.states[i].image.config.on_build.push(expr),
            Instruction::Cmd(c) => {
                if let Some(prev) = self.states[i].cmd_set.replace(lines) {
                    self.warn(
                        &lint::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                        lint::multiple_instructions(&keyword),
                        prev,
                        &comments,
                    );
                }
                let args = self.shell_form(i, &keyword, &c.cmd_line, c.prepend_shell, lines, &comments);
                let d = &mut self.states[i];
                d.image.commit(&format!("CMD {}", image::go_quote_list(&args)), false, false, self.epoch);
                d.image.config.cmd = args;
                d.image.config.args_escaped = true;
            }
            Instruction::Entrypoint(c) => {
                if let Some(prev) = self.states[i].entrypoint_set.replace(lines) {
                    self.warn(
                        &lint::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                        lint::multiple_instructions(&keyword),
                        prev,
                        &comments,
                    );
                }
                let args = self.shell_form(i, &keyword, &c.cmd_line, c.prepend_shell, lines, &comments);
                let d = &mut self.states[i];
                d.image.commit(
                    &format!("ENTRYPOINT {}", image::go_quote_list(&args)),
                    false,
                    false,
                    self.epoch,
                );
                d.image.config.entrypoint = args;
                if d.cmd_set.is_none() {
                    d.image.config.cmd.clear();
                }
            }
            Instruction::Healthcheck(h) => {
                if let Some(prev) = self.states[i].healthcheck_set.replace(lines) {
                    self.warn(
                        &lint::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                        lint::multiple_instructions(&keyword),
                        prev,
                        &comments,
                    );
                }
                let nanos = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
                let hc = image::Healthcheck {
                    test: h.test.clone(),
                    interval: nanos(h.interval),
                    timeout: nanos(h.timeout),
                    start_period: nanos(h.start_period),
                    start_interval: nanos(h.start_interval),
                    retries: i64::from(h.retries),
                };
                let message = format!(
                    "HEALTHCHECK &{{{} {} {} {} {} {}}}",
                    image::go_quote_list(&hc.test),
                    go_quote(&image::go_duration(hc.interval)),
                    go_quote(&image::go_duration(hc.timeout)),
                    go_quote(&image::go_duration(hc.start_period)),
                    go_quote(&image::go_duration(hc.start_interval)),
                    image::go_quote_rune(hc.retries),
                );
                let d = &mut self.states[i];
                d.image.config.healthcheck = Some(hc);
                d.image.commit(&message, false, false, self.epoch);
            }
            Instruction::Expose(ports) => self.dispatch_expose(i, &ports, lines, &comments)?,
            Instruction::User(user) => {
                let d = &mut self.states[i];
                d.state = d.state.user(&user);
                d.image.config.user.clone_from(&user);
                d.image.commit(&format!("USER {user}"), false, false, self.epoch);
            }
            Instruction::Volume(volumes) => {
                if volumes.iter().any(String::is_empty) {
                    return Err(ConvertErrorKind::EmptyVolume.into());
                }
                let d = &mut self.states[i];
                for v in &volumes {
                    d.image.config.volumes.insert(v.clone(), Empty {});
                }
                d.image.commit(&format!("VOLUME {}", image::go_list(&volumes)), false, false, self.epoch);
            }
            Instruction::StopSignal(signal) => {
                if !valid_signal(&signal) {
                    return Err(ConvertErrorKind::Signal(signal).into());
                }
                let d = &mut self.states[i];
                d.image.config.stop_signal.clone_from(&signal);
                d.image.commit(&format!("STOPSIGNAL {signal}"), false, false, self.epoch);
            }
            Instruction::Shell(shell) => {
                let d = &mut self.states[i];
                d.image.commit(&format!("SHELL {}", image::go_list(&shell)), false, false, self.epoch);
                d.image.config.shell = shell;
            }
            Instruction::Arg(arg) => self.dispatch_arg(i, &arg, lines, &comments)?,
        }
        Ok(())
    }

    /// Expands the instruction's words with the stage's env (the
    /// `Expand`/`ExpandRaw` methods of upstream's commands), noting
    /// variables that are not defined.
    fn expand(&mut self, i: usize, command: &mut Command) -> Result<()> {
        let lines = (command.start_line, command.end_line);
        let env = self.states[i].state.env().clone();
        let lexer = self.lexer.clone();
        let mut unmatched = BTreeSet::new();
        let mut word = |w: &mut String| -> Result<(), ShellError> {
            let e = lexer.process_word_with_matches(w, &env)?;
            unmatched.extend(e.unmatched);
            *w = e.result;
            Ok(())
        };
        let mut raw = Lexer::new('\\');
        raw.skip_process_quotes = true;
        match &mut command.instruction {
            Instruction::Env(pairs) | Instruction::Label(pairs) => {
                for p in pairs {
                    word(&mut p.key)?;
                    word(&mut p.value)?;
                }
            }
            Instruction::Add(a) => {
                word(&mut a.chown)?;
                word(&mut a.chmod)?;
                word(&mut a.checksum)?;
                a.sources.source_paths.iter_mut().try_for_each(&mut word)?;
                word(&mut a.sources.dest_path)?;
                for c in a.sources.source_contents.iter_mut().filter(|c| c.expand) {
                    c.data = raw.process_word(&c.data, &env)?;
                }
            }
            Instruction::Copy(c) => {
                word(&mut c.chown)?;
                word(&mut c.chmod)?;
                c.sources.source_paths.iter_mut().try_for_each(&mut word)?;
                word(&mut c.sources.dest_path)?;
                for content in c.sources.source_contents.iter_mut().filter(|c| c.expand) {
                    content.data = raw.process_word(&content.data, &env)?;
                }
            }
            Instruction::Workdir(p) | Instruction::User(p) | Instruction::StopSignal(p) => word(p)?,
            Instruction::Volume(vs) => vs.iter_mut().try_for_each(&mut word)?,
            _ => {}
        }
        self.report_unmatched(i, unmatched, lines, &command.comments);
        Ok(())
    }

    /// `UndefinedVar`: a variable neither in the env nor declared by ARG.
    fn report_unmatched(
        &mut self,
        i: usize,
        mut unmatched: BTreeSet<String>,
        lines: Lines,
        comments: &[String],
    ) {
        for (k, _) in &self.states[i].build_args {
            unmatched.remove(k);
        }
        if unmatched.is_empty() {
            return;
        }
        let keys: Vec<String> = self.states[i].state.env().keys().map(str::to_owned).collect();
        let options: Vec<&str> = keys.iter().map(String::as_str).collect();
        for var in unmatched.iter().filter(|v| !NON_ENV_ARGS.contains(&v.as_str())) {
            let msg = lint::undefined_var(var, suggest(var, &options, true).as_deref());
            self.warn(&lint::UNDEFINED_VAR, msg, lines, comments);
        }
    }

    /// Shell form gets the stage's SHELL (`withShell`); CMD and ENTRYPOINT
    /// are told to prefer JSON.
    fn shell_form(
        &mut self,
        i: usize,
        keyword: &str,
        args: &[String],
        prepend_shell: bool,
        lines: Lines,
        comments: &[String],
    ) -> Vec<String> {
        if !prepend_shell {
            return args.to_vec();
        }
        if self.states[i].image.config.shell.is_empty() {
            self.warn(&lint::JSON_ARGS_RECOMMENDED, lint::json_args_recommended(keyword), lines, comments);
        }
        with_shell(&self.states[i].image, args)
    }

    fn dispatch_env(
        &mut self,
        i: usize,
        keyword: &str,
        pairs: &[KeyValuePair],
        lines: Lines,
        comments: &[String],
    ) {
        let mut message = "ENV".to_owned();
        for p in pairs {
            if p.no_delim {
                self.warn(&lint::LEGACY_KEY_VALUE_FORMAT, lint::legacy_key_value(keyword), lines, comments);
            }
            if lint::looks_secret(&p.key) {
                self.warn(
                    &lint::SECRETS_USED_IN_ARG_OR_ENV,
                    lint::secrets_used("ENV", &p.key),
                    lines,
                    comments,
                );
            }
            message.push_str(&format!(" {}={}", p.key, p.value));
            let d = &mut self.states[i];
            d.state = d.state.add_env(&p.key, &p.value);
            d.image.add_env(&p.key, &p.value);
        }
        self.states[i].image.commit(&message, false, false, self.epoch);
    }

    fn dispatch_label(
        &mut self,
        i: usize,
        keyword: &str,
        pairs: &[KeyValuePair],
        lines: Lines,
        comments: &[String],
    ) {
        let mut message = "LABEL".to_owned();
        for p in pairs {
            if p.no_delim {
                self.warn(&lint::LEGACY_KEY_VALUE_FORMAT, lint::legacy_key_value(keyword), lines, comments);
            }
            self.states[i].image.config.labels.insert(p.key.clone(), p.value.clone());
            message.push_str(&format!(" {}={}", p.key, p.value));
        }
        self.states[i].image.commit(&message, false, false, self.epoch);
    }

    /// `dispatchWorkdir`. `commit` is the instruction (source, lines,
    /// comments) when this is a WORKDIR line rather than the base image's
    /// working directory; only then is the directory created.
    fn dispatch_workdir(
        &mut self,
        i: usize,
        path: &str,
        commit: Option<(&str, Lines, &[String])>,
    ) -> Result<()> {
        if let Some((_, lines, comments)) = commit {
            if !self.states[i].workdir_set && !path.starts_with('/') {
                self.warn(&lint::WORKDIR_RELATIVE_PATH, lint::workdir_relative_path(path), lines, comments);
            }
            self.states[i].workdir_set = true;
        }
        let d = &mut self.states[i];
        let current =
            if d.image.config.working_dir.is_empty() { "/" } else { d.image.config.working_dir.as_str() };
        let wd = if path.is_empty() {
            llb::join_path(&["/", current])
        } else if path.starts_with('/') {
            llb::clean_path(path)
        } else {
            llb::join_path(&["/", current, path])
        };
        d.image.config.working_dir.clone_from(&wd);
        d.state = d.state.dir(&wd);
        let Some((source, lines, _)) = commit else { return Ok(()) };
        let with_layer = wd != "/";
        if with_layer {
            let user = self.states[i].image.config.user.clone();
            let env = self.states[i].state.env().clone();
            let platform = self.states[i].platform.clone().unwrap_or_else(|| self.target_platform.clone());
            let name = uppercase_cmd(&process_cmd_env(&self.lexer, source, &env));
            let custom = self.prefix_command(i, &name, Some(&platform), Some(&env));
            let info = llb::MkdirInfo {
                make_parents: true,
                chown: (!user.is_empty()).then(|| llb::ChownOpt::from_user(&user)),
                created_time: self.epoch.map(|s| s.saturating_mul(1_000_000_000)),
            };
            let c = Constraints::new().custom_name(custom).location(self.location(lines)).platform(platform);
            let d = &mut self.states[i];
            d.state = d.state.file(llb::FileAction::new().mkdir(&wd, 0o755, info), c);
        }
        self.states[i].image.commit(&format!("WORKDIR {wd}"), with_layer, false, self.epoch);
        Ok(())
    }

    fn dispatch_arg(&mut self, i: usize, arg: &ArgCommand, lines: Lines, comments: &[String]) -> Result<()> {
        let mut parts = Vec::with_capacity(arg.args.len());
        for def in &arg.args {
            if lint::looks_secret(&def.key) {
                self.warn(
                    &lint::SECRETS_USED_IN_ARG_OR_ENV,
                    lint::secrets_used("ARG", &def.key),
                    lines,
                    comments,
                );
            }
            let build_value = self.opts.build_args.get(&def.key).cloned();
            let mut value = def.value.clone();
            if value.is_none() && build_value.is_none() {
                value = self.global_args.get(&def.key).map(str::to_owned);
            }
            if let Some(v) = build_value {
                value = Some(v);
            } else if let Some(default) = def.value.as_deref() {
                let env = self.states[i].state.env().clone();
                let e = self.lexer.process_word_with_matches(default, &env)?;
                self.report_unmatched(i, e.unmatched, lines, comments);
                value = Some(e.result);
            }
            let d = &mut self.states[i];
            if let Some(v) = &value
                && !NON_ENV_ARGS.contains(&def.key.as_str())
            {
                d.state = d.state.add_env(&def.key, v);
            }
            d.build_args.push((def.key.clone(), value.clone()));
            parts.push(match &value {
                Some(v) => format!("{}={v}", def.key),
                None => def.key.clone(),
            });
        }
        self.states[i].image.commit(&format!("ARG {}", parts.join(" ")), false, false, self.epoch);
        Ok(())
    }

    fn dispatch_expose(
        &mut self,
        i: usize,
        ports: &[String],
        lines: Lines,
        comments: &[String],
    ) -> Result<()> {
        let env = self.states[i].state.env().clone();
        let mut words = Vec::new();
        for p in ports {
            words.extend(self.lexer.process_words(p, &env)?);
        }
        let mut exposed = Vec::new();
        for raw in &words {
            let (ip, host_port, _) = split_port_parts(raw);
            let proto = raw.rsplit_once('/').map(|(_, p)| p).unwrap_or("");
            if proto != proto.to_lowercase() {
                self.warn(&lint::EXPOSE_PROTO_CASING, lint::expose_proto_casing(raw), lines, comments);
            }
            if !ip.is_empty() || !host_port.is_empty() {
                self.warn(&lint::EXPOSE_INVALID_FORMAT, lint::expose_invalid_format(raw), lines, comments);
            }
            exposed.extend(parse_port(raw).map_err(ConvertErrorKind::Port)?);
        }
        let d = &mut self.states[i];
        for p in &exposed {
            d.image.config.exposed_ports.insert(p.clone(), Empty {});
        }
        d.image.commit(&format!("EXPOSE {}", image::go_list(&exposed)), false, false, self.epoch);
        Ok(())
    }

    /// `finalizeResultImage` and marshalling.
    fn finalize(&mut self, target: usize) -> Result<Converted> {
        let labels = self.opts.labels.clone();
        self.states[target].image.config.labels.extend(labels);
        if self.check.error && !self.called_rules.is_empty() {
            let rules = self.called_rules.iter().map(|r| (*r).to_owned()).collect();
            return Err(ConvertErrorKind::Lint(rules).into());
        }

        let mut paths: BTreeSet<String> = BTreeSet::new();
        for d in &self.states {
            paths.extend(d.ctx_paths.iter().cloned());
        }
        let follow_paths = if paths.contains("/") {
            Vec::new()
        } else {
            paths.iter().map(|p| llb::join_path(&[".", p])).collect()
        };
        let context = llb::local(
            &self.opts.context_name,
            LocalOptions {
                session_id: self.opts.session_id.clone(),
                exclude_patterns: self.opts.dockerignore.clone(),
                follow_paths,
                shared_key_hint: self
                    .opts
                    .shared_key_hint
                    .clone()
                    .unwrap_or_else(|| self.opts.context_name.clone()),
                constraints: Constraints::new().custom_name("[internal] load build context"),
                ..LocalOptions::default()
            },
        );
        let context = self.opts.main_context.clone().unwrap_or(context);
        self.context.fill(&context)?;

        let tp = self.target_platform.clone();
        let img = &mut self.states[target].image;
        if !self.implicit_target {
            let same = tp.os == img.os && tp.architecture == img.architecture;
            img.os.clone_from(&tp.os);
            img.architecture.clone_from(&tp.architecture);
            if tp.variant.is_some() || !same {
                img.variant = tp.variant.clone().unwrap_or_default();
            }
            if tp.os_version.is_some() || !same {
                img.os_version = tp.os_version.clone().unwrap_or_default();
            }
            if let Some(f) = &tp.os_features {
                img.os_features.clone_from(f);
            }
        }
        let normalized = img.platform().normalize();
        img.os = normalized.os;
        img.architecture = normalized.architecture;
        img.variant = normalized.variant.unwrap_or_default();

        let definition = llb::marshal(
            &self.states[target].state,
            &MarshalOptions {
                platform: Some(self.target_platform.clone()),
                caps: Some(self.opts.llb_caps.clone()),
                local_unique_id: String::new(),
            },
        )?;
        let d = &self.states[target];
        let image_config = llb::go_json(&d.image, "image config")?;
        let base_image_config =
            d.base_image.as_ref().map(|b| llb::go_json(b, "base image config")).transpose()?;
        let ignore_cache = d.ignore_cache;
        Ok(Converted {
            definition,
            image_config,
            image: d.image.clone(),
            base_image_config,
            warnings: std::mem::take(&mut self.warnings),
            epoch: self.epoch,
            ignore_cache,
        })
    }

    /// A deterministic stand-in for upstream's random progress group ids.
    fn progress_group_id(&self, i: usize) -> String {
        let d = &self.states[i];
        let seed = format!("{}:{}:{}", self.digest_seed, d.stage_name, d.cmd_index);
        hex::encode(Sha256::digest(seed.as_bytes()))[..25].to_owned()
    }
}

/// `withShell`.
fn with_shell(img: &Image, args: &[String]) -> Vec<String> {
    let mut shell = if img.config.shell.is_empty() {
        if img.os == "windows" {
            vec!["cmd".to_owned(), "/S".to_owned(), "/C".to_owned()]
        } else {
            vec!["/bin/sh".to_owned(), "-c".to_owned()]
        }
    } else {
        img.config.shell.clone()
    };
    shell.push(args.join(" "));
    shell
}

fn uppercase_cmd(s: &str) -> String {
    match s.split_once(' ') {
        Some((first, rest)) => format!("{} {rest}", first.to_uppercase()),
        None => s.to_uppercase(),
    }
}

fn process_cmd_env(lexer: &Lexer, cmd: &str, env: &dyn Env) -> String {
    lexer.process_word(cmd, env).unwrap_or_else(|_| cmd.to_owned())
}

/// `platformFromEnv`: the platform the TARGET* args of a stage describe.
fn platform_from_env(env: &EnvList) -> Option<Platform> {
    let mut p = Platform::new("", "", None);
    let mut set = false;
    for (k, v) in env.iter() {
        match k {
            "TARGETPLATFORM" => {
                if let Ok(p) = Platform::parse(v) {
                    return Some(p);
                }
            }
            "TARGETOS" => (p.os, set) = (v.to_owned(), true),
            "TARGETARCH" => (p.architecture, set) = (v.to_owned(), true),
            "TARGETVARIANT" => (p.variant, set) = ((!v.is_empty()).then(|| v.to_owned()), true),
            _ => {}
        }
    }
    set.then_some(p)
}

/// `formatTargetPlatform`: `->arch` when cross-compiling.
fn format_target_platform(base: &Platform, target: Option<Platform>) -> String {
    let Some(mut target) = target else { return String::new() };
    if target.os.is_empty() {
        target.os.clone_from(&base.os);
    }
    if target.architecture.is_empty() {
        target.architecture.clone_from(&base.architecture);
    }
    let p = target.normalize();
    if p.os == base.os && p.architecture != base.architecture {
        let mut s = format!("->{}", p.architecture);
        if let Some(v) = &p.variant {
            s.push('/');
            s.push_str(v);
        }
        return s;
    }
    if p.os != base.os {
        return format!("->{}", format_platform_all(&p));
    }
    String::new()
}

/// `autoDetectPlatform`: keep a base image's own platform when the worker
/// can build for it.
fn auto_detect_platform(img: &Image, target: &Platform, supported: &[Platform]) -> Platform {
    if target.os == img.os && target.architecture == img.architecture {
        return target.clone();
    }
    supported
        .iter()
        .find(|p| p.os == img.os && p.architecture == img.architecture)
        .cloned()
        .unwrap_or_else(|| target.clone())
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

fn common_image_names() -> Vec<String> {
    let mut out = Vec::new();
    for name in ["alpine", "busybox", "centos", "debian", "golang", "ubuntu", "fedora"] {
        // Upstream's list lacks the `/` after `library`; kept for equal suggestions.
        out.extend([
            name.to_owned(),
            format!("docker.io/library{name}"),
            format!("{name}:latest"),
            format!("docker.io/library{name}:latest"),
        ]);
    }
    out
}

/// Go's `strconv.Atoi`.
fn parse_go_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `signal.ParseSignal` on Linux.
fn valid_signal(raw: &str) -> bool {
    const NAMES: [&str; 34] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
        "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
        "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if let Some(n) = parse_go_int(raw) {
        return n != 0;
    }
    let name = raw.to_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    if NAMES.contains(&name) || name == "RTMIN" || name == "RTMAX" {
        return true;
    }
    let offset = |prefix: &str, max: u32| {
        name.strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| (1..=max).contains(&n))
    };
    offset("RTMIN+", 15) || offset("RTMAX-", 14)
}

/// `splitParts` of a port spec: `[ip:]host:container`.
fn split_port_parts(raw: &str) -> (String, String, String) {
    let parts: Vec<&str> = raw.split(':').collect();
    match parts.as_slice() {
        [c] => (String::new(), String::new(), (*c).to_owned()),
        [h, c] => (String::new(), (*h).to_owned(), (*c).to_owned()),
        _ => {
            let n = parts.len();
            (parts[..n - 2].join(":"), parts[n - 2].to_owned(), parts[n - 1].to_owned())
        }
    }
}

/// `parsePort`: a spec to `port/proto` entries (a range gives several).
fn parse_port(raw: &str) -> Result<Vec<String>, String> {
    let (ip, host_port, container) = split_port_parts(raw);
    let (port, proto) = container.split_once('/').unwrap_or((&container, ""));
    let proto_err = |reason: &str| format!("invalid port: {}: {reason}", go_quote(raw));
    if port.is_empty() {
        return Err(proto_err("no port specified"));
    }
    let proto = match proto.to_lowercase().as_str() {
        "" => "tcp".to_owned(),
        "tcp" | "udp" | "sctp" => proto.to_lowercase(),
        _ => return Err(proto_err(&format!("invalid proto: {proto}"))),
    };
    let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(&ip).to_owned();
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("invalid IP address: {ip}"));
    }
    let (start, end) = port_range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    if !host_port.is_empty() {
        let (hs, he) = port_range(&host_port).ok_or_else(|| format!("invalid hostPort: {host_port}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

fn port_range(ports: &str) -> Option<(u32, u32)> {
    let number = |s: &str| parse_go_int(s).filter(|n| (0..=65535).contains(n)).map(|n| n as u32);
    match ports.split_once('-') {
        None => number(ports).map(|p| (p, p)),
        Some((s, e)) if s == e => number(s).map(|p| (p, p)),
        Some((s, e)) => {
            let (s, e) = (number(s)?, number(e)?);
            (e >= s).then_some((s, e))
        }
    }
}
