//! Drives the scripted SMTP server with a raw TCP client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mxsend_testkit::smtp::{Action, Point, Script, SmtpServer, StoredMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(5);

const EHLO_REPLY: &str = "250-testkit.invalid\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
250-ENHANCEDSTATUSCODES\r\n250-SIZE 10485760\r\n250 SMTPUTF8\r\n";

/// A minimal SMTP client that reads whole replies and keeps what it sent.
struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
    sent: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client {
            stream,
            pending: Vec::new(),
            sent: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sent.extend_from_slice(bytes);
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one complete reply, multi-line replies included.
    async fn reply(&mut self) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = complete_reply_len(&self.pending) {
                    let reply: Vec<u8> = self.pending.drain(..end).collect();
                    return String::from_utf8(reply).unwrap();
                }
                let mut chunk = [0; 4096];
                let read = self.stream.read(&mut chunk).await.unwrap();
                assert!(read > 0, "connection closed before a complete reply");
                self.pending.extend_from_slice(&chunk[..read]);
            }
        })
        .await
        .expect("timed out waiting for a reply")
    }

    async fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Reads until the server closes the connection and returns the bytes.
    async fn read_to_close(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.pending);
        tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest))
            .await
            .expect("timed out waiting for the server to close")
            .unwrap();
        rest
    }
}

/// Returns the length of the first complete reply in `bytes`, if any.
fn complete_reply_len(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(offset) = bytes[start..].windows(2).position(|w| w == b"\r\n") {
        let line = &bytes[start..start + offset];
        start += offset + 2;
        if line.get(3) != Some(&b'-') {
            return Some(start);
        }
    }
    None
}

/// Connects and reads the greeting, asserting that it is the default one.
async fn greeted_client(server: &SmtpServer) -> Client {
    let mut client = Client::connect(server.addr()).await;
    assert_eq!(client.reply().await, "220 testkit.invalid ESMTP\r\n");
    client
}

#[tokio::test]
async fn default_transaction_stores_exact_bytes() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let mut client = greeted_client(&server).await;

    assert_eq!(client.command("EHLO client.test").await, EHLO_REPLY);
    assert_eq!(
        client
            .command("MAIL FROM:<sender@example.test> SIZE=60 BODY=8BITMIME")
            .await,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        client.command("RCPT TO:<one@example.test>").await,
        "250 2.1.5 Ok\r\n"
    );
    assert_eq!(
        client
            .command("RCPT TO:<two@example.test> NOTIFY=NEVER")
            .await,
        "250 2.1.5 Ok\r\n"
    );
    assert_eq!(
        client.command("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    client
        .send(b"Subject: hi\r\n\r\n..leading dot\r\nbare lf\nlast\r\n.\r\n")
        .await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n");
    assert_eq!(client.command("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(client.read_to_close().await.is_empty());
    assert!(server.wait_for_sessions(1, WAIT).await);

    let expected = StoredMessage {
        mail_from: "sender@example.test".to_owned(),
        rcpt_to: vec!["one@example.test".to_owned(), "two@example.test".to_owned()],
        mail_params: "SIZE=60 BODY=8BITMIME".to_owned(),
        data: b"Subject: hi\r\n\r\n.leading dot\r\nbare lf\nlast\r\n".to_vec(),
    };
    assert_eq!(server.messages(), vec![expected]);

    let sessions = server.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].received, client.sent);
    assert_eq!(
        sessions[0].commands,
        vec![
            "EHLO client.test",
            "MAIL FROM:<sender@example.test> SIZE=60 BODY=8BITMIME",
            "RCPT TO:<one@example.test>",
            "RCPT TO:<two@example.test> NOTIFY=NEVER",
            "DATA",
            "QUIT",
        ]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn pipelined_commands_reply_in_order() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let mut client = greeted_client(&server).await;
    assert_eq!(client.command("EHLO client.test").await, EHLO_REPLY);

    client
        .send(
            b"MAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:bad\r\n\
RCPT TO:<b@example.test>\r\nNOOP\r\nDATA\r\n",
        )
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Ok\r\n");
    assert_eq!(client.reply().await, "250 2.1.5 Ok\r\n");
    // A path without brackets is tolerated, as many servers do.
    assert_eq!(client.reply().await, "250 2.1.5 Ok\r\n");
    assert_eq!(client.reply().await, "250 2.1.5 Ok\r\n");
    assert_eq!(client.reply().await, "250 2.0.0 Ok\r\n");
    assert_eq!(
        client.reply().await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );

    // Content, final dot and QUIT in one write as well.
    client.send(b"body\r\n.\r\nQUIT\r\n").await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n");
    assert_eq!(client.reply().await, "221 2.0.0 Bye\r\n");

    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].mail_from, "");
    assert_eq!(
        messages[0].rcpt_to,
        vec!["a@example.test", "bad", "b@example.test"]
    );
    assert_eq!(messages[0].data, b"body\r\n");
}

#[tokio::test]
async fn containing_rule_rejects_one_rcpt() {
    let script = Script::new().on(
        Point::Rcpt.containing("<BOB@"),
        Action::reply("550 5.1.1 <bob@example.test>: Recipient address rejected"),
    );
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;

    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    assert_eq!(
        client.command("RCPT TO:<alice@example.test>").await,
        "250 2.1.5 Ok\r\n"
    );
    assert_eq!(
        client.command("RCPT TO:<bob@example.test>").await,
        "550 5.1.1 <bob@example.test>: Recipient address rejected\r\n"
    );
    assert_eq!(
        client.command("RCPT TO:<carol@example.test>").await,
        "250 2.1.5 Ok\r\n"
    );
    client.command("DATA").await;
    client.send(b"x\r\n.\r\n").await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n");

    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].rcpt_to,
        vec!["alice@example.test", "carol@example.test"]
    );
}

#[tokio::test]
async fn reply_in_segments_arrives_split() {
    let pause = Duration::from_millis(100);
    let segments = vec![
        b"25".to_vec(),
        b"0-testkit\r\n25".to_vec(),
        b"0 OK\r\n".to_vec(),
    ];
    let script = Script::new().on(Point::Ehlo, Action::ReplyInSegments(segments, pause));
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;

    client.send(b"EHLO client.test\r\n").await;
    let mut received = Vec::new();
    let mut first_read_at = None;
    tokio::time::timeout(WAIT, async {
        while complete_reply_len(&received).is_none() {
            let mut chunk = [0; 4];
            let read = client.stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "connection closed before the reply ended");
            first_read_at.get_or_insert_with(Instant::now);
            received.extend_from_slice(&chunk[..read]);
        }
    })
    .await
    .unwrap();

    assert_eq!(received, b"250-testkit\r\n250 OK\r\n");
    let spread = first_read_at.unwrap().elapsed();
    assert!(
        spread >= pause * 2 - Duration::from_millis(20),
        "segments arrived within {spread:?}"
    );

    // The segmented 250 counts as a successful EHLO.
    assert_eq!(
        client.command("MAIL FROM:<s@example.test>").await,
        "250 2.1.0 Ok\r\n"
    );
}

#[tokio::test]
async fn close_action_drops_connection() {
    let script = Script::new().on(Point::Mail, Action::Close);
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;

    client.send(b"MAIL FROM:<s@example.test>\r\n").await;
    assert!(client.read_to_close().await.is_empty());
    assert!(server.wait_for_sessions(1, WAIT).await);
    assert_eq!(
        server.sessions()[0].commands,
        vec!["EHLO client.test", "MAIL FROM:<s@example.test>"]
    );
}

#[tokio::test]
async fn close_after_pipelined_replies_sends_them_first() {
    let script = Script::new().on(Point::Data, Action::Close);
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;

    client
        .send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n")
        .await;
    assert_eq!(
        client.read_to_close().await,
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
    );
}

#[tokio::test]
async fn hang_action_keeps_connection_silent() {
    let script = Script::new().on(Point::Data, Action::Hang);
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    client.command("RCPT TO:<r@example.test>").await;

    client.send(b"DATA\r\n").await;
    let mut chunk = [0; 16];
    let silent =
        tokio::time::timeout(Duration::from_millis(300), client.stream.read(&mut chunk)).await;
    assert!(silent.is_err(), "server replied while hanging: {silent:?}");

    // The connection is still open and input is still recorded.
    client.send(b"NOOP\r\n").await;
    let recorded = tokio::time::timeout(WAIT, async {
        while !server.sessions()[0].received.ends_with(b"NOOP\r\n") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        recorded.is_ok(),
        "bytes sent while hanging were not recorded"
    );
    assert!(!server.wait_for_sessions(1, Duration::from_millis(50)).await);

    server.shutdown().await;
    assert!(client.read_to_close().await.is_empty());
}

#[tokio::test]
async fn reply_421_closes_connection() {
    let script = Script::new().on(Point::Mail, Action::reply("421 4.3.2 Shutting down"));
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;

    client.send(b"MAIL FROM:<s@example.test>\r\n").await;
    assert_eq!(client.read_to_close().await, b"421 4.3.2 Shutting down\r\n");
}

#[tokio::test]
async fn rejected_greeting_allows_only_quit() {
    let script = Script::new().on(Point::Connect, Action::reply("554 5.7.1 No service"));
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = Client::connect(server.addr()).await;

    assert_eq!(client.reply().await, "554 5.7.1 No service\r\n");
    assert!(client.command("EHLO client.test").await.starts_with("503 "));
    assert!(
        client
            .command("MAIL FROM:<s@example.test>")
            .await
            .starts_with("503 ")
    );
    assert_eq!(client.command("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(client.read_to_close().await.is_empty());
}

#[tokio::test]
async fn session_qualifier_and_records() {
    let script = Script::new().on(
        Point::Connect.session(2),
        Action::reply("421 4.7.0 Try again later"),
    );
    let server = SmtpServer::start(script).await.unwrap();

    let mut first = greeted_client(&server).await;
    first.command("HELO one.test").await;

    let mut second = Client::connect(server.addr()).await;
    assert_eq!(
        second.read_to_close().await,
        b"421 4.7.0 Try again later\r\n"
    );

    // The first connection is still open and counted.
    let sessions = server.sessions();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].commands, vec!["HELO one.test"]);
    assert!(sessions[1].received.is_empty());
    assert!(server.wait_for_sessions(1, WAIT).await);
    assert!(!server.wait_for_sessions(2, Duration::from_millis(50)).await);

    let mut third = greeted_client(&server).await;
    assert_eq!(third.command("QUIT").await, "221 2.0.0 Bye\r\n");
    assert_eq!(first.command("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(server.wait_for_sessions(3, WAIT).await);
    assert_eq!(server.sessions().len(), 3);
}

#[tokio::test]
async fn data_end_rejection_is_not_stored() {
    let script = Script::new().on(
        Point::DataEnd.nth(1),
        Action::reply("451 4.3.0 Temporary failure"),
    );
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;

    for (body, expected) in [
        ("first\r\n.\r\n", "451 4.3.0 Temporary failure\r\n"),
        ("second\r\n.\r\n", "250 2.0.0 Ok: queued\r\n"),
    ] {
        client.command("MAIL FROM:<s@example.test>").await;
        client.command("RCPT TO:<r@example.test>").await;
        client.command("DATA").await;
        client.send(body.as_bytes()).await;
        assert_eq!(client.reply().await, expected);
    }

    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].data, b"second\r\n");
}

#[tokio::test]
async fn data_end_containing_matches_content() {
    let script = Script::new().on(
        Point::DataEnd.containing("x-spam: yes"),
        Action::reply("554 5.7.1 Spam"),
    );
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    client.command("RCPT TO:<r@example.test>").await;
    client.command("DATA").await;
    client.send(b"X-Spam: YES\r\n\r\nbuy\r\n.\r\n").await;
    assert_eq!(client.reply().await, "554 5.7.1 Spam\r\n");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn body_rule_replies_mid_content_and_keeps_reading() {
    let script = Script::new().on(
        Point::Body.containing("second"),
        Action::reply("250 2.0.0 early"),
    );
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    client.command("RCPT TO:<r@example.test>").await;
    client.command("DATA").await;
    client.send(b"first\r\nsecond\r\n").await;
    assert_eq!(client.reply().await, "250 2.0.0 early\r\n");
    client.send(b"third\r\n.\r\n").await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n");
    assert_eq!(server.messages()[0].data, b"first\r\nsecond\r\nthird\r\n");
}

#[tokio::test]
async fn stall_action_stops_reading() {
    let script = Script::new().on(Point::Body.containing("stop"), Action::Stall);
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    client.command("RCPT TO:<r@example.test>").await;
    client.command("DATA").await;
    client.send(b"stop here\r\n").await;
    // Far more than the socket buffers hold: the writes must block.
    let filler = vec![b'x'; 1024 * 1024];
    let blocked = tokio::time::timeout(Duration::from_secs(2), async {
        for _ in 0..64 {
            client.stream.write_all(&filler).await.unwrap();
        }
    })
    .await
    .is_err();
    assert!(blocked, "64 MiB went into a stalled session");
}

#[tokio::test]
async fn bdat_chunks_stored_octet_for_octet() {
    let script = Script::new().extensions(&["PIPELINING", "CHUNKING", "BINARYMIME"]);
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    client
        .command("MAIL FROM:<s@example.test> BODY=BINARYMIME")
        .await;
    client.command("RCPT TO:<r@example.test>").await;
    // A chunk that looks like commands and an end of data: only the size
    // counts.
    client.send(b"BDAT 12\r\nQUIT\r\n.\r\n\0\n\r").await;
    assert_eq!(client.reply().await, "250 2.0.0 12 octets received\r\n");
    client.send(b"BDAT 3 LAST\r\nend").await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n");
    let messages = server.messages();
    assert_eq!(messages[0].data, b"QUIT\r\n.\r\n\0\n\rend");
    assert_eq!(messages[0].mail_params, "BODY=BINARYMIME");
}

#[tokio::test]
async fn bdat_refused_without_chunking_and_octets_skipped() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    client.command("RCPT TO:<r@example.test>").await;
    client.send(b"BDAT 6 LAST\r\nRSET\r\n").await;
    assert_eq!(
        client.reply().await,
        "502 5.5.1 Error: BDAT not offered\r\n"
    );
    assert_eq!(client.command("NOOP").await, "250 2.0.0 Ok\r\n");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn bdat_rule_refuses_a_chunk() {
    let script = Script::new()
        .extensions(&["CHUNKING"])
        .on(Point::Bdat.nth(1), Action::reply("452 4.3.1 out of room"));
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    client.command("RCPT TO:<r@example.test>").await;
    client.send(b"BDAT 2\r\nab").await;
    assert_eq!(client.reply().await, "452 4.3.1 out of room\r\n");
    client.send(b"BDAT 2 LAST\r\ncd").await;
    assert_eq!(
        client.reply().await,
        "503 5.5.1 Error: need RCPT command\r\n"
    );
    assert!(server.messages().is_empty());
}

/// Opens a transaction on a server that offers CHUNKING and sends a first
/// chunk of 3 octets.
async fn client_after_first_chunk(server: &SmtpServer) -> Client {
    let mut client = greeted_client(server).await;
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    client.command("RCPT TO:<r@example.test>").await;
    client.send(b"BDAT 3\r\nabc").await;
    assert_eq!(client.reply().await, "250 2.0.0 3 octets received\r\n");
    client
}

#[tokio::test]
async fn bdat_size_over_maximum_closes() {
    let server = SmtpServer::start(Script::new().extensions(&["CHUNKING"]))
        .await
        .unwrap();
    let mut client = client_after_first_chunk(&server).await;
    client
        .send(format!("BDAT {}\r\n", u64::MAX).as_bytes())
        .await;
    let reply = client.reply().await;
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, client.stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection stays open");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn bdat_refused_for_size_ends_transaction() {
    let server = SmtpServer::start(Script::new().extensions(&["CHUNKING"]))
        .await
        .unwrap();
    let mut client = client_after_first_chunk(&server).await;
    // With the 3 octets taken, this chunk passes the 64 MiB maximum.
    let size = 64 * 1024 * 1024 - 2;
    client.send(format!("BDAT {size}\r\n").as_bytes()).await;
    let block = vec![b'q'; 1024 * 1024];
    let mut left = size;
    while left > 0 {
        let part = left.min(block.len());
        client.stream.write_all(&block[..part]).await.unwrap();
        left -= part;
    }
    let reply = client.reply().await;
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    client.send(b"BDAT 3 LAST\r\nxyz").await;
    let reply = client.reply().await;
    assert!(reply.starts_with("503 "), "{reply}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn mail_during_chunks_is_nested() {
    let server = SmtpServer::start(Script::new().extensions(&["CHUNKING"]))
        .await
        .unwrap();
    let mut client = client_after_first_chunk(&server).await;
    let reply = client.command("MAIL FROM:<other@example.test>").await;
    assert_eq!(reply, "503 5.5.1 Error: nested MAIL command\r\n");
    client.send(b"BDAT 3 LAST\r\nxyz").await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n");
    let messages = server.messages();
    assert_eq!(messages[0].mail_from, "s@example.test");
    assert_eq!(messages[0].data, b"abcxyz");
}

#[tokio::test]
async fn data_reply_without_354_skips_content() {
    let script = Script::new().on(Point::Data, Action::reply("554 5.5.1 No valid recipients"));
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    client.command("RCPT TO:<r@example.test>").await;

    assert_eq!(
        client.command("DATA").await,
        "554 5.5.1 No valid recipients\r\n"
    );
    // The next line is a command again.
    assert_eq!(client.command("RSET").await, "250 2.0.0 Ok\r\n");
}

#[tokio::test]
async fn end_of_data_needs_crlf_dot_crlf() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<s@example.test>").await;
    client.command("RCPT TO:<r@example.test>").await;
    client.command("DATA").await;

    // Neither ".\n" nor a ".\r\n" after a bare LF ends the content.
    client.send(b"a\r\n.\n.\r\nb\r\n.\r\n").await;
    assert_eq!(client.reply().await, "250 2.0.0 Ok: queued\r\n");
    assert_eq!(server.messages()[0].data, b"a\r\n\n\r\nb\r\n");
}

#[tokio::test]
async fn delay_then_reply() {
    let delay = Duration::from_millis(200);
    let script = Script::new().on(Point::Noop, Action::delay(delay, Action::reply("250 late")));
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;

    let started = Instant::now();
    assert_eq!(client.command("NOOP").await, "250 late\r\n");
    assert!(started.elapsed() >= delay);
}

#[tokio::test]
async fn raw_bytes_sent_unchanged() {
    let script = Script::new().on(Point::Connect, Action::Raw(b"220 bare lf\n".to_vec()));
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = Client::connect(server.addr()).await;

    let mut chunk = [0; 64];
    let read = tokio::time::timeout(WAIT, client.stream.read(&mut chunk))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&chunk[..read], b"220 bare lf\n");
    // A 220 in raw bytes still counts as a normal greeting.
    assert_eq!(client.command("EHLO client.test").await, EHLO_REPLY);
}

#[tokio::test]
async fn multiline_reply_text_gets_crlf() {
    let script = Script::new().on(Point::Ehlo, Action::reply("250-first\n250 second"));
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    assert_eq!(
        client.command("EHLO c.test").await,
        "250-first\r\n250 second\r\n"
    );
}

#[tokio::test]
async fn extensions_replace_ehlo_keywords() {
    let server = SmtpServer::start(Script::new().extensions(&["SIZE 1000"]))
        .await
        .unwrap();
    let mut client = greeted_client(&server).await;
    assert_eq!(
        client.command("EHLO client.test").await,
        "250-testkit.invalid\r\n250 SIZE 1000\r\n"
    );

    let server = SmtpServer::start(Script::new().extensions(&[]))
        .await
        .unwrap();
    let mut client = greeted_client(&server).await;
    assert_eq!(
        client.command("EHLO client.test").await,
        "250 testkit.invalid\r\n"
    );
    assert_eq!(
        client.command("HELO client.test").await,
        "250 testkit.invalid\r\n"
    );
}

#[tokio::test]
async fn default_replies_enforce_sequence() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let mut client = greeted_client(&server).await;

    assert!(
        client
            .command("MAIL FROM:<s@example.test>")
            .await
            .starts_with("503 ")
    );
    assert_eq!(
        client.command("VRFY someone").await,
        "500 5.5.2 Error: command not recognized\r\n"
    );
    assert!(client.command("STARTTLS").await.starts_with("502 "));
    client.command("EHLO client.test").await;
    assert!(
        client
            .command("RCPT TO:<r@example.test>")
            .await
            .starts_with("503 ")
    );
    assert!(client.command("DATA").await.starts_with("503 "));
    assert!(
        client
            .command("MAIL FROM:s@example.test>")
            .await
            .starts_with("250 ")
    );
    assert!(
        client
            .command("MAIL FROM:<s@example.test>")
            .await
            .starts_with("503 ")
    );
    assert!(client.command("DATA").await.starts_with("503 "));
    assert!(client.command("MAIL").await.starts_with("503 "));
    assert_eq!(client.command("RSET").await, "250 2.0.0 Ok\r\n");
    assert!(
        client
            .command("MAIL TO:<s@example.test>")
            .await
            .starts_with("501 ")
    );
}

#[tokio::test]
async fn starttls_rule_answers_verb() {
    let script = Script::new().on(
        Point::StartTls,
        Action::reply("454 4.7.0 TLS not available"),
    );
    let server = SmtpServer::start(script).await.unwrap();
    let mut client = greeted_client(&server).await;
    client.command("EHLO client.test").await;
    assert_eq!(
        client.command("STARTTLS").await,
        "454 4.7.0 TLS not available\r\n"
    );
}

#[tokio::test]
async fn overlong_line_is_rejected() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let mut client = greeted_client(&server).await;

    // One byte over the 64 KiB limit, so the server has read every byte
    // when it closes and the close is a FIN, not a reset.
    let line = vec![b'a'; 64 * 1024 + 1];
    client.stream.write_all(&line).await.unwrap();
    let rest = client.read_to_close().await;
    assert!(
        rest.starts_with(b"500 "),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn ipv6_loopback_listener() {
    let addr: SocketAddr = "[::1]:0".parse().unwrap();
    let server = SmtpServer::start_on(addr, Script::new()).await.unwrap();
    assert!(server.addr().is_ipv6());
    let mut client = greeted_client(&server).await;
    assert_eq!(client.command("QUIT").await, "221 2.0.0 Bye\r\n");
}

#[tokio::test]
async fn non_loopback_address_is_rejected() {
    // 192.0.2.1 is TEST-NET-1 (RFC 5737). The check runs before any bind.
    let addr: SocketAddr = "192.0.2.1:2525".parse().unwrap();
    let error = SmtpServer::start_on(addr, Script::new()).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn drop_closes_open_sessions() {
    let server = SmtpServer::start(Script::new()).await.unwrap();
    let mut client = greeted_client(&server).await;
    drop(server);
    assert!(client.read_to_close().await.is_empty());
}
