//! The queue runner: claims due recipients, delivers them, records outcomes
//! and queues notifications.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mxsend_proto::data::DataPolicy;
use mxsend_proto::{Address, Outcome};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::debug;

use super::bounce::{self, DsnAction, DsnRecipient, Original};
use super::{
    Claim, Millis, Notification, QueueId, RecipientRecord, RecipientState, RecipientUpdate,
    RetrySchedule, Store, StoreError, now_millis,
};
use crate::delivery::{Delivery, DeliveryReport, RecipientReport, Route, error_chain};
use crate::message::Message;

/// Settings of a [`QueueRunner`].
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// When to retry and when to give up.
    pub retry: RetrySchedule,
    /// The host name in notifications (`Reporting-MTA`, `MAILER-DAEMON@`).
    pub reporting_mta: String,
    /// Maximum deliveries at the same time. Default 20.
    pub concurrency: usize,
    /// Maximum deliveries at the same time to one destination (a recipient
    /// domain, or the relay). Default 5, Postfix's
    /// `initial_destination_concurrency`.
    pub per_destination: usize,
    /// How long a claim on a recipient lasts before another daemon takes
    /// the recipient over as uncertain, should the claimant hang or die.
    /// Default 1 hour. A running daemon renews the leases of its deliveries
    /// every third of this time, so a long session keeps its recipients.
    pub lease: Duration,
    /// How long finished messages stay visible to `mxsend queue list --all`.
    /// Default 1 day.
    pub keep_done: Duration,
    /// Maximum sleep between two looks at the store, so that messages
    /// queued by other processes are seen. Default 1 second.
    pub poll_interval: Duration,
    /// Time given to sessions in progress to finish after a shutdown
    /// request. Default 30 seconds.
    pub shutdown_grace: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            retry: RetrySchedule::default(),
            reporting_mta: "localhost".to_owned(),
            concurrency: 20,
            per_destination: 5,
            lease: Duration::from_secs(3600),
            keep_done: Duration::from_secs(86_400),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The identity of a deliverer in the store's leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOwner {
    /// The process id.
    pub pid: u32,
    /// A random number that distinguishes this process from an earlier
    /// process with the same pid.
    pub token: i64,
    /// Lease length in milliseconds.
    pub lease_millis: i64,
}

/// What a run did, by recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    /// Recipients delivered.
    pub delivered: usize,
    /// Recipients deferred for a later retry.
    pub deferred: usize,
    /// Recipients failed for good or expired.
    pub failed: usize,
    /// Recipients whose outcome is unknown.
    pub uncertain: usize,
    /// Notifications queued.
    pub notifications: usize,
    /// Recipients of dead deliverers turned uncertain.
    pub recovered: usize,
    /// Recipients whose session was cut at shutdown, by message.
    pub abandoned: Vec<(QueueId, Vec<String>)>,
}

/// What a runner reports as it works, for the caller to log.
#[derive(Debug, Clone)]
pub enum QueueEvent {
    /// An attempt for a recipient ended.
    Attempted {
        /// The message.
        id: QueueId,
        /// The recipient.
        address: String,
        /// The state it is in now.
        state: RecipientState,
        /// Attempts so far.
        attempts: u32,
        /// The reply or the error.
        reply: String,
    },
    /// A notification was queued.
    Notified {
        /// The message it reports on.
        id: QueueId,
        /// A bounce or a delay warning.
        action: DsnAction,
    },
    /// A recipient left by a deliverer that died became uncertain.
    Recovered {
        /// The message.
        id: QueueId,
        /// The recipient.
        address: String,
        /// The process id of the dead deliverer.
        pid: u32,
    },
    /// A session was cut at shutdown.
    Abandoned {
        /// The message.
        id: QueueId,
        /// Its recipients in that session.
        addresses: Vec<String>,
    },
    /// The store failed; the runner goes on and tries again later.
    StoreFailed {
        /// The error.
        error: String,
    },
}

/// Receives [`QueueEvent`]s.
pub type Observer = Arc<dyn Fn(QueueEvent) + Send + Sync>;

/// How long [`QueueRunner::run`] goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMode {
    /// Until the shutdown future completes: the daemon.
    UntilShutdown,
    /// Until nothing is due now and no delivery is in progress: for every
    /// message, or for one message and the notifications it causes.
    /// `sendmail -q`, `queue flush` and the delivery right after submission.
    Drain(Option<QueueId>),
}

/// Delivers queued messages.
pub struct QueueRunner {
    store: Arc<dyn Store>,
    delivery: Arc<Delivery>,
    settings: QueueSettings,
    owner: ClaimOwner,
    global: Arc<Semaphore>,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    observer: Option<Observer>,
}

impl std::fmt::Debug for QueueRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueRunner")
            .field("settings", &self.settings)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// One delivery task: the recipients of one message for one destination.
struct Job {
    claim: Arc<Claim>,
    recipients: Vec<RecipientRecord>,
    started: Arc<AtomicBool>,
    abort: tokio::task::AbortHandle,
}

/// What a task returns: the report, or why the message could not be built.
type JobOutput = Result<DeliveryReport, String>;

impl QueueRunner {
    /// Creates a runner on `store` that delivers with `delivery`.
    pub fn new(store: Arc<dyn Store>, delivery: Delivery, settings: QueueSettings) -> QueueRunner {
        let lease_millis = i64::try_from(settings.lease.as_millis()).unwrap_or(i64::MAX);
        QueueRunner {
            store,
            delivery: Arc::new(delivery),
            global: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            settings,
            owner: ClaimOwner {
                pid: std::process::id(),
                token: rand::random::<i64>(),
                lease_millis,
            },
            destinations: Mutex::new(HashMap::new()),
            observer: None,
        }
    }

    /// Sends every [`QueueEvent`] to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> QueueRunner {
        self.observer = Some(observer);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn emit(&self, event: QueueEvent) {
        if let Some(observer) = &self.observer {
            observer(event);
        }
    }

    /// Delivers due recipients until `mode` ends the run. On shutdown, new
    /// work stops at once, sessions in progress get
    /// [`QueueSettings::shutdown_grace`] to finish, and the rest are cut and
    /// recorded as uncertain, since their server may have accepted the
    /// message.
    ///
    /// # Errors
    ///
    /// A store error while claiming work in [`RunMode::Drain`]; the daemon
    /// mode reports store errors as [`QueueEvent::StoreFailed`] and goes on.
    pub async fn run(
        &self,
        mode: RunMode,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, StoreError> {
        let result = self.run_until_done(mode, shutdown).await;
        // Connections kept for reuse get their QUIT before the run ends,
        // within the grace that a shutdown allows.
        self.delivery
            .close_idle_within(self.settings.shutdown_grace)
            .await;
        result
    }

    async fn run_until_done(
        &self,
        mode: RunMode,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, StoreError> {
        let mut summary = RunSummary::default();
        let mut tasks: JoinSet<JobOutput> = JoinSet::new();
        let mut jobs: HashMap<tokio::task::Id, Job> = HashMap::new();
        let mut stopping: Option<tokio::time::Instant> = None;
        let mut last_purge: Option<Millis> = None;
        let mut last_recovery: Option<Millis> = None;
        let mut last_renewal: Millis = now_millis();
        let lease_millis = millis(self.settings.lease);
        let poll_millis = millis(self.settings.poll_interval);
        // With a target, only it and the notifications it causes are
        // delivered; `None` means every due message.
        let targets: Option<Vec<QueueId>> = match &mode {
            RunMode::Drain(only) => only.clone().map(|id| vec![id]),
            RunMode::UntilShutdown => None,
        };
        // A drain takes only what was due when it started, so that a
        // recipient deferred with a zero retry delay cannot keep it running.
        // The notifications it stores are claimed once each, in `fresh`.
        let drain_start = matches!(mode, RunMode::Drain(_)).then(now_millis);
        let mut fresh: Vec<QueueId> = Vec::new();
        tokio::pin!(shutdown);

        loop {
            let now = now_millis();
            let mut claimed_any = false;
            if !jobs.is_empty() && now - last_renewal >= lease_millis / 3 {
                last_renewal = now;
                let until = now.saturating_add(lease_millis);
                if let Err(error) = self
                    .store
                    .renew_leases(self.owner.pid, self.owner.token, until)
                {
                    self.emit(QueueEvent::StoreFailed {
                        error: error.to_string(),
                    });
                }
            }
            if stopping.is_none() {
                if mode == RunMode::UntilShutdown
                    && last_recovery.is_none_or(|at| now - at >= poll_millis)
                {
                    last_recovery = Some(now);
                    if let Err(error) = self.recover_stale_leases(now, &mut summary) {
                        self.emit(QueueEvent::StoreFailed {
                            error: error.to_string(),
                        });
                    }
                    if last_purge.is_none_or(|at| now - at > 60_000) {
                        last_purge = Some(now);
                        let keep =
                            i64::try_from(self.settings.keep_done.as_millis()).unwrap_or(i64::MAX);
                        if let Err(error) = self.store.purge_done(now.saturating_sub(keep)) {
                            self.emit(QueueEvent::StoreFailed {
                                error: error.to_string(),
                            });
                        }
                    }
                }
                // Claims come in batches, once at least `concurrency` slots
                // of the two-`concurrency` budget are free, because each
                // claim is a write transaction.
                let concurrency = self.settings.concurrency.max(1);
                let capacity = (concurrency * 2).saturating_sub(jobs.len());
                if capacity >= concurrency {
                    let cutoff = drain_start.unwrap_or(now);
                    match self.claim(now, cutoff, capacity, targets.as_deref(), &mut fresh) {
                        Ok(claims) => {
                            claimed_any = !claims.is_empty();
                            for claim in claims {
                                self.spawn_jobs(claim, &mut tasks, &mut jobs);
                            }
                        }
                        Err(error) if mode == RunMode::UntilShutdown => {
                            self.emit(QueueEvent::StoreFailed {
                                error: error.to_string(),
                            });
                        }
                        Err(error) => {
                            self.abandon_all(&mut tasks, &mut jobs, &mut summary).await;
                            return Err(error);
                        }
                    }
                }
            }

            if jobs.is_empty() {
                if stopping.is_some() {
                    break;
                }
                if matches!(mode, RunMode::Drain(_)) && !claimed_any {
                    break;
                }
            }
            if claimed_any && jobs.len() < self.settings.concurrency.max(1) * 2 {
                // More may be due right away.
                tokio::task::yield_now().await;
                if let Some(joined) = tasks.try_join_next_with_id() {
                    self.finish(
                        joined,
                        &mut jobs,
                        &mut summary,
                        drain_start.map(|_| &mut fresh),
                    );
                }
                continue;
            }

            // While deliveries run, each one that ends wakes the loop, so
            // the store is asked for the next due time only when idle.
            let sleep = if jobs.is_empty() {
                self.sleep_time(now)
            } else {
                self.settings.poll_interval
            };
            tokio::select! {
                joined = tasks.join_next_with_id(), if !jobs.is_empty() => {
                    if let Some(joined) = joined {
                        self.finish(joined, &mut jobs, &mut summary, drain_start.map(|_| &mut fresh));
                    }
                }
                () = &mut shutdown, if stopping.is_none() => {
                    debug!(in_flight = jobs.len(), "shutdown requested");
                    stopping = Some(tokio::time::Instant::now() + self.settings.shutdown_grace);
                    self.release_unstarted(&mut jobs);
                }
                () = tokio::time::sleep(sleep), if stopping.is_none() => {}
                () = sleep_until_option(stopping), if stopping.is_some() => {
                    self.abandon_all(&mut tasks, &mut jobs, &mut summary).await;
                    break;
                }
            }
        }
        Ok(summary)
    }

    /// Claims the `fresh` notifications (each once, due by `now`), then
    /// work due by `cutoff`: anything, or only the `targets`.
    fn claim(
        &self,
        now: Millis,
        cutoff: Millis,
        capacity: usize,
        targets: Option<&[QueueId]>,
        fresh: &mut Vec<QueueId>,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut claims = Vec::new();
        while claims.len() < capacity {
            let Some(id) = fresh.pop() else {
                break;
            };
            claims.extend(self.store.claim_due(now, 1, &self.owner, Some(&id))?);
        }
        let room = capacity.saturating_sub(claims.len());
        match targets {
            None if room > 0 => {
                claims.extend(self.store.claim_due(cutoff, room, &self.owner, None)?);
            }
            None => {}
            Some(targets) => {
                for id in targets {
                    if claims.len() >= capacity {
                        break;
                    }
                    claims.extend(self.store.claim_due(cutoff, 1, &self.owner, Some(id))?);
                }
            }
        }
        Ok(claims)
    }

    fn sleep_time(&self, now: Millis) -> Duration {
        let poll = self.settings.poll_interval.max(Duration::from_millis(10));
        match self.store.next_due() {
            Ok(Some(due)) if due > now => {
                let wait = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
                wait.min(poll)
            }
            Ok(Some(_)) => Duration::from_millis(10),
            Ok(None) => poll,
            Err(error) => {
                self.emit(QueueEvent::StoreFailed {
                    error: error.to_string(),
                });
                poll
            }
        }
    }

    /// Splits a claim by destination and starts one task per destination.
    fn spawn_jobs(
        &self,
        claim: Claim,
        tasks: &mut JoinSet<JobOutput>,
        jobs: &mut HashMap<tokio::task::Id, Job>,
    ) {
        let content: Arc<[u8]> = match self.store.content(&claim.id) {
            Ok(content) => content.into(),
            Err(error) => {
                self.emit(QueueEvent::StoreFailed {
                    error: error.to_string(),
                });
                let indexes: Vec<u32> = claim.recipients.iter().map(|r| r.index).collect();
                let _ = self.store.release(&claim.id, &indexes, self.owner.token);
                return;
            }
        };
        let mut groups: BTreeMap<String, Vec<RecipientRecord>> = BTreeMap::new();
        for recipient in &claim.recipients {
            groups
                .entry(self.destination_of(&recipient.address))
                .or_default()
                .push(recipient.clone());
        }
        let claim = Arc::new(claim);
        for (destination, recipients) in groups {
            let started = Arc::new(AtomicBool::new(false));
            let limit = self.destination_limit(&destination);
            let task = deliver_job(
                Arc::clone(&self.delivery),
                Arc::clone(&self.global),
                limit,
                Arc::clone(&started),
                claim.sender.clone(),
                recipients.iter().map(|r| r.address.clone()).collect(),
                Arc::clone(&content),
                self.delivery.config().connection.data_policy,
            );
            let handle = tasks.spawn(task);
            jobs.insert(
                handle.id(),
                Job {
                    claim: Arc::clone(&claim),
                    recipients,
                    started,
                    abort: handle.clone(),
                },
            );
        }
    }

    /// The destination that a per-destination limit applies to: the relay
    /// for relayed mail, else the lower-case recipient domain.
    fn destination_of(&self, address: &str) -> String {
        match &self.delivery.config().route {
            Route::Relay { host, port } => format!("{host}:{port}"),
            Route::Mx => address
                .rsplit_once('@')
                .map_or(address, |(_, domain)| domain)
                .trim_end_matches('.')
                .to_lowercase(),
        }
    }

    fn destination_limit(&self, destination: &str) -> Arc<Semaphore> {
        let mut destinations = self
            .destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Forget idle destinations now and then, so that the map does not
        // grow with every domain ever seen.
        if destinations.len() > 1024 {
            destinations.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
        }
        Arc::clone(
            destinations
                .entry(destination.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_destination.max(1)))),
        )
    }

    /// Records the result of a finished or failed task.
    fn finish(
        &self,
        joined: Result<(tokio::task::Id, JobOutput), tokio::task::JoinError>,
        jobs: &mut HashMap<tokio::task::Id, Job>,
        summary: &mut RunSummary,
        fresh: Option<&mut Vec<QueueId>>,
    ) {
        let (id, output) = match joined {
            Ok((id, output)) => (id, output),
            Err(error) => {
                let id = error.id();
                (id, Err(format!("delivery task failed: {error}")))
            }
        };
        let Some(job) = jobs.remove(&id) else {
            return;
        };
        let now = now_millis();
        let (updates, notifications) = self.outcomes(&job, output, now);
        for update in &updates {
            match update.state {
                RecipientState::Delivered => summary.delivered += 1,
                RecipientState::Failed => summary.failed += 1,
                RecipientState::Uncertain => summary.uncertain += 1,
                RecipientState::Deferred | RecipientState::Queued => summary.deferred += 1,
            }
        }
        summary.notifications += notifications.len();
        match self
            .store
            .record(&job.claim.id, &updates, &notifications, now)
        {
            Ok(stored) => {
                if let Some(fresh) = fresh {
                    fresh.extend(stored);
                }
                for update in updates {
                    let previous = job.recipients.iter().find(|r| r.index == update.index);
                    self.emit(QueueEvent::Attempted {
                        id: job.claim.id.clone(),
                        address: previous.map(|r| r.address.clone()).unwrap_or_default(),
                        state: update.state,
                        attempts: previous.map_or(1, |r| r.attempts + 1),
                        reply: update.reply,
                    });
                }
                for notification in notifications {
                    let action = match notification {
                        Notification::Bounce(_) => DsnAction::Failed,
                        Notification::Warning(_) => DsnAction::Delayed,
                    };
                    self.emit(QueueEvent::Notified {
                        id: job.claim.id.clone(),
                        action,
                    });
                }
            }
            // The leases stay; once this process is gone they turn the
            // recipients uncertain, which is what they are now.
            Err(error) => self.emit(QueueEvent::StoreFailed {
                error: error.to_string(),
            }),
        }
    }

    /// Decides the new state of each recipient of a job and the
    /// notifications to send.
    fn outcomes(
        &self,
        job: &Job,
        output: JobOutput,
        now: Millis,
    ) -> (Vec<RecipientUpdate>, Vec<Notification>) {
        let claim = &job.claim;
        let schedule = &self.settings.retry;
        let age = now.saturating_sub(claim.created);
        let max_age = millis(schedule.max_age_for(claim.sender.as_deref()));
        let reports: Vec<Option<RecipientReport>> = match &output {
            Ok(report) => job
                .recipients
                .iter()
                .enumerate()
                .map(|(position, _)| report.recipients.get(position).cloned())
                .collect(),
            Err(_) => vec![None; job.recipients.len()],
        };

        let mut updates = Vec::new();
        let mut failed = Vec::new();
        let mut delayed = Vec::new();
        for (recipient, report) in job.recipients.iter().zip(reports) {
            let attempts = recipient.attempts.saturating_add(1);
            let (outcome, reason) = match (&output, &report) {
                (Err(error), _) => (Outcome::Failed, error.clone()),
                (Ok(_), Some(report)) => (report.outcome, report.reason.clone()),
                (Ok(_), None) => (Outcome::Deferred, "no result for this recipient".to_owned()),
            };
            let retry_at = now.saturating_add(millis(schedule.delay(attempts, rand::random())));
            let (state, reply, next_attempt) = match outcome {
                Outcome::Delivered => (RecipientState::Delivered, reason.clone(), now),
                Outcome::Failed => (RecipientState::Failed, reason.clone(), now),
                Outcome::Deferred | Outcome::Uncertain if age >= max_age => (
                    RecipientState::Failed,
                    format!(
                        "expired after {} in the queue; last error: {reason}",
                        human_duration(age)
                    ),
                    now,
                ),
                Outcome::Deferred => (RecipientState::Deferred, reason.clone(), retry_at),
                Outcome::Uncertain => (RecipientState::Uncertain, reason.clone(), retry_at),
            };
            match state {
                RecipientState::Failed => failed.push(dsn_recipient(
                    recipient,
                    report.as_ref(),
                    DsnAction::Failed,
                    &reply,
                    outcome != Outcome::Failed,
                )),
                RecipientState::Deferred | RecipientState::Uncertain => delayed.push(
                    dsn_recipient(recipient, report.as_ref(), DsnAction::Delayed, &reply, true),
                ),
                _ => {}
            }
            updates.push(RecipientUpdate {
                index: recipient.index,
                state,
                reply,
                next_attempt,
            });
        }

        let mut notifications = Vec::new();
        let content = if failed.is_empty() && delayed.is_empty() {
            Vec::new()
        } else {
            self.store.content(&claim.id).unwrap_or_default()
        };
        let original = Original {
            id: &claim.id,
            sender: claim.sender.as_deref().unwrap_or(""),
            arrival: claim.created,
            content: &content,
        };
        let reporting = &self.settings.reporting_mta;
        if let Some(message) = bounce::build(original, &failed, reporting, now, None) {
            notifications.push(Notification::Bounce(message));
        }
        let warn_due = schedule
            .warn_after
            .is_some_and(|after| !claim.warned && age >= millis(after));
        if warn_due {
            let until = claim.created.saturating_add(max_age);
            if let Some(message) = bounce::build(original, &delayed, reporting, now, Some(until)) {
                notifications.push(Notification::Warning(message));
            }
        }
        (updates, notifications)
    }

    /// Gives back the claims of tasks that have not started a session yet.
    fn release_unstarted(&self, jobs: &mut HashMap<tokio::task::Id, Job>) {
        let unstarted: Vec<tokio::task::Id> = jobs
            .iter()
            .filter(|(_, job)| !job.started.load(Ordering::SeqCst))
            .map(|(id, _)| *id)
            .collect();
        if unstarted.is_empty() {
            return;
        }
        for id in unstarted {
            if let Some(job) = jobs.remove(&id) {
                job.abort.abort();
                let indexes: Vec<u32> = job.recipients.iter().map(|r| r.index).collect();
                if let Err(error) = self
                    .store
                    .release(&job.claim.id, &indexes, self.owner.token)
                {
                    self.emit(QueueEvent::StoreFailed {
                        error: error.to_string(),
                    });
                }
            }
        }
        // The aborted tasks still come out of `join_next`; `finish` ignores
        // them because their ids are no longer in `jobs`.
    }

    /// Cuts every session still in progress and records its recipients as
    /// uncertain.
    async fn abandon_all(
        &self,
        tasks: &mut JoinSet<JobOutput>,
        jobs: &mut HashMap<tokio::task::Id, Job>,
        summary: &mut RunSummary,
    ) {
        tasks.abort_all();
        // A task that finished before the abort keeps its result; only the
        // cut ones are abandoned.
        while let Some(joined) = tasks.join_next_with_id().await {
            if joined.is_ok() {
                self.finish(joined, jobs, summary, None);
            }
        }
        let now = now_millis();
        for (_, job) in jobs.drain() {
            if !job.started.load(Ordering::SeqCst) {
                // Still waiting for a delivery slot: nothing was sent, so
                // the recipients are only given back.
                let indexes: Vec<u32> = job.recipients.iter().map(|r| r.index).collect();
                if let Err(error) = self
                    .store
                    .release(&job.claim.id, &indexes, self.owner.token)
                {
                    self.emit(QueueEvent::StoreFailed {
                        error: error.to_string(),
                    });
                }
                continue;
            }
            let mut updates = Vec::new();
            let mut addresses = Vec::new();
            for recipient in &job.recipients {
                let attempts = recipient.attempts.saturating_add(1);
                let delay = self.settings.retry.delay(attempts, rand::random());
                updates.push(RecipientUpdate {
                    index: recipient.index,
                    state: RecipientState::Uncertain,
                    reply: "session cut at shutdown; the message may have been delivered"
                        .to_owned(),
                    next_attempt: now.saturating_add(millis(delay)),
                });
                addresses.push(recipient.address.clone());
            }
            summary.uncertain += updates.len();
            if let Err(error) = self.store.record(&job.claim.id, &updates, &[], now) {
                self.emit(QueueEvent::StoreFailed {
                    error: error.to_string(),
                });
            }
            self.emit(QueueEvent::Abandoned {
                id: job.claim.id.clone(),
                addresses: addresses.clone(),
            });
            summary.abandoned.push((job.claim.id.clone(), addresses));
        }
    }

    /// Turns the leases of dead or expired deliverers into uncertain
    /// recipients: the deliverer may have finished the session before it
    /// died, so a retry may give a second copy, and the state records that.
    ///
    /// # Errors
    ///
    /// A store error.
    pub fn recover_stale_leases(
        &self,
        now: Millis,
        summary: &mut RunSummary,
    ) -> Result<(), StoreError> {
        let mut stale: BTreeMap<QueueId, Vec<(u32, u32)>> = BTreeMap::new();
        for lease in self.store.leases()? {
            let ours = lease.token == self.owner.token;
            let alive = if lease.pid == self.owner.pid {
                ours
            } else {
                pid_is_alive(lease.pid)
            };
            if (ours || alive) && lease.until >= now {
                continue;
            }
            stale
                .entry(lease.id)
                .or_default()
                .push((lease.index, lease.pid));
        }
        for (id, recipients) in stale {
            let message = match self.store.show(&id) {
                Ok((message, _)) => message,
                Err(StoreError::NotFound(_)) => continue,
                Err(error) => return Err(error),
            };
            let mut updates = Vec::new();
            for (index, pid) in recipients {
                let Some(record) = message.recipients.iter().find(|r| r.index == index) else {
                    continue;
                };
                let attempts = record.attempts.saturating_add(1);
                let delay = self.settings.retry.delay(attempts, rand::random());
                updates.push(RecipientUpdate {
                    index,
                    state: RecipientState::Uncertain,
                    reply: format!(
                        "the delivering process {pid} stopped during the attempt; \
                         the message may have been delivered"
                    ),
                    next_attempt: now.saturating_add(millis(delay)),
                });
                self.emit(QueueEvent::Recovered {
                    id: id.clone(),
                    address: record.address.clone(),
                    pid,
                });
            }
            summary.recovered += updates.len();
            self.store.record(&id, &updates, &[], now)?;
        }
        Ok(())
    }
}

/// Delivers one job once the global and destination limits allow.
#[expect(clippy::too_many_arguments, reason = "one task's inputs, used once")]
async fn deliver_job(
    delivery: Arc<Delivery>,
    global: Arc<Semaphore>,
    destination: Arc<Semaphore>,
    started: Arc<AtomicBool>,
    sender: Option<String>,
    recipients: Vec<String>,
    content: Arc<[u8]>,
    policy: DataPolicy,
) -> JobOutput {
    // The destination's slot first: a job that waits for a busy
    // destination must not hold one of the global slots meanwhile, or a
    // slow domain holds up mail to every other one.
    let _destination = destination
        .acquire_owned()
        .await
        .map_err(|_| "destination limit closed".to_owned())?;
    let _global = global
        .acquire_owned()
        .await
        .map_err(|_| "delivery limit closed".to_owned())?;
    started.store(true, Ordering::SeqCst);
    let sender = match sender {
        Some(text) => {
            Some(Address::parse(&text).map_err(|error| format!("invalid queued sender: {error}"))?)
        }
        None => None,
    };
    let mut addresses = Vec::with_capacity(recipients.len());
    for text in &recipients {
        addresses.push(
            Address::parse(text).map_err(|error| format!("invalid queued recipient: {error}"))?,
        );
    }
    let message = Message::from_bytes(sender, addresses, content, policy)
        .await
        .map_err(|error| format!("message cannot be sent as it is: {}", error_chain(&error)))?;
    Ok(delivery.deliver(&message).await)
}

fn dsn_recipient(
    recipient: &RecipientRecord,
    report: Option<&RecipientReport>,
    action: DsnAction,
    reason: &str,
    transient: bool,
) -> DsnRecipient {
    let reply = report.and_then(|r| r.reply.as_ref());
    let enhanced = reply.and_then(|r| r.enhanced.clone());
    let status = match (enhanced, action, transient) {
        (Some(code), DsnAction::Failed, false) if code.starts_with('5') => code,
        (Some(code), DsnAction::Delayed, _) if code.starts_with('4') => code,
        (Some(code), DsnAction::Failed, true) if code.starts_with('4') => code,
        (_, DsnAction::Failed, false) => "5.0.0".to_owned(),
        // RFC 3463: 4.4.7 is "delivery time expired".
        (_, DsnAction::Failed, true) => "4.4.7".to_owned(),
        (_, DsnAction::Delayed, _) => "4.0.0".to_owned(),
    };
    DsnRecipient {
        address: recipient.address.clone(),
        action,
        status,
        remote_mta: report.and_then(|r| r.host.clone()),
        diagnostic: reply.map(|r| {
            let enhanced = r
                .enhanced
                .as_deref()
                .map(|e| format!(" {e}"))
                .unwrap_or_default();
            format!("{}{enhanced} {}", r.code, r.text)
        }),
        reason: reason.to_owned(),
    }
}

fn millis(duration: Duration) -> Millis {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

async fn sleep_until_option(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Formats a duration in the largest whole unit: `5d`, `3h`, `12m`, `40s`.
pub fn human_duration(millis: Millis) -> String {
    let seconds = millis.max(0) / 1000;
    match seconds {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Whether a process with this id runs, on Linux: `/proc/PID/stat` exists
/// and the process is not a zombie. A zombie has ended and only waits for
/// its parent to collect its status.
pub fn pid_is_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name, which is in parentheses
    // and may itself contain spaces or parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X'))
}
