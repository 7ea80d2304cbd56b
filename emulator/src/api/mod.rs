//! The front ends, on one port: REST (`google-cloud-tasks-v2`'s transport, `/v2/...`) and gRPC
//! (the official clients), both over the one [`Engine`]; `json` is the REST mapping of the
//! protobuf messages.

pub mod grpc;
pub mod json;
pub mod rest;

use std::sync::Arc;

use axum::Router;
use axum::routing::post;

use crate::engine::Engine;

/// Shared state of both front ends.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
}

/// The router: gRPC by path, everything else REST.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route(
            "/google.cloud.tasks.v2.CloudTasks/{method}",
            post(grpc::handle),
        )
        .fallback(fallback)
        .with_state(AppState { engine })
}

/// A gRPC call to a method nobody serves gets gRPC's `UNIMPLEMENTED`; anything else is REST.
async fn fallback(
    state: axum::extract::State<AppState>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let grpc = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        return grpc::unimplemented_path(uri.path());
    }
    rest::handle(state, method, uri, body).await
}
