//! Resource names (`projects/*/locations/*/queues/*[/tasks/*]`) and the real service's
//! messages when they are malformed.

use crate::error::{ApiError, Code};

const QUEUE_NAME_HELP: &str = "https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues#Queue.FIELDS.name";
const TASK_NAME_HELP: &str = "https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks#Task.FIELDS.name";

/// A queue's full name, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueName {
    pub project: String,
    pub location: String,
    pub queue: String,
}

impl QueueName {
    pub fn parent(&self) -> String {
        format!("projects/{}/locations/{}", self.project, self.location)
    }
    pub fn full(&self) -> String {
        format!("{}/queues/{}", self.parent(), self.queue)
    }
}

/// A task's full name, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskName {
    pub queue: QueueName,
    pub task: String,
}

impl TaskName {
    pub fn full(&self) -> String {
        format!("{}/tasks/{}", self.queue.full(), self.task)
    }
}

fn valid_queue_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 500
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains(char::is_whitespace)
}

pub fn invalid_queue_id(id: &str) -> ApiError {
    ApiError::invalid(format!(
        "Queue ID \"{id}\" can contain only letters ([A-Za-z]), numbers ([0-9]), or hyphens (-). Queue ID must be between 1 and 100 characters."
    ))
    .with_help("Definition of queue ID", QUEUE_NAME_HELP)
}

pub fn invalid_task_id(id: &str) -> ApiError {
    ApiError::invalid(format!(
        "Task ID \"{id}\" can contain only letters ([A-Za-z]), numbers ([0-9]), hyphens (-), or underscores (_). Task ID must between 1 and 500 characters."
    ))
    .with_help("Definition of task ID", TASK_NAME_HELP)
}

fn malformed_queue_name() -> ApiError {
    ApiError::invalid(
        "Queue name must be formatted: \"projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>\".",
    )
    .with_help("Definition of queue name", QUEUE_NAME_HELP)
}

fn malformed_task_name() -> ApiError {
    ApiError::invalid(
        "Task name must be formatted: \"projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>/tasks/<TASK_ID>\".",
    )
    .with_help("Definition of task name", TASK_NAME_HELP)
}

fn empty_resource() -> ApiError {
    ApiError::invalid("Invalid resource field value in the request.")
}

fn not_a_project(value: &str) -> ApiError {
    let project = value.strip_prefix("projects/").unwrap_or(value);
    let project = project.split('/').next().unwrap_or(project);
    ApiError::new(
        Code::PermissionDenied,
        format!("Permission denied on resource project {project}."),
    )
}

fn lacks_permission(permission: &str, resource: &str) -> ApiError {
    ApiError::new(
        Code::PermissionDenied,
        format!(
            "The principal (user or service account) lacks IAM permission \"{permission}\" for the resource \"{resource}\" (or the resource may not exist)."
        ),
    )
}

/// A `projects/*/locations/*` parent (ListQueues, CreateQueue).
pub fn parse_location(parent: &str, permission: &str) -> Result<(String, String), ApiError> {
    if parent.is_empty() {
        return Err(empty_resource());
    }
    let parts: Vec<&str> = parent.split('/').collect();
    if parts[0] != "projects" || parts.len() < 2 || !valid_segment(parts[1]) {
        return Err(not_a_project(parent));
    }
    if parts.len() != 4 || parts[2] != "locations" || !valid_segment(parts[3]) {
        return Err(lacks_permission(permission, parent));
    }
    Ok((parts[1].to_owned(), parts[3].to_owned()))
}

/// A queue name given as the resource of a queue RPC (Get, Delete, Pause, ...).
pub fn parse_queue_name(name: &str) -> Result<QueueName, ApiError> {
    if name.is_empty() {
        return Err(empty_resource());
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() != 6
        || parts[0] != "projects"
        || parts[2] != "locations"
        || parts[4] != "queues"
        || !valid_segment(parts[1])
        || !valid_segment(parts[3])
    {
        return Err(malformed_queue_name());
    }
    if !valid_queue_id(parts[5]) {
        return Err(invalid_queue_id(parts[5]));
    }
    Ok(QueueName {
        project: parts[1].to_owned(),
        location: parts[3].to_owned(),
        queue: parts[5].to_owned(),
    })
}

/// A queue name given as the parent of a task RPC (CreateTask, ListTasks).
pub fn parse_queue_parent(parent: &str, permission: &str) -> Result<QueueName, ApiError> {
    if parent.is_empty() {
        return Err(empty_resource());
    }
    let parts: Vec<&str> = parent.split('/').collect();
    if parts[0] != "projects" || parts.len() < 2 || !valid_segment(parts[1]) {
        return Err(not_a_project(parent));
    }
    if parts.len() != 6 || parts[2] != "locations" || parts[4] != "queues" {
        return Err(lacks_permission(permission, parent));
    }
    if !valid_queue_id(parts[5]) {
        return Err(invalid_queue_id(parts[5]));
    }
    Ok(QueueName {
        project: parts[1].to_owned(),
        location: parts[3].to_owned(),
        queue: parts[5].to_owned(),
    })
}

/// A task name given as the resource of a task RPC (Get, Delete, Run).
pub fn parse_task_name(name: &str) -> Result<TaskName, ApiError> {
    if name.is_empty() {
        return Err(empty_resource());
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() != 8
        || parts[0] != "projects"
        || parts[2] != "locations"
        || parts[4] != "queues"
        || parts[6] != "tasks"
        || !valid_segment(parts[1])
        || !valid_segment(parts[3])
    {
        return Err(malformed_task_name());
    }
    if !valid_queue_id(parts[5]) {
        return Err(invalid_queue_id(parts[5]));
    }
    if !valid_task_id(parts[7]) {
        return Err(invalid_task_id(parts[7]));
    }
    Ok(TaskName {
        queue: QueueName {
            project: parts[1].to_owned(),
            location: parts[3].to_owned(),
            queue: parts[5].to_owned(),
        },
        task: parts[7].to_owned(),
    })
}

/// The name a created queue must have, checked against its parent.
pub fn parse_new_queue_name(parent: &str, name: &str) -> Result<QueueName, ApiError> {
    let (project, location) = parse_location(parent, "cloudtasks.queues.create")?;
    let q = parse_queue_name(name).map_err(|e| {
        if name.is_empty() {
            malformed_queue_name()
        } else {
            e
        }
    })?;
    if q.project != project || q.location != location {
        return Err(ApiError::invalid(format!(
            "{name} must begin with {parent}."
        )));
    }
    Ok(q)
}

/// The name a created task must have, checked against its queue.
pub fn parse_new_task_name(queue: &QueueName, name: &str) -> Result<TaskName, ApiError> {
    let t = parse_task_name(name)?;
    if t.queue != *queue {
        return Err(ApiError::invalid(format!(
            "The queue name from request ('{}') must be the same as the queue name in the named task ('{}').",
            queue.full(),
            t.queue.full()
        )));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_names() {
        let q = parse_queue_name("projects/p/locations/l/queues/q-1").unwrap();
        assert_eq!(q.full(), "projects/p/locations/l/queues/q-1");
        assert!(
            parse_queue_name("projects/p/queues/q")
                .unwrap_err()
                .message
                .starts_with("Queue name must be formatted")
        );
        let e = parse_queue_name("projects/p/locations/l/queues/not_valid").unwrap_err();
        assert!(e.message.starts_with("Queue ID \"not_valid\""));
        let t = parse_task_name("projects/p/locations/l/queues/q/tasks/a_b-1").unwrap();
        assert_eq!(t.task, "a_b-1");
        assert!(parse_task_name("projects/p/locations/l/queues/q/tasks/not valid").is_err());
        assert_eq!(
            parse_location("not-a-valid-parent", "x").unwrap_err().code,
            Code::PermissionDenied
        );
        let e = parse_queue_parent("projects/p/locations/l/queues", "cloudtasks.tasks.create")
            .unwrap_err();
        assert!(e.message.contains("cloudtasks.tasks.create"));
    }
}
