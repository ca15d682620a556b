//! What a field manager last applied to an object, read back from the
//! object's `managedFields` (client-go's `Extract<Kind>`). Server-side apply
//! replaces a manager's whole configuration: to change one label of a pod it
//! applied, the manager applies everything it applied before with that label
//! changed; anything it leaves out is removed. What comes back are the live
//! values of the fields it owns: an atomic field whole, as the server
//! defaulted it. Pure.
//!
//! `fieldsV1` is structured-merge-diff's field set: `f:<name>` a field,
//! `k:<json>` a list item by its keys, `v:<json>` a list item by value,
//! `i:<n>` a list item by index, `.` the node itself
//! (sigs.k8s.io/structured-merge-diff, `fieldpath/serialize.go`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use serde_json::{Map, Value};

/// The part of `object` (the whole object as JSON) that `manager` applied to
/// its main resource; an empty object when it applied nothing.
pub fn extract(object: &Value, entries: &[ManagedFieldsEntry], manager: &str) -> Value {
    let applied = entries.iter().find(|e| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some("Apply")
            && e.subresource.as_deref().is_none_or(str::is_empty)
    });
    match applied.and_then(|e| e.fields_v1.as_ref()).and_then(|f| f.0.as_object()) {
        Some(fields) => pick(object, fields),
        None => Value::Object(Map::new()),
    }
}

/// The parts of `value` that `fields` names.
fn pick(value: &Value, fields: &Map<String, Value>) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, sub) in fields {
                let Some(name) = key.strip_prefix("f:") else { continue };
                if let Some(v) = map.get(name) {
                    out.insert(name.to_owned(), descend(v, sub));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let picked = items.iter().enumerate().filter_map(|(index, item)| {
                let (key, sub) = fields.iter().find(|(key, _)| names(key, index, item))?;
                let mut out = descend(item, sub);
                // An item's keys identify it even where its field set lists none.
                if let (Some(keys), Value::Object(out)) = (item_keys(key), &mut out) {
                    for (k, v) in keys {
                        out.entry(k).or_insert(v);
                    }
                }
                Some(out)
            });
            Value::Array(picked.collect())
        }
        other => other.clone(),
    }
}

/// `value` under a field set node: whole when the node has no children (a
/// scalar, or an atomic map or list), else the parts the children name.
fn descend(value: &Value, sub: &Value) -> Value {
    match sub.as_object().filter(|children| children.keys().any(|k| k != ".")) {
        Some(children) => pick(value, children),
        None => value.clone(),
    }
}

/// Whether the list-item path element `key` names `item` at `index`.
fn names(key: &str, index: usize, item: &Value) -> bool {
    if let Some(keys) = item_keys(key) {
        return keys.iter().all(|(k, v)| item.get(k) == Some(v));
    }
    if let Some(v) = key.strip_prefix("v:") {
        return serde_json::from_str::<Value>(v).is_ok_and(|v| &v == item);
    }
    key.strip_prefix("i:").and_then(|i| i.parse::<usize>().ok()) == Some(index)
}

fn item_keys(key: &str) -> Option<Map<String, Value>> {
    serde_json::from_str(key.strip_prefix("k:")?).ok()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
    use serde_json::json;

    use super::*;

    fn entry(manager: &str, operation: &str, subresource: Option<&str>, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            subresource: subresource.map(Into::into),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    /// A pod as the API server returns it: defaults filled in, a label and
    /// a status from others.
    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "pool-0",
                "labels": {"kiln.dev/builder": "pool", "team": "ci"},
                "ownerReferences": [{"apiVersion": "kiln.dev/v1alpha1", "kind": "Builder", "name": "pool", "uid": "u1"}],
                "finalizers": ["a", "b"],
            },
            "spec": {
                "containers": [
                    {
                        "name": "kilnd",
                        "image": "kilnd:1",
                        "args": ["--addr", "tcp://0.0.0.0:1234"],
                        "ports": [{"containerPort": 1234, "protocol": "TCP", "name": "grpc"}],
                        "terminationMessagePath": "/dev/termination-log",
                    },
                    {"name": "sidecar", "image": "other"},
                ],
                "nodeName": "node-1",
            },
            "status": {"phase": "Running"},
        })
    }

    fn applied_by_kiln() -> Value {
        json!({
            "f:metadata": {
                "f:labels": {".": {}, "f:kiln.dev/builder": {}},
                "f:ownerReferences": {".": {}, "k:{\"uid\":\"u1\"}": {}},
                "f:finalizers": {"v:\"b\"": {}},
            },
            "f:spec": {
                "f:containers": {
                    "k:{\"name\":\"kilnd\"}": {
                        ".": {},
                        "f:image": {},
                        "f:args": {},
                        "f:ports": {"k:{\"containerPort\":1234,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}}},
                    },
                },
            },
        })
    }

    #[test]
    fn only_what_the_manager_applied_comes_back() {
        let entries = [
            entry("kubectl", "Update", None, json!({"f:metadata": {"f:labels": {"f:team": {}}}})),
            entry("kiln-controller", "Apply", Some("status"), json!({"f:status": {"f:phase": {}}})),
            entry("kiln-controller", "Apply", None, applied_by_kiln()),
        ];
        assert_eq!(
            extract(&pod(), &entries, "kiln-controller"),
            json!({
                "metadata": {
                    "labels": {"kiln.dev/builder": "pool"},
                    "ownerReferences": [{"apiVersion": "kiln.dev/v1alpha1", "kind": "Builder", "name": "pool", "uid": "u1"}],
                    "finalizers": ["b"],
                },
                "spec": {
                    "containers": [{
                        "name": "kilnd",
                        "image": "kilnd:1",
                        "args": ["--addr", "tcp://0.0.0.0:1234"],
                        "ports": [{"containerPort": 1234, "protocol": "TCP", "name": "grpc"}],
                    }],
                },
            })
        );
    }

    /// `tests/golden/pod.yaml` server-side applied by `kiln-controller` to a
    /// real API server (kube-apiserver 1.34, kubectl `--show-managed-fields`):
    /// what comes back is what was applied, plus the server's defaults inside
    /// atomic fields and list keys, which are the live values already (so
    /// applying them again changes nothing).
    #[test]
    fn a_pod_from_the_api_server_gives_back_what_was_applied() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
        let live: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("fixtures/applied-pod.json")).unwrap())
                .unwrap();
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(live.clone()).unwrap();
        let mut applied: Value =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("golden/pod.yaml")).unwrap()).unwrap();
        // Identity, not fields: the apply's URL and body carry these.
        let map = applied.as_object_mut().unwrap();
        map.remove("apiVersion");
        map.remove("kind");
        let metadata = map["metadata"].as_object_mut().unwrap();
        metadata.remove("name");
        metadata.remove("namespace");
        let container = &mut applied["spec"]["containers"][0];
        for env in container["env"].as_array_mut().unwrap() {
            env["valueFrom"]["fieldRef"]["apiVersion"] = json!("v1");
        }
        for port in container["ports"].as_array_mut().unwrap() {
            port["protocol"] = json!("TCP");
        }
        let tolerations = applied["spec"]["tolerations"].as_array_mut().unwrap();
        for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            tolerations.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
            );
        }
        let managed = pod.metadata.managed_fields.unwrap();
        assert_eq!(extract(&live, &managed, "kiln-controller"), applied);
    }

    #[test]
    fn a_manager_that_applied_nothing_gets_an_empty_object() {
        let entries = [entry("kiln-controller", "Update", None, applied_by_kiln())];
        assert_eq!(extract(&pod(), &entries, "kiln-controller"), json!({}));
        assert_eq!(extract(&pod(), &[], "kiln-controller"), json!({}));
    }

    #[test]
    fn list_items_by_index_and_fields_gone_from_the_object() {
        let fields = json!({"f:spec": {"f:containers": {"i:1": {"f:image": {}}}, "f:hostname": {}}});
        let entries = [entry("m", "Apply", None, fields)];
        assert_eq!(extract(&pod(), &entries, "m"), json!({"spec": {"containers": [{"image": "other"}]}}));
    }
}
