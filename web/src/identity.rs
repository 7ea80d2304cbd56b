//! Who is asking: a random client id, signed with HMAC-SHA256, carried either in the
//! `backless_client` cookie (browsers) or as `Authorization: Bearer <token>` (API clients; the token
//! is returned when a job is created). An unsigned or tampered value is simply no identity.

use hmac::{Hmac, Mac};
use poem::Request;
use poem::http::header;
use sha2::Sha256;

pub const COOKIE_NAME: &str = "backless_client";

/// The token of an `Authorization: Bearer <token>` header (a client token or an API key).
pub fn bearer(req: &Request) -> Option<&str> {
    let auth = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    auth.strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
}

/// Who a request was established to be before the handler (the API-key middleware: a key's
/// owner, or `None` for a key that is not valid, which is no identity at all).
#[derive(Debug, Clone)]
pub struct Established(pub Option<ClientId>);

/// A verified client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(pub String);

/// Signs and verifies client tokens.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
    secure_cookie: bool,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(key: Option<Vec<u8>>, secure_cookie: bool) -> Self {
        let key = key.unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec());
        Self { key, secure_cookie }
    }

    fn mac(&self, id: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(b"backless-client:");
        mac.update(id.as_bytes());
        mac
    }

    /// A fresh client id.
    pub fn new_client(&self) -> ClientId {
        ClientId(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// `<id>.<hex hmac>`.
    pub fn token(&self, client: &ClientId) -> String {
        let tag = self.mac(&client.0).finalize().into_bytes();
        format!("{}.{}", client.0, hex::encode(tag))
    }

    pub fn verify(&self, token: &str) -> Option<ClientId> {
        let (id, tag) = token.trim().split_once('.')?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tag = hex::decode(tag).ok()?;
        self.mac(id).verify_slice(&tag).ok()?;
        Some(ClientId(id.to_string()))
    }

    /// The caller's verified identity: what an API key established (see [`Established`]), then
    /// a bearer token, then the cookie.
    pub fn identify(&self, req: &Request) -> Option<ClientId> {
        if let Some(Established(who)) = req.extensions().get::<Established>() {
            return who.clone();
        }
        if let Some(token) = bearer(req) {
            return self.verify(token);
        }
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .filter(|(k, _)| *k == COOKIE_NAME)
            .find_map(|(_, v)| self.verify(v))
    }

    /// `Set-Cookie` value carrying the client's token for a year.
    pub fn cookie(&self, client: &ClientId) -> String {
        format!(
            "{COOKIE_NAME}={}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax{}",
            self.token(client),
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let s = Signer::new(None, false);
        let c = s.new_client();
        let t = s.token(&c);
        assert_eq!(s.verify(&t), Some(c.clone()));
        let other = Signer::new(None, false);
        assert_eq!(other.verify(&t), None);
        let mut forged = t.clone();
        forged.replace_range(0..1, if t.starts_with('a') { "b" } else { "a" });
        assert_eq!(s.verify(&forged), None);
        assert_eq!(s.verify("nonsense"), None);

        let req = Request::builder()
            .header(header::COOKIE, format!("x=1; {COOKIE_NAME}={t}"))
            .finish();
        assert_eq!(s.identify(&req), Some(c.clone()));
        let req = Request::builder()
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .finish();
        assert_eq!(s.identify(&req), Some(c));
        assert!(s.cookie(&s.new_client()).contains("HttpOnly"));
    }
}
