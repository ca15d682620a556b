//! kilnd's bridge and the namespaces plugged into it.
//!
//! Each step namespace gets a veth pair: `eth0` inside, the other end on the
//! bridge as an *isolated* port (the bridge forwards nothing between two
//! isolated ports, so steps cannot talk to each other), an address of the
//! bridge's subnet and a default route through the bridge's address. The
//! firewall rules (`firewall.rs`) NAT the subnet out and keep steps away from
//! kilnd's own ports.
//!
//! A namespace lives as long as kilnd holds an open file of it; the runtime
//! joins it through `/proc/<kilnd>/fd/<n>`. Nothing is mounted, so a killed
//! kilnd leaves no namespace behind: the kernel removes them, and their veth
//! pairs, when the files close. What a killed kilnd does leave (its bridge
//! and firewall rules) is removed by the next kilnd that takes the same
//! bridge, which it can only do once the lock the dead one held is free.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::firewall::Firewall;
use super::{DEFAULT_SUBNET_POOL, NetworkConfig, NetworkError};

/// Where kilnds on one host lock the bridges they use (below the run base,
/// `crate::rootless::run_base`): bridges and their subnets are the host's,
/// not one daemon's.
fn lock_dir() -> PathBuf {
    crate::rootless::run_base().join("net")
}
/// The size of the subnet each kilnd takes from the pool.
const SLOT_PREFIX: u8 = 24;
const DEFAULT_MTU: u32 = 1500;
/// The interface name limit of the kernel (`IFNAMSIZ` less the NUL).
const MAX_IFNAME: usize = 15;

/// One step namespace, set up and ready to be joined.
#[derive(Debug)]
pub struct Namespace {
    /// Holds the namespace: it goes away when the last holder closes it.
    file: File,
    address: Ipv4Addr,
    /// The host end of the veth pair (deleting it deletes both ends).
    veth: String,
}

impl Namespace {
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }
}

/// A namespace lent to one step; it goes back to the bridge on drop.
#[derive(Debug)]
pub struct Lease {
    bridge: Arc<Bridge>,
    namespace: Option<Namespace>,
    reusable: bool,
}

impl Lease {
    /// The path the runtime opens to join the namespace.
    pub fn path(&self) -> String {
        let fd = self.namespace.as_ref().map_or(-1, |ns| ns.file.as_raw_fd());
        format!("/proc/{}/fd/{fd}", std::process::id())
    }

    pub fn address(&self) -> Option<Ipv4Addr> {
        self.namespace.as_ref().map(Namespace::address)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(ns) = self.namespace.take() {
            self.bridge.give_back(ns, self.reusable);
        }
    }
}

/// Addresses of the bridge's subnet: the first is the bridge's own, the
/// rest go to steps, handed out round-robin so an address just freed is
/// the last to be taken again.
#[derive(Debug)]
struct Addresses {
    first: u32,
    last: u32,
    next: u32,
    used: HashSet<u32>,
}

impl Addresses {
    fn new(subnet: Ipv4Net) -> Result<Self, NetworkError> {
        let first = u32::from(subnet.network()) + 2;
        let last = u32::from(subnet.broadcast()).saturating_sub(1);
        if subnet.prefix_len() > 30 || first > last {
            return Err(NetworkError::SubnetTooSmall { subnet });
        }
        Ok(Self { first, last, next: first, used: HashSet::new() })
    }

    fn take(&mut self) -> Option<Ipv4Addr> {
        let span = self.last - self.first + 1;
        for _ in 0..span {
            let candidate = self.next;
            self.next = if self.next == self.last { self.first } else { self.next + 1 };
            if self.used.insert(candidate) {
                return Some(candidate.into());
            }
        }
        None
    }

    fn free(&mut self, address: Ipv4Addr) {
        self.used.remove(&u32::from(address));
    }
}

#[derive(Debug)]
struct Pool {
    ready: Vec<Namespace>,
    addresses: Addresses,
}

/// kilnd's step bridge: its link, firewall rules and namespaces.
#[derive(Debug)]
pub struct Bridge {
    name: String,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: u32,
    index: u32,
    /// A netlink connection in kilnd's own namespace.
    host: Handle,
    /// kilnd's own namespace, where a new veth's host end is moved.
    host_ns: File,
    next_veth: AtomicU32,
    pool_size: usize,
    pool: Mutex<Pool>,
    firewall: Firewall,
    /// Namespaces to remove, off the path of the step that gave them back.
    retired: mpsc::UnboundedSender<Namespace>,
    refill: Notify,
    stopped: CancellationToken,
    /// Held for kilnd's lifetime: the bridge is this kilnd's.
    _lock: File,
}

impl Bridge {
    /// Takes a bridge (the configured one, or the first free `kilnN` with
    /// its `/24`), sets it up with its firewall rules and starts filling the
    /// pool of ready namespaces.
    pub(crate) async fn start(config: &NetworkConfig) -> Result<Arc<Self>, NetworkError> {
        let (connection, host, _) = rtnetlink::new_connection().map_err(NetworkError::Netlink)?;
        tokio::spawn(connection.instrument(info_span!("netlink")));
        let host_ns = File::open("/proc/thread-self/ns/net")
            .map_err(NetworkError::io("opening kilnd's network namespace"))?;
        let (name, subnet, lock) = claim(config, &host).await?;
        let gateway = subnet.hosts().next().ok_or(NetworkError::SubnetTooSmall { subnet })?;
        let addresses = Addresses::new(subnet)?;
        let mtu = uplink_mtu(&host).await;

        host.link()
            .add(LinkBridge::new(&name).mtu(mtu).build())
            .execute()
            .await
            .map_err(NetworkError::link(format!("creating bridge {name}")))?;
        let index = link_index(&host, &name).await?;
        host.address()
            .add(index, gateway.into(), subnet.prefix_len())
            .execute()
            .await
            .map_err(NetworkError::link(format!("giving bridge {name} address {gateway}")))?;
        // Steps get IPv4 only; without IPv6 on the bridge they cannot reach
        // the host over link-local addresses, which no IPv4 rule would stop.
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1")?;
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        host.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(NetworkError::link(format!("bringing bridge {name} up")))?;

        let firewall = Firewall::new(&name, subnet, config.egress.clone(), config.protected_ports.clone());
        let installed = {
            let firewall = firewall.clone();
            tokio::task::spawn_blocking(move || firewall.install())
                .await
                .map_err(|e| NetworkError::Firewall(e.to_string()))
                .and_then(|r| r)
        };
        if let Err(e) = installed {
            let _ = host.link().del(index).execute().await;
            return Err(e);
        }

        let (retired, retired_rx) = mpsc::unbounded_channel();
        let bridge = Arc::new(Self {
            name,
            subnet,
            gateway,
            mtu,
            index,
            host,
            host_ns,
            next_veth: AtomicU32::new(0),
            pool_size: config.pool_size,
            pool: Mutex::new(Pool { ready: Vec::new(), addresses }),
            firewall,
            retired,
            refill: Notify::new(),
            stopped: CancellationToken::new(),
            _lock: lock,
        });
        info!(bridge = %bridge.name, subnet = %bridge.subnet, mtu, pool = bridge.pool_size, "step network ready");
        let span = info_span!("network pool", bridge = %bridge.name);
        tokio::spawn(Arc::clone(&bridge).maintain(retired_rx).instrument(span));
        Ok(bridge)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A ready namespace, or a new one when none is ready.
    pub(super) async fn lease(self: Arc<Self>, reusable: bool) -> Result<Lease, NetworkError> {
        let ready = self.pool().ready.pop();
        self.refill.notify_one();
        let namespace = match ready {
            Some(ns) => ns,
            None => self.create().await?,
        };
        Ok(Lease { bridge: self, namespace: Some(namespace), reusable })
    }

    fn give_back(&self, ns: Namespace, reusable: bool) {
        if reusable && !self.stopped.is_cancelled() {
            let mut pool = self.pool();
            if pool.ready.len() < self.pool_size {
                pool.ready.push(ns);
                return;
            }
        }
        if let Err(mpsc::error::SendError(ns)) = self.retired.send(ns) {
            // The pool's task is gone (kilnd is stopping): closing the file
            // removes the namespace with its veth pair.
            self.pool().addresses.free(ns.address);
        }
    }

    /// Keeps the pool filled and removes retired namespaces until stopped.
    async fn maintain(self: Arc<Self>, mut retired: mpsc::UnboundedReceiver<Namespace>) {
        loop {
            while self.pool().ready.len() < self.pool_size && !self.stopped.is_cancelled() {
                match self.create().await {
                    Ok(ns) => self.pool().ready.push(ns),
                    Err(e) => {
                        warn!(error = %e, "preparing a step network namespace");
                        break;
                    }
                }
            }
            tokio::select! {
                () = self.stopped.cancelled() => break,
                () = self.refill.notified() => {}
                Some(ns) = retired.recv() => self.remove(ns).await,
            }
        }
        retired.close();
        while let Some(ns) = retired.recv().await {
            self.remove(ns).await;
        }
    }

    /// Removes every namespace and the bridge with its firewall rules.
    pub(super) async fn stop(&self) {
        self.stopped.cancel();
        let ready = std::mem::take(&mut self.pool().ready);
        for ns in ready {
            self.remove(ns).await;
        }
        let firewall = self.firewall.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || firewall.remove()).await {
            warn!(error = %e, "removing the step network's firewall rules");
        }
        if let Err(e) = self.host.link().del(self.index).execute().await {
            warn!(bridge = %self.name, error = %e, "removing the step bridge");
        }
    }

    async fn remove(&self, ns: Namespace) {
        match link_index(&self.host, &ns.veth).await {
            Ok(index) => {
                if let Err(e) = self.host.link().del(index).execute().await {
                    debug!(veth = %ns.veth, error = %e, "removing a step's veth pair");
                }
            }
            Err(e) => debug!(veth = %ns.veth, error = %e, "a step's veth pair is already gone"),
        }
        self.pool().addresses.free(ns.address);
    }

    fn next_veth_name(&self) -> String {
        let n = self.next_veth.fetch_add(1, Ordering::Relaxed) % 100_000;
        let stem: String = self.name.chars().take(MAX_IFNAME - 6).collect();
        format!("{stem}_{n}")
    }

    async fn create(&self) -> Result<Namespace, NetworkError> {
        let address =
            self.pool().addresses.take().ok_or(NetworkError::AddressesExhausted { subnet: self.subnet })?;
        let veth = self.next_veth_name();
        match self.plumb(address, &veth).await {
            Ok(file) => Ok(Namespace { file, address, veth }),
            Err(e) => {
                if let Ok(index) = link_index(&self.host, &veth).await {
                    let _ = self.host.link().del(index).execute().await;
                }
                self.pool().addresses.free(address);
                Err(e)
            }
        }
    }

    /// A new namespace with `eth0` on the bridge at `address`.
    async fn plumb(&self, address: Ipv4Addr, veth: &str) -> Result<File, NetworkError> {
        let (file, connection, inside) = new_namespace().await?;
        let connection = tokio::spawn(connection);
        let result = async {
            // Made inside, so `eth0` never meets the host's own `eth0`; the
            // other end then moves home to the bridge.
            inside
                .link()
                .add(LinkVeth::new("eth0", veth).mtu(self.mtu).build())
                .execute()
                .await
                .map_err(NetworkError::link("creating a step's veth pair"))?;
            let peer = link_index(&inside, veth).await?;
            inside
                .link()
                .set(LinkUnspec::new_with_index(peer).setns_by_fd(self.host_ns.as_raw_fd()).build())
                .execute()
                .await
                .map_err(NetworkError::link(format!("moving {veth} to kilnd's namespace")))?;
            let port = link_index(&self.host, veth).await?;
            self.host
                .link()
                .set(LinkUnspec::new_with_index(port).controller(self.index).up().build())
                .execute()
                .await
                .map_err(NetworkError::link(format!("plugging {veth} into bridge {}", self.name)))?;
            self.host
                .link()
                .set_port(LinkBridgePort::new(port).isolated(true).build())
                .execute()
                .await
                .map_err(NetworkError::link(format!("isolating bridge port {veth}")))?;

            let eth0 = link_index(&inside, "eth0").await?;
            inside
                .address()
                .add(eth0, address.into(), self.subnet.prefix_len())
                .execute()
                .await
                .map_err(NetworkError::link(format!("giving a step address {address}")))?;
            for index in [eth0, link_index(&inside, "lo").await?] {
                inside
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .map_err(NetworkError::link("bringing a step's links up"))?;
            }
            inside
                .route()
                .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(self.gateway).build())
                .execute()
                .await
                .map_err(NetworkError::link(format!("routing a step through {}", self.gateway)))
        }
        .await;
        drop(inside);
        connection.abort();
        result.map(|()| file)
    }
}

/// A new network namespace, held by the returned file, with a netlink
/// connection inside it. A thread of its own enters the namespace, so no
/// thread of kilnd's ever runs in a step's namespace.
async fn new_namespace() -> Result<
    (File, rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>, Handle),
    NetworkError,
> {
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kilnd-netns".into())
        .spawn(move || {
            let made = (|| {
                // The netlink socket registers with the runtime's reactor.
                let _entered = runtime.enter();
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetworkError::io("creating a network namespace")(e.into()))?;
                let file = File::open("/proc/thread-self/ns/net")
                    .map_err(NetworkError::io("opening a new network namespace"))?;
                // IPv4 only, as the bridge; absent when the kernel has no IPv6.
                for key in ["all", "default"] {
                    write_sysctl(&format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6"), "1")?;
                }
                let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Netlink)?;
                Ok((file, connection, handle))
            })();
            let _ = tx.send(made);
        })
        .map_err(NetworkError::io("starting a thread for a network namespace"))?;
    rx.await
        .map_err(|_| NetworkError::io("creating a network namespace")(io::ErrorKind::Interrupted.into()))?
}

/// Writes a sysctl of the calling thread's network namespace; a key the
/// kernel lacks (no IPv6) is skipped.
fn write_sysctl(path: &str, value: &str) -> Result<(), NetworkError> {
    match std::fs::write(path, value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetworkError::io(format!("setting {path} to {value}"))(e)),
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(NetworkError::link(format!("looking up link {name}")))?;
    link.map(|l| l.header.index).ok_or_else(|| NetworkError::Io {
        action: format!("looking up link {name}"),
        source: io::ErrorKind::NotFound.into(),
    })
}

/// The host's IPv4 routes of the main table, as (network, output link).
async fn routes(handle: &Handle) -> Result<Vec<(Ipv4Net, Option<u32>)>, NetworkError> {
    let messages: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(NetworkError::link("listing the host's routes"))?;
    Ok(messages
        .into_iter()
        .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
        .filter_map(|m| {
            let dest = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            let net = Ipv4Net::new(dest.unwrap_or(Ipv4Addr::UNSPECIFIED), m.header.destination_prefix_length)
                .ok()?;
            Some((net, oif))
        })
        .collect())
}

/// The MTU of the link the default route leaves by: packets a step sends
/// must fit it after NAT, or large downloads stall behind a smaller
/// overlay MTU in a pod.
async fn uplink_mtu(handle: &Handle) -> u32 {
    let Ok(routes) = routes(handle).await else { return DEFAULT_MTU };
    let Some(oif) = routes.iter().find(|(net, _)| net.prefix_len() == 0).and_then(|(_, oif)| *oif) else {
        return DEFAULT_MTU;
    };
    let link = handle.link().get().match_index(oif).execute().try_next().await;
    link.ok()
        .flatten()
        .and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
        })
        .unwrap_or(DEFAULT_MTU)
}

/// Picks the bridge this kilnd uses and locks it: the configured name and
/// subnet, or the first `kilnN` whose `/24` of the pool is free and overlaps
/// no route of the host. A bridge left by a kilnd that died is removed here.
async fn claim(config: &NetworkConfig, host: &Handle) -> Result<(String, Ipv4Net, File), NetworkError> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir).map_err(NetworkError::io(format!("creating {}", dir.display())))?;
    let candidates: Vec<(String, Ipv4Net)> = match config.bridge_subnet {
        Some(subnet) => vec![(config.bridge_name.clone().unwrap_or_else(|| "kiln0".into()), subnet)],
        None => DEFAULT_SUBNET_POOL
            .subnets(SLOT_PREFIX)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(n, subnet)| (config.bridge_name.clone().unwrap_or_else(|| format!("kiln{n}")), subnet))
            .collect(),
    };
    let explicit_name = config.bridge_name.is_some();
    let mut held: Option<(String, File)> = None;
    for (name, subnet) in candidates {
        let lock = match held.take() {
            Some((locked, file)) if locked == name => file,
            _ => match lock_bridge(&name)? {
                Some(file) => file,
                None if explicit_name => {
                    return Err(NetworkError::BridgeInUse {
                        lock: lock_path(&name).display().to_string(),
                        name,
                    });
                }
                None => continue,
            },
        };
        if let Ok(stale) = link_index(host, &name).await {
            warn!(bridge = %name, "removing a step bridge left by an earlier kilnd");
            let _ = host.link().del(stale).execute().await;
            let firewall = Firewall::new(&name, subnet, config.egress.clone(), Vec::new());
            let _ = tokio::task::spawn_blocking(move || firewall.remove()).await;
        }
        let clash = routes(host).await?.into_iter().find(|(net, _)| {
            net.prefix_len() > 0 && (net.contains(&subnet.network()) || subnet.contains(&net.network()))
        });
        match clash {
            Some((net, _)) if config.bridge_subnet.is_none() => {
                debug!(%subnet, route = %net, "subnet overlaps a route of the host; trying the next");
                held = Some((name, lock));
            }
            Some((net, _)) => {
                warn!(%subnet, route = %net, "the configured bridge subnet overlaps a route of this host");
                return Ok((name, subnet, lock));
            }
            None => return Ok((name, subnet, lock)),
        }
    }
    Err(NetworkError::NoFreeSubnet { pool: config.bridge_subnet.unwrap_or(DEFAULT_SUBNET_POOL) })
}

fn lock_path(name: &str) -> PathBuf {
    lock_dir().join(format!("{name}.lock"))
}

/// An exclusive lock on the bridge's name, or `None` when a live kilnd holds
/// it. The kernel drops the lock when its holder dies.
fn lock_bridge(name: &str) -> Result<Option<File>, NetworkError> {
    let path = lock_path(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(NetworkError::io(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(NetworkError::io(format!("locking {}", path.display()))(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_gateway_and_go_round() {
        let net: Ipv4Net = "10.1.2.0/29".parse().unwrap();
        let mut a = Addresses::new(net).unwrap();
        let taken: Vec<Ipv4Addr> = std::iter::from_fn(|| a.take()).collect();
        // .0 is the network, .1 the bridge, .7 the broadcast address.
        assert_eq!(taken, (2..=6).map(|i| Ipv4Addr::new(10, 1, 2, i)).collect::<Vec<_>>());
        a.free(Ipv4Addr::new(10, 1, 2, 4));
        a.free(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(a.take(), Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(a.take(), Some(Ipv4Addr::new(10, 1, 2, 4)));
        assert_eq!(a.take(), None);
    }

    #[test]
    fn a_freed_address_is_the_last_taken_again() {
        let mut a = Addresses::new("10.1.2.0/24".parse().unwrap()).unwrap();
        let first = a.take().unwrap();
        a.free(first);
        assert_ne!(a.take(), Some(first));
    }

    #[test]
    fn subnets_without_room_are_refused() {
        for net in ["10.0.0.0/31", "10.0.0.1/32"] {
            let err = Addresses::new(net.parse().unwrap()).unwrap_err();
            assert!(err.to_string().contains("too small"), "{err}");
        }
        assert!(Addresses::new("10.0.0.0/30".parse().unwrap()).is_ok());
    }
}
