//! SASL client mechanisms for SMTP AUTH (RFC 4954): PLAIN (RFC 4616),
//! LOGIN, CRAM-MD5 (RFC 2195) and XOAUTH2.
//!
//! Every value that could reveal a credential is a [`Secret`], whose
//! `Debug` and `Display` print `<redacted>`. The session records the AUTH
//! command and every SASL line in the transcript in redacted form only.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};

/// A password, token or encoded SASL response. `Debug` and `Display`
/// never show the value, so a secret cannot reach a log through `{:?}`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// Returns the value. Call it only where the value goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user name and its secret: a password, or an OAuth 2.0 access token
/// for XOAUTH2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity (RFC 4616 `authcid`).
    pub username: String,
    /// The password or token.
    pub secret: Secret,
}

impl Credentials {
    /// Creates credentials.
    pub fn new(username: impl Into<String>, secret: Secret) -> Credentials {
        Credentials {
            username: username.into(),
            secret,
        }
    }
}

/// A SASL mechanism that mxsend can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// RFC 4616: user name and password in one message.
    Plain,
    /// The old two-prompt mechanism, without an RFC: user name, then
    /// password, each as its own base64 line.
    Login,
    /// RFC 2195: an HMAC-MD5 of the server's challenge keyed with the
    /// password, so the password itself never crosses the wire.
    CramMd5,
    /// Google's and Microsoft's OAuth 2.0 bearer token mechanism. The
    /// secret is an access token, not a password.
    XOAuth2,
}

impl Mechanism {
    /// The password mechanisms in the order automatic selection prefers
    /// them. CRAM-MD5 comes first because it keeps the password off the
    /// wire even if the TLS layer fails. XOAUTH2 is not in the list: its
    /// secret is a token, so it runs only when the caller names it.
    pub const AUTOMATIC_ORDER: [Mechanism; 3] =
        [Mechanism::CramMd5, Mechanism::Plain, Mechanism::Login];

    /// The name in EHLO and in the AUTH command.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// Parses a mechanism name, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        [
            Mechanism::Plain,
            Mechanism::Login,
            Mechanism::CramMd5,
            Mechanism::XOAuth2,
        ]
        .into_iter()
        .find(|mechanism| mechanism.name().eq_ignore_ascii_case(name))
    }

    /// Chooses the mechanism for a server that advertised `offered` (upper
    /// case names, as in [`crate::Extensions::auth`]): `preferred` when the
    /// server offers it, else the first of [`Mechanism::AUTOMATIC_ORDER`]
    /// that it offers. `None` when nothing fits.
    pub fn choose(offered: &[String], preferred: Option<Mechanism>) -> Option<Mechanism> {
        let is_offered = |mechanism: Mechanism| offered.iter().any(|name| name == mechanism.name());
        match preferred {
            Some(mechanism) => is_offered(mechanism).then_some(mechanism),
            None => Mechanism::AUTOMATIC_ORDER
                .into_iter()
                .find(|&m| is_offered(m)),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the client stopped a SASL exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslError {
    /// The server sent more challenges than the mechanism has steps.
    #[error("{mechanism} got an unexpected challenge number {step} from the server")]
    TooManyChallenges {
        /// The mechanism.
        mechanism: Mechanism,
        /// The number of the challenge, counting from 1.
        step: usize,
    },
    /// The CRAM-MD5 challenge is not valid base64.
    #[error("{mechanism} challenge is not valid base64")]
    InvalidChallenge {
        /// The mechanism.
        mechanism: Mechanism,
    },
}

/// The client side of one SASL exchange. Challenges are answered by their
/// position in the exchange, never by their text, so a server that prompts
/// `334 VXNlcm5hbWU6` ("Username:"), an empty `334` or a lower-case
/// prompt gets the same answers.
#[derive(Debug)]
pub struct SaslClient {
    mechanism: Mechanism,
    credentials: Credentials,
    /// Challenges answered so far.
    step: usize,
}

impl SaslClient {
    /// Starts an exchange.
    pub fn new(mechanism: Mechanism, credentials: Credentials) -> SaslClient {
        SaslClient {
            mechanism,
            credentials,
            step: 0,
        }
    }

    /// The mechanism.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The base64 initial response to send on the AUTH line (RFC 4954
    /// section 4), or `None` for mechanisms that wait for a challenge.
    pub fn initial_response(&self) -> Option<Secret> {
        match self.mechanism {
            // RFC 4616 section 2: empty authzid, NUL, authcid, NUL, password.
            Mechanism::Plain => {
                let mut message = Vec::new();
                message.push(0);
                message.extend_from_slice(self.credentials.username.as_bytes());
                message.push(0);
                message.extend_from_slice(self.credentials.secret.expose().as_bytes());
                Some(Secret(BASE64.encode(message)))
            }
            Mechanism::XOAuth2 => {
                let message = format!(
                    "user={}\x01auth=Bearer {}\x01\x01",
                    self.credentials.username,
                    self.credentials.secret.expose()
                );
                Some(Secret(BASE64.encode(message)))
            }
            Mechanism::Login | Mechanism::CramMd5 => None,
        }
    }

    /// Answers the next 334 challenge, whose text after the code is
    /// `challenge` (base64, possibly empty).
    ///
    /// # Errors
    ///
    /// [`SaslError::TooManyChallenges`] when the mechanism has no step
    /// left, and [`SaslError::InvalidChallenge`] for a CRAM-MD5 challenge
    /// that does not decode. The caller then cancels with `*`.
    pub fn respond(&mut self, challenge: &str) -> Result<Secret, SaslError> {
        self.step += 1;
        let too_many = SaslError::TooManyChallenges {
            mechanism: self.mechanism,
            step: self.step,
        };
        match (self.mechanism, self.step) {
            (Mechanism::Login, 1) => Ok(Secret(BASE64.encode(&self.credentials.username))),
            (Mechanism::Login, 2) => Ok(Secret(
                BASE64.encode(self.credentials.secret.expose().as_bytes()),
            )),
            (Mechanism::CramMd5, 1) => {
                let challenge =
                    BASE64
                        .decode(challenge.trim())
                        .map_err(|_| SaslError::InvalidChallenge {
                            mechanism: self.mechanism,
                        })?;
                let digest = hmac_md5_hex(self.credentials.secret.expose().as_bytes(), &challenge);
                let response = format!("{} {digest}", self.credentials.username);
                Ok(Secret(BASE64.encode(response)))
            }
            // After a failed XOAUTH2 token the server sends its error as a
            // challenge and expects an empty line before its 535 reply.
            (Mechanism::XOAuth2, 1) => Ok(Secret(String::new())),
            _ => Err(too_many),
        }
    }
}

/// HMAC-MD5 (RFC 2104) of `message` keyed with `key`, in lower-case hex as
/// RFC 2195 section 2 requires.
fn hmac_md5_hex(key: &[u8], message: &[u8]) -> String {
    // HMAC accepts keys of any length, so this constructor cannot fail.
    let mut mac = <Hmac<md5::Md5> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(user: &str, password: &str) -> Credentials {
        Credentials::new(user, Secret::new(password))
    }

    #[test]
    fn secret_debug_and_display_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        let creds = credentials("alice", "hunter2");
        assert!(!format!("{creds:?}").contains("hunter2"));
        let client = SaslClient::new(Mechanism::Plain, creds);
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[test]
    fn plain_initial_response_rfc4616() {
        let client = SaslClient::new(Mechanism::Plain, credentials("tim", "tanstaaftanstaaf"));
        // RFC 4616 section 4 example, without the authzid.
        let expected = BASE64.encode(b"\0tim\0tanstaaftanstaaf");
        assert_eq!(client.initial_response().unwrap().expose(), expected);
    }

    #[test]
    fn plain_utf8_password() {
        let client = SaslClient::new(Mechanism::Plain, credentials("user", "pässwörd✓"));
        let decoded = BASE64
            .decode(client.initial_response().unwrap().expose())
            .unwrap();
        assert_eq!(decoded, "\0user\0pässwörd✓".as_bytes());
    }

    #[test]
    fn login_answers_by_order_not_text() {
        let mut client = SaslClient::new(Mechanism::Login, credentials("user", "pw"));
        assert!(client.initial_response().is_none());
        // An empty first challenge and a lower-case "password:" prompt in
        // the wrong place still get user name first, then password.
        assert_eq!(client.respond("").unwrap().expose(), BASE64.encode("user"));
        assert_eq!(
            client.respond("cGFzc3dvcmQ6").unwrap().expose(),
            BASE64.encode("pw")
        );
        assert_eq!(
            client.respond("").unwrap_err(),
            SaslError::TooManyChallenges {
                mechanism: Mechanism::Login,
                step: 3
            }
        );
    }

    #[test]
    fn cram_md5_rfc2195_example() {
        // RFC 2195 section 2 example.
        let mut client =
            SaslClient::new(Mechanism::CramMd5, credentials("tim", "tanstaaftanstaaf"));
        let challenge = BASE64.encode("<1896.697170952@postoffice.reston.mci.net>");
        let response = client.respond(&challenge).unwrap();
        let decoded = BASE64.decode(response.expose()).unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "tim b913a602c7eda7a495b4e6e7334d3890"
        );
    }

    #[test]
    fn cram_md5_invalid_challenge() {
        let mut client = SaslClient::new(Mechanism::CramMd5, credentials("tim", "x"));
        assert_eq!(
            client.respond("not base64!").unwrap_err(),
            SaslError::InvalidChallenge {
                mechanism: Mechanism::CramMd5
            }
        );
    }

    #[test]
    fn xoauth2_initial_response() {
        let mut client = SaslClient::new(Mechanism::XOAuth2, credentials("a@b.test", "tok"));
        let decoded = BASE64
            .decode(client.initial_response().unwrap().expose())
            .unwrap();
        assert_eq!(decoded, b"user=a@b.test\x01auth=Bearer tok\x01\x01");
        assert_eq!(
            client.respond("eyJzdGF0dXMiOiI0MDEifQ==").unwrap().expose(),
            ""
        );
    }

    #[test]
    fn choose_strongest_or_named() {
        let offered = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Mechanism::choose(&offered(&["LOGIN", "PLAIN", "CRAM-MD5"]), None),
            Some(Mechanism::CramMd5)
        );
        assert_eq!(
            Mechanism::choose(&offered(&["LOGIN", "PLAIN"]), None),
            Some(Mechanism::Plain)
        );
        assert_eq!(
            Mechanism::choose(&offered(&["XOAUTH2"]), None),
            None,
            "XOAUTH2 only when named"
        );
        assert_eq!(
            Mechanism::choose(&offered(&["XOAUTH2", "PLAIN"]), Some(Mechanism::XOAuth2)),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(
            Mechanism::choose(&offered(&["PLAIN"]), Some(Mechanism::Login)),
            None
        );
        assert_eq!(Mechanism::choose(&[], None), None);
    }
}
