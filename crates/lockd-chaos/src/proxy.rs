//! A loopback TCP proxy the suite controls: pass bytes, hold them (a blackhole), or delay them.
//!
//! A blackhole holds bytes rather than dropping them: TCP under a real
//! partition retransmits, so what was sent arrives after healing unless a
//! side gave up first. New connections made during a blackhole are accepted
//! but not forwarded until it heals, as a SYN to an unreachable host would
//! hang. The upstream can move (a daemon restarted on another port); open
//! connections keep their old upstream and end when it dies.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the link does to the bytes that cross it, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Pass,
    Blackhole,
    Delay(Duration),
}

/// One proxy: a listener on 127.0.0.1 and the link state its connections obey.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    upstream: Arc<Mutex<SocketAddr>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (link, _) = watch::channel(Link::Pass);
        let upstream = Arc::new(Mutex::new(upstream));
        let accept = tokio::spawn(accept_loop(listener, link.clone(), upstream.clone()));
        Ok(Proxy {
            addr,
            link,
            upstream,
            accept,
        })
    }

    /// Where clients of the proxy connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the link does, for every open and future connection.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// Sends new connections to `upstream`.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.upstream) = upstream;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept_loop(
    listener: TcpListener,
    link: watch::Sender<Link>,
    upstream: Arc<Mutex<SocketAddr>>,
) {
    loop {
        let Ok((down, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let target = *lock(&upstream);
        let rx = link.subscribe();
        tokio::spawn(async move {
            let mut gate = rx.clone();
            if wait_open(&mut gate).await.is_err() {
                return;
            }
            let Ok(up) = TcpStream::connect(target).await else {
                return;
            };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let (down_r, down_w) = down.into_split();
            let (up_r, up_w) = up.into_split();
            let there = tokio::spawn(pipe(down_r, up_w, rx.clone()));
            let back = tokio::spawn(pipe(up_r, down_w, rx));
            let _ = tokio::join!(there, back);
        });
    }
}

/// Waits while the link is a blackhole. `Err` once the proxy is gone.
async fn wait_open(link: &mut watch::Receiver<Link>) -> Result<Link, ()> {
    loop {
        let now = *link.borrow_and_update();
        if now != Link::Blackhole {
            return Ok(now);
        }
        link.changed().await.map_err(|_| ())?;
    }
}

/// Copies one direction: reads are stamped with when they may be written,
/// so a delay keeps the order of the bytes, and nothing moves during a
/// blackhole.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: watch::Receiver<Link>) {
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut write_gate = link.clone();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if wait_open(&mut write_gate).await.is_err() || to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut read_gate = link;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if wait_open(&mut read_gate).await.is_err() {
            break;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // The link as it is when the bytes arrive, not when the read began.
        let delay = match *read_gate.borrow() {
            Link::Delay(d) => d,
            Link::Pass | Link::Blackhole => Duration::ZERO,
        };
        if queue
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(queue);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(within, s.read_exact(&mut buf))
            .await
            .ok()
            .map(|r| {
                r.unwrap();
                assert_eq!(&buf, b"ping");
                start.elapsed()
            })
    }

    #[tokio::test]
    async fn passes_holds_and_delays_bytes() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, Duration::from_secs(2)).await.is_some());

        proxy.set(Link::Blackhole);
        assert!(
            round_trip(&mut s, Duration::from_millis(300))
                .await
                .is_none()
        );
        // The held bytes arrive once the link heals.
        proxy.set(Link::Pass);
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");

        proxy.set(Link::Delay(Duration::from_millis(100)));
        let rtt = round_trip(&mut s, Duration::from_secs(2)).await.unwrap();
        assert!(rtt >= Duration::from_millis(200), "round trip {rtt:?}");
    }
}
