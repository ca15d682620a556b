//! Pod IPs: each live pod gets its own loopback address 127.0.0.N (N ≥ 10, so
//! the low addresses stay free for the environment), reused once the pod is gone.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

const FIRST: u8 = 10;
const LAST: u8 = 254;

#[derive(Debug, Default)]
pub struct IpPool {
    used: BTreeSet<u8>,
}

impl IpPool {
    /// `preferred` when it is a free pool address (a pod that already had an
    /// IP keeps it across a stand-in restart), else the lowest free one.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let wanted = preferred.and_then(Self::host_part).filter(|n| !self.used.contains(n));
        let n = wanted.or_else(|| (FIRST..=LAST).find(|n| !self.used.contains(n)))?;
        self.used.insert(n);
        Some(Ipv4Addr::new(127, 0, 0, n))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        if let Some(n) = Self::host_part(ip) {
            self.used.remove(&n);
        }
    }

    fn host_part(ip: Ipv4Addr) -> Option<u8> {
        let [a, b, c, n] = ip.octets();
        ((a, b, c) == (127, 0, 0) && (FIRST..=LAST).contains(&n)).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_and_reused_after_release() {
        let mut pool = IpPool::default();
        let a = pool.allocate(None).unwrap();
        let b = pool.allocate(None).unwrap();
        assert_eq!(a, Ipv4Addr::new(127, 0, 0, 10));
        assert_eq!(b, Ipv4Addr::new(127, 0, 0, 11));
        pool.release(a);
        assert_eq!(pool.allocate(None), Some(a));
        assert_eq!(pool.allocate(None), Some(Ipv4Addr::new(127, 0, 0, 12)));
    }

    #[test]
    fn a_free_preferred_address_is_kept_and_a_taken_one_is_not() {
        let mut pool = IpPool::default();
        let keep = Ipv4Addr::new(127, 0, 0, 42);
        assert_eq!(pool.allocate(Some(keep)), Some(keep));
        assert_eq!(pool.allocate(Some(keep)), Some(Ipv4Addr::new(127, 0, 0, 10)));
        // Outside the pool: ignored.
        assert_eq!(pool.allocate(Some(Ipv4Addr::new(10, 0, 0, 5))), Some(Ipv4Addr::new(127, 0, 0, 11)));
        assert_eq!(pool.allocate(Some(Ipv4Addr::new(127, 0, 0, 1))), Some(Ipv4Addr::new(127, 0, 0, 12)));
    }

    #[test]
    fn the_pool_runs_out() {
        let mut pool = IpPool::default();
        let all: Vec<_> = std::iter::from_fn(|| pool.allocate(None)).collect();
        assert_eq!(all.len(), usize::from(LAST - FIRST) + 1);
        assert_eq!(pool.allocate(None), None);
    }
}
