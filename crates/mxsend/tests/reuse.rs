//! Connection reuse across messages: Delivery with a connection pool
//! against the testkit SMTP server.

use std::net::Ipv4Addr;
use std::time::Duration;

use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, Outcome, Timeouts};
use mxsend::{
    ConnectionConfig, Delivery, DeliveryConfig, Message, MxResolver, Nameserver, ResolverSettings,
    Route,
};
use mxsend_testkit::{Action, DnsServer, Point, Script, SmtpServer, Zone};

const STEP_TIMEOUT: Duration = Duration::from_secs(5);
const TEST_LIMIT: Duration = Duration::from_secs(30);

async fn peers(script: Script) -> (DnsServer, SmtpServer, Delivery) {
    let zone = Zone::new()
        .mx("example.net", 10, "mx.example.net")
        .a("mx.example.net", Ipv4Addr::LOCALHOST);
    let dns = DnsServer::start(zone).await.expect("test DNS server");
    let smtp = SmtpServer::start(script).await.expect("test SMTP server");
    let resolver = MxResolver::new(&ResolverSettings {
        nameserver: Nameserver::At(dns.addr()),
        timeout: STEP_TIMEOUT,
        attempts: 1,
    })
    .expect("resolver");
    let step = STEP_TIMEOUT;
    let connection = ConnectionConfig {
        helo_name: Some("client.test".to_owned()),
        connect_timeout: step,
        timeouts: Timeouts::uniform(step),
        ..ConnectionConfig::default()
    };
    let delivery = Delivery::new(
        resolver,
        DeliveryConfig {
            connection,
            port: smtp.addr().port(),
            route: Route::Mx,
        },
    )
    .with_connection_reuse(Duration::from_secs(10));
    (dns, smtp, delivery)
}

async fn message(number: usize) -> Message {
    Message::from_bytes(
        Some(Address::parse("sender@client.test").unwrap()),
        vec![Address::parse(&format!("rcpt{number}@example.net")).unwrap()],
        format!("Subject: message {number}\r\n\r\nbody\r\n").into_bytes(),
        DataPolicy::default(),
    )
    .await
    .unwrap()
}

/// Sends messages 1..=count one after the other and checks each was
/// delivered without an error in its reason.
async fn deliver_all(delivery: &Delivery, count: usize) {
    for number in 1..=count {
        let message = message(number).await;
        let report = tokio::time::timeout(TEST_LIMIT, delivery.deliver(&message))
            .await
            .expect("delivery within the test limit");
        let recipient = &report.recipients[0];
        assert_eq!(
            recipient.outcome,
            Outcome::Delivered,
            "message {number}: {report:?}"
        );
        assert!(
            !recipient.reason.contains("failed"),
            "message {number}: {}",
            recipient.reason
        );
    }
}

/// Three messages to one server share one connection, and close_idle
/// ends it with QUIT.
#[tokio::test]
async fn messages_share_one_connection() {
    let (_dns, smtp, delivery) = peers(Script::new()).await;

    deliver_all(&delivery, 3).await;
    delivery.close_idle().await;

    assert!(smtp.wait_for_sessions(1, STEP_TIMEOUT).await);
    let sessions = smtp.sessions();
    assert_eq!(sessions.len(), 1, "one connection for three messages");
    let mails = sessions[0]
        .commands
        .iter()
        .filter(|c| c.starts_with("MAIL"))
        .count();
    assert_eq!(mails, 3);
    assert_eq!(
        sessions[0].commands.last().map(String::as_str),
        Some("QUIT")
    );
    assert_eq!(smtp.messages().len(), 3);
}

/// C-TX-06: a kept connection that the server closes at the next MAIL is
/// replaced by a new one; the message goes out once, with no error.
#[tokio::test]
async fn closed_kept_connection_replaced() {
    let script = Script::new().on(Point::Mail.nth(2).session(1), Action::Close);
    let (_dns, smtp, delivery) = peers(script).await;

    deliver_all(&delivery, 2).await;
    delivery.close_idle().await;

    assert_eq!(smtp.messages().len(), 2, "each message stored once");
    assert!(smtp.wait_for_sessions(2, STEP_TIMEOUT).await);
}

/// C-TX-07: a 421 to MAIL on a kept connection is handled the same way.
#[tokio::test]
async fn kept_connection_answering_421_replaced() {
    let script = Script::new().on(
        Point::Mail.nth(2).session(1),
        Action::reply("421 4.4.2 idle timeout"),
    );
    let (_dns, smtp, delivery) = peers(script).await;

    deliver_all(&delivery, 2).await;
    delivery.close_idle().await;

    assert_eq!(smtp.messages().len(), 2);
}

/// An unprompted `421 4.4.2 idle timeout` after the first message: the
/// next message still goes out, once, on a new connection.
#[tokio::test]
async fn unprompted_421_before_next_message() {
    let script = Script::new().on(
        Point::DataEnd.nth(1).session(1),
        Action::Raw(b"250 2.0.0 queued\r\n421 4.4.2 idle timeout\r\n".to_vec()),
    );
    let (_dns, smtp, delivery) = peers(script).await;

    deliver_all(&delivery, 2).await;
    delivery.close_idle().await;

    let stored: Vec<Vec<String>> = smtp.messages().into_iter().map(|m| m.rcpt_to).collect();
    assert_eq!(
        stored,
        [
            vec!["rcpt1@example.net".to_owned()],
            vec!["rcpt2@example.net".to_owned()]
        ]
    );
}

/// A connection idle longer than the limit is not used again.
#[tokio::test]
async fn idle_limit_ends_reuse() {
    let (_dns, smtp, delivery) = peers(Script::new()).await;
    let delivery = delivery.with_connection_reuse(Duration::from_millis(50));

    deliver_all(&delivery, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    deliver_all(&delivery, 1).await;
    delivery.close_idle().await;

    assert!(smtp.wait_for_sessions(2, STEP_TIMEOUT).await);
    assert_eq!(smtp.sessions().len(), 2);
}

/// Domains whose exchangers share one address share its connections too,
/// as long as no certificate check depends on the exchanger's name.
#[tokio::test]
async fn domains_on_one_server_share_a_connection() {
    let zone = Zone::new()
        .mx("one.test", 10, "mx.one.test")
        .mx("two.test", 10, "mx.two.test")
        .a("mx.one.test", Ipv4Addr::LOCALHOST)
        .a("mx.two.test", Ipv4Addr::LOCALHOST);
    let dns = DnsServer::start(zone).await.expect("test DNS server");
    let smtp = SmtpServer::start(Script::new())
        .await
        .expect("test SMTP server");
    let resolver = MxResolver::new(&ResolverSettings {
        nameserver: Nameserver::At(dns.addr()),
        timeout: STEP_TIMEOUT,
        attempts: 1,
    })
    .expect("resolver");
    let delivery = Delivery::new(
        resolver,
        DeliveryConfig {
            connection: ConnectionConfig {
                helo_name: Some("client.test".to_owned()),
                ..ConnectionConfig::default()
            },
            port: smtp.addr().port(),
            route: Route::Mx,
        },
    )
    .with_connection_reuse(Duration::from_secs(10));

    for recipient in ["a@one.test", "b@two.test", "c@one.test"] {
        let message = Message::from_bytes(
            Some(Address::parse("sender@client.test").unwrap()),
            vec![Address::parse(recipient).unwrap()],
            b"Subject: shared\r\n\r\nbody\r\n".to_vec(),
            DataPolicy::default(),
        )
        .await
        .unwrap();
        let report = tokio::time::timeout(TEST_LIMIT, delivery.deliver(&message))
            .await
            .expect("delivery within the test limit");
        assert_eq!(
            report.recipients[0].outcome,
            Outcome::Delivered,
            "{recipient}"
        );
    }
    delivery.close_idle().await;

    assert!(smtp.wait_for_sessions(1, STEP_TIMEOUT).await);
    assert_eq!(smtp.sessions().len(), 1, "one connection for three domains");
    assert_eq!(smtp.messages().len(), 3);
}
