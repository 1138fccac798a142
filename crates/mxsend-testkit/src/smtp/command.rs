//! Parsing of SMTP command lines and building of reply bytes.

/// Returns the command verb in upper case: the text before the first space.
pub(crate) fn verb(line: &str) -> String {
    line.split(' ')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// Returns the text after the verb and its separating space, if any.
pub(crate) fn argument(line: &str) -> &str {
    line.split_once(' ').map_or("", |(_, rest)| rest)
}

/// Parses the argument of `BDAT size [LAST]` (RFC 3030 section 2): the
/// chunk size and whether it is the last chunk.
pub(crate) fn parse_bdat(line: &str) -> Option<(usize, bool)> {
    let mut words = argument(line).split(' ');
    let size = words.next()?;
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse().ok()?;
    match (words.next(), words.next()) {
        (None, _) => Some((size, false)),
        (Some(last), None) if last.eq_ignore_ascii_case("LAST") => Some((size, true)),
        _ => None,
    }
}

/// Splits the argument of MAIL or RCPT into the path without angle brackets
/// and the parameters that follow it.
///
/// `keyword` is `"FROM:"` or `"TO:"` and matches in any case. Spaces after
/// the colon are tolerated. Returns `None` when the keyword is missing, the
/// closing `>` is missing, or a path without brackets is empty.
pub(crate) fn parse_path(line: &str, keyword: &str) -> Option<(String, String)> {
    let argument = argument(line).trim_start();
    let prefix = argument.get(..keyword.len())?;
    if !prefix.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();

    if let Some(bracketed) = rest.strip_prefix('<') {
        let end = closing_bracket(bracketed)?;
        let path = bracketed[..end].to_owned();
        let params = bracketed[end + 1..].trim().to_owned();
        return Some((path, params));
    }

    let (path, params) = rest.split_once(' ').unwrap_or((rest, ""));
    if path.is_empty() {
        return None;
    }
    Some((path.to_owned(), params.trim().to_owned()))
}

/// Returns the byte index of the `>` that closes a path, skipping any `>`
/// inside a quoted local part such as `"a>b"@example.test`.
fn closing_bracket(text: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (index, character) in text.char_indices() {
        match character {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => return Some(index),
            _ => {}
        }
    }
    None
}

/// Converts reply text to wire bytes, ending every line with CRLF.
///
/// Lines may be separated by CRLF or a bare LF, and a final line terminator
/// is optional.
pub(crate) fn reply_bytes(text: &str) -> Vec<u8> {
    let body = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    let mut bytes = Vec::with_capacity(body.len() + 2);
    for line in body.split('\n') {
        bytes.extend_from_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes
}

/// Returns the three-digit reply code at the start of `bytes`, if any.
pub(crate) fn reply_code(bytes: &[u8]) -> Option<u16> {
    let digits = bytes.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0, |code, digit| code * 10 + u16::from(digit - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_path_splits_parameters() {
        let parsed = parse_path("MAIL FROM:<a@example.test> SIZE=12 BODY=8BITMIME", "FROM:");
        assert_eq!(
            parsed,
            Some((
                "a@example.test".to_owned(),
                "SIZE=12 BODY=8BITMIME".to_owned()
            ))
        );
    }

    #[test]
    fn parse_path_accepts_null_path() {
        assert_eq!(
            parse_path("mail from:<>", "FROM:"),
            Some((String::new(), String::new()))
        );
    }

    #[test]
    fn parse_path_skips_quoted_bracket() {
        let parsed = parse_path("RCPT TO:<\"a>b\"@example.test> NOTIFY=NEVER", "TO:");
        assert_eq!(
            parsed,
            Some(("\"a>b\"@example.test".to_owned(), "NOTIFY=NEVER".to_owned()))
        );
    }

    #[test]
    fn parse_path_rejects_malformed() {
        assert_eq!(parse_path("RCPT <a@example.test>", "TO:"), None);
        assert_eq!(parse_path("RCPT TO:<a@example.test", "TO:"), None);
        assert_eq!(parse_path("RCPT TO:", "TO:"), None);
        assert_eq!(parse_path("RCPT", "TO:"), None);
    }

    #[test]
    fn reply_bytes_adds_crlf() {
        assert_eq!(reply_bytes("250 ok"), b"250 ok\r\n");
        assert_eq!(reply_bytes("250-a\r\n250 b"), b"250-a\r\n250 b\r\n");
        assert_eq!(reply_bytes("250-a\n250 b\n"), b"250-a\r\n250 b\r\n");
    }

    #[test]
    fn reply_code_reads_three_digits() {
        assert_eq!(reply_code(b"354 go"), Some(354));
        assert_eq!(reply_code(b"25"), None);
        assert_eq!(reply_code(b"abc"), None);
    }
}
