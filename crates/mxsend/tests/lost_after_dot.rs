//! A server that reads the whole message with its final dot and then
//! drops the connection with an error: a TCP reset, or over TLS a close
//! without close_notify. The session was lost after the final dot, so the
//! recipient is uncertain (RFC 5321 section 6.1) and the message must not
//! go to another exchanger.

#[path = "tls/support.rs"]
#[allow(dead_code, reason = "each test file uses a part of the shared setup")]
mod support;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, Outcome, Timeouts};
use mxsend::{
    ConnectionConfig, Delivery, DeliveryConfig, DeliveryReport, Message, MxResolver, Nameserver,
    ResolverSettings, Route, TlsConfig, TlsPolicy,
};
use mxsend_testkit::{Action, DnsServer, Point, Script, SmtpServer, Zone};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Serves one SMTP session at a time on `listener`: it accepts the
/// envelope and the content, counts each message whose final dot it read,
/// and then resets the connection without a reply to the dot.
async fn reset_after_dot(listener: TcpListener, dots: Arc<AtomicUsize>) {
    while let Ok((stream, _)) = listener.accept().await {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        if write.write_all(b"220 reset.test ESMTP\r\n").await.is_err() {
            continue;
        }
        let mut in_data = false;
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if in_data {
                if line == ".\r\n" {
                    dots.fetch_add(1, Ordering::SeqCst);
                    let stream = lines.into_inner().reunite(write).expect("same stream");
                    // A zero linger time makes the close send RST.
                    #[allow(deprecated, reason = "the blocking close is wanted here")]
                    stream.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
                    drop(stream);
                    break;
                }
                continue;
            }
            let command = line.to_ascii_uppercase();
            let reply: &[u8] = if command.starts_with("EHLO") {
                b"250 reset.test\r\n"
            } else if command.starts_with("DATA") {
                in_data = true;
                b"354 go ahead\r\n"
            } else if command.starts_with("QUIT") {
                b"221 bye\r\n"
            } else {
                b"250 ok\r\n"
            };
            if write.write_all(reply).await.is_err() {
                break;
            }
        }
    }
}

fn connection_config() -> ConnectionConfig {
    ConnectionConfig {
        helo_name: Some("client.test".to_owned()),
        connect_timeout: Duration::from_secs(3),
        timeouts: Timeouts::uniform(Duration::from_secs(3)),
        tls: TlsConfig {
            policy: Some(TlsPolicy::None),
            ..TlsConfig::default()
        },
        ..ConnectionConfig::default()
    }
}

async fn message() -> Message {
    Message::from_bytes(
        Some(Address::parse("sender@client.test").unwrap()),
        vec![Address::parse("rcpt@example.net").unwrap()],
        &b"From: sender@client.test\r\nTo: rcpt@example.net\r\nSubject: reset\r\n\r\nHello.\r\n"[..],
        DataPolicy::default(),
    )
    .await
    .unwrap()
}

fn describe(report: &DeliveryReport) -> String {
    let mut text = String::new();
    for attempt in &report.attempts {
        text.push_str(&format!("attempt {}: {}\n", attempt.host, attempt.result));
    }
    for recipient in &report.recipients {
        text.push_str(&format!(
            "{}: {} ({})\n",
            recipient.address, recipient.outcome, recipient.reason
        ));
    }
    text
}

#[tokio::test]
async fn reset_after_dot_is_uncertain() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dots = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn(reset_after_dot(listener, Arc::clone(&dots)));

    let resolver = MxResolver::new(&ResolverSettings::default()).unwrap();
    let delivery = Delivery::new(
        resolver,
        DeliveryConfig {
            connection: connection_config(),
            port: addr.port(),
            route: Route::Relay {
                host: "127.0.0.1".to_owned(),
                port: addr.port(),
            },
        },
    );
    let report = tokio::time::timeout(Duration::from_secs(20), delivery.deliver(&message().await))
        .await
        .expect("delivery did not finish");
    server.abort();

    assert_eq!(dots.load(Ordering::SeqCst), 1, "{}", describe(&report));
    assert_eq!(
        report.recipients[0].outcome,
        Outcome::Uncertain,
        "{}",
        describe(&report)
    );
}

#[tokio::test]
async fn reset_after_dot_not_sent_to_backup() {
    // The primary exchanger resets after the dot. The backup, on the same
    // port of ::1, accepts everything.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dots = Arc::new(AtomicUsize::new(0));
    let primary = tokio::spawn(reset_after_dot(listener, Arc::clone(&dots)));
    let backup = SmtpServer::start_on(SocketAddr::from((Ipv6Addr::LOCALHOST, port)), Script::new())
        .await
        .unwrap();
    let zone = Zone::new()
        .mx("example.net", 10, "primary.example.net")
        .mx("example.net", 20, "backup.example.net")
        .a("primary.example.net", Ipv4Addr::LOCALHOST)
        .aaaa("backup.example.net", Ipv6Addr::LOCALHOST);
    let dns = DnsServer::start(zone).await.unwrap();
    let resolver = MxResolver::new(&ResolverSettings {
        nameserver: Nameserver::At(dns.addr()),
        timeout: Duration::from_secs(5),
        attempts: 1,
    })
    .unwrap();
    let delivery = Delivery::new(
        resolver,
        DeliveryConfig {
            connection: connection_config(),
            port,
            route: Route::Mx,
        },
    );
    let report = tokio::time::timeout(Duration::from_secs(20), delivery.deliver(&message().await))
        .await
        .expect("delivery did not finish");
    primary.abort();

    assert_eq!(dots.load(Ordering::SeqCst), 1, "{}", describe(&report));
    assert_eq!(
        backup.messages().len(),
        0,
        "the backup got a second copy: {}",
        describe(&report)
    );
    assert_eq!(
        report.recipients[0].outcome,
        Outcome::Uncertain,
        "{}",
        describe(&report)
    );
}

#[tokio::test]
async fn tls_close_without_notify_is_uncertain() {
    // The server hangs after the final dot and is then shut down, which
    // closes the TCP connection without a TLS close_notify.
    let pki = support::Pki::new();
    let script = Script::new()
        .starttls(pki.server_config())
        .on(Point::DataEnd, Action::Hang);
    let server = SmtpServer::start(script).await.unwrap();
    let delivery = support::relay(
        server.addr(),
        "127.0.0.1",
        support::connection_config(Some(TlsPolicy::Verify), &pki),
    );
    let message = message().await;
    let delivering = delivery.deliver(&message);
    let stopping = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.shutdown().await;
    };
    let (report, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(delivering, stopping)
    })
    .await
    .expect("delivery did not finish");

    assert!(
        report.attempts[0].result.contains("end of data"),
        "the connection did not end after the dot: {}",
        describe(&report)
    );
    assert_eq!(
        report.recipients[0].outcome,
        Outcome::Uncertain,
        "{}",
        describe(&report)
    );
}
