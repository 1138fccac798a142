//! lettre as a peer sender: its blocking `SmtpTransport` with the
//! connection pool, as lettre's documentation sets it up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::extension::ClientId;
use lettre::{SmtpTransport, Transport};

use crate::args::Args;
use crate::{Outcome, RECIPIENT, SENDER, numbered_recipients};

fn parse_address(text: &str) -> Result<lettre::Address, String> {
    text.parse()
        .map_err(|error| format!("invalid address {text:?}: {error}"))
}

/// W1 to W4: `--count` sends of the message in `--message` with
/// `--recipients` recipients each, spread over `--connections` threads
/// that share one transport whose pool holds that many connections.
///
/// lettre's `send_raw` takes the whole message as a byte slice, so the
/// file is read into memory first, whatever its size.
pub fn run(args: &Args) -> Result<Outcome, String> {
    let server = args.socket("server")?;
    let count = args.number("count")?;
    let connections = args.number_or("connections", 1)?.max(1);
    let recipient_count = args.number_or("recipients", 1)?;
    let path = args.path("message")?;
    let content =
        std::fs::read(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;

    let recipients = if recipient_count == 1 {
        vec![parse_address(RECIPIENT)?]
    } else {
        numbered_recipients(recipient_count, "bench.test")
            .iter()
            .map(|text| parse_address(text))
            .collect::<Result<Vec<_>, _>>()?
    };
    let envelope = Envelope::new(Some(parse_address(SENDER)?), recipients)
        .map_err(|error| format!("invalid envelope: {error}"))?;
    let pool = PoolConfig::new()
        .min_idle(0)
        .max_size(u32::try_from(connections).map_err(|e| e.to_string())?);
    let transport = SmtpTransport::builder_dangerous(server.ip().to_string())
        .port(server.port())
        .hello_name(ClientId::Domain("bench.test".to_owned()))
        .pool_config(pool)
        .build();

    let shared = Arc::new((transport, envelope, content));
    let remaining = Arc::new(AtomicUsize::new(count));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let shared = Arc::clone(&shared);
            let remaining = Arc::clone(&remaining);
            std::thread::spawn(move || {
                let (transport, envelope, content) = &*shared;
                let mut sent = 0;
                let mut failed = 0;
                while remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok()
                {
                    match transport.send_raw(envelope, content) {
                        Ok(response) if response.is_positive() => sent += 1,
                        Ok(response) => {
                            eprintln!("mxsend-bench lettre: rejected: {response:?}");
                            failed += 1;
                        }
                        Err(error) => {
                            eprintln!("mxsend-bench lettre: send failed: {error}");
                            failed += 1;
                        }
                    }
                }
                (sent, failed)
            })
        })
        .collect();

    let mut outcome = Outcome {
        sent: 0,
        failed: 0,
        elapsed: Default::default(),
    };
    for worker in workers {
        let (sent, failed) = worker
            .join()
            .map_err(|_| "a lettre sender thread panicked".to_owned())?;
        outcome.sent += sent;
        outcome.failed += failed;
    }
    // Dropping the transport closes the pooled connections with QUIT, so
    // that belongs to the measured time as it does for the other senders.
    drop(shared);
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}
