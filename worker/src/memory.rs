//! Keeping the worker's resident memory flat from one image to the next.
//!
//! Each image allocates and frees a few hundred MB (decoded pixels, activations, the composite).
//! glibc's malloc keeps freed memory in the arena of the thread that freed it, and starts a new
//! arena for each thread that contends for one (up to 8 per core): with tokio workers, the
//! blocking pool and the inference threads all touching image buffers, the resident size steps
//! up whenever the work lands on a thread whose arena had not grown yet, and never comes down.
//! So: few arenas, and free pages handed back to the kernel after each image.

/// Cap malloc's arenas at two unless `MALLOC_ARENA_MAX` says otherwise. Call once, early in
/// `main`, before threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only adjusts allocator parameters; M_ARENA_MAX takes any positive int.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Return free heap pages to the kernel (after an image's buffers were dropped).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim walks malloc's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
