//! Command-line syntax.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Send email over SMTP the way a careful mail server does.
#[derive(Debug, Parser)]
#[command(name = "mxsend", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a message to its recipients' mail exchangers or through a relay.
    ///
    /// Exit status follows sendmail's sysexits.h: 0 all delivered, 75 some
    /// deferred or uncertain, 67 unknown user, 68 no such domain, 69 other
    /// permanent failure, 64 bad usage, 65 bad message.
    Send(SendArgs),
    /// Show the mail exchangers of a domain in the order they would be tried.
    ///
    /// MX records are sorted by preference, with equal preferences shuffled,
    /// and every one is kept, however many there are. A domain without MX
    /// records is its own exchanger (implicit MX). Each exchanger lists its
    /// IPv6 addresses, then its IPv4 ones, and delivery tries them in that
    /// order, so an unreachable IPv6 address falls back to IPv4.
    ///
    /// Exit statuses and DNS faults:
    ///
    /// - 69: a null MX (`MX 0 .`): the domain accepts no mail. With
    ///   --own-address, also when this host is the most preferred exchanger.
    ///
    /// - 68: the domain does not exist (NXDOMAIN), or none of its exchangers
    ///   has an address.
    ///
    /// - 75: SERVFAIL or no response: temporary, and never taken as "no MX".
    ///
    /// A CNAME loop ends the lookup: a recursive resolver reports SERVFAIL
    /// for it (75), and a chain that ends without an address gives 68.
    ///
    /// A truncated UDP response is asked again over TCP. An exchanger that
    /// is an IP address instead of a name, or that has no address, is shown
    /// as not usable and skipped.
    ///
    /// With --own-address IP (repeatable), an exchanger from MX records that
    /// has one of those addresses is this host. That exchanger and every one
    /// with the same or a higher preference value are marked as dropped,
    /// because mail from this host must go only to exchangers preferred to
    /// it (RFC 5321 section 5.1). `mxsend send --own-address` and the daemon
    /// with `identity.addresses` drop the same exchangers. When none is
    /// preferred to this host, mail would loop back to it, so the command
    /// prints the list and exits with 69. Without --own-address, no
    /// exchanger is marked as dropped.
    Mx(MxArgs),
    /// Run the whole path on loopback: a DNS zone whose example.net MX points
    /// at a built-in SMTP server on 127.0.0.1, the tutorial message sent the
    /// same way `mxsend send` sends, then the report and the message as the
    /// server stored it. Needs no network.
    Demo(DemoArgs),
    /// Accept a message like sendmail: store it in the queue, then deliver
    /// it. Takes sendmail's flags (-t, -i, -oi, -f, -F, -bm, -bp, -q, -v,
    /// -odb, -odi, -odq); run `mxsend sendmail --help` for the list. The
    /// binary does the same when it is called `sendmail`.
    Sendmail(SendmailArgs),
    /// Read and change the queue: list, show, flush, delete, bounce.
    Queue(QueueArgs),
    /// Deliver the queue until SIGINT or SIGTERM: retries, bounces and
    /// concurrent deliveries with the limits of the configuration.
    Daemon(DaemonArgs),
    /// Check the configuration file.
    Config(ConfigArgs),
}

/// Where the configuration and the spool are.
#[derive(Debug, Args, Clone, Default)]
pub struct ServiceArgs {
    /// The configuration file; default $MXSEND_CONFIG, else
    /// ~/.config/mxsend/config.toml, else /etc/mxsend/config.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The spool folder, in place of the configuration's spool.path.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
}

/// `mxsend sendmail`: the arguments are parsed the way sendmail parses
/// them, not by clap.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct SendmailArgs {
    /// Sendmail options and recipients.
    #[arg(allow_hyphen_values = true, trailing_var_arg = true, num_args = 0..)]
    pub arguments: Vec<String>,
}

/// `mxsend queue`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// What to do with the queue.
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// The queue subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queued messages like mailq: id, age, size, sender, and each
    /// recipient with its state.
    List(QueueListArgs),
    /// Show one message: its envelope and each recipient's history.
    Show(QueueIdArgs),
    /// Make every waiting recipient (or those of one message) due now, and
    /// deliver them here unless a daemon runs on the spool.
    Flush(QueueFlushArgs),
    /// Delete a message from the queue without notifying anyone.
    Delete(QueueIdArgs),
    /// Give up on a message's waiting recipients and send the sender a
    /// bounce.
    Bounce(QueueIdArgs),
    /// Deliver one message now; `mxsend sendmail` runs this in the
    /// background after storing a message.
    #[command(hide = true)]
    Deliver(QueueIdArgs),
}

/// `mxsend queue list`.
#[derive(Debug, Args)]
pub struct QueueListArgs {
    /// Include finished messages that are still kept.
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// A queue command on one message.
#[derive(Debug, Args)]
pub struct QueueIdArgs {
    /// The queue id, as `mxsend queue list` prints it.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// `mxsend queue flush`.
#[derive(Debug, Args)]
pub struct QueueFlushArgs {
    /// Only this message.
    pub id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// `mxsend daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// `mxsend config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// The config subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings.
    Check(ServiceArgs),
}

/// Options shared by commands that look up DNS names.
#[derive(Debug, Args, Clone)]
pub struct DnsArgs {
    /// DNS server to ask, as IP or IP:PORT (port 53 by default), instead of
    /// the servers in /etc/resolv.conf.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_nameserver)]
    pub nameserver: Option<SocketAddr>,
    /// Seconds to wait for each DNS request, a whole number of at least 1.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = parse_seconds)]
    pub dns_timeout: u64,
}

/// `mxsend send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The message file (RFC 5322 headers and body); standard input when
    /// absent. A leading mbox `From ` line is dropped.
    pub file: Option<PathBuf>,
    /// Envelope sender; defaults to the address in the From header.
    #[arg(long, short = 'f', value_name = "ADDRESS")]
    pub from: Option<String>,
    /// Envelope recipient; repeat for several.
    #[arg(long, value_name = "ADDRESS")]
    pub to: Vec<String>,
    /// Also send to the addresses in the To, Cc and Bcc headers; the Bcc
    /// header is removed from what is transmitted.
    #[arg(short = 't', long)]
    pub read_recipients: bool,
    /// Send everything through this smarthost instead of looking up MX
    /// records; port 25 unless given.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub relay: Option<String>,
    /// Port of the mail exchangers, for MX delivery. A relay's port goes in
    /// --relay HOST:PORT instead, so the two options exclude each other.
    #[arg(
        long,
        default_value_t = mxsend::DEFAULT_PORT,
        value_parser = clap::value_parser!(u16).range(1..),
        conflicts_with = "relay"
    )]
    pub port: u16,
    /// Name sent with EHLO; defaults to this machine's fully qualified name,
    /// or the address literal of the connection when it has none.
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
    /// Seconds allowed for each TCP connection to be made, a whole number
    /// of at least 1.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = parse_seconds)]
    pub connect_timeout: u64,
    /// An IP address of this host. Repeat the option for several. An
    /// exchanger with one of them is this host, so mail goes only to
    /// exchangers with a lower preference value, and fails when there is
    /// none (RFC 5321 section 5.1). Applies to MX records only: not to
    /// --relay, address literals or a domain without MX records.
    #[arg(long = "own-address", value_name = "IP", value_parser = parse_own_address)]
    pub own_addresses: Vec<IpAddr>,
    /// Seconds allowed for every server reply, in place of the RFC 5321
    /// defaults (5 minutes for most commands, 10 after the final dot). A
    /// whole number of at least 1.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub reply_timeout: Option<u64>,
    /// Never pipeline commands, even when the server offers PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,
    /// Send the content after DATA, even when the server offers CHUNKING
    /// (BDAT).
    #[arg(long)]
    pub no_chunking: bool,
    /// The message is binary MIME (RFC 3030): send it octet for octet with
    /// BODY=BINARYMIME in BDAT chunks, leaving line breaks, NUL octets and
    /// long lines as they are. Its header section must use CRLF line
    /// breaks. A server that lacks BINARYMIME or CHUNKING does not get the
    /// message: its recipients fail with 5.6.3. Cannot be combined with
    /// --no-chunking.
    #[arg(long, conflicts_with = "no_chunking")]
    pub binarymime: bool,
    /// Delivery status notifications to ask for: never, or a comma-separated
    /// list of success, failure and delay (RFC 3461). Sent only to servers
    /// that offer DSN, together with ORCPT.
    #[arg(long, value_name = "WHEN", value_parser = mxsend::proto::DsnNotify::parse)]
    pub notify: Option<mxsend::proto::DsnNotify>,
    /// What a failure notification returns: full (the message) or hdrs (the
    /// header section).
    #[arg(long, value_name = "full|hdrs", value_parser = parse_dsn_return)]
    pub ret: Option<mxsend::proto::DsnReturn>,
    /// Envelope identifier that notifications quote back: 1 to 100
    /// printable ASCII characters without spaces.
    #[arg(long, value_name = "ID", value_parser = parse_envid)]
    pub envid: Option<String>,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// Print the SMTP transcript on standard error.
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    pub security: Box<SecurityArgs>,
    #[command(flatten)]
    pub dns: DnsArgs,
}

/// TLS and SMTP AUTH options of `mxsend send`.
#[derive(Debug, Args, Clone, Default)]
pub struct SecurityArgs {
    /// TLS policy: none; may (STARTTLS when offered, certificate not
    /// checked, the default for MX delivery); encrypt (STARTTLS required,
    /// certificate not checked); verify (STARTTLS required, certificate
    /// checked against the host name, the default with --relay); implicit
    /// (TLS from the first byte as on port 465, certificate checked).
    #[arg(long, value_name = "POLICY", value_parser = parse_tls_policy)]
    pub tls: Option<mxsend::TlsPolicy>,
    /// PEM file of CA certificates to trust in addition to the built-in
    /// Mozilla roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain to present to a server that asks for a client
    /// certificate.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// User name for SMTP AUTH. The secret comes from --password-file,
    /// --password-command or the MXSEND_PASSWORD environment variable.
    #[arg(long, value_name = "NAME")]
    pub auth_user: Option<String>,
    /// SASL mechanism: PLAIN, LOGIN, CRAM-MD5, or XOAUTH2 with an OAuth 2.0
    /// access token as the secret. Default: the first of CRAM-MD5, PLAIN and
    /// LOGIN that the server offers.
    #[arg(long, value_name = "MECHANISM", value_parser = parse_mechanism, requires = "auth_user")]
    pub auth_mech: Option<mxsend::proto::Mechanism>,
    /// File whose first line is the AUTH password.
    #[arg(long, value_name = "FILE", conflicts_with = "password_command")]
    pub password_file: Option<PathBuf>,
    /// Command, run with `sh -c`, whose first line of output is the AUTH
    /// password.
    #[arg(long, value_name = "COMMAND")]
    pub password_command: Option<String>,
    /// Send AUTH over a connection without TLS, where anyone on the path
    /// can read the password.
    #[arg(long)]
    pub dangerous_plaintext_auth: bool,
}

/// Parses a `--tls` policy name.
pub fn parse_tls_policy(text: &str) -> Result<mxsend::TlsPolicy, String> {
    text.parse()
}

/// Parses a `--auth-mech` name, ignoring case.
pub fn parse_mechanism(text: &str) -> Result<mxsend::proto::Mechanism, String> {
    mxsend::proto::Mechanism::from_name(text).ok_or_else(|| {
        format!("invalid SASL mechanism {text:?}: expected PLAIN, LOGIN, CRAM-MD5 or XOAUTH2")
    })
}

/// `mxsend mx`.
#[derive(Debug, Args)]
pub struct MxArgs {
    /// The domain, or an address whose domain to look up.
    pub domain: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// An IP address of this host. Repeat the option for several. Marks the
    /// exchangers that delivery from this host would drop: this host and
    /// every exchanger not preferred to it.
    #[arg(long = "own-address", value_name = "IP", value_parser = parse_own_address)]
    pub own_addresses: Vec<IpAddr>,
    #[command(flatten)]
    pub dns: DnsArgs,
}

/// `mxsend demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Print the SMTP transcript too.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Checks `--envid`: RFC 3461 section 4.4 allows at most 100 characters,
/// and printable ASCII keeps it readable in notifications.
pub fn parse_envid(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 100 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "invalid --envid of {} characters: expected 1 to 100 printable ASCII characters without spaces",
            text.chars().count()
        ));
    }
    Ok(text.to_owned())
}

/// Parses the `--ret` value.
pub fn parse_dsn_return(text: &str) -> Result<mxsend::proto::DsnReturn, String> {
    match text.to_ascii_lowercase().as_str() {
        "full" => Ok(mxsend::proto::DsnReturn::Full),
        "hdrs" | "headers" => Ok(mxsend::proto::DsnReturn::Headers),
        _ => Err(format!("invalid --ret {text:?}: expected full or hdrs")),
    }
}

/// Parses an `--own-address` value: one IPv4 or IPv6 address, with no port
/// and no brackets. clap puts the value and the option before the message.
pub fn parse_own_address(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| "expected an IP address such as 192.0.2.1 or 2001:db8::1".to_owned())
}

/// Parses `IP` or `IP:PORT`, with IPv6 in brackets when a port is given.
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        if address.port() == 0 {
            return Err(format!(
                "invalid nameserver {text:?}: port 0 is not a port to ask"
            ));
        }
        return Ok(address);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!("invalid nameserver {text:?}: expected IP or IP:PORT, such as 127.0.0.1:5353")
        })
}

fn port_zero(relay: &str) -> String {
    format!("invalid relay {relay:?}: port 0 cannot be connected to; give a port from 1 to 65535")
}

/// Parses a number of seconds for a timeout: a whole number of at least 1.
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(seconds) if seconds >= 1 => Ok(seconds),
        _ => Err(format!(
            "invalid number of seconds {text:?}: expected a whole number of at least 1, such as 30"
        )),
    }
}

/// Splits `HOST[:PORT]`, `[IPv6]:PORT` or a bare IPv6 address.
pub fn parse_relay(text: &str) -> Result<(String, u16), String> {
    let invalid = || {
        format!("invalid relay {text:?}: expected HOST or HOST:PORT, such as smtp.example.com:25")
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(invalid)?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| invalid())?,
            None if after.is_empty() => mxsend::DEFAULT_PORT,
            None => return Err(invalid()),
        };
        if port == 0 {
            return Err(port_zero(text));
        }
        return Ok((host.to_owned(), port));
    }
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((text.to_owned(), mxsend::DEFAULT_PORT));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().map_err(|_| invalid())?),
        None => (text, mxsend::DEFAULT_PORT),
    };
    if port == 0 {
        return Err(port_zero(text));
    }
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_whole_and_positive() {
        assert_eq!(parse_seconds("30"), Ok(30));
        for bad in ["0", "1.5", "-1", ""] {
            let error = parse_seconds(bad).unwrap_err();
            assert!(
                error.contains("whole number of at least 1"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn relay_forms() {
        assert_eq!(parse_relay("mx.test").unwrap(), ("mx.test".into(), 25));
        assert_eq!(
            parse_relay("mx.test:2525").unwrap(),
            ("mx.test".into(), 2525)
        );
        assert_eq!(parse_relay("[::1]:2525").unwrap(), ("::1".into(), 2525));
        assert_eq!(parse_relay("::1").unwrap(), ("::1".into(), 25));
        assert!(parse_relay("mx.test:port").is_err());
        for zero in ["127.0.0.1:0", "[::1]:0"] {
            let error = parse_relay(zero).unwrap_err();
            assert!(error.contains("port 0"), "{error}");
        }
        assert!(parse_relay("").is_err());
    }

    #[test]
    fn own_address_forms() {
        assert_eq!(
            parse_own_address("192.0.2.1").unwrap(),
            IpAddr::from([192, 0, 2, 1])
        );
        assert!(parse_own_address("2001:db8::1").unwrap().is_ipv6());
        let error = parse_own_address("notanip").unwrap_err();
        assert!(error.contains("expected an IP address"), "{error}");
        assert!(parse_own_address("[2001:db8::1]").is_err());
        assert!(parse_own_address("192.0.2.1:25").is_err());
    }

    #[test]
    fn nameserver_forms() {
        assert_eq!(parse_nameserver("127.0.0.1").unwrap().port(), 53);
        assert_eq!(parse_nameserver("127.0.0.1:5353").unwrap().port(), 5353);
        assert_eq!(parse_nameserver("[::1]:5353").unwrap().port(), 5353);
        assert!(parse_nameserver("dns.example").is_err());
        assert!(parse_nameserver("127.0.0.1:0").is_err());
    }
}
