//! Free TCP ports on 127.0.0.1 for servers the tests start.
//!
//! Ports are drawn at random from below the kernel's ephemeral range, so they
//! cannot collide with the source ports of outgoing connections (a client
//! reconnecting to a killed server must not take the port the server comes
//! back on) nor with `bind(0)` listeners of other programs. A process-wide set
//! makes sure one test process never hands out the same port twice, so a
//! killed server's port stays reserved for its restart.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Ports handed out by this process so far.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The lowest port the harness hands out.
const LOWEST: u16 = 10_000;

/// Returns a TCP port that is free on 127.0.0.1 now and that this process has
/// not handed out before.
///
/// Never 4222 (a developer's own nats-server may run there). Panics when no
/// free port is found after many tries.
pub fn free_port() -> u16 {
    let (low, high) = port_range();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1_000 {
        let port = match (low, high) {
            (Some(low), high) => low + (random() % u64::from(high - low)) as u16,
            (None, _) => match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
                Ok(listener) => listener.local_addr().map(|a| a.port()).unwrap_or(0),
                Err(_) => 0,
            },
        };
        if port == 0 || port == 4222 || handed_out.contains(&port) {
            continue;
        }
        // std sets SO_REUSEADDR on Unix listeners, as nats-server does, so
        // this probe judges the port the way the server's bind will.
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("jetsaga-tests: found no free TCP port on 127.0.0.1");
}

/// The range `[low, high)` to draw ports from: below the ephemeral range when
/// that leaves enough room, else `None` (let the kernel pick).
fn port_range() -> (Option<u16>, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_low >= LOWEST + 2_000 {
        (Some(LOWEST), ephemeral_low)
    } else {
        (None, 0)
    }
}

/// A random number from std's randomly keyed hasher (no `rand` dependency).
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for port in ports {
            assert_ne!(port, 4222);
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }
}
