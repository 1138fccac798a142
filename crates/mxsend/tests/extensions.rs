//! ESMTP extensions end to end: Delivery against the testkit SMTP server,
//! with each extension advertised and not advertised, checked on the exact
//! commands and bytes the server received.

use std::net::Ipv4Addr;
use std::time::Duration;

use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, DsnNotify, DsnRequest, Outcome, Timeouts};
use mxsend::{
    ConnectionConfig, Delivery, DeliveryConfig, DeliveryReport, Message, MessageError, MxResolver,
    Nameserver, ResolverSettings, Route,
};
use mxsend_testkit::{Action, DnsServer, Point, Script, SessionRecord, SmtpServer, Zone};

const STEP_TIMEOUT: Duration = Duration::from_secs(5);
const TEST_LIMIT: Duration = Duration::from_secs(30);
const SENDER: &str = "sender@client.test";

/// The testkit server's extensions without SMTPUTF8 and PIPELINING.
const PLAIN_EXTENSIONS: &[&str] = &["8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 10485760"];

struct Peers {
    _dns: DnsServer,
    smtp: SmtpServer,
    delivery: Delivery,
}

/// Starts a zone in which `example.net` and `xn--bcher-kva.example` lead to
/// the SMTP server of `script`, and a delivery that uses both.
async fn peers(script: Script) -> Peers {
    let zone = Zone::new()
        .mx("example.net", 10, "mx.example.net")
        .mx("xn--bcher-kva.example", 10, "mx.example.net")
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
    );
    Peers {
        _dns: dns,
        smtp,
        delivery,
    }
}

async fn message(recipients: &[&str], body: &[u8]) -> Result<Message, MessageError> {
    Message::from_bytes(
        Some(Address::parse(SENDER).unwrap()),
        recipients
            .iter()
            .map(|r| Address::parse(r).unwrap())
            .collect(),
        body.to_vec(),
        DataPolicy::default(),
    )
    .await
}

/// Delivers `message` and returns the report and the server's record of
/// the one session.
async fn deliver(peers: &Peers, message: &Message) -> (DeliveryReport, SessionRecord) {
    let report = tokio::time::timeout(TEST_LIMIT, peers.delivery.deliver(message))
        .await
        .expect("delivery within the test limit");
    assert!(peers.smtp.wait_for_sessions(1, STEP_TIMEOUT).await);
    let session = peers
        .smtp
        .sessions()
        .into_iter()
        .next()
        .expect("one session");
    (report, session)
}

fn mail_command(session: &SessionRecord) -> &str {
    session
        .commands
        .iter()
        .find(|c| c.starts_with("MAIL "))
        .expect("a MAIL command")
}

fn outcomes(report: &DeliveryReport) -> Vec<Outcome> {
    report.recipients.iter().map(|r| r.outcome).collect()
}

/// C-EXT-01, RFC 2920 section 3.1: three recipients in one pipelined group;
/// the second is refused and DATA goes ahead for the other two.
#[tokio::test]
async fn pipelined_group_with_one_refused_recipient() {
    let script = Script::new().on(
        Point::Rcpt.containing("<two@"),
        Action::reply("550 5.1.1 No such user"),
    );
    let peers = peers(script).await;
    let message = message(
        &["one@example.net", "two@example.net", "three@example.net"],
        b"Subject: x\r\n\r\nbody\r\n",
    )
    .await
    .unwrap();

    let (report, session) = deliver(&peers, &message).await;

    assert_eq!(
        outcomes(&report),
        [Outcome::Delivered, Outcome::Failed, Outcome::Delivered]
    );
    assert!(
        report.recipients.iter().all(|r| !r.local),
        "the server refused, not mxsend"
    );
    let group = "MAIL FROM:<sender@client.test> SIZE=20\r\nRCPT TO:<one@example.net>\r\n\
                 RCPT TO:<two@example.net>\r\nRCPT TO:<three@example.net>\r\nDATA\r\n";
    let received = String::from_utf8_lossy(&session.received);
    assert!(
        received.contains(group),
        "one group expected in {received:?}"
    );
    assert_eq!(
        peers.smtp.messages()[0].rcpt_to,
        ["one@example.net", "three@example.net"]
    );
}

/// C-EXT-01, RFC 2920 section 3.1: every RCPT refused while DATA got 354
/// in the same batch. The data phase ends empty and nobody gets a message.
#[tokio::test]
async fn pipelined_go_ahead_after_every_rcpt_refused() {
    let script = Script::new().on(Point::Rcpt, Action::reply("550 5.1.1 No such user"));
    let peers = peers(script).await;
    let message = message(
        &["one@example.net", "two@example.net"],
        b"Subject: x\r\n\r\nbody\r\n",
    )
    .await
    .unwrap();

    let (report, session) = deliver(&peers, &message).await;

    assert_eq!(outcomes(&report), [Outcome::Failed, Outcome::Failed]);
    assert!(peers.smtp.messages().is_empty(), "no message may be stored");
    let received = String::from_utf8_lossy(&session.received);
    assert!(
        !received.contains("body"),
        "no content may be sent: {received:?}"
    );
}

/// C-EXT-01: no pipelining to a server that did not advertise it. With MAIL
/// refused, a client that waits for each reply never sends RCPT, while a
/// pipelining client has sent RCPT and DATA already.
#[tokio::test]
async fn no_pipelining_without_advertisement() {
    let refuse_mail = Action::reply("550 5.7.1 sender refused");
    let message = message(&["one@example.net"], b"Subject: x\r\n\r\nbody\r\n")
        .await
        .unwrap();

    let plain = peers(
        Script::new()
            .extensions(PLAIN_EXTENSIONS)
            .on(Point::Mail, refuse_mail.clone()),
    )
    .await;
    let (report, session) = deliver(&plain, &message).await;
    assert_eq!(outcomes(&report), [Outcome::Failed]);
    assert!(
        session.commands.iter().all(|c| !c.starts_with("RCPT")),
        "{session:?}"
    );

    let pipelining = peers(Script::new().on(Point::Mail, refuse_mail)).await;
    let (_, session) = deliver(&pipelining, &message).await;
    assert!(
        session.commands.iter().any(|c| c.starts_with("RCPT")),
        "{session:?}"
    );
}

/// RFC 6531 section 3.4: a UTF-8 recipient goes with SMTPUTF8 to a server
/// that offers it, and fails with 5.6.7 at one that does not.
#[tokio::test]
async fn utf8_recipient_with_and_without_smtputf8() {
    let with = peers(Script::new()).await;
    let utf8 = message(&["jörg@example.net"], b"Subject: x\r\n\r\nbody\r\n")
        .await
        .unwrap();
    let (report, session) = deliver(&with, &utf8).await;
    assert_eq!(outcomes(&report), [Outcome::Delivered]);
    assert!(mail_command(&session).ends_with(" SMTPUTF8"), "{session:?}");
    assert!(
        session
            .commands
            .iter()
            .any(|c| c == "RCPT TO:<jörg@example.net>")
    );

    let without = peers(Script::new().extensions(PLAIN_EXTENSIONS)).await;
    let report = tokio::time::timeout(TEST_LIMIT, without.delivery.deliver(&utf8))
        .await
        .unwrap();
    assert_eq!(outcomes(&report), [Outcome::Failed]);
    let reply = report.recipients[0].reply.as_ref().unwrap();
    assert_eq!(reply.enhanced.as_deref(), Some("5.6.7"));
    assert!(without.smtp.messages().is_empty());
}

/// C-8B-04, RFC 6531 section 3.2: an IDN domain with an ASCII local part
/// goes in A-labels to a server without SMTPUTF8, and the MX lookup uses
/// the A-label name too.
#[tokio::test]
async fn idn_domain_sent_as_a_labels() {
    let peers = peers(Script::new().extensions(PLAIN_EXTENSIONS)).await;
    let message = message(&["user@bücher.example"], b"Subject: x\r\n\r\nbody\r\n")
        .await
        .unwrap();

    let (report, session) = deliver(&peers, &message).await;

    assert_eq!(outcomes(&report), [Outcome::Delivered], "{report:?}");
    assert!(
        session
            .commands
            .iter()
            .any(|c| c == "RCPT TO:<user@xn--bcher-kva.example>"),
        "{session:?}"
    );
    assert_eq!(
        mail_command(&session),
        "MAIL FROM:<sender@client.test> SIZE=20"
    );
}

/// C-8B-05, RFC 1870 section 6: a message larger than the advertised SIZE
/// is not uploaded and fails with 5.3.4; no MAIL is sent at all.
#[tokio::test]
async fn message_over_advertised_size_not_uploaded() {
    let peers = peers(Script::new().extensions(&["PIPELINING", "SIZE 1000"])).await;
    let body = format!("Subject: big\r\n\r\n{}", "x".repeat(990) + "\r\n");
    let message = message(&["one@example.net"], body.as_bytes())
        .await
        .unwrap();

    let (report, session) = deliver(&peers, &message).await;

    assert_eq!(outcomes(&report), [Outcome::Failed]);
    let reply = report.recipients[0].reply.as_ref().unwrap();
    assert_eq!(reply.code, 552);
    assert_eq!(reply.enhanced.as_deref(), Some("5.3.4"));
    assert!(report.recipients[0].local, "the 552 is made up by mxsend");
    assert!(report.recipients[0].reason.contains("decided by mxsend"));
    assert!(
        session.commands.iter().all(|c| !c.starts_with("MAIL")),
        "{session:?}"
    );
}

/// C-8B-02 and C-8B-03, RFC 6152: BODY=8BITMIME for 8-bit content where
/// advertised; without 8BITMIME the message is refused, not mangled.
#[tokio::test]
async fn eight_bit_body_with_and_without_8bitmime() {
    let body = "Subject: x\r\n\r\nGrüße\r\n".as_bytes();
    let with = peers(Script::new()).await;
    let message = message(&["one@example.net"], body).await.unwrap();
    let (report, session) = deliver(&with, &message).await;
    assert_eq!(outcomes(&report), [Outcome::Delivered]);
    assert!(
        mail_command(&session).contains(" BODY=8BITMIME"),
        "{session:?}"
    );
    assert_eq!(with.smtp.messages()[0].data, body);

    let without = peers(Script::new().extensions(&["PIPELINING", "SIZE 10485760"])).await;
    let report = tokio::time::timeout(TEST_LIMIT, without.delivery.deliver(&message))
        .await
        .unwrap();
    assert_eq!(outcomes(&report), [Outcome::Failed]);
    assert_eq!(
        report.recipients[0]
            .reply
            .as_ref()
            .unwrap()
            .enhanced
            .as_deref(),
        Some("5.6.3")
    );
}

/// C-EXT-03, RFC 3461 section 4: ORCPT in xtext for an address with `+` and
/// `=`, and no DSN parameter to a server without DSN.
#[tokio::test]
async fn dsn_orcpt_with_plus_and_equals() {
    let dsn = DsnRequest {
        notify: Some(DsnNotify::parse("failure").unwrap()),
        orcpt: true,
        ..DsnRequest::default()
    };
    let message = message(&["a+b=c@example.net"], b"Subject: x\r\n\r\nbody\r\n")
        .await
        .unwrap()
        .with_dsn(dsn);

    let with = peers(Script::new().extensions(&["PIPELINING", "DSN"])).await;
    let (report, session) = deliver(&with, &message).await;
    assert_eq!(outcomes(&report), [Outcome::Delivered]);
    assert!(
        session.commands.iter().any(|c| c
            == "RCPT TO:<a+b=c@example.net> NOTIFY=FAILURE ORCPT=rfc822;a+2Bb+3Dc@example.net"),
        "{session:?}"
    );

    let without = peers(Script::new()).await;
    let (_, session) = deliver(&without, &message).await;
    assert!(
        session
            .commands
            .iter()
            .any(|c| c == "RCPT TO:<a+b=c@example.net>"),
        "{session:?}"
    );
}

/// C-DATA-02, C-DATA-05: bodies that could end the data early at a lenient
/// server arrive intact, and the wire has only CRLF line breaks and one
/// end-of-data line.
#[tokio::test]
async fn smuggling_sequences_arrive_intact() {
    let bodies: [&[u8]; 4] = [
        b"Subject: a\n\nbefore\n.\nafter\n",
        b"Subject: b\r\n\r\nbefore\r\n.\nafter\r\n",
        b"Subject: c\r\n\r\nbefore\r.\rafter\r\n",
        b"Subject: d\r\n\r\nsoft=\r\n.broken line\r\n",
    ];
    let expected: [&[u8]; 4] = [
        b"Subject: a\r\n\r\nbefore\r\n.\r\nafter\r\n",
        b"Subject: b\r\n\r\nbefore\r\n.\r\nafter\r\n",
        b"Subject: c\r\n\r\nbefore\r\n.\r\nafter\r\n",
        b"Subject: d\r\n\r\nsoft=\r\n.broken line\r\n",
    ];
    for (body, expected) in bodies.iter().zip(expected) {
        let peers = peers(Script::new()).await;
        let message = message(&["one@example.net"], body).await.unwrap();
        let (report, session) = deliver(&peers, &message).await;
        assert_eq!(outcomes(&report), [Outcome::Delivered], "{body:?}");
        assert_eq!(peers.smtp.messages()[0].data, expected, "{body:?}");

        let received = &session.received;
        let data_start = received.windows(6).position(|w| w == b"DATA\r\n").unwrap() + 6;
        let wire = &received[data_start..];
        let end_marker = wire.windows(5).filter(|w| w == b"\r\n.\r\n").count();
        assert_eq!(end_marker, 1, "exactly one end-of-data line: {body:?}");
        for (index, &octet) in wire.iter().enumerate() {
            if octet == b'\n' {
                assert_eq!(wire[index - 1], b'\r', "bare LF at {index}: {body:?}");
            }
            if octet == b'\r' {
                assert_eq!(
                    wire.get(index + 1),
                    Some(&b'\n'),
                    "bare CR at {index}: {body:?}"
                );
            }
        }
    }
}

/// C-DATA-04, RFC 5321 section 4.5.3.1.6: a line of 2,000 octets is never
/// sent; the message fails before any connection with the line number.
#[tokio::test]
async fn line_of_2000_octets_refused() {
    let body = format!("Subject: x\r\n\r\nshort\r\n{}\r\n", "y".repeat(2000));
    let error = message(&["one@example.net"], body.as_bytes())
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("line 4"), "{text}");
    assert!(matches!(error, MessageError::Data(_)), "{error:?}");
}

/// Binary MIME content of about 2.5 MiB, so that it takes three BDAT
/// chunks: every octet value, bare CR and LF, a line that would end DATA,
/// a NUL and a line of 2,000 octets in its binary part.
fn binary_content() -> Vec<u8> {
    let mut content = b"MIME-Version: 1.0\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: binary\r\n\r\n"
        .to_vec();
    content.extend_from_slice(b"\r\n.\r\n\0bare\nlf\rcr\n.\n");
    content.extend(std::iter::repeat_n(b'y', 2000));
    for round in 0..10_000u32 {
        content.extend((0..=255u8).map(|octet| octet.wrapping_add(round as u8)));
    }
    content
}

/// C-EXT-02, RFC 3030 section 3: binary content goes with BODY=BINARYMIME
/// in BDAT chunks and arrives octet for octet, with SIZE the exact count.
#[tokio::test]
async fn binary_content_sent_as_is_under_binarymime() {
    let content = binary_content();
    let peers = peers(Script::new().extensions(&[
        "PIPELINING",
        "8BITMIME",
        "CHUNKING",
        "BINARYMIME",
        "SIZE 10485760",
    ]))
    .await;
    let message = Message::from_binary_bytes(
        Some(Address::parse(SENDER).unwrap()),
        vec![Address::parse("one@example.net").unwrap()],
        content.clone(),
    )
    .await
    .unwrap();

    let (report, session) = deliver(&peers, &message).await;
    assert_eq!(outcomes(&report), [Outcome::Delivered], "{report:?}");
    assert_eq!(
        mail_command(&session),
        format!(
            "MAIL FROM:<{SENDER}> SIZE={} BODY=BINARYMIME",
            content.len()
        )
    );
    let chunks: Vec<&String> = session
        .commands
        .iter()
        .filter(|c| c.starts_with("BDAT "))
        .collect();
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    assert!(chunks[2].ends_with(" LAST"), "{chunks:?}");
    assert!(!session.commands.iter().any(|c| c == "DATA"));

    let stored = peers.smtp.messages();
    assert!(stored[0].data == content, "the stored content differs");
}

/// Without BINARYMIME, or without CHUNKING, binary content is not sent at
/// all: the recipient fails with 5.6.3 and no MAIL goes out.
#[tokio::test]
async fn binary_content_refused_without_binarymime() {
    for extensions in [
        &["PIPELINING", "8BITMIME", "CHUNKING"][..],
        &["PIPELINING", "8BITMIME", "BINARYMIME"],
    ] {
        let peers = peers(Script::new().extensions(extensions)).await;
        let message = Message::from_binary_bytes(
            Some(Address::parse(SENDER).unwrap()),
            vec![Address::parse("one@example.net").unwrap()],
            binary_content(),
        )
        .await
        .unwrap();
        let (report, session) = deliver(&peers, &message).await;
        assert_eq!(outcomes(&report), [Outcome::Failed], "{extensions:?}");
        let reply = report.recipients[0].reply.as_ref().unwrap();
        assert_eq!(reply.enhanced.as_deref(), Some("5.6.3"), "{extensions:?}");
        assert!(report.recipients[0].local);
        let attempt = &report.attempts[0].result;
        assert!(
            attempt.contains("5.6.3") && attempt.contains("BINARYMIME"),
            "the attempt names what is missing: {attempt}"
        );
        assert!(
            !session.commands.iter().any(|c| c.starts_with("MAIL ")),
            "{session:?}"
        );
        assert!(peers.smtp.messages().is_empty());
    }
}

/// C-EXT-02: text content grows when LF becomes CRLF, and BDAT chunks
/// still hold exactly 1 MiB each, with the rest in the last one.
#[tokio::test]
async fn bdat_chunks_of_text_are_one_mib() {
    let mut body = b"Subject: chunks\n\n".to_vec();
    while body.len() < 2_500_000 {
        body.extend_from_slice(
            b"eighty octets of text in every line of this message, ended by a bare LF....\n",
        );
    }
    let peers = peers(Script::new().extensions(&["PIPELINING", "8BITMIME", "CHUNKING"])).await;
    let message = message(&["one@example.net"], &body).await.unwrap();
    let (report, session) = deliver(&peers, &message).await;
    assert_eq!(outcomes(&report), [Outcome::Delivered], "{report:?}");

    let sizes: Vec<usize> = session
        .commands
        .iter()
        .filter_map(|c| c.strip_prefix("BDAT "))
        .map(|rest| rest.trim_end_matches(" LAST").parse().unwrap())
        .collect();
    let (last, full) = sizes.split_last().unwrap();
    assert_eq!(full, [1 << 20, 1 << 20], "{sizes:?}");
    assert!(*last > 0, "{sizes:?}");
    assert!(*last <= 1 << 20, "{sizes:?}");

    let expected: Vec<u8> = body
        .split(|&octet| octet == b'\n')
        .collect::<Vec<_>>()
        .join(&b"\r\n"[..]);
    let stored = &peers.smtp.messages()[0].data;
    assert_eq!(stored.len(), sizes.iter().sum::<usize>());
    assert!(*stored == expected, "the stored content differs");
}
