use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::*;

/// What the test server serves at every path, and what it saw.
#[derive(Default)]
struct Served {
    body: Vec<u8>,
    etag: Option<String>,
    last_modified: Option<String>,
    disposition: Option<String>,
    status: Option<StatusCode>,
    /// Full bodies sent (200s), and the If-None-Match values received.
    downloads: usize,
    if_none_match: Vec<String>,
    authorization: Vec<String>,
}

struct Server {
    addr: String,
    state: Arc<Mutex<Served>>,
}

impl Server {
    async fn start(body: &[u8]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(Served { body: body.to_vec(), ..Served::default() }));
        let router = axum::Router::new().fallback(serve).with_state(Arc::clone(&state));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, f: impl FnOnce(&mut Served)) {
        f(&mut self.state.lock().unwrap());
    }

    fn downloads(&self) -> usize {
        self.state.lock().unwrap().downloads
    }
}

async fn serve(State(state): State<Arc<Mutex<Served>>>, headers: HeaderMap) -> Response {
    let mut s = state.lock().unwrap();
    let sent = headers.get("if-none-match").map(|v| v.to_str().unwrap().to_owned());
    if let Some(v) = &sent {
        s.if_none_match.push(v.clone());
    }
    if let Some(v) = headers.get("authorization") {
        s.authorization.push(v.to_str().unwrap().to_owned());
    }
    let mut response = Response::new(Body::empty());
    if let Some(code) = s.status {
        *response.status_mut() = code;
        return response;
    }
    if sent.is_some() && sent == s.etag {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    s.downloads += 1;
    let h = response.headers_mut();
    if let Some(v) = &s.etag {
        h.insert("etag", v.parse().unwrap());
    }
    if let Some(v) = &s.last_modified {
        h.insert("last-modified", v.parse().unwrap());
    }
    if let Some(v) = &s.disposition {
        h.insert("content-disposition", v.parse().unwrap());
    }
    *response.body_mut() = Body::from(s.body.clone());
    response
}

fn source(url: &str, attrs: &[(&str, &str)]) -> HttpSource {
    let attrs: BTreeMap<String, String> =
        attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    HttpSource::parse(url, &attrs).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn open_cache() -> (tempfile::TempDir, CacheManager) {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::open(dir.path()).unwrap();
    (dir, cache)
}

#[tokio::test]
async fn a_download_is_one_file_named_after_the_url_with_mode_0600_and_the_servers_mtime() {
    let server = Server::start(b"hello\n").await;
    server.set(|s| s.last_modified = Some("Wed, 21 Oct 2015 07:28:00 GMT".into()));
    let (_dir, cache) = open_cache();
    let src = source(&server.url("/dl/hello%20world.txt?sig=1"), &[]);

    let got = fetch(&cache, &client().unwrap(), &src, None).await.unwrap();

    assert_eq!(got.filename, "hello world.txt");
    assert_eq!(got.digest, sha256(b"hello\n"));
    let layer = cache.layer_path(&got.layer);
    let names: Vec<_> = std::fs::read_dir(&layer).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["hello world.txt"]);
    let path = layer.join("hello world.txt");
    assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.modified().unwrap(), UNIX_EPOCH + Duration::from_secs(1_445_412_480));
}

#[tokio::test]
async fn without_last_modified_the_mtime_is_the_epoch_and_perm_uid_gid_apply() {
    let server = Server::start(b"#!/bin/sh\n").await;
    let (_dir, cache) = open_cache();
    let src =
        source(&server.url("/tool"), &[("http.perm", "0755"), ("http.uid", "1000"), ("http.gid", "0x10")]);

    let got = fetch(&cache, &client().unwrap(), &src, None).await.unwrap();

    let meta = std::fs::metadata(cache.layer_path(&got.layer).join("tool")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o755, 1000, 16));
    assert_eq!(meta.modified().unwrap(), UNIX_EPOCH);
}

#[tokio::test]
async fn the_name_comes_from_the_attribute_then_content_disposition_then_the_path() {
    let server = Server::start(b"x").await;
    server.set(|s| s.disposition = Some(r#"attachment; filename="../report.pdf""#.into()));
    let (_dir, cache) = open_cache();
    let http = client().unwrap();

    let from_header = fetch(&cache, &http, &source(&server.url("/download"), &[]), None).await.unwrap();
    assert_eq!(from_header.filename, "report.pdf");
    let from_attr =
        fetch(&cache, &http, &source(&server.url("/download"), &[("http.filename", "/etc/x.bin")]), None)
            .await
            .unwrap();
    assert_eq!(from_attr.filename, "x.bin");
    assert!(cache.layer_path(&from_attr.layer).join("x.bin").is_file());
    // Same bytes, different name: a different key.
    assert_ne!(from_header.key, from_attr.key);
}

#[tokio::test]
async fn an_unchanged_etag_revalidates_without_downloading_and_a_new_one_changes_the_key() {
    let server = Server::start(b"v1").await;
    server.set(|s| s.etag = Some("\"one\"".into()));
    let (_dir, cache) = open_cache();
    let http = client().unwrap();
    let src = source(&server.url("/f"), &[]);

    let first = fetch(&cache, &http, &src, None).await.unwrap();
    let second = fetch(&cache, &http, &src, None).await.unwrap();
    assert_eq!(server.downloads(), 1);
    assert!(second.revalidated && !first.revalidated);
    assert_eq!((second.layer.as_str(), second.key.as_str()), (first.layer.as_str(), first.key.as_str()));
    assert_eq!(server.state.lock().unwrap().if_none_match, ["\"one\""]);

    server.set(|s| {
        s.body = b"v2".to_vec();
        s.etag = Some("W/\"two\"".into());
    });
    let third = fetch(&cache, &http, &src, None).await.unwrap();
    assert_eq!(server.downloads(), 2);
    assert_ne!(third.key, first.key);
    assert_eq!(std::fs::read(cache.layer_path(&third.layer).join("f")).unwrap(), b"v2");
}

#[tokio::test]
async fn the_same_content_downloaded_again_keeps_the_earlier_layer_and_key() {
    let server = Server::start(b"same").await;
    let (_dir, cache) = open_cache();
    let http = client().unwrap();
    let src = source(&server.url("/f"), &[]);

    let first = fetch(&cache, &http, &src, None).await.unwrap();
    let second = fetch(&cache, &http, &src, None).await.unwrap();
    // No ETag: downloaded twice, but it is the same file.
    assert_eq!(server.downloads(), 2);
    assert_eq!((second.layer, second.key), (first.layer, first.key));
}

#[tokio::test]
async fn a_pinned_source_is_keyed_without_a_request_and_the_download_must_match() {
    let server = Server::start(b"payload").await;
    let (_dir, cache) = open_cache();
    let http = client().unwrap();
    let good = source(&server.url("/p.tgz"), &[("http.checksum", &sha256(b"payload"))]);

    let key = good.pinned_key().unwrap();
    assert_eq!(server.downloads(), 0);
    let got = fetch(&cache, &http, &good, None).await.unwrap();
    assert_eq!(got.key, key);

    let wrong = sha256(b"something else");
    let bad = source(&server.url("/p.tgz"), &[("http.checksum", &wrong)]);
    let err = fetch(&cache, &http, &bad, None).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("digest mismatch for {}: {} (expected: {wrong})", server.url("/p.tgz"), sha256(b"payload"))
    );

    let sha512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(b"payload")));
    let other_algorithm = source(&server.url("/p.tgz"), &[("http.checksum", &sha512)]);
    assert_eq!(fetch(&cache, &http, &other_algorithm, None).await.unwrap().digest, sha256(b"payload"));
}

#[tokio::test]
async fn error_statuses_fail_with_the_status_and_authorization_is_sent() {
    let server = Server::start(b"").await;
    server.set(|s| s.status = Some(StatusCode::NOT_FOUND));
    let (_dir, cache) = open_cache();
    let src = source(&server.url("/missing"), &[]);

    let err = fetch(&cache, &client().unwrap(), &src, Some("Bearer t0k")).await.unwrap_err();

    assert_eq!(
        err.to_string(),
        format!("downloading {}: invalid response status 404", server.url("/missing"))
    );
    assert_eq!(server.state.lock().unwrap().authorization, ["Bearer t0k"]);
}

#[test]
fn bad_attributes_are_named_in_the_error() {
    let parse = |attrs: &[(&str, &str)]| {
        let attrs: BTreeMap<String, String> =
            attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        HttpSource::parse("https://user:secret@example.com/f", &attrs).unwrap_err().to_string()
    };
    assert_eq!(
        parse(&[("http.perm", "rwx")]),
        "http source https://user:xxxxx@example.com/f: attribute http.perm=\"rwx\" is not a number"
    );
    assert_eq!(
        parse(&[("http.checksum", "md5:abc")]),
        "http source https://user:xxxxx@example.com/f: invalid checksum \"md5:abc\": unsupported digest algorithm"
    );
    assert!(HttpSource::parse("not a url", &BTreeMap::new()).is_err());
}

#[test]
fn file_names_follow_buildkit() {
    assert_eq!(file_name("https://h/a/b.tar.gz", None, None), "b.tar.gz");
    assert_eq!(file_name("https://h/dir/", None, None), "dir");
    assert_eq!(file_name("https://h/", None, None), "__unnamed__");
    assert_eq!(file_name("https://h", None, None), "__unnamed__");
    assert_eq!(file_name("https://h/x", Some(".."), None), "__unnamed__");
    assert_eq!(file_name("https://h/x", None, Some("inline")), "x");
    assert_eq!(file_name("https://h/x", None, Some("attachment; filename=dir/")), "x");
    assert_eq!(file_name("https://h/x", None, Some("attachment; filename=a.txt; size=3")), "a.txt");
    assert_eq!(
        file_name(
            "https://h/x",
            None,
            Some("attachment; filename=\"plain\"; filename*=UTF-8''caf%C3%A9.txt")
        ),
        "café.txt"
    );
}

#[test]
fn numeric_attributes_parse_as_go_parse_int_with_base_0() {
    let perm = |v: &str| {
        let attrs = BTreeMap::from([("http.perm".to_owned(), v.to_owned())]);
        HttpSource::parse("https://example.com/f", &attrs).ok().map(|s| s.perm)
    };
    assert_eq!(perm("0644"), Some(0o644));
    assert_eq!(perm("0o755"), Some(0o755));
    assert_eq!(perm("0x1ff"), Some(0o777));
    assert_eq!(perm("0b111"), Some(7));
    assert_eq!(perm("1_000"), Some(1000));
    assert_eq!(perm("493"), Some(493));
    assert_eq!(perm("0"), Some(0));
    assert_eq!(perm("08"), None);
    // Go takes the sign; a negative value or one beyond 32 bits is no mode or id.
    assert_eq!(perm("-1"), None);
    assert_eq!(perm("4294967296"), None);
}
