//! `mxsend sendmail` and the binary called as `sendmail`: accept a message
//! the way sendmail does, store it durably, then deliver it.
//!
//! The flags are those that cron, git send-email, PHP's mail() and mutt
//! pass. Exit status 0 means the message is on disk in the spool; delivery
//! problems after that reach the sender as a bounce, never as a status.

use std::io::Read;
use std::process::Stdio;

use mail_parser::MessageParser;
use mxsend::proto::Address;
use mxsend::proto::data::{DataEncoder, DataError, DataPolicy};
use mxsend::queue::{NewMessage, QueueRunner, RunMode, now_millis};

use crate::args::ServiceArgs;
use crate::config::{Service, Submission, store_failure};
use crate::exit;
use crate::failure::Failure;
use crate::queue;

const HELP: &str = "\
usage: mxsend sendmail [OPTIONS] [RECIPIENT...] < MESSAGE

Stores the message in the queue, then delivers it. Exit status 0 means the
message is stored; a delivery that fails later sends the sender a bounce.

  -t            also send to the To, Cc and Bcc header addresses; the Bcc
                header is removed
  -i, -oi       a line with a single dot does not end the message (without
                it, such a line ends the message, as in sendmail)
  -f ADDRESS    envelope sender; -f '<>' is the null sender (also -r)
  -F NAME       full name for the From header added when there is none
  -bm           read a message and deliver it (the default)
  -bp           list the queue, like mailq
  -q            deliver every waiting message now
  -v            print the queue id and the delivery results
  -odb, -odi, -odq
                after storing: deliver in a background process, deliver
                before exiting, or leave it to the daemon
  --config FILE configuration file
  --spool DIR   spool folder
Other -o options, -B, -N, -R, -V, -O, -L and -C are accepted and ignored
with a warning, except -oe*, -B 7BIT and -B 8BITMIME, which are ignored
silently.";

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Deliver,
    ListQueue,
    RunQueue,
}

/// The parsed sendmail command line.
#[derive(Debug)]
struct Options {
    mode: Mode,
    read_recipients: bool,
    ignore_dots: bool,
    sender: Option<String>,
    full_name: Option<String>,
    verbose: bool,
    submission: Option<Submission>,
    recipients: Vec<String>,
    service: ServiceArgs,
    warnings: Vec<String>,
    help: bool,
}

/// Runs sendmail mode with the arguments after the program name.
///
/// # Errors
///
/// A [`Failure`]: 64 for bad flags, addresses or no recipient, 75 when the
/// message could not be stored (the caller keeps it and tries again), 78
/// for a configuration error.
pub async fn run(arguments: &[String]) -> Result<u8, Failure> {
    let options = parse(arguments)?;
    if options.help {
        println!("{HELP}");
        return Ok(exit::OK);
    }
    for warning in &options.warnings {
        eprintln!("mxsend: warning: {warning}");
    }
    let service = Service::load(&options.service)?;
    match options.mode {
        Mode::ListQueue => queue::list(&service, false, false),
        Mode::RunQueue => queue::flush(&service, None, false).await,
        Mode::Deliver => submit(&options, &service).await,
    }
}

/// Reads the message, stores it and starts its delivery.
async fn submit(options: &Options, service: &Service) -> Result<u8, Failure> {
    let mut content = Vec::new();
    std::io::stdin()
        .read_to_end(&mut content)
        .map_err(|error| {
            Failure::new(
                exit::TEMPORARY,
                format!("cannot read the message from standard input: {error}"),
            )
        })?;
    if !options.ignore_dots {
        truncate_at_dot_line(&mut content);
    }
    let message = prepare(content, options, service)?;
    let store = service.open_store()?;
    let id = store
        .enqueue(&message, now_millis())
        .map_err(store_failure)?;
    if options.verbose {
        println!("queued as {id}");
    }

    match options.submission.unwrap_or(service.submission) {
        Submission::Queue => {}
        Submission::Inline => {
            let runner = QueueRunner::new(store, service.delivery()?, service.queue.clone());
            let summary = runner
                .run(RunMode::Drain(Some(id.clone())), std::future::pending())
                .await
                .map_err(store_failure)?;
            if options.verbose {
                queue::print_summary(&summary);
            }
        }
        Submission::Background => {
            if let Err(error) = start_background_delivery(service, id.as_str()) {
                eprintln!(
                    "mxsend: warning: message {id} is queued, but the background delivery did \
                     not start ({error}); the daemon or `mxsend queue flush` will deliver it"
                );
            }
        }
    }
    Ok(exit::OK)
}

/// Starts `mxsend queue deliver ID` as a detached process with no
/// standard streams, so that the caller does not wait for it.
fn start_background_delivery(service: &Service, id: &str) -> std::io::Result<()> {
    let program = std::env::current_exe()?;
    let mut command = std::process::Command::new(program);
    command.args(["queue", "deliver", id, "--spool"]);
    command.arg(&service.spool);
    if let Some(file) = &service.file {
        command.arg("--config").arg(file);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command.spawn().map(drop)
}

fn usage(message: String) -> Failure {
    Failure::new(
        exit::USAGE,
        format!("{message}; run `mxsend sendmail --help` for the flags"),
    )
}

fn parse(arguments: &[String]) -> Result<Options, Failure> {
    let mut options = Options {
        mode: Mode::Deliver,
        read_recipients: false,
        ignore_dots: false,
        sender: None,
        full_name: None,
        verbose: false,
        submission: None,
        recipients: Vec::new(),
        service: ServiceArgs::default(),
        warnings: Vec::new(),
        help: false,
    };
    let mut rest = arguments.iter();
    // The value of a flag: the rest of the argument, else the next one.
    let value = |flag: &str, attached: &str, rest: &mut std::slice::Iter<'_, String>| {
        if attached.is_empty() {
            rest.next()
                .cloned()
                .ok_or_else(|| usage(format!("option {flag} needs a value")))
        } else {
            Ok(attached.to_owned())
        }
    };
    while let Some(argument) = rest.next() {
        if argument == "--" {
            options.recipients.extend(rest.by_ref().cloned());
            break;
        }
        if let Some(long) = argument.strip_prefix("--") {
            let (name, attached) = long.split_once('=').unwrap_or((long, ""));
            match name {
                "help" => options.help = true,
                "config" => {
                    options.service.config = Some(value("--config", attached, &mut rest)?.into())
                }
                "spool" => {
                    options.service.spool = Some(value("--spool", attached, &mut rest)?.into())
                }
                _ => return Err(usage(format!("unknown option --{name}"))),
            }
            continue;
        }
        let Some(flag) = argument.strip_prefix('-').filter(|f| !f.is_empty()) else {
            options.recipients.push(argument.clone());
            continue;
        };
        let mut chars = flag.chars();
        let letter = chars.next().map(String::from).unwrap_or_default();
        let attached = chars.as_str();
        match letter.as_str() {
            "t" if attached.is_empty() => options.read_recipients = true,
            "i" if attached.is_empty() => options.ignore_dots = true,
            "v" if attached.is_empty() => options.verbose = true,
            "h" if attached.is_empty() => options.help = true,
            "f" | "r" => options.sender = Some(value("-f", attached, &mut rest)?),
            "F" => options.full_name = Some(value("-F", attached, &mut rest)?),
            "b" => match attached {
                "m" => options.mode = Mode::Deliver,
                "p" => options.mode = Mode::ListQueue,
                other => {
                    return Err(usage(format!(
                        "unsupported mode -b{other}: mxsend supports -bm and -bp"
                    )));
                }
            },
            "q" => {
                options.mode = Mode::RunQueue;
                if !attached.is_empty() {
                    options.warnings.push(format!(
                        "-q{attached}: the interval is ignored and the queue is run once; \
                         use `mxsend daemon` for periodic runs"
                    ));
                }
            }
            "o" => {
                let option = value("-o", attached, &mut rest)?;
                match option.as_str() {
                    "i" => options.ignore_dots = true,
                    "db" | "d" => options.submission = Some(Submission::Background),
                    "di" => options.submission = Some(Submission::Inline),
                    "dq" => options.submission = Some(Submission::Queue),
                    // Error reporting modes: errors are reported by exit
                    // status and bounces whatever the mode.
                    other if other.starts_with('e') => {}
                    other => options
                        .warnings
                        .push(format!("ignoring unknown option -o{other}")),
                }
            }
            // The body type: the content is sent as text, with
            // BODY=8BITMIME when it has 8-bit octets, which is what 7BIT
            // and 8BITMIME ask for. The queue has no binary form.
            "B" => {
                let body = value("-B", attached, &mut rest)?;
                if !(body.eq_ignore_ascii_case("7BIT") || body.eq_ignore_ascii_case("8BITMIME")) {
                    options.warnings.push(format!(
                        "ignoring -B {body}: the queue sends messages as text; use \
                         mxsend send --binarymime for binary MIME"
                    ));
                }
            }
            "N" | "R" | "V" | "L" | "C" | "O" => {
                let ignored = value(&format!("-{letter}"), attached, &mut rest)?;
                options
                    .warnings
                    .push(format!("ignoring option -{letter} {ignored}"));
            }
            _ => return Err(usage(format!("unknown option {argument}"))),
        }
    }
    Ok(options)
}

/// Ends the message at a line holding only a dot, as sendmail does
/// without -i.
fn truncate_at_dot_line(content: &mut Vec<u8>) {
    let mut offset = 0;
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line == b".\n" || line == b".\r\n" || line == b"." {
            content.truncate(offset);
            return;
        }
        offset += line.len();
    }
}

/// Adds `@domain` to an address without one, as sendmail qualifies local
/// names such as `root`.
fn qualify(text: &str, domain: &str) -> String {
    let trimmed = text.trim();
    let bare = trimmed
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(trimmed);
    if bare.contains('@') {
        bare.to_owned()
    } else {
        format!("{bare}@{domain}")
    }
}

fn parse_address(text: &str, origin: &str, domain: &str) -> Result<Address, Failure> {
    Address::parse(&qualify(text, domain))
        .map_err(|error| Failure::new(exit::USAGE, format!("invalid address in {origin}: {error}")))
}

/// Works out the envelope and completes the header section.
fn prepare(content: Vec<u8>, options: &Options, service: &Service) -> Result<NewMessage, Failure> {
    // Checked on the input as given, so that line numbers match it.
    check_line_lengths(&content)?;
    let domain = &service.qualify_domain;
    let content = strip_mbox_separator(content);
    let header_end = header_section_end(&content);
    let parsed = header_end.and_then(|end| MessageParser::default().parse_headers(&content[..end]));
    let from_header = parsed
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_owned);

    let sender = match &options.sender {
        Some(text) if text.trim().is_empty() || text.trim() == "<>" => None,
        Some(text) => Some(parse_address(text, "-f", domain)?),
        None => match &from_header {
            Some(from) => Some(parse_address(from, "From header", domain)?),
            None => Some(parse_address(&login_name(), "the login name", domain)?),
        },
    };

    let mut recipients: Vec<Address> = Vec::new();
    let mut add = |address: Address| {
        if !recipients.contains(&address) {
            recipients.push(address);
        }
    };
    for argument in &options.recipients {
        for part in argument.split(',').filter(|p| !p.trim().is_empty()) {
            add(parse_address(part, "the recipient arguments", domain)?);
        }
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
            for address in field
                .into_iter()
                .flat_map(|a| a.iter())
                .filter_map(|a| a.address())
            {
                add(parse_address(address, &format!("{name} header"), domain)?);
            }
        }
    }
    if recipients.is_empty() {
        return Err(usage(
            "no recipients: give them as arguments, or use -t to read To, Cc and Bcc".to_owned(),
        ));
    }

    let mut content = content;
    if options.read_recipients
        && let Some(end) = header_end
    {
        content = remove_header_field(&content, end, b"bcc");
    }
    let content = complete_headers(content, options, sender.as_ref(), service);
    Ok(NewMessage {
        sender: sender.map(|a| a.to_string()),
        recipients: recipients.iter().map(ToString::to_string).collect(),
        content,
    })
}

/// Rejects a message with a line that SMTP cannot carry (RFC 5321 section
/// 4.5.3.1.6). Once queued, such a message fails at every server. The
/// bounce that copies the line fails too, so the sender would never hear
/// of it. Rejected now, the caller sees the error.
fn check_line_lengths(content: &[u8]) -> Result<(), Failure> {
    let mut encoder = DataEncoder::new(DataPolicy::default());
    let mut sink = Vec::new();
    let mut checked = Ok(());
    for chunk in content.chunks(64 * 1024) {
        checked = encoder.encode(chunk, &mut sink);
        sink.clear();
        if checked.is_err() {
            break;
        }
    }
    if checked.is_ok() {
        checked = encoder.finish(&mut sink);
    }
    checked.map_err(|error| {
        let message = match error {
            DataError::LineTooLong { line, limit, .. } => format!(
                "message not queued: line {line} is longer than {limit} octets, the maximum of \
                 SMTP (RFC 5321 section 4.5.3.1.6); encode the message with shorter lines, for \
                 example as quoted-printable"
            ),
            other => format!("message not queued: {other}"),
        };
        Failure::new(exit::DATA_ERROR, message)
    })
}

/// The login name from `$LOGNAME` or `$USER`; `root` for root, else
/// `nobody` when neither is set.
fn login_name() -> String {
    use std::os::unix::fs::MetadataExt;
    for variable in ["LOGNAME", "USER"] {
        if let Some(name) = std::env::var(variable).ok().filter(|n| !n.is_empty()) {
            return name;
        }
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root { "root" } else { "nobody" }.to_owned()
}

/// Adds the From, Date and Message-ID fields that RFC 5322 section 3.6
/// requires (Message-ID: should) when the message lacks them, as a
/// submission agent does. A message without any header section gets them
/// followed by an empty line, so its first line stays in the body.
fn complete_headers(
    content: Vec<u8>,
    options: &Options,
    sender: Option<&Address>,
    service: &Service,
) -> Vec<u8> {
    let end = header_section_end(&content);
    let present = |name: &str| {
        end.is_some_and(|end| {
            content[..end].split(|&b| b == b'\n').any(|line| {
                line.iter().position(|&b| b == b':').is_some_and(|colon| {
                    std::str::from_utf8(&line[..colon])
                        .is_ok_and(|field| field.trim_end().eq_ignore_ascii_case(name))
                })
            })
        })
    };
    let newline: &[u8] = if content.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    let mut added: Vec<u8> = Vec::new();
    let mut line = |text: String| {
        added.extend_from_slice(text.as_bytes());
        added.extend_from_slice(newline);
    };
    if !present("From") {
        let address = sender.map_or_else(
            || format!("MAILER-DAEMON@{}", service.qualify_domain),
            ToString::to_string,
        );
        match options.full_name.as_deref().map(one_line) {
            Some(name) if !name.is_empty() => {
                line(format!("From: {} <{address}>", quote_phrase(&name)))
            }
            _ => line(format!("From: <{address}>")),
        }
    }
    let now = now_millis();
    if !present("Date") {
        line(format!(
            "Date: {}",
            mxsend::queue::bounce::rfc5322_date(now)
        ));
    }
    if !present("Message-ID") {
        line(format!(
            "Message-ID: <{now}.{:08x}@{}>",
            rand::random::<u32>(),
            service.qualify_domain
        ));
    }
    if added.is_empty() {
        return content;
    }
    if end.is_none() {
        added.extend_from_slice(newline);
    }
    added.extend_from_slice(&content);
    added
}

fn one_line(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Quotes a display name when it contains RFC 5322 specials.
fn quote_phrase(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_alphanumeric() || c == ' ' || "!#$%&'*+-/=?^_`{|}~".contains(c));
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Drops a leading mbox separator line (`From sender date`, no colon).
fn strip_mbox_separator(mut content: Vec<u8>) -> Vec<u8> {
    if content.starts_with(b"From ") {
        let end = content
            .iter()
            .position(|&b| b == b'\n')
            .map_or(content.len(), |i| i + 1);
        content.drain(..end);
    }
    content
}

/// The offset just past the header section (after its empty line, or the
/// end of the content), or `None` when the first line is not a header
/// field. RFC 5322 section 2.2: a field name is printable ASCII without a
/// colon, and the obsolete syntax allows spaces before the colon.
fn header_section_end(content: &[u8]) -> Option<usize> {
    let first = content.split(|&b| b == b'\n').next()?;
    let colon = first.iter().position(|&b| b == b':')?;
    let name = first[..colon].trim_ascii_end();
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
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

/// Removes every field named `name` (lower case) from the header section.
fn remove_header_field(content: &[u8], header_end: usize, name: &[u8]) -> Vec<u8> {
    let mut result = Vec::with_capacity(content.len());
    let mut removing = false;
    for line in content[..header_end].split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if !continuation {
            removing = line
                .iter()
                .position(|&b| b == b':')
                .is_some_and(|colon| line[..colon].trim_ascii_end().eq_ignore_ascii_case(name));
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

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn cron_flags_parse() {
        let options = parse(&strings(&[
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "-oi",
            "-t",
        ]))
        .unwrap();
        assert!(options.read_recipients);
        assert!(options.ignore_dots);
        assert_eq!(options.full_name.as_deref(), Some("CronDaemon"));
        assert!(options.warnings.is_empty(), "{:?}", options.warnings);
    }

    #[test]
    fn binary_body_type_warns() {
        let options = parse(&strings(&["-B", "BINARYMIME", "b@y.test"])).unwrap();
        assert_eq!(options.warnings.len(), 1, "{:?}", options.warnings);
        assert!(options.warnings[0].contains("--binarymime"));
        let seven = parse(&strings(&["-B7BIT", "b@y.test"])).unwrap();
        assert!(seven.warnings.is_empty(), "{:?}", seven.warnings);
    }

    #[test]
    fn sender_forms_parse() {
        let attached = parse(&strings(&["-fme@x.test", "b@y.test"])).unwrap();
        assert_eq!(attached.sender.as_deref(), Some("me@x.test"));
        assert_eq!(attached.recipients, ["b@y.test"]);
        let separate = parse(&strings(&["-f", "<>", "-odq", "b@y.test"])).unwrap();
        assert_eq!(separate.sender.as_deref(), Some("<>"));
        assert_eq!(separate.submission, Some(Submission::Queue));
    }

    #[test]
    fn unknown_o_option_warns() {
        let options = parse(&strings(&["-oXfoo", "b@y.test"])).unwrap();
        assert_eq!(options.warnings, ["ignoring unknown option -oXfoo"]);
    }

    #[test]
    fn unknown_flag_is_usage_error() {
        let error = parse(&strings(&["-Z"])).unwrap_err();
        assert_eq!(error.status, exit::USAGE);
        assert!(error.message.contains("-Z"), "{}", error.message);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(parse(&strings(&["-bp"])).unwrap().mode, Mode::ListQueue);
        assert_eq!(parse(&strings(&["-q"])).unwrap().mode, Mode::RunQueue);
        let periodic = parse(&strings(&["-q30m"])).unwrap();
        assert_eq!(periodic.mode, Mode::RunQueue);
        assert_eq!(periodic.warnings.len(), 1);
        assert!(parse(&strings(&["-bs"])).is_err());
    }

    #[test]
    fn dot_line_ends_message_without_i() {
        let mut content = b"Subject: x\n\nline\n.\nafter\n".to_vec();
        truncate_at_dot_line(&mut content);
        assert_eq!(content, b"Subject: x\n\nline\n");
        let mut dots = b"Subject: x\n\n..\n.x\n".to_vec();
        truncate_at_dot_line(&mut dots);
        assert_eq!(dots, b"Subject: x\n\n..\n.x\n");
    }

    #[test]
    fn local_names_are_qualified() {
        assert_eq!(qualify("root", "host.test"), "root@host.test");
        assert_eq!(qualify("<a@b.test>", "host.test"), "a@b.test");
    }
}
