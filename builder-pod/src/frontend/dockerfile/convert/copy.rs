//! COPY and ADD (`convert_copy.go`): local paths, other stages and images,
//! heredocs, HTTP(S) downloads and git repositories, with `--chown`,
//! `--chmod`, `--link`, `--parents` and `--exclude`.

use super::dispatch::{process_cmd_env, uppercase_cmd};
use super::{ConvertErrorKind, Converter, DESCRIPTION_COMMAND, Fail, Lines, Result};
use crate::frontend::dockerfile::instructions::{AddCommand, CopyCommand, SourcesAndDest};
use crate::frontend::dockerfile::linter::rules;
use crate::frontend::llb::git::parse_url;
use crate::frontend::llb::{
    self, ChmodOpt, ChownOpt, Constraints, CopyInfo, FileAction, GitOptions, HttpOptions, MkfileInfo, State,
    caps,
};
use crate::util::gopath;
use crate::util::strconv::{self, quote};

/// What COPY and ADD share (`copyConfig`).
struct CopyConfig<'s> {
    sources: SourcesAndDest,
    excludes: Vec<String>,
    source: State,
    is_add: bool,
    source_code: &'s str,
    chown: String,
    chmod: String,
    link: bool,
    keep_git_dir: Option<bool>,
    checksum: String,
    parents: bool,
    unpack: Option<bool>,
    /// Copying from the build context: `.dockerignore` applies.
    from_context: bool,
    lines: Lines,
    comments: &'s [String],
}

impl Converter<'_> {
    pub(super) fn dispatch_add(
        &mut self,
        i: usize,
        source_code: &str,
        add: AddCommand,
        lines: Lines,
        comments: &[String],
    ) -> Result<()> {
        let paths: Vec<String> = add
            .sources
            .source_paths
            .iter()
            .filter(|s| !s.starts_with("http://") && !s.starts_with("https://"))
            .cloned()
            .collect();
        self.copy(
            i,
            CopyConfig {
                sources: add.sources,
                excludes: add.exclude_patterns,
                source: self.context.state(),
                is_add: true,
                source_code,
                chown: add.chown,
                chmod: add.chmod,
                link: add.link,
                keep_git_dir: add.keep_git_dir,
                checksum: add.checksum,
                parents: false,
                unpack: add.unpack,
                from_context: true,
                lines,
                comments,
            },
        )?;
        let d = &mut self.states[i];
        d.ctx_paths.extend(paths.iter().map(|p| gopath::join(&["/", p])));
        Ok(())
    }

    pub(super) fn dispatch_copy(
        &mut self,
        i: usize,
        source_code: &str,
        copy: CopyCommand,
        from: Option<usize>,
        lines: Lines,
        comments: &[String],
    ) -> Result<()> {
        let source = match from {
            Some(s) if !self.states[s].dispatched => {
                let kind = ConvertErrorKind::CopyFromLater {
                    from: copy.from,
                    stage: self.states[i].stage_name.clone(),
                };
                return Err(Fail::new(kind));
            }
            Some(s) => self.states[s].state.clone(),
            None => self.context.state(),
        };
        let paths = copy.sources.source_paths.clone();
        self.copy(
            i,
            CopyConfig {
                sources: copy.sources,
                excludes: copy.exclude_patterns,
                source,
                is_add: false,
                source_code,
                chown: copy.chown,
                chmod: copy.chmod,
                link: copy.link,
                keep_git_dir: None,
                checksum: String::new(),
                parents: copy.parents,
                unpack: None,
                from_context: from.is_none(),
                lines,
                comments,
            },
        )?;
        if from.is_none() {
            let d = &mut self.states[i];
            d.ctx_paths.extend(paths.iter().map(|p| gopath::join(&["/", p])));
        }
        Ok(())
    }

    /// `dispatchCopy`.
    fn copy(&mut self, i: usize, mut cfg: CopyConfig<'_>) -> Result<()> {
        let dest = path_relative_to_dir(self.states[i].state.get_dir(), &cfg.sources.dest_path);
        let chown = (!cfg.chown.is_empty()).then(|| ChownOpt::from_user(&cfg.chown));
        let chmod = if cfg.chmod.is_empty() { None } else { Some(parse_chmod(&cfg.chmod)?) };
        if !cfg.checksum.is_empty() {
            if !cfg.is_add {
                return Err(ConvertErrorKind::ChecksumForCopy.into());
            }
            let [only] = cfg.sources.source_paths.as_slice() else {
                return Err(ConvertErrorKind::ChecksumSources.into());
            };
            if !is_http_source(only) && !matches!(parse_git_ref(only), Ok(Some(_))) {
                return Err(ConvertErrorKind::ChecksumSource.into());
            }
        }

        let mut message = if cfg.is_add { "ADD".to_owned() } else { "COPY".to_owned() };
        if cfg.parents {
            message.push_str(" --parents");
        }
        if !cfg.chown.is_empty() {
            message.push_str(&format!(" --chown={}", cfg.chown));
        }
        if !cfg.chmod.is_empty() {
            message.push_str(&format!(" --chmod={}", cfg.chmod));
        }

        let platform = self.states[i].platform.clone().unwrap_or_else(|| self.target_platform.clone());
        let env = self.states[i].state.env().clone();
        let name = uppercase_cmd(&process_cmd_env(&self.lexer, cfg.source_code, &env));
        let pg_name = self.prefix_command(i, &name, Some(&platform), Some(&env));
        let with_opts = |mut info: CopyInfo| {
            info.mode.clone_from(&chmod);
            info.chown.clone_from(&chown);
            info.exclude_patterns.clone_from(&cfg.excludes);
            info
        };

        let mut action = FileAction::new();
        for src in cfg.sources.source_paths.clone() {
            message.push(' ');
            message.push_str(&src);
            if let Some(git) = parse_git_ref(&src).map_err(ConvertErrorKind::GitRef)? {
                if !cfg.is_add {
                    return Err(ConvertErrorKind::GitForCopy.into());
                }
                if let (Some(a), Some(b)) = (cfg.keep_git_dir, git.keep_git_dir)
                    && a != b
                {
                    return Err(ConvertErrorKind::KeepGitDir.into());
                }
                if git.keep_git_dir.is_some() {
                    cfg.keep_git_dir = git.keep_git_dir;
                }
                if !cfg.checksum.is_empty() && !git.checksum.is_empty() && cfg.checksum != git.checksum {
                    return Err(ConvertErrorKind::ChecksumMismatch(cfg.checksum.clone(), git.checksum).into());
                }
                if !git.checksum.is_empty() {
                    cfg.checksum.clone_from(&git.checksum);
                }
                let st = llb::git(
                    &git.remote,
                    GitOptions {
                        git_ref: git.git_ref,
                        subdir: git.subdir,
                        keep_git_dir: cfg.keep_git_dir == Some(true),
                        checksum: cfg.checksum.clone(),
                        skip_submodules: git.submodules == Some(false),
                        constraints: Constraints::new().custom_name(pg_name.clone()),
                        ..GitOptions::default()
                    },
                );
                action = action.copy(
                    &st,
                    "/",
                    &dest,
                    with_opts(CopyInfo { create_dest_path: true, ..CopyInfo::default() }),
                );
            } else if is_http_source(&src) {
                if !cfg.is_add {
                    return Err(ConvertErrorKind::UrlForCopy.into());
                }
                let filename = http_filename(&src);
                if !cfg.checksum.is_empty() {
                    validate_digest(&cfg.checksum)?;
                }
                // Upstream describes the download with the instruction's
                // SourcesAndDest, which has no text form: the value is empty.
                let st = llb::http(
                    &src,
                    HttpOptions {
                        filename: filename.clone(),
                        checksum: cfg.checksum.clone(),
                        constraints: Constraints::new()
                            .custom_name(pg_name.clone())
                            .description(DESCRIPTION_COMMAND, ""),
                        ..HttpOptions::default()
                    },
                );
                let info = CopyInfo {
                    create_dest_path: true,
                    attempt_unpack: cfg.unpack.unwrap_or(false),
                    ..CopyInfo::default()
                };
                action = action.copy(&st, &filename, &dest, with_opts(info));
            } else {
                if cfg.from_context {
                    self.check_ignored(&src, &cfg);
                }
                let mut src = src;
                let mut patterns = Vec::new();
                let mut required = Vec::new();
                if cfg.parents {
                    let (parent, pattern) = match src.split_once("/./") {
                        Some((p, pat)) => (p.to_owned(), pat.to_owned()),
                        None => ("/".to_owned(), src.clone()),
                    };
                    let pattern = gopath::system_normalize_path("/", &pattern, false);
                    if !contains_wildcards(&parent) && !contains_wildcards(&pattern) {
                        required.push(gopath::system_normalize_path(
                            "/",
                            &gopath::join(&[&parent, &pattern]),
                            false,
                        ));
                    }
                    patterns.push(pattern.strip_prefix('/').unwrap_or(&pattern).to_owned());
                    src = parent;
                }
                let src = gopath::system_normalize_path("/", &src, false);
                let info = CopyInfo {
                    follow_symlinks: true,
                    copy_dir_contents_only: true,
                    include_patterns: patterns,
                    required_paths: required,
                    attempt_unpack: cfg.unpack.unwrap_or(cfg.is_add),
                    create_dest_path: true,
                    allow_wildcard: true,
                    allow_empty_wildcard: true,
                    ..CopyInfo::default()
                };
                action = action.copy(&cfg.source, &src, &dest, with_opts(info));
            }
        }
        for content in &cfg.sources.source_contents {
            message.push_str(&format!(" <<{}", content.path));
            let st = State::scratch().file(
                FileAction::new().mkfile(
                    &content.path,
                    0o644,
                    content.data.as_bytes(),
                    MkfileInfo::default(),
                ),
                Constraints::new()
                    .custom_name("[internal] preparing inline document")
                    .platform(platform.clone()),
            );
            action = action.copy(
                &st,
                &content.path,
                &dest,
                with_opts(CopyInfo { create_dest_path: true, ..CopyInfo::default() }),
            );
        }
        message.push(' ');
        message.push_str(&cfg.sources.dest_path);

        let ignore_cache = self.states[i].ignore_cache;
        let located = |c: Constraints, this: &Self| {
            let c = c.location(this.location(cfg.lines));
            if ignore_cache { c.ignore_cache() } else { c }
        };
        if cfg.link && cfg.chmod.is_empty() && self.opts.llb_caps.contains(caps::MERGE_OP) {
            let pg_id = self.progress_group_id(i);
            self.states[i].cmd_index = self.states[i].cmd_index.saturating_sub(1);
            let pg_name = self.prefix_command(i, &name, Some(&platform), Some(&env));
            let copy_c =
                located(Constraints::new().platform(platform.clone()).custom_name(pg_name.clone()), self)
                    .progress_group(&pg_id, &pg_name, true);
            self.states[i].cmd_index = self.states[i].cmd_index.saturating_sub(1);
            let link_name = self.prefix_command(i, &format!("LINK {name}"), Some(&platform), Some(&env));
            let merge_c = located(Constraints::new(), self)
                .progress_group(&pg_id, &pg_name, false)
                .custom_name(link_name);
            let d = &mut self.states[i];
            let copied = State::scratch().file(action, copy_c);
            let merged = llb::merge(&[d.state.clone(), copied], merge_c);
            d.state = d.state.with_output(merged.output().cloned());
        } else {
            let c = located(Constraints::new().custom_name(pg_name), self);
            let d = &mut self.states[i];
            d.state = d.state.file(action, c);
        }
        self.states[i].image.commit(&message, true, true, self.epoch);
        Ok(())
    }

    /// `CopyIgnoredFile`: the source is excluded by `.dockerignore`.
    fn check_ignored(&mut self, src: &str, cfg: &CopyConfig<'_>) {
        let Some(matcher) = &self.dockerignore else { return };
        if matcher.has_exclusions() {
            return;
        }
        let cleaned = gopath::clean(src);
        if matcher.matches_or_parent_matches(&cleaned) {
            let instruction = if cfg.is_add { "Add" } else { "Copy" };
            let msg = rules::copy_ignored_file(instruction, &cleaned);
            self.warn(&rules::COPY_IGNORED_FILE, msg, cfg.lines, cfg.comments);
        }
    }
}

/// `pathRelativeToWorkingDir`: a destination relative to the working dir.
fn path_relative_to_dir(dir: &str, p: &str) -> String {
    if p.starts_with('/') {
        return gopath::system_normalize_path("/", p, true);
    }
    let p = if p.is_empty() || p == "." { "./" } else { p };
    gopath::system_normalize_path(dir, p, true)
}

/// `--chmod`: octal up to 07777, or a symbolic mode (`u+x,g-w`).
fn parse_chmod(chmod: &str) -> Result<ChmodOpt> {
    if chmod.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return match u32::from_str_radix(chmod, 8) {
            Ok(mode) if mode <= 0o7777 => Ok(ChmodOpt { mode, mode_str: String::new() }),
            _ => Err(ConvertErrorKind::Chmod(chmod.to_owned()).into()),
        };
    }
    if chmod.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return Err(ConvertErrorKind::Chmod(chmod.to_owned()).into());
    }
    if !valid_symbolic_mode(chmod) {
        return Err(ConvertErrorKind::ChmodSyntax.into());
    }
    Ok(ChmodOpt { mode: 0, mode_str: chmod.to_owned() })
}

/// The grammar `dchapes-mode` accepts: `[ugoa]*([-+=][rwxXstugo]*)+`, comma separated.
fn valid_symbolic_mode(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b"augo".contains(&b[i]) {
            i += 1;
        }
        loop {
            if i >= b.len() || !b"+-=".contains(&b[i]) {
                return false;
            }
            i += 1;
            while i < b.len() && b"rstwxXugo".contains(&b[i]) {
                i += 1;
            }
            if i == b.len() {
                return true;
            }
            if b[i] == b',' {
                i += 1;
                break;
            }
        }
        if i >= b.len() {
            return false;
        }
    }
}

fn is_http_source(src: &str) -> bool {
    (src.starts_with("http://") || src.starts_with("https://")) && !matches!(parse_git_ref(src), Ok(Some(_)))
}

fn contains_wildcards(name: &str) -> bool {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'*' | b'?' | b'[' => return true,
            b'\\' => i += 1,
            _ => {}
        }
        i += 1;
    }
    false
}

/// The file name an HTTP download gets: the URL path's last element.
fn http_filename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_decode(path).unwrap_or_else(|| path.to_owned());
    match gopath::base(&decoded) {
        "." | "/" => "__unnamed__".to_owned(),
        base => base.to_owned(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `digest.Parse`'s checks on an `--checksum` for HTTP sources.
fn validate_digest(s: &str) -> Result<()> {
    let fail = |msg| Err(Fail::new(ConvertErrorKind::Digest(msg)));
    let Some((algorithm, hex)) = s.split_once(':').filter(|(a, h)| !a.is_empty() && !h.is_empty()) else {
        return fail("invalid checksum digest format");
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return fail("unsupported digest algorithm"),
    };
    if hex.len() != len {
        return fail("invalid checksum digest length");
    }
    if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return fail("invalid checksum digest format");
    }
    Ok(())
}

/// A git source as ADD reads it (`dfgitutil.GitRef`).
#[derive(Debug, Default, PartialEq, Eq)]
struct GitRef {
    remote: String,
    git_ref: String,
    subdir: String,
    checksum: String,
    keep_git_dir: Option<bool>,
    submodules: Option<bool>,
}

/// `dfgitutil.ParseGitRef`: `Ok(None)` for anything that is not a git
/// remote (local paths, plain HTTP files, `github.com/…` without a scheme);
/// an error only for a git remote with a bad query.
fn parse_git_ref(src: &str) -> Result<Option<GitRef>, String> {
    if src.starts_with("./") || src.starts_with("../") || src.starts_with("github.com/") {
        return Ok(None);
    }
    let Ok(url) = parse_url(src) else { return Ok(None) };
    if matches!(url.scheme.as_str(), "http" | "https") && !url.path.ends_with(".git") {
        return Ok(None);
    }
    let mut r = GitRef { remote: url.remote.clone(), ..GitRef::default() };
    if let Some(f) = &url.fragment {
        r.git_ref.clone_from(&f.git_ref);
        r.subdir.clone_from(&f.subdir);
    }
    let (mut tag, mut branch) = (String::new(), String::new());
    for (key, values) in &url.query {
        let value = match values.as_slice() {
            [v] if !v.is_empty() => Some(v.clone()),
            [] | [_] if key == "submodules" || key == "keep-git-dir" => None,
            [] | [_] => return Err(format!("query {} has no value", quote(key))),
            _ => return Err(format!("query {} has multiple values", quote(key))),
        };
        let v = value.clone().unwrap_or_default();
        let flag = |name: &str| match &value {
            None => Ok(true),
            Some(v) => strconv::parse_bool(v).map_err(|_| format!("invalid {name} value: {}", quote(v))),
        };
        match key.as_str() {
            "ref" => {
                if !r.git_ref.is_empty() && r.git_ref != v {
                    return Err(format!("ref conflicts: {} vs {}", quote(&r.git_ref), quote(&v)));
                }
                r.git_ref = v;
            }
            "tag" => tag = v,
            "branch" => branch = v,
            "subdir" => {
                if !r.subdir.is_empty() && r.subdir != v {
                    return Err(format!("subdir conflicts: {} vs {}", quote(&r.subdir), quote(&v)));
                }
                r.subdir = v;
            }
            "checksum" | "commit" => r.checksum = v,
            "keep-git-dir" => r.keep_git_dir = Some(flag("keep-git-dir")?),
            "submodules" => r.submodules = Some(flag("submodules")?),
            "mtime" if v == "checkout" || v == "commit" => {}
            "mtime" => {
                return Err(format!(
                    "invalid mtime value: {} (must be \"checkout\" or \"commit\")",
                    quote(&v)
                ));
            }
            _ => return Err(format!("unexpected query {}", quote(key))),
        }
    }
    for (value, prefix) in [(&tag, "refs/tags/"), (&branch, "refs/heads/")] {
        if value.is_empty() {
            continue;
        }
        if prefix == "refs/heads/" && !tag.is_empty() {
            return Err("branch conflicts with tag".to_owned());
        }
        let full = if value.starts_with(prefix) { value.clone() } else { format!("{prefix}{value}") };
        if !r.git_ref.is_empty() && r.git_ref != full {
            return Err(format!("ref conflicts: {} vs {}", quote(&r.git_ref), quote(&full)));
        }
        r.git_ref = full;
    }
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_resolve_against_the_working_dir() {
        assert_eq!(path_relative_to_dir("/app", "."), "/app/");
        assert_eq!(path_relative_to_dir("/app", ""), "/app/");
        assert_eq!(path_relative_to_dir("/app", "bin/"), "/app/bin/");
        assert_eq!(path_relative_to_dir("/app", "bin"), "/app/bin");
        assert_eq!(path_relative_to_dir("/app", "/etc/x"), "/etc/x");
        assert_eq!(path_relative_to_dir("/", "./d/."), "/d/.");
    }

    #[test]
    fn chmod_accepts_octal_and_symbolic_modes() {
        assert_eq!(parse_chmod("0755").ok().map(|c| c.mode), Some(0o755));
        assert_eq!(parse_chmod("7777").ok().map(|c| c.mode), Some(0o7777));
        assert_eq!(parse_chmod("u+x,g=rw").ok().map(|c| c.mode_str), Some("u+x,g=rw".to_owned()));
        assert_eq!(parse_chmod("a-w+x").ok().map(|c| c.mode_str), Some("a-w+x".to_owned()));
        for bad in ["17777", "9", "0758", "u", "u+x,", "+q", "g+w,,o"] {
            assert!(parse_chmod(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn git_refs_are_told_apart_from_files_and_urls() {
        assert_eq!(parse_git_ref("src/app"), Ok(None));
        assert_eq!(parse_git_ref("https://example.com/file.tar.gz"), Ok(None));
        assert_eq!(parse_git_ref("github.com/moby/buildkit"), Ok(None));
        let r = parse_git_ref("https://github.com/moby/buildkit.git?tag=v0.29.0&keep-git-dir=true#:docs")
            .unwrap()
            .unwrap();
        assert_eq!(r.remote, "https://github.com/moby/buildkit.git");
        assert_eq!(r.git_ref, "refs/tags/v0.29.0");
        assert_eq!((r.subdir.as_str(), r.keep_git_dir), ("docs", Some(true)));
        let r = parse_git_ref("git@github.com:moby/buildkit.git#main").unwrap().unwrap();
        assert_eq!((r.remote.as_str(), r.git_ref.as_str()), ("git@github.com:moby/buildkit.git", "main"));
        assert_eq!(parse_git_ref("https://x/y.git?nope=1"), Err("unexpected query \"nope\"".to_owned()));
        assert_eq!(
            parse_git_ref("https://x/y.git?tag=a&branch=b"),
            Err("branch conflicts with tag".to_owned())
        );
    }

    #[test]
    fn http_file_names_and_digests() {
        assert_eq!(http_filename("https://example.com/dl/app%20x.tar.gz?sig=1"), "app x.tar.gz");
        assert_eq!(http_filename("https://example.com/"), "__unnamed__");
        assert_eq!(http_filename("https://example.com"), "__unnamed__");
        assert!(validate_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        let msg = |s: &str| validate_digest(s).err().map(|f| f.kind.to_string());
        assert_eq!(msg("sha256:abc").as_deref(), Some("invalid checksum digest length"));
        assert_eq!(msg("md5:abc").as_deref(), Some("unsupported digest algorithm"));
        assert_eq!(msg("nocolon").as_deref(), Some("invalid checksum digest format"));
    }

    #[test]
    fn wildcards_respect_escapes() {
        assert!(contains_wildcards("src/*.go"));
        assert!(contains_wildcards("a[bc]"));
        assert!(!contains_wildcards("a\\*b"));
        assert!(!contains_wildcards("plain/path"));
    }
}
