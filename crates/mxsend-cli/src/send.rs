//! `mxsend send`: deliver one message and report each recipient.

use std::io::Write;
use std::time::Duration;

use mxsend::proto::data::DataError;
use mxsend::proto::{DsnRequest, Outcome, SessionConfig, Timeouts};
use mxsend::{
    ConnectionConfig, Delivery, DeliveryConfig, DeliveryReport, Message, MessageError, MxResolver,
    Nameserver, ResolverSettings, Route,
};

use crate::args::{DnsArgs, SecurityArgs, SendArgs, parse_relay};
use crate::exit;
use crate::failure::Failure;
use crate::input::{self, EnvelopeOptions};

/// Reads the message named by `args` and delivers it.
///
/// # Errors
///
/// A [`Failure`] for bad input or a resolver that cannot be set up; delivery
/// failures are in the returned status instead.
pub async fn run(args: &SendArgs) -> Result<u8, Failure> {
    let sent = match input::read_content(args.file.as_deref()) {
        Ok(content) => send_content(content, args).await,
        Err(failure) => Err(failure),
    };
    match sent {
        Ok(report) => Ok(exit::for_report(&report)),
        Err(failure) => {
            if args.json {
                // Scripts get a JSON document either way, as from `mx`.
                let value = serde_json::json!({
                    "error": failure.message,
                    "status": failure.status,
                });
                println!("{value}");
            }
            Err(failure)
        }
    }
}

/// Delivers `content` with the envelope and settings of `args`, prints the
/// report, and returns it. `mxsend demo` calls this too, so that the demo
/// runs exactly the path of `mxsend send`.
///
/// # Errors
///
/// A [`Failure`] for an invalid envelope, message or option; nothing is
/// sent then.
pub async fn send_content(content: Vec<u8>, args: &SendArgs) -> Result<DeliveryReport, Failure> {
    let envelope = EnvelopeOptions {
        from: args.from.as_deref(),
        to: &args.to,
        read_recipients: args.read_recipients,
    };
    let input = input::prepare(content, &envelope)?;
    let mut config = delivery_config(args)?;
    apply_security(&mut config.connection, &args.security, args.reply_timeout).await?;
    if !args.binarymime && declares_binary(&input.content) {
        eprintln!(
            "mxsend: warning: the message declares Content-Transfer-Encoding: binary but goes \
             as text, with every line break made CRLF; send it with --binarymime to keep it \
             octet for octet"
        );
    }
    let message = if args.binarymime {
        check_binary_header(&input.content)?;
        Message::from_binary_bytes(input.sender, input.recipients, input.content).await
    } else {
        Message::from_bytes(
            input.sender,
            input.recipients,
            input.content,
            config.connection.data_policy,
        )
        .await
    };
    let message = message
        .map_err(message_failure)?
        .with_dsn(dsn_request(args));
    let resolver = resolver(&args.dns)?;

    let delivery = Delivery::new(resolver, config).with_own_addresses(args.own_addresses.clone());
    let report = delivery.deliver(&message).await;

    if args.verbose {
        print_transcript(&report);
    }
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(report)
}

/// Builds a resolver for the DNS options.
///
/// # Errors
///
/// A temporary [`Failure`] when the system resolver configuration cannot be
/// read.
pub fn resolver(dns: &DnsArgs) -> Result<MxResolver, Failure> {
    let settings = ResolverSettings {
        nameserver: dns.nameserver.map_or(Nameserver::System, Nameserver::At),
        timeout: Duration::from_secs(dns.dns_timeout.max(1)),
        ..ResolverSettings::default()
    };
    MxResolver::new(&settings).map_err(|error| {
        Failure::new(
            exit::TEMPORARY,
            format!("cannot set up the DNS resolver: {error}; check /etc/resolv.conf or give --nameserver IP"),
        )
    })
}

fn delivery_config(args: &SendArgs) -> Result<DeliveryConfig, Failure> {
    let route = match &args.relay {
        Some(relay) => {
            let (host, port) =
                parse_relay(relay).map_err(|message| Failure::new(exit::USAGE, message))?;
            Route::Relay { host, port }
        }
        None => Route::Mx,
    };
    let helo_name = match &args.helo {
        Some(name) => Some(checked_helo_name(name)?),
        None => default_helo_name(),
    };
    let mut timeouts = Timeouts::default();
    if let Some(seconds) = args.reply_timeout {
        let timeout = Duration::from_secs(seconds.max(1));
        timeouts = Timeouts::uniform(timeout);
    }
    let connection = ConnectionConfig {
        helo_name,
        connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
        timeouts,
        pipelining: !args.no_pipelining,
        chunking: !args.no_chunking,
        transcript: true,
        ..ConnectionConfig::default()
    };
    Ok(DeliveryConfig {
        connection,
        port: args.port,
        route,
    })
}

/// The environment variable that can hold the AUTH password, so that it
/// never needs to be on the command line.
const PASSWORD_VARIABLE: &str = "MXSEND_PASSWORD";

/// Time allowed for `--password-command` to print the password.
const PASSWORD_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets the TLS and AUTH settings of the options, after reading every file
/// they name and the password, so that a mistake stops `mxsend send`
/// before any connection.
async fn apply_security(
    connection: &mut mxsend::ConnectionConfig,
    args: &SecurityArgs,
    reply_timeout: Option<u64>,
) -> Result<(), Failure> {
    let mut tls = mxsend::TlsConfig {
        policy: args.tls,
        ca_file: args.ca_file.clone(),
        client_cert: args.client_cert.clone(),
        client_key: args.client_key.clone(),
        ..mxsend::TlsConfig::default()
    };
    if let Some(seconds) = reply_timeout {
        tls.handshake_timeout = Duration::from_secs(seconds.max(1));
    }
    tls.check().map_err(|error| {
        Failure::new(
            exit::USAGE,
            format!(
                "invalid TLS option: {}",
                mxsend::delivery::error_chain(&error)
            ),
        )
    })?;
    connection.tls = tls;

    let has_secret_source = args.password_file.is_some() || args.password_command.is_some();
    let Some(user) = &args.auth_user else {
        if has_secret_source || args.dangerous_plaintext_auth {
            return Err(Failure::new(
                exit::USAGE,
                "--password-file, --password-command and --dangerous-plaintext-auth need --auth-user NAME"
                    .to_owned(),
            ));
        }
        return Ok(());
    };
    let secret = read_password(args).await?;
    let mut settings =
        mxsend::proto::AuthSettings::new(mxsend::proto::Credentials::new(user.clone(), secret));
    settings.mechanism = args.auth_mech;
    settings.dangerous_allow_plaintext = args.dangerous_plaintext_auth;
    connection.auth = Some(settings);
    Ok(())
}

/// Reads the AUTH password from `--password-file`, `--password-command` or
/// `MXSEND_PASSWORD`, in that order. Error messages never contain it.
async fn read_password(args: &SecurityArgs) -> Result<mxsend::proto::Secret, Failure> {
    let usage = |message: String| Failure::new(exit::USAGE, message);
    let text = if let Some(path) = &args.password_file {
        std::fs::read_to_string(path).map_err(|error| {
            usage(format!(
                "cannot read --password-file {}: {error}",
                path.display()
            ))
        })?
    } else if let Some(command) = &args.password_command {
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(PASSWORD_COMMAND_TIMEOUT, output)
            .await
            .map_err(|_| {
                usage(format!(
                    "--password-command timed out after {PASSWORD_COMMAND_TIMEOUT:?}"
                ))
            })?
            .map_err(|error| usage(format!("cannot run --password-command: {error}")))?;
        if !output.status.success() {
            return Err(usage(format!(
                "--password-command failed ({})",
                output.status
            )));
        }
        String::from_utf8(output.stdout).map_err(|_| {
            usage("--password-command printed a password that is not UTF-8".to_owned())
        })?
    } else if let Some(value) = std::env::var_os(PASSWORD_VARIABLE) {
        value
            .into_string()
            .map_err(|_| usage(format!("{PASSWORD_VARIABLE} is not valid UTF-8")))?
    } else {
        return Err(usage(format!(
            "--auth-user needs a password: give --password-file FILE or --password-command COMMAND, \
             or set {PASSWORD_VARIABLE}"
        )));
    };
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(usage("the AUTH password is empty".to_owned()));
    }
    Ok(mxsend::proto::Secret::new(password))
}

/// Builds the DSN request of the options. ORCPT goes with any of them,
/// since a notification is only useful with the address as given.
fn dsn_request(args: &SendArgs) -> DsnRequest {
    let requested = args.notify.is_some() || args.ret.is_some() || args.envid.is_some();
    DsnRequest {
        ret: args.ret,
        envid: args.envid.clone(),
        notify: args.notify,
        orcpt: requested,
    }
}

fn checked_helo_name(name: &str) -> Result<String, Failure> {
    SessionConfig::new(name)
        .map(|_| name.to_owned())
        .map_err(|error| Failure::new(exit::USAGE, format!("invalid --helo: {error}")))
}

/// Returns this machine's host name when it is fully qualified (contains a
/// dot). Otherwise `None` makes the connection send its address literal,
/// which RFC 5321 section 4.1.4 allows.
fn default_helo_name() -> Option<String> {
    let name = gethostname::gethostname().into_string().ok()?;
    let name = name.trim_end_matches('.');
    if !name.contains('.') {
        return None;
    }
    SessionConfig::new(name).ok().map(|_| name.to_owned())
}

/// Returns whether a header field of the message or of one of its MIME parts
/// declares `Content-Transfer-Encoding: binary` (RFC 2045 section 6.2).
fn declares_binary(content: &[u8]) -> bool {
    const FIELD: &[u8] = b"content-transfer-encoding:";
    content
        .split(|&octet| octet == b'\n')
        .filter(|line| line.len() >= FIELD.len() && line[..FIELD.len()].eq_ignore_ascii_case(FIELD))
        .any(|line| {
            String::from_utf8_lossy(&line[FIELD.len()..])
                .trim()
                .eq_ignore_ascii_case("binary")
        })
}

/// Checks that the header section of a `--binarymime` message ends every
/// line with CRLF. Nothing is converted in binary MIME, and a header line
/// ended by a bare CR or LF would reach the server as it is.
fn check_binary_header(content: &[u8]) -> Result<(), Failure> {
    let mut line = 1;
    let mut previous = None;
    let mut after_line_break = false;
    for (index, &octet) in content.iter().enumerate() {
        let bare = match octet {
            b'\n' => previous != Some(b'\r'),
            b'\r' => content.get(index + 1) != Some(&b'\n'),
            _ => false,
        };
        if bare {
            return Err(Failure::new(
                exit::DATA_ERROR,
                format!(
                    "with --binarymime the message goes as it is, and line {line} of its \
                     header section ends without CRLF; convert the header section to CRLF \
                     line breaks"
                ),
            ));
        }
        if octet == b'\n' {
            if after_line_break {
                // The empty line: the body follows, and may be anything.
                return Ok(());
            }
            line += 1;
            after_line_break = true;
        } else if octet != b'\r' {
            after_line_break = false;
        }
        previous = Some(octet);
    }
    // No empty line: the content is all header section, and its last line
    // must end with CRLF too.
    if !content.ends_with(b"\r\n") {
        return Err(Failure::new(
            exit::DATA_ERROR,
            format!(
                "with --binarymime the message goes as it is, and line {line} of its header \
                 section ends without CRLF; end every header line with CRLF"
            ),
        ));
    }
    Ok(())
}

fn message_failure(error: MessageError) -> Failure {
    match error {
        MessageError::NoRecipients => Failure::new(
            exit::USAGE,
            "no recipients: give --to ADDRESS, or -t to read To, Cc and Bcc headers".to_owned(),
        ),
        MessageError::Data(DataError::LineTooLong { line, limit, .. }) => Failure::new(
            exit::DATA_ERROR,
            format!(
                "message cannot be sent as it is: line {line} is longer than {limit} octets, \
                 the maximum of SMTP (RFC 5321 section 4.5.3.1.6); encode the message with \
                 shorter lines, for example as quoted-printable, or send binary MIME with \
                 --binarymime"
            ),
        ),
        MessageError::Data(error) => Failure::new(
            exit::DATA_ERROR,
            format!("message cannot be sent as it is: {error}"),
        ),
        other => Failure::new(exit::USAGE, mxsend::delivery::error_chain(&other)),
    }
}

fn print_transcript(report: &DeliveryReport) {
    let mut stderr = std::io::stderr().lock();
    for attempt in &report.attempts {
        let server = attempt
            .server
            .map_or_else(|| "no address".to_owned(), |server| server.to_string());
        let _ = writeln!(
            stderr,
            "=== {} [{server}]: {}",
            attempt.host, attempt.result
        );
    }
    for entry in &report.transcript {
        let _ = writeln!(stderr, "{entry}");
    }
}

fn print_report(report: &DeliveryReport) {
    let mut stdout = std::io::stdout().lock();
    for recipient in &report.recipients {
        let mut line = format!("{}: {}", recipient.address, recipient.outcome);
        if let Some(host) = &recipient.host {
            line.push_str(&format!(" via {host}"));
            if let Some(server) = recipient.server {
                line.push_str(&format!(" [{server}]"));
            }
        }
        line.push_str(&format!(": {}", recipient.reason));
        let _ = writeln!(stdout, "{line}");
    }
    let _ = writeln!(
        stdout,
        "{} delivered, {} deferred, {} failed, {} uncertain",
        report.count(Outcome::Delivered),
        report.count(Outcome::Deferred),
        report.count(Outcome::Failed),
        report.count(Outcome::Uncertain),
    );
}

fn print_json(report: &DeliveryReport) -> Result<(), Failure> {
    let transcript: Vec<String> = report.transcript.iter().map(ToString::to_string).collect();
    let value = serde_json::json!({
        "recipients": report.recipients,
        "attempts": report.attempts,
        "transcript": transcript,
    });
    let text = serde_json::to_string_pretty(&value).map_err(|error| {
        Failure::new(
            exit::SOFTWARE,
            format!("cannot encode the report as JSON: {error}"),
        )
    })?;
    println!("{text}");
    Ok(())
}
