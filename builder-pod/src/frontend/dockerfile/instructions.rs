//! Typed instructions and build stages from the AST
//! (`frontend/dockerfile/instructions`). Values stay unexpanded: variable
//! expansion needs the build's ARG/ENV state and happens during conversion,
//! except where BuildKit validates at parse time (network, security,
//! devices, the `from` of a mount, stage names).

use std::fmt;
use std::time::Duration;

use super::go_quote;
use super::linter::{CheckConfig, Warning};
use super::parser::{self, Args, Ast, Node};
use super::shell::ShellError;

/// Every instruction, upper-cased, for "did you mean" suggestions.
const INSTRUCTION_NAMES: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

const MOUNT_TYPES: [&str; 5] = ["bind", "cache", "tmpfs", "secret", "ssh"];
const SHARING_MODES: [&str; 3] = ["shared", "private", "locked"];
const MOUNT_KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// ` (did you mean X?)` after a message, or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Suggestion(pub Option<String>);

impl fmt::Display for Suggestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, " (did you mean {s}?)"),
            None => Ok(()),
        }
    }
}

fn suggestion(value: &str, options: &[&str], case_sensitive: bool) -> Suggestion {
    Suggestion(super::suggest(value, options, case_sensitive))
}

/// What is wrong with one instruction; the texts are BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstructionErrorKind {
    #[error("unknown instruction: {instruction}{suggestion}")]
    UnknownInstruction { instruction: String, suggestion: Suggestion },
    #[error("arg should start with -- : {0}")]
    FlagNotDashed(String),
    #[error("unknown flag: {flag}{suggestion}")]
    UnknownFlag { flag: String, suggestion: Suggestion },
    #[error("duplicate flag specified: {0}")]
    DuplicateFlag(String),
    #[error("missing a value on flag: {0}")]
    MissingFlagValue(String),
    #[error("expecting boolean value for flag {flag}, not: {value}")]
    NotBoolean { flag: String, value: String },
    #[error("{0} requires at least one argument")]
    AtLeastOneArgument(&'static str),
    #[error("{0} requires exactly one argument")]
    ExactlyOneArgument(&'static str),
    #[error(
        "{0} requires at least two arguments, but only one was provided. Destination could not be determined"
    )]
    NoDestination(&'static str),
    #[error("{0} cannot accept a heredoc as a destination")]
    HeredocDestination(&'static str),
    #[error("{0} names can not be blank")]
    BlankNames(&'static str),
    #[error("invalid name for build stage: {}, name can't start with a number or contain symbols", go_quote(.0))]
    InvalidStageName(String),
    #[error("FROM requires either one or three arguments")]
    FromArguments,
    #[error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChained,
    #[error("{0} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger(String),
    #[error("HEALTHCHECK NONE takes no arguments")]
    HealthcheckNoneArguments,
    #[error("Missing command after HEALTHCHECK CMD")]
    HealthcheckMissingCommand,
    #[error("Unknown type {} in HEALTHCHECK (try CMD)", go_quote(.0))]
    HealthcheckUnknownType(String),
    /// A Go `time.ParseDuration` failure, e.g. `time: invalid duration "x"`.
    #[error("{0}")]
    Duration(String),
    #[error("Interval {} cannot be less than 1ms", go_quote(.0))]
    IntervalTooShort(String),
    /// A Go `strconv.ParseInt` failure for `--retries`.
    #[error("{0}")]
    Retries(String),
    #[error("--retries cannot be negative ({0})")]
    NegativeRetries(i64),
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("SHELL requires the arguments to be in JSON form")]
    ShellNotJson,
    #[error("invalid network mode {}", go_quote(.0))]
    InvalidNetwork(String),
    #[error("security {} is not valid", go_quote(.0))]
    InvalidSecurity(String),
    #[error("failed to parse csv mounts: {0}")]
    MountCsv(String),
    #[error("'{0}' doesn't support variable expansion, define alias stage instead")]
    MountFromVariable(String),
    #[error("invalid field '{0}' must be a key=value pair")]
    NotKeyValue(String),
    #[error("unexpected key '{key}' for mount type '{mount_type}'")]
    KeyNotForMountType { key: String, mount_type: MountType },
    #[error("invalid value for {key}: {value}")]
    InvalidValue { key: String, value: String },
    #[error("unsupported mount type {}{suggestion}", go_quote(.value))]
    UnsupportedMountType { value: String, suggestion: Suggestion },
    #[error("unsupported sharing value {}{suggestion}", go_quote(.value))]
    UnsupportedSharing { value: String, suggestion: Suggestion },
    #[error("invalid value {value} for {key}")]
    InvalidNumber { key: &'static str, value: String },
    #[error("unexpected key '{key}' in '{field}'{suggestion}")]
    UnexpectedKey { key: String, field: String, suggestion: Suggestion },
    #[error("{what} not allowed for {} type mounts", go_quote(.mount_type.as_str()))]
    FileInfoNotAllowed { what: &'static str, mount_type: MountType },
    #[error("secret mount should not have a from")]
    SecretMountFrom,
    #[error("secret mount should not define sharing")]
    SecretMountSharing,
    #[error("invalid secret mount. one of source, target required")]
    SecretMountTarget,
    #[error("both source and id can't be set")]
    SecretMountSourceAndId,
    #[error("invalid cache sharing set for {0} mount")]
    SharingNotCache(MountType),
    /// Expanding a mount option failed.
    #[error("{0}")]
    Expand(ShellError),
    #[error("failed to parse csv devices: {0}")]
    DeviceCsv(String),
    #[error("device name already set to {0}")]
    DeviceNameSet(String),
    /// `parse_command` was given a FROM (upstream names the Go type).
    #[error("*instructions.Stage is not a command type")]
    NotACommand,
}

/// An instruction that failed to parse, with its lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct InstructionError {
    pub kind: InstructionErrorKind,
    pub start_line: usize,
    pub end_line: usize,
}

/// Why a Dockerfile could not be split into stages. The texts are what
/// buildkitd returns (`instructions.Parse`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error("dockerfile parse error on line {}: {}", .0.start_line, .0.kind)]
    Instruction(InstructionError),
    /// An instruction other than ARG before the first FROM.
    #[error("no build stage in current context")]
    NoStage { start_line: usize, end_line: usize },
}

/// A `key=value` of ENV or LABEL, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValuePair {
    pub key: String,
    pub value: String,
    /// Written in the legacy `KEY value` form.
    pub no_delim: bool,
}

/// An ARG: a name with an optional default, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDefinition {
    pub key: String,
    pub value: Option<String>,
    /// The text of a `# NAME description` comment directly above.
    pub doc_comment: String,
}

/// An ARG instruction (also the meta ARGs before the first FROM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgCommand {
    pub args: Vec<ArgDefinition>,
    pub start_line: usize,
    pub end_line: usize,
}

/// A heredoc used as the script or an extra file of a RUN/CMD/ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellInlineFile {
    pub name: String,
    /// The body as written; `chomp` (`<<-`) still has to be applied.
    pub data: String,
    pub chomp: bool,
}

/// A command line in shell form (one string, run through the SHELL) or exec form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellDependentCmdLine {
    /// Exec form: the JSON words. Shell form: the words joined into one
    /// string (empty when there were none). For ENTRYPOINT an empty list
    /// means "unset" (`null` in the image config); for CMD it is `[]`.
    pub cmd_line: Vec<String>,
    pub files: Vec<ShellInlineFile>,
    /// Shell form: prepend the stage's SHELL.
    pub prepend_shell: bool,
}

/// Heredoc content given as a COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContent {
    /// The heredoc name, used as the file name.
    pub path: String,
    /// The body, with leading tabs already removed for `<<-`.
    pub data: String,
    /// Expand variables in the body (the delimiter was not quoted).
    pub expand: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesAndDest {
    pub dest_path: String,
    pub source_paths: Vec<String>,
    pub source_contents: Vec<SourceContent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCommand {
    pub sources: SourcesAndDest,
    pub chown: String,
    pub chmod: String,
    pub link: bool,
    pub exclude_patterns: Vec<String>,
    /// `--keep-git-dir`, if given.
    pub keep_git_dir: Option<bool>,
    pub checksum: String,
    /// `--unpack`, if given.
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCommand {
    pub sources: SourcesAndDest,
    /// `--from`: a stage name or index, an image, or a named context.
    pub from: String,
    pub chown: String,
    pub chmod: String,
    pub link: bool,
    pub exclude_patterns: Vec<String>,
    pub parents: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Sandbox,
    Insecure,
}

/// A `--device` of RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommand {
    pub cmd: ShellDependentCmdLine,
    /// Raw `--mount` values; [`RunCommand::mounts`] parses them once the
    /// build's variables are known.
    pub mount_specs: Vec<String>,
    pub network: NetworkMode,
    pub security: Security,
    pub devices: Vec<Device>,
    /// Names of the flags given (`mount`, `network`, …), sorted.
    pub flags_used: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

impl fmt::Display for MountType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareMode {
    Shared,
    Private,
    Locked,
}

/// A parsed `--mount` of RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_type: MountType,
    pub from: String,
    pub source: String,
    pub target: String,
    /// Explicit `ro`/`rw`, or the type's default (cache and tmpfs are writable).
    pub read_only: bool,
    /// tmpfs `size`, in bytes (0 when unset).
    pub size_limit: i64,
    /// `id` (cache id, or secret/ssh id).
    pub cache_id: String,
    pub cache_sharing: Option<ShareMode>,
    pub required: bool,
    /// Secret `env`: the variable to expose the secret as.
    pub env: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A HEALTHCHECK as it lands in the image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args…]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: i32,
}

/// What an instruction does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    Add(AddCommand),
    Arg(ArgCommand),
    Cmd(ShellDependentCmdLine),
    Copy(CopyCommand),
    Entrypoint(ShellDependentCmdLine),
    Env(Vec<KeyValuePair>),
    /// Ports, sorted, unexpanded.
    Expose(Vec<String>),
    Healthcheck(Healthcheck),
    Label(Vec<KeyValuePair>),
    Maintainer(String),
    /// The trigger line without `ONBUILD`, heredoc bodies appended, as stored
    /// in the image config and re-parsed by child builds.
    Onbuild(String),
    Run(RunCommand),
    Shell(Vec<String>),
    StopSignal(String),
    User(String),
    Volume(Vec<String>),
    Workdir(String),
}

/// One instruction of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The instruction keyword as written (`RUN`, `run`).
    pub keyword: String,
    /// The instruction's logical line, trimmed.
    pub source_code: String,
    pub start_line: usize,
    pub end_line: usize,
    pub comments: Vec<String>,
    pub instruction: Instruction,
}

/// A build stage: a FROM and the commands up to the next FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS` name, lower-cased; empty when unnamed.
    pub name: String,
    /// The image or stage reference, unexpanded.
    pub base_name: String,
    /// `--platform`, unexpanded; empty when absent.
    pub platform: String,
    /// The FROM keyword as written.
    pub orig_cmd: String,
    pub source_code: String,
    pub doc_comment: String,
    pub comments: Vec<String>,
    pub start_line: usize,
    pub end_line: usize,
    pub commands: Vec<Command>,
}

/// The result of splitting a Dockerfile into stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stages {
    /// Possibly empty: the caller reports "dockerfile contains no stages to build".
    pub stages: Vec<Stage>,
    /// ARGs before the first FROM.
    pub meta_args: Vec<ArgCommand>,
    /// Build checks that fired and are enabled by the config.
    pub warnings: Vec<Warning>,
}

/// Splits the AST into stages and the ARGs before the first FROM.
pub fn parse_stages(ast: &Ast) -> Result<(Vec<Stage>, Vec<ArgCommand>), StageError> {
    let check = CheckConfig { skip_all: true, ..CheckConfig::default() };
    parse_stages_with_checks(ast, &check).map(|s| (s.stages, s.meta_args))
}

/// Like [`parse_stages`], also running the build checks BuildKit runs while
/// parsing instructions and stages, filtered by `check` (the `# check=`
/// directive, adjusted per instruction by a `# check=` comment above it).
pub fn parse_stages_with_checks(ast: &Ast, check: &CheckConfig) -> Result<Stages, StageError> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut meta_args = Vec::new();
    let mut warnings = Vec::new();
    for node in &ast.nodes {
        let mut node_warnings = Vec::new();
        let parsed = parse_instruction(node, &mut node_warnings);
        let node_check = check.with_comments(&node.comments);
        warnings.extend(node_warnings.into_iter().filter(|w| node_check.enabled(w.rule)));
        match parsed.map_err(StageError::Instruction)? {
            Parsed::Stage(stage) => stages.push(stage),
            Parsed::Command(command) => {
                if let (true, Instruction::Arg(arg)) = (stages.is_empty(), &command.instruction) {
                    meta_args.push(arg.clone());
                    continue;
                }
                let Some(stage) = stages.last_mut() else {
                    return Err(StageError::NoStage { start_line: node.start_line, end_line: node.end_line });
                };
                stage.commands.push(command);
            }
        }
    }
    let mut stage_warnings = stage_name_checks(&stages);
    stage_warnings.extend(casing_checks(&stages));
    warnings.extend(stage_warnings.into_iter().filter(|w| check.enabled(w.rule)));
    Ok(Stages { stages, meta_args, warnings })
}

/// Parses one instruction that must not be FROM, such as an ONBUILD trigger
/// re-parsed in a child build (`instructions.ParseCommand`).
pub fn parse_command(node: &Node) -> Result<Command, InstructionError> {
    match parse_instruction(node, &mut Vec::new())? {
        Parsed::Command(c) => Ok(c),
        Parsed::Stage(_) => Err(InstructionError {
            kind: InstructionErrorKind::NotACommand,
            start_line: node.start_line,
            end_line: node.end_line,
        }),
    }
}

enum Parsed {
    Stage(Stage),
    Command(Command),
}

/// The reserved stage names and duplicates (dockerfile2llb `validateStageNames`).
fn stage_name_checks(stages: &[Stage]) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for stage in stages.iter().filter(|s| !s.name.is_empty()) {
        if matches!(stage.name.as_str(), "context" | "scratch") {
            warnings.push(Warning::reserved_stage_name(&stage.name, stage.start_line, stage.end_line));
        }
        if seen.contains(&stage.name.as_str()) {
            warnings.push(Warning::duplicate_stage_name(&stage.name, stage.start_line, stage.end_line));
        }
        seen.push(&stage.name);
    }
    warnings
}

/// Instructions should share one casing (dockerfile2llb `validateCommandCasing`).
fn casing_checks(stages: &[Stage]) -> Vec<Warning> {
    let keywords = || {
        stages.iter().flat_map(|s| {
            std::iter::once((s.orig_cmd.as_str(), s.start_line, s.end_line))
                .chain(s.commands.iter().map(|c| (c.keyword.as_str(), c.start_line, c.end_line)))
        })
    };
    let (mut lower, mut upper) = (0, 0);
    for (keyword, _, _) in keywords() {
        if keyword == keyword.to_lowercase() {
            lower += 1;
        } else if keyword == keyword.to_uppercase() {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    keywords()
        .filter_map(|(keyword, start, end)| {
            let casing = if majority_lower && keyword.to_lowercase() != keyword {
                "lowercase"
            } else if !majority_lower && keyword.to_uppercase() != keyword {
                "uppercase"
            } else {
                return None;
            };
            Some(Warning::consistent_casing(keyword, casing, start, end))
        })
        .collect()
}

/// The flags an instruction accepts, parsed as `BFlags.Parse` does.
struct Flags<'a> {
    given: &'a [String],
    defs: Vec<(&'static str, FlagKind)>,
    values: Vec<FlagValue>,
    used: Vec<&'static str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Str,
    Strings,
}

#[derive(Clone, Default)]
struct FlagValue {
    value: Option<String>,
    values: Vec<String>,
}

impl<'a> Flags<'a> {
    fn new(given: &'a [String], defs: &[(&'static str, FlagKind)]) -> Self {
        Self { given, defs: defs.to_vec(), values: vec![FlagValue::default(); defs.len()], used: Vec::new() }
    }

    fn parse(&mut self) -> Result<(), InstructionErrorKind> {
        for arg in self.given {
            if arg == "--" {
                return Ok(());
            }
            let Some(stripped) = arg.strip_prefix("--") else {
                return Err(InstructionErrorKind::FlagNotDashed(arg.clone()));
            };
            let (name, value) = match stripped.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (stripped, None),
            };
            let flag_name = format!("--{name}");
            let Some(index) = self.defs.iter().position(|(n, _)| *n == name) else {
                let names: Vec<&str> = self.defs.iter().map(|(n, _)| *n).collect();
                return Err(InstructionErrorKind::UnknownFlag {
                    flag: flag_name,
                    suggestion: suggestion(name, &names, true),
                });
            };
            let (def_name, kind) = self.defs[index];
            if self.used.contains(&def_name) && kind != FlagKind::Strings {
                return Err(InstructionErrorKind::DuplicateFlag(flag_name));
            }
            if !self.used.contains(&def_name) {
                self.used.push(def_name);
            }
            let slot = &mut self.values[index];
            match (kind, value) {
                (FlagKind::Bool, Some("")) => return Err(InstructionErrorKind::MissingFlagValue(flag_name)),
                (FlagKind::Bool, v) => {
                    let v = v.unwrap_or("");
                    slot.value = Some(
                        match v.to_lowercase().as_str() {
                            "true" | "" => "true",
                            "false" => "false",
                            _ => {
                                return Err(InstructionErrorKind::NotBoolean {
                                    flag: flag_name,
                                    value: v.to_owned(),
                                });
                            }
                        }
                        .to_owned(),
                    );
                }
                (_, None) => return Err(InstructionErrorKind::MissingFlagValue(flag_name)),
                (FlagKind::Str, Some(v)) => slot.value = Some(v.to_owned()),
                (FlagKind::Strings, Some(v)) => slot.values.push(v.to_owned()),
            }
        }
        Ok(())
    }

    fn index(&self, name: &str) -> usize {
        self.defs.iter().position(|(n, _)| *n == name).unwrap_or(usize::MAX)
    }

    fn string(&self, name: &str) -> String {
        self.values.get(self.index(name)).and_then(|v| v.value.clone()).unwrap_or_default()
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(self.index(name)).map(|v| v.values.clone()).unwrap_or_default()
    }

    /// A bool flag's value if it was given.
    fn bool_given(&self, name: &str) -> Option<bool> {
        self.values.get(self.index(name)).and_then(|v| v.value.as_deref()).map(|v| v == "true")
    }

    fn is_true(&self, name: &str) -> bool {
        self.bool_given(name).unwrap_or(false)
    }
}

fn parse_instruction(node: &Node, warnings: &mut Vec<Warning>) -> Result<Parsed, InstructionError> {
    let at = |kind| InstructionError { kind, start_line: node.start_line, end_line: node.end_line };
    let (start, end) = (node.start_line, node.end_line);
    let args = node.flat_args();
    let command = |instruction| Command {
        keyword: node.keyword.clone(),
        source_code: node.original.trim().to_owned(),
        start_line: start,
        end_line: end,
        comments: node.comments.clone(),
        instruction,
    };
    let no_flags = || Flags::new(&node.flags, &[]).parse();

    let instruction = match node.name.as_str() {
        "env" => {
            no_flags().map_err(at)?;
            Instruction::Env(key_values(node, "ENV").map_err(at)?)
        }
        "maintainer" => {
            warnings.push(Warning::maintainer_deprecated(start, end));
            let maintainer = exactly_one(&args, "MAINTAINER").map_err(at)?;
            no_flags().map_err(at)?;
            Instruction::Maintainer(maintainer)
        }
        "label" => {
            no_flags().map_err(at)?;
            Instruction::Label(key_values(node, "LABEL").map_err(at)?)
        }
        "add" => Instruction::Add(parse_add(node, &args).map_err(at)?),
        "copy" => Instruction::Copy(parse_copy(node, &args).map_err(at)?),
        "from" => return parse_from(node, &args, warnings).map(Parsed::Stage).map_err(at),
        "onbuild" => Instruction::Onbuild(parse_onbuild(node, &args).map_err(at)?),
        "workdir" => {
            let path = exactly_one(&args, "WORKDIR").map_err(at)?;
            no_flags().map_err(at)?;
            Instruction::Workdir(path)
        }
        "run" => Instruction::Run(parse_run(node, &args).map_err(at)?),
        "cmd" => {
            no_flags().map_err(at)?;
            Instruction::Cmd(shell_dependent(node, &args))
        }
        "healthcheck" => Instruction::Healthcheck(parse_healthcheck(node, &args).map_err(at)?),
        "entrypoint" => {
            no_flags().map_err(at)?;
            Instruction::Entrypoint(shell_dependent(node, &args))
        }
        "expose" => {
            if args.is_empty() {
                return Err(at(InstructionErrorKind::AtLeastOneArgument("EXPOSE")));
            }
            no_flags().map_err(at)?;
            let mut ports = args;
            ports.sort();
            Instruction::Expose(ports)
        }
        "user" => {
            let user = exactly_one(&args, "USER").map_err(at)?;
            no_flags().map_err(at)?;
            Instruction::User(user)
        }
        "volume" => {
            if args.is_empty() {
                return Err(at(InstructionErrorKind::AtLeastOneArgument("VOLUME")));
            }
            no_flags().map_err(at)?;
            let mut volumes = Vec::with_capacity(args.len());
            for v in &args {
                let v = v.trim();
                if v.is_empty() {
                    return Err(at(InstructionErrorKind::EmptyVolume));
                }
                volumes.push(v.to_owned());
            }
            Instruction::Volume(volumes)
        }
        // Upstream parses no flags for STOPSIGNAL and ARG: any given are ignored.
        "stopsignal" => Instruction::StopSignal(exactly_one(&args, "STOPSIGNAL").map_err(at)?),
        "arg" => {
            let arg = parse_arg(node, &args).map_err(at)?;
            let keys: Vec<&str> = arg.args.iter().map(|a| a.key.as_str()).collect();
            definition_description("ARG", &keys, node, warnings);
            Instruction::Arg(arg)
        }
        "shell" => {
            no_flags().map_err(at)?;
            let shell = json_args(&args, node.json);
            if shell.is_empty() {
                return Err(at(InstructionErrorKind::AtLeastOneArgument("SHELL")));
            }
            if !node.json {
                return Err(at(InstructionErrorKind::ShellNotJson));
            }
            Instruction::Shell(shell)
        }
        _ => {
            return Err(at(InstructionErrorKind::UnknownInstruction {
                instruction: node.keyword.clone(),
                suggestion: suggestion(&node.keyword, &INSTRUCTION_NAMES, false),
            }));
        }
    };
    Ok(Parsed::Command(command(instruction)))
}

fn exactly_one(args: &[String], instruction: &'static str) -> Result<String, InstructionErrorKind> {
    match args {
        [one] => Ok(one.clone()),
        _ => Err(InstructionErrorKind::ExactlyOneArgument(instruction)),
    }
}

fn key_values(node: &Node, instruction: &'static str) -> Result<Vec<KeyValuePair>, InstructionErrorKind> {
    let pairs = match &node.args {
        Args::KeyValues(pairs) => pairs.as_slice(),
        _ => &[],
    };
    if pairs.is_empty() {
        return Err(InstructionErrorKind::AtLeastOneArgument(instruction));
    }
    pairs
        .iter()
        .map(|p| {
            if p.key.is_empty() {
                return Err(InstructionErrorKind::BlankNames(instruction));
            }
            Ok(KeyValuePair { key: p.key.clone(), value: p.value.clone(), no_delim: p.legacy })
        })
        .collect()
}

/// Exec form keeps the words; shell form joins them into one command string.
fn json_args(args: &[String], json: bool) -> Vec<String> {
    if args.is_empty() || json { args.to_vec() } else { vec![args.join(" ")] }
}

fn shell_dependent(node: &Node, args: &[String]) -> ShellDependentCmdLine {
    ShellDependentCmdLine {
        cmd_line: json_args(args, node.json),
        files: node
            .heredocs
            .iter()
            .map(|h| ShellInlineFile { name: h.name.clone(), data: h.content.clone(), chomp: h.chomp })
            .collect(),
        prepend_shell: !node.json,
    }
}

fn sources_and_dest(
    node: &Node,
    args: &[String],
    instruction: &'static str,
) -> Result<SourcesAndDest, InstructionErrorKind> {
    let Some((dest, sources)) = args.split_last() else {
        return Err(InstructionErrorKind::NoDestination(instruction));
    };
    if heredoc_word(dest).is_some() {
        return Err(InstructionErrorKind::HeredocDestination(instruction));
    }
    let mut out =
        SourcesAndDest { dest_path: dest.clone(), source_paths: Vec::new(), source_contents: Vec::new() };
    for source in sources {
        match heredoc_word(source) {
            Some(heredoc) => {
                // The last heredoc of that name wins, as in upstream's lookup map.
                let content = node
                    .heredocs
                    .iter()
                    .rev()
                    .find(|h| h.name == heredoc.name)
                    .map(|h| h.content.clone())
                    .unwrap_or_default();
                let data = if heredoc.chomp { parser::chomp_heredoc_content(&content) } else { content };
                out.source_contents.push(SourceContent { path: heredoc.name, data, expand: heredoc.expand });
            }
            None => out.source_paths.push(source.clone()),
        }
    }
    Ok(out)
}

/// `MustParseHeredoc`: lexing errors count as "not a heredoc".
fn heredoc_word(word: &str) -> Option<parser::Heredoc> {
    parser::parse_heredoc(word).ok().flatten()
}

fn parse_add(node: &Node, args: &[String]) -> Result<AddCommand, InstructionErrorKind> {
    if args.len() < 2 {
        return Err(InstructionErrorKind::NoDestination("ADD"));
    }
    let mut flags = Flags::new(
        &node.flags,
        &[
            ("chown", FlagKind::Str),
            ("chmod", FlagKind::Str),
            ("link", FlagKind::Bool),
            ("keep-git-dir", FlagKind::Bool),
            ("checksum", FlagKind::Str),
            ("unpack", FlagKind::Bool),
            ("exclude", FlagKind::Strings),
        ],
    );
    flags.parse()?;
    Ok(AddCommand {
        sources: sources_and_dest(node, args, "ADD")?,
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.is_true("link"),
        exclude_patterns: flags.strings("exclude"),
        keep_git_dir: flags.bool_given("keep-git-dir"),
        checksum: flags.string("checksum"),
        unpack: flags.bool_given("unpack"),
    })
}

fn parse_copy(node: &Node, args: &[String]) -> Result<CopyCommand, InstructionErrorKind> {
    if args.len() < 2 {
        return Err(InstructionErrorKind::NoDestination("COPY"));
    }
    let mut flags = Flags::new(
        &node.flags,
        &[
            ("chown", FlagKind::Str),
            ("from", FlagKind::Str),
            ("chmod", FlagKind::Str),
            ("link", FlagKind::Bool),
            ("exclude", FlagKind::Strings),
            ("parents", FlagKind::Bool),
        ],
    );
    flags.parse()?;
    Ok(CopyCommand {
        sources: sources_and_dest(node, args, "COPY")?,
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.is_true("link"),
        exclude_patterns: flags.strings("exclude"),
        parents: flags.is_true("parents"),
    })
}

fn parse_from(
    node: &Node,
    args: &[String],
    warnings: &mut Vec<Warning>,
) -> Result<Stage, InstructionErrorKind> {
    let (start, end) = (node.start_line, node.end_line);
    if let [_, _, name] = args
        && *name != name.to_lowercase()
    {
        warnings.push(Warning::stage_name_casing(name, start, end));
    }
    if let [_, as_, _, ..] = args {
        let from = node.keyword.as_str();
        let from_lower = from == from.to_lowercase();
        let from_upper = from == from.to_uppercase();
        let mismatch =
            if from_lower { *as_ != as_.to_lowercase() } else { from_upper && *as_ != as_.to_uppercase() };
        if mismatch {
            warnings.push(Warning::from_as_casing(from, as_, start, end));
        }
    }
    let name = match args {
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let lower = name.to_lowercase();
            if !valid_stage_name(&lower) {
                return Err(InstructionErrorKind::InvalidStageName(name.clone()));
            }
            lower
        }
        [_] => String::new(),
        _ => return Err(InstructionErrorKind::FromArguments),
    };
    let mut flags = Flags::new(&node.flags, &[("platform", FlagKind::Str)]);
    flags.parse()?;
    if !name.is_empty() {
        definition_description("FROM", &[name.as_str()], node, warnings);
    }
    Ok(Stage {
        doc_comment: doc_comment(&node.comments, &name),
        name,
        base_name: args[0].clone(),
        platform: flags.string("platform"),
        orig_cmd: node.keyword.clone(),
        source_code: node.original.trim().to_owned(),
        comments: node.comments.clone(),
        start_line: start,
        end_line: end,
        commands: Vec::new(),
    })
}

/// `^[a-z][a-z0-9-_.]*$`
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// The text after `NAME ` in a comment above the definition.
fn doc_comment(comments: &[String], name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let prefix = format!("{name} ");
    comments.iter().find_map(|c| c.strip_prefix(&prefix)).unwrap_or_default().to_owned()
}

/// A comment directly above ARG/FROM should describe what it defines
/// (`validateDefinitionDescription`, an experimental check).
fn definition_description(instruction: &str, keys: &[&str], node: &Node, warnings: &mut Vec<Warning>) {
    let (Some(last), Some(first_key)) = (node.comments.last(), keys.first()) else { return };
    let word = last.split(' ').next().unwrap_or_default();
    if keys.contains(&word) {
        return;
    }
    let example = if keys.len() > 1 { "<arg_key>" } else { first_key };
    warnings.push(Warning::invalid_definition_description(
        instruction,
        example,
        node.start_line,
        node.end_line,
    ));
}

fn parse_onbuild(node: &Node, args: &[String]) -> Result<String, InstructionErrorKind> {
    let Some(trigger) = args.first() else {
        return Err(InstructionErrorKind::AtLeastOneArgument("ONBUILD"));
    };
    Flags::new(&node.flags, &[]).parse()?;
    let trigger = trigger.trim().to_uppercase();
    match trigger.as_str() {
        "ONBUILD" => return Err(InstructionErrorKind::OnbuildChained),
        "MAINTAINER" | "FROM" => return Err(InstructionErrorKind::OnbuildTrigger(trigger)),
        _ => {}
    }
    // `(?i)^\s*ONBUILD\s*` removed from the original line.
    let re_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\u{c}' | '\r');
    let original = node.original.trim_start_matches(re_space);
    let mut expression = match original.get(..7) {
        Some(word) if word.eq_ignore_ascii_case("onbuild") => original[7..].trim_start_matches(re_space),
        _ => node.original.as_str(),
    }
    .to_owned();
    for heredoc in &node.heredocs {
        expression.push('\n');
        expression.push_str(&heredoc.content);
        expression.push_str(&heredoc.name);
    }
    Ok(expression)
}

fn parse_run(node: &Node, args: &[String]) -> Result<RunCommand, InstructionErrorKind> {
    let mut flags = Flags::new(
        &node.flags,
        &[
            ("device", FlagKind::Strings),
            ("mount", FlagKind::Strings),
            ("network", FlagKind::Str),
            ("security", FlagKind::Str),
        ],
    );
    flags.parse()?;
    let mut flags_used: Vec<String> = flags.used.iter().map(|s| (*s).to_owned()).collect();
    flags_used.sort();

    // Checked in upstream's hook order: devices, mounts, network, security.
    let devices = flags.strings("device").iter().map(|d| parse_device(d)).collect::<Result<Vec<_>, _>>()?;
    let mount_specs = flags.strings("mount");
    for spec in &mount_specs {
        parse_mount(spec, None)?;
    }
    let network = match flags.string("network").as_str() {
        "" if !flags.used.contains(&"network") => NetworkMode::Default,
        "default" => NetworkMode::Default,
        "none" => NetworkMode::None,
        "host" => NetworkMode::Host,
        other => return Err(InstructionErrorKind::InvalidNetwork(other.to_owned())),
    };
    let security = match flags.string("security").as_str() {
        "" if !flags.used.contains(&"security") => Security::Sandbox,
        "sandbox" => Security::Sandbox,
        "insecure" => Security::Insecure,
        other => return Err(InstructionErrorKind::InvalidSecurity(other.to_owned())),
    };
    Ok(RunCommand { cmd: shell_dependent(node, args), mount_specs, network, security, devices, flags_used })
}

impl RunCommand {
    /// Parses the `--mount` flags, expanding each option value with `expand`
    /// (BuildKit expands them with the stage's variables before parsing).
    pub fn mounts(&self, expand: Expander<'_>) -> Result<Vec<Mount>, InstructionErrorKind> {
        self.mount_specs.iter().map(|spec| parse_mount(spec, Some(&mut *expand))).collect()
    }
}

/// Expands one word with the build's variables (usually `Lexer::process_word`).
pub type Expander<'a> = &'a mut dyn FnMut(&str) -> Result<String, ShellError>;

/// Parses one `--mount` value (`parseMount`). Without `expand` only what
/// upstream checks at parse time is checked: the CSV syntax and that `from`
/// uses no variables.
pub fn parse_mount(spec: &str, mut expand: Option<Expander<'_>>) -> Result<Mount, InstructionErrorKind> {
    let fields = csv_fields(spec).map_err(InstructionErrorKind::MountCsv)?;
    let mut m = Mount {
        mount_type: MountType::Bind,
        from: String::new(),
        source: String::new(),
        target: String::new(),
        read_only: false,
        size_limit: 0,
        cache_id: String::new(),
        cache_sharing: None,
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut ro_auto = true;
    let secret_or_ssh = |m: &Mount| matches!(m.mount_type, MountType::Secret | MountType::Ssh);
    let unexpected_for_type = |key: &str, m: &Mount| InstructionErrorKind::KeyNotForMountType {
        key: key.to_owned(),
        mount_type: m.mount_type,
    };

    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_lowercase(), Some(v)),
            None => (field.to_lowercase(), None),
        };
        let Some(value) = value else {
            if expand.is_none() {
                continue;
            }
            match key.as_str() {
                "readonly" | "ro" => (m.read_only, ro_auto) = (true, false),
                "readwrite" | "rw" => (m.read_only, ro_auto) = (false, false),
                "required" if secret_or_ssh(&m) => m.required = true,
                "required" => return Err(unexpected_for_type(&key, &m)),
                _ => return Err(InstructionErrorKind::NotKeyValue(field.clone())),
            }
            continue;
        };
        let value = match expand.as_mut() {
            Some(expand) => expand(value).map_err(InstructionErrorKind::Expand)?,
            None if key == "from" => {
                if value.find('$').is_some_and(|i| i != value.len() - 1) {
                    return Err(InstructionErrorKind::MountFromVariable(key));
                }
                value.to_owned()
            }
            // Evaluated once the variables are known.
            None => continue,
        };
        let invalid = || InstructionErrorKind::InvalidValue { key: key.clone(), value: value.clone() };
        match key.as_str() {
            "type" => {
                m.mount_type = match value.to_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => {
                        return Err(InstructionErrorKind::UnsupportedMountType {
                            suggestion: suggestion(&value, &MOUNT_TYPES, true),
                            value,
                        });
                    }
                }
            }
            "from" => m.from = value,
            "source" | "src" => m.source = value,
            "target" | "dst" | "destination" => m.target = value,
            "readonly" | "ro" => {
                m.read_only = super::linter::parse_go_bool(&value).ok_or_else(invalid)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.read_only = !super::linter::parse_go_bool(&value).ok_or_else(invalid)?;
                ro_auto = false;
            }
            "required" if secret_or_ssh(&m) => {
                m.required = super::linter::parse_go_bool(&value).ok_or_else(invalid)?
            }
            "required" => return Err(unexpected_for_type(&key, &m)),
            "size" if m.mount_type == MountType::Tmpfs => {
                m.size_limit = ram_in_bytes(&value).ok_or_else(invalid)?
            }
            "size" => return Err(unexpected_for_type(&key, &m)),
            "id" => m.cache_id = value,
            "sharing" => {
                m.cache_sharing = Some(match value.to_lowercase().as_str() {
                    "shared" => ShareMode::Shared,
                    "private" => ShareMode::Private,
                    "locked" => ShareMode::Locked,
                    _ => {
                        return Err(InstructionErrorKind::UnsupportedSharing {
                            suggestion: suggestion(&value, &SHARING_MODES, true),
                            value,
                        });
                    }
                })
            }
            "mode" => {
                m.mode = Some(
                    parse_go_u32(&value, 8)
                        .ok_or(InstructionErrorKind::InvalidNumber { key: "mode", value })?,
                )
            }
            "uid" => {
                m.uid = Some(
                    parse_go_u32(&value, 10)
                        .ok_or(InstructionErrorKind::InvalidNumber { key: "uid", value })?,
                )
            }
            "gid" => {
                m.gid = Some(
                    parse_go_u32(&value, 10)
                        .ok_or(InstructionErrorKind::InvalidNumber { key: "gid", value })?,
                )
            }
            "env" => m.env = Some(value),
            _ => {
                return Err(InstructionErrorKind::UnexpectedKey {
                    suggestion: suggestion(&key, &MOUNT_KEYS, true),
                    key,
                    field: field.clone(),
                });
            }
        }
    }

    if !matches!(m.mount_type, MountType::Secret | MountType::Ssh | MountType::Cache) {
        for (what, set) in [("mode", m.mode.is_some()), ("uid", m.uid.is_some()), ("gid", m.gid.is_some())] {
            if set {
                return Err(InstructionErrorKind::FileInfoNotAllowed { what, mount_type: m.mount_type });
            }
        }
    }
    if ro_auto {
        m.read_only = !matches!(m.mount_type, MountType::Cache | MountType::Tmpfs);
    }
    if m.mount_type == MountType::Secret {
        if !m.from.is_empty() {
            return Err(InstructionErrorKind::SecretMountFrom);
        }
        if m.cache_sharing.is_some() {
            return Err(InstructionErrorKind::SecretMountSharing);
        }
        if m.source.is_empty() && m.target.is_empty() && m.cache_id.is_empty() {
            return Err(InstructionErrorKind::SecretMountTarget);
        }
        if !m.source.is_empty() && !m.cache_id.is_empty() {
            return Err(InstructionErrorKind::SecretMountSourceAndId);
        }
    }
    if m.cache_sharing.is_some() && m.mount_type != MountType::Cache {
        return Err(InstructionErrorKind::SharingNotCache(m.mount_type));
    }
    Ok(m)
}

/// A `--device` value: `name[,required[=bool]]` or `name=…,required=…`.
fn parse_device(spec: &str) -> Result<Device, InstructionErrorKind> {
    let fields = csv_fields(spec).map_err(InstructionErrorKind::DeviceCsv)?;
    let mut device = Device { name: String::new(), required: false };
    for field in &fields {
        let Some((key, value)) = field.split_once('=') else {
            if field.to_lowercase() == "required" {
                device.required = true;
            } else if device.name.is_empty() {
                device.name = field.clone();
            } else {
                return Err(InstructionErrorKind::NotKeyValue(field.clone()));
            }
            continue;
        };
        let key = key.to_lowercase();
        match key.as_str() {
            "name" if !device.name.is_empty() => {
                return Err(InstructionErrorKind::DeviceNameSet(device.name));
            }
            "name" => device.name = value.to_owned(),
            "required" => {
                device.required = super::linter::parse_go_bool(value)
                    .ok_or_else(|| InstructionErrorKind::InvalidValue { key, value: value.to_owned() })?;
            }
            _ if device.name.is_empty() => device.name = field.clone(),
            _ => {
                return Err(InstructionErrorKind::UnexpectedKey {
                    suggestion: suggestion(&key, &["name", "required"], true),
                    key,
                    field: field.clone(),
                });
            }
        }
    }
    Ok(device)
}

/// One CSV record as `tonistiigi/go-csvvalue` reads it; the error is Go's
/// `csv.ParseError` text.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let line = line.strip_suffix("\r\n").or_else(|| line.strip_suffix('\n')).unwrap_or(line);
    if line.is_empty() {
        return Err("EOF".to_owned());
    }
    let err = |pos: usize, what: &str| format!("parse error on line 1, column {}: {what}", pos + 1);
    let bare = "bare \" in non-quoted-field";
    let extraneous = "extraneous or missing \" in quoted-field";
    let mut fields = Vec::new();
    let mut rest = line;
    let mut pos = 0;
    loop {
        if !rest.starts_with('"') {
            let field = rest.split(',').next().unwrap_or_default();
            if let Some(j) = field.find('"') {
                return Err(err(pos + j, bare));
            }
            fields.push(field.to_owned());
            if field.len() == rest.len() {
                return Ok(fields);
            }
            rest = &rest[field.len() + 1..];
            pos += field.len() + 1;
            continue;
        }
        rest = &rest[1..];
        pos += 1;
        let mut field = String::new();
        loop {
            let Some(i) = rest.find('"') else { return Err(err(pos, extraneous)) };
            field.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            pos += i + 1;
            if let Some(after) = rest.strip_prefix('"') {
                field.push('"');
                rest = after;
                pos += 1;
            } else if let Some(after) = rest.strip_prefix(',') {
                fields.push(std::mem::take(&mut field));
                rest = after;
                pos += 1;
                break;
            } else if rest.is_empty() {
                fields.push(field);
                return Ok(fields);
            } else {
                return Err(err(pos - 1, extraneous));
            }
        }
    }
}

/// `strconv.ParseUint(s, radix, 32)`: digits only, no sign.
fn parse_go_u32(s: &str, radix: u32) -> Option<u32> {
    if s.is_empty() || !s.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(s, radix).ok()
}

/// go-units `RAMInBytes`: a number with an optional binary suffix
/// (`64m`, `1.5GiB`, `512 kb`).
fn ram_in_bytes(size: &str) -> Option<i64> {
    let sep = size.rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')?;
    let (num, suffix) = if size.as_bytes()[sep] == b' ' {
        (&size[..sep], &size[sep + 1..])
    } else {
        (&size[..=sep], &size[sep + 1..])
    };
    let number: f64 = num.parse().ok()?;
    if number < 0.0 {
        return None;
    }
    let suffix = suffix.to_lowercase();
    let multiplier: f64 = match suffix.as_str() {
        "" | "b" => 1.0,
        _ => {
            let exponent = match suffix.as_bytes()[0] {
                b'k' => 1,
                b'm' => 2,
                b'g' => 3,
                b't' => 4,
                b'p' => 5,
                _ => return None,
            };
            if !matches!(&suffix[1..], "" | "b" | "ib") {
                return None;
            }
            1024f64.powi(exponent)
        }
    };
    Some((number * multiplier) as i64)
}

fn parse_healthcheck(node: &Node, args: &[String]) -> Result<Healthcheck, InstructionErrorKind> {
    let Some((kind, rest)) = args.split_first() else {
        return Err(InstructionErrorKind::AtLeastOneArgument("HEALTHCHECK"));
    };
    let kind = kind.to_uppercase();
    let mut check = Healthcheck {
        test: Vec::new(),
        interval: Duration::ZERO,
        timeout: Duration::ZERO,
        start_period: Duration::ZERO,
        start_interval: Duration::ZERO,
        retries: 0,
    };
    if kind == "NONE" {
        // Upstream does not look at flags for NONE.
        if !rest.is_empty() {
            return Err(InstructionErrorKind::HealthcheckNoneArguments);
        }
        check.test = vec![kind];
        return Ok(check);
    }
    let mut flags = Flags::new(
        &node.flags,
        &[
            ("interval", FlagKind::Str),
            ("timeout", FlagKind::Str),
            ("start-period", FlagKind::Str),
            ("start-interval", FlagKind::Str),
            ("retries", FlagKind::Str),
        ],
    );
    flags.parse()?;
    if kind != "CMD" {
        return Err(InstructionErrorKind::HealthcheckUnknownType(kind));
    }
    let command = json_args(rest, node.json);
    if command.is_empty() {
        return Err(InstructionErrorKind::HealthcheckMissingCommand);
    }
    let test_kind = if node.json { "CMD" } else { "CMD-SHELL" };
    check.test = std::iter::once(test_kind.to_owned()).chain(command).collect();
    check.interval = interval(&flags, "interval")?;
    check.timeout = interval(&flags, "timeout")?;
    check.start_period = interval(&flags, "start-period")?;
    check.start_interval = interval(&flags, "start-interval")?;
    let retries = flags.string("retries");
    if !retries.is_empty() {
        let n = parse_go_i32(&retries)?;
        if n < 0 {
            return Err(InstructionErrorKind::NegativeRetries(n.into()));
        }
        check.retries = n;
    }
    Ok(check)
}

/// A health check interval: empty or zero means unset, otherwise at least 1ms.
fn interval(flags: &Flags<'_>, name: &str) -> Result<Duration, InstructionErrorKind> {
    let value = flags.string(name);
    if value.is_empty() {
        return Ok(Duration::ZERO);
    }
    let nanos = parse_go_duration(&value).map_err(InstructionErrorKind::Duration)?;
    if nanos == 0 {
        return Ok(Duration::ZERO);
    }
    if nanos < 1_000_000 {
        return Err(InstructionErrorKind::IntervalTooShort(name.to_owned()));
    }
    Ok(Duration::from_nanos(nanos.unsigned_abs()))
}

/// `strconv.ParseInt(s, 10, 32)`.
fn parse_go_i32(s: &str) -> Result<i32, InstructionErrorKind> {
    let fail = |what: &str| {
        InstructionErrorKind::Retries(format!("strconv.ParseInt: parsing {}: {what}", go_quote(s)))
    };
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("invalid syntax"));
    }
    let magnitude: i128 = digits.parse().unwrap_or(i128::MAX);
    let value = if s.starts_with('-') { -magnitude } else { magnitude };
    i32::try_from(value).map_err(|_| fail("value out of range"))
}

/// Go's `time.ParseDuration`, in nanoseconds; the error is Go's text.
fn parse_go_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", time_quote(orig));
    let mut s = orig;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix(['-', '+']) {
        negative = s.starts_with('-');
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    const LIMIT: u128 = 1 << 63;
    let mut total: u128 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let mut value: u128 = 0;
        for b in s[..int_len].bytes() {
            value = value * 10 + u128::from(b - b'0');
            if value > LIMIT {
                return Err(invalid());
            }
        }
        let pre = int_len > 0;
        s = &s[int_len..];
        let (mut fraction, mut scale, mut post) = (0u128, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            let mut overflow = false;
            for b in rest[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                let next = fraction * 10 + u128::from(b - b'0');
                if fraction > (LIMIT - 1) / 10 || next > LIMIT {
                    overflow = true;
                    continue;
                }
                fraction = next;
                scale *= 10.0;
            }
            post = frac_len > 0;
            s = &rest[frac_len..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = s.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", time_quote(orig)));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    time_quote(unit),
                    time_quote(orig)
                ));
            }
        };
        if value > LIMIT / unit_nanos {
            return Err(invalid());
        }
        value *= unit_nanos;
        if fraction > 0 {
            value += (fraction as f64 * (unit_nanos as f64 / scale)) as u128;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total += value;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if negative {
        return Ok(-(total as i128) as i64);
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// The `time` package's quoting: non-ASCII and control bytes as `\xNN`.
fn time_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if !c.is_ascii() || c < ' ' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
    out
}

fn parse_arg(node: &Node, args: &[String]) -> Result<ArgCommand, InstructionErrorKind> {
    if args.is_empty() {
        return Err(InstructionErrorKind::AtLeastOneArgument("ARG"));
    }
    let mut defs = Vec::with_capacity(args.len());
    for arg in args {
        let (key, value) = match arg.split_once('=') {
            Some(("", _)) => return Err(InstructionErrorKind::BlankNames("ARG")),
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        defs.push(ArgDefinition { doc_comment: doc_comment(&node.comments, &key), key, value });
    }
    Ok(ArgCommand { args: defs, start_line: node.start_line, end_line: node.end_line })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::dockerfile::parser::parse;

    fn stages(text: &str) -> (Vec<Stage>, Vec<ArgCommand>) {
        parse_stages(&parse(text).unwrap()).unwrap()
    }

    /// The single command of a one-stage Dockerfile `FROM base\n<line>`.
    fn command(line: &str) -> Instruction {
        let (mut stages, _) = stages(&format!("FROM base\n{line}\n"));
        stages.remove(0).commands.remove(0).instruction
    }

    fn error(text: &str) -> (String, usize) {
        match parse_stages(&parse(text).unwrap()).unwrap_err() {
            e @ StageError::Instruction(InstructionError { start_line, .. }) => (e.to_string(), start_line),
            e @ StageError::NoStage { start_line, .. } => (e.to_string(), start_line),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn stages_and_meta_args() {
        let text = "ARG BASE=alpine\nARG V\n# build compiles\nFROM --platform=$BUILDPLATFORM ${BASE} AS Build\nRUN make\n\nfrom build\nCOPY --from=build /a /b\n";
        let (stages, meta) = stages(text);
        assert_eq!(meta.len(), 2);
        assert_eq!(
            meta[0].args[0],
            ArgDefinition { key: "BASE".into(), value: Some("alpine".into()), doc_comment: String::new() }
        );
        assert_eq!(meta[1].args[0].value, None);
        assert_eq!(stages.len(), 2);
        let s = &stages[0];
        assert_eq!(
            (s.name.as_str(), s.base_name.as_str(), s.platform.as_str(), s.orig_cmd.as_str()),
            ("build", "${BASE}", "$BUILDPLATFORM", "FROM")
        );
        assert_eq!((s.start_line, s.end_line, s.doc_comment.as_str()), (4, 4, "compiles"));
        assert_eq!(s.source_code, "FROM --platform=$BUILDPLATFORM ${BASE} AS Build");
        assert_eq!(s.commands.len(), 1);
        assert_eq!((s.commands[0].keyword.as_str(), s.commands[0].start_line), ("RUN", 5));
        assert_eq!((stages[1].name.as_str(), stages[1].orig_cmd.as_str()), ("", "from"));
        // ARGs after the first FROM belong to the stage.
        let (stages, meta) = stages_of("FROM a\nARG X\n");
        assert!(meta.is_empty());
        assert!(matches!(stages[0].commands[0].instruction, Instruction::Arg(_)));
    }

    fn stages_of(text: &str) -> (Vec<Stage>, Vec<ArgCommand>) {
        stages(text)
    }

    #[test]
    fn run_flags_and_forms() {
        let Instruction::Run(run) = command(
            "RUN --network=none --security=insecure --mount=type=cache,target=/c --device=/dev/fuse,required make all",
        ) else {
            panic!()
        };
        assert_eq!(
            run.cmd,
            ShellDependentCmdLine { cmd_line: strings(&["make all"]), files: vec![], prepend_shell: true }
        );
        assert_eq!((run.network, run.security), (NetworkMode::None, Security::Insecure));
        assert_eq!(run.devices, [Device { name: "/dev/fuse".into(), required: true }]);
        assert_eq!(run.mount_specs, ["type=cache,target=/c"]);
        assert_eq!(run.flags_used, ["device", "mount", "network", "security"]);

        let Instruction::Run(run) = command(r#"RUN ["echo", "a b"]"#) else { panic!() };
        assert_eq!((run.cmd.cmd_line, run.cmd.prepend_shell), (strings(&["echo", "a b"]), false));
        assert_eq!((run.network, run.security), (NetworkMode::Default, Security::Sandbox));

        let Instruction::Run(run) = command("RUN <<-EOF bash\n\techo hi\n\tEOF") else { panic!() };
        assert_eq!(run.cmd.cmd_line, ["<<-EOF bash"]);
        assert_eq!(
            run.cmd.files,
            [ShellInlineFile { name: "EOF".into(), data: "\techo hi\n".into(), chomp: true }]
        );
        let Instruction::Run(run) = command("RUN --device=name=/dev/a,required=false true") else { panic!() };
        assert_eq!(run.devices, [Device { name: "/dev/a".into(), required: false }]);
    }

    fn mount(spec: &str) -> Result<Mount, String> {
        parse_mount(spec, Some(&mut |v: &str| Ok(v.replace("$DIR", "/expanded")))).map_err(|e| e.to_string())
    }

    #[test]
    fn mounts_with_every_key() {
        let m = mount("type=cache,id=go,target=/root/.cache,sharing=locked,mode=0750,uid=1000,gid=1000,from=builder,source=/src").unwrap();
        assert_eq!(m.mount_type, MountType::Cache);
        assert_eq!(
            (m.cache_id.as_str(), m.target.as_str(), m.from.as_str(), m.source.as_str()),
            ("go", "/root/.cache", "builder", "/src")
        );
        assert_eq!(
            (m.cache_sharing, m.mode, m.uid, m.gid, m.read_only),
            (Some(ShareMode::Locked), Some(0o750), Some(1000), Some(1000), false)
        );

        let m = mount("type=secret,id=npm,env=NPM_TOKEN,required,dst=/run/s").unwrap();
        assert_eq!(
            (m.mount_type, m.required, m.env.as_deref(), m.target.as_str(), m.read_only),
            (MountType::Secret, true, Some("NPM_TOKEN"), "/run/s", true)
        );
        let m = mount("type=ssh,required=true").unwrap();
        assert!(m.required && m.read_only);
        let m = mount("type=tmpfs,destination=/t,size=64m").unwrap();
        assert_eq!((m.size_limit, m.read_only), (64 << 20, false));
        assert_eq!(mount("type=tmpfs,target=/t,size=1.5GiB").unwrap().size_limit, 3 << 29);
        assert_eq!(mount("type=tmpfs,target=/t,size=512 kb").unwrap().size_limit, 512 << 10);
        let m = mount("target=$DIR,src=x,ro=false").unwrap();
        assert_eq!((m.mount_type, m.target.as_str(), m.read_only), (MountType::Bind, "/expanded", false));
        assert!(mount("target=/a,readwrite").is_ok_and(|m| !m.read_only));
        assert!(mount("type=cache,target=/a,readonly").is_ok_and(|m| m.read_only));
        assert!(mount("type=cache,target=/a,rw=0").is_ok_and(|m| m.read_only));
        assert_eq!(
            mount("type=Cache,Target=/a,sharing=PRIVATE").unwrap().cache_sharing,
            Some(ShareMode::Private)
        );
        assert_eq!(mount(r#""target=/a,b",type=bind"#).unwrap().target, "/a,b");
    }

    #[test]
    fn mount_errors() {
        let cases: &[(&str, &str)] = &[
            ("type=bnd", r#"unsupported mount type "bnd" (did you mean bind?)"#),
            ("type=volume", r#"unsupported mount type "volume""#),
            ("type=cache,sharing=sharred", r#"unsupported sharing value "sharred" (did you mean shared?)"#),
            ("tagret=/x", "unexpected key 'tagret' in 'tagret=/x' (did you mean target?)"),
            ("target", "invalid field 'target' must be a key=value pair"),
            ("required,type=secret,id=a", "unexpected key 'required' for mount type 'bind'"),
            ("type=bind,size=1", "unexpected key 'size' for mount type 'bind'"),
            ("type=tmpfs,size=lots", "invalid value for size: lots"),
            ("type=tmpfs,size=1x", "invalid value for size: 1x"),
            ("type=tmpfs,size=-1", "invalid value for size: -1"),
            ("ro=maybe", "invalid value for ro: maybe"),
            ("type=ssh,required=maybe", "invalid value for required: maybe"),
            ("type=cache,mode=9", "invalid value 9 for mode"),
            ("type=cache,uid=-1", "invalid value -1 for uid"),
            ("type=cache,gid=4294967296", "invalid value 4294967296 for gid"),
            ("type=bind,mode=0600", r#"mode not allowed for "bind" type mounts"#),
            ("type=tmpfs,uid=0", r#"uid not allowed for "tmpfs" type mounts"#),
            ("type=secret", "invalid secret mount. one of source, target required"),
            ("type=secret,id=a,from=b", "secret mount should not have a from"),
            ("type=secret,id=a,sharing=locked", "secret mount should not define sharing"),
            ("type=secret,src=a,id=b", "both source and id can't be set"),
            ("type=bind,sharing=locked", "invalid cache sharing set for bind mount"),
            ("", "failed to parse csv mounts: EOF"),
            (
                "a\"b",
                "failed to parse csv mounts: parse error on line 1, column 2: bare \" in non-quoted-field",
            ),
            (
                "\"a\"b",
                "failed to parse csv mounts: parse error on line 1, column 3: extraneous or missing \" in quoted-field",
            ),
            (
                "\"ab",
                "failed to parse csv mounts: parse error on line 1, column 2: extraneous or missing \" in quoted-field",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(mount(spec).unwrap_err(), *want, "{spec}");
        }
        // Without an expander only what upstream checks at parse time fails.
        assert!(parse_mount("type=$T,target=$D", None).is_ok());
        assert_eq!(
            parse_mount("from=$STAGE", None).unwrap_err().to_string(),
            "'from' doesn't support variable expansion, define alias stage instead"
        );
        assert!(parse_mount("from=stage$", None).is_ok());
        // Expansion errors surface as they are.
        let err = parse_mount(
            "target=${X",
            Some(&mut |w: &str| {
                crate::frontend::dockerfile::shell::Lexer::new('\\')
                    .process_word(w, &crate::frontend::dockerfile::shell::NoEnv)
            }),
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "failed to process \"${X\": unsupported modifier (\u{fffd}) in substitution"
        );
    }

    #[test]
    fn run_mounts_expand_with_the_callers_variables() {
        let Instruction::Run(run) = command("RUN --mount=type=$T,target=/c --mount=type=bind,target=/b true")
        else {
            panic!()
        };
        let mounts = run.mounts(&mut |w| Ok(w.replace("$T", "cache"))).unwrap();
        assert_eq!(
            mounts.iter().map(|m| m.mount_type).collect::<Vec<_>>(),
            [MountType::Cache, MountType::Bind]
        );
    }

    #[test]
    fn copy_and_add() {
        let Instruction::Copy(c) = command(
            "COPY --from=build --chown=1:2 --chmod=755 --link --parents --exclude=*.md --exclude=x a b /dst/",
        ) else {
            panic!()
        };
        assert_eq!(c.sources.source_paths, ["a", "b"]);
        assert_eq!(c.sources.dest_path, "/dst/");
        assert_eq!(
            (c.from.as_str(), c.chown.as_str(), c.chmod.as_str(), c.link, c.parents),
            ("build", "1:2", "755", true, true)
        );
        assert_eq!(c.exclude_patterns, ["*.md", "x"]);

        let Instruction::Copy(c) = command("COPY --link=false [\"a b\", \"/c\"]") else { panic!() };
        assert_eq!((c.sources.source_paths, c.link), (strings(&["a b"]), false));

        let Instruction::Copy(c) = command("COPY <<-EOF <<'RAW' src /dst\n\t\tx=$y\n\tEOF\n$z\nRAW") else {
            panic!()
        };
        assert_eq!(c.sources.source_paths, ["src"]);
        assert_eq!(
            c.sources.source_contents,
            [
                SourceContent { path: "EOF".into(), data: "x=$y\n".into(), expand: true },
                SourceContent { path: "RAW".into(), data: "$z\n".into(), expand: false },
            ]
        );

        let Instruction::Add(a) = command(
            "ADD --checksum=sha256:abc --keep-git-dir --unpack=false --chmod=644 --chown=u --link --exclude=e https://x/y.tgz /d",
        ) else {
            panic!()
        };
        assert_eq!(
            (a.checksum.as_str(), a.keep_git_dir, a.unpack, a.chmod.as_str(), a.chown.as_str(), a.link),
            ("sha256:abc", Some(true), Some(false), "644", "u", true)
        );
        assert_eq!(
            (a.sources.source_paths, a.exclude_patterns),
            (strings(&["https://x/y.tgz"]), strings(&["e"]))
        );
        let Instruction::Add(a) = command("ADD a b") else { panic!() };
        assert_eq!((a.keep_git_dir, a.unpack, a.link), (None, None, false));
    }

    #[test]
    fn config_instructions() {
        let cases: Vec<(&str, Instruction)> = vec![
            (
                "ENV A=1 B=\"x y\"",
                Instruction::Env(vec![
                    KeyValuePair { key: "A".into(), value: "1".into(), no_delim: false },
                    KeyValuePair { key: "B".into(), value: "\"x y\"".into(), no_delim: false },
                ]),
            ),
            (
                "ENV A x y",
                Instruction::Env(vec![KeyValuePair { key: "A".into(), value: "x y".into(), no_delim: true }]),
            ),
            (
                "LABEL a.b=c",
                Instruction::Label(vec![KeyValuePair {
                    key: "a.b".into(),
                    value: "c".into(),
                    no_delim: false,
                }]),
            ),
            ("MAINTAINER Jane", Instruction::Maintainer("Jane".into())),
            ("WORKDIR /app", Instruction::Workdir("/app".into())),
            ("USER 1000:1000", Instruction::User("1000:1000".into())),
            ("STOPSIGNAL SIGINT", Instruction::StopSignal("SIGINT".into())),
            ("STOPSIGNAL --ignored SIGINT", Instruction::StopSignal("SIGINT".into())),
            ("EXPOSE 8080 443/tcp 80", Instruction::Expose(strings(&["443/tcp", "80", "8080"]))),
            ("VOLUME /a  /b", Instruction::Volume(strings(&["/a", "/b"]))),
            ("VOLUME [\"/data\"]", Instruction::Volume(strings(&["/data"]))),
            ("SHELL [\"/bin/bash\", \"-c\"]", Instruction::Shell(strings(&["/bin/bash", "-c"]))),
            (
                "CMD [\"run\"]",
                Instruction::Cmd(ShellDependentCmdLine {
                    cmd_line: strings(&["run"]),
                    files: vec![],
                    prepend_shell: false,
                }),
            ),
            (
                "CMD serve  --port 1",
                Instruction::Cmd(ShellDependentCmdLine {
                    cmd_line: strings(&["serve  --port 1"]),
                    files: vec![],
                    prepend_shell: true,
                }),
            ),
            (
                "CMD []",
                Instruction::Cmd(ShellDependentCmdLine {
                    cmd_line: vec![],
                    files: vec![],
                    prepend_shell: false,
                }),
            ),
            (
                "ENTRYPOINT []",
                Instruction::Entrypoint(ShellDependentCmdLine {
                    cmd_line: vec![],
                    files: vec![],
                    prepend_shell: false,
                }),
            ),
            (
                "ENTRYPOINT exec app",
                Instruction::Entrypoint(ShellDependentCmdLine {
                    cmd_line: strings(&["exec app"]),
                    files: vec![],
                    prepend_shell: true,
                }),
            ),
            ("ONBUILD   RUN make", Instruction::Onbuild("RUN make".into())),
            ("onbuild copy --from=x a b", Instruction::Onbuild("copy --from=x a b".into())),
            ("ONBUILD RUN <<EOF\necho\nEOF", Instruction::Onbuild("RUN <<EOF\necho\nEOF".into())),
            (
                "ARG A B=2 C=",
                Instruction::Arg(ArgCommand {
                    args: vec![
                        ArgDefinition { key: "A".into(), value: None, doc_comment: String::new() },
                        ArgDefinition {
                            key: "B".into(),
                            value: Some("2".into()),
                            doc_comment: String::new(),
                        },
                        ArgDefinition {
                            key: "C".into(),
                            value: Some(String::new()),
                            doc_comment: String::new(),
                        },
                    ],
                    start_line: 2,
                    end_line: 2,
                }),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(command(line), want, "{line}");
        }
    }

    #[test]
    fn healthchecks() {
        let Instruction::Healthcheck(h) = command(
            "HEALTHCHECK --interval=5s --timeout=1m30s --start-period=1.5h --start-interval=250ms --retries=3 CMD curl -f http://x/",
        ) else {
            panic!()
        };
        assert_eq!(h.test, ["CMD-SHELL", "curl -f http://x/"]);
        assert_eq!(
            (h.interval, h.timeout, h.start_period, h.start_interval, h.retries),
            (
                Duration::from_secs(5),
                Duration::from_secs(90),
                Duration::from_secs(5400),
                Duration::from_millis(250),
                3
            )
        );
        let Instruction::Healthcheck(h) = command("HEALTHCHECK CMD [\"/probe\", \"-q\"]") else { panic!() };
        assert_eq!((h.test, h.interval), (strings(&["CMD", "/probe", "-q"]), Duration::ZERO));
        let Instruction::Healthcheck(h) = command("HEALTHCHECK --bogus NONE") else { panic!() };
        assert_eq!(h.test, ["NONE"]);
        let Instruction::Healthcheck(h) = command("HEALTHCHECK --interval=0 --timeout=1.5us500ms CMD x")
        else {
            panic!()
        };
        assert_eq!((h.interval, h.timeout), (Duration::ZERO, Duration::from_nanos(500_001_500)));
        // Flags are read byte-wise upstream, so `µs` arrives mangled and fails there too.
        let (message, _) = error("FROM a\nHEALTHCHECK --timeout=1µs CMD x");
        assert!(
            message.ends_with(r#"unknown unit "\xc3\x82\xc2\xb5s" in duration "1\xc3\x82\xc2\xb5s""#),
            "{message}"
        );
    }

    #[test]
    fn instruction_errors() {
        let cases: &[(&str, &str, usize)] = &[
            ("FROM a\nRUNN x", "unknown instruction: RUNN (did you mean RUN?)", 2),
            ("FROM a\nform x", "unknown instruction: form (did you mean from?)", 2),
            ("FROM a\nBOGUS x", "unknown instruction: BOGUS", 2),
            ("RUN x", "no build stage in current context", 1),
            ("FROM a\nRUN --mnt=x y", "unknown flag: --mnt (did you mean mount?)", 2),
            ("FROM a\nRUN --mount x", "missing a value on flag: --mount", 2),
            ("FROM a\nRUN --network=bad x", "invalid network mode \"bad\"", 2),
            ("FROM a\nRUN --network= x", "invalid network mode \"\"", 2),
            ("FROM a\nRUN --security=x x", "security \"x\" is not valid", 2),
            ("FROM a\nRUN --network=none --network=host x", "duplicate flag specified: --network", 2),
            ("FROM a\nRUN --device=a,b x", "invalid field 'b' must be a key=value pair", 2),
            ("FROM a\nRUN --device=name=a,name=b x", "device name already set to a", 2),
            ("FROM a\nRUN --device=a,foo=b x", "unexpected key 'foo' in 'foo=b'", 2),
            (
                "FROM a\nRUN --mount=from=$X x",
                "'from' doesn't support variable expansion, define alias stage instead",
                2,
            ),
            (
                "FROM a\nCOPY a",
                "COPY requires at least two arguments, but only one was provided. Destination could not be determined",
                2,
            ),
            (
                "FROM a\nADD a",
                "ADD requires at least two arguments, but only one was provided. Destination could not be determined",
                2,
            ),
            ("FROM a\nCOPY a <<EOF\nx\nEOF", "COPY cannot accept a heredoc as a destination", 2),
            ("FROM a\nCOPY --link=maybe a b", "expecting boolean value for flag --link, not: maybe", 2),
            ("FROM a\nCOPY --link= a b", "missing a value on flag: --link", 2),
            ("FROM a\nCOPY --chown a b", "missing a value on flag: --chown", 2),
            ("FROM a\nCOPY --checksum=x a b", "unknown flag: --checksum", 2),
            ("FROM a\nENV", "ENV requires at least one argument", 2),
            ("FROM a\nENV =x", "ENV names can not be blank", 2),
            ("FROM a\nENV --x a=b", "unknown flag: --x", 2),
            ("FROM a\nLABEL", "LABEL requires at least one argument", 2),
            ("ARG", "ARG requires at least one argument", 1),
            ("ARG =x", "ARG names can not be blank", 1),
            ("FROM a\nMAINTAINER", "MAINTAINER requires exactly one argument", 2),
            ("FROM a\nWORKDIR", "WORKDIR requires exactly one argument", 2),
            ("FROM a\nUSER", "USER requires exactly one argument", 2),
            ("FROM a\nSTOPSIGNAL", "STOPSIGNAL requires exactly one argument", 2),
            ("FROM a\nEXPOSE", "EXPOSE requires at least one argument", 2),
            ("FROM a\nVOLUME", "VOLUME requires at least one argument", 2),
            ("FROM a\nVOLUME [\"/a\", \" \"]", "VOLUME specified can not be an empty string", 2),
            ("FROM a\nSHELL sh -c", "SHELL requires the arguments to be in JSON form", 2),
            ("FROM a\nSHELL []", "SHELL requires at least one argument", 2),
            ("FROM a\nONBUILD", "ONBUILD requires at least one argument", 2),
            ("FROM a\nONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", 2),
            ("FROM a\nONBUILD from x", "FROM isn't allowed as an ONBUILD trigger", 2),
            ("FROM a\nONBUILD MAINTAINER x", "MAINTAINER isn't allowed as an ONBUILD trigger", 2),
            ("FROM a\nHEALTHCHECK", "HEALTHCHECK requires at least one argument", 2),
            ("FROM a\nHEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments", 2),
            ("FROM a\nHEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD", 2),
            ("FROM a\nHEALTHCHECK CMD []", "Missing command after HEALTHCHECK CMD", 2),
            ("FROM a\nHEALTHCHECK TEST x", "Unknown type \"TEST\" in HEALTHCHECK (try CMD)", 2),
            ("FROM a\nHEALTHCHECK --interval=1ns CMD x", "Interval \"interval\" cannot be less than 1ms", 2),
            ("FROM a\nHEALTHCHECK --timeout=-5s CMD x", "Interval \"timeout\" cannot be less than 1ms", 2),
            ("FROM a\nHEALTHCHECK --interval=x CMD x", "time: invalid duration \"x\"", 2),
            ("FROM a\nHEALTHCHECK --interval=5 CMD x", "time: missing unit in duration \"5\"", 2),
            ("FROM a\nHEALTHCHECK --interval=5d CMD x", "time: unknown unit \"d\" in duration \"5d\"", 2),
            (
                "FROM a\nHEALTHCHECK --interval=5é CMD x",
                "time: unknown unit \"\\xc3\\x83\\xc2\\xa9\" in duration \"5\\xc3\\x83\\xc2\\xa9\"",
                2,
            ),
            ("FROM a\nHEALTHCHECK --retries=x CMD x", "strconv.ParseInt: parsing \"x\": invalid syntax", 2),
            (
                "FROM a\nHEALTHCHECK --retries=3000000000 CMD x",
                "strconv.ParseInt: parsing \"3000000000\": value out of range",
                2,
            ),
            ("FROM a\nHEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)", 2),
            ("FROM", "FROM requires either one or three arguments", 1),
            ("FROM a b", "FROM requires either one or three arguments", 1),
            (
                "FROM a AS 1x",
                "invalid name for build stage: \"1x\", name can't start with a number or contain symbols",
                1,
            ),
            (
                "FROM a AS b$c",
                "invalid name for build stage: \"b$c\", name can't start with a number or contain symbols",
                1,
            ),
            ("FROM --bad a", "unknown flag: --bad", 1),
            (
                "FROM a\n\nRUN \\\n --mount=type=cache,target=/a,sharing=locked \\\n --network=nope x",
                "invalid network mode \"nope\"",
                3,
            ),
        ];
        for (text, message, line) in cases {
            let (got, got_line) = error(text);
            let want = if *message == "no build stage in current context" {
                (*message).to_owned()
            } else {
                format!("dockerfile parse error on line {line}: {message}")
            };
            assert_eq!((got, got_line), (want, *line), "{text:?}");
        }
    }

    #[test]
    fn parse_command_rejects_stages() {
        let ast = parse("RUN echo\nFROM a").unwrap();
        assert!(matches!(parse_command(&ast.nodes[0]).unwrap().instruction, Instruction::Run(_)));
        assert_eq!(
            parse_command(&ast.nodes[1]).unwrap_err().to_string(),
            "*instructions.Stage is not a command type"
        );
        // Only a hand-made node can carry a flag without dashes.
        let mut node = parse("COPY a b").unwrap().nodes.remove(0);
        node.flags = vec!["-x".into()];
        assert_eq!(parse_command(&node).unwrap_err().to_string(), "arg should start with -- : -x");
        let err = parse_command(&parse("COPY x").unwrap().nodes[0]).unwrap_err();
        assert_eq!(
            (err.to_string().as_str(), err.start_line),
            (
                "COPY requires at least two arguments, but only one was provided. Destination could not be determined",
                1
            )
        );
    }

    fn warnings(text: &str, check: &CheckConfig) -> Vec<(String, String, usize)> {
        parse_stages_with_checks(&parse(text).unwrap(), check)
            .unwrap()
            .warnings
            .into_iter()
            .map(|w| (w.rule.name.to_owned(), w.message, w.start_line))
            .collect()
    }

    fn w(rule: &str, message: &str, line: usize) -> (String, String, usize) {
        (rule.to_owned(), message.to_owned(), line)
    }

    #[test]
    fn build_checks() {
        let all = CheckConfig { experimental_all: true, ..CheckConfig::default() };
        let text = "FROM a AS Build\nMAINTAINER me\nfrom b as x\nFROM c as y\n# wrong words\nARG A\nFROM d AS scratch\nFROM e AS x\n";
        assert_eq!(
            warnings(text, &all),
            [
                w("StageNameCasing", "Stage name 'Build' should be lowercase", 1),
                w("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label", 2),
                w("FromAsCasing", "'as' and 'FROM' keywords' casing do not match", 4),
                w(
                    "InvalidDefinitionDescription",
                    "Comment for ARG should follow the format: `# A <description>`",
                    6
                ),
                w(
                    "ReservedStageName",
                    "Stage name should not use the same name as reserved stage \"scratch\"",
                    7
                ),
                w("DuplicateStageName", "Duplicate stage name \"x\", stage names should be unique", 8),
                w(
                    "ConsistentInstructionCasing",
                    "Command 'from' should match the case of the command majority (uppercase)",
                    3
                ),
            ]
        );
        // Experimental checks need opting in; skips apply globally and per instruction.
        let default = CheckConfig::default();
        assert!(!warnings(text, &default).iter().any(|w| w.0 == "InvalidDefinitionDescription"));
        let skip = CheckConfig::parse("skip=StageNameCasing,MaintainerDeprecated").unwrap();
        assert!(
            !warnings(text, &skip).iter().any(|w| w.0 == "StageNameCasing" || w.0 == "MaintainerDeprecated")
        );
        let text = "FROM a\n# check=skip=MaintainerDeprecated\nMAINTAINER me\nMAINTAINER you\n";
        assert_eq!(
            warnings(text, &default),
            [w("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label", 4)]
        );
        // A matching description passes, and plain parse_stages reports nothing.
        assert!(warnings("# A the a\nARG A\n# b builds\nFROM x AS b\n", &all).is_empty());
        assert_eq!(stages("# stage doc\nFROM a AS stage\n").0[0].doc_comment, "doc");
    }

    #[test]
    fn go_number_and_duration_parsing() {
        assert_eq!(parse_go_duration("1h2m3.5s"), Ok(3_723_500_000_000));
        assert_eq!(parse_go_duration("-1.5ms"), Ok(-1_500_000));
        assert_eq!(parse_go_duration("+0"), Ok(0));
        assert_eq!(parse_go_duration(".5us"), Ok(500));
        assert_eq!(parse_go_duration("3μs"), Ok(3000));
        assert_eq!(parse_go_duration("9223372036854775807ns"), Ok(i64::MAX));
        assert_eq!(
            parse_go_duration("9223372036854775808ns").unwrap_err(),
            "time: invalid duration \"9223372036854775808ns\""
        );
        assert_eq!(parse_go_duration("").unwrap_err(), "time: invalid duration \"\"");
        assert_eq!(parse_go_duration(".s").unwrap_err(), "time: invalid duration \".s\"");
        assert_eq!(parse_go_i32("+42").ok(), Some(42));
        assert_eq!(parse_go_i32("-2147483648").ok(), Some(i32::MIN));
        assert!(parse_go_i32("1_0").is_err());
        assert_eq!(parse_go_u32("0755", 8), Some(0o755));
        assert_eq!(parse_go_u32("+7", 8), None);
        assert_eq!(ram_in_bytes("1k"), Some(1024));
        assert_eq!(ram_in_bytes("2 MiB"), Some(2 << 20));
        assert_eq!(ram_in_bytes("10b"), Some(10));
        assert_eq!(ram_in_bytes("1kbb"), None);
        assert_eq!(ram_in_bytes("k"), None);
        assert_eq!(csv_fields("a,,\"b,\"\"c\"\"\",").unwrap(), ["a", "", "b,\"c\"", ""]);
    }
}
