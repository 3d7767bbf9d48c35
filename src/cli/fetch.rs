//! Image URLs: whether they are fetched, which hosts may be private or plain http, and the size,
//! time, redirect and concurrency bounds of a fetch.

use std::time::Duration;

use clap::Args;

use crate::{common::parse_duration, embed::fetch::FetchConfig};

/// The image fetcher. `--fetch-allow-hosts` requires `--fetch-image-urls` (clap's `requires`).
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Fetch images given as http(s) URLs (off: URLs get a 400). Only https, and only public
    /// addresses (every resolved address and redirect checked), unless --fetch-allow-hosts says so.
    #[arg(long, env = "CLIP_SERVE_FETCH_IMAGE_URLS", display_order = 170)]
    pub fetch_image_urls: bool,

    /// Hosts that may be fetched over plain http and may be private or loopback: `host`,
    /// `*.example.com` (any subdomain), an address (`10.0.0.5`, `[fd00::1]`), each with an optional
    /// `:PORT`. Comma-separated.
    #[arg(
        long,
        env = "CLIP_SERVE_FETCH_ALLOW_HOSTS",
        value_delimiter = ',',
        requires = "fetch_image_urls",
        display_order = 180
    )]
    pub fetch_allow_hosts: Vec<String>,

    /// Largest fetched image, in bytes (default: --max-image-bytes); the body is dropped as soon as
    /// it passes this.
    #[arg(long, env = "CLIP_SERVE_FETCH_MAX_BYTES", display_order = 190)]
    pub fetch_max_bytes: Option<u64>,

    /// Longest one image fetch may take (waiting for a slot, redirects and body included).
    #[arg(long, env = "CLIP_SERVE_FETCH_TIMEOUT", default_value = "10s", value_parser = parse_duration, display_order = 200)]
    pub fetch_timeout: Duration,

    /// Most redirects followed per fetch (each hop is checked like the first).
    #[arg(
        long,
        env = "CLIP_SERVE_FETCH_MAX_REDIRECTS",
        default_value_t = 3,
        display_order = 210
    )]
    pub fetch_max_redirects: u32,

    /// Image fetches at once, over all requests.
    #[arg(
        long,
        env = "CLIP_SERVE_FETCH_CONCURRENCY",
        default_value_t = 16,
        display_order = 220
    )]
    pub fetch_concurrency: u32,

    /// Image fetches of one request at once, a share of --fetch-concurrency (default: a quarter of
    /// it, at least 1), so one request of many slow URLs cannot hold every fetch slot.
    #[arg(
        long,
        env = "CLIP_SERVE_FETCH_CONCURRENCY_PER_REQUEST",
        display_order = 230
    )]
    pub fetch_concurrency_per_request: Option<u32>,
}

impl FetchArgs {
    /// The `--fetch-*` flags, checked (`None` without `--fetch-image-urls`).
    pub(super) fn config(&self, max_image_bytes: usize) -> Result<Option<FetchConfig>, String> {
        if !self.fetch_image_urls {
            // clap refuses --fetch-allow-hosts without --fetch-image-urls; this is for
            // CLIP_SERVE_FETCH_IMAGE_URLS=false, which is present (so `requires` is met) but off.
            if !self.fetch_allow_hosts.is_empty() {
                return Err("--fetch-allow-hosts needs --fetch-image-urls".into());
            }
            return Ok(None);
        }
        let allow_hosts = self
            .fetch_allow_hosts
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.parse().map_err(|e| format!("--fetch-allow-hosts: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let max_bytes = match self.fetch_max_bytes {
            None => max_image_bytes,
            Some(0) => return Err("--fetch-max-bytes must be greater than 0".into()),
            Some(n) => usize::try_from(n)
                .map_err(|_| format!("--fetch-max-bytes {n} is too large"))?
                .min(max_image_bytes),
        };
        if self.fetch_timeout.is_zero() {
            return Err("--fetch-timeout must be greater than 0".into());
        }
        if self.fetch_concurrency == 0 {
            return Err("--fetch-concurrency must be greater than 0".into());
        }
        let concurrency = self.fetch_concurrency as usize;
        let per_request = match self.fetch_concurrency_per_request {
            None => FetchConfig::default_per_request(concurrency),
            Some(0) => return Err("--fetch-concurrency-per-request must be greater than 0".into()),
            Some(n) => (n as usize).min(concurrency),
        };
        Ok(Some(FetchConfig {
            allow_hosts,
            max_bytes,
            timeout: self.fetch_timeout,
            max_redirects: self.fetch_max_redirects,
            concurrency,
            per_request,
        }))
    }
}
