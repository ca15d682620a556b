//! Image references, normalised the way Docker and BuildKit do it
//! (distribution/reference `ParseNormalizedNamed` + `TagNameOnly`):
//! `busybox` is `docker.io/library/busybox:latest`.

use std::fmt;
use std::str::FromStr;

use super::ImageError;
use crate::content::Digest;

/// The registry short names resolve to.
pub(crate) const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually answers.
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Reference {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub registry: String,
    /// The repository path, `library/busybox` for official Hub images.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `reference`. A name with neither tag nor digest
    /// gets the tag `latest`.
    pub(crate) fn parse(reference: &str) -> Result<Self, ImageError> {
        let invalid = |reason| ImageError::InvalidReference { reference: reference.to_owned(), reason };
        if reference.is_empty() {
            return Err(invalid("it is empty"));
        }
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                let digest: Digest =
                    digest.parse().map_err(|_| invalid("the digest is not sha256:<64 hex digits>"))?;
                (name, Some(digest))
            }
            None => (reference, None),
        };
        // A colon after the last slash starts the tag; one before it is a port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(invalid("the tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
        let (registry, repository) = split_registry(name);
        if registry.is_empty()
            || !registry.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(invalid("the registry host is not a valid host[:port]"));
        }
        let registry =
            if registry == "index.docker.io" { DOCKER_HUB.to_owned() } else { registry.to_owned() };
        let mut repository = repository.to_owned();
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase"));
        }
        if repository.is_empty() || !repository.split('/').all(valid_path_component) {
            return Err(invalid(
                "the repository path must be lowercase words separated by '/', '.', '_', '__' or '-'",
            ));
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(invalid("the name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self { registry, repository, tag, digest })
    }

    /// The same repository pinned at `digest` (keeping the tag for display,
    /// as `name:tag@digest`).
    pub(crate) fn with_digest(&self, digest: Digest) -> Self {
        Self { digest: Some(digest), ..self.clone() }
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub(super) fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The host that serves the registry API (Docker Hub's differs from its
    /// name); also the host credentials are asked for, as in BuildKit.
    pub(crate) fn endpoint_host(&self) -> &str {
        if self.registry == DOCKER_HUB { DOCKER_HUB_ENDPOINT } else { &self.registry }
    }
}

impl FromStr for Reference {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The first component is a registry when it looks like a host: it has a
/// dot or a port, is `localhost`, or has upper case (never valid in a path).
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else { return false };
    if !alnum(*first) || !alnum(*last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn short_names_normalise_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/app", "docker.io/user/app:latest"),
            ("index.docker.io/library/alpine", "docker.io/library/alpine:latest"),
            ("docker.io/alpine:3", "docker.io/library/alpine:3"),
            ("localhost/app", "localhost/app:latest"),
            ("127.0.0.1:5000/kiln-test/busybox:v2s2", "127.0.0.1:5000/kiln-test/busybox:v2s2"),
            ("ghcr.io/a/b/c:t", "ghcr.io/a/b/c:t"),
            ("registry:5000/x", "registry:5000/x:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(Reference::parse(input).unwrap().to_string(), want, "{input}");
        }
    }

    #[test]
    fn digests_pin_and_drop_the_default_tag() {
        let r = Reference::parse(&format!("busybox@{DIGEST}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{DIGEST}"));
        assert_eq!(r.manifest_key(), DIGEST);
        let r = Reference::parse(&format!("127.0.0.1:5000/x:tag@{DIGEST}")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "x", Some("tag"))
        );
        assert_eq!(r.manifest_key(), DIGEST, "the digest wins over the tag");
    }

    #[test]
    fn docker_hub_is_reached_at_its_api_host() {
        assert_eq!(Reference::parse("busybox").unwrap().endpoint_host(), "registry-1.docker.io");
        assert_eq!(Reference::parse("127.0.0.1:5000/a").unwrap().endpoint_host(), "127.0.0.1:5000");
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("Busybox", "must be lowercase"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("busybox@sha256:abc", "digest"),
            ("a//b", "repository path"),
            ("a/b_-c", "repository path"),
            ("host:5000/", "repository path"),
            ("bad host/x", "repository path"),
            ("bad*host.io/x", "registry host"),
        ];
        for (input, want) in cases {
            let err = Reference::parse(input).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("invalid image reference"), "{input}: {err}");
        }
    }

    #[test]
    fn path_components_follow_the_distribution_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "0x"] {
            assert!(valid_path_component(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a___b", "a._b", "A"] {
            assert!(!valid_path_component(bad), "{bad}");
        }
    }
}
