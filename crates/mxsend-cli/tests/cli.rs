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

    let nameserver = dns.addr().to_string();
    let output = mxsend(
        // The relay default is TLS verify, and this server has no TLS. The
        // relay's port is in --relay, so --port is not given.
        &[
            "send",
            "--nameserver",
            &nameserver,
            "--relay",
            &relay,
            "--tls",
            "none",
            "--to",
            "someone@unknown-domain.test",
        ],
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

/// The address that the `--own-address` tests declare as this host's.
/// Nothing listens on it.
const OWN_ADDRESS: &str = "127.0.0.2";

/// Starts a DNS zone where `own.test` has three exchangers:
/// `primary.own.test` (preference 10) and `backup.own.test` (30) on
/// 127.0.0.1, where the SMTP server listens, and `self.own.test` (20) on
/// [`OWN_ADDRESS`]. `plain.test` has only an A record.
async fn start_own_host_dns() -> DnsServer {
    let zone = Zone::new()
        .mx("own.test", 10, "primary.own.test")
        .mx("own.test", 20, "self.own.test")
        .mx("own.test", 30, "backup.own.test")
        .a("primary.own.test", Ipv4Addr::LOCALHOST)
        .a("self.own.test", Ipv4Addr::new(127, 0, 0, 2))
        .a("backup.own.test", Ipv4Addr::LOCALHOST)
        .a("plain.test", Ipv4Addr::LOCALHOST)
        .mx("gone.test", 5, "missing.gone.test")
        .mx("gone.test", 10, "self.own.test");
    DnsServer::start(zone).await.expect("start DNS server")
}

fn attempted_hosts(report: &serde_json::Value) -> Vec<String> {
    report["attempts"]
        .as_array()
        .expect("attempts in the JSON report")
        .iter()
        .map(|attempt| attempt["host"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// When this host is the only exchanger, sending would loop the message
/// back here, so it fails for good (RFC 5321 section 5.1) with 69
/// (EX_UNAVAILABLE), although a server listens on the exchanger's address.
#[tokio::test]
async fn send_own_address_only_exchanger_fails() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();

    let output = send(
        &["--own-address", "127.0.0.1", "--to", "bob@example.net"],
        &dns,
        &smtp,
        MESSAGE.as_bytes(),
    )
    .await;

    let stdout = text(&output.stdout);
    assert_eq!(
        status(&output),
        69,
        "stdout: {stdout}\nstderr: {}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("bob@example.net: failed"),
        "the recipient fails: {stdout}"
    );
    assert!(
        stdout.contains("mail for example.net loops back to this host"),
        "the reason names the loop: {stdout}"
    );
    assert!(
        stdout.contains("mx.example.net (preference 10)"),
        "the reason names the exchanger: {stdout}"
    );
    assert!(smtp.sessions().is_empty(), "no exchanger may be contacted");
}

/// An exchanger preferred to this host gets the message, and only that one
/// is tried.
#[tokio::test]
async fn send_own_address_delivers_to_preferred() {
    let dns = start_own_host_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();

    let output = send(
        &[
            "--json",
            "--own-address",
            OWN_ADDRESS,
            "--to",
            "bob@own.test",
        ],
        &dns,
        &smtp,
        MESSAGE.as_bytes(),
    )
    .await;

    assert_eq!(status(&output), 0, "stderr: {}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let recipient = &report["recipients"][0];
    assert_eq!(recipient["outcome"], "delivered");
    assert_eq!(recipient["host"], "primary.own.test");
    assert_eq!(attempted_hosts(&report), ["primary.own.test"]);
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(smtp.messages()[0].rcpt_to, ["bob@own.test"]);
}

/// When the exchanger preferred to this host defers, the message waits
/// (75) instead of going to this host or to a less preferred backup. The
/// same run without `--own-address` reaches the backup, which shows that
/// the option is what keeps it away.
#[tokio::test]
async fn send_own_address_skips_less_preferred() {
    let dns = start_own_host_dns().await;
    let busy_primary =
        || Script::new().on(Point::Connect.session(1), Action::reply("421 4.3.2 busy"));
    let smtp = SmtpServer::start(busy_primary()).await.unwrap();

    let output = send(
        &[
            "--json",
            "--own-address",
            OWN_ADDRESS,
            "--to",
            "bob@own.test",
        ],
        &dns,
        &smtp,
        MESSAGE.as_bytes(),
    )
    .await;

    assert_eq!(status(&output), 75, "stderr: {}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["recipients"][0]["outcome"], "deferred");
    assert_eq!(attempted_hosts(&report), ["primary.own.test"]);
    assert_eq!(smtp.sessions().len(), 1, "only the primary is contacted");
    assert!(smtp.messages().is_empty());

    let control = SmtpServer::start(busy_primary()).await.unwrap();
    let output = send(
        &["--json", "--to", "bob@own.test"],
        &dns,
        &control,
        MESSAGE.as_bytes(),
    )
    .await;

    assert_eq!(status(&output), 0, "stderr: {}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["recipients"][0]["host"], "backup.own.test");
    assert_eq!(
        attempted_hosts(&report),
        ["primary.own.test", "self.own.test", "backup.own.test"]
    );
    assert_eq!(control.messages().len(), 1);
}

/// `mx --own-address` marks this host and every exchanger not preferred to
/// it as dropped, in text and JSON, and exits with 69 when nothing is left.
/// Without the option, the output is the plain list.
#[tokio::test]
async fn mx_own_address_marks_dropped() {
    let dns = start_own_host_dns().await;
    let nameserver = dns.addr().to_string();
    let mx = |extra: &[&str]| {
        let mut args = vec!["mx", "--nameserver", nameserver.as_str()];
        args.extend_from_slice(extra);
        args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mxsend(&args, b"").await
    };

    let output = run(mx(&["own.test"])).await;
    assert_eq!(status(&output), 0, "{}", text(&output.stderr));
    let expected = [
        "own.test: MX records",
        " 1. primary.own.test (preference 10)",
        "      127.0.0.1",
        " 2. self.own.test (preference 20)",
        "      127.0.0.2",
        " 3. backup.own.test (preference 30)",
        "      127.0.0.1",
    ];
    assert_eq!(text(&output.stdout).lines().collect::<Vec<_>>(), expected);

    let output = run(mx(&[
        "--own-address",
        "2001:db8::1",
        "--own-address",
        OWN_ADDRESS,
        "own.test",
    ]))
    .await;
    assert_eq!(status(&output), 0, "{}", text(&output.stderr));
    let expected = [
        "own.test: MX records",
        " 1. primary.own.test (preference 10)",
        "      127.0.0.1",
        " 2. self.own.test (preference 20): dropped, this host",
        "      127.0.0.2 (this host)",
        " 3. backup.own.test (preference 30): dropped, not preferred to this host",
        "      127.0.0.1",
        "this host is self.own.test (preference 20), so delivery uses only the exchangers \
         preferred to it",
    ];
    assert_eq!(text(&output.stdout).lines().collect::<Vec<_>>(), expected);

    // The only exchanger preferred to this host has no address.
    let output = run(mx(&["--own-address", OWN_ADDRESS, "gone.test"])).await;
    assert_eq!(status(&output), 0, "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("no exchanger preferred to it has an address, so delivery would defer"),
        "{stdout}"
    );

    let output = run(mx(&[
        "--json",
        "--own-address",
        OWN_ADDRESS,
        "--own-address",
        OWN_ADDRESS,
        "own.test",
    ]))
    .await;
    assert_eq!(status(&output), 0, "{}", text(&output.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON plan");
    let hosts = plan["hosts"].as_array().expect("hosts");
    let names: Vec<&str> = hosts.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(
        names,
        ["primary.own.test", "self.own.test", "backup.own.test"]
    );
    let this_host: Vec<bool> = hosts
        .iter()
        .filter_map(|h| h["this_host"].as_bool())
        .collect();
    assert_eq!(this_host, [false, true, false]);
    let dropped: Vec<bool> = hosts
        .iter()
        .filter_map(|h| h["dropped"].as_bool())
        .collect();
    assert_eq!(dropped, [false, true, true]);
    assert_eq!(plan["own_addresses"], serde_json::json!([OWN_ADDRESS]));
    assert_eq!(plan["dropped_from_preference"], 20);
    assert_eq!(plan["loops_back"], false);
    assert!(plan.get("error").is_none(), "{plan}");

    let output = run(mx(&["--json", "own.test"])).await;
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON plan");
    assert!(
        plan.get("own_addresses").is_none(),
        "without the option the JSON is the plain plan: {plan}"
    );
    assert!(
        plan["hosts"][0].get("dropped").is_none(),
        "without the option hosts have no marks: {plan}"
    );

    // 127.0.0.1 is the primary's address, so this host is the most
    // preferred exchanger.
    let output = run(mx(&["--own-address", "127.0.0.1", "own.test"])).await;
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(status(&output), 69, "{stderr}");
    assert!(
        stdout.contains("1. primary.own.test (preference 10): dropped, this host"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3. backup.own.test (preference 30): dropped, this host"),
        "{stdout}"
    );
    assert!(
        stderr.contains("mail for own.test loops back to this host"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");

    let output = run(mx(&["--json", "--own-address", "127.0.0.1", "own.test"])).await;
    assert_eq!(status(&output), 69);
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON plan");
    assert_eq!(plan["loops_back"], true);
    assert_eq!(plan["dropped_from_preference"], 10);
    let error = plan["error"].as_str().expect("error in the JSON plan");
    assert!(error.contains("loops back to this host"), "{error}");

    // Delivery drops exchangers from MX records only, so an implicit MX on
    // this host's address stays.
    let output = run(mx(&["--own-address", "127.0.0.1", "plain.test"])).await;
    let stdout = text(&output.stdout);
    assert_eq!(status(&output), 0, "{}", text(&output.stderr));
    assert!(stdout.contains("127.0.0.1 (this host)"), "{stdout}");
    assert!(!stdout.contains("): dropped"), "{stdout}");
    assert!(
        stdout.contains("only exchangers from MX records are dropped"),
        "{stdout}"
    );
}

/// A value of `--own-address` that is no IP address is a usage error (64)
/// that names the value, before any DNS query or connection.
#[tokio::test]
async fn own_address_invalid_is_usage_error() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();
    let nameserver = dns.addr().to_string();

    let outputs = [
        send(
            &["--own-address", "notanip", "--to", "bob@example.net"],
            &dns,
            &smtp,
            MESSAGE.as_bytes(),
        )
        .await,
        mxsend(
            &[
                "mx",
                "--nameserver",
                &nameserver,
                "--own-address",
                "notanip",
                "example.net",
            ],
            b"",
        )
        .await,
    ];

    for output in outputs {
        let stderr = text(&output.stderr);
        assert_eq!(status(&output), 64, "{stderr}");
        assert!(stderr.contains("'notanip'"), "names the value: {stderr}");
        assert!(
            stderr.contains("--own-address"),
            "names the option: {stderr}"
        );
        assert!(
            stderr.contains("expected an IP address"),
            "says what is expected: {stderr}"
        );
    }
    assert_eq!(dns.query_count(), 0, "no DNS query for bad input");
    assert!(smtp.sessions().is_empty(), "no connection for bad input");
}

/// Builds a binary MIME message: CRLF header section, then a body with a NUL, bare
/// CR and LF, a line that would end DATA and a line of 1,500 octets.
fn binary_message() -> Vec<u8> {
    let mut message = b"From: alice@example.com\r\nTo: bob@example.net\r\n\
MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: binary\r\n\r\n"
        .to_vec();
    message.extend_from_slice(b"\0\x01\xff\nbare lf\rbare cr\r\n.\r\n");
    message.extend(std::iter::repeat_n(b'z', 1500));
    message
}

/// C-EXT-02, RFC 3030 section 3: `--binarymime` sends the message octet
/// for octet with BODY=BINARYMIME in BDAT; the same message without the
/// option is refused for its long line, and a server without BINARYMIME
/// gets nothing.
#[tokio::test]
async fn send_binarymime_sends_octet_for_octet() {
    let dns = start_dns().await;
    let message = binary_message();
    let binary = Script::new().extensions(&["PIPELINING", "8BITMIME", "CHUNKING", "BINARYMIME"]);
    let smtp = SmtpServer::start(binary).await.unwrap();
    let output = send(
        &["--binarymime", "--to", "bob@example.net"],
        &dns,
        &smtp,
        &message,
    )
    .await;
    assert_eq!(status(&output), 0, "{}", text(&output.stderr));
    let stored = smtp.messages();
    assert!(stored[0].data == message, "the stored message differs");
    assert!(stored[0].mail_params.contains("BODY=BINARYMIME"));

    assert!(
        !text(&output.stderr).contains("warning"),
        "{}",
        text(&output.stderr)
    );

    let output = send(&["--to", "bob@example.net"], &dns, &smtp, &message).await;
    assert_eq!(status(&output), 65);
    assert!(
        text(&output.stderr).contains("declares Content-Transfer-Encoding: binary"),
        "the user is warned: {}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains("--binarymime"),
        "the error points at the option: {}",
        text(&output.stderr)
    );

    let plain = SmtpServer::start(Script::new().extensions(&["8BITMIME", "CHUNKING"]))
        .await
        .unwrap();
    let output = send(
        &["--binarymime", "--to", "bob@example.net"],
        &dns,
        &plain,
        &message,
    )
    .await;
    let stdout = text(&output.stdout);
    assert_eq!(status(&output), 69, "{stdout}");
    assert!(stdout.contains("5.6.3"), "{stdout}");
    assert!(plain.messages().is_empty());
}

/// Nothing is converted under `--binarymime`, so a header section with bare
/// LF line breaks is refused before any connection.
#[tokio::test]
async fn send_binarymime_needs_crlf_header() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();
    let output = send(
        &["--binarymime", "--to", "bob@example.net"],
        &dns,
        &smtp,
        MESSAGE.as_bytes(),
    )
    .await;
    assert_eq!(status(&output), 65);
    assert!(
        text(&output.stderr).contains("line 1 of its header section ends without CRLF"),
        "{}",
        text(&output.stderr)
    );
    assert!(smtp.sessions().is_empty());

    let output = send(
        &["--binarymime", "--no-chunking", "--to", "bob@example.net"],
        &dns,
        &smtp,
        MESSAGE.as_bytes(),
    )
    .await;
    assert_eq!(status(&output), 64, "{}", text(&output.stderr));
}

/// Options that once did something else silently are usage errors: a
/// zero timeout (once taken as 1 s), --port with --relay (once ignored in
/// favour of port 25), and port 0.
#[tokio::test]
async fn silent_option_mistakes_are_usage_errors() {
    let cases: [&[&str]; 5] = [
        &["send", "--reply-timeout", "0", "--to", "bob@example.net"],
        &[
            "send",
            "--connect-timeout",
            "1.5",
            "--to",
            "bob@example.net",
        ],
        &[
            "send",
            "--relay",
            "127.0.0.1",
            "--port",
            "2525",
            "--to",
            "bob@example.net",
        ],
        &["send", "--port", "0", "--to", "bob@example.net"],
        &["mx", "--dns-timeout", "0", "example.net"],
    ];
    for args in cases {
        let output = mxsend(args, MESSAGE.as_bytes()).await;
        assert_eq!(status(&output), 64, "{args:?}: {}", text(&output.stderr));
        let stderr = text(&output.stderr);
        let named = args
            .iter()
            .any(|arg| arg.starts_with("--") && stderr.contains(arg));
        assert!(named, "{args:?}: the error names no option: {stderr}");
    }
}

/// When no exchanger of a domain has an address, `send` exits 68 as `mx`
/// does: sendmail's "host unknown".
#[tokio::test]
async fn exchangers_without_address_exit_68() {
    let zone = Zone::new().mx("noaddr.test", 10, "missing.noaddr.test");
    let dns = DnsServer::start(zone).await.unwrap();
    let smtp = SmtpServer::start(Script::new()).await.unwrap();
    let output = send(
        &["--to", "bob@noaddr.test"],
        &dns,
        &smtp,
        MESSAGE.as_bytes(),
    )
    .await;
    assert_eq!(status(&output), 68, "{}", text(&output.stdout));
    let nameserver = dns.addr().to_string();
    let output = mxsend(&["mx", "--nameserver", &nameserver, "noaddr.test"], b"").await;
    assert_eq!(status(&output), 68, "{}", text(&output.stderr));
    assert!(smtp.sessions().is_empty());
}

/// A --binarymime message that is all header section must still end its
/// last line with CRLF, since nothing is added on the way.
#[tokio::test]
async fn send_binarymime_header_only_needs_final_crlf() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();
    let output = send(
        &["--binarymime", "--to", "bob@example.net"],
        &dns,
        &smtp,
        b"From: alice@example.com\r\nSubject: x",
    )
    .await;
    assert_eq!(status(&output), 65, "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("line 2 of its header section ends without CRLF"),
        "{}",
        text(&output.stderr)
    );
    assert!(smtp.sessions().is_empty());
}

/// With --json, a message that cannot be sent still gives a JSON document
/// on standard output, with the error and the exit status.
#[tokio::test]
async fn send_json_reports_usage_errors() {
    let dns = start_dns().await;
    let smtp = SmtpServer::start(Script::new()).await.unwrap();
    let output = send(&["--json"], &dns, &smtp, MESSAGE.as_bytes()).await;
    assert_eq!(status(&output), 64);
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("a JSON document on stdout");
    assert_eq!(document["status"], 64);
    let error = document["error"].as_str().unwrap_or_default();
    assert!(error.contains("no recipients"), "{document}");
    assert!(text(&output.stderr).contains("no recipients"));
}
