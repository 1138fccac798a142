//! STARTTLS with a verified certificate and SMTP AUTH against real servers:
//! Postfix (`scripts/postfix-loopback`, reconfigured with a certificate
//! and a Cyrus SASL database that this test creates) and aiosmtpd
//! (`scripts/aiosmtpd-store --tls-cert … --auth-user …`).
//!
//! The certificate comes from a fresh test CA and names `localhost` and
//! `127.0.0.1`. The certificate that `scripts/postfix-loopback` installs is
//! not used because it is self-signed with `CA:TRUE`, which webpki rejects
//! as a server certificate.
//!
//! When a peer is missing (or, for Postfix, the test does not run as root,
//! or `saslpasswd2` from the Debian package sasl2-bin is missing) the test
//! fails with `CI=true` and otherwise prints a notice and passes.

#[path = "interop/peers.rs"]
#[allow(dead_code, reason = "this test uses a part of the peer helpers")]
mod peers;
#[path = "tls/support.rs"]
#[allow(dead_code, reason = "each test file uses a part of the shared setup")]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mxsend::TlsPolicy;
use mxsend::proto::Address;
use mxsend::proto::data::DataPolicy;
use mxsend::{DeliveryReport, Message};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use support::{Pki, USER, auth, connection_config, describe, relay};

/// A UTF-8 password, as the issue asks AUTH to handle.
const PASSWORD: &str = "Passwört-über-TLS ✓";

/// Time allowed for a peer to start and for Postfix to store a message.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

async fn message(recipient: &str, marker: &str) -> Message {
    let content = format!(
        "From: sender@example.com\r\nTo: {recipient}\r\nSubject: {marker}\r\n\r\nOver TLS.\r\n"
    );
    Message::from_bytes(
        Some(Address::parse("sender@example.com").unwrap()),
        vec![Address::parse(recipient).unwrap()],
        content.as_bytes(),
        DataPolicy::default(),
    )
    .await
    .unwrap()
}

/// Delivers through the relay at 127.0.0.1:`port` with TLS verify against
/// the test CA and AUTH with [`USER`] and [`PASSWORD`].
async fn deliver_verified(pki: &Pki, port: u16, message: &Message) -> DeliveryReport {
    let mut config = connection_config(Some(TlsPolicy::Verify), pki);
    config.auth = Some(auth(PASSWORD));
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let delivery = relay(server, "127.0.0.1", config);
    tokio::time::timeout(PEER_TIMEOUT, delivery.deliver(message))
        .await
        .expect("delivery did not finish in time")
}

/// Writes the server certificate and key into `folder`.
fn write_server_certificate(pki: &Pki, folder: &Path) -> (PathBuf, PathBuf) {
    let certificate = pki.localhost();
    let cert = folder.join("server.pem");
    let key = folder.join("server.key");
    std::fs::write(&cert, &certificate.cert_pem).unwrap();
    std::fs::write(&key, &certificate.key_pem).unwrap();
    (cert, key)
}

struct Aiosmtpd {
    child: Child,
    messages: PathBuf,
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_aiosmtpd(pki: &Pki, folder: &Path) -> Aiosmtpd {
    let (cert, key) = write_server_certificate(pki, folder);
    let password_file = folder.join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let messages = folder.join("messages");
    std::fs::create_dir(&messages).unwrap();
    let log = std::fs::File::create(folder.join("aiosmtpd.log")).unwrap();
    let port = peers::free_port();
    let mut child = Command::new(script("aiosmtpd-store"))
        .arg("--port")
        .arg(port.to_string())
        .arg("--dir")
        .arg(&messages)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--auth-user")
        .arg(USER)
        .arg("--auth-password-file")
        .arg(&password_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting scripts/aiosmtpd-store");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let read =
        tokio::time::timeout(PEER_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
    assert!(
        matches!(read, Ok(Ok(_))) && line.trim() == "ready",
        "aiosmtpd-store did not start: {line:?}\n{}",
        std::fs::read_to_string(folder.join("aiosmtpd.log")).unwrap_or_default()
    );
    // The port is in the child's arguments only, so keep it in the path.
    std::fs::write(folder.join("port"), port.to_string()).unwrap();
    Aiosmtpd { child, messages }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiosmtpd_starttls_verify_and_auth() {
    const TEST: &str = "aiosmtpd_starttls_verify_and_auth";
    if let Some(reason) = peers::aiosmtpd_missing() {
        return peers::skip_unless_ci(TEST, &reason);
    }
    let pki = Pki::new();
    let folder = tempfile::tempdir().unwrap();
    let peer = start_aiosmtpd(&pki, folder.path()).await;
    let port: u16 = std::fs::read_to_string(folder.path().join("port"))
        .unwrap()
        .parse()
        .unwrap();

    for mechanism in [
        mxsend::proto::Mechanism::Plain,
        mxsend::proto::Mechanism::Login,
    ] {
        let marker = format!("aiosmtpd {mechanism}");
        let message = message("someone@example.net", &marker).await;
        let mut config = connection_config(Some(TlsPolicy::Verify), &pki);
        let mut settings = auth(PASSWORD);
        settings.mechanism = Some(mechanism);
        config.auth = Some(settings);
        let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let report = tokio::time::timeout(
            PEER_TIMEOUT,
            relay(server, "127.0.0.1", config).deliver(&message),
        )
        .await
        .expect("delivery did not finish in time");
        assert_eq!(report.delivered(), 1, "{mechanism}: {}", describe(&report));
        assert!(
            report.attempts[0].result.contains("certificate verified"),
            "{}",
            describe(&report)
        );
        assert!(
            report
                .transcript
                .iter()
                .any(|entry| entry.line.text == format!("AUTH {mechanism}")
                    || entry.line.text == format!("AUTH {mechanism} <redacted>")),
            "{}",
            describe(&report)
        );
    }
    let stored = std::fs::read_dir(&peer.messages)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))
        })
        .count();
    assert_eq!(stored, 2);

    // A wrong password is a permanent failure for the relay.
    let message = message("someone@example.net", "wrong password").await;
    let mut config = connection_config(Some(TlsPolicy::Verify), &pki);
    config.auth = Some(auth("wrong"));
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let report = relay(server, "127.0.0.1", config).deliver(&message).await;
    assert_eq!(
        report.recipients[0].outcome,
        mxsend::proto::Outcome::Failed,
        "{}",
        describe(&report)
    );
    assert_eq!(
        report.recipients[0].reply.as_ref().map(|r| r.code),
        Some(535)
    );
}

/// Runs a command and panics with its output when it fails.
fn run(program: &str, arguments: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{program} {arguments:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Where Cyrus SASL, as built by Debian, looks for the configuration of
/// the application `smtpd`.
///
/// NOTE: Postfix 3.7.11 with Debian's Cyrus SASL 2.1.28 did not read this
/// file from the folder set in `cyrus_sasl_config_path` (its `mech_list`
/// and `sasldb_path` had no effect), so the test writes it here.
const CYRUS_SMTPD_CONF: &str = "/etc/postfix/sasl/smtpd.conf";

/// First line of the Cyrus configuration this test writes, so that a
/// file written by someone else is never replaced or removed.
const CYRUS_CONF_MARKER: &str = "# Written by the mxsend tls_interop test.";

/// Removes [`CYRUS_SMTPD_CONF`] when dropped.
struct CyrusConfig;

impl Drop for CyrusConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(CYRUS_SMTPD_CONF);
    }
}

/// Points the running Postfix at the test certificate and a Cyrus SASL
/// database in `folder` with one user, then reloads it.
fn configure_postfix(pki: &Pki, folder: &Path) -> CyrusConfig {
    use std::os::unix::fs::PermissionsExt;

    // smtpd runs as the postfix user and must reach the SASL files.
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (cert, key) = write_server_certificate(pki, folder);
    let sasldb = folder.join("sasldb2");
    if let Ok(existing) = std::fs::read_to_string(CYRUS_SMTPD_CONF) {
        assert!(
            existing.starts_with(CYRUS_CONF_MARKER),
            "{CYRUS_SMTPD_CONF} exists and was not written by this test; move it away to run it"
        );
    }
    std::fs::write(
        CYRUS_SMTPD_CONF,
        format!(
            "{CYRUS_CONF_MARKER}\npwcheck_method: auxprop\nauxprop_plugin: sasldb\n\
             sasldb_path: {}\nmech_list: PLAIN LOGIN CRAM-MD5\n",
            sasldb.display()
        ),
    )
    .unwrap();
    let guard = CyrusConfig;
    // Cyrus splits "user@realm" at the last "@".
    let (name, realm) = USER.rsplit_once('@').unwrap();
    let sasldb_arg = sasldb.to_string_lossy().into_owned();
    run(
        "saslpasswd2",
        &["-c", "-p", "-f", &sasldb_arg, "-u", realm, name],
        Some(PASSWORD),
    );
    run("chown", &["postfix", &sasldb_arg], None);
    run(
        "postconf",
        &[
            "-e",
            &format!("smtpd_tls_cert_file = {}", cert.display()),
            &format!("smtpd_tls_key_file = {}", key.display()),
            "smtpd_sasl_auth_enable = yes",
            "smtpd_sasl_type = cyrus",
            "smtpd_sasl_path = smtpd",
            "smtpd_tls_auth_only = yes",
        ],
        None,
    );
    run("postfix", &["reload"], None);
    guard
}

/// Waits for a file in `maildir/new` that contains `marker`.
async fn wait_for_mail(maildir: &Path, marker: &str) -> bool {
    let deadline = tokio::time::Instant::now() + PEER_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(entries) = std::fs::read_dir(maildir.join("new")) {
            for entry in entries.flatten() {
                if std::fs::read_to_string(entry.path()).is_ok_and(|text| text.contains(marker)) {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_starttls_verify_and_auth() {
    const TEST: &str = "postfix_starttls_verify_and_auth";
    if let Some(reason) = peers::postfix_missing() {
        return peers::skip_unless_ci(TEST, &reason);
    }
    if std::process::Command::new("saslpasswd2")
        .arg("-v")
        .output()
        .is_err()
    {
        return peers::skip_unless_ci(
            TEST,
            "saslpasswd2 not found (install the Debian package sasl2-bin)",
        );
    }
    let pki = Pki::new();
    // Declared before the Postfix guard, so it is removed after the stop.
    let folder = tempfile::tempdir().unwrap();
    let postfix = peers::Postfix::start().await;
    let _cyrus = configure_postfix(&pki, folder.path());
    let maildir = postfix.maildir("postfix.test");

    let marker = format!(
        "tls-auth-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let message = message("tls-user@postfix.test", &marker).await;
    let report = deliver_verified(&pki, postfix.port(), &message).await;
    assert_eq!(
        report.delivered(),
        1,
        "{}\nPostfix log:\n{}",
        describe(&report),
        postfix.log_tail()
    );
    assert!(
        report.attempts[0].result.contains("certificate verified"),
        "{}",
        describe(&report)
    );
    assert!(
        wait_for_mail(&maildir, &marker).await,
        "message not stored in {}; Postfix log:\n{}",
        maildir.display(),
        postfix.log_tail()
    );

    // Postfix rejects a wrong password with 535: a permanent failure.
    let mut config = connection_config(Some(TlsPolicy::Verify), &pki);
    config.auth = Some(auth("wrong password"));
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], postfix.port()));
    let report = relay(server, "127.0.0.1", config).deliver(&message).await;
    assert_eq!(
        report.recipients[0].outcome,
        mxsend::proto::Outcome::Failed,
        "{}",
        describe(&report)
    );
    assert_eq!(
        report.recipients[0].reply.as_ref().map(|r| r.code),
        Some(535)
    );
}
