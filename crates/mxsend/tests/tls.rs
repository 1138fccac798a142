//! TLS policies against the scripted server with real TLS: STARTTLS,
//! certificate checks, downgrades, response injection, failed handshakes,
//! implicit TLS and client certificates (C-TLS-01 to C-TLS-04).

#[path = "tls/support.rs"]
#[allow(dead_code, reason = "each test file uses a part of the shared setup")]
mod support;

use std::time::Duration;

use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, Outcome, SessionError};
use mxsend::{Connection, ConnectionError, DeliveryConfig, Message, Route, TlsConfig, TlsPolicy};
use mxsend_testkit::{Action, Point, Script, SmtpServer, TestCa};

use support::{Pki, STEP_TIMEOUT, connection_config, deliver, describe, relay};

/// Whether any session sent a MAIL command, which must never happen when
/// the TLS policy was not met.
fn sent_mail(server: &SmtpServer) -> bool {
    server
        .sessions()
        .iter()
        .any(|session| session.commands.iter().any(|c| c.starts_with("MAIL")))
}

#[test]
fn default_policy_by_route() {
    let mx = DeliveryConfig::default();
    assert_eq!(mx.tls_policy(), TlsPolicy::May);
    let relay = DeliveryConfig {
        route: Route::Relay {
            host: "smtp.example.test".to_owned(),
            port: 587,
        },
        ..DeliveryConfig::default()
    };
    assert_eq!(relay.tls_policy(), TlsPolicy::Verify);
    let mut explicit = relay.clone();
    explicit.connection.tls.policy = Some(TlsPolicy::None);
    assert_eq!(explicit.tls_policy(), TlsPolicy::None);
}

#[test]
fn policy_names_parse() {
    for policy in TlsPolicy::ALL {
        assert_eq!(policy.name().parse::<TlsPolicy>(), Ok(policy));
    }
    assert!("secure".parse::<TlsPolicy>().is_err());
}

#[tokio::test]
async fn verify_delivers_over_starttls() {
    let pki = Pki::new();
    let server = SmtpServer::start(Script::new().starttls(pki.server_config()))
        .await
        .unwrap();
    // The relay default is verify; the certificate names 127.0.0.1.
    let delivery = relay(server.addr(), "127.0.0.1", connection_config(None, &pki));
    let report = deliver(&delivery).await;

    assert_eq!(report.delivered(), 1, "{}", describe(&report));
    assert_eq!(server.messages().len(), 1);
    let sessions = server.sessions();
    assert!(sessions[0].tls, "the session did not switch to TLS");
    assert!(
        report.attempts[0].result.contains("certificate verified"),
        "{}",
        describe(&report)
    );
    // EHLO before and after the handshake (RFC 3207 section 4.2).
    let ehlos = sessions[0]
        .commands
        .iter()
        .filter(|c| c.starts_with("EHLO"))
        .count();
    assert_eq!(ehlos, 2, "commands: {:?}", sessions[0].commands);
}

#[tokio::test]
async fn verify_by_host_name() {
    let pki = Pki::new();
    let server = SmtpServer::start(Script::new().starttls(pki.server_config()))
        .await
        .unwrap();
    // "localhost." with its trailing dot, as an MX name would come.
    let delivery = relay(server.addr(), "localhost.", connection_config(None, &pki));
    let report = deliver(&delivery).await;
    assert_eq!(report.delivered(), 1, "{}", describe(&report));
}

#[tokio::test]
async fn may_accepts_unverified_certificate() {
    let pki = Pki::new();
    let other = pki
        .ca
        .server_certificate(&["other.example.test"], true)
        .unwrap();
    let server = SmtpServer::start(Script::new().starttls(other.server_config().unwrap()))
        .await
        .unwrap();
    let mut config = connection_config(Some(TlsPolicy::May), &pki);
    config.tls.ca_file = None;
    let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;

    assert_eq!(report.delivered(), 1, "{}", describe(&report));
    assert!(server.sessions()[0].tls);
    assert!(
        report.attempts[0]
            .result
            .contains("certificate not verified"),
        "{}",
        describe(&report)
    );
}

#[tokio::test]
async fn encrypt_accepts_unverified_certificate() {
    let pki = Pki::new();
    let other = pki
        .ca
        .server_certificate(&["other.example.test"], false)
        .unwrap();
    let server = SmtpServer::start(Script::new().starttls(other.server_config().unwrap()))
        .await
        .unwrap();
    let config = connection_config(Some(TlsPolicy::Encrypt), &pki);
    let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;
    assert_eq!(report.delivered(), 1, "{}", describe(&report));
    assert!(server.sessions()[0].tls);
}

/// A server whose EHLO reply lacks STARTTLS, as after a man in the middle
/// removed the line (C-TLS-02), under each STARTTLS policy.
#[tokio::test]
async fn stripped_starttls_under_each_policy() {
    let pki = Pki::new();
    let cases = [
        (TlsPolicy::None, Outcome::Delivered),
        (TlsPolicy::May, Outcome::Delivered),
        (TlsPolicy::Encrypt, Outcome::Deferred),
        (TlsPolicy::Verify, Outcome::Deferred),
    ];
    for (policy, expected) in cases {
        let server = SmtpServer::start(Script::new()).await.unwrap();
        let config = connection_config(Some(policy), &pki);
        let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;
        let recipient = &report.recipients[0];
        assert_eq!(
            recipient.outcome,
            expected,
            "{policy}: {}",
            describe(&report)
        );
        if expected == Outcome::Deferred {
            assert!(
                recipient.reason.contains("does not offer STARTTLS"),
                "{policy}: {}",
                recipient.reason
            );
            let hint = format!("the TLS policy is {policy}; choose --tls may");
            assert!(
                recipient.reason.contains(&hint),
                "{policy}: {}",
                recipient.reason
            );
            assert!(!sent_mail(&server), "{policy}: MAIL sent without TLS");
            let commands = &server.sessions()[0].commands;
            assert_eq!(commands.last().map(String::as_str), Some("QUIT"));
        }
    }
}

#[tokio::test]
async fn verify_rejects_wrong_name() {
    let pki = Pki::new();
    let other = pki
        .ca
        .server_certificate(&["other.example.test"], false)
        .unwrap();
    let server = SmtpServer::start(Script::new().starttls(other.server_config().unwrap()))
        .await
        .unwrap();
    let report = deliver(&relay(
        server.addr(),
        "localhost",
        connection_config(None, &pki),
    ))
    .await;

    let recipient = &report.recipients[0];
    assert_eq!(
        recipient.outcome,
        Outcome::Deferred,
        "{}",
        describe(&report)
    );
    assert!(
        recipient.reason.contains("localhost") && recipient.reason.contains("not valid for"),
        "{}",
        recipient.reason
    );
    assert!(!sent_mail(&server));
    assert_eq!(server.sessions().len(), 1, "no retry in plain text");
}

#[tokio::test]
async fn verify_rejects_expired_certificate() {
    let pki = Pki::new();
    let expired = pki
        .ca
        .server_certificate(&["localhost", "127.0.0.1"], true)
        .unwrap();
    let server = SmtpServer::start(Script::new().starttls(expired.server_config().unwrap()))
        .await
        .unwrap();
    let report = deliver(&relay(
        server.addr(),
        "127.0.0.1",
        connection_config(None, &pki),
    ))
    .await;
    let recipient = &report.recipients[0];
    assert_eq!(recipient.outcome, Outcome::Deferred);
    assert!(recipient.reason.contains("expired"), "{}", recipient.reason);
    assert!(
        recipient.reason.contains("127.0.0.1"),
        "{}",
        recipient.reason
    );
    assert!(!sent_mail(&server));
}

#[tokio::test]
async fn verify_rejects_unknown_ca() {
    let pki = Pki::new();
    let server = SmtpServer::start(Script::new().starttls(pki.server_config()))
        .await
        .unwrap();
    let mut config = connection_config(None, &pki);
    config.tls.ca_file = None;
    let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;
    let recipient = &report.recipients[0];
    assert_eq!(recipient.outcome, Outcome::Deferred);
    assert!(
        recipient.reason.contains("--ca-file"),
        "{}",
        recipient.reason
    );
    assert!(!sent_mail(&server));
}

/// A self-signed certificate with CA:TRUE, trusted with --ca-file, is
/// still no server certificate (RFC 5280 section 4.2.1.9), and the reason
/// states it in words instead of a rustls debug name.
#[tokio::test]
async fn verify_rejects_ca_as_server_certificate() {
    let pki = Pki::new();
    let certificate = TestCa::self_signed_ca(&["localhost", "127.0.0.1"]).unwrap();
    let server = SmtpServer::start(Script::new().starttls(certificate.server_config().unwrap()))
        .await
        .unwrap();
    let mut config = connection_config(None, &pki);
    config.tls.ca_file = Some(pki.write("self-signed.pem", &certificate.cert_pem));
    let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;

    let recipient = &report.recipients[0];
    assert_eq!(recipient.outcome, Outcome::Deferred);
    assert!(
        recipient.reason.contains("presented a CA certificate"),
        "{}",
        recipient.reason
    );
    assert!(!recipient.reason.contains("CaUsedAsEndEntity"));
    assert!(!sent_mail(&server));
}

/// The 220 go-ahead and a forged reply in the same segment: the client
/// must stop before the handshake (response injection, C-TLS-01).
#[tokio::test]
async fn injection_after_starttls_go_ahead() {
    let pki = Pki::new();
    for policy in [TlsPolicy::May, TlsPolicy::Verify] {
        let server = SmtpServer::start(Script::new().starttls(pki.server_config()).on(
            Point::StartTls,
            Action::Raw(b"220 2.0.0 Ready to start TLS\r\n250 2.1.0 forged\r\n".to_vec()),
        ))
        .await
        .unwrap();
        let config = connection_config(Some(policy), &pki);
        let error = Connection::connect_host(server.addr(), "127.0.0.1", &config)
            .await
            .expect_err("the session must end");
        assert!(
            matches!(
                error.session_error(),
                Some(SessionError::DataAfterStartTls { octets: 18 })
            ),
            "{policy}: {error:?}"
        );

        let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;
        assert_eq!(report.recipients[0].outcome, Outcome::Deferred);
        assert!(
            report.recipients[0].reason.contains("response injection"),
            "{}",
            report.recipients[0].reason
        );
        assert!(!sent_mail(&server), "{policy}: MAIL sent after injection");
        assert_eq!(server.sessions().len(), 2, "{policy}: no plain-text retry");
    }
}

#[tokio::test]
async fn may_retries_plain_after_failed_handshake() {
    let pki = Pki::new();
    let server = SmtpServer::start(
        Script::new()
            .starttls(pki.server_config())
            .on(Point::StartTls.session(1), Action::FailTlsHandshake),
    )
    .await
    .unwrap();
    let config = connection_config(Some(TlsPolicy::May), &pki);
    let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;

    assert_eq!(report.delivered(), 1, "{}", describe(&report));
    let sessions = server.sessions();
    assert_eq!(sessions.len(), 2);
    assert!(!sessions[1].commands.iter().any(|c| c == "STARTTLS"));
    let result = &report.attempts[0].result;
    assert!(result.contains("TLS handshake"), "{result}");
    assert!(result.contains("retried without TLS"), "{result}");
    assert!(result.contains("(no TLS)"), "{result}");
}

#[tokio::test]
async fn failed_handshake_not_retried_when_required() {
    let pki = Pki::new();
    for policy in [TlsPolicy::Encrypt, TlsPolicy::Verify] {
        let server = SmtpServer::start(
            Script::new()
                .starttls(pki.server_config())
                .on(Point::StartTls, Action::FailTlsHandshake),
        )
        .await
        .unwrap();
        let config = connection_config(Some(policy), &pki);
        let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;
        let recipient = &report.recipients[0];
        assert_eq!(recipient.outcome, Outcome::Deferred, "{policy}");
        assert!(
            recipient.reason.contains("TLS handshake with 127.0.0.1"),
            "{policy}: {}",
            recipient.reason
        );
        assert_eq!(server.sessions().len(), 1, "{policy}: no plain-text retry");
        assert!(!sent_mail(&server));
    }
}

#[tokio::test]
async fn starttls_454_under_may_continues_plain() {
    let pki = Pki::new();
    let server = SmtpServer::start(Script::new().starttls(pki.server_config()).on(
        Point::StartTls,
        Action::reply("454 4.7.0 TLS not available due to temporary reason"),
    ))
    .await
    .unwrap();
    let config = connection_config(Some(TlsPolicy::May), &pki);
    let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;

    assert_eq!(report.delivered(), 1, "{}", describe(&report));
    let commands = &server.sessions()[0].commands;
    let starttls = commands.iter().position(|c| c == "STARTTLS").unwrap();
    assert!(
        commands[starttls + 1].starts_with("MAIL"),
        "plain session after 454: {commands:?}"
    );
}

#[tokio::test]
async fn starttls_454_under_verify_fails() {
    let pki = Pki::new();
    let server = SmtpServer::start(Script::new().starttls(pki.server_config()).on(
        Point::StartTls,
        Action::reply("454 4.7.0 TLS not available due to temporary reason"),
    ))
    .await
    .unwrap();
    let report = deliver(&relay(
        server.addr(),
        "127.0.0.1",
        connection_config(None, &pki),
    ))
    .await;
    let recipient = &report.recipients[0];
    assert_eq!(recipient.outcome, Outcome::Deferred);
    assert!(
        recipient.reason.contains("refused STARTTLS"),
        "{}",
        recipient.reason
    );
    assert!(!sent_mail(&server));
}

#[tokio::test]
async fn helo_fallback_never_skips_required_starttls() {
    let pki = Pki::new();
    let refuse_ehlo = || {
        Script::new().starttls(pki.server_config()).on(
            Point::Ehlo,
            Action::reply("502 5.5.2 Error: command not recognized"),
        )
    };
    let server = SmtpServer::start(refuse_ehlo()).await.unwrap();
    let report = deliver(&relay(
        server.addr(),
        "127.0.0.1",
        connection_config(None, &pki),
    ))
    .await;
    assert_eq!(report.recipients[0].outcome, Outcome::Deferred);
    let commands = &server.sessions()[0].commands;
    assert!(
        !commands.iter().any(|c| c.starts_with("HELO")),
        "{commands:?}"
    );
    assert!(!sent_mail(&server));

    // Under may the same server gets HELO and the message in plain text.
    let server = SmtpServer::start(refuse_ehlo()).await.unwrap();
    let config = connection_config(Some(TlsPolicy::May), &pki);
    let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;
    assert_eq!(report.delivered(), 1, "{}", describe(&report));
}

/// What EHLO advertised before TLS is forgotten after it: here PIPELINING
/// and SIZE vanish, and the client must not use them.
#[tokio::test]
async fn capabilities_forgotten_after_tls() {
    let pki = Pki::new();
    let server = SmtpServer::start(
        Script::new()
            .extensions(&["PIPELINING", "SIZE 1000", "8BITMIME"])
            .extensions_after_tls(&["8BITMIME"])
            .starttls(pki.server_config()),
    )
    .await
    .unwrap();
    let config = connection_config(Some(TlsPolicy::Verify), &pki);
    let connection = Connection::connect_host(server.addr(), "127.0.0.1", &config)
        .await
        .expect("connect");
    let extensions = connection.extensions().expect("EHLO after TLS");
    assert!(!extensions.pipelining);
    assert_eq!(extensions.size, None);
    assert!(!extensions.starttls);
    assert!(extensions.eight_bit_mime);
    assert!(connection.is_encrypted());
    connection.quit().await.unwrap();

    // MAIL then goes out alone: no pipelining after TLS.
    let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;
    assert_eq!(report.delivered(), 1, "{}", describe(&report));
    let mail_line = report
        .transcript
        .iter()
        .position(|entry| entry.line.text.starts_with("MAIL"))
        .unwrap();
    assert!(
        report.transcript[mail_line + 1]
            .line
            .text
            .starts_with("250"),
        "MAIL was pipelined after TLS: {}",
        describe(&report)
    );
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let pki = Pki::new();
    let server = SmtpServer::start(Script::new().implicit_tls(pki.server_config()))
        .await
        .unwrap();
    let config = connection_config(Some(TlsPolicy::Implicit), &pki);
    let report = deliver(&relay(server.addr(), "127.0.0.1", config)).await;
    assert_eq!(report.delivered(), 1, "{}", describe(&report));
    let sessions = server.sessions();
    assert!(sessions[0].tls);
    assert!(!sessions[0].commands.iter().any(|c| c == "STARTTLS"));
}

/// A client set up for STARTTLS that reaches a TLS-only port waits for a
/// greeting that never comes; the error must say what to change.
#[tokio::test]
async fn starttls_client_on_implicit_port_times_out_with_hint() {
    let pki = Pki::new();
    let server = SmtpServer::start(Script::new().implicit_tls(pki.server_config()))
        .await
        .unwrap();
    let mut config = connection_config(Some(TlsPolicy::Verify), &pki);
    config.timeouts.greeting = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let error = tokio::time::timeout(
        support::TEST_TIMEOUT,
        Connection::connect_host(server.addr(), "127.0.0.1", &config),
    )
    .await
    .expect("no hang")
    .expect_err("no greeting");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(
            error.session_error(),
            Some(SessionError::TimedOut {
                phase: mxsend::proto::Phase::Greeting,
                ..
            })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("--tls implicit"), "{error}");
}

/// The reverse: implicit TLS against a plain-text port. The greeting
/// arrives where the server's TLS reply should be.
#[tokio::test]
async fn implicit_client_on_plain_port_names_mistake() {
    let pki = Pki::new();
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let config = connection_config(Some(TlsPolicy::Implicit), &pki);
    let error = tokio::time::timeout(
        support::TEST_TIMEOUT,
        Connection::connect_host(server.addr(), "127.0.0.1", &config),
    )
    .await
    .expect("no hang")
    .expect_err("no TLS");
    assert!(error.is_tls_handshake_failure(), "{error:?}");
    assert!(error.to_string().contains("STARTTLS"), "{error}");

    // A plain-text port that stays silent: the handshake timeout ends it.
    let silent = SmtpServer::start(Script::new().on(Point::Connect, Action::Hang))
        .await
        .unwrap();
    let mut config = connection_config(Some(TlsPolicy::Implicit), &pki);
    config.tls.handshake_timeout = Duration::from_millis(500);
    let error = tokio::time::timeout(
        support::TEST_TIMEOUT,
        Connection::connect_host(silent.addr(), "127.0.0.1", &config),
    )
    .await
    .expect("no hang")
    .expect_err("no TLS");
    assert!(
        matches!(error, ConnectionError::TlsTimeout { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("STARTTLS"), "{error}");
}

#[tokio::test]
async fn client_certificate_presented() {
    let pki = Pki::new();
    let client = pki.ca.client_certificate("client.example.test").unwrap();
    let server_config = pki
        .localhost()
        .server_config_requiring_client(pki.ca.ca_pem())
        .unwrap();
    let server = SmtpServer::start(Script::new().starttls(server_config))
        .await
        .unwrap();

    let without = deliver(&relay(
        server.addr(),
        "127.0.0.1",
        connection_config(None, &pki),
    ))
    .await;
    assert_eq!(without.recipients[0].outcome, Outcome::Deferred);
    assert_eq!(server.messages().len(), 0);

    let mut config = connection_config(None, &pki);
    config.tls.client_cert = Some(pki.write("client.pem", &client.cert_pem));
    config.tls.client_key = Some(pki.write("client.key", &client.key_pem));
    let with = deliver(&relay(server.addr(), "127.0.0.1", config)).await;
    assert_eq!(with.delivered(), 1, "{}", describe(&with));
}

#[test]
fn unreadable_ca_file_reported() {
    let config = TlsConfig {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..TlsConfig::default()
    };
    let error = config.check().unwrap_err();
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    let half = TlsConfig {
        client_cert: Some("/nonexistent/client.pem".into()),
        ..TlsConfig::default()
    };
    assert!(half.check().is_err());
}

/// Under MX delivery the certificate must name the MX host, which DNS
/// gives with a trailing dot that is not part of the reference identity.
#[tokio::test]
async fn verify_checks_mx_host_name() {
    use mxsend::{Delivery, MxResolver, Nameserver, ResolverSettings};
    use mxsend_testkit::{DnsServer, Zone};

    let pki = Pki::new();
    let certificate = pki
        .ca
        .server_certificate(&["mx.example.net"], false)
        .unwrap();
    let server = SmtpServer::start(Script::new().starttls(certificate.server_config().unwrap()))
        .await
        .unwrap();
    let dns = DnsServer::start(
        Zone::new()
            .mx("example.net", 10, "mx.example.net")
            .a("mx.example.net", std::net::Ipv4Addr::LOCALHOST)
            .mx("other.example", 10, "mx.other.example")
            .a("mx.other.example", std::net::Ipv4Addr::LOCALHOST),
    )
    .await
    .unwrap();
    let resolver = MxResolver::new(&ResolverSettings {
        nameserver: Nameserver::At(dns.addr()),
        timeout: support::STEP_TIMEOUT,
        attempts: 1,
    })
    .unwrap();
    let delivery = Delivery::new(
        resolver,
        DeliveryConfig {
            connection: connection_config(Some(TlsPolicy::Verify), &pki),
            port: server.addr().port(),
            route: Route::Mx,
        },
    );

    let message = support::message().await;
    let report = tokio::time::timeout(support::TEST_TIMEOUT, delivery.deliver(&message))
        .await
        .unwrap();
    assert_eq!(report.delivered(), 1, "{}", describe(&report));

    // The same server reached as the MX of another domain does not match.
    let other = mxsend::Message::from_bytes(
        Some(mxsend::proto::Address::parse("sender@example.com").unwrap()),
        vec![mxsend::proto::Address::parse("rcpt@other.example").unwrap()],
        &b"Subject: x\r\n\r\nx\r\n"[..],
        mxsend::proto::data::DataPolicy::default(),
    )
    .await
    .unwrap();
    let report = tokio::time::timeout(support::TEST_TIMEOUT, delivery.deliver(&other))
        .await
        .unwrap();
    let recipient = &report.recipients[0];
    assert_eq!(
        recipient.outcome,
        Outcome::Deferred,
        "{}",
        describe(&report)
    );
    assert!(
        recipient.reason.contains("mx.other.example"),
        "{}",
        recipient.reason
    );
    assert!(
        recipient.reason.contains("not valid for"),
        "{}",
        recipient.reason
    );
}

/// A server that stops reading in the middle of the content over STARTTLS:
/// the write times out, and then closing the connection must not wait for
/// the same server to read again (the TLS shutdown flushes a write).
const STALL_MARKER: &str = "the server stops reading after this line";

/// Limit for each step of the tests: several times the 3 s write timeout.
const STALL_LIMIT: Duration = Duration::from_secs(20);

/// Content far larger than the loopback socket buffers, so that the
/// client is still writing when the server stops reading.
async fn stall_message() -> Message {
    let mut content = b"Subject: stall\r\n\r\nfirst\r\n".to_vec();
    content.extend_from_slice(STALL_MARKER.as_bytes());
    content.extend_from_slice(b"\r\n");
    let filler = format!("{}\r\n", "x".repeat(76));
    while content.len() < 6 * 1024 * 1024 {
        content.extend_from_slice(filler.as_bytes());
    }
    Message::from_bytes(
        Some(Address::parse("sender@example.com").unwrap()),
        vec![Address::parse("rcpt@example.net").unwrap()],
        content,
        DataPolicy::default(),
    )
    .await
    .unwrap()
}

async fn stalling_server(pki: &Pki) -> SmtpServer {
    let script = Script::new()
        .extensions(&["PIPELINING", "8BITMIME", "SIZE 33554432"])
        .on(Point::Body.containing(STALL_MARKER), Action::Stall)
        .starttls(pki.server_config());
    SmtpServer::start(script).await.unwrap()
}

#[tokio::test]
async fn quit_after_tls_write_timeout_returns() {
    let pki = Pki::new();
    let server = stalling_server(&pki).await;
    let config = connection_config(Some(TlsPolicy::Verify), &pki);
    let mut connection = Connection::connect_host(server.addr(), "127.0.0.1", &config)
        .await
        .unwrap();
    assert!(connection.is_encrypted());
    let message = stall_message().await;

    let sent = tokio::time::timeout(STALL_LIMIT, connection.send(&message, message.recipients()))
        .await
        .expect("send returns after the write timeout");
    assert!(sent.is_err(), "{sent:?}");

    let quit = tokio::time::timeout(STALL_LIMIT, connection.quit()).await;
    assert!(
        quit.is_ok(),
        "quit still waits on the TLS shutdown {STALL_LIMIT:?} after a {STEP_TIMEOUT:?} write timeout"
    );
}

#[tokio::test]
async fn delivery_to_stalled_tls_server_ends() {
    let pki = Pki::new();
    let server = stalling_server(&pki).await;
    let delivery = relay(
        server.addr(),
        "127.0.0.1",
        connection_config(Some(TlsPolicy::Verify), &pki),
    );
    let message = stall_message().await;

    let report = tokio::time::timeout(STALL_LIMIT, delivery.deliver(&message))
        .await
        .expect("delivery finishes after the write timeout");
    assert_eq!(report.recipients[0].outcome, Outcome::Deferred);
    assert!(server.messages().is_empty());
}
