//! A pod's volumes on this machine: each becomes a host directory that the
//! container init bind-mounts at its mountPaths. PVCs resolve through their
//! bound PV to its hostPath or local path; configMap, secret, downwardAPI and
//! projected volumes are written as files into a per-pod directory (once, not
//! kept updated); emptyDir is a per-pod directory.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, ObjectFieldSelector, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
    ServiceAccount, Volume,
};
use kube::Api;
use kube::api::PostParams;

use super::{Blocked, Ctx};

/// Why a pod cannot start yet, as the kubelet would say it (it waits in
/// ContainerCreating and retries).
fn not_ready(message: String) -> Blocked {
    Blocked { reason: "ContainerCreating".into(), message, container: None }
}

/// Volume name → the host path that holds it.
pub async fn prepare(ctx: &Ctx, pod: &Pod, pod_dir: &Path) -> Result<HashMap<String, PathBuf>, Blocked> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
    let mut paths = HashMap::new();
    for volume in volumes {
        let path = prepare_one(ctx, pod, pod_dir, volume).await.map_err(|message| {
            not_ready(format!("MountVolume.SetUp failed for volume {:?}: {message}", volume.name))
        })?;
        paths.insert(volume.name.clone(), path);
    }
    Ok(paths)
}

async fn prepare_one(ctx: &Ctx, pod: &Pod, pod_dir: &Path, volume: &Volume) -> Result<PathBuf, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let dir = pod_dir.join("volumes").join(&volume.name);
    if let Some(claim) = &volume.persistent_volume_claim {
        return claim_path(ctx, namespace, &claim.claim_name).await;
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        if host.type_.as_deref() == Some("DirectoryOrCreate") {
            std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        }
        return Ok(path);
    }
    // Files are written afresh on every attempt so a retry sees the latest data.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("clearing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if volume.empty_dir.is_some() {
        // emptyDir starts empty; the directory is all it needs.
    } else if let Some(source) = &volume.config_map {
        let data = config_map_data(ctx, namespace, &source.name, source.optional.unwrap_or(false)).await?;
        write_keys(&dir, &data, source.items.as_deref(), source.default_mode)?;
    } else if let Some(source) = &volume.secret {
        let name = source.secret_name.as_deref().unwrap_or_default();
        let data = secret_data(ctx, namespace, name, source.optional.unwrap_or(false)).await?;
        write_keys(&dir, &data, source.items.as_deref(), source.default_mode)?;
    } else if let Some(source) = &volume.downward_api {
        for item in source.items.iter().flatten() {
            let value = match (&item.field_ref, &item.resource_field_ref) {
                (Some(field), _) => field_value(pod, field, None)?,
                _ => return Err(format!("downwardAPI item {:?}: only fieldRef is supported", item.path)),
            };
            write_file(&dir, &item.path, value.as_bytes(), item.mode.or(source.default_mode))?;
        }
    } else if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                let data = config_map_data(ctx, namespace, &cm.name, cm.optional.unwrap_or(false)).await?;
                write_keys(&dir, &data, cm.items.as_deref(), projected.default_mode)?;
            } else if let Some(secret) = &source.secret {
                let data =
                    secret_data(ctx, namespace, &secret.name, secret.optional.unwrap_or(false)).await?;
                write_keys(&dir, &data, secret.items.as_deref(), projected.default_mode)?;
            } else if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    let Some(field) = &item.field_ref else {
                        return Err(format!("downwardAPI item {:?}: only fieldRef is supported", item.path));
                    };
                    let value = field_value(pod, field, None)?;
                    write_file(&dir, &item.path, value.as_bytes(), item.mode.or(projected.default_mode))?;
                }
            } else if let Some(token) = &source.service_account_token {
                let jwt =
                    service_account_token(ctx, pod, token.audience.clone(), token.expiration_seconds).await?;
                write_file(&dir, &token.path, jwt.as_bytes(), projected.default_mode)?;
            } else {
                return Err("a projected source other than configMap, secret, downwardAPI or \
                            serviceAccountToken is not supported by the kubelet stand-in"
                    .into());
            }
        }
    } else {
        return Err("this volume type is not supported by the kubelet stand-in".into());
    }
    Ok(dir)
}

/// A bound claim's directory: its PV's hostPath or local path.
async fn claim_path(ctx: &Ctx, namespace: &str, claim: &str) -> Result<PathBuf, String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let pvc = claims.get_opt(claim).await.map_err(|e| e.to_string())?;
    let pvc = pvc.ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|_| bound);
    let volume = volume.ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound"))?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs.get_opt(volume).await.map_err(|e| e.to_string())?;
    let spec = pv.and_then(|pv| pv.spec).ok_or_else(|| format!("persistentvolume {volume:?} not found"))?;
    let path = spec.host_path.map(|h| h.path).or(spec.local.map(|l| l.path));
    path.map(PathBuf::from).ok_or_else(|| {
        format!("persistentvolume {volume:?} is neither hostPath nor local: the kubelet stand-in mounts only those")
    })
}

pub async fn config_map_data(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(cm) => {
            let text = cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes()));
            let binary = cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0));
            Ok(text.chain(binary).collect())
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(format!("configmap {name:?} not found")),
    }
}

pub async fn secret_data(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(secret) => Ok(secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()),
        None if optional => Ok(BTreeMap::new()),
        None => Err(format!("secret {name:?} not found")),
    }
}

/// A token for the pod's service account, bound to the pod, from the TokenRequest API.
async fn service_account_token(
    ctx: &Ctx,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()).unwrap_or("default");
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: expiration,
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let token = api
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("requesting a token for serviceaccount {account:?}: {e}"))?;
    token.status.map(|s| s.token).ok_or_else(|| "the token request came back without a token".into())
}

/// The value of a downward-API field; `pod_ip` overrides the pod's status
/// (the stand-in knows it before it writes it).
pub fn field_value(pod: &Pod, field: &ObjectFieldSelector, pod_ip: Option<&str>) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let path = field.field_path.as_str();
    let subscript = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_prefix("['")?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => {
            pod_ip.map(str::to_owned).or_else(|| status.and_then(|s| s.pod_ip.clone()))
        }
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        _ => subscript("metadata.labels", meta.labels.as_ref())
            .or_else(|| subscript("metadata.annotations", meta.annotations.as_ref()))
            .map(Some)
            .ok_or_else(|| format!("unsupported fieldRef {path:?}"))?,
    };
    Ok(value.unwrap_or_default())
}

/// Writes a configMap's or secret's keys (all, or the listed items) as files.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<(), String> {
    match items {
        None => data.iter().try_for_each(|(key, value)| write_file(dir, key, value, default_mode)),
        Some(items) => items.iter().try_for_each(|item| {
            let value = data.get(&item.key).ok_or_else(|| format!("key {:?} not found", item.key))?;
            write_file(dir, &item.path, value, item.mode.or(default_mode))
        }),
    }
}

fn write_file(dir: &Path, relative: &str, contents: &[u8], mode: Option<i32>) -> Result<(), String> {
    let relative = Path::new(relative);
    if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("volume file path {} must be relative and without '..'", relative.display()));
    }
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::write(&path, contents).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let mode = mode.map_or(0o644, |m| m as u32 & 0o777);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("setting the mode of {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("kilnd-0".into()),
                namespace: Some("builds".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_owned(), "kilnd".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: Some("kiln-local".into()), ..Default::default() }),
            status: Some(PodStatus { pod_ip: Some("127.0.0.9".into()), ..Default::default() }),
        }
    }

    fn field(path: &str) -> ObjectFieldSelector {
        ObjectFieldSelector { field_path: path.into(), ..Default::default() }
    }

    #[test]
    fn downward_fields_resolve() {
        let pod = pod();
        assert_eq!(field_value(&pod, &field("metadata.name"), None).unwrap(), "kilnd-0");
        assert_eq!(field_value(&pod, &field("metadata.namespace"), None).unwrap(), "builds");
        assert_eq!(field_value(&pod, &field("spec.nodeName"), None).unwrap(), "kiln-local");
        assert_eq!(field_value(&pod, &field("status.podIP"), None).unwrap(), "127.0.0.9");
        assert_eq!(field_value(&pod, &field("status.podIP"), Some("127.0.0.10")).unwrap(), "127.0.0.10");
        assert_eq!(field_value(&pod, &field("metadata.labels['app']"), None).unwrap(), "kilnd");
        assert_eq!(field_value(&pod, &field("metadata.labels['none']"), None).unwrap(), "");
        let err = field_value(&pod, &field("spec.priority"), None).unwrap_err();
        assert!(err.contains("spec.priority"), "{err}");
    }

    #[test]
    fn keys_become_files_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let data: BTreeMap<String, Vec<u8>> =
            [("kilnd.toml".to_owned(), b"debug = true\n".to_vec()), ("other".to_owned(), b"x".to_vec())]
                .into();
        write_keys(dir.path(), &data, None, Some(0o600)).unwrap();
        assert_eq!(std::fs::read(dir.path().join("kilnd.toml")).unwrap(), b"debug = true\n");
        let mode = std::fs::metadata(dir.path().join("other")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let only = tempfile::tempdir().unwrap();
        let items = [KeyToPath { key: "kilnd.toml".into(), path: "conf/k.toml".into(), mode: None }];
        write_keys(only.path(), &data, Some(&items), None).unwrap();
        assert!(only.path().join("conf/k.toml").is_file());
        assert!(!only.path().join("other").exists());

        let missing = [KeyToPath { key: "nope".into(), path: "n".into(), mode: None }];
        let err = write_keys(only.path(), &data, Some(&missing), None).unwrap_err();
        assert!(err.contains("\"nope\""), "{err}");
    }

    #[test]
    fn file_paths_cannot_escape_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "a/../../x"] {
            assert!(write_file(dir.path(), bad, b"", None).is_err(), "{bad} was written");
        }
    }
}
