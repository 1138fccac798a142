//! Delivery of one message to all its recipients, across the mail
//! exchangers of each recipient domain.
//!
//! Recipients are grouped by domain. For each domain the exchangers' addresses
//! are tried in order (C-MX-05) until every recipient has a final answer.
//! A connection that fails, a greeting or EHLO that is refused, a 421 or a
//! connection lost before the final dot moves the recipients still open to
//! the next address. A 5yz reply fails the recipients it applies to for
//! good. A 4yz reply (to MAIL, RCPT, DATA or the final dot) defers them, and
//! the next address gets another try for them (C-TX-03, C-TX-05). When no
//! address is left, the last 4yz reply is kept as the reason. A connection
//! lost after the final dot makes the outcome uncertain and the message is
//! not sent again, because the server may have taken it (RFC 5321 section
//! 6.1).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxsend_proto::session::TranscriptLine;
use mxsend_proto::{Address, Outcome, Reply, SessionError, TransactionReport};
use tracing::{Instrument, debug, debug_span};

use crate::connection::{Connection, ConnectionConfig, ConnectionError};
use crate::message::Message;
use crate::resolver::{MxError, MxHost, MxPlan, MxResolver};
use crate::tls::TlsPolicy;

/// The default SMTP port for MX delivery.
pub const DEFAULT_PORT: u16 = 25;

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To the mail exchangers of each recipient domain.
    Mx,
    /// To one smarthost for every recipient, with no MX lookup.
    Relay {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
}

/// Settings of a delivery.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Settings of each connection.
    pub connection: ConnectionConfig,
    /// The port of mail exchangers. Default 25.
    pub port: u16,
    /// MX delivery or a relay. Default MX.
    pub route: Route,
}

impl DeliveryConfig {
    /// The TLS policy in effect: the configured one, else
    /// [`TlsPolicy::Verify`] for a relay and [`TlsPolicy::May`] for MX
    /// delivery, as Postfix does for MX hosts.
    pub fn tls_policy(&self) -> TlsPolicy {
        self.connection.tls.policy.unwrap_or(match self.route {
            Route::Relay { .. } => TlsPolicy::Verify,
            Route::Mx => TlsPolicy::May,
        })
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            connection: ConnectionConfig::default(),
            port: DEFAULT_PORT,
            route: Route::Mx,
        }
    }
}

/// A server reply in a report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplySummary {
    /// The reply code.
    pub code: u16,
    /// The enhanced status code, such as `5.1.1`.
    pub enhanced: Option<String>,
    /// The text of all lines, joined.
    pub text: String,
}

impl From<&Reply> for ReplySummary {
    fn from(reply: &Reply) -> Self {
        ReplySummary {
            code: reply.code(),
            enhanced: reply.enhanced().map(|code| code.to_string()),
            text: reply.text(),
        }
    }
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecipientReport {
    /// The recipient.
    pub address: String,
    /// The outcome.
    #[serde(serialize_with = "serialize_outcome")]
    pub outcome: Outcome,
    /// The server reply that decided it, when there was one.
    pub reply: Option<ReplySummary>,
    /// True when mxsend refused to send to this recipient itself, because
    /// the last exchanger tried lacked an extension that the message needs
    /// (SIZE, 8BITMIME, BINARYMIME or SMTPUTF8). `reply` is then made up
    /// by mxsend, not sent by a server. Other decisions made without a
    /// server, such as mail that would loop back to this host, have no
    /// `reply` and leave this false.
    pub local: bool,
    /// Why, in one line: the reply or the error.
    pub reason: String,
    /// The exchanger that gave the answer.
    pub host: Option<String>,
    /// Its address and port.
    pub server: Option<SocketAddr>,
    /// True when DNS reported that the domain or relay does not exist, or
    /// that no exchanger of the domain has an address: sendmail's "host
    /// unknown".
    pub no_such_domain: bool,
}

fn serialize_outcome<S: serde::Serializer>(outcome: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&outcome.to_string())
}

/// One connection attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attempt {
    /// The exchanger's name.
    pub host: String,
    /// The address tried, when the host had one.
    pub server: Option<SocketAddr>,
    /// What happened, in one line.
    pub result: String,
}

/// A transcript line with the server it was exchanged with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptEntry {
    /// The server.
    pub server: SocketAddr,
    /// The line.
    pub line: TranscriptLine,
}

impl fmt::Display for TranscriptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.server, self.line)
    }
}

/// The result of delivering one message.
#[derive(Debug, Clone, Default)]
pub struct DeliveryReport {
    /// Every recipient in the order given.
    pub recipients: Vec<RecipientReport>,
    /// Every connection attempt in order.
    pub attempts: Vec<Attempt>,
    /// Every command and reply, by server. Message content is not included.
    pub transcript: Vec<TranscriptEntry>,
}

impl DeliveryReport {
    /// How many recipients got the message.
    pub fn delivered(&self) -> usize {
        self.count(Outcome::Delivered)
    }

    /// How many recipients have the given outcome.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.recipients
            .iter()
            .filter(|r| r.outcome == outcome)
            .count()
    }
}

/// Sends messages over MX lookups or a relay.
#[derive(Debug, Clone)]
pub struct Delivery {
    resolver: MxResolver,
    config: DeliveryConfig,
    pool: Option<Arc<ConnectionPool>>,
    /// Addresses of this host, which must not be used as exchangers.
    own_addresses: Arc<[IpAddr]>,
    /// Servers that recently took nothing, with the time they failed.
    unusable: Arc<Mutex<HashMap<SocketAddr, Instant>>>,
}

/// Time during which a server that took nothing (it refused the
/// connection, timed out or greeted with an error) is tried after the other
/// exchangers. Twisted's `MXCalculator.markBad` does the same, so that each
/// new message does not wait for the same dead host first (C-Q-03).
const UNUSABLE_SERVER_TIME: Duration = Duration::from_secs(5 * 60);

/// Most idle connections kept for one server, so a burst to one host does
/// not leave many sockets open afterwards.
const MAX_IDLE_PER_SERVER: usize = 4;

/// Most idle connections kept in all. Servers limit the sessions they
/// serve at once, and one that hosts many domains would otherwise see a
/// kept connection for each of them and stop greeting new ones.
const MAX_IDLE_TOTAL: usize = 32;

/// Time [`Delivery::close_idle`] waits for the replies to QUIT.
const CLOSE_IDLE_LIMIT: Duration = Duration::from_secs(30);

/// A server address, with the exchanger name used for it when TLS
/// verification depends on that name. Without verification, every domain
/// whose exchanger has that address shares its connections, as Postfix's
/// connection cache does.
type ServerKey = (SocketAddr, String);

/// Idle connections after a finished transaction, each with the time it
/// became idle, shared by every clone of a [`Delivery`].
struct ConnectionPool {
    idle_limit: Duration,
    idle: Mutex<HashMap<ServerKey, Vec<(Connection, Instant)>>>,
}

impl fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self
            .idle
            .lock()
            .map_or(0, |idle| idle.values().map(Vec::len).sum());
        f.debug_struct("ConnectionPool")
            .field("idle_limit", &self.idle_limit)
            .field("idle_connections", &count)
            .finish()
    }
}

impl ConnectionPool {
    /// Takes an idle connection to `server` that is still usable, sending
    /// QUIT on those that idled too long and dropping those the server
    /// closed or ended with an unprompted 421.
    async fn take(&self, key: &ServerKey) -> Option<Connection> {
        let server = key.0;
        loop {
            let entry = {
                let mut idle = self.idle.lock().ok()?;
                idle.get_mut(key)?.pop()
            };
            let (mut connection, since) = entry?;
            if since.elapsed() > self.idle_limit {
                let _ = connection.quit().await;
                continue;
            }
            if connection.check_idle() {
                return Some(connection);
            }
            debug!(%server, "idle connection closed by the server; dropped");
        }
    }

    /// Keeps `connection` for the next message to `server`, or sends QUIT
    /// when enough connections to it are idle already.
    async fn give_back(&self, key: ServerKey, connection: Connection) {
        let overflow = {
            let Ok(mut idle) = self.idle.lock() else {
                return;
            };
            let total: usize = idle.values().map(Vec::len).sum();
            let list = idle.entry(key).or_default();
            if list.len() < MAX_IDLE_PER_SERVER && total < MAX_IDLE_TOTAL {
                list.push((connection, Instant::now()));
                None
            } else {
                Some(connection)
            }
        };
        if let Some(connection) = overflow {
            let _ = connection.quit().await;
        }
    }

    /// Takes every idle connection.
    fn drain(&self) -> Vec<Connection> {
        let Ok(mut idle) = self.idle.lock() else {
            return Vec::new();
        };
        idle.drain()
            .flat_map(|(_, list)| list.into_iter().map(|(connection, _)| connection))
            .collect()
    }
}

impl Delivery {
    /// Creates a delivery with a resolver and settings. Each message opens
    /// its own connections; see [`Delivery::with_connection_reuse`].
    pub fn new(resolver: MxResolver, config: DeliveryConfig) -> Delivery {
        Delivery {
            resolver,
            config,
            pool: None,
            own_addresses: Arc::from([]),
            unusable: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Declares the addresses of this host. When one of a domain's
    /// exchangers has one of them, this host is that exchanger, so the
    /// message may only go to exchangers with a lower preference value. With
    /// none left, it would loop back here, so it fails instead (RFC 5321
    /// section 5.1, C-MX-06).
    #[must_use]
    pub fn with_own_addresses(mut self, addresses: Vec<IpAddr>) -> Delivery {
        self.own_addresses = Arc::from(addresses);
        self
    }

    /// Keeps a connection open for up to `idle_limit` after a transaction,
    /// so the next message to the same server skips the TCP, TLS and EHLO
    /// round trips. A kept connection that the server has closed, or that
    /// fails before it accepted anything, is replaced by a new one without
    /// an error in the report. Call [`Delivery::close_idle`] when done, so
    /// each server gets its QUIT.
    #[must_use]
    pub fn with_connection_reuse(mut self, idle_limit: Duration) -> Delivery {
        self.pool = Some(Arc::new(ConnectionPool {
            idle_limit,
            idle: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// The pool key of `server`, reached as exchanger `host`.
    fn pool_key(&self, server: SocketAddr, host: &str) -> ServerKey {
        let verified = matches!(
            self.config.tls_policy(),
            TlsPolicy::Verify | TlsPolicy::Implicit
        );
        let name = if verified {
            host.to_owned()
        } else {
            String::new()
        };
        (server, name)
    }

    /// Sends QUIT on every idle connection and closes it.
    pub async fn close_idle(&self) {
        self.close_idle_within(CLOSE_IDLE_LIMIT).await;
    }

    /// Sends QUIT on every kept connection at once and waits at most
    /// `limit` for the replies. Connections still waiting then are closed
    /// without them, so a server that never replies to QUIT cannot hold up a
    /// shutdown.
    pub async fn close_idle_within(&self, limit: Duration) {
        let Some(pool) = &self.pool else {
            return;
        };
        let mut quits = tokio::task::JoinSet::new();
        for connection in pool.drain() {
            quits.spawn(connection.quit());
        }
        let all = async { while quits.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            debug!(
                ?limit,
                "closing kept connections without waiting for QUIT replies"
            );
        }
    }

    /// The settings.
    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// Delivers `message` to all its recipients. Every recipient ends with
    /// an outcome; failures are in the report, never an error.
    pub async fn deliver(&self, message: &Message) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let mut results: BTreeMap<usize, RecipientReport> = BTreeMap::new();
        for (domain, indexes) in self.groups(message) {
            let recipients: Vec<(usize, Address)> = indexes
                .into_iter()
                .map(|i| (i, message.recipients()[i].clone()))
                .collect();
            let span = debug_span!("destination", domain = %domain);
            self.deliver_domain(message, &domain, recipients, &mut report, &mut results)
                .instrument(span)
                .await;
        }
        report.recipients = results.into_values().collect();
        report
    }

    /// Groups recipient indexes by destination: the lower-case domain for
    /// MX delivery, one group for a relay.
    fn groups(&self, message: &Message) -> BTreeMap<String, Vec<usize>> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, recipient) in message.recipients().iter().enumerate() {
            let key = match &self.config.route {
                Route::Mx => recipient.domain().trim_end_matches('.').to_lowercase(),
                Route::Relay { host, .. } => host.clone(),
            };
            groups.entry(key).or_default().push(index);
        }
        groups
    }

    /// Lists the plan's addresses in order, with the servers that recently
    /// took nothing moved after the others.
    fn usable_first<'a>(&self, plan: &'a MxPlan, port: u16) -> Vec<(&'a MxHost, IpAddr)> {
        let mut addresses: Vec<(&MxHost, IpAddr)> = plan.addresses().collect();
        let Ok(mut unusable) = self.unusable.lock() else {
            return addresses;
        };
        unusable.retain(|_, since| since.elapsed() < UNUSABLE_SERVER_TIME);
        addresses.sort_by_key(|(_, ip)| unusable.contains_key(&SocketAddr::new(*ip, port)));
        addresses
    }

    /// Records whether `server` took nothing in its last attempt.
    fn remember(&self, server: SocketAddr, took_nothing: bool) {
        let Ok(mut unusable) = self.unusable.lock() else {
            return;
        };
        if took_nothing {
            unusable.insert(server, Instant::now());
        } else {
            unusable.remove(&server);
        }
    }

    /// Removes this host and every less preferred exchanger from an MX
    /// plan, or returns why nothing is left.
    fn without_own_exchangers(&self, mut plan: MxPlan) -> Result<MxPlan, String> {
        let Some((preference, name)) = plan
            .own_exchanger(&self.own_addresses)
            .map(|(preference, name)| (preference, name.to_owned()))
        else {
            return Ok(plan);
        };
        plan.hosts.retain(|host| host.preference < preference);
        if plan.hosts.is_empty() {
            return Err(format!(
                "mail for {} loops back to this host: it is the exchanger {name} (preference \
                 {preference}), and no exchanger is preferred to it; check this host's \
                 addresses (--own-address, identity.addresses) and the domain's MX records",
                plan.domain
            ));
        }
        Ok(plan)
    }

    async fn plan(&self, destination: &str) -> Result<(MxPlan, u16), MxError> {
        match &self.config.route {
            Route::Mx => Ok((self.resolver.resolve(destination).await?, self.config.port)),
            Route::Relay { host, port } => Ok((self.resolver.resolve_host(host).await?, *port)),
        }
    }

    async fn deliver_domain(
        &self,
        message: &Message,
        destination: &str,
        mut pending: Vec<(usize, Address)>,
        report: &mut DeliveryReport,
        results: &mut BTreeMap<usize, RecipientReport>,
    ) {
        let (plan, port) = match self.plan(destination).await {
            Ok(found) => found,
            Err(error) => {
                debug!(%error, "no route");
                let outcome = if error.is_permanent() {
                    Outcome::Failed
                } else {
                    Outcome::Deferred
                };
                for (index, address) in pending {
                    results.insert(
                        index,
                        RecipientReport {
                            address: address.to_string(),
                            outcome,
                            reply: None,
                            local: false,
                            reason: error.to_string(),
                            host: None,
                            server: None,
                            no_such_domain: matches!(
                                error,
                                MxError::NoSuchDomain { .. } | MxError::NoAddress { .. }
                            ),
                        },
                    );
                }
                return;
            }
        };

        let plan = match self.without_own_exchangers(plan) {
            Ok(plan) => plan,
            Err(reason) => {
                debug!(%reason, "mail loops back");
                for (index, address) in pending {
                    results.insert(
                        index,
                        RecipientReport {
                            address: address.to_string(),
                            outcome: Outcome::Failed,
                            reply: None,
                            local: false,
                            reason: reason.clone(),
                            host: None,
                            server: None,
                            no_such_domain: false,
                        },
                    );
                }
                return;
            }
        };

        let mut last_error = format!("no usable mail exchanger for {destination}");
        for host in plan.hosts.iter().filter(|host| host.addresses.is_empty()) {
            let result = host.error.clone().unwrap_or_default();
            report.attempts.push(Attempt {
                host: host.name.clone(),
                server: None,
                result: result.clone(),
            });
            last_error = result;
        }
        for (host, ip) in self.usable_first(&plan, port) {
            if pending.is_empty() {
                break;
            }
            let server = SocketAddr::new(ip, port);
            let span = debug_span!("attempt", mx = %host.name, ip = %ip);
            let before = pending.len();
            let outcome = self
                .attempt(message, server, &host.name, &mut pending, report, results)
                .instrument(span)
                .await;
            let took_nothing = pending.len() == before
                && !results.values().any(|result| result.server == Some(server));
            self.remember(server, took_nothing);
            report.attempts.push(Attempt {
                host: host.name.clone(),
                server: Some(server),
                result: outcome.clone(),
            });
            last_error = format!("{} ({server}): {outcome}", host.name);
        }
        // A recipient that a server deferred with a reply keeps that reply
        // as its reason. The others get the last connection error.
        for (index, address) in pending {
            results.entry(index).or_insert_with(|| RecipientReport {
                address: address.to_string(),
                outcome: Outcome::Deferred,
                reply: None,
                local: false,
                reason: last_error.clone(),
                host: None,
                server: None,
                no_such_domain: false,
            });
        }
    }

    /// Tries one address; settles the recipients it gave a final answer
    /// for and leaves the others in `pending`. A recipient deferred by a
    /// reply gets its report now and stays in `pending`, so a later address
    /// can still deliver it. Returns what happened.
    async fn attempt(
        &self,
        message: &Message,
        server: SocketAddr,
        host: &str,
        pending: &mut Vec<(usize, Address)>,
        report: &mut DeliveryReport,
        results: &mut BTreeMap<usize, RecipientReport>,
    ) -> String {
        let recipients: Vec<Address> = pending.iter().map(|(_, a)| a.clone()).collect();
        let idle = match &self.pool {
            Some(pool) => pool.take(&self.pool_key(server, host)).await,
            None => None,
        };
        let mut retry_note = None;
        let (connection, transaction) = match idle {
            Some(mut connection) => {
                let sent = connection.send(message, &recipients).await;
                append_transcript(report, server, &mut connection);
                match sent {
                    Ok(transaction) if !is_stale(&transaction) => (connection, transaction),
                    // The server dropped or refused the kept connection before
                    // it accepted anything, so a new connection cannot cause
                    // a duplicate (C-TX-06).
                    _ => {
                        debug!(%server, "kept connection failed before a transaction; connecting anew");
                        match self
                            .fresh_attempt(message, &recipients, server, host, report)
                            .await
                        {
                            Ok((connection, transaction, note)) => {
                                retry_note = note;
                                (connection, transaction)
                            }
                            Err((error, text)) => {
                                self.fail_on_rejected_auth(
                                    &error, &text, server, host, pending, results,
                                );
                                return text;
                            }
                        }
                    }
                }
            }
            None => match self
                .fresh_attempt(message, &recipients, server, host, report)
                .await
            {
                Ok((connection, transaction, note)) => {
                    retry_note = note;
                    (connection, transaction)
                }
                Err((error, text)) => {
                    self.fail_on_rejected_auth(&error, &text, server, host, pending, results);
                    return text;
                }
            },
        };
        let with_note = |text: String| match &retry_note {
            Some(note) => format!("{note}; then: {text}"),
            None => text,
        };

        let mut connection = connection;
        let mut transaction = transaction;
        // The recipients of the current transaction, and those that stay
        // pending for the next exchanger.
        let mut round: Vec<(usize, Address)> = std::mem::take(pending);
        let mut still_pending = Vec::new();
        let summary = loop {
            let session_error = connection
                .session_result()
                .and_then(|result| result.as_ref().err())
                .map(ToString::to_string);
            let nothing_sent = transaction.recipients.iter().all(|r| r.refused_locally);
            // The local refusal of the whole message, which names what the
            // server lacks, for the attempt's summary.
            let local_refusal = transaction
                .recipients
                .first()
                .filter(|_| nothing_sent)
                .and_then(|r| r.reply.as_ref())
                .map(ToString::to_string);
            let mut over_limit = Vec::new();
            let mut delivered = 0;
            for ((index, address), status) in round.drain(..).zip(transaction.recipients) {
                if transaction.interrupted && status.outcome == Outcome::Deferred {
                    still_pending.push((index, address));
                    continue;
                }
                let reason = match (&status.reply, &session_error) {
                    (Some(reply), _) => reply.to_string(),
                    (None, Some(error)) => error.clone(),
                    (None, None) => "no reply".to_owned(),
                };
                let reason = if status.outcome == Outcome::Uncertain {
                    format!("{reason}; the message may have been delivered")
                } else if status.refused_locally {
                    format!("{reason} (decided by mxsend before sending)")
                } else {
                    reason
                };
                results.insert(
                    index,
                    RecipientReport {
                        address: address.to_string(),
                        outcome: status.outcome,
                        reply: status.reply.as_ref().map(ReplySummary::from),
                        local: status.refused_locally,
                        reason,
                        host: Some(host.to_owned()),
                        server: Some(server),
                        no_such_domain: false,
                    },
                );
                let over = status.outcome == Outcome::Deferred
                    && status.rcpt_reply.as_ref().is_some_and(|r| r.code() == 452);
                if status.outcome == Outcome::Delivered {
                    delivered += 1;
                } else if over {
                    over_limit.push((index, address));
                } else if status.outcome == Outcome::Deferred || status.refused_locally {
                    // A 4yz reply is not final: the next exchanger may accept
                    // the recipient (C-TX-03). Nor is a local refusal for a
                    // missing extension, since another exchanger may offer it
                    // (C-8B-04). Nothing was accepted for it here, so sending
                    // it again cannot duplicate the message.
                    still_pending.push((index, address));
                }
            }

            let summary = match (&transaction.final_reply, &session_error) {
                (_, Some(error)) => format!("session failed: {error}"),
                (Some(reply), None) => reply.to_string(),
                (None, None) if nothing_sent => match local_refusal {
                    Some(refusal) => format!("message not sent: {refusal}"),
                    None => "message not sent: the server lacks an extension it needs".to_owned(),
                },
                (None, None) => "no recipient accepted".to_owned(),
            };
            // C-TX-02, RFC 5321 section 4.5.3.1.10: a server that takes only
            // so many recipients in one transaction replies 452 to the rest.
            // They go in the next transaction on this connection, as long
            // as each transaction delivers to someone.
            if over_limit.is_empty() || delivered == 0 || !connection.is_usable() {
                still_pending.extend(over_limit);
                break summary;
            }
            debug!(
                %server,
                rest = over_limit.len(),
                "server took part of the recipients; sending to the rest in another transaction"
            );
            let recipients: Vec<Address> = over_limit.iter().map(|(_, a)| a.clone()).collect();
            let sent = connection.send(message, &recipients).await;
            append_transcript(report, server, &mut connection);
            match sent {
                Ok(next) => {
                    round = over_limit;
                    transaction = next;
                }
                Err(error) => {
                    still_pending.extend(over_limit);
                    break format!("{summary}; then: {}", error_chain(&error));
                }
            }
        };
        *pending = still_pending;

        let summary = match connection.tls_description() {
            Some(tls) => format!("{summary} ({tls})"),
            None => format!("{summary} (no TLS)"),
        };
        let summary = with_note(summary);
        if connection.is_usable() {
            match &self.pool {
                Some(pool) => {
                    pool.give_back(self.pool_key(server, host), connection)
                        .await
                }
                None => {
                    let _ = connection.quit().await;
                }
            }
        }
        summary
    }

    /// Opens a new connection and sends the message on it. An error comes
    /// with its one-line text; a transaction with its connection and the
    /// note of a plain-text retry under `may`.
    async fn fresh_attempt(
        &self,
        message: &Message,
        recipients: &[Address],
        server: SocketAddr,
        host: &str,
        report: &mut DeliveryReport,
    ) -> Result<(Connection, TransactionReport, Option<String>), (ConnectionError, String)> {
        let (connected, retry_note) = self.open(server, host).await;
        let with_note = |text: String| match &retry_note {
            Some(note) => format!("{note}; then: {text}"),
            None => text,
        };
        let mut connection = match connected {
            Ok(connection) => connection,
            Err(error) => {
                let text = with_note(error_chain(&error));
                debug!(error = %text, "connection failed");
                return Err((error, text));
            }
        };
        let sent = connection.send(message, recipients).await;
        append_transcript(report, server, &mut connection);
        match sent {
            Ok(transaction) => Ok((connection, transaction, retry_note)),
            Err(error) => {
                let text = with_note(error_chain(&error));
                debug!(error = %text, "transaction failed");
                let _ = connection.quit().await;
                Err((error, text))
            }
        }
    }
}

/// Whether a transaction on a kept connection failed before the server
/// accepted anything: interrupted, with every recipient still deferred
/// and none uncertain.
fn is_stale(transaction: &TransactionReport) -> bool {
    transaction.interrupted
        && transaction
            .recipients
            .iter()
            .all(|recipient| recipient.outcome == Outcome::Deferred && !recipient.refused_locally)
}

impl Delivery {
    /// Connects with the route's TLS policy. Under `may`, a failed TLS
    /// handshake is followed by one more connection without TLS, as
    /// Postfix does (C-TLS-02), and the second value is a note that reports
    /// it. Only EHLO and STARTTLS went out on the first connection, so the
    /// retry cannot duplicate a message. No other policy retries in plain
    /// text.
    async fn open(
        &self,
        server: SocketAddr,
        host: &str,
    ) -> (Result<Connection, ConnectionError>, Option<String>) {
        let policy = self.config.tls_policy();
        let mut config = self.config.connection.clone();
        config.tls.policy = Some(policy);
        match Connection::connect_host(server, host, &config).await {
            Err(error) if policy == TlsPolicy::May && error.is_tls_handshake_failure() => {
                let note = format!(
                    "{}; retried without TLS on a new connection",
                    error_chain(&error)
                );
                debug!(error = %note, "TLS handshake failed under the may policy");
                config.tls.policy = Some(TlsPolicy::None);
                let retried = Connection::connect_host(server, host, &config).await;
                (retried, Some(note))
            }
            other => (other, None),
        }
    }

    /// Fails every pending recipient for good when a relay rejected AUTH
    /// with a 5yz reply such as 535 5.7.8 (RFC 4954 section 6): the same
    /// credentials cannot succeed later. A 4yz reply such as 454 leaves
    /// them pending, so they are deferred.
    fn fail_on_rejected_auth(
        &self,
        error: &ConnectionError,
        reason: &str,
        server: SocketAddr,
        host: &str,
        pending: &mut Vec<(usize, Address)>,
        results: &mut BTreeMap<usize, RecipientReport>,
    ) {
        let Some(SessionError::AuthRejected(reply)) = error.session_error() else {
            return;
        };
        if !reply.is_permanent() || !matches!(self.config.route, Route::Relay { .. }) {
            return;
        }
        for (index, address) in pending.drain(..) {
            results.insert(
                index,
                RecipientReport {
                    address: address.to_string(),
                    outcome: Outcome::Failed,
                    reply: Some(ReplySummary::from(reply)),
                    local: false,
                    reason: reason.to_owned(),
                    host: Some(host.to_owned()),
                    server: Some(server),
                    no_such_domain: false,
                },
            );
        }
    }
}

fn append_transcript(report: &mut DeliveryReport, server: SocketAddr, connection: &mut Connection) {
    report.transcript.extend(
        connection
            .take_transcript()
            .into_iter()
            .map(|line| TranscriptEntry { server, line }),
    );
}

/// An error with its causes, for one-line reasons in reports.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
