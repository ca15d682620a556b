//! The network a RUN step gets (BuildKit's `util/network`).
//!
//! By default every step runs in a network namespace of its own, plugged
//! into a bridge of kilnd's with NAT to the outside: it can download what a
//! Dockerfile downloads, as on buildkitd, but it cannot reach another step,
//! kilnd's own API, or anything that only listens on the host's loopback.
//! `RUN --network=none` gets a namespace with only `lo`; `--network=host`
//! (with the `network.host` entitlement) shares kilnd's namespace. A daemon
//! configured with `networkMode = "host"` gives steps kilnd's namespace by
//! default, as buildkitd does when it has no CNI configuration.
//!
//! Setting a namespace up takes a few netlink round trips, so a few are kept
//! ready (`cniPoolSize`) and a namespace a sandboxed step used goes back to
//! the pool. docs/network.md has the addresses, the firewall rules and why.

mod bridge;
mod firewall;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

pub(crate) use bridge::Bridge;
use ipnet::Ipv4Net;

use super::{NetworkMode, SecurityMode};

/// Where the `/24`s of bridges kilnd picks for itself come from.
pub(crate) const DEFAULT_SUBNET_POOL: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(10, 214, 0, 0), 16) {
    Ok(net) => net,
    Err(_) => panic!("a /16 is a valid prefix"),
};
/// How many namespaces are kept ready when the configuration does not say.
pub(crate) const DEFAULT_POOL_SIZE: usize = 4;

/// The network a step gets when its op does not ask for one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum DefaultNetwork {
    /// Its own namespace on kilnd's bridge.
    #[default]
    Bridge,
    /// kilnd's own namespace.
    Host,
}

/// Which destinations steps on the bridge may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Egress {
    /// Anything the host can reach, as on BuildKit.
    #[default]
    Any,
    /// Only these networks (none at all when empty).
    Only(Vec<Ipv4Net>),
}

/// How the step network is set up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NetworkConfig {
    pub default: DefaultNetwork,
    /// The bridge's name; kilnd picks a free `kilnN` when unset.
    pub bridge_name: Option<String>,
    /// The bridge's subnet; kilnd picks a free `/24` of
    /// [`DEFAULT_SUBNET_POOL`] when unset.
    pub bridge_subnet: Option<Ipv4Net>,
    /// Namespaces kept ready.
    pub pool_size: usize,
    pub egress: Egress,
    /// kilnd's own TCP ports (its API, its debug endpoint): steps may not
    /// connect to them on any of the host's addresses.
    pub protected_ports: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkError {
    #[error("connecting to the kernel's routing netlink: {0}")]
    Netlink(#[source] std::io::Error),
    #[error("{action}: {source}")]
    Link { action: String, source: rtnetlink::Error },
    #[error("{action}: {source}")]
    Io { action: String, source: std::io::Error },
    #[error(
        "no free subnet for the step bridge: every /24 of {pool} overlaps a route of this host or is \
         taken by another kilnd; set [worker.oci] bridgeSubnet"
    )]
    NoFreeSubnet { pool: Ipv4Net },
    #[error("the step bridge's subnet {subnet} has no address left for another step")]
    AddressesExhausted { subnet: Ipv4Net },
    #[error("bridge {name} is in use by another kilnd (lock {lock})")]
    BridgeInUse { name: String, lock: String },
    #[error("bridge subnet {subnet} is too small: it needs room for the gateway and a step (/30 at least)")]
    SubnetTooSmall { subnet: Ipv4Net },
    #[error("firewall: {0}")]
    Firewall(String),
}

impl NetworkError {
    fn link(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Self {
        let action = action.into();
        move |source| Self::Link { action, source }
    }

    fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }
}

/// The networks steps can get: the default one, loopback only, the host's.
#[derive(Clone)]
pub(crate) struct Networks {
    default: DefaultNetwork,
    bridge: Option<Arc<Bridge>>,
}

impl fmt::Debug for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Networks")
            .field("default", &self.default)
            .field("bridge", &self.bridge.as_ref().map(|b| b.name().to_owned()))
            .finish()
    }
}

impl Networks {
    /// Sets up what `config` asks for: the bridge, its firewall rules and
    /// the first ready namespaces when steps default to the bridge.
    pub(crate) async fn start(config: &NetworkConfig) -> Result<Self, NetworkError> {
        let bridge = match config.default {
            DefaultNetwork::Bridge => Some(Bridge::start(config).await?),
            DefaultNetwork::Host => None,
        };
        Ok(Self { default: config.default, bridge })
    }

    /// Steps default to kilnd's own network; nothing is set up.
    #[cfg(test)]
    pub(crate) fn host() -> Self {
        Self { default: DefaultNetwork::Host, bridge: None }
    }

    /// The bridge steps are plugged into, if any.
    #[cfg(test)]
    pub(crate) fn bridge(&self) -> Option<&Arc<Bridge>> {
        self.bridge.as_ref()
    }

    /// The network for one step. A namespace handed out goes back to the
    /// pool when the attachment is dropped, unless the step could have
    /// changed it (an insecure step holds `CAP_NET_ADMIN` in it).
    pub(crate) async fn attach(
        &self,
        mode: NetworkMode,
        security: SecurityMode,
    ) -> Result<Attachment, NetworkError> {
        match (mode, self.default, &self.bridge) {
            (NetworkMode::Host, _, _) | (NetworkMode::Default, DefaultNetwork::Host, _) => {
                Ok(Attachment::Host)
            }
            (NetworkMode::None, _, _) => Ok(Attachment::Loopback),
            (NetworkMode::Default, DefaultNetwork::Bridge, Some(bridge)) => {
                let reusable = security == SecurityMode::Sandbox;
                Ok(Attachment::Bridge(Arc::clone(bridge).lease(reusable).await?))
            }
            // `start` makes the bridge whenever it is the default.
            (NetworkMode::Default, DefaultNetwork::Bridge, None) => Ok(Attachment::Loopback),
        }
    }

    /// Removes the bridge, its rules and every namespace (at shutdown).
    pub(crate) async fn stop(&self) {
        if let Some(bridge) = &self.bridge {
            bridge.stop().await;
        }
    }
}

/// The network one step runs in.
#[derive(Debug)]
pub(crate) enum Attachment {
    /// kilnd's own namespace.
    Host,
    /// A new namespace with only `lo`, made by the runtime.
    Loopback,
    /// A namespace on the bridge, held until the attachment is dropped.
    Bridge(bridge::Lease),
}

impl Attachment {
    /// The namespace file the runtime joins; `None` for a new namespace (or
    /// none at all for [`Attachment::Host`]).
    pub(crate) fn namespace_path(&self) -> Option<String> {
        match self {
            Self::Bridge(lease) => Some(lease.path()),
            Self::Host | Self::Loopback => None,
        }
    }

    /// The step shares kilnd's namespace: loopback is kilnd's.
    pub(crate) fn is_host(&self) -> bool {
        matches!(self, Self::Host)
    }
}
