//! OIDC tokens for HTTP tasks: an RS256 key (made at start or read from a PEM file), the
//! signed ID tokens, the discovery document and the JWKS a worker verifies them with.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer as _};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// How long a token is valid, as on the real service.
pub const TOKEN_LIFETIME_SECS: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("reading key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} holds no RSA private key in PKCS#8 or PKCS#1 PEM")]
    Parse { path: String },
    #[error("generating an RSA key: {0}")]
    Generate(#[from] rsa::Error),
}

/// An RSA signing key with its key id.
#[derive(Clone)]
pub struct OidcKey {
    signing: SigningKey<Sha256>,
    n: Vec<u8>,
    e: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for OidcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl OidcKey {
    /// A fresh 2048-bit key.
    pub fn generate() -> Result<Self, OidcError> {
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)?;
        Ok(Self::from_key(key))
    }

    /// A key from a PEM file (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
    pub fn from_pem_file(path: &Path) -> Result<Self, OidcError> {
        let pem = std::fs::read_to_string(path).map_err(|source| OidcError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&pem).ok_or_else(|| OidcError::Parse {
            path: path.display().to_string(),
        })
    }

    pub fn from_pem(pem: &str) -> Option<Self> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .ok()
            .or_else(|| RsaPrivateKey::from_pkcs1_pem(pem).ok())?;
        Some(Self::from_key(key))
    }

    /// The key as PKCS#8 PEM (to keep it across restarts).
    fn from_key(key: RsaPrivateKey) -> Self {
        let n = key.n().to_bytes_be();
        let e = key.e().to_bytes_be();
        let kid = hex::encode(&Sha256::digest(&n)[..16]);
        Self {
            signing: SigningKey::<Sha256>::new(key),
            n,
            e,
            kid,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS document with this key.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": B64URL.encode(&self.n),
            "e": B64URL.encode(&self.e),
        }]})
    }

    /// Signs claims as a compact RS256 JWT.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"});
        let mut out = B64URL.encode(header.to_string());
        out.push('.');
        out.push_str(&B64URL.encode(claims.to_string()));
        let sig = self.signing.sign(out.as_bytes());
        out.push('.');
        out.push_str(&B64URL.encode(sig.to_bytes()));
        out
    }

    /// The ID token Cloud Tasks sends for a task's `oidc_token`: `aud` is the audience if
    /// set, else the full task URL.
    pub fn id_token(
        &self,
        issuer: &str,
        email: &str,
        audience: &str,
        url: &str,
        now: SystemTime,
    ) -> String {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let aud = if audience.is_empty() { url } else { audience };
        let sub = service_account_id(email);
        self.sign(&json!({
            "aud": aud,
            "azp": sub,
            "email": email,
            "email_verified": true,
            "exp": iat + TOKEN_LIFETIME_SECS,
            "iat": iat,
            "iss": issuer,
            "sub": sub,
        }))
    }
}

/// A stable 21-digit numeric id for a service account, like Google's unique ids.
pub fn service_account_id(email: &str) -> String {
    let digest = Sha256::digest(email.as_bytes());
    let mut id = String::from("1");
    for b in digest.iter().take(20) {
        id.push(char::from(b'0' + b % 10));
    }
    id
}

/// The OpenID discovery document.
pub fn discovery(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "claims_supported": ["aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_has_three_parts_and_header() {
        let key = OidcKey::generate().unwrap();
        let t = key.id_token(
            "http://x",
            "a@b.iam.gserviceaccount.com",
            "",
            "http://w/p?q",
            SystemTime::now(),
        );
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "http://w/p?q");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
    }
}
