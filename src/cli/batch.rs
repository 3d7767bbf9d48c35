//! The dynamic batcher: rows per batch, how long a batch waits to fill, rows queued per modality,
//! when a waiting low-priority call is served ahead of its class, and how many lower-class rows a
//! batch takes while a higher class is busy.

use std::time::Duration;

use clap::Args;

use super::to_usize;
use crate::{batch::BatcherConfig, common::parse_duration};

/// The batcher of each modality.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Most rows (images or texts) in one inference batch, per modality.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_BATCH_SIZE",
        default_value_t = 32,
        display_order = 290
    )]
    pub max_batch_size: u32,

    /// How long a batch may wait to fill up before it runs (0: run whatever is queued at once, the
    /// right choice on CPU; a few ms helps GPUs), e.g. 0, 2ms.
    #[arg(long, env = "CLIP_SERVE_MAX_BATCH_DELAY", default_value = "0", value_parser = parse_duration, display_order = 300)]
    pub max_batch_delay: Duration,

    /// Rows waiting per modality queue; a request that does not fit gets RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_QUEUE_ROWS",
        default_value_t = 1024,
        display_order = 310
    )]
    pub max_queue_rows: u32,

    /// A normal- or low-priority call that has waited this long in the queue is served right
    /// after the high class, with one of its rows in every batch (the starvation bound), e.g. 2s.
    #[arg(long, env = "CLIP_SERVE_PRIORITY_AGING", default_value = "2s", value_parser = parse_duration, display_order = 315)]
    pub priority_aging: Duration,

    /// While a higher priority class has had calls in the last second, a batch takes rows of a
    /// lower class only up to this many rows in all: on a CPU a batch's time grows with its rows,
    /// so a high call never waits behind, or carries, a long batch of low rows. Raise it on a GPU.
    #[arg(
        long,
        env = "CLIP_SERVE_PRIORITY_YIELD_ROWS",
        default_value_t = 2,
        display_order = 316
    )]
    pub priority_yield_rows: u32,
}

impl BatchArgs {
    /// The batcher's configuration, checked against the largest request (a numeric rule between two
    /// flags: clap cannot say it).
    pub(super) fn config(&self, max_items_per_request: usize) -> Result<BatcherConfig, String> {
        let batch = BatcherConfig {
            max_batch_size: to_usize("max-batch-size", self.max_batch_size.into())?,
            max_batch_delay: self.max_batch_delay,
            max_queue_rows: to_usize("max-queue-rows", self.max_queue_rows.into())?,
            priority_aging: self.priority_aging,
            priority_yield_rows: to_usize("priority-yield-rows", self.priority_yield_rows.into())?,
        };
        if batch.max_queue_rows < max_items_per_request {
            return Err(format!(
                "--max-queue-rows {} is smaller than --max-items-per-request {}: a full request could never be queued",
                batch.max_queue_rows, max_items_per_request
            ));
        }
        Ok(batch)
    }
}
