//! STARTTLS (RFC 3207) and SMTP AUTH (RFC 4954) in the client session.
//!
//! After a successful EHLO or HELO the session decides, in this order:
//!
//! 1. STARTTLS, when the connection is not encrypted yet and the policy
//!    requires or allows it. Under [`StartTls::Required`] a missing STARTTLS, a
//!    refused EHLO or a refused STARTTLS ends the session (C-TLS-02).
//!    Under [`StartTls::Opportunistic`] a refusal such as 454 leaves the
//!    session in plain text. After the 220 go-ahead, any octet already
//!    received is treated as response injection and ends the session
//!    without another command (C-TLS-01, C-REP-06). After the handshake,
//!    everything EHLO advertised is forgotten and EHLO is sent again
//!    (RFC 3207 section 4.2).
//! 2. AUTH, when credentials are configured: only over an encrypted
//!    connection unless plaintext AUTH is allowed (C-AUTH-02), only with a
//!    mechanism the server advertised, and with every SASL line redacted
//!    in the transcript.
//! 3. Ready for the first transaction.

use super::{
    ClientSession, Direction, Pending, Reply, ReplyParser, SaslClient, SessionError, State,
    TranscriptLine,
};
use crate::sasl::{Credentials, Mechanism, SaslError};

/// When the session sends STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartTls {
    /// Never.
    #[default]
    Never,
    /// When the server advertises it. Without it, or after a refusal, the
    /// session goes on in plain text.
    Opportunistic,
    /// Always. A server that does not advertise it or refuses it is
    /// unusable.
    Required,
}

/// SMTP AUTH settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// User name and secret.
    pub credentials: Credentials,
    /// The mechanism to use. `None` picks the strongest advertised one of
    /// [`Mechanism::AUTOMATIC_ORDER`].
    pub mechanism: Option<Mechanism>,
    /// Send credentials over an unencrypted connection. Default false:
    /// without TLS the session ends with [`SessionError::AuthNeedsTls`].
    pub dangerous_allow_plaintext: bool,
}

impl AuthSettings {
    /// Settings that pick the mechanism and require TLS.
    pub fn new(credentials: Credentials) -> AuthSettings {
        AuthSettings {
            credentials,
            mechanism: None,
            dangerous_allow_plaintext: false,
        }
    }
}

/// The STARTTLS and AUTH state of one session.
#[derive(Debug)]
pub(super) struct Security {
    /// TLS is active: implicit TLS, or a completed STARTTLS handshake.
    encrypted: bool,
    /// STARTTLS was refused under the opportunistic policy.
    starttls_declined: bool,
    authenticated: bool,
    sasl: Option<SaslClient>,
    /// The error that made the client cancel the SASL exchange with `*`.
    cancelled: Option<SaslError>,
}

impl Security {
    pub(super) fn new(implicit_tls: bool) -> Security {
        Security {
            encrypted: implicit_tls,
            starttls_declined: false,
            authenticated: false,
            sasl: None,
            cancelled: None,
        }
    }
}

/// The transcript text of every SASL line in either direction.
const REDACTED_SASL_LINE: &str = "<SASL line redacted>";

impl ClientSession {
    /// Whether TLS protects the connection.
    pub fn is_encrypted(&self) -> bool {
        self.security.encrypted
    }

    /// Whether AUTH succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.security.authenticated
    }

    /// Whether the next bytes to write or read belong to a SASL exchange,
    /// so that a driver logging wire bytes must redact them.
    pub fn is_authenticating(&self) -> bool {
        self.pending.front() == Some(&Pending::Auth)
    }

    /// Records that the TLS handshake after [`Event::StartTls`](super::Event::StartTls)
    /// succeeded. The session forgets what the first EHLO advertised and
    /// sends EHLO again (RFC 3207 section 4.2). Does nothing in any other
    /// state.
    pub fn tls_established(&mut self) {
        if !matches!(self.state, State::AwaitingTls) {
            return;
        }
        self.security.encrypted = true;
        self.extensions = None;
        self.parser = ReplyParser::new(self.config.reply_limits);
        self.record(Direction::Client, "<TLS handshake complete>".to_owned());
        self.state = State::ExpectReplies;
        let command = format!("EHLO {}", self.config.helo_name);
        self.send_command(&command, Pending::Ehlo);
    }

    /// Whether STARTTLS must still happen before anything else.
    pub(super) fn tls_required_now(&self) -> bool {
        self.config.starttls == StartTls::Required && !self.security.encrypted
    }

    /// Decides what follows a successful EHLO or HELO: STARTTLS, AUTH, or
    /// the first transaction.
    pub(super) fn after_hello(&mut self, reply: &Reply) {
        if !self.security.encrypted && !self.config.implicit_tls {
            let offered = self.extensions.as_ref().is_some_and(|e| e.starttls);
            match self.config.starttls {
                StartTls::Required if !offered => {
                    return self.quit_with(SessionError::StartTlsNotOffered {
                        ehlo: reply.clone(),
                    });
                }
                StartTls::Required => return self.send_command("STARTTLS", Pending::StartTls),
                StartTls::Opportunistic if offered && !self.security.starttls_declined => {
                    return self.send_command("STARTTLS", Pending::StartTls);
                }
                StartTls::Opportunistic | StartTls::Never => {}
            }
        }
        if self.config.auth.is_some() && !self.security.authenticated {
            return self.start_auth();
        }
        self.become_ready();
    }

    pub(super) fn handle_starttls(&mut self, reply: Reply) {
        if reply.code() == 220 {
            let octets = self.parser.buffered_len();
            if octets > 0 {
                return self.fail(SessionError::DataAfterStartTls { octets });
            }
            self.state = State::AwaitingTls;
            self.events.push_back(super::Event::StartTls);
            return;
        }
        if self.config.starttls == StartTls::Required {
            return self.quit_with(SessionError::StartTlsRejected(reply));
        }
        // A 454 or any other refusal under the opportunistic policy: the
        // session goes on in plain text with what EHLO advertised.
        self.security.starttls_declined = true;
        let ehlo = Reply::new(250, &[] as &[&str]);
        self.after_hello(&ehlo);
    }

    fn start_auth(&mut self) {
        let Some(settings) = self.config.auth.clone() else {
            return self.become_ready();
        };
        let offered = self
            .extensions
            .as_ref()
            .map(|e| e.auth.clone())
            .unwrap_or_default();
        // RFC 4954 section 4: AUTH only with an advertised mechanism.
        if offered.is_empty() {
            let encrypted = self.security.encrypted;
            return self.quit_with(SessionError::AuthNotOffered { encrypted });
        }
        if !self.security.encrypted && !settings.dangerous_allow_plaintext {
            return self.quit_with(SessionError::AuthNeedsTls);
        }
        let Some(mechanism) = Mechanism::choose(&offered, settings.mechanism) else {
            return self.quit_with(SessionError::AuthMechanismNotOffered {
                requested: settings.mechanism,
                offered: offered.join(" "),
            });
        };
        let client = SaslClient::new(mechanism, settings.credentials);
        match client.initial_response() {
            // RFC 4954 section 4: "=" stands for an empty initial response.
            Some(response) => {
                let argument = if response.is_empty() {
                    "="
                } else {
                    response.expose()
                };
                let line = format!("AUTH {mechanism} {argument}");
                self.send_secret(&line, format!("AUTH {mechanism} <redacted>"));
            }
            None => self.send_command(&format!("AUTH {mechanism}"), Pending::Auth),
        }
        self.security.sasl = Some(client);
    }

    pub(super) fn handle_auth(&mut self, reply: Reply) {
        if reply.code() == 334 && self.security.cancelled.is_none() {
            let challenge = challenge_text(&reply);
            let Some(client) = self.security.sasl.as_mut() else {
                return self.quit_with(SessionError::AuthRejected(reply));
            };
            match client.respond(&challenge) {
                Ok(response) => {
                    let line = response.expose().to_owned();
                    self.send_secret(&line, REDACTED_SASL_LINE.to_owned());
                }
                Err(error) => {
                    // RFC 4954 section 4: "*" cancels the exchange.
                    self.security.cancelled = Some(error);
                    self.send_command("*", Pending::Auth);
                }
            }
            return;
        }
        self.security.sasl = None;
        if let Some(error) = self.security.cancelled.take() {
            return self.quit_with(SessionError::AuthCancelled { error, reply });
        }
        if reply.code() == 235 {
            self.security.authenticated = true;
            return self.become_ready();
        }
        self.quit_with(SessionError::AuthRejected(reply));
    }

    /// Sends `line`, which contains a secret, and records
    /// `transcript_text` in its place.
    fn send_secret(&mut self, line: &str, transcript_text: String) {
        self.transmit.extend_from_slice(line.as_bytes());
        self.transmit.extend_from_slice(b"\r\n");
        self.record(Direction::Client, transcript_text);
        self.pending.push_back(Pending::Auth);
    }

    /// Records a reply in the transcript, with SASL challenges redacted.
    pub(super) fn record_incoming(&mut self, reply: &Reply) {
        if reply.code() == 334 && self.is_authenticating() {
            if self.config.transcript {
                self.transcript.push(TranscriptLine {
                    direction: Direction::Server,
                    text: format!("334 {REDACTED_SASL_LINE}"),
                });
            }
            return;
        }
        self.record_reply(reply);
    }
}

/// The base64 text of a 334 challenge: the first line after the code and
/// its separator, possibly empty.
fn challenge_text(reply: &Reply) -> String {
    reply
        .raw_lines()
        .first()
        .map(|line| line.get(4..).unwrap_or("").trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ClientSession, Event, SessionConfig};

    fn session(starttls: StartTls, auth: Option<AuthSettings>) -> ClientSession {
        let mut config = SessionConfig::new("client.test").unwrap();
        config.starttls = starttls;
        config.auth = auth;
        ClientSession::new(config)
    }

    fn sent(session: &mut ClientSession) -> String {
        String::from_utf8(session.poll_transmit().unwrap_or_default()).unwrap()
    }

    fn events(session: &mut ClientSession) -> Vec<Event> {
        std::iter::from_fn(|| session.poll_event()).collect()
    }

    fn closed_with(session: &mut ClientSession) -> Option<SessionError> {
        events(session).into_iter().find_map(|event| match event {
            Event::Closed(Err(error)) => Some(error),
            _ => None,
        })
    }

    /// Greets and answers EHLO with `keywords`.
    fn greet(session: &mut ClientSession, keywords: &[&str]) {
        session.handle_input(b"220 mx.test ESMTP\r\n");
        assert_eq!(sent(session), "EHLO client.test\r\n");
        let mut reply = String::from("250-mx.test\r\n");
        for keyword in keywords {
            reply.push_str(&format!("250-{keyword}\r\n"));
        }
        reply.push_str("250 HELP\r\n");
        session.handle_input(reply.as_bytes());
    }

    fn settings(mechanism: Option<Mechanism>) -> AuthSettings {
        let mut settings =
            AuthSettings::new(Credentials::new("user", crate::sasl::Secret::new("pw")));
        settings.mechanism = mechanism;
        settings
    }

    #[test]
    fn forged_reply_after_go_ahead_ends_session() {
        let mut session = session(StartTls::Opportunistic, None);
        greet(&mut session, &["STARTTLS"]);
        assert_eq!(sent(&mut session), "STARTTLS\r\n");
        session.handle_input(b"220 go ahead\r\n250 forged\r\n");
        assert_eq!(
            closed_with(&mut session),
            Some(SessionError::DataAfterStartTls { octets: 12 })
        );
        assert_eq!(sent(&mut session), "", "nothing may follow in plain text");
    }

    #[test]
    fn handshake_forgets_capabilities() {
        let mut session = session(StartTls::Required, None);
        greet(&mut session, &["STARTTLS", "PIPELINING", "SIZE 10"]);
        assert_eq!(sent(&mut session), "STARTTLS\r\n");
        session.handle_input(b"220 go ahead\r\n");
        assert_eq!(events(&mut session), [Event::StartTls]);
        assert!(session.extensions().is_some());

        session.tls_established();
        assert!(session.is_encrypted());
        assert!(session.extensions().is_none());
        assert_eq!(sent(&mut session), "EHLO client.test\r\n");
        session.handle_input(b"250-mx.test\r\n250 8BITMIME\r\n");
        assert_eq!(events(&mut session), [Event::Ready]);
        let extensions = session.extensions().unwrap();
        assert!(!extensions.pipelining);
        assert_eq!(extensions.size, None);
    }

    #[test]
    fn refusal_454_opportunistic_stays_plain() {
        let mut session = session(StartTls::Opportunistic, None);
        greet(&mut session, &["STARTTLS", "PIPELINING"]);
        assert_eq!(sent(&mut session), "STARTTLS\r\n");
        session.handle_input(b"454 4.7.0 TLS not available\r\n");
        assert_eq!(events(&mut session), [Event::Ready]);
        assert_eq!(sent(&mut session), "", "no QUIT after 454 under may");
        assert!(session.extensions().unwrap().pipelining);
        assert!(!session.is_encrypted());
    }

    #[test]
    fn refusal_454_required_quits() {
        let mut session = session(StartTls::Required, None);
        greet(&mut session, &["STARTTLS"]);
        sent(&mut session);
        session.handle_input(b"454 4.7.0 TLS not available\r\n");
        assert_eq!(sent(&mut session), "QUIT\r\n");
        session.handle_input(b"221 bye\r\n");
        assert!(matches!(
            closed_with(&mut session),
            Some(SessionError::StartTlsRejected(reply)) if reply.code() == 454
        ));
    }

    #[test]
    fn required_starttls_skips_helo_fallback() {
        let mut session = session(StartTls::Required, None);
        session.handle_input(b"220 mx.test ESMTP\r\n");
        sent(&mut session);
        session.handle_input(b"502 5.5.2 command not recognized\r\n");
        assert_eq!(sent(&mut session), "QUIT\r\n");
        session.handle_input(b"221 bye\r\n");
        assert!(matches!(
            closed_with(&mut session),
            Some(SessionError::StartTlsNotOffered { .. })
        ));
    }

    #[test]
    fn auth_requires_advertised_mechanism() {
        let mut session = session(StartTls::Never, Some(settings(None)));
        session
            .config
            .auth
            .as_mut()
            .unwrap()
            .dangerous_allow_plaintext = true;
        greet(&mut session, &["PIPELINING"]);
        assert_eq!(sent(&mut session), "QUIT\r\n");
        session.handle_input(b"221 bye\r\n");
        assert_eq!(
            closed_with(&mut session),
            Some(SessionError::AuthNotOffered { encrypted: false })
        );
    }

    #[test]
    fn auth_without_tls_refused() {
        let mut session = session(StartTls::Opportunistic, Some(settings(None)));
        greet(&mut session, &["AUTH PLAIN"]);
        assert_eq!(sent(&mut session), "QUIT\r\n");
        session.handle_input(b"221 bye\r\n");
        assert_eq!(closed_with(&mut session), Some(SessionError::AuthNeedsTls));
    }

    #[test]
    fn login_exchange_redacted_in_transcript() {
        let mut config = SessionConfig::new("client.test").unwrap();
        config.implicit_tls = true;
        config.auth = Some(settings(Some(Mechanism::Login)));
        let mut session = ClientSession::new(config);
        greet(&mut session, &["AUTH LOGIN PLAIN"]);
        assert_eq!(sent(&mut session), "AUTH LOGIN\r\n");
        session.handle_input(b"334 \r\n");
        assert_eq!(sent(&mut session), "dXNlcg==\r\n");
        session.handle_input(b"334 cGFzc3dvcmQ6\r\n");
        assert_eq!(sent(&mut session), "cHc=\r\n");
        session.handle_input(b"235 2.7.0 ok\r\n");
        assert_eq!(events(&mut session), [Event::Ready]);
        assert!(session.is_authenticated());

        let transcript: Vec<String> = session
            .transcript()
            .iter()
            .map(ToString::to_string)
            .collect();
        let text = transcript.join("\n");
        assert!(!text.contains("dXNlcg=="), "{text}");
        assert!(!text.contains("cHc="), "{text}");
        assert!(!text.contains("cGFzc3dvcmQ6"), "{text}");
        assert_eq!(text.matches(REDACTED_SASL_LINE).count(), 4, "{text}");
    }

    #[test]
    fn extra_challenge_cancelled_with_star() {
        let mut config = SessionConfig::new("client.test").unwrap();
        config.implicit_tls = true;
        config.auth = Some(settings(Some(Mechanism::Plain)));
        let mut session = ClientSession::new(config);
        greet(&mut session, &["AUTH PLAIN"]);
        assert!(sent(&mut session).starts_with("AUTH PLAIN "));
        session.handle_input(b"334 \r\n");
        assert_eq!(sent(&mut session), "*\r\n");
        session.handle_input(b"501 5.7.0 cancelled\r\n");
        assert_eq!(sent(&mut session), "QUIT\r\n");
        session.handle_input(b"221 bye\r\n");
        assert!(matches!(
            closed_with(&mut session),
            Some(SessionError::AuthCancelled { .. })
        ));
    }
}
