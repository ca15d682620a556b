//! Conversion errors: what a user sees ([`ConvertError`], upstream's texts)
//! and the failure the converter passes around while it works ([`Fail`]).

use std::fmt;

use super::BoxError;
use crate::frontend::dockerfile::instructions::{InstructionErrorKind, StageError};
use crate::frontend::dockerfile::linter::LintError;
use crate::frontend::dockerfile::parser::ParseErrorKind;
use crate::frontend::dockerfile::shell::ShellError;
use crate::frontend::llb::LlbError;
use crate::util::strconv::{NumError, quote};

/// A conversion failure; `lines` are the Dockerfile lines it is about.
#[derive(Debug)]
pub(crate) struct ConvertError {
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
pub(crate) enum ConvertErrorKind {
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
    #[error("invalid SOURCE_DATE_EPOCH: {value}: {source}")]
    SourceDateEpoch { value: String, source: NumError },
    #[error("base name ({0}) should not be blank")]
    BlankBaseName(String),
    #[error("failed to process arguments for platform {result}: {source}")]
    PlatformArgs { result: String, source: ShellError },
    #[error("empty platform value from expression {expression}{}", suggestion_text(.suggestion))]
    EmptyPlatform { expression: String, suggestion: Option<String> },
    #[error("failed to parse platform {expression}: {reason}{}", suggestion_text(.suggestion))]
    InvalidPlatform { expression: String, reason: String, suggestion: Option<String> },
    #[error("target stage {} could not be found{}", quote(.target), suggestion_text(.suggestion))]
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
    #[error("failed to parse stage name {}: {reason}", quote(.name))]
    StageName { name: String, reason: String },
    #[error("failed to parse ref {}: {reason}", quote(.reference))]
    PinnedReference { reference: String, reason: String },
    #[error("{name}: {source}{}", suggestion_text(.suggestion))]
    ResolveImage { name: String, source: BoxError, suggestion: Option<String> },
    #[error("failed to parse image config: {0}")]
    ImageConfig(String),
    #[error("cannot copy from stage {}, it needs to be defined before current stage {}", quote(.from), quote(.stage))]
    CopyFromLater { from: String, stage: String },
    #[error("cannot mount from stage {} to {}, stage needs to be defined before current command", quote(.from), quote(.target))]
    MountFromLater { from: String, target: String },
    #[error("invalid mount target {}", quote(.0))]
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
    #[error("checksum mismatch {} != {}", quote(.0), quote(.1))]
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
pub(super) type Lines = (usize, usize);

/// A failure inside the converter; boxed so results stay small.
pub(super) struct Fail {
    pub(super) kind: Box<ConvertErrorKind>,
    pub(super) lines: Option<Lines>,
}

impl Fail {
    pub(super) fn new(kind: ConvertErrorKind) -> Self {
        Self { kind: Box::new(kind), lines: None }
    }

    /// `parser.WithLocation`: the innermost location is kept. Line 0 is
    /// no location (a state that no instruction names, such as the image
    /// of a `--mount from=`).
    pub(super) fn at(mut self, lines: Lines) -> Self {
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

pub(super) type Result<T, E = Fail> = std::result::Result<T, E>;
