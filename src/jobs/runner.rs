//! The runner: picks unfinished batches (oldest first, at most `max_jobs_in_flight` at once) and
//! works each through its states: `validating` (every line checked: JSON object, unique
//! `custom_id`, `method` POST, `url` the batch's endpoint, `body` an object; any bad line fails
//! the batch with OpenAI's `errors` list) -> `in_progress` (lines run `line_concurrency` at once,
//! each recorded on disk as it finishes) -> `finalizing` (output and error files assembled from the
//! line records, in input order) -> `completed`, or `cancelled` / `expired` with what finished.
//!
//! A line whose answer is "busy" (429, 503: the server is full or shutting down) is retried later,
//! never recorded as failed; a shutdown leaves the batch `in_progress`, and the next start goes on
//! from its recorded lines.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinSet};

use super::{Batch, Endpoint, Executor, InputError, JobsService, Status, now};
use crate::{
    common::ServiceError,
    embed::priority,
    telemetry::usage::{self, Usage},
};

/// How often unfinished batches are looked at without being woken (expiry, retries).
pub(super) const TICK: Duration = Duration::from_millis(500);
/// While live calls are in flight, a job runs one line at a time and rests this many times the
/// line's own time after it (about a quarter of one core's time, whatever the concurrency).
const YIELD_FACTOR: u32 = 3;
/// Input errors listed on a failed batch.
const MAX_INPUT_ERRORS: usize = 100;

/// One request line of a batch's input.
struct Line {
    custom_id: String,
    body: Value,
}

pub(super) async fn schedule(jobs: JobsService, executor: Arc<dyn Executor>) {
    let slots = Arc::new(Semaphore::new(jobs.shared.config.max_jobs_in_flight.max(1)));
    let shutdown = jobs.shared.embed.clone();
    let shutdown = shutdown.shutdown_started();
    tokio::pin!(shutdown);
    loop {
        let waiting: Vec<String> = {
            let state = jobs.state();
            let mut waiting: Vec<&Batch> = state
                .batches
                .values()
                .filter(|b| !b.status.is_final() && !state.running.contains(&b.id))
                .collect();
            waiting.sort_by_key(|b| b.seq);
            waiting.into_iter().map(|b| b.id.clone()).collect()
        };
        for id in waiting {
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                break;
            };
            jobs.state().running.insert(id.clone());
            let (jobs, executor) = (jobs.clone(), Arc::clone(&executor));
            tokio::spawn(async move {
                if let Err(e) = drive(&jobs, &executor, &id).await {
                    tracing::warn!(batch = %id, error = %e, "batch interrupted; it will be resumed");
                    tokio::time::sleep(TICK).await;
                }
                jobs.state().running.remove(&id);
                drop(slot);
                jobs.shared.wake.notify_one();
            });
        }
        tokio::select! {
            () = &mut shutdown => {
                jobs.shared.stopping.store(true, Ordering::Release);
                return;
            }
            () = jobs.shared.wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Requests in flight that are not this runner's lines (live calls of either door).
fn live_calls(jobs: &JobsService) -> i64 {
    let held = jobs.shared.embed.metrics().requests_in_flight().get();
    let ours =
        i64::try_from(jobs.shared.lines_in_flight.load(Ordering::Acquire)).unwrap_or(i64::MAX);
    held.saturating_sub(ours).max(0)
}

/// Whether the runner should stop working lines of `id`, and why (a status it ends in), or
/// `Some(None)` for a shutdown.
fn stop_reason(jobs: &JobsService, id: &str) -> Option<Option<Status>> {
    if jobs.shared.stopping.load(Ordering::Acquire) {
        return Some(None);
    }
    let state = jobs.state();
    if state.lost.contains(id) {
        return Some(None);
    }
    let batch = state.batches.get(id)?;
    if batch.status == Status::Cancelling {
        return Some(Some(Status::Cancelled));
    }
    if now() >= batch.expires_at {
        return Some(Some(Status::Expired));
    }
    None
}

/// Takes batch `id` as far as it goes now.
pub(super) async fn drive(
    jobs: &JobsService,
    executor: &Arc<dyn Executor>,
    id: &str,
) -> Result<(), ServiceError> {
    let Some(mut batch) = jobs.state().batches.get(id).cloned() else {
        return Ok(());
    };
    if matches!(batch.status, Status::Validating | Status::InProgress) {
        let lines = match read_input(jobs, &batch).await? {
            Ok(lines) => lines,
            Err(errors) => {
                return update(jobs, id, |b| {
                    b.status = Status::Failed;
                    b.failed_at = Some(now());
                    b.errors = errors;
                })
                .await;
            }
        };
        if batch.status == Status::Validating {
            let total = lines.len() as u64;
            batch = match update_returning(jobs, id, |b| {
                if b.status == Status::Validating {
                    b.status = Status::InProgress;
                    b.in_progress_at = Some(now());
                    b.request_counts.total = total;
                }
            })
            .await?
            {
                Some(b) => b,
                None => return Ok(()),
            };
        }
        if batch.status == Status::InProgress {
            match run_lines(jobs, executor, &batch, lines).await? {
                // Shutting down: the next start goes on from the recorded lines.
                None => return Ok(()),
                Some(ending) => {
                    update(jobs, id, |b| {
                        b.status = Status::Finalizing;
                        b.finalizing_at = Some(now());
                        b.ending = Some(ending);
                    })
                    .await?;
                }
            }
        }
    }
    let batch = jobs.state().batches.get(id).cloned();
    let Some(batch) = batch else { return Ok(()) };
    match batch.status {
        Status::Cancelling => {
            update(jobs, id, |b| {
                b.status = Status::Finalizing;
                b.finalizing_at = Some(now());
                b.ending = Some(Status::Cancelled);
            })
            .await?;
            finalize(jobs, id).await
        }
        Status::Finalizing => finalize(jobs, id).await,
        _ => Ok(()),
    }
}

/// Changes the stored batch `id` with `change` (under the write lock), durably.
async fn update(
    jobs: &JobsService,
    id: &str,
    change: impl FnOnce(&mut Batch) + Send,
) -> Result<(), ServiceError> {
    update_returning(jobs, id, change).await.map(|_| ())
}

async fn update_returning(
    jobs: &JobsService,
    id: &str,
    change: impl FnOnce(&mut Batch) + Send,
) -> Result<Option<Batch>, ServiceError> {
    if let Some(pg) = &jobs.shared.pg {
        return jobs.update_shared(pg, id, change).await;
    }
    let _write = jobs.shared.writes.lock().await;
    let Some(mut batch) = jobs.state().batches.get(id).cloned() else {
        return Ok(None);
    };
    change(&mut batch);
    jobs.persist(&batch).await?;
    Ok(Some(batch))
}

/// The request lines of a batch's input file (read and parsed off the async threads), or why the
/// input is refused.
async fn read_input(
    jobs: &JobsService,
    batch: &Batch,
) -> Result<Result<Vec<Line>, Vec<InputError>>, ServiceError> {
    let content = match jobs.read_file_any(&batch.input_file_id).await? {
        Ok(content) => content,
        Err(e) => {
            return Ok(Err(vec![InputError {
                code: "input_file_unreadable".into(),
                message: format!("the input file could not be read: {e}"),
                param: Some("input_file_id".into()),
                line: None,
            }]));
        }
    };
    let endpoint = batch.endpoint;
    match tokio::task::spawn_blocking(move || parse_lines(&content, endpoint)).await {
        Ok(parsed) => Ok(parsed),
        Err(e) => Err(ServiceError::Internal(format!(
            "reading a batch input failed: {e}"
        ))),
    }
}

/// The request lines of a batch input, or why the input is refused (OpenAI's batch errors).
fn parse_lines(content: &[u8], endpoint: Endpoint) -> Result<Vec<Line>, Vec<InputError>> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in content.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line_no = i as u64 + 1;
        let mut error = |code: &str, param: Option<&str>, message: String| {
            if errors.len() < MAX_INPUT_ERRORS {
                errors.push(InputError {
                    code: code.into(),
                    message,
                    param: param.map(str::to_string),
                    line: Some(line_no),
                });
            }
        };
        let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(raw) else {
            error(
                "invalid_json_line",
                None,
                "this line is not a JSON object".into(),
            );
            continue;
        };
        let custom_id = match object.get("custom_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                error(
                    "missing_required_parameter",
                    Some("custom_id"),
                    "custom_id: a non-empty string is required".into(),
                );
                continue;
            }
        };
        if !seen.insert(custom_id.clone()) {
            error(
                "duplicate_custom_id",
                Some("custom_id"),
                format!("custom_id {custom_id:?} appears on an earlier line; each must be unique"),
            );
            continue;
        }
        if object.get("method").and_then(Value::as_str) != Some("POST") {
            error(
                "invalid_method",
                Some("method"),
                "method: must be \"POST\"".into(),
            );
            continue;
        }
        if object.get("url").and_then(Value::as_str) != Some(endpoint.path()) {
            error(
                "mismatched_endpoint",
                Some("url"),
                format!("url: must be the batch's endpoint {:?}", endpoint.path()),
            );
            continue;
        }
        let body = match object.remove("body") {
            Some(body @ Value::Object(_)) => body,
            _ => {
                error(
                    "missing_required_parameter",
                    Some("body"),
                    "body: a JSON object (the request) is required".into(),
                );
                continue;
            }
        };
        lines.push(Line { custom_id, body });
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(InputError {
            code: "empty_file".into(),
            message: "the input file has no request lines".into(),
            param: None,
            line: None,
        });
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

/// Runs the lines not recorded yet, `line_concurrency` at once. Returns how the batch ends
/// (`Completed`, `Cancelled`, `Expired`), or `None` when the server is shutting down.
async fn run_lines(
    jobs: &JobsService,
    executor: &Arc<dyn Executor>,
    batch: &Batch,
    lines: Vec<Line>,
) -> Result<Option<Status>, ServiceError> {
    let done = jobs.line_index_any(&batch.id).await?;
    let output_bytes = Arc::new(AtomicU64::new(
        done.values().map(|&(_, bytes)| bytes + 1).sum(),
    ));
    let counted = |jobs: &JobsService, ok: bool| {
        if let Some(b) = jobs.state().batches.get_mut(&batch.id) {
            if ok {
                b.request_counts.completed += 1;
            } else {
                b.request_counts.failed += 1;
            }
        }
    };
    if let Some(b) = jobs.state().batches.get_mut(&batch.id) {
        b.request_counts.completed = done.values().filter(|&&(ok, _)| ok).count() as u64;
        b.request_counts.failed = done.values().filter(|&&(ok, _)| !ok).count() as u64;
    }
    let usage = (!batch.owner.is_empty())
        .then(|| Usage::for_key(jobs.shared.embed.metrics(), batch.owner.as_str().into()));
    let mut tasks = JoinSet::new();
    let mut pending = lines
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !done.contains_key(i));
    let concurrency = jobs.shared.config.line_concurrency.max(1);
    let mut stopped = None;
    loop {
        while stopped.is_none() && tasks.len() < if live_calls(jobs) > 0 { 1 } else { concurrency }
        {
            if let Some(reason) = stop_reason(jobs, &batch.id) {
                stopped = Some(reason);
                break;
            }
            let Some((index, line)) = pending.next() else {
                break;
            };
            let (jobs, executor, usage, output_bytes) = (
                jobs.clone(),
                Arc::clone(executor),
                usage.clone(),
                Arc::clone(&output_bytes),
            );
            let batch_id = batch.id.clone();
            let endpoint = batch.endpoint;
            tasks.spawn(async move {
                let record = run_line(
                    &jobs,
                    &executor,
                    &batch_id,
                    endpoint,
                    line,
                    usage,
                    &output_bytes,
                )
                .await;
                match record {
                    Some((ok, line)) => jobs
                        .write_line_any(&batch_id, index, ok, line)
                        .await
                        .map(|()| Some(ok)),
                    None => Ok(None),
                }
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok(Ok(Some(ok))) => counted(jobs, ok),
            Ok(Ok(None)) => {
                if stopped.is_none() {
                    stopped = stop_reason(jobs, &batch.id).or(Some(None));
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(ServiceError::Internal(format!(
                    "a batch line task failed: {e}"
                )));
            }
        }
    }
    Ok(match stopped {
        None => Some(Status::Completed),
        Some(reason) => reason,
    })
}

/// Runs one line until it has an answer (busy answers are retried), as the batch owner's call at
/// background priority. `None`: stopped (cancel, expiry, shutdown) before it had one.
async fn run_line(
    jobs: &JobsService,
    executor: &Arc<dyn Executor>,
    batch_id: &str,
    endpoint: Endpoint,
    line: Line,
    usage: Option<Usage>,
    output_bytes: &AtomicU64,
) -> Option<(bool, Value)> {
    let mut wait = Duration::from_millis(100);
    let mut first = true;
    let answer = loop {
        let work = priority::background(executor.execute(endpoint, line.body.clone()));
        let started = Instant::now();
        jobs.shared.lines_in_flight.fetch_add(1, Ordering::AcqRel);
        let answer = if first {
            usage::scoped(usage.clone(), work).await
        } else {
            usage::carried(usage.clone(), work).await
        };
        jobs.shared.lines_in_flight.fetch_sub(1, Ordering::AcqRel);
        first = false;
        // Live calls in flight: step back, so the job takes about a quarter of the time its lines
        // need (the batchers order rows, but decoding, tokenizing and JSON take the same cores).
        if live_calls(jobs) > 0 {
            tokio::time::sleep(started.elapsed() * YIELD_FACTOR).await;
        }
        if !matches!(answer.status_code, 429 | 503) {
            break answer;
        }
        if stop_reason(jobs, batch_id).is_some() {
            return None;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    };
    let ok = (200..300).contains(&answer.status_code);
    let id = format!("batch_req_{}", uuid::Uuid::new_v4().simple());
    let line_json = json!({
            "id": id,
            "custom_id": line.custom_id,
            "response": {
                "status_code": answer.status_code,
                "request_id": crate::telemetry::request_id(None),
                "body": answer.body,
            },
            "error": null,
    });
    let size = line_json.to_string().len() as u64 + 1;
    let max = jobs.shared.config.max_output_bytes;
    let fits = output_bytes
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used + size <= max).then_some(used + size)
        })
        .is_ok();
    if !fits {
        let message = format!(
            "this answer would take the batch's output past {max} bytes (--batch-max-output-bytes)"
        );
        return Some((
            false,
            error_line(&id, &line.custom_id, "output_too_large", &message),
        ));
    }
    Some((ok, line_json))
}

/// An output line for a request that has no response (OpenAI's `error` object).
fn error_line(id: &str, custom_id: &str, code: &str, message: &str) -> Value {
    json!({
        "id": id,
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
}

/// Writes the output and error files of a finalizing batch from its line records (in input
/// order, streamed; an expired batch's unrun lines as `batch_expired` errors), then its final
/// state. Idempotent: the files' ids derive from the batch's, so a crash midway is finalized again
/// from the same records into the same files.
async fn finalize(jobs: &JobsService, id: &str) -> Result<(), ServiceError> {
    let Some(batch) = jobs.state().batches.get(id).cloned() else {
        return Ok(());
    };
    let ending = batch.ending.unwrap_or(Status::Completed);
    let index = jobs.line_index_any(&batch.id).await?;
    let mut counts = batch.request_counts;
    counts.completed = index.values().filter(|&&(ok, _)| ok).count() as u64;
    counts.failed = index.values().filter(|&&(ok, _)| !ok).count() as u64;
    let mut extra = Vec::new();
    if ending == Status::Expired
        && let Ok(lines) = read_input(jobs, &batch).await?
    {
        for (i, line) in lines.iter().enumerate() {
            if !index.contains_key(&i) {
                let id = format!("batch_req_{}", uuid::Uuid::new_v4().simple());
                extra.push(error_line(
                    &id,
                    &line.custom_id,
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                ));
            }
        }
        counts.failed += extra.len() as u64;
    }
    // Derived from the batch id, so finalizing again overwrites instead of adding a file.
    let stem = batch.id.strip_prefix("batch_").unwrap_or(&batch.id);
    let meta = |suffix: &str, seq: u64| super::FileMeta {
        id: format!("file-{stem}{}", &suffix[..1]),
        owner: batch.owner.clone(),
        bytes: 0,
        created_at: now(),
        filename: format!("{}_{suffix}.jsonl", batch.id),
        purpose: "batch_output".into(),
        seq,
    };
    let (output, errors) = (
        meta("output", jobs.next_seq()),
        meta("error", jobs.next_seq()),
    );
    let (output, errors) = jobs.assemble_any(&batch.id, output, errors, extra).await?;
    update(jobs, id, |b| {
        let at = Some(now());
        match ending {
            Status::Cancelled => b.cancelled_at = at,
            Status::Expired => b.expired_at = at,
            _ => b.completed_at = at,
        }
        b.status = ending;
        b.ending = None;
        b.request_counts = counts;
        b.output_file_id = output.map(|f| f.id);
        b.error_file_id = errors.map(|f| f.id);
    })
    .await?;
    jobs.remove_lines_any(&batch.id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_lines_are_checked_as_openai_does() {
        let ok =
            br#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"input":"x"}}"#;
        let lines = parse_lines(ok, Endpoint::Embeddings).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].custom_id, "a");
        let bad = [
            (&br#"[1]"#[..], "invalid_json_line"),
            (
                br#"{"method":"POST","url":"/v1/embeddings","body":{}}"#,
                "missing_required_parameter",
            ),
            (
                br#"{"custom_id":"a","method":"GET","url":"/v1/embeddings","body":{}}"#,
                "invalid_method",
            ),
            (
                br#"{"custom_id":"a","method":"POST","url":"/v1/classify","body":{}}"#,
                "mismatched_endpoint",
            ),
            (
                br#"{"custom_id":"a","method":"POST","url":"/v1/embeddings"}"#,
                "missing_required_parameter",
            ),
            (b"\n\n", "empty_file"),
        ];
        for (raw, code) in bad {
            let errors = parse_lines(raw, Endpoint::Embeddings).err().unwrap();
            assert_eq!(errors[0].code, code, "{}", String::from_utf8_lossy(raw));
        }
        let twice = [&ok[..], b"\n", &ok[..]].concat();
        let errors = parse_lines(&twice, Endpoint::Embeddings).err().unwrap();
        assert_eq!(
            (errors[0].code.as_str(), errors[0].line),
            ("duplicate_custom_id", Some(2))
        );
    }
}
