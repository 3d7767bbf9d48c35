//! Bytes received so far on each call's request body, visible to the handler (a request
//! extension): a stream's reading turn is given away only when nothing at all arrived during it,
//! never in the middle of a message that is still coming in. The gRPC frame headers are followed
//! as the bytes pass, so the handler also knows how much of a message is sitting half-received in
//! tonic's buffer (a client that stalls mid-message): that part is held against the byte budget.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tonic::{body::Body, codegen::http};

/// Bytes of the request body received so far, and of the message not yet complete.
#[derive(Clone, Default, Debug)]
pub struct BodyProgress(Arc<Counters>);

#[derive(Default, Debug)]
struct Counters {
    received: AtomicU64,
    partial: AtomicU64,
}

impl BodyProgress {
    pub fn received(&self) -> u64 {
        self.0.received.load(Ordering::Relaxed)
    }

    /// Bytes (frame header included) of a message that has started arriving but is not complete.
    pub fn partial(&self) -> u64 {
        self.0.partial.load(Ordering::Relaxed)
    }
}

/// Follows gRPC's length-prefixed framing (1 flag byte, 4 length bytes, the message).
#[derive(Default, Debug)]
struct Frames {
    header: [u8; 5],
    header_len: usize,
    /// Length of the message being received, and how much of it has not arrived yet.
    message_len: u64,
    missing: u64,
}

impl Frames {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.missing > 0 {
                let n = self.missing.min(data.len() as u64);
                self.missing -= n;
                data = &data[n as usize..];
                if self.missing == 0 {
                    self.header_len = 0;
                }
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                let [_, a, b, c, d] = self.header;
                self.message_len = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.missing = self.message_len;
                if self.missing == 0 {
                    self.header_len = 0;
                }
            }
        }
    }

    /// Bytes of the current incomplete frame received so far (0 between messages).
    fn partial(&self) -> u64 {
        if self.header_len == 0 {
            0
        } else if self.header_len < 5 {
            self.header_len as u64
        } else {
            5 + self.message_len - self.missing
        }
    }
}

struct Counting {
    inner: Body,
    progress: BodyProgress,
    frames: Frames,
}

impl http_body::Body for Counting {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let counters = &this.progress.0;
            this.frames.feed(data.as_ref());
            counters
                .partial
                .store(this.frames.partial(), Ordering::Relaxed);
            counters
                .received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a request's body so its progress can be read from the handler.
pub fn track(request: http::Request<Body>) -> http::Request<Body> {
    let progress = BodyProgress::default();
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(progress.clone());
    http::Request::from_parts(
        parts,
        Body::new(Counting {
            inner: body,
            progress,
            frames: Frames::default(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend((message.len() as u32).to_be_bytes());
        f.extend(message);
        f
    }

    #[test]
    fn frames_are_followed_across_any_chunking() {
        let mut wire = frame(&[1; 10]);
        wire.extend(frame(&[]));
        wire.extend(frame(&[2; 7]));
        // Every split into two chunks, then byte by byte: partial is what arrived of the frame
        // being received.
        let ends = [15, 20, 32];
        for cut in 0..=wire.len() {
            let mut frames = Frames::default();
            frames.feed(&wire[..cut]);
            let start = [0, 15, 20]
                .into_iter()
                .rev()
                .find(|&s| s <= cut)
                .unwrap_or(0);
            let expected = if ends.contains(&cut) || cut == 0 {
                0
            } else {
                (cut - start) as u64
            };
            assert_eq!(frames.partial(), expected, "cut at {cut}");
            frames.feed(&wire[cut..]);
            assert_eq!(frames.partial(), 0, "all of it, cut at {cut}");
        }
        let mut frames = Frames::default();
        for b in &wire[..18] {
            frames.feed(std::slice::from_ref(b));
        }
        assert_eq!(
            frames.partial(),
            3,
            "three bytes of the empty frame's header"
        );
    }
}
