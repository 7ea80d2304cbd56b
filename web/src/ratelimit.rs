//! Request-rate limits per client IP and per client id, and a cap on open event streams per
//! client: beyond them the API answers 429 with `Retry-After` and a stable code
//! (`rate_limited`, `too_many_streams`).
//!
//! Token buckets: each key may spend `per_minute` requests at once and earns them back evenly over
//! a minute. State is per process (each replica limits on its own) and bounded: when the table
//! grows past [`MAX_KEYS`], buckets that have refilled completely are forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use poem::http::{HeaderValue, Method, StatusCode};
use poem::{Body, Endpoint, IntoResponse, Request, Response};

use crate::identity::Signer;

/// Keys remembered before full buckets are pruned.
const MAX_KEYS: usize = 100_000;

/// Limits as configured (0 = no limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests per minute from one IP address (`BACKLESS_RATE_LIMIT_PER_IP`).
    pub per_ip: u32,
    /// Requests per minute from one client id (`BACKLESS_RATE_LIMIT_PER_CLIENT`).
    pub per_client: u32,
    /// Open event streams per client id (`BACKLESS_MAX_SSE_PER_CLIENT`).
    pub sse_per_client: u32,
    /// Open event streams per client address (`BACKLESS_MAX_SSE_PER_ADDR`).
    pub sse_per_addr: u32,
    /// Open event streams in this process (`BACKLESS_MAX_SSE`).
    pub sse_total: u32,
    /// Header carrying the client's address when behind a proxy (`BACKLESS_CLIENT_IP_HEADER`,
    /// e.g. `X-Forwarded-For` or `Forwarded`; its last entry, the one the nearest proxy appended,
    /// is used, in any of the forms proxies write: see [`forwarded_ip`]). Unset: the peer
    /// address.
    pub client_ip_header: Option<String>,
    /// Uploads and image downloads in progress at once in this process
    /// (`BACKLESS_MAX_TRANSFERS`); beyond it, 503 with `Retry-After` and code `busy`.
    pub max_transfers: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_ip: 600,
            per_client: 300,
            sse_per_client: 20,
            sse_per_addr: 200,
            sse_total: 20_000,
            client_ip_header: None,
            max_transfers: 32,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What is left of a bucket after a request was taken from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Left {
    /// Requests per minute (the bucket's size).
    pub limit: u32,
    /// Whole requests left now.
    pub remaining: u32,
    /// How long until the bucket is full again.
    pub full_in: Duration,
}

/// Token buckets keyed by string.
#[derive(Debug)]
pub struct Buckets {
    per_minute: u32,
    table: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Spend one request for `key` at `now`: what is left (`None` when unlimited), or
    /// `Err(wait)` when its bucket is empty.
    pub fn take(&self, key: &str, now: Instant) -> Result<Option<Left>, Duration> {
        if self.per_minute == 0 {
            return Ok(None);
        }
        let cap = f64::from(self.per_minute);
        let per_sec = cap / 60.0;
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_KEYS && !table.contains_key(key) {
            table.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < cap
            });
        }
        let b = table.entry(key.to_string()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        let earned = now.saturating_duration_since(b.at).as_secs_f64() * per_sec;
        b.tokens = (b.tokens + earned).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(Some(Left {
                limit: self.per_minute,
                remaining: b.tokens as u32,
                full_in: Duration::from_secs_f64((cap - b.tokens) / per_sec),
            }))
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_sec))
        }
    }
}

/// Open event streams per client.
#[derive(Debug, Default)]
pub struct StreamSlots {
    max: u32,
    open: Mutex<HashMap<String, u32>>,
}

/// One open stream; the slot is given back on drop.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    key: String,
}

impl StreamSlots {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `key`, or `None` when it already holds the maximum.
    pub fn acquire(self: &Arc<Self>, key: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.to_string()).or_default();
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            slots: Arc::clone(self),
            key: key.to_string(),
        })
    }

    /// Streams `key` holds now.
    pub fn open(&self, key: &str) -> u32 {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(key).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What the middleware shares.
pub struct Limiter {
    limits: RateLimits,
    per_ip: Buckets,
    per_client: Buckets,
    streams: Arc<StreamSlots>,
    addr_streams: Arc<StreamSlots>,
    all_streams: Arc<StreamSlots>,
    transfers: Arc<tokio::sync::Semaphore>,
    signer: Signer,
}

impl Limiter {
    pub fn new(limits: RateLimits, signer: Signer) -> Arc<Self> {
        Arc::new(Self {
            per_ip: Buckets::new(limits.per_ip),
            per_client: Buckets::new(limits.per_client),
            streams: StreamSlots::new(limits.sse_per_client),
            addr_streams: StreamSlots::new(limits.sse_per_addr),
            all_streams: StreamSlots::new(limits.sse_total),
            transfers: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(limits.max_transfers).unwrap_or(usize::MAX),
            )),
            limits,
            signer,
        })
    }

    /// The address the limits apply to.
    fn client_ip(&self, req: &Request) -> Option<IpAddr> {
        if let Some(h) = &self.limits.client_ip_header {
            let forwarded = req
                .headers()
                .get_all(h.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(forwarded_ip)
                .next_back();
            if forwarded.is_some() {
                return forwarded;
            }
        }
        req.remote_addr().as_socket_addr().map(|a| a.ip())
    }
}

/// The client address of one entry of a forwarding header, in each form proxies write it:
/// `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`, and
/// RFC 7239's `for=...` (quoted or not, among other `;` parameters). Obfuscated and unknown
/// identifiers (`for=unknown`, `for=_hidden`) are no address.
pub fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let mut s = entry.trim();
    if s.contains('=') {
        s = s.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
        })?;
    }
    let s = s.trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The key quotas count an address under: an IPv4 address as it is, an IPv6 address by its /64
/// (one subscriber's allocation; rotating through it changes nothing). An IPv4-mapped IPv6
/// address is its IPv4 address.
pub fn addr_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", std::net::Ipv6Addr::from(prefix))
        }
    }
}

/// The caller's address key, put on the request by the middleware for the handlers' quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr(pub String);

/// Whether the request moves an image: an upload, or an original or result download.
fn is_transfer(req: &Request) -> bool {
    let path = req.uri().path();
    match *req.method() {
        Method::POST => path == "/v1/jobs" || path == "/v1.0/removebg",
        Method::GET => {
            path.starts_with("/v1/jobs/")
                && (path.ends_with("/original") || path.ends_with("/result"))
        }
        _ => false,
    }
}

/// Keep `guard` until the response's body has been sent (or the client left).
fn hold_until_sent<G: Send + Sync + 'static>(resp: &mut Response, guard: G) {
    let body = resp.take_body().into_bytes_stream();
    resp.set_body(Body::from_bytes_stream(body.map(move |chunk| {
        let _held = &guard;
        chunk
    })));
}

fn refuse(status: StatusCode, code: &str, message: &str, wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    refusal(status, body, secs)
}

/// A refusal on the remove.bg API: its error shape.
fn refuse_removebg(status: StatusCode, code: &str, message: &str, wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let code = if code == "rate_limited" {
        "rate_limit_exceeded"
    } else {
        code
    };
    let body = serde_json::json!({ "errors": [{ "title": message, "code": code }] }).to_string();
    refusal(status, body, secs)
}

fn refusal(status: StatusCode, body: String, secs: u64) -> Response {
    let mut r = Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(body);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert("Retry-After", v);
    }
    r
}

/// The middleware, for `EndpointExt::around`. Refusals on the remove.bg API (`/v1.0`) are in
/// its error shape.
pub async fn limit<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    limiter: Arc<Limiter>,
) -> poem::Result<Response> {
    let removebg = req.uri().path().starts_with("/v1.0/");
    let (resp, refused) = limit_inner(ep, req, limiter, removebg).await?;
    match refused {
        Some((status, code, message, wait)) => Ok(if removebg {
            refuse_removebg(status, code, message, wait)
        } else {
            refuse(status, code, message, wait)
        }),
        None => Ok(resp.expect("a response when nothing was refused")),
    }
}

/// remove.bg's `X-RateLimit-Limit`, `-Remaining` and `-Reset` (the Unix time the client's
/// bucket is full again), which its clients read.
fn rate_limit_headers(resp: &mut Response, left: Left) {
    let reset = std::time::SystemTime::now()
        .checked_add(left.full_in)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| {
            d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
        });
    let headers = resp.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", u64::from(left.limit)),
        ("x-ratelimit-remaining", u64::from(left.remaining)),
        ("x-ratelimit-reset", reset),
    ] {
        headers.insert(name, poem::http::HeaderValue::from(value));
    }
}

/// A refusal: status, code, message, how long to wait.
type Refusal = (StatusCode, &'static str, &'static str, Duration);

async fn limit_inner<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    limiter: Arc<Limiter>,
    removebg: bool,
) -> poem::Result<(Option<Response>, Option<Refusal>)> {
    let mut req = req;
    let now = Instant::now();
    let addr = limiter.client_ip(&req).map(addr_key);
    if let Some(addr) = &addr {
        req.extensions_mut().insert(ClientAddr(addr.clone()));
    }
    if let Some(addr) = &addr
        && let Err(wait) = limiter.per_ip.take(addr, now)
    {
        return Ok((
            None,
            Some((
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests from your address; slow down.",
                wait,
            )),
        ));
    }
    let client = limiter.signer.identify(&req);
    let left = match client.as_ref().map(|c| limiter.per_client.take(&c.0, now)) {
        Some(Err(wait)) => {
            return Ok((
                None,
                Some((
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many requests; slow down.",
                    wait,
                )),
            ));
        }
        Some(Ok(left)) => left,
        None => None,
    };
    let is_stream = req.method() == Method::GET && req.uri().path().ends_with("/events");
    let slot = if is_stream {
        // Per client id, per address (a client without a cookie is still one address) and per
        // process; each slot is given back when the stream ends.
        let slots = (
            client.as_ref().map(|c| limiter.streams.acquire(&c.0)),
            addr.as_ref().map(|a| limiter.addr_streams.acquire(a)),
            limiter.all_streams.acquire(""),
        );
        match slots {
            (Some(None), _, _) | (_, Some(None), _) | (_, _, None) => {
                return Ok((
                    None,
                    Some((
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_streams",
                        "Too many open progress streams; close one first.",
                        Duration::from_secs(5),
                    )),
                ));
            }
            held => Some(held),
        }
    } else {
        None
    };
    let transfer = if is_transfer(&req) {
        match Arc::clone(&limiter.transfers).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return Ok((
                    None,
                    Some((
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "Too many uploads and downloads in progress; try again in a few seconds.",
                        Duration::from_secs(5),
                    )),
                ));
            }
        }
    } else {
        None
    };
    let mut resp = ep.call(req).await?.into_response();
    if removebg && let Some(left) = left {
        rate_limit_headers(&mut resp, left);
    }
    // Hold the stream slots and the transfer permit for as long as the body is being sent.
    if slot.is_some() || transfer.is_some() {
        hold_until_sent(&mut resp, (slot, transfer));
    }
    Ok((Some(resp), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_over_a_minute() {
        let b = Buckets::new(60);
        let t0 = Instant::now();
        for _ in 0..60 {
            b.take("a", t0).unwrap();
        }
        let wait = b.take("a", t0).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(b.take("b", t0).is_ok(), "keys are independent");
        assert!(b.take("a", t0 + Duration::from_secs(1)).is_ok());
        assert!(b.take("a", t0 + Duration::from_secs(1)).is_err());
        assert_eq!(Buckets::new(0).take("a", t0), Ok(None), "0 = unlimited");
        let left = Buckets::new(60).take("c", t0).unwrap().unwrap();
        assert_eq!((left.limit, left.remaining), (60, 59));
        assert_eq!(left.full_in, Duration::from_secs(1));
    }

    #[test]
    fn forwarded_entries_in_every_form() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for (entry, want) in [
            ("192.0.2.7", Some(v4)),
            (" 192.0.2.7:4711 ", Some(v4)),
            ("2001:db8::1", Some(v6)),
            ("[2001:db8::1]", Some(v6)),
            ("[2001:db8::1]:4711", Some(v6)),
            ("for=192.0.2.7", Some(v4)),
            ("For=\"[2001:db8::1]:4711\";proto=https", Some(v6)),
            ("proto=http;for=192.0.2.7:80;by=203.0.113.43", Some(v4)),
            ("for=unknown", None),
            ("for=_hidden", None),
            ("proto=https", None),
            ("not an address", None),
            ("", None),
        ] {
            assert_eq!(forwarded_ip(entry), want, "{entry:?}");
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let key = |s: &str| addr_key(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            key("2001:db8:1:2::1")
        );
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn stream_slots_are_returned_on_drop() {
        let s = StreamSlots::new(2);
        let a = s.acquire("c").unwrap();
        let _b = s.acquire("c").unwrap();
        assert!(s.acquire("c").is_none());
        assert!(s.acquire("other").is_some());
        drop(a);
        assert_eq!(s.open("c"), 1);
        assert!(s.acquire("c").is_some());
    }
}
