//! A container's environment and command line as the kubelet builds them
//! (pkg/kubelet/kubelet_pods.go `makeEnvironmentVariables`): envFrom first,
//! then env in order, each value expanded against what came before; then
//! command and args expanded against the whole environment.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::Ctx;
use super::expand::expand;
use super::volumes::{config_map_data, field_value, secret_data};

/// Where a container's env comes from besides the pod spec.
#[derive(Debug, Clone)]
pub struct Base {
    /// The stand-in's own PATH, so programs find runc and friends.
    pub path: String,
    /// The API server as in-cluster clients find it (KUBERNETES_SERVICE_*).
    pub api_host: String,
    pub api_port: u16,
}

/// What the program sees: PATH and HOSTNAME (the runtime's, in the kubelet's
/// world) under the declared variables, which win.
pub fn for_exec(base: &Base, pod: &Pod, declared: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), base.path.clone()),
        ("HOSTNAME".to_owned(), pod.metadata.name.clone().unwrap_or_default()),
    ];
    for (name, value) in declared {
        set(&mut env, name.clone(), value.clone());
    }
    env
}

/// The container's declared environment (service variables, envFrom, env),
/// in order: what `$(VAR)` references can name.
pub async fn environment(
    ctx: &Ctx,
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let base = &ctx.env;
    let mut env: Vec<(String, String)> = Vec::new();
    let service = [
        ("KUBERNETES_SERVICE_HOST".to_owned(), base.api_host.clone()),
        ("KUBERNETES_SERVICE_PORT".to_owned(), base.api_port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".to_owned(), base.api_port.to_string()),
    ];
    env.extend(service);

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let data = if let Some(cm) = &from.config_map_ref {
            config_map_data(ctx, namespace, &cm.name, cm.optional.unwrap_or(false)).await?
        } else if let Some(secret) = &from.secret_ref {
            secret_data(ctx, namespace, &secret.name, secret.optional.unwrap_or(false)).await?
        } else {
            continue;
        };
        for (key, value) in data {
            set(&mut env, format!("{prefix}{key}"), String::from_utf8_lossy(&value).into_owned());
        }
    }

    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let known = env.clone();
                expand(var.value.as_deref().unwrap_or_default(), |name| lookup(&known, name))
            }
            Some(from) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, field, Some(pod_ip))?
                } else if let Some(key) = &from.config_map_key_ref {
                    let optional = key.optional.unwrap_or(false);
                    let data = config_map_data(ctx, namespace, &key.name, optional).await?;
                    match data.get(&key.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {namespace}/{}",
                                key.key, key.name
                            ));
                        }
                    }
                } else if let Some(key) = &from.secret_key_ref {
                    let optional = key.optional.unwrap_or(false);
                    let data = secret_data(ctx, namespace, &key.name, optional).await?;
                    match data.get(&key.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                key.key, key.name
                            ));
                        }
                    }
                } else {
                    return Err(format!(
                        "env {:?}: resourceFieldRef is not supported by the kubelet stand-in",
                        var.name
                    ));
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// The argv after the binary: command[1..] (command[0] is the image's
/// program, which the binary stands for) then args, all `$(VAR)`-expanded.
pub fn arguments(container: &Container, env: &[(String, String)]) -> Vec<String> {
    let command = container.command.iter().flatten().skip(1);
    let args = container.args.iter().flatten();
    command.chain(args).map(|a| expand(a, |name| lookup(env, name))).collect()
}

/// A readable command line for logs.
pub fn show(binary: &Path, args: &[String]) -> String {
    std::iter::once(binary.display().to_string()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" ")
}

fn lookup(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn set(env: &mut Vec<(String, String)>, name: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_zero_is_the_binary_and_the_rest_expands() {
        let env = vec![("POD_IP".to_owned(), "127.0.0.10".to_owned())];
        let container = Container {
            command: Some(vec!["kilnd".into(), "--addr".into(), "tcp://$(POD_IP):1234".into()]),
            args: Some(vec!["--debugaddr".into(), "$(POD_IP):6060".into(), "$(UNSET)".into()]),
            ..Default::default()
        };
        assert_eq!(
            arguments(&container, &env),
            ["--addr", "tcp://127.0.0.10:1234", "--debugaddr", "127.0.0.10:6060", "$(UNSET)"]
        );
        let only_args = Container { args: Some(vec!["--root".into(), "/x".into()]), ..Default::default() };
        assert_eq!(arguments(&only_args, &env), ["--root", "/x"]);
    }

    #[test]
    fn later_values_replace_earlier_ones() {
        let mut env = vec![("A".to_owned(), "1".to_owned())];
        set(&mut env, "B".into(), "2".into());
        set(&mut env, "A".into(), "3".into());
        assert_eq!(env, [("A".to_owned(), "3".to_owned()), ("B".to_owned(), "2".to_owned())]);
        assert_eq!(lookup(&env, "A").as_deref(), Some("3"));
    }
}
