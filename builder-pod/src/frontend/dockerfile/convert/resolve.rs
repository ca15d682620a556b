//! Base images (dockerfile2llb `resolveReachableStages`, `resolveBaseImage`
//! and ONBUILD triggers): the stages the target needs are resolved through
//! the [`ImageResolver`](super::ImageResolver), all at once, or loaded from
//! named contexts, until no trigger brings in another dependency.

use std::collections::BTreeSet;

use super::error::{ConvertErrorKind, Fail, Result};
use super::{BoxError, Converter, DESCRIPTION_COMMAND, Image, ImageResolver, ResolvedConfig, SCRATCH, named};
use crate::frontend::dockerfile::instructions::{self, Instruction};
use crate::frontend::dockerfile::linter::rules;
use crate::frontend::dockerfile::parser;
use crate::frontend::dockerfile::suggest;
use crate::frontend::llb::{self, Constraints, ImageOptions, Platform, State, format_platform_all};
use crate::source::image::Reference;

impl Converter<'_> {
    /// `resolveStages`: resolves base images and adds ONBUILD triggers until
    /// no trigger brings in a new dependency.
    pub(super) async fn resolve_stages(
        &mut self,
        target: usize,
        resolver: &dyn ImageResolver,
    ) -> Result<BTreeSet<usize>> {
        loop {
            let reachable = self.reachable_from(target);
            self.resolve_reachable(&reachable, resolver).await?;
            let mut new_deps = false;
            for &i in &reachable {
                self.init_state(i);
                let mut triggers = self.states[i].image.config.on_build.clone();
                if let Some(base) = self.states[i].base
                    && !self.states[i].onbuild_init
                {
                    triggers.extend(self.states[base].commands.iter().filter_map(|c| {
                        match &c.command.instruction {
                            Instruction::Onbuild(expr) => Some(expr.clone()),
                            _ => None,
                        }
                    }));
                    self.states[i].onbuild_init = true;
                }
                if !triggers.is_empty() {
                    let lines = self.states[i].lines();
                    new_deps |= self
                        .init_onbuild_triggers(i, &triggers)
                        .map_err(|f| Fail { lines: Some(lines), ..f })?;
                    self.states[i].image.config.on_build.clear();
                }
            }
            if !new_deps {
                return Ok(reachable);
            }
        }
    }

    /// `initOnBuildTriggers`: parses triggers as commands placed before the
    /// stage's own, located at its FROM line.
    fn init_onbuild_triggers(&mut self, i: usize, triggers: &[String]) -> Result<bool> {
        let (start, end) = self.states[i].lines();
        let mut new_deps = false;
        let mut cmds = Vec::with_capacity(triggers.len());
        for trigger in triggers {
            let ast = parser::parse(trigger).map_err(|e| Fail::new(ConvertErrorKind::Parse(e.kind)))?;
            let [node] = ast.nodes.as_slice() else {
                return Err(ConvertErrorKind::OnbuildExpression.into());
            };
            let mut node = node.clone();
            node.start_line = start;
            node.end_line = end;
            let command = instructions::parse_command(&node)
                .map_err(|e| Fail::new(ConvertErrorKind::Instruction(e.kind)))?;
            let (mut cmd, _) = self.command_sources(command)?;
            cmd.is_onbuild = true;
            new_deps |= !cmd.sources.is_empty();
            for &source in &cmd.sources {
                self.add_dep(i, source, cmd.lines());
            }
            cmds.push(cmd);
        }
        let d = &mut self.states[i];
        d.cmd_total += cmds.len();
        cmds.append(&mut d.commands);
        d.commands = cmds;
        Ok(new_deps)
    }

    /// `resolveReachableStages` + `resolveBaseImage`: scratch stages start
    /// empty; image stages ask the resolver (reachable ones only, all at
    /// once) and start from the pinned image.
    async fn resolve_reachable(
        &mut self,
        reachable: &BTreeSet<usize>,
        resolver: &dyn ImageResolver,
    ) -> Result<()> {
        struct Request {
            index: usize,
            reachable: bool,
            orig_name: String,
            reference: String,
            platform: Platform,
            /// A named context to load instead of the image, and whether
            /// it replaces the whole stage (rather than its base image).
            named: Option<(named::Found, bool)>,
        }
        enum Lookup {
            Image(Result<ResolvedConfig, BoxError>),
            Named(Result<Box<named::Loaded>, ConvertErrorKind>),
        }
        let mut requests = Vec::new();
        for i in 0..self.states.len() {
            let is_reachable = reachable.contains(&i);
            let d = &mut self.states[i];
            if d.base.is_some() || d.dispatched || d.resolved {
                continue;
            }
            d.resolved = is_reachable;
            if d.stage.base_name == SCRATCH && d.named.is_none() {
                d.state = State::scratch();
                d.image = Image::empty(&self.target_platform);
                d.platform = Some(self.target_platform.clone());
                if d.unregistered {
                    d.dispatched = true;
                }
                continue;
            }
            let lines = d.lines();
            let orig_name = d.stage.base_name.clone();
            let reference = match Reference::parse(&orig_name) {
                Ok(r) => r.to_string(),
                Err(e) => {
                    let kind = ConvertErrorKind::StageName { name: orig_name, reason: e.to_string() };
                    return Err(Fail::new(kind).at(lines));
                }
            };
            let platform = d.platform.clone().unwrap_or_else(|| self.target_platform.clone());
            d.stage.base_name.clone_from(&reference);
            let named = match &d.named {
                Some(found) => Some((found.clone(), true)),
                None if is_reachable => named::lookup(&self.opts.named_contexts, &reference, &platform)
                    .map_err(|k| Fail::new(k).at(lines))?
                    .map(|found| (found, false)),
                None => None,
            };
            requests.push(Request {
                index: i,
                reachable: is_reachable,
                orig_name,
                reference,
                platform,
                named,
            });
        }

        let opts = self.opts;
        let lookups = requests.iter().filter(|r| r.reachable).map(|r| async move {
            match &r.named {
                Some((found, _)) => {
                    Lookup::Named(named::load(opts, found, &r.platform, resolver).await.map(Box::new))
                }
                None => Lookup::Image(resolver.resolve(&r.reference, &r.platform).await),
            }
        });
        let mut results = futures::future::join_all(lookups).await.into_iter();
        for req in requests {
            let i = req.index;
            if self.states[i].unregistered {
                self.states[i].dispatched = true;
            }
            let lines = self.states[i].lines();
            let mut platform = req.platform;
            let mut is_scratch = false;
            if req.reachable {
                let result = match results.next() {
                    None => break,
                    Some(Lookup::Image(result)) => result,
                    Some(Lookup::Named(loaded)) => {
                        let loaded = loaded.map_err(|k| Fail::new(k).at(lines))?;
                        let replaces_stage = req.named.as_ref().is_some_and(|(_, whole)| *whole);
                        self.use_named_context(i, *loaded, replaces_stage, platform);
                        continue;
                    }
                };
                let resolved = result.map_err(|source| {
                    let mut options = self.names();
                    options.extend(common_image_names());
                    let options: Vec<&str> = options.iter().map(String::as_str).collect();
                    let suggestion = suggest(&req.orig_name, &options, true);
                    let kind =
                        ConvertErrorKind::ResolveImage { name: req.orig_name.clone(), source, suggestion };
                    Fail::new(kind).at(lines)
                })?;
                let pinned = Reference::parse(&resolved.pinned_reference).map_err(|e| {
                    let kind = ConvertErrorKind::PinnedReference {
                        reference: resolved.pinned_reference.clone(),
                        reason: e.to_string(),
                    };
                    Fail::new(kind).at(lines)
                })?;
                let img: Image = serde_json::from_slice(&resolved.config)
                    .map_err(|e| Fail::new(ConvertErrorKind::ImageConfig(e.to_string())).at(lines))?;
                if self.states[i].platform.is_none() && self.implicit_target {
                    platform = auto_detect_platform(&img, &platform, &self.build_platforms);
                }
                is_scratch = img.rootfs.diff_ids.as_ref().is_none_or(Vec::is_empty)
                    && img.history.iter().all(|h| h.empty_layer);
                let d = &mut self.states[i];
                d.base_image = Some(img.clone());
                d.stage.base_name = pinned.to_string();
                d.image = img;
            }
            let state = if is_scratch {
                State::scratch()
            } else {
                let d = &self.states[i];
                let name = format!("FROM {}", d.stage.base_name);
                let source_code = d.stage.source_code.clone();
                let base_name = d.stage.base_name.clone();
                let custom = self.prefix_command(i, &name, Some(&platform), None);
                let c = Constraints::new()
                    .description(DESCRIPTION_COMMAND, source_code)
                    .platform(platform.clone())
                    .custom_name(custom)
                    .location(self.location(lines));
                llb::image(
                    &base_name,
                    ImageOptions {
                        resolve_mode: self.opts.image_resolve_mode,
                        constraints: c,
                        ..ImageOptions::default()
                    },
                )
            };
            if req.reachable && !is_scratch {
                let actual = self.states[i].image.platform();
                if platform.os != actual.os || platform.architecture != actual.architecture {
                    let msg = rules::invalid_base_image_platform(
                        &req.orig_name,
                        &format_platform_all(&platform.normalize()),
                        &format_platform_all(&actual.normalize()),
                    );
                    self.warn(&rules::INVALID_BASE_IMAGE_PLATFORM, msg, lines, &[]);
                }
            }
            let d = &mut self.states[i];
            d.state = state;
            d.platform = Some(platform);
        }
        Ok(())
    }

    /// `resolveBaseImage` for a named context: it replaces the whole stage
    /// (which is then done, platform from the image if it has one), or
    /// the stage's base image (the stage's platform, an empty config for a
    /// directory).
    fn use_named_context(
        &mut self,
        i: usize,
        loaded: named::Loaded,
        replaces_stage: bool,
        platform: Platform,
    ) {
        let d = &mut self.states[i];
        if replaces_stage {
            d.dispatched = true;
            d.state = loaded.state;
            if let Some(img) = loaded.image {
                if !img.architecture.is_empty() && !img.os.is_empty() {
                    d.platform = Some(img.platform());
                }
                d.image = img;
            }
            return;
        }
        let img = loaded.image.unwrap_or_else(|| Image::empty(&platform));
        d.base_image = Some(img.clone());
        d.image = img;
        d.state = loaded.state.platform(&platform);
        d.platform = Some(platform);
    }
}

/// `autoDetectPlatform`: keep a base image's own platform when the worker
/// can build for it.
fn auto_detect_platform(img: &Image, target: &Platform, supported: &[Platform]) -> Platform {
    if target.os == img.os && target.architecture == img.architecture {
        return target.clone();
    }
    supported
        .iter()
        .find(|p| p.os == img.os && p.architecture == img.architecture)
        .cloned()
        .unwrap_or_else(|| target.clone())
}

fn common_image_names() -> Vec<String> {
    let mut out = Vec::new();
    for name in ["alpine", "busybox", "centos", "debian", "golang", "ubuntu", "fedora"] {
        // Upstream's list lacks the `/` after `library`; kept for equal suggestions.
        out.extend([
            name.to_owned(),
            format!("docker.io/library{name}"),
            format!("{name}:latest"),
            format!("docker.io/library{name}:latest"),
        ]);
    }
    out
}
