//! The image config a Dockerfile produces (`dockerspec.DockerOCIImage` as
//! dockerfile2llb's `image.go` fills it), read from a base image's config
//! JSON and written back the way Go's `json.Marshal` writes it: Go field
//! order, empty fields omitted, `rootfs.diff_ids` null until the exporter
//! fills it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::frontend::llb::{DEFAULT_PATH_UNIX, Platform};
use crate::util::gotime::format_rfc3339;

/// `null` in the input reads as the field's zero value, as in Go.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// The `{}` values of `ExposedPorts` and `Volumes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Empty {}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Healthcheck {
    #[serde(
        rename = "Test",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    /// Nanoseconds, as Go's `time.Duration` encodes.
    #[serde(rename = "Interval", default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(rename = "Timeout", default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(rename = "StartPeriod", default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(rename = "StartInterval", default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(rename = "Retries", default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(
        rename = "User",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    #[serde(
        rename = "ExposedPorts",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(
        rename = "Env",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub entrypoint: Vec<String>,
    #[serde(
        rename = "Cmd",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cmd: Vec<String>,
    #[serde(
        rename = "Volumes",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(
        rename = "WorkingDir",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    #[serde(
        rename = "Labels",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "StopSignal",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    #[serde(
        rename = "ArgsEscaped",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_false"
    )]
    pub args_escaped: bool,
    #[serde(rename = "Healthcheck", default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(
        rename = "OnBuild",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    #[serde(
        rename = "Shell",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub shell: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub fs_type: String,
    /// `null` until the exporter knows the layers.
    #[serde(default)]
    pub diff_ids: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct History {
    /// RFC 3339, kept as the base image wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub author: String,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub comment: String,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "is_false")]
    pub empty_layer: bool,
}

/// An image config. `created` is dropped on purpose: the frontend clears it
/// and the exporter sets it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Image {
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub author: String,
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub os_features: Vec<String>,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    #[serde(default, deserialize_with = "null_default")]
    pub config: ImageConfig,
}

impl Image {
    /// dockerfile2llb's `emptyImage`: what `FROM scratch` starts from.
    pub(crate) fn empty(platform: &Platform) -> Self {
        let mut img = Image {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            os_version: platform.os_version.clone().unwrap_or_default(),
            os_features: platform.os_features.clone().unwrap_or_default(),
            variant: platform.variant.clone().unwrap_or_default(),
            ..Image::default()
        };
        img.rootfs.fs_type = "layers".to_owned();
        img.config.working_dir = "/".to_owned();
        // Windows keeps its own PATH (moby/buildkit#5445).
        if platform.os != "windows" {
            img.config.env = vec![format!("PATH={DEFAULT_PATH_UNIX}")];
        }
        img
    }

    /// The image's own platform.
    pub(crate) fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: (!self.variant.is_empty()).then(|| self.variant.clone()),
            os_version: (!self.os_version.is_empty()).then(|| self.os_version.clone()),
            os_features: (!self.os_features.is_empty()).then(|| self.os_features.clone()),
        }
    }

    /// Sets `key` in the config's env, in place when it is there (`addEnv`).
    pub(crate) fn add_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.config.env.iter_mut().find(|e| e.split('=').next() == Some(key)) {
            Some(e) => *e = entry,
            None => self.config.env.push(entry),
        }
    }

    /// Appends a history entry (`commitToHistory`); entries for steps that
    /// ran in LLB get the ` # buildkit` suffix.
    pub(crate) fn commit(&mut self, message: &str, with_layer: bool, ran: bool, epoch: Option<i64>) {
        let created_by = if ran { format!("{message} # buildkit") } else { message.to_owned() };
        self.history.push(History {
            created: epoch.map(format_rfc3339),
            created_by,
            author: String::new(),
            comment: "buildkit.dockerfile.v0".to_owned(),
            empty_layer: !with_layer,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_configs_read_nulls_and_unknown_fields() {
        let json = br#"{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z","container":"x",
            "config":{"Env":null,"Cmd":["sh"],"Hostname":"h","Labels":null,"Healthcheck":{"Test":["CMD","x"],"Interval":5000000000}},
            "rootfs":{"type":"layers","diff_ids":["sha256:a"]},"history":[{"created_by":"x","empty_layer":true}]}"#;
        let img: Image = serde_json::from_slice(json).unwrap();
        assert_eq!(img.config.cmd, ["sh"]);
        assert!(img.config.env.is_empty());
        assert_eq!(img.config.healthcheck.as_ref().unwrap().interval, 5_000_000_000);
        assert_eq!(img.rootfs.diff_ids.as_deref(), Some(&["sha256:a".to_owned()][..]));
        assert!(img.history[0].empty_layer);
        let img: Image = serde_json::from_slice(br#"{"config":null,"rootfs":null}"#).unwrap();
        assert_eq!(img, Image::default());
    }
}
