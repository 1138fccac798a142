//! Delivery status notifications (RFC 3464): bounces and delay warnings.
//!
//! A notification is a `multipart/report; report-type=delivery-status`
//! message (RFC 6522) with three parts: a human-readable explanation, the
//! `message/delivery-status` fields, and the header section of the original
//! message as `text/rfc822-headers`. It is sent with the null reverse path
//! `<>` (RFC 5321 section 4.5.5), so that a notification that cannot be
//! delivered never causes another one.

use mxsend_proto::data::DEFAULT_MAX_LINE_LENGTH;

use super::{Millis, NewMessage, QueueId};

/// What a notification reports for a recipient (RFC 3464 section 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// The message will not be delivered to this recipient.
    Failed,
    /// Delivery is still being retried.
    Delayed,
}

impl DsnAction {
    fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
        }
    }
}

/// One recipient in a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The recipient address.
    pub address: String,
    /// Failed or delayed.
    pub action: DsnAction,
    /// The RFC 3463 status code, such as `5.1.1`.
    pub status: String,
    /// The server that gave the last reply, if any.
    pub remote_mta: Option<String>,
    /// The SMTP reply, such as `550 5.1.1 No such user`, if any.
    pub diagnostic: Option<String>,
    /// Why, in one line, for the explanation part.
    pub reason: String,
}

/// The original message a notification reports on.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// Its queue id.
    pub id: &'a QueueId,
    /// Its envelope sender, who receives the notification.
    pub sender: &'a str,
    /// When it was queued.
    pub arrival: Millis,
    /// Its content; only the header section is copied.
    pub content: &'a [u8],
}

/// Longest diagnostic text copied into a field, so that the field stays
/// well under the 998-octet line limit of RFC 5322 section 2.1.1.
const MAX_DIAGNOSTIC: usize = 900;

/// Builds a notification to `original.sender` for `recipients`, sent from
/// `MAILER-DAEMON@reporting_mta` with the null sender. Returns `None` when
/// the original has the null sender: a bounce never gets a bounce.
pub fn build(
    original: Original<'_>,
    recipients: &[DsnRecipient],
    reporting_mta: &str,
    now: Millis,
    retry_until: Option<Millis>,
) -> Option<NewMessage> {
    if original.sender.is_empty() || recipients.is_empty() {
        return None;
    }
    let delayed = recipients.iter().all(|r| r.action == DsnAction::Delayed);
    let boundary = format!("{}.{}/{}", original.id, now, reporting_mta);
    let subject = if delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Undelivered Mail Returned to Sender"
    };

    let mut text = String::new();
    push_line(
        &mut text,
        &format!("From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"),
    );
    push_line(&mut text, &format!("To: <{}>", original.sender));
    push_line(&mut text, &format!("Subject: {subject}"));
    push_line(&mut text, &format!("Date: {}", rfc5322_date(now)));
    push_line(
        &mut text,
        &format!("Message-ID: <{}.{now}.dsn@{reporting_mta}>", original.id),
    );
    // RFC 3834 section 5: automatic replies must not be answered.
    push_line(&mut text, "Auto-Submitted: auto-replied");
    push_line(&mut text, "MIME-Version: 1.0");
    push_line(
        &mut text,
        &format!(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
        ),
    );
    push_line(&mut text, "");
    push_line(
        &mut text,
        "This is a MIME-encapsulated delivery status notification.",
    );
    push_line(&mut text, "");

    push_line(&mut text, &format!("--{boundary}"));
    push_line(&mut text, "Content-Type: text/plain; charset=utf-8");
    push_line(&mut text, "Content-Description: Notification");
    push_line(&mut text, "");
    explain(&mut text, recipients, reporting_mta, delayed, retry_until);
    push_line(&mut text, "");

    push_line(&mut text, &format!("--{boundary}"));
    push_line(&mut text, "Content-Type: message/delivery-status");
    push_line(&mut text, "Content-Description: Delivery report");
    push_line(&mut text, "");
    push_line(&mut text, &format!("Reporting-MTA: dns; {reporting_mta}"));
    push_line(&mut text, &format!("X-Mxsend-Queue-ID: {}", original.id));
    push_line(
        &mut text,
        &format!("Arrival-Date: {}", rfc5322_date(original.arrival)),
    );
    for recipient in recipients {
        push_line(&mut text, "");
        push_line(
            &mut text,
            &format!("Final-Recipient: rfc822; {}", one_line(&recipient.address)),
        );
        push_line(&mut text, &format!("Action: {}", recipient.action.as_str()));
        push_line(&mut text, &format!("Status: {}", recipient.status));
        if let Some(mta) = &recipient.remote_mta {
            push_line(&mut text, &format!("Remote-MTA: dns; {}", one_line(mta)));
        }
        if let Some(diagnostic) = &recipient.diagnostic {
            push_line(
                &mut text,
                &format!("Diagnostic-Code: smtp; {}", one_line(diagnostic)),
            );
        }
        push_line(
            &mut text,
            &format!("Last-Attempt-Date: {}", rfc5322_date(now)),
        );
        if let (DsnAction::Delayed, Some(until)) = (recipient.action, retry_until) {
            push_line(
                &mut text,
                &format!("Will-Retry-Until: {}", rfc5322_date(until)),
            );
        }
    }
    push_line(&mut text, "");

    push_line(&mut text, &format!("--{boundary}"));
    push_line(&mut text, "Content-Type: text/rfc822-headers");
    push_line(
        &mut text,
        "Content-Description: Undelivered Message Headers",
    );
    // Copied as they are, 8-bit octets or a line over 998 octets would
    // make the bounce as undeliverable as the message it reports. Bounces
    // go from the null sender, so that failure would be reported to no
    // one. Quoted-printable keeps the copy 7-bit with short lines (RFC 2045
    // section 6.7).
    let headers = header_section_crlf(original.content);
    let needs_encoding = headers.iter().any(|&octet| octet >= 0x80)
        || headers
            .split(|&octet| octet == b'\n')
            .any(|line| line.len() > DEFAULT_MAX_LINE_LENGTH + 1);
    if needs_encoding {
        push_line(&mut text, "Content-Transfer-Encoding: quoted-printable");
    }
    push_line(&mut text, "");
    let mut content = text.into_bytes();
    if needs_encoding {
        content.extend_from_slice(&quoted_printable::encode(&headers));
        if !content.ends_with(b"\r\n") {
            content.extend_from_slice(b"\r\n");
        }
    } else {
        content.extend_from_slice(&headers);
    }
    content.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    Some(NewMessage {
        sender: None,
        recipients: vec![original.sender.to_owned()],
        content,
    })
}

fn explain(
    text: &mut String,
    recipients: &[DsnRecipient],
    reporting_mta: &str,
    delayed: bool,
    retry_until: Option<Millis>,
) {
    push_line(
        text,
        &format!("This is the mail system at {reporting_mta}."),
    );
    push_line(text, "");
    if delayed {
        push_line(
            text,
            "Your message could not be delivered yet to the recipients below.",
        );
        match retry_until {
            Some(until) => push_line(
                text,
                &format!(
                    "Delivery is still being retried until {}. You do not need to send it again.",
                    rfc5322_date(until)
                ),
            ),
            None => push_line(text, "Delivery is still being retried."),
        }
    } else {
        push_line(
            text,
            "Your message could not be delivered to the recipients below.",
        );
        push_line(
            text,
            "This is a permanent error; delivery was not retried after it.",
        );
    }
    push_line(text, "");
    for recipient in recipients {
        push_line(
            text,
            &format!(
                "<{}>: {}",
                one_line(&recipient.address),
                one_line(&recipient.reason)
            ),
        );
    }
}

fn push_line(text: &mut String, line: &str) {
    text.push_str(line);
    text.push_str("\r\n");
}

/// Replaces control characters with spaces and shortens the text, so that
/// a server's reply cannot add lines or fields to the notification.
fn one_line(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = cleaned.len().min(MAX_DIAGNOSTIC);
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    cleaned[..end].trim().to_owned()
}

/// The header section of `content` without the empty line that ends it,
/// with CRLF line endings. A message without a header section gives an
/// empty result.
pub fn header_section_crlf(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        let bare = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if bare.is_empty() {
            break;
        }
        let is_field = bare.iter().position(|&b| b == b':').is_some_and(|colon| {
            colon > 0 && bare[..colon].iter().all(|&b| (33..=126).contains(&b))
        });
        let is_continuation = matches!(bare.first(), Some(b' ' | b'\t'));
        let continues_field = is_continuation && !out.is_empty();
        if !(is_field || continues_field) {
            break;
        }
        out.extend_from_slice(bare);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Formats a time as an RFC 5322 section 3.3 date in UTC, such as
/// `Fri, 04 Dec 2026 21:08:18 +0000`.
pub fn rfc5322_date(millis: Millis) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let seconds = millis.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month,
/// day), counting in 400-year eras of 146,097 days that start on March 1.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original<'a>(id: &'a QueueId, sender: &'a str, content: &'a [u8]) -> Original<'a> {
        Original {
            id,
            sender,
            arrival: 0,
            content,
        }
    }

    fn failed(address: &str) -> DsnRecipient {
        DsnRecipient {
            address: address.to_owned(),
            action: DsnAction::Failed,
            status: "5.1.1".to_owned(),
            remote_mta: Some("mx.example.net".to_owned()),
            diagnostic: Some("550 5.1.1 no such user\r\nInjected: yes".to_owned()),
            reason: "550 5.1.1 no such user".to_owned(),
        }
    }

    #[test]
    fn dates_match_known_values() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_796_418_498_000),
            "Fri, 04 Dec 2026 21:08:18 +0000"
        );
        assert_eq!(
            rfc5322_date(951_782_400_000),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }

    #[test]
    fn bounce_has_report_parts_and_headers() {
        let id = QueueId::parse("00000000000000ab").unwrap();
        let content = b"From: a@x.test\nSubject: hello\n  folded\n\nbody text\n";
        let dsn = build(
            original(&id, "a@x.test", content),
            &[failed("b@y.test")],
            "mta.x.test",
            0,
            None,
        )
        .unwrap();
        assert_eq!(dsn.sender, None);
        assert_eq!(dsn.recipients, ["a@x.test"]);
        let text = String::from_utf8(dsn.content).unwrap();
        assert!(text.contains("report-type=delivery-status"), "{text}");
        assert!(text.contains("Content-Type: message/delivery-status\r\n"));
        assert!(text.contains("Reporting-MTA: dns; mta.x.test\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; b@y.test\r\n"));
        assert!(text.contains("Action: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(text.contains("Subject: hello\r\n  folded\r\n"));
        assert!(!text.contains("body text"), "the body must not be copied");
        assert!(
            !text.contains("\r\nInjected: yes"),
            "reply text added a field"
        );
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "bare LF in {text}"
        );
    }

    /// Headers with 8-bit octets or a line over 998 octets go into the
    /// bounce as quoted-printable, so the bounce itself stays 7-bit with
    /// short lines and can reach the sender through any server.
    #[test]
    fn unsendable_headers_copied_as_quoted_printable() {
        let id = QueueId::parse("00000000000000ab").unwrap();
        let long = format!(
            "From: a@x.test\r\nSubject: {}\r\n\r\nbody\r\n",
            "s".repeat(1200)
        );
        let eight_bit = "From: a@x.test\r\nSubject: Grüße\r\n\r\nbody\r\n".to_owned();
        for content in [long, eight_bit] {
            let dsn = build(
                original(&id, "a@x.test", content.as_bytes()),
                &[failed("b@y.test")],
                "mta.x.test",
                0,
                None,
            )
            .unwrap();
            assert!(dsn.content.is_ascii(), "8-bit octets in the bounce");
            let longest = dsn
                .content
                .split(|&octet| octet == b'\n')
                .map(<[u8]>::len)
                .max()
                .unwrap_or(0);
            assert!(longest <= 999, "a line of {longest} octets");
            let text = String::from_utf8(dsn.content).unwrap();
            assert!(
                text.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
                "{text}"
            );
            let part = text
                .split("Undelivered Message Headers\r\n")
                .nth(1)
                .unwrap();
            let encoded = part.split("\r\n--").next().unwrap();
            let decoded = quoted_printable::decode(
                encoded.trim_start_matches("Content-Transfer-Encoding: quoted-printable\r\n\r\n"),
                quoted_printable::ParseMode::Strict,
            )
            .unwrap();
            let headers = content.split("\r\n\r\n").next().unwrap();
            assert_eq!(
                String::from_utf8(decoded).unwrap().trim_end(),
                headers,
                "the headers do not decode back"
            );
        }
    }

    #[test]
    fn null_sender_gets_no_bounce() {
        let id = QueueId::parse("00000000000000ab").unwrap();
        let dsn = build(
            original(&id, "", b"Subject: x\n\n"),
            &[failed("b@y.test")],
            "mta.x.test",
            0,
            None,
        );
        assert_eq!(dsn, None);
    }

    #[test]
    fn header_section_stops_at_body() {
        assert_eq!(
            header_section_crlf(b"A: 1\r\nB: 2\n\nC: 3\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section_crlf(b"no header here\nA: 1\n"), b"");
    }
}
