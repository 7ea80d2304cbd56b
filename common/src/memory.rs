//! Handing freed memory back to the system.
//!
//! glibc's malloc keeps what a process frees for its next allocations, in the middle of the heap
//! as well as at its top. After a burst (thousands of event streams opening, each parsing its
//! request and building its answer; a worker's image) the process keeps the peak's pages
//! resident although little of it is live: 10,000 idle HTTP/2 streams held 486 MiB of which the
//! live heap was about a third. [`trim_heap`] returns the free pages; web calls it periodically
//! ([`trim_periodically`]), the worker once it is idle.

use std::time::Duration;

/// Return free heap pages to the kernel (glibc's `malloc_trim`; nothing elsewhere). It walks
/// malloc's free lists, milliseconds for a heap of hundreds of MB: call it from a thread that may
/// block.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own free lists and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every `every`, [`trim_heap`] on the blocking pool, until `stop` says so.
pub async fn trim_periodically(every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let _ = tokio::task::spawn_blocking(trim_heap).await;
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// Freed memory in the middle of the heap stays resident until trimmed: 256 MiB of 16 KiB
    /// blocks freed except every 64th (so no whole stretch is freed at the heap's top, which
    /// malloc gives back by itself) comes back to the kernel only through `trim_heap`.
    #[test]
    fn trimming_returns_freed_pages_from_the_middle_of_the_heap() {
        const BLOCK: usize = 16 << 10;
        let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|i| vec![i as u8; BLOCK]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        drop(blocks);
        let before = rss_bytes();
        trim_heap();
        let after = rss_bytes();
        assert!(
            before.saturating_sub(after) > 128 << 20,
            "RSS {before} -> {after}: freed pages stayed resident"
        );
        assert_eq!(kept.len(), 256);
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 64) as u8));
    }
}
