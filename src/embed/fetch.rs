//! Opt-in image URL fetching (`--fetch-image-urls`), below both doors: a URL in, the image's bytes
//! out (the caller sends them through the normal image path, which sniffs the format from the
//! content, never from `Content-Type`). Nothing here knows HTTP servers; gRPC can use it as is.
//!
//! What keeps it from being a way into the server's network:
//! - https only, unless the host is in `--fetch-allow-hosts`;
//! - every address a host resolves to is checked (private, loopback, link-local, CGNAT,
//!   unspecified, multicast, documentation and reserved ranges are refused unless the host is
//!   allowed), and the connection goes to exactly the checked addresses: the client's DNS resolver
//!   is this module's, so nothing resolves the name again between the check and the connect;
//! - redirects are followed here, hop by hop, each hop checked like the first
//!   (`--fetch-max-redirects`);
//! - no proxy (the environment's `HTTP_PROXY` would connect elsewhere), no decompression;
//! - the body is read as it streams and dropped at `--fetch-max-bytes`; the whole fetch, waiting
//!   for a slot included, is bounded by `--fetch-timeout`; `--fetch-concurrency` fetches at once.
//!
//! What keeps it from being a way to exhaust the server:
//! - the body is charged to the byte budget (`--max-inflight-bytes`) as it arrives, in
//!   [`CHARGE_STEP`] steps, never by its declared `Content-Length`; a body the budget cannot take
//!   is dropped with [`FetchError::Busy`] (429). The charge travels with the returned [`Bytes`]
//!   and is released when the last clone of them is dropped;
//! - one request's URLs ([`Fetcher::fetch_all`]) take at most `--fetch-concurrency-per-request`
//!   of the `--fetch-concurrency` slots at once (default a quarter), so one request of 64 URLs
//!   to a slow host cannot hold every slot.
//!
//! Each fetch counts in `clip_image_fetches_total{outcome}`.

use crate::common::limit::{
    FETCH_ALLOW_HOSTS, FETCH_MAX_BYTES, FETCH_MAX_REDIRECTS, FETCH_TIMEOUT, MAX_INFLIGHT_BYTES,
};
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use prometheus::IntCounterVec;
use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
    header, redirect,
};
use tokio::sync::Semaphore;

use crate::admission::bytes::{ByteBudget, BytesPermit};

/// A fetched body is charged to the byte budget this many bytes at a time, as it arrives.
pub const CHARGE_STEP: usize = 64 * 1024;

/// `--fetch-*`.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchConfig {
    /// Hosts that may be private or loopback and may use plain http.
    pub allow_hosts: Vec<HostPattern>,
    pub max_bytes: usize,
    pub timeout: Duration,
    pub max_redirects: u32,
    pub concurrency: usize,
    /// Fetches of one request at once (`--fetch-concurrency-per-request`).
    pub per_request: usize,
}

impl FetchConfig {
    /// The default share of `concurrency` one request may take: a quarter, at least one.
    pub fn default_per_request(concurrency: usize) -> usize {
        (concurrency / 4).max(1)
    }
}

/// An entry of `--fetch-allow-hosts`: `images.example.com`, `*.example.com` (any subdomain),
/// `10.0.0.5`, `[fd00::1]`, each optionally with `:PORT` (then only that port).
#[derive(Debug, Clone, PartialEq)]
pub struct HostPattern {
    host: PatternHost,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
enum PatternHost {
    Exact(String),
    /// `*.example.com`: the suffix with its dot (`.example.com`).
    Subdomains(String),
    Ip(IpAddr),
}

impl std::str::FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = |why: &str| format!("host pattern {s:?}: {why}");
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.contains("://") || s.contains('/') {
            return Err(bad("a host (and optional :port), not a URL"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("expected `:PORT`"))?),
            };
            (ip, port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                _ => (s, None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))
            })
            .transpose()?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = if let Ok(ip) = host.parse::<IpAddr>() {
            PatternHost::Ip(ip)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(bad("`*.` needs a domain after it"));
            }
            PatternHost::Subdomains(format!(".{suffix}"))
        } else if host.contains('*') {
            return Err(bad(
                "only a leading `*.` is a wildcard (allowing every host would allow the private network)",
            ));
        } else if host.is_empty() {
            return Err(bad("no host"));
        } else {
            PatternHost::Exact(host)
        };
        Ok(HostPattern { host, port })
    }
}

impl HostPattern {
    /// Whether `host` (a domain, lower case, or an address) matches, whatever the port.
    fn matches_host(&self, host: &Target) -> bool {
        match (&self.host, host) {
            (PatternHost::Exact(p), Target::Domain(d)) => p == d,
            (PatternHost::Subdomains(suffix), Target::Domain(d)) => d.ends_with(suffix.as_str()),
            (PatternHost::Ip(p), Target::Ip(ip)) => p == ip,
            _ => false,
        }
    }
}

/// A URL's host, as the patterns compare it.
enum Target {
    Domain(String),
    Ip(IpAddr),
}

impl Target {
    fn of(url: &Url) -> Option<Target> {
        Some(match url.host()? {
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                // A numeric host the URL parser left as a name is still an address.
                match d.parse::<IpAddr>() {
                    Ok(ip) => Target::Ip(ip),
                    Err(_) => Target::Domain(d),
                }
            }
            url::Host::Ipv4(ip) => Target::Ip(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Target::Ip(IpAddr::V6(ip)),
        })
    }
}

/// Why a fetch gave no image, with the `outcome` label it counts under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Not an http(s) URL this server may fetch (scheme, host, address, redirects).
    Refused(String),
    /// The body is over `--fetch-max-bytes`.
    TooLarge(String),
    /// `--fetch-timeout` passed.
    Timeout(String),
    /// The connection or the answer failed (DNS, TLS, a non-2xx status).
    Failed(String),
    /// The byte budget (`--max-inflight-bytes`) could not take the body: retry later (429).
    Busy(String),
}

impl FetchError {
    pub fn outcome(&self) -> &'static str {
        match self {
            FetchError::Refused(_) => "refused",
            FetchError::TooLarge(_) => "too_large",
            FetchError::Timeout(_) => "timeout",
            FetchError::Failed(_) => "error",
            FetchError::Busy(_) => "busy",
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Refused(m)
            | FetchError::TooLarge(m)
            | FetchError::Timeout(m)
            | FetchError::Failed(m)
            | FetchError::Busy(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for FetchError {}

/// Why an address may not be fetched without an allow entry, if it may not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(if ip.is_loopback() {
        "a loopback"
    } else if ip.is_private() {
        "a private"
    } else if ip.is_link_local() {
        "a link-local"
    } else if ip.is_unspecified() || a == 0 {
        "an unspecified (this-network)"
    } else if ip.is_multicast() {
        "a multicast"
    } else if ip.is_broadcast() {
        "a broadcast"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (CGNAT)"
    } else if ip.is_documentation() {
        "a documentation"
    } else if a == 192 && b == 88 && c == 99 {
        // 6to4 relay anycast (deprecated): whatever answers there relays into IPv6.
        "a 6to4 relay"
    } else if (a == 192 && b == 0 && c == 0) || (a == 198 && (18..20).contains(&b)) || a >= 240 {
        "a reserved"
    } else {
        return None;
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // IPv4-mapped (::ffff:0:0/96): the socket reaches the embedded IPv4 address itself.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // 6to4 (2002::/16) carries the IPv4 address that gets reached.
    if s[0] == 0x2002 {
        return forbidden_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    Some(if ip.is_loopback() {
        "a loopback"
    } else if ip.is_unspecified() {
        "an unspecified"
    } else if ip.is_multicast() {
        "a multicast"
    } else if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
        // NAT64, well-known (64:ff9b::/96) and local-use (64:ff9b:1::/48): a translator inside
        // the network reaches whatever IPv4 address is embedded, private ones included.
        "a NAT64"
    } else if s[0..6] == [0, 0, 0, 0, 0xffff, 0] {
        // IPv4-translated (::ffff:0:0:0/96, SIIT).
        "an IPv4-translated"
    } else if s[0] == 0x2001 && s[1] == 0 {
        // Teredo (2001::/32): a tunnel whose relay reaches the embedded (obfuscated) IPv4 host.
        "a Teredo"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "a private (unique local)"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "a link-local"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "a site-local"
    } else if (s[0] == 0x2001 && s[1] == 0xdb8) || s[0] & 0xfff0 == 0x3ff0 {
        // 2001:db8::/32 and 3fff::/20.
        "a documentation"
    } else if s[0..4] == [0x100, 0, 0, 0] {
        // The discard prefix (100::/64).
        "a discard-only"
    } else if s[0..6] == [0; 6] {
        // IPv4-compatible (deprecated) and the rest of ::/96.
        "a reserved"
    } else {
        return None;
    })
}

/// What the resolver hands back through reqwest (found again in the error's sources): a refusal,
/// or (`.1` false) a name that does not resolve.
#[derive(Debug)]
struct Refusal(String, bool);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// The client's only resolver: checks every address a name resolves to, and gives the connector
/// exactly those.
struct CheckedResolver {
    allow: Arc<[HostPattern]>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = Arc::clone(&self.allow);
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(resolve_checked(allow, host))
    }
}

async fn resolve_checked(
    allow: Arc<[HostPattern]>,
    host: String,
) -> Result<Addrs, Box<dyn std::error::Error + Send + Sync>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .map_err(|e| {
            tracing::debug!(%host, error = %e, "an image URL's host does not resolve");
            Refusal(format!("{host} does not resolve"), false)
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Refusal(format!("{host} resolves to no address"), false).into());
    }
    // The caller checked the port: a host matching a pattern here is allowed in full.
    let target = Target::Domain(host.clone());
    if !allow.iter().any(|p| p.matches_host(&target)) {
        for addr in &addrs {
            if let Some(kind) = forbidden(addr.ip()) {
                // The address stays in the server's log: a client learns nothing of the network
                // behind the server (which names are internal, and where they point).
                tracing::info!(%host, address = %addr.ip(), kind, "an image URL was refused: its host resolves to a non-public address");
                return Err(Refusal(
                    format!(
                        "{host} resolves to a non-public address; allow the host with {FETCH_ALLOW_HOSTS}"
                    ),
                    true,
                )
                .into());
            }
        }
    }
    Ok(Box::new(addrs.into_iter()))
}

struct Inner {
    config: FetchConfig,
    allow: Arc<[HostPattern]>,
    client: reqwest::Client,
    slots: Semaphore,
    fetches: IntCounterVec,
    /// `--max-inflight-bytes`, charged as bodies arrive (`None`: not charged).
    budget: Option<ByteBudget>,
}

/// Cheap to clone; clones share the client, its connections and the concurrency bound.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Fetcher {
    /// `fetches` is `clip_image_fetches_total` (labels: `outcome`); fetched bodies are charged to
    /// `budget` as they arrive.
    pub fn new(
        config: FetchConfig,
        fetches: IntCounterVec,
        budget: Option<ByteBudget>,
    ) -> Result<Fetcher, String> {
        let allow: Arc<[HostPattern]> = Arc::from(config.allow_hosts.clone());
        let client = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver {
                allow: Arc::clone(&allow),
            }))
            .connect_timeout(config.timeout)
            .user_agent(concat!("clip-serve/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the image fetch client: {e}"))?;
        for outcome in ["ok", "refused", "too_large", "timeout", "error", "busy"] {
            fetches.with_label_values(&[outcome]);
        }
        Ok(Fetcher {
            inner: Arc::new(Inner {
                slots: Semaphore::new(config.concurrency.max(1)),
                config,
                allow,
                client,
                fetches,
                budget,
            }),
        })
    }

    pub fn max_bytes(&self) -> usize {
        self.inner.config.max_bytes
    }

    /// The images at `urls`, in order, at most `--fetch-concurrency-per-request` at once. Once one
    /// fails, the fetches not started yet are not started (they answer with that failure): the
    /// first failure in input order is always among the answers.
    pub async fn fetch_all(&self, urls: Vec<String>) -> Vec<Result<Bytes, FetchError>> {
        let per_request = self.inner.config.per_request.max(1);
        let mut results: Vec<Option<Result<Bytes, FetchError>>> = vec![None; urls.len()];
        let mut running = tokio::task::JoinSet::new();
        let mut pending = urls.into_iter().enumerate();
        let mut failed: Option<FetchError> = None;
        loop {
            while failed.is_none() && running.len() < per_request {
                let Some((i, url)) = pending.next() else {
                    break;
                };
                let fetcher = self.clone();
                running.spawn(async move { (i, fetcher.fetch(&url).await) });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (i, result) = joined.unwrap_or_else(|e| {
                tracing::error!(error = %e, "an image fetch task failed");
                (
                    usize::MAX,
                    Err(FetchError::Failed(
                        "the fetch failed; the server logged why".into(),
                    )),
                )
            });
            if let Err(e) = &result {
                failed.get_or_insert_with(|| e.clone());
            }
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(result);
            }
        }
        let failed = failed.unwrap_or_else(|| FetchError::Failed("the fetch failed".into()));
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(failed.clone())))
            .collect()
    }

    /// The image at `url` (redirects followed and checked), within the limits.
    pub async fn fetch(&self, url: &str) -> Result<Bytes, FetchError> {
        let timeout = self.inner.config.timeout;
        let result = match tokio::time::timeout(timeout, async {
            let _slot = self
                .inner
                .slots
                .acquire()
                .await
                .map_err(|_| FetchError::Failed("the fetcher is closed".into()))?;
            self.follow(url).await
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(format!(
                "the fetch took longer than {timeout:?} ({FETCH_TIMEOUT})"
            ))),
        };
        let outcome = result.as_ref().map_or_else(FetchError::outcome, |_| "ok");
        self.inner.fetches.with_label_values(&[outcome]).inc();
        result
    }

    /// May `url` be requested? (The resolver checks the addresses of a domain.)
    fn check(&self, url: &Url) -> Result<(), FetchError> {
        let refused = |m: String| Err(FetchError::Refused(m));
        let scheme = url.scheme();
        if scheme != "https" && scheme != "http" {
            return refused(format!("{scheme}: URLs are not fetched (http(s) only)"));
        }
        let Some(target) = Target::of(url) else {
            return refused("the URL has no host".into());
        };
        let port = url.port_or_known_default();
        let host_matches: Vec<&HostPattern> = self
            .inner
            .allow
            .iter()
            .filter(|p| p.matches_host(&target))
            .collect();
        let allowed = host_matches
            .iter()
            .any(|p| p.port.is_none() || p.port == port);
        let host = url.host_str().unwrap_or_default();
        if !host_matches.is_empty() && !allowed {
            // The resolver lets a matching name be private: refuse the other ports here.
            return refused(format!(
                "{host} is allowed only on other ports ({FETCH_ALLOW_HOSTS})"
            ));
        }
        if let (Target::Ip(ip), false) = (&target, allowed)
            && let Some(kind) = forbidden(*ip)
        {
            return refused(format!(
                "{host} is {kind} address; allow it with {FETCH_ALLOW_HOSTS}"
            ));
        }
        if scheme != "https" && !allowed {
            return refused(format!(
                "not https ({host} is not in {FETCH_ALLOW_HOSTS}, so only https is fetched)"
            ));
        }
        Ok(())
    }

    async fn follow(&self, url: &str) -> Result<Bytes, FetchError> {
        let mut url =
            Url::parse(url).map_err(|e| FetchError::Refused(format!("not a valid URL: {e}")))?;
        let max_redirects = self.inner.config.max_redirects;
        let mut hop = 0;
        loop {
            self.check(&url)?;
            let response = self
                .inner
                .client
                .get(url.clone())
                .header(header::ACCEPT, "image/*")
                .send()
                .await
                .map_err(|e| request_error(&url, &e))?;
            let status = response.status();
            if status.is_redirection() {
                if hop == max_redirects {
                    return Err(FetchError::Refused(format!(
                        "more than {max_redirects} redirects ({FETCH_MAX_REDIRECTS})"
                    )));
                }
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| {
                        FetchError::Failed(format!("{url} redirects ({status}) with no Location"))
                    })?;
                url = url.join(location).map_err(|e| {
                    FetchError::Refused(format!("{url} redirects to an invalid URL: {e}"))
                })?;
                hop += 1;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Failed(format!("{url} answered {status}")));
            }
            return self.body(response).await;
        }
    }

    /// The body, never buffered past the limit, charged to the byte budget as it arrives.
    async fn body(&self, mut response: reqwest::Response) -> Result<Bytes, FetchError> {
        let max = self.inner.config.max_bytes;
        let too_large =
            || FetchError::TooLarge(format!("the image is over {max} bytes ({FETCH_MAX_BYTES})"));
        // A declared length is checked against the limit; it reserves nothing.
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut body = Charged::new(self.inner.budget.clone(), max);
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            tracing::info!(error = %error_chain(&e), "reading a fetched image failed");
            FetchError::Failed("reading the image failed (the connection broke)".into())
        })? {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend(&chunk)?;
        }
        Ok(body.freeze())
    }
}

/// A body being read, and what it holds of the byte budget: the bytes are charged before they are
/// kept, [`CHARGE_STEP`] at a time (never more than `--fetch-max-bytes` in all), and the charge
/// goes with the frozen [`Bytes`].
struct Charged {
    buf: Vec<u8>,
    max: usize,
    budget: Option<ByteBudget>,
    permits: Vec<BytesPermit>,
    charged: usize,
}

/// The frozen body with its charge: released when the last `Bytes` clone is dropped.
struct Owned {
    buf: Vec<u8>,
    _permits: Vec<BytesPermit>,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Charged {
    fn new(budget: Option<ByteBudget>, max: usize) -> Self {
        Charged {
            buf: Vec::new(),
            max,
            budget,
            permits: Vec::new(),
            charged: 0,
        }
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    /// Adds `chunk` (the caller checked it stays within `max`), charging it first.
    fn extend(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        let need = self.buf.len() + chunk.len();
        if let Some(budget) = &self.budget {
            while self.charged < need {
                let step = CHARGE_STEP
                    .min(self.max.saturating_sub(self.charged))
                    .max(need - self.charged);
                let permit = budget.try_take(step as u64).map_err(|_| {
                    FetchError::Busy(format!(
                        "the server holds as many request bytes as it may ({MAX_INFLIGHT_BYTES}); \
                         retry later"
                    ))
                })?;
                self.permits.push(permit);
                self.charged += step;
            }
            // Memory grows only as far as it is charged.
            if self.buf.capacity() < need {
                self.buf.reserve_exact(self.charged - self.buf.len());
            }
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    fn freeze(self) -> Bytes {
        if self.permits.is_empty() {
            return Bytes::from(self.buf);
        }
        Bytes::from_owner(Owned {
            buf: self.buf,
            _permits: self.permits,
        })
    }
}

/// A failed request: the resolver's refusal when it was one, else what went wrong in words that
/// name no address (the details, which may, go to the server's log).
fn request_error(url: &Url, error: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(Refusal(message, refused)) = e.downcast_ref::<Refusal>() {
            return if *refused {
                FetchError::Refused(message.clone())
            } else {
                FetchError::Failed(message.clone())
            };
        }
        source = e.source();
    }
    let host = url.host_str().unwrap_or_default();
    tracing::info!(%host, error = %error_chain(error), "an image fetch failed");
    if error.is_timeout() {
        return FetchError::Timeout(format!("connecting to {host} timed out"));
    }
    FetchError::Failed(if error.is_connect() {
        format!("connecting to {host} failed")
    } else {
        format!("requesting {host} failed")
    })
}

/// An error and its sources, for the log.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_private_internet_is_forbidden() {
        for (a, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "private"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("2002:c0a8:0101::1", "private"),
            ("2002:7f00:0001::1", "loopback"),
            // NAT64 reaches IPv4 through a translator inside the network: refused whatever the
            // embedded address (well-known and local-use prefixes).
            ("64:ff9b::a9fe:a9fe", "NAT64"),
            ("64:ff9b::808:808", "NAT64"),
            ("64:ff9b:1::a00:1", "NAT64"),
            ("64:ff9b:1:ffff::1", "NAT64"),
            // IPv4-translated (::ffff:0:0:0/96).
            ("::ffff:0:a00:1", "IPv4-translated"),
            ("::ffff:0:808:808", "IPv4-translated"),
            // Teredo (2001::/32).
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            // 6to4 relay anycast.
            ("192.88.99.1", "6to4 relay"),
            ("192.88.99.255", "6to4 relay"),
            ("3fff::1", "documentation"),
            ("100::1", "discard"),
        ] {
            let why = forbidden(ip(a)).unwrap_or_else(|| panic!("{a} allowed"));
            assert!(why.contains(kind), "{a}: {why}");
        }
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "100.128.0.1",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
            "192.88.98.1",
            "192.88.100.1",
            "2001:1::1",
            "2001:4860:4860::8888",
            "64:ff9b:2::1",
        ] {
            assert_eq!(forbidden(ip(a)), None, "{a}");
        }
    }

    #[tokio::test]
    async fn refusals_never_show_the_address_a_host_resolves_to() {
        let f = fetcher(&[]);
        // localhost resolves (through the hosts file) to 127.0.0.1 and/or ::1.
        let e = f.fetch("https://localhost:9/a.jpg").await.unwrap_err();
        assert_eq!(e.outcome(), "refused", "{e}");
        let m = e.to_string();
        assert!(
            m.starts_with("localhost resolves to a non-public address"),
            "{m}"
        );
        for shown in ["127.", "::1", "loopback"] {
            assert!(!m.contains(shown), "{shown:?} in {m:?}");
        }
    }

    #[test]
    fn patterns_parse_and_match() {
        let p: HostPattern = "*.Example.com".parse().unwrap();
        assert!(p.matches_host(&Target::Domain("img.example.com".into())));
        assert!(!p.matches_host(&Target::Domain("example.com".into())));
        assert!(!p.matches_host(&Target::Domain("badexample.com".into())));
        let p: HostPattern = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(p.port, Some(8080));
        assert!(p.matches_host(&Target::Ip(ip("127.0.0.1"))));
        let p: HostPattern = "[::1]:9".parse().unwrap();
        assert!(p.matches_host(&Target::Ip(ip("::1"))) && p.port == Some(9));
        for bad in ["*", "a*.com", "http://x", "host:port", ""] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }

    fn fetcher(allow: &[&str]) -> Fetcher {
        let config = FetchConfig {
            allow_hosts: allow.iter().map(|p| p.parse().unwrap()).collect(),
            max_bytes: 100,
            timeout: Duration::from_secs(1),
            max_redirects: 1,
            concurrency: 2,
            per_request: 1,
        };
        let counter = IntCounterVec::new(prometheus::Opts::new("f", "f"), &["outcome"]).unwrap();
        Fetcher::new(config, counter, None).unwrap()
    }

    #[test]
    fn urls_are_checked_before_any_connection() {
        let f = fetcher(&["127.0.0.1:8080", "images.internal"]);
        let check = |u: &str| f.check(&Url::parse(u).unwrap());
        assert!(check("https://example.com/a.jpg").is_ok());
        let e = check("http://example.com/a.jpg").unwrap_err();
        assert!(e.to_string().contains("not https"), "{e}");
        let e = check("https://10.0.0.1/a.jpg").unwrap_err();
        assert!(e.to_string().contains("private"), "{e}");
        let e = check("https://[::1]/a.jpg").unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(check("http://127.0.0.1:8080/a.jpg").is_ok());
        let e = check("http://127.0.0.1:9090/a.jpg").unwrap_err();
        assert!(e.to_string().contains("other ports"), "{e}");
        assert!(check("http://images.internal/a").is_ok());
        let e = check("file:///etc/passwd").unwrap_err();
        assert_eq!(e.outcome(), "refused");
    }
}
