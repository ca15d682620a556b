//! The HTTP side of the distribution API (OCI distribution-spec spec.md):
//! manifests and blobs, pulled and pushed, with per-host plain-HTTP and
//! TLS settings and the challenge/response authentication of `auth.rs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;
use tokio::io::AsyncRead;
use tokio::sync::Mutex;

use super::auth::{
    AuthCache, AuthError, Authorization, Challenge, Credentials, RegistryAuth, Scope, TokenResponse,
};
use super::manifest::{MANIFEST_ACCEPT, detect_media_type};
use super::reference::Reference;
use crate::content::{ContentError, ContentStore, Digest};

/// Manifests and configs are read into memory; anything larger than this is
/// not a sane one (containerd caps manifests at 4 MiB; configs with long
/// histories get more room).
const DOCUMENT_LIMIT: usize = 16 << 20;

/// Where an upload session was opened, or that the blob was mounted instead.
enum Started {
    Mounted,
    At(Url),
}

/// Bytes read from a blob per piece of an upload's body.
const UPLOAD_CHUNK: usize = 1 << 20;

/// How one registry host is reached; the keys of `[registry."host"]` in
/// buildkitd.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct HostConfig {
    /// Plain HTTP instead of HTTPS.
    #[serde(default)]
    pub http: bool,
    /// HTTPS without certificate verification.
    #[serde(default)]
    pub insecure: bool,
}

/// Per-registry settings, keyed by the registry name as it appears in
/// references (`127.0.0.1:5000`, `docker.io`). Hosts not listed use HTTPS.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegistryHosts {
    hosts: HashMap<String, HostConfig>,
}

impl RegistryHosts {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with(mut self, registry: impl Into<String>, config: HostConfig) -> Self {
        self.insert(registry, config);
        self
    }

    pub(crate) fn insert(&mut self, registry: impl Into<String>, config: HostConfig) {
        self.hosts.insert(registry.into(), config);
    }

    pub(crate) fn get(&self, registry: &str) -> HostConfig {
        self.hosts.get(registry).cloned().unwrap_or_default()
    }
}

/// A failed request to a registry or its token server.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("not found: {url}")]
    NotFound { url: String },
    #[error("unauthorized: {host} {detail}")]
    Unauthorized { host: String, detail: String },
    #[error("denied: {host} refused access: {message}")]
    Denied { host: String, message: String },
    #[error("{method} {url} answered {status}: {message}")]
    Status { method: Method, url: String, status: StatusCode, message: String },
    #[error("sending {method} {url}: {}", chain(source))]
    Send { method: Method, url: String, source: reqwest::Error },
    #[error("reading the answer of {url}: {}", chain(source))]
    Body { url: String, source: reqwest::Error },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} sent content with digest {actual}, expected {expected}")]
    DigestMismatch { url: String, expected: Digest, actual: Digest },
    #[error("asking for the credentials of {host}: {source}")]
    Credentials { host: String, source: AuthError },
    #[error("fetching a token from {realm}: {detail}")]
    Token { realm: String, detail: String },
    #[error("{url}: {detail}")]
    Protocol { url: String, detail: String },
    #[error("{0}")]
    Store(#[from] ContentError),
}

/// An error with its causes: reqwest's own message ("error sending request
/// for url") leaves out whether the connection was refused or TLS failed.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The shared, long-lived part: HTTP connection pools and host settings.
/// Make a [`RegistryClient`] from it per credentials source.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    hosts: Arc<RegistryHosts>,
    http: reqwest::Client,
    insecure: reqwest::Client,
    sources: Arc<std::sync::Mutex<BlobSources>>,
}

/// Repositories known to hold a blob (pulled from or pushed to), so a push
/// to another repository of the same registry can mount it instead of
/// uploading it again, as BuildKit does with its distribution-source labels.
/// Kept in memory: after a restart blobs are uploaded until seen again.
#[derive(Debug, Default)]
struct BlobSources {
    by_digest: HashMap<Digest, Vec<(String, String)>>,
}

/// Past this many blobs the record starts over rather than grow for ever.
const MAX_BLOB_SOURCES: usize = 16_384;

/// How a blob came to be in the repository a push names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobPush {
    /// It was there already.
    Present,
    /// The registry linked it from another of its repositories.
    Mounted,
    /// Its bytes were sent.
    Uploaded,
}

impl Registry {
    pub(crate) fn new(hosts: RegistryHosts) -> Result<Self, super::ImageError> {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("kilnd/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(30))
                .read_timeout(Duration::from_secs(120))
        };
        let err = |source| super::ImageError::HttpClient { source };
        Ok(Self {
            hosts: Arc::new(hosts),
            http: builder().build().map_err(err)?,
            insecure: builder().danger_accept_invalid_certs(true).build().map_err(err)?,
            sources: Arc::default(),
        })
    }

    /// A client that authenticates with `auth`. Its token cache belongs to
    /// those credentials alone.
    pub(crate) fn client(&self, auth: Arc<dyn RegistryAuth>) -> RegistryClient {
        RegistryClient { registry: self.clone(), auth, cache: Arc::new(Mutex::new(AuthCache::default())) }
    }
}

/// Talks to registries on behalf of one credentials source.
#[derive(Clone)]
pub(crate) struct RegistryClient {
    registry: Registry,
    auth: Arc<dyn RegistryAuth>,
    cache: Arc<Mutex<AuthCache>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient").field("auth", &self.auth).finish_non_exhaustive()
    }
}

/// A manifest or index as fetched.
#[derive(Debug, Clone)]
pub(super) struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
    pub digest: Digest,
}

impl RegistryClient {
    fn http(&self, reference: &Reference) -> &reqwest::Client {
        if self.registry.hosts.get(&reference.registry).insecure {
            &self.registry.insecure
        } else {
            &self.registry.http
        }
    }

    fn url(&self, reference: &Reference, tail: &str) -> String {
        let scheme = if self.registry.hosts.get(&reference.registry).http { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}/{tail}", reference.endpoint_host(), reference.repository)
    }

    /// Records that `reference`'s repository holds these blobs.
    pub(super) fn note_sources<'a>(
        &self,
        reference: &Reference,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) {
        let mut sources = self.registry.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for digest in digests {
            if sources.by_digest.len() >= MAX_BLOB_SOURCES && !sources.by_digest.contains_key(digest) {
                sources.by_digest.clear();
            }
            let repos = sources.by_digest.entry(digest.clone()).or_default();
            let source = (reference.registry.clone(), reference.repository.clone());
            if !repos.contains(&source) {
                repos.push(source);
            }
        }
    }

    /// Another repository of `reference`'s registry known to hold `digest`.
    fn mount_source(&self, reference: &Reference, digest: &Digest) -> Option<String> {
        let sources = self.registry.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let repos = sources.by_digest.get(digest)?;
        repos
            .iter()
            .find(|(registry, repo)| *registry == reference.registry && *repo != reference.repository)
            .map(|(_, repo)| repo.clone())
    }

    fn scope(reference: &Reference, push: bool) -> Scope {
        Scope { repository: reference.repository.clone(), push }
    }

    /// Fetches a manifest or index by tag or digest, checking it against the
    /// digest when one was asked for.
    pub(super) async fn fetch_manifest(
        &self,
        reference: &Reference,
        key: &str,
    ) -> Result<FetchedManifest, RequestError> {
        let url = self.url(reference, &format!("manifests/{key}"));
        let http = self.http(reference);
        let response = self
            .send(reference, &Self::scope(reference, false), Method::GET, &url, &|| {
                http.get(&url).header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let content_type =
            response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = read_limited(response, &url, DOCUMENT_LIMIT).await?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = key.parse::<Digest>()
            && expected != digest
        {
            return Err(RequestError::DigestMismatch { url, expected, actual: digest });
        }
        let media_type = detect_media_type(content_type.as_deref(), &bytes);
        Ok(FetchedManifest { bytes, media_type, digest })
    }

    /// Fetches a small blob (a config) into memory, verified.
    pub(super) async fn fetch_blob_bytes(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, RequestError> {
        let url = self.url(reference, &format!("blobs/{digest}"));
        let http = self.http(reference);
        let response = self
            .send(reference, &Self::scope(reference, false), Method::GET, &url, &|| http.get(&url))
            .await?;
        let bytes = read_limited(response, &url, DOCUMENT_LIMIT).await?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(RequestError::DigestMismatch { url, expected: digest.clone(), actual });
        }
        if bytes.len() as u64 != size {
            return Err(RequestError::Protocol {
                url,
                detail: format!("blob is {} bytes, its descriptor says {size}", bytes.len()),
            });
        }
        Ok(bytes)
    }

    /// Streams a blob into the content store, which checks digest and size
    /// before the blob becomes visible.
    pub(super) async fn fetch_blob_to_store(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        store: &ContentStore,
    ) -> Result<(), RequestError> {
        let url = self.url(reference, &format!("blobs/{digest}"));
        let http = self.http(reference);
        let response = self
            .send(reference, &Self::scope(reference, false), Method::GET, &url, &|| http.get(&url))
            .await?;
        let stream = response.bytes_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::StreamReader::new(stream);
        store.write(digest, Some(size), reader).await?;
        Ok(())
    }

    /// Whether the repository already has the blob.
    pub(super) async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool, RequestError> {
        let url = self.url(reference, &format!("blobs/{digest}"));
        let http = self.http(reference);
        match self
            .send(reference, &Self::scope(reference, true), Method::HEAD, &url, &|| http.head(&url))
            .await
        {
            Ok(_) => Ok(true),
            Err(RequestError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a blob the registry does not have yet: POST opens an upload
    /// session, one PUT with the digest completes it (spec.md "Pushing a
    /// blob monolithically", the POST-then-PUT form). When another
    /// repository of the registry is known to hold the blob, the POST asks
    /// to mount it from there first ("Mounting a blob from another
    /// repository"); a registry that cannot answers with a plain session.
    pub(super) async fn upload_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        body: impl AsyncRead + Send + Sync + 'static,
    ) -> Result<BlobPush, RequestError> {
        let mut put_url = match self.start_upload(reference, Some(digest)).await? {
            Started::Mounted => return Ok(BlobPush::Mounted),
            Started::At(url) => url,
        };
        put_url.query_pairs_mut().append_pair("digest", &digest.to_string());
        // The body streams once, so this request cannot be replayed after a
        // challenge; the POST above already settled the authorisation.
        // Large reads: with ReaderStream's default 4 KiB, a blob read from a
        // file is one blocking-pool round trip and one HTTP/1 chunk per 4 KiB
        // (a 200 MB layer: 50,000 of each, half the push's time).
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(body, UPLOAD_CHUNK));
        let request = self
            .http(reference)
            .put(put_url.as_str())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        self.send_once(reference, Method::PUT, &put_url, request).await?;
        Ok(BlobPush::Uploaded)
    }

    /// Streams a blob whose digest is not known yet into a new upload
    /// session, as one PATCH ("Streamed upload"); returns where to complete it.
    pub(super) async fn upload_unfinished(
        &self,
        reference: &Reference,
        body: reqwest::Body,
    ) -> Result<Url, RequestError> {
        let url = match self.start_upload(reference, None).await? {
            Started::At(url) => url,
            Started::Mounted => {
                return Err(RequestError::Protocol {
                    url: reference.to_string(),
                    detail: "an upload without a mount was answered as mounted".into(),
                });
            }
        };
        let request = self
            .http(reference)
            .patch(url.as_str())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let response = self.send_once(reference, Method::PATCH, &url, request).await?;
        upload_location(&url, &response, "upload answered without a Location")
    }

    /// Completes an upload session as blob `digest`; the registry checks
    /// the bytes it received against it.
    pub(super) async fn complete_upload(
        &self,
        reference: &Reference,
        mut url: Url,
        digest: &Digest,
    ) -> Result<(), RequestError> {
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let request = self.http(reference).put(url.as_str()).header(CONTENT_LENGTH, 0);
        self.send_once(reference, Method::PUT, &url, request).await?;
        Ok(())
    }

    /// Opens an upload session in `reference`'s repository; with `mount`,
    /// asks to mount that blob from a repository known to have it instead.
    async fn start_upload(
        &self,
        reference: &Reference,
        mount: Option<&Digest>,
    ) -> Result<Started, RequestError> {
        let scope = Self::scope(reference, true);
        let start = self.url(reference, "blobs/uploads/");
        let mut base = Url::parse(&start)
            .map_err(|e| RequestError::Protocol { url: start.clone(), detail: format!("bad URL: {e}") })?;
        let from = mount.and_then(|digest| Some((digest, self.mount_source(reference, digest)?)));
        if let Some((digest, from)) = &from {
            base.query_pairs_mut().append_pair("mount", &digest.to_string()).append_pair("from", from);
        }
        let start_url = base.to_string();
        let http = self.http(reference);
        let started = self
            .send(reference, &scope, Method::POST, &start_url, &|| {
                http.post(&start_url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        if from.is_some() && started.status() == StatusCode::CREATED {
            return Ok(Started::Mounted);
        }
        upload_location(&base, &started, "upload started without a Location").map(Started::At)
    }

    /// Sends a request whose body streams once, with the authorisation an
    /// earlier request of the session settled (it cannot be replayed after
    /// a challenge).
    async fn send_once(
        &self,
        reference: &Reference,
        method: Method,
        url: &Url,
        request: RequestBuilder,
    ) -> Result<Response, RequestError> {
        let scope = Self::scope(reference, true);
        let authorization = self.cache.lock().await.authorization(reference.endpoint_host(), &scope);
        let response = apply(request, authorization.as_ref())
            .send()
            .await
            .map_err(|source| RequestError::Send { method: method.clone(), url: url.to_string(), source })?;
        check_status(response, reference.endpoint_host(), method, url.as_str()).await
    }

    /// PUTs a manifest under `key` (a tag or its digest).
    pub(super) async fn put_manifest(
        &self,
        reference: &Reference,
        key: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Response, RequestError> {
        let url = self.url(reference, &format!("manifests/{key}"));
        let http = self.http(reference);
        self.send(reference, &Self::scope(reference, true), Method::PUT, &url, &|| {
            http.put(&url).header(CONTENT_TYPE, media_type).body(bytes.to_vec())
        })
        .await
    }

    /// Sends a request, answering one authentication challenge: the cached
    /// authorisation goes first; on 401 the challenge is met (credentials for
    /// Basic, a token for Bearer) and the request is sent once more.
    async fn send(
        &self,
        reference: &Reference,
        scope: &Scope,
        method: Method,
        url: &str,
        make: &(dyn Fn() -> RequestBuilder + Sync),
    ) -> Result<Response, RequestError> {
        let host = reference.endpoint_host();
        let send = |authorization: Option<Authorization>| {
            let request = apply(make(), authorization.as_ref());
            let method = method.clone();
            async move {
                request.send().await.map_err(|source| RequestError::Send {
                    method,
                    url: url.to_owned(),
                    source,
                })
            }
        };
        let sent = self.cache.lock().await.authorization(host, scope);
        let response = send(sent.clone()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return check_status(response, host, method, url).await;
        }
        let challenges = parse_challenges_of(&response);
        let message = error_message(response).await;
        let authorization = self.answer_challenge(host, scope, &challenges, sent.as_ref(), &message).await?;
        let response = send(Some(authorization.clone())).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let message = error_message(response).await;
            let detail = match &authorization {
                Authorization::Basic(c) => {
                    format!("rejected the credentials of user {:?}: {message}", c.username)
                }
                Authorization::Bearer(_) => format!("rejected the token its token server issued: {message}"),
            };
            return Err(RequestError::Unauthorized { host: host.to_owned(), detail });
        }
        check_status(response, host, method, url).await
    }

    async fn answer_challenge(
        &self,
        host: &str,
        scope: &Scope,
        challenges: &[Challenge],
        sent: Option<&Authorization>,
        message: &str,
    ) -> Result<Authorization, RequestError> {
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer { realm, service, scope } => Some((realm, service, scope)),
            Challenge::Basic => None,
        });
        let mut cache = self.cache.lock().await;
        if let Some((realm, service, challenge_scope)) = &bearer {
            let mut scopes = vec![scope.to_string()];
            if let Some(extra) = challenge_scope.as_ref().filter(|s| **s != scopes[0]) {
                scopes.push(extra.clone());
            }
            // The client fetches the token itself when it can, so its
            // secrets never reach the daemon (docs/protocol.md §4.4).
            let from_client = self
                .auth
                .fetch_token(host, realm, service.as_deref(), &scopes)
                .await
                .map_err(|source| RequestError::Credentials { host: host.to_owned(), source })?;
            if let Some(token) = from_client {
                let token = TokenResponse {
                    token: Some(token.token),
                    access_token: None,
                    expires_in: token.expires_in,
                }
                .into_cached()
                .ok_or_else(|| RequestError::Token {
                    realm: realm.to_string(),
                    detail: "the client fetched an empty token".into(),
                })?;
                cache.store_token(host, scope, token.clone());
                return Ok(Authorization::Bearer(token.token));
            }
        }
        let credentials = match cache.credentials.get(host) {
            Some(known) => known.clone(),
            None => {
                let asked = self
                    .auth
                    .credentials(host)
                    .await
                    .map_err(|source| RequestError::Credentials { host: host.to_owned(), source })?;
                cache.credentials.insert(host.to_owned(), asked.clone());
                asked
            }
        };
        if let Some((realm, service, challenge_scope)) = bearer {
            let mut scopes = vec![scope.to_string()];
            if let Some(extra) = challenge_scope.as_ref().filter(|s| **s != scopes[0]) {
                scopes.push(extra.clone());
            }
            let token =
                self.fetch_token(host, realm, service.as_deref(), &scopes, credentials.as_ref()).await?;
            cache.store_token(host, scope, token.clone());
            return Ok(Authorization::Bearer(token.token));
        }
        if !challenges.contains(&Challenge::Basic) {
            return Err(RequestError::Unauthorized {
                host: host.to_owned(),
                detail: format!("answered 401 without a challenge kilnd can meet: {message}"),
            });
        }
        let Some(credentials) = credentials else {
            return Err(RequestError::Unauthorized {
                host: host.to_owned(),
                detail: format!("requires credentials and none were given: {message}"),
            });
        };
        if matches!(sent, Some(Authorization::Basic(c)) if *c == credentials) {
            return Err(RequestError::Unauthorized {
                host: host.to_owned(),
                detail: format!("rejected the credentials of user {:?}: {message}", credentials.username),
            });
        }
        cache.hosts.insert(host.to_owned(), super::auth::HostAuth::Basic(credentials.clone()));
        Ok(Authorization::Basic(credentials))
    }

    /// Gets a token from the challenge's realm: OAuth2 refresh-token POST for
    /// identity tokens (oauth.md), otherwise GET with Basic credentials, or
    /// anonymously without any (token.md).
    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        credentials: Option<&Credentials>,
    ) -> Result<super::auth::CachedToken, RequestError> {
        let token_err = |detail: String| RequestError::Token { realm: realm.to_owned(), detail };
        let url = Url::parse(realm).map_err(|e| token_err(format!("the realm is not a URL: {e}")))?;
        let http = &self.registry.http;
        let request = match credentials {
            Some(c) if c.username.is_empty() && !c.secret.is_empty() => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_owned()),
                    ("refresh_token", c.secret.clone()),
                    ("client_id", "kilnd".to_owned()),
                    ("scope", scopes.join(" ")),
                ];
                if let Some(service) = service {
                    form.push(("service", service.to_owned()));
                }
                http.post(url).form(&form)
            }
            _ => {
                let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
                if let Some(service) = service {
                    query.push(("service", service));
                }
                let request = http.get(url).query(&query);
                match credentials {
                    Some(c) => request.basic_auth(&c.username, Some(&c.secret)),
                    None => request,
                }
            }
        };
        let response = request.send().await.map_err(|e| token_err(chain(&e)))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let message = error_message(response).await;
            let detail = match credentials {
                Some(c) => format!(
                    "the token server {realm} rejected the credentials of user {:?}: {message}",
                    c.username
                ),
                None => format!("the token server {realm} refused an anonymous token: {message}"),
            };
            return Err(RequestError::Unauthorized { host: host.to_owned(), detail });
        }
        if !status.is_success() {
            return Err(token_err(format!("answered {status}: {}", error_message(response).await)));
        }
        let body = read_limited(response, realm, 1 << 20).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_err(format!("unreadable token response: {e}")))?;
        parsed.into_cached().ok_or_else(|| token_err("the response holds no token".into()))
    }
}

fn apply(request: RequestBuilder, authorization: Option<&Authorization>) -> RequestBuilder {
    match authorization {
        Some(Authorization::Basic(c)) => request.basic_auth(&c.username, Some(&c.secret)),
        Some(Authorization::Bearer(token)) => request.bearer_auth(token),
        None => request,
    }
}

fn parse_challenges_of(response: &Response) -> Vec<Challenge> {
    super::auth::parse_challenges(
        response.headers().get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()),
    )
}

/// Where an upload session continues: the response's `Location`, relative
/// to the URL it answered; `missing` says what happened when there is none.
fn upload_location(url: &Url, response: &Response, missing: &str) -> Result<Url, RequestError> {
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RequestError::Protocol { url: url.to_string(), detail: missing.to_owned() })?;
    url.join(location).map_err(|e| RequestError::Protocol {
        url: url.to_string(),
        detail: format!("bad upload Location {location:?}: {e}"),
    })
}

/// Turns unsuccessful statuses into errors that say what happened.
async fn check_status(
    response: Response,
    host: &str,
    method: Method,
    url: &str,
) -> Result<Response, RequestError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let message = error_message(response).await;
    Err(match status {
        StatusCode::NOT_FOUND => RequestError::NotFound { url: url.to_owned() },
        StatusCode::UNAUTHORIZED => RequestError::Unauthorized {
            host: host.to_owned(),
            detail: format!("requires authentication: {message}"),
        },
        StatusCode::FORBIDDEN => RequestError::Denied { host: host.to_owned(), message },
        _ => RequestError::Status { method, url: url.to_owned(), status, message },
    })
}

/// The registry's own words from an error body (`{"errors":[{"code",
/// "message"}]}`, spec.md "Error Codes"), or the start of the body.
async fn error_message(response: Response) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    if let Ok(errors) = serde_json::from_slice::<Errors>(&body) {
        let joined: Vec<String> =
            errors.errors.iter().map(|e| format!("{}: {}", e.code, e.message)).collect();
        if !joined.is_empty() {
            return joined.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("no details").to_owned()
    } else {
        text.chars().take(300).collect()
    }
}

async fn read_limited(mut response: Response, url: &str, limit: usize) -> Result<Vec<u8>, RequestError> {
    let too_large = || RequestError::TooLarge { url: url.to_owned(), limit };
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|source| RequestError::Body { url: url.to_owned(), source })?
    {
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
