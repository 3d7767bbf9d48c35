//! `clip.v1.Embed`: unary batch calls and the bidirectional stream.

use std::{
    pin::Pin,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};
use tracing::Instrument;

use super::{
    context::{add_timings, hold_payload},
    embed_stream::{End, Reader, Step, run_item},
    pb::{self, embed_server::Embed},
    status::{code_name, code_of, message_of},
};
use crate::{
    common::{Field, ServiceError},
    embed::{Admission, DecodeShare, EmbedService, Embedded, Embedding, Item},
};

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
            super::auth::charge(request.get_ref().images.len()).await?;
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
            super::auth::charge(request.get_ref().texts.len()).await?;
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
        let inbound = request.into_inner();
        let in_flight = self.service.max_stream_in_flight();
        let (tx, rx) = mpsc::channel::<Result<pb::EmbedStreamResponse, Status>>(in_flight);
        let service = self.service.clone();
        // The call's span (the call layer runs this handler in it), for the stream's own task.
        let span = tracing::Span::current();
        let allowance = crate::security::keys::current();
        let response: Response<Self::EmbedStreamStream> =
            Response::new(Box::pin(ReceiverStream::new(rx)));
        let stream = async move {
            let mut reader = Reader::new(
                inbound,
                service.gate().clone(),
                progress,
                in_flight,
                tx.clone(),
                allowance,
            );
            let mut tasks = tokio::task::JoinSet::new();
            let end = loop {
                while tasks.try_join_next().is_some() {}
                let (request, held) = match reader.next().await {
                    Step::Item(request, held) => (request, held),
                    Step::End(end) => break end,
                };
                let item_span = tracing::debug_span!("item", id = %request.id);
                let work = answer(service.clone(), request, deadline, share.clone());
                // Items run in tasks of their own, in the caller's usage scope and priority class.
                crate::telemetry::usage::spawn_in(
                    &mut tasks,
                    crate::batch::priority::carried(
                        run_item(work, tx.clone(), held).instrument(item_span),
                    ),
                );
            };
            let status = match end {
                End::Finished => None,
                End::ClientGone => {
                    tasks.abort_all();
                    None
                }
                End::Status(status) => Some(status),
            };
            if tx.is_closed() {
                tasks.abort_all();
            }
            while tasks.join_next().await.is_some() {}
            // The call layer counts the stream by the status its trailers carry (CANCELLED when
            // the client went away before them).
            if let Some(status) = status {
                let _ = tx.send(Err(status)).await;
            }
        };
        // The stream runs in its own task: it keeps the caller's usage scope and priority class.
        crate::telemetry::usage::spawn(crate::batch::priority::carried(stream.instrument(span)));
        Ok(response)
    }
}

/// One stream item's reply: its embedding or its error, with its id.
async fn answer(
    service: EmbedService,
    request: pb::EmbedStreamRequest,
    deadline: Option<Instant>,
    share: DecodeShare,
) -> pb::EmbedStreamResponse {
    match <(String, Item)>::try_from(request) {
        Err((id, error)) => item_error(id, &error),
        Ok((id, item)) => match embed_admitted(&service, item, deadline, &share).await {
            Ok(embedding) => pb::EmbedStreamResponse {
                id,
                result: Some(pb::embed_stream_response::Result::Embedding(
                    embedding.into(),
                )),
            },
            Err(error) => item_error(id, &error),
        },
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
