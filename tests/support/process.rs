//! Child processes: signals and waiting for their exit.

use std::time::Duration;

/// Sends `signal` (e.g. `-TERM`) to a child process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {signal} failed");
}

/// Waits up to `secs` for a child process to exit and returns its status.
pub async fn wait_for_exit(
    child: &mut std::process::Child,
    secs: u64,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not exit within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
