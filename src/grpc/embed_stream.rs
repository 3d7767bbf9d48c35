//! `EmbedStream` in two parts (the handler in `grpc/embed.rs` drives them):
//!
//! - the reader, [`Reader`]: a state machine that takes the next message only when the stream may
//!   hold one more (an in-flight slot, a reading turn among the streams, the message's bytes in the
//!   byte budget, an item of the key's rate limit), and says why reading ended ([`End`]);
//! - the item worker, [`run_item`]: answers one item, unless the client went away first (then the
//!   work is dropped, which withdraws its rows from the batcher), and gives back what the item held.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::{Code, Status, Streaming};

use super::progress::BodyProgress;
use crate::{
    admission::{Gate, bytes::BytesPermit},
    common::ServiceError,
    security::keys::Allowance,
};

/// How long a stream may hold a reading turn (`--max-stream-readers`) with no byte arriving.
pub(super) const READER_TURN: Duration = Duration::from_millis(500);

/// Where the stream's messages come from: tonic's `Streaming`, or a channel in the tests.
pub(super) trait Inbound: Send {
    type Message: prost::Message;
    fn message(&mut self) -> impl Future<Output = Result<Option<Self::Message>, Status>> + Send;
}

impl<M: prost::Message + Default + Send + 'static> Inbound for Streaming<M> {
    type Message = M;
    fn message(&mut self) -> impl Future<Output = Result<Option<M>, Status>> + Send {
        Streaming::message(self)
    }
}

/// Why reading ended.
#[derive(Debug)]
pub(super) enum End {
    /// The client half-closed the stream, or stopped reading the replies: the items in flight
    /// finish (or are cancelled when no one reads their replies), and the stream ends OK.
    Finished,
    /// The connection broke under the stream: the items are cancelled, nothing is answered.
    ClientGone,
    /// The stream ends with this status once the items in flight have been answered.
    Status(Status),
}

/// What an item holds while it is worked on: its place among the stream's in-flight items and its
/// bytes in the byte budget. Dropping it gives both back.
#[derive(Debug)]
pub(super) struct Held {
    _slot: OwnedSemaphorePermit,
    _bytes: BytesPermit,
}

/// One step of the reader.
#[derive(Debug)]
pub(super) enum Step<M> {
    Item(M, Held),
    End(End),
}

/// Reads a stream's messages, one at a time, as the server's bounds allow.
pub(super) struct Reader<S, R> {
    inbound: S,
    gate: Gate,
    progress: BodyProgress,
    slots: Arc<Semaphore>,
    /// The reply channel: reading stops when the client stops reading replies.
    replies: mpsc::Sender<R>,
    allowance: Option<Allowance>,
    /// The part of a message that arrived before its sender stalled sits in tonic's buffer: it is
    /// held against the byte budget until the message completes, and a stream whose half-sent
    /// message does not fit the budget is ended.
    parked: Option<BytesPermit>,
}

impl<S, R> Reader<S, R> {
    pub(super) fn new(
        inbound: S,
        gate: Gate,
        progress: BodyProgress,
        in_flight: usize,
        replies: mpsc::Sender<R>,
        allowance: Option<Allowance>,
    ) -> Self {
        Reader {
            inbound,
            gate,
            progress,
            slots: Arc::new(Semaphore::new(in_flight)),
            replies,
            allowance,
            parked: None,
        }
    }
}

fn shutting_down() -> End {
    End::Status(ServiceError::Unavailable("server is shutting down".into()).into())
}

impl<S: Inbound, R> Reader<S, R> {
    /// The next message and what it holds, or why reading is over.
    pub(super) async fn next(&mut self) -> Step<S::Message> {
        let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
            return Step::End(End::Finished);
        };
        let message = match self.read().await {
            Ok(message) => message,
            Err(end) => return Step::End(end),
        };
        drop(self.parked.take());
        // The item is held against --max-inflight-bytes while it is worked on; when the budget is
        // spent the stream waits here, reading nothing more.
        let size = prost::Message::encoded_len(&message) as u64;
        let bytes = tokio::select! {
            bytes = self.gate.bytes().take(size) => match bytes {
                Ok(bytes) => bytes,
                Err(e) => return Step::End(End::Status(e.into())),
            },
            () = self.replies.closed() => return Step::End(End::Finished),
            () = self.gate.shutdown_started() => return Step::End(shutting_down()),
        };
        // Charged per item as items arrive (the item's bytes are held meanwhile, so a waiting
        // stream's memory stays counted).
        let gone = async {
            tokio::select! {
                () = self.replies.closed() => {}
                () = self.gate.shutdown_started() => {}
            }
        };
        match super::auth::charge_stream_item(self.allowance.as_ref(), gone).await {
            Ok(()) => {}
            Err(None) if self.gate.is_shutting_down() => return Step::End(shutting_down()),
            Err(None) => return Step::End(End::Finished),
            Err(Some(status)) => return Step::End(End::Status(status)),
        }
        Step::Item(
            message,
            Held {
                _slot: slot,
                _bytes: bytes,
            },
        )
    }

    /// Takes a reading turn and reads one message. A stream on which nothing at all arrived
    /// during its turn gives the turn to the next one, so idle streams cannot hold every turn; a
    /// message still arriving keeps it.
    async fn read(&mut self) -> Result<S::Message, End> {
        loop {
            let reader = tokio::select! {
                reader = self.gate.stream_reader() => reader.map_err(|e| End::Status(e.into()))?,
                () = self.replies.closed() => return Err(End::Finished),
            };
            let mut arrived = self.progress.received();
            let progress = self.progress.clone();
            let turn = async {
                loop {
                    tokio::time::sleep(READER_TURN).await;
                    let now = progress.received();
                    if now == arrived {
                        return;
                    }
                    arrived = now;
                }
            };
            let message = tokio::select! {
                message = self.inbound.message() => message,
                () = turn => {
                    drop(reader);
                    self.park()?;
                    continue;
                }
                () = self.replies.closed() => return Err(End::Finished),
                () = self.gate.shutdown_started() => return Err(shutting_down()),
            };
            drop(reader);
            return match message {
                Ok(Some(message)) => Ok(message),
                Ok(None) => Err(End::Finished),
                // The connection broke under the stream (the client went away): nothing to
                // answer, and nothing wrong on our side.
                Err(status) if status.code() == Code::Unknown => Err(End::ClientGone),
                Err(status) => Err(End::Status(client_decode_error(status))),
            };
        }
    }

    /// The turn is over with a message half-arrived: its bytes so far are held against the
    /// budget, or the stream ends when they do not fit.
    fn park(&mut self) -> Result<(), End> {
        let partial = self.progress.partial();
        drop(self.parked.take());
        if partial == 0 {
            return Ok(());
        }
        match self.gate.bytes().try_take(partial) {
            Ok(bytes) => {
                self.parked = Some(bytes);
                Ok(())
            }
            Err(_) => Err(End::Status(Status::resource_exhausted(format!(
                "the stream stalled in the middle of a message ({partial} bytes received) \
                 while the server holds as many request bytes as it may \
                 ({}); send whole messages, or retry later",
                crate::common::Limit::MaxInflightBytes
            )))),
        }
    }
}

/// A stream message that does not decode is INVALID_ARGUMENT (`grpc::codec`); say that it was a
/// stream message. Transport errors keep their code and words.
fn client_decode_error(status: Status) -> Status {
    if status.code() == Code::InvalidArgument {
        Status::invalid_argument(format!("malformed stream message: {}", status.message()))
    } else {
        status
    }
}

/// The item worker: sends `work`'s reply, unless the client stops reading replies first (then
/// `work` is dropped, which withdraws its rows from the batcher before they cost compute). What the
/// item held goes back either way.
pub(super) async fn run_item<R, F>(work: F, replies: mpsc::Sender<Result<R, Status>>, held: Held)
where
    F: Future<Output = R>,
{
    tokio::select! {
        reply = work => {
            let _ = replies.send(Ok(reply)).await;
        }
        () = replies.closed() => {}
    }
    drop(held);
}

#[cfg(test)]
#[path = "embed_stream_tests.rs"]
mod tests;
