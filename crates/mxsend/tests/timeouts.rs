//! Timeouts per phase with the default RFC 5321 section 4.5.3.2 values, on
//! a paused tokio clock: the runtime jumps to the next timer whenever every
//! task waits, so minutes of server silence take no real time.
//!
//! These tests connect straight to the testkit server (no DNS), because a
//! DNS query on a real socket would time out at once on a paused clock.

use std::time::Duration;

use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, Outcome, Phase, SessionError};
use mxsend::{Connection, ConnectionConfig, ConnectionError, Message};
use mxsend_testkit::{Action, Point, Script, SmtpServer};
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

async fn message() -> Message {
    Message::from_bytes(
        Some(Address::parse("sender@client.test").unwrap()),
        vec![Address::parse("rcpt@example.net").unwrap()],
        b"Subject: slow\r\n\r\nbody\r\n".to_vec(),
        DataPolicy::default(),
    )
    .await
    .unwrap()
}

fn config() -> ConnectionConfig {
    ConnectionConfig {
        helo_name: Some("client.test".to_owned()),
        ..ConnectionConfig::default()
    }
}

/// Connects to `smtp` and returns the error that ended the attempt.
async fn connect_error(smtp: &SmtpServer) -> ConnectionError {
    match Connection::connect(smtp.addr(), &config()).await {
        Ok(_) => panic!("the connection to {} succeeded", smtp.addr()),
        Err(error) => error,
    }
}

fn timed_out_phase(error: &ConnectionError) -> Option<(Phase, Duration)> {
    match error {
        ConnectionError::Session {
            error: SessionError::TimedOut { phase, timeout },
            ..
        } => Some((*phase, *timeout)),
        _ => None,
    }
}

/// A server that accepts the connection and never greets: the greeting
/// timeout of 5 minutes ends the attempt.
#[tokio::test(start_paused = true)]
async fn silent_greeting_times_out_after_5_minutes() {
    let smtp = SmtpServer::start(Script::new().on(Point::Connect, Action::Hang))
        .await
        .unwrap();
    let start = Instant::now();

    let error = connect_error(&smtp).await;

    assert_eq!(
        timed_out_phase(&error),
        Some((Phase::Greeting, 5 * MINUTE)),
        "{error:?}"
    );
    assert!(start.elapsed() >= 5 * MINUTE);
    assert!(start.elapsed() < 6 * MINUTE);
}

/// A greeting that trickles one byte every 10 seconds never ends a line
/// fast enough: the deadline bounds the whole reply, not each read, so the
/// attempt still ends after 5 minutes.
#[tokio::test(start_paused = true)]
async fn trickled_greeting_times_out() {
    let segments: Vec<Vec<u8>> = std::iter::repeat_n(b"2".to_vec(), 1_000).collect();
    let script = Script::new().on(
        Point::Connect,
        Action::ReplyInSegments(segments, Duration::from_secs(10)),
    );
    let smtp = SmtpServer::start(script).await.unwrap();
    let start = Instant::now();

    let error = connect_error(&smtp).await;

    assert_eq!(
        timed_out_phase(&error),
        Some((Phase::Greeting, 5 * MINUTE)),
        "{error:?}"
    );
    assert!(start.elapsed() < 6 * MINUTE, "took {:?}", start.elapsed());
}

/// A server that goes silent after 354 and never answers the final dot:
/// after the 10-minute end-of-data timeout the message may have been
/// delivered, so the recipient is uncertain.
#[tokio::test(start_paused = true)]
async fn silence_after_final_dot_is_uncertain() {
    let smtp = SmtpServer::start(Script::new().on(Point::DataEnd, Action::Hang))
        .await
        .unwrap();
    let message = message().await;
    let mut connection = Connection::connect(smtp.addr(), &config()).await.unwrap();
    let start = Instant::now();

    let report = connection
        .send(&message, message.recipients())
        .await
        .unwrap();

    assert_eq!(report.recipients[0].outcome, Outcome::Uncertain);
    assert!(start.elapsed() >= 10 * MINUTE, "{:?}", start.elapsed());
    assert!(start.elapsed() < 11 * MINUTE, "{:?}", start.elapsed());
}

/// The final dot answered only after 11 minutes: too late, so uncertain,
/// and the late reply does not change the report.
#[tokio::test(start_paused = true)]
async fn final_reply_after_11_minutes_is_uncertain() {
    let late = Action::delay(11 * MINUTE, Action::reply("250 2.0.0 queued at last"));
    let smtp = SmtpServer::start(Script::new().on(Point::DataEnd, late))
        .await
        .unwrap();
    let message = message().await;
    let mut connection = Connection::connect(smtp.addr(), &config()).await.unwrap();

    let report = connection
        .send(&message, message.recipients())
        .await
        .unwrap();

    assert_eq!(report.recipients[0].outcome, Outcome::Uncertain);
    assert!(
        !connection.is_usable(),
        "a timed-out connection is not reused"
    );
}

/// A slow but steady final reply within the limit still counts.
#[tokio::test(start_paused = true)]
async fn final_reply_after_9_minutes_is_delivered() {
    let slow = Action::delay(9 * MINUTE, Action::reply("250 2.0.0 queued"));
    let smtp = SmtpServer::start(Script::new().on(Point::DataEnd, slow))
        .await
        .unwrap();
    let message = message().await;
    let mut connection = Connection::connect(smtp.addr(), &config()).await.unwrap();

    let report = connection
        .send(&message, message.recipients())
        .await
        .unwrap();

    assert_eq!(report.recipients[0].outcome, Outcome::Delivered);
}

/// A silent server after MAIL: the 5-minute MAIL timeout ends it, and the
/// recipient is deferred, never uncertain, since no content was sent.
#[tokio::test(start_paused = true)]
async fn silence_after_mail_defers() {
    let smtp = SmtpServer::start(
        Script::new()
            .extensions(&["SIZE 1000000"])
            .on(Point::Mail, Action::Hang),
    )
    .await
    .unwrap();
    let message = message().await;
    let mut connection = Connection::connect(smtp.addr(), &config()).await.unwrap();
    let start = Instant::now();

    let report = connection
        .send(&message, message.recipients())
        .await
        .unwrap();

    assert_eq!(report.recipients[0].outcome, Outcome::Deferred);
    assert!(start.elapsed() >= 5 * MINUTE);
    assert!(start.elapsed() < 6 * MINUTE);
}
