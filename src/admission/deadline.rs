//! Deadlines on a connection's bytes that hyper has no timer for:
//!
//! - gRPC (HTTP/2): the first bytes (the HTTP/2 preface, or a TLS ClientHello) must arrive within
//!   `--header-read-timeout`, and a connection on which nothing arrives for `--idle-timeout` is
//!   closed. A live client answers the server's keepalive pings (`--http2-keepalive`), so only
//!   silent or dead peers are cut; a connection that sends nothing at all holds its place for
//!   seconds, not forever.
//! - Both doors: a connection whose writes make no progress for `--idle-timeout` (a client that
//!   stopped reading its replies, so they sit in buffers) is closed. (HTTP/1 reads have hyper's
//!   own header-read timer, and bodies their own deadline.)

use crate::common::limit::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT};
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The HTTP/2 client preface is 24 bytes; a TLS ClientHello is longer.
const FIRST_BYTES: u64 = 24;

pub struct Deadlined<IO> {
    io: IO,
    received: u64,
    preface_timeout: Duration,
    idle: Option<Duration>,
    /// The preface deadline until the first bytes are in, then the idle deadline (`None`: reads
    /// have no deadline here).
    timer: Option<Pin<Box<Sleep>>>,
    /// How long a write may make no progress (`None`: forever).
    write_stall: Option<Duration>,
    /// Armed while a write waits.
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<IO> Deadlined<IO> {
    /// Read deadlines (preface, then idle) and the write-stall deadline `idle`.
    pub fn new(io: IO, preface_timeout: Duration, idle: Option<Duration>) -> Self {
        Deadlined {
            io,
            received: 0,
            preface_timeout,
            idle,
            timer: Some(Box::pin(tokio::time::sleep(preface_timeout))),
            write_stall: idle,
            write_timer: None,
        }
    }

    /// Only the write-stall deadline (for HTTP/1, whose reads hyper times itself).
    pub fn writes_only(io: IO, write_stall: Option<Duration>) -> Self {
        Deadlined {
            io,
            received: 0,
            preface_timeout: Duration::ZERO,
            idle: None,
            timer: None,
            write_stall,
            write_timer: None,
        }
    }

    /// Polled when a write is pending: an error once it has waited `write_stall`.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let Some(stall) = self.write_stall else {
            return Poll::Pending;
        };
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer read nothing of the reply for {stall:?} ({IDLE_TIMEOUT})"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn timed_out(&self) -> std::io::Error {
        let what = if self.received < FIRST_BYTES {
            format!(
                "no preface within {:?} ({HEADER_READ_TIMEOUT})",
                self.preface_timeout
            )
        } else {
            format!(
                "idle for {:?} ({IDLE_TIMEOUT})",
                self.idle.unwrap_or_default()
            )
        };
        std::io::Error::new(std::io::ErrorKind::TimedOut, what)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Deadlined<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                if n > 0 {
                    this.received += n;
                    if this.received >= FIRST_BYTES
                        && let Some(timer) = this.timer.as_mut()
                    {
                        // Far enough away when idle connections are never cut.
                        let idle = this.idle.unwrap_or(Duration::from_secs(86_400 * 365));
                        timer.as_mut().reset(Instant::now() + idle);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(timer) = this.timer.as_mut()
                    && timer.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(this.timed_out()));
                }
                Poll::Pending
            }
        }
    }
}

/// A write's outcome: progress disarms the stall timer; waiting polls it.
fn after_write<T>(
    this: &mut Deadlined<impl Sized>,
    cx: &mut Context<'_>,
    polled: Poll<std::io::Result<T>>,
) -> Poll<std::io::Result<T>> {
    match polled {
        Poll::Pending => match this.poll_write_stall(cx) {
            Poll::Ready(e) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        },
        ready => {
            this.write_timer = None;
            ready
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Deadlined<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        after_write(this, cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        after_write(this, cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        after_write(this, cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_cut_at_the_preface_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut conn = Deadlined::new(server, Duration::from_secs(10), None);
        let started = Instant::now();
        let mut buf = [0; 8];
        let e = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("--header-read-timeout"), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_bytes_do_not_buy_time_but_a_preface_does_until_idle() {
        let started = Instant::now();
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Deadlined::new(
            server,
            Duration::from_secs(10),
            Some(Duration::from_secs(60)),
        );
        let mut buf = [0; 64];
        tokio::time::sleep(Duration::from_secs(9)).await;
        client.write_all(b"PRI").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 3);
        let e = conn.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("--header-read-timeout"), "{e}");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10),
            "from the connection's start"
        );

        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Deadlined::new(
            server,
            Duration::from_secs(10),
            Some(Duration::from_secs(60)),
        );
        client.write_all(&[0; 24]).await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 24);
        // Activity keeps it open ...
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"ping").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 4);
        // ... silence closes it, idle-timeout after the last bytes.
        let started = Instant::now();
        let e = conn.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("--idle-timeout"), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_replies_is_cut_after_the_stall() {
        let (mut client, server) = tokio::io::duplex(16);
        let mut conn = Deadlined::writes_only(server, Some(Duration::from_secs(30)));
        // Reads have no deadline here.
        let mut buf = [0; 4];
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), conn.read(&mut buf))
                .await
                .is_err()
        );
        // A reader that keeps up: no stall.
        conn.write_all(&[1; 16]).await.unwrap();
        let mut got = [0; 16];
        client.read_exact(&mut got).await.unwrap();
        // One that stops reading: the write waits, then fails at the stall deadline.
        let started = Instant::now();
        conn.write_all(&[1; 16]).await.unwrap();
        let e = conn.write_all(&[2; 16]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("--idle-timeout"), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
