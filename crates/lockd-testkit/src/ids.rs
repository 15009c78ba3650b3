//! Free loopback ports and names that no other test of this process uses.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Ports handed out in this process. A port is given once only, so two
/// servers started at the same moment never race for the same one.
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback TCP port that was free a moment ago and has not been handed out
/// before in this process. The kernel picks ephemeral ports at random, so
/// another process taking it before our child binds it is unlikely; starters
/// retry on a new port when it happens.
pub fn try_free_port() -> std::io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no new free loopback port in 100 tries",
    ))
}

/// [`try_free_port`], panicking when the loopback interface cannot be bound.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("finding a free loopback port: {e}"))
}

/// `<name>-<pid>-<counter>`: distinct across tests and test processes, for
/// key prefixes and client ids.
pub fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_names_are_not_repeated() {
        let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        assert_ne!(unique("a"), unique("a"));
    }
}
