//! This host among a domain's exchangers (RFC 5321 section 5.1, C-MX-06),
//! with a delivery told its own addresses.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, Outcome};
use mxsend::{
    ConnectionConfig, Delivery, DeliveryConfig, DeliveryReport, Message, MxResolver, Nameserver,
    ResolverSettings, Route,
};
use mxsend_testkit::{DnsServer, Script, SmtpServer, Zone};

/// The address this host pretends to have. Nothing connects to it.
const OWN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

async fn deliver(zone: Zone) -> (DeliveryReport, SmtpServer) {
    let dns = DnsServer::start(zone).await.expect("test DNS server");
    let smtp = SmtpServer::start(Script::new())
        .await
        .expect("test SMTP server");
    let resolver = MxResolver::new(&ResolverSettings {
        nameserver: Nameserver::At(dns.addr()),
        timeout: Duration::from_secs(5),
        attempts: 1,
    })
    .expect("resolver");
    let connection = ConnectionConfig {
        helo_name: Some("client.test".to_owned()),
        connect_timeout: Duration::from_secs(5),
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
    .with_own_addresses(vec![IpAddr::V4(OWN)]);
    let message = Message::from_bytes(
        Some(Address::parse("sender@client.test").unwrap()),
        vec![Address::parse("rcpt@example.net").unwrap()],
        b"Subject: loop\r\n\r\nbody\r\n".to_vec(),
        DataPolicy::default(),
    )
    .await
    .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), delivery.deliver(&message))
        .await
        .expect("delivery within 30 s");
    (report, smtp)
}

/// An exchanger preferred to this host still gets the message.
#[tokio::test]
async fn preferred_exchanger_still_used() {
    let zone = Zone::new()
        .mx("example.net", 10, "primary.example.net")
        .mx("example.net", 20, "self.example.net")
        .a("primary.example.net", Ipv4Addr::LOCALHOST)
        .a("self.example.net", OWN);

    let (report, smtp) = deliver(zone).await;

    assert_eq!(
        report.recipients[0].outcome,
        Outcome::Delivered,
        "{report:?}"
    );
    assert_eq!(
        report.recipients[0].host.as_deref(),
        Some("primary.example.net")
    );
    assert_eq!(smtp.messages().len(), 1);
}

/// When this host is the most preferred exchanger, a less preferred one is
/// never used: the message would come back here. It fails instead.
#[tokio::test]
async fn loop_back_to_this_host_fails() {
    let zone = Zone::new()
        .mx("example.net", 10, "self.example.net")
        .mx("example.net", 20, "backup.example.net")
        .a("self.example.net", OWN)
        .a("backup.example.net", Ipv4Addr::LOCALHOST);

    let (report, smtp) = deliver(zone).await;

    let recipient = &report.recipients[0];
    assert_eq!(recipient.outcome, Outcome::Failed, "{report:?}");
    assert!(
        recipient.reason.contains("loops back"),
        "{}",
        recipient.reason
    );
    assert!(smtp.sessions().is_empty(), "no exchanger may be contacted");
}
