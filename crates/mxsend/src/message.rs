//! A message to send: its envelope and its content.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use mxsend_proto::Address;
use mxsend_proto::data::{ContentScan, DataEncoder, DataError, DataPolicy};
use mxsend_proto::dsn::DsnRequest;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of the chunks in which content is read, scanned and sent.
pub(crate) const CHUNK_SIZE: usize = 64 * 1024;

/// Where the content comes from. Content is read again for each attempt, so
/// it never has to fit in memory when it comes from a file.
#[derive(Debug, Clone)]
pub enum Content {
    /// Bytes in memory.
    Memory(Arc<[u8]>),
    /// A file, read in chunks.
    File(PathBuf),
}

/// A stream of content bytes.
pub type ContentReader = Pin<Box<dyn AsyncRead + Send>>;

impl Content {
    /// Opens the content for reading from the start.
    ///
    /// # Errors
    ///
    /// The I/O error of opening the file.
    pub async fn open(&self) -> std::io::Result<ContentReader> {
        match self {
            Content::Memory(bytes) => Ok(Box::pin(std::io::Cursor::new(Arc::clone(bytes)))),
            Content::File(path) => Ok(Box::pin(tokio::fs::File::open(path).await?)),
        }
    }
}

/// Why a message cannot be sent as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The message has no recipient.
    #[error("message has no recipients")]
    NoRecipients,
    /// A line is too long for SMTP.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The content could not be read.
    #[error("cannot read message content from {path}")]
    Read {
        /// The file, or `memory`.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A message with its envelope, checked and measured before sending.
#[derive(Debug, Clone)]
pub struct Message {
    sender: Option<Address>,
    recipients: Vec<Address>,
    content: Content,
    size: u64,
    eight_bit: bool,
    utf8_headers: bool,
    binary: bool,
    dsn: DsnRequest,
}

/// Form of the content, which decides how it is checked and sent.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// Text whose lines follow `DataPolicy`, sent with line breaks made CRLF.
    Text(DataPolicy),
    /// Binary MIME, sent octet for octet (RFC 3030 section 3).
    Binary,
}

impl Message {
    /// Builds a message from content in memory.
    ///
    /// # Errors
    ///
    /// [`MessageError::NoRecipients`], or [`MessageError::Data`] when a line
    /// is longer than `policy` allows.
    pub async fn from_bytes(
        sender: Option<Address>,
        recipients: Vec<Address>,
        content: impl Into<Arc<[u8]>>,
        policy: DataPolicy,
    ) -> Result<Message, MessageError> {
        let content = Content::Memory(content.into());
        Message::new(sender, recipients, content, Form::Text(policy)).await
    }

    /// Builds a message whose content is read from `path` at each attempt.
    ///
    /// # Errors
    ///
    /// As [`Message::from_bytes`], and [`MessageError::Read`] when the file
    /// cannot be read.
    pub async fn from_file(
        sender: Option<Address>,
        recipients: Vec<Address>,
        path: &Path,
        policy: DataPolicy,
    ) -> Result<Message, MessageError> {
        let content = Content::File(path.to_owned());
        Message::new(sender, recipients, content, Form::Text(policy)).await
    }

    /// Builds a binary MIME message from content in memory: it goes out
    /// octet for octet, bare CR, bare LF, NUL and lines of any length
    /// included, with `BODY=BINARYMIME` in BDAT chunks (RFC 3030 section
    /// 3). The content must already be a whole message with CRLF line
    /// breaks outside its binary parts, since nothing is converted. A
    /// server without BINARYMIME and CHUNKING gets no transaction: every
    /// recipient is refused with 5.6.3 and the next exchanger is tried.
    ///
    /// # Errors
    ///
    /// [`MessageError::NoRecipients`].
    pub async fn from_binary_bytes(
        sender: Option<Address>,
        recipients: Vec<Address>,
        content: impl Into<Arc<[u8]>>,
    ) -> Result<Message, MessageError> {
        let content = Content::Memory(content.into());
        Message::new(sender, recipients, content, Form::Binary).await
    }

    /// Builds a binary MIME message whose content is read from `path` at
    /// each attempt. See [`Message::from_binary_bytes`].
    ///
    /// # Errors
    ///
    /// As [`Message::from_binary_bytes`], and [`MessageError::Read`] when
    /// the file cannot be read.
    pub async fn from_binary_file(
        sender: Option<Address>,
        recipients: Vec<Address>,
        path: &Path,
    ) -> Result<Message, MessageError> {
        let content = Content::File(path.to_owned());
        Message::new(sender, recipients, content, Form::Binary).await
    }

    async fn new(
        sender: Option<Address>,
        recipients: Vec<Address>,
        content: Content,
        form: Form,
    ) -> Result<Message, MessageError> {
        if recipients.is_empty() {
            return Err(MessageError::NoRecipients);
        }
        let source = match &content {
            Content::Memory(_) => "memory".to_owned(),
            Content::File(path) => path.display().to_string(),
        };
        let read_error = |source_error| MessageError::Read {
            path: source.clone(),
            source: source_error,
        };
        let mut scan = ContentScan::new();
        let mut reader = content.open().await.map_err(read_error)?;
        let mut chunk = vec![0; CHUNK_SIZE];
        let mut octets = 0u64;
        loop {
            let read = reader.read(&mut chunk).await.map_err(read_error)?;
            if read == 0 {
                break;
            }
            octets += read as u64;
            scan.update(&chunk[..read]);
        }
        let size = match form {
            Form::Text(policy) => {
                if scan.longest_line() > policy.max_line_length {
                    find_data_error(&content, policy)
                        .await
                        .map_err(read_error)??;
                }
                scan.message_size()
            }
            // RFC 3030 section 3: binary content is counted as it is.
            Form::Binary => octets,
        };
        Ok(Message {
            sender,
            recipients,
            content,
            size,
            eight_bit: scan.has_8bit(),
            utf8_headers: scan.header_has_8bit(),
            binary: matches!(form, Form::Binary),
            dsn: DsnRequest::default(),
        })
    }

    /// Sets the delivery status notifications to request from servers that
    /// advertise DSN (RFC 3461).
    #[must_use]
    pub fn with_dsn(mut self, dsn: DsnRequest) -> Message {
        self.dsn = dsn;
        self
    }

    /// The delivery status notification request.
    pub fn dsn(&self) -> &DsnRequest {
        &self.dsn
    }

    /// Whether the header section has 8-bit octets, in which case MAIL
    /// requests SMTPUTF8 where the server offers it (RFC 6532).
    pub fn has_utf8_headers(&self) -> bool {
        self.utf8_headers
    }

    /// The reverse path; `None` for the null sender `<>`.
    pub fn sender(&self) -> Option<&Address> {
        self.sender.as_ref()
    }

    /// The recipients in the order given.
    pub fn recipients(&self) -> &[Address] {
        &self.recipients
    }

    /// The content.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The size that `SIZE=` declares (RFC 1870 section 3): line breaks
    /// counted as CRLF, without stuffing dots or the end-of-data line.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the content has octets of 0x80 or above.
    pub fn is_eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// Returns whether the content is binary MIME, sent octet for octet (see
    /// [`Message::from_binary_bytes`]).
    pub fn is_binary(&self) -> bool {
        self.binary
    }
}

/// Encodes the content to find the line that breaks `policy`, for an error
/// that names it.
async fn find_data_error(
    content: &Content,
    policy: DataPolicy,
) -> std::io::Result<Result<(), DataError>> {
    let mut reader = content.open().await?;
    let mut encoder = DataEncoder::new(policy);
    let mut chunk = vec![0; CHUNK_SIZE];
    let mut sink = Vec::with_capacity(CHUNK_SIZE * 2);
    loop {
        let read = reader.read(&mut chunk).await?;
        if read == 0 {
            return Ok(encoder.finish(&mut sink));
        }
        if let Err(error) = encoder.encode(&chunk[..read], &mut sink) {
            return Ok(Err(error));
        }
        sink.clear();
    }
}

/// Returns `content` without a leading mbox separator line (`From sender
/// date`), which is not part of the message, as sendmail and Postfix drop
/// it. A first line of `From` then optional spaces and a colon is a From
/// header field in obsolete syntax (RFC 5322 section 4.5) and stays.
pub fn without_mbox_separator(content: &[u8]) -> &[u8] {
    let Some(rest) = content.strip_prefix(b"From ") else {
        return content;
    };
    let first_other = rest.iter().find(|&&octet| octet != b' ' && octet != b'\t');
    if first_other == Some(&b':') {
        return content;
    }
    match content.iter().position(|&octet| octet == b'\n') {
        Some(end) => &content[end + 1..],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::without_mbox_separator;

    #[test]
    fn mbox_separator_removed() {
        let content =
            b"From alice@example.com Thu Jan  1 00:00:00 2026\nFrom: alice@example.com\n\nbody\n";
        assert_eq!(
            without_mbox_separator(content),
            b"From: alice@example.com\n\nbody\n"
        );
    }

    #[test]
    fn separator_only_at_start() {
        let content = b"From: a@x.test\n\nFrom b\n";
        assert_eq!(without_mbox_separator(content), content);
        assert_eq!(without_mbox_separator(b"From a@x.test"), b"");
    }

    #[test]
    fn obsolete_from_header_kept() {
        for content in [
            &b"From  : John <j@x.test>\r\n\r\nbody\r\n"[..],
            b"From : j@x.test\n\nx\n",
            b"From: j@x.test\n\nx\n",
        ] {
            assert_eq!(without_mbox_separator(content), content);
        }
    }
}
