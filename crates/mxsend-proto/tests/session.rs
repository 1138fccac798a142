//! The client state machine driven by scripted server bytes.

use mxsend_proto::session::Direction;
use mxsend_proto::{
    Address, ClientSession, Envelope, Event, Outcome, Phase, SessionConfig, SessionError,
};

fn session() -> ClientSession {
    ClientSession::new(SessionConfig::new("client.test").unwrap())
}

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope {
        sender: Some(Address::parse("from@client.test").unwrap()),
        recipients: recipients
            .iter()
            .map(|r| Address::parse(r).unwrap())
            .collect(),
        size: Some(100),
        eight_bit: false,
        ..Envelope::default()
    }
}

/// Takes every pending event.
fn take_events(session: &mut ClientSession) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

/// Takes the bytes to send as text.
fn sent(session: &mut ClientSession) -> String {
    String::from_utf8(session.poll_transmit().unwrap_or_default()).unwrap()
}

/// Brings a session to Ready with the given EHLO keywords.
fn ready(keywords: &[&str]) -> ClientSession {
    let mut session = session();
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

fn report(events: &[Event]) -> &mxsend_proto::TransactionReport {
    events
        .iter()
        .find_map(|e| match e {
            Event::TransactionComplete(report) => Some(report),
            _ => None,
        })
        .expect("a transaction report")
}

#[test]
fn greeting_in_three_segments() {
    let mut session = session();
    session.handle_input(b"220-mx.test first\r\n");
    assert_eq!(session.poll_transmit(), None);
    session.handle_input(b"220-second\r\n");
    assert_eq!(session.poll_transmit(), None);
    session.handle_input(b"220 third\r\n");
    assert_eq!(sent(&mut session), "EHLO client.test\r\n");
}

#[test]
fn full_transaction_without_pipelining() {
    let mut session = ready(&["SIZE 1000"]);
    session
        .start_transaction(envelope(&["to@mx.test"]))
        .unwrap();
    assert_eq!(
        sent(&mut session),
        "MAIL FROM:<from@client.test> SIZE=100\r\n"
    );
    session.handle_input(b"250 2.1.0 Ok\r\n");
    assert_eq!(sent(&mut session), "RCPT TO:<to@mx.test>\r\n");
    session.handle_input(b"250 2.1.5 Ok\r\n");
    assert_eq!(sent(&mut session), "DATA\r\n");
    session.handle_input(b"354 go\r\n");
    assert_eq!(take_events(&mut session), [Event::SendData]);
    assert_eq!(session.timeout().unwrap().0, Phase::DataBlock);
    session.data_sent();
    assert_eq!(session.timeout().unwrap().0, Phase::DataEnd);
    session.handle_input(b"250 2.0.0 queued\r\n");
    let events = take_events(&mut session);
    let report = report(&events);
    assert_eq!(report.accepted(), 1);
    assert_eq!(report.recipients[0].outcome, Outcome::Delivered);
    assert_eq!(events.last(), Some(&Event::Ready));
    session.quit();
    assert_eq!(sent(&mut session), "QUIT\r\n");
    session.handle_input(b"221 bye\r\n");
    assert_eq!(take_events(&mut session), [Event::Closed(Ok(()))]);
}

#[test]
fn pipelined_group_in_one_write() {
    let mut session = ready(&["PIPELINING"]);
    session
        .start_transaction(envelope(&["a@mx.test", "b@mx.test", "c@mx.test"]))
        .unwrap();
    assert_eq!(
        sent(&mut session),
        "MAIL FROM:<from@client.test>\r\nRCPT TO:<a@mx.test>\r\nRCPT TO:<b@mx.test>\r\n\
         RCPT TO:<c@mx.test>\r\nDATA\r\n"
    );
    session.handle_input(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n");
    assert_eq!(take_events(&mut session), [Event::SendData]);
    session.data_sent();
    session.handle_input(b"250 queued\r\n");
    let events = take_events(&mut session);
    let report = report(&events);
    let outcomes: Vec<_> = report.recipients.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Delivered, Outcome::Failed, Outcome::Delivered]
    );
    assert_eq!(report.accepted(), 2);
}

#[test]
fn pipelined_go_ahead_after_all_rcpt_failed_sends_lone_dot() {
    let mut session = ready(&["PIPELINING"]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    sent(&mut session);
    session.handle_input(b"250 ok\r\n550 no\r\n354 go anyway\r\n");
    assert_eq!(sent(&mut session), ".\r\n");
    assert!(take_events(&mut session).is_empty());
    session.handle_input(b"554 no valid recipients\r\n");
    let events = take_events(&mut session);
    assert_eq!(report(&events).recipients[0].outcome, Outcome::Failed);
    assert_eq!(events.last(), Some(&Event::Ready));
}

#[test]
fn no_recipient_accepted_sends_rset_not_data() {
    let mut session = ready(&[]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    sent(&mut session);
    session.handle_input(b"250 ok\r\n");
    sent(&mut session);
    session.handle_input(b"450 4.2.0 try later\r\n");
    assert_eq!(sent(&mut session), "RSET\r\n");
    let first = take_events(&mut session);
    assert_eq!(report(&first).recipients[0].outcome, Outcome::Deferred);
    session.handle_input(b"250 ok\r\n");
    assert_eq!(take_events(&mut session), [Event::Ready]);
}

#[test]
fn unknown_2yz_to_rcpt_is_accepted() {
    let mut session = ready(&[]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    sent(&mut session);
    session.handle_input(b"250 ok\r\n");
    sent(&mut session);
    session.handle_input(b"254 2.1.5 Recipient ok\r\n");
    assert_eq!(sent(&mut session), "DATA\r\n");
}

#[test]
fn multi_line_rejection_after_data_kept_once() {
    let mut session = ready(&[]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    sent(&mut session);
    session.handle_input(b"250 ok\r\n");
    session.handle_input(b"250 ok\r\n");
    session.handle_input(b"354 go\r\n");
    take_events(&mut session);
    session.data_sent();
    session.handle_input(
        b"550-5.7.1 line one\r\n550-5.7.1 line two\r\n550-5.7.1 line three\r\n\
          550-5.7.1 line four\r\n550 5.7.1 line five\r\n",
    );
    let events = take_events(&mut session);
    let status = &report(&events).recipients[0];
    assert_eq!(status.outcome, Outcome::Failed);
    assert_eq!(
        status.reply.as_ref().unwrap().to_string(),
        "550 5.7.1 line one line two line three line four line five"
    );
}

#[test]
fn rejected_greeting_sends_quit() {
    let mut session = session();
    session.handle_input(b"554 5.7.1 no service\r\n");
    assert_eq!(sent(&mut session), "QUIT\r\n");
    session.handle_input(b"221 bye\r\n");
    let events = take_events(&mut session);
    assert!(matches!(
        &events[..],
        [Event::Closed(Err(SessionError::GreetingRejected(reply)))] if reply.code() == 554
    ));
}

#[test]
fn ehlo_not_recognised_falls_back_to_helo_once() {
    let mut session = session();
    session.handle_input(b"220 mx.test\r\n");
    sent(&mut session);
    session.handle_input(b"502 5.5.2 command not recognized\r\n");
    assert_eq!(sent(&mut session), "HELO client.test\r\n");
    session.handle_input(b"250 mx.test\r\n");
    assert_eq!(take_events(&mut session), [Event::Ready]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    assert_eq!(sent(&mut session), "MAIL FROM:<from@client.test>\r\n");
}

#[test]
fn helo_refused_too_ends_without_loop() {
    let mut session = session();
    session.handle_input(b"220 mx.test\r\n");
    sent(&mut session);
    session.handle_input(b"500 no\r\n");
    assert_eq!(sent(&mut session), "HELO client.test\r\n");
    session.handle_input(b"500 no\r\n");
    assert_eq!(sent(&mut session), "QUIT\r\n");
    session.handle_eof();
    assert!(matches!(
        &take_events(&mut session)[..],
        [Event::Closed(Err(SessionError::HeloRejected(_)))]
    ));
}

#[test]
fn ehlo_421_ends_session_without_helo() {
    let mut session = session();
    session.handle_input(b"220 mx.test\r\n");
    sent(&mut session);
    session.handle_input(b"421 4.3.2 shutting down\r\n");
    assert_eq!(session.poll_transmit(), None);
    assert!(matches!(
        &take_events(&mut session)[..],
        [Event::Closed(Err(SessionError::ServiceClosing {
            phase: Phase::Ehlo,
            ..
        }))]
    ));
}

#[test]
fn mail_421_defers_and_interrupts() {
    let mut session = ready(&[]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    sent(&mut session);
    session.handle_input(b"421 4.3.2 bye\r\n");
    let events = take_events(&mut session);
    let report = report(&events);
    assert!(report.interrupted);
    assert_eq!(report.recipients[0].outcome, Outcome::Deferred);
    assert!(matches!(
        events.last(),
        Some(Event::Closed(Err(SessionError::ServiceClosing { .. })))
    ));
}

#[test]
fn connection_lost_after_final_dot_is_uncertain() {
    let mut session = ready(&[]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    session.handle_input(b"250 ok\r\n250 ok\r\n354 go\r\n");
    take_events(&mut session);
    session.data_sent();
    session.handle_eof();
    let events = take_events(&mut session);
    assert_eq!(report(&events).recipients[0].outcome, Outcome::Uncertain);
}

/// C-REP-06: nothing is due from the server while the content goes out,
/// so a reply then, or even part of one, ends the session before the
/// final dot, and the recipient is deferred, never delivered or uncertain.
#[test]
fn input_during_content_ends_session_before_final_dot() {
    for early in [&b"250 2.0.0 ok\r\n"[..], b"451 4.3.0 later\r\n", b"25"] {
        let mut session = ready(&[]);
        session.start_transaction(envelope(&["a@mx.test"])).unwrap();
        session.handle_input(b"250 ok\r\n250 ok\r\n354 go\r\n");
        assert!(sent(&mut session).ends_with("DATA\r\n"));
        assert!(take_events(&mut session).contains(&Event::SendData));
        session.handle_input(early);
        assert!(!session.is_sending_data(), "{early:?}");
        session.data_sent();
        assert_eq!(session.poll_transmit(), None, "{early:?}");
        let events = take_events(&mut session);
        assert_eq!(
            report(&events).recipients[0].outcome,
            Outcome::Deferred,
            "{early:?}"
        );
        let ended = match events.last() {
            Some(Event::Closed(Err(error))) => error,
            other => panic!("{early:?}: session still open: {other:?}"),
        };
        let expected = match early.len() {
            2 => matches!(ended, SessionError::InputDuringContent { octets: 2 }),
            _ => matches!(ended, SessionError::UnexpectedReply { .. }),
        };
        assert!(expected, "{early:?}: {ended}");
    }
}

#[test]
fn timeout_before_final_dot_defers() {
    let mut session = ready(&[]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    assert_eq!(session.timeout().unwrap().0, Phase::Mail);
    session.handle_timeout();
    let events = take_events(&mut session);
    assert_eq!(report(&events).recipients[0].outcome, Outcome::Deferred);
    assert!(matches!(
        events.last(),
        Some(Event::Closed(Err(SessionError::TimedOut {
            phase: Phase::Mail,
            ..
        })))
    ));
}

#[test]
fn reply_nobody_asked_for_is_an_error() {
    let mut session = ready(&[]);
    session.handle_input(b"250 surprise\r\n");
    assert!(matches!(
        &take_events(&mut session)[..],
        [Event::Closed(Err(SessionError::UnexpectedReply { .. }))]
    ));
}

#[test]
fn ehlo_followed_by_codeless_lines_is_protocol_error() {
    let mut session = session();
    session.handle_input(b"220 mx.test\r\n");
    sent(&mut session);
    session.handle_input(b"250 ok\r\nSIZE\r\n8BITMIME\r\n");
    let events = take_events(&mut session);
    assert_eq!(events[0], Event::Ready);
    assert!(matches!(
        &events[1],
        Event::Closed(Err(SessionError::Protocol { .. }))
    ));
}

#[test]
fn second_message_on_same_connection() {
    let mut session = ready(&["PIPELINING"]);
    for _ in 0..2 {
        session.start_transaction(envelope(&["a@mx.test"])).unwrap();
        sent(&mut session);
        session.handle_input(b"250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(take_events(&mut session), [Event::SendData]);
        session.data_sent();
        session.handle_input(b"250 ok\r\n");
        assert_eq!(take_events(&mut session).last(), Some(&Event::Ready));
    }
}

#[test]
fn transcript_records_both_directions() {
    let mut session = ready(&[]);
    let transcript = session.take_transcript();
    assert_eq!(transcript[0].direction, Direction::Server);
    assert_eq!(transcript[0].text, "220 mx.test ESMTP");
    assert_eq!(transcript[1].to_string(), "-> EHLO client.test");
}

#[test]
fn helo_name_with_space_rejected() {
    assert!(matches!(
        SessionConfig::new("a b"),
        Err(SessionError::InvalidHeloName { .. })
    ));
    assert!(SessionConfig::new("x\r\nMAIL").is_err());
}

/// A reply line of 100,000 octets ends the session with a protocol error
/// that names the problem, and the parser never holds the whole line
/// (C-REP-05).
#[test]
fn reply_line_of_100000_octets_is_protocol_error() {
    let mut session = ready(&[]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    sent(&mut session);
    let mut line = b"250 ".to_vec();
    line.extend(std::iter::repeat_n(b'x', 100_000));
    for piece in line.chunks(4096) {
        session.handle_input(piece);
        assert!(session.buffered_len() <= 8192, "{}", session.buffered_len());
    }
    let events = take_events(&mut session);
    assert!(
        matches!(
            events.last(),
            Some(Event::Closed(Err(SessionError::Protocol { .. })))
        ),
        "{events:?}"
    );
}

/// A multi-line reply of 100,000 lines ends the session once the line limit
/// is reached, long before the last line.
#[test]
fn reply_of_100000_lines_is_protocol_error() {
    let mut session = ready(&[]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    sent(&mut session);
    let mut fed = 0;
    for _ in 0..100_000 {
        session.handle_input(b"250-more\r\n");
        fed += 1;
        if session.is_closed() {
            break;
        }
    }
    assert!(session.is_closed(), "the session must end");
    assert!(fed <= 1_001, "ended after {fed} lines");
    let events = take_events(&mut session);
    assert!(
        matches!(
            events.last(),
            Some(Event::Closed(Err(SessionError::Protocol { .. })))
        ),
        "{events:?}"
    );
}

/// Brings a pipelining session through one transaction up to the final
/// dot, so that only the dot's reply is outstanding.
fn waiting_for_dot() -> ClientSession {
    let mut session = ready(&["PIPELINING"]);
    session.start_transaction(envelope(&["a@mx.test"])).unwrap();
    sent(&mut session);
    session.handle_input(b"250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(take_events(&mut session), [Event::SendData]);
    session.data_sent();
    session
}

/// RFC 2920 section 3.1: the next MAIL group may follow the final dot in
/// the same write, and the reports still come in order.
#[test]
fn next_transaction_queued_behind_final_dot() {
    let mut session = waiting_for_dot();

    session.queue_transaction(envelope(&["b@mx.test"])).unwrap();
    assert_eq!(
        sent(&mut session),
        "MAIL FROM:<from@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n"
    );
    session.handle_input(b"250 2.0.0 first queued\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    let events = take_events(&mut session);
    assert_eq!(events.len(), 2, "{events:?}");
    let Event::TransactionComplete(first) = &events[0] else {
        panic!("the first report comes first: {events:?}");
    };
    assert_eq!(first.recipients[0].address.as_str(), "a@mx.test");
    assert_eq!(first.recipients[0].outcome, Outcome::Delivered);
    assert_eq!(events[1], Event::SendData);

    session.data_sent();
    session.handle_input(b"250 2.0.0 second queued\r\n");
    let events = take_events(&mut session);
    assert_eq!(events.last(), Some(&Event::Ready));
    assert_eq!(report(&events).recipients[0].address.as_str(), "b@mx.test");
    assert_eq!(report(&events).recipients[0].outcome, Outcome::Delivered);
}

/// Without PIPELINING, or before the dot, nothing can be queued.
#[test]
fn queue_transaction_needs_pipelining_and_dot() {
    let mut plain = ready(&[]);
    plain.start_transaction(envelope(&["a@mx.test"])).unwrap();
    sent(&mut plain);
    plain.handle_input(b"250 ok\r\n");
    sent(&mut plain);
    plain.handle_input(b"250 ok\r\n");
    sent(&mut plain);
    plain.handle_input(b"354 go\r\n");
    take_events(&mut plain);
    plain.data_sent();
    assert!(plain.queue_transaction(envelope(&["b@mx.test"])).is_err());

    let mut early = ready(&["PIPELINING"]);
    early.start_transaction(envelope(&["a@mx.test"])).unwrap();
    assert!(early.queue_transaction(envelope(&["b@mx.test"])).is_err());
}

/// A 421 to the first dot ends the session: the first recipient is
/// deferred by the 421, and the queued one is reported as interrupted.
#[test]
fn queued_transaction_reported_when_session_ends() {
    let mut session = waiting_for_dot();
    session.queue_transaction(envelope(&["b@mx.test"])).unwrap();
    sent(&mut session);

    session.handle_input(b"421 4.3.2 shutting down\r\n");

    let events = take_events(&mut session);
    let reports: Vec<&mxsend_proto::TransactionReport> = events
        .iter()
        .filter_map(|event| match event {
            Event::TransactionComplete(report) => Some(report),
            _ => None,
        })
        .collect();
    assert_eq!(reports.len(), 2, "{events:?}");
    assert_eq!(reports[0].recipients[0].outcome, Outcome::Deferred);
    assert_eq!(reports[1].recipients[0].address.as_str(), "b@mx.test");
    assert_eq!(reports[1].recipients[0].outcome, Outcome::Deferred);
    assert!(reports[1].interrupted);
}
