//! RUN (`dispatchRun`, `convert_runmount.go`, `convert_secrets.go`,
//! `convert_ssh.go`): the shell or exec form, heredocs, and `--mount`,
//! `--network`, `--security`.

use std::collections::BTreeSet;

use super::dispatch::{process_cmd_env, uppercase_cmd, with_shell};
use super::{ConvertErrorKind, Converter, DESCRIPTION_COMMAND, Fail, Lines, Result};
use crate::frontend::dockerfile::instructions::{
    self, MountType, NetworkMode, RunCommand, Security, ShareMode,
};
use crate::frontend::dockerfile::parser;
use crate::frontend::llb::{
    self, CacheSharing, Constraints, EnvList, ExecOptions, FileAction, MkdirInfo, MkfileInfo, Mount, NetMode,
    SecretInfo, SecurityMode, SshInfo, State, caps,
};
use crate::util::gopath;

impl Converter<'_> {
    pub(super) fn dispatch_run(
        &mut self,
        i: usize,
        source_code: &str,
        run: &RunCommand,
        sources: &[usize],
        lines: Lines,
        comments: &[String],
    ) -> Result<()> {
        let env = self.states[i].state.env().clone();
        let lexer = self.lexer.clone();
        let mut unmatched = BTreeSet::new();
        let mounts = run
            .mounts(&mut |w| {
                let e = lexer.process_word_with_matches(w, &env)?;
                unmatched.extend(e.unmatched);
                Ok(e.result)
            })
            .map_err(ConvertErrorKind::Instruction)?;
        self.report_unmatched(i, unmatched, lines, comments);

        let platform = self.states[i].platform.clone().unwrap_or_else(|| self.target_platform.clone());
        let mut custom_name = source_code.to_owned();
        let mut args = run.cmd.cmd_line.clone();
        let mut exec_mounts = Vec::new();
        if !run.cmd.files.is_empty() {
            let [script] = args.as_slice() else { return Err(ConvertErrorKind::RunCommand(args).into()) };
            if !run.cmd.prepend_shell {
                return Err(ConvertErrorKind::RunCommand(args).into());
            }
            if parser::parse_heredoc(script).ok().flatten().is_some() {
                let file = &run.cmd.files[0];
                let data =
                    if file.chomp { parser::chomp_heredoc_content(&file.data) } else { file.data.clone() };
                if self.states[i].image.os != "windows" && data.starts_with("#!") {
                    // A script with its own interpreter runs as a file.
                    let script = State::scratch().dir("/").file(
                        FileAction::new().mkfile(&file.name, 0o755, data.as_bytes(), MkfileInfo::default()),
                        Constraints::new()
                            .custom_name("[internal] preparing inline document")
                            .platform(platform.clone()),
                    );
                    exec_mounts.push(Mount::new("/dev/pipes/", &script).selector("/").readonly());
                    args = vec![gopath::join(&["/dev/pipes/", &file.name])];
                } else {
                    args = vec![data];
                }
                custom_name.push_str(&format!(" ({})", summarize_heredoc(&file.data)));
            } else {
                let mut joined = script.clone();
                for file in &run.cmd.files {
                    joined.push('\n');
                    joined.push_str(&file.data);
                    joined.push_str(&file.name);
                }
                args = vec![joined];
            }
        }
        if run.cmd.prepend_shell {
            args = with_shell(&self.states[i].image, &args);
        }

        let (mut more_mounts, secrets, ssh) = self.run_mounts(i, &mounts, sources)?;
        exec_mounts.append(&mut more_mounts);
        let caps = &self.opts.llb_caps;
        if !run.devices.is_empty() && caps.contains(caps::EXEC_META_CDI) {
            return Err(ConvertErrorKind::Devices.into());
        }
        if self.opts.shm_size > 0 && caps.contains(caps::EXEC_MOUNT_TMPFS_SIZE) {
            exec_mounts.push(Mount::new("/dev/shm", &State::scratch()).tmpfs(self.opts.shm_size));
        }

        let mut masked = env.clone();
        for m in &mounts {
            if let (MountType::Secret, Some(name)) = (m.mount_type, &m.env) {
                masked.set(name, "****");
            }
        }
        let mut shlex = self.lexer.clone();
        shlex.raw_quotes = true;
        shlex.skip_unset_env = true;
        let name = uppercase_cmd(&process_cmd_env(&shlex, &custom_name, &masked));
        let state_platform = self.states[i].state.get_platform().cloned();
        let custom = self.prefix_command(i, &name, state_platform.as_ref(), Some(&env));

        let mut c = Constraints::new()
            .description(DESCRIPTION_COMMAND, source_code)
            .location(self.location(lines))
            .custom_name(custom);
        if self.states[i].ignore_cache {
            c = c.ignore_cache();
        }
        let opts = ExecOptions {
            args: args.clone(),
            proxy_env: self.proxy_env.clone(),
            network: match run.network {
                NetworkMode::Default => None,
                NetworkMode::None => Some(NetMode::None),
                NetworkMode::Host => Some(NetMode::Host),
            },
            security: Some(match run.security {
                Security::Sandbox => SecurityMode::Sandbox,
                Security::Insecure => SecurityMode::Insecure,
            }),
            extra_hosts: self.opts.extra_hosts.clone(),
            ulimits: if caps.contains(caps::EXEC_META_ULIMIT) {
                self.opts.ulimits.clone()
            } else {
                Vec::new()
            },
            cgroup_parent: (!self.opts.cgroup_parent.is_empty()
                && caps.contains(caps::EXEC_META_CGROUP_PARENT))
            .then(|| self.opts.cgroup_parent.clone()),
            secrets,
            ssh,
            constraints: c,
            ..ExecOptions::default()
        };
        let d = &mut self.states[i];
        d.state = d.state.run(opts, exec_mounts).root();
        let message = format!("RUN {}", run_command_string(&args, &d.build_args, &env));
        d.image.commit(&message, true, true, self.epoch);
        Ok(())
    }

    /// `dispatchRunMounts`: bind, cache and tmpfs mounts, plus the secrets
    /// and SSH sockets the exec takes separately.
    fn run_mounts(
        &mut self,
        i: usize,
        mounts: &[instructions::Mount],
        sources: &[usize],
    ) -> Result<(Vec<Mount>, Vec<SecretInfo>, Vec<SshInfo>)> {
        let mut out = Vec::new();
        let mut secrets = Vec::new();
        let mut ssh = Vec::new();
        for (index, m) in mounts.iter().enumerate() {
            let mut from = m.from.clone();
            if from.is_empty() && m.mount_type == MountType::Cache {
                from = "scratch".to_owned();
            }
            let mut st = self.context.state();
            if !from.is_empty() {
                let source = sources.get(index).copied().map(|s| &self.states[s]);
                match source {
                    Some(s) if s.dispatched => st = s.state.clone(),
                    _ => {
                        let kind = ConvertErrorKind::MountFromLater {
                            from: m.from.clone(),
                            target: m.target.clone(),
                        };
                        return Err(Fail::new(kind));
                    }
                }
            }
            match m.mount_type {
                MountType::Secret => {
                    secrets.push(secret(m)?);
                    continue;
                }
                MountType::Ssh => {
                    ssh.push(ssh_socket(m)?);
                    continue;
                }
                _ => {}
            }
            let mut target = m.target.clone();
            if !gopath::clean(&m.target).starts_with('/') {
                target = gopath::join(&["/", self.states[i].state.get_dir(), &m.target]);
            }
            if target == "/" {
                return Err(ConvertErrorKind::MountTarget(target).into());
            }
            let mut selector = String::new();
            let source = gopath::join(&["/", &m.source]);
            if source != "/" {
                selector = source;
            } else if m.uid.is_some() || m.gid.is_some() || m.mode.is_some() {
                st = st.file(
                    FileAction::new().mkdir(
                        "/cache",
                        m.mode.unwrap_or(0o755),
                        MkdirInfo {
                            chown: Some(llb::ChownOpt::ids(m.uid.unwrap_or(0), m.gid.unwrap_or(0))),
                            ..MkdirInfo::default()
                        },
                    ),
                    Constraints::new().custom_name("[internal] setting cache mount permissions"),
                );
                selector = "/cache".to_owned();
            }
            if m.mount_type == MountType::Tmpfs {
                st = State::scratch();
            }
            let mut mount = Mount::new(&target, &st);
            if !selector.is_empty() {
                mount = mount.selector(&selector);
            }
            if m.mount_type == MountType::Tmpfs {
                mount = mount.tmpfs(m.size_limit);
            }
            if m.read_only {
                mount = mount.readonly();
            } else if m.mount_type == MountType::Bind
                && self.opts.llb_caps.contains(caps::EXEC_MOUNT_BIND_READ_WRITE_NO_OUTPUT)
            {
                mount = mount.no_output();
            }
            if m.mount_type == MountType::Cache {
                let sharing = match m.cache_sharing {
                    Some(ShareMode::Private) => CacheSharing::Private,
                    Some(ShareMode::Locked) => CacheSharing::Locked,
                    Some(ShareMode::Shared) | None => CacheSharing::Shared,
                };
                let id = if m.cache_id.is_empty() { gopath::clean(&m.target) } else { m.cache_id.clone() };
                mount = mount.cache(&format!("{}/{id}", self.opts.cache_id_namespace), sharing);
            }
            out.push(mount);
            if from.is_empty() {
                self.states[i].ctx_paths.insert(gopath::join(&["/", &m.source]));
            }
        }
        Ok((out, secrets, ssh))
    }
}

/// `dispatchSecret`: a file under `/run/secrets/<id>` unless a target or an
/// env variable is given.
fn secret(m: &instructions::Mount) -> Result<SecretInfo> {
    let mut id = if m.source.is_empty() { m.cache_id.clone() } else { m.source.clone() };
    if id.is_empty() {
        if m.target.is_empty() {
            return Err(ConvertErrorKind::SecretTarget.into());
        }
        id = gopath::base(&m.target).to_owned();
    }
    let mut target = (!m.target.is_empty()).then(|| m.target.clone());
    if m.env.is_none() && target.is_none() {
        target = Some(format!("/run/secrets/{}", gopath::base(&id)));
    }
    let mut info = SecretInfo::new(&id, target.as_deref());
    info.optional = !m.required;
    info.env.clone_from(&m.env);
    if m.uid.is_some() || m.gid.is_some() || m.mode.is_some() {
        info.uid = m.uid.unwrap_or(0);
        info.gid = m.gid.unwrap_or(0);
        info.mode = m.mode.unwrap_or(0o400);
    }
    Ok(info)
}

/// `dispatchSSH`: the id stays empty when not given; the daemon reads
/// that as `default`.
fn ssh_socket(m: &instructions::Mount) -> Result<SshInfo> {
    if !m.source.is_empty() {
        return Err(ConvertErrorKind::SshSource.into());
    }
    let mut info = SshInfo::new(&m.cache_id);
    info.target.clone_from(&m.target);
    info.optional = !m.required;
    if m.uid.is_some() || m.gid.is_some() || m.mode.is_some() {
        info.uid = m.uid.unwrap_or(0);
        info.gid = m.gid.unwrap_or(0);
        info.mode = m.mode.unwrap_or(0o600);
    }
    Ok(info)
}

/// The first line of a heredoc, `...` when there are more.
fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim();
    let normalized = doc.replace("\r\n", "\n");
    let mut lines = normalized.split('\n');
    let first = lines.next().unwrap_or_default().to_owned();
    if lines.next().is_some() { format!("{first}...") } else { first }
}

/// `runCommandString`: the history line, prefixed with the stage's build
/// args as `|N K=V …` the way the classic builder recorded them.
fn run_command_string(args: &[String], build_args: &[(String, Option<String>)], env: &EnvList) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in build_args {
        let value = env.get(k).map(str::to_owned).unwrap_or_else(|| v.clone().unwrap_or_default());
        match pairs.iter_mut().find(|(key, _)| key == k) {
            Some(p) => p.1 = value,
            None => pairs.push((k.clone(), value)),
        }
    }
    let mut words: Vec<String> = Vec::new();
    if !pairs.is_empty() {
        words.push(format!("|{}", pairs.len()));
        words.extend(pairs.into_iter().map(|(k, v)| format!("{k}={v}")));
    }
    words.extend(args.iter().cloned());
    words.join(" ")
}
