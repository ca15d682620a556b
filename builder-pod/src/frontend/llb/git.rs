//! Git remote URLs as BuildKit reads them (`util/gitutil/git_url.go`,
//! `util/sshutil/scpurl.go`): `scheme://[user@]host/path[?query][#ref[:subdir]]`
//! for http, https, ssh and git, and the scp-like `user@host:path`.

use crate::util::gopath;

/// A parsed remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GitUrl {
    /// `http`, `https`, `ssh` or `git` (scp-like URLs are `ssh`).
    pub scheme: String,
    pub user: Option<String>,
    /// Host, with the port if one was given.
    pub host: String,
    /// The path, percent-decoded.
    pub path: String,
    /// Query parameters with all their values, in order of first appearance.
    pub query: Vec<(String, Vec<String>)>,
    /// `#ref[:subdir]`.
    pub fragment: Option<GitFragment>,
    /// The URL without query and fragment: what is cloned.
    pub remote: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GitFragment {
    pub git_ref: String,
    /// Cleaned, without a leading `/`.
    pub subdir: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GitUrlError {
    #[error("unknown protocol")]
    UnknownProtocol,
    #[error("{0}: invalid protocol")]
    InvalidProtocol(String),
    #[error("parse {url:?}: {reason}")]
    Invalid { url: String, reason: &'static str },
}

const PROTOCOLS: [&str; 4] = ["http", "https", "ssh", "git"];

/// `gitutil.ParseURL`.
pub(crate) fn parse_url(remote: &str) -> Result<GitUrl, GitUrlError> {
    if let Some(scheme_len) = scheme_prefix(remote) {
        let scheme = remote[..scheme_len].to_lowercase();
        if !PROTOCOLS.contains(&scheme.as_str()) {
            return Err(GitUrlError::InvalidProtocol(scheme));
        }
        return parse_standard(remote, &scheme, &remote[scheme_len + 3..]);
    }
    parse_scp(remote).ok_or(GitUrlError::UnknownProtocol)
}

/// The length of `^[a-zA-Z0-9]+` when `://` follows it.
fn scheme_prefix(s: &str) -> Option<usize> {
    let n = s.bytes().take_while(u8::is_ascii_alphanumeric).count();
    (n > 0 && s[n..].starts_with("://")).then_some(n)
}

fn parse_standard(raw: &str, scheme: &str, rest: &str) -> Result<GitUrl, GitUrlError> {
    let invalid = |reason| GitUrlError::Invalid { url: raw.to_owned(), reason };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(percent_decode(f, false).ok_or_else(|| invalid("invalid URL escape"))?)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, raw_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_owned()), h),
        None => (None, authority),
    };
    if host.contains(|c: char| c.is_whitespace() || c == '%') {
        return Err(invalid("invalid character in host name"));
    }
    let path = percent_decode(raw_path, false).ok_or_else(|| invalid("invalid URL escape"))?;
    let user_part = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
    Ok(GitUrl {
        scheme: scheme.to_owned(),
        user,
        host: host.to_owned(),
        path,
        query: query.map(parse_query).unwrap_or_default(),
        fragment: fragment.as_deref().and_then(parse_fragment),
        remote: format!("{scheme}://{user_part}{host}{raw_path}"),
    })
}

/// `^([a-zA-Z0-9-_]+)@([a-zA-Z0-9-.]+):(.*?)(?:\?(.*?))?(?:#(.*))?$`
fn parse_scp(raw: &str) -> Option<GitUrl> {
    let (user, rest) = raw.split_once('@')?;
    if user.is_empty() || !user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    let (host, rest) = rest.split_once(':')?;
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return None;
    }
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let path = &rest[..path_end];
    let after = &rest[path_end..];
    let (query, fragment) = match after.strip_prefix('?') {
        Some(q) => match q.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (q, None),
        },
        None => ("", after.strip_prefix('#')),
    };
    Some(GitUrl {
        scheme: "ssh".to_owned(),
        user: Some(user.to_owned()),
        host: host.to_owned(),
        path: path.to_owned(),
        query: parse_query(query),
        fragment: fragment.and_then(parse_fragment),
        remote: format!("{user}@{host}:{path}"),
    })
}

/// `parseOpts`: `ref[:subdir]`.
fn parse_fragment(fragment: &str) -> Option<GitFragment> {
    if fragment.is_empty() {
        return None;
    }
    let (git_ref, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let subdir = gopath::join(&["/", subdir]).trim_start_matches('/').to_owned();
    Some(GitFragment { git_ref: git_ref.to_owned(), subdir })
}

/// `url.ParseQuery`, skipping pairs it would reject.
fn parse_query(query: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for pair in query.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k, true), percent_decode(v, true)) else { continue };
        match out.iter_mut().find(|(key, _)| *key == k) {
            Some((_, values)) => values.push(v),
            None => out.push((k, vec![v])),
        }
    }
    out
}

fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_urls_split_into_remote_and_options() {
        let u = parse_url("https://github.com/moby/buildkit.git?tag=v1#main:sub/../docs").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.host, "github.com");
        assert_eq!(u.path, "/moby/buildkit.git");
        assert_eq!(u.remote, "https://github.com/moby/buildkit.git");
        assert_eq!(u.query, vec![("tag".to_owned(), vec!["v1".to_owned()])]);
        assert_eq!(u.fragment, Some(GitFragment { git_ref: "main".into(), subdir: "docs".into() }));
        let u = parse_url("ssh://git@host:2222/x/y.git").unwrap();
        assert_eq!((u.user.as_deref(), u.host.as_str()), (Some("git"), "host:2222"));
    }

    #[test]
    fn scp_like_urls_are_ssh() {
        let u = parse_url("git@github.com:moby/buildkit.git#v0.29.0").unwrap();
        assert_eq!(u.scheme, "ssh");
        assert_eq!(u.remote, "git@github.com:moby/buildkit.git");
        assert_eq!(u.path, "moby/buildkit.git");
        assert_eq!(u.fragment.unwrap().git_ref, "v0.29.0");
    }

    #[test]
    fn other_inputs_are_rejected() {
        assert_eq!(parse_url("ftp://x/y"), Err(GitUrlError::InvalidProtocol("ftp".into())));
        assert_eq!(parse_url("src/app"), Err(GitUrlError::UnknownProtocol));
        assert_eq!(parse_url("a b@host:x"), Err(GitUrlError::UnknownProtocol));
    }
}
