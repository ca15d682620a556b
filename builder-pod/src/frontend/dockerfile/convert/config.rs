//! The image config a stage describes: the instructions that only write
//! the config and its history (MAINTAINER, LABEL, CMD, ENTRYPOINT,
//! HEALTHCHECK, EXPOSE, VOLUME, STOPSIGNAL, SHELL; dockerfile2llb's
//! `dispatch*`), and the target stage's config and LLB as the build returns
//! them (`finalizeResultImage`).

use std::collections::BTreeSet;

use super::dispatch::with_shell;
use super::error::{ConvertErrorKind, Lines, Result};
use super::{Converted, Converter, Empty, image};
use crate::frontend::dockerfile::instructions::{Healthcheck, KeyValuePair, ShellDependentCmdLine};
use crate::frontend::dockerfile::linter::rules;
use crate::frontend::llb::{self, Constraints, LocalOptions, MarshalOptions};
use crate::util::gopath;
use crate::util::gotime::format_duration;
use crate::util::strconv::{self, quote, quote_rune};

impl Converter<'_> {
    pub(super) fn dispatch_maintainer(&mut self, i: usize, maintainer: &str) {
        let d = &mut self.states[i];
        d.image.author = maintainer.to_owned();
        d.image.commit(&format!("MAINTAINER {maintainer}"), false, false, self.epoch);
    }

    pub(super) fn dispatch_label(
        &mut self,
        i: usize,
        keyword: &str,
        pairs: &[KeyValuePair],
        lines: Lines,
        comments: &[String],
    ) {
        let mut message = "LABEL".to_owned();
        for p in pairs {
            if p.no_delim {
                self.warn(
                    &rules::LEGACY_KEY_VALUE_FORMAT,
                    rules::legacy_key_value_format(keyword),
                    lines,
                    comments,
                );
            }
            self.states[i].image.config.labels.insert(p.key.clone(), p.value.clone());
            message.push_str(&format!(" {}={}", p.key, p.value));
        }
        self.states[i].image.commit(&message, false, false, self.epoch);
    }

    pub(super) fn dispatch_cmd(
        &mut self,
        i: usize,
        keyword: &str,
        c: &ShellDependentCmdLine,
        lines: Lines,
        comments: &[String],
    ) {
        let previous = self.states[i].cmd_set.replace(lines);
        self.warn_repeated(previous, keyword, comments);
        let args = self.command_line(i, "CMD", keyword, c, lines, comments);
        let config = &mut self.states[i].image.config;
        config.cmd = args;
        config.args_escaped = true;
    }

    pub(super) fn dispatch_entrypoint(
        &mut self,
        i: usize,
        keyword: &str,
        c: &ShellDependentCmdLine,
        lines: Lines,
        comments: &[String],
    ) {
        let previous = self.states[i].entrypoint_set.replace(lines);
        self.warn_repeated(previous, keyword, comments);
        let args = self.command_line(i, "ENTRYPOINT", keyword, c, lines, comments);
        let d = &mut self.states[i];
        d.image.config.entrypoint = args;
        if d.cmd_set.is_none() {
            d.image.config.cmd.clear();
        }
    }

    /// The words CMD or ENTRYPOINT (`name`) sets, recorded in the history.
    fn command_line(
        &mut self,
        i: usize,
        name: &str,
        keyword: &str,
        c: &ShellDependentCmdLine,
        lines: Lines,
        comments: &[String],
    ) -> Vec<String> {
        let args = self.shell_form(i, keyword, &c.cmd_line, c.prepend_shell, lines, comments);
        self.states[i].image.commit(&format!("{name} {}", quote_list(&args)), false, false, self.epoch);
        args
    }

    pub(super) fn dispatch_healthcheck(
        &mut self,
        i: usize,
        keyword: &str,
        h: &Healthcheck,
        lines: Lines,
        comments: &[String],
    ) {
        let previous = self.states[i].healthcheck_set.replace(lines);
        self.warn_repeated(previous, keyword, comments);
        let nanos = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let hc = image::Healthcheck {
            test: h.test.clone(),
            interval: nanos(h.interval),
            timeout: nanos(h.timeout),
            start_period: nanos(h.start_period),
            start_interval: nanos(h.start_interval),
            retries: i64::from(h.retries),
        };
        // `%q` of upstream's Healthcheck struct.
        let message = format!(
            "HEALTHCHECK &{{{} {} {} {} {} {}}}",
            quote_list(&hc.test),
            quote(&format_duration(hc.interval)),
            quote(&format_duration(hc.timeout)),
            quote(&format_duration(hc.start_period)),
            quote(&format_duration(hc.start_interval)),
            quote_rune(hc.retries),
        );
        let d = &mut self.states[i];
        d.image.config.healthcheck = Some(hc);
        d.image.commit(&message, false, false, self.epoch);
    }

    /// `MultipleInstructionsDisallowed`, reported at the earlier one: only
    /// the last CMD, ENTRYPOINT or HEALTHCHECK of a stage counts.
    fn warn_repeated(&mut self, previous: Option<Lines>, keyword: &str, comments: &[String]) {
        if let Some(previous) = previous {
            let message = rules::multiple_instructions_disallowed(keyword);
            self.warn(&rules::MULTIPLE_INSTRUCTIONS_DISALLOWED, message, previous, comments);
        }
    }

    /// Shell form gets the stage's SHELL (`withShell`); CMD and ENTRYPOINT
    /// are told to prefer JSON.
    fn shell_form(
        &mut self,
        i: usize,
        keyword: &str,
        args: &[String],
        prepend_shell: bool,
        lines: Lines,
        comments: &[String],
    ) -> Vec<String> {
        if !prepend_shell {
            return args.to_vec();
        }
        if self.states[i].image.config.shell.is_empty() {
            self.warn(&rules::JSON_ARGS_RECOMMENDED, rules::json_args_recommended(keyword), lines, comments);
        }
        with_shell(&self.states[i].image, args)
    }

    pub(super) fn dispatch_volume(&mut self, i: usize, volumes: &[String]) -> Result<()> {
        if volumes.iter().any(String::is_empty) {
            return Err(ConvertErrorKind::EmptyVolume.into());
        }
        let d = &mut self.states[i];
        for v in volumes {
            d.image.config.volumes.insert(v.clone(), Empty {});
        }
        d.image.commit(&format!("VOLUME {}", list(volumes)), false, false, self.epoch);
        Ok(())
    }

    pub(super) fn dispatch_stop_signal(&mut self, i: usize, signal: String) -> Result<()> {
        if !valid_signal(&signal) {
            return Err(ConvertErrorKind::Signal(signal).into());
        }
        let d = &mut self.states[i];
        d.image.commit(&format!("STOPSIGNAL {signal}"), false, false, self.epoch);
        d.image.config.stop_signal = signal;
        Ok(())
    }

    pub(super) fn dispatch_shell(&mut self, i: usize, shell: Vec<String>) {
        let d = &mut self.states[i];
        d.image.commit(&format!("SHELL {}", list(&shell)), false, false, self.epoch);
        d.image.config.shell = shell;
    }

    pub(super) fn dispatch_expose(
        &mut self,
        i: usize,
        ports: &[String],
        lines: Lines,
        comments: &[String],
    ) -> Result<()> {
        let env = self.states[i].state.env().clone();
        let mut words = Vec::new();
        for p in ports {
            words.extend(self.lexer.process_words(p, &env)?);
        }
        let mut exposed = Vec::new();
        for raw in &words {
            let (ip, host_port, _) = split_port_parts(raw);
            let proto = raw.rsplit_once('/').map(|(_, p)| p).unwrap_or("");
            if proto != proto.to_lowercase() {
                self.warn(&rules::EXPOSE_PROTO_CASING, rules::expose_proto_casing(raw), lines, comments);
            }
            if !ip.is_empty() || !host_port.is_empty() {
                self.warn(&rules::EXPOSE_INVALID_FORMAT, rules::expose_invalid_format(raw), lines, comments);
            }
            exposed.extend(parse_port(raw).map_err(ConvertErrorKind::Port)?);
        }
        let d = &mut self.states[i];
        for p in &exposed {
            d.image.config.exposed_ports.insert(p.clone(), Empty {});
        }
        d.image.commit(&format!("EXPOSE {}", list(&exposed)), false, false, self.epoch);
        Ok(())
    }

    /// `finalizeResultImage` and marshalling.
    pub(super) fn finalize(&mut self, target: usize) -> Result<Converted> {
        let labels = self.opts.labels.clone();
        self.states[target].image.config.labels.extend(labels);
        if self.check.error && !self.called_rules.is_empty() {
            let rules = self.called_rules.iter().map(|r| (*r).to_owned()).collect();
            return Err(ConvertErrorKind::Lint(rules).into());
        }

        let mut paths: BTreeSet<String> = BTreeSet::new();
        for d in &self.states {
            paths.extend(d.ctx_paths.iter().cloned());
        }
        let follow_paths = if paths.contains("/") {
            Vec::new()
        } else {
            paths.iter().map(|p| gopath::join(&[".", p])).collect()
        };
        let context = llb::local(
            &self.opts.context_name,
            LocalOptions {
                session_id: self.opts.session_id.clone(),
                exclude_patterns: self.opts.dockerignore.clone(),
                follow_paths,
                shared_key_hint: self
                    .opts
                    .shared_key_hint
                    .clone()
                    .unwrap_or_else(|| self.opts.context_name.clone()),
                constraints: Constraints::new().custom_name("[internal] load build context"),
                ..LocalOptions::default()
            },
        );
        let context = self.opts.main_context.clone().unwrap_or(context);
        self.context.fill(&context)?;

        let tp = self.target_platform.clone();
        let img = &mut self.states[target].image;
        if !self.implicit_target {
            let same = tp.os == img.os && tp.architecture == img.architecture;
            img.os.clone_from(&tp.os);
            img.architecture.clone_from(&tp.architecture);
            if tp.variant.is_some() || !same {
                img.variant = tp.variant.clone().unwrap_or_default();
            }
            if tp.os_version.is_some() || !same {
                img.os_version = tp.os_version.clone().unwrap_or_default();
            }
            if let Some(f) = &tp.os_features {
                img.os_features.clone_from(f);
            }
        }
        let normalized = img.platform().normalize();
        img.os = normalized.os;
        img.architecture = normalized.architecture;
        img.variant = normalized.variant.unwrap_or_default();

        let definition = llb::marshal(
            &self.states[target].state,
            &MarshalOptions {
                platform: Some(self.target_platform.clone()),
                caps: Some(self.opts.llb_caps.clone()),
                local_unique_id: String::new(),
            },
        )?;
        let d = &self.states[target];
        let image_config = llb::go_json(&d.image, "image config")?;
        Ok(Converted { definition, image_config, warnings: std::mem::take(&mut self.warnings) })
    }
}

/// `signal.ParseSignal` on Linux.
fn valid_signal(raw: &str) -> bool {
    const NAMES: [&str; 34] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
        "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
        "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if let Ok(n) = strconv::atoi(raw) {
        return n != 0;
    }
    let name = raw.to_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    if NAMES.contains(&name) || name == "RTMIN" || name == "RTMAX" {
        return true;
    }
    let offset = |prefix: &str, max: u32| {
        name.strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| (1..=max).contains(&n))
    };
    offset("RTMIN+", 15) || offset("RTMAX-", 14)
}

/// `splitParts` of a port spec: `[ip:]host:container`.
fn split_port_parts(raw: &str) -> (String, String, String) {
    let parts: Vec<&str> = raw.split(':').collect();
    match parts.as_slice() {
        [c] => (String::new(), String::new(), (*c).to_owned()),
        [h, c] => (String::new(), (*h).to_owned(), (*c).to_owned()),
        _ => {
            let n = parts.len();
            (parts[..n - 2].join(":"), parts[n - 2].to_owned(), parts[n - 1].to_owned())
        }
    }
}

/// `parsePort`: a spec to `port/proto` entries (a range gives several).
fn parse_port(raw: &str) -> Result<Vec<String>, String> {
    let (ip, host_port, container) = split_port_parts(raw);
    let (port, proto) = container.split_once('/').unwrap_or((&container, ""));
    let proto_err = |reason: &str| format!("invalid port: {}: {reason}", quote(raw));
    if port.is_empty() {
        return Err(proto_err("no port specified"));
    }
    let proto = match proto.to_lowercase().as_str() {
        "" => "tcp".to_owned(),
        "tcp" | "udp" | "sctp" => proto.to_lowercase(),
        _ => return Err(proto_err(&format!("invalid proto: {proto}"))),
    };
    let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(&ip).to_owned();
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("invalid IP address: {ip}"));
    }
    let (start, end) = port_range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    if !host_port.is_empty() {
        let (hs, he) = port_range(&host_port).ok_or_else(|| format!("invalid hostPort: {host_port}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

fn port_range(ports: &str) -> Option<(u32, u32)> {
    let number = |s: &str| strconv::atoi(s).ok().filter(|n| (0..=65535).contains(n)).map(|n| n as u32);
    match ports.split_once('-') {
        None => number(ports).map(|p| (p, p)),
        Some((s, e)) if s == e => number(s).map(|p| (p, p)),
        Some((s, e)) => {
            let (s, e) = (number(s)?, number(e)?);
            (e >= s).then_some((s, e))
        }
    }
}

/// Go's `%q` of a `[]string`, as history entries show a command: `["a" "b"]`.
fn quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%v` of a `[]string`: `[a b]`.
fn list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_signals_parse_like_docker() {
        assert_eq!(parse_port("80").unwrap(), ["80/tcp"]);
        assert_eq!(parse_port("8080:80/udp").unwrap(), ["80/udp"]);
        assert_eq!(parse_port("1-3/SCTP").unwrap(), ["1/sctp", "2/sctp", "3/sctp"]);
        assert_eq!(parse_port("[::1]:80:80").unwrap(), ["80/tcp"]);
        assert_eq!(parse_port("/tcp").unwrap_err(), "invalid port: \"/tcp\": no port specified");
        assert_eq!(parse_port("5-3").unwrap_err(), "invalid containerPort: 5-3");
        assert_eq!(parse_port("300.1.1.1:80:80").unwrap_err(), "invalid IP address: 300.1.1.1");
        for ok in ["SIGKILL", "kill", "9", "RTMIN+3", "SIGRTMAX-1", "-1"] {
            assert!(valid_signal(ok), "{ok}");
        }
        for bad in ["0", "SIGFOO", "RTMIN+16", ""] {
            assert!(!valid_signal(bad), "{bad}");
        }
    }
}
