//! Registry authentication: credentials from the caller, `WWW-Authenticate`
//! challenges, and the token flow of the distribution spec ("Token
//! Authentication Specification": upstream distribution/distribution's
//! `docs/spec/auth/token.md` and `oauth.md`, not files of this repository)
//! as BuildKit's `util/resolver/authorizer.go` runs it.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::session::{Group, auth};

/// A username and secret for one registry host. An empty username with a
/// secret means the secret is an identity (refresh) token, which is how
/// BuildKit's session `Auth.Credentials` hands over `identitytoken` logins.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub username: String,
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The error a credentials source may fail with.
pub(crate) type AuthError = Box<dyn std::error::Error + Send + Sync>;

/// Where credentials come from: the client's `Auth` service through the
/// build's sessions (docs/protocol.md §4.4), or a fixed set.
/// `host` is the registry's API host (`registry-1.docker.io` for Docker Hub),
/// as BuildKit asks for it. It is only called when a registry challenges.
#[async_trait]
pub(crate) trait RegistryAuth: Send + Sync + fmt::Debug {
    async fn credentials(&self, host: &str) -> Result<Option<Credentials>, AuthError>;

    /// A token for `scopes` from `realm`, fetched by the credentials' owner
    /// itself (the client's `Auth.FetchToken`); `None` when it cannot, and
    /// the daemon then fetches one with `credentials`.
    async fn fetch_token(
        &self,
        _host: &str,
        _realm: &str,
        _service: Option<&str>,
        _scopes: &[String],
    ) -> Result<Option<ClientToken>, AuthError> {
        Ok(None)
    }
}

/// A registry token the client fetched.
#[derive(Clone)]
pub(crate) struct ClientToken {
    pub token: String,
    /// Seconds it lasts, when the client said.
    pub expires_in: Option<u64>,
}

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// No credentials: anonymous access only (tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Anonymous;

#[cfg(test)]
#[async_trait]
impl RegistryAuth for Anonymous {
    async fn credentials(&self, _host: &str) -> Result<Option<Credentials>, AuthError> {
        Ok(None)
    }
}

/// The client's logins, asked of the build's sessions, first session first.
#[async_trait]
impl RegistryAuth for Group {
    async fn credentials(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        let found = auth::credentials(self, host).await?;
        Ok(found.map(|r| Credentials { username: r.username, secret: r.secret }))
    }

    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Option<ClientToken>, AuthError> {
        let found = auth::fetch_token(self, host, realm, service, scopes).await?;
        Ok(found.map(|r| ClientToken {
            expires_in: u64::try_from(r.expires_in).ok().filter(|s| *s > 0),
            token: r.token,
        }))
    }
}

/// A fixed set of credentials per host (tests).
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct StaticCredentials {
    hosts: HashMap<String, Credentials>,
}

#[cfg(test)]
impl StaticCredentials {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with(
        mut self,
        host: impl Into<String>,
        username: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.hosts.insert(host.into(), Credentials { username: username.into(), secret: secret.into() });
        self
    }
}

#[cfg(test)]
#[async_trait]
impl RegistryAuth for StaticCredentials {
    async fn credentials(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        Ok(self.hosts.get(host).cloned())
    }
}

/// One challenge of a `WWW-Authenticate` header (RFC 7235).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses the challenges of all `WWW-Authenticate` values, skipping schemes
/// other than Basic and Bearer and Bearer challenges without a realm.
pub(super) fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        for (scheme, params) in split_challenges(value) {
            if scheme.eq_ignore_ascii_case("basic") {
                out.push(Challenge::Basic);
            } else if scheme.eq_ignore_ascii_case("bearer") {
                let get = |key: &str| {
                    params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone())
                };
                if let Some(realm) = get("realm") {
                    out.push(Challenge::Bearer { realm, service: get("service"), scope: get("scope") });
                }
            }
        }
    }
    out
}

type Params = Vec<(String, String)>;

/// Splits `Scheme k=v, k="v", Other k=v` into schemes with their params.
fn split_challenges(value: &str) -> Vec<(String, Params)> {
    let mut out: Vec<(String, Params)> = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t' || bytes[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < bytes.len() && !b" \t,=\"".contains(&bytes[*i]) {
            *i += 1;
        }
        value[start..*i].to_owned()
    };
    loop {
        skip_ws(&mut i);
        if i >= bytes.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            i += 1;
            continue;
        }
        // `word=` is a parameter of the current challenge; otherwise `word`
        // starts a new challenge.
        let mut j = i;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'=' && !out.is_empty() {
            i = j + 1;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            let param_value = if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    let ch_len = value[i..].chars().next().map_or(1, char::len_utf8);
                    v.push_str(&value[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1;
                v
            } else {
                token(&mut i)
            };
            if let Some((_, params)) = out.last_mut() {
                params.push((word, param_value));
            }
        } else {
            out.push((word, Vec::new()));
        }
    }
    out
}

/// The access a request needs, as a token scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Scope {
    pub repository: String,
    pub push: bool,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions = if self.push { "pull,push" } else { "pull" };
        write!(f, "repository:{}:{actions}", self.repository)
    }
}

/// What a client has learnt about each host: the scheme it wants and, for
/// Bearer, the tokens granted per scope. Tokens were granted to one
/// credentials source, so a cache is never shared between clients.
#[derive(Debug, Default)]
pub(super) struct AuthCache {
    pub hosts: HashMap<String, HostAuth>,
    pub credentials: HashMap<String, Option<Credentials>>,
}

#[derive(Debug)]
pub(super) enum HostAuth {
    Basic(Credentials),
    Bearer { tokens: HashMap<String, CachedToken> },
}

#[derive(Debug, Clone)]
pub(super) struct CachedToken {
    pub token: String,
    pub expires_at: Instant,
}

/// How a request is authorised.
#[derive(Debug, Clone)]
pub(super) enum Authorization {
    Basic(Credentials),
    Bearer(String),
}

impl AuthCache {
    pub(super) fn authorization(&self, host: &str, scope: &Scope) -> Option<Authorization> {
        match self.hosts.get(host)? {
            HostAuth::Basic(credentials) => Some(Authorization::Basic(credentials.clone())),
            HostAuth::Bearer { tokens } => tokens
                .get(&scope.to_string())
                .filter(|t| t.expires_at > Instant::now())
                .map(|t| Authorization::Bearer(t.token.clone())),
        }
    }

    pub(super) fn store_token(&mut self, host: &str, scope: &Scope, token: CachedToken) {
        let entry =
            self.hosts.entry(host.to_owned()).or_insert_with(|| HostAuth::Bearer { tokens: HashMap::new() });
        match entry {
            HostAuth::Bearer { tokens } => {
                tokens.insert(scope.to_string(), token);
            }
            HostAuth::Basic(_) => {
                let mut tokens = HashMap::new();
                tokens.insert(scope.to_string(), token);
                *entry = HostAuth::Bearer { tokens };
            }
        }
    }
}

/// The token endpoint's answer (token.md "Token Response Fields"; oauth.md
/// uses `access_token`).
#[derive(Debug, serde::Deserialize)]
pub(super) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub(super) fn into_cached(self) -> Option<CachedToken> {
        let token = self.token.filter(|t| !t.is_empty()).or(self.access_token.filter(|t| !t.is_empty()))?;
        // The spec's default lifetime is 60 s; renew a little early.
        let lifetime = Duration::from_secs(self.expires_in.unwrap_or(60).max(60));
        Some(CachedToken { token, expires_at: Instant::now() + lifetime - Duration::from_secs(10) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_like_registries_send_them() {
        let hub = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_challenges([hub]),
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }]
        );
        assert_eq!(parse_challenges([r#"Basic realm="kiln""#]), vec![Challenge::Basic]);
        assert_eq!(
            parse_challenges([r#"Negotiate, Basic realm="a, b", Bearer realm=http://x/t,scope="a\"b""#]),
            vec![
                Challenge::Basic,
                Challenge::Bearer { realm: "http://x/t".into(), service: None, scope: Some("a\"b".into()) }
            ]
        );
        assert_eq!(parse_challenges(["Bearer service=x"]), vec![], "a bearer challenge needs a realm");
        assert_eq!(parse_challenges([""]), vec![]);
    }

    #[test]
    fn tokens_are_cached_per_scope_and_expire() {
        let mut cache = AuthCache::default();
        let pull = Scope { repository: "a".into(), push: false };
        let push = Scope { repository: "a".into(), push: true };
        assert_eq!(pull.to_string(), "repository:a:pull");
        assert_eq!(push.to_string(), "repository:a:pull,push");
        cache.store_token(
            "h",
            &pull,
            CachedToken { token: "t1".into(), expires_at: Instant::now() + Duration::from_secs(60) },
        );
        assert!(matches!(cache.authorization("h", &pull), Some(Authorization::Bearer(t)) if t == "t1"));
        assert!(cache.authorization("h", &push).is_none());
        assert!(cache.authorization("other", &pull).is_none());
        cache.store_token("h", &push, CachedToken { token: "old".into(), expires_at: Instant::now() });
        assert!(cache.authorization("h", &push).is_none(), "expired tokens are not sent");
    }

    #[test]
    fn token_responses_take_either_field() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","expires_in":300}"#).unwrap();
        assert_eq!(t.into_cached().unwrap().token, "a");
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).unwrap();
        assert_eq!(t.into_cached().unwrap().token, "b");
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(t.into_cached().is_none());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = Credentials { username: "kiln".into(), secret: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
