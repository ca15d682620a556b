//! The `/etc/hosts` and `/etc/resolv.conf` a build container sees,
//! generated as BuildKit does (`executor/oci/hosts.go`, `resolvconf.go`,
//! `util/resolvconf/resolvconf.go` upstream).

use std::net::IpAddr;

/// Used when the host's file leaves no usable nameserver.
const FALLBACK_NAMESERVERS: [&str; 4] =
    ["8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844"];

/// Where systemd-resolved keeps the real upstream servers when the host's
/// `/etc/resolv.conf` only points at its stub.
pub(crate) const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
pub(crate) const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
const SYSTEMD_STUB: &str = "127.0.0.53";

pub(crate) fn hosts_file(hostname: &str, extra_hosts: &[(String, IpAddr)]) -> String {
    let mut out = format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (host, ip) in extra_hosts {
        out.push_str(&format!("{ip}\t{host}\n"));
    }
    out
}

/// A parsed resolv.conf: the directives BuildKit rewrites, the rest verbatim.
#[derive(Debug, Default)]
struct ResolvConf {
    nameservers: Vec<String>,
    search: Vec<String>,
    options: Vec<String>,
    other: Vec<String>,
}

impl ResolvConf {
    fn parse(text: &str) -> Self {
        let mut rc = Self::default();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [] => {}
                ["nameserver", addr, ..] => {
                    // Addresses that do not parse are dropped, as upstream does.
                    if parse_nameserver(addr).is_some() {
                        rc.nameservers.push((*addr).to_owned());
                    }
                }
                ["nameserver"] | ["search"] | ["domain"] | ["options"] => {}
                // `domain` is the obsolete spelling of `search`; the last one wins.
                ["search" | "domain", domains @ ..] => {
                    rc.search = domains.iter().map(|s| (*s).to_owned()).collect();
                }
                ["options", opts @ ..] => rc.options.extend(opts.iter().map(|s| (*s).to_owned())),
                _ => rc.other.push(line.to_owned()),
            }
        }
        rc
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        for line in &self.other {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// A nameserver address without its `%zone` suffix, if it is one.
fn parse_nameserver(addr: &str) -> Option<IpAddr> {
    addr.split('%').next().and_then(|a| a.parse().ok())
}

/// Which host file to read: behind systemd-resolved's stub, a step in a
/// namespace of its own needs the upstream servers instead.
pub(crate) fn host_source(etc_resolv_conf: &str, host_network: bool) -> &'static str {
    if host_network {
        return HOST_RESOLV_CONF;
    }
    let rc = ResolvConf::parse(etc_resolv_conf);
    if rc.nameservers == [SYSTEMD_STUB] { SYSTEMD_RESOLV_CONF } else { HOST_RESOLV_CONF }
}

/// The container's resolv.conf from the host's. A namespace of its own
/// cannot reach the host's loopback, so loopback nameservers are dropped
/// there (`TransformForLegacyNw`); public resolvers stand in when none are
/// left.
pub(crate) fn resolv_conf(host: &str, host_network: bool) -> String {
    let mut rc = ResolvConf::parse(host);
    if !host_network || rc.nameservers.is_empty() {
        rc.nameservers.retain(|ns| parse_nameserver(ns).is_some_and(|ip| !ip.is_loopback()));
        if rc.nameservers.is_empty() {
            rc.nameservers = FALLBACK_NAMESERVERS.iter().map(|s| (*s).to_owned()).collect();
        }
    }
    rc.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_the_sandbox_and_extra_hosts() {
        let extra = vec![
            ("db".to_owned(), "10.0.0.5".parse().unwrap()),
            ("v6".to_owned(), "fd00::1".parse().unwrap()),
        ];
        assert_eq!(
            hosts_file("buildkitsandbox", &extra),
            "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.0.0.5\tdb\nfd00::1\tv6\n"
        );
    }

    #[test]
    fn sandbox_drops_loopback_nameservers_and_keeps_the_rest() {
        let host = "# generated\nnameserver 127.0.0.1\nnameserver 10.1.2.3\nnameserver ::1\n\
                    nameserver fd00::53\ndomain corp\nsearch a.example b.example\noptions ndots:2\n\
                    options edns0\nsortlist 10.0.0.0/8\n";
        assert_eq!(
            resolv_conf(host, false),
            "nameserver 10.1.2.3\nnameserver fd00::53\nsearch a.example b.example\n\
             options ndots:2 edns0\nsortlist 10.0.0.0/8\n"
        );
    }

    #[test]
    fn host_network_keeps_loopback_nameservers() {
        let host = "nameserver 127.0.0.53\nsearch lan\n";
        assert_eq!(resolv_conf(host, true), "nameserver 127.0.0.53\nsearch lan\n");
    }

    #[test]
    fn nothing_usable_left_means_public_resolvers() {
        let expected = "nameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\n\
                        nameserver 2001:4860:4860::8844\n";
        assert_eq!(resolv_conf("nameserver 127.0.0.11\n", false), expected);
        assert_eq!(resolv_conf("", true), expected);
        assert_eq!(resolv_conf("nameserver not-an-ip\n", false), expected);
    }

    #[test]
    fn systemd_resolved_stub_points_the_sandbox_at_upstream_servers() {
        assert_eq!(host_source("nameserver 127.0.0.53\n", false), SYSTEMD_RESOLV_CONF);
        assert_eq!(host_source("nameserver 127.0.0.53\n", true), HOST_RESOLV_CONF);
        assert_eq!(host_source("nameserver 127.0.0.53\nnameserver 1.1.1.1\n", false), HOST_RESOLV_CONF);
    }
}
