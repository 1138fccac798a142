//! The ESMTP client protocol without I/O.
//!
//! This crate turns server bytes into replies and events, and commands and
//! message content into wire bytes. It opens no socket, reads no clock and
//! spawns nothing: the `mxsend` crate drives it over tokio, and tests drive
//! it with scripted replies.
//!
//! - [`reply`]: replies and enhanced status codes, framed from a byte stream
//!   with bounded buffers.
//! - [`extensions`]: what an EHLO reply advertises.
//! - [`address`]: envelope addresses, validated before they reach the wire.
//! - [`session`]: the client state machine from greeting to QUIT.
//! - [`sasl`]: SMTP AUTH mechanisms and the [`Secret`] type that keeps
//!   credentials out of logs and transcripts.
//! - [`data`]: the streaming DATA encoder (line endings, dot-stuffing, the
//!   final dot).
//! - [`dsn`]: delivery status notification parameters and xtext.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod data;
pub mod dsn;
pub mod extensions;
pub mod reply;
pub mod sasl;
pub mod session;

pub use address::{Address, AddressError};
pub use dsn::{DsnNotify, DsnRequest, DsnReturn};
pub use extensions::Extensions;
pub use reply::{EnhancedCode, Reply, ReplyError, ReplyLimits, ReplyParser};
pub use sasl::{Credentials, Mechanism, Secret};
pub use session::{
    AuthSettings, ClientSession, Envelope, Event, Outcome, Phase, RecipientStatus, SessionConfig,
    SessionError, StartTls, Timeouts, TransactionReport,
};
