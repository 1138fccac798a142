//! Loopback test peers for mxsend: an authoritative DNS server and a
//! scriptable SMTP server.
//!
//! Both peers bind only loopback addresses, run as tokio tasks and stop on
//! `shutdown()` or when dropped.
//!
//! - [`DnsServer`] serves a fixed [`Zone`] of MX, A, AAAA and CNAME records
//!   on UDP and TCP on the same port of 127.0.0.1. A name can be set up so
//!   that queries for it get SERVFAIL or no response. The server counts the
//!   queries it receives, so a test can assert that no lookup happened.
//! - [`SmtpServer`] is a well-behaved ESMTP server that stores the messages
//!   it accepts and records every byte each client sends. A [`Script`]
//!   replaces replies at chosen [`Point`]s of a session with an [`Action`]:
//!   a rejection, a reply split across writes, raw bytes, a dropped
//!   connection or silence. The `mxsend demo` command uses it as the
//!   destination server.
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use mxsend_testkit::{Action, DnsServer, Point, Script, SmtpServer, Zone};
//!
//! # async fn example() -> std::io::Result<()> {
//! let smtp = SmtpServer::start(
//!     Script::new().on(Point::Rcpt.containing("<bob@"), Action::reply("550 5.1.1 No such user")),
//! )
//! .await?;
//! let dns = DnsServer::start(
//!     Zone::new()
//!         .mx("example.test", 10, "mx.example.test")
//!         .a("mx.example.test", Ipv4Addr::LOCALHOST),
//! )
//! .await?;
//! // Point the client under test at `dns.addr()` and port `smtp.addr().port()`.
//! # let _ = (smtp, dns);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dns;
pub mod smtp;
pub mod tls;

pub use dns::{DnsServer, Zone};
pub use smtp::{Action, Point, Script, SessionRecord, SmtpServer, StoredMessage, Trigger};
pub use tls::{TestCa, TestCertificate};
