//! Cross-site request forgery protection and the security headers every response carries.
//!
//! CSRF: browsers authenticate with the client cookie, so a state-changing request (any method but
//! GET, HEAD, OPTIONS) that does not carry a bearer token must come from our own pages. Browsers say
//! where a request comes from in `Sec-Fetch-Site` (all current ones) and `Origin`; a request naming
//! another site is refused with 403 `cross_site_request`. A request with neither header is not from
//! a browser and carries no ambient authority worth forging, so it passes. The cookie is also
//! `SameSite=Lax`, which keeps it off cross-site posts in the first place.

use std::sync::Arc;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};

/// Why a request was refused as cross-site, or `None` when it may proceed.
pub fn cross_site(req: &Request) -> Option<&'static str> {
    if matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return None;
    }
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    if bearer {
        // Not ambient: a page on another site cannot know the token.
        return None;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" | b"none" => None,
            _ => Some("Sec-Fetch-Site"),
        };
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest);
        return match (origin_host, host) {
            (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => None,
            _ => Some("Origin"),
        };
    }
    None
}

/// The middleware, for `EndpointExt::around`: CSRF check first, then default headers on whatever
/// comes back (a page's own stricter headers are kept).
pub async fn protect<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    if let Some(header) = cross_site(&req) {
        tracing::warn!(header, method = %req.method(), path = %req.uri().path(), "cross-site request refused");
        let body = serde_json::json!({
            "code": "cross_site_request",
            "message": "This request came from another site and was refused.",
        });
        return Ok(with_headers(
            Response::builder()
                .status(StatusCode::FORBIDDEN)
                .content_type("application/json; charset=utf-8")
                .body(body.to_string()),
        ));
    }
    let resp = match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) => {
            tracing::info!(error = %e, status = %e.status(), "request refused");
            coded(e.into_response())
        }
    };
    Ok(with_headers(resp))
}

/// An error poem produced itself (a malformed multipart body, an unknown route, a wrong method)
/// comes as plain text in poem's words; give it our JSON shape and a stable code. Our own JSON
/// errors pass unchanged.
fn coded(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (code, message) = match status.as_u16() {
        400 => ("invalid_request", "The request could not be read."),
        404 => ("not_found", "Not found."),
        405 => ("method_not_allowed", "This method is not allowed here."),
        413 => ("file_too_large", "The upload is too large."),
        415 => (
            "unsupported_media_type",
            "Send the upload as multipart/form-data.",
        ),
        s if s >= 500 => (
            "internal_error",
            "Something went wrong on our side; try again.",
        ),
        _ => ("invalid_request", "The request was refused."),
    };
    let mut out = Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(serde_json::json!({ "code": code, "message": message }).to_string());
    for name in [header::RETRY_AFTER, header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// Headers every response gets unless it already sets them.
const DEFAULTS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    // Only the framing rule: API docs (`/docs`) bring their own page; our pages set a full policy.
    ("content-security-policy", "frame-ancestors 'none'"),
];

fn with_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in DEFAULTS {
        if !h.contains_key(*name) {
            h.insert(*name, HeaderValue::from_static(value));
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().method(method).uri_str("/v1/jobs");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.finish()
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let host = ("host", "app.example:8080");
        assert_eq!(
            cross_site(&req(Method::GET, &[("sec-fetch-site", "cross-site")])),
            None
        );
        assert_eq!(
            cross_site(&req(Method::POST, &[host])),
            None,
            "not a browser"
        );
        assert_eq!(
            cross_site(&req(
                Method::POST,
                &[host, ("sec-fetch-site", "same-origin")]
            )),
            None
        );
        for site in ["cross-site", "same-site"] {
            assert!(cross_site(&req(Method::DELETE, &[host, ("sec-fetch-site", site)])).is_some());
        }
        assert_eq!(
            cross_site(&req(
                Method::POST,
                &[host, ("origin", "http://app.example:8080")]
            )),
            None
        );
        for origin in ["https://evil.example", "null", "http://app.example:8081"] {
            assert!(
                cross_site(&req(Method::PATCH, &[host, ("origin", origin)])).is_some(),
                "{origin}"
            );
        }
        assert_eq!(
            cross_site(&req(
                Method::POST,
                &[
                    ("authorization", "Bearer x.y"),
                    ("sec-fetch-site", "cross-site")
                ]
            )),
            None,
            "a bearer token is not ambient"
        );
    }
}
