//! `clip.v1.Classify`: zero-shot classification and label sets.

use tonic::{Request, Response, Status};

use super::{
    context::hold_payload,
    embed::deadline_of,
    pb::{self, classify_server::Classify},
};
use crate::{
    classify::{ClassifyInput, ClassifyService, LabelSetInfo, SetState},
    common::ServiceError,
    embed::{Admission, EmbedService, Permit},
};

pub struct ClassifyApi {
    embed: EmbedService,
    classify: ClassifyService,
}

impl ClassifyApi {
    pub fn new(embed: EmbedService, classify: ClassifyService) -> Self {
        ClassifyApi { embed, classify }
    }

    /// Label-set calls are cheap bookkeeping, but they still wait for the model, and they are
    /// admitted (and drained on shutdown) as control calls.
    async fn admit_control(&self) -> Result<Permit, ServiceError> {
        self.embed.loaded_model()?;
        self.embed.admit(Admission::Control).await
    }
}

fn label_set(info: LabelSetInfo, with_lists: bool) -> pb::LabelSet {
    let LabelSetInfo {
        spec,
        builtin,
        state,
    } = info;
    let (state, done, total, source, error) = match state {
        SetState::NotBuilt => (pb::LabelSetState::NotBuilt, 0, 0, "", String::new()),
        SetState::Building { done, total } => {
            (pb::LabelSetState::Building, done, total, "", String::new())
        }
        SetState::Ready(source) => (
            pb::LabelSetState::Ready,
            0,
            0,
            source.as_str(),
            String::new(),
        ),
        SetState::Failed(e) => (pb::LabelSetState::Failed, 0, 0, "", e),
    };
    pb::LabelSet {
        name: spec.name.clone(),
        labels: if with_lists {
            spec.labels.clone()
        } else {
            Vec::new()
        },
        templates: if with_lists {
            spec.templates.clone()
        } else {
            Vec::new()
        },
        label_count: u32::try_from(spec.labels.len()).unwrap_or(u32::MAX),
        template_count: u32::try_from(spec.templates.len()).unwrap_or(u32::MAX),
        builtin,
        state: state as i32,
        texts_done: done,
        texts_total: total,
        classifier_source: source.to_string(),
        error,
    }
}

#[tonic::async_trait]
impl Classify for ClassifyApi {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        async {
            super::auth::charge(request.get_ref().images.len()).await?;
            let _bytes = hold_payload(&self.embed, &request)?;
            let permit = self.embed.admit(Admission::TryNow).await?;
            let deadline = deadline_of(request.metadata());
            let pb::ClassifyRequest {
                images,
                labels,
                label_set,
                templates,
                top_k,
            } = request.into_inner();
            let input = ClassifyInput {
                images,
                labels,
                label_set,
                templates,
                top_k: usize::try_from(top_k).unwrap_or(usize::MAX),
            };
            let results = self.classify.classify(input, deadline, permit).await?;
            Ok(Response::new(pb::ClassifyResponse {
                results: results
                    .into_iter()
                    .map(|scores| pb::ClassifyResult {
                        scores: scores
                            .into_iter()
                            .map(|s| pb::LabelScore {
                                label: s.label,
                                probability: s.probability,
                                score: s.score,
                            })
                            .collect(),
                    })
                    .collect(),
                model: self.embed.model_name(),
            }))
        }
        .await
    }

    async fn create_label_set(
        &self,
        request: Request<pb::CreateLabelSetRequest>,
    ) -> Result<Response<pb::LabelSet>, Status> {
        async {
            let _permit = self.admit_control().await?;
            let pb::CreateLabelSetRequest {
                name,
                labels,
                templates,
            } = request.into_inner();
            let info = self.classify.create(name, labels, templates).await?;
            Ok(Response::new(label_set(info, true)))
        }
        .await
    }

    async fn get_label_set(
        &self,
        request: Request<pb::GetLabelSetRequest>,
    ) -> Result<Response<pb::LabelSet>, Status> {
        async {
            let _permit = self.admit_control().await?;
            let pb::GetLabelSetRequest { name } = request.into_inner();
            Ok::<_, ServiceError>(Response::new(label_set(
                self.classify.lookup(&name).await?,
                true,
            )))
        }
        .await
        .map_err(Status::from)
    }

    async fn list_label_sets(
        &self,
        request: Request<pb::ListLabelSetsRequest>,
    ) -> Result<Response<pb::ListLabelSetsResponse>, Status> {
        let pb::ListLabelSetsRequest {} = request.into_inner();
        async {
            let _permit = self.admit_control().await?;
            Ok::<_, ServiceError>(Response::new(pb::ListLabelSetsResponse {
                label_sets: self
                    .classify
                    .list()
                    .into_iter()
                    .map(|info| label_set(info, false))
                    .collect(),
            }))
        }
        .await
        .map_err(Status::from)
    }

    async fn delete_label_set(
        &self,
        request: Request<pb::DeleteLabelSetRequest>,
    ) -> Result<Response<pb::DeleteLabelSetResponse>, Status> {
        async {
            let _permit = self.admit_control().await?;
            let pb::DeleteLabelSetRequest { name } = request.into_inner();
            self.classify.delete(&name).await?;
            Ok(Response::new(pb::DeleteLabelSetResponse {}))
        }
        .await
    }
}
