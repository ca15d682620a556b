//! The bridge's netfilter rules, through `iptables-restore`.
//!
//! Three chains of kilnd's own, jumped to first from `FORWARD`, `INPUT` and
//! `nat POSTROUTING`: steps get out through NAT (to the destinations the
//! pool allows), never to each other (an isolated bridge port stops them on
//! the bridge, the `FORWARD` rule when they go round through the host),
//! nothing outside opens a connection to a step, and steps cannot connect to
//! kilnd's own ports on any of the host's addresses. `iptables` rather than a
//! table of nftables' own: a base chain elsewhere that drops (Docker sets
//! `FORWARD` to drop) would still drop what an nftables table accepted.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use tracing::debug;

use super::{Egress, NetworkError};

const RESTORE: &str = "iptables-restore";
const IPTABLES: &str = "iptables";

/// The rules of one bridge.
#[derive(Clone, Debug)]
pub(super) struct Firewall {
    bridge: String,
    subnet: Ipv4Net,
    egress: Egress,
    protected_ports: Vec<u16>,
}

/// A chain of kilnd's and the built-in chain that jumps to it.
struct Hook {
    table: &'static str,
    parent: &'static str,
    chain: String,
}

impl Firewall {
    pub(super) fn new(bridge: &str, subnet: Ipv4Net, egress: Egress, protected_ports: Vec<u16>) -> Self {
        Self { bridge: bridge.to_owned(), subnet, egress, protected_ports }
    }

    fn hooks(&self) -> [Hook; 3] {
        let chain = |suffix: &str| format!("KILN-{}-{suffix}", self.bridge);
        [
            Hook { table: "filter", parent: "FORWARD", chain: chain("FWD") },
            Hook { table: "filter", parent: "INPUT", chain: chain("IN") },
            Hook { table: "nat", parent: "POSTROUTING", chain: chain("NAT") },
        ]
    }

    /// The `iptables-restore --noflush` input: declaring a chain empties it,
    /// so applying it twice gives the same rules.
    pub(super) fn rules(&self) -> String {
        let [fwd, input, nat] = self.hooks();
        let (br, net) = (&self.bridge, self.subnet);
        let mut filter = vec![
            format!(":{} - [0:0]", fwd.chain),
            format!(":{} - [0:0]", input.chain),
            // Round through the host from one step to another.
            format!("-A {} -i {br} -o {br} -j DROP", fwd.chain),
            format!("-A {} -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", fwd.chain),
            format!("-A {} -o {br} -j DROP", fwd.chain),
            // A step with CAP_NET_RAW could send as another address.
            format!("-A {} -i {br} ! -s {net} -j DROP", fwd.chain),
            format!("-A {} -i {br} ! -s {net} -j DROP", input.chain),
        ];
        if !self.protected_ports.is_empty() {
            let ports: Vec<String> = self.protected_ports.iter().map(u16::to_string).collect();
            filter.push(format!(
                "-A {} -i {br} -p tcp -m multiport --dports {} -j REJECT --reject-with tcp-reset",
                input.chain,
                ports.join(",")
            ));
        }
        match &self.egress {
            Egress::Any => filter.push(format!("-A {} -i {br} -j ACCEPT", fwd.chain)),
            Egress::Only(allowed) => {
                for dest in allowed {
                    filter.push(format!("-A {} -i {br} -d {dest} -j ACCEPT", fwd.chain));
                    filter.push(format!("-A {} -i {br} -d {dest} -j RETURN", input.chain));
                }
                filter.push(format!("-A {} -i {br} -j REJECT --reject-with icmp-net-prohibited", fwd.chain));
                filter
                    .push(format!("-A {} -i {br} -j REJECT --reject-with icmp-net-prohibited", input.chain));
            }
        }
        filter.push(format!("-I {} 1 -j {}", fwd.parent, fwd.chain));
        filter.push(format!("-I {} 1 -j {}", input.parent, input.chain));

        let nat_rules = [
            format!(":{} - [0:0]", nat.chain),
            format!("-A {} -s {net} ! -o {br} -j MASQUERADE", nat.chain),
            format!("-I {} 1 -j {}", nat.parent, nat.chain),
        ];
        let mut text = String::from("*filter\n");
        for line in filter {
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str("COMMIT\n*nat\n");
        for line in nat_rules {
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        text
    }

    /// Replaces whatever rules of this bridge are there with ours. Blocking.
    pub(super) fn install(&self) -> Result<(), NetworkError> {
        self.remove();
        let mut child = Command::new(RESTORE)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                NetworkError::Firewall(format!(
                    "running {RESTORE}: {e}; the step network needs iptables for NAT: install it \
                     (Debian: apt-get install iptables), or set [worker.oci] networkMode = \"host\""
                ))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(self.rules().as_bytes())
                .map_err(|e| NetworkError::Firewall(format!("writing rules to {RESTORE}: {e}")))?;
        }
        let out = child.wait_with_output().map_err(|e| NetworkError::Firewall(format!("{RESTORE}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NetworkError::Firewall(format!(
                "{RESTORE} refused the rules of bridge {}: {}",
                self.bridge,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Removes the jumps and chains of this bridge, whatever is left of them.
    /// Blocking; failures mean there was nothing to remove.
    pub(super) fn remove(&self) {
        let iptables = |args: &[&str]| {
            Command::new(IPTABLES)
                .arg("-w")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        for hook in self.hooks() {
            let jump = ["-t", hook.table, "-D", hook.parent, "-j", hook.chain.as_str()];
            // A jump added twice (by hand, or by a kilnd killed mid-way) goes too.
            let mut removed = 0;
            while removed < 16 && iptables(&jump) {
                removed += 1;
            }
            let flushed = iptables(&["-t", hook.table, "-F", &hook.chain]);
            let deleted = iptables(&["-t", hook.table, "-X", &hook.chain]);
            debug!(chain = %hook.chain, removed, flushed, deleted, "removed firewall chain");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_nat_the_subnet_isolate_steps_and_guard_kilnds_ports() {
        let fw = Firewall::new("kiln3", "10.214.3.0/24".parse().unwrap(), Egress::Any, vec![1234, 6060]);
        assert_eq!(
            fw.rules(),
            "*filter\n\
             :KILN-kiln3-FWD - [0:0]\n\
             :KILN-kiln3-IN - [0:0]\n\
             -A KILN-kiln3-FWD -i kiln3 -o kiln3 -j DROP\n\
             -A KILN-kiln3-FWD -o kiln3 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A KILN-kiln3-FWD -o kiln3 -j DROP\n\
             -A KILN-kiln3-FWD -i kiln3 ! -s 10.214.3.0/24 -j DROP\n\
             -A KILN-kiln3-IN -i kiln3 ! -s 10.214.3.0/24 -j DROP\n\
             -A KILN-kiln3-IN -i kiln3 -p tcp -m multiport --dports 1234,6060 -j REJECT --reject-with tcp-reset\n\
             -A KILN-kiln3-FWD -i kiln3 -j ACCEPT\n\
             -I FORWARD 1 -j KILN-kiln3-FWD\n\
             -I INPUT 1 -j KILN-kiln3-IN\n\
             COMMIT\n\
             *nat\n\
             :KILN-kiln3-NAT - [0:0]\n\
             -A KILN-kiln3-NAT -s 10.214.3.0/24 ! -o kiln3 -j MASQUERADE\n\
             -I POSTROUTING 1 -j KILN-kiln3-NAT\n\
             COMMIT\n"
        );
    }

    #[test]
    fn restricted_egress_allows_only_the_listed_networks() {
        let allowed = vec!["192.0.2.0/24".parse().unwrap()];
        let fw = Firewall::new("kiln0", "10.214.0.0/24".parse().unwrap(), Egress::Only(allowed), vec![]);
        let rules = fw.rules();
        let fwd: Vec<&str> = rules.lines().filter(|l| l.starts_with("-A KILN-kiln0-FWD -i")).collect();
        assert_eq!(
            fwd,
            [
                "-A KILN-kiln0-FWD -i kiln0 -o kiln0 -j DROP",
                "-A KILN-kiln0-FWD -i kiln0 ! -s 10.214.0.0/24 -j DROP",
                "-A KILN-kiln0-FWD -i kiln0 -d 192.0.2.0/24 -j ACCEPT",
                "-A KILN-kiln0-FWD -i kiln0 -j REJECT --reject-with icmp-net-prohibited",
            ]
        );
        assert!(rules.contains("-A KILN-kiln0-IN -i kiln0 -j REJECT --reject-with icmp-net-prohibited\n"));
        assert!(!rules.contains("multiport"), "no ports to guard: {rules}");

        let none = Firewall::new("kiln0", "10.214.0.0/24".parse().unwrap(), Egress::Only(vec![]), vec![]);
        let accepts_egress =
            |l: &str| l.starts_with("-A KILN-kiln0-FWD -i kiln0") && l.ends_with("-j ACCEPT");
        assert!(!none.rules().lines().any(accepts_egress), "{}", none.rules());
    }
}
