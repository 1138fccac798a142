//! Tests of the SMTP DATA encoder, scanner and decoder through the public API.

use mxsend_proto::data::{
    ContentScan, DataEncoder, DataError, DataPolicy, DecodeError, LongLines, decode,
};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn fold_policy(max_line_length: usize) -> DataPolicy {
    DataPolicy {
        max_line_length,
        long_lines: LongLines::Fold,
    }
}

fn reject_policy(max_line_length: usize) -> DataPolicy {
    DataPolicy {
        max_line_length,
        long_lines: LongLines::Reject,
    }
}

/// Encodes `chunks` in order and finishes, returning the whole wire form.
fn encode_chunks(policy: DataPolicy, chunks: &[&[u8]]) -> Result<Vec<u8>, DataError> {
    let mut encoder = DataEncoder::new(policy);
    let mut out = Vec::new();
    for chunk in chunks {
        encoder.encode(chunk, &mut out)?;
    }
    encoder.finish(&mut out)?;
    Ok(out)
}

fn encode_default(input: &[u8]) -> Vec<u8> {
    encode_chunks(DataPolicy::default(), &[input]).expect("encoding failed")
}

/// Splits `input` at `cuts`, each taken modulo `input.len() + 1`. Repeated cut
/// positions give empty chunks, which the encoder must accept.
fn split_at_cuts<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut positions: Vec<usize> = cuts.iter().map(|cut| cut % (input.len() + 1)).collect();
    positions.sort_unstable();

    let mut chunks = Vec::new();
    let mut start = 0;
    for position in positions {
        chunks.push(&input[start..position]);
        start = position;
    }
    chunks.push(&input[start..]);
    chunks
}

/// Splits content into lines the way the encoder defines them: CRLF, bare LF and
/// bare CR each end a line, and a non-empty tail is a last, unterminated line.
fn input_lines(input: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut line = Vec::new();
    let mut index = 0;
    while index < input.len() {
        match input[index] {
            b'\r' => {
                lines.push(std::mem::take(&mut line));
                if input.get(index + 1) == Some(&b'\n') {
                    index += 1;
                }
            }
            b'\n' => lines.push(std::mem::take(&mut line)),
            byte => line.push(byte),
        }
        index += 1;
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Content with every line break written as CRLF and a CRLF added after an
/// unterminated last line.
fn normalise(input: &[u8]) -> Vec<u8> {
    let mut normalised = Vec::new();
    for line in input_lines(input) {
        normalised.extend_from_slice(&line);
        normalised.extend_from_slice(b"\r\n");
    }
    normalised
}

/// Splits one line into folded pieces: `limit` octets first, then SP plus at
/// most `limit - 1` octets for each continuation.
fn fold_line(line: &[u8], limit: usize) -> Vec<Vec<u8>> {
    let first = line.len().min(limit);
    let mut pieces = vec![line[..first].to_vec()];
    for rest in line[first..].chunks(limit - 1) {
        let mut piece = vec![b' '];
        piece.extend_from_slice(rest);
        pieces.push(piece);
    }
    pieces
}

/// Wire lines, without CRLF and before dot-stuffing, for `input` under `policy`.
/// Returns the 1-based number of the first line over the limit under Reject.
fn expected_wire_lines(input: &[u8], policy: DataPolicy) -> Result<Vec<Vec<u8>>, u64> {
    let limit = policy.max_line_length;
    let mut wire_lines = Vec::new();
    for (index, line) in input_lines(input).into_iter().enumerate() {
        match policy.long_lines {
            LongLines::Reject if line.len() > limit => return Err(index as u64 + 1),
            LongLines::Fold => wire_lines.extend(fold_line(&line, limit)),
            _ => wire_lines.push(line),
        }
    }
    Ok(wire_lines)
}

/// Slow model of the whole wire form, one line at a time.
fn expected_wire(input: &[u8], policy: DataPolicy) -> Result<Vec<u8>, u64> {
    let mut wire = Vec::new();
    for line in expected_wire_lines(input, policy)? {
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(&line);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    Ok(wire)
}

/// Returns the first offset of a CR not followed by LF or an LF not preceded by CR.
fn find_bare_cr_or_lf(wire: &[u8]) -> Option<usize> {
    (0..wire.len()).find(|&index| match wire[index] {
        b'\r' => wire.get(index + 1) != Some(&b'\n'),
        b'\n' => index == 0 || wire[index - 1] != b'\r',
        _ => false,
    })
}

/// Offsets of every `\r\n.\r\n` in `wire`.
fn end_marker_offsets(wire: &[u8]) -> Vec<usize> {
    wire.windows(5)
        .enumerate()
        .filter(|(_, window)| *window == b"\r\n.\r\n")
        .map(|(offset, _)| offset)
        .collect()
}

// ---------------------------------------------------------------------------
// Line breaks
// ---------------------------------------------------------------------------

#[test]
fn lf_input_becomes_crlf() {
    assert_eq!(encode_default(b"a\nb\n"), b"a\r\nb\r\n.\r\n");
}

#[test]
fn crlf_input_stays_crlf() {
    assert_eq!(encode_default(b"a\r\nb\r\n"), b"a\r\nb\r\n.\r\n");
}

#[test]
fn mixed_line_endings_become_crlf() {
    assert_eq!(
        encode_default(b"a\nb\r\nc\rd\n\ne"),
        b"a\r\nb\r\nc\r\nd\r\n\r\ne\r\n.\r\n"
    );
}

#[test]
fn bare_cr_in_middle_is_line_break() {
    assert_eq!(encode_default(b"one\rtwo\n"), b"one\r\ntwo\r\n.\r\n");
}

#[test]
fn bare_cr_at_end_is_line_break() {
    assert_eq!(encode_default(b"one\r"), b"one\r\n.\r\n");
}

#[test]
fn consecutive_crs_are_separate_breaks() {
    assert_eq!(encode_default(b"a\r\r\nb"), b"a\r\n\r\nb\r\n.\r\n");
}

#[test]
fn cr_lf_split_across_chunks_is_one_break() {
    let out = encode_chunks(DataPolicy::default(), &[b"one\r", b"\ntwo\n"]).unwrap();
    assert_eq!(out, b"one\r\ntwo\r\n.\r\n");
}

#[test]
fn cr_lf_split_by_empty_chunk_is_one_break() {
    let out = encode_chunks(DataPolicy::default(), &[b"one\r", b"", b"\ntwo"]).unwrap();
    assert_eq!(out, b"one\r\ntwo\r\n.\r\n");
}

#[test]
fn cr_at_chunk_end_then_text_is_bare_cr() {
    let out = encode_chunks(DataPolicy::default(), &[b"one\r", b"two"]).unwrap();
    assert_eq!(out, b"one\r\ntwo\r\n.\r\n");
}

#[test]
fn cr_at_chunk_end_then_cr_is_two_breaks() {
    let out = encode_chunks(DataPolicy::default(), &[b"one\r", b"\rtwo"]).unwrap();
    assert_eq!(out, b"one\r\n\r\ntwo\r\n.\r\n");
}

#[test]
fn cr_written_before_next_chunk_arrives() {
    let mut encoder = DataEncoder::new(DataPolicy::default());
    let mut out = Vec::new();
    encoder.encode(b"one\r", &mut out).unwrap();
    assert_eq!(out, b"one\r\n");

    encoder.encode(b"\n", &mut out).unwrap();
    assert_eq!(out, b"one\r\n");
}

// ---------------------------------------------------------------------------
// Dot-stuffing
// ---------------------------------------------------------------------------

#[test]
fn dot_line_in_middle_is_stuffed() {
    assert_eq!(
        encode_default(b"hello\n.\nworld"),
        b"hello\r\n..\r\nworld\r\n.\r\n"
    );
}

#[test]
fn dot_first_line_is_stuffed() {
    assert_eq!(encode_default(b".test"), b"..test\r\n.\r\n");
}

#[test]
fn leading_dots_get_one_more() {
    assert_eq!(encode_default(b"..x\n...\n"), b"...x\r\n....\r\n.\r\n");
}

#[test]
fn dot_inside_line_is_not_stuffed() {
    assert_eq!(encode_default(b"a.b\n a.\n"), b"a.b\r\n a.\r\n.\r\n");
}

#[test]
fn dot_after_bare_cr_is_stuffed() {
    assert_eq!(encode_default(b"a\r.\r.b"), b"a\r\n..\r\n..b\r\n.\r\n");
}

#[test]
fn dot_at_chunk_start_is_stuffed() {
    let out = encode_chunks(DataPolicy::default(), &[b"hello\n", b".\nworld"]).unwrap();
    assert_eq!(out, b"hello\r\n..\r\nworld\r\n.\r\n");
}

#[test]
fn dot_after_split_cr_lf_is_stuffed() {
    let out = encode_chunks(DataPolicy::default(), &[b"hello\r", b"\n.x"]).unwrap();
    assert_eq!(out, b"hello\r\n..x\r\n.\r\n");
}

#[test]
fn dot_mid_line_at_chunk_start_not_stuffed() {
    let out = encode_chunks(DataPolicy::default(), &[b"a", b".b"]).unwrap();
    assert_eq!(out, b"a.b\r\n.\r\n");
}

const SAMPLE: &[u8] = b".first\r\nsecond\n.\n..\r\r\nthird.\rfourth\r\n.\r\nlast line.";

#[test]
fn one_byte_chunks_equal_one_shot() {
    let one_shot = encode_default(SAMPLE);
    let chunks: Vec<&[u8]> = SAMPLE.chunks(1).collect();

    let out = encode_chunks(DataPolicy::default(), &chunks).unwrap();

    assert_eq!(out, one_shot);
}

#[test]
fn every_split_point_equals_one_shot() {
    let one_shot = encode_default(SAMPLE);
    for split in 0..=SAMPLE.len() {
        let (head, tail) = SAMPLE.split_at(split);

        let out = encode_chunks(DataPolicy::default(), &[head, tail]).unwrap();

        assert_eq!(out, one_shot, "split at {split}");
    }
}

#[test]
fn sample_wire_form_is_exact() {
    assert_eq!(
        encode_default(SAMPLE),
        b"..first\r\nsecond\r\n..\r\n...\r\n\r\nthird.\r\nfourth\r\n..\r\nlast line.\r\n.\r\n"
    );
}

// ---------------------------------------------------------------------------
// End of data
// ---------------------------------------------------------------------------

#[test]
fn content_without_final_newline_gets_crlf() {
    assert_eq!(encode_default(b"no newline"), b"no newline\r\n.\r\n");
}

#[test]
fn content_with_final_newline_gets_no_extra_line() {
    assert_eq!(encode_default(b"line\n"), b"line\r\n.\r\n");
}

#[test]
fn empty_content_gives_only_marker() {
    assert_eq!(encode_default(b""), b".\r\n");
    assert_eq!(encode_chunks(DataPolicy::default(), &[]).unwrap(), b".\r\n");
}

#[test]
fn single_newline_is_one_empty_line() {
    assert_eq!(encode_default(b"\n"), b"\r\n.\r\n");
}

#[test]
fn finish_twice_writes_marker_once() {
    let mut encoder = DataEncoder::new(DataPolicy::default());
    let mut out = Vec::new();
    encoder.encode(b"x", &mut out).unwrap();
    encoder.finish(&mut out).unwrap();

    encoder.finish(&mut out).unwrap();

    assert_eq!(out, b"x\r\n.\r\n");
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "encode called after finish")]
fn encode_after_finish_panics_in_debug() {
    let mut encoder = DataEncoder::new(DataPolicy::default());
    let mut out = Vec::new();
    encoder.finish(&mut out).unwrap();

    let _ = encoder.encode(b"late", &mut out);
}

#[cfg(not(debug_assertions))]
#[test]
fn encode_after_finish_ignored_in_release() {
    let mut encoder = DataEncoder::new(DataPolicy::default());
    let mut out = Vec::new();
    encoder.finish(&mut out).unwrap();

    assert_eq!(encoder.encode(b"late", &mut out), Ok(()));
    assert_eq!(out, b".\r\n");
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

#[test]
fn counters_track_input() {
    let mut encoder = DataEncoder::new(DataPolicy::default());
    let mut out = Vec::new();
    assert_eq!(encoder.lines(), 0);

    encoder.encode(b"a\r", &mut out).unwrap();
    assert_eq!(encoder.input_len(), 2);
    assert_eq!(encoder.lines(), 1);

    encoder.encode(b"\nb", &mut out).unwrap();
    assert_eq!(encoder.input_len(), 4);
    assert_eq!(encoder.lines(), 2);

    encoder.finish(&mut out).unwrap();
    assert_eq!(encoder.input_len(), 4);
    assert_eq!(encoder.lines(), 2);
}

#[test]
fn lines_counts_empty_lines() {
    let mut encoder = DataEncoder::new(DataPolicy::default());
    let mut out = Vec::new();

    encoder.encode(b"\n\r\n\r", &mut out).unwrap();

    assert_eq!(encoder.lines(), 3);
}

#[test]
fn lines_ignores_folds() {
    let mut encoder = DataEncoder::new(fold_policy(4));
    let mut out = Vec::new();

    encoder.encode(b"0123456789\nab", &mut out).unwrap();

    assert_eq!(encoder.lines(), 2);
}

// ---------------------------------------------------------------------------
// Line length
// ---------------------------------------------------------------------------

#[test]
fn line_of_998_octets_accepted() {
    let mut input = vec![b'x'; 998];
    input.extend_from_slice(b"\nend");

    let out = encode_default(&input);

    assert_eq!(&out[..1000], &[&[b'x'; 998][..], b"\r\n"].concat()[..]);
}

#[test]
fn line_of_999_octets_rejected() {
    let mut input = b"first\nsecond\n".to_vec();
    input.extend_from_slice(&[b'x'; 999]);
    input.extend_from_slice(b"\nend");

    let error = encode_chunks(DataPolicy::default(), &[&input]).unwrap_err();

    assert_eq!(
        error,
        DataError::LineTooLong {
            line: 3,
            length_at_least: 999,
            limit: 998
        }
    );
}

#[test]
fn line_too_long_message_names_line() {
    let error = DataError::LineTooLong {
        line: 3,
        length_at_least: 999,
        limit: 998,
    };

    let message = error.to_string();

    assert!(message.contains("line 3 "), "{message}");
    assert!(message.contains("999"), "{message}");
    assert!(message.contains("998"), "{message}");
}

#[test]
fn stuffed_dot_not_counted_in_length() {
    let mut input = vec![b'.'];
    input.extend_from_slice(&[b'x'; 997]);

    let out = encode_default(&input);

    assert_eq!(out.len(), 999 + 2 + 3);
    assert_eq!(&out[..2], b"..");
}

#[test]
fn long_line_across_chunks_rejected() {
    let mut encoder = DataEncoder::new(reject_policy(10));
    let mut out = Vec::new();
    encoder.encode(b"ok\n123456", &mut out).unwrap();
    let out_before = out.clone();

    let error = encoder.encode(b"78901\nmore", &mut out).unwrap_err();

    assert_eq!(
        error,
        DataError::LineTooLong {
            line: 2,
            length_at_least: 11,
            limit: 10
        }
    );
    assert_eq!(out, out_before);
    assert_eq!(encoder.input_len(), 9);
    assert_eq!(encoder.lines(), 2);
}

#[test]
fn failed_encoder_repeats_error() {
    let mut encoder = DataEncoder::new(reject_policy(3));
    let mut out = Vec::new();
    let error = encoder.encode(b"abcd", &mut out).unwrap_err();

    assert_eq!(encoder.encode(b"x\n", &mut out), Err(error.clone()));
    assert_eq!(encoder.finish(&mut out), Err(error));
    assert!(out.is_empty());
}

#[test]
fn line_of_999_octets_folded() {
    let input = [b'x'; 999];

    let out = encode_chunks(fold_policy(998), &[&input]).unwrap();

    let mut expected = vec![b'x'; 998];
    expected.extend_from_slice(b"\r\n x\r\n.\r\n");
    assert_eq!(out, expected);
}

#[test]
fn line_of_998_octets_not_folded() {
    let input = [b'x'; 998];

    let out = encode_chunks(fold_policy(998), &[&input, b"\n"]).unwrap();

    let mut expected = vec![b'x'; 998];
    expected.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(out, expected);
}

#[test]
fn fold_continuations_count_space() {
    let out = encode_chunks(fold_policy(3), &[b"abcdefgh\nxyz"]).unwrap();

    assert_eq!(out, b"abc\r\n de\r\n fg\r\n h\r\nxyz\r\n.\r\n");
}

#[test]
fn fold_across_chunks_equals_one_shot() {
    let one_shot = encode_chunks(fold_policy(3), &[b".bcdefgh"]).unwrap();

    let chunked = encode_chunks(fold_policy(3), &[b".b", b"cd", b"", b"efgh"]).unwrap();

    assert_eq!(one_shot, b"..bc\r\n de\r\n fg\r\n h\r\n.\r\n");
    assert_eq!(chunked, one_shot);
}

#[test]
#[should_panic(expected = "max_line_length >= 2")]
fn fold_with_limit_one_panics() {
    let _ = DataEncoder::new(fold_policy(1));
}

#[test]
fn reject_with_limit_zero_allows_empty_lines() {
    assert_eq!(
        encode_chunks(reject_policy(0), &[b"\n\n"]).unwrap(),
        b"\r\n\r\n.\r\n"
    );
    assert!(encode_chunks(reject_policy(0), &[b"\nx"]).is_err());
}

#[test]
fn default_policy_is_998_and_reject() {
    let policy = DataPolicy::default();

    assert_eq!(policy.max_line_length, 998);
    assert_eq!(policy.long_lines, LongLines::Reject);
}

// ---------------------------------------------------------------------------
// ContentScan
// ---------------------------------------------------------------------------

#[test]
fn scan_of_empty_content() {
    let scan = ContentScan::new();

    assert_eq!(scan.wire_size(), 0);
    assert_eq!(scan.longest_line(), 0);
    assert!(!scan.has_8bit());
}

#[test]
fn scan_figures_for_sample() {
    let mut scan = ContentScan::new();

    scan.update(SAMPLE);

    let wire = encode_default(SAMPLE);
    assert_eq!(scan.wire_size(), wire.len() as u64 - 3);
    assert_eq!(scan.longest_line(), "last line.".len());
    assert!(!scan.has_8bit());
}

#[test]
fn scan_counts_crlf_and_stuffing() {
    let mut scan = ContentScan::new();

    scan.update(b".a\nbc");

    // "..a\r\n" plus "bc\r\n" for the unterminated last line.
    assert_eq!(scan.wire_size(), 9);
    assert_eq!(scan.longest_line(), 2);
}

#[test]
fn scan_split_cr_lf_is_one_break() {
    let mut scan = ContentScan::new();

    scan.update(b"ab\r");
    assert_eq!(scan.wire_size(), 4);
    scan.update(b"\n");

    assert_eq!(scan.wire_size(), 4);
}

#[test]
fn scan_finds_8bit_octet() {
    let mut scan = ContentScan::new();
    scan.update(b"plain ascii\n");
    assert!(!scan.has_8bit());

    scan.update("caf\u{e9}\n".as_bytes());

    assert!(scan.has_8bit());
}

#[test]
fn scan_longest_line_spans_chunks() {
    let mut scan = ContentScan::new();

    scan.update(b"abc\n12");
    scan.update(b"3456\nxy");

    assert_eq!(scan.longest_line(), 6);
}

// ---------------------------------------------------------------------------
// decode
// ---------------------------------------------------------------------------

#[test]
fn decode_unstuffs_dots() {
    assert_eq!(
        decode(b"..\r\n...x\r\na.\r\n.\r\n").unwrap(),
        b".\r\n..x\r\na.\r\n"
    );
}

#[test]
fn decode_marker_only_is_empty() {
    assert_eq!(decode(b".\r\n").unwrap(), b"");
}

#[test]
fn decode_rejects_early_marker() {
    assert_eq!(
        decode(b"a\r\n.\r\nb\r\n.\r\n"),
        Err(DecodeError::EarlyEndOfData { offset: 3 })
    );
}

#[test]
fn decode_rejects_marker_as_first_line() {
    assert_eq!(
        decode(b".\r\nb\r\n.\r\n"),
        Err(DecodeError::EarlyEndOfData { offset: 0 })
    );
}

#[test]
fn decode_rejects_bare_lf() {
    assert_eq!(
        decode(b"a\nb\r\n.\r\n"),
        Err(DecodeError::BareLf { offset: 1 })
    );
    assert_eq!(decode(b"a\r\n.\n"), Err(DecodeError::BareLf { offset: 4 }));
}

#[test]
fn decode_rejects_bare_cr() {
    assert_eq!(
        decode(b"a\rb\r\n.\r\n"),
        Err(DecodeError::BareCr { offset: 1 })
    );
}

#[test]
fn decode_rejects_missing_marker() {
    assert_eq!(decode(b"a\r\n"), Err(DecodeError::MissingEndOfData));
    assert_eq!(decode(b""), Err(DecodeError::MissingEndOfData));
    assert_eq!(decode(b"a.\r\n"), Err(DecodeError::MissingEndOfData));
    assert_eq!(decode(b"a\r\n..\r\n"), Err(DecodeError::MissingEndOfData));
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// Arbitrary octets, or octets drawn mostly from the ones the encoder treats
/// specially, so that line breaks and dots at line starts are frequent.
fn content() -> impl Strategy<Value = Vec<u8>> {
    let special = prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(b'.'),
        Just(b'a'),
        Just(b' '),
        Just(0xE9u8),
    ];
    prop_oneof![vec(any::<u8>(), 0..300), vec(special, 0..300)]
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    vec(any::<usize>(), 0..8)
}

/// A limit no line of `content()` reaches.
const NO_LIMIT: usize = 1000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunked_equals_one_shot(input in content(), cuts in cuts(), limit in 2usize..12) {
        for policy in [reject_policy(NO_LIMIT), fold_policy(limit)] {
            let one_shot = encode_chunks(policy, &[&input]).unwrap();

            let chunked = encode_chunks(policy, &split_at_cuts(&input, &cuts)).unwrap();

            prop_assert_eq!(chunked, one_shot);
        }
    }

    #[test]
    fn decode_returns_normalised_input(input in content(), cuts in cuts()) {
        let wire = encode_chunks(reject_policy(NO_LIMIT), &split_at_cuts(&input, &cuts)).unwrap();

        prop_assert_eq!(decode(&wire).unwrap(), normalise(&input));
    }

    #[test]
    fn decode_returns_folded_lines(input in content(), cuts in cuts(), limit in 2usize..12) {
        let wire = encode_chunks(fold_policy(limit), &split_at_cuts(&input, &cuts)).unwrap();

        let expected: Vec<u8> = expected_wire_lines(&input, fold_policy(limit))
            .unwrap()
            .into_iter()
            .flat_map(|line| [line, b"\r\n".to_vec()].concat())
            .collect();
        prop_assert_eq!(decode(&wire).unwrap(), expected);
    }

    #[test]
    fn output_matches_line_model(input in content(), cuts in cuts(), limit in 2usize..40) {
        for policy in [reject_policy(limit), fold_policy(limit)] {
            let encoded = encode_chunks(policy, &split_at_cuts(&input, &cuts));

            match (encoded, expected_wire(&input, policy)) {
                (Ok(wire), Ok(expected)) => prop_assert_eq!(wire, expected),
                (Err(DataError::LineTooLong { line, .. }), Err(expected_line)) => {
                    prop_assert_eq!(line, expected_line);
                }
                (encoded, expected) => {
                    prop_assert!(false, "encoder gave {:?}, model gave {:?}", encoded, expected);
                }
            }
        }
    }

    #[test]
    fn wire_has_no_bare_cr_or_lf(input in content(), cuts in cuts(), limit in 2usize..12) {
        for policy in [reject_policy(NO_LIMIT), fold_policy(limit)] {
            let wire = encode_chunks(policy, &split_at_cuts(&input, &cuts)).unwrap();

            prop_assert_eq!(find_bare_cr_or_lf(&wire), None);
        }
    }

    #[test]
    fn end_marker_only_at_end(input in content(), cuts in cuts(), limit in 2usize..12) {
        for policy in [reject_policy(NO_LIMIT), fold_policy(limit)] {
            let wire = encode_chunks(policy, &split_at_cuts(&input, &cuts)).unwrap();

            prop_assert!(wire.ends_with(b".\r\n"));
            if wire != b".\r\n" {
                prop_assert_eq!(end_marker_offsets(&wire), vec![wire.len() - 5]);
            }
        }
    }

    #[test]
    fn folded_lines_within_limit(input in content(), cuts in cuts(), limit in 2usize..12) {
        let wire = encode_chunks(fold_policy(limit), &split_at_cuts(&input, &cuts)).unwrap();

        let body = &wire[..wire.len() - 3];
        for line in body.split(|&byte| byte == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let unstuffed = line.strip_prefix(b".").unwrap_or(line);
            prop_assert!(unstuffed.len() <= limit, "line {:?} over {}", line, limit);
        }
    }

    #[test]
    fn reject_fires_iff_line_over_limit(input in content(), cuts in cuts(), limit in 0usize..40) {
        let mut scan = ContentScan::new();
        scan.update(&input);

        let encoded = encode_chunks(reject_policy(limit), &split_at_cuts(&input, &cuts));

        prop_assert_eq!(encoded.is_err(), scan.longest_line() > limit);
        if let Err(DataError::LineTooLong { line, length_at_least, limit: error_limit }) = encoded {
            let lines = input_lines(&input);
            let first_long = lines.iter().position(|line| line.len() > limit).unwrap();
            prop_assert_eq!(line, first_long as u64 + 1);
            prop_assert!(length_at_least > limit);
            prop_assert!(length_at_least <= lines[first_long].len());
            prop_assert_eq!(error_limit, limit);
        }
    }

    #[test]
    fn scan_matches_encoder(input in content(), cuts in cuts()) {
        let mut scan = ContentScan::new();
        for chunk in split_at_cuts(&input, &cuts) {
            scan.update(chunk);
        }

        let wire = encode_chunks(reject_policy(NO_LIMIT), &[&input]).unwrap();

        prop_assert_eq!(scan.wire_size(), wire.len() as u64 - 3);
        prop_assert_eq!(scan.has_8bit(), input.iter().any(|&byte| byte >= 0x80));
        let longest = input_lines(&input).iter().map(Vec::len).max().unwrap_or(0);
        prop_assert_eq!(scan.longest_line(), longest);
    }

    #[test]
    fn counters_match_input(input in content(), cuts in cuts(), limit in 2usize..12) {
        let mut encoder = DataEncoder::new(fold_policy(limit));
        let mut out = Vec::new();
        for chunk in split_at_cuts(&input, &cuts) {
            encoder.encode(chunk, &mut out).unwrap();
        }
        encoder.finish(&mut out).unwrap();

        prop_assert_eq!(encoder.input_len(), input.len() as u64);
        prop_assert_eq!(encoder.lines(), input_lines(&input).len() as u64);
    }

    #[test]
    fn decode_never_panics(wire in vec(any::<u8>(), 0..100)) {
        let _ = decode(&wire);
    }
}

/// BDAT (RFC 3030) carries the length of each chunk, so its encoder keeps
/// the CRLF rules but adds no stuffing dot and no end-of-data line.
#[test]
fn bdat_encoder_has_no_dots_and_no_marker() {
    let mut encoder = DataEncoder::for_bdat(DataPolicy::default());
    let mut wire = Vec::new();
    encoder.encode(b".first\n.\nlast", &mut wire).unwrap();
    encoder.finish(&mut wire).unwrap();
    assert_eq!(wire, b".first\r\n.\r\nlast\r\n");
}

/// The SIZE= value counts CRLF line breaks but no stuffing dots (RFC 1870
/// section 3), and equals what the BDAT encoder sends.
#[test]
fn message_size_excludes_stuffing_dots() {
    let content = b".first\n.\nlast";
    let mut scan = ContentScan::new();
    scan.update(content);
    assert_eq!(scan.wire_size(), 19);
    assert_eq!(scan.message_size(), 17);

    let mut encoder = DataEncoder::for_bdat(DataPolicy::default());
    let mut wire = Vec::new();
    encoder.encode(content, &mut wire).unwrap();
    encoder.finish(&mut wire).unwrap();
    assert_eq!(wire.len() as u64, scan.message_size());
}

/// 8-bit octets before the first empty line are in the header section.
#[test]
fn header_8bit_found_only_in_header_section() {
    let mut header = ContentScan::new();
    header.update("Subject: Grüße\n\nbody\n".as_bytes());
    assert!(header.has_8bit());
    assert!(header.header_has_8bit());

    let mut body = ContentScan::new();
    body.update("Subject: hello\n\nGrüße\n".as_bytes());
    assert!(body.has_8bit());
    assert!(!body.header_has_8bit());
}
