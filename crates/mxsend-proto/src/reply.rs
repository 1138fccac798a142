//! Server replies (RFC 5321 section 4.2) and their enhanced status codes
//! (RFC 3463), parsed from a byte stream whatever its segment boundaries.
//!
//! A reply is one or more lines that start with the same three-digit code.
//! Every line but the last has a `-` after the code; the last has a space or
//! nothing (C-REP-01). Lines may end with CRLF or a bare LF. Everything read
//! is bounded by [`ReplyLimits`], so a hostile server cannot make the parser
//! buffer without limit (C-REP-05).

use std::fmt;

/// An enhanced mail system status code such as `5.1.1` (RFC 3463 section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// The class: 2 (success), 4 (persistent transient) or 5 (permanent).
    pub class: u8,
    /// The subject, for example 1 for addressing.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    /// Parses `class.subject.detail` at the start of `text`, followed by a
    /// space or the end of the text. Returns the code and the rest of the
    /// text, or `None` when `text` does not start with a code.
    fn parse_prefix(text: &str) -> Option<(EnhancedCode, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let mut parts = text[..end].split('.');
        let class = parse_digits(parts.next()?, 1)?;
        let subject = parse_digits(parts.next()?, 3)?;
        let detail = parse_digits(parts.next()?, 3)?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        let code = EnhancedCode {
            class: class as u8,
            subject,
            detail,
        };
        Some((code, text[end..].trim_start_matches(' ')))
    }
}

/// Parses 1 to `max_digits` ASCII digits.
fn parse_digits(text: &str, max_digits: usize) -> Option<u16> {
    if text.is_empty() || text.len() > max_digits || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
    raw: Vec<String>,
}

impl Reply {
    /// Builds a reply from a code and text lines, parsing an enhanced status
    /// code at the start of each line as the parser does.
    ///
    /// # Panics
    ///
    /// When `code` is not in 200..=599; this constructor is for replies the
    /// caller makes up, such as in tests, not for network input.
    pub fn new<S: AsRef<str>>(code: u16, lines: &[S]) -> Reply {
        assert!(
            (200..=599).contains(&code),
            "reply code {code} out of range"
        );
        let mut reply = Reply {
            code,
            enhanced: None,
            lines: Vec::with_capacity(lines.len().max(1)),
            raw: Vec::with_capacity(lines.len().max(1)),
        };
        let count = lines.len();
        for (index, line) in lines.iter().enumerate() {
            let separator = if index + 1 == count { ' ' } else { '-' };
            reply
                .raw
                .push(format!("{code}{separator}{}", line.as_ref()));
            reply.push_text(line.as_ref());
        }
        if reply.lines.is_empty() {
            reply.raw.push(code.to_string());
            reply.lines.push(String::new());
        }
        reply
    }

    /// Appends one line's text, taking off an enhanced status code whose
    /// class matches the reply code (RFC 2034 section 4 puts one on every
    /// line; keeping it once makes the joined text readable).
    fn push_text(&mut self, text: &str) {
        let mut text = text;
        if let Some((enhanced, rest)) = EnhancedCode::parse_prefix(text)
            && u16::from(enhanced.class) == self.code / 100
        {
            if self.enhanced.is_none() {
                self.enhanced = Some(enhanced);
            }
            if self.enhanced == Some(enhanced) {
                text = rest;
            }
        }
        self.lines.push(text.to_owned());
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code of the first line, when the server sent one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text of each line, without the code, the separator and a leading
    /// enhanced status code equal to [`Reply::enhanced`].
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The lines exactly as received, code and separator included, line
    /// endings removed and invalid UTF-8 replaced.
    pub fn raw_lines(&self) -> &[String] {
        &self.raw
    }

    /// The text of all lines joined by single spaces, empty lines skipped.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for line in self.lines.iter().map(|line| line.trim()) {
            if line.is_empty() {
                continue;
            }
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(line);
        }
        text
    }

    /// A 2yz reply: the command succeeded. Judged by the first digit only, so
    /// an unknown code such as `254` counts as success (C-REP-03, RFC 5321
    /// section 4.2).
    pub fn is_positive(&self) -> bool {
        self.code / 100 == 2
    }

    /// A 3yz reply: the server waits for more, as `354` after DATA.
    pub fn is_intermediate(&self) -> bool {
        self.code / 100 == 3
    }

    /// A 4yz reply: the command failed but may succeed later.
    pub fn is_transient(&self) -> bool {
        self.code / 100 == 4
    }

    /// A 5yz reply: the command failed for good.
    pub fn is_permanent(&self) -> bool {
        self.code / 100 == 5
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = self.enhanced {
            write!(f, " {enhanced}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// Bounds on what the parser buffers for one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Maximum octets in one line without its line ending. RFC 5321 section
    /// 4.5.3.1.5 allows 512; the default of 4096 tolerates verbose servers.
    pub max_line_length: usize,
    /// Maximum lines in one reply. Default 1000, far above any EHLO reply.
    pub max_lines: usize,
    /// Maximum octets in one reply, all lines together. Default 64 KiB.
    pub max_reply_size: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        ReplyLimits {
            max_line_length: 4096,
            max_lines: 1000,
            max_reply_size: 64 * 1024,
        }
    }
}

/// Why bytes from the server are not a valid reply. The server misbehaved:
/// the session cannot continue in step with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line does not start with a three-digit code from 200 to 599.
    #[error("reply line without a valid 3-digit code: {line:?}")]
    InvalidCode {
        /// The start of the offending line, lossily decoded.
        line: String,
    },
    /// The code is followed by something other than a space, `-` or the end.
    #[error("reply line with an invalid separator after the code: {line:?}")]
    InvalidSeparator {
        /// The start of the offending line, lossily decoded.
        line: String,
    },
    /// A continuation line carries another code than the first line.
    #[error("multi-line reply mixes codes {first} and {other}")]
    MixedCodes {
        /// The code of the first line.
        first: u16,
        /// The differing code.
        other: u16,
    },
    /// A line is longer than [`ReplyLimits::max_line_length`].
    #[error("reply line longer than {limit} octets")]
    LineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// A reply has more lines than [`ReplyLimits::max_lines`].
    #[error("reply with more than {limit} lines")]
    TooManyLines {
        /// The limit in force.
        limit: usize,
    },
    /// A reply is larger than [`ReplyLimits::max_reply_size`].
    #[error("reply larger than {limit} octets")]
    ReplyTooLarge {
        /// The limit in force.
        limit: usize,
    },
}

/// Assembles replies from bytes as they arrive.
///
/// Feed bytes with [`ReplyParser::push`], then take complete replies with
/// [`ReplyParser::next_reply`] until it returns `Ok(None)`. After an error
/// the parser is unusable: the stream is out of step and the connection
/// must be dropped.
#[derive(Debug)]
pub struct ReplyParser {
    limits: ReplyLimits,
    buffer: Vec<u8>,
    /// Start of the first unparsed byte in `buffer`.
    start: usize,
    partial: Option<Reply>,
    partial_size: usize,
    failed: Option<ReplyError>,
}

impl ReplyParser {
    /// Creates a parser with the given limits.
    pub fn new(limits: ReplyLimits) -> ReplyParser {
        ReplyParser {
            limits,
            buffer: Vec::new(),
            start: 0,
            partial: None,
            partial_size: 0,
            failed: None,
        }
    }

    /// Adds bytes received from the server.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Octets received but not yet part of a returned reply, including the
    /// lines of an incomplete multi-line reply.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len() - self.start + self.partial_size
    }

    /// Returns the next complete reply, `Ok(None)` when more bytes are
    /// needed.
    ///
    /// # Errors
    ///
    /// A [`ReplyError`] naming the first malformed or oversized line; every
    /// later call returns the same error.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.parse_lines();
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            // Nothing more is parsed, so the bytes of the bad line go now
            // rather than staying in memory with the session.
            self.discard();
        }
        result
    }

    /// Drops every buffered byte and any incomplete reply, for a session
    /// that reads no more replies.
    pub fn discard(&mut self) {
        self.buffer = Vec::new();
        self.start = 0;
        self.partial = None;
        self.partial_size = 0;
    }

    fn parse_lines(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let pending = &self.buffer[self.start..];
            let Some(newline) = pending.iter().position(|&b| b == b'\n') else {
                if pending.len() > self.limits.max_line_length + 1 {
                    return Err(ReplyError::LineTooLong {
                        limit: self.limits.max_line_length,
                    });
                }
                self.compact();
                return Ok(None);
            };
            let mut line = &pending[..newline];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if line.len() > self.limits.max_line_length {
                return Err(ReplyError::LineTooLong {
                    limit: self.limits.max_line_length,
                });
            }
            let (code, last, text) = split_line(line)?;
            self.start += newline + 1;
            self.partial_size += newline + 1;
            if self.partial_size > self.limits.max_reply_size {
                return Err(ReplyError::ReplyTooLarge {
                    limit: self.limits.max_reply_size,
                });
            }

            let reply = self.partial.get_or_insert_with(|| Reply {
                code,
                enhanced: None,
                lines: Vec::new(),
                raw: Vec::new(),
            });
            if reply.code != code {
                return Err(ReplyError::MixedCodes {
                    first: reply.code,
                    other: code,
                });
            }
            if reply.lines.len() >= self.limits.max_lines {
                return Err(ReplyError::TooManyLines {
                    limit: self.limits.max_lines,
                });
            }
            reply.raw.push(String::from_utf8_lossy(line).into_owned());
            reply.push_text(&text);
            if last {
                self.partial_size = 0;
                return Ok(self.partial.take());
            }
        }
    }

    /// Drops consumed bytes so the buffer holds only the incomplete line.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Splits a line into code, whether it is the last line, and text.
fn split_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    let shown = || String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    let code = match line {
        [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(ReplyError::InvalidCode { line: shown() }),
    };
    let (last, text) = match line.get(3) {
        None => (true, &line[3..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(ReplyError::InvalidSeparator { line: shown() }),
    };
    Ok((code, last, String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::new(ReplyLimits::default());
        parser.push(input);
        let mut replies = Vec::new();
        while let Some(reply) = parser.next_reply()? {
            replies.push(reply);
        }
        Ok(replies)
    }

    #[test]
    fn single_line_reply() {
        let replies = parse_all(b"250 2.1.0 Ok\r\n").unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].code(), 250);
        assert_eq!(replies[0].enhanced().unwrap().to_string(), "2.1.0");
        assert_eq!(replies[0].text(), "Ok");
    }

    #[test]
    fn code_alone_ends_reply() {
        let replies = parse_all(b"250\r\n250 \n").unwrap();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].text(), "");
    }

    #[test]
    fn byte_at_a_time() {
        let input = b"220-first\r\n220-second\r\n220 third\r\n";
        let mut parser = ReplyParser::new(ReplyLimits::default());
        let mut replies = Vec::new();
        for byte in input {
            parser.push(std::slice::from_ref(byte));
            if let Some(reply) = parser.next_reply().unwrap() {
                replies.push(reply);
            }
        }
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].lines(), ["first", "second", "third"]);
        assert_eq!(parser.buffered_len(), 0);
    }

    #[test]
    fn enhanced_code_on_every_line_kept_once() {
        let input = b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n";
        let reply = parse_all(input).unwrap().remove(0);
        assert_eq!(reply.to_string(), "550 5.7.1 first second third");
    }

    #[test]
    fn enhanced_code_of_other_class_is_text() {
        let reply = parse_all(b"550 2.0.0 odd\r\n").unwrap().remove(0);
        assert_eq!(reply.enhanced(), None);
        assert_eq!(reply.text(), "2.0.0 odd");
    }

    #[test]
    fn unknown_2yz_is_positive() {
        let reply = parse_all(b"254 2.1.5 Recipient ok\r\n").unwrap().remove(0);
        assert!(reply.is_positive());
    }

    #[test]
    fn mixed_codes_rejected() {
        let error = parse_all(b"250-x\r\n550 y\r\n").unwrap_err();
        assert_eq!(
            error,
            ReplyError::MixedCodes {
                first: 250,
                other: 550
            }
        );
    }

    #[test]
    fn line_without_code_rejected() {
        let error = parse_all(b"250-ok\r\nSIZE\r\n").unwrap_err();
        assert!(matches!(error, ReplyError::InvalidCode { .. }));
    }

    #[test]
    fn bad_separator_rejected() {
        let error = parse_all(b"250x\r\n").unwrap_err();
        assert!(matches!(error, ReplyError::InvalidSeparator { .. }));
    }

    #[test]
    fn first_digit_outside_two_to_five_rejected() {
        for input in [&b"199 x\r\n"[..], b"600 x\r\n", b"099 x\r\n"] {
            assert!(matches!(
                parse_all(input).unwrap_err(),
                ReplyError::InvalidCode { .. }
            ));
        }
    }

    #[test]
    fn over_long_line_without_newline_rejected() {
        let mut parser = ReplyParser::new(ReplyLimits::default());
        parser.push(&vec![b'2'; 100_000]);
        assert!(matches!(
            parser.next_reply(),
            Err(ReplyError::LineTooLong { .. })
        ));
    }

    #[test]
    fn endless_continuation_rejected() {
        let mut parser = ReplyParser::new(ReplyLimits::default());
        let mut error = None;
        for _ in 0..100_000 {
            parser.push(b"250-more\r\n");
            if let Err(e) = parser.next_reply() {
                error = Some(e);
                break;
            }
        }
        assert_eq!(error, Some(ReplyError::TooManyLines { limit: 1000 }));
    }

    #[test]
    fn error_is_sticky() {
        let mut parser = ReplyParser::new(ReplyLimits::default());
        parser.push(b"xyz\r\n250 ok\r\n");
        assert!(parser.next_reply().is_err());
        assert!(parser.next_reply().is_err());
    }
}
