//! A durable queue: messages are stored before they are acknowledged, then
//! delivered, retried and bounced per recipient.
//!
//! - [`Store`] is the storage interface. [`SqliteStore`] is the embedded
//!   default: one SQLite file in WAL mode with `synchronous = FULL`, so a
//!   committed message survives a crash or a power loss.
//! - [`RetrySchedule`] decides when a deferred recipient is tried again and when
//!   it expires (RFC 5321 section 4.5.4.1, C-Q-02).
//! - [`QueueRunner`] takes due recipients from the store, delivers them with
//!   [`crate::Delivery`] under a global and a per-destination concurrency
//!   limit, and records each outcome.
//! - [`bounce`] builds delivery status notifications (RFC 3464).
//!
//! Each message is stored once with its envelope; each recipient has its own
//! state ([`RecipientState`]), attempt count, next attempt time and history
//! of replies. A recipient that is being delivered carries a lease with the
//! process id of the deliverer. A lease left by a process that died (a crash,
//! `kill -9`) makes the recipient [`RecipientState::Uncertain`], because the
//! server may have accepted the message before the process died. Uncertain
//! recipients are retried like deferred ones, so the only recipients that can
//! get a second copy are those the queue recorded as uncertain.

pub mod bounce;
mod runner;
mod schedule;
mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub use runner::{
    ClaimOwner, Observer, QueueEvent, QueueRunner, QueueSettings, RunMode, RunSummary,
    human_duration, pid_is_alive,
};
pub use schedule::RetrySchedule;
pub use sqlite::{SPOOL_DATABASE, SqliteStore};

/// Milliseconds since the Unix epoch, the time unit of the store.
pub type Millis = i64;

/// Returns the current time in [`Millis`].
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// The identifier of a queued message: 16 lower-case hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct QueueId(String);

impl QueueId {
    /// Creates a random identifier.
    pub fn random() -> QueueId {
        QueueId(format!("{:016x}", rand::random::<u64>()))
    }

    /// Parses an identifier as printed by `mxsend queue list`.
    ///
    /// # Errors
    ///
    /// A message naming the text when it is not 16 hexadecimal digits.
    pub fn parse(text: &str) -> Result<QueueId, String> {
        let text = text.trim().to_ascii_lowercase();
        if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(QueueId(text))
        } else {
            Err(format!(
                "invalid queue id {text:?}: expected 16 hexadecimal digits as shown by `mxsend queue list`"
            ))
        }
    }

    /// Returns the identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The state of one recipient of a queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    /// Not tried yet.
    Queued,
    /// A server took responsibility for the message. Never sent again.
    Delivered,
    /// Not delivered yet: a 4yz reply, a timeout or a connection failure.
    Deferred,
    /// Refused for good, expired or returned by the operator.
    Failed,
    /// The message may have been delivered: the connection was lost after
    /// the final dot, or the deliverer died during the session.
    Uncertain,
}

impl RecipientState {
    /// The name stored in the spool and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientState::Queued => "queued",
            RecipientState::Delivered => "delivered",
            RecipientState::Deferred => "deferred",
            RecipientState::Failed => "failed",
            RecipientState::Uncertain => "uncertain",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<RecipientState> {
        Some(match text {
            "queued" => RecipientState::Queued,
            "delivered" => RecipientState::Delivered,
            "deferred" => RecipientState::Deferred,
            "failed" => RecipientState::Failed,
            "uncertain" => RecipientState::Uncertain,
            _ => return None,
        })
    }

    /// Whether the recipient still waits for delivery (and is retried).
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            RecipientState::Queued | RecipientState::Deferred | RecipientState::Uncertain
        )
    }
}

impl fmt::Display for RecipientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A message to store: envelope and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The reverse path; `None` is the null sender `<>`, used by bounces.
    pub sender: Option<String>,
    /// The recipients, at least one.
    pub recipients: Vec<String>,
    /// The content as submitted.
    pub content: Vec<u8>,
}

/// One recipient of a stored message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecipientRecord {
    /// Position in the envelope, from 0.
    pub index: u32,
    /// The address.
    pub address: String,
    /// The current state.
    pub state: RecipientState,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the next attempt is due, for pending recipients.
    pub next_attempt: Millis,
    /// The reply or error of the last attempt.
    pub last_reply: Option<String>,
    /// Process id of the deliverer working on it now, if any.
    pub lease_pid: Option<u32>,
}

/// A stored message with its recipients, without the content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueuedMessage {
    /// The identifier.
    pub id: QueueId,
    /// When it was stored.
    pub created: Millis,
    /// Content size in octets.
    pub size: u64,
    /// The reverse path; `None` for `<>`.
    pub sender: Option<String>,
    /// Whether a delay warning was sent.
    pub warned: bool,
    /// The recipients in envelope order.
    pub recipients: Vec<RecipientRecord>,
}

impl QueuedMessage {
    /// Whether any recipient still waits for delivery.
    pub fn is_pending(&self) -> bool {
        self.recipients.iter().any(|r| r.state.is_pending())
    }
}

/// One entry of a recipient's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    /// The recipient's position in the envelope.
    pub index: u32,
    /// When it happened.
    pub at: Millis,
    /// The state it led to.
    pub state: RecipientState,
    /// The reply or the reason.
    pub reply: String,
}

/// The outcome of an attempt for one recipient, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientUpdate {
    /// The recipient's position in the envelope.
    pub index: u32,
    /// The new state.
    pub state: RecipientState,
    /// The reply or the reason, kept as the last reply and in the history.
    pub reply: String,
    /// When to try again, for pending states.
    pub next_attempt: Millis,
}

/// Recipients claimed for delivery by one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The message.
    pub id: QueueId,
    /// When it was stored.
    pub created: Millis,
    /// The reverse path; `None` for `<>`.
    pub sender: Option<String>,
    /// Whether a delay warning was sent.
    pub warned: bool,
    /// The claimed recipients with their attempt counts.
    pub recipients: Vec<RecipientRecord>,
}

/// A recipient leased to a deliverer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The message.
    pub id: QueueId,
    /// The recipient's position in the envelope.
    pub index: u32,
    /// Process id of the deliverer.
    pub pid: u32,
    /// Random token of the deliverer, which tells a process apart from an
    /// earlier one that had the same pid.
    pub token: i64,
    /// When the lease expires.
    pub until: Millis,
}

/// A notification to store in the same transaction as an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A bounce for failed recipients.
    Bounce(NewMessage),
    /// A delay warning, stored only if the message has none yet.
    Warning(NewMessage),
}

/// Why the store failed. Each message names the spool file and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The spool folder or database cannot be opened or created.
    #[error(
        "cannot open the spool database {path}: {detail}; check that the folder exists and that \
         this user may read and write it, or choose another spool with --spool or MXSEND_SPOOL"
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The disk or the configured spool size limit is full.
    #[error(
        "spool database {path} is full: free disk space or raise spool.max_size; nothing already \
         queued was lost"
    )]
    Full {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a valid SQLite database or its pages are damaged.
    #[error(
        "spool database {path} is damaged ({detail}): stop mxsend, move the file aside and \
         recover it with `sqlite3 FILE .recover`, or start an empty spool"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's description.
        detail: String,
    },
    /// One stored record cannot be read.
    #[error(
        "queued message {id} in {path} has an invalid record ({detail}): remove it with \
         `mxsend queue delete {id}`"
    )]
    CorruptRecord {
        /// The database file.
        path: PathBuf,
        /// The message.
        id: String,
        /// What is wrong.
        detail: String,
    },
    /// The spool was written by a newer mxsend.
    #[error(
        "spool database {path} has schema version {found}, newer than the {supported} this \
         mxsend reads: upgrade mxsend"
    )]
    Version {
        /// The database file.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Newest version this build reads.
        supported: i64,
    },
    /// The message is not in the queue.
    #[error("queued message {0} not found: list the queue with `mxsend queue list`")]
    NotFound(QueueId),
    /// The message has no recipient.
    #[error("message has no recipients")]
    NoRecipients,
    /// Another storage error, such as an I/O error or a lock held too long.
    #[error("spool database {path} failed: {detail}")]
    Other {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

impl StoreError {
    /// Whether trying again later may succeed (a full disk, a busy lock, an
    /// I/O error) rather than needing an operator.
    pub fn is_temporary(&self) -> bool {
        matches!(self, StoreError::Full { .. } | StoreError::Other { .. })
    }
}

/// Storage for the queue. Every method that returns `Ok` after a write has
/// made that write durable.
///
/// Implementations must be safe to use from several processes at once,
/// because `mxsend sendmail`, the daemon and `mxsend queue` share a spool.
pub trait Store: Send + Sync {
    /// Stores a message for delivery to all its recipients, due at `now`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NoRecipients`], [`StoreError::Full`] when there is no
    /// space; on any error nothing of the message is stored.
    fn enqueue(&self, message: &NewMessage, now: Millis) -> Result<QueueId, StoreError>;

    /// Lists stored messages, oldest first: only those with pending
    /// recipients unless `include_done`.
    ///
    /// # Errors
    ///
    /// A read error or a corrupt record.
    fn list(&self, include_done: bool) -> Result<Vec<QueuedMessage>, StoreError>;

    /// One message with the history of each recipient.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], a read error or a corrupt record.
    fn show(&self, id: &QueueId) -> Result<(QueuedMessage, Vec<HistoryEntry>), StoreError>;

    /// The stored content.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] or a read error.
    fn content(&self, id: &QueueId) -> Result<Vec<u8>, StoreError>;

    /// Leases due pending recipients to `owner`, for at most `limit`
    /// messages, oldest due first; `only` restricts it to one message.
    ///
    /// # Errors
    ///
    /// A read or write error.
    fn claim_due(
        &self,
        now: Millis,
        limit: usize,
        owner: &ClaimOwner,
        only: Option<&QueueId>,
    ) -> Result<Vec<Claim>, StoreError>;

    /// Records attempt outcomes, clears their leases and stores the
    /// notifications, all in one transaction. Returns the ids of the
    /// notifications stored.
    ///
    /// # Errors
    ///
    /// A write error; then nothing of the update is stored.
    fn record(
        &self,
        id: &QueueId,
        updates: &[RecipientUpdate],
        notifications: &[Notification],
        now: Millis,
    ) -> Result<Vec<QueueId>, StoreError>;

    /// Returns every lease.
    ///
    /// # Errors
    ///
    /// A read error.
    fn leases(&self) -> Result<Vec<Lease>, StoreError>;

    /// Clears the leases of `token` on the given recipients without
    /// counting an attempt, for work given back before it started.
    ///
    /// # Errors
    ///
    /// A write error.
    fn release(&self, id: &QueueId, indexes: &[u32], token: i64) -> Result<(), StoreError>;

    /// Extends every lease held with `token` of process `pid` until
    /// `until`, so that a delivery that runs longer than one lease is not
    /// taken over while it still runs. Returns how many leases changed.
    ///
    /// # Errors
    ///
    /// A write error.
    fn renew_leases(&self, pid: u32, token: i64, until: Millis) -> Result<usize, StoreError>;

    /// Makes pending recipients due at `now`: of one message, or of all.
    /// Returns how many recipients changed.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for an unknown id, or a write error.
    fn schedule_now(&self, id: Option<&QueueId>, now: Millis) -> Result<usize, StoreError>;

    /// Deletes a message, its recipients and their history.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] or a write error.
    fn delete(&self, id: &QueueId) -> Result<(), StoreError>;

    /// Deletes messages with no pending recipient that were finished before
    /// `before`. Returns how many were deleted.
    ///
    /// # Errors
    ///
    /// A write error.
    fn purge_done(&self, before: Millis) -> Result<usize, StoreError>;

    /// The earliest next attempt of a pending recipient without a lease.
    ///
    /// # Errors
    ///
    /// A read error.
    fn next_due(&self) -> Result<Option<Millis>, StoreError>;
}
