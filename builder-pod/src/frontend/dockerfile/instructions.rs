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
    AddCommand, ArgCommand, Command, CopyCommand, Healthcheck, Instruction, KeyValuePair, NetworkMode,
    RunCommand, Security, ShellDependentCmdLine, SourcesAndDest, Stage,
};
pub(crate) use self::errors::{InstructionError, InstructionErrorKind, StageError};
pub(crate) use self::mounts::{Mount, MountType, ShareMode, parse_mount};
pub(crate) use self::parse::{parse_command, parse_stages_with_checks};
