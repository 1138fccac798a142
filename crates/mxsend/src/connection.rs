//! One SMTP connection over tokio, driving the sans-I/O session.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mxsend_proto::data::{DataEncoder, DataError, DataPolicy};
use mxsend_proto::session::TranscriptLine;
use mxsend_proto::{
    AuthSettings, ClientSession, Envelope, Event, Extensions, Phase, ReplyLimits, SessionConfig,
    SessionError, Timeouts, TransactionReport,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, trace};

use crate::message::{CHUNK_SIZE, Content, Message};
use crate::tls::{self, TlsConfig, TlsPolicy, TlsSetupError};

/// Settings of each connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The EHLO name. `None` sends the address literal of the local end of
    /// the connection, as RFC 5321 section 4.1.4 allows for a client
    /// without a meaningful name.
    pub helo_name: Option<String>,
    /// Time allowed for the TCP handshake. Default 30 seconds, as Postfix's
    /// `smtp_connect_timeout`.
    pub connect_timeout: Duration,
    /// Reply timeouts by phase (RFC 5321 section 4.5.3.2 minimums).
    pub timeouts: Timeouts,
    /// Bounds on each reply.
    pub reply_limits: ReplyLimits,
    /// Send HELO once when EHLO is refused. Default true.
    pub helo_fallback: bool,
    /// Pipeline commands when the server advertises PIPELINING. Default true.
    pub pipelining: bool,
    /// Send content in BDAT chunks when the server advertises CHUNKING
    /// (RFC 3030). Default true.
    pub chunking: bool,
    /// Line length rules for content.
    pub data_policy: DataPolicy,
    /// Keep a transcript. Default true.
    pub transcript: bool,
    /// TLS policy, CA file and client certificate. The default policy
    /// depends on the route: see [`TlsConfig::policy`].
    pub tls: TlsConfig,
    /// Credentials for SMTP AUTH. Default `None`: no AUTH.
    pub auth: Option<AuthSettings>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            helo_name: None,
            connect_timeout: Duration::from_secs(30),
            timeouts: Timeouts::default(),
            reply_limits: ReplyLimits::default(),
            helo_fallback: true,
            pipelining: true,
            chunking: true,
            data_policy: DataPolicy::default(),
            transcript: true,
            tls: TlsConfig::default(),
            auth: None,
        }
    }
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {address}")]
    Connect {
        /// The address tried.
        address: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TCP handshake did not finish in time.
    #[error("connecting to {address} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The address tried.
        address: SocketAddr,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// Reading or writing failed.
    #[error("I/O error with {address} during {phase}")]
    Io {
        /// The server.
        address: SocketAddr,
        /// Where the session was.
        phase: Phase,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The session ended: the server refused, misbehaved or went away.
    #[error("session with {address} failed{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Session {
        /// The server.
        address: SocketAddr,
        /// What happened.
        #[source]
        error: SessionError,
        /// The likely mistake, when the error points to one.
        hint: Option<Hint>,
    },
    /// The message content could not be read or encoded.
    #[error("cannot send message content")]
    Content {
        /// The cause.
        #[source]
        source: ContentError,
    },
    /// The connection was used after it ended.
    #[error("connection to {address} is closed")]
    Closed {
        /// The server.
        address: SocketAddr,
    },
    /// The TLS client configuration could not be built from the settings.
    #[error("invalid TLS settings")]
    TlsSetup(#[source] TlsSetupError),
    /// The TLS handshake failed. The connection is dropped: nothing more
    /// is sent on it, in plain text or otherwise.
    #[error("TLS handshake with {host} ({address}) failed: {reason}")]
    Tls {
        /// The server.
        address: SocketAddr,
        /// The name the certificate was checked against.
        host: String,
        /// What went wrong, with the likely mistake when known.
        reason: String,
    },
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake with {host} ({address}) timed out after {timeout:?}{hint}")]
    TlsTimeout {
        /// The server.
        address: SocketAddr,
        /// The name the certificate was checked against.
        host: String,
        /// The timeout that expired.
        timeout: Duration,
        /// The likely mistake, starting with "; ", or empty.
        hint: &'static str,
    },
}

/// A likely configuration mistake behind a [`ConnectionError::Session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hint {
    /// No greeting came on a connection without TLS: the port probably
    /// expects implicit TLS.
    ImplicitTlsPort,
    /// The policy requires STARTTLS and the server did not offer it.
    StartTlsRequired(TlsPolicy),
}

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hint::ImplicitTlsPort => f.write_str(
                "no greeting: the server may expect TLS from the first byte, as on port 465; \
                 try --tls implicit",
            ),
            Hint::StartTlsRequired(policy) => write!(
                f,
                "the TLS policy is {policy}; choose --tls may to send in plain text when a \
                 server offers no STARTTLS, or --tls implicit for a port that expects TLS \
                 from the first byte"
            ),
        }
    }
}

impl ConnectionError {
    /// Whether the TLS handshake failed or timed out, the case in which the
    /// `may` policy tries once more without TLS.
    pub fn is_tls_handshake_failure(&self) -> bool {
        matches!(
            self,
            ConnectionError::Tls { .. } | ConnectionError::TlsTimeout { .. }
        )
    }

    /// The session error behind this error, if there is one.
    pub fn session_error(&self) -> Option<&SessionError> {
        match self {
            ConnectionError::Session { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A failure of message content during the data phase.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// Reading the content failed.
    #[error("reading message content failed")]
    Read(#[source] std::io::Error),
    /// The content breaks the line length policy.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// The largest BDAT chunk: large enough that a 1 GiB message needs about a
/// thousand replies, small enough to keep memory flat.
const BDAT_CHUNK_SIZE: usize = 1024 * 1024;

/// The envelope of `message` for `recipients`.
fn envelope_of(message: &Message, recipients: &[mxsend_proto::Address]) -> Envelope {
    Envelope {
        sender: message.sender().cloned(),
        recipients: recipients.to_vec(),
        size: Some(message.size()),
        eight_bit: message.is_eight_bit(),
        binary: message.is_binary(),
        utf8_headers: message.has_utf8_headers(),
        dsn: message.dsn().clone(),
    }
}

/// Supplies messages for one connection and takes each transaction's
/// report, in the manner of Twisted's `SMTPClient` callbacks
/// (`getMailFrom`, `getMailTo`, `getMailData`, `sentMail`).
pub trait MailSource {
    /// The next message to send, or `None` to end the session with QUIT.
    fn next_message(&mut self) -> Option<Message>;

    /// Receives the report of each transaction: the final reply, how many
    /// recipients were accepted and each recipient's reply.
    fn sent_mail(&mut self, report: &TransactionReport);
}

/// An open SMTP connection that completed EHLO or HELO, and STARTTLS and
/// AUTH when its settings ask for them.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    session: ClientSession,
    address: SocketAddr,
    data_policy: DataPolicy,
    data_block_timeout: Duration,
    pipelining: bool,
    read_buffer: Box<[u8]>,
    /// Buffers of the data phase, kept between messages so that each
    /// message costs no allocation and no zeroing.
    content_buffer: Vec<u8>,
    wire_buffer: Vec<u8>,
    /// The phase and the deadline of the reply being waited for.
    deadline: Option<(Phase, Instant)>,
    result: Option<Result<(), SessionError>>,
    tls: TlsState,
}

/// The TLS settings and state of a connection.
#[derive(Debug)]
struct TlsState {
    policy: TlsPolicy,
    /// `None` under [`TlsPolicy::None`].
    config: Option<Arc<rustls::ClientConfig>>,
    host: String,
    server_name: ServerName<'static>,
    timeout: Duration,
    /// Protocol version and cipher suite once the handshake is complete.
    description: Option<String>,
}

impl Connection {
    /// Connects to `address`, waits for the greeting and sends EHLO.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Connect`] or [`ConnectionError::ConnectTimeout`]
    /// when no TCP connection could be made; [`ConnectionError::Session`]
    /// when the greeting or EHLO failed, for example with
    /// [`SessionError::GreetingRejected`]; [`ConnectionError::Io`].
    pub async fn connect(
        address: SocketAddr,
        config: &ConnectionConfig,
    ) -> Result<Connection, ConnectionError> {
        Connection::connect_host(address, &address.ip().to_string(), config).await
    }

    /// Connects to `address` of the server named `host`, the name that a
    /// verified certificate must match and that goes out as SNI, then
    /// waits for the greeting and sends EHLO, STARTTLS and AUTH as the
    /// settings ask. The TLS policy is `config.tls.policy`, or
    /// [`TlsPolicy::May`] when it is `None`.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect`], and also [`ConnectionError::TlsSetup`]
    /// for unreadable certificate files, [`ConnectionError::Tls`] or
    /// [`ConnectionError::TlsTimeout`] for a failed handshake, and
    /// [`ConnectionError::Session`]
    /// with [`SessionError::StartTlsNotOffered`],
    /// [`SessionError::DataAfterStartTls`], [`SessionError::AuthRejected`]
    /// and the other STARTTLS and AUTH errors.
    pub async fn connect_host(
        address: SocketAddr,
        host: &str,
        config: &ConnectionConfig,
    ) -> Result<Connection, ConnectionError> {
        let policy = config.tls.policy.unwrap_or(TlsPolicy::May);
        let tls_config = match policy {
            TlsPolicy::None => None,
            _ => Some(
                config
                    .tls
                    .client_config(policy)
                    .map_err(ConnectionError::TlsSetup)?,
            ),
        };
        debug!(%address, %host, tls = %policy, "connecting");
        let stream =
            match tokio::time::timeout(config.connect_timeout, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(ConnectionError::Connect { address, source }),
                Err(_) => {
                    return Err(ConnectionError::ConnectTimeout {
                        address,
                        timeout: config.connect_timeout,
                    });
                }
            };
        // Each pipelined group goes out in one write; Nagle's algorithm would
        // only hold it back waiting for an ACK.
        let _ = stream.set_nodelay(true);
        let local_address = stream.local_addr().ok();
        let tls = TlsState {
            policy,
            config: tls_config,
            host: host.trim_end_matches('.').to_owned(),
            server_name: tls::server_name(host, address.ip()),
            timeout: config.tls.handshake_timeout,
            description: None,
        };
        let helo_name = match &config.helo_name {
            Some(name) => name.clone(),
            None => address_literal(local_address),
        };
        let mut session_config =
            SessionConfig::new(&helo_name).map_err(|error| ConnectionError::Session {
                address,
                error,
                hint: None,
            })?;
        session_config.timeouts = config.timeouts;
        session_config.reply_limits = config.reply_limits;
        session_config.helo_fallback = config.helo_fallback;
        session_config.pipelining = config.pipelining;
        session_config.chunking = config.chunking;
        session_config.transcript = config.transcript;
        session_config.starttls = policy.starttls();
        session_config.implicit_tls = policy == TlsPolicy::Implicit;
        session_config.auth = config.auth.clone();
        let mut connection = Connection {
            stream: Stream::Plain(stream),
            session: ClientSession::new(session_config),
            address,
            data_policy: config.data_policy,
            data_block_timeout: config.timeouts.data_block,
            pipelining: config.pipelining,
            read_buffer: vec![0; 16 * 1024].into_boxed_slice(),
            content_buffer: Vec::new(),
            wire_buffer: Vec::new(),
            deadline: None,
            result: None,
            tls,
        };
        if policy == TlsPolicy::Implicit {
            connection.handshake().await?;
        }
        // At most one STARTTLS event: the session sends STARTTLS only on an
        // unencrypted connection, and the handshake encrypts it or fails.
        loop {
            match connection.next_event().await {
                Ok(Event::Ready) => return Ok(connection),
                Ok(Event::StartTls) => {
                    connection.handshake().await?;
                    connection.session.tls_established();
                }
                Ok(other) => return Err(connection.unexpected(other)),
                // A port that expects implicit TLS waits for the client's
                // handshake and never greets.
                Err(ConnectionError::Session {
                    error:
                        error @ SessionError::TimedOut {
                            phase: Phase::Greeting,
                            ..
                        },
                    ..
                }) if policy != TlsPolicy::Implicit => {
                    return Err(ConnectionError::Session {
                        address,
                        error,
                        hint: Some(Hint::ImplicitTlsPort),
                    });
                }
                Err(ConnectionError::Session {
                    error: error @ SessionError::StartTlsNotOffered { .. },
                    ..
                }) => {
                    return Err(ConnectionError::Session {
                        address,
                        error,
                        hint: Some(Hint::StartTlsRequired(policy)),
                    });
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Runs the TLS handshake on the TCP stream, bounded by the handshake
    /// timeout. On failure the stream is gone, so nothing can follow in
    /// plain text (C-TLS-01, C-TLS-03).
    async fn handshake(&mut self) -> Result<(), ConnectionError> {
        let address = self.address;
        let host = self.tls.host.clone();
        let tcp = match std::mem::replace(&mut self.stream, Stream::Closed) {
            Stream::Plain(tcp) => tcp,
            other => {
                self.stream = other;
                return Err(ConnectionError::Closed { address });
            }
        };
        let Some(config) = self.tls.config.clone() else {
            return Err(ConnectionError::Closed { address });
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = connector.connect(self.tls.server_name.clone(), tcp);
        match tokio::time::timeout(self.tls.timeout, handshake).await {
            Ok(Ok(stream)) => {
                let (_, state) = stream.get_ref();
                let version = state
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .unwrap_or("TLS");
                let suite = state
                    .negotiated_cipher_suite()
                    .and_then(|s| s.suite().as_str())
                    .unwrap_or("unknown cipher suite");
                let checked = if self.tls.policy.verifies_certificate() {
                    "certificate verified"
                } else {
                    "certificate not verified"
                };
                let description = format!("{version} {suite}, {checked}");
                debug!(%address, tls = %description, "TLS established");
                self.tls.description = Some(description);
                self.stream = Stream::Tls(Box::new(stream));
                Ok(())
            }
            Ok(Err(error)) => {
                let reason = tls::describe_handshake_error(&error, self.tls.policy);
                debug!(%address, %reason, "TLS handshake failed");
                Err(ConnectionError::Tls {
                    address,
                    host,
                    reason,
                })
            }
            Err(_) => {
                let hint = if self.tls.policy == TlsPolicy::Implicit {
                    "; the server may expect plain SMTP with STARTTLS on this port \
                     (use --tls verify instead of implicit)"
                } else {
                    ""
                };
                Err(ConnectionError::TlsTimeout {
                    address,
                    host,
                    timeout: self.tls.timeout,
                    hint,
                })
            }
        }
    }

    /// The TLS protocol, cipher suite and whether the certificate was
    /// verified, or `None` for a connection in plain text.
    pub fn tls_description(&self) -> Option<&str> {
        self.tls.description.as_deref()
    }

    /// Whether the connection is encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The server's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What the server advertised.
    pub fn extensions(&self) -> Option<&Extensions> {
        self.session.extensions()
    }

    /// Takes the transcript so far.
    pub fn take_transcript(&mut self) -> Vec<TranscriptLine> {
        self.session.take_transcript()
    }

    /// Reads whatever the server sent while the connection was idle, without
    /// waiting, and returns whether the connection is still usable. A
    /// server that closed it, or sent an unprompted 421, makes it unusable.
    pub fn check_idle(&mut self) -> bool {
        if !self.is_usable() {
            return false;
        }
        if self.read_available_replies().is_err() {
            return false;
        }
        while let Some(event) = self.session.poll_event() {
            if let Event::Closed(result) = event {
                self.result = Some(result);
            }
        }
        self.is_usable() && self.session.is_ready()
    }

    /// Whether another transaction may use this connection.
    pub fn is_usable(&self) -> bool {
        self.result.is_none()
    }

    /// Sends one message to `recipients`, a subset of its recipients or all
    /// of them.
    ///
    /// A returned report is final for each recipient in it; a report with
    /// [`TransactionReport::interrupted`] set comes with a connection that
    /// is no longer usable.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::Closed`] when the connection ended before;
    /// [`ConnectionError::Content`] when reading the content failed (the
    /// connection is dropped, the recipients stay unsent).
    pub async fn send(
        &mut self,
        message: &Message,
        recipients: &[mxsend_proto::Address],
    ) -> Result<TransactionReport, ConnectionError> {
        if !self.is_usable() {
            return Err(ConnectionError::Closed {
                address: self.address,
            });
        }
        self.wait_ready().await?;
        self.session
            .start_transaction(envelope_of(message, recipients))
            .map_err(|error| ConnectionError::Session {
                address: self.address,
                error,
                hint: None,
            })?;
        loop {
            match self.next_event().await {
                // The session may have failed after the go-ahead, on a reply
                // that came with it. Then no content may follow: a final dot
                // would deliver a message that the report calls deferred.
                Ok(Event::SendData) if !self.session.is_sending_data() => {}
                Ok(Event::SendData) => {
                    let sent = if self.session.is_chunking() {
                        self.send_chunks(message).await
                    } else {
                        self.send_content(message).await
                    };
                    if let Err(error) = sent {
                        self.session.handle_eof();
                        self.drain_events();
                        return Err(error);
                    }
                    if !self.session.is_chunking() {
                        self.session.data_sent();
                    }
                }
                Ok(Event::TransactionComplete(report)) => {
                    self.drain_ready();
                    return Ok(report);
                }
                Ok(Event::Ready) => {}
                Ok(event @ Event::StartTls) => return Err(self.unexpected(event)),
                Ok(Event::Closed(_)) => {
                    return Err(ConnectionError::Closed {
                        address: self.address,
                    });
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Runs the session with messages from `source` until it returns
    /// `None`, then sends QUIT.
    ///
    /// # Errors
    ///
    /// The first error that ends the session; each transaction finished
    /// before it was reported to `source`.
    ///
    /// With PIPELINING, the next message is taken from `source` as soon as
    /// the content of the current one is written, and its MAIL, RCPT and
    /// DATA go out in the same write as the final dot (RFC 2920 section
    /// 3.1), so each message costs one round trip.
    pub async fn run<S: MailSource>(mut self, source: &mut S) -> Result<(), ConnectionError> {
        let mut upcoming = source.next_message().map(|message| (message, false));
        while let Some((message, started)) = upcoming.take() {
            if !started {
                if !self.is_usable() {
                    return Err(ConnectionError::Closed {
                        address: self.address,
                    });
                }
                self.wait_ready().await?;
                let envelope = envelope_of(&message, message.recipients());
                self.session.start_transaction(envelope).map_err(|error| {
                    ConnectionError::Session {
                        address: self.address,
                        error,
                        hint: None,
                    }
                })?;
            }
            let mut source_polled = false;
            let report = self
                .drive_pipelined(&message, source, &mut upcoming, &mut source_polled)
                .await?;
            source.sent_mail(&report);
            if !self.is_usable() {
                // A queued transaction ended with the session; its report
                // is in the events.
                while let Some(event) = self.session.poll_event() {
                    if let Event::TransactionComplete(report) = event {
                        source.sent_mail(&report);
                    }
                }
                return match self.result.take() {
                    Some(Err(error)) => Err(ConnectionError::Session {
                        address: self.address,
                        error,
                        hint: None,
                    }),
                    _ => Err(ConnectionError::Closed {
                        address: self.address,
                    }),
                };
            }
            if !source_polled {
                upcoming = source.next_message().map(|message| (message, false));
            }
        }
        self.quit().await
    }

    /// Hands `source` the reports that the end of the session left, the
    /// current transaction's and a queued one's, and records how it ended.
    fn report_remaining<S: MailSource>(&mut self, source: &mut S) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::TransactionComplete(report) => source.sent_mail(&report),
                Event::Closed(result) => self.result = Some(result),
                _ => {}
            }
        }
    }

    /// Drives the open transaction of `message` to its report.
    ///
    /// When the content goes after DATA, the next message is taken from
    /// `source` once the content is written. If the session can queue it,
    /// its commands join the write of the final dot, and it is in `upcoming`
    /// marked as started. `source_polled` is set when `source` was asked for
    /// the next message, so the caller does not ask twice.
    async fn drive_pipelined<S: MailSource>(
        &mut self,
        message: &Message,
        source: &mut S,
        upcoming: &mut Option<(Message, bool)>,
        source_polled: &mut bool,
    ) -> Result<TransactionReport, ConnectionError> {
        loop {
            match self.next_event().await {
                // As in `send`: no content after a failed go-ahead.
                Ok(Event::SendData) if !self.session.is_sending_data() => {}
                Ok(Event::SendData) if self.session.is_chunking() => {
                    if let Err(error) = self.send_chunks(message).await {
                        self.session.handle_eof();
                        self.report_remaining(source);
                        return Err(error);
                    }
                }
                Ok(Event::SendData) => {
                    let mut wire = std::mem::take(&mut self.wire_buffer);
                    wire.clear();
                    let mut result = self.stream_content(message, &mut wire).await;
                    let mut go_on = false;
                    if result.is_ok() {
                        match self.content_may_continue() {
                            Ok(may) => go_on = may,
                            Err(error) => result = Err(error),
                        }
                    }
                    if go_on {
                        self.session.data_sent();
                        *source_polled = true;
                        *upcoming = source.next_message().map(|next| {
                            let envelope = envelope_of(&next, next.recipients());
                            let queued = self.session.queue_transaction(envelope).is_ok();
                            (next, queued)
                        });
                        if let Some(commands) = self.session.poll_transmit() {
                            wire.extend_from_slice(&commands);
                        }
                        result = self.write(&wire).await;
                    }
                    self.wire_buffer = wire;
                    if let Err(error) = result {
                        self.session.handle_eof();
                        self.report_remaining(source);
                        return Err(error);
                    }
                }
                Ok(Event::TransactionComplete(report)) => {
                    // With a queued transaction no Ready follows, and the
                    // next event may belong to it.
                    if !upcoming.as_ref().is_some_and(|(_, queued)| *queued) {
                        self.drain_ready();
                    }
                    return Ok(report);
                }
                Ok(Event::Ready) => {}
                Ok(event @ Event::StartTls) => return Err(self.unexpected(event)),
                Ok(Event::Closed(_)) => {
                    return Err(ConnectionError::Closed {
                        address: self.address,
                    });
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sends QUIT, waits for its reply and closes the connection.
    ///
    /// # Errors
    ///
    /// An I/O error while doing so. The connection is closed either way.
    pub async fn quit(mut self) -> Result<(), ConnectionError> {
        if self.is_usable() && self.wait_ready().await.is_ok() {
            self.session.quit();
            while !self.session.is_closed() {
                self.next_event().await?;
            }
        }
        // Over TLS the shutdown writes close_notify and flushes what the
        // session still holds, which never leaves when the server has
        // stopped reading. The data block timeout bounds that write too.
        let _ = tokio::time::timeout(self.data_block_timeout, self.stream.shutdown()).await;
        Ok(())
    }

    /// Reads until the session is ready for a transaction, as after the
    /// RSET that follows a transaction without content.
    async fn wait_ready(&mut self) -> Result<(), ConnectionError> {
        while !self.session.is_ready() {
            match self.next_event().await? {
                Event::Ready => {}
                Event::Closed(_) => {
                    return Err(ConnectionError::Closed {
                        address: self.address,
                    });
                }
                other => return Err(self.unexpected(other)),
            }
        }
        Ok(())
    }

    /// Why the session ended, once it has.
    pub fn session_result(&self) -> Option<&Result<(), SessionError>> {
        self.result.as_ref()
    }

    /// Writes pending commands and reads until the session has an event.
    async fn next_event(&mut self) -> Result<Event, ConnectionError> {
        loop {
            if let Some(bytes) = self.session.poll_transmit() {
                self.write(&bytes).await?;
                self.deadline = None;
            }
            if let Some(event) = self.session.poll_event() {
                if let Event::Closed(result) = &event {
                    self.result = Some(result.clone());
                    if let Err(error) = result {
                        debug!(address = %self.address, %error, "session ended");
                        return Err(ConnectionError::Session {
                            address: self.address,
                            error: error.clone(),
                            hint: None,
                        });
                    }
                }
                return Ok(event);
            }
            self.read_reply_bytes().await?;
        }
    }

    /// Waits for bytes from the server within the deadline of the reply
    /// the session waits for, and hands them, the end of the connection or
    /// the timeout to the session.
    async fn read_reply_bytes(&mut self) -> Result<(), ConnectionError> {
        let Some((phase, timeout)) = self.session.timeout() else {
            return Err(ConnectionError::Closed {
                address: self.address,
            });
        };
        // One deadline bounds the whole reply, so a server that sends a
        // byte now and then cannot hold the session forever.
        let deadline = match self.deadline {
            Some((current, deadline)) if current == phase => deadline,
            _ => {
                let deadline = Instant::now() + timeout;
                self.deadline = Some((phase, deadline));
                deadline
            }
        };
        match tokio::time::timeout_at(deadline, self.stream.read(&mut self.read_buffer)).await {
            Err(_) => self.session.handle_timeout(),
            Ok(Ok(0)) => self.session.handle_eof(),
            Ok(Ok(read)) => {
                let bytes = &self.read_buffer[..read];
                if self.session.is_authenticating() {
                    trace!(address = %self.address, received = "<SASL reply redacted>", "reply bytes");
                } else {
                    trace!(address = %self.address, received = %String::from_utf8_lossy(bytes).trim_end(), "reply bytes");
                }
                self.session.handle_input(bytes);
            }
            // A reset, or over TLS a close without close_notify, ends the
            // connection as an end of file does. The session then reports
            // each recipient by where it stood: uncertain after the final
            // dot (RFC 5321 section 6.1), deferred before it. Returning the
            // error here instead would drop that report, and an uncertain
            // recipient would be sent again.
            Ok(Err(error)) => {
                debug!(address = %self.address, %phase, %error, "connection lost while reading");
                self.session.handle_eof();
            }
        }
        Ok(())
    }

    /// Hands the session whatever replies have already arrived, without
    /// waiting, so a refused BDAT chunk stops the upload early.
    fn read_available_replies(&mut self) -> Result<(), ConnectionError> {
        loop {
            match self.stream.try_read_now(&mut self.read_buffer) {
                Ok(0) => {
                    self.session.handle_eof();
                    return Ok(());
                }
                Ok(read) => self.session.handle_input(&self.read_buffer[..read]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(source) => {
                    return Err(ConnectionError::Io {
                        address: self.address,
                        phase: self.session.phase(),
                        source,
                    });
                }
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        // A SASL line always goes out alone, with its reply pending.
        if self.session.is_authenticating() {
            trace!(address = %self.address, sent = "<SASL line redacted>", "commands");
        } else {
            trace!(address = %self.address, sent = %String::from_utf8_lossy(bytes).trim_end(), "commands");
        }
        let phase = self.session.phase();
        // Over TLS, write_all can return with records still buffered when
        // the socket is full. The flush sends them, so a final dot never
        // waits unsent while the session waits for its reply.
        let written = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.data_block_timeout, written).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ConnectionError::Io {
                address: self.address,
                phase,
                source,
            }),
            Err(_) => Err(ConnectionError::Session {
                address: self.address,
                error: SessionError::TimedOut {
                    phase,
                    timeout: self.data_block_timeout,
                },
                hint: None,
            }),
        }
    }

    /// Streams the content through the DATA encoder, each write bounded by
    /// the data block timeout.
    async fn send_content(&mut self, message: &Message) -> Result<(), ConnectionError> {
        let mut wire = std::mem::take(&mut self.wire_buffer);
        wire.clear();
        let mut result = self.stream_content(message, &mut wire).await;
        if result.is_ok() {
            result = match self.content_may_continue() {
                Ok(true) => self.write(&wire).await,
                other => other.map(drop),
            };
        }
        self.wire_buffer = wire;
        result
    }

    /// Hands the session whatever the server sent while the content was
    /// going out after 354, and returns whether the content may go on.
    /// Nothing is due from the server before the final dot, so any byte
    /// ends the session, and the dot is never sent after it: a reply that
    /// arrived early cannot be mistaken for the reply to the dot (C-REP-06).
    ///
    /// NOTE: this catches only replies that arrive before the last write,
    /// which carries up to 64 KiB of content with the dot. A reply the
    /// server sends while reading that write comes after the dot and is
    /// taken as its reply; SMTP gives no way to tell the two apart.
    fn content_may_continue(&mut self) -> Result<bool, ConnectionError> {
        self.read_available_replies()?;
        Ok(self.session.is_sending_data())
    }

    /// Encodes the content into `wire` and writes it whenever it holds a
    /// chunk. The rest, with the final dot, stays in `wire` for the caller
    /// to write, so a small message costs one write for all its data, and
    /// the next message's commands can join that write.
    async fn stream_content(
        &mut self,
        message: &Message,
        wire: &mut Vec<u8>,
    ) -> Result<(), ConnectionError> {
        let content_error = |source| ConnectionError::Content { source };
        let mut encoder = DataEncoder::new(self.data_policy);
        match message.content() {
            Content::Memory(bytes) => {
                for piece in bytes.chunks(CHUNK_SIZE) {
                    encoder
                        .encode(piece, wire)
                        .map_err(|e| content_error(e.into()))?;
                    if wire.len() >= CHUNK_SIZE {
                        if !self.content_may_continue()? {
                            return Ok(());
                        }
                        self.write(wire).await?;
                        wire.clear();
                    }
                }
            }
            Content::File(_) => {
                let mut reader = message
                    .content()
                    .open()
                    .await
                    .map_err(|e| content_error(ContentError::Read(e)))?;
                let mut chunk = std::mem::take(&mut self.content_buffer);
                chunk.resize(CHUNK_SIZE, 0);
                let streamed = loop {
                    let read = match reader.read(&mut chunk).await {
                        Ok(0) => break Ok(()),
                        Ok(read) => read,
                        Err(error) => break Err(content_error(ContentError::Read(error))),
                    };
                    if let Err(error) = encoder.encode(&chunk[..read], wire) {
                        break Err(content_error(error.into()));
                    }
                    if wire.len() >= CHUNK_SIZE {
                        match self.content_may_continue() {
                            Ok(true) => {}
                            Ok(false) => break Ok(()),
                            Err(error) => break Err(error),
                        }
                        if let Err(error) = self.write(wire).await {
                            break Err(error);
                        }
                        wire.clear();
                    }
                };
                self.content_buffer = chunk;
                streamed?;
            }
        }
        encoder.finish(wire).map_err(|e| content_error(e.into()))
    }

    /// Streams the content in BDAT chunks of at most [`BDAT_CHUNK_SIZE`]
    /// octets (RFC 3030). With PIPELINING the chunks follow each other
    /// without waiting, and replies that have arrived are read between
    /// them. Without it, each chunk waits for its reply (RFC 3030 section
    /// 4.2). Either way a refused chunk stops the upload.
    async fn send_chunks(&mut self, message: &Message) -> Result<(), ConnectionError> {
        let content_error = |source| ConnectionError::Content { source };
        let pipelining = self.session.extensions().is_some_and(|e| e.pipelining) && self.pipelining;
        let mut reader = message
            .content()
            .open()
            .await
            .map_err(|e| content_error(ContentError::Read(e)))?;
        // Binary MIME goes as it is (RFC 3030 section 3); text gets CRLF
        // line breaks, as with DATA.
        let mut encoder = (!message.is_binary()).then(|| DataEncoder::for_bdat(self.data_policy));
        let mut chunk = vec![0; CHUNK_SIZE];
        let mut wire = Vec::with_capacity(BDAT_CHUNK_SIZE + CHUNK_SIZE + CHUNK_SIZE / 4);
        loop {
            let read = reader
                .read(&mut chunk)
                .await
                .map_err(|e| content_error(ContentError::Read(e)))?;
            if read == 0 {
                break;
            }
            match encoder.as_mut() {
                Some(encoder) => encoder
                    .encode(&chunk[..read], &mut wire)
                    .map_err(|e| content_error(e.into()))?,
                None => wire.extend_from_slice(&chunk[..read]),
            }
            if wire.len() < BDAT_CHUNK_SIZE {
                continue;
            }
            // The encoder may overshoot the chunk size by most of a read,
            // which waits for the next chunk.
            self.write_chunk(&wire[..BDAT_CHUNK_SIZE], false).await?;
            wire.drain(..BDAT_CHUNK_SIZE);
            if pipelining {
                self.read_available_replies()?;
            } else {
                while self.session.is_sending_data() && self.session.is_waiting_for_reply() {
                    self.read_reply_bytes().await?;
                }
            }
            if !self.session.is_sending_data() {
                // The server refused a chunk or closed the connection.
                return Ok(());
            }
        }
        if let Some(encoder) = encoder.as_mut() {
            encoder
                .finish(&mut wire)
                .map_err(|e| content_error(e.into()))?;
        }
        self.write_chunk(&wire, true).await
    }

    async fn write_chunk(&mut self, chunk: &[u8], last: bool) -> Result<(), ConnectionError> {
        let command = self
            .session
            .bdat(chunk.len() as u64, last)
            .map_err(|error| ConnectionError::Session {
                address: self.address,
                error,
                hint: None,
            })?;
        self.write(&command).await?;
        self.write(chunk).await
    }

    /// Consumes the `Ready` that follows a finished transaction, or records
    /// the end of the session.
    fn drain_ready(&mut self) {
        if let Some(Event::Closed(result)) = self.session.poll_event() {
            self.result = Some(result);
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            if let Event::Closed(result) = event {
                self.result = Some(result);
            }
        }
    }

    fn unexpected(&self, event: Event) -> ConnectionError {
        debug!(address = %self.address, ?event, "unexpected event");
        ConnectionError::Closed {
            address: self.address,
        }
    }
}

/// The address literal of RFC 5321 section 4.1.3 for our end of the
/// connection, such as `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn address_literal(local: Option<SocketAddr>) -> String {
    match local {
        Some(SocketAddr::V4(v4)) => format!("[{}]", v4.ip()),
        Some(SocketAddr::V6(v6)) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{}]", v6.ip()),
        },
        None => "[127.0.0.1]".to_owned(),
    }
}

/// The byte stream under the session: TCP, then TLS after STARTTLS or for
/// implicit TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Between taking the TCP stream for the handshake and its end.
    Closed,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
            Stream::Closed => "Stream::Closed",
        })
    }
}

fn closed_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed")
}

impl Stream {
    /// Reads what is already available without waiting, or fails with
    /// `WouldBlock`.
    fn try_read_now(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let waker = std::task::Waker::noop();
        let mut context = Context::from_waker(waker);
        let mut read_buffer = ReadBuf::new(buffer);
        match Pin::new(self).poll_read(&mut context, &mut read_buffer) {
            Poll::Ready(Ok(())) => Ok(read_buffer.filled().len()),
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
            Stream::Closed => Poll::Ready(Err(closed_error())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(context, bytes),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, bytes),
            Stream::Closed => Poll::Ready(Err(closed_error())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}
