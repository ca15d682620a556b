//! The instruction and stage types (`instructions/commands.go`): values
//! as written, unexpanded.

use std::time::Duration;

use crate::frontend::dockerfile::linter::Warning;

/// A `key=value` of ENV or LABEL, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyValuePair {
    pub key: String,
    pub value: String,
    /// Written in the legacy `KEY value` form.
    pub no_delim: bool,
}

/// An ARG: a name with an optional default, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArgDefinition {
    pub key: String,
    pub value: Option<String>,
    /// The text of a `# NAME description` comment directly above.
    pub doc_comment: String,
}

/// An ARG instruction (also the meta ARGs before the first FROM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArgCommand {
    pub args: Vec<ArgDefinition>,
    pub start_line: usize,
    pub end_line: usize,
}

/// A heredoc used as the script or an extra file of a RUN/CMD/ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShellInlineFile {
    pub name: String,
    /// The body as written; `chomp` (`<<-`) still has to be applied.
    pub data: String,
    pub chomp: bool,
}

/// A command line in shell form (one string, run through the SHELL) or exec form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShellDependentCmdLine {
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
pub(crate) struct SourceContent {
    /// The heredoc name, used as the file name.
    pub path: String,
    /// The body, with leading tabs already removed for `<<-`.
    pub data: String,
    /// Expand variables in the body (the delimiter was not quoted).
    pub expand: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourcesAndDest {
    pub dest_path: String,
    pub source_paths: Vec<String>,
    pub source_contents: Vec<SourceContent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddCommand {
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
pub(crate) struct CopyCommand {
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
pub(crate) enum NetworkMode {
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Security {
    Sandbox,
    Insecure,
}

/// A `--device` of RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Device {
    pub name: String,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunCommand {
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

/// A HEALTHCHECK as it lands in the image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Healthcheck {
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
pub(crate) enum Instruction {
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
pub(crate) struct Command {
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
pub(crate) struct Stage {
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
pub(crate) struct Stages {
    /// Possibly empty: the caller reports "dockerfile contains no stages to build".
    pub stages: Vec<Stage>,
    /// ARGs before the first FROM.
    pub meta_args: Vec<ArgCommand>,
    /// Build checks that fired and are enabled by the config.
    pub warnings: Vec<Warning>,
}
