//! The test messages and what a receiver must store for each of them.

use std::io;
use std::path::{Path, PathBuf};

/// Maximum line length in octets, without the line break, that SMTP allows
/// (RFC 5321 section 4.5.3.1.6). `DataPolicy::default()` uses the same
/// value, and this module computes independently which messages break it.
pub const MAX_LINE_LENGTH: usize = 998;

/// One message of the corpus, or a message derived from one.
#[derive(Debug, Clone)]
pub struct Input {
    /// The path relative to the corpus folder, or a description of the
    /// derived message.
    pub name: String,
    /// The message content that mxsend takes: the file without a leading
    /// mbox separator line.
    pub content: Vec<u8>,
}

impl Input {
    /// Returns the first line longer than [`MAX_LINE_LENGTH`], as its 1-based
    /// number and its length in octets.
    pub fn first_long_line(&self) -> Option<(u64, usize)> {
        split_lines(&self.content)
            .iter()
            .enumerate()
            .find(|(_, line)| line.len() > MAX_LINE_LENGTH)
            .map(|(index, line)| (index as u64 + 1, line.len()))
    }

    /// Whether the content has an octet of 0x80 or above, so that mxsend must
    /// send `BODY=8BITMIME` (RFC 6152).
    pub fn is_eight_bit(&self) -> bool {
        self.content.iter().any(|&octet| octet >= 0x80)
    }

    /// The message as a receiver must store it when it keeps CRLF line
    /// endings: every line ends with CRLF.
    pub fn expected_crlf(&self) -> Vec<u8> {
        join_lines(&split_lines(&self.content), b"\r\n")
    }
}

/// Reads the corpus folder: every `*.eml` file below `folder`, sorted by
/// path, with a leading mbox separator line removed.
pub fn load(folder: &Path) -> io::Result<Vec<Input>> {
    let mut paths = Vec::new();
    collect_messages(folder, &mut paths)?;
    paths.sort();
    let mut inputs = Vec::with_capacity(paths.len());
    for path in paths {
        let raw = std::fs::read(&path)?;
        let name = path
            .strip_prefix(folder)
            .unwrap_or(&path)
            .display()
            .to_string();
        inputs.push(Input {
            name,
            content: mxsend::message::without_mbox_separator(&raw).to_vec(),
        });
    }
    Ok(inputs)
}

fn collect_messages(folder: &Path, paths: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            collect_messages(&path, paths)?;
        } else if path.extension().is_some_and(|extension| extension == "eml") {
            paths.push(path);
        }
    }
    Ok(())
}

/// Removes a leading mbox separator line by the rule of `mxsend send`.
///
/// Splits content into lines the way mxsend's DATA encoder does: CRLF, LF
/// and a bare CR each end a line, and the text after the last line break is
/// a final line when it is not empty. The encoder sends every line with
/// CRLF, so no bare CR or bare LF reaches the server.
pub fn split_lines(content: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index < content.len() {
        match content[index] {
            b'\n' => {
                lines.push(&content[start..index]);
                index += 1;
                start = index;
            }
            b'\r' => {
                lines.push(&content[start..index]);
                index += 1;
                if content.get(index) == Some(&b'\n') {
                    index += 1;
                }
                start = index;
            }
            _ => index += 1,
        }
    }
    if start < content.len() {
        lines.push(&content[start..]);
    }
    lines
}

pub fn join_lines(lines: &[&[u8]], line_break: &[u8]) -> Vec<u8> {
    let mut joined = Vec::new();
    for line in lines {
        joined.extend_from_slice(line);
        joined.extend_from_slice(line_break);
    }
    joined
}

/// Returns the name of the header field that starts on `line`: the octets
/// before the colon, without the spaces that obsolete syntax allows there.
pub fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&octet| octet == b':')?;
    let name = line[..colon].trim_ascii_end();
    let valid = !name.is_empty() && name.iter().all(|&octet| (33..=126).contains(&octet));
    valid.then_some(name)
}

/// Describes where `stored` first differs from `expected`, for a failure
/// message that stays short for large messages.
pub fn describe_difference(expected: &[u8], stored: &[u8]) -> String {
    let expected_lines: Vec<&[u8]> = expected.split_inclusive(|&octet| octet == b'\n').collect();
    let stored_lines: Vec<&[u8]> = stored.split_inclusive(|&octet| octet == b'\n').collect();
    let first_difference = expected_lines
        .iter()
        .zip(&stored_lines)
        .position(|(expected_line, stored_line)| expected_line != stored_line)
        .unwrap_or(expected_lines.len().min(stored_lines.len()));
    let show = |lines: &[&[u8]]| {
        lines
            .get(first_difference)
            .map_or_else(|| "(end of message)".to_owned(), |line| excerpt(line))
    };
    format!(
        "{} octets expected, {} stored; first difference at line {}: expected {}, stored {}",
        expected.len(),
        stored.len(),
        first_difference + 1,
        show(&expected_lines),
        show(&stored_lines),
    )
}

fn excerpt(line: &[u8]) -> String {
    const MAX_SHOWN: usize = 120;
    let shown = &line[..line.len().min(MAX_SHOWN)];
    let mut text = format!("{:?}", String::from_utf8_lossy(shown));
    if line.len() > MAX_SHOWN {
        text.push_str(&format!(" ({} more octets)", line.len() - MAX_SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(content: &[u8]) -> Input {
        Input {
            name: "inline".to_owned(),
            content: content.to_vec(),
        }
    }

    #[test]
    fn lines_split_on_crlf_lf_and_bare_cr() {
        let lines = split_lines(b"a\r\nb\nc\rd");
        assert_eq!(lines, [&b"a"[..], b"b", b"c", b"d"]);
        assert_eq!(split_lines(b"a\n\n"), [&b"a"[..], b""]);
        assert!(split_lines(b"").is_empty());
    }

    #[test]
    fn expected_form_ends_every_line_with_crlf() {
        assert_eq!(
            input(b"Subject: x\n\nbody").expected_crlf(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
        assert_eq!(
            input(b"Subject: x\r\rbody\r\n").expected_crlf(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn long_line_found_by_number() {
        let mut content = b"Subject: x\n\n".to_vec();
        content.extend(std::iter::repeat_n(b'a', MAX_LINE_LENGTH));
        content.extend_from_slice(b"\r\n");
        assert_eq!(input(&content).first_long_line(), None);
        content.extend(std::iter::repeat_n(b'b', MAX_LINE_LENGTH + 1));
        assert_eq!(
            input(&content).first_long_line(),
            Some((4, MAX_LINE_LENGTH + 1))
        );
    }
}
