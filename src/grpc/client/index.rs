//! `clip-serve index DIR --addr URL --collection NAME`: upserts a folder of photos into a
//! collection through the public Retrieve API.
//!
//! - Images are found by content (the server's own format sniffing), not by extension.
//! - Ids are the files' paths relative to DIR with `/` separators, so a re-run skips what is
//!   already in the collection (GetItems) and indexing is resumable after any interruption.
//! - Upserts go in batches bounded by items and bytes (and by the server's own limits, read from
//!   Info), at most `--concurrency` at once. One bad file fails alone: the server names it
//!   (`items[i]`), it is recorded and the rest of its batch is sent again without it. Transient
//!   refusals (UNAVAILABLE, RESOURCE_EXHAUSTED) are retried with back-off.
//! - Progress: a bar with rate and ETA on a terminal, a line every few seconds otherwise.
//! - The end: counts and every failed file with its reason; the exit code is non-zero if any failed.

use std::{
    collections::HashMap,
    io::{IsTerminal, Read},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{sync::Semaphore, task::JoinSet};
use tonic::Code;

use super::Connection;
use crate::{grpc::pb, preprocess::image::sniff};

#[derive(Debug, Clone, clap::Args)]
pub struct IndexArgs {
    /// Folder of images (found by content, whatever their extension).
    pub dir: PathBuf,
    /// The server's gRPC address.
    #[arg(
        long,
        env = "CLIP_SERVE_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// Collection to upsert into.
    #[arg(long)]
    pub collection: String,
    /// Create the collection first if it does not exist (with the served model's dimension).
    #[arg(long)]
    pub create: bool,
    /// Walk sub-folders too.
    #[arg(long)]
    pub recursive: bool,
    /// Upsert calls in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Most images per Upsert (also bounded by the server's --max-items-per-request).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Most image bytes per Upsert (also bounded by the server's --max-message-bytes).
    #[arg(long, default_value_t = 16 << 20)]
    pub batch_bytes: u64,
    /// Store `path`, `dir` and `name` of each file as metadata (so searches can filter by folder).
    #[arg(long)]
    pub metadata_from_path: bool,
    /// API key, when the server requires one.
    #[arg(long, env = "CLIP_SERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IndexReport {
    /// Images found in the folder.
    pub images: usize,
    /// Upserted by this run.
    pub indexed: usize,
    /// Already in the collection (skipped).
    pub already_present: usize,
    /// Files that are not images (skipped).
    pub not_images: usize,
    /// Files that failed, with the reason.
    pub failed: Vec<(String, String)>,
}

/// One image to upsert.
struct File {
    id: String,
    path: PathBuf,
}

const RETRIES: u32 = 6;
const GET_ITEMS_CHUNK: usize = 100;

/// Runs the indexer; `Err` only when nothing could be done (no server, no such folder or
/// collection); per-file failures are in the report.
pub async fn run(args: &IndexArgs) -> anyhow::Result<IndexReport> {
    anyhow::ensure!(
        args.concurrency > 0 && args.batch > 0 && args.batch_bytes > 0,
        "--concurrency, --batch and --batch-bytes must be positive"
    );
    let mut report = IndexReport::default();
    let files = walk(args, &mut report)?;
    report.images = files.len();
    let connection = Arc::new(Connection::open(&args.addr, args.api_key.as_deref()).await?);
    let mut retrieve = connection.retrieve();
    let limits = connection
        .info()
        .get_info(connection.request(pb::GetInfoRequest {}))
        .await
        .context("Info.GetInfo")?
        .into_inner()
        .limits
        .unwrap_or_default();
    if args.create {
        let created = retrieve
            .create_collection(connection.request(pb::CreateCollectionRequest {
                name: args.collection.clone(),
                ..Default::default()
            }))
            .await;
        match created {
            Ok(_) => eprintln!("created collection {:?}", args.collection),
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => anyhow::bail!("CreateCollection {:?}: {}", args.collection, s.message()),
        }
    }
    // Resume: what the collection already has is skipped.
    let mut todo = Vec::with_capacity(files.len());
    for chunk in files.chunks(GET_ITEMS_CHUNK) {
        let reply = retrieve
            .get_items(connection.request(pb::GetItemsRequest {
                collection: args.collection.clone(),
                ids: chunk.iter().map(|f| f.id.clone()).collect(),
            }))
            .await
            .map_err(|s| anyhow::anyhow!("GetItems in {:?}: {}", args.collection, s.message()))?
            .into_inner();
        let present: std::collections::HashSet<String> =
            reply.items.into_iter().map(|i| i.id).collect();
        report.already_present += present.len();
        todo.extend(chunk.iter().filter(|f| !present.contains(&f.id)));
    }
    let max_items = match limits.max_items_per_request {
        0 => args.batch,
        n => args.batch.min(n as usize),
    };
    let max_image_bytes = limits.max_image_bytes;
    // Leave room for ids, metadata and framing under the server's message limit.
    let max_batch_bytes = match limits.max_message_bytes {
        0 => args.batch_bytes,
        n => args.batch_bytes.min(n.saturating_sub(1 << 20).max(1 << 20)),
    };

    let progress = Progress::start(todo.len() as u64);
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks: JoinSet<(usize, Vec<(String, String)>)> = JoinSet::new();
    let mut batch: Vec<pb::Item> = Vec::new();
    let mut batch_bytes = 0u64;
    let mut outcomes: Vec<BatchOutcome> = Vec::new();
    for file in todo {
        let bytes = match read_file(&file.path, max_image_bytes) {
            Ok(bytes) => bytes,
            Err(reason) => {
                report.failed.push((file.id.clone(), reason));
                progress.inc();
                continue;
            }
        };
        if !batch.is_empty()
            && (batch.len() >= max_items || batch_bytes + bytes.len() as u64 > max_batch_bytes)
        {
            let full = std::mem::take(&mut batch);
            batch_bytes = 0;
            spawn_batch(&mut tasks, &slots, &connection, args, full, &progress).await;
            while let Some(done) = tasks.try_join_next() {
                outcomes.push(done);
            }
        }
        batch_bytes += bytes.len() as u64;
        batch.push(pb::Item {
            id: file.id.clone(),
            content: Some(pb::item::Content::Image(bytes.into())),
            metadata: if args.metadata_from_path {
                path_metadata(&file.id)
            } else {
                HashMap::new()
            },
        });
    }
    if !batch.is_empty() {
        spawn_batch(&mut tasks, &slots, &connection, args, batch, &progress).await;
    }
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done);
    }
    progress.finish();
    for outcome in outcomes {
        match outcome {
            Ok((indexed, failed)) => {
                report.indexed += indexed;
                report.failed.extend(failed);
            }
            Err(e) => report.failed.push(("(batch)".into(), e.to_string())),
        }
    }
    report.failed.sort();
    Ok(report)
}

type BatchOutcome = Result<(usize, Vec<(String, String)>), tokio::task::JoinError>;

async fn spawn_batch(
    tasks: &mut JoinSet<(usize, Vec<(String, String)>)>,
    slots: &Arc<Semaphore>,
    connection: &Arc<Connection>,
    args: &IndexArgs,
    items: Vec<pb::Item>,
    progress: &Progress,
) {
    // Wait for a free slot here, so at most `concurrency` batches are read into memory.
    let Ok(slot) = Arc::clone(slots).acquire_owned().await else {
        return;
    };
    let (connection, collection, progress) = (
        Arc::clone(connection),
        args.collection.clone(),
        progress.clone(),
    );
    tasks.spawn(async move {
        let _slot = slot;
        upsert_batch(&connection, &collection, items, &progress).await
    });
}

/// Upserts `items`; a file the server refuses is dropped from the batch and recorded, and the
/// rest is sent again. Returns (upserted, failures).
async fn upsert_batch(
    connection: &Connection,
    collection: &str,
    mut items: Vec<pb::Item>,
    progress: &Progress,
) -> (usize, Vec<(String, String)>) {
    let mut failed = Vec::new();
    let mut retrieve = connection.retrieve();
    let mut attempt = 0;
    while !items.is_empty() {
        let request = connection.request(pb::UpsertRequest {
            collection: collection.to_string(),
            items: items.clone(),
            model: String::new(),
        });
        match retrieve.upsert(request).await {
            Ok(_) => {
                let n = items.len();
                progress.add(n as u64);
                return (n, failed);
            }
            Err(status) => match (status.code(), failed_item(status.message())) {
                (Code::InvalidArgument, Some(i)) if i < items.len() => {
                    let item = items.remove(i);
                    failed.push((item.id, strip_item_prefix(status.message())));
                    progress.inc();
                }
                (Code::Unavailable | Code::ResourceExhausted | Code::Aborted, _)
                    if attempt < RETRIES =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                }
                _ => {
                    let reason = format!("{:?}: {}", status.code(), status.message());
                    progress.add(items.len() as u64);
                    failed.extend(items.drain(..).map(|item| (item.id, reason.clone())));
                }
            },
        }
    }
    (0, failed)
}

/// `i` of the first `items[i]` in a server message.
fn failed_item(message: &str) -> Option<usize> {
    let start = message.find("items[")? + "items[".len();
    let end = start + message[start..].find(']')?;
    message[start..end].parse().ok()
}

/// "items[3].image: corrupt ..." -> "corrupt ...".
fn strip_item_prefix(message: &str) -> String {
    match message.split_once(": ") {
        Some((head, rest)) if head.starts_with("items[") => rest.to_string(),
        _ => message.to_string(),
    }
}

fn path_metadata(id: &str) -> HashMap<String, String> {
    let (dir, name) = id.rsplit_once('/').unwrap_or(("", id));
    HashMap::from([
        ("path".to_string(), id.to_string()),
        ("dir".to_string(), dir.to_string()),
        ("name".to_string(), name.to_string()),
    ])
}

/// The images under `args.dir`, sorted by id; other files are counted, unreadable ones recorded.
fn walk(args: &IndexArgs, report: &mut IndexReport) -> anyhow::Result<Vec<File>> {
    anyhow::ensure!(args.dir.is_dir(), "{} is not a folder", args.dir.display());
    let walker = walkdir::WalkDir::new(&args.dir)
        .max_depth(if args.recursive { usize::MAX } else { 1 })
        .sort_by_file_name();
    let mut files = Vec::new();
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let at = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                report.failed.push((at, e.to_string()));
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path().to_path_buf();
        let Some(id) = relative_id(&args.dir, &path) else {
            report.failed.push((
                path.display().to_string(),
                "the path is not UTF-8 or is over 256 bytes, so it cannot be an id".into(),
            ));
            continue;
        };
        match is_image(&path) {
            Ok(true) => files.push(File { id, path }),
            Ok(false) => report.not_images += 1,
            Err(e) => report.failed.push((id, format!("cannot read: {e}"))),
        }
    }
    Ok(files)
}

/// The path relative to `root` with `/` separators, if it can be an id (UTF-8, 1-256 bytes).
fn relative_id(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = relative
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect();
    let id = parts?.join("/");
    (!id.is_empty() && id.len() <= 256).then_some(id)
}

fn is_image(path: &Path) -> std::io::Result<bool> {
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(sniff(&head[..n]).is_some())
}

fn read_file(path: &Path, max_image_bytes: u64) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if max_image_bytes > 0 && size > max_image_bytes {
        return Err(format!(
            "{size} bytes, over the server's --max-image-bytes ({max_image_bytes})"
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// A progress bar with rate and ETA on a terminal; a plain line every few seconds otherwise.
#[derive(Clone)]
struct Progress {
    bar: ProgressBar,
    ticker: Option<Arc<tokio::task::JoinHandle<()>>>,
}

impl Progress {
    fn start(total: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if std::io::stderr().is_terminal() {
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}  {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            return Progress { bar, ticker: None };
        }
        bar.set_draw_target(ProgressDrawTarget::hidden());
        let watched = bar.clone();
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            every.tick().await;
            loop {
                every.tick().await;
                let (done, total) = (watched.position(), watched.length().unwrap_or(0));
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let eta = if rate > 0.0 {
                    format!("{:.0} s", total.saturating_sub(done) as f64 / rate)
                } else {
                    "?".into()
                };
                eprintln!("indexed {done}/{total} images, {rate:.1} images/s, ETA {eta}");
            }
        });
        Progress {
            bar,
            ticker: Some(Arc::new(ticker)),
        }
    }

    fn inc(&self) {
        self.bar.inc(1);
    }

    fn add(&self, n: u64) {
        self.bar.inc(n);
    }

    fn finish(&self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}

/// The report as people read it, one failed file per line.
pub fn render(report: &IndexReport, elapsed: Duration) -> String {
    let mut out = format!(
        "{} images found: {} indexed ({:.1} images/s), {} already present, {} failed; {} other files skipped\n",
        report.images,
        report.indexed,
        report.indexed as f64 / elapsed.as_secs_f64().max(1e-9),
        report.already_present,
        report.failed.len(),
        report.not_images,
    );
    for (id, reason) in &report.failed {
        out.push_str(&format!("FAILED {id}: {reason}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_item_is_read_from_the_servers_message() {
        assert_eq!(failed_item("items[3].image: corrupt JPEG"), Some(3));
        assert_eq!(failed_item("items[12]: too large"), Some(12));
        assert_eq!(failed_item("collection: not found"), None);
        assert_eq!(
            strip_item_prefix("items[3].image: corrupt JPEG"),
            "corrupt JPEG"
        );
        assert_eq!(strip_item_prefix("something else: x"), "something else: x");
    }

    #[test]
    fn ids_are_relative_paths_with_slashes() {
        let root = Path::new("/photos");
        assert_eq!(
            relative_id(root, Path::new("/photos/2024/a.jpg")).as_deref(),
            Some("2024/a.jpg")
        );
        let long = format!("/photos/{}", "x".repeat(300));
        assert_eq!(relative_id(root, Path::new(&long)), None);
        let m = path_metadata("2024/trip/a.jpg");
        assert_eq!(m["dir"], "2024/trip");
        assert_eq!(m["name"], "a.jpg");
        assert_eq!(path_metadata("a.jpg")["dir"], "");
    }
}
