//! `mxsend demo`: the tutorial's delivery, run entirely on loopback.

use std::net::Ipv4Addr;

use mxsend_testkit::{DnsServer, Script, SmtpServer, Zone};

use crate::args::{DemoArgs, DnsArgs, SendArgs};
use crate::exit;
use crate::failure::Failure;
use crate::send;

/// The message of the Twisted SMTP client tutorial.
const TUTORIAL_MESSAGE: &str = "\
Date: Fri, 6 Feb 2004 10:14:39 -0800
From: Tutorial Guy <tutorial_sender@example.com>
To: Tutorial Gal <tutorial_recipient@example.net>
Subject: Tutorate!

Hello, how are you, goodbye.
";

/// Starts a DNS zone and an SMTP server on 127.0.0.1, sends the tutorial
/// message through them as `mxsend send` would, and prints the report and
/// the message as the server stored it.
///
/// # Errors
///
/// A [`Failure`] when a loopback server cannot start; a failed delivery is
/// in the returned status.
pub async fn run(args: &DemoArgs) -> Result<u8, Failure> {
    let smtp = SmtpServer::start(Script::new())
        .await
        .map_err(|error| start_failure("SMTP server", &error))?;
    let zone = Zone::new()
        .mx("example.net", 10, "mx.example.net")
        .a("mx.example.net", Ipv4Addr::LOCALHOST);
    let dns = DnsServer::start(zone)
        .await
        .map_err(|error| start_failure("DNS server", &error))?;

    println!(
        "DNS zone on {}: example.net MX 10 mx.example.net, mx.example.net A 127.0.0.1",
        dns.addr()
    );
    println!("SMTP server on {}", smtp.addr());
    println!();

    let send_args = SendArgs {
        file: None,
        from: None,
        to: Vec::new(),
        read_recipients: true,
        relay: None,
        port: smtp.addr().port(),
        helo: Some("example.com".to_owned()),
        connect_timeout: 10,
        own_addresses: Vec::new(),
        reply_timeout: Some(30),
        no_pipelining: false,
        no_chunking: false,
        binarymime: false,
        notify: None,
        ret: None,
        envid: None,
        json: false,
        verbose: args.verbose,
        security: Box::default(),
        dns: DnsArgs {
            nameserver: Some(dns.addr()),
            dns_timeout: 5,
        },
    };
    let report = send::send_content(TUTORIAL_MESSAGE.as_bytes().to_vec(), &send_args).await?;

    for stored in smtp.messages() {
        println!();
        println!(
            "The server stored a message from <{}> to {}:",
            stored.mail_from,
            stored
                .rcpt_to
                .iter()
                .map(|rcpt| format!("<{rcpt}>"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("{}", String::from_utf8_lossy(&stored.data).trim_end());
    }

    smtp.shutdown().await;
    dns.shutdown().await;
    Ok(exit::for_report(&report))
}

fn start_failure(server: &str, error: &std::io::Error) -> Failure {
    Failure::new(
        exit::SOFTWARE,
        format!("cannot start the demo {server} on 127.0.0.1: {error}"),
    )
}
