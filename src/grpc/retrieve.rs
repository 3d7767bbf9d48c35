//! `clip.v1.Retrieve`: ranking and collections.

use tonic::{Request, Response, Status};

use super::{
    context::hold_payload,
    embed::deadline_of,
    pb::{self, retrieve_server::Retrieve},
};
use crate::{
    common::{Field, ServiceError},
    embed::{Admission, EmbedService},
    retrieve::{
        CollectionInfo, CollectionOptions, Content, ItemInput, RetrieveService, SearchInput,
    },
};

pub struct RetrieveApi {
    embed: EmbedService,
    retrieve: RetrieveService,
}

impl RetrieveApi {
    pub fn new(embed: EmbedService, retrieve: RetrieveService) -> Self {
        RetrieveApi { embed, retrieve }
    }
}

fn content(query: Option<pb::Query>) -> Option<Content> {
    match query?.query? {
        pb::query::Query::Text(t) => Some(Content::Text(t)),
        pb::query::Query::Image(b) => Some(Content::Image(b)),
        pb::query::Query::Vector(v) => Some(Content::Vector(v.values)),
    }
}

fn collection(c: CollectionInfo) -> pb::Collection {
    pb::Collection {
        name: c.name,
        count: c.count as u64,
        dimension: u32::try_from(c.dimension).unwrap_or(u32::MAX),
        model: c.model,
        index: c.index,
        ready: c.ready,
        hnsw_m: c.options.hnsw_m.unwrap_or(0),
        hnsw_ef_construction: c.options.hnsw_ef_construction.unwrap_or(0),
        recall_target: c.options.recall_target().unwrap_or(0.0) as f32,
    }
}

fn to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[tonic::async_trait]
impl Retrieve for RetrieveApi {
    async fn rank(
        &self,
        request: Request<pb::RankRequest>,
    ) -> Result<Response<pb::RankResponse>, Status> {
        async {
            // The query and each candidate.
            super::auth::charge(request.get_ref().candidates.len() + 1).await?;
            let _bytes = hold_payload(&self.embed, &request)?;
            let permit = self.embed.admit(Admission::TryNow).await?;
            let deadline = deadline_of(request.metadata());
            let pb::RankRequest {
                query,
                candidates,
                top_k,
            } = request.into_inner();
            let candidates = candidates.into_iter().map(|c| content(Some(c))).collect();
            let ranked = self
                .retrieve
                .rank(
                    content(query),
                    candidates,
                    to_usize(top_k),
                    deadline,
                    permit,
                )
                .await?;
            Ok(Response::new(pb::RankResponse {
                results: ranked
                    .into_iter()
                    .map(|(index, score)| pb::RankedCandidate {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        score,
                    })
                    .collect(),
            }))
        }
        .await
    }

    async fn create_collection(
        &self,
        request: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        async {
            let _permit = self.embed.admit(Admission::Control).await?;
            let pb::CreateCollectionRequest {
                name,
                dimension,
                model,
                hnsw_m,
                hnsw_ef_construction,
                recall_target,
            } = request.into_inner();
            let options = CollectionOptions {
                hnsw_m: (hnsw_m != 0).then_some(hnsw_m),
                hnsw_ef_construction: (hnsw_ef_construction != 0).then_some(hnsw_ef_construction),
                recall_target_permille: CollectionOptions::recall_permille(f64::from(
                    recall_target,
                ))
                .map_err(|(field, why)| ServiceError::invalid(Field::Param(field), why))?,
            };
            let info = self
                .retrieve
                .create_with(name, to_usize(dimension), model, options)
                .await?;
            Ok(Response::new(collection(info)))
        }
        .await
    }

    async fn get_collection(
        &self,
        request: Request<pb::GetCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        async {
            let _permit = self.embed.admit(Admission::Control).await?;
            let pb::GetCollectionRequest { name } = request.into_inner();
            Ok::<_, ServiceError>(Response::new(collection(self.retrieve.get(&name).await?)))
        }
        .await
        .map_err(Status::from)
    }

    async fn list_collections(
        &self,
        request: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let pb::ListCollectionsRequest {} = request.into_inner();
        async {
            let _permit = self.embed.admit(Admission::Control).await?;
            Ok::<_, ServiceError>(Response::new(pb::ListCollectionsResponse {
                collections: self
                    .retrieve
                    .list()
                    .await?
                    .into_iter()
                    .map(collection)
                    .collect(),
            }))
        }
        .await
        .map_err(Status::from)
    }

    async fn delete_collection(
        &self,
        request: Request<pb::DeleteCollectionRequest>,
    ) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        async {
            let _permit = self.embed.admit(Admission::Control).await?;
            let pb::DeleteCollectionRequest { name } = request.into_inner();
            self.retrieve.drop_collection(&name).await?;
            Ok(Response::new(pb::DeleteCollectionResponse {}))
        }
        .await
    }

    async fn upsert(
        &self,
        request: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::UpsertResponse>, Status> {
        async {
            super::auth::charge(request.get_ref().items.len()).await?;
            let _bytes = hold_payload(&self.embed, &request)?;
            let permit = self.embed.admit(Admission::TryNow).await?;
            let deadline = deadline_of(request.metadata());
            let pb::UpsertRequest {
                collection,
                items,
                model,
            } = request.into_inner();
            let items = items
                .into_iter()
                .map(|i| ItemInput {
                    id: i.id,
                    content: i.content.map(|c| match c {
                        pb::item::Content::Text(t) => Content::Text(t),
                        pb::item::Content::Image(b) => Content::Image(b),
                        pb::item::Content::Vector(v) => Content::Vector(v.values),
                    }),
                    metadata: i.metadata.into_iter().collect(),
                })
                .collect();
            let (upserted, count) = self
                .retrieve
                .upsert(&collection, items, &model, deadline, permit)
                .await?;
            Ok(Response::new(pb::UpsertResponse {
                upserted: u32::try_from(upserted).unwrap_or(u32::MAX),
                count: count as u64,
            }))
        }
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        async {
            let _permit = self.embed.admit(Admission::Control).await?;
            let pb::DeleteRequest { collection, ids } = request.into_inner();
            let (deleted, count) = self.retrieve.delete(&collection, ids).await?;
            Ok(Response::new(pb::DeleteResponse {
                deleted: u32::try_from(deleted).unwrap_or(u32::MAX),
                count: count as u64,
            }))
        }
        .await
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        async {
            let _bytes = hold_payload(&self.embed, &request)?;
            let permit = self.embed.admit(Admission::TryNow).await?;
            let deadline = deadline_of(request.metadata());
            let pb::SearchRequest {
                collection,
                query,
                top_k,
                filter,
                model,
                exact,
            } = request.into_inner();
            let hits = self
                .retrieve
                .search(
                    &collection,
                    SearchInput {
                        query: content(query),
                        top_k: to_usize(top_k),
                        filter: filter.into_iter().collect(),
                        model,
                        exact,
                    },
                    deadline,
                    permit,
                )
                .await?;
            Ok(Response::new(pb::SearchResponse {
                hits: hits
                    .into_iter()
                    .map(|h| pb::Hit {
                        id: h.id,
                        score: h.score,
                        metadata: h
                            .metadata
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    })
                    .collect(),
            }))
        }
        .await
    }

    async fn get_items(
        &self,
        request: Request<pb::GetItemsRequest>,
    ) -> Result<Response<pb::GetItemsResponse>, Status> {
        async {
            let _permit = self.embed.admit(Admission::Control).await?;
            let pb::GetItemsRequest { collection, ids } = request.into_inner();
            let (items, missing) = self.retrieve.get_items(&collection, ids).await?;
            Ok::<_, ServiceError>(Response::new(pb::GetItemsResponse {
                items: items
                    .into_iter()
                    .map(|i| pb::StoredItem {
                        id: i.id,
                        vector: Some(pb::Vector { values: i.vector }),
                        metadata: i.metadata.into_iter().collect(),
                    })
                    .collect(),
                missing,
            }))
        }
        .await
        .map_err(Status::from)
    }
}
