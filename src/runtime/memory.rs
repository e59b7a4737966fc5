//! Process memory settings applied once at start, before the engine allocates.

/// Turns transparent huge pages off for this process (Linux; elsewhere a no-op).
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so on a kernel with THP in
/// `madvise` or `always` mode the first touch of any byte of a fresh 2 MiB region faults in and
/// zeroes all of it. A crash step builds hundreds of thousands of event snapshots in freshly
/// committed memory (mimalloc gives idle memory back after its 1 s purge delay), and that
/// zeroing was a large share of the step: the first crash step of a process on the crash
/// bench's 100k book took 365–438 ms with huge pages and 224–284 ms without, and the index and
/// monitor state at 1M fell from 136 to 125 B per position (docs/benchmarks-history.md,
/// "Transparent huge pages off"). Returns what the kernel said; failing (an old kernel, a
/// seccomp filter) only costs that speed.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        rustix::thread::disable_transparent_huge_pages(true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The flag is set for the process and reads back (Linux).
    #[test]
    #[cfg(target_os = "linux")]
    fn huge_pages_are_off_after_the_call() {
        super::disable_transparent_huge_pages().unwrap_or_else(|e| panic!("prctl: {e}"));
        assert!(
            rustix::thread::transparent_huge_pages_are_disabled()
                .unwrap_or_else(|e| panic!("prctl: {e}"))
        );
    }
}
