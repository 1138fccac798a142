//! `ReplyParser` fed a byte stream in arbitrary chunks.
//!
//! Input: one byte that selects the [`ReplyLimits`] (zero selects the
//! defaults), then the server's bytes in chunks.

use mxsend_proto::{Reply, ReplyError, ReplyLimits, ReplyParser};

use super::Script;

/// Checks the parser on one input.
///
/// # Panics
///
/// - A reply breaks the limits or the reply syntax.
/// - [`ReplyParser::buffered_len`] exceeds what the limits allow.
/// - A later call does not return the same error.
/// - Feeding the stream in chunks gives other replies or another error than
///   feeding it in one piece.
pub fn check(input: &[u8]) {
    let mut script = Script::new(input);
    let limits = limits_for(script.next_byte().unwrap_or(0));
    let chunks = script.into_chunks();

    let in_chunks = parse_chunks(limits, &chunks);
    let in_one_piece = parse_chunks(limits, &[chunks.concat()]);
    assert_eq!(
        in_chunks, in_one_piece,
        "the chunk boundaries changed the parse"
    );
}

/// Maps a configuration byte to limits: bits 0-1 pick the line length, bits
/// 2-3 the line count and bits 4-5 the reply size. Zero gives the defaults,
/// and the small values make every limit reachable within a short input.
pub fn limits_for(config: u8) -> ReplyLimits {
    let pick = |shift: u8| usize::from((config >> shift) & 3);
    ReplyLimits {
        max_line_length: [4096, 512, 16, 4][pick(0)],
        max_lines: [1000, 50, 3, 1][pick(2)],
        max_reply_size: [64 * 1024, 4096, 100, 10][pick(4)],
    }
}

/// The replies parsed from a stream and the error that stopped it, if any.
#[derive(Debug, PartialEq)]
struct Parsed {
    replies: Vec<Reply>,
    error: Option<ReplyError>,
}

fn parse_chunks(limits: ReplyLimits, chunks: &[Vec<u8>]) -> Parsed {
    let mut parser = ReplyParser::new(limits);
    let mut replies = Vec::new();
    let mut pushed = 0;
    for chunk in chunks {
        parser.push(chunk);
        pushed += chunk.len();
        loop {
            match parser.next_reply() {
                Ok(Some(reply)) => {
                    check_reply(&reply, limits);
                    replies.push(reply);
                }
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(
                        parser.next_reply(),
                        Err(error.clone()),
                        "the parser did not repeat its error"
                    );
                    return Parsed {
                        replies,
                        error: Some(error),
                    };
                }
            }
        }
        check_buffered(&parser, limits, pushed);
    }
    Parsed {
        replies,
        error: None,
    }
}

/// Checks the buffered octets once the parser has asked for more input: at
/// most one incomplete line (its line ending may be a CR still waiting for
/// the LF) plus the complete lines of an unfinished reply.
fn check_buffered(parser: &ReplyParser, limits: ReplyLimits, pushed: usize) {
    let buffered = parser.buffered_len();
    let bound = limits.max_line_length + 1 + limits.max_reply_size;
    assert!(
        buffered <= bound,
        "buffered_len {buffered} is over {bound}, the bound for {limits:?}"
    );
    assert!(
        buffered <= pushed,
        "buffered_len {buffered} is over the {pushed} octets pushed"
    );
}

fn check_reply(reply: &Reply, limits: ReplyLimits) {
    let code = reply.code();
    assert!(
        (200..=599).contains(&code),
        "reply code {code} is outside 200..=599"
    );
    let lines = reply.lines();
    let raw = reply.raw_lines();
    assert!(!lines.is_empty(), "reply {code} has no lines");
    assert_eq!(
        lines.len(),
        raw.len(),
        "lines and raw lines differ in count"
    );
    assert!(
        lines.len() <= limits.max_lines,
        "reply has {} lines, over the limit of {}",
        lines.len(),
        limits.max_lines
    );

    let code_text = code.to_string();
    for line in raw {
        assert!(
            line.starts_with(&code_text),
            "raw line {line:?} does not start with the code {code}"
        );
        assert!(!line.contains('\n'), "raw line {line:?} contains LF");
        // Lossy decoding turns each invalid sequence into one U+FFFD, so a
        // line has at most as many chars as it had octets.
        assert!(
            line.chars().count() <= limits.max_line_length,
            "raw line {line:?} is over the limit of {} octets",
            limits.max_line_length
        );
    }

    if let Some(enhanced) = reply.enhanced() {
        assert_eq!(
            u16::from(enhanced.class),
            code / 100,
            "enhanced code {enhanced} does not match the class of reply {code}"
        );
    }
    let classes = [
        reply.is_positive(),
        reply.is_intermediate(),
        reply.is_transient(),
        reply.is_permanent(),
    ];
    assert_eq!(
        classes.iter().filter(|&&class| class).count(),
        1,
        "reply {code} is not in exactly one class"
    );
    assert!(reply.to_string().starts_with(&code_text));
}
