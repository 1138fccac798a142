//! `DataEncoder` over arbitrary content in arbitrary chunks, checked against
//! the rules of the `mxsend_proto::data` module documentation and against
//! `ContentScan`.
//!
//! Input: one byte that selects the [`DataPolicy`], then the content in
//! chunks. Bit 0 of that byte selects [`LongLines::Fold`] and bits 1-3 the
//! line length limit; zero selects the default policy.

use mxsend_proto::data::{ContentScan, DataEncoder, DataError, DataPolicy, LongLines, decode};

use super::{Script, assert_crlf_only};

/// Checks the encoder on one input.
///
/// # Panics
///
/// - The encoder rejects content whose lines all fit, or accepts a line
///   over the limit with [`LongLines::Reject`].
/// - The wire form has a bare CR or LF, an end-of-data line before the end,
///   or a line over the limit.
/// - [`decode`] of the wire form is not the normalised content (folded, with
///   [`LongLines::Fold`]).
/// - Chunked and one-piece encoding differ, or a counter disagrees.
pub fn check(input: &[u8]) {
    let mut script = Script::new(input);
    let policy = policy_for(script.next_byte().unwrap_or(0));
    let chunks = script.into_chunks();
    let content = chunks.concat();
    let lines = normalised_lines(&content);

    check_scan(&chunks, &content, &lines);

    let first_long_line = lines
        .iter()
        .position(|line| line.len() > policy.max_line_length);
    let wire = match (encode_chunks(policy, &chunks), policy.long_lines) {
        (Ok(wire), LongLines::Reject) => {
            assert_eq!(
                first_long_line, None,
                "the encoder accepted a line over {} octets",
                policy.max_line_length
            );
            wire
        }
        (Ok(wire), LongLines::Fold) => wire,
        (Err(error), LongLines::Reject) => {
            let Some(index) = first_long_line else {
                panic!("the encoder rejected content whose lines all fit: {error}");
            };
            let DataError::LineTooLong {
                line,
                length_at_least,
                limit,
            } = error
            else {
                panic!("unexpected encoder error {error:?}");
            };
            assert_eq!(line, index as u64 + 1, "number of the long line");
            assert_eq!(limit, policy.max_line_length);
            assert!(
                length_at_least > limit,
                "length_at_least is within the limit"
            );
            assert!(
                length_at_least <= lines[index].len(),
                "length_at_least is over the length of the line"
            );
            return;
        }
        (Err(error), LongLines::Fold) => panic!("folding encoder failed: {error}"),
    };

    let expected = match policy.long_lines {
        LongLines::Reject => join_lines(&lines),
        LongLines::Fold => join_lines(&fold_lines(&lines, policy.max_line_length)),
    };
    check_wire(&wire, policy.max_line_length);
    assert_eq!(
        decode(&wire).as_deref(),
        Ok(expected.as_slice()),
        "decode(wire) is not the normalised content"
    );

    let one_piece = encode_chunks(policy, std::slice::from_ref(&content));
    assert_eq!(
        one_piece.as_ref(),
        Ok(&wire),
        "the chunk boundaries changed the wire form"
    );

    if policy.long_lines == LongLines::Reject {
        let mut scan = ContentScan::new();
        for chunk in &chunks {
            scan.update(chunk);
        }
        assert_eq!(
            scan.wire_size(),
            wire.len() as u64 - 3,
            "ContentScan::wire_size differs from the wire form without \".\\r\\n\""
        );
    }
}

/// Maps a configuration byte to a policy. Folding needs a limit of at least
/// 2, so smaller limits are raised to 2 for it.
pub fn policy_for(config: u8) -> DataPolicy {
    let long_lines = if config & 1 == 0 {
        LongLines::Reject
    } else {
        LongLines::Fold
    };
    let mut max_line_length = [998, 0, 1, 2, 3, 8, 76, 1000][usize::from((config >> 1) & 7)];
    if long_lines == LongLines::Fold {
        max_line_length = max_line_length.max(2);
    }
    DataPolicy {
        max_line_length,
        long_lines,
    }
}

/// Encodes the chunks and checks the encoder's counters and its behaviour
/// after an error. Returns the wire form including the end-of-data line.
fn encode_chunks(policy: DataPolicy, chunks: &[Vec<u8>]) -> Result<Vec<u8>, DataError> {
    let mut encoder = DataEncoder::new(policy);
    let mut wire = Vec::new();
    let mut consumed = 0;
    for chunk in chunks {
        let before = wire.clone();
        if let Err(error) = encoder.encode(chunk, &mut wire) {
            assert_eq!(wire, before, "a failed encode changed the output");
            assert_eq!(encoder.input_len(), consumed as u64);
            assert_eq!(encoder.encode(b"x", &mut wire), Err(error.clone()));
            assert_eq!(encoder.finish(&mut wire), Err(error.clone()));
            assert_eq!(wire, before, "a failed encoder wrote more output");
            return Err(error);
        }
        consumed += chunk.len();
        assert_eq!(encoder.input_len(), consumed as u64, "input_len");
    }
    let content = chunks.concat();
    let line_count = normalised_lines(&content).len() as u64;
    assert_eq!(encoder.lines(), line_count, "lines() before finish");
    encoder.finish(&mut wire)?;
    assert_eq!(encoder.lines(), line_count, "lines() after finish");

    let finished = wire.clone();
    assert_eq!(encoder.finish(&mut wire), Ok(()));
    assert_eq!(wire, finished, "a second finish wrote more output");
    Ok(wire)
}

/// Splits content into lines the way the module documentation defines
/// them: LF, CRLF and a bare CR each end a line, and a last line without a
/// line break counts when it is not empty.
fn normalised_lines(content: &[u8]) -> Vec<&[u8]> {
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

/// Folds each line over `limit` octets: the first piece keeps `limit`
/// octets, and each continuation is a SP and at most `limit - 1` octets.
fn fold_lines(lines: &[&[u8]], limit: usize) -> Vec<Vec<u8>> {
    let mut folded = Vec::new();
    for line in lines {
        let first = line.len().min(limit);
        folded.push(line[..first].to_vec());
        for piece in line[first..].chunks(limit - 1) {
            let mut continuation = vec![b' '];
            continuation.extend_from_slice(piece);
            folded.push(continuation);
        }
    }
    folded
}

fn join_lines<L: AsRef<[u8]>>(lines: &[L]) -> Vec<u8> {
    let mut joined = Vec::new();
    for line in lines {
        joined.extend_from_slice(line.as_ref());
        joined.extend_from_slice(b"\r\n");
    }
    joined
}

/// Checks the wire form on its own: CRLF line breaks only, one end-of-data
/// line at the very end, and no line over `limit` octets besides a dot added
/// by dot-stuffing.
fn check_wire(wire: &[u8], limit: usize) {
    assert_crlf_only(wire, "the wire form");
    assert!(wire.ends_with(b"\r\n"), "the wire form ends without CRLF");
    let lines: Vec<&[u8]> = wire[..wire.len() - 2]
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .collect();
    let (last, body) = lines.split_last().expect("at least the end-of-data line");
    assert_eq!(*last, b".", "the wire form does not end with \".\\r\\n\"");
    for (index, line) in body.iter().enumerate() {
        assert_ne!(*line, b".", "end-of-data line at wire line {index}");
        let length = line.len() - usize::from(line.starts_with(b"."));
        assert!(
            length <= limit,
            "wire line {index} has {length} octets, over the limit of {limit}"
        );
    }
}

/// Checks `ContentScan` against the lines of the content, whatever the
/// policy.
fn check_scan(chunks: &[Vec<u8>], content: &[u8], lines: &[&[u8]]) {
    let mut scan = ContentScan::new();
    for chunk in chunks {
        scan.update(chunk);
    }
    let longest = lines.iter().map(|line| line.len()).max().unwrap_or(0);
    assert_eq!(scan.longest_line(), longest, "ContentScan::longest_line");
    assert_eq!(
        scan.has_8bit(),
        content.iter().any(|&byte| byte >= 0x80),
        "ContentScan::has_8bit"
    );
}
