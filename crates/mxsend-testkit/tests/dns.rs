//! Queries the test DNS server with hickory-resolver over UDP and TCP.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use mxsend_testkit::dns::{DnsServer, Zone};

const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);

fn resolver(addr: SocketAddr, protocol: Protocol) -> TokioResolver {
    let mut config = ResolverConfig::new();
    config.add_name_server(NameServerConfig::new(addr, protocol));
    let mut options = ResolverOpts::default();
    options.timeout = CLIENT_TIMEOUT;
    options.attempts = 1;
    options.cache_size = 0;
    options.preserve_intermediates = true;
    TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(options)
        .build()
}

fn sample_zone() -> Zone {
    Zone::new()
        .mx("example.test", 10, "mx1.example.test")
        .mx("example.test", 20, "mx2.example.test")
        .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 2))
        .aaaa("mx1.example.test", Ipv6Addr::LOCALHOST)
        .mx("nullmx.test", 0, ".")
        .cname("alias.example.test", "mx1.example.test")
        .cname("outside.example.test", "elsewhere.invalid")
        .servfail("broken.test")
        .no_answer("silent.test")
}

fn response_code(error: &ResolveError) -> Option<ResponseCode> {
    match error.proto()?.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => Some(*response_code),
        _ => None,
    }
}

#[tokio::test]
async fn mx_lookup_returns_exchanges() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Udp);

    let lookup = resolver.mx_lookup("Example.TEST.").await.unwrap();
    let mut exchanges: Vec<(u16, String)> = lookup
        .iter()
        .map(|mx| (mx.preference(), mx.exchange().to_ascii()))
        .collect();
    exchanges.sort();
    assert_eq!(
        exchanges,
        vec![
            (10, "mx1.example.test.".to_owned()),
            (20, "mx2.example.test.".to_owned())
        ]
    );
    assert_eq!(server.query_count(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn null_mx_has_root_exchange() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Udp);

    let lookup = resolver.mx_lookup("nullmx.test.").await.unwrap();
    let records: Vec<_> = lookup.iter().collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].preference(), 0);
    assert!(records[0].exchange().is_root());
}

#[tokio::test]
async fn address_lookups_return_records() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Udp);

    let v4: Vec<Ipv4Addr> = resolver
        .ipv4_lookup("mx1.example.test.")
        .await
        .unwrap()
        .iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(v4, vec![Ipv4Addr::new(127, 0, 0, 2)]);

    let v6: Vec<Ipv6Addr> = resolver
        .ipv6_lookup("mx1.example.test")
        .await
        .unwrap()
        .iter()
        .map(|aaaa| aaaa.0)
        .collect();
    assert_eq!(v6, vec![Ipv6Addr::LOCALHOST]);
}

#[tokio::test]
async fn unknown_name_is_nxdomain() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Udp);

    let error = resolver.mx_lookup("missing.test.").await.unwrap_err();
    assert!(error.is_nx_domain(), "{error}");
    assert_eq!(response_code(&error), Some(ResponseCode::NXDomain));
}

#[tokio::test]
async fn other_type_is_nodata() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Udp);

    let error = resolver.mx_lookup("mx1.example.test.").await.unwrap_err();
    assert!(error.is_no_records_found(), "{error}");
    assert!(!error.is_nx_domain(), "{error}");
    assert_eq!(response_code(&error), Some(ResponseCode::NoError));
}

#[tokio::test]
async fn servfail_name_answers_servfail() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Udp);

    let error = resolver.mx_lookup("broken.test.").await.unwrap_err();
    assert_eq!(
        response_code(&error),
        Some(ResponseCode::ServFail),
        "{error}"
    );
}

#[tokio::test]
async fn no_answer_name_times_out() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Udp);

    let started = Instant::now();
    let error = resolver.mx_lookup("silent.test.").await.unwrap_err();
    assert!(
        matches!(
            error.proto().map(|e| e.kind()),
            Some(ProtoErrorKind::Timeout)
        ),
        "{error}"
    );
    assert!(started.elapsed() >= CLIENT_TIMEOUT);
    assert!(server.query_count() >= 1);
}

#[tokio::test]
async fn cname_appends_target_records() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Udp);

    let lookup = resolver
        .lookup("alias.example.test.", RecordType::A)
        .await
        .unwrap();
    let records = lookup.records();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[0].data(),
        &RData::CNAME(hickory_resolver::proto::rr::rdata::CNAME(
            Name::from_ascii("mx1.example.test.").unwrap()
        ))
    );
    assert_eq!(
        records[1].data(),
        &RData::A(Ipv4Addr::new(127, 0, 0, 2).into())
    );
    // The resolver got everything from one response.
    assert_eq!(server.query_count(), 1);
}

#[tokio::test]
async fn cname_query_returns_only_cname() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Udp);

    let lookup = resolver
        .lookup("outside.example.test.", RecordType::CNAME)
        .await
        .unwrap();
    let records = lookup.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record_type(), RecordType::CNAME);
}

#[tokio::test]
async fn tcp_serves_same_port() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let resolver = resolver(server.addr(), Protocol::Tcp);

    let lookup = resolver.mx_lookup("example.test.").await.unwrap();
    assert_eq!(lookup.iter().count(), 2);
    let error = resolver.mx_lookup("missing.test.").await.unwrap_err();
    assert!(error.is_nx_domain(), "{error}");
}

#[tokio::test]
async fn invalid_zone_name_is_rejected() {
    let label = "x".repeat(64);
    let zone = Zone::new().a(&format!("{label}.test"), Ipv4Addr::LOCALHOST);
    let error = DnsServer::start(zone).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn shutdown_stops_responses() {
    let server = DnsServer::start(sample_zone()).await.unwrap();
    let addr = server.addr();
    server.shutdown().await;

    let resolver = resolver(addr, Protocol::Udp);
    let result = tokio::time::timeout(Duration::from_secs(5), resolver.mx_lookup("example.test."))
        .await
        .unwrap();
    assert!(result.is_err());
}
