//! A scriptable ESMTP server on loopback that records what clients send.
//!
//! [`Script::new`] gives a well-behaved server that stores every accepted
//! message, which is enough to receive real mail from mxsend. Rules added
//! with [`Script::on`] replace replies at chosen points to produce faults
//! that real servers do not produce on demand: rejections, replies split
//! across writes, dropped connections and servers that stop replying.
//!
//! [`Script::starttls`] and [`Script::implicit_tls`] add real TLS on
//! rustls, and [`Script::auth`] the server side of AUTH. Without them a
//! rule can still reply to the STARTTLS and AUTH verbs.

mod command;
mod script;
mod secure;
mod session;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use std::{fmt, io};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use script::{Action, Point, Script, Trigger};
use session::Session;

/// Maximum number of connections served at the same time. Further
/// connections get a 421 reply and are closed.
const MAX_CONCURRENT_SESSIONS: usize = 256;

/// Maximum number of connections recorded over the server's lifetime.
/// Further connections get a 421 reply and are closed.
const MAX_SESSIONS: usize = 10_000;

/// Pause after a failed `accept`, so that errors such as running out of file
/// descriptors do not make the accept loop spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Time [`SmtpServer::shutdown`] waits for the server tasks before aborting them.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reply sent to connections over `MAX_CONCURRENT_SESSIONS` or `MAX_SESSIONS`.
const TOO_MANY_CONNECTIONS: &[u8] = b"421 4.7.0 testkit.invalid Error: too many connections\r\n";

/// A message the server accepted with a 2xx reply to the final dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredMessage {
    /// Reverse-path of the MAIL command without angle brackets, empty for
    /// the null path `<>`.
    pub mail_from: String,
    /// Forward-paths of the accepted RCPT commands without angle brackets,
    /// in order.
    pub rcpt_to: Vec<String>,
    /// Parameters after the reverse-path of the MAIL command, such as
    /// `SIZE=1234 BODY=8BITMIME`, or an empty string.
    pub mail_params: String,
    /// Message content as sent, dot-unstuffed, without the final `.` line and
    /// with line endings exactly as received.
    pub data: Vec<u8>,
}

/// Record of the bytes and commands a client sent on one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRecord {
    /// Every byte the client sent, exactly as received.
    pub received: Vec<u8>,
    /// Each command line without its line terminator, in order, SASL
    /// lines after AUTH included. Message content lines are not included.
    pub commands: Vec<String>,
    /// Whether the session switched to TLS, by STARTTLS or implicit TLS.
    /// `received` then holds the decrypted bytes, without the handshake.
    pub tls: bool,
}

/// A running scripted SMTP server.
///
/// The server stops on [`SmtpServer::shutdown`] or when the value is
/// dropped, closing every open connection.
pub struct SmtpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for SmtpServer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SmtpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SmtpServer {
    /// Starts a server for `script` on a free port of 127.0.0.1.
    pub async fn start(script: Script) -> io::Result<SmtpServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), script).await
    }

    /// Starts a server for `script` on `addr`, which must be a loopback
    /// address such as `127.0.0.1:2525` or `[::1]:0`.
    ///
    /// Fails with `InvalidInput` for any other address, because the server
    /// is meant for tests and demos on this machine only.
    pub async fn start_on(addr: SocketAddr, script: Script) -> io::Result<SmtpServer> {
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "test SMTP server address {addr} is not a loopback address; use 127.0.0.1 or ::1"
                ),
            ));
        }
        let listener = match script.receive_buffer {
            None => TcpListener::bind(addr).await?,
            Some(size) => {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                // Set before listen, so that accepted connections inherit
                // it; a fixed size also turns off receive autotuning.
                socket.set_recv_buffer_size(size)?;
                socket.bind(addr)?;
                socket.listen(1024)?
            }
        };
        let addr = listener.local_addr()?;

        let shared = Arc::new(Shared::new());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::new(script),
            Arc::clone(&shared),
            stopped,
        ));
        tracing::info!(%addr, "test SMTP server started");

        Ok(SmtpServer {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Returns the address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns every message accepted so far, in the order of acceptance.
    ///
    /// NOTE: messages stay in memory until the server is dropped. Only
    /// their size (64 MiB each) and the number of sessions are capped.
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.shared.lock().messages.clone()
    }

    /// Returns one record per connection so far, in the order of
    /// connection, including connections that are still open.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.shared.lock().sessions.clone()
    }

    /// Waits until at least `n` sessions have ended. Returns `false` if that
    /// does not happen within `timeout`.
    pub async fn wait_for_sessions(&self, n: usize, timeout: Duration) -> bool {
        let mut ended = self.shared.ended.subscribe();
        matches!(
            tokio::time::timeout(timeout, ended.wait_for(|count| *count >= n)).await,
            Ok(Ok(_))
        )
    }

    /// Stops accepting connections, closes the open ones and waits for the
    /// server tasks, aborting them after `SHUTDOWN_TIMEOUT`.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            // The task may already have ended, so a closed channel is fine.
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut task)
                .await
                .is_err()
        {
            tracing::warn!(addr = %self.addr, "test SMTP server did not stop in time, aborting it");
            task.abort();
        }
        tracing::info!(addr = %self.addr, "test SMTP server stopped");
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        // Aborting the accept task drops its `JoinSet`, which aborts the
        // session tasks and so closes their connections.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// State shared between the server handle and its session tasks.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Number of sessions that have ended.
    ended: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    sessions: Vec<SessionRecord>,
    messages: Vec<StoredMessage>,
}

impl Shared {
    fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            ended: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held cannot leave the records
        // half-updated in a harmful way, so a poisoned lock is still used.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an empty session record and returns its index, or `None` when
    /// `MAX_SESSIONS` records exist.
    fn open_session(&self) -> Option<usize> {
        let mut state = self.lock();
        if state.sessions.len() >= MAX_SESSIONS {
            return None;
        }
        state.sessions.push(SessionRecord::default());
        Some(state.sessions.len() - 1)
    }

    pub(crate) fn record_received(&self, session: usize, bytes: &[u8]) {
        if let Some(record) = self.lock().sessions.get_mut(session) {
            record.received.extend_from_slice(bytes);
        }
    }

    pub(crate) fn record_command(&self, session: usize, line: String) {
        if let Some(record) = self.lock().sessions.get_mut(session) {
            record.commands.push(line);
        }
    }

    pub(crate) fn record_tls(&self, session: usize) {
        if let Some(record) = self.lock().sessions.get_mut(session) {
            record.tls = true;
        }
    }

    pub(crate) fn store_message(&self, message: StoredMessage) {
        self.lock().messages.push(message);
    }

    pub(crate) fn end_session(&self) {
        self.ended.send_modify(|count| *count += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    script: Arc<Script>,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let addr = listener.local_addr().ok();
    let mut sessions = JoinSet::new();
    // The loop runs until shutdown. The session limits bound what each
    // iteration can add.
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => break,
        };
        while sessions.try_join_next().is_some() {}

        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(?addr, %error, "test SMTP server failed to accept a connection");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        if sessions.len() >= MAX_CONCURRENT_SESSIONS {
            tracing::warn!(%peer, "test SMTP server rejected a connection: too many open sessions");
            reject_connection(stream).await;
            continue;
        }
        let Some(index) = shared.open_session() else {
            tracing::warn!(%peer, "test SMTP server rejected a connection: session limit reached");
            reject_connection(stream).await;
            continue;
        };

        tracing::debug!(%peer, session = index + 1, "test SMTP session started");
        let session = Session::new(stream, Arc::clone(&script), Arc::clone(&shared), index);
        sessions.spawn(session.run());
    }
    sessions.shutdown().await;
}

/// Sends the too-many-connections reply without waiting on a slow client,
/// then closes the connection.
async fn reject_connection(mut stream: TcpStream) {
    // A fresh socket's send buffer takes the short reply at once, so the
    // write is not expected to block. A failure only means the client left.
    let _ = stream.try_write(TOO_MANY_CONNECTIONS);
    let _ = stream.shutdown().await;
}
