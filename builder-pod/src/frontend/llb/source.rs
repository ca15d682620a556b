//! Source ops (`client/llb/source.go`): images, client directories, HTTP
//! files and git repositories, named by identifier plus attrs.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_proto::buildkit::pb;

use super::git::{GitUrlError, parse_url};
use super::marshal::{Marshaler, marshal_constraints};
use super::state::{Constraints, OpMetadata, Output, State, Vertex, VertexKind};
use super::{LlbError, attr, caps, go_json_string};
use crate::source::image::Reference;
use crate::util::gopath;

#[derive(Debug)]
pub(super) struct SourceVertex {
    identifier: String,
    attrs: BTreeMap<String, String>,
    /// An invalid input, reported when the graph is marshalled (upstream's `SourceOp.err`).
    error: Option<LlbError>,
    /// `local.unique` for a local source without a session, when given.
    unique_id: Option<String>,
}

fn source_state(
    identifier: String,
    attrs: BTreeMap<String, String>,
    c: Constraints,
    error: Option<LlbError>,
) -> State {
    source_state_with(identifier, attrs, c, error, None)
}

fn source_state_with(
    identifier: String,
    attrs: BTreeMap<String, String>,
    c: Constraints,
    error: Option<LlbError>,
    unique_id: Option<String>,
) -> State {
    let platform = c.platform.clone();
    let vertex = Arc::new(Vertex {
        kind: VertexKind::Source(SourceVertex { identifier, attrs, error, unique_id }),
        constraints: c,
    });
    State::from_output(Output::new(vertex, 0, platform))
}

/// An empty filesystem.
pub(crate) fn scratch() -> State {
    State::scratch()
}

/// How an image source consults local and remote copies (`llb.ResolveMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ResolveMode {
    #[default]
    Default,
    ForcePull,
    PreferLocal,
}

impl ResolveMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResolveMode::Default => "default",
            ResolveMode::ForcePull => "pull",
            ResolveMode::PreferLocal => "local",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct ImageOptions {
    pub resolve_mode: ResolveMode,
    /// `image.recordtype`, e.g. `internal`.
    pub record_type: String,
    pub layer_limit: Option<i32>,
    pub checksum: String,
    /// The platform to pull goes in `constraints.platform`.
    pub constraints: Constraints,
}

/// A registry image (`llb.Image`): `busybox` becomes
/// `docker-image://docker.io/library/busybox:latest`. An invalid reference
/// fails when the graph is marshalled.
pub(crate) fn image(reference: &str, opts: ImageOptions) -> State {
    let (reference, error) = match Reference::parse(reference) {
        Ok(r) => (r.to_string(), None),
        Err(e) => {
            let error = LlbError::ImageReference { reference: reference.to_owned(), reason: e.to_string() };
            (reference.to_owned(), Some(error))
        }
    };
    let mut c = opts.constraints;
    c.add_cap(caps::SOURCE_IMAGE);
    let mut attrs = BTreeMap::new();
    if opts.resolve_mode != ResolveMode::Default {
        attrs.insert(attr::IMAGE_RESOLVE_MODE.to_owned(), opts.resolve_mode.as_str().to_owned());
        if opts.resolve_mode == ResolveMode::ForcePull {
            c.add_cap(caps::SOURCE_IMAGE_RESOLVE_MODE);
        }
    }
    if !opts.record_type.is_empty() {
        attrs.insert(attr::IMAGE_RECORD_TYPE.to_owned(), opts.record_type);
    }
    if let Some(limit) = opts.layer_limit {
        attrs.insert(attr::IMAGE_LAYER_LIMIT.to_owned(), limit.to_string());
        c.add_cap(caps::SOURCE_IMAGE_LAYER_LIMIT);
    }
    if !opts.checksum.is_empty() {
        attrs.insert(attr::IMAGE_CHECKSUM.to_owned(), opts.checksum);
        c.add_cap(caps::SOURCE_IMAGE_CHECKSUM);
    }
    source_state(format!("docker-image://{reference}"), attrs, c, error)
}

/// How a local source decides which files changed (`llb.DiffType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DiffType {
    None,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct LocalOptions {
    pub session_id: String,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub follow_paths: Vec<String>,
    pub shared_key_hint: String,
    /// The differ and whether the daemon must support choosing it.
    pub differ: Option<(DiffType, bool)>,
    /// `local.unique` when there is no session; upstream draws it at random.
    pub unique_id: Option<String>,
    pub constraints: Constraints,
}

/// A directory the client sends (`llb.Local`): `local://<name>`.
pub(crate) fn local(name: &str, opts: LocalOptions) -> State {
    let mut c = opts.constraints;
    let mut attrs = BTreeMap::new();
    let mut error = None;
    let mut json = |key: &str, list: &[String], cap: &str, c: &mut Constraints| {
        if list.is_empty() {
            return;
        }
        match go_json_string(list, "local source patterns") {
            Ok(v) => {
                attrs.insert(key.to_owned(), v);
                c.add_cap(cap);
            }
            Err(e) => error = Some(e),
        }
    };
    if !opts.session_id.is_empty() {
        c.add_cap(caps::SOURCE_LOCAL_SESSION_ID);
    }
    json(attr::INCLUDE_PATTERNS, &opts.include_patterns, caps::SOURCE_LOCAL_INCLUDE_PATTERNS, &mut c);
    json(attr::FOLLOW_PATHS, &opts.follow_paths, caps::SOURCE_LOCAL_FOLLOW_PATHS, &mut c);
    json(attr::EXCLUDE_PATTERNS, &opts.exclude_patterns, caps::SOURCE_LOCAL_EXCLUDE_PATTERNS, &mut c);
    if !opts.session_id.is_empty() {
        attrs.insert(attr::LOCAL_SESSION_ID.to_owned(), opts.session_id);
    }
    if !opts.shared_key_hint.is_empty() {
        attrs.insert(attr::SHARED_KEY_HINT.to_owned(), opts.shared_key_hint);
        c.add_cap(caps::SOURCE_LOCAL_SHARED_KEY_HINT);
    }
    if let Some((differ, required)) = opts.differ {
        let value = match differ {
            DiffType::None => "none",
        };
        attrs.insert(attr::LOCAL_DIFFER.to_owned(), value.to_owned());
        if required {
            c.add_cap(caps::SOURCE_LOCAL_DIFFER);
        }
    }
    c.add_cap(caps::SOURCE_LOCAL);
    source_state_with(format!("local://{name}"), attrs, c, error, opts.unique_id)
}

#[derive(Clone, Debug, Default)]
pub(crate) struct HttpOptions {
    /// `sha256:<hex>` the download must match.
    pub checksum: String,
    pub filename: String,
    /// File mode of the download; 0 keeps the default.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub auth_header_secret: String,
    pub constraints: Constraints,
}

/// A file downloaded over HTTP(S) (`llb.HTTP`); the identifier is the URL.
pub(crate) fn http(url: &str, opts: HttpOptions) -> State {
    let mut c = opts.constraints;
    let mut attrs = BTreeMap::new();
    if !opts.checksum.is_empty() {
        attrs.insert(attr::HTTP_CHECKSUM.to_owned(), opts.checksum);
        c.add_cap(caps::SOURCE_HTTP_CHECKSUM);
    }
    if !opts.filename.is_empty() {
        attrs.insert(attr::HTTP_FILENAME.to_owned(), opts.filename);
    }
    if opts.perm != 0 {
        attrs.insert(attr::HTTP_PERM.to_owned(), format!("0{:o}", opts.perm & 0o777));
        c.add_cap(caps::SOURCE_HTTP_PERM);
    }
    if opts.uid != 0 {
        attrs.insert(attr::HTTP_UID.to_owned(), opts.uid.to_string());
        c.add_cap(caps::SOURCE_HTTP_UID_GID);
    }
    if opts.gid != 0 {
        attrs.insert(attr::HTTP_GID.to_owned(), opts.gid.to_string());
        c.add_cap(caps::SOURCE_HTTP_UID_GID);
    }
    if !opts.auth_header_secret.is_empty() {
        attrs.insert(attr::HTTP_AUTH_HEADER_SECRET.to_owned(), opts.auth_header_secret);
        c.add_cap(caps::SOURCE_HTTP_AUTH);
    }
    c.add_cap(caps::SOURCE_HTTP);
    source_state(url.to_owned(), attrs, c, None)
}

#[derive(Clone, Debug, Default)]
pub(crate) struct GitOptions {
    pub git_ref: String,
    pub subdir: String,
    pub keep_git_dir: bool,
    pub checksum: String,
    pub skip_submodules: bool,
    /// Secret names for HTTP auth; `None` keeps the defaults
    /// (`GIT_AUTH_TOKEN`, `GIT_AUTH_HEADER`) without requiring the cap.
    pub auth_token_secret: Option<String>,
    pub auth_header_secret: Option<String>,
    pub known_ssh_hosts: String,
    /// SSH agent id for ssh remotes; empty is `default`.
    pub mount_ssh_sock: String,
    pub constraints: Constraints,
}

/// A git repository (`llb.Git`): `git://<host>/<path>[#ref[:subdir]]` with
/// the full URL in `git.fullurl`. A remote without a scheme gets `https://`.
/// Unlike upstream no `ssh-keyscan` runs here: known hosts are what the
/// caller passes.
pub(crate) fn git(url: &str, opts: GitOptions) -> State {
    let mut url = url.to_owned();
    let mut parsed = parse_url(&url);
    if parsed == Err(GitUrlError::UnknownProtocol) {
        url = format!("https://{url}");
        parsed = parse_url(&url);
    }
    if let Ok(remote) = &parsed {
        url.clone_from(&remote.remote);
    }
    let id = match &parsed {
        Err(_) => url.clone(),
        Ok(remote) => {
            let mut id = format!("{}{}", remote.host, gopath::join(&["/", &remote.path]));
            if !opts.git_ref.is_empty() || !opts.subdir.is_empty() {
                id.push('#');
                id.push_str(&opts.git_ref);
                if !opts.subdir.is_empty() {
                    id.push(':');
                    id.push_str(&opts.subdir);
                }
            }
            id
        }
    };
    let mut c = opts.constraints;
    let mut attrs = BTreeMap::new();
    if opts.keep_git_dir {
        attrs.insert(attr::KEEP_GIT_DIR.to_owned(), "true".to_owned());
        c.add_cap(caps::SOURCE_GIT_KEEP_DIR);
    }
    if !url.is_empty() {
        attrs.insert(attr::FULL_REMOTE_URL.to_owned(), url.clone());
        c.add_cap(caps::SOURCE_GIT_FULL_URL);
    }
    let token = opts.auth_token_secret.clone().unwrap_or_else(|| "GIT_AUTH_TOKEN".to_owned());
    let header = opts.auth_header_secret.clone().unwrap_or_else(|| "GIT_AUTH_HEADER".to_owned());
    let explicit_auth = opts.auth_token_secret.is_some() || opts.auth_header_secret.is_some();
    if !token.is_empty() {
        attrs.insert(attr::AUTH_TOKEN_SECRET.to_owned(), token);
        if explicit_auth {
            c.add_cap(caps::SOURCE_GIT_HTTP_AUTH);
        }
    }
    if !header.is_empty() {
        attrs.insert(attr::AUTH_HEADER_SECRET.to_owned(), header);
        if explicit_auth {
            c.add_cap(caps::SOURCE_GIT_HTTP_AUTH);
        }
    }
    if parsed.as_ref().is_ok_and(|r| r.scheme == "ssh") {
        if !opts.known_ssh_hosts.is_empty() {
            attrs.insert(attr::KNOWN_SSH_HOSTS.to_owned(), opts.known_ssh_hosts.clone());
        }
        c.add_cap(caps::SOURCE_GIT_KNOWN_SSH_HOSTS);
        let sock = if opts.mount_ssh_sock.is_empty() { "default" } else { &opts.mount_ssh_sock };
        attrs.insert(attr::MOUNT_SSH_SOCK.to_owned(), sock.to_owned());
        c.add_cap(caps::SOURCE_GIT_MOUNT_SSH_SOCK);
    }
    if !opts.checksum.is_empty() {
        attrs.insert(attr::GIT_CHECKSUM.to_owned(), opts.checksum);
        c.add_cap(caps::SOURCE_GIT_CHECKSUM);
    }
    if opts.skip_submodules {
        attrs.insert(attr::GIT_SKIP_SUBMODULES.to_owned(), "true".to_owned());
        c.add_cap(caps::SOURCE_GIT_SKIP_SUBMODULES);
    }
    c.add_cap(caps::SOURCE_GIT);
    source_state(format!("git://{id}"), attrs, c, None)
}

/// `SourceOp.Marshal`.
pub(super) fn marshal_source(
    s: &SourceVertex,
    own: &Constraints,
    m: &mut Marshaler<'_>,
) -> Result<(pb::Op, OpMetadata), LlbError> {
    if let Some(e) = &s.error {
        return Err(e.clone());
    }
    if s.identifier.is_empty() {
        return Err(LlbError::EmptySource);
    }
    let mut c = own.clone();
    let mut attrs = s.attrs.clone();
    if s.identifier.starts_with("local://") && !attrs.contains_key(attr::LOCAL_SESSION_ID) {
        let unique = s.unique_id.clone().unwrap_or_else(|| m.local_unique_id().to_owned());
        attrs.insert(attr::LOCAL_UNIQUE_ID.to_owned(), unique);
        c.add_cap(caps::SOURCE_LOCAL_UNIQUE);
    }
    let (mut op, md) = marshal_constraints(m.base(), &c);
    op.op = Some(pb::op::Op::Source(pb::SourceOp { identifier: s.identifier.clone(), attrs }));
    if !(s.identifier.starts_with("docker-image://") || s.identifier.starts_with("oci-layout://")) {
        op.platform = None;
    }
    Ok((op, md))
}
