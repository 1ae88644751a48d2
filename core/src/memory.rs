//! Allocator tuning for processes that run CKKS at scale. Every operation allocates and frees
//! polynomials of several megabytes; glibc serves those with mmap and hands them back to the
//! kernel, so each reuse pays page faults and zeroing (measured: 117 ms -> 93 ms for one rotation
//! at N = 2^16 with 21 primes). Binaries call `keep_freed_memory` once at start; the library
//! itself never changes process settings.

/// Keeps freed blocks up to 32 MB in the heap (glibc on Linux; a no-op elsewhere).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts glibc's thresholds; it is called before threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
