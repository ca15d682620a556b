//! Dispatching instructions onto LLB states (dockerfile2llb `dispatch`):
//! every needed stage in Dockerfile order, variable expansion with the
//! stage's env, the instructions that change the build state (ENV, WORKDIR,
//! USER, ARG), and the `[stage n/total]` names of the steps. RUN, COPY/ADD
//! and the instructions that only write the image config have their own
//! modules.

use std::collections::BTreeSet;

use sha2::{Digest as _, Sha256};

use super::error::{Lines, Result};
use super::{Cmd, Converter, Image};
use crate::frontend::dockerfile::instructions::{ArgCommand, Command, Instruction, KeyValuePair};
use crate::frontend::dockerfile::linter::{checks, rules};
use crate::frontend::dockerfile::shell::{Env, Lexer, ShellError};
use crate::frontend::dockerfile::suggest;
use crate::frontend::llb::{self, Constraints, EnvList, Platform, format_platform_all};
use crate::util::gopath;

impl Converter<'_> {
    /// `prefixCommand`: `[stage n/total] ` before a step's name.
    pub(super) fn prefix_command(
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
    pub(super) fn dispatch_stages(&mut self, reachable: &BTreeSet<usize>) -> Result<()> {
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
            Instruction::Maintainer(m) => self.dispatch_maintainer(i, &m),
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
            Instruction::Cmd(c) => self.dispatch_cmd(i, &keyword, &c, lines, &comments),
            Instruction::Entrypoint(c) => self.dispatch_entrypoint(i, &keyword, &c, lines, &comments),
            Instruction::Healthcheck(h) => self.dispatch_healthcheck(i, &keyword, &h, lines, &comments),
            Instruction::Expose(ports) => self.dispatch_expose(i, &ports, lines, &comments)?,
            Instruction::User(user) => {
                let d = &mut self.states[i];
                d.state = d.state.user(&user);
                d.image.config.user.clone_from(&user);
                d.image.commit(&format!("USER {user}"), false, false, self.epoch);
            }
            Instruction::Volume(volumes) => self.dispatch_volume(i, &volumes)?,
            Instruction::StopSignal(signal) => self.dispatch_stop_signal(i, signal)?,
            Instruction::Shell(shell) => self.dispatch_shell(i, shell),
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
    pub(super) fn report_unmatched(
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
            let msg = rules::undefined_var(var, suggest(var, &options, true).as_deref());
            self.warn(&rules::UNDEFINED_VAR, msg, lines, comments);
        }
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
                self.warn(
                    &rules::LEGACY_KEY_VALUE_FORMAT,
                    rules::legacy_key_value_format(keyword),
                    lines,
                    comments,
                );
            }
            if checks::looks_secret(&p.key) {
                self.warn(
                    &rules::SECRETS_USED_IN_ARG_OR_ENV,
                    rules::secrets_used_in_arg_or_env("ENV", &p.key),
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
                self.warn(&rules::WORKDIR_RELATIVE_PATH, rules::workdir_relative_path(path), lines, comments);
            }
            self.states[i].workdir_set = true;
        }
        let d = &mut self.states[i];
        let current =
            if d.image.config.working_dir.is_empty() { "/" } else { d.image.config.working_dir.as_str() };
        let wd = if path.is_empty() {
            gopath::join(&["/", current])
        } else if path.starts_with('/') {
            gopath::clean(path)
        } else {
            gopath::join(&["/", current, path])
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
            if checks::looks_secret(&def.key) {
                self.warn(
                    &rules::SECRETS_USED_IN_ARG_OR_ENV,
                    rules::secrets_used_in_arg_or_env("ARG", &def.key),
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

    /// A deterministic stand-in for upstream's random progress group ids.
    pub(super) fn progress_group_id(&self, i: usize) -> String {
        let d = &self.states[i];
        let seed = format!("{}:{}:{}", self.digest_seed, d.stage_name, d.cmd_index);
        hex::encode(Sha256::digest(seed.as_bytes()))[..25].to_owned()
    }
}

/// Build args the frontend reads itself and never puts in a step's env.
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// `withShell`.
pub(super) fn with_shell(img: &Image, args: &[String]) -> Vec<String> {
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

pub(super) fn uppercase_cmd(s: &str) -> String {
    match s.split_once(' ') {
        Some((first, rest)) => format!("{} {rest}", first.to_uppercase()),
        None => s.to_uppercase(),
    }
}

pub(super) fn process_cmd_env(lexer: &Lexer, cmd: &str, env: &dyn Env) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_platforms_format_for_cross_builds() {
        let amd = Platform::new("linux", "amd64", None);
        assert_eq!(format_target_platform(&amd, Some(Platform::new("linux", "arm64", None))), "->arm64");
        assert_eq!(format_target_platform(&amd, Some(Platform::new("linux", "arm", Some("v7")))), "->arm/v7");
        assert_eq!(
            format_target_platform(&amd, Some(Platform::new("windows", "amd64", None))),
            "->windows/amd64"
        );
        assert_eq!(format_target_platform(&amd, Some(amd.clone())), "");
        assert_eq!(format_target_platform(&amd, None), "");
        let mut env = EnvList::default();
        env.set("TARGETARCH", "arm64");
        assert_eq!(platform_from_env(&env).map(|p| p.architecture), Some("arm64".to_owned()));
    }
}
