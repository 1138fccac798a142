//! What Postfix stores for a message, and reading it back from the Maildir.
//!
//! Postfix 3.7 with the configuration of `scripts/postfix-loopback` does not
//! store a message exactly as it was sent. The test expects these changes,
//! each seen with a probe message sent to that Postfix:
//!
//! - The stored file has LF line endings.
//! - The fields in [`TRACE_FIELDS`] are prepended.
//! - The cleanup server removes the fields in [`DROPPED_FIELDS`] from the
//!   primary header section.
//! - The cleanup server removes the spaces and tabs between a header field
//!   name and its colon: `Subject  : x` is stored as `Subject: x`. The value
//!   after the colon is kept as it is.
//! - When the primary header section contains a line that is neither a
//!   header field nor a continuation line, the header section ends there and
//!   the cleanup server inserts an empty line before that line.
//!
//! NOTE: the cleanup server also rewrites field names with spaces before the
//! colon in the header sections of MIME parts. The expectation below covers
//! only the primary header section, which is where the corpus has such names.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use crate::corpus::{self, Input};

/// The header fields that Postfix prepends to a message stored by its
/// virtual delivery agent, in this order: the first three come from the
/// delivery agent, `Received` from the SMTP server. The test removes exactly
/// these four fields from the top of each stored message.
pub const TRACE_FIELDS: [&str; 4] = ["Return-Path", "X-Original-To", "Delivered-To", "Received"];

/// Header fields that Postfix's cleanup server removes from the primary
/// header section, in lower case. Postfix 3.7.11 removes them whatever the
/// configuration, because its `postconf` has no `drop_headers` parameter.
pub const DROPPED_FIELDS: [&str; 4] = ["return-path", "content-length", "bcc", "resent-bcc"];

/// Interval between two looks into the Maildir.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The message that Postfix must store for `input`, without the trace
/// fields.
pub fn expected_message(input: &Input) -> Vec<u8> {
    let lines = corpus::split_lines(&input.content);
    let mut stored: Vec<Vec<u8>> = Vec::with_capacity(lines.len() + 1);
    let mut in_header = true;
    let mut dropping = false;
    for line in lines {
        if !in_header {
            stored.push(line.to_vec());
            continue;
        }
        if line.is_empty() {
            in_header = false;
            stored.push(Vec::new());
            continue;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if !dropping {
                stored.push(line.to_vec());
            }
            continue;
        }
        match corpus::field_name(line) {
            Some(name) => {
                dropping = DROPPED_FIELDS
                    .iter()
                    .any(|dropped| name.eq_ignore_ascii_case(dropped.as_bytes()));
                if !dropping {
                    let colon = line
                        .iter()
                        .position(|&octet| octet == b':')
                        .expect("a field name ends at a colon");
                    let mut field = name.to_vec();
                    field.extend_from_slice(&line[colon..]);
                    stored.push(field);
                }
            }
            None => {
                in_header = false;
                stored.push(Vec::new());
                stored.push(line.to_vec());
            }
        }
    }
    let lines: Vec<&[u8]> = stored.iter().map(Vec::as_slice).collect();
    corpus::join_lines(&lines, b"\n")
}

/// The trace fields split off the top of a stored message.
pub struct Stored<'a> {
    /// The unfolded value of each field in [`TRACE_FIELDS`], by name.
    pub trace: HashMap<&'static str, String>,
    /// The message after the trace fields.
    pub message: &'a [u8],
}

/// Splits the fields of [`TRACE_FIELDS`] off the top of a stored message.
///
/// # Errors
///
/// A description of the first line that is not the expected trace field.
pub fn split_trace(stored: &[u8]) -> Result<Stored<'_>, String> {
    let mut trace = HashMap::new();
    let mut rest = stored;
    for name in TRACE_FIELDS {
        let first_end = line_end(rest);
        let first = &rest[..first_end];
        let found = corpus::field_name(first);
        if !found.is_some_and(|found| found.eq_ignore_ascii_case(name.as_bytes())) {
            return Err(format!(
                "stored message does not start with the trace fields {TRACE_FIELDS:?}: \
                 expected {name}, found {:?}",
                String::from_utf8_lossy(first)
            ));
        }
        let colon = first
            .iter()
            .position(|&octet| octet == b':')
            .expect("a field name ends at a colon");
        let mut value = String::from_utf8_lossy(&first[colon + 1..])
            .trim()
            .to_owned();
        rest = &rest[first_end..];
        while matches!(rest.first(), Some(b' ' | b'\t')) {
            let end = line_end(rest);
            value.push(' ');
            value.push_str(String::from_utf8_lossy(&rest[..end]).trim());
            rest = &rest[end..];
        }
        trace.insert(name, value);
    }
    Ok(Stored {
        trace,
        message: rest,
    })
}

/// Returns the offset just past the first LF of `text`, or its length.
fn line_end(text: &[u8]) -> usize {
    text.iter()
        .position(|&octet| octet == b'\n')
        .map_or(text.len(), |index| index + 1)
}

/// Waits until a message for each of `recipients` is in `maildir/new`, or
/// until `timeout` passes, and returns the messages found by recipient.
/// Each message found is removed from the Maildir; messages for other
/// recipients, such as those of earlier runs, are left alone.
///
/// Postfix stores a message after its SMTP server has replied, through the
/// queue manager and the virtual delivery agent, so the files appear some
/// time after the deliveries end.
pub async fn take_from_maildir(
    maildir: &Path,
    recipients: &HashSet<String>,
    timeout: Duration,
) -> HashMap<String, Vec<u8>> {
    let new = maildir.join("new");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut found = HashMap::new();
    let mut foreign = HashSet::new();
    loop {
        let entries = std::fs::read_dir(&new)
            .unwrap_or_else(|error| panic!("reading {} failed: {error}", new.display()));
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if foreign.contains(&path) {
                continue;
            }
            let Ok(content) = std::fs::read(&path) else {
                continue;
            };
            match original_recipient(&content).filter(|recipient| recipients.contains(recipient)) {
                Some(recipient) => {
                    let _ = std::fs::remove_file(&path);
                    found.insert(recipient, content);
                }
                None => {
                    foreign.insert(path);
                }
            }
        }
        if found.len() == recipients.len() || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Returns the value of the first `X-Original-To` field in the header
/// section.
fn original_recipient(message: &[u8]) -> Option<String> {
    let prefix = b"x-original-to:";
    message
        .split(|&octet| octet == b'\n')
        .take_while(|line| !line.is_empty())
        .find(|line| {
            line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
        })
        .map(|line| {
            String::from_utf8_lossy(&line[prefix.len()..])
                .trim()
                .to_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(content: &[u8]) -> Vec<u8> {
        expected_message(&Input {
            name: "inline".to_owned(),
            content: content.to_vec(),
        })
    }

    #[test]
    fn dropped_fields_removed_from_primary_header_only() {
        let message = b"Bcc: a,\r\n b\r\nSubject: s\r\nbcc : c\r\n\r\nBcc: body\r\n";
        assert_eq!(expected(message), b"Subject: s\n\nBcc: body\n");
    }

    #[test]
    fn spaces_before_colon_removed_from_names() {
        let message = b"To    : Mary\r\n  <m@x>\r\nSubject\t:  hi\r\n\r\nA  : b\r\n";
        assert_eq!(
            expected(message),
            b"To: Mary\n  <m@x>\nSubject:  hi\n\nA  : b\n"
        );
    }

    #[test]
    fn empty_line_inserted_before_non_header_line() {
        let message = b"Subject: s\r\nnot a field\r\nX: y\r\n\r\nbody\r\n";
        assert_eq!(
            expected(message),
            b"Subject: s\n\nnot a field\nX: y\n\nbody\n"
        );
    }

    #[test]
    fn trace_fields_split_in_order() {
        let stored = b"Return-Path: <s@x>\nX-Original-To: r@y\nDelivered-To: r@y\n\
                       Received: from a\n\tby b\nSubject: s\n\nbody\n";
        let split = split_trace(stored).unwrap();
        assert_eq!(split.trace["Received"], "from a by b");
        assert_eq!(split.trace["X-Original-To"], "r@y");
        assert_eq!(split.message, b"Subject: s\n\nbody\n");
        assert!(split_trace(b"Received: from a\nSubject: s\n\n").is_err());
    }
}
