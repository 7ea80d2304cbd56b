//! API keys, for scripts and plugins: `X-Api-Key: <key>` (what remove.bg clients send) or
//! `Authorization: Bearer <key>` (on `/v1`, instead of the cookie).
//!
//! Keys are made by `web keys create` (printed once; only a SHA-256 hash is stored) or, for simple
//! deployments, given in `BACKLESS_API_KEYS` as `name=key` pairs. A key's jobs are owned by
//! `key:<id>` and visible to that key only; each key has a daily quota of credits (one per image)
//! and the per-client request rate. The middleware resolves a presented key once per request, with
//! a short cache, and leaves the outcome on the request for [`crate::identity::Signer::identify`]
//! and the handlers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backless_common::db::{Db, DbError};
use poem::{Endpoint, IntoResponse, Request, Response};
use sha2::{Digest, Sha256};

use crate::identity::{ClientId, Established, Signer};

/// Every key `web keys create` makes starts with this.
pub const KEY_PREFIX: &str = "bl_";
/// How long a lookup (found or not) is trusted; a revoked key stops working within this.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Lookups remembered at most (a flood of random keys cannot grow the cache without bound).
const CACHE_MAX: usize = 10_000;

/// A new random key: the prefix and 32 random bytes in hex.
pub fn generate() -> String {
    format!("{KEY_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// What is stored for a key: its SHA-256, hex.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A valid key, as the handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// `env:<name>` for keys from `BACKLESS_API_KEYS`.
    pub id: String,
    pub name: String,
    /// Credits per UTC day; `None` = unlimited.
    pub quota_per_day: Option<u64>,
}

impl KeyInfo {
    /// The owner of the key's jobs.
    pub fn owner(&self) -> String {
        format!("key:{}", self.id)
    }
}

/// The outcome of a presented key, put on the request by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    Valid(KeyInfo),
    /// A key was presented and is unknown or revoked.
    Unknown,
}

/// Resolves keys: those from the environment first, then the database (cached briefly).
pub struct Keys {
    db: Db,
    env: HashMap<String, KeyInfo>,
    cache: Mutex<HashMap<String, (Option<KeyInfo>, Instant)>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("env", &self.env.len())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// `env`: `(name, key)` pairs from `BACKLESS_API_KEYS`, each with `env_quota` per day.
    pub fn new(db: Db, env: &[(String, String)], env_quota: Option<u64>) -> Self {
        let env = env
            .iter()
            .map(|(name, key)| {
                (
                    hash(key),
                    KeyInfo {
                        id: format!("env:{name}"),
                        name: name.clone(),
                        quota_per_day: env_quota,
                    },
                )
            })
            .collect();
        Self {
            db,
            env,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The key `presented` stands for, if it is valid.
    pub async fn resolve(&self, presented: &str) -> Result<Option<KeyInfo>, DbError> {
        let h = hash(presented.trim());
        if let Some(k) = self.env.get(&h) {
            return Ok(Some(k.clone()));
        }
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((k, at)) = cache.get(&h)
                && now.duration_since(*at) < CACHE_TTL
            {
                return Ok(k.clone());
            }
        }
        let found = self.db.key_by_hash(&h).await?.map(|k| KeyInfo {
            id: k.id,
            name: k.name,
            quota_per_day: k.quota_per_day.and_then(|q| u64::try_from(q).ok()),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(h, (found.clone(), now));
        Ok(found)
    }
}

/// The key a request presents: `X-Api-Key`, or a bearer token that is not a signed client
/// token.
fn presented_key<'a>(req: &'a Request, signer: &Signer) -> Option<&'a str> {
    if let Some(v) = req.headers().get("X-Api-Key") {
        return Some(v.to_str().unwrap_or("").trim());
    }
    let token = crate::identity::bearer(req)?.trim();
    signer.verify(token).is_none().then_some(token)
}

/// The middleware, for `EndpointExt::around`: resolve a presented key and record the outcome.
pub async fn authenticate<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    keys: Arc<Keys>,
    signer: Signer,
) -> poem::Result<Response> {
    if let Some(key) = presented_key(&req, &signer) {
        let outcome = if key.is_empty() {
            Presented::Unknown
        } else {
            match keys.resolve(key).await {
                Ok(Some(k)) => Presented::Valid(k),
                Ok(None) => Presented::Unknown,
                Err(e) => {
                    tracing::error!(error = %e, "cannot look up an API key");
                    return Ok(
                        crate::error::ErrorResponse::from(crate::error::WebError::from(e))
                            .into_response(),
                    );
                }
            }
        };
        // Who the request is, for every handler that asks the signer: the key's owner, or nobody
        // (an unknown key is no identity, whatever cookie comes with it).
        let established = match &outcome {
            Presented::Valid(k) => Established(Some(ClientId(k.owner()))),
            Presented::Unknown => Established(None),
        };
        req.extensions_mut().insert(established);
        req.extensions_mut().insert(outcome);
    }
    Ok(ep.call(req).await?.into_response())
}

/// A credit a key spent on a job; [`Charge::refund`] gives it back when the job produced nothing.
#[derive(Debug, Clone)]
pub struct Charge {
    key_id: String,
    day: String,
}

impl Charge {
    /// Admit one job for `key`: under its live-job cap (`max_live`), then one credit of today's
    /// quota, spent atomically.
    pub async fn take(
        db: &Db,
        key: &KeyInfo,
        max_live: u64,
    ) -> Result<Self, crate::error::WebError> {
        use crate::error::WebError;
        if db.count_live_by_owner(&key.owner()).await? >= max_live {
            return Err(WebError::TooManyJobs { max: max_live });
        }
        let day = today();
        if !db
            .spend_credits(&key.id, &day, 1, key.quota_per_day)
            .await?
        {
            return Err(WebError::InsufficientCredits {
                quota: key.quota_per_day.unwrap_or(0),
            });
        }
        Ok(Self {
            key_id: key.id.clone(),
            day,
        })
    }

    pub async fn refund(&self, db: &Db) {
        if let Err(e) = db.refund_credits(&self.key_id, &self.day, 1).await {
            tracing::warn!(error = %e, "cannot refund a credit");
        }
    }
}

/// Today, as the usage table counts days (UTC).
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// `BACKLESS_API_KEYS`: comma-separated `name=key` pairs.
pub fn parse_env_keys(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, key) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not name=key"))?;
        let (name, key) = (name.trim(), key.trim());
        if name.is_empty() || key.len() < 16 {
            return Err(format!(
                "key {name:?}: needs a name and a key of at least 16 characters"
            ));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("key name {name:?} given twice"));
        }
        out.push((name.to_string(), key.to_string()));
    }
    Ok(out)
}

/// `web keys ...`: create (prints the key once), list, revoke. Returns what to print.
pub async fn command(config: &crate::WebConfig, args: &[String]) -> anyhow::Result<String> {
    let db = Db::connect(&config.common.database).await?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["create", rest @ ..] => {
            let mut name = None;
            let mut quota = None;
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let value = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
                match *flag {
                    "--name" => name = Some(value.trim().to_string()),
                    "--quota-per-day" => {
                        quota = Some(value.parse::<u64>().map_err(|_| {
                            anyhow::anyhow!("--quota-per-day must be a whole number")
                        })?)
                    }
                    other => anyhow::bail!("unknown option {other}"),
                }
            }
            let name = name
                .filter(|n| !n.is_empty() && n.len() <= 100)
                .ok_or_else(|| anyhow::anyhow!("give --name (1 to 100 characters)"))?;
            let key = generate();
            db.insert_key(&name, &hash(&key), quota.filter(|q| *q != 0))
                .await?;
            Ok(format!(
                "{key}\n# key {name:?} created; it is shown only now (only its hash is stored)\n"
            ))
        }
        ["list"] => {
            let mut out = String::from("name\tquota_per_day\tused_today\tcreated_at\trevoked_at\n");
            let day = today();
            for k in db.list_keys().await? {
                let used = db.credits_spent(&k.id, &day).await?;
                let quota = k
                    .quota_per_day
                    .map_or("unlimited".to_string(), |q| q.to_string());
                let revoked = k.revoked_at.map_or("-".to_string(), |t| t.to_rfc3339());
                out.push_str(&format!(
                    "{}\t{quota}\t{used}\t{}\t{revoked}\n",
                    k.name,
                    k.created_at.to_rfc3339()
                ));
            }
            Ok(out)
        }
        ["revoke", name] => {
            if db.revoke_key(name).await? {
                Ok(format!(
                    "key {name:?} revoked (running replicas stop accepting it within {}s)\n",
                    CACHE_TTL.as_secs()
                ))
            } else {
                anyhow::bail!("no live key named {name:?}")
            }
        }
        _ => anyhow::bail!("unknown keys command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::header;

    #[test]
    fn keys_are_random_and_hashed() {
        let a = generate();
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_ne!(a, generate());
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&generate()));
    }

    #[test]
    fn env_keys() {
        let k = parse_env_keys(" ci = 0123456789abcdef , shop=fedcba9876543210").unwrap();
        assert_eq!(
            k,
            vec![
                ("ci".to_string(), "0123456789abcdef".to_string()),
                ("shop".to_string(), "fedcba9876543210".to_string())
            ]
        );
        assert!(parse_env_keys("ci").is_err());
        assert!(parse_env_keys("ci=short").is_err());
        assert!(parse_env_keys("a=0123456789abcdef,a=0123456789abcdeg").is_err());
        assert_eq!(parse_env_keys("").unwrap(), vec![]);
    }

    #[test]
    fn a_presented_key_is_not_a_client_token() {
        let signer = Signer::new(None, false);
        let token = signer.token(&signer.new_client());
        let req = Request::builder()
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .finish();
        assert_eq!(presented_key(&req, &signer), None);
        let req = Request::builder()
            .header(header::AUTHORIZATION, "Bearer bl_abc")
            .finish();
        assert_eq!(presented_key(&req, &signer), Some("bl_abc"));
        let req = Request::builder().header("X-Api-Key", "k1").finish();
        assert_eq!(presented_key(&req, &signer), Some("k1"));
    }
}
