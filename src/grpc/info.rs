//! `clip.v1.Info`: what is being served.

use tonic::{Request, Response, Status};

use super::pb::{self, info_server::Info};
use crate::{
    embed::{EmbedService, ModelInfo, TowerInfo},
    model::WeightsKind,
};

pub struct InfoApi {
    service: EmbedService,
}

impl InfoApi {
    pub fn new(service: EmbedService) -> Self {
        InfoApi { service }
    }
}

#[tonic::async_trait]
impl Info for InfoApi {
    async fn get_info(
        &self,
        request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        let pb::GetInfoRequest {} = request.into_inner();
        self.service
            .info()
            .map(|info| Response::new(info.into()))
            .map_err(Status::from)
    }
}

impl From<WeightsKind> for pb::WeightsKind {
    fn from(kind: WeightsKind) -> Self {
        match kind {
            WeightsKind::Unspecified => pb::WeightsKind::Unspecified,
            WeightsKind::Pretrained => pb::WeightsKind::Pretrained,
            WeightsKind::RandomInit => pb::WeightsKind::RandomInit,
            WeightsKind::Test => pb::WeightsKind::Test,
        }
    }
}

impl From<TowerInfo> for pb::TowerInfo {
    fn from(t: TowerInfo) -> Self {
        let TowerInfo {
            loaded,
            path,
            input,
            output,
            dynamic_batch,
            dynamic_length,
        } = t;
        pb::TowerInfo {
            loaded,
            path,
            input,
            output,
            dynamic_batch,
            dynamic_length,
        }
    }
}

fn saturate(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl From<ModelInfo> for pb::GetInfoResponse {
    fn from(info: ModelInfo) -> Self {
        let ModelInfo {
            model_name,
            pretrained,
            weights,
            display_name: _,
            embedding_dim,
            image_size,
            context_length,
            image,
            text,
            execution_provider,
            onnxruntime_version,
            server_version,
            limits,
            logit_scale,
            logit_scale_defaulted,
            apply_exif_orientation,
            model_dir,
            precision,
            precision_reason,
            gate,
        } = info;
        pb::GetInfoResponse {
            model_name,
            pretrained: pretrained.unwrap_or_default(),
            weights: pb::WeightsKind::from(weights).into(),
            embedding_dim: saturate(embedding_dim),
            image_size,
            context_length: saturate(context_length),
            image: Some(image.into()),
            text: Some(text.into()),
            execution_provider,
            onnxruntime_version,
            server_version: server_version.to_string(),
            limits: Some(pb::Limits {
                max_items_per_request: saturate(limits.max_items_per_request),
                max_image_bytes: limits.max_image_bytes as u64,
                max_image_pixels: limits.max_image_pixels,
                max_text_bytes: saturate(limits.max_text_bytes),
                max_message_bytes: limits.max_message_bytes as u64,
                max_concurrent_requests: saturate(limits.max_concurrent_requests),
            }),
            logit_scale,
            logit_scale_defaulted,
            apply_exif_orientation,
            model_dir,
            precision,
            precision_reason,
            precision_gate: gate.map(|gate| {
                let tower = |name: &str| {
                    gate.towers.get(name).map(|t| pb::TowerGate {
                        cosine_min: t.cosine.min,
                        cosine_p1: t.cosine.p1,
                        cosine_mean: t.cosine.mean,
                        passed: t.pass,
                    })
                };
                pb::PrecisionGate {
                    report: gate.report.display().to_string(),
                    ungated: gate.ungated,
                    visual: tower("visual"),
                    textual: tower("textual"),
                }
            }),
        }
    }
}
