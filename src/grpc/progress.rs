//! Bytes received so far on each call's request body, visible to the handler (a request
//! extension): a stream's reading turn is given away only when nothing at all arrived during it,
//! never in the middle of a message that is still coming in.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tonic::{body::Body, codegen::http};

/// Bytes of the request body received so far.
#[derive(Clone, Default, Debug)]
pub struct BodyProgress(Arc<AtomicU64>);

impl BodyProgress {
    pub fn received(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Counting {
    inner: Body,
    progress: BodyProgress,
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
            this.progress
                .0
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
        }),
    )
}
