//! The final program of Twisted's "Building an SMTP Client from Scratch"
//! tutorial (`smtpclient-11.tac`), written with mxsend.
//!
//! It looks up the mail exchangers of example.net, connects to the best one
//! that accepts the connection, greets it with `EHLO example.com`, and sends
//! one message from tutorial_sender@example.com to
//! tutorial_recipient@example.net through the [`MailSource`] callbacks, the
//! counterpart of Twisted's `getMailFrom`, `getMailTo`, `getMailData` and
//! `sentMail`. It prints how many recipients accepted the message and exits
//! with status 0. On any failure it prints one error line and exits with
//! status 1.
//!
//! Unlike the Twisted program, it tries every exchanger address in order
//! rather than only the best host, and it ends on every failure rather than
//! waiting forever.
//!
//! ```text
//! cargo run --example tutorial -- [--nameserver IP:PORT] [--port N]
//! ```
//!
//! `--nameserver` sends DNS questions to one server in place of the system's
//! resolvers, and `--port` sets the SMTP port (default 25). Together they
//! point the program at loopback test peers.

use std::net::SocketAddr;
use std::process::ExitCode;

use mxsend::delivery::error_chain;
use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, TransactionReport};
use mxsend::{
    Connection, ConnectionConfig, DEFAULT_PORT, MailSource, Message, MxResolver, Nameserver,
    ResolverSettings,
};

const SENDER: &str = "tutorial_sender@example.com";
const RECIPIENT: &str = "tutorial_recipient@example.net";
const HELO_NAME: &str = "example.com";

/// The tutorial's message, with LF line ends as Twisted expects them. The
/// DATA encoder sends each as CRLF.
const MAIL_DATA: &str = "\
Date: Fri, 6 Feb 2004 10:14:39 -0800
From: Tutorial Guy <tutorial_sender@example.com>
To: Tutorial Gal <tutorial_recipient@example.net>
Subject: Tutorate!

Hello, how are you, goodbye.
";

/// Command-line options.
struct Options {
    nameserver: Nameserver,
    port: u16,
}

/// Parses `--nameserver IP:PORT` and `--port N`. Any other argument is an
/// error.
fn parse_options(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        nameserver: Nameserver::System,
        port: DEFAULT_PORT,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("missing value after {arg}"))
        };
        match arg.as_str() {
            "--nameserver" => {
                let text = value()?;
                let address = text.parse::<SocketAddr>().map_err(|_| {
                    format!(
                        "invalid --nameserver value {text:?}: expected IP:PORT such as 127.0.0.1:53"
                    )
                })?;
                options.nameserver = Nameserver::At(address);
            }
            "--port" => {
                let text = value()?;
                options.port = text
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| {
                        format!(
                            "invalid --port value {text:?}: expected a TCP port from 1 to 65535"
                        )
                    })?;
            }
            _ => {
                return Err(format!(
                    "unknown argument {arg:?}: expected --nameserver IP:PORT or --port N"
                ));
            }
        }
    }
    Ok(options)
}

/// Hands out the tutorial message once and keeps the report of its
/// transaction, as `getMailFrom` returning `None` on its second call and
/// `sentMail` do in the Twisted program.
struct TutorialSource {
    message: Option<Message>,
    report: Option<TransactionReport>,
}

impl MailSource for TutorialSource {
    fn next_message(&mut self) -> Option<Message> {
        self.message.take()
    }

    fn sent_mail(&mut self, report: &TransactionReport) {
        self.report = Some(report.clone());
    }
}

/// Runs the tutorial with the command-line arguments `args` (without the
/// program name). Returns the line to print on success, or the one-line
/// error.
pub async fn run(args: impl IntoIterator<Item = String>) -> Result<String, String> {
    let options = parse_options(args)?;
    let domain = RECIPIENT
        .rsplit_once('@')
        .map_or(RECIPIENT, |(_, domain)| domain);

    let resolver = MxResolver::new(&ResolverSettings {
        nameserver: options.nameserver,
        ..ResolverSettings::default()
    })
    .map_err(|error| format!("cannot set up DNS resolution: {error}"))?;
    let plan = resolver
        .resolve(domain)
        .await
        .map_err(|error| format!("MX lookup failed: {error}"))?;

    let message = Message::from_bytes(
        Some(parse_address(SENDER)?),
        vec![parse_address(RECIPIENT)?],
        MAIL_DATA.as_bytes(),
        DataPolicy::default(),
    )
    .await
    .map_err(|error| format!("invalid tutorial message: {error}"))?;

    let config = ConnectionConfig {
        helo_name: Some(HELO_NAME.to_owned()),
        ..ConnectionConfig::default()
    };
    let mut failures = Vec::new();
    for (host, ip) in plan.addresses() {
        let server = SocketAddr::new(ip, options.port);
        let connection = match Connection::connect(server, &config).await {
            Ok(connection) => connection,
            Err(error) => {
                failures.push(format!("{} ({server}): {}", host.name, error_chain(&error)));
                continue;
            }
        };
        let mut source = TutorialSource {
            message: Some(message),
            report: None,
        };
        let ended = connection.run(&mut source).await;
        return summarize(&host.name, source.report, ended);
    }
    Err(format!(
        "no mail exchanger of {domain} accepted a connection: {}",
        failures.join("; ")
    ))
}

/// Turns the transaction's report and the end of the session into the
/// output line or the error line.
fn summarize(
    host: &str,
    report: Option<TransactionReport>,
    ended: Result<(), mxsend::ConnectionError>,
) -> Result<String, String> {
    let session_error = ended.err().map(|error| error_chain(&error));
    let Some(report) = report else {
        let reason =
            session_error.unwrap_or_else(|| "the session ended without a transaction".to_owned());
        return Err(format!("sending to {host} failed: {reason}"));
    };
    let total = report.recipients.len();
    let accepted = report.accepted();
    if let Some(reply) = report.final_reply.as_ref().filter(|r| r.is_positive()) {
        return Ok(format!(
            "message accepted for {accepted} of {total} recipients by {host}: {reply}"
        ));
    }

    // The reply that stopped the transaction, in the order of the
    // commands: MAIL, the RCPTs when none was accepted, DATA, the final dot.
    // Without one, the reason is why the session ended.
    let rejected_rcpt = || {
        report
            .recipients
            .iter()
            .find_map(|r| r.rcpt_reply.as_ref().filter(|reply| !reply.is_positive()))
            .filter(|_| accepted == 0)
    };
    let refusal = report
        .mail_reply
        .as_ref()
        .filter(|r| !r.is_positive())
        .or_else(rejected_rcpt)
        .or(report.data_reply.as_ref().filter(|r| !r.is_intermediate()))
        .or(report.final_reply.as_ref())
        .map(ToString::to_string)
        .or(session_error)
        .unwrap_or_else(|| "no reply".to_owned());
    Err(format!(
        "{host} did not take the message ({accepted} of {total} recipients accepted): {refusal}"
    ))
}

fn parse_address(text: &str) -> Result<Address, String> {
    Address::parse(text).map_err(|error| format!("invalid address {text}: {error}"))
}

/// Maps the result of [`run`] to the exit status: 0 on success, 1 on failure.
pub fn exit_code(result: &Result<String, String>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = run(std::env::args().skip(1)).await;
    match &result {
        Ok(line) => println!("{line}"),
        Err(error) => eprintln!("tutorial: {error}"),
    }
    exit_code(&result)
}
