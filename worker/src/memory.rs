//! Keeping the worker's resident memory flat from one image to the next.
//!
//! Each image allocates and frees a few hundred MB (decoded pixels, activations, the composite).
//! glibc's malloc keeps freed memory in the arena of the thread that freed it, and starts a new
//! arena for each thread that contends for one (up to 8 per core): with tokio workers, the
//! blocking pool and the inference threads all touching image buffers, the resident size steps
//! up whenever the work lands on a thread whose arena had not grown yet, and never comes down.
//! So: few arenas, and free pages handed back to the kernel once the worker is idle.
//!
//! Within one image the opposite holds: a forward pass allocates and frees hundreds of MB of
//! activations, layer after layer, and every fresh page costs a page fault and a cleared page
//! (U²-NetP: ~120,000 faults, about a tenth of its forward time, with malloc's defaults, which
//! serve each activation of 1 MB or more with its own `mmap` and unmap it when it is freed).
//! So allocations below 32 MiB (malloc's largest mmap threshold) come from the heap, the heap is
//! not trimmed on every `free`, and [`release_free_memory`] trims it when the worker goes idle
//! (`server::trim_when_idle`: no job finished for 2 s and none running), so back-to-back images
//! reuse the same pages and an idle worker holds only its models.

/// Cap malloc's arenas at two unless `MALLOC_ARENA_MAX` says otherwise, and keep activations
/// on the heap (see the module comment) unless `MALLOC_MMAP_THRESHOLD_` or
/// `MALLOC_TRIM_THRESHOLD_` say otherwise. Call once, early in `main`, before threads start.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |name: &str| std::env::var_os(name).is_none();
        // SAFETY: mallopt only adjusts allocator parameters, each within its documented range
        // (M_ARENA_MAX any positive int, M_MMAP_THRESHOLD at most 32 MiB on 64-bit).
        unsafe {
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            if unset("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            }
            if unset("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}

/// Once idle: free the convolution workspace kept between forward passes and return free heap
/// pages to the kernel.
pub fn release_free_memory() {
    crate::model::kernels::release_workspace();
    backless_common::memory::trim_heap();
}
