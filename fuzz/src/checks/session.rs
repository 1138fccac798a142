//! `ClientSession` driven by arbitrary server bytes and driver actions.
//!
//! Input: one configuration byte, then a script of actions. Bit 0 of the
//! configuration byte turns pipelining off, bit 1 the HELO fallback, bit 2
//! the transcript, bit 3 selects small reply limits, bit 4 selects
//! opportunistic STARTTLS, bit 5 required STARTTLS and bit 6 turns BDAT on.
//! In the script, bytes 0x01 to 0x05, 0x08, 0x0B and 0x0E are actions (see
//! [`Action`]), and all other bytes are server input,
//! fed in chunks that end at a [`super::SPLIT`] or at the next action. After
//! the script the session gets an end of connection.

use std::collections::VecDeque;

use mxsend_proto::{
    Address, ClientSession, Envelope, Event, Outcome, Reply, ReplyLimits, SessionConfig,
    SessionError, StartTls, TransactionReport,
};

use super::{Script, assert_crlf_only};

/// Action byte: start a transaction. The byte after it selects the
/// envelope (see [`envelope_for`]).
pub const START: u8 = 0x01;
/// Action byte: the driver has written the content and the final dot.
pub const DATA_SENT: u8 = 0x02;
/// Action byte: the driver calls quit.
pub const QUIT: u8 = 0x03;
/// Action byte: the server closed the connection.
pub const EOF: u8 = 0x04;
/// Action byte: the reply timeout expired.
pub const TIMEOUT: u8 = 0x05;
/// Action byte: the TLS handshake after STARTTLS succeeded. It follows
/// [`super::ESCAPE`] because 0x06 and 0x07 are taken.
pub const TLS_ESTABLISHED: u8 = 0x08;
/// Action byte: the driver sends a BDAT chunk. In the byte after it, bits
/// 0-6 give the chunk size and bit 7 marks the last chunk. It is VT, not TAB
/// (0x09), so that server text keeps its tabs.
pub const BDAT: u8 = 0x0b;
/// Action byte: the driver queues the next transaction, as a pipelining
/// driver does right after [`DATA_SENT`]. The byte after it selects the
/// envelope (see [`envelope_for`]). It is SO, not FF (0x0C), because the
/// committed inputs use FF as server text.
pub const QUEUE: u8 = 0x0e;

/// Recipients that envelopes pick from: ASCII, UTF-8 (which needs
/// SMTPUTF8), and a quoted local part with an address literal.
const RECIPIENTS: [&str; 4] = [
    "a@mx.test",
    "b@mx.test",
    "jürgen@bücher.test",
    "\"x y\"@[192.0.2.1]",
];

/// One step of the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bytes from the server.
    Input(Vec<u8>),
    /// [`ClientSession::start_transaction`] with [`envelope_for`] of the byte.
    Start(u8),
    /// [`ClientSession::data_sent`].
    DataSent,
    /// [`ClientSession::quit`].
    Quit,
    /// [`ClientSession::handle_eof`].
    Eof,
    /// [`ClientSession::handle_timeout`].
    Timeout,
    /// [`ClientSession::tls_established`].
    TlsEstablished,
    /// [`ClientSession::bdat`] with the chunk selected by the byte.
    Bdat(u8),
    /// [`ClientSession::queue_transaction`] with [`envelope_for`] of the
    /// byte.
    Queue(u8),
}

/// Reads the next action, or `None` at the end of the script.
pub fn next_action(script: &mut Script<'_>) -> Option<Action> {
    let byte = script.peek()?;
    if !is_action(byte) {
        return Some(Action::Input(script.next_chunk(is_action)));
    }
    script.next_byte();
    let action = match byte {
        START => Action::Start(script.next_byte().unwrap_or(0)),
        DATA_SENT => Action::DataSent,
        QUIT => Action::Quit,
        EOF => Action::Eof,
        TIMEOUT => Action::Timeout,
        TLS_ESTABLISHED => Action::TlsEstablished,
        BDAT => Action::Bdat(script.next_byte().unwrap_or(0)),
        QUEUE => Action::Queue(script.next_byte().unwrap_or(0)),
        _ => unreachable!("is_action accepts only the action bytes"),
    };
    Some(action)
}

fn is_action(byte: u8) -> bool {
    (START..=TIMEOUT).contains(&byte) || matches!(byte, TLS_ESTABLISHED | BDAT | QUEUE)
}

/// Builds the envelope for a START byte: bits 0-2 give the number of
/// recipients, bit 3 marks 8-bit content, bit 4 sets a size, bit 5 sends the
/// null sender, and bits 6-7 rotate the recipient list.
pub fn envelope_for(selector: u8) -> Envelope {
    let count = usize::from(selector & 7);
    let rotation = usize::from(selector >> 6);
    let recipients = (0..count)
        .map(|index| RECIPIENTS[(index + rotation) % RECIPIENTS.len()])
        .map(|text| Address::parse(text).expect("a valid test recipient"))
        .collect();
    let sender = (selector & 0x20 == 0)
        .then(|| Address::parse("sender@client.test").expect("a valid test sender"));
    Envelope {
        sender,
        recipients,
        size: (selector & 0x10 != 0).then_some(1000),
        eight_bit: selector & 8 != 0,
        ..Envelope::default()
    }
}

/// Runs one script against a session.
///
/// # Panics
///
/// - The session panics, or emits an event after [`Event::Closed`].
/// - It is not closed after an end of connection or an expired timeout.
/// - It transmits a bare CR or LF, or anything after closing.
/// - It accepts a transaction when it is not ready, or rejects one when it is.
/// - It queues a transaction without PIPELINING, behind BDAT, while a reply
///   other than the one to a final dot is due, or behind another queued
///   transaction.
/// - It rejects a plain envelope (see [`is_plain`]) for queueing although
///   none of the cases above applies.
/// - A started or queued transaction does not get exactly one report before
///   [`Event::Closed`], in the order the transactions began, with one
///   outcome per recipient that agrees with the replies in the report.
/// - A recipient is delivered or uncertain although the driver never sent
///   the content of its own transaction, or is delivered by a step that was
///   not server input.
/// - [`Event::Ready`] or [`Event::SendData`] comes while an earlier
///   transaction is still unreported.
/// - It becomes ready without TLS when STARTTLS is required, or keeps bytes
///   that arrived after the STARTTLS go-ahead.
pub fn check(input: &[u8]) {
    let mut script = Script::new(input);
    let config = config_for(script.next_byte().unwrap_or(0));
    let mut driver = Driver::new(config);
    while let Some(action) = next_action(&mut script) {
        driver.apply(action);
    }
    driver.apply(Action::Eof);
    assert!(driver.closed, "the session ended without Event::Closed");
}

fn config_for(flags: u8) -> SessionConfig {
    let mut config = SessionConfig::new("client.test").expect("a valid EHLO name");
    config.pipelining = flags & 1 == 0;
    config.helo_fallback = flags & 2 == 0;
    config.transcript = flags & 4 == 0;
    config.starttls = match flags & 0x30 {
        0 => StartTls::Never,
        0x10 => StartTls::Opportunistic,
        _ => StartTls::Required,
    };
    config.chunking = flags & 0x40 != 0;
    if flags & 8 != 0 {
        config.reply_limits = ReplyLimits {
            max_line_length: 64,
            max_lines: 4,
            max_reply_size: 256,
        };
    }
    config
}

/// A transaction that the driver started or queued and the session has not
/// reported yet.
struct OpenTransaction {
    recipients: Vec<Address>,
    /// Whether the driver sent the content: the final dot after DATA, or
    /// the last BDAT chunk.
    content_sent: bool,
}

impl OpenTransaction {
    fn new(recipients: Vec<Address>) -> Self {
        OpenTransaction {
            recipients,
            content_sent: false,
        }
    }
}

/// A driver that records what the session promised and checks each event
/// against it.
struct Driver {
    session: ClientSession,
    limits: ReplyLimits,
    starttls: StartTls,
    /// Whether the configuration allows pipelining. Queueing also needs the
    /// server to advertise PIPELINING.
    pipelining: bool,
    /// The transactions that have started and not yet been reported, oldest
    /// first: the current one and at most one queued behind it.
    open: VecDeque<OpenTransaction>,
    /// Whether the driver has sent a final dot after DATA and the session has
    /// not yet reported that transaction. Only then may a transaction be
    /// queued.
    awaiting_dot_reply: bool,
    /// Whether [`Event::Closed`] has been taken.
    closed: bool,
    /// Whether [`Event::StartTls`] has been taken and the handshake has not
    /// been reported yet.
    awaiting_tls: bool,
}

impl Driver {
    fn new(config: SessionConfig) -> Self {
        Driver {
            limits: config.reply_limits,
            starttls: config.starttls,
            pipelining: config.pipelining,
            session: ClientSession::new(config),
            open: VecDeque::new(),
            awaiting_dot_reply: false,
            closed: false,
            awaiting_tls: false,
        }
    }

    fn apply(&mut self, action: Action) {
        let was_ready = self.session.is_ready();
        let had_timeout = self.session.timeout().is_some();
        let closed_before = self.closed;
        let mut queued = false;
        match &action {
            Action::Input(bytes) => self.session.handle_input(bytes),
            Action::Start(selector) => self.start(*selector, was_ready),
            Action::DataSent => self.data_sent(),
            Action::Quit => self.session.quit(),
            Action::Eof => self.session.handle_eof(),
            Action::Timeout => self.session.handle_timeout(),
            Action::TlsEstablished => {
                self.session.tls_established();
                self.awaiting_tls = false;
            }
            Action::Bdat(selector) => self.bdat(*selector),
            Action::Queue(selector) => queued = self.queue(*selector),
        }
        self.take_events(matches!(action, Action::Input(_)));
        let transmitted = self.take_transmit(closed_before);
        if matches!(action, Action::Queue(_)) {
            check_queued_commands(queued, transmitted.as_deref());
        }

        match action {
            Action::Eof => assert!(
                self.session.is_closed(),
                "the session is not closed after the end of the connection"
            ),
            Action::Timeout if had_timeout => assert!(
                self.session.is_closed(),
                "the session is not closed after its timeout expired"
            ),
            _ => {}
        }
        // During the TLS handshake the session waits for the driver, which
        // bounds the handshake itself.
        let waits_for_driver =
            self.session.is_ready() || (self.awaiting_tls && !self.session.is_closed());
        assert_eq!(
            self.session.timeout().is_none(),
            self.session.is_closed() || waits_for_driver,
            "a timeout is due exactly when the session waits for the server"
        );
        let buffered = self.session.buffered_len();
        let bound = self.limits.max_line_length + 1 + self.limits.max_reply_size;
        assert!(
            buffered <= bound,
            "buffered_len {buffered} is over {bound}, the bound for {:?}",
            self.limits
        );
    }

    fn start(&mut self, selector: u8, was_ready: bool) {
        let envelope = envelope_for(selector);
        let recipients = envelope.recipients.clone();
        match self.session.start_transaction(envelope) {
            Ok(()) => {
                assert!(was_ready, "a transaction started while not ready");
                assert!(
                    self.open.is_empty(),
                    "a transaction started before the last one was reported"
                );
                self.open.push_back(OpenTransaction::new(recipients));
            }
            Err(error) => {
                assert!(!was_ready, "a ready session refused a transaction");
                assert!(
                    matches!(error, SessionError::NotReady { .. }),
                    "unexpected error {error:?}"
                );
            }
        }
    }

    /// Queues the envelope for `selector` and checks the result against the
    /// conditions of [`ClientSession::queue_transaction`]. Returns whether
    /// the session queued it.
    fn queue(&mut self, selector: u8) -> bool {
        let envelope = envelope_for(selector);
        let recipients = envelope.recipients.clone();
        let plain = is_plain(&envelope);
        let pipelining = self.pipelining && self.session.extensions().is_some_and(|e| e.pipelining);
        match self.session.queue_transaction(envelope) {
            Ok(()) => {
                assert!(
                    pipelining,
                    "queue_transaction accepted a transaction without PIPELINING"
                );
                assert!(
                    self.awaiting_dot_reply,
                    "queue_transaction accepted a transaction while no final dot after DATA \
                     waits for its reply"
                );
                assert_eq!(
                    self.open.len(),
                    1,
                    "queue_transaction accepted a transaction while another one is queued"
                );
                assert!(
                    !recipients.is_empty(),
                    "queue_transaction accepted an envelope with no recipients"
                );
                self.open.push_back(OpenTransaction::new(recipients));
                true
            }
            Err(error) => {
                let allowed = pipelining && self.awaiting_dot_reply && self.open.len() == 1;
                assert!(
                    !(allowed && plain),
                    "queue_transaction rejected the plain envelope {selector:#04x} while only \
                     the reply to a final dot is due: {error:?}"
                );
                assert!(
                    matches!(error, SessionError::NotReady { .. }),
                    "unexpected error {error:?}"
                );
                false
            }
        }
    }

    /// Calls [`ClientSession::data_sent`] and records when it ends a data
    /// phase after DATA. With BDAT, or outside a data phase, the call has
    /// no effect.
    fn data_sent(&mut self) {
        let ends_data = self.session.is_sending_data() && !self.session.is_chunking();
        self.session.data_sent();
        if ends_data {
            let current = self
                .open
                .front_mut()
                .expect("a data phase belongs to an open transaction");
            current.content_sent = true;
            self.awaiting_dot_reply = true;
        }
    }

    fn bdat(&mut self, selector: u8) {
        let size = u64::from(selector & 0x7f);
        let last = selector & 0x80 != 0;
        let allowed = self.session.is_sending_data() && self.session.is_chunking();
        match self.session.bdat(size, last) {
            Ok(command) => {
                assert!(allowed, "bdat() accepted a chunk outside a BDAT data phase");
                let expected = if last {
                    format!("BDAT {size} LAST\r\n")
                } else {
                    format!("BDAT {size}\r\n")
                };
                assert_eq!(command, expected.as_bytes(), "BDAT command");
                if last {
                    assert!(
                        !self.session.is_sending_data(),
                        "the data phase goes on after BDAT LAST"
                    );
                    let current = self
                        .open
                        .front_mut()
                        .expect("a data phase belongs to an open transaction");
                    current.content_sent = true;
                }
            }
            Err(error) => {
                assert!(!allowed, "bdat() rejected a chunk in a BDAT data phase");
                assert!(
                    matches!(error, SessionError::NotReady { .. }),
                    "unexpected error {error:?}"
                );
            }
        }
    }

    /// Takes the events of one step. `from_server` is true when the step fed
    /// server input, which is the only step that can deliver a recipient.
    fn take_events(&mut self, from_server: bool) {
        while let Some(event) = self.session.poll_event() {
            assert!(!self.closed, "event {event:?} after Event::Closed");
            match event {
                Event::Ready => {
                    assert!(
                        self.starttls != StartTls::Required || self.session.is_encrypted(),
                        "the session became ready without TLS although STARTTLS is required"
                    );
                    assert!(
                        self.open.is_empty(),
                        "Event::Ready while {} transactions are unreported",
                        self.open.len()
                    );
                }
                Event::StartTls => {
                    self.awaiting_tls = true;
                    assert_ne!(
                        self.starttls,
                        StartTls::Never,
                        "Event::StartTls although STARTTLS is off"
                    );
                    // Bytes that arrive after the 220 go-ahead and before
                    // the handshake may come from an attacker on the plain
                    // text connection, so the session must reject them.
                    assert!(
                        self.session.is_closed() || self.session.buffered_len() == 0,
                        "{} octets buffered past the STARTTLS go-ahead",
                        self.session.buffered_len()
                    );
                }
                Event::SendData => {
                    assert!(
                        !self.open.is_empty(),
                        "Event::SendData without an open transaction"
                    );
                    assert!(
                        self.open.len() < 2,
                        "Event::SendData before the previous transaction was reported"
                    );
                }
                Event::TransactionComplete(report) => {
                    let Some(transaction) = self.open.pop_front() else {
                        panic!("a transaction report without a started transaction: {report:?}");
                    };
                    self.awaiting_dot_reply = false;
                    check_report(&report, &transaction, from_server);
                }
                Event::Closed(result) => {
                    let unreported: Vec<&[Address]> = self
                        .open
                        .iter()
                        .map(|transaction| transaction.recipients.as_slice())
                        .collect();
                    assert!(
                        unreported.is_empty(),
                        "the session closed with {result:?} and never reported the transactions \
                         for {unreported:?}"
                    );
                    self.closed = true;
                }
            }
        }
        assert_eq!(
            self.session.is_closed(),
            self.closed,
            "is_closed() disagrees with the Closed event"
        );
    }

    /// Takes and returns the bytes to send. `closed_before` is true when the
    /// session had closed before this step: bytes queued by the step that
    /// closed it, such as the QUIT after a refusal, may still go out, but no
    /// later step may queue any.
    fn take_transmit(&mut self, closed_before: bool) -> Option<Vec<u8>> {
        let bytes = self.session.poll_transmit()?;
        assert!(!bytes.is_empty(), "poll_transmit returned no bytes");
        assert_crlf_only(&bytes, "the transmitted commands");
        assert!(
            bytes.ends_with(b"\r\n"),
            "a transmitted command does not end with CRLF"
        );
        assert!(!closed_before, "bytes to transmit after the session closed");
        Some(bytes)
    }
}

/// Checks the bytes that a QUEUE step left to transmit: the queued
/// transaction's pipelined MAIL, RCPT and DATA when `queued`, else nothing.
fn check_queued_commands(queued: bool, transmitted: Option<&[u8]>) {
    let Some(bytes) = transmitted else {
        assert!(
            !queued,
            "queue_transaction queued a transaction and sent nothing"
        );
        return;
    };
    let text = String::from_utf8_lossy(bytes);
    assert!(
        queued,
        "queue_transaction rejected a transaction but sent {text:?}"
    );
    assert!(
        bytes.starts_with(b"MAIL FROM:<"),
        "the queued commands do not start with MAIL: {text:?}"
    );
    assert!(
        bytes.ends_with(b"\r\nDATA\r\n"),
        "the queued commands do not end with DATA: {text:?}"
    );
}

/// Returns whether any server that completed EHLO can take every recipient
/// of `envelope`: it has recipients, its sender and recipients are ASCII,
/// its content is 7-bit, and it declares no size. The session rejects some
/// other envelopes locally, so a rejected queue call for one of them proves
/// nothing.
fn is_plain(envelope: &Envelope) -> bool {
    !envelope.recipients.is_empty()
        && envelope.sender.iter().all(Address::is_ascii)
        && envelope.recipients.iter().all(Address::is_ascii)
        && !envelope.eight_bit
        && envelope.size.is_none()
}

/// Checks that a report has one outcome per recipient, in envelope order,
/// and that each outcome follows from the replies in the report and from
/// what the driver sent. `from_server` is true when server input produced
/// the report.
fn check_report(report: &TransactionReport, transaction: &OpenTransaction, from_server: bool) {
    let recipients = &transaction.recipients;
    let reported: Vec<&Address> = report.recipients.iter().map(|r| &r.address).collect();
    let expected: Vec<&Address> = recipients.iter().collect();
    assert_eq!(reported, expected, "the report's recipients");
    assert!(report.accepted() <= recipients.len());

    for status in &report.recipients {
        let address = &status.address;
        match status.outcome {
            Outcome::Delivered => {
                let positive = |reply: Option<&Reply>| reply.is_some_and(Reply::is_positive);
                assert!(
                    positive(report.mail_reply.as_ref())
                        && positive(status.rcpt_reply.as_ref())
                        && positive(report.final_reply.as_ref()),
                    "{address} is delivered without positive MAIL, RCPT and final replies: \
                     {report:?}"
                );
                assert!(
                    transaction.content_sent,
                    "{address} is delivered but its transaction's content was never sent: \
                     {report:?}"
                );
                assert!(
                    from_server,
                    "{address} is delivered by a step without server input: {report:?}"
                );
            }
            Outcome::Uncertain => {
                assert!(
                    report.interrupted && report.final_reply.is_none(),
                    "{address} is uncertain but the transaction was not interrupted after the \
                     final dot: {report:?}"
                );
                assert!(
                    transaction.content_sent,
                    "{address} is uncertain but its transaction's content was never sent: \
                     {report:?}"
                );
            }
            Outcome::Deferred | Outcome::Failed => {}
        }
        if let Some(reply) = &status.reply {
            assert_eq!(
                Outcome::of_reply(reply),
                status.outcome,
                "{address} has outcome {} but its deciding reply is {reply}",
                status.outcome
            );
        }
    }
}
