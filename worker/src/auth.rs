//! Who may push: the worker's task endpoint accepts a request only from the queue.
//!
//! - **OIDC** (Cloud Tasks' `oidc_token`, and our emulator's): `Authorization: Bearer <JWT>`,
//!   RS256, checked against the issuer's JWKS (found through its discovery document, cached, and
//!   refetched when a token names an unknown key), with `aud`, `iss` and `exp` checked and,
//!   if configured, the service account's `email`.
//! - **Shared secret** (`BACKLESS_PUSH_SECRET`): the `X-BackLess-Push-Secret` header, compared in
//!   constant time. The fallback where no OIDC token can be had.
//!
//! With both configured either one is enough; with neither every push is accepted (embedded dev
//! mode on loopback), and the worker warns at start if it listens beyond loopback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backless_common::config::{ConfigError, Settings};
use backless_common::tasks::PUSH_SECRET_HEADER;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use poem::http::HeaderMap;
use serde::Deserialize;
use tokio::sync::RwLock;

const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// The push-authentication settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushAuthConfig {
    /// `BACKLESS_PUSH_OIDC_AUDIENCE` (comma-separated): enables OIDC verification.
    pub audiences: Vec<String>,
    /// `BACKLESS_PUSH_OIDC_ISSUER` (default Google's, `https://accounts.google.com`).
    pub issuer: String,
    /// `BACKLESS_PUSH_OIDC_JWKS_URL`: skip discovery and read keys here.
    pub jwks_url: Option<String>,
    /// `BACKLESS_PUSH_OIDC_EMAIL`: the service account the token must belong to.
    pub email: Option<String>,
    /// `BACKLESS_PUSH_SECRET` (shared with web, which puts it on each task).
    pub secret: Option<String>,
}

impl PushAuthConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let audiences: Vec<String> = s
            .get("BACKLESS_PUSH_OIDC_AUDIENCE")
            .unwrap_or("")
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        let issuer = s
            .string("BACKLESS_PUSH_OIDC_ISSUER", GOOGLE_ISSUER)
            .trim_end_matches('/')
            .to_string();
        let email = s.get("BACKLESS_PUSH_OIDC_EMAIL").map(str::to_string);
        if !audiences.is_empty() && issuer == GOOGLE_ISSUER && email.is_none() {
            // Google signs a token for any audience to any Google account that asks: only the
            // account it belongs to says it comes from our queue.
            return Err(ConfigError::Invalid {
                key: "BACKLESS_PUSH_OIDC_EMAIL",
                message: "required with Google's issuer (any Google account can mint a token \
                          for any audience): set it to the Cloud Tasks service account"
                    .into(),
            });
        }
        Ok(Self {
            audiences,
            issuer,
            jwks_url: s.get("BACKLESS_PUSH_OIDC_JWKS_URL").map(str::to_string),
            email,
            secret: s.get("BACKLESS_PUSH_SECRET").map(str::to_string),
        })
    }

    /// Whether any check is configured.
    pub fn enabled(&self) -> bool {
        !self.audiences.is_empty() || self.secret.is_some()
    }
}

/// Why a push was refused (logged; the client sees only "unauthenticated").
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials on the request")]
    Missing,
    #[error("shared secret does not match")]
    BadSecret,
    #[error("token rejected: {0}")]
    BadToken(String),
    #[error("token signed by unknown key {0:?}")]
    UnknownKey(String),
    #[error("token belongs to {0:?}, not the configured service account")]
    WrongAccount(String),
    #[error("cannot fetch the issuer's keys: {0}")]
    Jwks(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    kid: String,
    kty: String,
    #[serde(default)]
    n: String,
    #[serde(default)]
    e: String,
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

/// Checks pushes against the configured OIDC issuer and/or shared secret.
pub struct PushAuth {
    config: PushAuthConfig,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushAuth")
            .field("issuer", &self.config.issuer)
            .field("audiences", &self.config.audiences)
            .field("secret", &self.config.secret.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// Keys are refetched at most this often for unknown `kid`s, and in any case after [`KEYS_TTL`].
const REFETCH_MIN: Duration = Duration::from_secs(10);
const KEYS_TTL: Duration = Duration::from_secs(3600);

impl PushAuth {
    pub fn new(config: PushAuthConfig) -> Self {
        Self {
            config,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a plain HTTP client builds"),
            cache: RwLock::default(),
        }
    }

    pub fn config(&self) -> &PushAuthConfig {
        &self.config
    }

    /// Accept or refuse a push by its headers.
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if !self.config.enabled() {
            return Ok(());
        }
        let mut first_err = None;
        if let Some(secret) = &self.config.secret {
            match headers.get(PUSH_SECRET_HEADER) {
                Some(v) if constant_time_eq(v.as_bytes(), secret.as_bytes()) => return Ok(()),
                Some(_) => first_err = Some(AuthError::BadSecret),
                None => {}
            }
        }
        if !self.config.audiences.is_empty() {
            let bearer = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                });
            if let Some(token) = bearer {
                return self.verify_token(token.trim()).await;
            }
        }
        Err(first_err.unwrap_or(AuthError::Missing))
    }

    async fn verify_token(&self, token: &str) -> Result<(), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::BadToken(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::BadToken(format!("algorithm {:?}", header.alg)));
        }
        let kid = header.kid.unwrap_or_default();
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&self.config.audiences);
        validation.set_issuer(&[self.config.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| AuthError::BadToken(e.to_string()))?;
        if let Some(want) = &self.config.email {
            let claims = data.claims;
            let email = claims.email.unwrap_or_default();
            if &email != want || claims.email_verified == Some(false) {
                return Err(AuthError::WrongAccount(email));
            }
        }
        Ok(())
    }

    /// The decoding key for `kid`, fetching the JWKS when it is stale or the key is new.
    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        {
            let cache = self.cache.read().await;
            let fresh = cache.fetched.is_some_and(|t| t.elapsed() < KEYS_TTL);
            if fresh && let Some(k) = cache.keys.get(kid) {
                return Ok(k.clone());
            }
        }
        let mut cache = self.cache.write().await;
        let age = cache.fetched.map(|t| t.elapsed());
        let stale = age.is_none_or(|a| a >= KEYS_TTL);
        let may_refetch = age.is_none_or(|a| a >= REFETCH_MIN);
        if stale || (!cache.keys.contains_key(kid) && may_refetch) {
            cache.keys = self.fetch_keys().await?;
            cache.fetched = Some(Instant::now());
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::UnknownKey(kid.to_string()))
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, DecodingKey>, AuthError> {
        let jwks_url = match &self.config.jwks_url {
            Some(u) => u.clone(),
            None => {
                #[derive(Deserialize)]
                struct Discovery {
                    jwks_uri: String,
                }
                let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
                self.get_json::<Discovery>(&url).await?.jwks_uri
            }
        };
        let set: JwkSet = self.get_json(&jwks_url).await?;
        let mut keys = HashMap::new();
        for jwk in set.keys.into_iter().filter(|k| k.kty == "RSA") {
            match DecodingKey::from_rsa_components(&jwk.n, &jwk.e) {
                Ok(k) => {
                    keys.insert(jwk.kid, k);
                }
                Err(e) => tracing::warn!(kid = %jwk.kid, error = %e, "unusable key in JWKS"),
            }
        }
        tracing::debug!(keys = keys.len(), url = %jwks_url, "fetched OIDC keys");
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, AuthError> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| AuthError::Jwks(e.to_string()))?;
        resp.json()
            .await
            .map_err(|e| AuthError::Jwks(e.to_string()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_settings() {
        let c = PushAuthConfig::from_settings(&Settings::from_pairs([
            ("BACKLESS_PUSH_OIDC_AUDIENCE", "https://w, other"),
            ("BACKLESS_PUSH_OIDC_ISSUER", "http://127.0.0.1:8123/"),
        ]))
        .unwrap();
        assert_eq!(c.audiences, ["https://w", "other"]);
        assert_eq!(c.issuer, "http://127.0.0.1:8123");
        assert!(c.enabled());
        let none =
            PushAuthConfig::from_settings(&Settings::from_pairs(Vec::<(String, String)>::new()))
                .unwrap();
        assert!(!none.enabled());
        assert_eq!(none.issuer, "https://accounts.google.com");
        // Google's issuer with an audience but no service account: refused at start.
        let google = |email: Option<&str>| {
            let mut pairs = vec![("BACKLESS_PUSH_OIDC_AUDIENCE", "backless-worker")];
            pairs.extend(email.map(|e| ("BACKLESS_PUSH_OIDC_EMAIL", e)));
            PushAuthConfig::from_settings(&Settings::from_pairs(pairs))
        };
        let err = google(None).unwrap_err().to_string();
        assert!(err.contains("BACKLESS_PUSH_OIDC_EMAIL"), "{err}");
        assert!(google(Some("tasks@p.iam.gserviceaccount.com")).is_ok());
    }

    #[tokio::test]
    async fn shared_secret() {
        let auth = PushAuth::new(PushAuthConfig {
            secret: Some("0123456789abcdef".into()),
            ..Default::default()
        });
        let mut h = HeaderMap::new();
        assert!(matches!(auth.check(&h).await, Err(AuthError::Missing)));
        h.insert(PUSH_SECRET_HEADER, "0123456789abcdeX".parse().unwrap());
        assert!(matches!(auth.check(&h).await, Err(AuthError::BadSecret)));
        h.insert(PUSH_SECRET_HEADER, "0123456789abcdef".parse().unwrap());
        assert!(auth.check(&h).await.is_ok());
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b"ab"));
    }
}
