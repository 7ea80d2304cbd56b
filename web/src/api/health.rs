//! Liveness and readiness.

use std::sync::Arc;

use poem_openapi::payload::PlainText;
use poem_openapi::{ApiResponse, OpenApi, Tags};

use crate::lifecycle::Shared;

#[derive(Tags)]
enum ApiTags {
    /// Probes.
    Health,
}

pub struct HealthApi {
    pub shared: Arc<Shared>,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers.
    #[oai(status = 200)]
    Ready(PlainText<String>),
    /// The database does not answer.
    #[oai(status = 503)]
    NotReady(PlainText<String>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// The process is up.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> PlainText<&'static str> {
        PlainText("ok")
    }

    /// The process can serve: its database answers.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        match self.shared.db.ping().await {
            Ok(()) => ReadyResponse::Ready(PlainText("ready".into())),
            Err(e) => {
                tracing::warn!(error = %e, "not ready");
                ReadyResponse::NotReady(PlainText("database unavailable".into()))
            }
        }
    }
}
