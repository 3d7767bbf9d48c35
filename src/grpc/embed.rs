//! `clip.v1.Embed`: unary batch calls and the bidirectional stream.

use std::{pin::Pin, sync::Arc};

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::{
    pb::{self, embed_server::Embed},
    status::{code_name, code_of},
};
use crate::{
    ServiceError,
    service::{Admission, EmbedService, Embedding, Item},
};

pub struct EmbedApi {
    service: EmbedService,
}

impl EmbedApi {
    pub fn new(service: EmbedService) -> Self {
        EmbedApi { service }
    }

    fn response(&self, embeddings: Vec<Embedding>) -> pb::EmbedResponse {
        pb::EmbedResponse {
            embeddings: embeddings.into_iter().map(Into::into).collect(),
            model: self.service.model_name(),
        }
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
                ServiceError::InvalidArgument("item: set `image` or `text`".into()),
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
            message: error.to_string(),
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
        let _permit = self.service.admit(Admission::TryNow).await?;
        let pb::EmbedImagesRequest { images } = request.into_inner();
        let embeddings = self.service.embed_images(images).await?;
        Ok(Response::new(self.response(embeddings)))
    }

    async fn embed_texts(
        &self,
        request: Request<pb::EmbedTextsRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let _permit = self.service.admit(Admission::TryNow).await?;
        let pb::EmbedTextsRequest { texts } = request.into_inner();
        let embeddings = self.service.embed_texts(texts).await?;
        Ok(Response::new(self.response(embeddings)))
    }

    type EmbedStreamStream = ReplyStream;

    /// Items are processed concurrently, up to `--max-stream-in-flight` per stream; past that the
    /// server stops reading, so HTTP/2 flow control pushes back on the client. Replies go out as
    /// items finish, each carrying its request's id.
    async fn embed_stream(
        &self,
        request: Request<Streaming<pb::EmbedStreamRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let in_flight = self.service.max_stream_in_flight();
        let (tx, rx) = mpsc::channel::<Result<pb::EmbedStreamResponse, Status>>(in_flight);
        let service = self.service.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(in_flight));
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                while tasks.try_join_next().is_some() {}
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                let message = tokio::select! {
                    message = inbound.message() => message,
                    () = tx.closed() => break,
                };
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        // A malformed or oversized message: the stream cannot go on reliably.
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let service = service.clone();
                let tx = tx.clone();
                tasks.spawn(async move {
                    let reply = match <(String, Item)>::try_from(request) {
                        Err((id, error)) => item_error(id, &error),
                        Ok((id, item)) => {
                            let result = match service.admit(Admission::Wait).await {
                                Ok(_permit) => service.embed_item(item).await,
                                Err(e) => Err(e),
                            };
                            match result {
                                Ok(embedding) => pb::EmbedStreamResponse {
                                    id,
                                    result: Some(pb::embed_stream_response::Result::Embedding(
                                        embedding.into(),
                                    )),
                                },
                                Err(error) => item_error(id, &error),
                            }
                        }
                    };
                    let _ = tx.send(Ok(reply)).await;
                    drop(slot);
                });
            }
            while tasks.join_next().await.is_some() {}
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
