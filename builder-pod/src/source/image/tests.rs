//! Registry tests against real `docker-registry` processes on loopback
//! (plain and htpasswd), a bearer-token front written here, and `skopeo`
//! as an independent client. Every test starts and stops its own servers.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use tempfile::TempDir;

use super::auth::{Anonymous, AuthError, ClientToken, Credentials, RegistryAuth, StaticCredentials};
use super::manifest::{DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use super::*;
use crate::snapshot::{self, Compression, DiffOptions};

// ------------------------------------------------------------- registries ---

/// A `docker-registry serve` process with its own storage, killed on drop.
struct TestRegistry {
    _dir: TempDir,
    addr: String,
    _child: tokio::process::Child,
}

impl TestRegistry {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    async fn start_with(user: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  relativeurls: true\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = user {
            let out = std::process::Command::new("htpasswd").args(["-Bbn", user, password]).output().unwrap();
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("docker-registry must be installed (e2e/env/up installs it)");
        wait_for_http(&format!("http://{addr}/v2/")).await;
        Self { _dir: dir, addr, _child: child }
    }

    fn reference(&self, name: &str) -> Reference {
        Reference::parse(&format!("{}/{name}", self.addr)).unwrap()
    }
}

async fn wait_for_http(url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not answer within 10 s");
}

fn plain_http(addrs: &[&str]) -> RegistryHosts {
    addrs.iter().fold(RegistryHosts::new(), |hosts, addr| {
        hosts.with(*addr, HostConfig { http: true, insecure: false })
    })
}

fn client(addrs: &[&str], auth: impl RegistryAuth + 'static) -> RegistryClient {
    Registry::new(plain_http(addrs)).unwrap().client(Arc::new(auth))
}

/// Counts how often credentials are asked for.
#[derive(Debug, Default)]
struct CountingAuth {
    inner: StaticCredentials,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl RegistryAuth for CountingAuth {
    async fn credentials(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.credentials(host).await
    }
}

// ---------------------------------------------------------- bearer front ---

/// A token server plus a registry front that demands its tokens and
/// forwards to a real registry: the Docker Hub arrangement in miniature.
struct TokenFront {
    addr: String,
    state: Arc<FrontState>,
}

struct FrontState {
    addr: String,
    upstream: String,
    basic: HeaderValue,
    identity_token: String,
    tokens: Mutex<HashSet<String>>,
    /// (method, scopes) of each token request.
    token_requests: Mutex<Vec<(String, Vec<String>)>>,
    /// A blob served with one byte flipped.
    corrupt: Mutex<Option<String>>,
    http: reqwest::Client,
}

impl TokenFront {
    async fn start(upstream: &TestRegistry, user: &str, password: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let basic = reqwest::Client::new().get("http://x").basic_auth(user, Some(password)).build().unwrap();
        let state = Arc::new(FrontState {
            addr: addr.clone(),
            upstream: format!("http://{}", upstream.addr),
            basic: basic.headers()[reqwest::header::AUTHORIZATION].clone(),
            identity_token: "identity-secret".into(),
            tokens: Mutex::default(),
            token_requests: Mutex::default(),
            corrupt: Mutex::default(),
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        });
        let router = axum::Router::new()
            .route("/token", axum::routing::get(token_get).post(token_post))
            .fallback(front)
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, state }
    }

    fn reference(&self, name: &str) -> Reference {
        Reference::parse(&format!("{}/{name}", self.addr)).unwrap()
    }

    fn token_requests(&self) -> Vec<(String, Vec<String>)> {
        self.state.token_requests.lock().unwrap().clone()
    }
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}")).unwrap().query_pairs().into_owned().collect()
}

fn issue(state: &FrontState, scopes: Vec<String>) -> Response {
    let token = format!("token-{}|{}", state.tokens.lock().unwrap().len(), scopes.join(" "));
    state.tokens.lock().unwrap().insert(token.clone());
    let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 });
    Response::new(Body::from(body.to_string()))
}

fn status(code: StatusCode, body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_owned()));
    *response.status_mut() = code;
    response
}

async fn token_get(State(state): State<Arc<FrontState>>, headers: HeaderMap, request: Request) -> Response {
    let pairs = query_pairs(request.uri().query().unwrap_or(""));
    let scopes: Vec<String> = pairs.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    state.token_requests.lock().unwrap().push(("GET".into(), scopes.clone()));
    match headers.get("authorization") {
        Some(value) if *value == state.basic => issue(&state, scopes),
        Some(_) => status(StatusCode::UNAUTHORIZED, r#"{"details":"incorrect username or password"}"#),
        // Anonymous callers get a token that grants nothing.
        None => issue(&state, Vec::new()),
    }
}

async fn token_post(State(state): State<Arc<FrontState>>, request: Request) -> Response {
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
    let pairs = query_pairs(&String::from_utf8_lossy(&body));
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default();
    let scopes: Vec<String> = get("scope").split(' ').map(str::to_owned).collect();
    state.token_requests.lock().unwrap().push(("POST".into(), scopes.clone()));
    if get("grant_type") != "refresh_token" || get("refresh_token") != state.identity_token {
        return status(StatusCode::UNAUTHORIZED, "bad refresh token");
    }
    issue(&state, scopes)
}

async fn front(State(state): State<Arc<FrontState>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let repository = path
        .strip_prefix("/v2/")
        .and_then(|rest| {
            ["/manifests/", "/blobs/", "/tags/"].iter().find_map(|m| rest.split_once(m).map(|(r, _)| r))
        })
        .unwrap_or("")
        .to_owned();
    let push = !matches!(request.method().as_str(), "GET" | "HEAD");
    let needed = format!("repository:{repository}:{}", if push { "pull,push" } else { "pull" });
    let authorised = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| state.tokens.lock().unwrap().contains(*t))
        .is_some_and(|t| {
            let scopes = t.split_once('|').map_or("", |(_, s)| s);
            scopes
                .split(' ')
                .any(|s| s == needed || (!push && s == format!("repository:{repository}:pull,push")))
        });
    if !authorised {
        let mut response = status(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        let challenge =
            format!(r#"Bearer realm="http://{}/token",service="kiln-front",scope="{needed}""#, state.addr);
        response.headers_mut().insert("www-authenticate", HeaderValue::from_str(&challenge).unwrap());
        return response;
    }

    let url = format!("{}{}", state.upstream, request.uri().path_and_query().map_or("", |p| p.as_str()));
    let method = request.method().clone();
    let mut forward = state.http.request(method, &url);
    for name in ["content-type", "accept"] {
        if let Some(value) = request.headers().get(name) {
            forward = forward.header(name, value.clone());
        }
    }
    let body = axum::body::to_bytes(request.into_body(), 64 << 20).await.unwrap();
    let upstream = forward.body(body.to_vec()).send().await.unwrap();
    let mut response = Response::builder().status(upstream.status().as_u16());
    for name in ["content-type", "docker-content-digest", "location", "www-authenticate"] {
        if let Some(value) = upstream.headers().get(name) {
            response = response.header(name, value.as_bytes());
        }
    }
    let mut bytes = upstream.bytes().await.unwrap().to_vec();
    let corrupt = state.corrupt.lock().unwrap().clone();
    if corrupt.is_some_and(|digest| path.ends_with(&format!("/blobs/{digest}"))) && !bytes.is_empty() {
        bytes[0] ^= 0xff;
    }
    response.body(Body::from(bytes)).unwrap()
}

// ---------------------------------------------------------------- images ---

/// Sets the mtime of `root` and of everything under it (regular files and
/// directories) to the epoch.
fn zero_mtimes(root: &Path) {
    if root.is_dir() {
        for entry in std::fs::read_dir(root).unwrap() {
            zero_mtimes(&entry.unwrap().path());
        }
    }
    std::fs::File::open(root).unwrap().set_modified(std::time::UNIX_EPOCH).unwrap();
}

/// A test image built the way the exporter will: files → overlay diff → tar
/// → gzip into the content store, then config and manifest.
fn build_image(
    store: &ContentStore,
    layers: &[&[(&str, &str)]],
    arch: &str,
    docker: bool,
) -> (String, Vec<u8>) {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for files in layers {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in *files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
        }
        // The same files give the same layer, whenever they were written.
        zero_mtimes(dir.path());
        let compression = Compression::Gzip { level: 6 };
        let writer = snapshot::compress(store.ingest().unwrap(), compression).unwrap();
        let writer = snapshot::diff_to_tar(dir.path(), writer, &DiffOptions::default()).unwrap();
        let (ingest, digests) = writer.finish().unwrap();
        ingest.commit(Some((&digests.digest, digests.size))).unwrap();
        let media_type = if docker { compression.docker_media_type() } else { compression.oci_media_type() };
        descriptors.push(
            serde_json::json!({ "mediaType": media_type, "digest": digests.digest, "size": digests.size }),
        );
        diff_ids.push(digests.diff_id.to_string());
    }
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string()
    .into_bytes();
    let config_digest = Digest::of(&config);
    write_sync(store, &config);
    let (manifest_type, config_type) =
        if docker { (DOCKER_MANIFEST, DOCKER_CONFIG) } else { (OCI_MANIFEST, OCI_CONFIG) };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
        "layers": descriptors,
    })
    .to_string()
    .into_bytes();
    write_sync(store, &manifest);
    (manifest_type.to_owned(), manifest)
}

fn write_sync(store: &ContentStore, bytes: &[u8]) {
    let mut ingest = store.ingest().unwrap();
    ingest.write_all(bytes).unwrap();
    ingest.commit(None).unwrap();
}

fn build_index(store: &ContentStore) -> (Vec<u8>, Digest, Digest) {
    let (_, amd64) = build_image(store, &[&[("bin/arch", "amd64")]], "amd64", false);
    let (_, arm64) = build_image(store, &[&[("bin/arch", "arm64")]], "arm64", false);
    let entry = |bytes: &[u8], arch: &str| {
        serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": Digest::of(bytes), "size": bytes.len(),
            "platform": { "os": "linux", "architecture": arch },
        })
    };
    let attestation = serde_json::json!({
        "mediaType": OCI_MANIFEST, "digest": Digest::of(&amd64), "size": amd64.len(),
        "platform": { "os": "unknown", "architecture": "unknown" },
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry(&amd64, "amd64"), entry(&arm64, "arm64"), attestation],
    })
    .to_string()
    .into_bytes();
    write_sync(store, &index);
    (index, Digest::of(&amd64), Digest::of(&arm64))
}

fn new_store() -> (TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("content")).unwrap();
    (dir, store)
}

/// Unpacks a pulled image's layers into one tree and reads `path` from it.
fn unpack(image: &ResolvedImage, store: &ContentStore, path: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut diffs = Vec::new();
    for (i, layer) in image.layers().iter().enumerate() {
        let blob = std::fs::File::open(store.blob_path(&layer.digest)).unwrap();
        let tar = snapshot::decompress(blob, Some(&layer.media_type)).unwrap();
        let diff = dir.path().join(format!("diff{i}"));
        snapshot::apply_layer(tar, &diff).unwrap();
        diffs.push(diff);
    }
    let rootfs = dir.path().join("rootfs");
    snapshot::flatten(&diffs, &rootfs).unwrap();
    std::fs::read_to_string(rootfs.join(path)).unwrap()
}

// ----------------------------------------------------------------- tests ---

#[tokio::test]
async fn an_oci_image_pushes_resolves_and_pulls() {
    let registry = TestRegistry::start().await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(
        &source,
        &[&[("etc/os-release", "kiln 1"), ("bin/sh", "#!")], &[("etc/os-release", "kiln 2")]],
        "amd64",
        false,
    );
    let reference = registry.reference("kiln/app:v1");
    let pusher = client(&[&registry.addr], Anonymous);
    let pushed = pusher.push_image(&reference, &source, &media_type, &manifest).await.unwrap();
    assert_eq!(pushed, Digest::of(&manifest));

    let puller = client(&[&registry.addr], Anonymous);
    let image = puller.resolve(&reference, &Platform::linux_amd64()).await.unwrap();
    assert_eq!(image.manifest_digest, pushed);
    assert_eq!(image.digest(), &pushed, "without an index the manifest digest is pinned");
    assert!(image.index.is_none());
    assert_eq!(image.manifest_bytes, manifest);
    assert_eq!(image.config, source.read(&image.config_digest).await.unwrap());
    assert_eq!(image.layers().len(), 2);
    let pinned = image.reference.with_digest(image.digest().clone());
    assert_eq!(pinned.to_string(), format!("{}/kiln/app:v1@{pushed}", registry.addr));

    let (_dir2, store) = new_store();
    let stats = puller.pull(&image, &store).await.unwrap();
    assert_eq!((stats.fetched, stats.present), (2, 0));
    assert_eq!(stats.bytes, image.layers().iter().map(|l| l.size).sum::<u64>());
    assert!(store.exists(&image.manifest_digest).await && store.exists(&image.config_digest).await);
    assert_eq!(unpack(&image, &store, "etc/os-release"), "kiln 2");
    assert_eq!(unpack(&image, &store, "bin/sh"), "#!");

    let again = puller.pull(&image, &store).await.unwrap();
    assert_eq!(
        (again.fetched, again.present, again.bytes),
        (0, 2, 0),
        "present blobs are not downloaded again"
    );

    // By digest, too.
    let pinned = puller.resolve(&pinned, &Platform::linux_amd64()).await.unwrap();
    assert_eq!(pinned.manifest_digest, pushed);

    // A second push finds every blob in place.
    let again = pusher.push_blob_from_store(&reference, &source, &image.layers()[0].digest).await.unwrap();
    assert_eq!(again, BlobPush::Present);
}

#[tokio::test]
async fn a_blob_pulled_from_one_repository_is_mounted_into_another() {
    let registry = TestRegistry::start().await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(&source, &[&[("base", "layer")]], "amd64", false);
    let base = registry.reference("kiln/base:v1");
    client(&[&registry.addr], Anonymous).push_image(&base, &source, &media_type, &manifest).await.unwrap();

    // One daemon's registry client: pulls the base, then pushes its layer
    // to another repository of the same registry.
    let shared = Registry::new(plain_http(&[&registry.addr])).unwrap();
    let puller = shared.client(Arc::new(Anonymous));
    let image = puller.resolve(&base, &Platform::linux_amd64()).await.unwrap();
    let (_dir2, store) = new_store();
    puller.pull(&image, &store).await.unwrap();
    let layer = &image.layers()[0].digest;
    let app = registry.reference("kiln/app:v1");
    let pusher = shared.client(Arc::new(Anonymous));
    assert_eq!(pusher.push_blob_from_store(&app, &store, layer).await.unwrap(), BlobPush::Mounted);
    assert_eq!(pusher.push_blob_from_store(&app, &store, layer).await.unwrap(), BlobPush::Present);

    // A client that never saw the blob uploads it.
    let other = registry.reference("kiln/other:v1");
    let fresh = client(&[&registry.addr], Anonymous);
    assert_eq!(fresh.push_blob_from_store(&other, &store, layer).await.unwrap(), BlobPush::Uploaded);
}

#[tokio::test]
async fn a_docker_schema2_image_resolves_with_its_media_type() {
    let registry = TestRegistry::start().await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(&source, &[&[("hello", "docker")]], "amd64", true);
    let reference = registry.reference("kiln/docker:v2s2");
    let client = client(&[&registry.addr], Anonymous);
    client.push_image(&reference, &source, &media_type, &manifest).await.unwrap();

    let image = client.resolve(&reference, &Platform::linux_amd64()).await.unwrap();
    assert_eq!(image.manifest.config.media_type, DOCKER_CONFIG);
    assert_eq!(image.layers()[0].media_type, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    let (_dir2, store) = new_store();
    client.pull(&image, &store).await.unwrap();
    assert_eq!(unpack(&image, &store, "hello"), "docker");
}

#[tokio::test]
async fn an_index_resolves_to_the_requested_platform() {
    let registry = TestRegistry::start().await;
    let (_dir, source) = new_store();
    let (index, amd64, arm64) = build_index(&source);
    let reference = registry.reference("kiln/multi:latest");
    let client = client(&[&registry.addr], Anonymous);
    let index_digest = client.push_image(&reference, &source, OCI_INDEX, &index).await.unwrap();

    let image = client.resolve(&reference, &Platform::parse("linux/arm64").unwrap()).await.unwrap();
    assert_eq!(image.manifest_digest, arm64);
    assert_eq!(image.digest(), &index_digest, "the index digest is the one to pin, as BuildKit does");
    let index: Index = serde_json::from_slice(&image.index.as_ref().unwrap().bytes).unwrap();
    assert_eq!(index.manifests.len(), 3);
    let (_dir2, store) = new_store();
    client.pull(&image, &store).await.unwrap();
    assert_eq!(unpack(&image, &store, "bin/arch"), "arm64");
    assert!(store.exists(&index_digest).await);

    let image = client.resolve(&reference, &Platform::linux_amd64()).await.unwrap();
    assert_eq!(image.manifest_digest, amd64);
    let image = client.resolve(&reference, &Platform::parse("linux/aarch64/v8").unwrap()).await.unwrap();
    assert_eq!(image.manifest_digest, arm64, "platform names are normalised before matching");

    let err =
        client.resolve(&reference, &Platform::parse("linux/s390x").unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("no image for platform linux/s390x"), "{err}");
    assert!(err.contains("it has linux/amd64, linux/arm64, unknown/unknown"), "{err}");
    assert!(err.contains("kiln/multi:latest"), "{err}");
}

#[tokio::test]
async fn missing_images_say_not_found_with_the_reference() {
    let registry = TestRegistry::start().await;
    let reference = registry.reference("kiln/nothing:here");
    let err =
        client(&[&registry.addr], Anonymous).resolve(&reference, &Platform::linux_amd64()).await.unwrap_err();
    assert!(
        matches!(&err, ImageError::PullManifest { source, .. } if matches!(**source, RequestError::NotFound { .. })),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("pulling manifest of")
            && text.contains("kiln/nothing:here")
            && text.contains("not found"),
        "{text}"
    );

    // Nothing listening at all is a connection error naming the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let err = client(&[&closed], Anonymous)
        .resolve(&Reference::parse(&format!("{closed}/x")).unwrap(), &Platform::linux_amd64())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("http://{closed}/v2/x/manifests/latest")), "{err}");
    assert!(err.contains("Connection refused"), "the cause is spelled out: {err}");
}

#[tokio::test]
async fn a_failed_push_leaves_no_tag_behind() {
    let registry = TestRegistry::start().await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(&source, &[&[("a", "1")], &[("b", "2")]], "amd64", false);
    let parsed: Manifest = serde_json::from_slice(&manifest).unwrap();
    let missing = parsed.layers[1].digest.clone();
    std::fs::remove_file(source.blob_path(&missing)).unwrap();

    let reference = registry.reference("kiln/partial:v1");
    let client = client(&[&registry.addr], Anonymous);
    let err = client.push_image(&reference, &source, &media_type, &manifest).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("pushing blob {missing}")) && err.contains("not found in the content store"),
        "{err}"
    );
    let err = client.resolve(&reference, &Platform::linux_amd64()).await.unwrap_err().to_string();
    assert!(err.contains("not found"), "the tag must not exist: {err}");
}

#[tokio::test]
async fn basic_auth_sends_the_hosts_credentials() {
    let registry = TestRegistry::start_with(Some(("kiln", "s3cret"))).await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(&source, &[&[("f", "basic")]], "amd64", false);
    let reference = registry.reference("kiln/private:v1");

    let anonymous = client(&[&registry.addr], Anonymous);
    let err =
        anonymous.push_image(&reference, &source, &media_type, &manifest).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("unauthorized: {} requires credentials and none were given", registry.addr)),
        "{err}"
    );

    let wrong = client(&[&registry.addr], StaticCredentials::new().with(&registry.addr, "kiln", "nope"));
    let err = wrong.resolve(&reference, &Platform::linux_amd64()).await.unwrap_err().to_string();
    assert!(
        err.contains("unauthorized") && err.contains(r#"rejected the credentials of user "kiln""#),
        "{err}"
    );

    let auth = Arc::new(CountingAuth {
        inner: StaticCredentials::new().with(&registry.addr, "kiln", "s3cret"),
        ..Default::default()
    });
    let good = Registry::new(plain_http(&[&registry.addr])).unwrap().client(auth.clone());
    good.push_image(&reference, &source, &media_type, &manifest).await.unwrap();
    let image = good.resolve(&reference, &Platform::linux_amd64()).await.unwrap();
    let (_dir2, store) = new_store();
    good.pull(&image, &store).await.unwrap();
    assert_eq!(unpack(&image, &store, "f"), "basic");
    assert_eq!(auth.calls.load(Ordering::SeqCst), 1, "credentials are asked for once per host");
}

#[tokio::test]
async fn bearer_tokens_are_fetched_per_scope_and_reused() {
    let registry = TestRegistry::start().await;
    let front = TokenFront::start(&registry, "kiln", "t0ken").await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(&source, &[&[("f", "bearer")]], "amd64", false);
    let reference = front.reference("kiln/tokens:v1");
    let creds = StaticCredentials::new().with(&front.addr, "kiln", "t0ken");

    let pusher = client(&[&front.addr], creds.clone());
    pusher.push_image(&reference, &source, &media_type, &manifest).await.unwrap();
    // The challenge of the first HEAD names the pull scope; the token asks
    // for what the push needs as well, and serves the whole push.
    let scopes =
        vec!["repository:kiln/tokens:pull,push".to_owned(), "repository:kiln/tokens:pull".to_owned()];
    assert_eq!(front.token_requests(), vec![("GET".to_owned(), scopes)]);

    let puller = client(&[&front.addr], creds);
    let image = puller.resolve(&reference, &Platform::linux_amd64()).await.unwrap();
    let (_dir2, store) = new_store();
    puller.pull(&image, &store).await.unwrap();
    puller.resolve(&reference, &Platform::linux_amd64()).await.unwrap();
    assert_eq!(unpack(&image, &store, "f"), "bearer");
    let requests = front.token_requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1], ("GET".to_owned(), vec!["repository:kiln/tokens:pull".to_owned()]));

    let anonymous = client(&[&front.addr], Anonymous);
    let err = anonymous.resolve(&reference, &Platform::linux_amd64()).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("unauthorized: {}", front.addr)) && err.contains("rejected the token"),
        "{err}"
    );

    let wrong = client(&[&front.addr], StaticCredentials::new().with(&front.addr, "kiln", "bad"));
    let err = wrong.resolve(&reference, &Platform::linux_amd64()).await.unwrap_err().to_string();
    assert!(
        err.contains("unauthorized") && err.contains("token server") && err.contains(r#"user "kiln""#),
        "{err}"
    );
}

/// A client that fetches registry tokens itself (buildx's `FetchToken`): its
/// password never reaches the daemon.
#[derive(Debug, Default)]
struct ClientSide {
    user: String,
    password: String,
    credentials_asked: AtomicUsize,
    tokens_fetched: AtomicUsize,
}

#[async_trait::async_trait]
impl RegistryAuth for ClientSide {
    async fn credentials(&self, _host: &str) -> Result<Option<Credentials>, AuthError> {
        self.credentials_asked.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }

    async fn fetch_token(
        &self,
        _host: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Option<ClientToken>, AuthError> {
        self.tokens_fetched.fetch_add(1, Ordering::SeqCst);
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
        if let Some(service) = service {
            query.push(("service", service));
        }
        let body: serde_json::Value = reqwest::Client::new()
            .get(realm)
            .query(&query)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(Some(ClientToken {
            token: body["token"].as_str().unwrap_or_default().to_owned(),
            expires_in: Some(300),
        }))
    }
}

#[tokio::test]
async fn a_client_that_fetches_tokens_itself_is_never_asked_for_its_password() {
    let registry = TestRegistry::start().await;
    let front = TokenFront::start(&registry, "kiln", "t0ken").await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(&source, &[&[("f", "client token")]], "amd64", false);
    let reference = front.reference("kiln/client-tokens:v1");
    let pusher = client(&[&front.addr], StaticCredentials::new().with(&front.addr, "kiln", "t0ken"));
    pusher.push_image(&reference, &source, &media_type, &manifest).await.unwrap();

    let auth =
        Arc::new(ClientSide { user: "kiln".into(), password: "t0ken".into(), ..ClientSide::default() });
    let puller =
        Registry::new(plain_http(&[&front.addr])).unwrap().client(Arc::clone(&auth) as Arc<dyn RegistryAuth>);
    let image = puller.resolve(&reference, &Platform::linux_amd64()).await.unwrap();
    let (_dir2, store) = new_store();
    puller.pull(&image, &store).await.unwrap();
    assert_eq!(unpack(&image, &store, "f"), "client token");
    assert!(auth.tokens_fetched.load(Ordering::SeqCst) >= 1);
    assert_eq!(auth.credentials_asked.load(Ordering::SeqCst), 0, "the password stayed with the client");

    // A client whose token fetch fails: the error names the realm and host.
    let wrong = Arc::new(ClientSide { user: "kiln".into(), password: "bad".into(), ..ClientSide::default() });
    let wrong = Registry::new(plain_http(&[&front.addr])).unwrap().client(wrong as Arc<dyn RegistryAuth>);
    let err = wrong.resolve(&reference, &Platform::linux_amd64()).await.unwrap_err();
    assert!(err.to_string().contains(&front.addr), "{err}");
}

#[tokio::test]
async fn an_identity_token_is_exchanged_with_the_oauth_post() {
    let registry = TestRegistry::start().await;
    let front = TokenFront::start(&registry, "kiln", "t0ken").await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(&source, &[&[("f", "oauth")]], "amd64", false);
    let reference = front.reference("kiln/oauth:v1");
    let client = client(&[&front.addr], StaticCredentials::new().with(&front.addr, "", "identity-secret"));
    client.push_image(&reference, &source, &media_type, &manifest).await.unwrap();
    let image = client.resolve(&reference, &Platform::linux_amd64()).await.unwrap();
    assert_eq!(image.manifest_bytes, manifest);
    assert!(
        front.token_requests().iter().all(|(method, _)| method == "POST"),
        "{:?}",
        front.token_requests()
    );
}

#[tokio::test]
async fn a_corrupted_layer_never_lands_in_the_store() {
    let registry = TestRegistry::start().await;
    let front = TokenFront::start(&registry, "kiln", "t0ken").await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(&source, &[&[("f", "intact")]], "amd64", false);
    let reference = front.reference("kiln/corrupt:v1");
    let client = client(&[&front.addr], StaticCredentials::new().with(&front.addr, "kiln", "t0ken"));
    client.push_image(&reference, &source, &media_type, &manifest).await.unwrap();
    let image = client.resolve(&reference, &Platform::linux_amd64()).await.unwrap();
    let layer = image.layers()[0].digest.clone();
    *front.state.corrupt.lock().unwrap() = Some(layer.to_string());

    let (_dir2, store) = new_store();
    let err = client.pull(&image, &store).await.unwrap_err().to_string();
    assert!(err.contains(&format!("pulling blob {layer}")) && err.contains("content has digest"), "{err}");
    assert!(!store.exists(&layer).await);
}

#[tokio::test]
async fn skopeo_reads_our_pushes_and_we_read_its_copies() {
    let registry = TestRegistry::start().await;
    let (_dir, source) = new_store();
    let (media_type, manifest) = build_image(&source, &[&[("etc/motd", "from kiln")]], "amd64", false);
    let ours = registry.reference("kiln/ours:v1");
    let client = client(&[&registry.addr], Anonymous);
    let digest = client.push_image(&ours, &source, &media_type, &manifest).await.unwrap();

    let skopeo = |args: &[&str]| {
        let out = std::process::Command::new("skopeo").args(args).output().expect("skopeo must be installed");
        assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let src = format!("docker://{ours}");
    let inspected: serde_json::Value =
        serde_json::from_slice(&skopeo(&["inspect", "--tls-verify=false", &src])).unwrap();
    assert_eq!(inspected["Digest"], digest.to_string());
    assert_eq!(inspected["Architecture"], "amd64");

    let theirs = registry.reference("kiln/theirs:v2s2");
    let dest = format!("docker://{theirs}");
    skopeo(&["copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--format", "v2s2", &src, &dest]);
    let image = client.resolve(&theirs, &Platform::linux_amd64()).await.unwrap();
    let (_dir2, store) = new_store();
    client.pull(&image, &store).await.unwrap();
    assert_eq!(unpack(&image, &store, "etc/motd"), "from kiln");
}

#[test]
fn registry_hosts_default_to_https() {
    let hosts = plain_http(&["127.0.0.1:5000"]);
    assert!(hosts.get("127.0.0.1:5000").http);
    assert_eq!(hosts.get("docker.io"), HostConfig::default());
    let config: HostConfig = toml::from_str("http = true\ninsecure = true").unwrap();
    assert_eq!(config, HostConfig { http: true, insecure: true });
}

#[test]
fn the_index_entry_is_chosen_like_containerd() {
    let d = |arch: Option<&str>, n: u8| Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: Digest::of(&[n]),
        size: 1,
        platform: arch.map(|a| Platform::parse(a).unwrap()),
        urls: None,
        annotations: None,
    };
    let index = Index {
        schema_version: 2,
        media_type: None,
        manifests: vec![
            d(Some("linux/386"), 1),
            d(None, 2),
            d(Some("linux/amd64"), 3),
            d(Some("linux/amd64"), 4),
        ],
        annotations: None,
    };
    let pick = |p: &str| {
        choose_platform("r", &Digest::of(b"i"), &index, &Platform::parse(p).unwrap())
            .map(|d| d.digest.clone())
    };
    assert_eq!(
        pick("linux/amd64").unwrap(),
        Digest::of(&[3]),
        "the exact match wins over 386, and the first of equals"
    );
    assert_eq!(
        pick("linux/arm64").unwrap(),
        Digest::of(&[2]),
        "an entry without platform is the last resort"
    );
    let only_386 = Index { manifests: vec![d(Some("linux/386"), 1)], ..index.clone() };
    let chosen = choose_platform("r", &Digest::of(b"i"), &only_386, &Platform::linux_amd64()).unwrap();
    assert_eq!(chosen.digest, Digest::of(&[1]), "amd64 falls back to 386");
}

#[tokio::test]
async fn a_blob_uploaded_while_it_is_made_is_a_blob_only_once_completed() {
    let registry = TestRegistry::start().await;
    let reference = registry.reference("kiln/early:v1");
    let client = client(&[&registry.addr], Anonymous);
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&bytes);

    let upload = client.upload_while_made(&reference);
    let tx = upload.sender();
    for piece in bytes.chunks(1 << 20) {
        tx.send(bytes::Bytes::copy_from_slice(piece)).await.unwrap();
    }
    drop(tx);
    assert!(!client.blob_exists(&reference, &digest).await.unwrap(), "not a blob before it is completed");
    upload.complete(&digest).await.unwrap();
    assert!(client.blob_exists(&reference, &digest).await.unwrap());
    assert_eq!(client.fetch_blob_bytes(&reference, &digest, bytes.len() as u64).await.unwrap(), bytes);
    // The push that follows finds it there.
    let (_dir, store) = new_store();
    store.write_bytes(&digest, &bytes).await.unwrap();
    assert_eq!(client.push_blob_from_store(&reference, &store, &digest).await.unwrap(), BlobPush::Present);

    // Completed under a digest its bytes do not have: refused, and no such blob.
    let upload = client.upload_while_made(&reference);
    upload.sender().send(bytes::Bytes::from_static(b"half a layer")).await.unwrap();
    let wrong = Digest::of(b"a whole layer");
    let err = upload.complete(&wrong).await.unwrap_err().to_string();
    assert!(err.contains("DIGEST_INVALID") || err.contains("digest"), "{err}");
    assert!(!client.blob_exists(&reference, &wrong).await.unwrap());
}
