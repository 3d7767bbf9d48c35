//! `clip.v1.Embed`: unary batch calls and the bidirectional stream.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, Streaming, metadata::MetadataMap};
use tracing::Instrument;

use super::{
    context::{add_timings, hold_payload},
    pb::{self, embed_server::Embed},
    status::{code_name, code_of, message_of},
};
use crate::{
    common::{Field, ServiceError},
    embed::{Admission, DecodeShare, EmbedService, Embedded, Embedding, Item},
};

/// How long a stream may hold a reading turn (`--max-stream-readers`) with no byte arriving.
const READER_TURN: Duration = Duration::from_millis(500);

pub struct EmbedApi {
    service: EmbedService,
}

impl EmbedApi {
    pub fn new(service: EmbedService) -> Self {
        EmbedApi { service }
    }

    /// The reply, with the timings in its metadata.
    fn response(&self, embedded: Embedded) -> Response<pb::EmbedResponse> {
        let Embedded {
            embeddings,
            timings,
        } = embedded;
        let mut response = Response::new(pb::EmbedResponse {
            embeddings: embeddings.into_iter().map(Into::into).collect(),
            model: self.service.model_name(),
        });
        add_timings(response.metadata_mut(), &timings);
        response
    }
}

impl From<Embedding> for pb::Embedding {
    fn from(e: Embedding) -> Self {
        let Embedding {
            values,
            truncated,
            token_count,
        } = e;
        pb::Embedding {
            values,
            truncated,
            token_count,
        }
    }
}

impl TryFrom<pb::EmbedStreamRequest> for (String, Item) {
    type Error = (String, ServiceError);

    fn try_from(request: pb::EmbedStreamRequest) -> Result<Self, Self::Error> {
        let pb::EmbedStreamRequest { id, item } = request;
        match item {
            Some(pb::embed_stream_request::Item::Image(bytes)) => Ok((id, Item::Image(bytes))),
            Some(pb::embed_stream_request::Item::Text(text)) => Ok((id, Item::Text(text))),
            None => Err((
                id,
                ServiceError::invalid(Field::Param("item"), "set `image` or `text`"),
            )),
        }
    }
}

fn item_error(id: String, error: &ServiceError) -> pb::EmbedStreamResponse {
    let code = code_of(error);
    pb::EmbedStreamResponse {
        id,
        result: Some(pb::embed_stream_response::Result::Error(pb::ItemError {
            code: code as i32,
            code_name: code_name(code).to_string(),
            message: message_of(error),
        })),
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::EmbedStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Embed for EmbedApi {
    async fn embed_images(
        &self,
        request: Request<pb::EmbedImagesRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        async {
            super::auth::charge(request.get_ref().images.len())?;
            let _bytes = hold_payload(&self.service, &request)?;
            let permit = self.service.admit(Admission::TryNow).await?;
            let deadline = deadline_of(request.metadata());
            let pb::EmbedImagesRequest { images } = request.into_inner();
            let embedded = self.service.embed_images(images, deadline, permit).await?;
            Ok(self.response(embedded))
        }
        .await
    }

    async fn embed_texts(
        &self,
        request: Request<pb::EmbedTextsRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        async {
            super::auth::charge(request.get_ref().texts.len())?;
            let _bytes = hold_payload(&self.service, &request)?;
            let permit = self.service.admit(Admission::TryNow).await?;
            let deadline = deadline_of(request.metadata());
            let pb::EmbedTextsRequest { texts } = request.into_inner();
            let embedded = self.service.embed_texts(texts, deadline, permit).await?;
            Ok(self.response(embedded))
        }
        .await
    }

    type EmbedStreamStream = ReplyStream;

    /// Items are processed concurrently, up to `--max-stream-in-flight` per stream; past that the
    /// server stops reading and HTTP/2 flow control pushes back on the client. Each item then waits
    /// for a request permit (an idle stream holds none, so open streams cannot starve unary
    /// calls while they wait for input). Replies go out as items finish, each with its request's
    /// id. A message that is not valid protobuf (e.g. a `text` that is not UTF-8) cannot be tied to
    /// an id: the stream ends with INVALID_ARGUMENT. On shutdown the server stops reading, finishes
    /// the items it has, and ends the stream with UNAVAILABLE. Each item costs one item of the
    /// key's rate limit (the key check paid for the first); while the limit is spent the stream
    /// waits and reads nothing more.
    async fn embed_stream(
        &self,
        request: Request<Streaming<pb::EmbedStreamRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        let deadline = deadline_of(request.metadata());
        // The stream's images take one turn in the decode pool, like one request's.
        let share = self.service.decode_share();
        let progress = request
            .extensions()
            .get::<super::progress::BodyProgress>()
            .cloned()
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let in_flight = self.service.max_stream_in_flight();
        let (tx, rx) = mpsc::channel::<Result<pb::EmbedStreamResponse, Status>>(in_flight);
        let service = self.service.clone();
        // The call's span (the call layer runs this handler in it), for the stream's own task.
        let span = tracing::Span::current();
        let allowance = crate::security::keys::current();
        let response: Response<Self::EmbedStreamStream> =
            Response::new(Box::pin(ReceiverStream::new(rx)));
        let stream = async move {
            let slots = Arc::new(Semaphore::new(in_flight));
            let mut tasks = tokio::task::JoinSet::new();
            let mut end: Option<Status> = None;
            let mut client_gone = false;
            // The part of a message that arrived before its sender stalled sits in tonic's
            // buffer: it is held against the byte budget until the message completes, and a
            // stream whose half-sent message does not fit the budget is ended.
            let mut parked: Option<crate::admission::bytes::BytesPermit> = None;
            loop {
                while tasks.try_join_next().is_some() {}
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                // A turn to read: the decoded message is held until the byte budget admits it. A
                // stream on which nothing at all arrived during its turn gives the turn to the next
                // one, so idle streams cannot hold every turn; a message still arriving keeps it.
                let message = loop {
                    let reader = tokio::select! {
                        reader = service.gate().stream_reader() => match reader {
                            Ok(reader) => reader,
                            Err(e) => {
                                end = Some(e.into());
                                break None;
                            }
                        },
                        () = tx.closed() => break None,
                    };
                    let mut arrived = progress.received();
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
                    tokio::select! {
                        message = inbound.message() => break Some((message, reader)),
                        () = turn => {
                            drop(reader);
                            let partial = progress.partial();
                            drop(parked.take());
                            if partial > 0 {
                                match service.gate().bytes().try_take(partial) {
                                    Ok(bytes) => drop(parked.replace(bytes)),
                                    Err(_) => {
                                        end = Some(Status::resource_exhausted(format!(
                                            "the stream stalled in the middle of a message ({partial} bytes received) \
                                             while the server holds as many request bytes as it may \
                                             (--max-inflight-bytes); send whole messages, or retry later"
                                        )));
                                        break None;
                                    }
                                }
                            }
                        }
                        () = tx.closed() => break None,
                        () = service.shutdown_started() => {
                            end = Some(ServiceError::Unavailable("server is shutting down".into()).into());
                            break None;
                        }
                    }
                };
                let Some((message, reader)) = message else {
                    break;
                };
                drop(reader);
                drop(parked.take());
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    // The connection broke under the stream (the client went away): nothing to
                    // answer, and nothing wrong on our side.
                    Err(status) if status.code() == Code::Unknown => {
                        client_gone = true;
                        break;
                    }
                    Err(status) => {
                        end = Some(client_decode_error(status));
                        break;
                    }
                };
                // The item is held against --max-inflight-bytes while it is worked on; when the
                // budget is spent the stream waits here, reading nothing more.
                let size = prost::Message::encoded_len(&request) as u64;
                let bytes = tokio::select! {
                    bytes = service.gate().bytes().take(size) => match bytes {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            end = Some(e.into());
                            break;
                        }
                    },
                    () = tx.closed() => break,
                    () = service.shutdown_started() => {
                        end = Some(ServiceError::Unavailable("server is shutting down".into()).into());
                        break;
                    }
                };
                // Charged per item as items arrive (the item's bytes are held meanwhile, so a
                // waiting stream's memory stays counted).
                let closed = tx.closed();
                let shutdown = service.shutdown_started();
                let gone = async {
                    tokio::select! {
                        () = closed => {}
                        () = shutdown => {}
                    }
                };
                match super::auth::charge_stream_item(allowance.as_ref(), gone).await {
                    Ok(()) => {}
                    Err(None) => {
                        if service.gate().is_shutting_down() {
                            end = Some(
                                ServiceError::Unavailable("server is shutting down".into()).into(),
                            );
                        }
                        break;
                    }
                    Err(Some(status)) => {
                        end = Some(status);
                        break;
                    }
                }
                let service = service.clone();
                let share = share.clone();
                let tx = tx.clone();
                let item_span = tracing::debug_span!("item", id = %request.id);
                // Items run in tasks of their own, in the caller's usage scope.
                tasks.spawn(crate::telemetry::usage::carried(
                    crate::telemetry::usage::current(),
                    async move {
                        let work = async {
                            match <(String, Item)>::try_from(request) {
                                Err((id, error)) => item_error(id, &error),
                                Ok((id, item)) => {
                                    match embed_admitted(&service, item, deadline, &share).await {
                                        Ok(embedding) => pb::EmbedStreamResponse {
                                            id,
                                            result: Some(
                                                pb::embed_stream_response::Result::Embedding(
                                                    embedding.into(),
                                                ),
                                            ),
                                        },
                                        Err(error) => item_error(id, &error),
                                    }
                                }
                            }
                        };
                        // A client that went away cancels its items: dropping the work withdraws
                        // their rows from the batcher before they cost compute.
                        tokio::select! {
                            reply = work => {
                                let _ = tx.send(Ok(reply)).await;
                            }
                            () = tx.closed() => {}
                        }
                        drop(slot);
                        drop(bytes);
                    }
                    .instrument(item_span),
                ));
            }
            if tx.is_closed() || client_gone {
                tasks.abort_all();
            }
            while tasks.join_next().await.is_some() {}
            // The call layer counts the stream by the status its trailers carry (CANCELLED when
            // the client went away before them).
            if let Some(status) = end {
                let _ = tx.send(Err(status)).await;
            }
        };
        // The stream runs in its own task: it keeps the caller's usage scope and priority class.
        let usage = crate::telemetry::usage::current();
        tokio::spawn(crate::telemetry::usage::carried(
            usage,
            crate::batch::priority::carried(stream.instrument(span)),
        ));
        Ok(response)
    }
}

/// Stream items wait for a request permit (unary calls are refused instead).
async fn embed_admitted(
    service: &EmbedService,
    item: Item,
    deadline: Option<Instant>,
    share: &DecodeShare,
) -> Result<Embedding, ServiceError> {
    let permit = service.admit(Admission::Wait).await?;
    service.embed_item(item, deadline, permit, share).await
}

/// The call's deadline from its `grpc-timeout` header (`100m`, `5S`, ...; gRPC over HTTP/2 spec).
/// A malformed header is ignored, as if the client had set no deadline.
pub(super) fn deadline_of(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value).map(|timeout| Instant::now() + timeout)
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// tonic reports a request message it cannot decode as INTERNAL; it is the client's message that is
/// wrong, so say INVALID_ARGUMENT. Transport errors keep their code.
fn client_decode_error(status: Status) -> Status {
    if status.code() == tonic::Code::Internal && status.message().contains("decode") {
        Status::invalid_argument(format!("malformed stream message: {}", status.message()))
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None, "at most 8 digits");
    }

    /// A stream message's image is a slice of the receive buffer, not a copy: while the image is
    /// alive the buffer cannot reclaim that memory, so tonic allocates a fresh buffer for the next
    /// message and an idle stream keeps no message-sized buffer (issue: 64 x 4 streams of 3.4 MB
    /// JPEGs held ~0.9 GB in idle buffers).
    #[test]
    fn stream_images_borrow_the_receive_buffer() {
        use prost::Message;
        let image = vec![7u8; 100_000];
        let message = pb::EmbedStreamRequest {
            item: Some(pb::embed_stream_request::Item::Image(image.clone().into())),
            ..Default::default()
        };
        let mut buf = bytes::BytesMut::new();
        message.encode(&mut buf).expect("encode");
        let range = buf.as_ptr_range();
        let decoded = pb::EmbedStreamRequest::decode(&mut buf).expect("decode");
        let Some(pb::embed_stream_request::Item::Image(bytes)) = decoded.item else {
            panic!("an image item")
        };
        assert_eq!(bytes.as_ref(), image.as_slice());
        assert!(
            range.contains(&bytes.as_ptr()),
            "the image must share the receive buffer's allocation"
        );
    }
}
