//! Manifest, index and descriptor documents: OCI image-spec (manifest.md,
//! image-index.md, descriptor.md) and Docker's schema 2 equivalents, which
//! share the shape and differ in media types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::platform::Platform;
use crate::content::Digest;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
#[cfg(test)]
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
#[cfg(test)]
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What the registry is asked to return for a manifest, best first.
pub(super) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// A pointer to content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A single-platform image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A multi-platform index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

pub(super) fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

pub(super) fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Decides what a fetched document is. The `Content-Type` header decides
/// when it names a known type; registries that answer with a generic type
/// are judged by the document's own `mediaType`, then by its shape (an OCI
/// manifest may omit `mediaType`).
pub(super) fn detect_media_type(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let header = content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_owned());
    if let Some(header) = header.filter(|h| is_index(h) || is_manifest(h)) {
        return Some(header);
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    match probe {
        Probe { media_type: Some(m), .. } if is_index(&m) || is_manifest(&m) => Some(m),
        Probe { manifests: Some(_), .. } => Some(OCI_INDEX.to_owned()),
        Probe { config: Some(_), .. } => Some(OCI_MANIFEST.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_recognised_by_header_body_or_shape() {
        assert_eq!(
            detect_media_type(Some("application/vnd.oci.image.index.v1+json"), b"{}").as_deref(),
            Some(OCI_INDEX)
        );
        let docker = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{}}}}"#);
        assert_eq!(
            detect_media_type(Some("application/json"), docker.as_bytes()).as_deref(),
            Some(DOCKER_MANIFEST)
        );
        assert_eq!(
            detect_media_type(None, br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            detect_media_type(None, br#"{"schemaVersion":2,"config":{}}"#).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(detect_media_type(None, br#"{"schemaVersion":1,"fsLayers":[]}"#), None);
        assert_eq!(detect_media_type(None, b"not json"), None);
    }

    #[test]
    fn descriptors_round_trip_with_platforms() {
        let json = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","size":7,"platform":{"os":"linux","architecture":"arm","variant":"v7"}}"#;
        let desc: Descriptor = serde_json::from_str(json).unwrap();
        assert_eq!(desc.platform.as_ref().unwrap().to_string(), "linux/arm/v7");
        assert_eq!(serde_json::to_string(&desc).unwrap(), json);
    }
}
