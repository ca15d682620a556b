//! JSON schemas for kubeconform from the test API server's own OpenAPI (v2),
//! so rendered charts are checked against exactly the Kubernetes the cluster
//! tier runs (and the CRDs installed in it), with nothing fetched from the
//! internet.
//!
//! One file per kind, named as kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}`
//! template names it (`deployment-apps-v1.json`, `service-v1.json`,
//! `builder-kiln-v1alpha1.json`); every `$ref` inlined (a recursive type
//! becomes "anything" where it recurs), and every object that lists its
//! properties closed to others, as the API server's strict field validation
//! refuses unknown fields.

use std::path::Path;

use serde_json::{Map, Value, json};

/// kubeconform's `-schema-location` for the files `write_schemas` writes in `dir`.
pub fn schema_location(dir: &Path) -> String {
    format!("{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json", dir.display())
}

/// Writes a schema per kind of `openapi` (the API server's `/openapi/v2`)
/// into `dir`; returns the file names.
pub fn write_schemas(openapi: &Value, dir: &Path) -> std::io::Result<Vec<String>> {
    let empty = Map::new();
    let definitions = openapi["definitions"].as_object().unwrap_or(&empty);
    let mut written = Vec::new();
    for (name, definition) in definitions {
        let Some(kinds) = definition["x-kubernetes-group-version-kind"].as_array() else { continue };
        for gvk in kinds {
            let (group, version, kind) = (
                gvk["group"].as_str().unwrap_or_default(),
                gvk["version"].as_str().unwrap_or_default(),
                gvk["kind"].as_str().unwrap_or_default(),
            );
            // DeleteOptions, WatchEvent and the like claim a kind in every
            // group; a kind's schema is the definition named after it.
            if !name.ends_with(&format!(".{kind}")) {
                continue;
            }
            let file = format!("{}{}.json", kind.to_lowercase(), kind_suffix(group, version));
            let schema = resolve(definition, definitions, &mut Vec::new());
            std::fs::write(dir.join(&file), serde_json::to_vec(&schema)?)?;
            written.push(file);
        }
    }
    written.sort();
    Ok(written)
}

/// kubeconform's KindSuffix: `-v1` for the core group, else the group's first
/// label and the version.
fn kind_suffix(group: &str, version: &str) -> String {
    match group.split('.').next() {
        Some(first) if !group.is_empty() => format!("-{}-{}", first.to_lowercase(), version.to_lowercase()),
        _ => format!("-{}", version.to_lowercase()),
    }
}

const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// `schema` with its references inlined and its objects closed; `stack`
/// holds the definitions being inlined (a recursion stops there).
fn resolve(schema: &Value, definitions: &Map<String, Value>, stack: &mut Vec<String>) -> Value {
    let Some(object) = schema.as_object() else { return schema.clone() };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let name = reference.trim_start_matches("#/definitions/");
        if name == QUANTITY {
            // A string such as 500m or 1Gi, or a plain number.
            return json!({"type": ["string", "number"]});
        }
        let Some(target) = definitions.get(name) else { return json!({}) };
        if stack.iter().any(|n| n == name) {
            return json!({});
        }
        stack.push(name.to_owned());
        let resolved = resolve(target, definitions, stack);
        stack.pop();
        return resolved;
    }
    let mut out = Map::new();
    for (key, value) in object {
        let value = match key.as_str() {
            "properties" | "patternProperties" => Value::Object(
                value
                    .as_object()
                    .map(|props| {
                        props.iter().map(|(k, v)| (k.clone(), resolve(v, definitions, stack))).collect()
                    })
                    .unwrap_or_default(),
            ),
            "items" | "additionalProperties" | "not" => resolve(value, definitions, stack),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                value.as_array().into_iter().flatten().map(|v| resolve(v, definitions, stack)).collect(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    let int_or_string = out.get("format").and_then(Value::as_str) == Some("int-or-string")
        || out.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if int_or_string {
        out.remove("format");
        out.insert("type".into(), json!(["string", "integer"]));
    }
    let open = out.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if out.contains_key("properties") && !out.contains_key("additionalProperties") && !open {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_named_as_kubeconform_looks_them_up() {
        assert_eq!(kind_suffix("", "v1"), "-v1");
        assert_eq!(kind_suffix("apps", "v1"), "-apps-v1");
        assert_eq!(kind_suffix("rbac.authorization.k8s.io", "v1"), "-rbac-v1");
        assert_eq!(kind_suffix("kiln.dev", "v1alpha1"), "-kiln-v1alpha1");
    }

    #[test]
    fn references_are_inlined_objects_closed_and_recursion_cut() {
        let openapi = json!({"definitions": {
            "io.k8s.api.core.v1.Thing": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "Thing"}],
                "properties": {
                    "spec": {"$ref": "#/definitions/io.k8s.api.core.v1.ThingSpec"},
                    "port": {"type": "string", "format": "int-or-string"},
                    "size": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.api.resource.Quantity"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"a": {}}}
                }
            },
            "io.k8s.api.core.v1.ThingSpec": {
                "type": "object",
                "properties": {"child": {"$ref": "#/definitions/io.k8s.api.core.v1.ThingSpec"}}
            },
            "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions": {
                "x-kubernetes-group-version-kind": [{"group": "apps", "version": "v1", "kind": "DeleteOptions"},
                                                    {"group": "", "version": "v1", "kind": "Thing"}]
            }
        }});
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            write_schemas(&openapi, dir.path()).unwrap(),
            ["deleteoptions-apps-v1.json", "thing-v1.json"]
        );
        let thing: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("thing-v1.json")).unwrap()).unwrap();
        assert_eq!(thing["additionalProperties"], false);
        let spec = &thing["properties"]["spec"];
        assert_eq!(spec["additionalProperties"], false);
        assert_eq!(spec["properties"]["child"], json!({}), "the recursion stops where it recurs");
        assert_eq!(thing["properties"]["port"], json!({"type": ["string", "integer"]}));
        assert_eq!(thing["properties"]["size"], json!({"type": ["string", "number"]}));
        assert_eq!(thing["properties"]["labels"]["additionalProperties"], json!({"type": "string"}));
        assert!(thing["properties"]["raw"].get("additionalProperties").is_none());
    }
}
