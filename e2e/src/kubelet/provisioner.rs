//! The local volume provisioner stand-in: it creates the `kiln-local`
//! StorageClass, gives each pending claim of that class a hostPath PV (a
//! directory under the volumes root) pre-bound to it through claimRef — the
//! API server's PV controller completes the binding, as for any external
//! provisioner — and deletes Released PVs of its own with their directories.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::{Ctx, Error, FIELD_MANAGER};

pub const STORAGE_CLASS: &str = "kiln-local";
pub const PROVISIONER: &str = "kiln.dev/local-volume-stand-in";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Applies the StorageClass (the cluster's default, so claims that name no class get it too).
pub async fn ensure_storage_class(ctx: &Ctx) -> Result<(), Error> {
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let class = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Delete",
    });
    classes
        .patch(STORAGE_CLASS, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(class))
        .await
        .map_err(|source| Error::ApplyStorageClass { source })?;
    Ok(())
}

/// Watches claims and volumes until the task is dropped.
pub async fn run(ctx: Arc<Ctx>) {
    let claims = watcher(Api::<PersistentVolumeClaim>::all(ctx.client.clone()), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .map_ok(|c| Item::Claim(Box::new(c)));
    let volumes = watcher(Api::<PersistentVolume>::all(ctx.client.clone()), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .map_ok(|v| Item::Volume(Box::new(v)));
    let mut items = futures::stream::select(claims.boxed(), volumes.boxed());
    while let Some(item) = items.next().await {
        let result = match item {
            Ok(Item::Claim(claim)) => provision(&ctx, &claim).await,
            Ok(Item::Volume(pv)) => reclaim(&ctx, &pv).await,
            Err(e) => {
                warn!(error = %e, "watching claims and volumes");
                continue;
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "local volume provisioner stand-in");
        }
    }
}

enum Item {
    Claim(Box<PersistentVolumeClaim>),
    Volume(Box<PersistentVolume>),
}

/// The PV name for a claim: one per claim UID, so two provisioners racing
/// (several stand-ins on one cluster) create it once.
pub fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// The PV for a pending claim of our class, or nothing to do.
pub fn volume_for(claim: &PersistentVolumeClaim, root: &Path) -> Option<PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Pending");
    let ours = spec.storage_class_name.as_deref() == Some(STORAGE_CLASS);
    let unbound = spec.volume_name.as_deref().is_none_or(str::is_empty);
    if !(pending && ours && unbound) || claim.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let uid = claim.metadata.uid.as_deref()?;
    let name = volume_name(uid);
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()));
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": root.join(&name).display().to_string(), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": claim.namespace(),
                "name": claim.name_any(),
                "uid": uid,
            },
        },
    });
    serde_json::from_value(pv).ok()
}

#[instrument(skip_all, fields(claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any())))]
async fn provision(ctx: &Ctx, claim: &PersistentVolumeClaim) -> Result<(), Error> {
    let Some(pv) = volume_for(claim, &ctx.volumes) else { return Ok(()) };
    let name = pv.name_any();
    let dir = ctx.volumes.join(&name);
    std::fs::create_dir_all(&dir).map_err(|source| Error::CreateDir { path: dir.clone(), source })?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            info!(volume = %name, dir = %dir.display(), "provisioned");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(Error::ProvisionVolume { volume: name, source }),
    }
}

/// Deletes a Released PV of ours whose policy is Delete, directory first.
#[instrument(skip_all, fields(volume = %pv.name_any()))]
async fn reclaim(ctx: &Ctx, pv: &PersistentVolume) -> Result<(), Error> {
    let ours = pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let spec = pv.spec.as_ref();
    let delete = spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
    if !(ours && released && delete) || pv.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    // Only volumes under this stand-in's root: another stand-in with another
    // root made the rest and removes their directories itself.
    let path = spec.and_then(|s| s.host_path.as_ref()).map(|h| PathBuf::from(&h.path));
    let Some(path) = path.filter(|p| p.parent() == Some(ctx.volumes.as_path())) else { return Ok(()) };
    if path.exists() {
        std::fs::remove_dir_all(&path).map_err(|source| Error::RemoveDir { path: path.clone(), source })?;
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match pvs.delete(&pv.name_any(), &DeleteParams::default()).await {
        Ok(_) => {
            info!("deleted a released volume");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::DeleteVolume { volume: pv.name_any(), source }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn claim(class: &str, phase: &str, volume: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("cache-x-0".into()),
                namespace: Some("builds".into()),
                uid: Some("1234".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some(class.into()),
                volume_name: volume.map(Into::into),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_owned(), Quantity("5Gi".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus { phase: Some(phase.into()), ..Default::default() }),
        }
    }

    #[test]
    fn a_pending_claim_of_the_class_gets_a_prebound_host_path_volume() {
        let pv = volume_for(&claim(STORAGE_CLASS, "Pending", None), Path::new("/state/volumes")).unwrap();
        assert_eq!(pv.name_any(), "pvc-1234");
        let spec = pv.spec.unwrap();
        assert_eq!(spec.host_path.unwrap().path, "/state/volumes/pvc-1234");
        let claim_ref = spec.claim_ref.unwrap();
        assert_eq!(
            (claim_ref.namespace.as_deref(), claim_ref.name.as_deref(), claim_ref.uid.as_deref()),
            (Some("builds"), Some("cache-x-0"), Some("1234"))
        );
        assert_eq!(spec.capacity.unwrap()["storage"], Quantity("5Gi".into()));
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
        assert_eq!(pv.metadata.annotations.unwrap()[PROVISIONED_BY], PROVISIONER);
    }

    #[test]
    fn other_claims_are_left_alone() {
        let root = Path::new("/v");
        assert!(volume_for(&claim("standard", "Pending", None), root).is_none());
        assert!(volume_for(&claim(STORAGE_CLASS, "Bound", Some("pvc-1234")), root).is_none());
        assert!(volume_for(&claim(STORAGE_CLASS, "Pending", Some("pre-bound")), root).is_none());
    }
}
