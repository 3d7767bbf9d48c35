//! Bytes received so far on each call's request body, visible to the handler (a request
//! extension): a stream's reading turn is given away only when nothing at all arrived during it,
//! never in the middle of a message that is still coming in. The gRPC frame headers are followed
//! as the bytes pass, so the handler also knows how much of a message is sitting half-received in
//! tonic's buffer (a client that stalls mid-message): that part is held against the byte budget.
//!
//! A unary call's request (every method but the client-streaming ones) is also bounded here, where
//! its bytes arrive, before tonic has buffered a whole message: its bytes are charged to
//! `--max-inflight-bytes` as they come (RESOURCE_EXHAUSTED when they do not fit), and it must
//! arrive within `--body-read-timeout` and at least at `--body-min-rate` (DEADLINE_EXCEEDED
//! otherwise). The handler then holds the decoded message against the budget for the call's life.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use std::time::Duration;

use tokio::time::Instant;

use tonic::{Status, body::Body, codegen::http};

use crate::{
    admission::bytes::{ByteBudget, BytesPermit},
    common::ServiceError,
};

/// Methods whose requests are streams: their items are admitted one by one by the handler.
const STREAMING_REQUESTS: &[&str] = &[
    "/clip.v1.Embed/EmbedStream",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// How unary requests arrive: charged as they come, within a deadline, at a minimum rate.
#[derive(Clone)]
pub struct UnaryRules {
    pub budget: ByteBudget,
    /// `--body-read-timeout`.
    pub timeout: Duration,
    /// `--body-min-rate` (bytes/s; 0: none).
    pub min_rate: u64,
}

/// What a unary request's body is held to while it arrives.
struct Arriving {
    rules: UnaryRules,
    held: BytesPermit,
    started: Instant,
    deadline: Instant,
    /// Wakes the body at the deadline, or each second to check the rate.
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Arriving {
    fn new(rules: UnaryRules) -> Self {
        let started = Instant::now();
        let deadline = started + rules.timeout;
        Arriving {
            held: rules.budget.arriving(),
            timer: Box::pin(tokio::time::sleep_until(Self::next_check(deadline))),
            rules,
            started,
            deadline,
        }
    }

    fn next_check(deadline: Instant) -> Instant {
        deadline.min(Instant::now() + Duration::from_secs(1))
    }

    /// Refuses a request that is late or slow, `received` bytes in.
    fn check(&self, received: u64) -> Result<(), Status> {
        let elapsed = self.started.elapsed();
        if Instant::now() >= self.deadline {
            return Err(ServiceError::DeadlineExceeded(format!(
                "the request message did not arrive within {:?} (--body-read-timeout)",
                self.rules.timeout
            ))
            .into());
        }
        let min_rate = self.rules.min_rate;
        if crate::admission::below_min_rate(min_rate, received, elapsed) {
            return Err(ServiceError::DeadlineExceeded(format!(
                "the request message arrived below the minimum rate of {min_rate} bytes/s (--body-min-rate)"
            ))
            .into());
        }
        Ok(())
    }

    /// Charges `received` bytes in all.
    fn charge(&mut self, received: u64) -> Result<(), Status> {
        self.rules
            .budget
            .try_grow(&mut self.held, received)
            .map_err(Status::from)
    }

    /// Polled while the body has nothing: the deadline or the rate check, else pending.
    fn poll_timer(&mut self, cx: &mut Context<'_>, received: u64) -> Poll<Status> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if let Err(status) = self.check(received) {
                return Poll::Ready(status);
            }
            let next = Self::next_check(self.deadline);
            self.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

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
    /// A unary request's bounds (`None` for streams, and once it has failed or ended).
    arriving: Option<Arriving>,
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
            let received = counters
                .received
                .fetch_add(data.len() as u64, Ordering::Relaxed)
                + data.len() as u64;
            if let Some(arriving) = this.arriving.as_mut()
                && let Err(status) = arriving
                    .charge(received)
                    .and_then(|()| arriving.check(received))
            {
                // What it held is freed at once; the call fails with this status.
                this.arriving = None;
                return Poll::Ready(Some(Err(status)));
            }
        }
        match &polled {
            Poll::Pending => {
                if let Some(arriving) = this.arriving.as_mut()
                    && let Poll::Ready(status) = arriving.poll_timer(cx, this.progress.received())
                {
                    this.arriving = None;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            // Arrived in full: no more deadline (what it holds is freed with the body, once
            // tonic has decoded the message and the handler holds it instead).
            Poll::Ready(None) => {
                if let Some(arriving) = this.arriving.as_mut() {
                    arriving.timer.as_mut().reset(far_future());
                    arriving.deadline = far_future();
                }
            }
            Poll::Ready(Some(_)) => {}
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

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Wraps a request's body so its progress can be read from the handler; a unary request's is
/// also held to `rules`.
pub fn track(request: http::Request<Body>, rules: &UnaryRules) -> http::Request<Body> {
    let progress = BodyProgress::default();
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(progress.clone());
    let unary = !STREAMING_REQUESTS.contains(&parts.uri.path());
    http::Request::from_parts(
        parts,
        Body::new(Counting {
            inner: body,
            progress,
            frames: Frames::default(),
            arriving: unary.then(|| Arriving::new(rules.clone())),
        }),
    )
}

/// The tower layer that applies [`track`] to every request of the gRPC endpoint.
#[derive(Clone)]
pub struct TrackLayer(pub UnaryRules);

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Tracked<S>;
    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            rules: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    rules: UnaryRules,
}

impl<S> tower::Service<http::Request<Body>> for Tracked<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> S::Future {
        self.inner.call(track(request, &self.rules))
    }
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

    fn rules(budget: &ByteBudget) -> UnaryRules {
        UnaryRules {
            budget: budget.clone(),
            timeout: Duration::from_secs(30),
            min_rate: 1024,
        }
    }

    fn request(path: &str, body: Body) -> http::Request<Body> {
        http::Request::builder().uri(path).body(body).unwrap()
    }

    /// A request body whose chunks come from `rx`.
    fn trickle() -> (tokio::sync::mpsc::Sender<Vec<u8>>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let stream =
            tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |b| {
                Ok::<_, Status>(http_body::Frame::data(bytes::Bytes::from(b)))
            });
        (tx, Body::new(http_body_util::StreamBody::new(stream)))
    }

    async fn next(body: &mut Body) -> Option<Result<http_body::Frame<bytes::Bytes>, Status>> {
        use http_body::Body as _;
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_unary_request_is_charged_as_it_arrives_and_times_out_freeing_it() {
        let budget = ByteBudget::new(64 * 1024, prometheus::IntGauge::new("b", "t").unwrap());
        let (tx, body) = trickle();
        let mut body =
            track(request("/clip.v1.Embed/EmbedTexts", body), &rules(&budget)).into_body();
        // A frame header declaring 32 MiB, and 6 bytes of it: 1 KiB is held, not 32 MiB.
        let mut start = vec![0, 2, 0, 0, 0];
        start.extend([1; 6]);
        tx.send(start).await.unwrap();
        assert!(next(&mut body).await.unwrap().is_ok());
        assert!(
            budget.try_take(63 * 1024).is_ok(),
            "only what arrived is held"
        );
        // Then silence: after the 5 s grace the rate check ends it (well before the deadline).
        let status = next(&mut body).await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("--body-min-rate"), "{status:?}");
        assert!(budget.try_take(64 * 1024).is_ok(), "freed when it failed");
    }

    #[tokio::test]
    async fn a_unary_request_over_the_budget_is_refused_where_it_arrives_but_streams_are_not() {
        let budget = ByteBudget::new(8 * 1024, prometheus::IntGauge::new("b", "t").unwrap());
        let _other = budget.try_take(4 * 1024).unwrap();
        let (tx, body) = trickle();
        let mut body =
            track(request("/clip.v1.Embed/EmbedImages", body), &rules(&budget)).into_body();
        tx.send(vec![7; 4 * 1024]).await.unwrap();
        assert!(next(&mut body).await.unwrap().is_ok());
        tx.send(vec![7; 1]).await.unwrap();
        let status = next(&mut body).await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        // A stream's items are admitted by its handler, not here.
        let (tx, body) = trickle();
        let mut body =
            track(request("/clip.v1.Embed/EmbedStream", body), &rules(&budget)).into_body();
        tx.send(vec![7; 8 * 1024]).await.unwrap();
        assert!(next(&mut body).await.unwrap().is_ok());
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
