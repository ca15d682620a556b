use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::*;

/// Runs the test's own git (not the module's runner) in `dir`.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=Kiln", "-c", "user.email=kiln@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A repository served by `git daemon` on 127.0.0.1, one `--inetd` process
/// per connection so the port is the test's own and never raced for.
struct Remote {
    _base: tempfile::TempDir,
    repo: PathBuf,
    url: String,
}

impl Remote {
    async fn start() -> Self {
        let base = tempfile::tempdir().unwrap();
        let repo = base.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        write(&repo.join("README"), "hello\n", 0o664);
        write(&repo.join("bin/run.sh"), "#!/bin/sh\necho run\n", 0o775);
        write(&repo.join("docs/guide.md"), "# guide\n", 0o644);
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "first"]);
        git(&repo, &["tag", "v1"]);
        git(&repo, &["tag", "-a", "-m", "release", "v1-annotated"]);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("git://{}/repo", listener.local_addr().unwrap());
        let base_path = format!("--base-path={}", base.path().display());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let base_path = base_path.clone();
                tokio::spawn(async move {
                    let mut child = tokio::process::Command::new("git")
                        .args(["daemon", "--inetd", "--export-all", &base_path])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .unwrap();
                    let (mut stdin, mut stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
                    let (mut read, mut write) = conn.split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut read, &mut stdin) => {}
                        _ = tokio::io::copy(&mut stdout, &mut write) => {}
                    }
                    let _ = write.shutdown().await;
                });
            }
        });
        Self { _base: base, repo, url }
    }

    fn head(&self) -> String {
        git(&self.repo, &["rev-parse", "HEAD"])
    }

    fn source(&self, fragment: &str, attrs: &[(&str, &str)]) -> GitSource {
        let mut attrs: BTreeMap<String, String> =
            attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        attrs.insert("git.fullurl".into(), self.url.clone());
        let id = format!("{}{fragment}", self.url.trim_start_matches("git://"));
        GitSource::parse(&id, &attrs).unwrap()
    }
}

fn open_cache() -> (tempfile::TempDir, CacheManager) {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::open(dir.path()).unwrap();
    (dir, cache)
}

/// Paths under `dir` with their modes, sorted.
fn tree(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            out.push((rel, e.metadata().unwrap().permissions().mode() & 0o7777));
            if e.file_type().unwrap().is_dir() && e.file_name() != ".git" {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_branch_resolves_to_its_commit_and_checks_out_without_git_dir() {
    let remote = Remote::start().await;
    let (_dir, cache) = open_cache();
    let src = remote.source("#main", &[]);

    let resolved = resolve(&src, &Access::default()).await.unwrap();
    assert_eq!(resolved.key, remote.head());
    assert_eq!(resolved.git_ref, "refs/heads/main");
    let layer = checkout(&cache, &src, &resolved, &Access::default()).await.unwrap();

    let root = cache.layer_path(&layer);
    assert_eq!(
        tree(&root),
        [
            ("README".to_owned(), 0o644),
            ("bin".to_owned(), 0o755),
            ("bin/run.sh".to_owned(), 0o755),
            ("docs".to_owned(), 0o755),
            ("docs/guide.md".to_owned(), 0o644),
        ]
    );
    assert_eq!(std::fs::read_to_string(root.join("README")).unwrap(), "hello\n");
}

#[tokio::test]
async fn tags_branches_and_the_default_branch_on_one_commit_share_a_key() {
    let remote = Remote::start().await;
    let head = remote.head();
    let access = Access::default();
    for fragment in ["", "#main", "#v1", "#refs/tags/v1", "#v1-annotated", &format!("#{head}")] {
        let resolved = resolve(&remote.source(fragment, &[]), &access).await.unwrap();
        assert_eq!(resolved.key, head, "{fragment}");
        assert_eq!(resolved.commit, head, "{fragment}");
    }
    let tag = git(&remote.repo, &["rev-parse", "v1-annotated"]);
    let kept =
        resolve(&remote.source("#v1-annotated", &[("git.keepgitdir", "true")]), &access).await.unwrap();
    assert_eq!((kept.key, kept.sha), (format!("{tag}.git"), tag));
    let sub = resolve(&remote.source("#main:docs/", &[]), &access).await.unwrap();
    assert_eq!(sub.key, format!("{head}:docs"));
}

#[tokio::test]
async fn a_subdir_becomes_the_root() {
    let remote = Remote::start().await;
    let (_dir, cache) = open_cache();
    let src = remote.source("#v1:docs", &[]);
    let resolved = resolve(&src, &Access::default()).await.unwrap();
    let layer = checkout(&cache, &src, &resolved, &Access::default()).await.unwrap();
    assert_eq!(tree(&cache.layer_path(&layer)), [("guide.md".to_owned(), 0o644)]);

    // A symlink in the repository can't make the daemon's files the root.
    let outside = tempfile::tempdir().unwrap();
    write(&outside.path().join("host-file"), "host\n", 0o644);
    std::os::unix::fs::symlink(outside.path(), remote.repo.join("escape")).unwrap();
    git(&remote.repo, &["add", "escape"]);
    git(&remote.repo, &["commit", "-q", "-m", "link"]);
    let escape = remote.source("#main:escape", &[]);
    let resolved = resolve(&escape, &Access::default()).await.unwrap();
    let err = checkout(&cache, &escape, &resolved, &Access::default()).await.unwrap_err().to_string();
    assert!(err.starts_with(&format!("failed to open subdir escape of {}", remote.url)), "{err}");
    assert!(outside.path().join("host-file").is_file());

    let missing = remote.source("#v1:nope", &[]);
    let resolved = resolve(&missing, &Access::default()).await.unwrap();
    let err = checkout(&cache, &missing, &resolved, &Access::default()).await.unwrap_err().to_string();
    assert!(err.starts_with(&format!("failed to open subdir nope of {}", remote.url)), "{err}");
}

#[tokio::test]
async fn keep_git_dir_gives_a_repository_at_the_commit_with_origin_set() {
    let remote = Remote::start().await;
    let (_dir, cache) = open_cache();
    for fragment in ["#v1-annotated", "#main"] {
        let src = remote.source(fragment, &[("git.keepgitdir", "true")]);
        let resolved = resolve(&src, &Access::default()).await.unwrap();
        let layer = checkout(&cache, &src, &resolved, &Access::default()).await.unwrap();
        let root = cache.layer_path(&layer);
        assert!(root.join(".git").is_dir());
        assert_eq!(git(&root, &["rev-parse", "HEAD"]), remote.head());
        assert_eq!(git(&root, &["remote", "get-url", "origin"]), remote.url);
        assert_eq!(git(&root, &["status", "--porcelain"]), "");
    }
}

#[tokio::test]
async fn a_commit_ref_needs_no_request_to_resolve_and_is_fetched_by_hash() {
    let remote = Remote::start().await;
    let (_dir, cache) = open_cache();
    let first = remote.head();
    write(&remote.repo.join("README"), "second\n", 0o644);
    git(&remote.repo, &["commit", "-q", "-am", "second"]);

    let offline =
        GitSource { remote: "git://127.0.0.1:1/none".into(), git_ref: first.clone(), ..GitSource::default() };
    assert_eq!(resolve(&offline, &Access::default()).await.unwrap().key, first);

    let src = remote.source(&format!("#{first}"), &[]);
    let resolved = resolve(&src, &Access::default()).await.unwrap();
    let layer = checkout(&cache, &src, &resolved, &Access::default()).await.unwrap();
    assert_eq!(std::fs::read_to_string(cache.layer_path(&layer).join("README")).unwrap(), "hello\n");
}

#[tokio::test]
async fn a_branch_that_moved_after_resolving_still_gives_the_resolved_commit() {
    let remote = Remote::start().await;
    let (_dir, cache) = open_cache();
    let src = remote.source("#main", &[]);
    let resolved = resolve(&src, &Access::default()).await.unwrap();
    write(&remote.repo.join("README"), "moved\n", 0o644);
    git(&remote.repo, &["commit", "-q", "-am", "moved"]);

    let layer = checkout(&cache, &src, &resolved, &Access::default()).await.unwrap();
    assert_eq!(std::fs::read_to_string(cache.layer_path(&layer).join("README")).unwrap(), "hello\n");
}

#[tokio::test]
async fn checksums_and_missing_refs_fail_clearly() {
    let remote = Remote::start().await;
    let head = remote.head();
    let access = Access::default();
    let ok = remote.source("#main", &[("git.checksum", &head[..7])]);
    assert_eq!(resolve(&ok, &access).await.unwrap().key, head);

    let wrong = "0".repeat(40);
    let err = resolve(&remote.source("#main", &[("git.checksum", &wrong)]), &access).await.unwrap_err();
    assert_eq!(err.to_string(), format!("expected checksum to match {wrong}, got {head}"));
    let err =
        resolve(&remote.source(&format!("#{head}"), &[("git.checksum", "abc")]), &access).await.unwrap_err();
    assert_eq!(err.to_string(), format!("expected checksum to match abc, got {head}"));

    let err = resolve(&remote.source("#nope", &[]), &access).await.unwrap_err();
    assert_eq!(err.to_string(), format!("repository {} does not contain ref nope", remote.url));
    let unreachable =
        GitSource { remote: "git://127.0.0.1:1/none".into(), git_ref: "main".into(), ..GitSource::default() };
    let err = resolve(&unreachable, &access).await.unwrap_err().to_string();
    assert!(err.starts_with("failed to fetch remote git://127.0.0.1:1/none: git exited with"), "{err}");
}

#[test]
fn identifiers_and_attributes_parse_like_buildkit() {
    let attrs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    let s = GitSource::parse("github.com/moby/buildkit#v0.29.0:/docs/../frontend/", &attrs(&[])).unwrap();
    assert_eq!(
        (s.remote.as_str(), s.git_ref.as_str(), s.subdir.as_str()),
        ("https://github.com/moby/buildkit", "v0.29.0", "frontend")
    );
    let s = GitSource::parse(
        "127.0.0.1:9418/repo.git#main",
        &attrs(&[("git.fullurl", "git://127.0.0.1:9418/repo.git"), ("git.keepgitdir", "true")]),
    )
    .unwrap();
    assert_eq!((s.remote.as_str(), s.keep_git_dir), ("git://127.0.0.1:9418/repo.git", true));
    // A scheme git sources do not take is never used as such.
    let s = GitSource::parse("x", &attrs(&[("git.fullurl", "file:///etc/repo")])).unwrap();
    assert_eq!(s.remote, "https://file:///etc/repo");
    let s = GitSource::parse("git@github.com:moby/buildkit.git#main", &attrs(&[])).unwrap();
    assert_eq!((s.remote.as_str(), s.git_ref.as_str()), ("git@github.com:moby/buildkit.git", "main"));
    let err = GitSource::parse("h/r", &attrs(&[("git.checksum", "xyz")])).unwrap_err();
    assert_eq!(err.to_string(), "invalid checksum xyz for Git URL, expected hex commit hash");
}

#[test]
fn auth_secrets_are_tried_host_first_and_tokens_become_basic_auth() {
    let s = GitSource {
        remote: "https://user:pw@git.example.com:8443/r.git".into(),
        auth_token_secret: "GIT_AUTH_TOKEN".into(),
        auth_header_secret: "GIT_AUTH_HEADER".into(),
        ..GitSource::default()
    };
    assert_eq!(
        s.auth_secret_names(),
        [
            ("GIT_AUTH_HEADER.git.example.com:8443".to_owned(), false),
            ("GIT_AUTH_TOKEN.git.example.com:8443".to_owned(), true),
            ("GIT_AUTH_HEADER".to_owned(), false),
            ("GIT_AUTH_TOKEN".to_owned(), true),
        ]
    );
    assert_eq!(s.display_remote(), "https://user:xxxxx@git.example.com:8443/r.git");
    assert_eq!(authorization(b"t0k", true), "basic eC1hY2Nlc3MtdG9rZW46dDBr");
    assert_eq!(authorization(b"Bearer x", false), "Bearer x");
    assert_eq!(token_scope("https://github.com/a/b.git"), "https://github.com/");
}
