//! The gRPC front end: `google.cloud.tasks.v2.CloudTasks`, routed by method name onto the
//! engine with the prost types and codec from `googleapis-tonic-google-cloud-tasks-v2`.

use std::future::Ready;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;

use super::AppState;
use crate::error::ApiError;
use crate::model::pb;

/// A unary service that calls one closure once.
struct Unary<F>(Option<F>);

impl<Req, Resp, F> tonic::server::UnaryService<Req> for Unary<F>
where
    F: FnOnce(Req) -> Result<Resp, ApiError>,
{
    type Response = Resp;
    type Future = Ready<Result<tonic::Response<Resp>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        let result = match self.0.take() {
            Some(f) => f(request.into_inner())
                .map(tonic::Response::new)
                .map_err(Into::into),
            None => Err(tonic::Status::internal("handler called twice")),
        };
        std::future::ready(result)
    }
}

async fn unary<Req, Resp, F>(req: axum::extract::Request, f: F) -> Response
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnOnce(Req) -> Result<Resp, ApiError> + Send + 'static,
{
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default());
    grpc.unary(Unary(Some(f)), req).await.map(Body::new)
}

/// The gRPC answer for a method nobody serves.
pub fn unimplemented_path(path: &str) -> Response {
    let method = path.trim_start_matches('/');
    tonic::Status::unimplemented(format!(
        "{method} is not implemented by the BackLess Cloud Tasks emulator."
    ))
    .into_http::<Body>()
}

/// `POST /google.cloud.tasks.v2.CloudTasks/{method}`.
pub async fn handle(
    State(app): State<AppState>,
    Path(method): Path<String>,
    req: axum::extract::Request,
) -> Response {
    let e = app.engine;
    match method.as_str() {
        "ListQueues" => {
            unary(req, move |r: pb::ListQueuesRequest| {
                let (queues, next_page_token) =
                    e.list_queues(&r.parent, &r.filter, r.page_size, &r.page_token)?;
                Ok(pb::ListQueuesResponse {
                    queues,
                    next_page_token,
                })
            })
            .await
        }
        "GetQueue" => unary(req, move |r: pb::GetQueueRequest| e.get_queue(&r.name)).await,
        "CreateQueue" => {
            unary(req, move |r: pb::CreateQueueRequest| {
                e.create_queue(&r.parent, r.queue)
            })
            .await
        }
        "UpdateQueue" => {
            unary(req, move |r: pb::UpdateQueueRequest| {
                e.update_queue(r.queue, r.update_mask.map(|m| m.paths))
            })
            .await
        }
        "DeleteQueue" => {
            unary(req, move |r: pb::DeleteQueueRequest| {
                e.delete_queue(&r.name)
            })
            .await
        }
        "PurgeQueue" => unary(req, move |r: pb::PurgeQueueRequest| e.purge_queue(&r.name)).await,
        "PauseQueue" => unary(req, move |r: pb::PauseQueueRequest| e.pause_queue(&r.name)).await,
        "ResumeQueue" => {
            unary(req, move |r: pb::ResumeQueueRequest| {
                e.resume_queue(&r.name)
            })
            .await
        }
        "ListTasks" => {
            unary(req, move |r: pb::ListTasksRequest| {
                let (tasks, next_page_token) =
                    e.list_tasks(&r.parent, r.response_view, r.page_size, &r.page_token)?;
                Ok(pb::ListTasksResponse {
                    tasks,
                    next_page_token,
                })
            })
            .await
        }
        "GetTask" => {
            unary(req, move |r: pb::GetTaskRequest| {
                e.get_task(&r.name, r.response_view)
            })
            .await
        }
        "CreateTask" => {
            unary(req, move |r: pb::CreateTaskRequest| {
                e.create_task(&r.parent, r.task, r.response_view)
            })
            .await
        }
        "DeleteTask" => unary(req, move |r: pb::DeleteTaskRequest| e.delete_task(&r.name)).await,
        "RunTask" => {
            unary(req, move |r: pb::RunTaskRequest| {
                e.run_task(&r.name, r.response_view)
            })
            .await
        }
        _ => unimplemented_path(&format!("google.cloud.tasks.v2.CloudTasks/{method}")),
    }
}
