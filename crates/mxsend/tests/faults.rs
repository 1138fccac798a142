//! The fault matrix: the primary exchanger misbehaves at one point of the
//! session in one way, and the test checks each recipient's outcome and
//! which exchanger, if any, took the message. The table in
//! [`expected_outcome`] is the specification.
//!
//! Both exchangers of `example.net` are the same testkit server. The first
//! connection (the primary, preference 10) follows the fault, and the
//! second connection (the backup, preference 20) behaves well. The
//! STARTTLS row uses a server that offers TLS, under the `may` policy that
//! MX delivery uses by default, and the AUTH row a client with credentials.

use std::net::Ipv4Addr;
use std::time::Duration;

use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, AuthSettings, Credentials, Outcome, Secret, Timeouts};
use mxsend::{
    ConnectionConfig, Delivery, DeliveryConfig, DeliveryReport, Message, MxResolver, Nameserver,
    ResolverSettings, Route,
};
use mxsend_testkit::{Action, DnsServer, Point, Script, SmtpServer, TestCa, Zone};

/// Reply timeout of every phase: short, so that the `Silent` cells finish
/// quickly, and still far above loopback round trips.
const STEP_TIMEOUT: Duration = Duration::from_millis(700);
/// Time each write may block, and time for the reply to the final dot.
/// The `MidBody` cells send 16 MiB. The backup, a debug build sharing two
/// cores with every other cell, does not always read that much and reply
/// within [`STEP_TIMEOUT`].
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
const DATA_END_TIMEOUT: Duration = Duration::from_secs(5);
const CELL_LIMIT: Duration = Duration::from_secs(20);
const AUTH_USER: &str = "fault-user";
const AUTH_PASSWORD: &str = "fault-password";

/// Where the primary misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Greeting,
    Ehlo,
    /// The STARTTLS command, for a server that offers TLS, under the
    /// default `may` policy of MX delivery.
    StartTls,
    /// The AUTH command, for a client with credentials and a server that
    /// offers AUTH in plain text, which the client is configured to allow.
    Auth,
    Mail,
    Rcpt,
    Data,
    /// A line in the middle of the message content, while the client is
    /// still writing it.
    MidBody,
    /// The same over STARTTLS, where the client reads and closes through
    /// TLS records.
    MidBodyTls,
    DataEnd,
    Quit,
}

/// How the primary misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Closes the connection instead of replying.
    Close,
    /// Never replies. In the middle of the content it also stops
    /// reading, so the client's writes block.
    Silent,
    /// Replies 421: the service is closing.
    Closing421,
    /// Replies with a temporary failure.
    Temporary4xx,
    /// Replies with a permanent failure.
    Permanent5xx,
    /// Replies with a line that is no SMTP reply.
    Garbage,
    /// Replies with a multi-line reply of more lines than the limit.
    EndlessReply,
    /// Replies correctly, then sends a reply to no command.
    Unsolicited,
}

/// Who ends up with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// The primary accepted it.
    Primary,
    /// The primary failed in a way that moves on, and the backup accepted.
    Backup,
    /// No exchanger accepted it: the outcome is final or waits for a retry.
    Nobody,
}

/// The specification: the outcome of the one recipient, and where the
/// message went.
fn expected_outcome(at: At, fault: Fault) -> (Outcome, Taken) {
    use Fault::*;
    use Outcome::*;
    match (at, fault) {
        // The transaction is over when QUIT goes out: whatever the server
        // does then changes nothing.
        (At::Quit, _) => (Delivered, Taken::Primary),

        // A refused EHLO gets one HELO (C-SES-03), which the primary
        // accepts, so the message still goes to the primary.
        (At::Ehlo, Temporary4xx | Permanent5xx) => (Delivered, Taken::Primary),

        // Under `may`, a refused STARTTLS (RFC 3207 section 4 names 454)
        // leaves a plain session with the same server (C-TLS-01).
        (At::StartTls, Temporary4xx | Permanent5xx) => (Delivered, Taken::Primary),

        // A 5xx to MAIL, RCPT, DATA or the final dot is final for the
        // recipient (C-TX-03, C-TX-05): no other exchanger is tried.
        (At::Mail | At::Rcpt | At::Data | At::DataEnd, Permanent5xx) => (Failed, Taken::Nobody),

        // After the final dot, a lost connection, silence or a broken reply
        // leaves the server's decision unknown (RFC 5321 section 6.1): the
        // message may have been delivered and is not sent again.
        (At::DataEnd, Close | Silent | Garbage | EndlessReply) => (Uncertain, Taken::Nobody),

        // The final dot accepted, then an extra reply: the message was taken.
        (At::DataEnd, Unsolicited) => (Delivered, Taken::Primary),

        // Nothing is due from the server in the middle of the content, so
        // whatever it does there, even a 5xx, puts it out of step. The
        // client stops writing and never sends the final dot (C-REP-06),
        // or a stalled write times out (RFC 5321 section 4.5.3.2.5). So the
        // primary cannot have taken the message, and the backup gets it.
        (At::MidBody | At::MidBodyTls, _) => (Delivered, Taken::Backup),

        // Everything else is a failure of the primary before it took the
        // message: a lost connection, silence, 421 (also after the final
        // dot, C-TX-07), a 4xx (C-TX-03), a refused AUTH (a 535 is final
        // only for a relay, RFC 4954 section 6), or a reply out of step,
        // such as an extra reply right after 354. The backup gets the
        // message.
        _ => (Delivered, Taken::Backup),
    }
}

fn point(at: At) -> Point {
    match at {
        At::Greeting => Point::Connect,
        At::Ehlo => Point::Ehlo,
        At::StartTls => Point::StartTls,
        At::Auth => Point::Auth,
        At::Mail => Point::Mail,
        At::Rcpt => Point::Rcpt,
        At::Data => Point::Data,
        At::MidBody | At::MidBodyTls => Point::Body,
        At::DataEnd => Point::DataEnd,
        At::Quit => Point::Quit,
    }
}

fn is_mid_body(at: At) -> bool {
    matches!(at, At::MidBody | At::MidBodyTls)
}

/// The content line where the `MidBody` faults happen.
const MARKER_LINE: &str = "the server misbehaves after this line";

/// Content of the message: one short line, or for the `MidBody` row a
/// marker line followed by far more than the loopback socket buffers
/// hold, so that the client is still writing when the fault happens.
fn content(at: At) -> Vec<u8> {
    let mut content = b"Subject: fault\r\n\r\n".to_vec();
    if is_mid_body(at) {
        content.extend_from_slice(b"first line\r\n");
        content.extend_from_slice(MARKER_LINE.as_bytes());
        content.extend_from_slice(b"\r\n");
        let filler = format!("{}\r\n", "x".repeat(76));
        while content.len() < 16 * 1024 * 1024 {
            content.extend_from_slice(filler.as_bytes());
        }
    } else {
        content.extend_from_slice(b"body\r\n");
    }
    content
}

/// The primary's misbehaviour as a testkit action.
fn action(at: At, fault: Fault) -> Action {
    let code = match at {
        At::Greeting | At::StartTls => "220",
        At::Data => "354",
        At::Auth => "235",
        At::Quit => "221",
        _ => "250",
    };
    match fault {
        Fault::Close => Action::Close,
        Fault::Silent if is_mid_body(at) => Action::Stall,
        Fault::Silent => Action::Hang,
        Fault::Closing421 => Action::reply("421 4.3.2 shutting down"),
        Fault::Temporary4xx => Action::reply("451 4.3.0 try again later"),
        Fault::Permanent5xx => Action::reply("554 5.7.1 refused"),
        Fault::Garbage => Action::Raw(b"this is not an SMTP reply\r\n".to_vec()),
        Fault::EndlessReply => {
            let mut lines = String::new();
            for number in 0..2_000 {
                lines.push_str(&format!("{code}-line {number}\r\n"));
            }
            Action::Raw(lines.into_bytes())
        }
        Fault::Unsolicited => Action::Raw(
            format!("{code} 2.0.0 ok\r\n250 2.0.0 nobody asked for this\r\n").into_bytes(),
        ),
    }
}

async fn run_cell(at: At, fault: Fault) -> Result<(), String> {
    let mut script = Script::new();
    if at == At::StartTls || at == At::MidBodyTls {
        let certificate = TestCa::new()
            .and_then(|ca| ca.server_certificate(&["primary.example.net"], false))
            .map_err(|e| e.to_string())?;
        script = script.starttls(certificate.server_config().map_err(|e| e.to_string())?);
    }
    if at == At::Auth {
        script = script
            .extensions(&[
                "PIPELINING",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "AUTH PLAIN LOGIN",
            ])
            .auth(AUTH_USER, AUTH_PASSWORD);
    }
    if is_mid_body(at) {
        // The default SIZE of 10 MiB would refuse the large content. A
        // small receive buffer keeps the client from writing all of it
        // into kernel buffers before the server reads the marker line.
        script = script
            .extensions(&[
                "PIPELINING",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "SIZE 33554432",
            ])
            .receive_buffer(64 * 1024);
    }
    let trigger = if is_mid_body(at) {
        point(at).session(1).containing(MARKER_LINE)
    } else {
        point(at).session(1)
    };
    let script = script.on(trigger, action(at, fault));
    let smtp = SmtpServer::start(script).await.map_err(|e| e.to_string())?;
    let zone = Zone::new()
        .mx("example.net", 10, "primary.example.net")
        .mx("example.net", 20, "backup.example.net")
        .a("primary.example.net", Ipv4Addr::LOCALHOST)
        .a("backup.example.net", Ipv4Addr::LOCALHOST);
    let dns = DnsServer::start(zone).await.map_err(|e| e.to_string())?;
    let delivery = delivery(&dns, smtp.addr().port(), at == At::Auth);
    let message = Message::from_bytes(
        Some(Address::parse("sender@client.test").unwrap()),
        vec![Address::parse("rcpt@example.net").unwrap()],
        content(at),
        DataPolicy::default(),
    )
    .await
    .map_err(|e| e.to_string())?;

    let report = tokio::time::timeout(CELL_LIMIT, delivery.deliver(&message))
        .await
        .map_err(|_| format!("no report within {CELL_LIMIT:?}"))?;
    smtp.wait_for_sessions(1, Duration::from_secs(5)).await;
    if at == At::MidBodyTls && !smtp.sessions().first().is_some_and(|s| s.tls) {
        return Err("the primary session did not use TLS".to_owned());
    }
    if at == At::StartTls {
        let sessions = smtp.sessions();
        let asked = sessions
            .first()
            .is_some_and(|s| s.commands.iter().any(|c| c == "STARTTLS"));
        if !asked {
            return Err(format!(
                "the primary was not asked for STARTTLS: {sessions:?}"
            ));
        }
    }
    let (outcome, taken) = expected_outcome(at, fault);
    check(&report, &smtp, outcome, taken)
}

fn check(
    report: &DeliveryReport,
    smtp: &SmtpServer,
    outcome: Outcome,
    taken: Taken,
) -> Result<(), String> {
    let [recipient] = report.recipients.as_slice() else {
        return Err(format!("expected one recipient in {report:?}"));
    };
    if recipient.outcome != outcome {
        return Err(format!(
            "outcome {} ({}), expected {outcome}",
            recipient.outcome, recipient.reason
        ));
    }
    let stored = smtp.messages().len();
    let host = recipient.host.as_deref();
    let problem = match taken {
        Taken::Primary if host != Some("primary.example.net") => Some("the primary to take it"),
        Taken::Backup if host != Some("backup.example.net") => Some("the backup to take it"),
        Taken::Nobody if outcome == Outcome::Failed && stored != 0 => Some("nothing stored"),
        _ => None,
    };
    if let Some(problem) = problem {
        return Err(format!(
            "expected {problem}, got host {host:?} and {stored} stored"
        ));
    }
    if outcome == Outcome::Delivered && stored != 1 {
        return Err(format!(
            "reported delivered and the server stored {stored} copies"
        ));
    }
    if outcome == Outcome::Uncertain && stored > 1 {
        return Err(format!(
            "an uncertain message was sent again: {stored} copies"
        ));
    }
    Ok(())
}

fn delivery(dns: &DnsServer, port: u16, authenticate: bool) -> Delivery {
    let resolver = MxResolver::new(&ResolverSettings {
        nameserver: Nameserver::At(dns.addr()),
        timeout: Duration::from_secs(5),
        attempts: 1,
    })
    .expect("resolver");
    let mut connection = ConnectionConfig {
        helo_name: Some("client.test".to_owned()),
        connect_timeout: Duration::from_secs(5),
        timeouts: Timeouts {
            data_block: WRITE_TIMEOUT,
            data_end: DATA_END_TIMEOUT,
            ..Timeouts::uniform(STEP_TIMEOUT)
        },
        ..ConnectionConfig::default()
    };
    if authenticate {
        let credentials = Credentials::new(AUTH_USER.to_owned(), Secret::new(AUTH_PASSWORD));
        let mut settings = AuthSettings::new(credentials);
        settings.dangerous_allow_plaintext = true;
        connection.auth = Some(settings);
    }
    Delivery::new(
        resolver,
        DeliveryConfig {
            connection,
            port,
            route: Route::Mx,
        },
    )
}

/// Runs every cell of the matrix and lists every cell that broke the
/// specification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    let points = [
        At::Greeting,
        At::Ehlo,
        At::StartTls,
        At::Auth,
        At::Mail,
        At::Rcpt,
        At::Data,
        At::MidBody,
        At::MidBodyTls,
        At::DataEnd,
        At::Quit,
    ];
    let faults = [
        Fault::Close,
        Fault::Silent,
        Fault::Closing421,
        Fault::Temporary4xx,
        Fault::Permanent5xx,
        Fault::Garbage,
        Fault::EndlessReply,
        Fault::Unsolicited,
    ];
    let mut cells = tokio::task::JoinSet::new();
    for at in points {
        for fault in faults {
            cells.spawn(async move { (at, fault, run_cell(at, fault).await) });
        }
    }
    let mut failures = Vec::new();
    while let Some(joined) = cells.join_next().await {
        let (at, fault, result) = joined.expect("cell task");
        if let Err(problem) = result {
            failures.push(format!("{at:?} / {fault:?}: {problem}"));
        }
    }
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} cells failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
