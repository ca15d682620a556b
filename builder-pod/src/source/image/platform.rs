//! Platforms and how an index entry is chosen for one, following
//! containerd's `platforms` package (`Normalize`, `Only`, the ordered
//! matcher in compare.go).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ImageError;

/// An OCI platform (image-spec descriptor.md "platform").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
}

impl Platform {
    pub(crate) fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
            os_version: None,
            os_features: None,
        }
    }

    /// `linux/amd64`, the platform BuildKit assumes when nothing else is known.
    pub(crate) fn linux_amd64() -> Self {
        Self::new("linux", "amd64", None)
    }

    /// Parses a specifier `os/arch[/variant]` (`linux/arm64/v8`), or a bare
    /// architecture (`arm64`, meaning linux), and normalises it.
    pub(crate) fn parse(specifier: &str) -> Result<Self, ImageError> {
        let invalid = |reason| ImageError::InvalidPlatform { platform: specifier.to_owned(), reason };
        let parts: Vec<&str> = specifier.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid("expected os/arch[/variant]"));
        }
        let platform = match parts.as_slice() {
            [arch] => Self::new("linux", arch, None),
            [os, arch] => Self::new(os, arch, None),
            [os, arch, variant] => Self::new(os, arch, Some(variant)),
            _ => return Err(invalid("expected os/arch[/variant]")),
        };
        Ok(platform.normalize())
    }

    /// containerd's `Normalize`: lower case, `x86_64` → `amd64`,
    /// `aarch64` → `arm64` (whose default variant v8 is dropped), `armhf` →
    /// `arm/v7`, bare `arm` → `arm/v7`, `i386` → `386`.
    pub(crate) fn normalize(&self) -> Self {
        let mut os = self.os.to_lowercase();
        if os == "macos" {
            os = "darwin".to_owned();
        }
        let arch = self.architecture.to_lowercase();
        let variant = self.variant.as_deref().unwrap_or("").to_lowercase();
        let (arch, variant) = match arch.as_str() {
            "i386" => ("386".to_owned(), String::new()),
            "x86_64" | "x86-64" | "amd64" => {
                ("amd64".to_owned(), if variant == "v1" { String::new() } else { variant })
            }
            "aarch64" | "arm64" => {
                let variant = match variant.as_str() {
                    "8" | "v8" | "v8.0" => String::new(),
                    "9" | "9.0" | "v9.0" => "v9".to_owned(),
                    _ => variant,
                };
                ("arm64".to_owned(), variant)
            }
            "armhf" => ("arm".to_owned(), "v7".to_owned()),
            "armel" => ("arm".to_owned(), "v6".to_owned()),
            "arm" => {
                let variant = match variant.as_str() {
                    "" | "7" => "v7".to_owned(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                };
                ("arm".to_owned(), variant)
            }
            _ => (arch, variant),
        };
        Self {
            os,
            architecture: arch,
            variant: (!variant.is_empty()).then_some(variant),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
        }
    }

    /// The platforms that can run on this one, best first (containerd's
    /// `platformVector`): amd64/vN also runs vN-1…v1 and 386; arm/vN runs
    /// down to v5; arm64 runs earlier arm64 revisions and then 32-bit arm.
    fn compatible(&self) -> Vec<Platform> {
        let p = self.normalize();
        let with = |arch: &str, variant: Option<String>| Platform {
            architecture: arch.to_owned(),
            variant,
            os: p.os.clone(),
            os_version: p.os_version.clone(),
            os_features: p.os_features.clone(),
        };
        let version =
            |v: &Option<String>| v.as_deref().and_then(|v| v.trim_start_matches('v').parse::<u32>().ok());
        let mut out = vec![p.clone()];
        match p.architecture.as_str() {
            "amd64" => {
                if let Some(n) = version(&p.variant).filter(|n| *n > 1) {
                    out.extend((1..n).rev().map(|v| with("amd64", Some(format!("v{v}")))));
                }
                out.push(with("386", None));
            }
            "arm" => {
                if let Some(n) = version(&p.variant).filter(|n| *n > 5) {
                    out.extend((5..n).rev().map(|v| with("arm", Some(format!("v{v}")))));
                }
            }
            "arm64" => {
                out = arm64_revisions(p.variant.as_deref().unwrap_or("v8"))
                    .into_iter()
                    .map(|v| with("arm64", Some(v)).normalize())
                    .collect();
                let arm = with("arm", Some("v8".to_owned()));
                out.extend(arm.compatible());
            }
            _ => {}
        }
        out
    }

    /// Where `candidate` ranks among what this platform can run (0 is an
    /// exact match), or `None` when it cannot run it.
    pub(crate) fn match_rank(&self, candidate: &Platform) -> Option<usize> {
        let candidate = candidate.normalize();
        self.compatible().iter().position(|p| {
            p.os == candidate.os && p.architecture == candidate.architecture && p.variant == candidate.variant
        })
    }
}

/// arm64 revisions an arm64 `variant` can run, newest first (v9.x runs
/// v9.0…v9.x and v8.0…v8.(x+5), capped at v8.9, as containerd has it).
fn arm64_revisions(variant: &str) -> Vec<String> {
    let Some((major, minor)) = variant.trim_start_matches('v').split_once('.').map_or_else(
        || variant.trim_start_matches('v').parse::<u32>().ok().map(|m| (m, 0)),
        |(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)),
    ) else {
        return vec![variant.to_owned()];
    };
    let name =
        |major: u32, minor: u32| if minor == 0 { format!("v{major}") } else { format!("v{major}.{minor}") };
    match major {
        8 if minor <= 9 => (0..=minor).rev().map(|m| name(8, m)).collect(),
        9 if minor <= 7 => {
            let mut out: Vec<String> = (0..=minor).rev().map(|m| name(9, m)).collect();
            out.extend((0..=(minor + 5).min(9)).rev().map(|m| name(8, m)));
            out
        }
        _ => vec![variant.to_owned()],
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn specifiers_normalise() {
        assert_eq!(p("linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("linux/amd64/v1").to_string(), "linux/amd64");
        assert_eq!(p("linux/aarch64/v8").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/armhf").to_string(), "linux/arm/v7");
        assert_eq!(p("arm64").to_string(), "linux/arm64");
        assert_eq!(p("Linux/AMD64").to_string(), "linux/amd64");
        for bad in ["", "linux/", "a/b/c/d"] {
            assert!(Platform::parse(bad).unwrap_err().to_string().contains("os/arch"), "{bad}");
        }
    }

    #[test]
    fn matching_follows_containerd() {
        let amd64 = p("linux/amd64");
        assert_eq!(amd64.match_rank(&p("linux/amd64")), Some(0));
        assert_eq!(amd64.match_rank(&Platform::new("linux", "x86_64", None)), Some(0));
        assert!(amd64.match_rank(&p("linux/386")).is_some_and(|r| r > 0), "amd64 runs 386, as a fallback");
        assert_eq!(amd64.match_rank(&p("linux/arm64")), None);
        assert_eq!(amd64.match_rank(&p("windows/amd64")), None);
        assert_eq!(amd64.match_rank(&p("linux/amd64/v2")), None, "a v1 machine cannot run v2 code");
        assert_eq!(p("linux/amd64/v3").match_rank(&p("linux/amd64/v2")), Some(1));

        let arm64 = p("linux/arm64");
        assert_eq!(arm64.match_rank(&Platform::new("linux", "arm64", Some("v8"))), Some(0));
        assert!(arm64.match_rank(&p("linux/arm/v7")).is_some());
        assert_eq!(arm64.match_rank(&p("linux/amd64")), None);
        assert_eq!(p("linux/arm/v6").match_rank(&p("linux/arm/v7")), None);
        assert_eq!(p("linux/arm/v7").match_rank(&p("linux/arm/v5")), Some(2));
        assert_eq!(p("linux/arm64/v9.1").match_rank(&p("linux/arm64/v8.6")), Some(2));
    }
}
