//! The embedded spool: one SQLite database in write-ahead-log mode.
//!
//! With `journal_mode = WAL` and `synchronous = FULL`, SQLite syncs the log
//! on every commit, so a message is on disk when [`Store::enqueue`] returns
//! and a crash at any moment leaves either the whole transaction or none of
//! it. Several processes may open the same file: writers wait for each other
//! for up to [`BUSY_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{
    Claim, ClaimOwner, HistoryEntry, Lease, Millis, NewMessage, Notification, QueueId,
    QueuedMessage, RecipientRecord, RecipientState, RecipientUpdate, Store, StoreError,
};

/// The database file name inside the spool folder.
pub const SPOOL_DATABASE: &str = "queue.sqlite";

/// How long a writer waits for another process's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema version this code writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    sender TEXT,
    size INTEGER NOT NULL,
    content BLOB NOT NULL,
    warned INTEGER NOT NULL DEFAULT 0,
    done_at INTEGER
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_reply TEXT,
    lease_pid INTEGER,
    lease_token INTEGER,
    lease_until INTEGER,
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX IF NOT EXISTS recipients_waiting ON recipients (next_attempt)
    WHERE state IN ('queued', 'deferred', 'uncertain') AND lease_pid IS NULL;
CREATE INDEX IF NOT EXISTS recipients_lease ON recipients (lease_pid) WHERE lease_pid IS NOT NULL;
CREATE TABLE IF NOT EXISTS history (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    at INTEGER NOT NULL,
    state TEXT NOT NULL,
    reply TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_message ON history (message_id);
CREATE INDEX IF NOT EXISTS messages_done ON messages (done_at) WHERE done_at IS NOT NULL;
";

const PENDING: &str = "('queued', 'deferred', 'uncertain')";

/// The condition of the `recipients_waiting` index, written the same way
/// so that SQLite uses the index: pending and not leased.
const WAITING: &str = "state IN ('queued', 'deferred', 'uncertain') AND lease_pid IS NULL";

/// A [`Store`] in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens or creates the spool database in `folder`, creating the folder
    /// (mode 0700) when missing. `max_size` caps the database file in
    /// octets: a write that would pass it fails with [`StoreError::Full`],
    /// as on a full disk.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the folder or file cannot be created or
    /// read, [`StoreError::Corrupt`] when the file is not a valid database,
    /// [`StoreError::Version`] for a spool of a newer mxsend.
    pub fn open(folder: &Path, max_size: Option<u64>) -> Result<SqliteStore, StoreError> {
        let path = folder.join(SPOOL_DATABASE);
        create_folder(folder).map_err(|error| StoreError::Open {
            path: path.clone(),
            detail: format!("cannot create folder {}: {error}", folder.display()),
        })?;
        let connection = Connection::open(&path).map_err(|error| StoreError::Open {
            path: path.clone(),
            detail: error.to_string(),
        })?;
        let store = SqliteStore {
            path,
            connection: Mutex::new(connection),
        };
        store.initialize(max_size)?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn initialize(&self, max_size: Option<u64>) -> Result<(), StoreError> {
        let connection = self.lock();
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.error(e))?;
        // Reading the version first detects a file that is not a database
        // before anything is written to it.
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| self.error(e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Version {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| self.error(e))?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.error(e))?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.error(e))?;
        if let Some(max_size) = max_size {
            let page_size: i64 = connection
                .query_row("PRAGMA page_size", [], |row| row.get(0))
                .map_err(|e| self.error(e))?;
            let pages = i64::try_from(max_size).unwrap_or(i64::MAX) / page_size.max(512);
            connection
                .pragma_update(None, "max_page_count", pages.max(1))
                .map_err(|e| self.error(e))?;
        }
        if version < SCHEMA_VERSION {
            connection
                .execute_batch(SCHEMA)
                .map_err(|e| self.error(e))?;
            connection
                .pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Maps a SQLite error to the store error that names the fix.
    fn error(&self, error: rusqlite::Error) -> StoreError {
        let path = self.path.clone();
        if let rusqlite::Error::SqliteFailure(failure, detail) = &error {
            let detail = detail.clone().unwrap_or_else(|| failure.to_string());
            match failure.code {
                ErrorCode::DiskFull => return StoreError::Full { path },
                ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                    return StoreError::Corrupt { path, detail };
                }
                ErrorCode::CannotOpen
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::AuthorizationForStatementDenied => {
                    return StoreError::Open { path, detail };
                }
                _ => {}
            }
        }
        StoreError::Other {
            path,
            detail: error.to_string(),
        }
    }

    fn corrupt(&self, id: &str, detail: String) -> StoreError {
        StoreError::CorruptRecord {
            path: self.path.clone(),
            id: id.to_owned(),
            detail,
        }
    }

    fn recipients_of(
        &self,
        connection: &Connection,
        id: &str,
    ) -> Result<Vec<RecipientRecord>, StoreError> {
        let mut statement = connection
            .prepare_cached(
                "SELECT idx, address, state, attempts, next_attempt, last_reply, lease_pid
                 FROM recipients WHERE message_id = ?1 ORDER BY idx",
            )
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut recipients = Vec::new();
        for row in rows {
            let (index, address, state, attempts, next_attempt, last_reply, lease_pid) =
                row.map_err(|e| self.error(e))?;
            let state = RecipientState::parse(&state)
                .ok_or_else(|| self.corrupt(id, format!("unknown recipient state {state:?}")))?;
            recipients.push(RecipientRecord {
                index: to_u32(index)
                    .ok_or_else(|| self.corrupt(id, format!("bad index {index}")))?,
                address,
                state,
                attempts: to_u32(attempts).unwrap_or(0),
                next_attempt,
                last_reply,
                lease_pid: lease_pid.and_then(to_u32),
            });
        }
        Ok(recipients)
    }

    fn message_row(
        &self,
        connection: &Connection,
        id: &str,
    ) -> Result<Option<QueuedMessage>, StoreError> {
        let row = connection
            .query_row(
                "SELECT created, sender, size, warned FROM messages WHERE id = ?1",
                [id],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, bool>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let Some((created, sender, size, warned)) = row else {
            return Ok(None);
        };
        let queue_id = QueueId::parse(id).map_err(|detail| self.corrupt(id, detail))?;
        Ok(Some(QueuedMessage {
            id: queue_id,
            created,
            size: u64::try_from(size).unwrap_or(0),
            sender,
            warned,
            recipients: self.recipients_of(connection, id)?,
        }))
    }
}

fn to_u32(value: i64) -> Option<u32> {
    u32::try_from(value).ok()
}

fn create_folder(folder: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if folder.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
}

fn insert_message(
    transaction: &rusqlite::Transaction<'_>,
    message: &NewMessage,
    now: Millis,
) -> rusqlite::Result<QueueId> {
    let id = QueueId::random();
    transaction.execute(
        "INSERT INTO messages (id, created, sender, size, content) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id.as_str(),
            now,
            message.sender,
            i64::try_from(message.content.len()).unwrap_or(i64::MAX),
            message.content
        ],
    )?;
    let mut statement = transaction.prepare_cached(
        "INSERT INTO recipients (message_id, idx, address, state, next_attempt)
         VALUES (?1, ?2, ?3, 'queued', ?4)",
    )?;
    for (index, address) in message.recipients.iter().enumerate() {
        statement.execute(params![
            id.as_str(),
            i64::try_from(index).unwrap_or(i64::MAX),
            address,
            now
        ])?;
    }
    Ok(id)
}

impl Store for SqliteStore {
    // NOTE: the content is in memory while it is stored and while it is
    // delivered, so memory grows with message size here. SQLite's
    // incremental BLOB I/O would allow streaming it instead.
    fn enqueue(&self, message: &NewMessage, now: Millis) -> Result<QueueId, StoreError> {
        if message.recipients.is_empty() {
            return Err(StoreError::NoRecipients);
        }
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let id = insert_message(&transaction, message, now).map_err(|e| self.error(e))?;
        transaction.commit().map_err(|e| self.error(e))?;
        Ok(id)
    }

    fn list(&self, include_done: bool) -> Result<Vec<QueuedMessage>, StoreError> {
        let connection = self.lock();
        let sql = if include_done {
            "SELECT id FROM messages ORDER BY created, id"
        } else {
            "SELECT id FROM messages WHERE done_at IS NULL ORDER BY created, id"
        };
        let ids: Vec<String> = {
            let mut statement = connection.prepare(sql).map_err(|e| self.error(e))?;
            let rows = statement
                .query_map([], |row| row.get(0))
                .map_err(|e| self.error(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.error(e))?
        };
        let mut messages = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(message) = self.message_row(&connection, &id)? {
                messages.push(message);
            }
        }
        Ok(messages)
    }

    fn show(&self, id: &QueueId) -> Result<(QueuedMessage, Vec<HistoryEntry>), StoreError> {
        let connection = self.lock();
        let message = self
            .message_row(&connection, id.as_str())?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        let mut statement = connection
            .prepare("SELECT idx, at, state, reply FROM history WHERE message_id = ?1 ORDER BY at, rowid")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([id.as_str()], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut history = Vec::new();
        for row in rows {
            let (index, at, state, reply) = row.map_err(|e| self.error(e))?;
            let state = RecipientState::parse(&state).ok_or_else(|| {
                self.corrupt(id.as_str(), format!("unknown state {state:?} in history"))
            })?;
            history.push(HistoryEntry {
                index: to_u32(index).unwrap_or(u32::MAX),
                at,
                state,
                reply,
            });
        }
        Ok((message, history))
    }

    fn content(&self, id: &QueueId) -> Result<Vec<u8>, StoreError> {
        let connection = self.lock();
        connection
            .query_row(
                "SELECT content FROM messages WHERE id = ?1",
                [id.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.error(e))?
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    fn claim_due(
        &self,
        now: Millis,
        limit: usize,
        owner: &ClaimOwner,
        only: Option<&QueueId>,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let ids: Vec<String> = {
            // Without `only`, the due recipients are read in next-attempt
            // order from the `recipients_waiting` index, a few per message,
            // and the first `limit` distinct messages are kept. A message
            // with more due recipients than that still gets them all below.
            let (sql, rows_wanted) = match only {
                Some(_) => (
                    format!(
                        "SELECT message_id FROM recipients
                         WHERE message_id = ?3 AND {WAITING} AND next_attempt <= ?1 LIMIT ?2"
                    ),
                    1,
                ),
                None => (
                    format!(
                        "SELECT message_id FROM recipients
                         WHERE {WAITING} AND next_attempt <= ?1
                           AND ?3 IS NULL
                         ORDER BY next_attempt LIMIT ?2"
                    ),
                    limit.saturating_mul(8),
                ),
            };
            let rows_wanted = i64::try_from(rows_wanted).unwrap_or(i64::MAX);
            let mut statement = transaction.prepare(&sql).map_err(|e| self.error(e))?;
            let rows = statement
                .query_map(
                    params![now, rows_wanted, only.map(QueueId::as_str)],
                    |row| row.get::<_, String>(0),
                )
                .map_err(|e| self.error(e))?;
            let mut ids: Vec<String> = Vec::new();
            for row in rows {
                let id = row.map_err(|e| self.error(e))?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
                if ids.len() >= limit {
                    break;
                }
            }
            ids
        };
        let mut claims = Vec::with_capacity(ids.len());
        for id in ids {
            // Only the rows this statement leased belong to the claim. The
            // token is the same for every claim of this process, so reading
            // the rows back by token would also take recipients leased to a
            // delivery still in progress, and send them twice.
            let sql = format!(
                "UPDATE recipients SET lease_pid = ?2, lease_token = ?3, lease_until = ?4
                 WHERE message_id = ?1 AND state IN {PENDING} AND lease_pid IS NULL
                   AND next_attempt <= ?5
                 RETURNING idx"
            );
            let claimed: Vec<i64> = {
                let mut statement = transaction
                    .prepare_cached(&sql)
                    .map_err(|e| self.error(e))?;
                let rows = statement
                    .query_map(
                        params![
                            id,
                            owner.pid,
                            owner.token,
                            now.saturating_add(owner.lease_millis),
                            now
                        ],
                        |row| row.get(0),
                    )
                    .map_err(|e| self.error(e))?;
                rows.collect::<Result<_, _>>().map_err(|e| self.error(e))?
            };
            if claimed.is_empty() {
                continue;
            }
            let Some(message) = self.message_row(&transaction, &id)? else {
                continue;
            };
            let recipients = message
                .recipients
                .into_iter()
                .filter(|r| claimed.contains(&i64::from(r.index)))
                .collect();
            claims.push(Claim {
                id: message.id,
                created: message.created,
                sender: message.sender,
                warned: message.warned,
                recipients,
            });
        }
        transaction.commit().map_err(|e| self.error(e))?;
        Ok(claims)
    }

    fn record(
        &self,
        id: &QueueId,
        updates: &[RecipientUpdate],
        notifications: &[Notification],
        now: Millis,
    ) -> Result<Vec<QueueId>, StoreError> {
        let mut connection = self.lock();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let exists: bool = transaction
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
                [id.as_str()],
                |row| row.get(0),
            )
            .map_err(|e| self.error(e))?;
        if !exists {
            // Deleted by the operator while it was being delivered.
            return Ok(Vec::new());
        }
        for update in updates {
            transaction
                .execute(
                    "UPDATE recipients SET state = ?3, attempts = attempts + 1,
                         next_attempt = ?4, last_reply = ?5,
                         lease_pid = NULL, lease_token = NULL, lease_until = NULL
                     WHERE message_id = ?1 AND idx = ?2",
                    params![
                        id.as_str(),
                        update.index,
                        update.state.as_str(),
                        update.next_attempt,
                        update.reply
                    ],
                )
                .map_err(|e| self.error(e))?;
            transaction
                .execute(
                    "INSERT INTO history (message_id, idx, at, state, reply) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id.as_str(), update.index, now, update.state.as_str(), update.reply],
                )
                .map_err(|e| self.error(e))?;
        }
        let mut stored = Vec::new();
        for notification in notifications {
            match notification {
                Notification::Bounce(message) => {
                    stored.push(
                        insert_message(&transaction, message, now).map_err(|e| self.error(e))?,
                    );
                }
                Notification::Warning(message) => {
                    let changed = transaction
                        .execute(
                            "UPDATE messages SET warned = 1 WHERE id = ?1 AND warned = 0",
                            [id.as_str()],
                        )
                        .map_err(|e| self.error(e))?;
                    if changed == 1 {
                        stored.push(
                            insert_message(&transaction, message, now)
                                .map_err(|e| self.error(e))?,
                        );
                    }
                }
            }
        }
        let sql = format!(
            "UPDATE messages SET done_at = ?2 WHERE id = ?1 AND done_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = ?1 AND state IN {PENDING})"
        );
        transaction
            .execute(&sql, params![id.as_str(), now])
            .map_err(|e| self.error(e))?;
        transaction.commit().map_err(|e| self.error(e))?;
        Ok(stored)
    }

    fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare(
                "SELECT message_id, idx, lease_pid, COALESCE(lease_token, 0), COALESCE(lease_until, 0)
                 FROM recipients
                 WHERE lease_pid IS NOT NULL",
            )
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut leases = Vec::new();
        for row in rows {
            let (id, index, pid, token, until) = row.map_err(|e| self.error(e))?;
            let queue_id = QueueId::parse(&id).map_err(|detail| self.corrupt(&id, detail))?;
            leases.push(Lease {
                id: queue_id,
                index: to_u32(index).unwrap_or(u32::MAX),
                pid: to_u32(pid).unwrap_or(0),
                token,
                until,
            });
        }
        Ok(leases)
    }

    fn release(&self, id: &QueueId, indexes: &[u32], token: i64) -> Result<(), StoreError> {
        let connection = self.lock();
        for index in indexes {
            connection
                .execute(
                    "UPDATE recipients SET lease_pid = NULL, lease_token = NULL, lease_until = NULL
                     WHERE message_id = ?1 AND idx = ?2 AND lease_token = ?3",
                    params![id.as_str(), index, token],
                )
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    fn renew_leases(&self, pid: u32, token: i64, until: Millis) -> Result<usize, StoreError> {
        self.lock()
            .execute(
                "UPDATE recipients SET lease_until = ?3 WHERE lease_pid = ?1 AND lease_token = ?2",
                params![pid, token, until],
            )
            .map_err(|e| self.error(e))
    }

    fn schedule_now(&self, id: Option<&QueueId>, now: Millis) -> Result<usize, StoreError> {
        let connection = self.lock();
        if let Some(id) = id {
            let exists: bool = connection
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM messages WHERE id = ?1)",
                    [id.as_str()],
                    |row| row.get(0),
                )
                .map_err(|e| self.error(e))?;
            if !exists {
                return Err(StoreError::NotFound(id.clone()));
            }
        }
        let sql = format!(
            "UPDATE recipients SET next_attempt = ?1
             WHERE state IN {PENDING} AND next_attempt > ?1 AND (?2 IS NULL OR message_id = ?2)"
        );
        connection
            .execute(&sql, params![now, id.map(QueueId::as_str)])
            .map_err(|e| self.error(e))
    }

    fn delete(&self, id: &QueueId) -> Result<(), StoreError> {
        let connection = self.lock();
        let deleted = connection
            .execute("DELETE FROM messages WHERE id = ?1", [id.as_str()])
            .map_err(|e| self.error(e))?;
        if deleted == 0 {
            return Err(StoreError::NotFound(id.clone()));
        }
        Ok(())
    }

    fn purge_done(&self, before: Millis) -> Result<usize, StoreError> {
        let connection = self.lock();
        connection
            .execute(
                "DELETE FROM messages WHERE done_at IS NOT NULL AND done_at < ?1",
                [before],
            )
            .map_err(|e| self.error(e))
    }

    fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        let connection = self.lock();
        let sql = format!(
            "SELECT next_attempt FROM recipients WHERE {WAITING} ORDER BY next_attempt LIMIT 1"
        );
        connection
            .query_row(&sql, [], |row| row.get(0))
            .optional()
            .map_err(|e| self.error(e))
    }
}
