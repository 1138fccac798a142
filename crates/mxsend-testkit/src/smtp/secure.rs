//! TLS streams and the server side of SMTP AUTH for the test server.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The connection of one session: TCP, then TLS.
pub(crate) enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// During a handshake, or after one failed.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            ServerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
            ServerStream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(stream) => Pin::new(stream).poll_write(context, bytes),
            ServerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, bytes),
            ServerStream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(stream) => Pin::new(stream).poll_flush(context),
            ServerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
            ServerStream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            ServerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
            ServerStream::Closed => Poll::Ready(Ok(())),
        }
    }
}

pub(crate) const AUTH_OK: &str = "235 2.7.0 Authentication successful";
pub(crate) const AUTH_FAILED: &str = "535 5.7.8 Error: authentication failed";
const AUTH_ABORTED: &str = "501 5.7.0 Error: authentication aborted";
const AUTH_BAD_BASE64: &str = "501 5.5.2 Error: invalid base64 data";
/// What Gmail sends as the challenge after a rejected XOAUTH2 token.
const XOAUTH2_ERROR: &str = r#"{"status":"401","schemes":"bearer"}"#;

/// The server-side state of a SASL exchange.
#[derive(Debug)]
pub(crate) enum SaslServer {
    PlainWaiting,
    LoginUser,
    LoginPassword {
        user: String,
    },
    CramMd5 {
        challenge: String,
    },
    XOAuth2Waiting,
    /// The error challenge was sent; the client must answer with an empty
    /// line, then gets 535.
    XOAuth2Failed,
}

/// The reply to an AUTH command and the state that follows it.
pub(crate) fn begin(
    argument: &str,
    credentials: &(String, String),
    login_challenges: &[String; 2],
    challenge_id: &str,
) -> (String, Option<SaslServer>) {
    let mut words = argument.split_whitespace();
    let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
    let initial = words.next();
    match (mechanism.as_str(), initial) {
        ("PLAIN", Some(response)) => (check_plain(response, credentials), None),
        ("PLAIN", None) => ("334 ".to_owned(), Some(SaslServer::PlainWaiting)),
        ("LOGIN", Some(response)) => match decode(response) {
            Some(user) => (
                format!("334 {}", login_challenges[1]),
                Some(SaslServer::LoginPassword { user }),
            ),
            None => (AUTH_BAD_BASE64.to_owned(), None),
        },
        ("LOGIN", None) => (
            format!("334 {}", login_challenges[0]),
            Some(SaslServer::LoginUser),
        ),
        ("CRAM-MD5", _) => {
            let challenge = format!("<{challenge_id}@testkit.invalid>");
            let reply = format!("334 {}", BASE64.encode(&challenge));
            (reply, Some(SaslServer::CramMd5 { challenge }))
        }
        ("XOAUTH2", Some(response)) => check_xoauth2(response, credentials),
        ("XOAUTH2", None) => ("334 ".to_owned(), Some(SaslServer::XOAuth2Waiting)),
        _ => (
            "504 5.5.4 Error: unsupported authentication mechanism".to_owned(),
            None,
        ),
    }
}

/// The reply to one SASL line from the client and the state that follows.
pub(crate) fn respond(
    state: SaslServer,
    line: &str,
    credentials: &(String, String),
    login_challenges: &[String; 2],
) -> (String, Option<SaslServer>) {
    if line == "*" {
        return (AUTH_ABORTED.to_owned(), None);
    }
    match state {
        SaslServer::PlainWaiting => (check_plain(line, credentials), None),
        SaslServer::LoginUser => match decode(line) {
            Some(user) => (
                format!("334 {}", login_challenges[1]),
                Some(SaslServer::LoginPassword { user }),
            ),
            None => (AUTH_BAD_BASE64.to_owned(), None),
        },
        SaslServer::LoginPassword { user } => {
            let ok = decode(line)
                .is_some_and(|password| user == credentials.0 && password == credentials.1);
            (verdict(ok), None)
        }
        SaslServer::CramMd5 { challenge } => {
            let expected = format!(
                "{} {}",
                credentials.0,
                hmac_md5_hex(credentials.1.as_bytes(), challenge.as_bytes())
            );
            let ok = decode(line).is_some_and(|answer| answer == expected);
            (verdict(ok), None)
        }
        SaslServer::XOAuth2Waiting => check_xoauth2(line, credentials),
        SaslServer::XOAuth2Failed => (AUTH_FAILED.to_owned(), None),
    }
}

fn verdict(ok: bool) -> String {
    if ok { AUTH_OK } else { AUTH_FAILED }.to_owned()
}

fn decode(text: &str) -> Option<String> {
    let bytes = BASE64.decode(text.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// RFC 4616: `[authzid] NUL authcid NUL password`.
fn check_plain(response: &str, credentials: &(String, String)) -> String {
    let Some(message) = decode(response) else {
        return AUTH_BAD_BASE64.to_owned();
    };
    let parts: Vec<&str> = message.split('\0').collect();
    let ok = parts.len() == 3 && parts[1] == credentials.0 && parts[2] == credentials.1;
    verdict(ok)
}

fn check_xoauth2(response: &str, credentials: &(String, String)) -> (String, Option<SaslServer>) {
    let expected = format!(
        "user={}\x01auth=Bearer {}\x01\x01",
        credentials.0, credentials.1
    );
    if decode(response).is_some_and(|message| message == expected) {
        (AUTH_OK.to_owned(), None)
    } else {
        (
            format!("334 {}", BASE64.encode(XOAUTH2_ERROR)),
            Some(SaslServer::XOAuth2Failed),
        )
    }
}

fn hmac_md5_hex(key: &[u8], message: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = <Hmac<md5::Md5> as Mac>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
