//! Waiting on conditions and stopping child processes, shared by the test
//! files that run the daemon.

use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Waits until `condition` holds, checking every 50 ms for at most
/// `timeout`.
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

/// Sends SIGTERM to a child with the `kill` command.
pub async fn terminate(child: &Child) {
    let pid = child.id().expect("child pid").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}
