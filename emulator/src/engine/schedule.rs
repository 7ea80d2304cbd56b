//! Scheduling and dispatch: due tasks handed to dispatch under each queue's rate limits, the
//! bookkeeping after every attempt (retries with the service's backoff), and the engine's
//! idle wait, reset and shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::dispatch::{self, Attempt, Outcome};
use crate::error::ApiError;
use crate::model::{self, RetryPolicy, epoch_nanos, from_ts, pb, ts};

use super::{Engine, QueueState};

impl Engine {
    /// Marks a task as dispatching and copies out what the attempt needs.
    pub(super) fn start_attempt(qs: &mut QueueState, name: &str, id: u64) -> Attempt {
        let entry = qs.tasks.get_mut(name).expect("task exists");
        entry.dispatching = Some(id);
        let t = &entry.stored.task;
        if let Some(at) = t.schedule_time.as_ref() {
            qs.ready
                .remove(&(epoch_nanos(from_ts(at)), name.to_owned()));
        }
        qs.running += 1;
        let request = match &t.message_type {
            Some(pb::task::MessageType::HttpRequest(r)) => r.clone(),
            _ => pb::HttpRequest::default(),
        };
        Attempt {
            queue: qs.queue.name.clone(),
            task: name.to_owned(),
            dispatch_id: id,
            queue_id: qs
                .queue
                .name
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            task_id: name.rsplit('/').next().unwrap_or_default().to_owned(),
            request,
            deadline: t
                .dispatch_deadline
                .as_ref()
                .and_then(model::std_duration)
                .unwrap_or(model::DEFAULT_DISPATCH_DEADLINE),
            schedule_time: t.schedule_time.unwrap_or_default(),
            retry_count: t.dispatch_count,
            execution_count: entry.stored.execution_count,
            previous_response: entry.stored.previous_response,
        }
    }

    pub(super) fn spawn_dispatch(self: &Arc<Self>, attempt: Attempt) {
        let engine = Arc::clone(self);
        self.dispatches.spawn(async move {
            let started = SystemTime::now();
            let clock = Instant::now();
            let headers = dispatch::headers(&attempt, &engine.key, &engine.settings.issuer, started);
            let outcome = dispatch::send(&engine.http, &attempt, headers, &engine.abort).await;
            let latency = clock.elapsed();
            match outcome.status() {
                Some(status) => tracing::info!(
                    task = %attempt.task,
                    url = %attempt.request.url,
                    status,
                    latency_ms = latency.as_secs_f64() * 1e3,
                    retry = attempt.retry_count,
                    "dispatched"
                ),
                None => tracing::info!(task = %attempt.task, "dispatch abandoned at shutdown; task kept"),
            }
            engine.finish(&attempt, outcome, started);
        });
    }

    /// Hands every due task to dispatch; returns how long until the next one may be due.
    fn schedule(self: &Arc<Self>) -> Option<Duration> {
        let now = SystemTime::now();
        let now_ns = epoch_nanos(now);
        let clock = Instant::now();
        let enforce = self.settings.enforce_rate_limits;
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        let mut launches = Vec::new();
        {
            let mut st = self.lock();
            let mut id = st.next_dispatch_id;
            let mut started = 0;
            for qs in st.queues.values_mut() {
                if !qs.is_running() {
                    continue;
                }
                let rl = qs.queue.rate_limits.unwrap_or_default();
                let max_running = rl.max_concurrent_dispatches.max(1) as usize;
                while let Some((at, name)) = qs.ready.first().cloned() {
                    if at > now_ns {
                        soonest(Duration::from_nanos((at - now_ns) as u64));
                        break;
                    }
                    if qs.running >= max_running {
                        break;
                    }
                    if enforce
                        && let Err(wait) = qs.bucket.take(
                            rl.max_dispatches_per_second,
                            f64::from(rl.max_burst_size.max(1)),
                            clock,
                        )
                    {
                        soonest(wait);
                        break;
                    }
                    id += 1;
                    started += 1;
                    launches.push(Self::start_attempt(qs, &name, id));
                }
            }
            st.next_dispatch_id = id;
            st.in_flight += started;
        }
        for attempt in launches {
            self.spawn_dispatch(attempt);
        }
        next
    }

    /// Records an attempt's outcome: success deletes the task, failure schedules the
    /// retry (or deletes the task when both retry limits are spent).
    fn finish(&self, a: &Attempt, outcome: Outcome, started: SystemTime) {
        let now = SystemTime::now();
        let until = now + self.settings.tombstone_ttl;
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        let ttl_on = !self.settings.tombstone_ttl.is_zero();
        let mut tombstone = None;
        if let Some(qs) = st.queues.get_mut(&a.queue) {
            qs.running = qs.running.saturating_sub(1);
            let policy = RetryPolicy::of(&qs.queue);
            let current = qs
                .tasks
                .get(&a.task)
                .is_some_and(|e| e.dispatching == Some(a.dispatch_id));
            if current {
                let entry = qs.tasks.get_mut(&a.task).expect("checked");
                entry.dispatching = None;
                match outcome.status() {
                    None => {
                        let at = entry
                            .stored
                            .task
                            .schedule_time
                            .as_ref()
                            .map_or(0, |s| epoch_nanos(from_ts(s)));
                        qs.ready.insert((at, a.task.clone()));
                    }
                    Some(status) => {
                        let responded = matches!(outcome, Outcome::Response { .. });
                        let t = &mut entry.stored.task;
                        t.dispatch_count += 1;
                        if responded {
                            t.response_count += 1;
                        }
                        let attempt = pb::Attempt {
                            schedule_time: t.schedule_time,
                            dispatch_time: Some(ts(started)),
                            response_time: Some(ts(now)),
                            response_status: Some(model::response_status(status)),
                        };
                        if t.first_attempt.is_none() {
                            // The service keeps only the dispatch time of the first attempt.
                            t.first_attempt = Some(pb::Attempt {
                                dispatch_time: Some(ts(started)),
                                ..Default::default()
                            });
                        }
                        t.last_attempt = Some(attempt);
                        let first = t
                            .first_attempt
                            .as_ref()
                            .and_then(|f| f.dispatch_time.as_ref())
                            .map_or(started, from_ts);
                        let done = (200..300).contains(&status)
                            || policy.exhausted(t.dispatch_count, first, now);
                        if done {
                            if !(200..300).contains(&status) {
                                tracing::warn!(task = %a.task, attempts = t.dispatch_count, status, "task failed permanently; deleted");
                            }
                            qs.tasks.remove(&a.task);
                            if let Err(e) = self.store.delete_task(&a.task, ttl_on.then_some(until))
                            {
                                tracing::error!(error = %e, "state store failed");
                            }
                            tombstone = ttl_on.then(|| a.task.clone());
                        } else {
                            if responded && status < 500 {
                                entry.stored.execution_count += 1;
                            }
                            entry.stored.previous_response = Some(status);
                            let t = &mut entry.stored.task;
                            let mut backoff = policy.backoff((t.dispatch_count - 1).max(0) as u32);
                            if let Outcome::Response {
                                status: 429 | 503,
                                retry_after: Some(after),
                            } = outcome
                            {
                                backoff = backoff.max(after);
                            }
                            let next = now + backoff;
                            t.schedule_time = Some(ts(next));
                            qs.ready.insert((epoch_nanos(next), a.task.clone()));
                            if let Err(e) = self.store.put_task(&entry.stored) {
                                tracing::error!(error = %e, "state store failed");
                            }
                        }
                    }
                }
            }
        }
        if let Some(name) = tombstone {
            st.tombstones.insert(name, until);
        }
        drop(st);
        self.wake.notify_one();
        self.changed.notify_waiters();
    }

    /// The scheduler loop; returns when `stop` fires.
    pub async fn run_scheduler(self: Arc<Self>) {
        loop {
            let wait = self.schedule().unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn is_idle(&self) -> bool {
        let st = self.lock();
        st.in_flight == 0
            && st
                .queues
                .values()
                .all(|q| !q.is_running() || q.tasks.is_empty())
    }

    /// Waits until no dispatch is in flight and every running queue is empty (tasks in
    /// paused queues are not waited for).
    pub async fn wait_idle(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_idle() {
                return;
            }
            changed.await;
        }
    }

    /// Tasks held, in all queues (dispatching ones included).
    pub fn task_count(&self) -> usize {
        self.lock().queues.values().map(|q| q.tasks.len()).sum()
    }

    /// Forgets every queue, task and tombstone, then creates the initial queues again.
    /// Dispatches in flight finish, but their results are dropped.
    pub fn reset(&self) -> Result<(), ApiError> {
        {
            let mut st = self.lock();
            st.queues.clear();
            st.tombstones.clear();
            self.store.clear()?;
        }
        self.create_initial_queues()?;
        self.changed.notify_waiters();
        Ok(())
    }

    /// Stops starting dispatches, lets those in flight finish for up to `grace`, then
    /// abandons the rest (their tasks stay queued, in the store too).
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.dispatches.close();
        if tokio::time::timeout(grace, self.dispatches.wait())
            .await
            .is_err()
        {
            tracing::warn!("dispatches still running after the grace period; putting them back");
            self.abort.cancel();
            self.dispatches.wait().await;
        }
    }
}
