//! Certificates for TLS tests, made fresh with rcgen: a test CA, server
//! certificates signed by it (valid, expired, or for another name), client
//! certificates, and rustls server configurations for the scripted SMTP
//! server.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A test certificate authority.
pub struct TestCa {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct TestCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

impl TestCa {
    /// Creates a CA named "mxsend test CA".
    ///
    /// # Errors
    ///
    /// An `InvalidData` error when rcgen cannot generate the key or sign.
    pub fn new() -> io::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(invalid)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mxsend test CA");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().map_err(invalid)?;
        let certificate = params.self_signed(&key).map_err(invalid)?;
        Ok(TestCa {
            ca_pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a server certificate for `names` (DNS names or IP
    /// addresses). With `expired`, its validity ended in 2020.
    ///
    /// # Errors
    ///
    /// An `InvalidData` error for an invalid name or a signing failure.
    pub fn server_certificate(&self, names: &[&str], expired: bool) -> io::Result<TestCertificate> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, expired)
    }

    /// Creates a self-signed certificate for `names` that is also a CA
    /// (basic constraints CA:TRUE), as quick setups often make. A verifying
    /// client that trusts it still rejects it as a server certificate.
    ///
    /// # Errors
    ///
    /// As [`TestCa::server_certificate`].
    pub fn self_signed_ca(names: &[&str]) -> io::Result<TestCertificate> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(invalid)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mxsend self-signed test server");
        let key = KeyPair::generate().map_err(invalid)?;
        let certificate = params.self_signed(&key).map_err(invalid)?;
        Ok(TestCertificate {
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a client certificate for `name`.
    ///
    /// # Errors
    ///
    /// As [`TestCa::server_certificate`].
    pub fn client_certificate(&self, name: &str) -> io::Result<TestCertificate> {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> io::Result<TestCertificate> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).map_err(invalid)?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().map_err(invalid)?;
        let certificate = params.signed_by(&key, &self.issuer).map_err(invalid)?;
        Ok(TestCertificate {
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The ring crypto provider of rustls, which builds without CMake.
#[expect(deprecated, reason = "ring is the provider that builds without CMake")]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCertificate {
    /// A rustls server configuration that presents this certificate and
    /// asks for no client certificate.
    ///
    /// # Errors
    ///
    /// An `InvalidData` error when the PEM does not parse.
    pub fn server_config(&self) -> io::Result<Arc<ServerConfig>> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?;
        let config = builder
            .with_no_client_auth()
            .with_single_cert(self.chain()?, self.key()?)
            .map_err(invalid)?;
        Ok(Arc::new(config))
    }

    /// A rustls server configuration that presents this certificate and
    /// requires a client certificate signed by `client_ca_pem`.
    ///
    /// # Errors
    ///
    /// An `InvalidData` error when a PEM does not parse.
    pub fn server_config_requiring_client(
        &self,
        client_ca_pem: &str,
    ) -> io::Result<Arc<ServerConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
            roots.add(certificate.map_err(invalid)?).map_err(invalid)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(invalid)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key()?)
            .map_err(invalid)?;
        Ok(Arc::new(config))
    }

    fn chain(&self) -> io::Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)
    }

    fn key(&self) -> io::Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(invalid)
    }
}
