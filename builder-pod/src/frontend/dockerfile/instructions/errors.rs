//! What can be wrong with an instruction or a stage; the texts are
//! BuildKit's (`instructions/errors_*.go`, `parse.go`, `bflag.go`).

use std::fmt;

use super::mounts::MountType;
use crate::frontend::dockerfile::shell::ShellError;
use crate::util::gotime::DurationError;
use crate::util::strconv::{NumError, quote};

/// ` (did you mean X?)` after a message, or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Suggestion(pub Option<String>);

impl fmt::Display for Suggestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, " (did you mean {s}?)"),
            None => Ok(()),
        }
    }
}

pub(super) fn suggestion(value: &str, options: &[&str], case_sensitive: bool) -> Suggestion {
    Suggestion(crate::frontend::dockerfile::suggest(value, options, case_sensitive))
}

/// What is wrong with one instruction; the texts are BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InstructionErrorKind {
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
    #[error("invalid name for build stage: {}, name can't start with a number or contain symbols", quote(.0))]
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
    #[error("Unknown type {} in HEALTHCHECK (try CMD)", quote(.0))]
    HealthcheckUnknownType(String),
    #[error("{0}")]
    Duration(DurationError),
    #[error("Interval {} cannot be less than 1ms", quote(.0))]
    IntervalTooShort(String),
    #[error("{0}")]
    Retries(NumError),
    #[error("--retries cannot be negative ({0})")]
    NegativeRetries(i64),
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("SHELL requires the arguments to be in JSON form")]
    ShellNotJson,
    #[error("invalid network mode {}", quote(.0))]
    InvalidNetwork(String),
    #[error("security {} is not valid", quote(.0))]
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
    #[error("unsupported mount type {}{suggestion}", quote(.value))]
    UnsupportedMountType { value: String, suggestion: Suggestion },
    #[error("unsupported sharing value {}{suggestion}", quote(.value))]
    UnsupportedSharing { value: String, suggestion: Suggestion },
    #[error("invalid value {value} for {key}")]
    InvalidNumber { key: &'static str, value: String },
    #[error("unexpected key '{key}' in '{field}'{suggestion}")]
    UnexpectedKey { key: String, field: String, suggestion: Suggestion },
    #[error("{what} not allowed for {} type mounts", quote(.mount_type.as_str()))]
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
pub(crate) struct InstructionError {
    pub kind: InstructionErrorKind,
    pub start_line: usize,
    pub end_line: usize,
}

/// Why a Dockerfile could not be split into stages. The texts are what
/// buildkitd returns (`instructions.Parse`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StageError {
    #[error("dockerfile parse error on line {}: {}", .0.start_line, .0.kind)]
    Instruction(InstructionError),
    /// An instruction other than ARG before the first FROM.
    #[error("no build stage in current context")]
    NoStage { start_line: usize, end_line: usize },
}
