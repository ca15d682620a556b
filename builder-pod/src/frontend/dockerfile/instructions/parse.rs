//! The AST to instructions and stages (`instructions/parse.go`): one parser
//! per instruction, the ARGs before the first FROM, and the build checks
//! that fire while parsing.

use std::time::Duration;

use super::commands::{
    AddCommand, ArgCommand, ArgDefinition, Command, CopyCommand, Healthcheck, Instruction, KeyValuePair,
    NetworkMode, RunCommand, Security, ShellDependentCmdLine, ShellInlineFile, SourceContent, SourcesAndDest,
    Stage, Stages,
};
use super::errors::{InstructionError, InstructionErrorKind, StageError, suggestion};
use super::flags::{FlagKind, Flags};
use super::mounts::{parse_device, parse_mount};
use crate::frontend::dockerfile::linter::{CheckConfig, Warning, checks, rules};
use crate::frontend::dockerfile::parser::{self, Args, Ast, Node};
use crate::util::{gotime, strconv};

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

/// Splits the AST into stages and the ARGs before the first FROM, running
/// the build checks BuildKit runs while parsing instructions and stages,
/// filtered by `check` (the `# check=` directive, adjusted per instruction
/// by a `# check=` comment above it).
pub(crate) fn parse_stages_with_checks(ast: &Ast, check: &CheckConfig) -> Result<Stages, StageError> {
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
    let named =
        stages.iter().filter(|s| !s.name.is_empty()).map(|s| (s.name.as_str(), s.start_line, s.end_line));
    let mut stage_warnings = checks::stage_names(named);
    let keywords: Vec<(&str, usize, usize)> = stages
        .iter()
        .flat_map(|s| {
            std::iter::once((s.orig_cmd.as_str(), s.start_line, s.end_line))
                .chain(s.commands.iter().map(|c| (c.keyword.as_str(), c.start_line, c.end_line)))
        })
        .collect();
    stage_warnings.extend(checks::instruction_casing(&keywords));
    warnings.extend(stage_warnings.into_iter().filter(|w| check.enabled(w.rule)));
    Ok(Stages { stages, meta_args, warnings })
}

/// Parses one instruction that must not be FROM, such as an ONBUILD trigger
/// re-parsed in a child build (`instructions.ParseCommand`).
pub(crate) fn parse_command(node: &Node) -> Result<Command, InstructionError> {
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
            warnings.push(Warning::new(
                &rules::MAINTAINER_DEPRECATED,
                rules::maintainer_deprecated(),
                start,
                end,
            ));
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
            warnings.extend(checks::definition_description("ARG", &keys, &node.comments, start, end));
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
    warnings.extend(checks::from_casing(&node.keyword, args, start, end));
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
        warnings.extend(checks::definition_description("FROM", &[name.as_str()], &node.comments, start, end));
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
        let n = strconv::parse_int(&retries, 10, 32).map_err(InstructionErrorKind::Retries)?;
        if n < 0 {
            return Err(InstructionErrorKind::NegativeRetries(n));
        }
        // Parsed as 32 bits, so it fits.
        check.retries = i32::try_from(n).unwrap_or(i32::MAX);
    }
    Ok(check)
}

/// A health check interval: empty or zero means unset, otherwise at least 1ms.
fn interval(flags: &Flags<'_>, name: &str) -> Result<Duration, InstructionErrorKind> {
    let value = flags.string(name);
    if value.is_empty() {
        return Ok(Duration::ZERO);
    }
    let nanos = gotime::parse_duration(&value).map_err(InstructionErrorKind::Duration)?;
    if nanos == 0 {
        return Ok(Duration::ZERO);
    }
    if nanos < 1_000_000 {
        return Err(InstructionErrorKind::IntervalTooShort(name.to_owned()));
    }
    Ok(Duration::from_nanos(nanos.unsigned_abs()))
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
