//! Runs `mxsend send` with TLS and SMTP AUTH against the scripted server:
//! the password from each source, and no trace of it in anything the
//! command prints, with `-v`, `--json` and `RUST_LOG=trace`.

use std::process::Output;
use std::time::Duration;

use mxsend_testkit::{Script, SmtpServer, TestCa};
use tokio::process::Command;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const USER: &str = "cli-user@example.test";
const PASSWORD: &str = "Grüße-aus-Köln 🔑 4c9e";
const MESSAGE: &str = "From: Alice <alice@example.com>\nTo: bob@example.net\nSubject: auth\n\nhi\n";

struct Setup {
    folder: tempfile::TempDir,
    server: SmtpServer,
}

async fn setup(password: &str) -> Setup {
    let ca = TestCa::new().unwrap();
    let certificate = ca
        .server_certificate(&["localhost", "127.0.0.1"], false)
        .unwrap();
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("ca.pem"), ca.ca_pem()).unwrap();
    std::fs::write(folder.path().join("password"), format!("{password}\n")).unwrap();
    let server = SmtpServer::start(
        Script::new()
            .extensions(&["PIPELINING", "AUTH PLAIN LOGIN"])
            .starttls(certificate.server_config().unwrap())
            .auth(USER, PASSWORD),
    )
    .await
    .unwrap();
    Setup { folder, server }
}

impl Setup {
    fn args(&self) -> Vec<String> {
        [
            "send",
            "--relay",
            &format!("127.0.0.1:{}", self.server.addr().port()),
            "--tls",
            "verify",
            "--ca-file",
            &self.folder.path().join("ca.pem").to_string_lossy(),
            "--auth-user",
            USER,
            "--helo",
            "client.example.com",
            "--reply-timeout",
            "10",
            "--to",
            "bob@example.net",
            "-v",
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect()
    }
}

async fn mxsend(args: &[String], password_variable: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;

    let mut command = Command::new(env!("CARGO_BIN_EXE_mxsend"));
    command
        .args(args)
        .env("RUST_LOG", "trace")
        .env_remove("MXSEND_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(value) = password_variable {
        command.env("MXSEND_PASSWORD", value);
    }
    let mut child = command.spawn().expect("spawn mxsend");
    let mut input = child.stdin.take().expect("stdin");
    // mxsend exits before it reads standard input on a usage error, and
    // then the write fails with a broken pipe; the exit status tells.
    let _ = input.write_all(MESSAGE.as_bytes()).await;
    drop(input);
    tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("mxsend did not finish in time")
        .expect("wait for mxsend")
}

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_secret(text: &str) {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    for secret in [
        PASSWORD.to_owned(),
        // A part of the password, in case it leaks cut. The hex-looking tail
        // is left out: trace logs print TLS records as hex, which may
        // contain any four hex digits by chance.
        "Grüße-aus-Köln".to_owned(),
        engine.encode(PASSWORD),
        engine.encode(format!("\0{USER}\0{PASSWORD}")),
    ] {
        assert!(
            !text.contains(&secret),
            "secret {secret:?} printed:\n{text}"
        );
    }
}

#[tokio::test]
async fn password_file_delivers_and_stays_secret() {
    let setup = setup(PASSWORD).await;
    let mut args = setup.args();
    args.push("--password-file".to_owned());
    args.push(
        setup
            .folder
            .path()
            .join("password")
            .to_string_lossy()
            .into_owned(),
    );
    for json in [false, true] {
        let mut args = args.clone();
        if json {
            args.push("--json".to_owned());
        }
        let output = mxsend(&args, None).await;
        let text = printed(&output);
        assert_eq!(output.status.code(), Some(0), "{text}");
        assert!(text.contains("AUTH PLAIN <redacted>"), "{text}");
        assert!(text.contains("TRACE"), "no trace output: {text}");
        assert_no_secret(&text);
    }
    assert_eq!(setup.server.messages().len(), 2);
}

#[tokio::test]
async fn password_command_and_variable() {
    let setup = setup(PASSWORD).await;
    let password_path = setup.folder.path().join("password");
    let mut args = setup.args();
    args.push("--password-command".to_owned());
    args.push(format!("cat '{}'", password_path.display()));
    args.push("--auth-mech".to_owned());
    args.push("login".to_owned());
    let output = mxsend(&args, None).await;
    let text = printed(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_no_secret(&text);

    let output = mxsend(&setup.args(), Some(PASSWORD)).await;
    let text = printed(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_no_secret(&text);
    assert_eq!(setup.server.messages().len(), 2);
}

#[tokio::test]
async fn wrong_password_is_permanent_failure() {
    let setup = setup("not the password").await;
    let mut args = setup.args();
    args.push("--password-file".to_owned());
    args.push(
        setup
            .folder
            .path()
            .join("password")
            .to_string_lossy()
            .into_owned(),
    );
    let output = mxsend(&args, None).await;
    let text = printed(&output);
    assert_eq!(output.status.code(), Some(69), "{text}");
    assert!(text.contains("535"), "{text}");
    assert!(!text.contains("not the password"), "{text}");
    assert!(setup.server.messages().is_empty());
}

#[tokio::test]
async fn missing_password_is_usage_error() {
    let setup = setup(PASSWORD).await;
    let output = mxsend(&setup.args(), None).await;
    let text = printed(&output);
    assert_eq!(output.status.code(), Some(64), "{text}");
    assert!(text.contains("MXSEND_PASSWORD"), "{text}");
    assert!(
        setup.server.sessions().is_empty(),
        "connected before failing"
    );
}

#[tokio::test]
async fn unreadable_ca_file_is_usage_error() {
    let setup = setup(PASSWORD).await;
    let mut args = setup.args();
    let position = args.iter().position(|a| a == "--ca-file").unwrap();
    args[position + 1] = "/nonexistent/ca.pem".to_owned();
    let output = mxsend(&args, Some(PASSWORD)).await;
    let text = printed(&output);
    assert_eq!(output.status.code(), Some(64), "{text}");
    assert!(text.contains("/nonexistent/ca.pem"), "{text}");
    assert!(setup.server.sessions().is_empty());
}
