//! mxsend as a sender, through the library API only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, TransactionReport};
use mxsend::{
    Connection, ConnectionConfig, Delivery, DeliveryConfig, MailSource, Message, MxResolver,
    Nameserver, ResolverSettings, Route, TlsPolicy,
};

use crate::args::Args;
use crate::{Outcome, RECIPIENT, SENDER, numbered_recipients};

/// Connection settings for every mxsend workload: the library defaults,
/// with a fixed EHLO name and without a transcript. A transcript would
/// grow by five lines per message over a 20,000-message session.
/// smtp-sink offers no STARTTLS, so the runs are plain text, as for the
/// other senders; a relay would otherwise require verified TLS.
fn connection_config() -> ConnectionConfig {
    let mut config = ConnectionConfig {
        helo_name: Some("bench.test".to_owned()),
        transcript: false,
        ..ConnectionConfig::default()
    };
    config.tls.policy = Some(TlsPolicy::None);
    config
}

fn address(text: &str) -> Result<Address, String> {
    Address::parse(text).map_err(|error| format!("invalid address {text:?}: {error}"))
}

fn runtime(connections: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = if connections <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(connections.min(cores));
        builder
    };
    builder
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the tokio runtime: {error}"))
}

fn read_message(args: &Args) -> Result<Vec<u8>, String> {
    let path = args.path("message")?;
    std::fs::read(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

/// Hands out one shared message until the run's shared budget is spent, so
/// that several connections send exactly `--count` messages between them.
struct SharedBudget {
    message: Message,
    remaining: Arc<AtomicUsize>,
    sent: usize,
    failed: usize,
}

impl MailSource for SharedBudget {
    fn next_message(&mut self) -> Option<Message> {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .ok()
            .map(|_| self.message.clone())
    }

    fn sent_mail(&mut self, report: &TransactionReport) {
        let delivered = report.final_reply.as_ref().is_some_and(|r| r.is_positive())
            && report.accepted() == report.recipients.len();
        if delivered {
            self.sent += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// W1 and W2: `--count` copies of one message over `--connections`
/// connections, each a [`Connection`] fed by a [`MailSource`].
pub fn connection(args: &Args) -> Result<Outcome, String> {
    let server = args.socket("server")?;
    let count = args.number("count")?;
    let connections = args.number_or("connections", 1)?;
    let content = read_message(args)?;
    let runtime = runtime(connections)?;

    runtime.block_on(async move {
        let message = Message::from_bytes(
            Some(address(SENDER)?),
            vec![address(RECIPIENT)?],
            content,
            DataPolicy::default(),
        )
        .await
        .map_err(|error| format!("invalid benchmark message: {error}"))?;
        let remaining = Arc::new(AtomicUsize::new(count));
        let config = connection_config();

        let started = Instant::now();
        let mut tasks = Vec::with_capacity(connections);
        for _ in 0..connections {
            let mut source = SharedBudget {
                message: message.clone(),
                remaining: Arc::clone(&remaining),
                sent: 0,
                failed: 0,
            };
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                let connection = Connection::connect(server, &config).await?;
                connection.run(&mut source).await?;
                Ok::<_, mxsend::ConnectionError>((source.sent, source.failed))
            }));
        }
        let mut outcome = Outcome {
            sent: 0,
            failed: 0,
            elapsed: Default::default(),
        };
        for task in tasks {
            let (sent, failed) = task
                .await
                .map_err(|error| format!("sender task failed: {error}"))?
                .map_err(|error| format!("session with {server} failed: {}", chain(&error)))?;
            outcome.sent += sent;
            outcome.failed += failed;
        }
        outcome.elapsed = started.elapsed();
        Ok(outcome)
    })
}

/// W4: one message whose content is streamed from a file.
pub fn file(args: &Args) -> Result<Outcome, String> {
    let server = args.socket("server")?;
    let path = args.path("message")?;
    let runtime = runtime(1)?;

    runtime.block_on(async move {
        let started = Instant::now();
        // Building the message reads the file once to measure it for SIZE=,
        // so that pass belongs to the cost of sending it.
        let message = Message::from_file(
            Some(address(SENDER)?),
            vec![address(RECIPIENT)?],
            &path,
            DataPolicy::default(),
        )
        .await
        .map_err(|error| format!("invalid benchmark message: {error}"))?;
        let mut connection = Connection::connect(server, &connection_config())
            .await
            .map_err(|error| chain(&error))?;
        let report = connection
            .send(&message, message.recipients())
            .await
            .map_err(|error| chain(&error))?;
        connection.quit().await.map_err(|error| chain(&error))?;
        let delivered = report.final_reply.as_ref().is_some_and(|r| r.is_positive());
        Ok(Outcome {
            sent: usize::from(delivered),
            failed: usize::from(!delivered),
            elapsed: started.elapsed(),
        })
    })
}

/// W3: `--count` deliveries of one message to `--recipients` recipients at
/// one domain, each a [`Delivery`] through the server as a relay.
pub fn delivery(args: &Args) -> Result<Outcome, String> {
    let server = args.socket("server")?;
    let recipient_count = args.number("recipients")?;
    let count = args.number("count")?;
    let content = read_message(args)?;
    let runtime = runtime(1)?;

    runtime.block_on(async move {
        let recipients = numbered_recipients(recipient_count, "bench.test")
            .iter()
            .map(|text| address(text))
            .collect::<Result<Vec<_>, _>>()?;
        let message = Message::from_bytes(
            Some(address(SENDER)?),
            recipients,
            content,
            DataPolicy::default(),
        )
        .await
        .map_err(|error| format!("invalid benchmark message: {error}"))?;
        // The relay is an IP address, which the resolver takes as it is, so
        // this nameserver is never asked. It is set so that nothing reads
        // the system's resolver configuration.
        let settings = ResolverSettings {
            nameserver: Nameserver::At(server),
            ..ResolverSettings::default()
        };
        let resolver = MxResolver::new(&settings).map_err(|error| error.to_string())?;
        let delivery = Delivery::new(
            resolver,
            DeliveryConfig {
                connection: connection_config(),
                port: server.port(),
                route: Route::Relay {
                    host: server.ip().to_string(),
                    port: server.port(),
                },
            },
        );

        let started = Instant::now();
        let mut outcome = Outcome {
            sent: 0,
            failed: 0,
            elapsed: Default::default(),
        };
        for _ in 0..count {
            let report = delivery.deliver(&message).await;
            if report.delivered() == recipient_count {
                outcome.sent += 1;
            } else {
                outcome.failed += 1;
                report_first_failure(&report);
            }
        }
        outcome.elapsed = started.elapsed();
        Ok(outcome)
    })
}

/// W5: `--count` messages, message `i` to one recipient at domain
/// `d{i % domains}.bench.test`, delivered one after another through MX
/// lookups at `--nameserver`, each with its own [`Delivery::deliver`] call.
pub fn mx(args: &Args) -> Result<Outcome, String> {
    let nameserver = args.socket("nameserver")?;
    let port = u16::try_from(args.number("port")?).map_err(|error| format!("--port: {error}"))?;
    let domains = args.number("domains")?;
    let count = args.number("count")?;
    let content: Arc<[u8]> = read_message(args)?.into();
    let runtime = runtime(1)?;

    runtime.block_on(async move {
        let mut messages = Vec::with_capacity(count);
        for i in 0..count {
            let recipient = address(&format!(
                "user{i}@{}",
                crate::zone::domain_name(i % domains)
            ))?;
            let message = Message::from_bytes(
                Some(address(SENDER)?),
                vec![recipient],
                Arc::clone(&content),
                DataPolicy::default(),
            )
            .await
            .map_err(|error| format!("invalid benchmark message: {error}"))?;
            messages.push(message);
        }
        let settings = ResolverSettings {
            nameserver: Nameserver::At(nameserver),
            ..ResolverSettings::default()
        };
        let resolver = MxResolver::new(&settings).map_err(|error| error.to_string())?;
        let delivery = Delivery::new(
            resolver,
            DeliveryConfig {
                connection: connection_config(),
                port,
                route: Route::Mx,
            },
        )
        .with_connection_reuse(Duration::from_secs(5));

        let started = Instant::now();
        let mut outcome = Outcome {
            sent: 0,
            failed: 0,
            elapsed: Default::default(),
        };
        for message in &messages {
            let report = delivery.deliver(message).await;
            if report.delivered() == 1 {
                outcome.sent += 1;
            } else {
                outcome.failed += 1;
                report_first_failure(&report);
            }
        }
        delivery.close_idle().await;
        outcome.elapsed = started.elapsed();
        Ok(outcome)
    })
}

/// Prints why the first undelivered recipient of a report was not
/// delivered, so that a failed cell in the table can be explained.
fn report_first_failure(report: &mxsend::DeliveryReport) {
    if let Some(recipient) = report
        .recipients
        .iter()
        .find(|r| r.outcome != mxsend::proto::Outcome::Delivered)
    {
        eprintln!(
            "mxsend-bench: {} {}: {}",
            recipient.address, recipient.outcome, recipient.reason
        );
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    mxsend::delivery::error_chain(error)
}
