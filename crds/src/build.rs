//! `Build`: one image build, applied with `kubectl apply`, run on a `Builder`
//! pool. Its controller is not built yet; these are the types it will read
//! and write.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{DURATION_PATTERN, FieldErrors, PLATFORM_PATTERN, check_platforms, parse_duration};

/// What to build, where, and where the image goes.
// kube's printcolumn(...) lists repeat keys such as `type_ = "integer"`, which
// clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "Build",
    namespaced,
    category = "kiln",
    status = "BuildStatus",
    derive = "PartialEq",
    doc = "One image build, run on a Builder pool.",
    printcolumn(name = "Builder", type_ = "string", json_path = ".spec.builderRef.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.imageDigest", priority = 1),
    printcolumn(name = "Pod", type_ = "string", json_path = ".status.builderPod", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(IMMUTABLE_RULE).message(IMMUTABLE_MESSAGE))]
#[x_kube(validation = Rule::new(INLINE_DOCKERFILE_RULE).message(INLINE_DOCKERFILE_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct BuildSpec {
    /// The Builder pool, in the Build's namespace, that runs the build.
    pub builder_ref: BuilderRef,

    /// Where the build context comes from.
    pub context: BuildContext,

    /// The Dockerfile's path inside a git or ConfigMap context. Unset:
    /// `Dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub dockerfile: Option<String>,

    /// The stage to build (`docker build --target`). Unset: the last stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub target: Option<String>,

    /// Build arguments (`--build-arg NAME=VALUE`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 256))]
    pub build_args: BTreeMap<String, String>,

    /// The platforms to build, as os/arch[/variant]. Unset: the builder's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(PLATFORM_PATTERN)), length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub platforms: Vec<String>,

    /// The images the build produces. Empty: build only (a test, or to fill
    /// the cache).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub outputs: Vec<ImageOutput>,

    /// Secrets the Dockerfile mounts with `RUN --mount=type=secret,id=ID`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub secrets: Vec<BuildSecret>,

    /// How long the build may run before it is cancelled (Go duration syntax).
    #[serde(default = "default_timeout")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub timeout: String,
}

/// A Builder in the same namespace.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BuilderRef {
    /// The Builder's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The build context: exactly one of `git`, `configMap` or `inline`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = Rule::new(ONE_CONTEXT_RULE).message(ONE_CONTEXT_MESSAGE))]
#[serde(rename_all = "camelCase")]
pub struct BuildContext {
    /// A git repository the builder fetches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitContext>,

    /// A ConfigMap whose keys are the context's file names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapContext>,

    /// No files, only a Dockerfile written here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineContext>,
}

/// A context fetched from git.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitContext {
    /// The repository: https://, ssh://, git:// or user@host:path.
    #[schemars(length(min = 1, max = 4096))]
    pub url: String,

    /// The branch, tag or commit. Unset: the default branch.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub reference: Option<String>,

    /// The directory inside the repository that is the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub sub_path: Option<String>,
}

/// A context made of a ConfigMap's files.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ConfigMapContext {
    /// The ConfigMap, in the Build's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A context that is only a Dockerfile.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InlineContext {
    /// The Dockerfile's text.
    #[schemars(length(min = 1, max = 65536))]
    pub dockerfile: String,
}

/// An image the build writes.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageOutput {
    /// The image's names (`registry/repository:tag`).
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 512)))]
    pub names: Vec<String>,

    /// Push the image to its registry.
    #[serde(default = "default_true")]
    pub push: bool,

    /// A `kubernetes.io/dockerconfigjson` Secret with the registry's
    /// credentials. Unset: push anonymously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_secret_ref: Option<SecretRef>,
}

/// A Secret in the Build's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One secret offered to the build.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildSecret {
    /// The id the Dockerfile mounts it by.
    #[schemars(length(min = 1, max = 256))]
    pub id: String,

    /// The key of a Secret in the Build's namespace holding the value.
    pub secret_ref: SecretKeyRef,
}

/// One key of a Secret.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What happened to the build.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatus {
    /// A one-word summary for people; programs read `conditions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BuildPhase>,

    /// `Succeeded`: True when built, False when failed, Unknown before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// When a builder started the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the build succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// The digest of the built image (of its index, for several platforms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,

    /// The builder pod that ran the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder_pod: Option<String>,

    /// A sentence for people: why it waits, or the error it failed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Where a build is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildPhase {
    /// Waiting for a builder.
    Pending,
    /// A builder is running it.
    Running,
    /// Built, and every output written.
    Succeeded,
    /// Failed, timed out or could not start; `message` says which.
    Failed,
}

const IMMUTABLE_RULE: &str = "self == oldSelf";
const IMMUTABLE_MESSAGE: &str = "a Build's spec cannot change once created; create a new Build";
const INLINE_DOCKERFILE_RULE: &str = "!has(self.context.inline) || !has(self.dockerfile)";
const INLINE_DOCKERFILE_MESSAGE: &str =
    "dockerfile names a file in a git or configMap context; an inline context carries its Dockerfile itself";
const ONE_CONTEXT_RULE: &str =
    "(has(self.git) ? 1 : 0) + (has(self.configMap) ? 1 : 0) + (has(self.inline) ? 1 : 0) == 1";
const ONE_CONTEXT_MESSAGE: &str = "set exactly one of context.git, context.configMap and context.inline";

fn default_timeout() -> String {
    "1h".into()
}

fn default_true() -> bool {
    true
}

impl BuildSpec {
    /// The Dockerfile's path inside the context.
    pub fn dockerfile_path(&self) -> &str {
        self.dockerfile.as_deref().unwrap_or("Dockerfile")
    }

    /// Checks everything the schema and its CEL rules check, and the git
    /// URL's form, with messages that name the field.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors(Vec::new());
        if self.builder_ref.name.is_empty() {
            errors.push("spec.builderRef.name", "must name a Builder in this namespace");
        }
        let c = &self.context;
        let sources = [c.git.is_some(), c.config_map.is_some(), c.inline.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            errors.push("spec.context", ONE_CONTEXT_MESSAGE);
        }
        if let Some(git) = &c.git
            && !is_git_url(&git.url)
        {
            errors.push(
                "spec.context.git.url",
                format!("{:?} is not a git URL (https://, ssh://, git:// or user@host:path)", git.url),
            );
        }
        if let Some(cm) = &c.config_map
            && cm.name.is_empty()
        {
            errors.push("spec.context.configMap.name", "must name a ConfigMap in this namespace");
        }
        if let Some(inline) = &c.inline
            && inline.dockerfile.trim().is_empty()
        {
            errors.push("spec.context.inline.dockerfile", "must hold the Dockerfile's text");
        }
        if let Some(path) = &self.dockerfile {
            if c.inline.is_some() {
                errors.push("spec.dockerfile", INLINE_DOCKERFILE_MESSAGE);
            } else if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p == "..") {
                errors
                    .push("spec.dockerfile", format!("{path:?} must be a relative path inside the context"));
            }
        }
        for name in self.build_args.keys() {
            if name.is_empty() || name.contains(char::is_whitespace) {
                errors.push("spec.buildArgs", format!("{name:?} is not a build argument name"));
            }
        }
        check_platforms("spec.platforms", &self.platforms, &mut errors);
        for (i, out) in self.outputs.iter().enumerate() {
            if out.names.is_empty() {
                errors.push(format!("spec.outputs[{i}].names"), "must name the image at least once");
            }
            for (j, name) in out.names.iter().enumerate() {
                if name.is_empty() || name.contains(char::is_whitespace) {
                    errors.push(
                        format!("spec.outputs[{i}].names[{j}]"),
                        format!("{name:?} is not an image name like registry.example/team/app:1.0"),
                    );
                }
            }
        }
        for (i, secret) in self.secrets.iter().enumerate() {
            if secret.id.is_empty() {
                errors.push(format!("spec.secrets[{i}].id"), "must be the id the Dockerfile mounts");
            } else if self.secrets[..i].iter().any(|s| s.id == secret.id) {
                errors.push(format!("spec.secrets[{i}].id"), format!("{} is listed twice", secret.id));
            }
        }
        match parse_duration(&self.timeout) {
            Ok(d) if d.is_zero() => errors.push("spec.timeout", "must be longer than 0"),
            Ok(_) => {}
            Err(e) => errors.push("spec.timeout", e),
        }
        errors.into_result()
    }
}

fn is_git_url(url: &str) -> bool {
    let has_host_and_path =
        |rest: &str| rest.split_once('/').is_some_and(|(host, path)| !host.is_empty() && !path.is_empty());
    if let Some(rest) =
        ["https://", "http://", "ssh://", "git://"].iter().find_map(|scheme| url.strip_prefix(scheme))
    {
        return has_host_and_path(rest) && !url.contains(char::is_whitespace);
    }
    // scp-like: user@host:path
    match url.split_once(':') {
        Some((user_host, path)) => {
            user_host.split_once('@').is_some_and(|(user, host)| !user.is_empty() && !host.is_empty())
                && !path.is_empty()
                && !url.contains(char::is_whitespace)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use super::*;

    const FULL: &str = r#"{
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "Build",
        "metadata": {"name": "app-1", "namespace": "builds"},
        "spec": {
            "builderRef": {"name": "ci"},
            "context": {"git": {"url": "https://git.example/team/app.git", "ref": "v1.2.0", "subPath": "web"}},
            "dockerfile": "docker/Dockerfile.prod",
            "target": "runtime",
            "buildArgs": {"VERSION": "1.2.0"},
            "platforms": ["linux/amd64", "linux/arm64"],
            "outputs": [{"names": ["registry.example/team/app:1.2.0", "registry.example/team/app:latest"],
                         "push": true, "pushSecretRef": {"name": "regcred"}}],
            "secrets": [{"id": "npmrc", "secretRef": {"name": "npm", "key": ".npmrc"}}],
            "timeout": "30m"
        },
        "status": {
            "phase": "Succeeded",
            "conditions": [{"type": "Succeeded", "status": "True", "reason": "Built", "message": "pushed 2 names",
                            "lastTransitionTime": "2026-01-02T03:10:00Z"}],
            "startTime": "2026-01-02T03:04:05Z",
            "completionTime": "2026-01-02T03:10:00Z",
            "imageDigest": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "builderPod": "ci-0",
            "observedGeneration": 1
        }
    }"#;

    fn spec(value: Value) -> BuildSpec {
        serde_json::from_value(value).unwrap()
    }

    fn messages(spec: &BuildSpec) -> Vec<String> {
        spec.validate().unwrap_err().0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_full_build_round_trips_and_is_valid() {
        let parsed: Build = serde_json::from_str(FULL).unwrap();
        assert_eq!(parsed.spec.context.git.as_ref().unwrap().reference.as_deref(), Some("v1.2.0"));
        assert_eq!(parsed.spec.dockerfile_path(), "docker/Dockerfile.prod");
        let status = parsed.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(BuildPhase::Succeeded));
        assert_eq!(status.conditions[0].type_, crate::condition::SUCCEEDED);
        assert_eq!(status.start_time.as_ref().unwrap().0.as_second(), 1_767_323_045);
        parsed.spec.validate().unwrap();
        let original: Value = serde_json::from_str(FULL).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), original);
    }

    #[test]
    fn a_minimal_build_gets_the_defaults() {
        let s = spec(json!({
            "builderRef": {"name": "ci"},
            "context": {"inline": {"dockerfile": "FROM busybox\nRUN echo hi\n"}},
            "outputs": [{"names": ["registry.example/hi:1"]}]
        }));
        assert_eq!(s.timeout, "1h");
        assert_eq!(s.dockerfile_path(), "Dockerfile");
        assert!(s.outputs[0].push);
        s.validate().unwrap();
    }

    #[test]
    fn git_urls_take_the_usual_forms() {
        for ok in
            ["https://github.com/a/b.git", "ssh://git@host/a/b", "git://host/a", "git@github.com:a/b.git"]
        {
            assert!(is_git_url(ok), "{ok}");
        }
        for bad in
            ["github.com/a/b", "https://", "https://host", "file:///etc", "git@github.com:", "a b@host:x"]
        {
            assert!(!is_git_url(bad), "{bad}");
        }
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let s = spec(json!({
            "builderRef": {"name": ""},
            "context": {"git": {"url": "github.com/a/b"}, "configMap": {"name": "src"}},
            "dockerfile": "../Dockerfile",
            "buildArgs": {"A B": "1"},
            "platforms": ["linux"],
            "outputs": [{"names": []}, {"names": ["registry.example/x:1", "has space"]}],
            "secrets": [{"id": "npmrc", "secretRef": {"name": "a", "key": "b"}},
                        {"id": "npmrc", "secretRef": {"name": "c", "key": "d"}}],
            "timeout": "0"
        }));
        assert_eq!(
            messages(&s),
            [
                "spec.builderRef.name: must name a Builder in this namespace",
                "spec.context: set exactly one of context.git, context.configMap and context.inline",
                "spec.context.git.url: \"github.com/a/b\" is not a git URL (https://, ssh://, git:// or user@host:path)",
                "spec.dockerfile: \"../Dockerfile\" must be a relative path inside the context",
                "spec.buildArgs: \"A B\" is not a build argument name",
                "spec.platforms[0]: \"linux\" is not a platform like linux/amd64 or linux/arm/v7 (lowercase os/arch[/variant])",
                "spec.outputs[0].names: must name the image at least once",
                "spec.outputs[1].names[1]: \"has space\" is not an image name like registry.example/team/app:1.0",
                "spec.secrets[1].id: npmrc is listed twice",
                "spec.timeout: must be longer than 0",
            ]
        );
    }

    #[test]
    fn an_inline_context_takes_no_dockerfile_path() {
        let s = spec(json!({
            "builderRef": {"name": "ci"},
            "context": {"inline": {"dockerfile": "FROM scratch\n"}},
            "dockerfile": "Dockerfile"
        }));
        assert_eq!(messages(&s), [format!("spec.dockerfile: {INLINE_DOCKERFILE_MESSAGE}")]);
    }

    fn crd() -> Value {
        serde_json::to_value(Build::crd()).unwrap()
    }

    #[test]
    fn the_crd_has_columns_status_and_rules() {
        let crd = crd();
        assert_eq!(crd["metadata"]["name"], "builds.kiln.dev");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["subresources"], json!({"status": {}}));
        let names: Vec<_> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, ["Builder", "Phase", "Digest", "Pod", "Age"]);
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let rules: Vec<_> =
            spec["x-kubernetes-validations"].as_array().unwrap().iter().map(|r| r["rule"].clone()).collect();
        assert_eq!(rules, [IMMUTABLE_RULE, INLINE_DOCKERFILE_RULE]);
        assert_eq!(spec["properties"]["context"]["x-kubernetes-validations"][0]["rule"], ONE_CONTEXT_RULE);
        assert_eq!(spec["properties"]["timeout"]["default"], "1h");
        assert_eq!(spec["properties"]["secrets"]["x-kubernetes-list-map-keys"], json!(["id"]));
        assert_eq!(spec["required"], json!(["builderRef", "context"]));
    }

    mod cel {
        use kube::core::cel::Validator;

        use super::*;

        fn check(object: &Value, old: Option<&Value>) -> Result<(), String> {
            let crd = crd();
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            Validator::new().validate(schema, object, old).map_err(|e| format!("{e:?}"))
        }

        fn build(spec_value: Value) -> Value {
            serde_json::to_value(Build::new("b", spec(spec_value))).unwrap()
        }

        #[test]
        fn exactly_one_context() {
            let base = json!({"builderRef": {"name": "ci"}});
            let with = |context: Value| {
                let mut v = base.clone();
                v["context"] = context;
                build(v)
            };
            check(&with(json!({"configMap": {"name": "src"}})), None).unwrap();
            let err = check(&with(json!({})), None).unwrap_err();
            assert!(err.contains(ONE_CONTEXT_MESSAGE), "{err}");
            let err =
                check(&with(json!({"configMap": {"name": "src"}, "inline": {"dockerfile": "FROM x"}})), None)
                    .unwrap_err();
            assert!(err.contains(ONE_CONTEXT_MESSAGE), "{err}");
        }

        #[test]
        fn the_spec_cannot_change() {
            let old = build(json!({"builderRef": {"name": "ci"}, "context": {"configMap": {"name": "src"}}}));
            check(&old, Some(&old)).unwrap();
            let new =
                build(json!({"builderRef": {"name": "other"}, "context": {"configMap": {"name": "src"}}}));
            let err = check(&new, Some(&old)).unwrap_err();
            assert!(err.contains(IMMUTABLE_MESSAGE), "{err}");
        }
    }
}
