//! Tasks: create (names, de-duplication, tombstones), read, list (page tokens), delete and
//! run now.

use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{ApiError, Code};
use crate::model::{self, epoch_nanos, from_ts, pb, ts};
use crate::names;
use crate::store::StoredTask;

use super::{
    ENTITY_NOT_FOUND, Engine, QUEUE_NOT_FOUND, QueueState, State, TASK_TOMBSTONED, TASK_TOO_RECENT,
    TaskEntry, decode_token, encode_token,
};

impl Engine {
    pub(super) fn tombstone_until(&self, until: SystemTime) -> Option<SystemTime> {
        (!self.settings.tombstone_ttl.is_zero()).then_some(until)
    }

    pub fn create_task(
        &self,
        parent: &str,
        task: Option<pb::Task>,
        view: i32,
    ) -> Result<pb::Task, ApiError> {
        let qn = names::parse_queue_parent(parent, "cloudtasks.tasks.create")?;
        let mut task = task.unwrap_or_default();
        let now = SystemTime::now();
        task.name = if task.name.is_empty() {
            format!("{}/tasks/{}", qn.full(), model::generate_task_id())
        } else {
            names::parse_new_task_name(&qn, &task.name)?.full()
        };
        model::normalize_http_task(&mut task)?;
        let schedule = match &task.schedule_time {
            Some(t) => model::check_schedule_time(t, now)?,
            None => now,
        };
        if prost::Message::encoded_len(&task) > model::MAX_TASK_SIZE {
            return Err(ApiError::invalid("Task size too large"));
        }
        task.schedule_time = Some(ts(schedule));
        task.create_time = Some(model::Timestamp {
            seconds: ts(now).seconds,
            nanos: 0,
        });
        task.dispatch_count = 0;
        task.response_count = 0;
        task.first_attempt = None;
        task.last_attempt = None;
        task.view = 0;
        let queue_name = qn.full();
        let mut st = self.lock();
        let tombstoned = st.tombstoned(&task.name, now);
        let qs = st
            .queues
            .get_mut(&queue_name)
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        if qs.tasks.contains_key(&task.name) {
            return Err(ApiError::new(
                Code::AlreadyExists,
                "Requested entity already exists",
            ));
        }
        if tombstoned {
            return Err(ApiError::new(Code::AlreadyExists, TASK_TOO_RECENT));
        }
        let stored = StoredTask {
            queue: queue_name,
            task: task.clone(),
            execution_count: 0,
            previous_response: None,
        };
        self.store.put_task(&stored)?;
        qs.ready.insert((epoch_nanos(schedule), task.name.clone()));
        qs.tasks.insert(
            task.name.clone(),
            TaskEntry {
                stored,
                dispatching: None,
            },
        );
        drop(st);
        self.wake.notify_one();
        Ok(view_of(&task, view))
    }

    fn find<'a>(
        st: &'a mut State,
        name: &str,
        now: SystemTime,
    ) -> Result<(&'a mut QueueState, String), ApiError> {
        let tn = names::parse_task_name(name)?;
        let full = tn.full();
        let tombstoned = st.tombstoned(&full, now);
        let qs = st
            .queues
            .get_mut(&tn.queue.full())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        if !qs.tasks.contains_key(&full) {
            return Err(ApiError::not_found(if tombstoned {
                TASK_TOMBSTONED
            } else {
                ENTITY_NOT_FOUND
            }));
        }
        Ok((qs, full))
    }

    pub fn get_task(&self, name: &str, view: i32) -> Result<pb::Task, ApiError> {
        let mut st = self.lock();
        let (qs, full) = Self::find(&mut st, name, SystemTime::now())?;
        Ok(view_of(&qs.tasks[&full].stored.task, view))
    }

    pub fn list_tasks(
        &self,
        parent: &str,
        view: i32,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<pb::Task>, String), ApiError> {
        let qn = names::parse_queue_parent(parent, "cloudtasks.tasks.list")?;
        if page_size < 0 {
            return Err(ApiError::invalid(
                "ListTasksRequest.pageSize cannot be negative.",
            ));
        }
        let after = decode_token(page_token)?;
        let size = if page_size == 0 {
            1000
        } else {
            page_size.min(1000)
        } as usize;
        let st = self.lock();
        let qs = st
            .queues
            .get(&qn.full())
            .ok_or_else(|| ApiError::not_found(QUEUE_NOT_FOUND))?;
        let mut out = Vec::new();
        let mut more = false;
        for (name, entry) in qs.tasks.range(after.clone().unwrap_or_default()..) {
            if after.as_deref() == Some(name.as_str()) {
                continue;
            }
            if out.len() == size {
                more = true;
                break;
            }
            out.push(view_of(&entry.stored.task, view));
        }
        let next = if more {
            out.last()
                .map(|t| encode_token(&t.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    pub fn delete_task(&self, name: &str) -> Result<(), ApiError> {
        let now = SystemTime::now();
        let until = now + self.settings.tombstone_ttl;
        let mut st = self.lock();
        let (qs, full) = Self::find(&mut st, name, now)?;
        let entry = qs.tasks.remove(&full).expect("found above");
        if let Some(at) = entry.stored.task.schedule_time.as_ref() {
            qs.ready.remove(&(epoch_nanos(from_ts(at)), full.clone()));
        }
        self.store.delete_task(&full, self.tombstone_until(until))?;
        if !self.settings.tombstone_ttl.is_zero() {
            st.tombstones.insert(full, until);
        }
        drop(st);
        self.changed.notify_waiters();
        Ok(())
    }

    /// RunTask: dispatches now, whatever the queue's state and rate limits.
    pub fn run_task(self: &Arc<Self>, name: &str, view: i32) -> Result<pb::Task, ApiError> {
        let mut st = self.lock();
        st.next_dispatch_id += 1;
        let id = st.next_dispatch_id;
        let (qs, full) = Self::find(&mut st, name, SystemTime::now())?;
        let entry = qs.tasks.get(&full).expect("found above");
        let mut shown = entry.stored.task.clone();
        if entry.dispatching.is_none() {
            let attempt = Self::start_attempt(qs, &full, id);
            st.in_flight += 1;
            drop(st);
            self.spawn_dispatch(attempt);
        }
        shown.dispatch_count += 1;
        shown.last_attempt = Some(pb::Attempt {
            schedule_time: shown.schedule_time,
            ..Default::default()
        });
        Ok(view_of(&shown, view))
    }
}

fn view_of(task: &pb::Task, view: i32) -> pb::Task {
    let mut t = task.clone();
    let full = view == pb::task::View::Full as i32;
    t.view = if full {
        pb::task::View::Full as i32
    } else {
        pb::task::View::Basic as i32
    };
    if !full && let Some(pb::task::MessageType::HttpRequest(r)) = t.message_type.as_mut() {
        r.body.clear();
    }
    t
}
