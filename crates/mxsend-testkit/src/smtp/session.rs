//! One connection to the test SMTP server: reading commands and message
//! content, choosing replies and recording what the client sent.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::command::{self, parse_bdat, parse_path, reply_bytes, reply_code};
use super::script::{Action, Event, Point, Script, TlsMode};
use super::secure::{self, SaslServer, ServerStream};
use super::{Shared, StoredMessage};

/// Host name the server uses in its greeting and EHLO reply.
const HOSTNAME: &str = "testkit.invalid";

/// Maximum length of a command or content line, terminator included.
const MAX_LINE_LENGTH: usize = 64 * 1024;

/// Maximum size of one message's content after dot-unstuffing.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Maximum number of bytes read from one connection.
const MAX_SESSION_BYTES: usize = 128 * 1024 * 1024;

/// Maximum number of command lines handled on one connection.
const MAX_COMMANDS: usize = 10_000;

/// Maximum number of recipients in one transaction. RFC 5321 section
/// 4.5.3.1.8 requires servers to accept at least 100.
const MAX_RECIPIENTS: usize = 1000;

/// Maximum depth of nested [`Action::Delay`] values that are followed.
const MAX_DELAY_NESTING: usize = 32;

/// Time without input after which the server closes the connection. RFC 5321
/// section 4.5.3.2.7 recommends at least 5 minutes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Size of each socket read.
const READ_CHUNK_SIZE: usize = 16 * 1024;

/// Time allowed for a TLS handshake, and for the client's first bytes
/// under [`Action::FailTlsHandshake`].
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

const REPLY_UNKNOWN: &str = "500 5.5.2 Error: command not recognized";
const REPLY_REJECTED: &str = "503 5.5.1 Error: session rejected at greeting, only QUIT is accepted";

/// Next step of a session after the greeting or an input line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
    Hang,
    /// Flush the replies, then neither read nor write again.
    Stall,
    /// A 220 reply to STARTTLS was queued: flush it, then run the handshake.
    StartTls,
    /// Flush the 220, then answer the client's handshake with plain text.
    BreakTls,
}

/// The MAIL and RCPT commands accepted so far in the current transaction.
#[derive(Debug, Default)]
struct Transaction {
    mail_from: String,
    mail_params: String,
    rcpt_to: Vec<String>,
}

/// State of the message content being received after a 354 reply.
#[derive(Debug)]
struct DataPhase {
    transaction: Transaction,
    content: Vec<u8>,
    /// Whether the last line ended with CRLF, so that a following `.` line
    /// forms the CRLF . CRLF end-of-data sequence.
    previous_line_ended_crlf: bool,
}

/// A BDAT chunk whose octets are still arriving (RFC 3030 section 2).
#[derive(Debug)]
struct Chunk {
    /// The BDAT command line.
    command: String,
    remaining: usize,
    last: bool,
    /// The reply when the chunk cannot be taken; its octets are still read.
    refusal: Option<&'static str>,
}

pub(crate) struct Session {
    stream: ServerStream,
    script: Arc<Script>,
    shared: Arc<Shared>,
    /// Index into the shared session records.
    index: usize,
    input: Vec<u8>,
    /// Bytes at the start of `input` that have already been handled.
    consumed: usize,
    /// Replies not yet written. They are written before the next read so
    /// that replies to pipelined commands go out together.
    output: Vec<u8>,
    occurrences: HashMap<Point, usize>,
    received_total: usize,
    command_total: usize,
    greeted: bool,
    /// Whether the greeting was anything but 220, after which only QUIT works.
    rejected: bool,
    transaction: Option<Transaction>,
    data: Option<DataPhase>,
    /// The BDAT chunk being read.
    chunk: Option<Chunk>,
    /// The transaction and content of the BDAT chunks taken so far.
    chunked: Option<DataPhase>,
    /// Message whose final dot is being replied to, stored on a 2xx reply.
    finished_message: Option<StoredMessage>,
    tls_active: bool,
    authenticated: bool,
    /// The SASL exchange in progress after AUTH.
    sasl: Option<SaslServer>,
    /// Declared after `stream`, so the connection is closed before the
    /// session counts as ended.
    _end_guard: EndGuard,
}

/// Counts the session as ended when dropped, which also covers sessions
/// aborted by shutdown.
struct EndGuard(Arc<Shared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.end_session();
    }
}

impl Session {
    pub(crate) fn new(
        stream: TcpStream,
        script: Arc<Script>,
        shared: Arc<Shared>,
        index: usize,
    ) -> Self {
        Self {
            stream: ServerStream::Plain(stream),
            script,
            _end_guard: EndGuard(Arc::clone(&shared)),
            shared,
            index,
            input: Vec::new(),
            consumed: 0,
            output: Vec::new(),
            occurrences: HashMap::new(),
            received_total: 0,
            command_total: 0,
            greeted: false,
            rejected: false,
            transaction: None,
            data: None,
            chunk: None,
            chunked: None,
            finished_message: None,
            tls_active: false,
            authenticated: false,
            sasl: None,
        }
    }

    /// Serves the connection until it is closed, then records its end.
    pub(crate) async fn run(mut self) {
        let number = self.index + 1;
        if let Some(TlsMode::Implicit(_)) = &self.script.tls
            && !self.start_tls().await
        {
            tracing::debug!(
                session = number,
                "test SMTP session: implicit TLS handshake failed"
            );
            return;
        }
        let flow = match self.greet().await {
            Ok(Flow::Continue) => self.serve().await,
            other => other,
        };
        match flow {
            Ok(Flow::Hang) => {
                tracing::debug!(session = number, "test SMTP session hangs");
                if let Err(error) = self.flush().await {
                    tracing::debug!(session = number, %error, "test SMTP session write failed");
                }
                self.hang().await;
            }
            Ok(Flow::Stall) => {
                tracing::debug!(session = number, "test SMTP session stalls");
                if let Err(error) = self.flush().await {
                    tracing::debug!(session = number, %error, "test SMTP session write failed");
                }
                std::future::pending::<()>().await;
            }
            Ok(_) => {
                // The client may already be gone, so write errors only end
                // the session earlier.
                if self.flush().await.is_ok() {
                    let _ = self.stream.shutdown().await;
                }
            }
            Err(error) => {
                tracing::debug!(session = number, %error, "test SMTP session I/O failed");
            }
        }
        tracing::debug!(session = number, "test SMTP session ended");
    }

    async fn greet(&mut self) -> io::Result<Flow> {
        let default = Action::Reply(format!("220 {HOSTNAME} ESMTP"));
        let action = self.scripted_action(Point::Connect, b"").unwrap_or(default);
        self.perform(Some(Point::Connect), action, "").await
    }

    async fn serve(&mut self) -> io::Result<Flow> {
        // Each pass reads at least one byte or returns, and `read_more`
        // stops after `MAX_SESSION_BYTES`, so the loop is bounded.
        loop {
            loop {
                let flow = if self.chunk.is_some() {
                    if !self.take_chunk_octets() {
                        break;
                    }
                    self.end_chunk().await?
                } else {
                    let Some(line) = self.next_line() else {
                        break;
                    };
                    self.handle_line(&line).await?
                };
                match flow {
                    Flow::Continue => {}
                    Flow::StartTls => {
                        if !self.start_tls().await {
                            return Ok(Flow::Close);
                        }
                    }
                    Flow::BreakTls => {
                        self.break_tls().await?;
                        return Ok(Flow::Close);
                    }
                    Flow::Close | Flow::Hang | Flow::Stall => return Ok(flow),
                }
            }
            self.input.drain(..self.consumed);
            self.consumed = 0;
            if self.input.len() > MAX_LINE_LENGTH {
                self.queue_reply("500 5.5.2 Error: line too long");
                return Ok(Flow::Close);
            }

            self.flush().await?;
            if !self.read_more().await? {
                return Ok(Flow::Close);
            }
        }
    }

    /// Reads more input. Returns `false` when the session must end: the
    /// client closed the connection, was idle too long or sent too much.
    async fn read_more(&mut self) -> io::Result<bool> {
        if self.received_total >= MAX_SESSION_BYTES {
            self.queue_reply("421 4.7.0 testkit.invalid Error: too much data in one session");
            return Ok(false);
        }
        let mut chunk = vec![0; READ_CHUNK_SIZE];
        let read = match tokio::time::timeout(IDLE_TIMEOUT, self.stream.read(&mut chunk)).await {
            Ok(read) => read?,
            Err(_elapsed) => {
                self.queue_reply("421 4.4.2 testkit.invalid Error: timeout exceeded");
                return Ok(false);
            }
        };
        if read == 0 {
            return Ok(false);
        }
        self.record_received(&chunk[..read]);
        self.input.extend_from_slice(&chunk[..read]);
        Ok(true)
    }

    fn record_received(&mut self, bytes: &[u8]) {
        self.received_total += bytes.len();
        self.shared.record_received(self.index, bytes);
    }

    /// Takes the next complete line, terminator included, from the input.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let unread = &self.input[self.consumed..];
        let end = unread.iter().position(|&byte| byte == b'\n')? + 1;
        let line = unread[..end].to_vec();
        self.consumed += end;
        Some(line)
    }

    /// Moves input octets into the current BDAT chunk. Returns whether the
    /// chunk is complete.
    fn take_chunk_octets(&mut self) -> bool {
        let Some(chunk) = self.chunk.as_mut() else {
            return false;
        };
        let unread = &self.input[self.consumed..];
        let taken = unread.len().min(chunk.remaining);
        if chunk.refusal.is_none()
            && let Some(phase) = self.chunked.as_mut()
        {
            phase.content.extend_from_slice(&unread[..taken]);
        }
        chunk.remaining -= taken;
        self.consumed += taken;
        chunk.remaining == 0
    }

    /// Starts reading the octets of a BDAT chunk; the reply waits for them.
    fn begin_chunk(&mut self, text: &str) -> Flow {
        let Some((size, last)) = parse_bdat(text) else {
            self.queue_reply("501 5.5.4 Syntax: BDAT size [LAST]");
            return Flow::Continue;
        };
        let offered = self
            .script
            .extensions
            .iter()
            .any(|keyword| keyword.eq_ignore_ascii_case("CHUNKING"));
        if size > MAX_MESSAGE_SIZE {
            // Reading that many octets to stay in step is not worth it.
            self.queue_reply("552 5.3.4 Error: message too big, closing the connection");
            return Flow::Close;
        }
        let has_recipients =
            |phase: Option<&Transaction>| phase.is_some_and(|t| !t.rcpt_to.is_empty());
        let taken = self.chunked.as_ref().map_or(0, |phase| phase.content.len());
        let refusal = if !offered {
            Some("502 5.5.1 Error: BDAT not offered")
        } else if self.rejected {
            Some(REPLY_REJECTED)
        } else if self.chunked.is_none() && !has_recipients(self.transaction.as_ref()) {
            Some("503 5.5.1 Error: need RCPT command")
        } else if taken + size > MAX_MESSAGE_SIZE {
            Some("552 5.3.4 Error: message too big")
        } else {
            None
        };
        if refusal.is_none() && self.chunked.is_none() {
            self.chunked = Some(DataPhase {
                transaction: self.transaction.take().unwrap_or_default(),
                content: Vec::new(),
                previous_line_ended_crlf: true,
            });
        }
        self.chunk = Some(Chunk {
            command: text.to_owned(),
            remaining: size,
            last,
            refusal,
        });
        Flow::Continue
    }

    /// Replies to a BDAT chunk whose octets have all arrived.
    async fn end_chunk(&mut self) -> io::Result<Flow> {
        let Some(chunk) = self.chunk.take() else {
            return Ok(Flow::Continue);
        };
        if let Some(refusal) = chunk.refusal {
            // RFC 3030 section 2: a refused chunk ends the transaction.
            self.chunked = None;
            self.transaction = None;
            self.queue_reply(refusal);
            return Ok(Flow::Continue);
        }
        if !chunk.last {
            let default = Action::Reply(format!(
                "250 2.0.0 {} octets received",
                self.chunked.as_ref().map_or(0, |phase| phase.content.len())
            ));
            let action = self
                .scripted_action(Point::Bdat, chunk.command.as_bytes())
                .unwrap_or(default);
            return self
                .perform(Some(Point::Bdat), action, &chunk.command)
                .await;
        }
        let Some(phase) = self.chunked.take() else {
            return Ok(Flow::Continue);
        };
        let message = StoredMessage {
            mail_from: phase.transaction.mail_from,
            rcpt_to: phase.transaction.rcpt_to,
            mail_params: phase.transaction.mail_params,
            data: phase.content,
        };
        let default = Action::Reply("250 2.0.0 Ok: queued".to_owned());
        let action = self
            .scripted_action(Point::DataEnd, &message.data)
            .unwrap_or(default);
        self.finished_message = Some(message);
        let flow = self
            .perform(Some(Point::DataEnd), action, &chunk.command)
            .await;
        self.finished_message = None;
        flow
    }

    async fn handle_line(&mut self, line: &[u8]) -> io::Result<Flow> {
        if self.data.is_some() {
            return self.handle_content_line(line).await;
        }
        if let Some(state) = self.sasl.take() {
            return Ok(self.handle_sasl_line(state, line));
        }

        self.command_total += 1;
        if self.command_total > MAX_COMMANDS {
            self.queue_reply("421 4.7.0 testkit.invalid Error: too many commands");
            return Ok(Flow::Close);
        }

        let text = String::from_utf8_lossy(strip_terminator(line)).into_owned();
        tracing::debug!(session = self.index + 1, command = %text, "test SMTP command");
        self.shared.record_command(self.index, text.clone());

        let point = match command::verb(&text).as_str() {
            "EHLO" => Some(Point::Ehlo),
            "HELO" => Some(Point::Helo),
            "MAIL" => Some(Point::Mail),
            "RCPT" => Some(Point::Rcpt),
            "DATA" => Some(Point::Data),
            "RSET" => Some(Point::Rset),
            "QUIT" => Some(Point::Quit),
            "NOOP" => Some(Point::Noop),
            "STARTTLS" => Some(Point::StartTls),
            "AUTH" => Some(Point::Auth),
            "BDAT" => return Ok(self.begin_chunk(&text)),
            _ => None,
        };
        let scripted = point.and_then(|point| self.scripted_action(point, text.as_bytes()));
        let action = match scripted {
            Some(action) => action,
            None if point == Some(Point::Auth) => Action::Reply(self.begin_auth(&text)),
            None => Action::Reply(self.default_reply(point, &text)),
        };
        self.perform(point, action, &text).await
    }

    async fn handle_content_line(&mut self, line: &[u8]) -> io::Result<Flow> {
        let Some(phase) = self.data.as_mut() else {
            return Ok(Flow::Continue);
        };

        if line == b".\r\n" && phase.previous_line_ended_crlf {
            let Some(phase) = self.data.take() else {
                return Ok(Flow::Continue);
            };
            let message = StoredMessage {
                mail_from: phase.transaction.mail_from,
                rcpt_to: phase.transaction.rcpt_to,
                mail_params: phase.transaction.mail_params,
                data: phase.content,
            };
            let default = Action::Reply("250 2.0.0 Ok: queued".to_owned());
            let action = self
                .scripted_action(Point::DataEnd, &message.data)
                .unwrap_or(default);
            self.finished_message = Some(message);
            let flow = self.perform(Some(Point::DataEnd), action, ".").await;
            self.finished_message = None;
            return flow;
        }

        if let Some(action) = self.scripted_action(Point::Body, line) {
            let flow = self.perform(Some(Point::Body), action, "").await?;
            if flow != Flow::Continue {
                return Ok(flow);
            }
        }
        let Some(phase) = self.data.as_mut() else {
            return Ok(Flow::Continue);
        };
        // RFC 5321 section 4.5.2: a leading dot on any other line is removed.
        let unstuffed = line.strip_prefix(b".").unwrap_or(line);
        if phase.content.len() + unstuffed.len() > MAX_MESSAGE_SIZE {
            self.queue_reply("552 5.3.4 Error: message too big");
            return Ok(Flow::Close);
        }
        phase.content.extend_from_slice(unstuffed);
        phase.previous_line_ended_crlf = line.ends_with(b"\r\n");
        Ok(Flow::Continue)
    }

    /// Counts an occurrence of `point` and returns the action of the first
    /// matching rule.
    fn scripted_action(&mut self, point: Point, text: &[u8]) -> Option<Action> {
        let occurrence = self.occurrences.entry(point).or_insert(0);
        *occurrence += 1;
        let event = Event {
            point,
            occurrence: *occurrence,
            session: self.index + 1,
            text,
        };
        self.script.action_for(&event).cloned()
    }

    /// Returns the reply of a well-behaved server to a command line.
    fn default_reply(&self, point: Option<Point>, text: &str) -> String {
        let Some(point) = point else {
            let reply = if self.rejected {
                REPLY_REJECTED
            } else {
                REPLY_UNKNOWN
            };
            return reply.to_owned();
        };
        if point == Point::Quit {
            return "221 2.0.0 Bye".to_owned();
        }
        if self.rejected {
            return REPLY_REJECTED.to_owned();
        }

        let has_argument = !command::argument(text).trim().is_empty();
        let reply = match point {
            Point::Ehlo if !has_argument => "501 5.5.4 Syntax: EHLO hostname",
            Point::Ehlo => return self.ehlo_reply(),
            Point::Helo if !has_argument => "501 5.5.4 Syntax: HELO hostname",
            Point::Helo => return format!("250 {HOSTNAME}"),
            Point::Mail if !self.greeted => "503 5.5.1 Error: send HELO/EHLO first",
            Point::Mail if self.transaction.is_some() || self.chunked.is_some() => {
                "503 5.5.1 Error: nested MAIL command"
            }
            Point::Mail if parse_path(text, "FROM:").is_none() => {
                "501 5.5.4 Syntax: MAIL FROM:<address>"
            }
            Point::Mail => "250 2.1.0 Ok",
            Point::Rcpt => match &self.transaction {
                None => "503 5.5.1 Error: need MAIL command",
                Some(transaction) if transaction.rcpt_to.len() >= MAX_RECIPIENTS => {
                    "452 4.5.3 Error: too many recipients"
                }
                Some(_) if parse_path(text, "TO:").is_none() => {
                    "501 5.5.4 Syntax: RCPT TO:<address>"
                }
                Some(_) => "250 2.1.5 Ok",
            },
            Point::Data => match &self.transaction {
                None => "503 5.5.1 Error: need MAIL command",
                Some(transaction) if transaction.rcpt_to.is_empty() => {
                    "503 5.5.1 Error: need RCPT command"
                }
                Some(_) => "354 End data with <CR><LF>.<CR><LF>",
            },
            Point::Rset | Point::Noop => "250 2.0.0 Ok",
            Point::StartTls if self.tls_active => "554 5.5.1 Error: TLS already active",
            Point::StartTls if matches!(self.script.tls, Some(TlsMode::StartTls(_))) => {
                "220 2.0.0 Ready to start TLS"
            }
            Point::StartTls => "502 5.5.1 Error: command not implemented",
            // Connect and DataEnd never come from a command line, QUIT was
            // handled above and AUTH has its own default.
            Point::Connect
            | Point::Body
            | Point::DataEnd
            | Point::Bdat
            | Point::Quit
            | Point::Auth => REPLY_UNKNOWN,
        };
        reply.to_owned()
    }

    fn ehlo_reply(&self) -> String {
        let mut lines = vec![HOSTNAME.to_owned()];
        match (&self.script.extensions_after_tls, self.tls_active) {
            (Some(after_tls), true) => lines.extend(after_tls.iter().cloned()),
            _ => lines.extend(self.script.extensions.iter().cloned()),
        }
        if !self.tls_active && matches!(self.script.tls, Some(TlsMode::StartTls(_))) {
            lines.push("STARTTLS".to_owned());
        }
        let last = lines.len() - 1;
        lines
            .iter()
            .enumerate()
            .map(|(number, line)| {
                let separator = if number == last { ' ' } else { '-' };
                format!("250{separator}{line}\r\n")
            })
            .collect()
    }

    /// Performs `action` as the reply at `point`, where `text` is the command
    /// line. Session state changes follow the reply code that is sent.
    async fn perform(
        &mut self,
        point: Option<Point>,
        action: Action,
        text: &str,
    ) -> io::Result<Flow> {
        let mut delay = Duration::ZERO;
        let mut action = action;
        for _ in 0..MAX_DELAY_NESTING {
            match action {
                Action::Delay(duration, inner) => {
                    delay = delay.saturating_add(duration);
                    action = *inner;
                }
                leaf => {
                    action = leaf;
                    break;
                }
            }
        }
        if !delay.is_zero() {
            self.flush().await?;
            tokio::time::sleep(delay).await;
        }

        match action {
            Action::Close => Ok(Flow::Close),
            Action::FailTlsHandshake => {
                self.output
                    .extend_from_slice(&reply_bytes("220 2.0.0 Ready to start TLS"));
                Ok(Flow::BreakTls)
            }
            Action::Hang => Ok(Flow::Hang),
            Action::Stall => Ok(Flow::Stall),
            Action::Delay(..) => {
                tracing::warn!(
                    "test SMTP script nests Action::Delay deeper than {MAX_DELAY_NESTING}, closing the connection"
                );
                Ok(Flow::Close)
            }
            Action::Reply(reply) => {
                let bytes = reply_bytes(&reply);
                let flow = self.apply_reply(point, reply_code(&bytes), text);
                self.output.extend_from_slice(&bytes);
                Ok(flow)
            }
            Action::Raw(bytes) => {
                let flow = self.apply_reply(point, reply_code(&bytes), text);
                self.output.extend_from_slice(&bytes);
                Ok(flow)
            }
            Action::ReplyInSegments(segments, pause) => {
                let prefix: Vec<u8> = segments.iter().flatten().take(3).copied().collect();
                let flow = self.apply_reply(point, reply_code(&prefix), text);
                self.flush().await?;
                for (number, segment) in segments.iter().enumerate() {
                    if number > 0 {
                        tokio::time::sleep(pause).await;
                    }
                    self.stream.write_all(segment).await?;
                    self.stream.flush().await?;
                }
                Ok(flow)
            }
        }
    }

    /// Updates the session for a reply with `code` at `point`, before the
    /// reply is written, and returns whether the session continues.
    fn apply_reply(&mut self, point: Option<Point>, code: Option<u16>, text: &str) -> Flow {
        let positive = code.is_some_and(|code| (200..300).contains(&code));
        match point {
            Some(Point::Connect) => self.rejected = code != Some(220),
            Some(Point::Ehlo | Point::Helo) if positive => {
                self.greeted = true;
                self.transaction = None;
                self.chunked = None;
            }
            Some(Point::Mail) if positive => {
                let (mail_from, mail_params) = parse_path(text, "FROM:")
                    .unwrap_or_else(|| (String::new(), command::argument(text).to_owned()));
                self.transaction = Some(Transaction {
                    mail_from,
                    mail_params,
                    rcpt_to: Vec::new(),
                });
            }
            Some(Point::Rcpt) if positive => {
                if let Some(transaction) = self.transaction.as_mut() {
                    let recipient = parse_path(text, "TO:")
                        .map_or_else(|| command::argument(text).to_owned(), |(path, _)| path);
                    transaction.rcpt_to.push(recipient);
                }
            }
            Some(Point::Data) if code == Some(354) => {
                self.data = Some(DataPhase {
                    transaction: self.transaction.take().unwrap_or_default(),
                    content: Vec::new(),
                    previous_line_ended_crlf: true,
                });
            }
            Some(Point::DataEnd) => {
                if let Some(message) = self.finished_message.take()
                    && positive
                {
                    self.shared.store_message(message);
                }
            }
            Some(Point::Bdat) if !positive => self.chunked = None,
            Some(Point::Rset) if positive => {
                self.transaction = None;
                self.chunked = None;
            }
            Some(Point::StartTls)
                if code == Some(220)
                    && !self.tls_active
                    && matches!(self.script.tls, Some(TlsMode::StartTls(_))) =>
            {
                return Flow::StartTls;
            }
            _ => {}
        }

        if point == Some(Point::Quit) || code == Some(421) {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    /// Runs the server side of a TLS handshake, after flushing the replies
    /// queued in plain text. Plain-text input not yet handled is dropped,
    /// as RFC 3207 section 4.2 asks, and the client must greet again.
    /// Returns whether TLS is now active.
    async fn start_tls(&mut self) -> bool {
        let config = match &self.script.tls {
            Some(TlsMode::StartTls(config) | TlsMode::Implicit(config)) => Arc::clone(config),
            None => return false,
        };
        if self.flush().await.is_err() {
            return false;
        }
        self.input.clear();
        self.consumed = 0;
        let ServerStream::Plain(tcp) = std::mem::replace(&mut self.stream, ServerStream::Closed)
        else {
            return false;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                self.stream = ServerStream::Tls(Box::new(stream));
                self.tls_active = true;
                self.greeted = false;
                self.transaction = None;
                self.shared.record_tls(self.index);
                true
            }
            Ok(Err(error)) => {
                tracing::debug!(session = self.index + 1, %error, "test SMTP TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::debug!(
                    session = self.index + 1,
                    "test SMTP TLS handshake timed out"
                );
                false
            }
        }
    }

    /// Sends the queued 220, then answers the client's first handshake
    /// bytes with a line of plain text.
    async fn break_tls(&mut self) -> io::Result<()> {
        self.flush().await?;
        let mut chunk = vec![0; READ_CHUNK_SIZE];
        let _ = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, self.stream.read(&mut chunk)).await;
        self.stream.write_all(b"this is not TLS\r\n").await?;
        self.stream.flush().await
    }

    /// Starts the server side of AUTH and returns the first reply.
    fn begin_auth(&mut self, text: &str) -> String {
        let Some(credentials) = &self.script.auth else {
            return "502 5.5.1 Error: authentication not enabled".to_owned();
        };
        if self.authenticated {
            return "503 5.5.1 Error: already authenticated".to_owned();
        }
        let challenge_id = format!("{}.{}", self.index + 1, self.command_total);
        let (reply, state) = secure::begin(
            command::argument(text),
            credentials,
            &self.script.login_challenges,
            &challenge_id,
        );
        self.authenticated = reply == secure::AUTH_OK;
        self.sasl = state;
        reply
    }

    /// Answers one SASL line. The line is recorded like a command.
    fn handle_sasl_line(&mut self, state: SaslServer, line: &[u8]) -> Flow {
        let text = String::from_utf8_lossy(strip_terminator(line)).into_owned();
        self.shared.record_command(self.index, text.clone());
        let Some(credentials) = &self.script.auth else {
            return Flow::Continue;
        };
        let (reply, state) =
            secure::respond(state, &text, credentials, &self.script.login_challenges);
        self.authenticated = reply == secure::AUTH_OK;
        self.sasl = state;
        self.queue_reply(&reply);
        Flow::Continue
    }

    fn queue_reply(&mut self, text: &str) {
        self.output.extend_from_slice(&reply_bytes(text));
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let output = std::mem::take(&mut self.output);
        self.stream.write_all(&output).await?;
        self.stream.flush().await
    }

    /// Keeps the connection open without replying, recording input until the
    /// client closes it or `MAX_SESSION_BYTES` is reached. After that limit
    /// the session waits without reading until the server shuts down.
    async fn hang(&mut self) {
        let mut chunk = vec![0; READ_CHUNK_SIZE];
        while self.received_total < MAX_SESSION_BYTES {
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => self.record_received(&chunk[..read]),
            }
        }
        std::future::pending::<()>().await;
    }
}

fn strip_terminator(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
