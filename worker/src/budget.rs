//! How many images run at once follows memory as well as cores: each image reserves what its
//! [`Plan`](backless_common::job::Plan) says it will hold (plus the network's activations when it
//! removes a background) from one budget per process, before any pixel is decoded, and gives it
//! back when it is done. Used by `worker remove`/`worker process` (`--jobs`, `--memory-mb`) and
//! by the push service (`BACKLESS_WORKER_MEMORY_MB`).
//!
//! Waiters are served first come, first served: a large image waits for room rather than being
//! overtaken forever by small ones. A reservation larger than the whole budget is cut to the
//! budget, so such an image runs alone instead of waiting for ever (the plan's own limit,
//! `max_working_bytes`, is what refuses an image outright).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A process-wide budget of bytes.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: u64,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    used: u64,
    /// Tickets of the waiters, oldest first.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

/// Bytes held until dropped.
#[derive(Debug)]
pub struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Reservation {
    /// The bytes held (the request, cut to the budget).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl MemoryBudget {
    /// A budget of `total` bytes (at least one).
    pub fn new(total: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                total: total.max(1),
                state: Mutex::new(State::default()),
                freed: Condvar::new(),
            }),
        }
    }

    pub fn total(&self) -> u64 {
        self.inner.total
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.inner.lock().used
    }

    /// Wait (blocking this thread) until `bytes` fit behind everyone who asked earlier, and
    /// hold them. Call it from a thread that may block (the CLI's batch threads, the service's
    /// blocking pool), never from an async task.
    pub fn reserve(&self, bytes: u64) -> Reservation {
        let bytes = bytes.min(self.inner.total);
        let mut state = self.inner.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(ticket);
        while state.queue.front() != Some(&ticket) || state.used + bytes > self.inner.total {
            state = self
                .inner
                .freed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.queue.pop_front();
        state.used += bytes;
        drop(state);
        // The next in line may fit as well.
        self.inner.freed.notify_all();
        Reservation {
            inner: Arc::clone(&self.inner),
            bytes,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.lock().used -= self.bytes;
        self.inner.freed.notify_all();
    }
}

/// The memory this process may use: the cgroup's limit where one is set (a container, Cloud
/// Run), else the machine's total; `None` where neither can be read.
pub fn memory_limit() -> Option<u64> {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .find_map(|s| s.trim().parse::<u64>().ok());
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    match (cgroup, total) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    }
}

/// The default budget: half of [`memory_limit`] (the rest is for the models, the allocator's
/// slack and whatever else runs), or 2 GiB where the limit is unknown.
pub fn default_budget_bytes() -> u64 {
    memory_limit().map_or(2 << 30, |m| m / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn reservations_never_exceed_the_budget() {
        let budget = MemoryBudget::new(100);
        let peak = Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let (budget, peak) = (budget.clone(), Arc::clone(&peak));
                s.spawn(move || {
                    for _ in 0..20 {
                        let r = budget.reserve(30 + i * 5);
                        peak.fetch_max(budget.used(), Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        drop(r);
                    }
                });
            }
        });
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 100, "peak {peak}");
        assert!(
            peak >= 60,
            "two reservations should have overlapped (peak {peak})"
        );
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_oversized_request_runs_alone_and_a_large_one_is_not_overtaken() {
        let budget = MemoryBudget::new(100);
        let huge = budget.reserve(u64::MAX);
        assert_eq!(huge.bytes(), 100);
        let order = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            // A large request queues first, then small ones: the large one goes first once the
            // budget is free, even though each small one would fit beside the other.
            let (b, o) = (budget.clone(), Arc::clone(&order));
            s.spawn(move || {
                let _r = b.reserve(90);
                o.lock().unwrap().push("large");
            });
            while budget.inner.lock().queue.is_empty() {
                std::thread::yield_now();
            }
            for _ in 0..2 {
                let (b, o) = (budget.clone(), Arc::clone(&order));
                s.spawn(move || {
                    let _r = b.reserve(40);
                    o.lock().unwrap().push("small");
                });
            }
            while budget.inner.lock().queue.len() < 3 {
                std::thread::yield_now();
            }
            drop(huge);
        });
        assert_eq!(order.lock().unwrap()[0], "large");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_limit_is_read_here() {
        // Linux CI: /proc/meminfo exists; a budget is half of it at most.
        let limit = memory_limit().expect("a memory limit on Linux");
        assert!(limit > 64 << 20);
        assert!(default_budget_bytes() <= limit);
    }
}
