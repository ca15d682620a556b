//! Named build contexts (`buildx build --build-context NAME=VALUE`): the
//! `context:NAME[::PLATFORM]` frontend attributes, which replace a stage,
//! a `FROM NAME` image or a `--from=NAME` of the same name
//! (`frontend/dockerui/namedcontext.go`, `config.go` `NamedContext`).

use std::collections::BTreeMap;

use base64::Engine as _;
use kiln_proto::buildkit::pb;

use super::{ConvertErrorKind, ConvertOptions, Image, ImageResolver, SCRATCH};
use crate::frontend::llb::{
    self, Constraints, ImageOptions, LocalOptions, Platform, State, format_platform_all,
};
use crate::source::image::{DOCKER_HUB, Reference};

/// The named contexts a build was given, from its frontend attributes.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NamedContexts {
    /// `context:KEY` values by KEY (`NAME` or `NAME::PLATFORM`), as sent:
    /// `local:DIR`, `docker-image://REF`, `input:NAME`, …
    pub values: BTreeMap<String, String>,
    /// `sharedkey:localdir:KEY`: the base name of the client's directory.
    pub shared_keys: BTreeMap<String, String>,
    /// `local-sessionid:DIR`: the session that has DIR, when not the build's.
    pub local_sessions: BTreeMap<String, String>,
    /// The `.dockerignore` patterns of each named local DIR, read by the
    /// caller before converting (the converter itself reads nothing).
    pub local_excludes: BTreeMap<String, Vec<String>>,
    /// The Solve's frontend inputs, by name (`input:NAME` contexts).
    pub inputs: BTreeMap<String, pb::Definition>,
    /// `input-metadata:NAME`: JSON of base64 values by key, such as the
    /// input's `containerimage.config`.
    pub input_metadata: BTreeMap<String, String>,
}

impl NamedContexts {
    /// Reads the `context:`, `sharedkey:localdir:` and `local-sessionid:` attributes.
    pub(crate) fn from_attrs(attrs: &BTreeMap<String, String>) -> Self {
        let with_prefix = |prefix: &str| -> BTreeMap<String, String> {
            attrs
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_owned(), v.clone())))
                .collect()
        };
        Self {
            values: with_prefix("context:"),
            shared_keys: with_prefix("sharedkey:localdir:"),
            local_sessions: with_prefix("local-sessionid:"),
            local_excludes: BTreeMap::new(),
            inputs: BTreeMap::new(),
            input_metadata: with_prefix("input-metadata:"),
        }
    }

    /// The client directories the named contexts use, as (key, directory,
    /// session that has it): whose `.dockerignore` is to be read.
    pub(crate) fn local_dirs(&self, default_session: &str) -> Vec<(String, String, String)> {
        self.values
            .iter()
            .filter_map(|(key, v)| v.strip_prefix("local:").map(|dir| (key, dir)))
            .map(|(key, dir)| {
                let session = self.local_sessions.get(dir).map_or(default_session, String::as_str);
                (key.clone(), dir.to_owned(), session.to_owned())
            })
            .collect()
    }
}

/// A named context a name refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Found {
    /// The attribute key after `context:`: `NAME` or `NAME::PLATFORM`.
    pub key: String,
    pub value: String,
}

/// What a named context loads as: its file system and, for an image, the
/// image config.
pub(super) struct Loaded {
    pub state: State,
    pub image: Option<Image>,
}

/// The short form distribution/reference's `FamiliarString` gives, without
/// a trailing `:latest`: `docker.io/library/busybox:latest` is `busybox`.
fn familiar_name(name: &str) -> Result<String, ConvertErrorKind> {
    let invalid = |reason: String| ConvertErrorKind::NamedContextName { name: name.to_owned(), reason };
    let r = Reference::parse(name).map_err(|e| invalid(e.to_string()))?;
    let repository = if r.registry == DOCKER_HUB {
        match r.repository.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => r.repository.clone(),
        }
    } else {
        format!("{}/{}", r.registry, r.repository)
    };
    let mut out = repository;
    if let Some(tag) = &r.tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = &r.digest {
        out.push('@');
        out.push_str(&digest.to_string());
    }
    Ok(out.strip_suffix(":latest").map(str::to_owned).unwrap_or(out))
}

/// `Client.NamedContext`: the context for `name` on `platform`, preferring
/// the platform-specific key. `scratch` and `context` are never replaced.
pub(super) fn lookup(
    contexts: &NamedContexts,
    name: &str,
    platform: &Platform,
) -> Result<Option<Found>, ConvertErrorKind> {
    if contexts.values.is_empty()
        || name.eq_ignore_ascii_case(SCRATCH)
        || name.eq_ignore_ascii_case("context")
    {
        return Ok(None);
    }
    let name = familiar_name(name)?;
    let with_platform = format!("{name}::{}", format_platform_all(&platform.normalize()));
    Ok([with_platform, name]
        .into_iter()
        .find_map(|key| contexts.values.get(&key).map(|value| Found { value: value.clone(), key })))
}

/// `NamedContext.Load`: the state (and image config) a named context
/// stands for. Image contexts are resolved through `resolver` for `platform`.
pub(super) async fn load(
    opts: &ConvertOptions,
    found: &Found,
    platform: &Platform,
    resolver: &dyn ImageResolver,
) -> Result<Loaded, ConvertErrorKind> {
    let key = &found.key;
    let fail = |reason: String| ConvertErrorKind::NamedContext { key: key.clone(), reason };
    let not_supported = |kind: &str| {
        fail(format!(
            "{kind} contexts are not supported by kilnd yet (local directories, docker-image:// and inputs are)"
        ))
    };
    let Some((kind, rest)) = found.value.split_once(':') else {
        return Err(ConvertErrorKind::ContextSpecifier { value: found.value.clone(), key: key.clone() });
    };
    match kind {
        "docker-image" => {
            let reference = rest.strip_prefix("//").unwrap_or(rest);
            if reference == SCRATCH {
                return Ok(Loaded { state: State::scratch(), image: None });
            }
            let normalized = Reference::parse(reference).map_err(|e| fail(e.to_string()))?.to_string();
            let resolved = resolver.resolve(&normalized, platform).await.map_err(|e| fail(e.to_string()))?;
            let image: Image = serde_json::from_slice(&resolved.config)
                .map_err(|e| ConvertErrorKind::ImageConfig(e.to_string()))?;
            let c = Constraints::new()
                .platform(platform.clone())
                .custom_name(format!("[context {key}] {reference}"));
            let state = llb::image(
                &resolved.pinned_reference,
                ImageOptions {
                    resolve_mode: opts.image_resolve_mode,
                    constraints: c,
                    ..ImageOptions::default()
                },
            );
            Ok(Loaded { state: with_image_config(state, &image), image: Some(image) })
        }
        "local" => {
            let dir = rest;
            let contexts = &opts.named_contexts;
            let session_id = contexts.local_sessions.get(dir).unwrap_or(&opts.session_id).clone();
            let shared_key = contexts.shared_keys.get(key).map(String::as_str).unwrap_or_default();
            let state = llb::local(
                dir,
                LocalOptions {
                    session_id,
                    exclude_patterns: contexts.local_excludes.get(dir).cloned().unwrap_or_default(),
                    shared_key_hint: format!("context:{key}-{shared_key}"),
                    constraints: Constraints::new().custom_name(format!("[context {key}] load from client")),
                    ..LocalOptions::default()
                },
            );
            Ok(Loaded { state, image: None })
        }
        "input" => load_input(&opts.named_contexts, key, rest),
        "git" | "http" | "https" | "oci-layout" => Err(not_supported(kind)),
        // `git@host:repo` without a scheme is a git context too.
        _ if kind.starts_with("git@") => Err(not_supported("git")),
        _ => Err(ConvertErrorKind::ContextSource { kind: kind.to_owned(), key: key.clone() }),
    }
}

/// An `input:NAME` context: the frontend input of that name, with the
/// image config its metadata carries (bake passes a target's result so).
fn load_input(contexts: &NamedContexts, key: &str, name: &str) -> Result<Loaded, ConvertErrorKind> {
    let def = contexts
        .inputs
        .get(name)
        .ok_or_else(|| ConvertErrorKind::ContextInput { name: name.to_owned(), key: key.to_owned() })?;
    let fail = |reason: String| ConvertErrorKind::NamedContext { key: key.to_owned(), reason };
    let state = llb::from_definition(def).map_err(|e| fail(e.to_string()))?;
    let Some(metadata) = contexts.input_metadata.get(name) else {
        return Ok(Loaded { state, image: None });
    };
    let parse_error = |e: String| fail(format!("failed to parse input metadata {metadata}: {e}"));
    let values: BTreeMap<String, String> =
        serde_json::from_str(metadata).map_err(|e| parse_error(e.to_string()))?;
    let Some(config) = values.get("containerimage.config") else {
        return Ok(Loaded { state, image: None });
    };
    let config =
        base64::engine::general_purpose::STANDARD.decode(config).map_err(|e| parse_error(e.to_string()))?;
    let image: Image = serde_json::from_slice(&config)
        .map_err(|e| fail(format!("failed to parse image config for {key}: {e}")))?;
    Ok(Loaded { state: with_image_config(state, &image), image: Some(image) })
}

/// `State.WithImageConfig`: the image's env, working directory and platform.
fn with_image_config(mut state: State, image: &Image) -> State {
    for entry in &image.config.env {
        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
        if state.env().get(k).is_none() {
            state = state.add_env(k, v);
        }
    }
    if !image.config.working_dir.is_empty() {
        state = state.dir(&image.config.working_dir);
    }
    if !image.architecture.is_empty() && !image.os.is_empty() {
        state = state.platform(&image.platform());
    }
    state
}
