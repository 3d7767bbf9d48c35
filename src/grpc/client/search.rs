//! `clip-serve search --addr URL --collection NAME "text query"`: the nearest items of a
//! collection, with their scores and metadata.

use std::path::PathBuf;

use anyhow::Context;

use super::{Connection, ServerArgs, parse_key_value};
use crate::grpc::pb;

#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// The text to search for (or use --image).
    pub query: Option<String>,
    /// Search by this image file instead of a text.
    #[arg(long, conflicts_with = "query")]
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long)]
    pub collection: String,
    #[arg(long, default_value_t = 10)]
    pub top_k: u32,
    /// Only items whose metadata has KEY=VALUE (repeatable; all must match).
    #[arg(long, value_parser = parse_key_value)]
    pub filter: Vec<(String, String)>,
}

pub struct Hit {
    pub id: String,
    pub score: f32,
    pub metadata: Vec<(String, String)>,
}

pub async fn run(args: &SearchArgs) -> anyhow::Result<Vec<Hit>> {
    let query = match (&args.query, &args.image) {
        (Some(text), None) => pb::query::Query::Text(text.clone()),
        (None, Some(path)) => pb::query::Query::Image(
            std::fs::read(path)
                .with_context(|| format!("reading {}", path.display()))?
                .into(),
        ),
        _ => anyhow::bail!("give a text query or --image FILE"),
    };
    let connection = Connection::open(&args.server).await?;
    let reply = connection
        .retrieve()
        .search(connection.request(pb::SearchRequest {
            exact: false,
            collection: args.collection.clone(),
            query: Some(pb::Query { query: Some(query) }),
            top_k: args.top_k,
            filter: args.filter.iter().cloned().collect(),
            model: String::new(),
        }))
        .await
        .map_err(|s| anyhow::anyhow!("Search in {:?}: {}", args.collection, s.message()))?
        .into_inner();
    Ok(reply
        .hits
        .into_iter()
        .map(|h| {
            let mut metadata: Vec<_> = h.metadata.into_iter().collect();
            metadata.sort();
            Hit {
                id: h.id,
                score: h.score,
                metadata,
            }
        })
        .collect())
}

/// One line per hit: rank, score, id, metadata.
pub fn render(hits: &[Hit]) -> String {
    let mut out = String::new();
    for (rank, hit) in hits.iter().enumerate() {
        let metadata: Vec<String> = hit
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!(
            "{:>3}  {:.4}  {}  {}\n",
            rank + 1,
            hit.score,
            hit.id,
            metadata.join(" ")
        ));
    }
    out
}
