//! Shared setup of the TLS and AUTH tests: a fresh test CA, certificates
//! written to a temporary folder, and deliveries with short timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mxsend::proto::data::DataPolicy;
use mxsend::proto::{Address, AuthSettings, Credentials, Secret, Timeouts};
use mxsend::{
    ConnectionConfig, Delivery, DeliveryConfig, DeliveryReport, Message, MxResolver,
    ResolverSettings, Route, TlsConfig, TlsPolicy,
};
use mxsend_testkit::{TestCa, TestCertificate};

/// Time allowed for each reply and handshake: short, so that a test of a
/// silent server ends quickly.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(3);

/// Upper bound of a whole delivery in these tests.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

pub const USER: &str = "relay-user@example.test";

/// A test CA with its certificate in a file, for `TlsConfig::ca_file`.
pub struct Pki {
    pub ca: TestCa,
    pub folder: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = TestCa::new().expect("generating the test CA");
        let folder = tempfile::tempdir().expect("temporary folder");
        std::fs::write(folder.path().join("ca.pem"), ca.ca_pem()).expect("writing ca.pem");
        Pki { ca, folder }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.folder.path().join("ca.pem")
    }

    /// A server certificate for localhost and 127.0.0.1.
    pub fn localhost(&self) -> TestCertificate {
        self.ca
            .server_certificate(&["localhost", "127.0.0.1"], false)
            .expect("issuing the server certificate")
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.localhost()
            .server_config()
            .expect("server TLS configuration")
    }

    /// Writes a PEM file into the folder and returns its path.
    pub fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.folder.path().join(name);
        std::fs::write(&path, pem).expect("writing a PEM file");
        path
    }
}

pub fn timeouts() -> Timeouts {
    Timeouts::uniform(STEP_TIMEOUT)
}

/// Connection settings with short timeouts, the policy given (`None`: the
/// route's default) and the test CA trusted.
pub fn connection_config(policy: Option<TlsPolicy>, pki: &Pki) -> ConnectionConfig {
    ConnectionConfig {
        helo_name: Some("client.example.test".to_owned()),
        connect_timeout: STEP_TIMEOUT,
        timeouts: timeouts(),
        tls: TlsConfig {
            policy,
            ca_file: Some(pki.ca_file()),
            handshake_timeout: STEP_TIMEOUT,
            ..TlsConfig::default()
        },
        ..ConnectionConfig::default()
    }
}

pub fn auth(password: &str) -> AuthSettings {
    AuthSettings::new(Credentials::new(USER, Secret::new(password)))
}

/// A delivery through the relay at `server`, named `host` (an IP address
/// or `localhost`), with no DNS lookup for an IP address.
pub fn relay(server: SocketAddr, host: &str, connection: ConnectionConfig) -> Delivery {
    let resolver = MxResolver::new(&ResolverSettings::default()).expect("resolver");
    Delivery::new(
        resolver,
        DeliveryConfig {
            connection,
            port: server.port(),
            route: Route::Relay {
                host: host.to_owned(),
                port: server.port(),
            },
        },
    )
}

pub async fn message() -> Message {
    Message::from_bytes(
        Some(Address::parse("sender@example.com").unwrap()),
        vec![Address::parse("rcpt@example.net").unwrap()],
        &b"From: sender@example.com\r\nTo: rcpt@example.net\r\nSubject: tls\r\n\r\nHello.\r\n"[..],
        DataPolicy::default(),
    )
    .await
    .expect("test message")
}

/// Delivers the test message, bounded by [`TEST_TIMEOUT`].
pub async fn deliver(delivery: &Delivery) -> DeliveryReport {
    let message = message().await;
    tokio::time::timeout(TEST_TIMEOUT, delivery.deliver(&message))
        .await
        .expect("delivery did not finish in time")
}

/// The report as text, for assertion messages.
pub fn describe(report: &DeliveryReport) -> String {
    let mut text = String::new();
    for attempt in &report.attempts {
        text.push_str(&format!("attempt {}: {}\n", attempt.host, attempt.result));
    }
    for recipient in &report.recipients {
        text.push_str(&format!(
            "{}: {} ({})\n",
            recipient.address, recipient.outcome, recipient.reason
        ));
    }
    for entry in &report.transcript {
        text.push_str(&format!("{entry}\n"));
    }
    text
}
