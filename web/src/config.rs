//! The web service's configuration: the shared pieces plus what only web needs.

use std::net::SocketAddr;
use std::time::Duration;

use backless_common::config::{CommonConfig, ConfigError, FromSettings, Settings};

use crate::ratelimit::RateLimits;

/// Everything web reads at start-up.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub common: CommonConfig,
    /// Where to listen (`BACKLESS_WEB_ADDR`; tests use port 0).
    pub listen: SocketAddr,
    /// Key for signing client ids (`BACKLESS_COOKIE_SECRET`); `None` = random at start (clients lose
    /// access to their jobs when the process restarts; set it when running several replicas).
    pub cookie_secret: Option<Vec<u8>>,
    /// Mark the client cookie `Secure` (behind HTTPS).
    pub cookie_secure: bool,
    /// SSE comment interval; also how soon a vanished client is noticed.
    pub sse_keep_alive: Duration,
    /// How often an SSE stream re-reads its job (events lost between processes still arrive).
    pub sse_poll: Duration,
    /// How long one event stream may stay open (`BACKLESS_SSE_MAX_LIFETIME`); the browser's
    /// EventSource reconnects with `Last-Event-ID` and misses nothing.
    pub sse_max_lifetime: Duration,
    /// How often the outbox retries jobs whose task could not be created.
    pub outbox_interval: Duration,
    /// How often unwatched jobs older than the TTL are swept.
    pub sweep_interval: Duration,
    /// How often storage is listed for objects without a job (`BACKLESS_ORPHAN_SWEEP_INTERVAL`).
    pub orphan_sweep_interval: Duration,
    /// Objects younger than this are never taken for orphans (`BACKLESS_ORPHAN_GRACE`).
    pub orphan_grace: Duration,
    /// Models the workers load (`BACKLESS_MODELS`, the worker's own setting): the page offers
    /// only these. Unknown names are ignored here; the worker refuses to start with them.
    pub models: Vec<String>,
    /// Run the outbox and sweeper loops (off only in tests that drive them by hand).
    pub background_loops: bool,
    /// Request rates and open streams per client (see [`crate::ratelimit`]).
    pub rate_limits: RateLimits,
    /// How `GET /v1/jobs/{id}/result` hands out the image (`BACKLESS_RESULT_DELIVERY`).
    pub result_delivery: ResultDelivery,
    /// What one client address may hold, whatever client ids it uses.
    pub addr_quotas: AddrQuotas,
    /// API keys and the remove.bg-compatible API.
    pub api: ApiConfig,
}

/// API keys and the remove.bg-compatible API (`/v1.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// `BACKLESS_API_KEYS`: `name=key` pairs, for deployments without `web keys create`.
    pub env_keys: Vec<(String, String)>,
    /// `BACKLESS_API_KEY_QUOTA_PER_DAY`: credits per day of each key from `BACKLESS_API_KEYS`
    /// (0 = unlimited, the default).
    pub env_key_quota: Option<u64>,
    /// `BACKLESS_MAX_LIVE_JOBS_PER_KEY` (default 20): a key's queued or processing jobs.
    pub max_live_per_key: u64,
    /// `BACKLESS_REMOVEBG_TIMEOUT` (default 120 s): how long `POST /v1.0/removebg` waits for its
    /// job before answering 503.
    pub removebg_timeout: Duration,
    /// `BACKLESS_IMAGE_URL_ALLOW_HOSTS`: host names `image_url` may reach even on private
    /// addresses (tests, an internal image server); empty by default.
    pub url_allow_hosts: Vec<String>,
    /// `BACKLESS_IMAGE_URL_TIMEOUT` (default 20 s) for fetching `image_url`.
    pub url_timeout: Duration,
}

/// Per-address quotas (0 = none), counted in the database so every replica sees the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrQuotas {
    /// Queued or processing jobs (`BACKLESS_MAX_LIVE_JOBS_PER_ADDR`, default 20).
    pub live_jobs: u64,
    /// Bytes of originals stored and not yet deleted (`BACKLESS_MAX_STORED_BYTES_PER_ADDR`,
    /// default 1 GiB).
    pub stored_bytes: u64,
}

/// How results reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultDelivery {
    /// Web reads the object and sends the bytes (`stream`, the default; any storage).
    Stream,
    /// Web answers 303 to a signed URL of the object, valid for `ttl`
    /// (`redirect`; S3 or GCS storage; `BACKLESS_RESULT_URL_TTL`, default 5 minutes).
    Redirect { ttl: Duration },
}

impl FromSettings for WebConfig {
    fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_settings(s)?;
        let api = ApiConfig {
            env_keys: crate::keys::parse_env_keys(&s.string("BACKLESS_API_KEYS", "")).map_err(
                |message| ConfigError::Invalid {
                    key: "BACKLESS_API_KEYS",
                    message,
                },
            )?,
            env_key_quota: Some(s.parse("BACKLESS_API_KEY_QUOTA_PER_DAY", 0u64)?)
                .filter(|q| *q != 0),
            max_live_per_key: s.parse("BACKLESS_MAX_LIVE_JOBS_PER_KEY", 20)?,
            removebg_timeout: s.duration("BACKLESS_REMOVEBG_TIMEOUT", Duration::from_secs(120))?,
            url_allow_hosts: s
                .string("BACKLESS_IMAGE_URL_ALLOW_HOSTS", "")
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            url_timeout: s.duration("BACKLESS_IMAGE_URL_TIMEOUT", Duration::from_secs(20))?,
        };
        let listen = s.parse(
            "BACKLESS_WEB_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        )?;
        let cookie_secret = match s.get("BACKLESS_COOKIE_SECRET") {
            None => None,
            Some(v) if v.len() >= 32 => Some(v.as_bytes().to_vec()),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    key: "BACKLESS_COOKIE_SECRET",
                    message: "must be at least 32 characters".into(),
                });
            }
        };
        Ok(Self {
            api,
            common,
            listen,
            cookie_secret,
            cookie_secure: s.bool("BACKLESS_COOKIE_SECURE", false)?,
            sse_keep_alive: s.duration("BACKLESS_SSE_KEEP_ALIVE", Duration::from_secs(15))?,
            sse_poll: s.duration("BACKLESS_SSE_POLL", Duration::from_secs(2))?,
            sse_max_lifetime: s.duration("BACKLESS_SSE_MAX_LIFETIME", Duration::from_secs(1800))?,
            outbox_interval: s.duration("BACKLESS_OUTBOX_INTERVAL", Duration::from_secs(5))?,
            sweep_interval: s.duration("BACKLESS_SWEEP_INTERVAL", Duration::from_secs(60))?,
            orphan_sweep_interval: s
                .duration("BACKLESS_ORPHAN_SWEEP_INTERVAL", Duration::from_secs(3600))?,
            orphan_grace: s.duration("BACKLESS_ORPHAN_GRACE", Duration::from_secs(3600))?,
            models: s
                .string("BACKLESS_MODELS", "u2netp")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect(),
            background_loops: true,
            rate_limits: {
                let d = RateLimits::default();
                RateLimits {
                    per_ip: s.parse("BACKLESS_RATE_LIMIT_PER_IP", d.per_ip)?,
                    per_client: s.parse("BACKLESS_RATE_LIMIT_PER_CLIENT", d.per_client)?,
                    sse_per_client: s.parse("BACKLESS_MAX_SSE_PER_CLIENT", d.sse_per_client)?,
                    sse_per_addr: s.parse("BACKLESS_MAX_SSE_PER_ADDR", d.sse_per_addr)?,
                    sse_total: s.parse("BACKLESS_MAX_SSE", d.sse_total)?,
                    client_ip_header: s.get("BACKLESS_CLIENT_IP_HEADER").map(str::to_string),
                    max_transfers: s.parse("BACKLESS_MAX_TRANSFERS", d.max_transfers)?,
                }
            },
            addr_quotas: AddrQuotas {
                live_jobs: s.parse("BACKLESS_MAX_LIVE_JOBS_PER_ADDR", 20)?,
                stored_bytes: s.parse("BACKLESS_MAX_STORED_BYTES_PER_ADDR", 1 << 30)?,
            },
            result_delivery: match s.string("BACKLESS_RESULT_DELIVERY", "stream").as_str() {
                "stream" => ResultDelivery::Stream,
                "redirect" => ResultDelivery::Redirect {
                    ttl: s.duration("BACKLESS_RESULT_URL_TTL", Duration::from_secs(300))?,
                },
                other => {
                    return Err(ConfigError::Invalid {
                        key: "BACKLESS_RESULT_DELIVERY",
                        message: format!("{other:?}: use stream or redirect"),
                    });
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = WebConfig::from_pairs(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.cookie_secret.is_none());
        assert_eq!(c.models, ["u2netp"]);
        assert_eq!(c.rate_limits, RateLimits::default());
        let c = WebConfig::from_pairs([
            ("BACKLESS_WEB_ADDR", "0.0.0.0:9999"),
            ("BACKLESS_COOKIE_SECRET", "0123456789abcdef0123456789abcdef"),
            ("BACKLESS_SSE_KEEP_ALIVE", "1s"),
            ("BACKLESS_MODELS", "u2netp, isnet"),
            ("BACKLESS_RATE_LIMIT_PER_IP", "0"),
            ("BACKLESS_MAX_SSE_PER_CLIENT", "3"),
            ("BACKLESS_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.cookie_secret.as_deref().map(<[u8]>::len), Some(32));
        assert_eq!(c.sse_keep_alive, Duration::from_secs(1));
        assert_eq!(c.models, ["u2netp", "isnet"]);
        assert_eq!(c.rate_limits.per_ip, 0);
        assert_eq!(c.rate_limits.sse_per_client, 3);
        assert_eq!(
            c.rate_limits.client_ip_header.as_deref(),
            Some("X-Forwarded-For")
        );
        assert!(WebConfig::from_pairs([("BACKLESS_RATE_LIMIT_PER_CLIENT", "-1")]).is_err());
        assert!(WebConfig::from_pairs([("BACKLESS_COOKIE_SECRET", "short")]).is_err());
        assert_eq!(c.result_delivery, ResultDelivery::Stream);
        let c = WebConfig::from_pairs([
            ("BACKLESS_RESULT_DELIVERY", "redirect"),
            ("BACKLESS_RESULT_URL_TTL", "90s"),
        ])
        .unwrap();
        assert_eq!(
            c.result_delivery,
            ResultDelivery::Redirect {
                ttl: Duration::from_secs(90)
            }
        );
        assert!(WebConfig::from_pairs([("BACKLESS_RESULT_DELIVERY", "email")]).is_err());
    }
}
