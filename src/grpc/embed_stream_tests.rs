//! The reader and the item worker of `EmbedStream`, without a network: messages come from a
//! channel, replies go to one.

use std::sync::atomic::{AtomicBool, Ordering};

use prost::Message;

use super::*;
use crate::{admission::AdmissionConfig, grpc::pb};

/// Messages (or transport errors) as tonic's `Streaming` would yield them.
struct Fake(mpsc::UnboundedReceiver<Result<Option<pb::EmbedStreamRequest>, Status>>);

impl Inbound for Fake {
    type Message = pb::EmbedStreamRequest;
    async fn message(&mut self) -> Result<Option<pb::EmbedStreamRequest>, Status> {
        match self.0.recv().await {
            Some(message) => message,
            None => Ok(None),
        }
    }
}

type Sent = mpsc::UnboundedSender<Result<Option<pb::EmbedStreamRequest>, Status>>;
type Replies = mpsc::Receiver<Result<String, Status>>;

/// A gate, and the gauge of the bytes its budget holds.
fn gate(max_inflight_bytes: u64) -> (Gate, prometheus::IntGauge) {
    let bytes = prometheus::IntGauge::new("bytes", "test").unwrap();
    let gate = Gate::new(
        AdmissionConfig {
            max_concurrent_requests: 4,
            max_inflight_bytes,
            max_stream_readers: 2,
        },
        prometheus::IntGauge::new("in_flight", "test").unwrap(),
        bytes.clone(),
    );
    (gate, bytes)
}

fn reader(gate: &Gate, in_flight: usize) -> (Reader<Fake, Result<String, Status>>, Sent, Replies) {
    let (sent, inbound) = mpsc::unbounded_channel();
    let (replies_tx, replies) = mpsc::channel(4);
    let reader = Reader::new(
        Fake(inbound),
        gate.clone(),
        BodyProgress::default(),
        in_flight,
        replies_tx,
        None,
    );
    (reader, sent, replies)
}

fn text(id: &str) -> pb::EmbedStreamRequest {
    pb::EmbedStreamRequest {
        id: id.into(),
        item: Some(pb::embed_stream_request::Item::Text(
            "a photo of a cat".into(),
        )),
    }
}

#[tokio::test]
async fn messages_come_in_order_each_holding_a_slot_and_its_bytes() {
    let (gate, held_bytes) = gate(1 << 20);
    let (mut reader, sent, _replies) = reader(&gate, 2);
    for id in ["a", "b", "c"] {
        sent.send(Ok(Some(text(id)))).unwrap();
    }
    let Step::Item(a, held_a) = reader.next().await else {
        panic!("a message")
    };
    let Step::Item(b, _held_b) = reader.next().await else {
        panic!("a message")
    };
    assert_eq!((a.id.as_str(), b.id.as_str()), ("a", "b"));
    assert_eq!(
        held_bytes.get(),
        (a.encoded_len() + b.encoded_len()) as i64,
        "each item's bytes are held"
    );
    // Two in flight, the limit: the third waits until an item is done.
    let third = tokio::time::timeout(Duration::from_millis(50), reader.next()).await;
    assert!(third.is_err(), "no slot for a third item");
    drop(held_a);
    let Step::Item(c, _held_c) = reader.next().await else {
        panic!("a message")
    };
    assert_eq!(c.id, "c");
}

#[tokio::test]
async fn how_reading_ends() {
    let (gate, _) = gate(1 << 20);
    // The client half-closes: finished.
    let (mut r, sent, _replies) = reader(&gate, 4);
    drop(sent);
    assert!(matches!(r.next().await, Step::End(End::Finished)));
    // The connection breaks: the client is gone.
    let (mut r, sent, _replies) = reader(&gate, 4);
    sent.send(Err(Status::unknown("h2 reset"))).unwrap();
    assert!(matches!(r.next().await, Step::End(End::ClientGone)));
    // A message that does not decode (the codec says INVALID_ARGUMENT): the stream says so.
    let (mut r, sent, _replies) = reader(&gate, 4);
    sent.send(Err(Status::invalid_argument(
        "failed to decode Protobuf message",
    )))
    .unwrap();
    let Step::End(End::Status(status)) = r.next().await else {
        panic!("a status")
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("malformed stream message: "),
        "{status:?}"
    );
    // The client stops reading replies while the reader waits for a message: finished.
    let (mut r, _sent, replies) = reader(&gate, 4);
    drop(replies);
    assert!(matches!(r.next().await, Step::End(End::Finished)));
    // Shutdown while waiting for a message: UNAVAILABLE.
    let (mut r, _sent, _replies) = reader(&gate, 4);
    gate.begin_shutdown();
    let Step::End(End::Status(status)) = r.next().await else {
        panic!("a status")
    };
    assert_eq!(status.code(), Code::Unavailable);
}

/// Dropped with the future that owns it.
struct Dropped(Arc<AtomicBool>);
impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn the_item_worker_replies_and_gives_back_what_the_item_held() {
    let (gate, held_bytes) = gate(1 << 20);
    let (mut reader, sent, _unused) = reader(&gate, 1);
    sent.send(Ok(Some(text("a")))).unwrap();
    let Step::Item(_, held) = reader.next().await else {
        panic!("a message")
    };
    assert!(held_bytes.get() > 0);
    let (tx, mut replies) = mpsc::channel(1);
    run_item(async { "vector".to_string() }, tx, held).await;
    assert_eq!(replies.recv().await.unwrap().unwrap(), "vector");
    assert_eq!(held_bytes.get(), 0, "the bytes went back");
    sent.send(Ok(Some(text("b")))).unwrap();
    assert!(
        matches!(reader.next().await, Step::Item(..)),
        "and the slot: the next item is read"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_cancels_the_items_work() {
    let (gate, held_bytes) = gate(1 << 20);
    let (mut reader, sent, _unused) = reader(&gate, 1);
    sent.send(Ok(Some(text("a")))).unwrap();
    let Step::Item(_, held) = reader.next().await else {
        panic!("a message")
    };
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = Dropped(Arc::clone(&dropped));
    let work = async move {
        let _guard = guard;
        std::future::pending::<String>().await
    };
    let (tx, replies) = mpsc::channel(1);
    let worker = tokio::spawn(run_item(work, tx, held));
    tokio::task::yield_now().await;
    assert!(!dropped.load(Ordering::SeqCst), "the work runs");
    drop(replies);
    worker.await.unwrap();
    assert!(dropped.load(Ordering::SeqCst), "the work was dropped");
    assert_eq!(held_bytes.get(), 0, "and what it held given back");
}
