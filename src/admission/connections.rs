//! A bound on open connections across both listeners (`--max-connections`), and on those of one
//! peer (`--max-connections-per-peer`): a connection over either bound is closed as soon as it is
//! accepted (clients retry, or a load balancer picks another replica), so many idle or slow
//! connections cannot pile up buffers, and one client cannot take every place. The protocol layers
//! wrap their accepted streams in [`Counted`], which holds its places until the connection closes.
//!
//! A peer is an IPv4 address, or an IPv6 /64 (one host's usual allocation: an attacker holding a
//! /64 must not count as 2^64 peers); an IPv4-mapped IPv6 address is its IPv4 address.

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// Places held per peer ([`peer_key`]), at most `per_peer` each (0: no bound). A peer has an
/// entry only while it holds a place, so the map is never larger than the places held.
#[derive(Clone, Default)]
pub struct PeerShares {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_peer: usize,
}

/// A peer's place, given back when dropped.
pub struct PeerPlace {
    key: IpAddr,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PeerShares {
    pub fn new(per_peer: usize) -> Self {
        PeerShares {
            held: Arc::default(),
            per_peer,
        }
    }

    /// A place for `ip`, or `None` when its peer holds its share.
    pub fn try_take(&self, ip: IpAddr) -> Option<PeerPlace> {
        let key = peer_key(ip);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(key).or_insert(0);
        if self.per_peer > 0 && *n >= self.per_peer {
            return None;
        }
        *n += 1;
        Some(PeerPlace {
            key,
            held: Arc::clone(&self.held),
        })
    }

    /// Peers holding a place (tests).
    #[cfg(test)]
    pub fn peers(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[derive(Clone)]
pub struct ConnectionLimit {
    places: Arc<Semaphore>,
    /// `--max-connections-per-peer` of them for one peer.
    peers: PeerShares,
    open: prometheus::IntGauge,
    refused: prometheus::IntCounter,
}

/// The address connections are counted under: IPv4, or the /64 of an IPv6 address.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl ConnectionLimit {
    /// `max` connections in all, `per_peer` of one peer (0: no per-peer bound).
    pub fn new(
        max: usize,
        per_peer: usize,
        open: prometheus::IntGauge,
        refused: prometheus::IntCounter,
    ) -> Self {
        ConnectionLimit {
            places: Arc::new(Semaphore::new(max.max(1))),
            peers: PeerShares::new(per_peer),
            open,
            refused,
        }
    }

    /// A place for a new connection from `peer`, or `None` (counted) when every place is taken
    /// or the peer holds its share.
    pub fn try_open<IO>(&self, io: IO, peer: IpAddr) -> Option<Counted<IO>> {
        let Ok(permit) = Arc::clone(&self.places).try_acquire_owned() else {
            self.refused.inc();
            return None;
        };
        let Some(place) = self.peers.try_take(peer) else {
            self.refused.inc();
            return None;
        };
        self.open.inc();
        Some(Counted {
            io,
            _permit: permit,
            _peer: place,
            open: self.open.clone(),
        })
    }
}

/// An accepted connection holding its places until it is dropped.
pub struct Counted<IO> {
    pub io: IO,
    _permit: OwnedSemaphorePermit,
    _peer: PeerPlace,
    open: prometheus::IntGauge,
}

impl<IO> Drop for Counted<IO> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn limit(max: usize, per_peer: usize) -> (ConnectionLimit, prometheus::IntGauge) {
        let open = prometheus::IntGauge::new("open", "t").unwrap();
        let refused = prometheus::IntCounter::new("refused", "t").unwrap();
        (
            ConnectionLimit::new(max, per_peer, open.clone(), refused),
            open,
        )
    }

    #[test]
    fn places_are_held_until_the_connection_drops() {
        let (limit, open) = limit(2, 0);
        let a = limit.try_open((), A).expect("first");
        let _b = limit.try_open((), A).expect("second");
        assert!(limit.try_open((), B).is_none());
        assert_eq!((open.get(), limit.refused.get()), (2, 1));
        drop(a);
        assert_eq!(open.get(), 1);
        assert!(limit.try_open((), B).is_some());
    }

    #[test]
    fn one_peer_cannot_take_every_place() {
        let (limit, open) = limit(10, 2);
        let a1 = limit.try_open((), A).expect("a1");
        let _a2 = limit.try_open((), A).expect("a2");
        assert!(limit.try_open((), A).is_none(), "A holds its share");
        let _b = limit
            .try_open((), B)
            .expect("another peer still gets a place");
        assert_eq!(open.get(), 3);
        drop(a1);
        assert!(limit.try_open((), A).is_some(), "a place of A's came back");
        // The refused connection's global place was given back (A's new one is dropped already).
        assert_eq!(limit.places.available_permits(), 10 - 2);
    }

    #[test]
    fn peers_are_ipv4_addresses_or_ipv6_64s() {
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            peer_key(v6("2001:db8:1:2:aaaa::1")),
            peer_key(v6("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            peer_key(v6("2001:db8:1:2::1")),
            peer_key(v6("2001:db8:1:3::1"))
        );
        assert_eq!(peer_key(v6("::ffff:192.0.2.1")), A);
        let (limit, _) = limit(10, 1);
        let _x = limit.try_open((), v6("2001:db8::1")).unwrap();
        assert!(
            limit.try_open((), v6("2001:db8::ffff")).is_none(),
            "same /64"
        );
        // The map holds only peers with an open connection.
        drop(_x);
        assert_eq!(limit.peers.peers(), 0);
    }
}
