//! `image_url`: fetch a photo from the internet without becoming a way into our own network.
//!
//! Only `http` and `https`; only public addresses. Names are resolved by our resolver, which
//! drops every loopback, private, link-local, unique-local, shared, multicast, documentation and
//! cloud-metadata address, and the connection is made to exactly the addresses it kept (no second
//! lookup a rebinding name could answer differently). Literal addresses are checked the same way,
//! and every redirect (at most [`MAX_REDIRECTS`]) is checked again. The body is read up to the
//! upload limit within the timeout. Host names in `BACKLESS_IMAGE_URL_ALLOW_HOSTS` skip the address
//! check (tests, an internal image server). No proxy from the environment is used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 3;

/// Why an `image_url` was not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("image_url must be an http or https URL")]
    BadUrl,
    #[error("image_url points to an address that is not public ({0})")]
    Forbidden(String),
    #[error("image_url could not be fetched: {0}")]
    Failed(String),
    #[error("the image at image_url is larger than {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
}

/// Whether `ip` is an ordinary public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address: judge that one.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            // Global unicast is 2000::/3, less documentation (2001:db8::/32), the IETF protocol
            // block with Teredo (2001::/23) and 6to4 (2002::/16), which tunnel to IPv4 addresses.
            (s[0] & 0xe000) == 0x2000
                && !(s[0] == 0x2001 && s[1] == 0x0db8)
                && !(s[0] == 0x2001 && s[1] < 0x0200)
                && s[0] != 0x2002
                && v6 != Ipv6Addr::UNSPECIFIED
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, cloud metadata included
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved
}

/// Resolves names to public addresses only (allowed hosts: to any).
struct PublicResolver {
    allow: Arc<Vec<String>>,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let allowed = self.allow.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allowed || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(FetchError::Forbidden(host)) as Box<_>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Check a URL before a request is made to it: scheme, and a literal address's range.
fn check_url(url: &reqwest::Url, allow: &[String]) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::BadUrl);
    }
    let host = url
        .host_str()
        .ok_or(FetchError::BadUrl)?
        .to_ascii_lowercase();
    if allow.contains(&host) {
        return Ok(());
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        _ => None,
    };
    match literal {
        Some(ip) if !is_public(ip) => Err(FetchError::Forbidden(ip.to_string())),
        _ => Ok(()),
    }
}

/// Fetches `image_url`s.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    allow: Arc<Vec<String>>,
    max_bytes: u64,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Fetcher {
    pub fn new(allow_hosts: Vec<String>, timeout: Duration, max_bytes: u64) -> Self {
        let allow = Arc::new(allow_hosts);
        let redirect_allow = Arc::clone(&allow);
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(FetchError::Failed("too many redirects".into()));
            }
            match check_url(attempt.url(), &redirect_allow) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(PublicResolver {
                allow: Arc::clone(&allow),
            }))
            .redirect(policy)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("BackLess/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with these settings builds");
        Self {
            client,
            allow,
            max_bytes,
        }
    }

    /// The body at `url`, at most the upload limit.
    pub async fn fetch(&self, url: &str) -> Result<Bytes, FetchError> {
        let url = reqwest::Url::parse(url.trim()).map_err(|_| FetchError::BadUrl)?;
        check_url(&url, &self.allow)?;
        let res = self.client.get(url).send().await.map_err(|e| explain(&e))?;
        if !res.status().is_success() {
            return Err(FetchError::Failed(format!(
                "HTTP {}",
                res.status().as_u16()
            )));
        }
        let too_large = FetchError::TooLarge {
            max_bytes: self.max_bytes,
        };
        if res.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(too_large);
        }
        let mut body = BytesMut::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| explain(&e))?;
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// The fetch error behind a reqwest error (ours from the resolver or redirect policy, or a
/// plain failure).
fn explain(e: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(f) = s.downcast_ref::<FetchError>() {
            return f.clone();
        }
        source = s.source();
    }
    if e.is_timeout() {
        return FetchError::Failed("timed out".into());
    }
    if e.is_connect() {
        return FetchError::Failed("cannot connect".into());
    }
    FetchError::Failed("the request failed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
            "2002:7f00:1::",
            "ff02::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked_before_any_request() {
        let check = |u: &str| check_url(&reqwest::Url::parse(u).unwrap(), &[]);
        assert_eq!(check("ftp://example.com/a.png"), Err(FetchError::BadUrl));
        assert_eq!(check("file:///etc/passwd"), Err(FetchError::BadUrl));
        assert!(matches!(
            check("http://127.0.0.1/a.png"),
            Err(FetchError::Forbidden(_))
        ));
        assert!(matches!(
            check("http://[::1]:8080/"),
            Err(FetchError::Forbidden(_))
        ));
        assert!(matches!(
            check("http://169.254.169.254/latest/meta-data/"),
            Err(FetchError::Forbidden(_))
        ));
        // Decimal and hex forms are parsed as the addresses they are.
        assert!(matches!(
            check("http://2130706433/"),
            Err(FetchError::Forbidden(_))
        ));
        assert!(matches!(
            check("http://0x7f.1/"),
            Err(FetchError::Forbidden(_))
        ));
        assert_eq!(check("https://example.com/a.png"), Ok(()));
        let allowed = check_url(
            &reqwest::Url::parse("http://127.0.0.1:9/a.png").unwrap(),
            &["127.0.0.1".to_string()],
        );
        assert_eq!(allowed, Ok(()));
    }
}
