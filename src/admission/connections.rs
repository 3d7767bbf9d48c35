//! A bound on open connections across both listeners (`--max-connections`): a connection over the
//! bound is closed as soon as it is accepted (clients retry, or a load balancer picks another
//! replica), so many idle or slow connections cannot pile up buffers. The protocol layers wrap
//! their accepted streams in [`Counted`], which holds a place until the connection closes.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};

#[derive(Clone)]
pub struct ConnectionLimit {
    places: Arc<Semaphore>,
    open: prometheus::IntGauge,
    refused: prometheus::IntCounter,
}

impl ConnectionLimit {
    pub fn new(max: usize, open: prometheus::IntGauge, refused: prometheus::IntCounter) -> Self {
        ConnectionLimit {
            places: Arc::new(Semaphore::new(max.max(1))),
            open,
            refused,
        }
    }

    /// A place for a new connection, or `None` (counted) when every place is taken.
    pub fn try_open<IO>(&self, io: IO) -> Option<Counted<IO>> {
        match Arc::clone(&self.places).try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(Counted {
                    io,
                    _permit: permit,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }
}

/// An accepted connection holding its place until it is dropped.
pub struct Counted<IO> {
    pub io: IO,
    _permit: OwnedSemaphorePermit,
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

    #[test]
    fn places_are_held_until_the_connection_drops() {
        let open = prometheus::IntGauge::new("open", "t").unwrap();
        let refused = prometheus::IntCounter::new("refused", "t").unwrap();
        let limit = ConnectionLimit::new(2, open.clone(), refused.clone());
        let a = limit.try_open(()).expect("first");
        let _b = limit.try_open(()).expect("second");
        assert!(limit.try_open(()).is_none());
        assert_eq!((open.get(), refused.get()), (2, 1));
        drop(a);
        assert_eq!(open.get(), 1);
        assert!(limit.try_open(()).is_some());
    }
}
