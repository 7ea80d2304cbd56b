//! Proto3 JSON for the REST front end: resources to JSON (integer or string enums, as the
//! client asks) and back, tolerant of both enum spellings on input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::model::{PbDuration, RpcStatus, Timestamp, pb};

/// How enums are written: `$alt=json;enum-encoding=int` asks for numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enums {
    Int,
    Str,
}

fn frac(nanos: i32) -> String {
    if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    }
}

pub fn duration_str(d: &PbDuration) -> String {
    if d.seconds < 0 || d.nanos < 0 {
        format!("-{}{}s", d.seconds.unsigned_abs(), frac(d.nanos.abs()))
    } else {
        format!("{}{}s", d.seconds, frac(d.nanos))
    }
}

pub fn timestamp_str(t: &Timestamp) -> String {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        frac(t.nanos)
    )
}

fn bad(field: &str, v: &Value) -> ApiError {
    ApiError::invalid(format!("Invalid value at '{field}' ({v})"))
}

pub fn parse_duration(field: &str, v: &Value) -> Result<PbDuration, ApiError> {
    let s = v
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .ok_or_else(|| bad(field, v))?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, nanos) = match s.split_once('.') {
        Some((a, b)) if !b.is_empty() && b.len() <= 9 && b.bytes().all(|c| c.is_ascii_digit()) => (
            a,
            format!("{b:0<9}")
                .parse::<i32>()
                .map_err(|_| bad(field, v))?,
        ),
        Some(_) => return Err(bad(field, v)),
        None => (s, 0),
    };
    let secs: i64 = secs.parse().map_err(|_| bad(field, v))?;
    Ok(if neg {
        PbDuration {
            seconds: -secs,
            nanos: -nanos,
        }
    } else {
        PbDuration {
            seconds: secs,
            nanos,
        }
    })
}

pub fn parse_timestamp(field: &str, v: &Value) -> Result<Timestamp, ApiError> {
    let s = v.as_str().ok_or_else(|| bad(field, v))?;
    let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad(field, v))?;
    let nanos = dt.unix_timestamp_nanos();
    Ok(Timestamp {
        seconds: nanos.div_euclid(1_000_000_000) as i64,
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    })
}

fn enum_value(
    field: &str,
    v: &Value,
    from_name: impl Fn(&str) -> Option<i32>,
) -> Result<i32, ApiError> {
    match v {
        Value::Number(n) => n.as_i64().map(|n| n as i32).ok_or_else(|| bad(field, v)),
        Value::String(s) => from_name(s).ok_or_else(|| bad(field, v)),
        Value::Null => Ok(0),
        _ => Err(bad(field, v)),
    }
}

fn get<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel)
        .or_else(|| obj.get(snake))
        .filter(|v| !v.is_null())
}

fn as_obj<'a>(field: &str, v: &'a Value) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| bad(field, v))
}

fn num_f64(field: &str, v: &Value) -> Result<f64, ApiError> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| bad(field, v)),
        Value::String(s) => s.parse().map_err(|_| bad(field, v)),
        _ => Err(bad(field, v)),
    }
}

fn num_i32(field: &str, v: &Value) -> Result<i32, ApiError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| bad(field, v)),
        Value::String(s) => s.parse().map_err(|_| bad(field, v)),
        _ => Err(bad(field, v)),
    }
}

fn string(field: &str, v: &Value) -> Result<String, ApiError> {
    v.as_str().map(str::to_owned).ok_or_else(|| bad(field, v))
}

// ---- to JSON ------------------------------------------------------------------------------

fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    m.insert(k.to_owned(), v);
}

fn enum_out(e: Enums, n: i32, name: &str) -> Value {
    match e {
        Enums::Int => json!(n),
        Enums::Str => json!(name),
    }
}

pub fn queue_to_json(q: &pb::Queue, e: Enums) -> Value {
    let mut m = Map::new();
    put(&mut m, "name", json!(q.name));
    if let Some(r) = &q.app_engine_routing_override {
        put(&mut m, "appEngineRoutingOverride", routing_to_json(r));
    }
    if let Some(r) = &q.rate_limits {
        put(
            &mut m,
            "rateLimits",
            json!({
                "maxDispatchesPerSecond": r.max_dispatches_per_second,
                "maxBurstSize": r.max_burst_size,
                "maxConcurrentDispatches": r.max_concurrent_dispatches,
            }),
        );
    }
    if let Some(r) = &q.retry_config {
        let mut rc = Map::new();
        put(&mut rc, "maxAttempts", json!(r.max_attempts));
        if let Some(d) = &r.max_retry_duration {
            put(&mut rc, "maxRetryDuration", json!(duration_str(d)));
        }
        if let Some(d) = &r.min_backoff {
            put(&mut rc, "minBackoff", json!(duration_str(d)));
        }
        if let Some(d) = &r.max_backoff {
            put(&mut rc, "maxBackoff", json!(duration_str(d)));
        }
        put(&mut rc, "maxDoublings", json!(r.max_doublings));
        put(&mut m, "retryConfig", Value::Object(rc));
    }
    let state = pb::queue::State::try_from(q.state).unwrap_or_default();
    put(&mut m, "state", enum_out(e, q.state, state.as_str_name()));
    if let Some(t) = &q.purge_time {
        put(&mut m, "purgeTime", json!(timestamp_str(t)));
    }
    if let Some(s) = &q.stackdriver_logging_config {
        put(
            &mut m,
            "stackdriverLoggingConfig",
            json!({"samplingRatio": s.sampling_ratio}),
        );
    }
    Value::Object(m)
}

fn routing_to_json(r: &pb::AppEngineRouting) -> Value {
    json!({"service": r.service, "version": r.version, "instance": r.instance, "host": r.host})
}

fn status_to_json(s: &RpcStatus) -> Value {
    let mut m = Map::new();
    if s.code != 0 {
        put(&mut m, "code", json!(s.code));
    }
    if !s.message.is_empty() {
        put(&mut m, "message", json!(s.message));
    }
    Value::Object(m)
}

fn attempt_to_json(a: &pb::Attempt) -> Value {
    let mut m = Map::new();
    for (k, t) in [
        ("scheduleTime", &a.schedule_time),
        ("dispatchTime", &a.dispatch_time),
        ("responseTime", &a.response_time),
    ] {
        if let Some(t) = t {
            put(&mut m, k, json!(timestamp_str(t)));
        }
    }
    if let Some(s) = &a.response_status {
        put(&mut m, "responseStatus", status_to_json(s));
    }
    Value::Object(m)
}

pub fn task_to_json(t: &pb::Task, e: Enums) -> Value {
    let mut m = Map::new();
    put(&mut m, "name", json!(t.name));
    match &t.message_type {
        Some(pb::task::MessageType::HttpRequest(r)) => {
            let mut h = Map::new();
            put(&mut h, "url", json!(r.url));
            let method = pb::HttpMethod::try_from(r.http_method).unwrap_or_default();
            put(
                &mut h,
                "httpMethod",
                enum_out(e, r.http_method, method.as_str_name()),
            );
            if !r.headers.is_empty() {
                put(&mut h, "headers", json!(r.headers));
            }
            if !r.body.is_empty() {
                put(&mut h, "body", json!(B64.encode(&r.body)));
            }
            match &r.authorization_header {
                Some(pb::http_request::AuthorizationHeader::OidcToken(o)) => put(
                    &mut h,
                    "oidcToken",
                    json!({"serviceAccountEmail": o.service_account_email, "audience": o.audience}),
                ),
                Some(pb::http_request::AuthorizationHeader::OauthToken(o)) => put(
                    &mut h,
                    "oauthToken",
                    json!({"serviceAccountEmail": o.service_account_email, "scope": o.scope}),
                ),
                None => {}
            }
            put(&mut m, "httpRequest", Value::Object(h));
        }
        Some(pb::task::MessageType::AppEngineHttpRequest(r)) => {
            put(
                &mut m,
                "appEngineHttpRequest",
                json!({"relativeUri": r.relative_uri}),
            );
        }
        None => {}
    }
    if let Some(x) = &t.schedule_time {
        put(&mut m, "scheduleTime", json!(timestamp_str(x)));
    }
    if let Some(x) = &t.create_time {
        put(&mut m, "createTime", json!(timestamp_str(x)));
    }
    if let Some(d) = &t.dispatch_deadline {
        put(&mut m, "dispatchDeadline", json!(duration_str(d)));
    }
    if t.dispatch_count != 0 {
        put(&mut m, "dispatchCount", json!(t.dispatch_count));
    }
    if t.response_count != 0 {
        put(&mut m, "responseCount", json!(t.response_count));
    }
    if let Some(a) = &t.first_attempt {
        put(&mut m, "firstAttempt", attempt_to_json(a));
    }
    if let Some(a) = &t.last_attempt {
        put(&mut m, "lastAttempt", attempt_to_json(a));
    }
    let view = pb::task::View::try_from(t.view).unwrap_or_default();
    put(&mut m, "view", enum_out(e, t.view, view.as_str_name()));
    Value::Object(m)
}

// ---- from JSON ----------------------------------------------------------------------------

pub fn queue_from_json(v: &Value) -> Result<pb::Queue, ApiError> {
    let o = as_obj("queue", v)?;
    let mut q = pb::Queue::default();
    if let Some(v) = get(o, "name", "name") {
        q.name = string("name", v)?;
    }
    if let Some(v) = get(o, "rateLimits", "rate_limits") {
        let r = as_obj("rate_limits", v)?;
        let mut rl = pb::RateLimits::default();
        if let Some(v) = get(r, "maxDispatchesPerSecond", "max_dispatches_per_second") {
            rl.max_dispatches_per_second = num_f64("rate_limits.max_dispatches_per_second", v)?;
        }
        if let Some(v) = get(r, "maxBurstSize", "max_burst_size") {
            rl.max_burst_size = num_i32("rate_limits.max_burst_size", v)?;
        }
        if let Some(v) = get(r, "maxConcurrentDispatches", "max_concurrent_dispatches") {
            rl.max_concurrent_dispatches = num_i32("rate_limits.max_concurrent_dispatches", v)?;
        }
        q.rate_limits = Some(rl);
    }
    if let Some(v) = get(o, "retryConfig", "retry_config") {
        let r = as_obj("retry_config", v)?;
        let mut rc = pb::RetryConfig::default();
        if let Some(v) = get(r, "maxAttempts", "max_attempts") {
            rc.max_attempts = num_i32("retry_config.max_attempts", v)?;
        }
        if let Some(v) = get(r, "maxRetryDuration", "max_retry_duration") {
            rc.max_retry_duration = Some(parse_duration("retry_config.max_retry_duration", v)?);
        }
        if let Some(v) = get(r, "minBackoff", "min_backoff") {
            rc.min_backoff = Some(parse_duration("retry_config.min_backoff", v)?);
        }
        if let Some(v) = get(r, "maxBackoff", "max_backoff") {
            rc.max_backoff = Some(parse_duration("retry_config.max_backoff", v)?);
        }
        if let Some(v) = get(r, "maxDoublings", "max_doublings") {
            rc.max_doublings = num_i32("retry_config.max_doublings", v)?;
        }
        q.retry_config = Some(rc);
    }
    if let Some(v) = get(o, "state", "state") {
        q.state = enum_value("state", v, |s| {
            pb::queue::State::from_str_name(s).map(|x| x as i32)
        })?;
    }
    if let Some(v) = get(o, "stackdriverLoggingConfig", "stackdriver_logging_config") {
        let s = as_obj("stackdriver_logging_config", v)?;
        let ratio = match get(s, "samplingRatio", "sampling_ratio") {
            Some(v) => num_f64("stackdriver_logging_config.sampling_ratio", v)?,
            None => 0.0,
        };
        q.stackdriver_logging_config = Some(pb::StackdriverLoggingConfig {
            sampling_ratio: ratio,
        });
    }
    if let Some(v) = get(o, "appEngineRoutingOverride", "app_engine_routing_override") {
        let r = as_obj("app_engine_routing_override", v)?;
        let s = |c, sn| {
            get(r, c, sn)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        q.app_engine_routing_override = Some(pb::AppEngineRouting {
            service: s("service", "service"),
            version: s("version", "version"),
            instance: s("instance", "instance"),
            host: String::new(),
        });
    }
    Ok(q)
}

fn email_of(field: &str, v: &Value) -> Result<(String, Map<String, Value>), ApiError> {
    let o = as_obj(field, v)?.clone();
    let email = get(&o, "serviceAccountEmail", "service_account_email")
        .map(|v| string(field, v))
        .transpose()?
        .unwrap_or_default();
    Ok((email, o))
}

pub fn task_from_json(v: &Value) -> Result<pb::Task, ApiError> {
    let o = as_obj("task", v)?;
    let mut t = pb::Task::default();
    if let Some(v) = get(o, "name", "name") {
        t.name = string("name", v)?;
    }
    if let Some(v) = get(o, "scheduleTime", "schedule_time") {
        t.schedule_time = Some(parse_timestamp("schedule_time", v)?);
    }
    if let Some(v) = get(o, "dispatchDeadline", "dispatch_deadline") {
        t.dispatch_deadline = Some(parse_duration("dispatch_deadline", v)?);
    }
    if let Some(v) = get(o, "httpRequest", "http_request") {
        let r = as_obj("http_request", v)?;
        let mut h = pb::HttpRequest::default();
        if let Some(v) = get(r, "url", "url") {
            h.url = string("http_request.url", v)?;
        }
        if let Some(v) = get(r, "httpMethod", "http_method") {
            h.http_method = enum_value("http_request.http_method", v, |s| {
                pb::HttpMethod::from_str_name(s).map(|x| x as i32)
            })?;
        }
        if let Some(v) = get(r, "headers", "headers") {
            for (k, val) in as_obj("http_request.headers", v)? {
                h.headers
                    .insert(k.clone(), string("http_request.headers", val)?);
            }
        }
        if let Some(v) = get(r, "body", "body") {
            let s = string("http_request.body", v)?;
            h.body = B64
                .decode(s.as_bytes())
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s.as_bytes()))
                .map_err(|_| bad("http_request.body", v))?;
        }
        if let Some(v) = get(r, "oidcToken", "oidc_token") {
            let (email, o) = email_of("oidc_token", v)?;
            let audience = get(&o, "audience", "audience")
                .and_then(Value::as_str)
                .unwrap_or_default();
            h.authorization_header = Some(pb::http_request::AuthorizationHeader::OidcToken(
                pb::OidcToken {
                    service_account_email: email,
                    audience: audience.to_owned(),
                },
            ));
        } else if let Some(v) = get(r, "oauthToken", "oauth_token") {
            let (email, o) = email_of("oauth_token", v)?;
            let scope = get(&o, "scope", "scope")
                .and_then(Value::as_str)
                .unwrap_or_default();
            h.authorization_header = Some(pb::http_request::AuthorizationHeader::OauthToken(
                pb::OAuthToken {
                    service_account_email: email,
                    scope: scope.to_owned(),
                },
            ));
        }
        t.message_type = Some(pb::task::MessageType::HttpRequest(h));
    } else if let Some(v) = get(o, "appEngineHttpRequest", "app_engine_http_request") {
        let r = as_obj("app_engine_http_request", v)?;
        let uri = get(r, "relativeUri", "relative_uri")
            .and_then(Value::as_str)
            .unwrap_or_default();
        t.message_type = Some(pb::task::MessageType::AppEngineHttpRequest(
            pb::AppEngineHttpRequest {
                relative_uri: uri.to_owned(),
                ..Default::default()
            },
        ));
    }
    Ok(t)
}

/// Reads an enum-valued request field (`responseView`), number or name.
pub fn view_from(v: Option<&Value>) -> Result<i32, ApiError> {
    match v {
        None => Ok(0),
        Some(v) => enum_value("response_view", v, |s| {
            pb::task::View::from_str_name(s).map(|x| x as i32)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_timestamps_round_trip() {
        let d = parse_duration("d", &json!("0.100s")).unwrap();
        assert_eq!((d.seconds, d.nanos), (0, 100_000_000));
        assert_eq!(duration_str(&d), "0.100s");
        assert_eq!(
            duration_str(&PbDuration {
                seconds: 3600,
                nanos: 0
            }),
            "3600s"
        );
        let t = parse_timestamp("t", &json!("2100-01-01T00:00:00.5Z")).unwrap();
        assert_eq!(timestamp_str(&t), "2100-01-01T00:00:00.500Z");
        let t = parse_timestamp("t", &json!("2024-01-01T01:00:00+01:00")).unwrap();
        assert_eq!(timestamp_str(&t), "2024-01-01T00:00:00Z");
    }
}
