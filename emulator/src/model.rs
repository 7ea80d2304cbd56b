//! The Cloud Tasks resources (the prost types of `googleapis-tonic-google-cloud-tasks-v2`),
//! their defaults and validation, and the retry arithmetic of the real service.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{ApiError, Code};

pub use googleapis_tonic_google_cloud_tasks_v2::google::cloud::tasks::v2 as pb;
pub use googleapis_tonic_google_cloud_tasks_v2::google::rpc::Status as RpcStatus;
pub use prost_types::{Duration as PbDuration, Timestamp};

pub const DEFAULT_DISPATCH_DEADLINE: Duration = Duration::from_secs(600);
pub const MIN_DISPATCH_DEADLINE: Duration = Duration::from_secs(15);
pub const MAX_DISPATCH_DEADLINE: Duration = Duration::from_secs(1800);
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(720 * 3600);
pub const MAX_TASK_SIZE: usize = 1024 * 1024;

pub const DEFAULT_RATE: f64 = 500.0;
pub const DEFAULT_CONCURRENCY: i32 = 1000;
pub const DEFAULT_MAX_ATTEMPTS: i32 = 100;
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_DOUBLINGS: i32 = 16;

pub fn ts(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn from_ts(t: &Timestamp) -> SystemTime {
    if t.seconds < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.clamp(0, 999_999_999) as u32)
}

/// Nanoseconds since the epoch, the scheduler's ordering key.
pub fn epoch_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

pub fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf duration as a std one; `None` when negative.
pub fn std_duration(d: &PbDuration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn is_zero(d: &Option<PbDuration>) -> bool {
    d.as_ref().is_none_or(|d| d.seconds == 0 && d.nanos == 0)
}

/// The burst size the service derives from a rate: max(10, floor(rate / 5)).
pub fn burst_for(rate: f64) -> i32 {
    ((rate / 5.0).floor() as i32).max(10)
}

/// Validates a queue's configuration and fills in the service's defaults
/// (zero values count as unset; max_burst_size is derived).
pub fn normalize_queue(q: &mut pb::Queue) -> Result<(), ApiError> {
    let mut rl = q.rate_limits.take().unwrap_or_default();
    if rl.max_dispatches_per_second < 0.0 {
        return Err(ApiError::invalid(
            "RateLimits.maxDispatchesPerSecond cannot be negative.",
        ));
    }
    if rl.max_dispatches_per_second > 500.0 {
        return Err(ApiError::invalid(
            "RateLimits.maxDispatchesPerSecond must be less than or equal to 500.",
        ));
    }
    if rl.max_concurrent_dispatches < 0 {
        return Err(ApiError::invalid(
            "RateLimits.maxConcurrentDispatches cannot be negative.",
        ));
    }
    if rl.max_concurrent_dispatches > 5000 {
        return Err(ApiError::invalid(
            "RateLimits.maxConcurrentDispatches must be less than or equal to 5000.",
        ));
    }
    if rl.max_dispatches_per_second == 0.0 {
        rl.max_dispatches_per_second = DEFAULT_RATE;
    }
    if rl.max_concurrent_dispatches == 0 {
        rl.max_concurrent_dispatches = DEFAULT_CONCURRENCY;
    }
    rl.max_burst_size = burst_for(rl.max_dispatches_per_second);
    q.rate_limits = Some(rl);

    let mut rc = q.retry_config.take().unwrap_or_default();
    if rc.max_attempts < -1 {
        return Err(ApiError::invalid(
            "RetryConfig.maxAttempts must be greater or equal to -1.",
        ));
    }
    if rc.max_doublings < 0 {
        return Err(ApiError::invalid(
            "RetryConfig.maxDoublings cannot be negative.",
        ));
    }
    if rc
        .min_backoff
        .as_ref()
        .is_some_and(|d| std_duration(d).is_none())
    {
        return Err(ApiError::invalid(
            "RetryConfig.minBackoff cannot be negative.",
        ));
    }
    if rc
        .max_backoff
        .as_ref()
        .is_some_and(|d| std_duration(d).is_none())
    {
        return Err(ApiError::invalid(
            "RetryConfig.maxBackoff cannot be negative.",
        ));
    }
    if let Some(d) = &rc.max_retry_duration {
        if d.seconds < 0 {
            return Err(ApiError::invalid(
                "RetryConfig.max_retry_duration.seconds cannot be negative.",
            ));
        }
        if d.nanos != 0 {
            return Err(ApiError::invalid(
                "RetryConfig.max_retry_duration.nanos cannot be set.",
            ));
        }
    }
    if rc.max_attempts == 0 {
        rc.max_attempts = DEFAULT_MAX_ATTEMPTS;
    }
    if rc.max_doublings == 0 {
        rc.max_doublings = DEFAULT_MAX_DOUBLINGS;
    }
    if is_zero(&rc.min_backoff) {
        rc.min_backoff = Some(pb_duration(DEFAULT_MIN_BACKOFF));
    }
    if is_zero(&rc.max_backoff) {
        rc.max_backoff = Some(pb_duration(DEFAULT_MAX_BACKOFF));
    }
    if is_zero(&rc.max_retry_duration) {
        rc.max_retry_duration = None;
    }
    let min = rc
        .min_backoff
        .as_ref()
        .and_then(std_duration)
        .unwrap_or_default();
    let max = rc
        .max_backoff
        .as_ref()
        .and_then(std_duration)
        .unwrap_or_default();
    if min > max {
        return Err(ApiError::invalid(
            "RetryConfig.minBackoff must be less than or equal to RetryConfig.maxBackoff.",
        ));
    }
    q.retry_config = Some(rc);
    if q.state == pb::queue::State::Unspecified as i32 {
        q.state = pb::queue::State::Running as i32;
    }
    if let Some(s) = &q.stackdriver_logging_config
        && !(0.0..=1.0).contains(&s.sampling_ratio)
    {
        return Err(ApiError::invalid(
            "StackdriverLoggingConfig.samplingRatio must be between 0 and 1.",
        ));
    }
    Ok(())
}

/// A queue's retry policy in std types.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// -1 is unlimited.
    pub max_attempts: i32,
    /// `None` is unlimited.
    pub max_retry_duration: Option<Duration>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_doublings: u32,
}

impl RetryPolicy {
    pub fn of(q: &pb::Queue) -> Self {
        let rc = q.retry_config.unwrap_or_default();
        let or =
            |d: &Option<PbDuration>, default| d.as_ref().and_then(std_duration).unwrap_or(default);
        Self {
            max_attempts: if rc.max_attempts == 0 {
                DEFAULT_MAX_ATTEMPTS
            } else {
                rc.max_attempts
            },
            max_retry_duration: rc
                .max_retry_duration
                .as_ref()
                .and_then(std_duration)
                .filter(|d| !d.is_zero()),
            min_backoff: or(&rc.min_backoff, DEFAULT_MIN_BACKOFF),
            max_backoff: or(&rc.max_backoff, DEFAULT_MAX_BACKOFF),
            max_doublings: if rc.max_doublings == 0 {
                DEFAULT_MAX_DOUBLINGS as u32
            } else {
                rc.max_doublings.max(0) as u32
            },
        }
    }

    /// The wait before the k-th retry (k = 0 for the first): doubling while k <= d,
    /// then growing linearly by `min * 2^d`, capped at max_backoff.
    pub fn backoff(&self, k: u32) -> Duration {
        let min = self.min_backoff.as_secs_f64();
        let d = self.max_doublings;
        let secs = if k <= d {
            min * 2f64.powi(k.min(1023) as i32)
        } else {
            min * 2f64.powi(d.min(1023) as i32) * f64::from(k - d + 1)
        };
        let cap = self.max_backoff.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(cap) } else { cap })
    }

    /// Whether a task that has made `attempts` attempts, the first at `first`, is done
    /// retrying at `now`: only when both limits are exhausted.
    pub fn exhausted(&self, attempts: i32, first: SystemTime, now: SystemTime) -> bool {
        let attempts_done = self.max_attempts != -1 && attempts >= self.max_attempts;
        let duration_done = match self.max_retry_duration {
            None => self.max_attempts != -1,
            Some(limit) => now.duration_since(first).unwrap_or_default() >= limit,
        };
        attempts_done && duration_done
    }
}

/// Headers Cloud Tasks drops from a task at creation (lower case; `*` is a prefix).
const DROPPED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-*",
    "te",
    "transfer-encoding",
    "upgrade",
    "via",
    "accept-encoding",
    "x-forwarded-for",
    "from",
    "x-google*",
    "x-appengine-*",
];

pub fn is_dropped_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    DROPPED_HEADERS.iter().any(|d| match d.strip_suffix('*') {
        Some(prefix) => lower.starts_with(prefix),
        None => lower == *d,
    })
}

fn valid_email(email: &str) -> bool {
    let mut parts = email.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(user), Some(domain), None) => {
            !user.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        _ => false,
    }
}

/// Validates an HTTP task at creation and brings it to its stored form: method
/// defaulted, headers sanitised, User-Agent set (and Content-Type defaulted for a body),
/// deadline defaulted.
pub fn normalize_http_task(task: &mut pb::Task) -> Result<(), ApiError> {
    let req = match task.message_type.as_mut() {
        None => return Err(ApiError::invalid("Task.payload_type is not set.")),
        Some(pb::task::MessageType::AppEngineHttpRequest(_)) => {
            return Err(ApiError::new(
                Code::Unimplemented,
                "App Engine tasks are not supported by the BackLess Cloud Tasks emulator; use an HTTP task.",
            ));
        }
        Some(pb::task::MessageType::HttpRequest(r)) => r,
    };
    if req.url.is_empty() {
        return Err(ApiError::invalid("HttpRequest.url is required."));
    }
    let lower = req.url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(ApiError::invalid(
            "HttpTarget.url must start with 'http://' or 'https://'.",
        ));
    }
    match reqwest::Url::parse(&req.url) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => {}
        _ => {
            return Err(ApiError::invalid(
                "Error in parsing HttpTarget. Invalid Host.",
            ));
        }
    }
    let method = pb::HttpMethod::try_from(req.http_method).unwrap_or(pb::HttpMethod::Unspecified);
    let method = if method == pb::HttpMethod::Unspecified {
        pb::HttpMethod::Post
    } else {
        method
    };
    req.http_method = method as i32;
    if !req.body.is_empty()
        && !matches!(
            method,
            pb::HttpMethod::Post | pb::HttpMethod::Put | pb::HttpMethod::Patch
        )
    {
        return Err(ApiError::invalid(
            "Body can only be set if the http_method is POST, PUT, or PATCH.",
        ));
    }
    match &req.authorization_header {
        Some(pb::http_request::AuthorizationHeader::OidcToken(t)) => {
            check_email(&t.service_account_email)?
        }
        Some(pb::http_request::AuthorizationHeader::OauthToken(t)) => {
            check_email(&t.service_account_email)?
        }
        None => {}
    }
    let headers = std::mem::take(&mut req.headers);
    for (k, v) in headers {
        if is_dropped_header(&k) || k.eq_ignore_ascii_case("user-agent") {
            continue;
        }
        let v: String = v
            .chars()
            .filter(|c| *c != '\0')
            .map(|c| if c == '\r' || c == '\n' { '_' } else { c })
            .collect();
        req.headers.insert(k, v);
    }
    req.headers
        .insert("User-Agent".into(), "Google-Cloud-Tasks".into());
    // The service's default for a task with a body (HttpRequest.headers): a task that names its
    // own Content-Type, in any letter case, keeps it.
    if !req.body.is_empty()
        && !req
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
    {
        req.headers
            .insert("Content-Type".into(), "application/octet-stream".into());
    }

    match &task.dispatch_deadline {
        None => task.dispatch_deadline = Some(pb_duration(DEFAULT_DISPATCH_DEADLINE)),
        Some(d) if d.seconds == 0 && d.nanos == 0 => {
            task.dispatch_deadline = Some(pb_duration(DEFAULT_DISPATCH_DEADLINE))
        }
        Some(d) => match std_duration(d) {
            Some(d) if (MIN_DISPATCH_DEADLINE..=MAX_DISPATCH_DEADLINE).contains(&d) => {}
            _ => {
                return Err(ApiError::invalid(
                    "Task.dispatchDeadline must be between [15s, 30m].",
                ));
            }
        },
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), ApiError> {
    if email.is_empty() {
        return Err(ApiError::invalid("service_account_email must be set."));
    }
    if !valid_email(email) {
        return Err(ApiError::invalid("Request contains an invalid argument."));
    }
    Ok(())
}

/// Checks a requested schedule time; the past means now.
pub fn check_schedule_time(t: &Timestamp, now: SystemTime) -> Result<SystemTime, ApiError> {
    // Years past 9999 are not representable in RFC 3339.
    if t.seconds >= 253_402_300_800 || t.seconds < -62_135_596_800 {
        return Err(ApiError::invalid("Request contains an invalid argument."));
    }
    let at = from_ts(t);
    if at > now + MAX_SCHEDULE_AHEAD {
        return Err(ApiError::invalid(format!(
            "The Task.scheduleTime, {}, is too far in the future. Schedule time must be no more than 720h in the future.",
            pacific_rfc3339(t)
        )));
    }
    Ok(at.max(now))
}

/// RFC 3339 in US Pacific time, fractional seconds trimmed, as the service words it.
fn pacific_rfc3339(t: &Timestamp) -> String {
    let utc = time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let offset_hours = if is_us_dst(utc) { -7 } else { -8 };
    let local = utc.to_offset(time::UtcOffset::from_hms(offset_hours, 0, 0).expect("valid offset"));
    let mut frac = String::new();
    if t.nanos > 0 {
        frac = format!(".{:09}", t.nanos);
        while frac.ends_with('0') {
            frac.pop();
        }
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}{:+03}:00",
        local.year(),
        u8::from(local.month()),
        local.day(),
        local.hour(),
        local.minute(),
        local.second(),
        offset_hours
    )
}

/// US daylight saving time (since 2007): from the second Sunday of March 10:00 UTC to
/// the first Sunday of November 09:00 UTC.
fn is_us_dst(utc: time::OffsetDateTime) -> bool {
    let year = utc.year();
    let nth_sunday = |month: time::Month, n: u8| {
        let first = time::Date::from_calendar_date(year, month, 1).expect("valid date");
        let offset = (7 - first.weekday().number_days_from_sunday()) % 7;
        first
            .replace_day(1 + offset + 7 * (n - 1))
            .expect("valid day")
    };
    let start = nth_sunday(time::Month::March, 2)
        .with_hms(10, 0, 0)
        .expect("valid")
        .assume_utc();
    let end = nth_sunday(time::Month::November, 1)
        .with_hms(9, 0, 0)
        .expect("valid")
        .assume_utc();
    utc >= start && utc < end
}

/// The `google.rpc.Status` the service records for an attempt's HTTP response.
pub fn response_status(http: u16) -> RpcStatus {
    let (code, name) = match http {
        200..=299 => (0, "OK"),
        400 => (3, "INVALID_ARGUMENT"),
        401 => (16, "UNAUTHENTICATED"),
        403 => (7, "PERMISSION_DENIED"),
        404 => (5, "NOT_FOUND"),
        409 => (10, "ABORTED"),
        429 => (8, "RESOURCE_EXHAUSTED"),
        499 => (1, "CANCELLED"),
        501 => (12, "UNIMPLEMENTED"),
        503 => (14, "UNAVAILABLE"),
        504 => (4, "DEADLINE_EXCEEDED"),
        _ if (400..500).contains(&http) => (9, "FAILED_PRECONDITION"),
        _ => (13, "INTERNAL"),
    };
    RpcStatus {
        code,
        message: format!("{name}({code}): HTTP status code {http}"),
        details: vec![],
    }
}

/// A numeric task id like the service generates.
pub fn generate_task_id() -> String {
    let a: u64 = rand::random::<u64>() % 10_000_000_000;
    let b: u64 = rand::random::<u64>() % 10_000_000_000;
    format!("{}{a:010}{b:010}", 1 + rand::random::<u8>() % 9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: f64, max: f64, d: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 100,
            max_retry_duration: None,
            min_backoff: Duration::from_secs_f64(min),
            max_backoff: Duration::from_secs_f64(max),
            max_doublings: d,
        }
    }

    #[test]
    fn backoff_doubles_then_grows_linearly() {
        let p = policy(10.0, 300.0, 3);
        let s: Vec<u64> = (0..7).map(|k| p.backoff(k).as_secs()).collect();
        assert_eq!(s, [10, 20, 40, 80, 160, 240, 300]);
        let p = policy(1.0, 7.0, 1);
        let s: Vec<u64> = (0..5).map(|k| p.backoff(k).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 6, 7]);
    }

    #[test]
    fn stops_only_when_both_limits_pass() {
        let t0 = UNIX_EPOCH;
        let mut p = policy(2.0, 2.0, 16);
        p.max_attempts = 2;
        p.max_retry_duration = Some(Duration::from_secs(3));
        assert!(!p.exhausted(2, t0, t0 + Duration::from_secs(2)));
        assert!(p.exhausted(3, t0, t0 + Duration::from_secs(4)));
        p.max_retry_duration = None;
        assert!(p.exhausted(2, t0, t0));
        p.max_attempts = -1;
        assert!(!p.exhausted(1000, t0, t0 + Duration::from_secs(1000)));
    }

    #[test]
    fn burst_is_derived() {
        assert_eq!(
            [0.5, 54.0, 77.0, 333.0, 500.0].map(burst_for),
            [10, 10, 15, 66, 100]
        );
    }

    #[test]
    fn schedule_time_message_uses_pacific_time() {
        let t = Timestamp {
            seconds: 4_102_444_800,
            nanos: 500_000_000,
        }; // 2100-01-01T00:00:00.5Z
        assert_eq!(pacific_rfc3339(&t), "2099-12-31T16:00:00.5-08:00");
        let t = Timestamp {
            seconds: 4_118_083_200,
            nanos: 0,
        }; // 2100-07-01T00:00:00Z
        assert_eq!(pacific_rfc3339(&t), "2100-06-30T17:00:00-07:00");
    }
}
