//! The Batch API's flags (`--batch-*`), each with its `CLIP_SERVE_BATCH_*` twin, checked into
//! [`JobsConfig`].

use clap::Args;

use std::time::Duration;

use crate::{common::parse_duration, jobs::JobsConfig};

#[derive(Debug, Clone, Args)]
pub struct BatchApiArgs {
    /// Batch API: largest uploaded JSONL file, in bytes.
    #[arg(long, env = "CLIP_SERVE_BATCH_MAX_FILE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub batch_max_file_bytes: u64,

    /// Batch API: most request lines in one uploaded file.
    #[arg(
        long,
        env = "CLIP_SERVE_BATCH_MAX_FILE_LINES",
        default_value_t = 50_000
    )]
    pub batch_max_file_lines: u64,

    /// Batch API: most uploaded files one API key may keep.
    #[arg(
        long,
        env = "CLIP_SERVE_BATCH_MAX_FILES_PER_KEY",
        default_value_t = 100
    )]
    pub batch_max_files_per_key: u64,

    /// Batch API: most bytes of uploaded files one API key may keep.
    #[arg(long, env = "CLIP_SERVE_BATCH_MAX_BYTES_PER_KEY", default_value_t = 1024 * 1024 * 1024)]
    pub batch_max_bytes_per_key: u64,

    /// Batch API: most unfinished batches one API key may have.
    #[arg(
        long,
        env = "CLIP_SERVE_BATCH_MAX_ACTIVE_PER_KEY",
        default_value_t = 16
    )]
    pub batch_max_active_per_key: u64,

    /// Batch API: batches this replica works on at once (others wait their turn).
    #[arg(long, env = "CLIP_SERVE_BATCH_MAX_JOBS_IN_FLIGHT", default_value_t = 2)]
    pub batch_max_jobs_in_flight: u64,

    /// Batch API: lines of one batch worked on at once (each at the batchers' background
    /// priority, below live calls).
    #[arg(long, env = "CLIP_SERVE_BATCH_LINE_CONCURRENCY", default_value_t = 4)]
    pub batch_line_concurrency: u64,

    /// Batch API: most bytes of one batch's output and error files; lines past it fail with
    /// `output_too_large`.
    #[arg(long, env = "CLIP_SERVE_BATCH_MAX_OUTPUT_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub batch_max_output_bytes: u64,

    /// Batch API with --store postgres: how long a replica's claim on a batch lasts unless
    /// renewed (it renews every third of it while it works); a batch whose replica died is
    /// taken over by another once it runs out.
    #[arg(long, env = "CLIP_SERVE_BATCH_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub batch_lease: Duration,
}

impl BatchApiArgs {
    /// The checked configuration; an error names the flag.
    pub fn config(&self) -> Result<JobsConfig, String> {
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(format!("--{name} must be greater than 0"))
            } else {
                Ok(v)
            }
        };
        let count = |name: &str, v: u64| -> Result<usize, String> {
            usize::try_from(positive(name, v)?).map_err(|_| format!("--{name} {v} is too large"))
        };
        Ok(JobsConfig {
            max_file_bytes: positive("batch-max-file-bytes", self.batch_max_file_bytes)?,
            max_file_lines: count("batch-max-file-lines", self.batch_max_file_lines)?,
            max_files_per_key: count("batch-max-files-per-key", self.batch_max_files_per_key)?,
            max_bytes_per_key: positive("batch-max-bytes-per-key", self.batch_max_bytes_per_key)?,
            max_active_batches_per_key: count(
                "batch-max-active-per-key",
                self.batch_max_active_per_key,
            )?,
            max_jobs_in_flight: count("batch-max-jobs-in-flight", self.batch_max_jobs_in_flight)?,
            line_concurrency: count("batch-line-concurrency", self.batch_line_concurrency)?,
            max_output_bytes: positive("batch-max-output-bytes", self.batch_max_output_bytes)?,
            lease: if self.batch_lease < Duration::from_millis(100) {
                return Err("--batch-lease must be at least 100ms".into());
            } else {
                self.batch_lease
            },
            ..JobsConfig::default()
        })
    }
}
