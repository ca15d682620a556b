//! Which local binary stands for a container image: the stand-in pulls
//! nothing, it runs the program `--image NAME=PATH` maps the image's
//! repository to (or the `*` default).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Error;

/// Image repository → binary, with an optional default for every other image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap {
    by_repository: BTreeMap<String, PathBuf>,
    default: Option<PathBuf>,
}

impl ImageMap {
    /// Parses `NAME=PATH` specs; NAME may carry a tag or digest (ignored) or be
    /// `*` for the default. A later spec for the same NAME wins.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self, Error> {
        let mut map = Self::default();
        for spec in specs {
            let spec = spec.as_ref();
            let (name, path) = spec
                .split_once('=')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                .ok_or_else(|| Error::ImageSpec { spec: spec.to_owned() })?;
            map.insert(name, PathBuf::from(path));
        }
        Ok(map)
    }

    pub fn insert(&mut self, name: &str, binary: PathBuf) {
        if name == "*" {
            self.default = Some(binary);
        } else {
            self.by_repository.insert(repository(name).to_owned(), binary);
        }
    }

    /// The binary for `image`, matched on its repository without tag or digest.
    pub fn resolve(&self, image: &str) -> Option<&Path> {
        self.by_repository.get(repository(image)).or(self.default.as_ref()).map(PathBuf::as_path)
    }
}

/// `host:port/name:tag@sha256:…` → `host:port/name`.
pub fn repository(image: &str) -> &str {
    let name = image.split_once('@').map_or(image, |(name, _digest)| name);
    // A colon after the last slash starts the tag; one before it is a registry port.
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].find(':') {
        Some(colon) => &name[..last_slash + colon],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_drop_tag_and_digest_but_keep_the_port() {
        assert_eq!(repository("kiln/kilnd:dev"), "kiln/kilnd");
        assert_eq!(repository("kiln/kilnd"), "kiln/kilnd");
        assert_eq!(repository("127.0.0.1:5000/kiln/kilnd"), "127.0.0.1:5000/kiln/kilnd");
        assert_eq!(repository("127.0.0.1:5000/kiln/kilnd:v1"), "127.0.0.1:5000/kiln/kilnd");
        assert_eq!(repository("kilnd@sha256:abcd"), "kilnd");
        assert_eq!(repository("r:1/kilnd:dev@sha256:abcd"), "r:1/kilnd");
    }

    #[test]
    fn images_resolve_by_repository_then_default() {
        let map = ImageMap::parse(&["kiln/kilnd:ignored=/bin/kilnd", "busybox=/bin/busybox"]).unwrap();
        assert_eq!(map.resolve("kiln/kilnd:dev"), Some(Path::new("/bin/kilnd")));
        assert_eq!(map.resolve("busybox"), Some(Path::new("/bin/busybox")));
        assert_eq!(map.resolve("nginx:1.27"), None);
        assert_eq!(map.resolve("other/kiln/kilnd:dev"), None);

        let map = ImageMap::parse(&["kiln/kilnd=/bin/kilnd", "*=/bin/true"]).unwrap();
        assert_eq!(map.resolve("nginx:1.27"), Some(Path::new("/bin/true")));
        assert_eq!(map.resolve("kiln/kilnd@sha256:00"), Some(Path::new("/bin/kilnd")));
    }

    #[test]
    fn malformed_specs_are_refused_with_the_spec() {
        for bad in ["kilnd", "=/bin/x", "kilnd=", ""] {
            let err = ImageMap::parse(&[bad]).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
