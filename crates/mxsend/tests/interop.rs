//! Interoperability with real receiving servers.
//!
//! The test messages are the `*.eml` files below the folder named by
//! `MXSEND_CORPUS`, which `scripts/test` sets to the `mail-fixtures` corpus
//! beside the repository. Each one is sent with [`Delivery`] through a real
//! MX lookup against a loopback DNS zone, to aiosmtpd in one test and to
//! Postfix in the other. The message each server stores must equal the
//! input, except for:
//!
//! - a leading mbox separator line (`From sender date`), which the test
//!   removes before building the [`Message`], by the rule `mxsend send` uses;
//! - line endings: mxsend sends every line with CRLF (a bare CR or LF in the
//!   input ends a line) and ends the last line with CRLF; aiosmtpd stores
//!   CRLF and Postfix stores LF;
//! - for Postfix, the trace fields that it prepends and the header changes
//!   of its cleanup server, listed in the `postfix` module.
//!
//! A message with a line longer than 998 octets cannot be sent as it is, and
//! [`Message::from_bytes`] must reject it with an error that names the line.
//! The test finds those files from their content. It also derives two
//! messages from the first corpus file, so that both sides of the limit are
//! checked with any corpus. The one with an added 998-octet line must arrive
//! intact, and the one with an added 999-octet line must be rejected.
//!
//! When a server program or the corpus is missing (or, for Postfix, the test
//! does not run as root), the test fails with `CI=true` and otherwise writes
//! a notice and passes. Every failure is collected, and each test ends with
//! one assertion that lists them all.

#[path = "interop/corpus.rs"]
mod corpus;
#[path = "interop/peers.rs"]
mod peers;
#[path = "interop/postfix.rs"]
mod postfix;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mxsend::proto::data::{DataError, DataPolicy};
use mxsend::proto::{Address, Outcome, Timeouts};
use mxsend::{
    ConnectionConfig, Delivery, DeliveryConfig, DeliveryReport, Message, MessageError, MxResolver,
    Nameserver, ResolverSettings, Route,
};
use mxsend_testkit::{DnsServer, Zone};

use corpus::{Input, MAX_LINE_LENGTH};
use peers::{Aiosmtpd, Postfix};

/// Envelope sender of every message. `example.com` is one of the domains
/// that `scripts/postfix-loopback` accepts mail for, so a bounce would stay
/// on the machine.
const SENDER: &str = "interop-sender@example.com";

/// Time allowed for each SMTP reply, far below the RFC 5321 defaults so that
/// a stuck server fails the test quickly.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Time allowed for one whole delivery, DNS lookup included.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed for Postfix to store every accepted message in the Maildir,
/// counted from the last delivery.
const POSTFIX_STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// Domain of the recipients on aiosmtpd, and its exchanger.
const AIOSMTPD_DOMAIN: &str = "example.net";
const AIOSMTPD_MX: &str = "mx.example.net";

/// Domain of the recipients on Postfix, and its exchanger. Postfix stores
/// mail for this domain in its own Maildir.
const POSTFIX_DOMAIN: &str = "postfix.test";
const POSTFIX_MX: &str = "mx.postfix.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_stored_by_aiosmtpd() {
    corpus_through_aiosmtpd("corpus_stored_by_aiosmtpd", false).await;
}

/// The same with SMTPUTF8 offered, so messages with UTF-8 header fields
/// go with the SMTPUTF8 parameter (RFC 6531 section 3.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_stored_by_aiosmtpd_with_smtputf8() {
    corpus_through_aiosmtpd("corpus_stored_by_aiosmtpd_with_smtputf8", true).await;
}

async fn corpus_through_aiosmtpd(test: &str, smtputf8: bool) {
    let Some(inputs) = load_inputs(test) else {
        return;
    };
    if let Some(reason) = peers::aiosmtpd_missing() {
        peers::skip_unless_ci(test, &reason);
        return;
    }

    let server = Aiosmtpd::start(smtputf8).await;
    let dns = start_dns(AIOSMTPD_DOMAIN, AIOSMTPD_MX).await;
    let delivery = delivery_through(&dns, server.port());
    let recipients: Vec<String> = (0..inputs.len())
        .map(|index| format!("interop-{index}@{AIOSMTPD_DOMAIN}"))
        .collect();
    let mut run = send_all(&inputs, &recipients, &delivery, AIOSMTPD_MX).await;
    check_dns_used(&dns, &mut run);

    // aiosmtpd stores message n as <n>.eml before it replies 250, and the
    // messages went out one after another, so the n-th delivered message is
    // <n>.eml.
    for (number, sent) in (1..).zip(&run.sent) {
        if let Err(problem) = check_aiosmtpd_message(&server.messages(), number, sent, smtputf8) {
            run.failures.push(format!("{}: {problem}", sent.input.name));
        }
    }
    let stored_count = count_files_with_extension(&server.messages(), "eml");
    if stored_count != run.sent.len() {
        run.failures.push(format!(
            "aiosmtpd stored {stored_count} messages, but {} were delivered",
            run.sent.len()
        ));
    }

    let log = if run.failures.is_empty() {
        String::new()
    } else {
        format!("\naiosmtpd log:\n{}", server.log())
    };
    finish("aiosmtpd", &inputs, run, &log);
}

/// The only test in this target that uses Postfix, which is one service for
/// the whole machine. [`Postfix::start`] also takes a lock that keeps other
/// test processes from restarting Postfix during the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_stored_by_postfix() {
    const TEST: &str = "corpus_stored_by_postfix";
    let Some(inputs) = load_inputs(TEST) else {
        return;
    };
    if let Some(reason) = peers::postfix_missing() {
        peers::skip_unless_ci(TEST, &reason);
        return;
    }

    let server = Postfix::start().await;
    let maildir = server.maildir(POSTFIX_DOMAIN);
    let dns = start_dns(POSTFIX_DOMAIN, POSTFIX_MX).await;
    let delivery = delivery_through(&dns, server.port());
    // The Maildir keeps messages of earlier runs, so each recipient carries
    // a token of this run.
    let token = run_token();
    let recipients: Vec<String> = (0..inputs.len())
        .map(|index| format!("interop-{token}-{index}@{POSTFIX_DOMAIN}"))
        .collect();
    let mut run = send_all(&inputs, &recipients, &delivery, POSTFIX_MX).await;
    check_dns_used(&dns, &mut run);

    let expected: HashSet<String> = run.sent.iter().map(|sent| sent.recipient.clone()).collect();
    let mut stored = postfix::take_from_maildir(&maildir, &expected, POSTFIX_STORE_TIMEOUT).await;
    let mut missing = 0;
    for sent in &run.sent {
        match stored.remove(&sent.recipient) {
            Some(message) => {
                if let Err(problem) = check_postfix_message(&message, sent) {
                    run.failures.push(format!("{}: {problem}", sent.input.name));
                }
            }
            None => {
                missing += 1;
                run.failures.push(format!(
                    "{}: accepted by Postfix for <{}> but not stored in {} within {:?}",
                    sent.input.name,
                    sent.recipient,
                    maildir.join("new").display(),
                    POSTFIX_STORE_TIMEOUT
                ));
            }
        }
    }

    let log = if missing > 0 {
        format!("\nlast lines of the Postfix log:\n{}", server.log_tail())
    } else {
        String::new()
    };
    finish("Postfix", &inputs, run, &log);
}

/// A message that the server accepted.
struct Sent {
    input: Input,
    recipient: String,
}

/// What happened to the inputs of one test.
#[derive(Default)]
struct Run {
    /// Messages accepted by the server, in the order sent.
    sent: Vec<Sent>,
    /// Names of the inputs that mxsend rejected as expected.
    rejected: Vec<String>,
    /// One line for each problem found.
    failures: Vec<String>,
}

/// Reads the corpus and adds the two derived messages around the line
/// length limit. Returns `None` when the test should end early.
fn load_inputs(test: &str) -> Option<Vec<Input>> {
    let folder = corpus_folder();
    if !folder.is_dir() {
        peers::skip_unless_ci(
            test,
            &format!(
                "corpus folder {} not found; set MXSEND_CORPUS to the folder of test messages",
                folder.display()
            ),
        );
        return None;
    }
    let mut inputs = corpus::load(&folder).unwrap_or_else(|error| {
        panic!("reading the corpus in {} failed: {error}", folder.display())
    });
    assert!(
        !inputs.is_empty(),
        "no *.eml files found below {}; check MXSEND_CORPUS",
        folder.display()
    );
    let longest_allowed = with_added_line(&inputs[0], MAX_LINE_LENGTH);
    let too_long = with_added_line(&inputs[0], MAX_LINE_LENGTH + 1);
    let large = with_large_body(&inputs[0], LARGE_BODY_SIZE);
    inputs.push(longest_allowed);
    inputs.push(too_long);
    inputs.push(large);
    Some(inputs)
}

/// Size of the body of the derived large message: several BDAT chunks to
/// Postfix, and many 64 KiB reads of the DATA encoder to aiosmtpd.
const LARGE_BODY_SIZE: usize = 3 * 1024 * 1024;

/// Returns a copy of `input` with at least `size` octets of body lines
/// added, every fifth of them starting with a dot, so that dot lines fall on
/// chunk boundaries too.
fn with_large_body(input: &Input, size: usize) -> Input {
    let mut content = input.content.clone();
    if !content.is_empty() && !content.ends_with(b"\n") && !content.ends_with(b"\r") {
        content.extend_from_slice(b"\r\n");
    }
    let start = content.len();
    let mut number = 0;
    while content.len() - start < size {
        let dot = if number % 5 == 0 { "." } else { "" };
        content
            .extend_from_slice(format!("{dot}line {number:07} of a large message\r\n").as_bytes());
        number += 1;
    }
    Input {
        name: format!("{} with {size} octets of added lines", input.name),
        content,
    }
}

fn corpus_folder() -> PathBuf {
    match std::env::var_os("MXSEND_CORPUS") {
        Some(folder) => PathBuf::from(folder),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/mail-fixtures"),
    }
}

/// Returns a copy of `input` with a body line of `length` octets added at
/// the end.
fn with_added_line(input: &Input, length: usize) -> Input {
    let mut content = input.content.clone();
    if !content.is_empty() && !content.ends_with(b"\n") && !content.ends_with(b"\r") {
        content.extend_from_slice(b"\r\n");
    }
    content.extend(std::iter::repeat_n(b'x', length));
    content.extend_from_slice(b"\r\n");
    Input {
        name: format!("{} with an added {length}-octet line", input.name),
        content,
    }
}

/// Starts a DNS zone in which `domain` has one exchanger, `mx`, at
/// 127.0.0.1.
async fn start_dns(domain: &str, mx: &str) -> DnsServer {
    let zone = Zone::new().mx(domain, 10, mx).a(mx, Ipv4Addr::LOCALHOST);
    DnsServer::start(zone)
        .await
        .expect("starting the test DNS server on 127.0.0.1 failed")
}

/// Creates a delivery that queries only `dns` and connects to exchangers on
/// `port`.
fn delivery_through(dns: &DnsServer, port: u16) -> Delivery {
    let resolver = MxResolver::new(&ResolverSettings {
        nameserver: Nameserver::At(dns.addr()),
        timeout: Duration::from_secs(2),
        attempts: 2,
    })
    .expect("creating the resolver failed");
    let timeouts = Timeouts::uniform(REPLY_TIMEOUT);
    let config = DeliveryConfig {
        connection: ConnectionConfig {
            connect_timeout: REPLY_TIMEOUT,
            timeouts,
            ..ConnectionConfig::default()
        },
        port,
        route: Route::Mx,
    };
    Delivery::new(resolver, config)
}

/// Builds and delivers each input to its recipient, one delivery after
/// another. An input with a line over the limit must be rejected when the
/// message is built; every other one must be delivered through `mx`.
async fn send_all(inputs: &[Input], recipients: &[String], delivery: &Delivery, mx: &str) -> Run {
    let mut run = Run::default();
    let sender = Address::parse(SENDER).expect("sender address is valid");
    for (input, recipient) in inputs.iter().zip(recipients) {
        let address = Address::parse(recipient).expect("recipient address is valid");
        let built = Message::from_bytes(
            Some(sender.clone()),
            vec![address],
            input.content.clone(),
            DataPolicy::default(),
        )
        .await;
        let message = match (input.first_long_line(), built) {
            (Some((line, length)), Err(error)) => {
                match check_long_line_error(&error, line) {
                    Ok(()) => run.rejected.push(input.name.clone()),
                    Err(problem) => run.failures.push(format!(
                        "{}: line {line} is {length} octets long; {problem}",
                        input.name
                    )),
                }
                continue;
            }
            (Some((line, length)), Ok(_)) => {
                run.failures.push(format!(
                    "{}: line {line} is {length} octets long, over the limit of {MAX_LINE_LENGTH}, \
                     but Message::from_bytes accepted the message",
                    input.name
                ));
                continue;
            }
            (None, Err(error)) => {
                run.failures.push(format!(
                    "{}: Message::from_bytes rejected a message that SMTP can carry: {error}",
                    input.name
                ));
                continue;
            }
            (None, Ok(message)) => message,
        };

        let report = match tokio::time::timeout(DELIVERY_TIMEOUT, delivery.deliver(&message)).await
        {
            Ok(report) => report,
            Err(_) => {
                run.failures.push(format!(
                    "{}: delivery did not finish within {DELIVERY_TIMEOUT:?}",
                    input.name
                ));
                continue;
            }
        };
        match check_delivered(&report, mx) {
            Ok(()) => run.sent.push(Sent {
                input: input.clone(),
                recipient: recipient.clone(),
            }),
            Err(problem) => run.failures.push(format!("{}: {problem}", input.name)),
        }
    }
    run
}

/// Checks that `error` is the line length error for line `line`, with a
/// message that names the line.
fn check_long_line_error(error: &MessageError, line: u64) -> Result<(), String> {
    let MessageError::Data(DataError::LineTooLong { line: reported, .. }) = error else {
        return Err(format!("expected a line length error, got: {error}"));
    };
    if *reported != line {
        return Err(format!("the error reports line {reported}: {error}"));
    }
    let text = error.to_string();
    if !text.contains(&format!("line {line} ")) {
        return Err(format!(
            "the error message does not name line {line}: {text}"
        ));
    }
    Ok(())
}

/// Checks that the one recipient was delivered through the exchanger `mx`.
fn check_delivered(report: &DeliveryReport, mx: &str) -> Result<(), String> {
    let [recipient] = report.recipients.as_slice() else {
        return Err(format!(
            "expected a report for 1 recipient, got {}",
            report.recipients.len()
        ));
    };
    if recipient.outcome != Outcome::Delivered {
        let attempts: Vec<String> = report
            .attempts
            .iter()
            .map(|attempt| format!("{}: {}", attempt.host, attempt.result))
            .collect();
        return Err(format!(
            "{} <{}>: {} (attempts: {})",
            recipient.outcome,
            recipient.address,
            recipient.reason,
            attempts.join("; ")
        ));
    }
    if recipient.host.as_deref() != Some(mx) {
        return Err(format!(
            "delivered through {:?}, expected the exchanger {mx}",
            recipient.host
        ));
    }
    Ok(())
}

fn check_dns_used(dns: &DnsServer, run: &mut Run) {
    if !run.sent.is_empty() && dns.query_count() == 0 {
        run.failures
            .push("messages were delivered, but the test DNS server received no query".to_owned());
    }
}

/// Checks aiosmtpd's `<number>.eml` and `<number>.json` against `sent`.
fn check_aiosmtpd_message(
    folder: &Path,
    number: usize,
    sent: &Sent,
    smtputf8: bool,
) -> Result<(), String> {
    let message_path = folder.join(format!("{number}.eml"));
    let envelope_path = folder.join(format!("{number}.json"));
    let stored = std::fs::read(&message_path)
        .map_err(|error| format!("reading {} failed: {error}", message_path.display()))?;
    let envelope = std::fs::read_to_string(&envelope_path)
        .map_err(|error| format!("reading {} failed: {error}", envelope_path.display()))?;

    // These values are plain ASCII strings in the JSON file, so a search for
    // the quoted string finds them without a JSON parser.
    if !envelope.contains(&format!("\"{}\"", sent.recipient)) {
        return Err(format!(
            "{} is not the message for <{}>: {envelope}",
            envelope_path.display(),
            sent.recipient
        ));
    }
    if !envelope.contains(&format!("\"mail_from\": \"{SENDER}\"")) {
        return Err(format!("envelope sender is not <{SENDER}>: {envelope}"));
    }
    // SMTPUTF8 goes with a header section that has 8-bit octets, and only
    // to a server that offers it (RFC 6531 section 3.4).
    let header_8bit = {
        let mut scan = mxsend::proto::data::ContentScan::new();
        scan.update(&sent.input.content);
        scan.header_has_8bit()
    };
    let asked_utf8 = envelope.contains("\"SMTPUTF8\"");
    if asked_utf8 != (smtputf8 && header_8bit) {
        return Err(format!(
            "MAIL {} SMTPUTF8 for a header section {} 8-bit octets, with SMTPUTF8 {}: {envelope}",
            if asked_utf8 { "had" } else { "did not have" },
            if header_8bit { "with" } else { "without" },
            if smtputf8 { "offered" } else { "not offered" },
        ));
    }
    let body_8bit = envelope.contains("\"BODY=8BITMIME\"");
    if body_8bit != sent.input.is_eight_bit() {
        return Err(format!(
            "the content {} 8-bit octets, but MAIL {} BODY=8BITMIME: {envelope}",
            if sent.input.is_eight_bit() {
                "has"
            } else {
                "has no"
            },
            if body_8bit { "had" } else { "did not have" },
        ));
    }
    match declared_size(&envelope) {
        Some(size) if size >= stored.len() as u64 => {}
        Some(size) => {
            return Err(format!(
                "MAIL declared SIZE={size}, but the server received {} octets",
                stored.len()
            ));
        }
        None => return Err(format!("MAIL had no SIZE parameter: {envelope}")),
    }

    let expected = sent.input.expected_crlf();
    if stored != expected {
        return Err(format!(
            "stored message differs from the input: {}",
            corpus::describe_difference(&expected, &stored)
        ));
    }
    Ok(())
}

/// Returns the value of the `SIZE=` parameter in aiosmtpd's envelope JSON.
fn declared_size(envelope: &str) -> Option<u64> {
    let start = envelope.find("\"SIZE=")? + "\"SIZE=".len();
    let digits: String = envelope[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn count_files_with_extension(folder: &Path, extension: &str) -> usize {
    std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    entry
                        .path()
                        .extension()
                        .is_some_and(|found| found == extension)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Returns a string that differs between runs, for recipient addresses.
fn run_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// Checks a message from the Postfix Maildir against `sent`.
fn check_postfix_message(stored: &[u8], sent: &Sent) -> Result<(), String> {
    let stored = postfix::split_trace(stored)?;
    let expected_values = [
        ("Return-Path", format!("<{SENDER}>")),
        ("X-Original-To", sent.recipient.clone()),
        ("Delivered-To", sent.recipient.clone()),
    ];
    for (name, expected) in expected_values {
        let value = stored
            .trace
            .get(name)
            .map(String::as_str)
            .unwrap_or_default();
        if value != expected {
            return Err(format!(
                "trace field {name} is {value:?}, expected {expected:?}"
            ));
        }
    }

    let expected = postfix::expected_message(&sent.input);
    if stored.message != expected.as_slice() {
        return Err(format!(
            "stored message differs from the input: {}",
            corpus::describe_difference(&expected, stored.message)
        ));
    }
    Ok(())
}

/// Prints the counts and fails with the list of problems, if any.
fn finish(peer: &str, inputs: &[Input], run: Run, details: &str) {
    let rejected = if run.rejected.is_empty() {
        String::new()
    } else {
        format!(" ({})", run.rejected.join(", "))
    };
    eprintln!(
        "{peer}: {} of {} inputs delivered and checked, {} rejected before sending{rejected}, \
         {} problems",
        run.sent.len(),
        inputs.len(),
        run.rejected.len(),
        run.failures.len(),
    );
    assert!(
        run.failures.is_empty(),
        "{peer}: {} problems with {} inputs:\n  {}{details}",
        run.failures.len(),
        inputs.len(),
        run.failures.join("\n  "),
    );
}
