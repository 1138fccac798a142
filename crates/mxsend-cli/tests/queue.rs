//! The queue commands run as the real binary in temporary folders: sendmail
//! mode, `mxsend queue`, `mxsend daemon`, `mxsend config check`, a crash
//! test with `kill -9`, and delivery and bounces through Postfix.
//!
//! Every command gets `HOME` and `MXSEND_CONFIG` inside its temporary
//! folder and a spool there, so the default configuration and spool paths
//! are never read or written. Every server is started by the test on
//! 127.0.0.1.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxsend::queue::{NewMessage, QueueId, RecipientState, SqliteStore, Store};
use mxsend_testkit::{Action, Point, Script, SmtpServer};
use tokio::process::{Child, Command};

#[path = "support/process.rs"]
mod process;

use process::{terminate, wait_until};

/// Time allowed for one command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A temporary home with a configuration file and a spool.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// Writes a configuration that relays to `relay_port` on 127.0.0.1,
    /// followed by the `extra` TOML lines.
    fn new(relay_port: u16, submission: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temporary folder");
        let spool = dir.path().join("spool");
        let config = format!(
            "[identity]\nehlo_name = \"client.test\"\n\n\
             [delivery]\nrelay = \"127.0.0.1:{relay_port}\"\ntls = \"none\"\nconnect_timeout = \"5s\"\n\
             reply_timeout = \"20s\"\nsubmission = \"{submission}\"\n\n\
             [spool]\npath = \"{}\"\n{extra}\n",
            spool.display()
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("write config");
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Builds a command whose environment points only into the folder.
    fn command(&self, program: &Path, arguments: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .args(arguments)
            .env("HOME", self.dir.path())
            .env("MXSEND_CONFIG", self.config())
            .env_remove("MXSEND_SPOOL")
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        command
    }

    /// Runs `mxsend ARGUMENTS` with `input` on standard input.
    async fn run(&self, arguments: &[&str], input: &[u8]) -> Output {
        self.run_program(Path::new(env!("CARGO_BIN_EXE_mxsend")), arguments, input)
            .await
    }

    async fn run_program(&self, program: &Path, arguments: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(program, arguments)
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

    /// Runs a command that must succeed and returns its standard output.
    async fn ok(&self, arguments: &[&str], input: &[u8]) -> String {
        let output = self.run(arguments, input).await;
        assert!(
            output.status.success(),
            "mxsend {arguments:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn json(&self, arguments: &[&str]) -> serde_json::Value {
        let text = self.ok(arguments, b"").await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"))
    }

    fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.spool(), None).expect("open the test spool")
    }

    /// Starts `mxsend daemon` with its log in `log_name` in the folder. A
    /// file, unlike a pipe, never fills up and blocks the daemon.
    fn daemon(&self, log_name: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log_name)).expect("create daemon log");
        self.command(Path::new(env!("CARGO_BIN_EXE_mxsend")), &["daemon"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon")
    }

    fn log(&self, log_name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log_name)).unwrap_or_default()
    }
}

fn status(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits for a child for at most `timeout` and returns its output.
async fn finish(child: Child, timeout: Duration) -> Output {
    tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .expect("process ended in time")
        .expect("wait for process")
}

const MESSAGE: &[u8] = b"From: Alice <alice@example.com>\nTo: bob@example.net\nCc: carol@example.org\nBcc: dave@example.net\nSubject: queued\n\nHello.\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_t_delivers_inline_with_headers_completed() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let setup = Setup::new(server.addr().port(), "inline", "");
    let output = setup.run(&["sendmail", "-t", "-i"], MESSAGE).await;
    assert_eq!(status(&output), 0, "{}", stderr(&output));

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "one transaction for one relay");
    let stored = &messages[0];
    assert_eq!(stored.mail_from, "alice@example.com");
    assert_eq!(
        stored.rcpt_to,
        ["bob@example.net", "carol@example.org", "dave@example.net"]
    );
    let text = String::from_utf8_lossy(&stored.data);
    assert!(!text.contains("Bcc:"), "Bcc must be removed: {text}");
    let header_lines: Vec<&str> = text.split("\r\n").take_while(|l| !l.is_empty()).collect();
    assert!(
        header_lines.iter().any(|l| l.starts_with("Date: ")),
        "Date added: {text}"
    );
    assert!(
        header_lines.iter().any(|l| l.starts_with("Message-ID: <")),
        "Message-ID added: {text}"
    );
    assert!(text.contains("From: Alice <alice@example.com>"), "{text}");

    let listed = setup.json(&["queue", "list", "--all", "--json"]).await;
    let recipients = listed[0]["recipients"].as_array().unwrap();
    assert!(
        recipients.iter().all(|r| r["state"] == "delivered"),
        "{listed}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_default_delivers_in_background() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let setup = Setup::new(server.addr().port(), "background", "");
    let started = Instant::now();
    let output = setup
        .run(
            &[
                "sendmail",
                "-oi",
                "-f",
                "alice@example.com",
                "bob@example.net",
            ],
            b"Subject: bg\n\nbody\n",
        )
        .await;
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let returned_after = started.elapsed();
    assert!(
        wait_until(Duration::from_secs(20), || server.messages().len() == 1).await,
        "background delivery did not arrive"
    );
    assert!(
        returned_after < Duration::from_secs(10),
        "sendmail took {returned_after:?}"
    );
    assert_eq!(server.messages()[0].rcpt_to, ["bob@example.net"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_accepts_message_without_headers() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let setup = Setup::new(server.addr().port(), "inline", "");
    let output = setup
        .run(
            &["sendmail", "-F", "Cron Daemon", "-f", "root", "root"],
            b"just a line\n.\nnot sent\n",
        )
        .await;
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].mail_from, "root@client.test",
        "local names are qualified"
    );
    assert_eq!(messages[0].rcpt_to, ["root@client.test"]);
    let text = String::from_utf8_lossy(&messages[0].data);
    assert!(
        text.starts_with("From: Cron Daemon <root@client.test>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\n\r\njust a line\r\n"),
        "the line stays in the body: {text}"
    );
    assert!(
        !text.contains("not sent"),
        "without -i a dot line ends the message: {text}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_rejects_bad_usage_with_64() {
    let setup = Setup::new(9, "queue", "");
    let unknown = setup.run(&["sendmail", "-Z", "a@b.test"], b"").await;
    assert_eq!(status(&unknown), 64, "{}", stderr(&unknown));
    let no_recipient = setup.run(&["sendmail"], b"Subject: x\n\nbody\n").await;
    assert_eq!(status(&no_recipient), 64, "{}", stderr(&no_recipient));
    assert!(
        stderr(&no_recipient).contains("no recipients"),
        "{}",
        stderr(&no_recipient)
    );
    let warned = setup
        .run(
            &["sendmail", "-oXunknown", "-f", "a@b.test", "c@d.test"],
            b"Subject: x\n\n",
        )
        .await;
    assert_eq!(status(&warned), 0, "{}", stderr(&warned));
    assert!(
        stderr(&warned).contains("ignoring unknown option -oXunknown"),
        "{}",
        stderr(&warned)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_list_show_flush_bounce_delete() {
    let server = SmtpServer::start(Script::new().on(
        Point::Rcpt.containing("<slow@"),
        Action::reply("451 4.7.1 Greylisted"),
    ))
    .await
    .unwrap();
    let setup = Setup::new(server.addr().port(), "inline", "");
    setup
        .ok(
            &["sendmail", "-f", "alice@example.com", "slow@example.net"],
            b"Subject: s\n\nbody\n",
        )
        .await;

    let listed = setup.json(&["queue", "list", "--json"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed[0]["sender"], "alice@example.com");
    assert_eq!(listed[0]["recipients"][0]["state"], "deferred");
    assert_eq!(listed[0]["recipients"][0]["attempts"], 1);

    let human = setup.ok(&["queue", "list"], b"").await;
    assert!(human.contains(&id), "{human}");
    assert!(
        human.contains("deferred  slow@example.net (1 attempts, next in"),
        "{human}"
    );
    let mailq = setup.ok(&["sendmail", "-bp"], b"").await;
    assert!(mailq.contains(&id), "-bp lists the queue: {mailq}");
    assert!(mailq.contains("deferred  slow@example.net"), "{mailq}");

    let flushed = setup.json(&["queue", "flush", "--json"]).await;
    assert_eq!(flushed["scheduled"], 1, "{flushed}");
    assert_eq!(flushed["summary"]["deferred"], 1, "{flushed}");

    let shown = setup.json(&["queue", "show", &id, "--json"]).await;
    let history = shown["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{shown}");
    assert!(
        history
            .iter()
            .all(|h| h["reply"].as_str().unwrap().contains("451 4.7.1")),
        "{shown}"
    );
    let shown_text = setup.ok(&["queue", "show", &id], b"").await;
    assert!(
        shown_text.contains("sender:  <alice@example.com>"),
        "{shown_text}"
    );

    let bounced = setup.json(&["queue", "bounce", &id, "--json"]).await;
    assert_eq!(bounced["recipients"][0], "slow@example.net", "{bounced}");
    let listed = setup.json(&["queue", "list", "--json"]).await;
    let messages = listed.as_array().unwrap();
    assert_eq!(messages.len(), 1, "only the bounce waits: {listed}");
    assert_eq!(messages[0]["sender"], serde_json::Value::Null, "{listed}");
    assert_eq!(messages[0]["recipients"][0]["address"], "alice@example.com");
    let bounce_id = messages[0]["id"].as_str().unwrap().to_owned();

    let deleted = setup.json(&["queue", "delete", &bounce_id, "--json"]).await;
    assert_eq!(deleted["deleted"], bounce_id.as_str());
    assert_eq!(
        setup.json(&["queue", "list", "--json"]).await,
        serde_json::json!([])
    );
    let again = setup.run(&["queue", "delete", &bounce_id], b"").await;
    assert_eq!(status(&again), 64, "{}", stderr(&again));
    assert!(stderr(&again).contains("not found"), "{}", stderr(&again));
    let invalid = setup.run(&["queue", "show", "zz"], b"").await;
    assert_eq!(status(&invalid), 64, "{}", stderr(&invalid));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_prints_effective_settings() {
    let setup = Setup::new(
        2525,
        "queue",
        "[retry]\nfirst = \"10m\"\nwarn_after = \"4h\"\n",
    );
    let text = setup.ok(&["config", "check"], b"").await;
    assert!(
        text.contains(&format!(
            "# configuration file: {}",
            setup.config().display()
        )),
        "{text}"
    );
    assert!(text.contains("relay = \"127.0.0.1:2525\""), "{text}");
    assert!(text.contains("first = \"10m\""), "{text}");
    assert!(text.contains("warn_after = \"4h\""), "{text}");
    assert!(
        text.contains("max_age = \"5d\""),
        "defaults are printed: {text}"
    );
    assert!(
        text.contains(&setup.spool().display().to_string()),
        "{text}"
    );

    let bad = setup.dir.path().join("bad.toml");
    std::fs::write(&bad, "[retry]\nfirst = \"soon\"\n").unwrap();
    let output = setup
        .run(&["config", "check", "--config", bad.to_str().unwrap()], b"")
        .await;
    assert_eq!(status(&output), 78, "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains(bad.to_str().unwrap()), "{message}");
    assert!(message.contains("retry.first"), "{message}");
    assert!(message.contains("30s, 5m"), "{message}");

    let missing = setup
        .run(
            &["config", "check", "--config", "/nonexistent/mxsend.toml"],
            b"",
        )
        .await;
    assert_eq!(status(&missing), 78, "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("/nonexistent/mxsend.toml"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_fails_submission_with_75() {
    let setup = Setup::new(9, "queue", "max_size = \"256KB\"\n");
    setup
        .ok(
            &["sendmail", "-f", "a@x.test", "b@y.test"],
            b"Subject: small\n\nbody\n",
        )
        .await;
    let mut big = b"Subject: big\n\n".to_vec();
    for _ in 0..20_000 {
        big.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\n",
        );
    }
    let output = setup
        .run(&["sendmail", "-f", "a@x.test", "b@y.test"], &big)
        .await;
    assert_eq!(status(&output), 75, "{}", stderr(&output));
    assert!(stderr(&output).contains("is full"), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("queue.sqlite"),
        "{}",
        stderr(&output)
    );
    let listed = setup.json(&["queue", "list", "--json"]).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "the first message is kept: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_spool_names_the_file() {
    let setup = Setup::new(9, "queue", "");
    std::fs::create_dir_all(setup.spool()).unwrap();
    std::fs::write(setup.spool().join("queue.sqlite"), vec![0x42; 4096]).unwrap();
    let output = setup.run(&["queue", "list"], b"").await;
    assert_eq!(status(&output), 74, "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&setup.spool().join("queue.sqlite").display().to_string()),
        "{message}"
    );
    assert!(message.contains("move the file aside"), "{message}");

    let submitted = setup
        .run(
            &["sendmail", "-f", "a@x.test", "b@y.test"],
            b"Subject: x\n\n",
        )
        .await;
    assert_ne!(
        status(&submitted),
        0,
        "a damaged spool must not acknowledge a message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_named_sendmail_or_mailq_takes_sendmail_flags() {
    let setup = Setup::new(9, "queue", "");
    let bin = setup.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["sendmail", "mailq"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mxsend"), bin.join(name)).unwrap();
    }
    let output = setup
        .run_program(
            &bin.join("sendmail"),
            &["-t", "-odq"],
            b"From: a@x.test\nTo: b@y.test\n\nhi\n",
        )
        .await;
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let mailq = setup.run_program(&bin.join("mailq"), &[], b"").await;
    assert_eq!(status(&mailq), 0, "{}", stderr(&mailq));
    let text = String::from_utf8_lossy(&mailq.stdout);
    assert!(text.contains("queued    b@y.test"), "{text}");
    assert!(text.contains("<a@x.test>"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_retries_and_second_daemon_refuses() {
    // The first RCPT of the first session is deferred; the retry succeeds,
    // on the same connection when the daemon still keeps it.
    let server = SmtpServer::start(Script::new().on(
        Point::Rcpt.nth(1).session(1),
        Action::reply("451 4.3.0 try again"),
    ))
    .await
    .unwrap();
    let setup = Setup::new(
        server.addr().port(),
        "queue",
        "[retry]\nfirst = \"300ms\"\njitter = 0.0\n[daemon]\npoll_interval = \"100ms\"\n",
    );
    setup
        .ok(
            &["sendmail", "-f", "a@example.com", "b@example.net"],
            b"Subject: retry\n\nbody\n",
        )
        .await;
    let daemon = setup.daemon("daemon.log");
    let lock = setup.spool().join("daemon.lock");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&lock)
            .is_ok_and(|pid| !pid.trim().is_empty()))
        .await,
        "the daemon did not take the lock"
    );
    let second = setup.run(&["daemon"], b"").await;
    assert_eq!(status(&second), 75, "{}", stderr(&second));
    assert!(
        stderr(&second).contains(&lock.display().to_string()),
        "{}",
        stderr(&second)
    );

    assert!(
        wait_until(Duration::from_secs(20), || server.messages().len() == 1).await,
        "the daemon did not deliver after the retry"
    );
    terminate(&daemon).await;
    let output = finish(daemon, Duration::from_secs(20)).await;
    assert_eq!(output.status.code(), Some(0), "{}", setup.log("daemon.log"));
    let log = setup.log("daemon.log");
    assert!(log.contains("daemon started"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("daemon stopped"), "{log}");
    let store = setup.store();
    let message = &store.list(true).unwrap()[0];
    assert_eq!(message.recipients[0].state, RecipientState::Delivered);
    assert_eq!(message.recipients[0].attempts, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_cuts_hung_session_at_shutdown_as_uncertain() {
    let server = SmtpServer::start(Script::new().on(Point::DataEnd, Action::Hang))
        .await
        .unwrap();
    let setup = Setup::new(
        server.addr().port(),
        "queue",
        "[daemon]\npoll_interval = \"100ms\"\nshutdown_grace = \"500ms\"\n",
    );
    setup
        .ok(
            &["sendmail", "-f", "a@example.com", "b@example.net"],
            b"Subject: hang\n\nbody\n",
        )
        .await;
    let daemon = setup.daemon("daemon.log");
    assert!(
        wait_until(Duration::from_secs(10), || server
            .sessions()
            .iter()
            .any(|s| s.commands.iter().any(|c| c.starts_with("DATA"))))
        .await,
        "the daemon did not reach DATA"
    );
    // Give the content and the final dot time to leave.
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate(&daemon).await;
    let output = finish(daemon, Duration::from_secs(20)).await;
    assert_eq!(output.status.code(), Some(0), "{}", setup.log("daemon.log"));
    assert!(
        setup.log("daemon.log").contains("session cut at shutdown"),
        "{}",
        setup.log("daemon.log")
    );
    let store = setup.store();
    let message = &store.list(false).unwrap()[0];
    assert_eq!(message.recipients[0].state, RecipientState::Uncertain);
    assert_eq!(
        message.recipients[0].lease_pid, None,
        "no lease is left behind"
    );
    server.shutdown().await;
}

/// Messages in the crash test: 10,000 by default, which takes about 13 s
/// here since the daemon reuses connections; `MXSEND_CRASH_MESSAGES` sets
/// another count.
fn crash_message_count() -> usize {
    std::env::var("MXSEND_CRASH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_test_loses_nothing_and_duplicates_only_uncertain() {
    const KILLS: usize = 4;
    let count = crash_message_count();
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let setup = Setup::new(
        server.addr().port(),
        "queue",
        "[daemon]\nconcurrency = 10\nper_destination = 10\npoll_interval = \"100ms\"\n\
         shutdown_grace = \"2s\"\n[retry]\nfirst = \"200ms\"\nmultiplier = 1.0\njitter = 0.0\n",
    );

    let store = Arc::new(setup.store());
    let started = Instant::now();
    let mut ids: HashMap<usize, QueueId> = HashMap::new();
    for seq in 0..count {
        let message = NewMessage {
            sender: Some("sender@example.com".to_owned()),
            recipients: vec![format!("r{seq}@example.net"), format!("r{seq}@example.org")],
            content: format!("From: sender@example.com\r\nSubject: crash {seq}\r\nX-Seq: {seq}\r\n\r\nbody {seq}\r\n")
                .into_bytes(),
        };
        ids.insert(
            seq,
            store
                .enqueue(&message, mxsend::queue::now_millis())
                .unwrap(),
        );
    }
    let enqueue_time = started.elapsed();

    // Each daemon is killed a random 0 to 50 ms after the sink has received
    // another tenth of the messages, so that every kill hits sessions in
    // progress and claims not yet recorded.
    let mut rng_state = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut next_random = move |below: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % below
    };
    let mut delivered_at_kill = Vec::new();
    for round in 0..KILLS {
        let mut daemon = setup.daemon(&format!("killed-{round}.log"));
        let target = server.messages().len() + count / 10;
        let progressed = wait_until(Duration::from_secs(30), || {
            server.messages().len() >= target
        })
        .await;
        assert!(
            progressed,
            "daemon {round} delivered nothing: {}",
            setup.log(&format!("killed-{round}.log"))
        );
        tokio::time::sleep(Duration::from_millis(next_random(50))).await;
        // SIGKILL: no chance to clean up.
        daemon.start_kill().expect("kill -9 the daemon");
        let _ = tokio::time::timeout(Duration::from_secs(10), daemon.wait())
            .await
            .expect("the killed daemon was reaped");
        delivered_at_kill.push(server.messages().len());
    }

    let daemon = setup.daemon("final.log");
    assert!(
        wait_until(Duration::from_secs(10), || setup
            .log("final.log")
            .contains("daemon started"))
        .await,
        "the final daemon did not start: {}",
        setup.log("final.log")
    );
    // Listing the whole queue is slow with thousands of messages, so it
    // is checked only after the sink has a copy for every message.
    let deadline = Instant::now() + Duration::from_secs(if count > 1000 { 600 } else { 60 });
    let mut all_done = false;
    while Instant::now() < deadline {
        if server.messages().len() >= count && store.list(false).is_ok_and(|p| p.is_empty()) {
            all_done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    terminate(&daemon).await;
    let output = finish(daemon, Duration::from_secs(20)).await;
    assert_eq!(output.status.code(), Some(0), "{}", setup.log("final.log"));
    if !all_done {
        let pending = store.list(false).unwrap();
        let log = setup.log("final.log");
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "{} messages still waiting after the final run, such as {:#?}\nlast log lines (newest first):\n{}",
            pending.len(),
            pending.first(),
            tail.join("\n")
        );
    }
    let total_time = started.elapsed();

    // Copies received per (seq, recipient).
    let mut copies: HashMap<(usize, String), usize> = HashMap::new();
    for message in server.messages() {
        let text = String::from_utf8_lossy(&message.data);
        let seq: usize = text
            .lines()
            .find_map(|line| line.strip_prefix("X-Seq: "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("message without X-Seq: {text}"));
        for recipient in message.rcpt_to {
            *copies.entry((seq, recipient)).or_default() += 1;
        }
    }
    let mut duplicates = 0;
    let mut uncertain_recorded = 0;
    for seq in 0..count {
        let (message, history) = store.show(&ids[&seq]).unwrap();
        for recipient in &message.recipients {
            assert_eq!(
                recipient.state,
                RecipientState::Delivered,
                "seq {seq} {}: {:?}",
                recipient.address,
                recipient.last_reply
            );
            let received = copies
                .get(&(seq, recipient.address.clone()))
                .copied()
                .unwrap_or(0);
            assert!(received >= 1, "seq {seq} {} was lost", recipient.address);
            let was_uncertain = history
                .iter()
                .any(|h| h.index == recipient.index && h.state == RecipientState::Uncertain);
            uncertain_recorded += usize::from(was_uncertain);
            if received > 1 {
                duplicates += 1;
                assert!(
                    was_uncertain,
                    "seq {seq} {} got {received} copies without an uncertain record: {history:?}",
                    recipient.address
                );
            }
        }
    }
    assert!(
        uncertain_recorded > 0,
        "no kill interrupted a delivery, so the test proved nothing"
    );
    let _ = writeln!(
        std::io::stderr(),
        "crash test: {count} messages ({} recipients) enqueued in {enqueue_time:?} \
         ({:.0}/s); {KILLS} kill -9 at {delivered_at_kill:?} messages received; \
         all delivered after {total_time:?}; {uncertain_recorded} recipients recorded \
         uncertain, {duplicates} got a second copy",
        count * 2,
        count as f64 / enqueue_time.as_secs_f64()
    );
    server.shutdown().await;
}

/// Lock files held around every use of Postfix. The interoperability test
/// in crates/mxsend/tests/interop.rs holds the first; the second is the one
/// every Postfix test is meant to share. They are always taken in this
/// order, so two tests cannot wait for each other.
const POSTFIX_LOCKS: [&str; 2] = [
    "/run/mxsend-interop-postfix.lock",
    "/run/postfix-loopback.test.lock",
];

/// Takes a lock file, waiting at most two minutes.
async fn lock_file(path: &str) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match file.try_lock() {
            Ok(()) => return file,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("cannot lock {path} within 2 minutes: {error}"),
        }
    }
}

/// Why Postfix cannot be used here, or `None`.
fn postfix_missing() -> Option<String> {
    let found = |program: &str| {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|folder| folder.join(program).is_file())
        })
    };
    if !found("postfix") || !found("postconf") {
        return Some(
            "postfix or postconf not found in PATH (install the Debian package 'postfix')"
                .to_owned(),
        );
    }
    let root =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if !root {
        return Some("scripts/postfix-loopback must run as root".to_owned());
    }
    None
}

fn postfix_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postfix-loopback")
}

/// Stops Postfix when dropped, before the locks are released.
struct PostfixGuard;

impl Drop for PostfixGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(postfix_script())
            .arg("stop")
            .stdin(Stdio::null())
            .output();
    }
}

/// Finds a file in `maildir/new` whose content contains every needle,
/// checking every 100 ms for at most `timeout`.
async fn find_in_maildir(maildir: &Path, needles: &[&str], timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = std::fs::read_dir(maildir.join("new")) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if needles.iter().all(|needle| text.contains(needle)) {
                    return Some(text);
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_delivers_and_bounces_through_postfix() {
    const TEST: &str = "sendmail_delivers_and_bounces_through_postfix";
    if let Some(reason) = postfix_missing() {
        if std::env::var("CI").is_ok_and(|value| value == "true") {
            panic!("{TEST}: {reason} (CI=true, so a missing prerequisite is an error)");
        }
        let _ = writeln!(
            std::io::stderr(),
            "notice: {TEST} skipped: {reason} (with CI=true this fails)"
        );
        return;
    }
    let _interop_lock = lock_file(POSTFIX_LOCKS[0]).await;
    let _shared_lock = lock_file(POSTFIX_LOCKS[1]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port();
    let _guard = PostfixGuard;
    let started = Command::new(postfix_script())
        .args(["start", &port.to_string()])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run scripts/postfix-loopback");
    assert!(
        started.status.success(),
        "scripts/postfix-loopback start {port} failed: {}",
        String::from_utf8_lossy(&started.stderr)
    );

    let setup = Setup::new(port, "background", "");
    let token = format!("{:016x}", rand::random::<u64>());
    let message = format!(
        "From: Alice <alice@example.com>\nTo: bob-{token}@postfix.test\nSubject: queue {token}\n\nHello through Postfix.\n"
    );
    let output = setup.run(&["sendmail", "-t"], message.as_bytes()).await;
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let stored = find_in_maildir(
        Path::new("/var/mail/vhosts/postfix.test"),
        &[
            &format!("bob-{token}@postfix.test"),
            "Hello through Postfix.",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        stored.is_some(),
        "message not in the postfix.test Maildir; queue: {}",
        setup.ok(&["queue", "list", "--all"], b"").await
    );

    // Postfix rejects recipients outside its domains at RCPT time, so the
    // queue bounces the message to alice@example.com, a Postfix mailbox.
    let rejected = format!(
        "From: alice@example.com\nTo: nobody-{token}@elsewhere.test\nSubject: bounce {token}\n\nThis will bounce.\n"
    );
    let output = setup
        .run(&["sendmail", "-t", "-odi"], rejected.as_bytes())
        .await;
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let bounce = find_in_maildir(
        Path::new("/var/mail/vhosts/example.com"),
        &[
            &format!("nobody-{token}@elsewhere.test"),
            "Reporting-MTA: dns; client.test",
        ],
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "bounce not in the example.com Maildir; log:\n{}",
            std::fs::read_to_string("/var/log/postfix-mxsend.log").unwrap_or_default()
        )
    });
    assert!(
        bounce.contains("multipart/report; report-type=delivery-status"),
        "{bounce}"
    );
    assert!(bounce.contains("Action: failed"), "{bounce}");
    assert!(bounce.contains("Status: 5."), "{bounce}");
    assert!(
        bounce.contains(&format!("Subject: bounce {token}")),
        "original headers: {bounce}"
    );
    assert!(
        bounce.contains("Return-Path: <>"),
        "a bounce has the null sender: {bounce}"
    );
}

/// The configuration's AUTH settings reach the relay: the password comes
/// from `password_file`, is used, and never appears in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_auth_settings_used_for_relay() {
    const PASSWORD: &str = "sésame-0451";
    let script = Script::new()
        .extensions(&["PIPELINING", "8BITMIME", "AUTH PLAIN LOGIN"])
        .auth("relay-user", PASSWORD);
    let server = SmtpServer::start(script).await.unwrap();
    let setup = Setup::new(server.addr().port(), "inline", "");
    let password_file = setup.dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let config = std::fs::read_to_string(setup.config()).unwrap().replace(
        "tls = \"none\"\n",
        &format!(
            "tls = \"none\"\nauth_user = \"relay-user\"\npassword_file = \"{}\"\n\
             dangerous_plaintext_auth = true\n",
            password_file.display()
        ),
    );
    std::fs::write(setup.config(), config).unwrap();

    let check = setup.run(&["config", "check"], b"").await;
    assert_eq!(status(&check), 0, "{}", stderr(&check));
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(printed.contains("relay-user"), "{printed}");
    assert!(
        !printed.contains(PASSWORD),
        "the password was printed: {printed}"
    );

    let output = setup.run(&["sendmail", "-t", "-i", "-v"], MESSAGE).await;
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    assert!(!stderr(&output).contains(PASSWORD));
    assert_eq!(server.messages().len(), 1);
    let session = &server.sessions()[0];
    assert!(
        session.commands.iter().any(|c| c.starts_with("AUTH ")),
        "{:?}",
        session.commands
    );

    let wrong = Setup::new(server.addr().port(), "inline", "");
    let config = std::fs::read_to_string(wrong.config()).unwrap().replace(
        "tls = \"none\"\n",
        "tls = \"none\"\npassword_file = \"/nonexistent\"\n",
    );
    std::fs::write(wrong.config(), config).unwrap();
    let output = wrong.run(&["config", "check"], b"").await;
    assert_eq!(status(&output), 78, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("delivery.auth_user"),
        "{}",
        stderr(&output)
    );
}
