//! `Extensions::from_ehlo` on arbitrary reply lines.
//!
//! Input: the text of a 250 reply, one line per LF. Invalid UTF-8 is
//! replaced, as the reply parser does.

use mxsend_proto::{Extensions, Reply, ReplyLimits, ReplyParser};

/// Checks the extensions read from one reply.
///
/// # Panics
///
/// When a field disagrees with [`Extensions::keywords`], when a keyword is
/// not a single upper-case word, when a line is lost or invented, or when
/// the same lines parsed from the wire give another reply or other
/// extensions.
pub fn check(input: &[u8]) {
    let lines: Vec<String> = input
        .split(|&byte| byte == b'\n')
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect();
    let reply = Reply::new(250, &lines);
    let extensions = Extensions::from_ehlo(&reply);
    check_extensions(&reply, &extensions);
    check_wire_form(&lines, &reply, &extensions);
}

fn check_extensions(reply: &Reply, extensions: &Extensions) {
    assert_eq!(
        extensions.greeting,
        reply.lines()[0],
        "the greeting is not the first line"
    );

    // A keyword line is any later line whose trimmed text has a non-empty
    // part before the first space or `=`.
    let keyword_lines = reply.lines()[1..]
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty() && !line.starts_with('='))
        .count();
    assert_eq!(
        extensions.keywords.len(),
        keyword_lines,
        "keywords {:?} do not match the lines {:?}",
        extensions.keywords,
        reply.lines()
    );

    for (keyword, params) in &extensions.keywords {
        assert!(!keyword.is_empty(), "empty keyword");
        assert!(
            !keyword.contains([' ', '=']),
            "keyword {keyword:?} contains a separator"
        );
        assert_eq!(
            *keyword,
            keyword.to_ascii_uppercase(),
            "keyword is not upper case"
        );
        assert_eq!(
            params.trim(),
            params,
            "parameters {params:?} are not trimmed"
        );
        assert!(extensions.has(keyword), "has({keyword:?}) is false");
        assert!(extensions.has(&keyword.to_ascii_lowercase()));
    }

    let advertised = |name: &str| extensions.keywords.iter().any(|(k, _)| k == name);
    let flags = [
        ("PIPELINING", extensions.pipelining),
        ("8BITMIME", extensions.eight_bit_mime),
        ("SMTPUTF8", extensions.smtputf8),
        ("STARTTLS", extensions.starttls),
        ("DSN", extensions.dsn),
        ("CHUNKING", extensions.chunking),
        ("BINARYMIME", extensions.binary_mime),
        ("ENHANCEDSTATUSCODES", extensions.enhanced_status_codes),
        ("REQUIRETLS", extensions.require_tls),
    ];
    for (name, flag) in flags {
        assert_eq!(flag, advertised(name), "flag for {name} is {flag}");
    }

    // The last SIZE keyword sets the limit; a missing or invalid number
    // means no limit, which is 0.
    let expected_size = extensions
        .keywords
        .iter()
        .rev()
        .find(|(keyword, _)| keyword == "SIZE")
        .map(|(_, params)| {
            params
                .split_whitespace()
                .next()
                .and_then(|limit| limit.parse().ok())
                .unwrap_or(0)
        });
    assert_eq!(extensions.size, expected_size, "SIZE limit");

    let mut expected_auth: Vec<String> = Vec::new();
    for (_, params) in extensions.keywords.iter().filter(|(k, _)| k == "AUTH") {
        for mechanism in params.split_whitespace() {
            let mechanism = mechanism.to_ascii_uppercase();
            if !expected_auth.contains(&mechanism) {
                expected_auth.push(mechanism);
            }
        }
    }
    assert_eq!(extensions.auth, expected_auth, "AUTH mechanisms");
}

/// Sends the lines through [`ReplyParser`] as a multi-line 250 reply and
/// compares the result with the reply built by [`Reply::new`].
fn check_wire_form(lines: &[String], reply: &Reply, extensions: &Extensions) {
    let limits = ReplyLimits::default();
    let mut wire = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let separator = if index + 1 == lines.len() { ' ' } else { '-' };
        wire.extend_from_slice(format!("250{separator}{line}\r\n").as_bytes());
    }
    let fits = lines.len() <= limits.max_lines
        && lines
            .iter()
            .all(|line| line.len() + 4 <= limits.max_line_length)
        && wire.len() <= limits.max_reply_size;
    if !fits {
        return;
    }

    let mut parser = ReplyParser::new(limits);
    parser.push(&wire);
    let parsed = match parser.next_reply() {
        Ok(Some(parsed)) => parsed,
        other => panic!("the wire form {wire:?} did not parse: {other:?}"),
    };
    assert_eq!(parsed, *reply, "the parser and Reply::new disagree");
    assert_eq!(Extensions::from_ehlo(&parsed), *extensions);
    assert_eq!(parser.buffered_len(), 0, "octets left after the reply");
}
