//! The client side of one SMTP connection as a state machine without I/O.
//!
//! A driver owns the socket and the clock. It passes received bytes to
//! [`ClientSession::handle_input`], writes what [`ClientSession::poll_transmit`]
//! returns, waits no longer than [`ClientSession::timeout`] for each reply,
//! and reacts to the [`Event`]s from [`ClientSession::poll_event`]. The
//! session never blocks, never reads a clock and never touches message
//! content: after [`Event::SendData`] the driver streams the content through
//! a [`crate::data::DataEncoder`] and then calls
//! [`ClientSession::data_sent`].
//!
//! The order of a session (RFC 5321 section 3):
//!
//! 1. Wait for the greeting. Anything but 2yz: QUIT, and the host is
//!    unusable (C-SES-02).
//! 2. EHLO. A refusal other than 421 gets one HELO (C-SES-03); 421 or a
//!    refused HELO ends the session.
//! 3. For each transaction: MAIL, one RCPT per recipient with every reply
//!    kept, DATA only when MAIL and at least one RCPT succeeded, otherwise
//!    RSET (C-TX-04). With PIPELINING advertised, MAIL, the RCPTs and DATA
//!    go out in one write and the replies are matched in order (RFC 2920).
//! 4. QUIT (C-TX-09).
//!
//! A 421 reply to any command ends the session at once (C-TX-07).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::address::Address;
use crate::dsn::DsnRequest;
use crate::extensions::Extensions;
use crate::reply::{Reply, ReplyError, ReplyLimits, ReplyParser};
use crate::sasl::{Mechanism, SaslClient, SaslError};

mod security;

pub use security::{AuthSettings, StartTls};

/// How long to wait for each reply, by phase. The defaults are the minimums
/// of RFC 5321 section 4.5.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The greeting after connecting. Default 5 minutes.
    pub greeting: Duration,
    /// The reply to EHLO or HELO. Default 5 minutes.
    pub ehlo: Duration,
    /// The reply to MAIL. Default 5 minutes.
    pub mail: Duration,
    /// The reply to each RCPT. Default 5 minutes.
    pub rcpt: Duration,
    /// The reply to DATA. Default 2 minutes.
    pub data: Duration,
    /// Each write of message content. Default 3 minutes.
    pub data_block: Duration,
    /// The reply after the final dot. Default 10 minutes.
    pub data_end: Duration,
    /// The reply to RSET. Default 5 minutes, as for MAIL.
    pub rset: Duration,
    /// The reply to QUIT. Default 5 minutes, as for MAIL.
    pub quit: Duration,
}

impl Timeouts {
    /// Creates timeouts that allow `timeout` for every reply and every
    /// write of content, in place of the per-phase defaults.
    pub fn uniform(timeout: Duration) -> Timeouts {
        Timeouts {
            greeting: timeout,
            ehlo: timeout,
            mail: timeout,
            rcpt: timeout,
            data: timeout,
            data_block: timeout,
            data_end: timeout,
            rset: timeout,
            quit: timeout,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        Timeouts {
            greeting: 5 * MINUTE,
            ehlo: 5 * MINUTE,
            mail: 5 * MINUTE,
            rcpt: 5 * MINUTE,
            data: 2 * MINUTE,
            data_block: 3 * MINUTE,
            data_end: 10 * MINUTE,
            rset: 5 * MINUTE,
            quit: 5 * MINUTE,
        }
    }
}

/// Settings of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The EHLO and HELO argument: a fully qualified host name or an
    /// address literal such as `[192.0.2.1]` (C-SES-04).
    pub helo_name: String,
    /// Reply timeouts by phase.
    pub timeouts: Timeouts,
    /// Bounds on each reply.
    pub reply_limits: ReplyLimits,
    /// Send HELO once when EHLO is refused. Default true.
    pub helo_fallback: bool,
    /// Pipeline commands when the server advertises PIPELINING. Default true.
    pub pipelining: bool,
    /// Send content with BDAT when the server advertises CHUNKING (RFC
    /// 3030) instead of DATA. Default false, because the driver must then
    /// call [`ClientSession::bdat`] for each chunk instead of writing
    /// dot-stuffed data.
    pub chunking: bool,
    /// Keep a transcript of commands and replies. Default true.
    pub transcript: bool,
    /// When to send STARTTLS (RFC 3207). Default [`StartTls::Never`].
    pub starttls: StartTls,
    /// The connection is encrypted from the first byte (implicit TLS, RFC
    /// 8314 section 3), so STARTTLS is never sent. Default false.
    pub implicit_tls: bool,
    /// Authenticate with SMTP AUTH (RFC 4954) after EHLO, and after TLS
    /// when STARTTLS is used. Default `None`.
    pub auth: Option<AuthSettings>,
}

impl SessionConfig {
    /// A configuration with default timeouts and limits.
    ///
    /// # Errors
    ///
    /// [`SessionError::InvalidHeloName`] when the name is empty or contains
    /// a space or a control character, which would inject text into EHLO.
    pub fn new(helo_name: &str) -> Result<SessionConfig, SessionError> {
        if helo_name.is_empty()
            || helo_name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(SessionError::InvalidHeloName {
                name: helo_name.escape_debug().to_string(),
            });
        }
        Ok(SessionConfig {
            helo_name: helo_name.to_owned(),
            timeouts: Timeouts::default(),
            reply_limits: ReplyLimits::default(),
            helo_fallback: true,
            pipelining: true,
            chunking: false,
            transcript: true,
            starttls: StartTls::Never,
            implicit_tls: false,
            auth: None,
        })
    }
}

/// The point of the session a reply or a timeout belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Waiting for the greeting.
    Greeting,
    /// Waiting for the EHLO reply.
    Ehlo,
    /// Waiting for the HELO reply.
    Helo,
    /// Waiting for the MAIL reply.
    Mail,
    /// Waiting for a RCPT reply.
    Rcpt,
    /// Waiting for the DATA reply.
    Data,
    /// Sending message content.
    DataBlock,
    /// Waiting for the reply after the final dot.
    DataEnd,
    /// Waiting for the RSET reply.
    Rset,
    /// Waiting for the QUIT reply.
    Quit,
    /// Idle between transactions.
    Idle,
    /// Waiting for the STARTTLS reply.
    StartTls,
    /// The driver runs the TLS handshake after the STARTTLS go-ahead.
    TlsHandshake,
    /// Waiting for a reply during SMTP AUTH.
    Auth,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::Helo => "HELO",
            Phase::Mail => "MAIL FROM",
            Phase::Rcpt => "RCPT TO",
            Phase::Data => "DATA",
            Phase::DataBlock => "message content",
            Phase::DataEnd => "end of data",
            Phase::Rset => "RSET",
            Phase::Quit => "QUIT",
            Phase::Idle => "idle",
            Phase::StartTls => "STARTTLS",
            Phase::TlsHandshake => "TLS handshake",
            Phase::Auth => "AUTH",
        })
    }
}

/// Why a session ended early. Grouped by who is at fault: the server
/// misbehaved (`Protocol`, `UnexpectedReply`), the server refused service
/// (`GreetingRejected`, `HeloRejected`, `ServiceClosing`, `RsetRejected`),
/// the transport failed (`TimedOut`, `ConnectionClosed`), or the caller
/// misused the session (`InvalidHeloName`, `NotReady`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The server sent bytes that are not a valid reply.
    #[error("malformed reply during {phase}")]
    Protocol {
        /// Where the session was.
        phase: Phase,
        /// What was wrong.
        #[source]
        error: ReplyError,
    },
    /// The server sent a reply when no command was waiting for one.
    #[error("unexpected reply while {phase}: {reply}")]
    UnexpectedReply {
        /// Where the session was.
        phase: Phase,
        /// The reply nobody asked for.
        reply: Reply,
    },
    /// The greeting was not 2yz.
    #[error("server refused service in its greeting: {0}")]
    GreetingRejected(Reply),
    /// EHLO was refused and HELO too, or HELO fallback is off.
    #[error("server refused EHLO and HELO: {0}")]
    HeloRejected(Reply),
    /// The server answered 421 and is closing the connection.
    #[error("server is closing the connection during {phase}: {reply}")]
    ServiceClosing {
        /// Where the session was.
        phase: Phase,
        /// The 421 reply.
        reply: Reply,
    },
    /// RSET failed, so the connection cannot be trusted for another
    /// transaction (C-TX-08).
    #[error("server refused RSET: {0}")]
    RsetRejected(Reply),
    /// No complete reply within the phase's timeout.
    #[error("timed out after {timeout:?} waiting for the {phase} reply")]
    TimedOut {
        /// Where the session was.
        phase: Phase,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The server closed the connection.
    #[error("connection closed by the server during {phase}")]
    ConnectionClosed {
        /// Where the session was.
        phase: Phase,
    },
    /// The EHLO name would not be a single safe word on the wire.
    #[error("invalid EHLO name {name:?}: it must be a host name or an address literal")]
    InvalidHeloName {
        /// The name, with control characters escaped.
        name: String,
    },
    /// A transaction was started while the session was not ready for one.
    #[error("session is not ready for a new transaction (phase {phase})")]
    NotReady {
        /// Where the session was.
        phase: Phase,
    },
    /// The TLS policy requires STARTTLS and the server did not advertise
    /// it, or refused EHLO so that it could not advertise it (C-TLS-02).
    #[error(
        "server does not offer STARTTLS, which the TLS policy requires (EHLO reply: {ehlo}); \
         the STARTTLS line may have been removed on the way"
    )]
    StartTlsNotOffered {
        /// The EHLO reply, positive without STARTTLS or a refusal.
        ehlo: Reply,
    },
    /// The TLS policy requires STARTTLS and the server refused it.
    #[error("server refused STARTTLS, which the TLS policy requires: {0}")]
    StartTlsRejected(Reply),
    /// Bytes followed the STARTTLS go-ahead before the TLS handshake:
    /// a sign of response injection (C-TLS-01, C-REP-06).
    #[error(
        "server sent {octets} octets after the STARTTLS go-ahead and before the TLS handshake \
         (possible response injection)"
    )]
    DataAfterStartTls {
        /// How many octets were waiting.
        octets: usize,
    },
    /// The server sent bytes while the message content was going out after
    /// 354, when no reply can be due. The final dot is never sent after
    /// this, so the message cannot have been accepted (C-REP-06).
    #[error(
        "server sent {octets} octets during the message content, before the final dot; \
         the session is out of step and the message was not completed"
    )]
    InputDuringContent {
        /// How many octets arrived that were not a complete reply.
        octets: usize,
    },
    /// AUTH is configured and the server advertised no mechanism.
    #[error("server does not offer AUTH{}", if *.encrypted { " after TLS" } else { "" })]
    AuthNotOffered {
        /// Whether the connection was encrypted at that point.
        encrypted: bool,
    },
    /// The server advertised AUTH, but not the mechanism asked for, or,
    /// without a named mechanism, none of PLAIN, LOGIN and CRAM-MD5.
    #[error(
        "server offers AUTH {offered}, which does not include {}",
        requested.map_or("PLAIN, LOGIN or CRAM-MD5".to_owned(), |m| m.to_string())
    )]
    AuthMechanismNotOffered {
        /// The mechanism named in the settings, if any.
        requested: Option<Mechanism>,
        /// The advertised mechanisms, space separated.
        offered: String,
    },
    /// AUTH would have sent credentials over an unencrypted connection.
    #[error(
        "credentials not sent: the connection is not encrypted; \
         use a TLS policy that requires TLS, or allow plaintext AUTH explicitly"
    )]
    AuthNeedsTls,
    /// The server rejected the credentials (535) or failed temporarily
    /// (454). The first digit of the reply distinguishes them (RFC 4954
    /// section 6).
    #[error("server rejected authentication: {0}")]
    AuthRejected(Reply),
    /// The client cancelled the exchange with `*` because the server's
    /// challenges did not fit the mechanism.
    #[error("authentication cancelled: {error} (server reply: {reply})")]
    AuthCancelled {
        /// Why the client cancelled.
        error: SaslError,
        /// The server's reply to the cancellation.
        reply: Reply,
    },
}

/// What became of one recipient in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The server took responsibility for the message.
    Delivered,
    /// Not delivered now; trying again later may succeed.
    Deferred,
    /// Refused for good.
    Failed,
    /// The final dot was sent but its reply never came: the message may or
    /// may not have been delivered (RFC 5321 section 6.1).
    Uncertain,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Failed => "failed",
            Outcome::Uncertain => "uncertain",
        })
    }
}

impl Outcome {
    /// The outcome a reply decides on its own: 2yz delivered, 4yz deferred,
    /// anything else failed.
    pub fn of_reply(reply: &Reply) -> Outcome {
        if reply.is_positive() {
            Outcome::Delivered
        } else if reply.is_transient() {
            Outcome::Deferred
        } else {
            Outcome::Failed
        }
    }
}

/// One recipient's result in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// The recipient.
    pub address: Address,
    /// What became of it.
    pub outcome: Outcome,
    /// The server's reply to its RCPT, when one arrived.
    pub rcpt_reply: Option<Reply>,
    /// The reply that decided the outcome, when the server sent one. `None`
    /// when the session failed first; the session's error says why.
    pub reply: Option<Reply>,
    /// True when the client refused to send to this recipient because the
    /// server lacks an extension the message needs (SIZE, 8BITMIME or
    /// SMTPUTF8). `reply` then contains a reply that the client made up, and
    /// another server may still accept the message.
    pub refused_locally: bool,
}

/// The sender, recipients and content facts of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The reverse path; `None` sends the null path `<>`, as bounces do.
    pub sender: Option<Address>,
    /// The forward paths, one RCPT each.
    pub recipients: Vec<Address>,
    /// The content size on the wire, for `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// Whether the content has octets of 0x80 or above.
    pub eight_bit: bool,
    /// Whether the content is binary MIME, to be sent octet for octet with
    /// `BODY=BINARYMIME` in BDAT chunks (RFC 3030 section 3). A server
    /// without BINARYMIME and CHUNKING, or a session with chunking off,
    /// gets no transaction: every recipient is rejected locally with 5.6.3.
    pub binary: bool,
    /// Whether the header section has octets of 0x80 or above, which
    /// RFC 6532 allows only with SMTPUTF8.
    pub utf8_headers: bool,
    /// Delivery status notification parameters, sent only when the server
    /// advertises DSN (RFC 3461).
    pub dsn: DsnRequest,
}

/// The result of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionReport {
    /// The reply to MAIL, when one arrived.
    pub mail_reply: Option<Reply>,
    /// The reply to DATA, when one arrived.
    pub data_reply: Option<Reply>,
    /// The reply after the final dot, when one arrived.
    pub final_reply: Option<Reply>,
    /// Each recipient in envelope order.
    pub recipients: Vec<RecipientStatus>,
    /// True when the session failed before the transaction finished, so the
    /// deferred recipients may be tried on another host at once.
    pub interrupted: bool,
}

impl TransactionReport {
    /// How many recipients the server accepted with a 2yz RCPT reply, the
    /// number Twisted's `sentMail` calls `numOk`.
    pub fn accepted(&self) -> usize {
        self.recipients
            .iter()
            .filter(|r| r.rcpt_reply.as_ref().is_some_and(Reply::is_positive))
            .count()
    }
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// EHLO (or HELO) succeeded, or the last transaction finished: call
    /// [`ClientSession::start_transaction`] or [`ClientSession::quit`].
    Ready,
    /// DATA got 354: stream the content, dot-stuffed and ending with the
    /// final dot, then call [`ClientSession::data_sent`].
    SendData,
    /// A transaction finished, successfully or not.
    TransactionComplete(TransactionReport),
    /// The session is over; drop the connection. `Ok` after a clean QUIT.
    Closed(Result<(), SessionError>),
    /// STARTTLS got its 220 go-ahead and nothing followed it: run the TLS
    /// handshake on the connection, then call
    /// [`ClientSession::tls_established`]. A failed handshake ends the
    /// connection, never with a fallback to plain text on it.
    StartTls,
}

/// Who wrote a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A command from us.
    Client,
    /// A reply line from the server.
    Server,
}

/// One line of the conversation, without its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptLine {
    /// Who wrote it.
    pub direction: Direction,
    /// The line. Message content is summarised, never copied.
    pub text: String,
}

impl fmt::Display for TranscriptLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arrow = match self.direction {
            Direction::Client => "->",
            Direction::Server => "<-",
        };
        write!(f, "{arrow} {}", self.text)
    }
}

/// A command waiting for its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Ehlo,
    Helo,
    Mail,
    Rcpt(usize),
    Data,
    /// The final dot; `discard` when it ends an empty data phase that a
    /// pipelining server opened although every RCPT failed.
    DataEnd {
        discard: bool,
    },
    /// A BDAT chunk; `last` for the one with LAST.
    Bdat {
        last: bool,
    },
    Rset,
    Quit,
    StartTls,
    /// The AUTH command or a SASL response line.
    Auth,
}

impl Pending {
    fn phase(self) -> Phase {
        match self {
            Pending::Ehlo => Phase::Ehlo,
            Pending::Helo => Phase::Helo,
            Pending::Mail => Phase::Mail,
            Pending::Rcpt(_) => Phase::Rcpt,
            Pending::Data => Phase::Data,
            Pending::DataEnd { .. } | Pending::Bdat { last: true } => Phase::DataEnd,
            Pending::Bdat { last: false } => Phase::DataBlock,
            Pending::Rset => Phase::Rset,
            Pending::Quit => Phase::Quit,
            Pending::StartTls => Phase::StartTls,
            Pending::Auth => Phase::Auth,
        }
    }
}

/// Where the session stands, named for what it waits for.
#[derive(Debug)]
enum State {
    ExpectGreeting,
    /// Replies are due for the commands in `pending`.
    ExpectReplies,
    /// The driver is streaming content.
    SendingData,
    /// Between transactions.
    Ready,
    /// QUIT sent after a refusal; the error is reported once QUIT's reply
    /// or the end of the connection arrives.
    Quitting(Option<SessionError>),
    /// STARTTLS got 220; the driver runs the TLS handshake.
    AwaitingTls,
    Closed,
}

/// The open transaction.
#[derive(Debug)]
struct Transaction {
    envelope: Envelope,
    /// The argument of each recipient's RCPT, with the domain in A-labels
    /// when the server lacks SMTPUTF8.
    forward_paths: Vec<String>,
    /// A reply made up by the client for each recipient it will not send
    /// to on this connection.
    refusals: Vec<Option<Reply>>,
    mail_reply: Option<Reply>,
    rcpt_replies: Vec<Option<Reply>>,
    data_reply: Option<Reply>,
    final_reply: Option<Reply>,
    pipelined: bool,
    /// Content goes in BDAT chunks instead of after DATA.
    chunked: bool,
    data_sent: bool,
}

impl Transaction {
    fn mail_ok(&self) -> bool {
        self.mail_reply.as_ref().is_some_and(Reply::is_positive)
    }

    fn any_accepted(&self) -> bool {
        self.rcpt_replies
            .iter()
            .any(|r| r.as_ref().is_some_and(Reply::is_positive))
    }

    /// Returns the first recipient after `previous` that gets a RCPT command.
    fn next_rcpt(&self, previous: Option<usize>) -> Option<usize> {
        let start = previous.map_or(0, |index| index + 1);
        (start..self.refusals.len()).find(|&index| self.refusals[index].is_none())
    }

    /// Decides each recipient's outcome from the replies received so far.
    fn report(self, interrupted: bool) -> TransactionReport {
        let Transaction {
            envelope,
            refusals,
            mail_reply,
            rcpt_replies,
            data_reply,
            final_reply,
            data_sent,
            chunked,
            ..
        } = self;
        let recipients = envelope
            .recipients
            .into_iter()
            .zip(rcpt_replies)
            .zip(refusals)
            .map(|((address, rcpt_reply), refusal)| {
                if let Some(refusal) = refusal {
                    return RecipientStatus {
                        address,
                        outcome: Outcome::Failed,
                        rcpt_reply: None,
                        reply: Some(refusal),
                        refused_locally: true,
                    };
                }
                let (outcome, reply) = decide(
                    mail_reply.as_ref(),
                    rcpt_reply.as_ref(),
                    data_reply.as_ref(),
                    final_reply.as_ref(),
                    data_sent,
                    chunked,
                );
                RecipientStatus {
                    address,
                    outcome,
                    rcpt_reply,
                    reply,
                    refused_locally: false,
                }
            })
            .collect();
        TransactionReport {
            mail_reply,
            data_reply,
            final_reply,
            recipients,
            interrupted,
        }
    }
}

/// One recipient's outcome, walking the replies in the order they decide
/// it (RFC 5321 section 3.3 and C-TX-03 to C-TX-06). When a reply is missing
/// the session failed there: after the final dot was sent that is the
/// uncertain window of RFC 5321 section 6.1, before it the recipient is
/// deferred.
fn decide(
    mail: Option<&Reply>,
    rcpt: Option<&Reply>,
    data: Option<&Reply>,
    end: Option<&Reply>,
    data_sent: bool,
    chunked: bool,
) -> (Outcome, Option<Reply>) {
    for reply in [mail, rcpt] {
        match reply {
            Some(reply) if reply.is_positive() => {}
            Some(reply) => return (Outcome::of_reply(reply), Some(reply.clone())),
            None => return (Outcome::Deferred, None),
        }
    }
    // With BDAT there is no DATA, and `data` is the reply to a refused chunk.
    match data {
        Some(reply) if reply.is_intermediate() && !chunked => {}
        Some(reply) => return (Outcome::of_reply(reply), Some(reply.clone())),
        None if chunked => {}
        None => return (Outcome::Deferred, None),
    }
    match end {
        Some(reply) => (Outcome::of_reply(reply), Some(reply.clone())),
        None if data_sent => (Outcome::Uncertain, None),
        None => (Outcome::Deferred, None),
    }
}

/// Builds MAIL FROM with the parameters the server supports and the
/// message needs.
fn mail_command(envelope: &Envelope, extensions: &Extensions) -> String {
    let sender = match &envelope.sender {
        Some(sender) if !extensions.smtputf8 => sender
            .to_ascii_domain()
            .map_or_else(|_| sender.to_string(), |ascii| ascii.to_string()),
        Some(sender) => sender.to_string(),
        None => String::new(),
    };
    let mut command = format!("MAIL FROM:<{sender}>");
    // C-8B-05, RFC 1870 section 6: the size with CRLFs, without stuffing.
    if let (Some(_), Some(size)) = (extensions.size, envelope.size) {
        command.push_str(&format!(" SIZE={size}"));
    }
    // C-8B-02, RFC 6152 section 3. Content with 8-bit octets never reaches a
    // server without 8BITMIME, nor binary content one without BINARYMIME
    // (C-EXT-02, RFC 3030 section 3): plan_recipients refuses them first.
    if envelope.binary && extensions.binary_mime {
        command.push_str(" BODY=BINARYMIME");
    } else if envelope.eight_bit && extensions.eight_bit_mime {
        command.push_str(" BODY=8BITMIME");
    }
    // RFC 6531 section 3.4: only when an address or a header needs it.
    // NOTE: UTF-8 header fields go to a server without SMTPUTF8 as 8-bit
    // content, as Postfix sends them, rather than being refused.
    let needs_utf8 = envelope.utf8_headers
        || envelope.sender.iter().any(|a| !a.is_ascii())
        || envelope.recipients.iter().any(|a| !a.is_ascii());
    if needs_utf8 && extensions.smtputf8 {
        command.push_str(" SMTPUTF8");
    }
    // C-EXT-03, RFC 3461 section 4: only to a server that advertises DSN.
    if extensions.dsn {
        command.push_str(&envelope.dsn.mail_parameters());
    }
    command
}

/// Decides, before anything is sent, the RCPT argument of each recipient
/// and which recipients this server cannot take at all.
///
/// Four cases refuse every recipient. The first is a message larger than
/// the advertised SIZE (C-8B-05, RFC 1870 section 6). The second is binary
/// content when the session cannot use BINARYMIME with BDAT (C-EXT-02, RFC
/// 3030 section 3). The third is 8-bit content for a server without
/// 8BITMIME, because mxsend does not convert to 7-bit (C-8B-03, RFC 6152
/// section 3). The fourth is a sender with a non-ASCII local part for a
/// server without SMTPUTF8. Without SMTPUTF8, a
/// recipient with a non-ASCII local part is refused alone, and one with
/// only a non-ASCII domain is sent in A-labels (C-8B-04, RFC 6531 section
/// 3.2).
fn plan_recipients(
    envelope: &Envelope,
    extensions: &Extensions,
    chunked: bool,
) -> (Vec<String>, Vec<Option<Reply>>) {
    let count = envelope.recipients.len();
    let whole = message_refusal(envelope, extensions, chunked);
    let mut forward_paths = Vec::with_capacity(count);
    let mut refusals = Vec::with_capacity(count);
    for recipient in &envelope.recipients {
        if let Some(refusal) = &whole {
            forward_paths.push(recipient.to_string());
            refusals.push(Some(refusal.clone()));
            continue;
        }
        if extensions.smtputf8 || recipient.is_ascii() {
            forward_paths.push(recipient.to_string());
            refusals.push(None);
            continue;
        }
        match recipient.to_ascii_domain() {
            Ok(ascii) => {
                forward_paths.push(ascii.to_string());
                refusals.push(None);
            }
            Err(error) => {
                forward_paths.push(recipient.to_string());
                refusals.push(Some(Reply::new(
                    553,
                    &[format!(
                        "5.6.7 not sent: {error} (this server does not offer SMTPUTF8)"
                    )],
                )));
            }
        }
    }
    (forward_paths, refusals)
}

/// Makes up the reply for a message that cannot go to this server at all,
/// or returns `None` when it can. `chunked` is true when the transaction
/// would use BDAT.
fn message_refusal(envelope: &Envelope, extensions: &Extensions, chunked: bool) -> Option<Reply> {
    // A SIZE of 0 declares no fixed limit (RFC 1870 section 4).
    if let (Some(limit), Some(size)) = (extensions.size, envelope.size)
        && limit > 0
        && size > limit
    {
        return Some(Reply::new(
            552,
            &[format!(
                "5.3.4 not sent: message size {size} exceeds the server's limit of {limit} octets"
            )],
        ));
    }
    if envelope.binary && !(extensions.binary_mime && chunked) {
        let why = match (extensions.binary_mime, extensions.chunking) {
            (true, true) => "BDAT is turned off for this session",
            (true, false) => "the server offers BINARYMIME without CHUNKING",
            (false, _) => "the server does not offer BINARYMIME",
        };
        return Some(Reply::new(
            554,
            &[format!(
                "5.6.3 not sent: the message is binary MIME and {why}; \
                 encode its binary parts as base64 to send it there"
            )],
        ));
    }
    // A server with SMTPUTF8 must support 8BITMIME too (RFC 6531 section
    // 3.1), so Postfix treats it as 8BITMIME-capable, and so does mxsend.
    // BINARYMIME, checked above, covers 8-bit octets as well.
    if envelope.eight_bit && !envelope.binary && !extensions.eight_bit_mime && !extensions.smtputf8
    {
        return Some(Reply::new(
            554,
            &[
                "5.6.3 not sent: the message has 8-bit content and the server does not offer 8BITMIME; \
               encode the message as 7-bit MIME (quoted-printable or base64) to send it there",
            ],
        ));
    }
    if let Some(sender) = &envelope.sender
        && !extensions.smtputf8
        && let Err(error) = sender.to_ascii_domain()
    {
        return Some(Reply::new(
            553,
            &[format!(
                "5.6.7 not sent: the sender {error} (this server does not offer SMTPUTF8)"
            )],
        ));
    }
    None
}

/// The client state machine of one connection.
#[derive(Debug)]
pub struct ClientSession {
    config: SessionConfig,
    parser: ReplyParser,
    state: State,
    pending: VecDeque<Pending>,
    transmit: Vec<u8>,
    events: VecDeque<Event>,
    extensions: Option<Extensions>,
    transaction: Option<Transaction>,
    /// The next transaction, started while the reply to the current one's
    /// final dot is outstanding (see [`ClientSession::queue_transaction`]).
    queued: Option<Transaction>,
    transcript: Vec<TranscriptLine>,
    /// The state of STARTTLS and AUTH.
    security: security::Security,
}

impl ClientSession {
    /// Starts a session that waits for the server's greeting.
    pub fn new(config: SessionConfig) -> ClientSession {
        let config_implicit_tls = config.implicit_tls;
        ClientSession {
            parser: ReplyParser::new(config.reply_limits),
            config,
            state: State::ExpectGreeting,
            pending: VecDeque::new(),
            transmit: Vec::new(),
            events: VecDeque::new(),
            extensions: None,
            transaction: None,
            queued: None,
            transcript: Vec::new(),
            security: security::Security::new(config_implicit_tls),
        }
    }

    /// The extensions of the last successful EHLO; empty after HELO.
    pub fn extensions(&self) -> Option<&Extensions> {
        self.extensions.as_ref()
    }

    /// The transcript so far.
    pub fn transcript(&self) -> &[TranscriptLine] {
        &self.transcript
    }

    /// Takes the transcript so far, leaving it empty.
    pub fn take_transcript(&mut self) -> Vec<TranscriptLine> {
        std::mem::take(&mut self.transcript)
    }

    /// Whether the session waits for a new transaction or QUIT.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The phase the session is in.
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::ExpectGreeting => Phase::Greeting,
            State::SendingData => Phase::DataBlock,
            State::Quitting(_) => Phase::Quit,
            State::Ready | State::Closed => Phase::Idle,
            State::AwaitingTls => Phase::TlsHandshake,
            State::ExpectReplies => self.pending.front().map_or(Phase::Idle, |p| p.phase()),
        }
    }

    /// The phase and the time allowed for the reply the session waits for,
    /// or `None` when it waits for nothing. The driver should bound the
    /// whole reply by it, not each read, so a server that trickles bytes
    /// still times out.
    pub fn timeout(&self) -> Option<(Phase, Duration)> {
        let t = &self.config.timeouts;
        let phase = self.phase();
        let timeout = match phase {
            Phase::Greeting => t.greeting,
            Phase::Ehlo | Phase::Helo => t.ehlo,
            Phase::Mail => t.mail,
            Phase::Rcpt => t.rcpt,
            Phase::Data => t.data,
            Phase::DataBlock => t.data_block,
            Phase::DataEnd => t.data_end,
            Phase::Rset => t.rset,
            Phase::Quit => t.quit,
            // STARTTLS and AUTH replies share the EHLO timeout.
            Phase::StartTls | Phase::Auth => t.ehlo,
            // The driver bounds the handshake itself.
            Phase::TlsHandshake | Phase::Idle => return None,
        };
        Some((phase, timeout))
    }

    /// Takes the bytes to write to the server, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.transmit.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.transmit))
        }
    }

    /// Takes the next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Octets received and not yet part of a handled reply.
    pub fn buffered_len(&self) -> usize {
        self.parser.buffered_len()
    }

    /// Handles bytes received from the server.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if self.is_closed() {
            return;
        }
        self.parser.push(bytes);
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => {
                    self.record_incoming(&reply);
                    self.handle_reply(reply);
                    if self.is_closed() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let phase = self.phase();
                    self.fail(SessionError::Protocol { phase, error });
                    return;
                }
            }
        }
        // After 354 no reply is due until the final dot, so even part of a
        // reply means the server is out of step. Stopping here keeps the
        // driver from sending the dot after it.
        let octets = self.parser.buffered_len();
        if octets > 0 && self.is_sending_data() && !self.is_chunking() {
            self.fail(SessionError::InputDuringContent { octets });
        }
    }

    /// Handles the end of the connection.
    pub fn handle_eof(&mut self) {
        match std::mem::replace(&mut self.state, State::ExpectReplies) {
            State::Closed => self.state = State::Closed,
            State::Quitting(error) => self.close(error.map_or(Ok(()), Err)),
            _ if self.pending.front() == Some(&Pending::Quit) => self.close(Ok(())),
            state => {
                self.state = state;
                let phase = self.phase();
                self.fail(SessionError::ConnectionClosed { phase });
            }
        }
    }

    /// Handles the expiry of the timeout from [`ClientSession::timeout`].
    pub fn handle_timeout(&mut self) {
        let Some((phase, timeout)) = self.timeout() else {
            return;
        };
        if let State::Quitting(error) = std::mem::replace(&mut self.state, State::ExpectReplies) {
            self.close(error.map_or(Ok(()), Err));
            return;
        }
        if phase == Phase::Quit {
            self.close(Ok(()));
            return;
        }
        self.fail(SessionError::TimedOut { phase, timeout });
    }

    /// Starts a transaction. Only valid after [`Event::Ready`].
    ///
    /// # Errors
    ///
    /// [`SessionError::NotReady`] when the session is elsewhere.
    pub fn start_transaction(&mut self, envelope: Envelope) -> Result<(), SessionError> {
        if !matches!(self.state, State::Ready) {
            return Err(SessionError::NotReady {
                phase: self.phase(),
            });
        }
        let transaction = self.new_transaction(envelope);
        if transaction.next_rcpt(None).is_none() {
            // Nothing goes to the server, so the session stays ready.
            self.events
                .push_back(Event::TransactionComplete(transaction.report(false)));
            self.events.push_back(Event::Ready);
            return Ok(());
        }

        self.state = State::ExpectReplies;
        self.send_opening_commands(&transaction);
        self.transaction = Some(transaction);
        Ok(())
    }

    /// Starts the next transaction while the reply to the final dot of the
    /// current one is outstanding, so that its MAIL, RCPT and DATA can go
    /// out in the same write as the dot (RFC 2920 section 3.1 allows the
    /// end of the data to start a pipelined group). The current
    /// transaction's report still comes first.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotReady`] unless the server advertised PIPELINING,
    /// the session waits only for the reply to a final dot sent after DATA,
    /// and no transaction is queued yet. The same error comes when no
    /// recipient can go to this server, because that report would come
    /// before the current one's. Then call
    /// [`ClientSession::start_transaction`] once the session is ready.
    pub fn queue_transaction(&mut self, envelope: Envelope) -> Result<(), SessionError> {
        let pipelining =
            self.config.pipelining && self.extensions.as_ref().is_some_and(|e| e.pipelining);
        let waits_for_dot = matches!(self.state, State::ExpectReplies)
            && self.pending.len() == 1
            && self.pending.front() == Some(&Pending::DataEnd { discard: false })
            && self.transaction.as_ref().is_some_and(|t| !t.chunked)
            && self.queued.is_none();
        let not_ready = SessionError::NotReady {
            phase: self.phase(),
        };
        if !(pipelining && waits_for_dot) {
            return Err(not_ready);
        }
        let transaction = self.new_transaction(envelope);
        if transaction.next_rcpt(None).is_none() {
            return Err(not_ready);
        }
        self.send_opening_commands(&transaction);
        self.queued = Some(transaction);
        Ok(())
    }

    fn new_transaction(&self, envelope: Envelope) -> Transaction {
        let pipelined =
            self.config.pipelining && self.extensions.as_ref().is_some_and(|e| e.pipelining);
        let extensions = self.extensions.clone().unwrap_or_default();
        let chunked = self.config.chunking && extensions.chunking;
        let count = envelope.recipients.len();
        let (forward_paths, refusals) = plan_recipients(&envelope, &extensions, chunked);
        Transaction {
            forward_paths,
            refusals,
            envelope,
            mail_reply: None,
            rcpt_replies: vec![None; count],
            data_reply: None,
            final_reply: None,
            pipelined,
            chunked,
            data_sent: false,
        }
    }

    /// Sends MAIL, and with pipelining every RCPT and (without BDAT) DATA.
    fn send_opening_commands(&mut self, transaction: &Transaction) {
        let extensions = self.extensions.clone().unwrap_or_default();
        let mail = mail_command(&transaction.envelope, &extensions);
        self.send_command(&mail, Pending::Mail);
        if transaction.pipelined {
            let mut next = transaction.next_rcpt(None);
            while let Some(index) = next {
                let command = self.rcpt_command(transaction, index);
                self.send_command(&command, Pending::Rcpt(index));
                next = transaction.next_rcpt(Some(index));
            }
            if !transaction.chunked {
                self.send_command("DATA", Pending::Data);
            }
        }
    }

    /// Records that the driver wrote the whole content and the final dot.
    pub fn data_sent(&mut self) {
        // With BDAT the last chunk ends the data phase, so this call has
        // nothing to end, and taking it would make the session wait for a
        // reply to a dot that was never sent.
        if !matches!(self.state, State::SendingData) || self.is_chunking() {
            return;
        }
        if let Some(transaction) = &mut self.transaction {
            transaction.data_sent = true;
        }
        self.record(Direction::Client, "<message content>".to_owned());
        self.record(Direction::Client, ".".to_owned());
        self.pending.push_back(Pending::DataEnd { discard: false });
        self.state = State::ExpectReplies;
    }

    /// Whether the driver should go on sending content: true from
    /// [`Event::SendData`] until the last chunk, and false as soon as the
    /// server refused a BDAT chunk.
    pub fn is_sending_data(&self) -> bool {
        matches!(self.state, State::SendingData)
    }

    /// Whether a command still waits for its reply.
    pub fn is_waiting_for_reply(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the open transaction sends its content with BDAT, so the
    /// driver calls [`ClientSession::bdat`] for each chunk after
    /// [`Event::SendData`] instead of [`ClientSession::data_sent`].
    pub fn is_chunking(&self) -> bool {
        self.transaction.as_ref().is_some_and(|t| t.chunked)
    }

    /// Returns the command to write just before a chunk of `size` octets,
    /// `BDAT size` or `BDAT size LAST` (RFC 3030 section 2). The content
    /// must come from [`DataEncoder::for_bdat`](crate::data::DataEncoder::for_bdat),
    /// and the sizes must add up to what it produced. After the last chunk
    /// the session waits for the final reply.
    ///
    /// # Errors
    ///
    /// [`SessionError::NotReady`] outside a chunked data phase, including
    /// after the server refused an earlier chunk.
    pub fn bdat(&mut self, size: u64, last: bool) -> Result<Vec<u8>, SessionError> {
        if !(matches!(self.state, State::SendingData) && self.is_chunking()) {
            return Err(SessionError::NotReady {
                phase: self.phase(),
            });
        }
        let command = if last {
            format!("BDAT {size} LAST")
        } else {
            format!("BDAT {size}")
        };
        self.record(Direction::Client, command.clone());
        self.pending.push_back(Pending::Bdat { last });
        if last {
            if let Some(transaction) = &mut self.transaction {
                transaction.data_sent = true;
            }
            self.state = State::ExpectReplies;
        }
        let mut bytes = command.into_bytes();
        bytes.extend_from_slice(b"\r\n");
        Ok(bytes)
    }

    /// Ends the session with QUIT. Valid between transactions; elsewhere it
    /// closes the session at once.
    pub fn quit(&mut self) {
        match self.state {
            State::Ready => {
                self.state = State::ExpectReplies;
                self.send_command("QUIT", Pending::Quit);
            }
            State::Closed | State::Quitting(_) => {}
            _ => {
                // An open transaction still gets its report, with every
                // recipient still open deferred or uncertain.
                self.finish_transaction(true);
                self.close(Ok(()));
            }
        }
    }

    fn send_rcpt(&mut self, index: usize) {
        let Some(transaction) = &self.transaction else {
            return;
        };
        let command = self.rcpt_command(transaction, index);
        self.send_command(&command, Pending::Rcpt(index));
    }

    fn rcpt_command(&self, transaction: &Transaction, index: usize) -> String {
        let mut command = format!("RCPT TO:<{}>", transaction.forward_paths[index]);
        if self.extensions.as_ref().is_some_and(|e| e.dsn) {
            let original = &transaction.envelope.recipients[index];
            command.push_str(&transaction.envelope.dsn.rcpt_parameters(original));
        }
        command
    }

    fn send_command(&mut self, command: &str, pending: Pending) {
        self.transmit.extend_from_slice(command.as_bytes());
        self.transmit.extend_from_slice(b"\r\n");
        self.record(Direction::Client, command.to_owned());
        self.pending.push_back(pending);
    }

    fn record(&mut self, direction: Direction, text: String) {
        if self.config.transcript {
            self.transcript.push(TranscriptLine { direction, text });
        }
    }

    fn record_reply(&mut self, reply: &Reply) {
        if self.config.transcript {
            for line in reply.raw_lines() {
                self.transcript.push(TranscriptLine {
                    direction: Direction::Server,
                    text: line.clone(),
                });
            }
        }
    }

    fn handle_reply(&mut self, reply: Reply) {
        match &self.state {
            State::ExpectGreeting => return self.handle_greeting(reply),
            State::Quitting(_) => {
                if let State::Quitting(error) = std::mem::replace(&mut self.state, State::Closed) {
                    self.close(error.map_or(Ok(()), Err));
                }
                return;
            }
            _ => {}
        }
        let Some(pending) = self.pending.pop_front() else {
            let phase = self.phase();
            return self.fail(SessionError::UnexpectedReply { phase, reply });
        };
        if reply.code() == 421 && pending != Pending::Quit {
            // The 421 still answers its command, so a recipient it leaves
            // open counts as deferred, not uncertain (C-TX-07).
            self.record_closing_reply(pending, &reply);
            let phase = pending.phase();
            return self.fail(SessionError::ServiceClosing { phase, reply });
        }
        match pending {
            Pending::Ehlo => self.handle_ehlo(reply),
            Pending::Helo => self.handle_helo(reply),
            Pending::Mail => self.handle_mail(reply),
            Pending::Rcpt(index) => self.handle_rcpt(index, reply),
            Pending::Data => self.handle_data(reply),
            Pending::DataEnd { discard } => self.handle_data_end(reply, discard),
            Pending::Bdat { last } => self.handle_bdat(reply, last),
            Pending::Rset => self.handle_rset(reply),
            Pending::Quit => self.close(Ok(())),
            Pending::StartTls => self.handle_starttls(reply),
            Pending::Auth => self.handle_auth(reply),
        }
    }

    /// Stores a 421 as the reply to the transaction command it answers.
    fn record_closing_reply(&mut self, pending: Pending, reply: &Reply) {
        let Some(transaction) = &mut self.transaction else {
            return;
        };
        let slot = match pending {
            Pending::Mail => &mut transaction.mail_reply,
            Pending::Rcpt(index) => &mut transaction.rcpt_replies[index],
            Pending::Data | Pending::Bdat { last: false } => &mut transaction.data_reply,
            Pending::DataEnd { discard: false } | Pending::Bdat { last: true } => {
                &mut transaction.final_reply
            }
            _ => return,
        };
        *slot = Some(reply.clone());
    }

    fn handle_greeting(&mut self, reply: Reply) {
        if reply.code() == 421 {
            return self.fail(SessionError::ServiceClosing {
                phase: Phase::Greeting,
                reply,
            });
        }
        if !reply.is_positive() {
            return self.quit_with(SessionError::GreetingRejected(reply));
        }
        self.state = State::ExpectReplies;
        let command = format!("EHLO {}", self.config.helo_name);
        self.send_command(&command, Pending::Ehlo);
    }

    fn handle_ehlo(&mut self, reply: Reply) {
        if reply.is_positive() {
            self.extensions = Some(Extensions::from_ehlo(&reply));
            return self.after_hello(&reply);
        }
        if self.tls_required_now() {
            // HELO cannot advertise STARTTLS, so falling back would skip
            // the TLS that the policy requires.
            return self.quit_with(SessionError::StartTlsNotOffered { ehlo: reply });
        }
        if !self.config.helo_fallback {
            return self.quit_with(SessionError::HeloRejected(reply));
        }
        let command = format!("HELO {}", self.config.helo_name);
        self.send_command(&command, Pending::Helo);
    }

    fn handle_helo(&mut self, reply: Reply) {
        if !reply.is_positive() {
            return self.quit_with(SessionError::HeloRejected(reply));
        }
        self.extensions = Some(Extensions::default());
        self.after_hello(&reply);
    }

    fn handle_mail(&mut self, reply: Reply) {
        let Some(transaction) = &mut self.transaction else {
            return;
        };
        let ok = reply.is_positive();
        transaction.mail_reply = Some(reply);
        if transaction.pipelined {
            return;
        }
        match transaction.next_rcpt(None) {
            Some(first) if ok => self.send_rcpt(first),
            _ => self.abort_transaction(),
        }
    }

    fn handle_rcpt(&mut self, index: usize, reply: Reply) {
        let Some(transaction) = &mut self.transaction else {
            return;
        };
        transaction.rcpt_replies[index] = Some(reply);
        let next = transaction.next_rcpt(Some(index));
        if transaction.pipelined && !transaction.chunked {
            return;
        }
        if let Some(next) = next {
            if !transaction.pipelined {
                self.send_rcpt(next);
            }
            return;
        }
        // The last RCPT reply: DATA, the first BDAT, or RSET.
        let usable = transaction.mail_ok() && transaction.any_accepted();
        if !usable {
            self.abort_transaction();
        } else if transaction.chunked {
            self.state = State::SendingData;
            self.events.push_back(Event::SendData);
        } else {
            self.send_command("DATA", Pending::Data);
        }
    }

    fn handle_data(&mut self, reply: Reply) {
        let Some(transaction) = &mut self.transaction else {
            return;
        };
        if reply.is_positive() {
            // DATA asks for 354. A 2yz would have the recipients count as
            // delivered with no content sent, so it ends the session and
            // leaves them deferred (C-REP-06).
            return self.fail(SessionError::UnexpectedReply {
                phase: Phase::Data,
                reply,
            });
        }
        let go_ahead = reply.is_intermediate();
        let usable = transaction.mail_ok() && transaction.any_accepted();
        transaction.data_reply = Some(reply);
        match (go_ahead, usable) {
            (true, true) => {
                self.state = State::SendingData;
                self.events.push_back(Event::SendData);
            }
            (true, false) => {
                // A pipelining server opened the data phase although MAIL or
                // every RCPT failed. End it with no content, as RFC 2920
                // section 3.1 asks, so nobody gets an empty message.
                self.transmit.extend_from_slice(b".\r\n");
                self.record(Direction::Client, ".".to_owned());
                self.pending.push_back(Pending::DataEnd { discard: true });
            }
            (false, _) => self.abort_transaction(),
        }
    }

    fn handle_data_end(&mut self, reply: Reply, discard: bool) {
        let Some(mut transaction) = self.transaction.take() else {
            return;
        };
        if !discard {
            transaction.final_reply = Some(reply);
        }
        let report = transaction.report(false);
        self.events.push_back(Event::TransactionComplete(report));
        // A queued transaction becomes the current one; its replies follow.
        if let Some(next) = self.queued.take() {
            self.transaction = Some(next);
            return;
        }
        self.become_ready();
    }

    /// Handles the reply to one BDAT chunk. A refused chunk ends the data
    /// phase: the driver stops sending, and once every chunk sent has its
    /// reply, RSET clears the server's state (RFC 3030 section 2).
    fn handle_bdat(&mut self, reply: Reply, last: bool) {
        let Some(transaction) = &mut self.transaction else {
            return;
        };
        let refused = !reply.is_positive();
        if last {
            transaction.final_reply = Some(reply);
        } else if refused && transaction.data_reply.is_none() {
            transaction.data_reply = Some(reply);
        }
        if transaction.data_reply.is_some() && matches!(self.state, State::SendingData) {
            self.state = State::ExpectReplies;
        }
        let chunks_pending = self
            .pending
            .iter()
            .any(|pending| matches!(pending, Pending::Bdat { .. }));
        if chunks_pending || matches!(self.state, State::SendingData) {
            return;
        }
        let Some(transaction) = self.transaction.take() else {
            return;
        };
        let completed = transaction
            .final_reply
            .as_ref()
            .is_some_and(Reply::is_positive)
            && transaction.data_reply.is_none();
        self.events
            .push_back(Event::TransactionComplete(transaction.report(false)));
        if completed {
            self.become_ready();
        } else {
            self.send_command("RSET", Pending::Rset);
        }
    }

    /// Ends a transaction that will send no content and resets the server
    /// with RSET before the next one (C-TX-04, C-TX-08).
    fn abort_transaction(&mut self) {
        let Some(transaction) = self.transaction.take() else {
            return;
        };
        let report = transaction.report(false);
        self.events.push_back(Event::TransactionComplete(report));
        self.send_command("RSET", Pending::Rset);
    }

    fn handle_rset(&mut self, reply: Reply) {
        if reply.is_positive() {
            self.become_ready();
        } else {
            // Never retry RSET: a server that refuses it is out of step.
            self.quit_with(SessionError::RsetRejected(reply));
        }
    }

    /// Emits [`Event::Ready`] once no reply is outstanding.
    fn become_ready(&mut self) {
        if self.pending.is_empty() && self.transaction.is_none() {
            self.state = State::Ready;
            self.events.push_back(Event::Ready);
        }
    }

    /// Sends QUIT after a refusal and reports `error` when the session ends.
    fn quit_with(&mut self, error: SessionError) {
        self.finish_transaction(true);
        self.pending.clear();
        self.transmit.extend_from_slice(b"QUIT\r\n");
        self.record(Direction::Client, "QUIT".to_owned());
        self.state = State::Quitting(Some(error));
    }

    /// Ends the session at once with `error`.
    fn fail(&mut self, error: SessionError) {
        self.finish_transaction(true);
        self.close(Err(error));
    }

    fn finish_transaction(&mut self, interrupted: bool) {
        for transaction in [self.transaction.take(), self.queued.take()]
            .into_iter()
            .flatten()
        {
            let report = transaction.report(interrupted);
            self.events.push_back(Event::TransactionComplete(report));
        }
    }

    fn close(&mut self, result: Result<(), SessionError>) {
        self.pending.clear();
        // Bytes after the last reply are never read, so they go now.
        self.parser.discard();
        self.state = State::Closed;
        self.events.push_back(Event::Closed(result));
    }
}
