//! The image config a stage describes (dockerfile2llb `dispatchExpose`,
//! `finalizeResultImage`): exposed ports, stop signals, and the target
//! stage's config and LLB as the build returns them.

use std::collections::BTreeSet;

use super::dispatch::list;
use super::error::{ConvertErrorKind, Lines, Result};
use super::{Converted, Converter, Empty};
use crate::frontend::dockerfile::linter::rules;
use crate::frontend::llb::{self, Constraints, LocalOptions, MarshalOptions};
use crate::util::gopath;
use crate::util::strconv::{self, quote};

impl Converter<'_> {
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
        let base_image_config =
            d.base_image.as_ref().map(|b| llb::go_json(b, "base image config")).transpose()?;
        let ignore_cache = d.ignore_cache;
        Ok(Converted {
            definition,
            image_config,
            image: d.image.clone(),
            base_image_config,
            warnings: std::mem::take(&mut self.warnings),
            epoch: self.epoch,
            ignore_cache,
        })
    }
}

/// `signal.ParseSignal` on Linux.
pub(super) fn valid_signal(raw: &str) -> bool {
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
pub(super) fn parse_port(raw: &str) -> Result<Vec<String>, String> {
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
