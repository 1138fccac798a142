//! Reading the message and its envelope from files and options.

use std::io::Read;
use std::path::Path;

use mail_parser::MessageParser;
use mxsend::proto::Address;

use crate::exit;
use crate::failure::Failure;

/// A message read from input with its envelope, before any network use.
#[derive(Debug)]
pub struct Input {
    /// The envelope sender; `None` is the null sender `<>`.
    pub sender: Option<Address>,
    /// The envelope recipients.
    pub recipients: Vec<Address>,
    /// The content to transmit.
    pub content: Vec<u8>,
}

/// Envelope options from the command line.
#[derive(Debug, Default)]
pub struct EnvelopeOptions<'a> {
    /// `--from`.
    pub from: Option<&'a str>,
    /// `--to`, each.
    pub to: &'a [String],
    /// `-t`.
    pub read_recipients: bool,
}

/// Reads the message from `file`, or standard input when `None` or `-`.
///
/// # Errors
///
/// A [`Failure`] with status 64 for an unreadable file.
pub fn read_content(file: Option<&Path>) -> Result<Vec<u8>, Failure> {
    let mut content = Vec::new();
    match file {
        Some(path) if path != Path::new("-") => {
            content = std::fs::read(path).map_err(|error| {
                Failure::new(
                    exit::USAGE,
                    format!("cannot read message file {}: {error}", path.display()),
                )
            })?;
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut content)
                .map_err(|error| {
                    Failure::new(
                        exit::USAGE,
                        format!("cannot read the message from standard input: {error}"),
                    )
                })?;
        }
    }
    Ok(content)
}

/// Checks the message and works out the envelope.
///
/// # Errors
///
/// A [`Failure`] with status 65 for a message without a header section,
/// 64 for an invalid address, no sender or no recipient.
pub fn prepare(content: Vec<u8>, options: &EnvelopeOptions<'_>) -> Result<Input, Failure> {
    let mut content = mxsend::message::without_mbox_separator(&content).to_vec();
    if content.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::new(
            exit::DATA_ERROR,
            "the message is empty: give a file or standard input with header fields such as \
             \"From: ...\", an empty line and the body"
                .to_owned(),
        ));
    }
    let header_end = header_section_end(&content).ok_or_else(|| {
        Failure::new(
            exit::DATA_ERROR,
            "message has no header section: it must start with header fields such as \
             \"From: ...\", then an empty line before the body"
                .to_owned(),
        )
    })?;
    let parsed = MessageParser::default().parse_headers(&content[..header_end]);

    let sender = match options.from {
        Some(from) => parse_sender(from)?,
        None => {
            let from = parsed
                .as_ref()
                .and_then(|m| m.from())
                .and_then(|a| a.first())
                .and_then(|a| a.address());
            match from {
                Some(from) => Some(parse_address(from, "From header")?),
                None => {
                    return Err(Failure::new(
                        exit::USAGE,
                        "no sender: give --from ADDRESS, or a From header in the message"
                            .to_owned(),
                    ));
                }
            }
        }
    };

    let mut recipients = Vec::new();
    for to in options.to {
        recipients.push(parse_address(to, "--to")?);
    }
    if options.read_recipients
        && let Some(message) = &parsed
    {
        let headers = [
            ("To", message.to()),
            ("Cc", message.cc()),
            ("Bcc", message.bcc()),
        ];
        for (name, field) in headers {
            for entry in field.into_iter().flat_map(|a| a.iter()) {
                let Some(address) = entry.address() else {
                    // A group name such as "undisclosed-recipients:;" has
                    // no address by design; anything else is worth a word.
                    if let Some(text) = entry.name() {
                        eprintln!(
                            "mxsend: warning: skipped {text:?} in the {name} header: it has no address"
                        );
                    }
                    continue;
                };
                let address = parse_address(address, &format!("{name} header"))?;
                if !recipients.contains(&address) {
                    recipients.push(address);
                }
            }
        }
    }
    if options.read_recipients {
        content = remove_header_field(&content, header_end, b"bcc");
    }
    if recipients.is_empty() {
        return Err(Failure::new(
            exit::USAGE,
            if options.read_recipients {
                "no recipients: -t found no address in the To, Cc and Bcc headers; \
                 give --to ADDRESS"
                    .to_owned()
            } else {
                "no recipients: give --to ADDRESS, or -t to read To, Cc and Bcc headers".to_owned()
            },
        ));
    }
    Ok(Input {
        sender,
        recipients,
        content,
    })
}

/// Parses `--from`; `<>` or an empty value is the null sender.
/// Parses `--from`, where `<>` is the null sender of bounces. An empty
/// value is an error rather than the null sender, since it is more often an
/// unset shell variable than a choice.
fn parse_sender(text: &str) -> Result<Option<Address>, Failure> {
    match text.trim() {
        "<>" => Ok(None),
        "" => Err(Failure::new(
            exit::USAGE,
            "empty --from: give an address, or --from '<>' for the null sender".to_owned(),
        )),
        _ => parse_address(text, "--from").map(Some),
    }
}

fn parse_address(text: &str, origin: &str) -> Result<Address, Failure> {
    Address::parse(text).map_err(|error| {
        // "Name <address>" is the header form, not the envelope form.
        let hint = if text.contains('<') && !text.trim().starts_with('<') {
            "; give the bare address, such as you@example.org"
        } else {
            ""
        };
        Failure::new(
            exit::USAGE,
            format!("invalid address in {origin}: {error}{hint}"),
        )
    })
}

/// The offset just past the empty line that ends the header section, or
/// the content length when there is no body. `None` when the first line is
/// not a header field: RFC 5322 section 2.2 field name, optional spaces
/// (obsolete syntax), then a colon.
fn header_section_end(content: &[u8]) -> Option<usize> {
    let first = content.split(|&b| b == b'\n').next()?;
    let name_end = first.iter().position(|&b| b == b':')?;
    let name = trim_end_spaces(&first[..name_end]);
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b) && b != b':') {
        return None;
    }
    let mut offset = 0;
    for line in content.split_inclusive(|&b| b == b'\n') {
        offset += line.len();
        if line == b"\n" || line == b"\r\n" {
            return Some(offset);
        }
    }
    Some(content.len())
}

fn trim_end_spaces(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Removes every field named `name` (lower case), continuation lines
/// included, from the header section ending at `header_end`.
fn remove_header_field(content: &[u8], header_end: usize, name: &[u8]) -> Vec<u8> {
    let mut result = Vec::with_capacity(content.len());
    let mut removing = false;
    for line in content[..header_end].split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if !continuation {
            removing = line
                .iter()
                .position(|&b| b == b':')
                .is_some_and(|colon| trim_end_spaces(&line[..colon]).eq_ignore_ascii_case(name));
        }
        if !removing {
            result.extend_from_slice(line);
        }
    }
    result.extend_from_slice(&content[header_end..]);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options<'a>(to: &'a [String], read: bool) -> EnvelopeOptions<'a> {
        EnvelopeOptions {
            from: None,
            to,
            read_recipients: read,
        }
    }

    #[test]
    fn recipients_from_headers_and_bcc_removed() {
        let message = b"From: a@x.test\nTo: b@y.test\nBcc: c@z.test,\n d@z.test\nSubject: s\n\nbody\nBcc: not a header\n";
        let input = prepare(message.to_vec(), &options(&[], true)).unwrap();
        let recipients: Vec<_> = input.recipients.iter().map(|a| a.as_str()).collect();
        assert_eq!(recipients, ["b@y.test", "c@z.test", "d@z.test"]);
        assert_eq!(
            input.content,
            b"From: a@x.test\nTo: b@y.test\nSubject: s\n\nbody\nBcc: not a header\n"
        );
        assert_eq!(input.sender.unwrap().as_str(), "a@x.test");
    }

    #[test]
    fn mbox_separator_dropped() {
        let to = vec!["b@y.test".to_owned()];
        let input = prepare(
            b"From a@x.test Mon Jan 1\nFrom: a@x.test\n\nhi\n".to_vec(),
            &options(&to, false),
        )
        .unwrap();
        assert!(input.content.starts_with(b"From: a@x.test"));
    }

    #[test]
    fn message_without_headers_rejected() {
        let to = vec!["b@y.test".to_owned()];
        for content in [&b"just text\n"[..], b"\nbody\n", b""] {
            let error = prepare(content.to_vec(), &options(&to, false)).unwrap_err();
            assert_eq!(error.status, exit::DATA_ERROR);
        }
    }

    #[test]
    fn obsolete_space_before_colon_is_a_header() {
        let to = vec!["b@y.test".to_owned()];
        assert!(
            prepare(
                b"Subject : hi\nFrom: a@x.test\n\nbody\n".to_vec(),
                &options(&to, false)
            )
            .is_ok()
        );
    }

    #[test]
    fn missing_sender_and_recipients_are_usage_errors() {
        let error = prepare(
            b"Subject: x\n\nbody\n".to_vec(),
            &options(&["b@y.test".to_owned()], false),
        )
        .unwrap_err();
        assert_eq!(error.status, exit::USAGE);
        let error =
            prepare(b"From: a@x.test\n\nbody\n".to_vec(), &options(&[], false)).unwrap_err();
        assert_eq!(error.status, exit::USAGE);
    }

    #[test]
    fn empty_input_and_empty_from_rejected() {
        let to = vec!["b@y.test".to_owned()];
        let error = prepare(b"\n\n".to_vec(), &options(&to, false)).unwrap_err();
        assert_eq!(error.status, exit::DATA_ERROR);
        assert!(error.message.contains("empty"), "{}", error.message);

        let envelope = EnvelopeOptions {
            from: Some(""),
            to: &to,
            read_recipients: false,
        };
        let error = prepare(b"From: a@x.test\n\nbody\n".to_vec(), &envelope).unwrap_err();
        assert_eq!(error.status, exit::USAGE);
        assert!(error.message.contains("'<>'"), "{}", error.message);
    }

    #[test]
    fn read_recipients_without_addresses_says_so() {
        let message = b"From: a@x.test\nTo: undisclosed-recipients:;\n\nbody\n";
        let error = prepare(message.to_vec(), &options(&[], true)).unwrap_err();
        assert_eq!(error.status, exit::USAGE);
        assert!(
            error.message.contains("-t found no address"),
            "{}",
            error.message
        );
    }

    #[test]
    fn display_name_form_gets_a_hint() {
        let to = vec!["You <you@example.org>".to_owned()];
        let error =
            prepare(b"From: a@x.test\n\nbody\n".to_vec(), &options(&to, false)).unwrap_err();
        assert!(error.message.contains("bare address"), "{}", error.message);
    }

    #[test]
    fn injected_address_rejected() {
        let to = vec!["b@y.test\r\nRCPT TO:<evil@x.test>".to_owned()];
        let error =
            prepare(b"From: a@x.test\n\nbody\n".to_vec(), &options(&to, false)).unwrap_err();
        assert_eq!(error.status, exit::USAGE);
        assert!(
            error.message.contains("control character"),
            "{}",
            error.message
        );
    }
}
