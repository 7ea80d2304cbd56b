//! One HTTP dispatch attempt: the request Cloud Tasks would send (task headers plus the
//! `X-CloudTasks-*` ones and an OIDC token), sent with the dispatch deadline as timeout.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::model::{Timestamp, pb};
use crate::oidc::OidcKey;

/// Everything one attempt needs, copied out of the engine under its lock.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub queue: String,
    pub task: String,
    pub dispatch_id: u64,
    pub queue_id: String,
    pub task_id: String,
    pub request: pb::HttpRequest,
    pub deadline: Duration,
    pub schedule_time: Timestamp,
    pub retry_count: i32,
    pub execution_count: i32,
    pub previous_response: Option<u16>,
}

/// What came of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered with this status (and a `Retry-After` delay, if any).
    Response {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer within the dispatch deadline (reported as 504).
    Timeout,
    /// The target could not be reached (reported as 503).
    Unreachable,
    /// The emulator shut down before the attempt finished; the task is put back as it was.
    Abandoned,
}

impl Outcome {
    /// The HTTP status recorded for the attempt, `None` when it was abandoned.
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Response { status, .. } => Some(*status),
            Outcome::Timeout => Some(504),
            Outcome::Unreachable => Some(503),
            Outcome::Abandoned => None,
        }
    }
}

/// Epoch seconds with the fraction's trailing zeros trimmed (`X-CloudTasks-TaskETA`).
pub fn eta_header(t: &Timestamp) -> String {
    let mut s = t.seconds.to_string();
    if t.nanos > 0 {
        let mut frac = format!("{:09}", t.nanos);
        while frac.ends_with('0') {
            frac.pop();
        }
        s.push('.');
        s.push_str(&frac);
    }
    s
}

fn method(m: i32) -> reqwest::Method {
    match pb::HttpMethod::try_from(m).unwrap_or(pb::HttpMethod::Post) {
        pb::HttpMethod::Get => reqwest::Method::GET,
        pb::HttpMethod::Head => reqwest::Method::HEAD,
        pb::HttpMethod::Put => reqwest::Method::PUT,
        pb::HttpMethod::Delete => reqwest::Method::DELETE,
        pb::HttpMethod::Patch => reqwest::Method::PATCH,
        pb::HttpMethod::Options => reqwest::Method::OPTIONS,
        pb::HttpMethod::Post | pb::HttpMethod::Unspecified => reqwest::Method::POST,
    }
}

fn put(headers: &mut HeaderMap, name: &str, value: &str) {
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(n), Ok(v)) => {
            headers.insert(n, v);
        }
        _ => tracing::debug!(
            header = name,
            "header not representable in HTTP/1; not sent"
        ),
    }
}

/// Builds the headers of an attempt.
pub fn headers(a: &Attempt, key: &OidcKey, issuer: &str, now: SystemTime) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in &a.request.headers {
        put(&mut h, k, v);
    }
    put(&mut h, "user-agent", "Google-Cloud-Tasks");
    put(&mut h, "x-cloudtasks-queuename", &a.queue_id);
    put(&mut h, "x-cloudtasks-taskname", &a.task_id);
    put(
        &mut h,
        "x-cloudtasks-taskretrycount",
        &a.retry_count.to_string(),
    );
    put(
        &mut h,
        "x-cloudtasks-taskexecutioncount",
        &a.execution_count.to_string(),
    );
    put(
        &mut h,
        "x-cloudtasks-tasketa",
        &eta_header(&a.schedule_time),
    );
    if a.retry_count > 0 {
        if let Some(prev) = a.previous_response {
            put(
                &mut h,
                "x-cloudtasks-taskpreviousresponse",
                &prev.to_string(),
            );
        }
        put(&mut h, "x-cloudtasks-taskretryreason", "");
    }
    match &a.request.authorization_header {
        Some(pb::http_request::AuthorizationHeader::OidcToken(t)) => {
            let jwt = key.id_token(
                issuer,
                &t.service_account_email,
                &t.audience,
                &a.request.url,
                now,
            );
            put(&mut h, "authorization", &format!("Bearer {jwt}"));
        }
        Some(pb::http_request::AuthorizationHeader::OauthToken(t)) => {
            // Only Google APIs could check a real access token; send an opaque one.
            let token = crate::oidc::service_account_id(&format!(
                "{}|{}",
                t.service_account_email, t.scope
            ));
            put(
                &mut h,
                "authorization",
                &format!("Bearer emulator-oauth-{token}"),
            );
        }
        None => {}
    }
    h
}

/// Sends one attempt. Returns when the target answered (body read), the deadline passed,
/// or `abort` fired.
pub async fn send(
    client: &reqwest::Client,
    a: &Attempt,
    headers: HeaderMap,
    abort: &tokio_util::sync::CancellationToken,
) -> Outcome {
    let req = client
        .request(method(a.request.http_method), &a.request.url)
        .headers(headers)
        .body(a.request.body.clone());
    let attempt = async {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Drain the body so the connection can be reused.
        let _ = resp.bytes().await;
        Ok::<_, reqwest::Error>(Outcome::Response {
            status,
            retry_after,
        })
    };
    tokio::select! {
        biased;
        _ = abort.cancelled() => Outcome::Abandoned,
        r = tokio::time::timeout(a.deadline, attempt) => match r {
            Err(_) => Outcome::Timeout,
            Ok(Ok(o)) => o,
            Ok(Err(e)) if e.is_timeout() => Outcome::Timeout,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, url = %a.request.url, "target unreachable");
                Outcome::Unreachable
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_trims_zeros() {
        assert_eq!(
            eta_header(&Timestamp {
                seconds: 17,
                nanos: 120_000_000
            }),
            "17.12"
        );
        assert_eq!(
            eta_header(&Timestamp {
                seconds: 17,
                nanos: 0
            }),
            "17"
        );
    }
}
