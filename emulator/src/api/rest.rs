//! The REST front end (`/v2/...`) spoken by the `google-cloud-tasks-v2` client, plus the
//! OIDC discovery/JWKS documents and the emulator's own test endpoints.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::json::{self, Enums};
use crate::error::{ApiError, Code};
use crate::oidc;

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(a), Some(b)) => {
                    out.push(a * 16 + b);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters, decoded.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k, true), percent_decode(v, true))
                })
                .collect(),
        )
    }

    fn get(&self, camel: &str, snake: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == camel || k == snake)
            .map(|(_, v)| v.as_str())
    }

    fn int(&self, camel: &str, snake: &str) -> Result<i32, ApiError> {
        match self.get(camel, snake) {
            None | Some("") => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| ApiError::invalid(format!("Invalid value at '{snake}' ({v})"))),
        }
    }

    fn enums(&self) -> Enums {
        match self.get("$alt", "alt") {
            Some(alt) if alt.contains("enum-encoding=int") => Enums::Int,
            _ => Enums::Str,
        }
    }
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

pub fn error_response(e: &ApiError) -> Response {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(e.to_json())).into_response()
}

fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid(
            "Invalid JSON payload received. Expected an object.",
        ));
    }
    Ok(v)
}

fn not_found_route() -> ApiError {
    ApiError::not_found("The requested URL was not found on this server.")
}

/// A REST request (the router sends gRPC elsewhere).
pub async fn handle(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let query = Query::parse(uri.query());
    let path = percent_decode(uri.path(), false);
    match route(&app, &method, &path, &query, &body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, error = %e, "REST request failed");
            error_response(&e)
        }
    }
}

async fn route(
    app: &AppState,
    method: &Method,
    path: &str,
    q: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let engine = &app.engine;
    let issuer = engine.settings().issuer.clone();
    match (method, path) {
        (&Method::GET, "/.well-known/openid-configuration") => {
            return Ok(ok(oidc::discovery(&issuer)));
        }
        (&Method::GET, "/jwks" | "/.well-known/jwks.json") => return Ok(ok(engine.key().jwks())),
        (&Method::POST, "/emulator:reset") => {
            engine.reset()?;
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        (&Method::GET, "/emulator:waitIdle") => {
            engine.wait_idle().await;
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Err(not_found_route());
    };
    let (resource, verb) = match rest.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((id, verb)) => (format!("{head}/{id}"), Some(verb)),
            None => (rest.to_owned(), None),
        },
        None => (rest.to_owned(), None),
    };
    let segs: Vec<&str> = resource.split('/').collect();
    let e = q.enums();
    let parent = |n: usize| segs[..n].join("/");
    match (segs.len(), segs.last().copied(), verb, method) {
        // projects/*/locations/*/queues
        (5, Some("queues"), None, &Method::GET) => {
            let (queues, next) = engine.list_queues(
                &parent(4),
                q.get("filter", "filter").unwrap_or_default(),
                q.int("pageSize", "page_size")?,
                q.get("pageToken", "page_token").unwrap_or_default(),
            )?;
            let mut out = json!({"queues": queues.iter().map(|x| json::queue_to_json(x, e)).collect::<Vec<_>>()});
            if !next.is_empty() {
                out["nextPageToken"] = json!(next);
            }
            Ok(ok(out))
        }
        (5, Some("queues"), None, &Method::POST) => {
            let queue = json::queue_from_json(&body_json(body)?)?;
            Ok(ok(json::queue_to_json(
                &engine.create_queue(&parent(4), Some(queue))?,
                e,
            )))
        }
        // projects/*/locations/*/queues/*
        (6, _, None, &Method::GET) => Ok(ok(json::queue_to_json(&engine.get_queue(&resource)?, e))),
        (6, _, None, &Method::PATCH) => {
            let mut queue = json::queue_from_json(&body_json(body)?)?;
            queue.name = resource.clone();
            let mask = q.get("updateMask", "update_mask").map(|m| {
                m.split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect()
            });
            Ok(ok(json::queue_to_json(
                &engine.update_queue(Some(queue), mask)?,
                e,
            )))
        }
        (6, _, None, &Method::DELETE) => {
            engine.delete_queue(&resource)?;
            Ok(ok(json!({})))
        }
        (6, _, Some(verb), &Method::POST) => {
            let queue = match verb {
                "pause" => engine.pause_queue(&resource)?,
                "resume" => engine.resume_queue(&resource)?,
                "purge" => engine.purge_queue(&resource)?,
                "getIamPolicy" | "setIamPolicy" | "testIamPermissions" => {
                    return Err(ApiError::unimplemented(verb));
                }
                _ => return Err(not_found_route()),
            };
            Ok(ok(json::queue_to_json(&queue, e)))
        }
        // projects/*/locations/*/queues/*/tasks
        (7, Some("tasks"), None, &Method::GET) => {
            let view = json::view_from(
                q.get("responseView", "response_view")
                    .map(|v| match v.parse::<i64>() {
                        Ok(n) => json!(n),
                        Err(_) => json!(v),
                    })
                    .as_ref(),
            )?;
            let (tasks, next) = engine.list_tasks(
                &parent(6),
                view,
                q.int("pageSize", "page_size")?,
                q.get("pageToken", "page_token").unwrap_or_default(),
            )?;
            let mut out = json!({"tasks": tasks.iter().map(|x| json::task_to_json(x, e)).collect::<Vec<_>>()});
            if !next.is_empty() {
                out["nextPageToken"] = json!(next);
            }
            Ok(ok(out))
        }
        (7, Some("tasks"), None, &Method::POST) => {
            let req = body_json(body)?;
            let task = match req.get("task").filter(|v| !v.is_null()) {
                Some(t) => Some(json::task_from_json(t)?),
                None => None,
            };
            let view =
                json::view_from(req.get("responseView").or_else(|| req.get("response_view")))?;
            Ok(ok(json::task_to_json(
                &engine.create_task(&parent(6), task, view)?,
                e,
            )))
        }
        (7, Some("tasks"), Some("buffer"), _) => Err(ApiError::unimplemented("BufferTask")),
        // projects/*/locations/*/queues/*/tasks/*
        (8, _, None, &Method::GET) => {
            let view = json::view_from(
                q.get("responseView", "response_view")
                    .map(|v| match v.parse::<i64>() {
                        Ok(n) => json!(n),
                        Err(_) => json!(v),
                    })
                    .as_ref(),
            )?;
            Ok(ok(json::task_to_json(
                &engine.get_task(&resource, view)?,
                e,
            )))
        }
        (8, _, None, &Method::DELETE) => {
            engine.delete_task(&resource)?;
            Ok(ok(json!({})))
        }
        (8, _, Some("run"), &Method::POST) => {
            let req = body_json(body)?;
            let view =
                json::view_from(req.get("responseView").or_else(|| req.get("response_view")))?;
            Ok(ok(json::task_to_json(
                &engine.run_task(&resource, view)?,
                e,
            )))
        }
        (4, Some(_), None, &Method::GET) if segs[2] == "locations" => Err(ApiError::new(
            Code::Unimplemented,
            "GetLocation is not implemented by the BackLess Cloud Tasks emulator.",
        )),
        _ => Err(not_found_route()),
    }
}
