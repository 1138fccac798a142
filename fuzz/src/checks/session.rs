//! `ClientSession` driven by arbitrary server bytes and driver actions.
//!
//! Input: one configuration byte, then a script of actions. Bit 0 of the
//! configuration byte turns pipelining off, bit 1 the HELO fallback, bit 2
//! the transcript, bit 3 selects small reply limits, bit 4 selects
//! opportunistic STARTTLS, bit 5 required STARTTLS and bit 6 turns BDAT on.
//! In the script, bytes 0x01 to 0x05, 0x08 and 0x0B are actions (see
//! [`Action`]), and all other bytes are server input,
//! fed in chunks that end at a [`super::SPLIT`] or at the next action. After
//! the script the session gets an end of connection.

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
        _ => unreachable!("is_action accepts only the action bytes"),
    };
    Some(action)
}

fn is_action(byte: u8) -> bool {
    (START..=TIMEOUT).contains(&byte) || byte == TLS_ESTABLISHED || byte == BDAT
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
/// - A started transaction does not get exactly one report, with one outcome
///   per recipient that agrees with the replies in the report.
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

/// A driver that records what the session promised and checks each event
/// against it.
struct Driver {
    session: ClientSession,
    limits: ReplyLimits,
    starttls: StartTls,
    /// The recipients of the transaction that has started and not yet been
    /// reported.
    open: Option<Vec<Address>>,
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
            session: ClientSession::new(config),
            open: None,
            closed: false,
            awaiting_tls: false,
        }
    }

    fn apply(&mut self, action: Action) {
        let was_ready = self.session.is_ready();
        let had_timeout = self.session.timeout().is_some();
        let closed_before = self.closed;
        match &action {
            Action::Input(bytes) => self.session.handle_input(bytes),
            Action::Start(selector) => self.start(*selector, was_ready),
            Action::DataSent => self.session.data_sent(),
            Action::Quit => self.session.quit(),
            Action::Eof => self.session.handle_eof(),
            Action::Timeout => self.session.handle_timeout(),
            Action::TlsEstablished => {
                self.session.tls_established();
                self.awaiting_tls = false;
            }
            Action::Bdat(selector) => self.bdat(*selector),
        }
        self.take_events();
        self.take_transmit(closed_before);

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
                    self.open.is_none(),
                    "a transaction started before the last one was reported"
                );
                self.open = Some(recipients);
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

    fn take_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            assert!(!self.closed, "event {event:?} after Event::Closed");
            match event {
                Event::Ready => assert!(
                    self.starttls != StartTls::Required || self.session.is_encrypted(),
                    "the session became ready without TLS although STARTTLS is required"
                ),
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
                Event::SendData => assert!(
                    self.open.is_some(),
                    "Event::SendData without an open transaction"
                ),
                Event::TransactionComplete(report) => {
                    let Some(recipients) = self.open.take() else {
                        panic!("a transaction report without a started transaction: {report:?}");
                    };
                    check_report(&report, &recipients);
                }
                Event::Closed(result) => {
                    assert!(
                        self.open.is_none(),
                        "the session closed with {result:?} and never reported the transaction \
                         for {:?}",
                        self.open
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

    /// Takes the bytes to send. `closed_before` is true when the session
    /// had closed before this step: bytes queued by the step that closed it,
    /// such as the QUIT after a refusal, may still go out, but no later step
    /// may queue any.
    fn take_transmit(&mut self, closed_before: bool) {
        let Some(bytes) = self.session.poll_transmit() else {
            return;
        };
        assert!(!bytes.is_empty(), "poll_transmit returned no bytes");
        assert_crlf_only(&bytes, "the transmitted commands");
        assert!(
            bytes.ends_with(b"\r\n"),
            "a transmitted command does not end with CRLF"
        );
        assert!(!closed_before, "bytes to transmit after the session closed");
    }
}

/// Checks that a report has one outcome per recipient, in envelope order,
/// and that each outcome follows from the replies in the report.
fn check_report(report: &TransactionReport, recipients: &[Address]) {
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
            }
            Outcome::Uncertain => assert!(
                report.interrupted && report.final_reply.is_none(),
                "{address} is uncertain but the transaction was not interrupted after the \
                 final dot: {report:?}"
            ),
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
