//! The stage graph (dockerfile2llb `toDispatchState`): the automatic and
//! global build args, one dispatch state per stage (and per image a
//! `COPY --from` or `--mount from=` names), base names and platforms
//! expanded, the dependencies between states and the check for cycles.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{ConvertErrorKind, Fail, Lines, Result};
use super::{Cmd, Converter, DispatchState, SCRATCH, named};
use crate::frontend::dockerfile::instructions::{self, Command, Instruction, Stage};
use crate::frontend::dockerfile::linter::rules;
use crate::frontend::dockerfile::shell::{Expansion, NoEnv};
use crate::frontend::dockerfile::suggest;
use crate::frontend::llb::{EnvList, Platform, format_platform, format_platform_all};
use crate::source::image::Reference;
use crate::util::strconv;

impl Converter<'_> {
    /// `defaultArgs`: the automatic platform and target args.
    pub(super) fn default_args(&self, target: &str) -> EnvList {
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
    pub(super) fn meta_args(
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
    pub(super) fn validate_base_images_with_default_args(&mut self, defaults: &EnvList) {
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
            let msg = rules::invalid_default_arg_in_from(&base);
            self.warn(&rules::INVALID_DEFAULT_ARG_IN_FROM, msg, lines, &[]);
        }
    }

    pub(super) fn names(&self) -> Vec<String> {
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
    pub(super) fn build_dispatch_states(&mut self) -> Result<()> {
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
            found.push(rules::undefined_arg_in_from(arg, suggest(arg, &options, true).as_deref()));
        }
        for msg in found {
            self.warn(&rules::UNDEFINED_ARG_IN_FROM, msg, lines, comments);
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
                &rules::REDUNDANT_TARGET_PLATFORM,
                rules::redundant_target_platform(&st.platform),
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
                &rules::FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                rules::from_platform_flag_const_disallowed(&m.result),
                lines,
                &st.comments,
            );
        }
    }

    pub(super) fn resolve_target(&self) -> Result<usize> {
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
    pub(super) fn command_sources(&mut self, command: Command) -> Result<(Cmd, Vec<usize>)> {
        let lines = (command.start_line, command.end_line);
        let mut sources = Vec::new();
        let mut unregistered = Vec::new();
        match &command.instruction {
            Instruction::Copy(c) if !c.from.is_empty() => {
                let from = c.from.clone();
                if self.lexer.process_word(&from, &NoEnv)? != from {
                    return Err(ConvertErrorKind::FromVariable.into());
                }
                let source = match strconv::atoi(&from).ok() {
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

    pub(super) fn add_dep(&mut self, state: usize, dep: usize, lines: Lines) {
        let deps = &mut self.states[state].deps;
        match deps.iter_mut().find(|(d, _)| *d == dep) {
            Some(entry) => entry.1 = lines,
            None => deps.push((dep, lines)),
        }
    }

    /// `buildStageDependencyGraph`.
    pub(super) fn build_dependency_graph(&mut self) -> Result<()> {
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

    pub(super) fn reachable_from(&self, target: usize) -> BTreeSet<usize> {
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
    pub(super) fn init_state(&mut self, i: usize) {
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
