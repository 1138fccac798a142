//! TLS for SMTP connections on rustls: the policy levels, the client
//! configuration for each, and readable handshake errors.
//!
//! Server certificates are verified against the Mozilla roots of
//! `webpki-roots`, plus the certificates of an optional CA file, only under
//! [`TlsPolicy::Verify`] and [`TlsPolicy::Implicit`]. The reference
//! identity is the host name that was connected to: the MX name without
//! its trailing dot, or the relay name (C-TLS-04). The opportunistic levels
//! encrypt without checking who is on the other end, as Postfix's `may`
//! and `encrypt` do, because most MX certificates would not verify
//! (C-TLS-02).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use mxsend_proto::StartTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How much TLS a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsPolicy {
    /// Never send STARTTLS.
    None,
    /// STARTTLS when the server advertises it, without checking the
    /// certificate; plain text when it does not. The default for MX
    /// delivery, as Postfix's `smtp_tls_security_level = may`. A failed
    /// handshake is retried once without TLS on a new connection.
    May,
    /// STARTTLS required, certificate not checked. A server without
    /// STARTTLS is unusable.
    Encrypt,
    /// STARTTLS required and the certificate verified against the host
    /// name. The default for a relay.
    Verify,
    /// TLS from the first byte (RFC 8314 section 3, port 465), verified
    /// as under `Verify`.
    Implicit,
}

impl TlsPolicy {
    /// Every level, in the order of the documentation.
    pub const ALL: [TlsPolicy; 5] = [
        TlsPolicy::None,
        TlsPolicy::May,
        TlsPolicy::Encrypt,
        TlsPolicy::Verify,
        TlsPolicy::Implicit,
    ];

    /// The name used by `--tls` and in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::May => "may",
            TlsPolicy::Encrypt => "encrypt",
            TlsPolicy::Verify => "verify",
            TlsPolicy::Implicit => "implicit",
        }
    }

    /// When the session sends STARTTLS under this policy.
    pub fn starttls(self) -> StartTls {
        match self {
            TlsPolicy::None | TlsPolicy::Implicit => StartTls::Never,
            TlsPolicy::May => StartTls::Opportunistic,
            TlsPolicy::Encrypt | TlsPolicy::Verify => StartTls::Required,
        }
    }

    /// Whether the server certificate is verified.
    pub fn verifies_certificate(self) -> bool {
        matches!(self, TlsPolicy::Verify | TlsPolicy::Implicit)
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TlsPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<TlsPolicy, String> {
        TlsPolicy::ALL
            .into_iter()
            .find(|policy| policy.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                format!(
                    "invalid TLS policy {text:?}: expected none, may, encrypt, verify or implicit"
                )
            })
    }
}

/// Time allowed for a TLS handshake unless configured: 5 minutes, the
/// RFC 5321 section 4.5.3.2 value for most commands.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(300);

/// TLS settings of a connection.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The policy. `None` takes the route's default: [`TlsPolicy::Verify`]
    /// for a relay and [`TlsPolicy::May`] for MX delivery (and for
    /// [`Connection::connect`](crate::Connection::connect) on its own).
    pub policy: Option<TlsPolicy>,
    /// A PEM file of CA certificates trusted in addition to the
    /// `webpki-roots` set.
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain to present to servers that ask for one.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Time allowed for each handshake. Default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            policy: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} {path}")]
    Read {
        /// What the file should contain.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A PEM file holds no usable item.
    #[error("{path} contains no {what}")]
    Empty {
        /// What the file should contain.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A client certificate without its key, or the reverse.
    #[error("a client certificate needs both a certificate file and a key file")]
    ClientCertIncomplete,
    /// rustls rejected the settings, for example a key that does not fit
    /// the certificate.
    #[error("invalid TLS settings")]
    Rustls(#[source] rustls::Error),
}

impl TlsConfig {
    /// Builds the rustls client configuration for `policy`, reading the CA
    /// and client certificate files.
    ///
    /// # Errors
    ///
    /// [`TlsSetupError`] when a file cannot be read or holds nothing
    /// usable, or when the client key does not fit its certificate.
    pub fn client_config(&self, policy: TlsPolicy) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let provider = Arc::new(crypto_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Rustls)?;
        let builder = if policy.verifies_certificate() {
            builder.with_root_certificates(self.root_store()?)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(UncheckedCertificate {
                    algorithms: provider.signature_verification_algorithms,
                }))
        };
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certificates(cert)?, read_key(key)?)
                .map_err(TlsSetupError::Rustls)?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsSetupError::ClientCertIncomplete),
        };
        Ok(Arc::new(config))
    }

    /// Reads every file named in the settings, so that a bad path fails
    /// before any connection is made.
    ///
    /// # Errors
    ///
    /// As [`TlsConfig::client_config`].
    pub fn check(&self) -> Result<(), TlsSetupError> {
        self.client_config(TlsPolicy::Verify).map(|_| ())
    }

    fn root_store(&self) -> Result<RootCertStore, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.ca_file {
            for certificate in read_certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|error| TlsSetupError::Read {
                        what: "CA file",
                        path: path.clone(),
                        source: io::Error::new(io::ErrorKind::InvalidData, error),
                    })?;
            }
        }
        Ok(roots)
    }
}

/// The ring crypto provider of rustls.
///
/// NOTE: rustls 0.23.48 deprecates it because it lacks post-quantum key
/// exchange. The aws-lc-rs provider has it but needs CMake to build, and
/// no SMTP peer requires it yet.
#[expect(deprecated, reason = "ring is the provider that builds without CMake")]
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let what = "certificate file";
    let read_error = |source| TlsSetupError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read(path).map_err(read_error)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read_error(io::Error::new(io::ErrorKind::InvalidData, error)))?;
    if certificates.is_empty() {
        return Err(TlsSetupError::Empty {
            what: "PEM certificate",
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what: "key file",
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsSetupError::Empty {
        what: "PEM private key",
        path: path.to_owned(),
    })
}

/// The name to verify and to send as SNI: the host name without a
/// trailing dot, or the IP address when the host is an address literal or
/// not a valid DNS name.
pub fn server_name(host: &str, fallback: std::net::IpAddr) -> ServerName<'static> {
    let host = host.trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).unwrap_or(ServerName::IpAddress(fallback.into()))
}

/// Explains a failed handshake in one phrase, naming the likely mistake
/// where the error points to one.
pub fn describe_handshake_error(error: &io::Error, policy: TlsPolicy) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                "the server closed the connection during the TLS handshake".to_owned()
            }
            _ => error.to_string(),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server certificate is not valid yet".to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server certificate is not valid for this host name (give --relay the name \
                 that the certificate carries)"
                    .to_owned()
            }
            CertificateError::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
                "the server presented a CA certificate, which cannot identify a server; the \
                 server needs a certificate issued by a CA (add that CA with --ca-file)"
                    .to_owned()
            }
            CertificateError::UnknownIssuer => {
                "the server certificate is not signed by a trusted CA (add the CA with --ca-file)"
                    .to_owned()
            }
            other => format!("the server certificate is invalid: {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }
            if policy == TlsPolicy::Implicit =>
        {
            "the server did not answer with TLS; it may expect plain SMTP with STARTTLS on this \
             port (use --tls verify instead of implicit)"
                .to_owned()
        }
        other => other.to_string(),
    }
}

/// The verifier of the `may` and `encrypt` levels: any certificate is
/// accepted, but the handshake signatures are still checked, so the
/// session is encrypted with the key of the certificate presented.
#[derive(Debug)]
struct UncheckedCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for UncheckedCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
