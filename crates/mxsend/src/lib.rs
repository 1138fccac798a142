//! An async ESMTP sender.
//!
//! mxsend finds each recipient domain's mail exchangers, connects to them in
//! the order RFC 5321 section 5.1 gives, speaks ESMTP through the sans-I/O
//! session of [`mxsend_proto`], streams the message, and reports what
//! happened to every recipient.
//!
//! - [`MxResolver`] looks up exchangers on hickory-resolver.
//! - [`Connection`] is one SMTP connection on tokio, with the timeouts of
//!   RFC 5321 section 4.5.3.2 per phase; [`MailSource`] feeds it messages in
//!   the manner of Twisted's SMTP client callbacks.
//! - [`Delivery`] sends a [`Message`] to all its recipients across
//!   exchangers and returns a [`DeliveryReport`].
//! - [`tls`] sets the TLS policy of connections ([`TlsPolicy`]: `may` for
//!   MX delivery and `verify` for a relay by default) on rustls.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use mxsend::{Delivery, DeliveryConfig, Message, MxResolver, ResolverSettings};
//! use mxsend_proto::Address;
//! use mxsend_proto::data::DataPolicy;
//!
//! let resolver = MxResolver::new(&ResolverSettings::default())?;
//! let delivery = Delivery::new(resolver, DeliveryConfig::default());
//! let message = Message::from_bytes(
//!     Some(Address::parse("alice@example.com")?),
//!     vec![Address::parse("bob@example.net")?],
//!     &b"Subject: hello\r\n\r\nHi Bob.\r\n"[..],
//!     DataPolicy::default(),
//! )
//! .await?;
//! let report = delivery.deliver(&message).await;
//! for recipient in &report.recipients {
//!     println!("{}: {} ({})", recipient.address, recipient.outcome, recipient.reason);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Logging goes through `tracing`: `trace` for wire bytes, `debug` for
//! decisions. The library logs nothing at `info` or above.
//! Neither logs nor transcripts contain AUTH secrets: the AUTH command and
//! every SASL line appear redacted, and [`proto::Secret`] prints
//! `<redacted>` in `Debug` and `Display`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod connection;
pub mod delivery;
pub mod message;
pub mod queue;
pub mod resolver;
pub mod tls;

pub use connection::{
    Connection, ConnectionConfig, ConnectionError, ContentError, Hint, MailSource,
};
pub use delivery::{
    Attempt, DEFAULT_PORT, Delivery, DeliveryConfig, DeliveryReport, RecipientReport, ReplySummary,
    Route, TranscriptEntry,
};
pub use message::{Content, Message, MessageError};
pub use mxsend_proto as proto;
pub use queue::{QueueId, QueueRunner, QueueSettings, RetrySchedule, SqliteStore, Store};
pub use resolver::{MxError, MxHost, MxPlan, MxResolver, MxSource, Nameserver, ResolverSettings};
pub use tls::{TlsConfig, TlsPolicy, TlsSetupError};
