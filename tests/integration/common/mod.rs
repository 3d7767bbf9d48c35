//! Shared helpers for integration tests: start the real server in-process on 127.0.0.1:0 with a
//! fixture model and connect generated clients.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use clip_serve::{
    Config,
    grpc::pb::{embed_client::EmbedClient, info_client::InfoClient},
    server::{RunningServer, StartOptions, start},
};
use tonic::transport::Channel;

/// A committed fixture file (relative to `tests/fixtures`) as an image payload.
pub fn read_fixture(relative: impl AsRef<Path>) -> bytes::Bytes {
    let path = fixtures().join(relative);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into()
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// The tiny test model (standard export: float NCHW, int64 ids, dynamic batch).
pub fn tiny_model() -> PathBuf {
    fixtures().join("model")
}

/// The same weights exported the other way (uint8 NHWC, int32 ids, static batch 1, normalized outputs).
pub fn tiny_model_immich() -> PathBuf {
    fixtures().join("model-immich")
}

/// A test configuration: ephemeral port, the library from scripts/setup.sh (or ORT_DYLIB_PATH).
pub fn config(model_dir: &Path) -> Config {
    let mut config = Config::for_model(model_dir);
    // `for_model` reads no environment; where the library is, is the one thing a test takes from it.
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        config.ort_dylib_path = path.into();
    }
    config.intra_op_threads = 1;
    config.data_dir = fresh_data_dir();
    config
}

/// An empty data directory that outlives the test (under the system temp dir).
pub fn fresh_data_dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("clip-serve-test-data")
        .tempdir()
        .expect("temp dir")
        .keep()
}

pub struct TestServer {
    pub server: RunningServer,
    pub channel: Channel,
}

impl TestServer {
    pub fn embed(&self) -> EmbedClient<Channel> {
        EmbedClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }

    pub fn info(&self) -> InfoClient<Channel> {
        InfoClient::new(self.channel.clone())
    }
}

pub async fn connect(server: &RunningServer) -> Channel {
    let url = format!("http://{}", server.grpc_addr);
    Channel::from_shared(url)
        .expect("valid url")
        .connect()
        .await
        .expect("connect to the test server")
}

/// Starts a server and waits until it is ready.
pub async fn serve(config: Config) -> TestServer {
    let mut server = start(config, StartOptions::default())
        .await
        .expect("server starts");
    server.wait_ready().await.expect("model loads");
    let channel = connect(&server).await;
    TestServer { server, channel }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// The reference outputs of open_clip's own pipeline (scripts/reference.py).
#[derive(Debug, serde::Deserialize)]
pub struct Reference {
    pub context_length: usize,
    pub embed_dim: usize,
    pub texts: Vec<TextRef>,
    pub images: Vec<ImageRef>,
}

#[derive(Debug, serde::Deserialize)]
pub struct TextRef {
    pub text: String,
    pub ids: Vec<i64>,
    pub embedding: Vec<f32>,
}

#[derive(Debug, serde::Deserialize)]
pub struct ImageRef {
    pub file: String,
    pub pil_mode: String,
    pub width: u32,
    pub height: u32,
    pub pixels: String,
    pub embedding: Vec<f32>,
}

pub fn reference() -> Reference {
    let path = fixtures().join("reference").join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Decodes an 8-bit RGB PNG into HWC bytes.
pub fn read_rgb_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!(
        info.color_type,
        png::ColorType::Rgb,
        "{}: expected RGB",
        path.display()
    );
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Copies a model directory, for tests that break or remove parts of it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A plain HTTP/1.1 GET (the tests need no HTTP client crate): the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse_http(&raw).unwrap_or_else(|| panic!("no HTTP response from {addr}"))
}

/// Status and body (de-chunked) of a raw HTTP/1.1 response; `None` when there is no response (the
/// server closed the connection without one).
pub fn parse_http(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// The body of a `Transfer-Encoding: chunked` response.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// The value of one Prometheus sample line (`name{labels} value`) in a /metrics body, if present.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
