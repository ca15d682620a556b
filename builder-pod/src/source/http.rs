//! `http://` and `https://` sources: one downloaded file in a layer of its
//! own (BuildKit's `source/http/source.go`).
//!
//! The cache key stands for what was downloaded, not for the URL: a digest
//! over the file's content digest, its name, mode, owner and `Last-Modified`.
//! So resolving an unpinned URL downloads it (as BuildKit does); what saves
//! the download the next time is the ETag kept per URL, sent back as
//! `If-None-Match`: a `304` reuses the layer of the earlier download. A
//! source pinned with `http.checksum` needs no request at all to be keyed:
//! the checksum is the key, and the file is only fetched on a cache miss,
//! then checked against it.
//!
//! Unlike BuildKit, no `HEAD` request precedes the conditional `GET` (the
//! upstream HEAD works around servers that mishandle `If-None-Match`; a
//! server that ignores it costs a download here, not a wrong result), the
//! mode is set exactly (no umask), and a `sha384:`/`sha512:` checksum is
//! checked with its own algorithm.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tracing::{debug, instrument};

use crate::cache::{CacheError, CacheManager};
use crate::util::{gopath, strconv};

/// The mode of a download without `http.perm` (BuildKit's default).
const DEFAULT_PERM: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http source {url:?}: invalid URL: {source}")]
    Url { url: String, source: url::ParseError },
    #[error("http source {url}: attribute {attr}={value:?} is not a number")]
    Attr { url: String, attr: &'static str, value: String },
    #[error("http source {url}: invalid checksum {checksum:?}: {reason}")]
    Checksum { url: String, checksum: String, reason: &'static str },
    #[error("requesting {url}: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("downloading {url}: invalid response status {status}")]
    Status { url: String, status: u16 },
    #[error("downloading {url}: {source}")]
    Body { url: String, source: reqwest::Error },
    #[error("writing the download of {url} to {path}: {source}")]
    Write { url: String, path: PathBuf, source: std::io::Error },
    #[error("digest mismatch for {url}: {actual} (expected: {expected})")]
    DigestMismatch { url: String, expected: String, actual: String },
    #[error("http source {url}: stored metadata: {source}")]
    Meta { url: String, source: serde_json::Error },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The digest algorithms a checksum may use (`go-digest`'s set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

/// A digest being computed in one of the [`Algorithm`]s.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha384(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha384(h) => format!("sha384:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// What an HTTP source op asks for (`solver/pb/attr.go`: `http.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpSource {
    pub url: String,
    /// `algorithm:hex` the download must match.
    pub checksum: Option<String>,
    /// The file name to use instead of the server's.
    pub filename: Option<String>,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// The secret holding the `Authorization` header; without it the
    /// host's `HTTP_AUTH_HEADER_<host>` / `HTTP_AUTH_TOKEN_<host>` are tried.
    pub auth_header_secret: Option<String>,
}

impl HttpSource {
    /// Reads the identifier (the URL itself) and its attributes.
    pub(crate) fn parse(url: &str, attrs: &BTreeMap<String, String>) -> Result<Self, HttpError> {
        let parsed = url::Url::parse(url).map_err(|source| HttpError::Url { url: url.to_owned(), source })?;
        let shown = redact(&parsed);
        // Upstream reads these with `strconv.ParseInt(v, 0, 64)`: a base
        // prefix (`0x`, `0o` or `0`, `0b`) and `_` between digits are fine;
        // what does not fit a mode or an id is refused here.
        let number = |attr: &'static str| -> Result<u32, HttpError> {
            let Some(v) = attrs.get(attr) else { return Ok(0) };
            strconv::parse_int(v, 0, 64)
                .ok()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| HttpError::Attr { url: shown.clone(), attr, value: v.clone() })
        };
        let checksum = attrs.get("http.checksum").filter(|c| !c.is_empty()).cloned();
        if let Some(c) = &checksum {
            parse_checksum(c).map_err(|reason| HttpError::Checksum {
                url: shown.clone(),
                checksum: c.clone(),
                reason,
            })?;
        }
        Ok(Self {
            url: url.to_owned(),
            checksum,
            filename: attrs.get("http.filename").filter(|f| !f.is_empty()).cloned(),
            perm: number("http.perm")?,
            uid: number("http.uid")?,
            gid: number("http.gid")?,
            auth_header_secret: attrs.get("http.authheadersecret").filter(|s| !s.is_empty()).cloned(),
        })
    }

    /// The URL with any password hidden, for messages and progress.
    pub(crate) fn display_url(&self) -> String {
        url::Url::parse(&self.url).map_or_else(|_| self.url.clone(), |u| redact(&u))
    }

    /// The URL's host, which names its default auth secrets.
    pub(crate) fn host(&self) -> Option<String> {
        url::Url::parse(&self.url).ok().and_then(|u| u.host_str().map(str::to_owned))
    }

    /// The key of a pinned source, known without a request; `None` when
    /// the content has to be downloaded to be known.
    pub(crate) fn pinned_key(&self) -> Option<String> {
        let checksum = self.checksum.as_ref()?;
        Some(self.cache_key(&file_name(&self.url, self.filename.as_deref(), None), checksum, None))
    }

    fn mode(&self) -> u32 {
        if self.perm == 0 { DEFAULT_PERM } else { self.perm & 0o7777 }
    }

    /// BuildKit's `formatCacheKey`: everything that makes the file what it is.
    fn cache_key(&self, filename: &str, digest: &str, last_modified: Option<&str>) -> String {
        let mut doc = serde_json::json!({
            "Filename": filename,
            "Perm": self.perm,
            "UID": self.uid,
            "GID": self.gid,
            "Checksum": digest,
        });
        if let Some(t) = last_modified {
            doc["LastModTime"] = t.into();
        }
        if let Some(s) = &self.auth_header_secret {
            doc["AuthHeaderSecret"] = s.as_str().into();
        }
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(doc.to_string())))
    }

    /// Where the ETag of the last download of this exact request is kept.
    fn meta_key(&self) -> String {
        let id = serde_json::json!({
            "URL": self.url,
            "Filename": self.filename,
            "Perm": self.perm,
            "UID": self.uid,
            "GID": self.gid,
            "AuthHeaderSecret": self.auth_header_secret,
        });
        format!("http.url:{}", hex::encode(sha2::Sha256::digest(id.to_string())))
    }
}

/// What was kept of the last download of a URL, for revalidation.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    etag: Option<String>,
    /// sha256 of the content.
    digest: String,
    filename: String,
    last_modified: Option<String>,
    layer: String,
}

/// A downloaded (or revalidated) file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fetched {
    /// The committed layer holding the one file.
    pub layer: String,
    /// The source's cache key.
    pub key: String,
    /// `sha256:` of the content.
    pub digest: String,
    pub filename: String,
    /// Whether the server answered `304 Not Modified`.
    pub revalidated: bool,
}

/// Downloads `src` into a new layer, or reuses the last download when the
/// server says it has not changed. `authorization` is sent as is.
#[instrument(skip_all, fields(url = %src.display_url()))]
pub(crate) async fn fetch(
    cache: &CacheManager,
    client: &reqwest::Client,
    src: &HttpSource,
    authorization: Option<&str>,
) -> Result<Fetched, HttpError> {
    let shown = src.display_url();
    let meta_key = src.meta_key();
    let stored: Option<Stored> = match cache.get_meta(&meta_key)? {
        Some(bytes) => Some(
            serde_json::from_slice(&bytes).map_err(|source| HttpError::Meta { url: shown.clone(), source })?,
        ),
        None => None,
    }
    // A layer removed since (pruned, or never referenced by a record) cannot
    // be reused; nor can a download kept with its sha256 alone be checked
    // against a checksum in another algorithm.
    .filter(|s: &Stored| cache.layer_path(&s.layer).is_dir())
    .filter(|_| src.checksum.as_deref().is_none_or(|c| c.starts_with("sha256:")));

    let mut request = client.get(&src.url);
    if let Some(a) = authorization {
        request = request.header(reqwest::header::AUTHORIZATION, a);
    }
    if let Some(etag) = stored.as_ref().and_then(|s| s.etag.as_deref()) {
        request = request.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    let response =
        request.send().await.map_err(|source| HttpError::Request { url: shown.clone(), source })?;
    let status = response.status();

    if status == reqwest::StatusCode::NOT_MODIFIED
        && let Some(stored) = stored.as_ref().filter(|s| s.etag.is_some())
    {
        // The ETag of a 304 may be missing; the one we sent stands for it.
        let etag =
            response.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(etag_value);
        if etag.is_none() || etag == stored.etag.as_deref().map(etag_value) {
            debug!(layer = %stored.layer, "not modified");
            verify(src, &shown, &stored.digest)?;
            return Ok(Fetched {
                layer: stored.layer.clone(),
                key: src.cache_key(
                    &stored.filename,
                    pinned_or(src, &stored.digest),
                    stored.last_modified.as_deref(),
                ),
                digest: stored.digest.clone(),
                filename: stored.filename.clone(),
                revalidated: true,
            });
        }
    }
    // Upstream keeps any body below 400; a 304 that matches nothing we sent is an error too.
    if status.as_u16() < 200 || status.as_u16() >= 400 || status == reqwest::StatusCode::NOT_MODIFIED {
        return Err(HttpError::Status { url: shown, status: status.as_u16() });
    }

    let header = |name: reqwest::header::HeaderName| {
        response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    let etag = header(reqwest::header::ETAG).map(|e| etag_value(&e).to_owned());
    let last_modified = header(reqwest::header::LAST_MODIFIED);
    let filename =
        file_name(&src.url, src.filename.as_deref(), header(reqwest::header::CONTENT_DISPOSITION).as_deref());

    let layer = cache.new_layer()?;
    let path = layer.path().join(&filename);
    let write_err = |source| HttpError::Write { url: shown.clone(), path: path.clone(), source };
    let mut file = tokio::fs::File::create(&path).await.map_err(write_err)?;
    let mut sha256 = Hasher::new(Algorithm::Sha256);
    let mut pinned = src.checksum.as_deref().and_then(|c| parse_checksum(c).ok()).map(Hasher::new);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| HttpError::Body { url: shown.clone(), source })?;
        sha256.update(&chunk);
        if let Some(h) = &mut pinned {
            h.update(&chunk);
        }
        file.write_all(&chunk).await.map_err(write_err)?;
    }
    file.flush().await.map_err(write_err)?;
    let file = file.into_std().await;
    let digest = sha256.finish();
    if let Some(h) = pinned {
        verify(src, &shown, &h.finish())?;
    }

    // Unknown or unparsable Last-Modified gives the epoch, as upstream.
    let mtime =
        last_modified.as_deref().and_then(|t| httpdate::parse_http_date(t).ok()).unwrap_or(UNIX_EPOCH);
    file.set_permissions(std::fs::Permissions::from_mode(src.mode())).map_err(write_err)?;
    if src.uid != 0 || src.gid != 0 {
        std::os::unix::fs::fchown(&file, Some(src.uid), Some(src.gid)).map_err(write_err)?;
    }
    file.set_times(std::fs::FileTimes::new().set_modified(mtime).set_accessed(mtime)).map_err(write_err)?;
    drop(file);

    // The same bytes as the kept download: keep that layer, which a cache
    // record most likely already names, and drop the new copy.
    let layer = match stored
        .filter(|s| s.digest == digest && s.filename == filename && s.last_modified == last_modified)
    {
        Some(s) => s.layer,
        None => cache.commit_layer(layer)?,
    };
    let stored = Stored { etag, digest: digest.clone(), filename: filename.clone(), last_modified, layer };
    let bytes =
        serde_json::to_vec(&stored).map_err(|source| HttpError::Meta { url: shown.clone(), source })?;
    cache.put_meta(&meta_key, &bytes)?;
    Ok(Fetched {
        layer: stored.layer,
        key: src.cache_key(&filename, pinned_or(src, &digest), stored.last_modified.as_deref()),
        digest,
        filename,
        revalidated: false,
    })
}

/// A pinned source is keyed by its checksum whatever the algorithm, so the
/// key found after a download equals the one found without it.
fn pinned_or<'a>(src: &'a HttpSource, digest: &'a str) -> &'a str {
    src.checksum.as_deref().unwrap_or(digest)
}

/// Fails when the source is pinned to other content; `actual` is the
/// content's digest in the checksum's algorithm.
fn verify(src: &HttpSource, shown: &str, actual: &str) -> Result<(), HttpError> {
    match &src.checksum {
        Some(expected) if expected != actual => Err(HttpError::DigestMismatch {
            url: shown.to_owned(),
            expected: expected.clone(),
            actual: actual.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// `digest.Parse`: the algorithm and a lower-case hex string of its length.
fn parse_checksum(s: &str) -> Result<Algorithm, &'static str> {
    let (algorithm, hex) = s.split_once(':').ok_or("invalid checksum digest format")?;
    let (algorithm, len) = match algorithm {
        "sha256" => (Algorithm::Sha256, 64),
        "sha384" => (Algorithm::Sha384, 96),
        "sha512" => (Algorithm::Sha512, 128),
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != len {
        return Err("invalid checksum digest length");
    }
    if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("invalid checksum digest format");
    }
    Ok(algorithm)
}

/// Weak and strong ETags compare equal, as upstream (`W/` dropped).
fn etag_value(v: &str) -> &str {
    v.strip_prefix("W/").unwrap_or(v)
}

/// BuildKit's `getFileName`: the attribute, else the `Content-Disposition`
/// file name, else the last element of the URL path, each made a plain
/// name (`pathutil.SafeFileName`).
pub(crate) fn file_name(url: &str, attr: Option<&str>, content_disposition: Option<&str>) -> String {
    if let Some(name) = attr {
        return safe_file_name(name);
    }
    if let Some(name) = content_disposition.and_then(disposition_filename)
        && !name.ends_with('/')
    {
        let base = gopath::base(&name);
        if !base.is_empty() {
            return safe_file_name(base);
        }
    }
    if let Ok(u) = url::Url::parse(url) {
        let path = percent_decode(u.path());
        let base = gopath::base(&path);
        if base != "." && base != "/" {
            return safe_file_name(base);
        }
    }
    safe_file_name("")
}

/// The last element of a cleaned absolute path; `__unnamed__` for none.
fn safe_file_name(name: &str) -> String {
    match gopath::base(&gopath::join(&["/", name])) {
        "/" | "." | "" => "__unnamed__".to_owned(),
        base => base.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `filename` parameter of a `Content-Disposition` value (`mime.ParseMediaType`),
/// preferring the RFC 5987 `filename*=UTF-8''…` form.
fn disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    let mut rest = value.split_once(';')?.1;
    while !rest.trim().is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let rest = &quoted[end?..];
            (out, rest.split_once(';').map_or("", |(_, r)| r))
        } else {
            let (v, r) = after.split_once(';').unwrap_or((after, ""));
            (v.trim().to_owned(), r)
        };
        match key.as_str() {
            "filename" => plain = Some(val),
            "filename*" => {
                extended = val.split_once("''").and_then(|(charset, v)| {
                    matches!(charset.to_ascii_lowercase().as_str(), "utf-8" | "us-ascii")
                        .then(|| percent_decode(v))
                });
            }
            _ => {}
        }
        rest = next;
    }
    extended.or(plain).filter(|f| !f.is_empty())
}

/// The URL as shown to users: a password becomes `xxxxx` (`url.Redacted`).
fn redact(u: &url::Url) -> String {
    let mut u = u.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("xxxxx"));
    }
    u.to_string()
}

/// The client for downloads: redirects followed, a bounded connect time.
pub(crate) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("kilnd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .build()
}

#[cfg(test)]
mod tests;
