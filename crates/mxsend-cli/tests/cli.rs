//! Runs the `mxsend` binary against loopback peers from the testkit: a DNS
//! zone on 127.0.0.1 and the scripted SMTP server.

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use mxsend_testkit::{Action, DnsServer, Point, Script, SmtpServer, Zone};
use tokio::process::Command;

/// Time allowed for one run of the binary; a hang fails the test.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const MESSAGE: &str =
    "From: Alice <alice@example.com>\nTo: bob@example.net\nSubject: hello\n\nhello\n.\nworld\n";

/// Starts a DNS zone in which `example.net` (by MX) and `implicit.test` (by
/// A record) lead to 127.0.0.1, with the null MX and SERVFAIL domains that
/// the exit-status tests need.
async fn start_dns() -> DnsServer {
    let zone = Zone::new()
        .mx("example.net", 10, "mx.example.net")
        .a("mx.example.net", Ipv4Addr::LOCALHOST)
        .a("implicit.test", Ipv4Addr::LOCALHOST)
        .mx("null.test", 0, ".")
        .mx("broken.test", 10, "mx.example.net")
        .servfail("broken.test");
    DnsServer::start(zone).await.expect("start DNS server")
}

/// Runs `mxsend ARGS` with `stdin` as standard input.
async fn mxsend(args: &[&str], stdin: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;

    let mut child = Command::new(env!("CARGO_BIN_EXE_mxsend"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mxsend");
    let mut input = child.stdin.take().expect("stdin");
    // mxsend may exit before it reads standard input, for example on a
    // usage error, and then the write fails with a broken pipe. Its exit
    // status and output are what the tests check.
    let _ = input.write_all(stdin).await;
    drop(input);
    tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("mxsend did not finish in time")
        .expect("wait for mxsend")
}

/// Arguments that point `send` at the loopback peers.
fn peer_args(dns: &DnsServer, smtp: &SmtpServer) -> Vec<String> {
    vec![
        "--nameserver".to_owned(),
        dns.addr().to_string(),
        "--port".to_owned(),
        smtp.addr().port().to_string(),
        "--helo".to_owned(),
        "client.example.com".to_owned(),
        "--reply-timeout".to_owned(),
        "10".to_owned(),
    ]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn status(output: &Output) -> i32 {
    output.status.code().expect("exit status")
}

async fn send(extra: &[&str], dns: &DnsServer, smtp: &SmtpServer, stdin: &[u8]) -> Output {
    let mut args = vec!["send".to_owned()];
    args.extend(peer_args(dns, smtp));
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    mxsend(&args, stdin).await
}

#[tokio::test]
async fn demo_delivers_tutorial_message() {
    let output = mxsend(&["demo"], b"").await;
    let stdout = text(&output.stdout);
    assert_eq!(
        status(&output),
        0,
        "stdout: {stdout}\nstderr: {}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("tutorial_recipient@example.net: delivered"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 delivered, 0 deferred, 0 failed, 0 uncertain"),
        "{stdout}"
    );
    assert!(stdout.contains("Subject: Tutorate!"), "{stdout}");
    assert!(stdout.contains("Hello, how are you, goodbye."), "{stdout}");
}

#[tokio::test]
async fn send_delivers_from_stdin_with_transcript() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();

    let output = send(
        &["-v", "--to", "bob@example.net"],
        &dns,
        &smtp,
        MESSAGE.as_bytes(),
    )
    .await;

    let stderr = text(&output.stderr);
    assert_eq!(status(&output), 0, "stderr: {stderr}");
    assert!(stderr.contains("-> EHLO client.example.com"), "{stderr}");
    assert!(
        stderr.contains("-> MAIL FROM:<alice@example.com>"),
        "{stderr}"
    );
    assert!(stderr.contains("-> RCPT TO:<bob@example.net>"), "{stderr}");
    assert!(stderr.contains("<- 250 2.0.0"), "{stderr}");
    assert!(
        !stderr.contains("hello\n"),
        "the transcript must not copy content: {stderr}"
    );
    assert!(text(&output.stdout).contains("bob@example.net: delivered via mx.example.net"));

    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].mail_from, "alice@example.com");
    assert_eq!(messages[0].rcpt_to, ["bob@example.net"]);
    assert_eq!(messages[0].data, MESSAGE.replace('\n', "\r\n").as_bytes());
}

#[tokio::test]
async fn send_reads_file_and_recipients_from_headers() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("message.eml");
    let content = "From carol@example.com Thu Jan  1 00:00:00 2026\nFrom: carol@example.com\n\
                   To: bob@example.net\nBcc: hidden@implicit.test\nSubject: s\n\nbody\n";
    std::fs::write(&path, content).unwrap();

    let output = send(&["-t", path.to_str().unwrap()], &dns, &smtp, b"").await;

    assert_eq!(status(&output), 0, "stderr: {}", text(&output.stderr));
    let messages = smtp.messages();
    let mut recipients: Vec<&str> = messages
        .iter()
        .flat_map(|m| &m.rcpt_to)
        .map(String::as_str)
        .collect();
    recipients.sort_unstable();
    assert_eq!(recipients, ["bob@example.net", "hidden@implicit.test"]);
    for message in &messages {
        let data = text(&message.data);
        assert!(!data.contains("Bcc"), "Bcc must not be transmitted: {data}");
        assert!(
            data.starts_with("From: carol@example.com\r\n"),
            "mbox line kept: {data}"
        );
    }
}

#[tokio::test]
async fn send_relay_skips_mx_lookup() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();
    let relay = format!("127.0.0.1:{}", smtp.addr().port());

    let output = send(
        // The relay default is TLS verify, and this server has no TLS.
        &[
            "--relay",
            &relay,
            "--tls",
            "none",
            "--to",
            "someone@unknown-domain.test",
        ],
        &dns,
        &smtp,
        MESSAGE.as_bytes(),
    )
    .await;

    assert_eq!(status(&output), 0, "stderr: {}", text(&output.stderr));
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(
        dns.query_count(),
        0,
        "a relay given as an address needs no DNS"
    );
}

#[tokio::test]
async fn send_json_lists_every_recipient() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new().on(
        Point::Rcpt.containing("<nobody@"),
        Action::reply("550 5.1.1 No such user"),
    ))
    .await
    .unwrap();

    let output = send(
        &[
            "--json",
            "--to",
            "bob@example.net",
            "--to",
            "nobody@example.net",
        ],
        &dns,
        &smtp,
        MESSAGE.as_bytes(),
    )
    .await;

    assert_eq!(status(&output), 67, "5.1.1 is an unknown user (EX_NOUSER)");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let recipients = report["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 2);
    assert_eq!(recipients[0]["address"], "bob@example.net");
    assert_eq!(recipients[0]["outcome"], "delivered");
    assert_eq!(recipients[1]["address"], "nobody@example.net");
    assert_eq!(recipients[1]["outcome"], "failed");
    assert_eq!(recipients[1]["reply"]["code"], 550);
    assert_eq!(recipients[1]["reply"]["enhanced"], "5.1.1");
    assert_eq!(smtp.messages()[0].rcpt_to, ["bob@example.net"]);
}

/// Exit statuses follow sysexits.h, one per kind of outcome.
#[tokio::test]
async fn send_exit_status_per_outcome() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new().on(
        Point::Rcpt.containing("<later@"),
        Action::reply("450 4.2.1 Mailbox busy"),
    ))
    .await
    .unwrap();
    let cases = [
        ("bob@implicit.test", 0),
        ("later@example.net", 75),
        ("bob@no-such-domain.test", 68),
        ("bob@null.test", 69),
        ("bob@broken.test", 75),
    ];
    for (recipient, expected) in cases {
        let output = send(&["--to", recipient], &dns, &smtp, MESSAGE.as_bytes()).await;
        assert_eq!(
            status(&output),
            expected,
            "{recipient}: stdout {} stderr {}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
}

/// Each kind of bad input ends with a one-line error naming the value and
/// status 64 or 65, and nothing reaches the server.
#[tokio::test]
async fn send_bad_input_sends_nothing() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();
    let long_line = format!("From: a@example.com\n\n{}\n", "x".repeat(1200));
    let cases: [(&[&str], &str, i32, &str); 9] = [
        (
            &["--to", "bob@example.net\r\nRSET"],
            MESSAGE,
            64,
            "control character",
        ),
        (
            &["--to", "bob smith@example.net"],
            MESSAGE,
            64,
            "bob smith@example.net",
        ),
        (
            &["--from", "alice\n@example.com", "--to", "bob@example.net"],
            MESSAGE,
            64,
            "--from",
        ),
        (
            &["-t"],
            "From: a@example.com\nTo: bo\0b@example.net\n\nx\n",
            64,
            "To header",
        ),
        (&[], MESSAGE, 64, "no recipients"),
        (
            &["--to", "bob@example.net"],
            "Subject: x\n\nbody\n",
            64,
            "no sender",
        ),
        (
            &["--to", "bob@example.net", "/nonexistent/message.eml"],
            MESSAGE,
            64,
            "/nonexistent/message.eml",
        ),
        (
            &["--to", "bob@example.net"],
            "just a line of text\n",
            65,
            "no header section",
        ),
        (&["--to", "bob@example.net"], &long_line, 65, "line 3"),
    ];
    for (args, input, expected, needle) in cases {
        let output = send(args, &dns, &smtp, input.as_bytes()).await;
        let stderr = text(&output.stderr);
        assert_eq!(status(&output), expected, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in {stderr:?}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line: {stderr:?}"
        );
    }
    assert!(
        smtp.sessions().is_empty(),
        "bad input must not reach the server"
    );
}

#[tokio::test]
async fn mx_prints_hosts_and_reasons() {
    let zone = Zone::new()
        .mx("example.net", 20, "c.example.net")
        .mx("example.net", 10, "a.example.net")
        .a("a.example.net", Ipv4Addr::new(127, 0, 0, 10))
        .a("c.example.net", Ipv4Addr::new(127, 0, 0, 30))
        .a("implicit.test", Ipv4Addr::LOCALHOST)
        .mx("null.test", 0, ".")
        .servfail("broken.test");
    let dns = DnsServer::start(zone).await.unwrap();
    let nameserver = dns.addr().to_string();

    let output = mxsend(&["mx", "--nameserver", &nameserver, "Example.NET."], b"").await;
    let stdout = text(&output.stdout);
    assert_eq!(status(&output), 0, "{}", text(&output.stderr));
    let a = stdout.find("a.example.net").expect("a listed");
    let c = stdout.find("c.example.net").expect("c listed");
    assert!(a < c, "preference 10 comes first: {stdout}");
    assert!(stdout.contains("127.0.0.10"), "{stdout}");
    assert!(stdout.contains("MX records"), "{stdout}");

    let output = mxsend(
        &["mx", "--nameserver", &nameserver, "user@implicit.test"],
        b"",
    )
    .await;
    assert_eq!(status(&output), 0);
    assert!(
        text(&output.stdout).contains("implicit MX"),
        "{}",
        text(&output.stdout)
    );

    let output = mxsend(
        &["mx", "--json", "--nameserver", &nameserver, "example.net"],
        b"",
    )
    .await;
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON plan");
    assert_eq!(plan["source"], "mx");
    assert_eq!(plan["hosts"][0]["name"], "a.example.net");

    let failures = [
        ("null.test", 69, "null MX"),
        ("missing.test", 68, "does not exist"),
        ("broken.test", 75, "temporarily"),
    ];
    for (domain, expected, needle) in failures {
        let output = mxsend(
            &[
                "mx",
                "--nameserver",
                &nameserver,
                "--dns-timeout",
                "2",
                domain,
            ],
            b"",
        )
        .await;
        let stderr = text(&output.stderr);
        assert_eq!(status(&output), expected, "{domain}: {stderr}");
        assert!(stderr.contains(needle), "{domain}: {stderr}");
    }
}

#[tokio::test]
async fn usage_error_exits_64() {
    let output = mxsend(&["send", "--port", "not-a-number"], b"").await;
    assert_eq!(status(&output), 64);
    let output = mxsend(&["--help"], b"").await;
    assert_eq!(status(&output), 0);
    assert!(text(&output.stdout).contains("send"));
}
