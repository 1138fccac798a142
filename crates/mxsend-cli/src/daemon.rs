//! `mxsend daemon`: deliver the queue until SIGINT or SIGTERM.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mxsend::queue::{QueueEvent, QueueRunner, RunMode};
use tracing::{error, info, warn};

use crate::args::DaemonArgs;
use crate::config::{Service, store_failure};
use crate::exit;
use crate::failure::Failure;

/// The lock file in the spool folder, held by the daemon and by queue runs.
pub const LOCK_FILE: &str = "daemon.lock";

/// An exclusive lock on a spool, released when dropped.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

/// Takes the spool's lock, writing this process id into the file. Returns
/// `None` when another process holds it.
///
/// # Errors
///
/// A temporary [`Failure`] when the lock file cannot be created.
pub fn try_lock(spool: &Path) -> Result<Option<SpoolLock>, Failure> {
    let path = lock_path(spool);
    std::fs::create_dir_all(spool).map_err(|error| lock_failure(&path, &error))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|error| lock_failure(&path, &error))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(error)) => return Err(lock_failure(&path, &error)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|error| lock_failure(&path, &error))?;
    Ok(Some(SpoolLock { _file: file }))
}

fn lock_path(spool: &Path) -> PathBuf {
    spool.join(LOCK_FILE)
}

fn lock_failure(path: &Path, error: &std::io::Error) -> Failure {
    Failure::new(
        exit::TEMPORARY,
        format!(
            "cannot lock {}: {error}; check that this user may write the spool folder",
            path.display()
        ),
    )
}

/// The pid written in the lock file, for the message when it is held.
fn lock_holder(spool: &Path) -> Option<String> {
    let mut text = String::new();
    File::open(lock_path(spool))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let pid = text.trim();
    (!pid.is_empty()).then(|| pid.to_owned())
}

/// Runs the daemon until SIGINT or SIGTERM.
///
/// # Errors
///
/// A [`Failure`] for a configuration or spool error, or when another daemon
/// holds the spool lock.
pub async fn run(args: &DaemonArgs) -> Result<u8, Failure> {
    let service = Service::load(&args.service)?;
    // Listening before the lock is taken means that a SIGTERM sent once
    // the lock file names this process always stops it gracefully.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| {
        Failure::new(
            exit::SOFTWARE,
            format!("cannot listen for SIGTERM: {error}"),
        )
    })?;
    let store = service.open_store()?;
    let Some(_lock) = try_lock(&service.spool)? else {
        let holder = lock_holder(&service.spool)
            .map(|pid| format!(" by process {pid}"))
            .unwrap_or_default();
        return Err(Failure::new(
            exit::TEMPORARY,
            format!(
                "another mxsend daemon or queue run is using spool {}: the lock {} is held{holder}; \
                 stop that process first, or give this daemon another spool",
                service.spool.display(),
                lock_path(&service.spool).display()
            ),
        ));
    };
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutting down"),
            _ = terminate.recv() => info!(signal = "SIGTERM", "shutting down"),
        }
    };

    let runner = QueueRunner::new(store, service.delivery()?, service.queue.clone())
        .with_observer(Arc::new(log_event));
    info!(
        spool = %service.spool.display(),
        config = %service.file.as_deref().map_or_else(|| "defaults".into(), |f| f.display().to_string()),
        concurrency = service.queue.concurrency,
        per_destination = service.queue.per_destination,
        pid = std::process::id(),
        "daemon started"
    );
    let summary = runner
        .run(RunMode::UntilShutdown, shutdown)
        .await
        .map_err(store_failure)?;
    for (id, addresses) in &summary.abandoned {
        warn!(queue_id = %id, recipients = %addresses.join(", "), "session cut at shutdown, recorded as uncertain");
    }
    info!(
        delivered = summary.delivered,
        deferred = summary.deferred,
        failed = summary.failed,
        uncertain = summary.uncertain,
        abandoned = summary.abandoned.len(),
        "daemon stopped"
    );
    Ok(exit::OK)
}

fn log_event(event: QueueEvent) {
    match event {
        QueueEvent::Attempted {
            id,
            address,
            state,
            attempts,
            reply,
        } => {
            info!(queue_id = %id, recipient = %address, %state, attempt = attempts, %reply, "delivery attempt")
        }
        QueueEvent::Notified { id, action } => {
            info!(queue_id = %id, ?action, "notification queued for the sender");
        }
        QueueEvent::Recovered { id, address, pid } => {
            warn!(queue_id = %id, recipient = %address, pid, "deliverer died during the attempt; recipient is now uncertain");
        }
        QueueEvent::Abandoned { id, addresses } => {
            warn!(queue_id = %id, recipients = %addresses.join(", "), "session cut at shutdown");
        }
        QueueEvent::StoreFailed { error } => error!(%error, "spool error; retrying later"),
    }
}
