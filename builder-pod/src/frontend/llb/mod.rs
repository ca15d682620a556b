//! A small LLB builder: kilnd's counterpart of BuildKit's `client/llb`.
//!
//! A [`State`] is an immutable value: an op output (or scratch) plus the
//! settings later ops read (env, working directory, user, platform, network
//! and security mode, extra hosts, ulimits, …), like `llb.State`'s value
//! chain. Sources ([`image`], [`local`], [`http`], [`git`], [`scratch`])
//! start a graph; [`State::run`], [`State::file`], [`merge`] and [`diff`]
//! extend it; [`marshal`] turns the graph below a state into a
//! `pb.Definition`.
//!
//! What a daemon sees is kept byte-for-byte as `client/llb` v0.29 writes it:
//! source identifiers and attrs, exec meta and mount numbering, file action
//! input numbering, the per-op platform/constraints fields and the `caps`
//! metadata each op carries (docs/protocol.md §7: digests are sha256
//! over these bytes, so a different encoding is a different cache key).
//! Unlike upstream, nothing here is random: two marshals of equal graphs give
//! identical bytes.

mod definition;
mod exec;
mod file;
pub(crate) mod git;
mod json;
mod marshal;
mod source;
mod state;

pub(crate) use definition::from_definition;
pub(crate) use exec::{CacheSharing, ExecOptions, HostIp, Mount, ProxyEnv, SecretInfo, SshInfo, Ulimit};
pub(crate) use file::{ChmodOpt, ChownOpt, CopyInfo, FileAction, MkdirInfo, MkfileInfo};
pub(crate) use json::{go_json, go_json_string};
pub(crate) use marshal::{MarshalOptions, SourceLocation, SourceMap, marshal};
pub(crate) use source::{
    DiffType, GitOptions, HttpOptions, ImageOptions, LocalOptions, ResolveMode, git, http, image, local,
    scratch,
};
pub(crate) use state::{Constraints, EnvList, Placeholder, State, merge};

pub(crate) use crate::source::image::Platform;

pub(crate) use kiln_proto::buildkit::pb::{NetMode, SecurityMode};

/// `llb.customname`: the name progress shows for a vertex.
pub(crate) const CUSTOM_NAME: &str = "llb.customname";

/// The PATH a Linux process gets when its image sets none (`util/system`).
pub(crate) const DEFAULT_PATH_UNIX: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capability ids (`solver/pb/caps.go`) this builder marks ops with, plus the
/// ones a frontend checks before using a feature.
pub(crate) mod caps {
    pub(crate) const SOURCE_IMAGE: &str = "source.image";
    pub(crate) const SOURCE_IMAGE_RESOLVE_MODE: &str = "source.image.resolvemode";
    pub(crate) const SOURCE_IMAGE_LAYER_LIMIT: &str = "source.image.layerlimit";
    pub(crate) const SOURCE_IMAGE_CHECKSUM: &str = "source.image.checksum";
    pub(crate) const SOURCE_LOCAL: &str = "source.local";
    pub(crate) const SOURCE_LOCAL_UNIQUE: &str = "source.local.unique";
    pub(crate) const SOURCE_LOCAL_SESSION_ID: &str = "source.local.sessionid";
    pub(crate) const SOURCE_LOCAL_INCLUDE_PATTERNS: &str = "source.local.includepatterns";
    pub(crate) const SOURCE_LOCAL_FOLLOW_PATHS: &str = "source.local.followpaths";
    pub(crate) const SOURCE_LOCAL_EXCLUDE_PATTERNS: &str = "source.local.excludepatterns";
    pub(crate) const SOURCE_LOCAL_SHARED_KEY_HINT: &str = "source.local.sharedkeyhint";
    pub(crate) const SOURCE_LOCAL_DIFFER: &str = "source.local.differ";
    pub(crate) const SOURCE_GIT: &str = "source.git";
    pub(crate) const SOURCE_GIT_KEEP_DIR: &str = "source.git.keepgitdir";
    pub(crate) const SOURCE_GIT_FULL_URL: &str = "source.git.fullurl";
    pub(crate) const SOURCE_GIT_HTTP_AUTH: &str = "source.git.httpauth";
    pub(crate) const SOURCE_GIT_KNOWN_SSH_HOSTS: &str = "source.git.knownsshhosts";
    pub(crate) const SOURCE_GIT_MOUNT_SSH_SOCK: &str = "source.git.mountsshsock";
    pub(crate) const SOURCE_GIT_CHECKSUM: &str = "source.git.checksum";
    pub(crate) const SOURCE_GIT_SKIP_SUBMODULES: &str = "source.git.skipsubmodules";
    pub(crate) const SOURCE_HTTP: &str = "source.http";
    pub(crate) const SOURCE_HTTP_AUTH: &str = "source.http.auth";
    pub(crate) const SOURCE_HTTP_CHECKSUM: &str = "source.http.checksum";
    pub(crate) const SOURCE_HTTP_PERM: &str = "source.http.perm";
    /// Misspelt upstream; the daemon compares the string.
    pub(crate) const SOURCE_HTTP_UID_GID: &str = "soruce.http.uidgid";
    pub(crate) const EXEC_META_BASE: &str = "exec.meta.base";
    pub(crate) const EXEC_META_CGROUP_PARENT: &str = "exec.meta.cgroup.parent";
    pub(crate) const EXEC_META_NETWORK: &str = "exec.meta.network";
    pub(crate) const EXEC_META_PROXY: &str = "exec.meta.proxyenv";
    pub(crate) const EXEC_META_SECURITY: &str = "exec.meta.security";
    pub(crate) const EXEC_META_SETS_DEFAULT_PATH: &str = "exec.meta.setsdefaultpath";
    pub(crate) const EXEC_META_ULIMIT: &str = "exec.meta.ulimit";
    pub(crate) const EXEC_META_CDI: &str = "exec.meta.cdi";
    pub(crate) const EXEC_MOUNT_BIND: &str = "exec.mount.bind";
    pub(crate) const EXEC_MOUNT_BIND_READ_WRITE_NO_OUTPUT: &str = "exec.mount.bind.readwrite-nooutput";
    pub(crate) const EXEC_MOUNT_CACHE: &str = "exec.mount.cache";
    pub(crate) const EXEC_MOUNT_CACHE_SHARING: &str = "exec.mount.cache.sharing";
    pub(crate) const EXEC_MOUNT_SELECTOR: &str = "exec.mount.selector";
    pub(crate) const EXEC_MOUNT_TMPFS: &str = "exec.mount.tmpfs";
    pub(crate) const EXEC_MOUNT_TMPFS_SIZE: &str = "exec.mount.tmpfs.size";
    pub(crate) const EXEC_MOUNT_SECRET: &str = "exec.mount.secret";
    pub(crate) const EXEC_MOUNT_SSH: &str = "exec.mount.ssh";
    pub(crate) const EXEC_MOUNT_CONTENT_CACHE: &str = "exec.mount.cache.content";
    pub(crate) const EXEC_SECRET_ENV: &str = "exec.secretenv";
    pub(crate) const EXEC_VALID_EXIT_CODE: &str = "exec.validexitcode";
    pub(crate) const FILE_BASE: &str = "file.base";
    pub(crate) const CONSTRAINTS: &str = "constraints";
    pub(crate) const PLATFORM: &str = "platform";
    pub(crate) const META_IGNORE_CACHE: &str = "meta.ignorecache";
    pub(crate) const META_DESCRIPTION: &str = "meta.description";
    pub(crate) const META_EXPORT_CACHE: &str = "meta.exportcache";
    pub(crate) const MERGE_OP: &str = "mergeop";
    pub(crate) const DIFF_OP: &str = "diffop";

    /// The LLB capabilities BuildKit v0.29 reports for its solver (the set a
    /// frontend is told the daemon supports when nothing narrower is known).
    pub(crate) const ALL: &[&str] = &[
        SOURCE_IMAGE,
        SOURCE_IMAGE_RESOLVE_MODE,
        SOURCE_IMAGE_LAYER_LIMIT,
        SOURCE_IMAGE_CHECKSUM,
        SOURCE_LOCAL,
        SOURCE_LOCAL_UNIQUE,
        SOURCE_LOCAL_SESSION_ID,
        SOURCE_LOCAL_INCLUDE_PATTERNS,
        SOURCE_LOCAL_FOLLOW_PATHS,
        SOURCE_LOCAL_EXCLUDE_PATTERNS,
        SOURCE_LOCAL_SHARED_KEY_HINT,
        SOURCE_LOCAL_DIFFER,
        SOURCE_GIT,
        SOURCE_GIT_KEEP_DIR,
        SOURCE_GIT_FULL_URL,
        SOURCE_GIT_HTTP_AUTH,
        SOURCE_GIT_KNOWN_SSH_HOSTS,
        SOURCE_GIT_MOUNT_SSH_SOCK,
        SOURCE_GIT_CHECKSUM,
        SOURCE_GIT_SKIP_SUBMODULES,
        SOURCE_HTTP,
        SOURCE_HTTP_AUTH,
        SOURCE_HTTP_CHECKSUM,
        SOURCE_HTTP_PERM,
        SOURCE_HTTP_UID_GID,
        EXEC_META_BASE,
        EXEC_META_CGROUP_PARENT,
        EXEC_META_NETWORK,
        EXEC_META_PROXY,
        EXEC_META_SECURITY,
        EXEC_META_SETS_DEFAULT_PATH,
        EXEC_META_ULIMIT,
        EXEC_META_CDI,
        EXEC_MOUNT_BIND,
        EXEC_MOUNT_BIND_READ_WRITE_NO_OUTPUT,
        EXEC_MOUNT_CACHE,
        EXEC_MOUNT_CACHE_SHARING,
        EXEC_MOUNT_SELECTOR,
        EXEC_MOUNT_TMPFS,
        EXEC_MOUNT_TMPFS_SIZE,
        EXEC_MOUNT_SECRET,
        EXEC_MOUNT_SSH,
        EXEC_MOUNT_CONTENT_CACHE,
        EXEC_SECRET_ENV,
        EXEC_VALID_EXIT_CODE,
        FILE_BASE,
        CONSTRAINTS,
        PLATFORM,
        META_IGNORE_CACHE,
        META_DESCRIPTION,
        META_EXPORT_CACHE,
        MERGE_OP,
        DIFF_OP,
    ];
}

/// Source attribute keys (`solver/pb/attr.go`).
pub(crate) mod attr {
    pub(crate) const KEEP_GIT_DIR: &str = "git.keepgitdir";
    pub(crate) const FULL_REMOTE_URL: &str = "git.fullurl";
    pub(crate) const AUTH_HEADER_SECRET: &str = "git.authheadersecret";
    pub(crate) const AUTH_TOKEN_SECRET: &str = "git.authtokensecret";
    pub(crate) const KNOWN_SSH_HOSTS: &str = "git.knownsshhosts";
    pub(crate) const MOUNT_SSH_SOCK: &str = "git.mountsshsock";
    pub(crate) const GIT_CHECKSUM: &str = "git.checksum";
    pub(crate) const GIT_SKIP_SUBMODULES: &str = "git.skipsubmodules";
    pub(crate) const LOCAL_SESSION_ID: &str = "local.session";
    pub(crate) const LOCAL_UNIQUE_ID: &str = "local.unique";
    pub(crate) const INCLUDE_PATTERNS: &str = "local.includepattern";
    pub(crate) const FOLLOW_PATHS: &str = "local.followpaths";
    pub(crate) const EXCLUDE_PATTERNS: &str = "local.excludepatterns";
    pub(crate) const SHARED_KEY_HINT: &str = "local.sharedkeyhint";
    pub(crate) const LOCAL_DIFFER: &str = "local.differ";
    pub(crate) const HTTP_CHECKSUM: &str = "http.checksum";
    pub(crate) const HTTP_FILENAME: &str = "http.filename";
    pub(crate) const HTTP_PERM: &str = "http.perm";
    pub(crate) const HTTP_UID: &str = "http.uid";
    pub(crate) const HTTP_GID: &str = "http.gid";
    pub(crate) const HTTP_AUTH_HEADER_SECRET: &str = "http.authheadersecret";
    pub(crate) const IMAGE_RESOLVE_MODE: &str = "image.resolvemode";
    pub(crate) const IMAGE_RECORD_TYPE: &str = "image.recordtype";
    pub(crate) const IMAGE_LAYER_LIMIT: &str = "image.layerlimit";
    pub(crate) const IMAGE_CHECKSUM: &str = "image.checksum";
}

/// What can go wrong building or marshalling a graph. Like upstream, most
/// problems with an op surface when the graph is marshalled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LlbError {
    #[error("invalid image reference {reference:?}: {reason}")]
    ImageReference { reference: String, reason: String },
    #[error("source identifier can't be empty")]
    EmptySource,
    #[error("arguments are required")]
    NoArgs,
    #[error("working directory is required")]
    NoWorkingDir,
    #[error("tmpfs mounts must use scratch")]
    TmpfsSource,
    #[error("action is required")]
    NoFileAction,
    #[error("merge must have at least 2 inputs")]
    MergeInputs,
    #[error("a placeholder state was used before it was filled")]
    EmptyPlaceholder,
    #[error("a placeholder state can only be filled once, with a non-scratch state")]
    PlaceholderFill,
    #[error("encoding {what} as JSON: {reason}")]
    Json { what: &'static str, reason: String },
    #[error("invalid LLB definition: {0}")]
    Definition(String),
}

/// containerd's `platforms.Format`: `os/arch[/variant]`.
pub(crate) fn format_platform(p: &Platform) -> String {
    if p.os.is_empty() {
        return "unknown".to_owned();
    }
    join_nonempty(&[&p.os, &p.architecture, p.variant.as_deref().unwrap_or("")])
}

/// containerd's `platforms.FormatAll`: like [`format_platform`] with the OS
/// version, `os(version)/arch[/variant]`.
pub(crate) fn format_platform_all(p: &Platform) -> String {
    if p.os.is_empty() {
        return "unknown".to_owned();
    }
    let os = match p.os_version.as_deref() {
        Some(v) if !v.is_empty() => format!("{}({v})", p.os),
        _ => p.os.clone(),
    };
    join_nonempty(&[&os, &p.architecture, p.variant.as_deref().unwrap_or("")])
}

/// Go's `path.Join` of platform parts: empty parts vanish.
fn join_nonempty(parts: &[&str]) -> String {
    parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/")
}

/// The platform this process runs on (`platforms.DefaultSpec`), normalised.
pub(crate) fn default_platform() -> Platform {
    Platform::new("linux", std::env::consts::ARCH, None).normalize()
}

#[cfg(test)]
mod tests;
