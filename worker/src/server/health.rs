//! Probes and metrics: `/healthz` (the process answers), `/readyz` (models loaded and the
//! database reachable) and `/metrics`.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{IntoResponse, Response, handler};

use super::State;

#[handler]
pub(super) fn healthz() -> &'static str {
    "ok"
}

#[handler]
pub(super) async fn readyz(Data(state): Data<&Arc<State>>) -> Response {
    let models_ready = matches!(*state.models.borrow(), Some(Ok(_)));
    let db_ready = state.db.ping().await.is_ok();
    if models_ready && db_ready {
        "ready".into_response()
    } else {
        let body = format!("not ready: models loaded {models_ready}, database {db_ready}");
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

#[handler]
pub(super) fn metrics(Data(state): Data<&Arc<State>>) -> Response {
    let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
    let m = &state.metrics;
    m.memory_budget_bytes.set(gauge(state.budget.total()));
    m.memory_reserved_bytes.set(gauge(state.budget.used()));
    m.response()
}
