//! Invariant checks over arbitrary input, one module per fuzz target.
//!
//! Every check takes raw fuzz input, panics when an invariant is broken and
//! returns normally otherwise. The checks depend on `mxsend-proto` and std
//! only, so that the regression test in `mxsend-proto` can include this
//! module by path without a dependency on `arbitrary` or `libfuzzer-sys`.
//!
//! # Input format
//!
//! An input is a script of plain bytes with two control bytes, so that a seed
//! file reads almost like the transcript it stands for:
//!
//! - [`SPLIT`] ends the current chunk. The checks feed each chunk in its own
//!   call, which is how they test that segment boundaries change nothing.
//! - [`ESCAPE`] makes the byte after it part of the content, so that
//!   [`SPLIT`], [`ESCAPE`] and the session's action bytes can occur in
//!   content too.
//!
//! Most targets read one configuration byte first (limits or policy); each
//! module documents its own.

pub mod address;
pub mod data;
pub mod ehlo;
pub mod reply_parser;
pub mod session;

/// Control byte that ends the current chunk of content.
pub const SPLIT: u8 = 0x06;

/// Control byte that makes the next byte plain content.
pub const ESCAPE: u8 = 0x07;

/// Reader of the input format described in the module documentation.
#[derive(Debug, Clone)]
pub struct Script<'a> {
    bytes: &'a [u8],
}

impl<'a> Script<'a> {
    /// Creates a reader over one fuzz input.
    pub fn new(bytes: &'a [u8]) -> Self {
        Script { bytes }
    }

    /// Whether the whole input has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Returns the next byte without reading it.
    pub fn peek(&self) -> Option<u8> {
        self.bytes.first().copied()
    }

    /// Reads one byte as is, or returns `None` at the end of the input.
    pub fn next_byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    /// Reads content up to the next [`SPLIT`], which is consumed, or up to
    /// the next unescaped byte for which `is_action` returns true, which is
    /// left for the caller, or to the end of the input.
    pub fn next_chunk(&mut self, is_action: impl Fn(u8) -> bool) -> Vec<u8> {
        let mut chunk = Vec::new();
        while let Some(byte) = self.peek() {
            if is_action(byte) {
                break;
            }
            self.next_byte();
            match byte {
                SPLIT => break,
                ESCAPE => chunk.extend(self.next_byte()),
                _ => chunk.push(byte),
            }
        }
        chunk
    }

    /// Reads the rest of the input as chunks of content. An empty input
    /// gives no chunks, and consecutive [`SPLIT`] bytes give empty chunks.
    pub fn into_chunks(mut self) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        while !self.is_empty() {
            chunks.push(self.next_chunk(|_| false));
        }
        chunks
    }
}

/// Asserts that every CR in `wire` is followed by LF and every LF follows a
/// CR. `what` names the bytes in the panic message.
pub fn assert_crlf_only(wire: &[u8], what: &str) {
    for (offset, &byte) in wire.iter().enumerate() {
        match byte {
            b'\r' => assert_eq!(
                wire.get(offset + 1),
                Some(&b'\n'),
                "bare CR at offset {offset} of {what} {:?}",
                String::from_utf8_lossy(wire)
            ),
            b'\n' => assert!(
                offset > 0 && wire[offset - 1] == b'\r',
                "bare LF at offset {offset} of {what} {:?}",
                String::from_utf8_lossy(wire)
            ),
            _ => {}
        }
    }
}
