//! SMTP AUTH (RFC 4954) against the scripted server: mechanism choice,
//! challenges answered by order, UTF-8 passwords, refusals, and secrets
//! kept out of every report, transcript, error and log line
//! (C-AUTH-01 to C-AUTH-03).

#[path = "tls/support.rs"]
#[allow(dead_code, reason = "each test file uses a part of the shared setup")]
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use mxsend::proto::{Mechanism, Outcome, SessionError};
use mxsend::{Connection, DeliveryReport, TlsPolicy};
use mxsend_testkit::{Action, Point, Script, SmtpServer};

use support::{Pki, USER, auth, connection_config, deliver, describe, relay};

/// A password with non-ASCII letters, a symbol outside the BMP and a
/// space, so that any encoding mistake shows.
const PASSWORD: &str = "pässwörd ✓ 𝄞 secret-7f3a";

fn tls_auth_server(pki: &Pki, mechanisms: &str) -> Script {
    Script::new()
        .extensions(&["PIPELINING", "8BITMIME", &format!("AUTH {mechanisms}")])
        .starttls(pki.server_config())
        .auth(USER, PASSWORD)
}

/// The AUTH command line the server received, if any.
fn auth_command(server: &SmtpServer) -> Option<String> {
    server.sessions().iter().find_map(|session| {
        session
            .commands
            .iter()
            .find(|c| c.starts_with("AUTH"))
            .cloned()
    })
}

async fn deliver_with(
    server: &SmtpServer,
    pki: &Pki,
    policy: TlsPolicy,
    settings: mxsend::proto::AuthSettings,
) -> DeliveryReport {
    let mut config = connection_config(Some(policy), pki);
    config.auth = Some(settings);
    deliver(&relay(server.addr(), "127.0.0.1", config)).await
}

#[tokio::test]
async fn plain_after_starttls_with_utf8_password() {
    let pki = Pki::new();
    let server = SmtpServer::start(tls_auth_server(&pki, "LOGIN PLAIN"))
        .await
        .unwrap();
    let report = deliver_with(&server, &pki, TlsPolicy::Verify, auth(PASSWORD)).await;

    assert_eq!(report.delivered(), 1, "{}", describe(&report));
    let command = auth_command(&server).unwrap();
    assert!(command.starts_with("AUTH PLAIN "), "{command}");
    let session = &server.sessions()[0];
    let starttls = session.commands.iter().position(|c| c == "STARTTLS");
    let auth = session.commands.iter().position(|c| c.starts_with("AUTH"));
    assert!(
        starttls < auth,
        "AUTH before STARTTLS: {:?}",
        session.commands
    );
}

#[tokio::test]
async fn strongest_mechanism_chosen() {
    let pki = Pki::new();
    let server = SmtpServer::start(tls_auth_server(&pki, "LOGIN PLAIN CRAM-MD5"))
        .await
        .unwrap();
    let report = deliver_with(&server, &pki, TlsPolicy::Verify, auth(PASSWORD)).await;
    assert_eq!(report.delivered(), 1, "{}", describe(&report));
    assert_eq!(auth_command(&server).unwrap(), "AUTH CRAM-MD5");
}

#[tokio::test]
async fn named_mechanism_used() {
    let pki = Pki::new();
    for (mechanism, expected) in [
        (Mechanism::Login, "AUTH LOGIN"),
        (Mechanism::Plain, "AUTH PLAIN "),
        (Mechanism::XOAuth2, "AUTH XOAUTH2 "),
    ] {
        let server = SmtpServer::start(tls_auth_server(&pki, "PLAIN LOGIN CRAM-MD5 XOAUTH2"))
            .await
            .unwrap();
        let mut settings = auth(PASSWORD);
        settings.mechanism = Some(mechanism);
        let report = deliver_with(&server, &pki, TlsPolicy::Verify, settings).await;
        assert_eq!(report.delivered(), 1, "{mechanism}: {}", describe(&report));
        let command = auth_command(&server).unwrap();
        assert!(command.starts_with(expected), "{mechanism}: {command}");
    }
}

#[tokio::test]
async fn named_mechanism_not_offered() {
    let pki = Pki::new();
    let server = SmtpServer::start(tls_auth_server(&pki, "PLAIN"))
        .await
        .unwrap();
    let mut settings = auth(PASSWORD);
    settings.mechanism = Some(Mechanism::CramMd5);
    let report = deliver_with(&server, &pki, TlsPolicy::Verify, settings).await;
    assert_eq!(report.recipients[0].outcome, Outcome::Deferred);
    assert!(
        report.recipients[0]
            .reason
            .contains("does not include CRAM-MD5"),
        "{}",
        report.recipients[0].reason
    );
    assert_eq!(auth_command(&server), None);
}

/// LOGIN challenges are answered by their order: an empty first prompt
/// and lower-case prompts get the same answers.
#[tokio::test]
async fn login_empty_and_lower_case_challenges() {
    let pki = Pki::new();
    // "username:" and "password:" in lower case, and an empty prompt.
    for (first, second) in [
        ("", ""),
        ("dXNlcm5hbWU6", "cGFzc3dvcmQ6"),
        ("cGFzc3dvcmQ6", ""),
    ] {
        let server =
            SmtpServer::start(tls_auth_server(&pki, "LOGIN").login_challenges(first, second))
                .await
                .unwrap();
        let report = deliver_with(&server, &pki, TlsPolicy::Verify, auth(PASSWORD)).await;
        assert_eq!(
            report.delivered(),
            1,
            "challenges {first:?} {second:?}: {}",
            describe(&report)
        );
    }
}

#[tokio::test]
async fn auth_not_sent_when_gone_after_tls() {
    let pki = Pki::new();
    let server = SmtpServer::start(
        tls_auth_server(&pki, "PLAIN LOGIN").extensions_after_tls(&["PIPELINING", "8BITMIME"]),
    )
    .await
    .unwrap();
    let mut config = connection_config(Some(TlsPolicy::Verify), &pki);
    config.auth = Some(auth(PASSWORD));
    let error = Connection::connect_host(server.addr(), "127.0.0.1", &config)
        .await
        .expect_err("no AUTH after TLS");
    assert_eq!(
        error.session_error(),
        Some(&SessionError::AuthNotOffered { encrypted: true })
    );
    assert_eq!(auth_command(&server), None);
}

#[tokio::test]
async fn auth_refused_over_plaintext() {
    let pki = Pki::new();
    let plain_server = || {
        Script::new()
            .extensions(&["PIPELINING", "AUTH PLAIN LOGIN"])
            .auth(USER, PASSWORD)
    };
    let server = SmtpServer::start(plain_server()).await.unwrap();
    let report = deliver_with(&server, &pki, TlsPolicy::May, auth(PASSWORD)).await;
    assert_eq!(report.recipients[0].outcome, Outcome::Deferred);
    assert!(
        report.recipients[0].reason.contains("not encrypted"),
        "{}",
        report.recipients[0].reason
    );
    assert_eq!(auth_command(&server), None);

    let server = SmtpServer::start(plain_server()).await.unwrap();
    let mut settings = auth(PASSWORD);
    settings.dangerous_allow_plaintext = true;
    let report = deliver_with(&server, &pki, TlsPolicy::None, settings).await;
    assert_eq!(report.delivered(), 1, "{}", describe(&report));
}

#[tokio::test]
async fn rejected_credentials_fail_relay_permanently() {
    let pki = Pki::new();
    let server = SmtpServer::start(tls_auth_server(&pki, "PLAIN"))
        .await
        .unwrap();
    let report = deliver_with(&server, &pki, TlsPolicy::Verify, auth("wrong password")).await;
    let recipient = &report.recipients[0];
    assert_eq!(recipient.outcome, Outcome::Failed, "{}", describe(&report));
    assert_eq!(recipient.reply.as_ref().map(|r| r.code), Some(535));
    assert!(
        recipient.reason.contains("authentication failed"),
        "{}",
        recipient.reason
    );
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn temporary_auth_failure_defers() {
    let pki = Pki::new();
    let server = SmtpServer::start(tls_auth_server(&pki, "PLAIN").on(
        Point::Auth,
        Action::reply("454 4.7.0 Temporary authentication failure"),
    ))
    .await
    .unwrap();
    let report = deliver_with(&server, &pki, TlsPolicy::Verify, auth(PASSWORD)).await;
    let recipient = &report.recipients[0];
    assert_eq!(
        recipient.outcome,
        Outcome::Deferred,
        "{}",
        describe(&report)
    );
    assert!(recipient.reason.contains("454"), "{}", recipient.reason);
}

#[tokio::test]
async fn unexpected_challenge_cancels() {
    let pki = Pki::new();
    // A PLAIN exchange that asks again after the initial response.
    let server =
        SmtpServer::start(tls_auth_server(&pki, "PLAIN").on(Point::Auth, Action::reply("334 ")))
            .await
            .unwrap();
    let report = deliver_with(&server, &pki, TlsPolicy::Verify, auth(PASSWORD)).await;
    assert_eq!(report.recipients[0].outcome, Outcome::Deferred);
    let commands = &server.sessions()[0].commands;
    assert!(commands.iter().any(|c| c == "*"), "{commands:?}");
    assert!(
        report.recipients[0].reason.contains("cancelled"),
        "{}",
        report.recipients[0].reason
    );
}

/// A writer for the tracing subscriber that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The password in every form a mechanism puts on the wire.
fn secret_forms() -> Vec<String> {
    let plain = format!("\0{USER}\0{PASSWORD}");
    vec![
        PASSWORD.to_owned(),
        "secret-7f3a".to_owned(),
        BASE64.encode(PASSWORD),
        BASE64.encode(plain),
    ]
}

/// Sends a known password with each mechanism, including one that fails,
/// and checks that no report, transcript, error, Debug output or trace
/// line of the mxsend crate contains it.
#[tokio::test(flavor = "current_thread")]
async fn secrets_never_printed() {
    use tracing_subscriber::layer::SubscriberExt;

    let captured = Captured::default();
    let writer = captured.clone();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            // The test server logs what it receives, on purpose.
            !metadata.target().starts_with("mxsend_testkit")
        }));
    use tracing_subscriber::Layer;
    let subscriber = tracing_subscriber::registry()
        .with(layer.with_filter(tracing_subscriber::filter::LevelFilter::TRACE));
    // A subscriber set for this thread only misses call sites that other
    // tests, running at the same time without one, reached first: tracing
    // caches them as disabled. The global one sees every thread, so trace
    // lines of the other tests in this binary are checked too.
    tracing::subscriber::set_global_default(subscriber)
        .expect("only this test sets the global tracing subscriber");

    let pki = Pki::new();
    let mut printed = String::new();
    for (mechanism, password) in [
        (Mechanism::Plain, PASSWORD),
        (Mechanism::Login, PASSWORD),
        (Mechanism::CramMd5, PASSWORD),
        (Mechanism::XOAuth2, PASSWORD),
        (Mechanism::Plain, "secret-7f3a but wrong"),
    ] {
        let server = SmtpServer::start(tls_auth_server(&pki, "PLAIN LOGIN CRAM-MD5 XOAUTH2"))
            .await
            .unwrap();
        let mut settings = auth(password);
        settings.mechanism = Some(mechanism);
        let mut config = connection_config(Some(TlsPolicy::Verify), &pki);
        config.auth = Some(settings);
        printed.push_str(&format!("{config:?}\n"));
        let delivery = relay(server.addr(), "127.0.0.1", config.clone());
        printed.push_str(&format!("{delivery:?}\n"));
        let report = deliver(&delivery).await;
        printed.push_str(&describe(&report));
        printed.push_str(&format!("{report:?}\n"));
        match Connection::connect_host(server.addr(), "127.0.0.1", &config).await {
            Ok(mut connection) => {
                printed.push_str(&format!("{connection:?}\n"));
                for line in connection.take_transcript() {
                    printed.push_str(&format!("{line}\n"));
                }
                connection.quit().await.unwrap();
            }
            Err(error) => printed.push_str(&format!("{error} {error:?}\n")),
        }
        // The server did receive the credentials, so the check below is
        // not vacuous.
        let sasl_lines: Vec<String> = server.sessions()[0].commands.clone();
        assert!(
            sasl_lines.iter().any(|c| c.starts_with("AUTH")),
            "{mechanism}: {sasl_lines:?}"
        );
    }
    printed.push_str(&String::from_utf8_lossy(&captured.0.lock().unwrap()));

    assert!(printed.contains("AUTH PLAIN <redacted>"), "{printed}");
    assert!(printed.contains("<SASL line redacted>"), "{printed}");
    assert!(printed.contains("TRACE"), "no trace lines captured");
    for secret in secret_forms() {
        assert!(
            !printed.contains(&secret),
            "secret form {secret:?} printed:\n{printed}"
        );
    }
}
