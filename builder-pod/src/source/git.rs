//! `git://` sources: a repository's tree at a ref (BuildKit's
//! `source/git/source.go` and `identifier.go`).
//!
//! Resolving asks the remote what the ref points to (`git ls-remote`), so
//! the cache key is the commit (plus `.git` when the directory is kept and
//! `:subdir`): the same commit is a cache hit whatever ref named it, and
//! nothing is fetched. On a miss the commit is fetched shallowly into a
//! scratch bare repository and checked out into a new layer.
//!
//! This module runs the `git` binary rather than `gix`, the crate first
//! planned for git sources, because BuildKit itself drives the
//! git CLI and users rely on what that gives: every transport git has
//! (smart and dumb HTTP, `git://`, ssh through `GIT_SSH_COMMAND` with the
//! client's forwarded agent), `http.extraheader` auth, shallow fetches with a
//! fallback for servers that refuse them, and `submodule update --init
//! --recursive`, which gix does not do. Doing all that through gix would be
//! a large amount of new code for the same behaviour; the binary is in every
//! builder image (Debian's `git`).
//!
//! No bare repository is kept between builds (BuildKit keeps one per
//! remote): a miss means a new commit, which a depth-1 fetch gets about as
//! fast, and nothing accumulates outside the cache's records.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tracing::{debug, instrument};

use crate::cache::{CacheError, CacheManager};
use crate::util::gopath;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("invalid checksum {0} for Git URL, expected hex commit hash")]
    InvalidChecksum(String),
    #[error("expected checksum to match {expected}, got {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("running git to {action} {remote}: {source}")]
    Spawn { action: &'static str, remote: String, source: std::io::Error },
    #[error("failed to {action} {remote}: git exited with {status}: {stderr}")]
    Git { action: &'static str, remote: String, status: std::process::ExitStatus, stderr: String },
    #[error("could not find default branch for repository: {0}")]
    DefaultBranch(String),
    #[error("repository {remote} does not contain ref {git_ref}")]
    NoRef { remote: String, git_ref: String },
    #[error("invalid commit sha {0:?}")]
    InvalidSha(String),
    #[error(
        "fetched ref {git_ref} of {remote} does not match expected commit {commit}, which the remote no longer has"
    )]
    Moved { remote: String, git_ref: String, commit: String },
    #[error("failed to open subdir {subdir} of {remote}: {source}")]
    Subdir { remote: String, subdir: String, source: std::io::Error },
    #[error("writing the checkout of {remote} at {path}: {source}")]
    Write { remote: String, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What a git source op asks for (`solver/pb/attr.go`: `git.*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GitSource {
    /// What is fetched: `https://…`, `git://…`, `ssh://…` or `user@host:path`.
    pub remote: String,
    /// Branch, tag, full ref or commit; empty is the remote's default branch.
    pub git_ref: String,
    /// Cleaned, without a leading `/`; empty for the whole tree.
    pub subdir: String,
    pub keep_git_dir: bool,
    /// A commit hash (or its prefix) the ref must resolve to.
    pub checksum: String,
    pub skip_submodules: bool,
    pub auth_token_secret: String,
    pub auth_header_secret: String,
    pub known_ssh_hosts: String,
    /// The client's SSH agent to use; empty for none.
    pub mount_ssh_sock: String,
}

/// `isGitTransport`: anything else is taken as `https://` without a scheme,
/// so `file://` or `ext::` remotes can never reach the daemon's own files.
fn is_git_transport(s: &str) -> bool {
    ["http://", "https://", "git://", "ssh://"].iter().any(|p| s.starts_with(p)) || is_scp_like(s)
}

/// `sshutil.IsImplicitSSHTransport`: `user@host:path`.
fn is_scp_like(s: &str) -> bool {
    let Some((user, rest)) = s.split_once('@') else { return false };
    let Some((host, _)) = rest.split_once(':') else { return false };
    !user.is_empty()
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl GitSource {
    /// Reads the identifier after `git://` (`host/path#ref[:subdir]`) and
    /// the attributes; `git.fullurl` names the remote when given.
    pub(crate) fn parse(id: &str, attrs: &BTreeMap<String, String>) -> Result<Self, GitError> {
        let id = if is_git_transport(id) { id.to_owned() } else { format!("https://{id}") };
        let (mut remote, fragment) = match id.split_once('#') {
            Some((r, f)) => (r.to_owned(), f),
            None => (id.clone(), ""),
        };
        let (git_ref, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let subdir = gopath::join(&["/", subdir]).trim_start_matches('/').to_owned();
        if let Some(full) = attrs.get("git.fullurl").filter(|v| !v.is_empty()) {
            remote = if is_git_transport(full) { full.clone() } else { format!("https://{full}") };
        }
        let attr = |k: &str| attrs.get(k).cloned().unwrap_or_default();
        let checksum = attr("git.checksum");
        if !checksum.is_empty() && !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GitError::InvalidChecksum(checksum));
        }
        Ok(Self {
            remote,
            git_ref: git_ref.to_owned(),
            subdir,
            keep_git_dir: attrs.get("git.keepgitdir").is_some_and(|v| v == "true"),
            checksum: checksum.to_ascii_lowercase(),
            skip_submodules: attrs.get("git.skipsubmodules").is_some_and(|v| v == "true"),
            auth_token_secret: attr("git.authtokensecret"),
            auth_header_secret: attr("git.authheadersecret"),
            known_ssh_hosts: attr("git.knownsshhosts"),
            mount_ssh_sock: attr("git.mountsshsock"),
        })
    }

    /// The remote as shown to users: a password or token becomes `xxxxx`.
    pub(crate) fn display_remote(&self) -> String {
        redact(&self.remote)
    }

    /// Whether auth secrets apply: they become HTTP headers.
    pub(crate) fn is_http(&self) -> bool {
        self.remote.starts_with("http://") || self.remote.starts_with("https://")
    }

    /// The secrets that may hold HTTP auth for this remote, most specific
    /// first; `true` marks a token (`authSecretNames`).
    pub(crate) fn auth_secret_names(&self) -> Vec<(String, bool)> {
        let host = url::Url::parse(&self.remote).ok().and_then(|u| {
            u.host_str().map(|h| u.port().map_or_else(|| h.to_owned(), |p| format!("{h}:{p}")))
        });
        let mut names = Vec::new();
        if let Some(host) = &host {
            if !self.auth_header_secret.is_empty() {
                names.push((format!("{}.{host}", self.auth_header_secret), false));
            }
            if !self.auth_token_secret.is_empty() {
                names.push((format!("{}.{host}", self.auth_token_secret), true));
            }
        }
        if !self.auth_header_secret.is_empty() {
            names.push((self.auth_header_secret.clone(), false));
        }
        if !self.auth_token_secret.is_empty() {
            names.push((self.auth_token_secret.clone(), true));
        }
        names
    }

    /// `shaToCacheKey`.
    fn cache_key(&self, sha: &str) -> String {
        let mut key = sha.to_owned();
        if self.keep_git_dir {
            key.push_str(".git");
        }
        if !self.subdir.is_empty() {
            key.push(':');
            key.push_str(&self.subdir);
        }
        key
    }

    fn check_checksum(&self, sha: &str, peeled: Option<&str>) -> Result<(), GitError> {
        if self.checksum.is_empty()
            || sha.starts_with(&self.checksum)
            || peeled.is_some_and(|p| p.starts_with(&self.checksum))
        {
            return Ok(());
        }
        let actual = match peeled {
            Some(p) => format!("{sha} or {p}"),
            None => sha.to_owned(),
        };
        Err(GitError::ChecksumMismatch { expected: self.checksum.clone(), actual })
    }
}

/// How git reaches the remote: an `Authorization` header value for HTTP
/// remotes, the client's SSH agent socket, and where known hosts are written.
#[derive(Clone, Debug, Default)]
pub(crate) struct Access {
    pub authorization: Option<String>,
    pub ssh_auth_sock: Option<PathBuf>,
    /// Where to write `known_ssh_hosts` for ssh (a scratch directory).
    pub scratch: Option<PathBuf>,
}

/// The `Authorization` value for a secret (`getAuthToken`): a token is sent
/// as GitHub's `x-access-token` basic credentials.
pub(crate) fn authorization(secret: &[u8], token: bool) -> String {
    use base64::Engine as _;
    let value = String::from_utf8_lossy(secret);
    if token {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{value}"));
        format!("basic {basic}")
    } else {
        value.into_owned()
    }
}

/// What a ref resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub key: String,
    /// The full ref that matched (`refs/heads/main`), or the commit itself.
    pub git_ref: String,
    /// The object the ref names: a commit, or an annotated tag.
    pub sha: String,
    /// The commit whose tree is checked out.
    pub commit: String,
}

fn is_commit_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runs git with no system or user configuration, no prompts, and the
/// source's access (`gitutil.GitCLI` with BuildKit's environment).
struct Git<'a> {
    src: &'a GitSource,
    access: &'a Access,
    known_hosts: Option<PathBuf>,
}

impl<'a> Git<'a> {
    fn new(src: &'a GitSource, access: &'a Access) -> Result<Self, GitError> {
        let known_hosts = match (&access.scratch, src.known_ssh_hosts.is_empty()) {
            (Some(dir), false) => {
                let path = dir.join("known_hosts");
                std::fs::write(&path, &src.known_ssh_hosts).map_err(|source| GitError::Write {
                    remote: src.display_remote(),
                    path: path.clone(),
                    source,
                })?;
                Some(path)
            }
            _ => None,
        };
        Ok(Self { src, access, known_hosts })
    }

    /// `git args…` in `dir`; stdout on success. A shallow fetch the server
    /// refuses is retried in full, as upstream does for dumb HTTP servers.
    async fn run(
        &self,
        action: &'static str,
        dir: Option<&Path>,
        args: &[&str],
    ) -> Result<Vec<u8>, GitError> {
        let mut args: Vec<&str> = args.to_vec();
        loop {
            let mut cmd = tokio::process::Command::new("git");
            // Submodules may not point at the daemon's own files (`protocol.file.allow=user`).
            cmd.args(["-c", "protocol.file.allow=user"]).args(&args);
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", "/dev/null")
                .env("LC_ALL", "C")
                .env("GIT_SSH_COMMAND", self.ssh_command())
                .stdin(Stdio::null())
                .kill_on_drop(true);
            if let Some(sock) = &self.access.ssh_auth_sock {
                cmd.env("SSH_AUTH_SOCK", sock);
            }
            // Through the environment, not `-c`, so the secret is not in the process list.
            if let Some(auth) = &self.access.authorization {
                cmd.env("GIT_CONFIG_COUNT", "1")
                    .env("GIT_CONFIG_KEY_0", format!("http.{}.extraheader", token_scope(&self.src.remote)))
                    .env("GIT_CONFIG_VALUE_0", format!("Authorization: {auth}"));
            }
            if let Some(dir) = dir {
                cmd.current_dir(dir);
            }
            let remote = self.src.display_remote();
            let out = cmd.output().await.map_err(|source| GitError::Spawn {
                action,
                remote: remote.clone(),
                source,
            })?;
            if out.status.success() {
                return Ok(out.stdout);
            }
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if (stderr.contains("--depth") || stderr.contains("shallow")) && args.contains(&"--depth=1") {
                debug!(%stderr, "the remote refused a shallow fetch; fetching in full");
                args.retain(|a| *a != "--depth=1");
                continue;
            }
            return Err(GitError::Git {
                action,
                remote,
                status: out.status,
                stderr: redact_text(&stderr, &self.src.remote),
            });
        }
    }

    fn ssh_command(&self) -> String {
        match &self.known_hosts {
            Some(path) => format!("ssh -F /dev/null -o UserKnownHostsFile={}", path.display()),
            None => "ssh -F /dev/null -o StrictHostKeyChecking=no".to_owned(),
        }
    }
}

/// `tokenScope`: a token for github.com serves all of its repositories.
fn token_scope(remote: &str) -> &str {
    ["https://github.com/", "https://www.github.com/"]
        .into_iter()
        .find(|p| remote.starts_with(p))
        .unwrap_or(remote)
}

/// Resolves the source's ref to a commit and its cache key.
#[instrument(skip_all, fields(remote = %src.display_remote(), git_ref = %src.git_ref))]
pub(crate) async fn resolve(src: &GitSource, access: &Access) -> Result<Resolved, GitError> {
    if is_commit_sha(&src.git_ref) {
        if !src.checksum.is_empty() && !src.git_ref.starts_with(&src.checksum) {
            return Err(GitError::ChecksumMismatch {
                expected: src.checksum.clone(),
                actual: src.git_ref.clone(),
            });
        }
        return Ok(Resolved {
            key: src.cache_key(&src.git_ref),
            git_ref: src.git_ref.clone(),
            sha: src.git_ref.clone(),
            commit: src.git_ref.clone(),
        });
    }
    let git = Git::new(src, access)?;
    let git_ref = if src.git_ref.is_empty() { default_branch(&git).await? } else { src.git_ref.clone() };
    let peeled_arg = format!("{git_ref}^{{}}");
    let out = git.run("fetch remote", None, &["ls-remote", &src.remote, &git_ref, &peeled_arg]).await?;
    let (full_ref, sha, peeled) = match_ref(&String::from_utf8_lossy(&out), &git_ref)
        .ok_or_else(|| GitError::NoRef { remote: src.display_remote(), git_ref: git_ref.clone() })?;
    if !is_commit_sha(&sha) {
        return Err(GitError::InvalidSha(sha));
    }
    src.check_checksum(&sha, peeled.as_deref())?;
    // An annotated tag is keyed by its commit, so a tag and a branch on the
    // same commit share the cache; with `.git` kept the tag object shows.
    let commit = peeled.unwrap_or_else(|| sha.clone());
    let key = src.cache_key(if src.keep_git_dir { &sha } else { &commit });
    Ok(Resolved { key, git_ref: full_ref, sha, commit })
}

/// `getDefaultBranch`: what `HEAD` points to on the remote.
async fn default_branch(git: &Git<'_>) -> Result<String, GitError> {
    let out =
        git.run("fetch default branch of", None, &["ls-remote", "--symref", &git.src.remote, "HEAD"]).await?;
    String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| l.strip_prefix("ref: refs/heads/")?.split_whitespace().next().map(str::to_owned))
        .ok_or_else(|| GitError::DefaultBranch(git.src.display_remote()))
}

/// Picks the ref `ls-remote` listed for `git_ref` as `git checkout` would:
/// an exact `refs/…` name, then a branch, then a tag (with the commit an
/// annotated tag points to). Returns (full ref, sha, peeled commit).
fn match_ref(out: &str, git_ref: &str) -> Option<(String, String, Option<String>)> {
    let partial = format!("refs/{}", git_ref.trim_start_matches("refs/"));
    let head = format!("refs/heads/{}", git_ref.trim_start_matches("refs/heads/"));
    let tag = format!("refs/tags/{}", git_ref.trim_start_matches("refs/tags/"));
    let peeled_tag = format!("{tag}^{{}}");
    let (mut exact, mut branch, mut tagged, mut peeled) = (None, None, None, None);
    for line in out.lines() {
        let Some((sha, name)) = line.split_once('\t') else { continue };
        let sha = Some(sha.trim().to_owned());
        match name.trim() {
            n if n == head => branch = sha,
            n if n == tag => tagged = sha,
            n if n == peeled_tag => peeled = sha,
            n if n == partial => exact = sha,
            _ => {}
        }
    }
    if let Some(sha) = exact {
        return Some((partial, sha, None));
    }
    if let Some(sha) = branch {
        return Some((head, sha, None));
    }
    tagged.map(|sha| (tag, sha, peeled))
}

/// Fetches the resolved commit and checks it out into a new layer; returns
/// the layer id.
#[instrument(skip_all, fields(remote = %src.display_remote(), commit = %resolved.commit))]
pub(crate) async fn checkout(
    cache: &CacheManager,
    src: &GitSource,
    resolved: &Resolved,
    access: &Access,
) -> Result<String, GitError> {
    let remote = src.display_remote();
    let git = Git::new(src, access)?;
    let scratch = cache.temp_dir("git-")?;
    let bare = scratch.path().join("repo.git");
    let bare_s = bare.to_string_lossy().into_owned();
    git.run(
        "init a repository for",
        None,
        &["-c", "init.defaultBranch=master", "init", "-q", "--bare", &bare_s],
    )
    .await?;
    let gd = format!("--git-dir={bare_s}");

    // A branch or tag is fetched by name (servers need not serve any commit
    // by hash); the commit the key stands for is then checked to be there.
    let by_name = resolved.git_ref != resolved.sha;
    if by_name {
        let refspec = format!("+{0}:{0}", resolved.git_ref);
        git.run("fetch", None, &[&gd, "fetch", "-q", "--depth=1", "--no-tags", &src.remote, &refspec])
            .await?;
    }
    if !has_commit(&git, &gd, &resolved.sha).await {
        // The ref moved since it was resolved, or the source names a commit.
        let args = [gd.as_str(), "fetch", "-q", "--depth=1", "--no-tags", &src.remote, &resolved.sha];
        let fetched = git.run("fetch", None, &args).await;
        if !has_commit(&git, &gd, &resolved.sha).await {
            let git_ref = resolved.git_ref.clone();
            return match fetched {
                Err(e) if !by_name => Err(e),
                _ => Err(GitError::Moved { remote, git_ref, commit: resolved.sha.clone() }),
            };
        }
    }

    let layer = cache.new_layer()?;
    let dir = layer.path().to_owned();
    let write_err = |path: &Path| {
        let (remote, path) = (remote.clone(), path.to_owned());
        move |source| GitError::Write { remote, path, source }
    };
    let subdir = src.subdir.as_str();
    let keep = src.keep_git_dir && subdir.is_empty();
    let work = if subdir.is_empty() { dir.clone() } else { scratch.path().join("work") };
    let wt = format!("--work-tree={}", work.display());
    // Without `.git` the scratch repository is the git dir and the layer (or
    // a scratch tree, for a subdir) the work tree.
    let outside: [&str; 2] = [&gd, &wt];
    let dirs: &[&str] = if keep { &[] } else { &outside };
    if keep {
        keep_git_dir(&git, src, resolved, &bare_s, &dir).await?;
    } else {
        std::fs::create_dir_all(&work).map_err(write_err(&work))?;
        let args = [dirs, &["checkout", "-q", &resolved.commit, "--", "."]].concat();
        git.run("checkout", Some(&work), &args).await?;
    }
    if !src.skip_submodules && work.join(".gitmodules").exists() {
        let args = [dirs, &["submodule", "update", "--init", "--recursive", "--depth=1"]].concat();
        git.run("update submodules of", Some(&work), &args).await?;
    }
    if !subdir.is_empty() {
        let subdir_err =
            |source| GitError::Subdir { remote: remote.clone(), subdir: subdir.to_owned(), source };
        let from = inside(&work, subdir).map_err(subdir_err)?;
        let entries = std::fs::read_dir(&from).map_err(subdir_err)?;
        for entry in entries {
            let entry = entry.map_err(write_err(&from))?;
            let to = dir.join(entry.file_name());
            std::fs::rename(entry.path(), &to).map_err(write_err(&to))?;
        }
    }
    normalize_modes(&dir).map_err(write_err(&dir))?;
    let id = cache.commit_layer(layer)?;
    debug!(layer = %id, "checked out");
    Ok(id)
}

/// `root/subdir` when every component of it is a real directory: a
/// repository's symlink must not lead the move of the subdir's entries out
/// of the checkout (into the daemon's own files).
fn inside(root: &Path, subdir: &str) -> std::io::Result<PathBuf> {
    let mut path = root.to_owned();
    for part in subdir.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        if !std::fs::symlink_metadata(&path)?.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory in the repository",
            ));
        }
    }
    Ok(path)
}

async fn has_commit(git: &Git<'_>, git_dir: &str, sha: &str) -> bool {
    let object = format!("{sha}^{{commit}}");
    git.run("inspect", None, &[git_dir, "cat-file", "-e", &object]).await.is_ok()
}

/// A checkout with its `.git`: a repository of its own whose only history
/// is the one commit, with `origin` set to the (redacted) remote.
async fn keep_git_dir(
    git: &Git<'_>,
    src: &GitSource,
    resolved: &Resolved,
    bare: &str,
    dir: &Path,
) -> Result<(), GitError> {
    let d = dir.to_string_lossy().into_owned();
    git.run("init a checkout of", None, &["-c", "init.defaultBranch=master", "init", "-q", &d]).await?;
    // Fetched over file:// so git makes a real copy (no local-clone hard links).
    let origin = format!("file://{bare}");
    git.run("prepare a checkout of", Some(dir), &["remote", "add", "origin", &origin]).await?;
    let refspec = if resolved.git_ref == resolved.sha {
        let pin = "refs/kiln/checkout";
        let gd = format!("--git-dir={bare}");
        git.run("pin the commit of", None, &[&gd, "update-ref", pin, &resolved.sha]).await?;
        pin.to_owned()
    } else {
        format!("{0}:{0}", resolved.git_ref)
    };
    git.run("fetch", Some(dir), &["fetch", "-q", "-u", "--depth=1", "origin", &refspec]).await?;
    git.run("checkout", Some(dir), &["checkout", "-q", "FETCH_HEAD"]).await?;
    git.run("prepare a checkout of", Some(dir), &["remote", "set-url", "origin", &src.display_remote()])
        .await?;
    git.run("prepare a checkout of", Some(dir), &["reflog", "expire", "--all", "--expire=now"]).await?;
    let fetch_head = dir.join(".git/FETCH_HEAD");
    match std::fs::remove_file(&fetch_head) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(GitError::Write { remote: src.display_remote(), path: fetch_head, source: e })
        }
        _ => Ok(()),
    }
}

/// Gives the checked-out tree the modes git makes under umask 022
/// (BuildKit runs git with that umask), whatever the daemon's umask is:
/// 0755 for directories and executables, 0644 for other files. `.git`
/// keeps git's own modes.
fn normalize_modes(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            if entry.file_name() != ".git" {
                normalize_modes(&path)?;
            }
        } else if kind.is_file() {
            let exec = entry.metadata()?.permissions().mode() & 0o100 != 0;
            std::fs::set_permissions(
                &path,
                std::fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }),
            )?;
        }
    }
    Ok(())
}

/// `urlutil.RedactCredentials`: a password (or a token in the user part) becomes `xxxxx`.
fn redact(remote: &str) -> String {
    match url::Url::parse(remote) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("xxxxx"));
            u.to_string()
        }
        _ => remote.to_owned(),
    }
}

/// git's own messages may quote the remote with its credentials.
fn redact_text(text: &str, remote: &str) -> String {
    let shown = redact(remote);
    if shown == remote { text.to_owned() } else { text.replace(remote, &shown) }
}

#[cfg(test)]
mod tests;
