//! The queue and the daemon against misbehaving servers: no recipient sent
//! twice, every failure reported to the sender, and a shutdown within its
//! grace.
//! Each test runs the real binary with a spool and a configuration in a
//! temporary folder, and talks only to servers it starts on loopback.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use mxsend::queue::{RecipientState, SqliteStore, Store};
use mxsend_testkit::{Action, DnsServer, Point, Script, SmtpServer, Zone};
use tokio::process::{Child, Command};

#[path = "support/process.rs"]
mod process;

use process::{terminate, wait_until};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A temporary folder with `config.toml` and a spool.
struct Folder {
    dir: tempfile::TempDir,
}

impl Folder {
    /// Writes a configuration whose `[delivery]` section has `delivery`
    /// and which ends with the `extra` TOML lines.
    fn new(delivery: &str, extra: &str) -> Folder {
        let dir = tempfile::tempdir().expect("temporary folder");
        let spool = dir.path().join("spool");
        let config = format!(
            "[identity]\nehlo_name = \"client.test\"\n\n\
             [delivery]\ntls = \"none\"\nconnect_timeout = \"5s\"\nsubmission = \"queue\"\n{delivery}\n\n\
             [spool]\npath = \"{}\"\n\n{extra}\n",
            spool.display()
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("write config");
        Folder { dir }
    }

    /// Writes a configuration for MX delivery through the test DNS server
    /// to exchangers on `port`.
    fn mx(dns: &DnsServer, port: u16, reply_timeout: &str, extra: &str) -> Folder {
        Folder::new(
            &format!(
                "nameserver = \"{}\"\nmx_port = {port}\nreply_timeout = \"{reply_timeout}\"",
                dns.addr()
            ),
            extra,
        )
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn command(&self, arguments: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mxsend"));
        command
            .args(arguments)
            .env("HOME", self.dir.path())
            .env("MXSEND_CONFIG", self.dir.path().join("config.toml"))
            .env_remove("MXSEND_SPOOL")
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        command
    }

    async fn run(&self, arguments: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(arguments)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mxsend");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&input).await;
        });
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("mxsend {arguments:?} timed out"))
            .expect("wait for mxsend");
        let _ = writer.await;
        output
    }

    async fn submit(&self, arguments: &[&str], input: &[u8]) {
        let output = self.run(arguments, input).await;
        assert!(
            output.status.success(),
            "mxsend {arguments:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn daemon(&self) -> Child {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).expect("daemon log");
        self.command(&["daemon"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.spool(), None).expect("open the spool")
    }
}

/// Copies of all messages the server stored for `recipient`.
fn copies(server: &SmtpServer, recipient: &str) -> usize {
    server
        .messages()
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == recipient))
        .count()
}

fn zone_for(domains: &[&str]) -> Zone {
    let mut zone = Zone::new();
    for domain in domains {
        let host = format!("mx.{domain}");
        zone = zone.mx(domain, 10, &host).a(&host, Ipv4Addr::LOCALHOST);
    }
    zone
}

/// A message to two domains: the server replies slowly to the RCPT of the
/// first and defers the second. When the second comes due again while
/// the first is still in its session, the daemon must not start a second
/// session for the first, which was never recorded as uncertain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_one_domain_leaves_other_alone() {
    let server = SmtpServer::start(
        Script::new()
            .on(
                Point::Rcpt.containing("<a@slow.test>"),
                Action::delay(Duration::from_secs(4), Action::reply("250 2.1.5 Ok")),
            )
            .on(
                Point::Rcpt.containing("<b@fast.test>"),
                Action::reply("451 4.7.1 try later"),
            ),
    )
    .await
    .unwrap();
    let dns = DnsServer::start(zone_for(&["slow.test", "fast.test"]))
        .await
        .unwrap();
    let folder = Folder::mx(
        &dns,
        server.addr().port(),
        "20s",
        "[retry]\nfirst = \"1s\"\nmultiplier = 1.0\njitter = 0.0\n\
         [daemon]\npoll_interval = \"100ms\"\n",
    );
    folder
        .submit(
            &[
                "sendmail",
                "-f",
                "sender@client.test",
                "a@slow.test",
                "b@fast.test",
            ],
            b"Subject: two domains\n\nbody\n",
        )
        .await;

    let daemon = folder.daemon();
    let first = wait_until(Duration::from_secs(20), || {
        copies(&server, "a@slow.test") >= 1
    })
    .await;
    // Room for any further copy already in a session to arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    terminate(&daemon).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon.wait_with_output()).await;
    assert!(first, "a@slow.test got nothing: {}", folder.log());

    let store = folder.store();
    let message = &store.list(true).unwrap()[0];
    let (_, history) = store.show(&message.id).unwrap();
    let uncertain = history
        .iter()
        .any(|entry| entry.index == 0 && entry.state == RecipientState::Uncertain);
    assert_eq!(
        copies(&server, "a@slow.test"),
        1,
        "a@slow.test got several copies; recorded uncertain: {uncertain}; \
         recipients: {:#?}; history: {history:#?}\ndaemon log:\n{}",
        message.recipients,
        folder.log()
    );
}

/// Writes a configuration that relays to the test server at `port`.
fn relay(port: u16, extra: &str) -> Folder {
    Folder::new(
        &format!("relay = \"127.0.0.1:{port}\"\nreply_timeout = \"5s\""),
        extra,
    )
}

/// Submits `message` from sender@client.test, runs the queue once and
/// returns how many bounces the sender got, with the queue as text.
/// Returns `None` when `sendmail` rejected the message.
async fn bounces_after_failure(server: &SmtpServer, message: &[u8]) -> Option<(usize, String)> {
    let folder = relay(server.addr().port(), "");
    let submitted = folder
        .run(
            &["sendmail", "-f", "sender@client.test", "rcpt@example.net"],
            message,
        )
        .await;
    if !submitted.status.success() {
        return None;
    }
    let flushed = folder.run(&["queue", "flush"], b"").await;
    assert!(
        flushed.status.success(),
        "{}",
        String::from_utf8_lossy(&flushed.stderr)
    );
    let bounces = server
        .messages()
        .iter()
        .filter(|m| m.mail_from.is_empty() && m.rcpt_to == ["sender@client.test"])
        .count();
    let queue: Vec<String> = folder
        .store()
        .list(true)
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "<{}> -> {:?}",
                m.sender.as_deref().unwrap_or(""),
                m.recipients
                    .iter()
                    .map(|r| (r.state, r.last_reply.clone()))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    Some((bounces, format!("{queue:#?}")))
}

/// A Subject field of 1,200 octets: no server can take the message,
/// because lines are limited to 998 octets, so `sendmail` rejects it at
/// submission, where the caller sees the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_header_line_rejected_at_submission() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let folder = relay(server.addr().port(), "");
    let message = format!("Subject: {}\n\nbody\n", "s".repeat(1200));
    let submitted = folder
        .run(
            &["sendmail", "-f", "sender@client.test", "rcpt@example.net"],
            message.as_bytes(),
        )
        .await;
    assert_eq!(submitted.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&submitted.stderr);
    assert!(
        stderr.contains("line 1 is longer than 998 octets"),
        "{stderr}"
    );
    assert!(folder.store().list(true).unwrap().is_empty());
}

/// A UTF-8 Subject field through a relay without 8BITMIME: the message is
/// rejected before MAIL, and the sender still gets a bounce, whose copy of
/// the headers is quoted-printable so that the same relay takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_header_reaches_sender() {
    let server =
        SmtpServer::start(Script::new().extensions(&["PIPELINING", "ENHANCEDSTATUSCODES"]))
            .await
            .unwrap();
    let message = "Subject: Grüße\n\nbody\n".as_bytes();
    let (bounces, queue) = bounces_after_failure(&server, message)
        .await
        .expect("sendmail accepts the message");
    assert_eq!(bounces, 1, "the sender got no bounce; queue: {queue}");
}

/// After a delivery the daemon keeps the connection for reuse. A server
/// that never replies to QUIT must not hold the daemon past
/// `daemon.shutdown_grace` after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_silent_quit_stops_in_grace() {
    let server = SmtpServer::start(Script::new().on(Point::Quit, Action::Hang))
        .await
        .unwrap();
    let folder = Folder::new(
        &format!(
            "relay = \"127.0.0.1:{}\"\nreply_timeout = \"15s\"",
            server.addr().port()
        ),
        "[daemon]\npoll_interval = \"100ms\"\nshutdown_grace = \"500ms\"\n",
    );
    folder
        .submit(
            &["sendmail", "-f", "sender@client.test", "rcpt@example.net"],
            b"Subject: quit\n\nbody\n",
        )
        .await;
    let daemon = folder.daemon();
    assert!(
        wait_until(Duration::from_secs(20), || server.messages().len() == 1).await,
        "not delivered: {}",
        folder.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    terminate(&daemon).await;
    let ended = tokio::time::timeout(Duration::from_secs(40), daemon.wait_with_output())
        .await
        .expect("the daemon did not stop within 40 s");
    let took = started.elapsed();
    assert!(ended.is_ok());
    assert!(
        took < Duration::from_secs(5),
        "the daemon took {took:?} to stop after SIGTERM with a 500 ms grace:\n{}",
        folder.log()
    );
}

/// Messages to a slow domain that wait for its per-destination limit must
/// not keep a message to another domain waiting while a delivery slot is
/// free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_domain_leaves_slot_for_others() {
    let server = SmtpServer::start(Script::new().on(
        Point::Rcpt.containing("@slow.test>"),
        Action::delay(Duration::from_secs(3), Action::reply("250 2.1.5 Ok")),
    ))
    .await
    .unwrap();
    let dns = DnsServer::start(zone_for(&["slow.test", "fast.test"]))
        .await
        .unwrap();
    let folder = Folder::mx(
        &dns,
        server.addr().port(),
        "20s",
        "[daemon]\nconcurrency = 2\nper_destination = 1\npoll_interval = \"100ms\"\n",
    );
    for n in 0..2 {
        folder
            .submit(
                &[
                    "sendmail",
                    "-f",
                    "sender@client.test",
                    &format!("a{n}@slow.test"),
                ],
                b"Subject: slow\n\nbody\n",
            )
            .await;
    }
    folder
        .submit(
            &["sendmail", "-f", "sender@client.test", "b@fast.test"],
            b"Subject: fast\n\nbody\n",
        )
        .await;

    let daemon = folder.daemon();
    let started = Instant::now();
    let fast = wait_until(Duration::from_secs(30), || {
        copies(&server, "b@fast.test") == 1
    })
    .await;
    let took = started.elapsed();
    terminate(&daemon).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon.wait_with_output()).await;
    assert!(fast, "b@fast.test never delivered: {}", folder.log());
    assert!(
        took < Duration::from_secs(2),
        "b@fast.test waited {took:?} behind the slow domain with one of two slots free"
    );
}

/// SIGTERM comes while one delivery waits for the reply to its final dot
/// and a second message waits for the one delivery slot. When the grace
/// runs out, the cut delivery is uncertain. The message that never reached
/// a server is given back as it was, not marked uncertain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_jobs_that_never_started() {
    let server = SmtpServer::start(Script::new().on(Point::DataEnd, Action::Hang))
        .await
        .unwrap();
    let folder = relay(
        server.addr().port(),
        "[daemon]\nconcurrency = 1\npoll_interval = \"100ms\"\nshutdown_grace = \"500ms\"\n",
    );
    for recipient in ["first@example.net", "second@example.net"] {
        folder
            .submit(
                &["sendmail", "-f", "sender@client.test", recipient],
                b"Subject: cut\n\nbody\n",
            )
            .await;
    }
    let daemon = folder.daemon();
    let in_data = wait_until(Duration::from_secs(20), || {
        server
            .sessions()
            .iter()
            .any(|s| s.commands.iter().any(|c| c == "DATA"))
    })
    .await;
    assert!(in_data, "no delivery reached DATA: {}", folder.log());
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate(&daemon).await;
    let ended = tokio::time::timeout(Duration::from_secs(30), daemon.wait_with_output()).await;
    assert!(ended.is_ok(), "the daemon did not stop: {}", folder.log());

    let states: Vec<(String, RecipientState, u32)> = folder
        .store()
        .list(true)
        .unwrap()
        .iter()
        .flat_map(|m| m.recipients.clone())
        .map(|r| (r.address, r.state, r.attempts))
        .collect();
    let sessions = server.sessions().len();
    assert_eq!(sessions, 1, "{states:?}");
    let cut = states
        .iter()
        .filter(|(_, state, _)| *state == RecipientState::Uncertain);
    assert_eq!(cut.count(), 1, "{states:?}\n{}", folder.log());
    let waiting = states
        .iter()
        .filter(|(_, state, attempts)| *state == RecipientState::Queued && *attempts == 0);
    assert_eq!(waiting.count(), 1, "{states:?}\n{}", folder.log());
}

/// A delivery that runs longer than `daemon.lease` keeps its recipient:
/// the daemon renews the lease while the session runs, so the recipient is
/// neither marked uncertain nor sent a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_session_keeps_its_lease() {
    let server = SmtpServer::start(Script::new().on(
        Point::DataEnd.session(1),
        Action::delay(
            Duration::from_secs(4),
            Action::reply("250 2.0.0 Ok: queued"),
        ),
    ))
    .await
    .unwrap();
    let folder = relay(
        server.addr().port(),
        "[retry]\nfirst = \"1s\"\nmultiplier = 1.0\njitter = 0.0\n\
         [daemon]\nlease = \"1500ms\"\npoll_interval = \"100ms\"\n",
    );

    folder
        .submit(
            &["sendmail", "-f", "sender@client.test", "rcpt@example.net"],
            b"Subject: long\n\nbody\n",
        )
        .await;
    let daemon = folder.daemon();
    let delivered = wait_until(Duration::from_secs(20), || {
        copies(&server, "rcpt@example.net") >= 1
    })
    .await;

    // Room for a second copy, had the lease run out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    terminate(&daemon).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon.wait_with_output()).await;
    assert!(delivered, "nothing delivered: {}", folder.log());
    assert_eq!(copies(&server, "rcpt@example.net"), 1, "{}", folder.log());

    let store = folder.store();
    let message = &store.list(true).unwrap()[0];
    let (_, history) = store.show(&message.id).unwrap();
    let states: Vec<RecipientState> = history.iter().map(|entry| entry.state).collect();
    assert_eq!(states, [RecipientState::Delivered], "{history:#?}");
}
