//! Frontend attributes to [`ConvertOptions`] (`frontend/dockerui/config.go`
//! `init`, `attr.go`; docs/protocol.md §6).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{ConvertError, ConvertErrorKind, ConvertOptions, NamedContexts};
use crate::frontend::dockerfile::linter::CheckConfig;
use crate::frontend::llb::{HostIp, NetMode, Platform, ResolveMode, Ulimit};
use crate::util::strconv;

const ULIMITS: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

fn attr_error(key: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        kind: Box::new(ConvertErrorKind::FrontendAttr { key: key.to_owned(), reason: reason.into() }),
        lines: None,
        filename: String::new(),
    }
}

/// The values after `prefix` in keys that start with it (`filter`).
fn with_prefix(attrs: &BTreeMap<String, String>, prefix: &str) -> BTreeMap<String, String> {
    attrs.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_owned(), v.clone()))).collect()
}

impl ConvertOptions {
    /// Reads a Solve's frontend attributes. Returns the options and every
    /// requested target platform (empty: the platform is implicit); the
    /// options target the first, so a multi-platform build converts once
    /// per platform with `target_platform` set to each.
    pub(crate) fn from_frontend_attrs(
        attrs: &BTreeMap<String, String>,
        session_id: &str,
    ) -> Result<(Self, Vec<Platform>), ConvertError> {
        let get = |k: &str| attrs.get(k).map(String::as_str).unwrap_or("");
        let mut o = ConvertOptions { session_id: session_id.to_owned(), ..ConvertOptions::default() };

        let mut platforms = Vec::new();
        if !get("platform").is_empty() {
            for p in get("platform").split(',') {
                let parsed = Platform::parse(p).map_err(|e| {
                    attr_error("platform", format!("failed to parse target platform {p}: {e}"))
                })?;
                platforms.push(parsed);
            }
        }
        o.target_platform = platforms.first().cloned();
        o.multi_platform = platforms.len() > 1;
        let multi = match get("build-arg:BUILDKIT_MULTI_PLATFORM") {
            "" => get("multi-platform"),
            v => v,
        };
        if !multi.is_empty() {
            let b = strconv::parse_bool(multi).map_err(|_| {
                attr_error("multi-platform", format!("invalid boolean value for multi-platform: {multi}"))
            })?;
            if !b && o.multi_platform {
                return Err(attr_error(
                    "multi-platform",
                    "conflicting config: returning multiple target platforms is not allowed",
                ));
            }
            o.multi_platform = b;
        }

        o.image_resolve_mode = match get("image-resolve-mode") {
            "" | "default" => ResolveMode::Default,
            "pull" => ResolveMode::ForcePull,
            "local" => ResolveMode::PreferLocal,
            v => return Err(attr_error("image-resolve-mode", format!("invalid image-resolve-mode: {v}"))),
        };
        o.extra_hosts = parse_extra_hosts(get("add-hosts"))
            .map_err(|e| attr_error("add-hosts", format!("failed to parse additional hosts: {e}")))?;
        if !get("shm-size").is_empty() {
            o.shm_size = get("shm-size").parse().map_err(|_| {
                attr_error(
                    "shm-size",
                    format!("failed to parse shm size: invalid syntax: {}", get("shm-size")),
                )
            })?;
        }
        o.ulimits = parse_ulimits(get("ulimit"))
            .map_err(|e| attr_error("ulimit", format!("failed to parse ulimit: {e}")))?;
        o.force_network_mode = match get("force-network-mode") {
            "" | "sandbox" => NetMode::Unset,
            "none" => NetMode::None,
            "host" => NetMode::Host,
            v => return Err(attr_error("force-network-mode", format!("invalid netmode {v}"))),
        };
        if let Some(v) = attrs.get("no-cache") {
            o.no_cache_stages =
                Some(if v.is_empty() { Vec::new() } else { v.split(',').map(str::to_owned).collect() });
        }
        let epoch = get("build-arg:SOURCE_DATE_EPOCH");
        if !epoch.is_empty() {
            o.epoch = Some(epoch.parse().map_err(|_| {
                attr_error("build-arg:SOURCE_DATE_EPOCH", format!("invalid SOURCE_DATE_EPOCH: {epoch}"))
            })?);
        }
        if let Some(v) = attrs.get("build-arg:BUILDKIT_DOCKERFILE_CHECK") {
            o.check = Some(CheckConfig::parse(v).map_err(|e| {
                attr_error(
                    "build-arg:BUILDKIT_DOCKERFILE_CHECK",
                    format!("failed to parse BUILDKIT_DOCKERFILE_CHECK: {e}"),
                )
            })?);
        }
        o.build_args = with_prefix(attrs, "build-arg:");
        o.labels = with_prefix(attrs, "label:");
        o.cache_id_namespace = get("build-arg:BUILDKIT_CACHE_MOUNT_NS").to_owned();
        o.cgroup_parent = get("cgroup-parent").to_owned();
        o.target = attrs.get("target").filter(|t| !t.is_empty()).cloned();
        o.hostname = match get("build-arg:BUILDKIT_SANDBOX_HOSTNAME") {
            "" => get("hostname").to_owned(),
            v => v.to_owned(),
        };
        if let Some(name) = attrs.get("contextkey") {
            o.context_name.clone_from(name);
        }
        if let Some(name) = attrs.get("filename") {
            o.dockerfile_name.clone_from(name);
        }
        if let Some(session) = attrs.get(&format!("local-sessionid:{}", o.context_name)) {
            o.session_id.clone_from(session);
        }
        o.named_contexts = NamedContexts::from_attrs(attrs);
        Ok((o, platforms))
    }
}

/// `add-hosts`: `host=ip,…`; the address is stored in canonical form.
fn parse_extra_hosts(v: &str) -> Result<Vec<HostIp>, String> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(|field| {
            let lower = field.to_lowercase();
            let (host, ip) =
                lower.split_once('=').ok_or_else(|| format!("invalid key-value pair {field}"))?;
            let ip: IpAddr = ip.parse().map_err(|_| format!("failed to parse IP {ip}"))?;
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string()),
                IpAddr::V4(v4) => v4.to_string(),
            };
            Ok(HostIp { host: host.to_owned(), ip })
        })
        .collect()
}

/// `ulimit`: `name=soft[:hard],…` as go-units reads each.
fn parse_ulimits(v: &str) -> Result<Vec<Ulimit>, String> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(|field| {
            let (name, limits) = field.split_once('=').ok_or_else(|| format!("invalid ulimit argument: {field}"))?;
            if !ULIMITS.contains(&name) {
                return Err(format!("invalid ulimit type: {name}"));
            }
            let number = |s: &str| {
                strconv::parse_int(s, 10, 64).map_err(|e| e.to_string())
            };
            let (soft, hard) = match limits.split(':').collect::<Vec<_>>().as_slice() {
                [soft] => (number(soft)?, number(soft)?),
                [soft, hard] => (number(soft)?, number(hard)?),
                _ => {
                    return Err(format!(
                        "too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`"
                    ));
                }
            };
            if hard != -1 {
                if soft == -1 {
                    return Err(format!(
                        "ulimit soft limit must be less than or equal to hard limit: soft: -1 (unlimited), hard: {hard}"
                    ));
                }
                if soft > hard {
                    return Err(format!("ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"));
                }
            }
            Ok(Ulimit { name: name.to_owned(), soft, hard })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn buildx_attributes_become_options() {
        let a = attrs(&[
            ("target", "final"),
            ("build-arg:FOO", "bar"),
            ("build-arg:BUILDKIT_CACHE_MOUNT_NS", "ns"),
            ("label:a", "b"),
            ("platform", "linux/amd64,linux/arm64"),
            ("no-cache", "builder,test"),
            ("image-resolve-mode", "pull"),
            ("force-network-mode", "host"),
            ("add-hosts", "db=10.0.0.2,v6=::ffff:1.2.3.4"),
            ("shm-size", "1048576"),
            ("ulimit", "nofile=1024:2048,core=0"),
            ("cgroup-parent", "kiln"),
            ("build-arg:BUILDKIT_SANDBOX_HOSTNAME", "box"),
            ("build-arg:SOURCE_DATE_EPOCH", "1700000000"),
            ("build-arg:BUILDKIT_DOCKERFILE_CHECK", "skip=all"),
            ("filename", "Dockerfile.dev"),
            ("local-sessionid:context", "other-session"),
        ]);
        let (o, platforms) = ConvertOptions::from_frontend_attrs(&a, "sess").unwrap();
        assert_eq!(o.target.as_deref(), Some("final"));
        assert_eq!(o.build_args.get("FOO").map(String::as_str), Some("bar"));
        assert_eq!(o.cache_id_namespace, "ns");
        assert_eq!(o.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(platforms.len(), 2);
        assert_eq!(o.target_platform.as_ref().map(|p| p.architecture.as_str()), Some("amd64"));
        assert!(o.multi_platform);
        assert_eq!(o.no_cache_stages, Some(vec!["builder".to_owned(), "test".to_owned()]));
        assert_eq!((o.image_resolve_mode, o.force_network_mode), (ResolveMode::ForcePull, NetMode::Host));
        assert_eq!(o.extra_hosts[1], HostIp { host: "v6".into(), ip: "1.2.3.4".into() });
        assert_eq!(o.shm_size, 1 << 20);
        assert_eq!(o.ulimits[0], Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 });
        assert_eq!(o.ulimits[1], Ulimit { name: "core".into(), soft: 0, hard: 0 });
        assert_eq!((o.cgroup_parent.as_str(), o.hostname.as_str()), ("kiln", "box"));
        assert_eq!(o.epoch, Some(1_700_000_000));
        assert!(o.check.as_ref().is_some_and(|c| c.skip_all));
        assert_eq!((o.dockerfile_name.as_str(), o.session_id.as_str()), ("Dockerfile.dev", "other-session"));

        let (o, platforms) = ConvertOptions::from_frontend_attrs(&attrs(&[("no-cache", "")]), "s").unwrap();
        assert!(platforms.is_empty() && o.target_platform.is_none() && !o.multi_platform);
        assert_eq!(o.no_cache_stages, Some(Vec::new()));
    }

    #[test]
    fn bad_attributes_are_named() {
        let cases = [
            (("image-resolve-mode", "sometimes"), "invalid image-resolve-mode: sometimes"),
            (("force-network-mode", "bridge"), "invalid netmode bridge"),
            (("add-hosts", "db"), "failed to parse additional hosts: invalid key-value pair db"),
            (("add-hosts", "db=nope"), "failed to parse additional hosts: failed to parse IP nope"),
            (("ulimit", "files=1"), "failed to parse ulimit: invalid ulimit type: files"),
            (
                ("ulimit", "nofile=10:5"),
                "failed to parse ulimit: ulimit soft limit must be less than or equal to hard limit: 10 > 5",
            ),
            (("multi-platform", "maybe"), "invalid boolean value for multi-platform: maybe"),
            (("build-arg:SOURCE_DATE_EPOCH", "x"), "invalid SOURCE_DATE_EPOCH: x"),
        ];
        for ((k, v), want) in cases {
            let err = ConvertOptions::from_frontend_attrs(&attrs(&[(k, v)]), "s").unwrap_err();
            assert_eq!(err.to_string(), format!("invalid frontend option {k}: {want}"));
        }
        let err = ConvertOptions::from_frontend_attrs(
            &attrs(&[("platform", "linux/amd64,linux/arm64"), ("multi-platform", "false")]),
            "s",
        )
        .unwrap_err();
        assert!(err.to_string().contains("conflicting config"), "{err}");
    }
}
