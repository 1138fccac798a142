//! MAIL, RCPT and the content commands as they depend on what the server
//! advertised: SIZE, 8BITMIME, SMTPUTF8, CHUNKING and DSN, each with the
//! extension offered and not offered, checked on the exact bytes the session
//! sends.

use mxsend_proto::{
    Address, ClientSession, DsnNotify, DsnRequest, DsnReturn, Envelope, Event, Outcome,
    SessionConfig, TransactionReport,
};

/// Brings a session to Ready after an EHLO reply with `keywords`.
fn ready(keywords: &[&str]) -> ClientSession {
    let mut session = ClientSession::new(SessionConfig::new("client.test").unwrap());
    session.handle_input(b"220 mx.test ESMTP\r\n");
    assert_eq!(sent(&mut session), "EHLO client.test\r\n");
    let mut ehlo = String::from("250-mx.test\r\n");
    for keyword in keywords {
        ehlo.push_str(&format!("250-{keyword}\r\n"));
    }
    ehlo.push_str("250 HELP\r\n");
    session.handle_input(ehlo.as_bytes());
    assert_eq!(take_events(&mut session), [Event::Ready]);
    session
}

fn envelope(sender: &str, recipients: &[&str], size: u64, eight_bit: bool) -> Envelope {
    Envelope {
        sender: Some(Address::parse(sender).unwrap()),
        recipients: recipients
            .iter()
            .map(|r| Address::parse(r).unwrap())
            .collect(),
        size: Some(size),
        eight_bit,
        ..Envelope::default()
    }
}

fn take_events(session: &mut ClientSession) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn sent(session: &mut ClientSession) -> String {
    String::from_utf8(session.poll_transmit().unwrap_or_default()).unwrap()
}

fn report(events: Vec<Event>) -> TransactionReport {
    events
        .into_iter()
        .find_map(|event| match event {
            Event::TransactionComplete(report) => Some(report),
            _ => None,
        })
        .expect("a transaction report")
}

/// Runs one non-pipelined transaction to a server that accepts everything
/// and returns the commands sent, one per line.
fn accepted_commands(keywords: &[&str], envelope: Envelope) -> Vec<String> {
    let mut session = ready(keywords);
    let recipients = envelope.recipients.len();
    session.start_transaction(envelope).unwrap();
    let mut commands = vec![sent(&mut session)];
    session.handle_input(b"250 2.1.0 Ok\r\n");
    for _ in 0..recipients {
        commands.push(sent(&mut session));
        session.handle_input(b"250 2.1.5 Ok\r\n");
    }
    commands.push(sent(&mut session));
    commands.retain(|command| !command.is_empty());
    commands.iter().map(|c| c.trim_end().to_owned()).collect()
}

/// C-8B-05, RFC 1870 section 6: SIZE= only when advertised.
#[test]
fn size_parameter_only_when_advertised() {
    let with = accepted_commands(
        &["SIZE 10000"],
        envelope("a@client.test", &["b@mx.test"], 500, false),
    );
    assert_eq!(with[0], "MAIL FROM:<a@client.test> SIZE=500");

    let without = accepted_commands(&[], envelope("a@client.test", &["b@mx.test"], 500, false));
    assert_eq!(without[0], "MAIL FROM:<a@client.test>");

    let unlimited = accepted_commands(
        &["SIZE"],
        envelope("a@client.test", &["b@mx.test"], 500, false),
    );
    assert_eq!(unlimited[0], "MAIL FROM:<a@client.test> SIZE=500");
}

/// C-8B-05, RFC 1870 section 6: a message over the advertised limit is not
/// uploaded and fails for good before MAIL, with a reply that gives both sizes.
#[test]
fn message_over_size_limit_not_sent() {
    let mut session = ready(&["SIZE 1000", "PIPELINING"]);
    session
        .start_transaction(envelope(
            "a@client.test",
            &["b@mx.test", "c@mx.test"],
            1001,
            false,
        ))
        .unwrap();

    assert_eq!(session.poll_transmit(), None, "nothing may be sent");
    let events = take_events(&mut session);
    assert_eq!(events.last(), Some(&Event::Ready));
    let report = report(events);
    assert_eq!(report.recipients.len(), 2);
    for recipient in &report.recipients {
        assert_eq!(recipient.outcome, Outcome::Failed);
        assert!(recipient.refused_locally);
        let reply = recipient.reply.as_ref().unwrap();
        assert_eq!(reply.code(), 552);
        assert_eq!(
            reply.enhanced().map(|code| code.to_string()).as_deref(),
            Some("5.3.4")
        );
        assert!(reply.text().contains("1001"), "{reply}");
        assert!(reply.text().contains("1000"), "{reply}");
    }
    assert!(session.is_ready(), "the connection stays usable");
}

/// A message exactly at the limit still goes.
#[test]
fn message_at_size_limit_sent() {
    let commands = accepted_commands(
        &["SIZE 1000"],
        envelope("a@client.test", &["b@mx.test"], 1000, false),
    );
    assert_eq!(commands[0], "MAIL FROM:<a@client.test> SIZE=1000");
}

/// C-8B-02, RFC 6152 section 3: BODY=8BITMIME for 8-bit content when
/// advertised, and never for 7-bit content.
#[test]
fn body_parameter_for_eight_bit_content() {
    let eight_bit = accepted_commands(
        &["8BITMIME"],
        envelope("a@client.test", &["b@mx.test"], 10, true),
    );
    assert_eq!(eight_bit[0], "MAIL FROM:<a@client.test> BODY=8BITMIME");

    let seven_bit = accepted_commands(
        &["8BITMIME"],
        envelope("a@client.test", &["b@mx.test"], 10, false),
    );
    assert_eq!(seven_bit[0], "MAIL FROM:<a@client.test>");
}

/// C-8B-03, RFC 6152 section 3: mxsend does not convert 8-bit content, so a
/// server without 8BITMIME gets nothing and the message fails with 5.6.3.
#[test]
fn eight_bit_content_refused_without_8bitmime() {
    let mut session = ready(&["PIPELINING"]);
    session
        .start_transaction(envelope("a@client.test", &["b@mx.test"], 10, true))
        .unwrap();

    assert_eq!(session.poll_transmit(), None);
    let report = report(take_events(&mut session));
    let recipient = &report.recipients[0];
    assert_eq!(recipient.outcome, Outcome::Failed);
    assert!(recipient.refused_locally);
    let reply = recipient.reply.as_ref().unwrap();
    assert_eq!(
        reply.enhanced().map(|code| code.to_string()).as_deref(),
        Some("5.6.3")
    );
    assert!(reply.text().contains("8BITMIME"), "{reply}");
}

/// RFC 6531 section 3.1: a server with SMTPUTF8 supports 8BITMIME, so 8-bit
/// content goes there even when 8BITMIME is not listed.
#[test]
fn eight_bit_content_sent_to_smtputf8_server() {
    let commands = accepted_commands(
        &["SMTPUTF8"],
        envelope("a@client.test", &["b@mx.test"], 10, true),
    );
    assert_eq!(commands[0], "MAIL FROM:<a@client.test>");
    assert_eq!(commands[1], "RCPT TO:<b@mx.test>");
}

/// RFC 6531 section 3.4: SMTPUTF8 on MAIL only when an address needs it.
#[test]
fn smtputf8_parameter_only_when_needed() {
    let ascii = accepted_commands(
        &["SMTPUTF8", "8BITMIME"],
        envelope("a@client.test", &["b@mx.test"], 10, false),
    );
    assert_eq!(ascii[0], "MAIL FROM:<a@client.test>");

    let utf8 = accepted_commands(
        &["SMTPUTF8", "8BITMIME"],
        envelope("a@client.test", &["jörg@mx.test"], 10, false),
    );
    assert_eq!(utf8[0], "MAIL FROM:<a@client.test> SMTPUTF8");
    assert_eq!(utf8[1], "RCPT TO:<jörg@mx.test>");
}

/// C-8B-04, RFC 6531 section 3.2: without SMTPUTF8 a UTF-8 domain goes out
/// in A-labels, and the local part is never converted.
#[test]
fn idn_domain_sent_as_a_labels_without_smtputf8() {
    let commands = accepted_commands(
        &[],
        envelope("sender@bücher.example", &["user@Bücher.example"], 10, false),
    );
    assert_eq!(commands[0], "MAIL FROM:<sender@xn--bcher-kva.example>");
    assert_eq!(commands[1], "RCPT TO:<user@xn--bcher-kva.example>");
}

/// C-8B-04: a UTF-8 local part cannot reach a server without SMTPUTF8. That
/// recipient fails with 5.6.7 and the others still get the message.
#[test]
fn utf8_local_part_refused_without_smtputf8() {
    let mut session = ready(&["PIPELINING"]);
    session
        .start_transaction(envelope(
            "a@client.test",
            &["jörg@mx.test", "b@mx.test"],
            10,
            false,
        ))
        .unwrap();

    assert_eq!(
        sent(&mut session),
        "MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
        "the refused recipient gets no RCPT"
    );
    session.handle_input(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n");
    assert_eq!(take_events(&mut session), [Event::SendData]);
    session.data_sent();
    session.handle_input(b"250 2.0.0 queued\r\n");
    let report = report(take_events(&mut session));

    let refused = &report.recipients[0];
    assert_eq!(refused.address.as_str(), "jörg@mx.test");
    assert_eq!(refused.outcome, Outcome::Failed);
    assert!(refused.refused_locally);
    assert!(refused.rcpt_reply.is_none());
    let reply = refused.reply.as_ref().unwrap();
    assert_eq!(
        reply.enhanced().map(|code| code.to_string()).as_deref(),
        Some("5.6.7")
    );
    assert!(reply.text().contains("SMTPUTF8"), "{reply}");

    assert_eq!(report.recipients[1].outcome, Outcome::Delivered);
    assert!(!report.recipients[1].refused_locally);
    assert_eq!(report.accepted(), 1);
}

/// A sender with a UTF-8 local part cannot be sent without SMTPUTF8 at all.
#[test]
fn utf8_sender_refused_without_smtputf8() {
    let mut session = ready(&[]);
    session
        .start_transaction(envelope("jörg@client.test", &["b@mx.test"], 10, false))
        .unwrap();

    assert_eq!(session.poll_transmit(), None);
    let report = report(take_events(&mut session));
    assert_eq!(report.recipients[0].outcome, Outcome::Failed);
    assert!(report.recipients[0].refused_locally);
}

/// Every recipient refused locally in a non-pipelined session: no MAIL.
#[test]
fn all_recipients_refused_sends_nothing() {
    let mut session = ready(&[]);
    session
        .start_transaction(envelope(
            "a@client.test",
            &["jörg@mx.test", "zoë@mx.test"],
            10,
            false,
        ))
        .unwrap();

    assert_eq!(session.poll_transmit(), None);
    let report = report(take_events(&mut session));
    assert!(report.recipients.iter().all(|r| r.refused_locally));
    assert!(session.is_ready());
}

/// Brings a session with chunking enabled to Ready.
fn ready_chunking(keywords: &[&str]) -> ClientSession {
    let mut config = SessionConfig::new("client.test").unwrap();
    config.chunking = true;
    let mut session = ClientSession::new(config);
    session.handle_input(b"220 mx.test ESMTP\r\n");
    sent(&mut session);
    let mut ehlo = String::from("250-mx.test\r\n");
    for keyword in keywords {
        ehlo.push_str(&format!("250-{keyword}\r\n"));
    }
    ehlo.push_str("250 HELP\r\n");
    session.handle_input(ehlo.as_bytes());
    assert_eq!(take_events(&mut session), [Event::Ready]);
    session
}

/// C-EXT-02, RFC 3030 section 2: with CHUNKING the content goes in BDAT
/// commands with exact sizes and LAST on the final one, and no DATA.
#[test]
fn bdat_chunks_replace_data() {
    let mut session = ready_chunking(&["PIPELINING", "CHUNKING"]);
    session
        .start_transaction(envelope("a@client.test", &["b@mx.test"], 10, false))
        .unwrap();
    assert_eq!(
        sent(&mut session),
        "MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\n",
        "no DATA with BDAT"
    );
    session.handle_input(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    assert_eq!(take_events(&mut session), [Event::SendData]);
    assert!(session.is_chunking());

    assert_eq!(session.bdat(6, false).unwrap(), b"BDAT 6\r\n");
    assert!(session.is_sending_data());
    assert_eq!(session.bdat(4, true).unwrap(), b"BDAT 4 LAST\r\n");
    assert!(!session.is_sending_data());
    session.handle_input(b"250 2.0.0 6 octets received\r\n250 2.0.0 queued\r\n");

    let events = take_events(&mut session);
    assert_eq!(events.last(), Some(&Event::Ready));
    let report = report(events);
    assert_eq!(report.recipients[0].outcome, Outcome::Delivered);
    assert_eq!(report.final_reply.as_ref().unwrap().text(), "queued");
}

/// Without CHUNKING advertised, or with chunking off, DATA is used.
#[test]
fn data_used_without_chunking() {
    let commands = accepted_commands(
        &["PIPELINING"],
        envelope("a@client.test", &["b@mx.test"], 10, false),
    );
    assert!(commands.iter().any(|c| c.ends_with("DATA")), "{commands:?}");

    let mut session = ready(&["CHUNKING"]);
    session
        .start_transaction(envelope("a@client.test", &["b@mx.test"], 10, false))
        .unwrap();
    assert!(!session.is_chunking(), "chunking is off by default");
}

/// A refused chunk ends the data phase: the driver stops, the recipients
/// get the refusal, and RSET resets the server.
#[test]
fn bdat_refused_chunk_stops_and_resets() {
    let mut session = ready_chunking(&["CHUNKING"]);
    session
        .start_transaction(envelope("a@client.test", &["b@mx.test"], 10, false))
        .unwrap();
    sent(&mut session);
    session.handle_input(b"250 2.1.0 Ok\r\n");
    sent(&mut session);
    session.handle_input(b"250 2.1.5 Ok\r\n");
    assert_eq!(take_events(&mut session), [Event::SendData]);

    session.bdat(6, false).unwrap();
    session.handle_input(b"552 5.3.4 message too big\r\n");

    assert!(!session.is_sending_data(), "the driver must stop sending");
    assert!(session.bdat(4, true).is_err());
    let report = report(take_events(&mut session));
    assert_eq!(report.recipients[0].outcome, Outcome::Failed);
    assert_eq!(report.recipients[0].reply.as_ref().unwrap().code(), 552);
    assert_eq!(sent(&mut session), "RSET\r\n");
    session.handle_input(b"250 2.0.0 Ok\r\n");
    assert_eq!(take_events(&mut session), [Event::Ready]);
}

/// Every RCPT refused: no BDAT at all, RSET instead.
#[test]
fn bdat_not_sent_when_every_rcpt_refused() {
    let mut session = ready_chunking(&["PIPELINING", "CHUNKING"]);
    session
        .start_transaction(envelope(
            "a@client.test",
            &["b@mx.test", "c@mx.test"],
            10,
            false,
        ))
        .unwrap();
    sent(&mut session);
    session.handle_input(b"250 2.1.0 Ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n");

    let report = report(take_events(&mut session));
    assert!(
        report
            .recipients
            .iter()
            .all(|r| r.outcome == Outcome::Failed)
    );
    assert_eq!(sent(&mut session), "RSET\r\n");
}

/// The connection lost after BDAT LAST and before its reply: the message
/// may have been delivered (RFC 5321 section 6.1).
#[test]
fn bdat_last_without_reply_is_uncertain() {
    let mut session = ready_chunking(&["PIPELINING", "CHUNKING"]);
    session
        .start_transaction(envelope("a@client.test", &["b@mx.test"], 10, false))
        .unwrap();
    sent(&mut session);
    session.handle_input(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    take_events(&mut session);
    session.bdat(10, true).unwrap();
    session.handle_eof();

    let report = report(take_events(&mut session));
    assert_eq!(report.recipients[0].outcome, Outcome::Uncertain);
}

fn dsn_envelope() -> Envelope {
    Envelope {
        dsn: DsnRequest {
            ret: Some(DsnReturn::Headers),
            envid: Some("QQ 314+1=e".to_owned()),
            notify: Some(DsnNotify {
                success: false,
                failure: true,
                delay: true,
            }),
            orcpt: true,
        },
        ..envelope("a@client.test", &["a+b=c@mx.test"], 10, false)
    }
}

/// C-EXT-03, RFC 3461 section 4: RET and ENVID on MAIL, NOTIFY and ORCPT on
/// RCPT, with ENVID and ORCPT in xtext, so `+` and `=` are escaped.
#[test]
fn dsn_parameters_when_advertised() {
    let commands = accepted_commands(&["DSN"], dsn_envelope());
    assert_eq!(
        commands[0],
        "MAIL FROM:<a@client.test> RET=HDRS ENVID=QQ+20314+2B1+3De"
    );
    assert_eq!(
        commands[1],
        "RCPT TO:<a+b=c@mx.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a+2Bb+3Dc@mx.test"
    );
}

/// C-EXT-03: no DSN parameter reaches a server that did not advertise DSN.
#[test]
fn dsn_parameters_omitted_without_dsn() {
    let commands = accepted_commands(&["PIPELINING"], dsn_envelope());
    assert!(
        commands
            .iter()
            .all(|c| !c.contains("RET=") && !c.contains("NOTIFY=") && !c.contains("ORCPT=")),
        "{commands:?}"
    );
}

/// RFC 6531 section 3.4: UTF-8 in the header section asks for SMTPUTF8 when
/// the server offers it, even with ASCII addresses.
#[test]
fn utf8_headers_ask_for_smtputf8() {
    let utf8 = Envelope {
        utf8_headers: true,
        ..envelope("a@client.test", &["b@mx.test"], 10, true)
    };
    let with = accepted_commands(&["SMTPUTF8", "8BITMIME"], utf8.clone());
    assert_eq!(with[0], "MAIL FROM:<a@client.test> BODY=8BITMIME SMTPUTF8");

    let without = accepted_commands(&["8BITMIME"], utf8);
    assert_eq!(without[0], "MAIL FROM:<a@client.test> BODY=8BITMIME");
}

fn binary_envelope() -> Envelope {
    Envelope {
        binary: true,
        ..envelope("a@client.test", &["b@mx.test"], 10, true)
    }
}

/// C-EXT-02, RFC 3030 section 3: binary content goes with BODY=BINARYMIME,
/// in BDAT chunks, never with DATA.
#[test]
fn binary_content_sent_with_binarymime_and_bdat() {
    let mut session = ready_chunking(&["PIPELINING", "CHUNKING", "BINARYMIME", "8BITMIME"]);
    session.start_transaction(binary_envelope()).unwrap();
    assert_eq!(
        sent(&mut session),
        "MAIL FROM:<a@client.test> BODY=BINARYMIME\r\nRCPT TO:<b@mx.test>\r\n"
    );
    session.handle_input(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    assert_eq!(take_events(&mut session), [Event::SendData]);
    assert!(session.is_chunking());
}

/// Binary content is refused with 5.6.3 before anything is sent when the
/// session cannot use BINARYMIME with BDAT, whichever part is missing.
#[test]
fn binary_content_refused_without_binarymime_and_bdat() {
    let cases: [(&[&str], bool, &str); 4] = [
        (&["CHUNKING", "8BITMIME"], true, "does not offer BINARYMIME"),
        (&["BINARYMIME", "8BITMIME"], true, "without CHUNKING"),
        (&["CHUNKING", "BINARYMIME"], false, "BDAT is turned off"),
        (&["PIPELINING"], false, "does not offer BINARYMIME"),
    ];
    for (keywords, chunking, why) in cases {
        let mut session = if chunking {
            ready_chunking(keywords)
        } else {
            ready(keywords)
        };
        session.start_transaction(binary_envelope()).unwrap();
        assert_eq!(session.poll_transmit(), None, "{keywords:?}");
        let report = report(take_events(&mut session));
        let recipient = &report.recipients[0];
        assert!(recipient.refused_locally, "{keywords:?}");
        let reply = recipient.reply.as_ref().unwrap();
        assert_eq!(reply.code(), 554);
        assert!(reply.to_string().contains("5.6.3 not sent"), "{reply}");
        assert!(reply.text().contains(why), "{keywords:?}: {reply}");
    }
}

/// BINARYMIME covers 8-bit octets: a server with BINARYMIME and CHUNKING
/// but without 8BITMIME still takes binary content with 8-bit octets.
#[test]
fn binary_content_needs_no_8bitmime() {
    let mut session = ready_chunking(&["CHUNKING", "BINARYMIME"]);
    session.start_transaction(binary_envelope()).unwrap();
    assert_eq!(
        sent(&mut session),
        "MAIL FROM:<a@client.test> BODY=BINARYMIME\r\n"
    );
}
