//! Test-only fault injection for the crash tests: `NOTIFLOW_FAILPOINT=<name>:<n>`
//! arms the failpoint `<name>` to fire at its `n`-th pass.
//!
//! Components name their points and pick the fault: [`abort`] (a crash at
//! that instant) or [`stop_self`] (SIGSTOP, a zombie in the making once its
//! group session times out).

/// The pass count at which failpoint `name` fires, if the environment arms it.
pub fn armed(name: &str) -> Option<u64> {
    let spec = std::env::var("NOTIFLOW_FAILPOINT").ok()?;
    let (n, count) = spec.rsplit_once(':')?;
    if n != name {
        return None;
    }
    let count = count.parse().ok()?;
    tracing::warn!(%spec, "test failpoint armed");
    Some(count)
}

/// Aborts the process (no destructors, no flush): a crash at this instant.
pub fn abort(name: &str) -> ! {
    tracing::error!(failpoint = name, "failpoint reached: aborting");
    std::process::abort()
}

/// Stops the process with SIGSTOP until someone sends SIGCONT.
pub fn stop_self(name: &str) {
    tracing::warn!(failpoint = name, "failpoint reached: stopping");
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &std::process::id().to_string()])
        .status();
    tracing::warn!(failpoint = name, "resumed after failpoint stop");
}
