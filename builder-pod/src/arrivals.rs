//! Waiting for something to be registered: a session, a build's job, a
//! forwarded build. Clients may send the calls that need one before the
//! call that creates it (docs/protocol.md §3.4), so lookups wait a
//! bounded time, woken whenever anything new is registered.

use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    changed: watch::Sender<u64>,
}

impl Arrivals {
    /// Wakes every waiter to look again.
    pub(crate) fn announce(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Calls `find` until it returns something, or `timeout` has passed
    /// (then `Err` with the time waited).
    pub(crate) async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut find: impl FnMut() -> Option<T>,
    ) -> Result<T, Duration> {
        let start = Instant::now();
        // Subscribing before the first look means no announcement is missed.
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(found) = find() {
                return Ok(found);
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() || tokio::time::timeout(left, changed.changed()).await.is_err() {
                return Err(start.elapsed());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_waiter_sees_what_arrives_in_time_and_gives_up_after() {
        let arrivals = Arc::new(Arrivals::default());
        let slot = Arc::new(Mutex::new(None::<u32>));
        let waiter = {
            let (arrivals, slot) = (Arc::clone(&arrivals), Arc::clone(&slot));
            tokio::spawn(
                async move { arrivals.wait_for(Duration::from_secs(5), || *slot.lock().unwrap()).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        *slot.lock().unwrap() = Some(7);
        arrivals.announce();
        assert_eq!(waiter.await.unwrap(), Ok(7));
        let waited = arrivals.wait_for(Duration::from_millis(30), || None::<u32>).await.unwrap_err();
        assert!(waited >= Duration::from_millis(30));
    }
}
