//! The loopback DNS zone of W5, served from its own process so that every
//! sender resolves against the same server and none pays for serving it.

use std::io::Read;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use mxsend_testkit::{DnsServer, Zone};

use crate::args::Args;

/// The name of destination domain number `index`.
pub fn domain_name(index: usize) -> String {
    format!("d{index:04}.bench.test")
}

/// Builds a zone in which each of `domains` domains has one MX record
/// that names its own exchanger, whose A record is 127.0.0.1. Every
/// destination thus costs an MX and an A lookup.
fn build_zone(domains: usize) -> Zone {
    let mut zone = Zone::new();
    for index in 0..domains {
        let domain = domain_name(index);
        let exchanger = format!("mx.{domain}");
        zone = zone
            .mx(&domain, 10, &exchanger)
            .a(&exchanger, Ipv4Addr::LOCALHOST);
    }
    zone
}

/// Serves the zone on 127.0.0.1, prints `port N` on stdout once it is
/// ready, and stops when stdin is closed.
pub fn serve(args: &Args) -> ExitCode {
    let domains = match args.number("domains") {
        Ok(domains) => domains,
        Err(error) => {
            eprintln!("mxsend-bench dns-zone: {error}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mxsend-bench dns-zone: cannot start the tokio runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let server = match runtime.block_on(DnsServer::start(build_zone(domains))) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("mxsend-bench dns-zone: cannot start the DNS server: {error}");
            return ExitCode::from(1);
        }
    };
    println!("port {}", server.addr().port());

    // The server runs on the runtime's worker thread while this thread
    // waits for the harness to close stdin.
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    eprintln!(
        "mxsend-bench dns-zone: stopping after {} queries",
        server.query_count()
    );
    runtime.block_on(server.shutdown());
    ExitCode::SUCCESS
}
