//! `mxsend queue`: list, show, flush, delete and bounce queued messages.

use std::io::Write;

use mxsend::queue::bounce::{self, DsnAction, DsnRecipient, Original};
use mxsend::queue::{
    Notification, QueueId, QueueRunner, QueuedMessage, RecipientState, RecipientUpdate, RunMode,
    RunSummary, human_duration, now_millis,
};

use crate::args::{QueueArgs, QueueCommand};
use crate::config::{Service, store_failure};
use crate::daemon;
use crate::exit;
use crate::failure::Failure;

/// Runs a queue subcommand.
///
/// # Errors
///
/// A [`Failure`] for a configuration or spool error, or an unknown id.
pub async fn run(args: &QueueArgs) -> Result<u8, Failure> {
    match &args.command {
        QueueCommand::List(list_args) => {
            let service = Service::load(&list_args.service)?;
            list(&service, list_args.all, list_args.json)
        }
        QueueCommand::Show(id_args) => {
            let service = Service::load(&id_args.service)?;
            show(&service, &parse_id(&id_args.id)?, id_args.json)
        }
        QueueCommand::Flush(flush_args) => {
            let service = Service::load(&flush_args.service)?;
            let id = flush_args.id.as_deref().map(parse_id).transpose()?;
            flush(&service, id, flush_args.json).await
        }
        QueueCommand::Delete(id_args) => {
            let service = Service::load(&id_args.service)?;
            let id = parse_id(&id_args.id)?;
            service.open_store()?.delete(&id).map_err(store_failure)?;
            print_result(id_args.json, &serde_json::json!({ "deleted": id }), || {
                format!("{id} deleted")
            })
        }
        QueueCommand::Bounce(id_args) => {
            let service = Service::load(&id_args.service)?;
            let id = parse_id(&id_args.id)?;
            let returned = return_to_sender(&service, &id)?;
            print_result(
                id_args.json,
                &serde_json::json!({ "bounced": id, "recipients": returned }),
                || format!("{id}: {} recipients returned to the sender", returned.len()),
            )
        }
        QueueCommand::Deliver(id_args) => {
            let service = Service::load(&id_args.service)?;
            let id = parse_id(&id_args.id)?;
            let runner = QueueRunner::new(
                service.open_store()?,
                service.delivery()?,
                service.queue.clone(),
            );
            let summary = runner
                .run(RunMode::Drain(Some(id)), std::future::pending())
                .await
                .map_err(store_failure)?;
            if id_args.json {
                print_json(&summary)?;
            } else {
                print_summary(&summary);
            }
            Ok(exit::OK)
        }
    }
}

fn parse_id(text: &str) -> Result<QueueId, Failure> {
    QueueId::parse(text).map_err(|message| Failure::new(exit::USAGE, message))
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| Failure::new(exit::SOFTWARE, format!("cannot encode JSON: {error}")))?;
    println!("{text}");
    Ok(())
}

fn print_result(
    json: bool,
    value: &serde_json::Value,
    text: impl FnOnce() -> String,
) -> Result<u8, Failure> {
    if json {
        print_json(value)?;
    } else {
        println!("{}", text());
    }
    Ok(exit::OK)
}

/// Prints the queue like mailq, or as JSON.
///
/// # Errors
///
/// A [`Failure`] for a spool error.
pub fn list(service: &Service, all: bool, json: bool) -> Result<u8, Failure> {
    let messages = service.open_store()?.list(all).map_err(store_failure)?;
    if json {
        print_json(&messages)?;
        return Ok(exit::OK);
    }
    let now = now_millis();
    let mut out = std::io::stdout().lock();
    if messages.is_empty() {
        let _ = writeln!(out, "queue is empty");
        return Ok(exit::OK);
    }
    let _ = writeln!(out, "{:<16}  {:>5}  {:>8}  SENDER", "ID", "AGE", "SIZE");
    let mut pending = 0;
    for message in &messages {
        let _ = writeln!(
            out,
            "{:<16}  {:>5}  {:>8}  <{}>",
            message.id,
            human_duration(now - message.created),
            message.size,
            message.sender.as_deref().unwrap_or("")
        );
        for recipient in &message.recipients {
            pending += usize::from(recipient.state.is_pending());
            let _ = writeln!(out, "    {}", recipient_line(recipient, now));
        }
    }
    let _ = writeln!(
        out,
        "{} messages, {pending} recipients waiting",
        messages.len()
    );
    Ok(exit::OK)
}

fn recipient_line(recipient: &mxsend::queue::RecipientRecord, now: i64) -> String {
    let mut line = format!("{:<9} {}", recipient.state, recipient.address);
    if recipient.attempts > 0 {
        line.push_str(&format!(" ({} attempts", recipient.attempts));
        if recipient.state.is_pending() {
            if recipient.next_attempt > now {
                line.push_str(&format!(
                    ", next in {}",
                    human_duration(recipient.next_attempt - now)
                ));
            } else {
                line.push_str(", due now");
            }
        }
        line.push(')');
    }
    if recipient.lease_pid.is_some() {
        line.push_str(" [being delivered]");
    }
    if let Some(reply) = &recipient.last_reply {
        line.push_str(": ");
        line.push_str(reply);
    }
    line
}

fn show(service: &Service, id: &QueueId, json: bool) -> Result<u8, Failure> {
    let (message, history) = service.open_store()?.show(id).map_err(store_failure)?;
    if json {
        print_json(&serde_json::json!({ "message": message, "history": history }))?;
        return Ok(exit::OK);
    }
    let now = now_millis();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "id:      {}", message.id);
    let _ = writeln!(
        out,
        "queued:  {} ({} ago)",
        bounce::rfc5322_date(message.created),
        human_duration(now - message.created)
    );
    let _ = writeln!(out, "size:    {} octets", message.size);
    let _ = writeln!(
        out,
        "sender:  <{}>",
        message.sender.as_deref().unwrap_or("")
    );
    for recipient in &message.recipients {
        let _ = writeln!(out, "recipient {}", recipient_line(recipient, now));
        for entry in history.iter().filter(|e| e.index == recipient.index) {
            let _ = writeln!(
                out,
                "    {}  {:<9} {}",
                bounce::rfc5322_date(entry.at),
                entry.state,
                entry.reply
            );
        }
    }
    Ok(exit::OK)
}

/// Makes waiting recipients due now, then delivers them here when no
/// daemon holds the spool lock (a running daemon picks them up itself).
///
/// # Errors
///
/// A [`Failure`] for a spool or configuration error.
pub async fn flush(service: &Service, id: Option<QueueId>, json: bool) -> Result<u8, Failure> {
    let store = service.open_store()?;
    let scheduled = store
        .schedule_now(id.as_ref(), now_millis())
        .map_err(store_failure)?;
    let Some(_lock) = daemon::try_lock(&service.spool)? else {
        return print_result(
            json,
            &serde_json::json!({ "scheduled": scheduled, "delivered_by": "daemon" }),
            || format!("{scheduled} recipients made due now; the running daemon delivers them"),
        );
    };
    let runner = QueueRunner::new(store, service.delivery()?, service.queue.clone());
    let mut summary = RunSummary::default();
    runner
        .recover_stale_leases(now_millis(), &mut summary)
        .map_err(store_failure)?;
    let mut run = runner
        .run(RunMode::Drain(id), std::future::pending())
        .await
        .map_err(store_failure)?;
    run.recovered += summary.recovered;
    if json {
        print_json(&serde_json::json!({ "scheduled": scheduled, "summary": run }))?;
    } else {
        print_summary(&run);
    }
    Ok(exit::OK)
}

/// Prints a run's counts in one line.
pub fn print_summary(summary: &RunSummary) {
    println!(
        "{} delivered, {} deferred, {} failed, {} uncertain, {} notifications queued",
        summary.delivered,
        summary.deferred,
        summary.failed,
        summary.uncertain,
        summary.notifications
    );
}

/// Fails every waiting recipient of `id` and queues a bounce to the sender
/// in the same transaction. Returns the recipients returned.
fn return_to_sender(service: &Service, id: &QueueId) -> Result<Vec<String>, Failure> {
    let store = service.open_store()?;
    let (message, _) = store.show(id).map_err(store_failure)?;
    let waiting: Vec<_> = message
        .recipients
        .iter()
        .filter(|r| r.state.is_pending())
        .collect();
    if waiting.is_empty() {
        return Err(Failure::new(
            exit::USAGE,
            format!("message {id} has no waiting recipient to return"),
        ));
    }
    let reason = "returned to the sender by the postmaster";
    let now = now_millis();
    let updates: Vec<RecipientUpdate> = waiting
        .iter()
        .map(|r| RecipientUpdate {
            index: r.index,
            state: RecipientState::Failed,
            reply: reason.to_owned(),
            next_attempt: now,
        })
        .collect();
    let notifications = notification_for(service, &store, &message, &waiting, reason, now)?;
    store
        .record(id, &updates, &notifications, now)
        .map_err(store_failure)?;
    // NOTE: the bounce is delivered by the daemon or the next queue run,
    // not by this command.
    Ok(waiting.iter().map(|r| r.address.clone()).collect())
}

fn notification_for(
    service: &Service,
    store: &std::sync::Arc<dyn mxsend::queue::Store>,
    message: &QueuedMessage,
    waiting: &[&mxsend::queue::RecipientRecord],
    reason: &str,
    now: i64,
) -> Result<Vec<Notification>, Failure> {
    let content = store.content(&message.id).map_err(store_failure)?;
    let recipients: Vec<DsnRecipient> = waiting
        .iter()
        .map(|r| DsnRecipient {
            address: r.address.clone(),
            action: DsnAction::Failed,
            status: "5.0.0".to_owned(),
            remote_mta: None,
            diagnostic: None,
            reason: reason.to_owned(),
        })
        .collect();
    let original = Original {
        id: &message.id,
        sender: message.sender.as_deref().unwrap_or(""),
        arrival: message.created,
        content: &content,
    };
    Ok(bounce::build(
        original,
        &recipients,
        &service.queue.reporting_mta,
        now,
        None,
    )
    .map(Notification::Bounce)
    .into_iter()
    .collect())
}
