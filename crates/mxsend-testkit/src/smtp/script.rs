//! Scripts that make the test SMTP server deviate from a well-behaved ESMTP
//! server at chosen points of a session.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;

/// Extension keywords advertised in the EHLO reply unless
/// [`Script::extensions`] replaces them.
const DEFAULT_EXTENSIONS: [&str; 5] = [
    "PIPELINING",
    "8BITMIME",
    "ENHANCEDSTATUSCODES",
    "SIZE 10485760",
    "SMTPUTF8",
];

/// Configuration of a [`SmtpServer`](crate::smtp::SmtpServer): the EHLO
/// extension keywords and the rules that override default replies.
///
/// `Script::new()` is a well-behaved ESMTP server. Each [`Script::on`] call
/// adds a rule. When several rules match the same point, the one added first
/// wins.
///
/// The session follows the reply code actually sent, whether it comes from
/// a rule or from the default. For [`Action::Raw`] and
/// [`Action::ReplyInSegments`] the code is the first three bytes.
///
/// - A greeting other than 220 leaves the session open, but then only QUIT
///   gets 221 and every other command gets 503.
/// - A 2xx reply to MAIL starts a transaction, and a 2xx reply to RCPT adds
///   the recipient to it.
/// - A 354 reply to DATA starts the message content. Any other reply means
///   the next line is read as a command.
/// - With CHUNKING advertised, BDAT chunks are read octet for octet and
///   joined. A reply other than 2xx to a chunk discards the transaction.
/// - A 2xx reply to the final dot, or to the last BDAT chunk, stores the
///   message. Any other reply, or [`Action::Close`] and [`Action::Hang`],
///   discards it.
/// - Any reply with code 421, and any reply to QUIT, is followed by closing
///   the connection.
///
/// ```
/// use std::time::Duration;
/// use mxsend_testkit::smtp::{Action, Point, Script};
///
/// let script = Script::new()
///     .extensions(&["PIPELINING", "8BITMIME"])
///     .on(Point::Rcpt.containing("<bob@"), Action::reply("550 5.1.1 No such user"))
///     .on(Point::DataEnd.session(2), Action::delay(Duration::from_secs(1), Action::Close));
/// # let _ = script;
/// ```
#[derive(Clone, Debug)]
pub struct Script {
    pub(crate) extensions: Vec<String>,
    rules: Vec<Rule>,
    pub(crate) tls: Option<TlsMode>,
    pub(crate) extensions_after_tls: Option<Vec<String>>,
    /// User name and password that AUTH accepts.
    pub(crate) auth: Option<(String, String)>,
    /// The texts of the two LOGIN challenges.
    pub(crate) login_challenges: [String; 2],
    /// The socket receive buffer of each connection, when fixed.
    pub(crate) receive_buffer: Option<u32>,
}

/// How the server uses TLS.
#[derive(Clone, Debug)]
pub(crate) enum TlsMode {
    /// STARTTLS is advertised and a 220 reply to it starts a handshake.
    StartTls(Arc<ServerConfig>),
    /// The handshake starts right after the connection is accepted.
    Implicit(Arc<ServerConfig>),
}

#[derive(Clone, Debug)]
struct Rule {
    trigger: Trigger,
    action: Action,
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    /// Creates the script of a well-behaved server that advertises
    /// PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, SIZE 10485760 and SMTPUTF8.
    pub fn new() -> Self {
        Self {
            extensions: DEFAULT_EXTENSIONS.iter().map(|k| (*k).to_owned()).collect(),
            rules: Vec::new(),
            tls: None,
            extensions_after_tls: None,
            auth: None,
            login_challenges: ["VXNlcm5hbWU6".to_owned(), "UGFzc3dvcmQ6".to_owned()],
            receive_buffer: None,
        }
    }

    /// Fixes the socket receive buffer of every connection at `bytes`
    /// (the kernel may double it), which also turns off the kernel's
    /// autotuning. A client can then get at most about its own send
    /// buffer ahead of what the server has read, so a [`Point::Body`]
    /// rule acts while a large message is still being written.
    pub fn receive_buffer(mut self, bytes: u32) -> Self {
        self.receive_buffer = Some(bytes);
        self
    }

    /// Offers STARTTLS with this server configuration: the EHLO reply
    /// before TLS lists STARTTLS, the default reply to STARTTLS is 220, and
    /// any 220 reply to it, scripted or not, is followed by a real TLS
    /// handshake. Input that followed the STARTTLS line in plain text is
    /// discarded, and after the handshake the client must send EHLO again.
    pub fn starttls(mut self, config: Arc<ServerConfig>) -> Self {
        self.tls = Some(TlsMode::StartTls(config));
        self
    }

    /// Serves TLS from the first byte (implicit TLS, as on port 465): the
    /// handshake comes before the greeting.
    pub fn implicit_tls(mut self, config: Arc<ServerConfig>) -> Self {
        self.tls = Some(TlsMode::Implicit(config));
        self
    }

    /// Replaces the extension keywords of the EHLO reply after TLS. By
    /// default they are those of [`Script::extensions`].
    pub fn extensions_after_tls(mut self, keywords: &[&str]) -> Self {
        self.extensions_after_tls = Some(keywords.iter().map(|k| (*k).to_owned()).collect());
        self
    }

    /// Accepts AUTH PLAIN, LOGIN, CRAM-MD5 and XOAUTH2 (with the password
    /// as the token) for these credentials, and rejects others with 535.
    /// The EHLO reply lists AUTH only when [`Script::extensions`] has it.
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Replaces the base64 texts of the two LOGIN challenges, by default
    /// `VXNlcm5hbWU6` ("Username:") and `UGFzc3dvcmQ6` ("Password:").
    pub fn login_challenges(mut self, first: &str, second: &str) -> Self {
        self.login_challenges = [first.to_owned(), second.to_owned()];
        self
    }

    /// Replaces the extension keywords listed after the first EHLO reply line.
    /// An empty list makes the EHLO reply a single `250 testkit.invalid` line.
    pub fn extensions(mut self, keywords: &[&str]) -> Self {
        self.extensions = keywords.iter().map(|k| (*k).to_owned()).collect();
        self
    }

    /// Adds a rule: when `trigger` matches, the server performs `action`
    /// in place of its default reply.
    pub fn on(mut self, trigger: impl Into<Trigger>, action: Action) -> Self {
        self.rules.push(Rule {
            trigger: trigger.into(),
            action,
        });
        self
    }

    /// Returns the action of the first rule that matches `event`.
    pub(crate) fn action_for(&self, event: &Event<'_>) -> Option<&Action> {
        self.rules
            .iter()
            .find(|rule| rule.trigger.matches(event))
            .map(|rule| &rule.action)
    }
}

/// A point in an SMTP session where a rule can replace the server's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Point {
    /// The greeting sent after the connection is accepted.
    Connect,
    /// The EHLO command.
    Ehlo,
    /// The HELO command.
    Helo,
    /// The MAIL command.
    Mail,
    /// The RCPT command.
    Rcpt,
    /// The DATA command.
    Data,
    /// One line of message content after 354, before the final `.`. The
    /// server normally sends no reply here, so any rule for it makes the
    /// server act in the middle of the content: a reply is sent at once
    /// and the content is still read, except after 421 or
    /// [`Action::Close`]. Use [`Trigger::containing`] to pick the line.
    Body,
    /// The final `.` line that ends the message content, or the last BDAT
    /// chunk, once all its octets have arrived.
    DataEnd,
    /// A BDAT command other than the last (RFC 3030). The server reads the
    /// chunk's octets first, then replies. The server takes BDAT only when
    /// [`Script::extensions`] lists CHUNKING.
    Bdat,
    /// The RSET command.
    Rset,
    /// The QUIT command.
    Quit,
    /// The NOOP command.
    Noop,
    /// The STARTTLS command. Without [`Script::starttls`] the server does
    /// not implement TLS, so after a scripted 220 reply it keeps reading
    /// plain-text commands.
    StartTls,
    /// The AUTH command. The SASL lines that follow it are not points.
    Auth,
}

impl Point {
    /// Returns a trigger for only the `n`-th occurrence of this point in a
    /// session, counting from 1.
    pub fn nth(self, n: usize) -> Trigger {
        Trigger::from(self).nth(n)
    }

    /// Returns a trigger for only the occurrences whose text contains `text`.
    /// See [`Trigger::containing`].
    pub fn containing(self, text: &str) -> Trigger {
        Trigger::from(self).containing(text)
    }

    /// Returns a trigger for this point on only the `n`-th connection,
    /// counting from 1.
    pub fn session(self, n: usize) -> Trigger {
        Trigger::from(self).session(n)
    }
}

/// A [`Point`] with optional qualifiers. All qualifiers that are set must
/// match for the rule to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    point: Point,
    nth: Option<usize>,
    containing: Option<String>,
    session: Option<usize>,
}

impl From<Point> for Trigger {
    fn from(point: Point) -> Self {
        Self {
            point,
            nth: None,
            containing: None,
            session: None,
        }
    }
}

impl Trigger {
    /// Restricts the trigger to the `n`-th occurrence of its point in a
    /// session, counting from 1.
    pub fn nth(mut self, n: usize) -> Self {
        self.nth = Some(n);
        self
    }

    /// Restricts the trigger to occurrences whose text contains `text`,
    /// ignoring ASCII case.
    ///
    /// The text is the command line without CRLF, the content line with
    /// its line ending for [`Point::Body`], the message content for
    /// [`Point::DataEnd`] (after DATA or BDAT) and the empty string for
    /// [`Point::Connect`].
    pub fn containing(mut self, text: &str) -> Self {
        self.containing = Some(text.to_owned());
        self
    }

    /// Restricts the trigger to the `n`-th connection to the server,
    /// counting from 1.
    pub fn session(mut self, n: usize) -> Self {
        self.session = Some(n);
        self
    }

    fn matches(&self, event: &Event<'_>) -> bool {
        self.point == event.point
            && self.nth.is_none_or(|n| n == event.occurrence)
            && self.session.is_none_or(|n| n == event.session)
            && self
                .containing
                .as_deref()
                .is_none_or(|needle| contains_ignore_ascii_case(event.text, needle.as_bytes()))
    }
}

/// Server behavior at a point where a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Sends this reply text. The server ends each line with CRLF when it
    /// does not already end with one, so `"250-a\r\n250 b"` is a two-line
    /// reply.
    Reply(String),
    /// Sends each byte segment with a separate write, pausing for the given
    /// duration between segments, to test how a client reassembles replies.
    ReplyInSegments(Vec<Vec<u8>>, Duration),
    /// Sends exactly these bytes with nothing added.
    Raw(Vec<u8>),
    /// Closes the connection without replying.
    Close,
    /// Never replies again but keeps the connection open until the client
    /// closes it or the server shuts down.
    Hang,
    /// Stops reading and replying but keeps the connection open until the
    /// server shuts down, so that the client's writes block once the
    /// socket buffers are full.
    Stall,
    /// Waits for the duration, then performs the inner action.
    Delay(Duration, Box<Action>),
    /// Replies `220 2.0.0 Ready to start TLS`, reads what the client sends
    /// next, answers it with a line of plain text instead of a TLS
    /// handshake and closes the connection.
    FailTlsHandshake,
}

impl Action {
    /// Creates an [`Action::Reply`].
    pub fn reply(text: impl Into<String>) -> Self {
        Self::Reply(text.into())
    }

    /// Creates an [`Action::Delay`] that performs `action` after `duration`.
    pub fn delay(duration: Duration, action: Action) -> Self {
        Self::Delay(duration, Box::new(action))
    }
}

/// One occurrence of a point in a session, matched against triggers.
#[derive(Debug)]
pub(crate) struct Event<'a> {
    pub(crate) point: Point,
    /// How many times this point has occurred in the session, this one included.
    pub(crate) occurrence: usize,
    /// The connection number, counting from 1.
    pub(crate) session: usize,
    pub(crate) text: &'a [u8],
}

fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(point: Point, occurrence: usize, session: usize, text: &str) -> Event<'_> {
        Event {
            point,
            occurrence,
            session,
            text: text.as_bytes(),
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let script = Script::new()
            .on(Point::Rcpt.containing("BOB"), Action::reply("550 first"))
            .on(Point::Rcpt, Action::reply("450 second"));
        let bob = event(Point::Rcpt, 1, 1, "RCPT TO:<bob@example.test>");
        let alice = event(Point::Rcpt, 2, 1, "RCPT TO:<alice@example.test>");
        assert_eq!(script.action_for(&bob), Some(&Action::reply("550 first")));
        assert_eq!(
            script.action_for(&alice),
            Some(&Action::reply("450 second"))
        );
    }

    #[test]
    fn qualifiers_must_all_match() {
        let script = Script::new().on(
            Point::Mail.nth(2).session(3).containing("size="),
            Action::Close,
        );
        let text = "MAIL FROM:<a@b> SIZE=10";
        assert!(script.action_for(&event(Point::Mail, 2, 3, text)).is_some());
        assert!(script.action_for(&event(Point::Mail, 1, 3, text)).is_none());
        assert!(script.action_for(&event(Point::Mail, 2, 1, text)).is_none());
        assert!(
            script
                .action_for(&event(Point::Mail, 2, 3, "MAIL FROM:<a@b>"))
                .is_none()
        );
        assert!(script.action_for(&event(Point::Rcpt, 2, 3, text)).is_none());
    }
}
