//! The receiving servers: aiosmtpd through `scripts/aiosmtpd-store` and
//! Postfix through `scripts/postfix-loopback`, each stopped when its guard
//! is dropped.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Time allowed for a peer to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of a script in the repository's `scripts` folder.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// Ends the test when a prerequisite is missing: with `CI=true` the test
/// fails, elsewhere it writes a notice and the caller returns.
///
/// The notice goes straight to the process's standard error, past the output
/// capture of the test harness, so that a skipped run is visible.
pub fn skip_unless_ci(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{test}: {reason} (CI=true, so a missing prerequisite is an error)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "notice: {test} skipped: {reason} (with CI=true this fails)"
    );
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("binding 127.0.0.1:0 to find a free port failed");
    listener
        .local_addr()
        .expect("local address of the port probe not available")
        .port()
}

/// Returns whether `program` is an executable file in a folder of `PATH`.
fn in_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|folder| {
        std::fs::metadata(folder.join(program))
            .is_ok_and(|metadata| metadata.is_file() && metadata_is_executable(&metadata))
    })
}

fn metadata_is_executable(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o111 != 0
}

/// Runs a command and returns whether it succeeded with its trimmed
/// standard output, or `None` when it cannot run.
fn command_output(program: &str, arguments: &[&str]) -> Option<(bool, String)> {
    let output = std::process::Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Some((output.status.success(), text))
}

/// Returns why aiosmtpd cannot run here, or `None` when it can.
pub fn aiosmtpd_missing() -> Option<String> {
    match command_output("python3", &["-c", "import aiosmtpd"]) {
        None => Some("python3 not found".to_owned()),
        Some((false, _)) => Some(
            "the Python module aiosmtpd is not installed (pip install aiosmtpd==1.4.6)".to_owned(),
        ),
        Some((true, _)) => None,
    }
}

/// Returns why Postfix cannot run here, or `None` when it can.
pub fn postfix_missing() -> Option<String> {
    if !in_path("postfix") || !in_path("postconf") {
        return Some(
            "postfix or postconf not found in PATH (install the Debian package 'postfix')"
                .to_owned(),
        );
    }
    match command_output("id", &["-u"]) {
        Some((true, uid)) if uid == "0" => None,
        Some((true, uid)) => Some(format!(
            "scripts/postfix-loopback must run as root to configure Postfix (uid {uid})"
        )),
        _ => Some("cannot find the user id: `id -u` failed".to_owned()),
    }
}

/// aiosmtpd listening on 127.0.0.1, storing messages as `<n>.eml` and
/// `<n>.json` in its own temporary folder. Dropping it kills the server.
pub struct Aiosmtpd {
    child: Child,
    port: u16,
    folder: tempfile::TempDir,
}

impl Aiosmtpd {
    /// Starts `scripts/aiosmtpd-store` on a free port, with 8BITMIME offered
    /// and SMTPUTF8 offered only when `smtputf8` is true, and waits for its
    /// "ready" line.
    pub async fn start(smtputf8: bool) -> Aiosmtpd {
        let folder = tempfile::tempdir().expect("creating a temporary folder failed");
        let port = free_port();

        // The script requires the message folder to exist.
        std::fs::create_dir(folder.path().join("messages"))
            .expect("creating the aiosmtpd message folder failed");
        let log = std::fs::File::create(folder.path().join("server.log"))
            .expect("creating the aiosmtpd log file failed");
        let mut child = Command::new(script("aiosmtpd-store"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(folder.path().join("messages"))
            .arg(if smtputf8 {
                "--smtputf8"
            } else {
                "--no-smtputf8"
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("starting scripts/aiosmtpd-store failed");

        let stdout = child
            .stdout
            .take()
            .expect("stdout of aiosmtpd-store is piped");
        let mut peer = Aiosmtpd {
            child,
            port,
            folder,
        };

        let mut first_line = String::new();
        let read = tokio::time::timeout(
            START_TIMEOUT,
            BufReader::new(stdout).read_line(&mut first_line),
        )
        .await;
        if !matches!(read, Ok(Ok(_)) if first_line.trim() == "ready") {
            let _ = peer.child.start_kill();
            panic!(
                "aiosmtpd-store on port {port} did not print \"ready\" within {START_TIMEOUT:?} \
                 (read {first_line:?}); its log:\n{}",
                peer.log()
            );
        }
        peer
    }

    /// Returns the port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the folder where messages are stored.
    pub fn messages(&self) -> PathBuf {
        self.folder.path().join("messages")
    }

    /// Returns the server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.folder.path().join("server.log"))
            .unwrap_or_else(|error| format!("(log not readable: {error})"))
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Lock file held from `start` to `stop` by every test process that uses
/// Postfix. Postfix is one service for the whole machine, so a second test
/// process that restarted it on another port would break a running test.
/// `scripts/postfix-loopback` locks its own file only while it runs.
const POSTFIX_SESSION_LOCK: &str = "/run/mxsend-interop-postfix.lock";

/// Time to wait for another test process to release Postfix.
const POSTFIX_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// Postfix started by `scripts/postfix-loopback start PORT`. Dropping it runs
/// `scripts/postfix-loopback stop`, then releases the session lock.
pub struct Postfix {
    port: u16,
    _session_lock: std::fs::File,
}

impl Postfix {
    /// Takes the session lock, then configures and starts Postfix on a free
    /// port of 127.0.0.1.
    pub async fn start() -> Postfix {
        let session_lock = lock_postfix_session().await;
        let port = free_port();
        // The guard exists before the start, so that a start that fails half
        // way still ends with a stop.
        let peer = Postfix {
            port,
            _session_lock: session_lock,
        };
        let output = tokio::time::timeout(
            START_TIMEOUT,
            Command::new(script("postfix-loopback"))
                .arg("start")
                .arg(port.to_string())
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("scripts/postfix-loopback start {port} timed out"))
        .expect("running scripts/postfix-loopback failed");
        assert!(
            output.status.success(),
            "scripts/postfix-loopback start {port} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        peer
    }

    /// Returns the port Postfix listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the Maildir of `domain`, as the script reports it.
    pub fn maildir(&self, domain: &str) -> PathBuf {
        let output = std::process::Command::new(script("postfix-loopback"))
            .arg("maildir")
            .arg(domain)
            .output()
            .expect("running scripts/postfix-loopback maildir failed");
        assert!(
            output.status.success(),
            "scripts/postfix-loopback maildir {domain} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    }

    /// Returns the last lines of the Postfix log, for failure messages.
    pub fn log_tail(&self) -> String {
        const LINES: usize = 30;
        let log = std::fs::read_to_string("/var/log/postfix-mxsend.log").unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LINES)..].join("\n")
    }
}

/// Opens and locks [`POSTFIX_SESSION_LOCK`], waiting at most
/// [`POSTFIX_LOCK_TIMEOUT`] for another test process to release it.
async fn lock_postfix_session() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(POSTFIX_SESSION_LOCK)
        .unwrap_or_else(|error| panic!("opening {POSTFIX_SESSION_LOCK} failed: {error}"));
    let deadline = tokio::time::Instant::now() + POSTFIX_LOCK_TIMEOUT;
    loop {
        match file.try_lock() {
            Ok(()) => return file,
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => panic!(
                "timed out after {POSTFIX_LOCK_TIMEOUT:?} waiting for {POSTFIX_SESSION_LOCK}: \
                 another test process is still using Postfix"
            ),
            Err(std::fs::TryLockError::Error(error)) => {
                panic!("locking {POSTFIX_SESSION_LOCK} failed: {error}")
            }
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let result = std::process::Command::new(script("postfix-loopback"))
            .arg("stop")
            .stdin(Stdio::null())
            .output();
        match result {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: scripts/postfix-loopback stop failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Err(error) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: running scripts/postfix-loopback stop failed: {error}"
                );
            }
        }
    }
}
