//! MX resolution against the testkit DNS zone on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use mxsend::{MxError, MxResolver, MxSource, Nameserver, ResolverSettings};
use mxsend_testkit::{DnsServer, Zone};

async fn resolver_for(zone: Zone) -> (DnsServer, MxResolver) {
    let dns = DnsServer::start(zone).await.expect("start DNS server");
    let settings = ResolverSettings {
        nameserver: Nameserver::At(dns.addr()),
        timeout: Duration::from_secs(1),
        attempts: 1,
    };
    let resolver = MxResolver::new(&settings).expect("resolver");
    (dns, resolver)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A recipient domain that is a CNAME is followed to its MX records
/// (RFC 5321 section 5.1).
#[tokio::test]
async fn recipient_domain_cname_followed() {
    let zone = Zone::new()
        .cname("alias.test", "example.net")
        .mx("example.net", 10, "mx.example.net")
        .a("mx.example.net", Ipv4Addr::new(127, 0, 0, 7));
    let (_dns, resolver) = resolver_for(zone).await;

    let plan = resolver.resolve("alias.test").await.expect("plan");

    assert_eq!(plan.source, MxSource::Mx);
    assert_eq!(plan.hosts.len(), 1);
    assert_eq!(plan.hosts[0].name, "mx.example.net");
    assert_eq!(plan.hosts[0].addresses, [ip("127.0.0.7")]);
}

/// An exchanger name that is a CNAME is followed to its addresses, as
/// Postfix does, although RFC 5321 section 5.1 discourages such records.
#[tokio::test]
async fn exchanger_cname_followed() {
    let zone = Zone::new()
        .mx("example.org", 10, "mail.example.org")
        .cname("mail.example.org", "real.example.org")
        .a("real.example.org", Ipv4Addr::new(127, 0, 0, 8));
    let (_dns, resolver) = resolver_for(zone).await;

    let plan = resolver.resolve("example.org").await.expect("plan");

    assert_eq!(plan.hosts[0].name, "mail.example.org");
    assert_eq!(plan.hosts[0].addresses, [ip("127.0.0.8")]);
}

/// Letter case and a trailing dot do not change the lookup.
#[tokio::test]
async fn case_and_trailing_dot_ignored() {
    let zone = Zone::new()
        .mx("example.net", 10, "mx.example.net")
        .a("mx.example.net", Ipv4Addr::LOCALHOST);
    let (_dns, resolver) = resolver_for(zone).await;

    for domain in ["example.net", "EXAMPLE.Net", "example.net."] {
        let plan = resolver.resolve(domain).await.expect(domain);
        assert_eq!(plan.domain, "example.net", "{domain}");
        assert_eq!(plan.hosts[0].addresses, [ip("127.0.0.1")], "{domain}");
    }
}

/// Every address of an exchanger is tried, IPv6 before IPv4.
#[tokio::test]
async fn exchanger_aaaa_and_a_both_listed() {
    let zone = Zone::new()
        .mx("example.net", 10, "mx.example.net")
        .aaaa("mx.example.net", Ipv6Addr::LOCALHOST)
        .a("mx.example.net", Ipv4Addr::LOCALHOST);
    let (_dns, resolver) = resolver_for(zone).await;

    let plan = resolver.resolve("example.net").await.expect("plan");

    assert_eq!(plan.hosts[0].addresses, [ip("::1"), ip("127.0.0.1")]);
    let addresses: Vec<IpAddr> = plan.addresses().map(|(_, address)| address).collect();
    assert_eq!(addresses, [ip("::1"), ip("127.0.0.1")]);
}

/// An exchanger without addresses is kept with its error and skipped,
/// while the next one is still used.
#[tokio::test]
async fn exchanger_without_address_skipped() {
    let zone = Zone::new()
        .mx("example.net", 10, "gone.example.net")
        .mx("example.net", 20, "mx.example.net")
        .a("mx.example.net", Ipv4Addr::LOCALHOST);
    let (_dns, resolver) = resolver_for(zone).await;

    let plan = resolver.resolve("example.net").await.expect("plan");

    assert_eq!(plan.hosts.len(), 2);
    assert!(plan.hosts[0].addresses.is_empty());
    assert!(plan.hosts[0].error.is_some(), "{:?}", plan.hosts[0]);
    let addresses: Vec<IpAddr> = plan.addresses().map(|(_, address)| address).collect();
    assert_eq!(addresses, [ip("127.0.0.1")]);
}

/// Each way a lookup can fail has one outcome: a null MX and a missing
/// domain are permanent (RFC 7505, RFC 5321 section 5.1), SERVFAIL and a
/// server that never responds are temporary and never taken as "no MX".
#[tokio::test]
async fn lookup_failures_classified() {
    let zone = Zone::new()
        .mx("null.test", 0, ".")
        .mx("broken.test", 10, "mx.broken.test")
        .servfail("broken.test")
        .mx("silent.test", 10, "mx.silent.test")
        .no_answer("silent.test")
        .mx("nowhere.test", 10, "gone.nowhere.test");
    let (_dns, resolver) = resolver_for(zone).await;

    let null = resolver.resolve("null.test").await.unwrap_err();
    assert!(matches!(null, MxError::NullMx { .. }), "{null:?}");
    assert!(null.is_permanent());

    let missing = resolver.resolve("missing.test").await.unwrap_err();
    assert!(
        matches!(missing, MxError::NoSuchDomain { .. }),
        "{missing:?}"
    );
    assert!(missing.is_permanent());

    let broken = resolver.resolve("broken.test").await.unwrap_err();
    assert!(matches!(broken, MxError::Temporary { .. }), "{broken:?}");

    let silent = resolver.resolve("silent.test").await.unwrap_err();
    assert!(matches!(silent, MxError::Temporary { .. }), "{silent:?}");

    let nowhere = resolver.resolve("nowhere.test").await.unwrap_err();
    assert!(matches!(nowhere, MxError::NoAddress { .. }), "{nowhere:?}");
}

/// A domain with only an A record is its own exchanger (implicit MX,
/// RFC 5321 section 5.1).
#[tokio::test]
async fn a_record_only_is_implicit_mx() {
    let zone = Zone::new().a("implicit.test", Ipv4Addr::new(127, 0, 0, 9));
    let (_dns, resolver) = resolver_for(zone).await;

    let plan = resolver.resolve("implicit.test").await.expect("plan");

    assert_eq!(plan.source, MxSource::ImplicitMx);
    assert_eq!(plan.hosts[0].name, "implicit.test");
    assert_eq!(plan.hosts[0].addresses, [ip("127.0.0.9")]);
}

/// An address literal needs no lookup at all.
#[tokio::test]
async fn address_literal_needs_no_query() {
    let (dns, resolver) = resolver_for(Zone::new()).await;

    let plan = resolver.resolve("[127.0.0.1]").await.expect("plan");

    assert_eq!(plan.source, MxSource::AddressLiteral);
    assert_eq!(plan.hosts[0].addresses, [ip("127.0.0.1")]);
    assert_eq!(dns.query_count(), 0);
}

/// A UDP answer with the TC bit set is asked again over TCP, where the
/// records come back (RFC 1035 section 4.2.1).
#[tokio::test]
async fn truncated_udp_answer_retried_over_tcp() {
    let zone = Zone::new()
        .mx("example.net", 10, "mx.example.net")
        .truncate_udp("example.net")
        .a("mx.example.net", Ipv4Addr::LOCALHOST);
    let (_dns, resolver) = resolver_for(zone).await;

    let plan = resolver
        .resolve("example.net")
        .await
        .expect("plan over TCP");

    assert_eq!(plan.source, MxSource::Mx);
    assert_eq!(plan.hosts[0].name, "mx.example.net");
}

/// A CNAME loop ends the lookup with an error instead of looping, and is
/// never taken as "no MX" with the name's own address.
#[tokio::test]
async fn cname_loop_is_an_error() {
    let zone = Zone::new()
        .cname("loop-a.test", "loop-b.test")
        .cname("loop-b.test", "loop-a.test");
    let (_dns, resolver) = resolver_for(zone).await;

    let result = tokio::time::timeout(Duration::from_secs(10), resolver.resolve("loop-a.test"))
        .await
        .expect("the lookup ends");

    assert!(result.is_err(), "{result:?}");
}

/// An MX record whose exchange is an IP address is refused (C-MX-09): it
/// is no host name, and the other exchangers are still used.
#[tokio::test]
async fn ip_address_exchange_skipped() {
    let zone = Zone::new()
        .mx("example.net", 10, "127.0.0.1")
        .mx("example.net", 20, "mx.example.net")
        .a("mx.example.net", Ipv4Addr::LOCALHOST);
    let (_dns, resolver) = resolver_for(zone).await;

    let plan = resolver.resolve("example.net").await.expect("plan");

    let usable: Vec<&str> = plan
        .hosts
        .iter()
        .filter(|host| !host.addresses.is_empty())
        .map(|host| host.name.as_str())
        .collect();
    assert_eq!(usable, ["mx.example.net"]);
}

/// When the only exchanger is an IP address, the error keeps the reason,
/// so `mxsend mx` and `send` print why instead of only "no address".
#[tokio::test]
async fn only_ip_address_exchanger_names_reason() {
    let zone = Zone::new().mx("literal.test", 10, "127.0.0.1");
    let (_dns, resolver) = resolver_for(zone).await;

    let error = resolver.resolve("literal.test").await.unwrap_err();
    assert!(matches!(error, MxError::NoAddress { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("127.0.0.1: ") && text.contains("IP address"),
        "{text}"
    );
}

/// More than ten MX records are all kept, in preference order.
#[tokio::test]
async fn many_exchangers_kept_in_order() {
    let mut zone = Zone::new();
    for number in 0..15u16 {
        let host = format!("mx{number}.example.net");
        zone = zone.mx("example.net", 100 - number, &host).a(
            &host,
            Ipv4Addr::new(127, 0, 1, u8::try_from(number).unwrap()),
        );
    }
    let (_dns, resolver) = resolver_for(zone).await;

    let plan = resolver.resolve("example.net").await.expect("plan");

    assert_eq!(plan.hosts.len(), 15);
    let preferences: Vec<u16> = plan.hosts.iter().map(|host| host.preference).collect();
    let mut sorted = preferences.clone();
    sorted.sort_unstable();
    assert_eq!(preferences, sorted);
    assert_eq!(plan.hosts[0].name, "mx14.example.net");
}
