//! Process-wide settings of the host's own OS process: the few calls into libc that are
//! about the whole process rather than one subsystem.
//!
//! - [`ignore_file_size_signal`]: a write past `RLIMIT_FSIZE` must fail with `EFBIG`
//!   (an error the caller reports and recovers from) instead of raising `SIGXFSZ`, whose
//!   default action kills the host mid-install.
//! - [`return_free_memory`]: glibc keeps freed heap memory in its arenas; after a burst
//!   (a flood of casts drained, thousands of clients gone) the host hands it back to the
//!   OS so its resident size falls back. [`return_free_memory_soon`] asks for it without
//!   waiting: one background thread (`graft-trim`) trims, at most every 250 ms, so no
//!   actor runner or async worker ever blocks on the allocator's locks for it.
//!
//! Invariant: all are safe to call at any time from any thread, any number of times.

/// Makes writes past the file-size limit fail with `EFBIG` instead of killing the process
/// with `SIGXFSZ`. Idempotent.
pub fn ignore_file_size_signal() {
    // SAFETY: `signal` with `SIG_IGN` installs no handler code (nothing runs on delivery),
    // and SIGXFSZ is not used by anything else in the host; the call only changes the
    // disposition of one signal.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Returns the allocator's free memory to the OS (glibc's `malloc_trim`). Cheap when
/// there is nothing to return; takes a few milliseconds after a large burst.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointers; it only walks the allocator's own free
    // lists under the allocator's locks, and is documented as safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The shortest time between two trims by the background thread.
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Asks the background thread to return free memory to the OS; never blocks. Requests
/// made while a trim is pending or running are merged into it.
pub fn return_free_memory_soon() {
    use std::sync::OnceLock;
    use std::sync::mpsc::{SyncSender, sync_channel};
    static TRIMMER: OnceLock<Option<SyncSender<()>>> = OnceLock::new();
    let trimmer = TRIMMER.get_or_init(|| {
        let (sender, requests) = sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("graft-trim".to_owned())
            .spawn(move || {
                while requests.recv().is_ok() {
                    return_free_memory();
                    std::thread::sleep(TRIM_INTERVAL);
                }
            })
            .ok()
            .map(|_| sender)
    });
    match trimmer {
        // Full: a trim is already pending, which covers this request.
        Some(sender) => {
            let _ = sender.try_send(());
        }
        // No thread could be started: trim here rather than never.
        None => return_free_memory(),
    }
}
