//! The caps on sockets waiting for their first-message `auth` frame, per
//! client IP and per node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts sockets that are open but not yet authenticated (first-message auth),
/// per client IP and in total, so a flood of silent sockets cannot crowd out
/// real users. A [`PendingSlot`] holds one place until dropped.
#[derive(Default)]
pub struct PendingAuth {
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

pub struct PendingSlot {
    owner: Arc<PendingAuth>,
    ip: IpAddr,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PendingRefusal {
    PerIp,
    PerNode,
}

impl PendingAuth {
    /// Sockets waiting for their `auth` frame.
    pub fn count(&self) -> usize {
        self.by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }

    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        per_ip: usize,
        per_node: usize,
    ) -> Result<PendingSlot, PendingRefusal> {
        let mut by_ip = self
            .by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: usize = by_ip.values().sum();
        if total >= per_node {
            return Err(PendingRefusal::PerNode);
        }
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= per_ip {
            return Err(PendingRefusal::PerIp);
        }
        *count += 1;
        metrics::gauge!(crate::telemetry::PENDING_AUTH).increment(1.0);
        Ok(PendingSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut by_ip = self
            .owner
            .by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
        metrics::gauge!(crate::telemetry::PENDING_AUTH).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_slots_are_capped_and_released() {
        let pending = Arc::new(PendingAuth::default());
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        let a = pending.try_acquire(ip, 2, 3).expect("first");
        let _b = pending.try_acquire(ip, 2, 3).expect("second");
        assert_eq!(
            pending.try_acquire(ip, 2, 3).err(),
            Some(PendingRefusal::PerIp)
        );
        let _c = pending.try_acquire(other, 2, 3).expect("other ip");
        assert_eq!(
            pending.try_acquire(other, 2, 3).err(),
            Some(PendingRefusal::PerNode)
        );
        drop(a);
        assert!(pending.try_acquire(ip, 2, 3).is_ok());
    }
}
