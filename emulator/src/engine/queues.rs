//! Queues: create, read, list, update (field masks), pause, resume, purge and delete.

use std::time::SystemTime;

use crate::error::{ApiError, Code};
use crate::model::{self, pb, ts};
use crate::names;

use super::{ENTITY_NOT_FOUND, Engine, QUEUE_NOT_FOUND, QueueState, decode_token, encode_token};

impl Engine {
    pub fn create_queue(
        &self,
        parent: &str,
        queue: Option<pb::Queue>,
    ) -> Result<pb::Queue, ApiError> {
        names::parse_location(parent, "cloudtasks.queues.create")?;
        let mut queue = queue.unwrap_or_default();
        let qn = names::parse_new_queue_name(parent, &queue.name)?;
        queue.name = qn.full();
        queue.state = pb::queue::State::Running as i32;
        queue.purge_time = None;
        model::normalize_queue(&mut queue)?;
        let mut st = self.lock();
        if st.queues.contains_key(&queue.name) {
            return Err(ApiError::new(Code::AlreadyExists, "Queue already exists"));
        }
        self.store.put_queue(&queue)?;
        st.queues
            .insert(queue.name.clone(), QueueState::new(queue.clone()));
        Ok(queue)
    }

    pub fn get_queue(&self, name: &str) -> Result<pb::Queue, ApiError> {
        let qn = names::parse_queue_name(name)?;
        let st = self.lock();
        st.queues
            .get(&qn.full())
            .map(|q| q.queue.clone())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))
    }

    pub fn list_queues(
        &self,
        parent: &str,
        filter: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<pb::Queue>, String), ApiError> {
        let (project, location) = names::parse_location(parent, "cloudtasks.queues.list")?;
        if page_size < 0 {
            return Err(ApiError::invalid(
                "ListQueuesRequest.pageSize cannot be negative.",
            ));
        }
        let state_filter = parse_queue_filter(filter)?;
        let after = decode_token(page_token)?;
        let size = if page_size == 0 {
            9800
        } else {
            page_size.min(9800)
        } as usize;
        let prefix = format!("projects/{project}/locations/{location}/queues/");
        let st = self.lock();
        let mut out = Vec::new();
        let mut more = false;
        for (name, q) in st.queues.range(after.clone().unwrap_or_default()..) {
            if !name.starts_with(&prefix) || after.as_deref() == Some(name.as_str()) {
                continue;
            }
            if state_filter.is_some_and(|s| s != q.queue.state) {
                continue;
            }
            if out.len() == size {
                more = true;
                break;
            }
            out.push(q.queue.clone());
        }
        let next = if more {
            out.last()
                .map(|q| encode_token(&q.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    /// UpdateQueue: creates the queue when missing; with a mask, changes only those fields.
    pub fn update_queue(
        &self,
        queue: Option<pb::Queue>,
        mask: Option<Vec<String>>,
    ) -> Result<pb::Queue, ApiError> {
        let Some(update) = queue else {
            return Err(ApiError::invalid(
                "Invalid resource field value in the request.",
            ));
        };
        let qn = names::parse_queue_name(&update.name)?;
        let name = qn.full();
        let mut st = self.lock();
        let existing = st.queues.get(&name).map(|q| q.queue.clone());
        let mut q = existing.clone().unwrap_or_else(|| default_queue(&name));
        match mask {
            Some(paths) if !paths.is_empty() => {
                for path in paths {
                    apply_mask_path(&mut q, &update, &path)?;
                }
            }
            Some(_) if existing.is_some() => {}
            _ => {
                q.rate_limits = update.rate_limits;
                q.retry_config = update.retry_config;
                q.stackdriver_logging_config = update.stackdriver_logging_config;
                q.app_engine_routing_override = update.app_engine_routing_override.clone();
            }
        }
        if let Some(rl) = q.rate_limits.as_mut() {
            rl.max_burst_size = 0;
        }
        model::normalize_queue(&mut q)?;
        self.store.put_queue(&q)?;
        match st.queues.get_mut(&name) {
            Some(qs) => qs.queue = q.clone(),
            None => {
                st.queues.insert(name, QueueState::new(q.clone()));
            }
        }
        drop(st);
        self.wake.notify_one();
        Ok(q)
    }

    pub fn delete_queue(&self, name: &str) -> Result<(), ApiError> {
        let qn = names::parse_queue_name(name)?;
        let mut st = self.lock();
        if st.queues.remove(&qn.full()).is_none() {
            return Err(ApiError::not_found(ENTITY_NOT_FOUND));
        }
        self.store.delete_queue(&qn.full())?;
        drop(st);
        self.changed.notify_waiters();
        Ok(())
    }

    pub fn purge_queue(&self, name: &str) -> Result<pb::Queue, ApiError> {
        let qn = names::parse_queue_name(name)?;
        let now = SystemTime::now();
        let until = now + self.settings.tombstone_ttl;
        let mut st = self.lock();
        let qs = st
            .queues
            .get_mut(&qn.full())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        let names: Vec<String> = qs.tasks.keys().cloned().collect();
        qs.tasks.clear();
        qs.ready.clear();
        qs.queue.purge_time = Some(ts(now));
        let queue = qs.queue.clone();
        self.store.put_queue(&queue)?;
        for n in &names {
            self.store.delete_task(n, self.tombstone_until(until))?;
        }
        if !self.settings.tombstone_ttl.is_zero() {
            for n in names {
                st.tombstones.insert(n, until);
            }
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(queue)
    }

    fn set_state(&self, name: &str, state: pb::queue::State) -> Result<pb::Queue, ApiError> {
        let qn = names::parse_queue_name(name)?;
        let mut st = self.lock();
        let qs = st
            .queues
            .get_mut(&qn.full())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        qs.queue.state = state as i32;
        let queue = qs.queue.clone();
        self.store.put_queue(&queue)?;
        drop(st);
        self.wake.notify_one();
        self.changed.notify_waiters();
        Ok(queue)
    }

    pub fn pause_queue(&self, name: &str) -> Result<pb::Queue, ApiError> {
        self.set_state(name, pb::queue::State::Paused)
    }

    pub fn resume_queue(&self, name: &str) -> Result<pb::Queue, ApiError> {
        self.set_state(name, pb::queue::State::Running)
    }
}

pub(super) fn default_queue(name: &str) -> pb::Queue {
    pb::Queue {
        name: name.to_owned(),
        ..Default::default()
    }
}

fn parse_queue_filter(filter: &str) -> Result<Option<i32>, ApiError> {
    let f = filter.trim();
    if f.is_empty() {
        return Ok(None);
    }
    let rest = f.strip_prefix("state").map(str::trim_start);
    let value = rest
        .and_then(|r| r.strip_prefix('=').or_else(|| r.strip_prefix(':')))
        .map(str::trim);
    match value.and_then(pb::queue::State::from_str_name) {
        Some(s) => Ok(Some(s as i32)),
        None => Err(ApiError::new(
            Code::Unimplemented,
            format!(
                "ListQueues filter \"{filter}\" is not supported by the emulator; only `state = STATE` is."
            ),
        )),
    }
}

fn apply_mask_path(q: &mut pb::Queue, u: &pb::Queue, path: &str) -> Result<(), ApiError> {
    let snake: String = path
        .trim()
        .chars()
        .flat_map(|c| {
            if c.is_ascii_uppercase() {
                vec!['_', c.to_ascii_lowercase()]
            } else {
                vec![c]
            }
        })
        .collect();
    let rl = || u.rate_limits.unwrap_or_default();
    let rc = || u.retry_config.unwrap_or_default();
    match snake.as_str() {
        "name" | "state" | "purge_time" | "rate_limits.max_burst_size" => {}
        "rate_limits" => q.rate_limits = u.rate_limits,
        "rate_limits.max_dispatches_per_second" => {
            q.rate_limits
                .get_or_insert_default()
                .max_dispatches_per_second = rl().max_dispatches_per_second
        }
        "rate_limits.max_concurrent_dispatches" => {
            q.rate_limits
                .get_or_insert_default()
                .max_concurrent_dispatches = rl().max_concurrent_dispatches
        }
        "retry_config" => q.retry_config = u.retry_config,
        "retry_config.max_attempts" => {
            q.retry_config.get_or_insert_default().max_attempts = rc().max_attempts
        }
        "retry_config.max_retry_duration" => {
            q.retry_config.get_or_insert_default().max_retry_duration = rc().max_retry_duration
        }
        "retry_config.min_backoff" => {
            q.retry_config.get_or_insert_default().min_backoff = rc().min_backoff
        }
        "retry_config.max_backoff" => {
            q.retry_config.get_or_insert_default().max_backoff = rc().max_backoff
        }
        "retry_config.max_doublings" => {
            q.retry_config.get_or_insert_default().max_doublings = rc().max_doublings
        }
        "stackdriver_logging_config" | "stackdriver_logging_config.sampling_ratio" => {
            q.stackdriver_logging_config = u.stackdriver_logging_config
        }
        "app_engine_routing_override" => {
            q.app_engine_routing_override = u.app_engine_routing_override.clone()
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "Unknown field mask path \"{path}\" for google.cloud.tasks.v2.Queue."
            )));
        }
    }
    Ok(())
}
