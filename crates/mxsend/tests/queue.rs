//! The durable queue against the testkit SMTP server on 127.0.0.1: storage,
//! retries (C-Q-01, C-Q-02), bounces (RFC 3464), leases of dead deliverers
//! and a full spool.

use std::sync::Arc;
use std::time::Duration;

use mxsend::queue::{
    ClaimOwner, NewMessage, QueueRunner, QueueSettings, RecipientState, RecipientUpdate,
    RetrySchedule, RunMode, SqliteStore, Store, StoreError, now_millis,
};
use mxsend::{ConnectionConfig, Delivery, DeliveryConfig, MxResolver, ResolverSettings, Route};
use mxsend_testkit::{Action, Point, Script, SmtpServer};

const CONTENT: &[u8] =
    b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: queued\r\n\r\nHello.\r\n";

fn message(recipients: &[&str]) -> NewMessage {
    NewMessage {
        sender: Some("alice@example.com".to_owned()),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        content: CONTENT.to_vec(),
    }
}

fn delivery_to(server: &SmtpServer) -> Delivery {
    let resolver = MxResolver::new(&ResolverSettings::default()).expect("resolver");
    Delivery::new(
        resolver,
        DeliveryConfig {
            connection: ConnectionConfig {
                helo_name: Some("client.test".to_owned()),
                connect_timeout: Duration::from_secs(5),
                // A relay defaults to TLS verify; the test server has no TLS.
                tls: mxsend::TlsConfig {
                    policy: Some(mxsend::TlsPolicy::None),
                    ..mxsend::TlsConfig::default()
                },
                ..ConnectionConfig::default()
            },
            port: server.addr().port(),
            route: Route::Relay {
                host: "127.0.0.1".to_owned(),
                port: server.addr().port(),
            },
        },
    )
}

fn settings(retry: RetrySchedule) -> QueueSettings {
    QueueSettings {
        retry,
        reporting_mta: "client.test".to_owned(),
        poll_interval: Duration::from_millis(50),
        ..QueueSettings::default()
    }
}

fn open(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(dir.path(), None).expect("open spool"))
}

async fn drain(runner: &QueueRunner) -> mxsend::queue::RunSummary {
    tokio::time::timeout(
        Duration::from_secs(30),
        runner.run(RunMode::Drain(None), std::future::pending()),
    )
    .await
    .expect("drain finished in time")
    .expect("drain succeeded")
}

fn state_of(store: &Arc<dyn Store>, address: &str) -> RecipientState {
    store
        .list(true)
        .unwrap()
        .into_iter()
        .flat_map(|m| m.recipients)
        .find(|r| r.address == address)
        .unwrap_or_else(|| panic!("{address} not in the queue"))
        .state
}

#[test]
fn store_keeps_one_body_for_many_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), None).unwrap();
    let id = store
        .enqueue(&message(&["a@x.test", "b@x.test", "c@y.test"]), 1000)
        .unwrap();
    let listed = store.list(false).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].recipients.len(), 3);
    assert!(
        listed[0]
            .recipients
            .iter()
            .all(|r| r.state == RecipientState::Queued)
    );
    assert_eq!(store.content(&id).unwrap(), CONTENT);

    let connection = rusqlite::Connection::open(store.path()).unwrap();
    let bodies: i64 = connection
        .query_row("SELECT COUNT(*) FROM messages", [], |row| row.get(0))
        .unwrap();
    assert_eq!(bodies, 1, "the body is stored once");
    let journal: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

#[test]
fn enqueue_without_recipients_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), None).unwrap();
    let error = store.enqueue(&message(&[]), 0).unwrap_err();
    assert!(matches!(error, StoreError::NoRecipients), "{error}");
}

#[test]
fn full_spool_fails_and_keeps_stored_messages() {
    let dir = tempfile::tempdir().unwrap();
    // The size limit makes SQLite report SQLITE_FULL, the error of a full
    // disk, without filling a real disk.
    let store = SqliteStore::open(dir.path(), Some(256 * 1024)).unwrap();
    let first = store.enqueue(&message(&["a@x.test"]), 0).unwrap();
    let big = NewMessage {
        content: vec![b'x'; 1024 * 1024],
        ..message(&["b@x.test"])
    };
    let error = store.enqueue(&big, 0).unwrap_err();
    assert!(matches!(error, StoreError::Full { .. }), "{error}");
    assert!(error.is_temporary());
    assert!(error.to_string().contains("queue.sqlite"), "{error}");

    drop(store);
    let reopened = SqliteStore::open(dir.path(), None).unwrap();
    let listed = reopened.list(false).unwrap();
    assert_eq!(listed.len(), 1, "only the first message is stored");
    assert_eq!(listed[0].id, first);
    assert_eq!(reopened.content(&first).unwrap(), CONTENT);
}

#[test]
fn garbage_file_is_reported_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("queue.sqlite"), vec![0x55; 8192]).unwrap();
    let error = SqliteStore::open(dir.path(), None).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("queue.sqlite"), "{text}");
    assert!(text.contains(".recover"), "{text}");
}

#[test]
fn bad_state_is_reported_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), None).unwrap();
    let id = store.enqueue(&message(&["a@x.test"]), 0).unwrap();
    rusqlite::Connection::open(store.path())
        .unwrap()
        .execute("UPDATE recipients SET state = 'lost'", [])
        .unwrap();
    let error = store.list(false).unwrap_err();
    assert!(matches!(error, StoreError::CorruptRecord { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains(id.as_str()), "{text}");
    assert!(text.contains("mxsend queue delete"), "{text}");
}

#[tokio::test]
async fn runner_delivers_defers_and_bounces() {
    let server = SmtpServer::start(
        Script::new()
            .on(
                Point::Rcpt.containing("<bad@"),
                Action::reply("550 5.1.1 No such user"),
            )
            .on(
                Point::Rcpt.containing("<later@"),
                Action::reply("451 4.7.1 Greylisted"),
            ),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .enqueue(
            &message(&["good@example.net", "bad@example.net", "later@example.net"]),
            now_millis(),
        )
        .unwrap();
    let runner = QueueRunner::new(
        Arc::clone(&store),
        delivery_to(&server),
        settings(RetrySchedule::default()),
    );

    let summary = drain(&runner).await;
    // Delivered: good@ and then the bounce to alice@.
    assert_eq!(summary.delivered, 2, "{summary:?}");
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert_eq!(summary.deferred, 1, "{summary:?}");
    assert_eq!(summary.notifications, 1, "{summary:?}");
    assert_eq!(
        state_of(&store, "good@example.net"),
        RecipientState::Delivered
    );
    assert_eq!(state_of(&store, "bad@example.net"), RecipientState::Failed);
    assert_eq!(
        state_of(&store, "later@example.net"),
        RecipientState::Deferred
    );

    let messages = server.messages();
    assert_eq!(messages.len(), 2, "the message and one bounce");
    assert_eq!(messages[0].rcpt_to, ["good@example.net"]);
    let bounce = &messages[1];
    assert_eq!(bounce.mail_from, "", "a bounce has the null sender");
    assert_eq!(bounce.rcpt_to, ["alice@example.com"]);
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; bad@example.net"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{text}");
    assert!(
        text.contains("Subject: queued"),
        "original headers missing: {text}"
    );
    assert!(
        !text.contains("later@example.net"),
        "a deferred recipient is not bounced"
    );

    // RFC 5321 section 4.5.4.1: a deferred recipient waits before its retry.
    let later = store
        .list(false)
        .unwrap()
        .into_iter()
        .flat_map(|m| m.recipients)
        .find(|r| r.address == "later@example.net")
        .unwrap();
    let wait = later.next_attempt - now_millis();
    assert!(
        wait > 3 * 60_000,
        "retry after {wait} ms, expected about 5 minutes"
    );
    assert_eq!(later.attempts, 1);

    // A flush retries only the deferred recipient: no second copy to good@.
    store.schedule_now(None, now_millis()).unwrap();
    let summary = drain(&runner).await;
    assert_eq!(summary.deferred, 1, "{summary:?}");
    assert_eq!(summary.delivered, 0, "{summary:?}");
    assert_eq!(server.messages().len(), 2);
    let good_copies = server
        .sessions()
        .iter()
        .flat_map(|s| s.commands.clone())
        .filter(|c| c.contains("<good@"))
        .count();
    assert_eq!(good_copies, 1, "delivered recipients are never sent again");
    server.shutdown().await;
}

#[tokio::test]
async fn bounce_for_null_sender_is_never_sent() {
    let server =
        SmtpServer::start(Script::new().on(Point::Rcpt, Action::reply("550 5.1.1 No such user")))
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bounce_like = NewMessage {
        sender: None,
        ..message(&["gone@example.net"])
    };
    store.enqueue(&bounce_like, now_millis()).unwrap();
    let runner = QueueRunner::new(
        Arc::clone(&store),
        delivery_to(&server),
        settings(RetrySchedule::default()),
    );
    let summary = drain(&runner).await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert_eq!(summary.notifications, 0, "{summary:?}");
    assert_eq!(
        store.list(false).unwrap().len(),
        0,
        "nothing left in the queue"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn expired_recipient_bounces_with_4_4_7() {
    let server = SmtpServer::start(Script::new().on(
        Point::Rcpt.containing("<slow@"),
        Action::reply("451 try later"),
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .enqueue(&message(&["slow@example.net"]), now_millis())
        .unwrap();
    let retry = RetrySchedule {
        max_age: Duration::ZERO,
        ..RetrySchedule::default()
    };
    let runner = QueueRunner::new(Arc::clone(&store), delivery_to(&server), settings(retry));
    let summary = drain(&runner).await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert_eq!(state_of(&store, "slow@example.net"), RecipientState::Failed);
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "the bounce only");
    let text = String::from_utf8_lossy(&messages[0].data);
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 4.4.7"), "{text}");
    assert!(text.contains("expired after"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn delay_warning_is_sent_once() {
    let server = SmtpServer::start(Script::new().on(
        Point::Rcpt.containing("<slow@"),
        Action::reply("451 4.2.0 try later"),
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .enqueue(&message(&["slow@example.net"]), now_millis())
        .unwrap();
    let retry = RetrySchedule {
        first: Duration::ZERO,
        jitter: 0.0,
        warn_after: Some(Duration::ZERO),
        ..RetrySchedule::default()
    };
    let runner = QueueRunner::new(Arc::clone(&store), delivery_to(&server), settings(retry));
    drain(&runner).await;
    store.schedule_now(None, now_millis()).unwrap();
    drain(&runner).await;
    let warnings: Vec<_> = server
        .messages()
        .into_iter()
        .filter(|m| m.mail_from.is_empty())
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per message");
    let text = String::from_utf8_lossy(&warnings[0].data);
    assert!(text.contains("Action: delayed"), "{text}");
    assert!(text.contains("Status: 4.2.0"), "{text}");
    assert!(text.contains("Will-Retry-Until: "), "{text}");
    assert_eq!(
        state_of(&store, "slow@example.net"),
        RecipientState::Deferred
    );
    server.shutdown().await;
}

/// A claim takes only the recipients it leases. One deliverer process
/// uses one token for all its claims, so a recipient still leased to a
/// delivery in progress must not come back with a later claim of the same
/// message, or it is sent twice.
#[test]
fn claim_skips_recipients_leased_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let now = now_millis();
    let id = store
        .enqueue(&message(&["a@example.net", "b@example.org"]), now)
        .unwrap();
    let owner = ClaimOwner {
        pid: std::process::id(),
        token: 11,
        lease_millis: 3_600_000,
    };
    let first = store.claim_due(now, 10, &owner, None).unwrap();
    assert_eq!(first[0].recipients.len(), 2);

    // b is deferred and due again at once while a's delivery still runs.
    let deferral = RecipientUpdate {
        index: 1,
        state: RecipientState::Deferred,
        reply: "451 4.3.0 try again".to_owned(),
        next_attempt: now,
    };
    store.record(&id, &[deferral], &[], now).unwrap();
    let second = store.claim_due(now, 10, &owner, None).unwrap();
    let indexes: Vec<u32> = second
        .iter()
        .flat_map(|claim| claim.recipients.iter().map(|r| r.index))
        .collect();
    assert_eq!(indexes, [1], "{second:?}");
}

#[tokio::test]
async fn lease_of_dead_process_becomes_uncertain() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let id = store
        .enqueue(&message(&["a@example.net"]), now_millis())
        .unwrap();
    // A process that has exited and been reaped: its pid is free.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let dead = ClaimOwner {
        pid: dead_pid,
        token: 7,
        lease_millis: 3_600_000,
    };
    let claims = store.claim_due(now_millis(), 10, &dead, None).unwrap();
    assert_eq!(claims.len(), 1);

    let server = SmtpServer::start(Script::new()).await.unwrap();
    let runner = QueueRunner::new(
        Arc::clone(&store),
        delivery_to(&server),
        settings(RetrySchedule::default()),
    );
    // A claimed recipient is not due for anyone else.
    assert_eq!(drain(&runner).await.delivered, 0);
    let mut summary = mxsend::queue::RunSummary::default();
    runner
        .recover_stale_leases(now_millis(), &mut summary)
        .unwrap();
    assert_eq!(summary.recovered, 1);
    assert_eq!(state_of(&store, "a@example.net"), RecipientState::Uncertain);
    let (_, history) = store.show(&id).unwrap();
    assert_eq!(history.len(), 1);
    assert!(
        history[0].reply.contains("may have been delivered"),
        "{:?}",
        history[0]
    );

    // Uncertain recipients are retried (after a flush here).
    store.schedule_now(Some(&id), now_millis()).unwrap();
    assert_eq!(drain(&runner).await.delivered, 1);
    assert_eq!(state_of(&store, "a@example.net"), RecipientState::Delivered);
    server.shutdown().await;
}

#[tokio::test]
async fn connection_lost_after_dot_is_uncertain() {
    let server = SmtpServer::start(Script::new().on(Point::DataEnd, Action::Close))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .enqueue(&message(&["a@example.net"]), now_millis())
        .unwrap();
    let runner = QueueRunner::new(
        Arc::clone(&store),
        delivery_to(&server),
        settings(RetrySchedule::default()),
    );
    let summary = drain(&runner).await;
    assert_eq!(summary.uncertain, 1, "{summary:?}");
    assert_eq!(state_of(&store, "a@example.net"), RecipientState::Uncertain);
    server.shutdown().await;
}

#[tokio::test]
async fn per_destination_limit_serializes_sessions() {
    // Each transaction takes at least 200 ms, so five messages to one
    // destination with a limit of one need at least one second.
    let server = SmtpServer::start(Script::new().on(
        Point::DataEnd,
        Action::delay(Duration::from_millis(200), Action::reply("250 2.0.0 Ok")),
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for _ in 0..5 {
        store
            .enqueue(&message(&["a@example.net"]), now_millis())
            .unwrap();
    }
    let limited = QueueSettings {
        concurrency: 10,
        per_destination: 1,
        ..settings(RetrySchedule::default())
    };
    let runner = QueueRunner::new(Arc::clone(&store), delivery_to(&server), limited);
    let started = std::time::Instant::now();
    let summary = drain(&runner).await;
    let elapsed = started.elapsed();
    assert_eq!(summary.delivered, 5, "{summary:?}");
    assert!(
        elapsed >= Duration::from_millis(1000),
        "five sessions overlapped: all done in {elapsed:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn drain_with_zero_retry_delay_ends() {
    let server = SmtpServer::start(Script::new().on(Point::Rcpt, Action::reply("451 4.3.0 later")))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .enqueue(&message(&["a@example.net"]), now_millis())
        .unwrap();
    let retry = RetrySchedule {
        first: Duration::ZERO,
        jitter: 0.0,
        ..RetrySchedule::default()
    };
    let runner = QueueRunner::new(Arc::clone(&store), delivery_to(&server), settings(retry));
    // The recipient is due again at once, but one drain tries it once.
    let summary = drain(&runner).await;
    assert_eq!(summary.deferred, 1, "{summary:?}");
    assert_eq!(server.sessions().len(), 1);
    server.shutdown().await;
}
