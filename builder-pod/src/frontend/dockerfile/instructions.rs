//! Typed instructions and build stages from the AST
//! (`frontend/dockerfile/instructions`). Values stay unexpanded: variable
//! expansion needs the build's ARG/ENV state and happens during conversion,
//! except where BuildKit validates at parse time (network, security,
//! devices, the `from` of a mount, stage names).

mod commands;
mod errors;
mod flags;
mod mounts;
mod parse;
#[cfg(test)]
mod tests;

pub(crate) use self::commands::{
    AddCommand, ArgCommand, ArgDefinition, Command, CopyCommand, Device, Healthcheck, Instruction,
    KeyValuePair, NetworkMode, RunCommand, Security, ShellDependentCmdLine, ShellInlineFile, SourceContent,
    SourcesAndDest, Stage, Stages,
};
pub(crate) use self::errors::{InstructionError, InstructionErrorKind, StageError, Suggestion};
pub(crate) use self::mounts::{Expander, Mount, MountType, ShareMode, parse_mount};
pub(crate) use self::parse::{parse_command, parse_stages, parse_stages_with_checks};
