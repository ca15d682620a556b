//! Remote sources through real buildx on kilnd: `ADD https://…` (with and
//! without `--checksum`) served by the test itself, and `ADD git://…` from a
//! `git daemon` on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use kiln_e2e::{Buildkitd, Buildx, Daemon, Kilnd, file_tree, free_port, run, run_unchecked, sha256_hex};

/// A kilnd (or the reference buildkitd) with a buildx builder pointing at it.
struct Setup {
    _kilnd: Option<Kilnd>,
    _buildkitd: Option<Buildkitd>,
    buildx: Buildx,
}

impl Setup {
    fn new() -> Self {
        let kilnd = Kilnd::start();
        let buildx = Buildx::new();
        buildx.create_remote("kilnd", &kilnd.addr);
        Self { _kilnd: Some(kilnd), _buildkitd: None, buildx }
    }

    /// The same, on the reference buildkitd (the builder keeps the name `kilnd`).
    fn reference() -> Self {
        let buildkitd = Buildkitd::start();
        let buildx = Buildx::new();
        buildx.create_remote("kilnd", &buildkitd.addr);
        Self { _kilnd: None, _buildkitd: Some(buildkitd), buildx }
    }

    /// Builds a context whose Dockerfile is `dockerfile` into `out` with the
    /// local exporter: whether it worked, and the progress output.
    fn build(&self, dockerfile: &str, out: &Path) -> (bool, String) {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
        let dest = format!("type=local,dest={}", out.display());
        let out = run_unchecked(
            self.buildx
                .command()
                .args(["build", "--builder", "kilnd", "--progress", "plain", "-o", &dest])
                .arg(ctx.path()),
        );
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// One file over HTTP/1.1 on loopback, with `Last-Modified` and an `ETag`;
/// counts the bodies it sent.
struct FileServer {
    addr: String,
    downloads: Arc<AtomicUsize>,
    body: Arc<Mutex<Vec<u8>>>,
}

const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const LAST_MODIFIED_SECS: u64 = 1_445_412_480;

impl FileServer {
    fn start(body: &[u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let downloads = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(body.to_vec()));
        let (count, served) = (Arc::clone(&downloads), Arc::clone(&body));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                let mut if_none_match = None;
                reader.read_line(&mut request_line).unwrap_or_default();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("if-none-match")
                    {
                        if_none_match = Some(v.trim().to_owned());
                    }
                }
                let body = served.lock().unwrap().clone();
                let etag = format!("\"{}\"", &sha256_hex(&body)[..16]);
                let response = if !request_line.contains(" /files/") {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .as_bytes()
                        .to_vec()
                } else if if_none_match.as_deref() == Some(etag.as_str()) {
                    format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n")
                        .into_bytes()
                } else {
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: {LAST_MODIFIED}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    r
                };
                let _ = conn.write_all(&response);
            }
        });
        Self { addr, downloads, body }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Whether the plain progress shows the step whose name contains `name` as CACHED.
fn cached(progress: &str, name: &str) -> bool {
    let id = progress.lines().find_map(|l| {
        let (id, text) = l.strip_prefix('#')?.split_once(' ')?;
        text.contains(name).then(|| id.to_owned())
    });
    id.is_some_and(|id| progress.lines().any(|l| l == format!("#{id} CACHED")))
}

#[test]
fn add_over_http_gives_the_file_with_mode_0600_and_the_servers_mtime_and_is_cached_by_content() {
    let server = FileServer::start(b"hello over http\n");
    let s = Setup::new();
    let url = server.url("/files/hello.txt");
    let dockerfile = format!("FROM scratch\nADD {url} /x/\n");

    let out = tempfile::tempdir().unwrap();
    let (ok, progress) = s.build(&dockerfile, out.path());
    assert!(ok, "{progress}");
    let file = out.path().join("x/hello.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"hello over http\n");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.modified().unwrap(), UNIX_EPOCH + Duration::from_secs(LAST_MODIFIED_SECS));
    assert_eq!(server.downloads.load(Ordering::SeqCst), 1);

    // Unchanged on the server: revalidated by ETag, not downloaded, CACHED.
    let again = tempfile::tempdir().unwrap();
    let (ok, progress) = s.build(&dockerfile, again.path());
    assert!(ok, "{progress}");
    assert!(cached(&progress, &format!("ADD {url}")), "{progress}");
    assert_eq!(server.downloads.load(Ordering::SeqCst), 1);

    // Changed on the server: downloaded again and the new content comes out.
    *server.body.lock().unwrap() = b"changed\n".to_vec();
    let changed = tempfile::tempdir().unwrap();
    let (ok, progress) = s.build(&dockerfile, changed.path());
    assert!(ok, "{progress}");
    assert_eq!(std::fs::read(changed.path().join("x/hello.txt")).unwrap(), b"changed\n");
}

#[test]
fn add_checksum_is_enforced_and_a_mismatch_names_both_digests() {
    let body = b"pinned content\n";
    let server = FileServer::start(body);
    let s = Setup::new();
    let url = server.url("/files/pinned.bin");
    let actual = format!("sha256:{}", sha256_hex(body));

    let out = tempfile::tempdir().unwrap();
    let (ok, progress) =
        s.build(&format!("FROM scratch\nADD --checksum={actual} {url} /pinned.bin\n"), out.path());
    assert!(ok, "{progress}");
    assert_eq!(std::fs::read(out.path().join("pinned.bin")).unwrap(), body);

    let wrong = format!("sha256:{}", sha256_hex(b"something else"));
    let out = tempfile::tempdir().unwrap();
    let (ok, progress) =
        s.build(&format!("FROM scratch\nADD --checksum={wrong} {url} /pinned.bin\n"), out.path());
    assert!(!ok, "a wrong checksum was accepted:\n{progress}");
    assert!(
        progress.contains(&format!("digest mismatch for {url}: {actual} (expected: {wrong})")),
        "{progress}"
    );
}

#[test]
fn add_of_a_missing_url_fails_with_the_status() {
    let server = FileServer::start(b"");
    let s = Setup::new();
    let url = server.url("/nothing-here");
    let out = tempfile::tempdir().unwrap();
    let (ok, progress) = s.build(&format!("FROM scratch\nADD {url} /x\n"), out.path());
    assert!(!ok, "{progress}");
    assert!(progress.contains(&format!("downloading {url}: invalid response status 404")), "{progress}");
}

/// A repository with a tag, served by `git daemon` on a loopback port.
struct GitServer {
    _base: tempfile::TempDir,
    repo: std::path::PathBuf,
    url: String,
    _daemon: Daemon,
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .args(["-c", "user.name=Kiln", "-c", "user.email=kiln@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir))
    .trim()
    .to_owned()
}

impl GitServer {
    fn start() -> Self {
        let base = tempfile::tempdir().unwrap();
        let repo = base.path().join("repo.git");
        std::fs::create_dir_all(repo.join("src")).unwrap();
        git(&repo, &["init", "-q"]);
        std::fs::write(repo.join("README"), "v1 readme\n").unwrap();
        std::fs::write(repo.join("src/main.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(repo.join("src/main.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "v1"]);
        git(&repo, &["tag", "v1"]);
        std::fs::write(repo.join("README"), "main readme\n").unwrap();
        git(&repo, &["commit", "-q", "-am", "after v1"]);

        let port = free_port();
        let mut daemon = Daemon::spawn(
            "git-daemon",
            Command::new("git").args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.path().display()),
            ]),
            base.path().join("git-daemon.log"),
        );
        let url = format!("git://127.0.0.1:{port}/repo.git");
        let probe = url.clone();
        daemon.wait_until(Duration::from_secs(10), || {
            Command::new("git").args(["ls-remote", &probe]).output().is_ok_and(|o| o.status.success())
        });
        Self { _base: base, repo, url, _daemon: daemon }
    }
}

#[test]
fn add_from_git_checks_out_the_tag_without_git_dir_and_keeps_it_when_asked() {
    let server = GitServer::start();
    let s = Setup::new();

    let out = tempfile::tempdir().unwrap();
    let (ok, progress) = s.build(&format!("FROM scratch\nADD {}#v1 /src\n", server.url), out.path());
    assert!(ok, "{progress}");
    assert_eq!(std::fs::read_to_string(out.path().join("src/README")).unwrap(), "v1 readme\n");
    let script = std::fs::metadata(out.path().join("src/src/main.sh")).unwrap();
    assert_eq!(script.permissions().mode() & 0o777, 0o755);
    assert!(!out.path().join("src/.git").exists());

    let out = tempfile::tempdir().unwrap();
    let (ok, progress) =
        s.build(&format!("FROM scratch\nADD --keep-git-dir=true {}#main /src\n", server.url), out.path());
    assert!(ok, "{progress}");
    assert_eq!(std::fs::read_to_string(out.path().join("src/README")).unwrap(), "main readme\n");
    assert_eq!(
        git(&out.path().join("src"), &["rev-parse", "HEAD"]),
        git(&server.repo, &["rev-parse", "main"])
    );

    // A subdir of the default branch, and the same commit by name again is CACHED.
    let dockerfile = format!("FROM scratch\nADD {}#main:src /app\n", server.url);
    let out = tempfile::tempdir().unwrap();
    let (ok, progress) = s.build(&dockerfile, out.path());
    assert!(ok, "{progress}");
    assert!(out.path().join("app/main.sh").is_file(), "{progress}");
    let (ok, progress) = s.build(&dockerfile, tempfile::tempdir().unwrap().path());
    assert!(ok && cached(&progress, "ADD git://"), "{progress}");
}

#[test]
fn add_from_git_with_a_ref_the_repository_lacks_fails_clearly() {
    let server = GitServer::start();
    let s = Setup::new();
    let out = tempfile::tempdir().unwrap();
    let (ok, progress) = s.build(&format!("FROM scratch\nADD {}#no-such-tag /src\n", server.url), out.path());
    assert!(!ok, "{progress}");
    assert!(
        progress.contains(&format!("repository {} does not contain ref no-such-tag", server.url)),
        "{progress}"
    );
}

#[test]
fn kilnd_and_buildkitd_give_the_same_files_for_http_and_git_sources() {
    let http = FileServer::start(b"same on both\n");
    let repo = GitServer::start();
    let dockerfile = format!(
        "FROM scratch\nADD {} /dl/\nADD {}#v1 /git\nADD {}#main:src /sub\nADD --keep-git-dir=true {}#v1 /kept\n",
        http.url("/files/data.txt"),
        repo.url,
        repo.url,
        repo.url
    );
    let ours = tempfile::tempdir().unwrap();
    let (ok, progress) = Setup::new().build(&dockerfile, ours.path());
    assert!(ok, "{progress}");
    let theirs = tempfile::tempdir().unwrap();
    let (ok, progress) = Setup::reference().build(&dockerfile, theirs.path());
    assert!(ok, "buildkitd: {progress}");

    // Checked-out files and new directories get the time of the build on
    // both; the download gets the server's Last-Modified.
    let download = |rel: &str| rel == "dl/data.txt";
    let without_git_dir = |t: Vec<(String, u32, Vec<u8>, Option<u64>)>| -> Vec<_> {
        t.into_iter().filter(|(rel, ..)| !rel.starts_with("kept/.git/")).collect()
    };
    assert_eq!(
        without_git_dir(file_tree(ours.path(), download)),
        without_git_dir(file_tree(theirs.path(), download))
    );
    let head = |dir: &Path| git(&dir.join("kept"), &["rev-parse", "HEAD"]);
    assert_eq!(head(ours.path()), head(theirs.path()));
}
