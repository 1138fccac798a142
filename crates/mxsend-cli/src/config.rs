//! The service configuration: one TOML file, every field with a default.
//!
//! The file is the one given with `--config`, else `$MXSEND_CONFIG`, else
//! `~/.config/mxsend/config.toml`, else `/etc/mxsend/config.toml`; with none
//! of these, the defaults apply. The spool folder is `--spool`, else the
//! file's `spool.path`, else `$MXSEND_SPOOL`, else `/var/spool/mxsend` for
//! root and `~/.local/state/mxsend` for other users.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mxsend::proto::{SessionConfig, Timeouts};
use mxsend::queue::{QueueSettings, RetrySchedule, SqliteStore, Store};
use mxsend::{ConnectionConfig, Delivery, DeliveryConfig, Nameserver, ResolverSettings, Route};
use serde::{Deserialize, Serialize};

use crate::args::{ConfigArgs, ConfigCommand, ServiceArgs, parse_nameserver, parse_relay};
use crate::failure::Failure;

/// Time a connection may stay idle after a transaction before the next
/// message to the same server opens a new one. Postfix keeps its cached
/// connections for 2 seconds by default (`smtp_connection_cache_time_limit`);
/// a queue run sends in bursts, so a little longer saves more handshakes.
const CONNECTION_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A configuration error (EX_CONFIG in sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The EHLO name and the domain for local names.
    pub identity: Identity,
    /// Delivery settings: relay or MX, DNS, timeouts, submission mode.
    pub delivery: DeliverySection,
    /// The queue's storage.
    pub spool: Spool,
    /// The delivery daemon.
    pub daemon: Daemon,
    /// Retries, expiry and delay warnings.
    pub retry: Retry,
}

/// `[identity]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    /// The EHLO name; default this machine's fully qualified name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ehlo_name: Option<String>,
    /// Domain added to addresses without one (`root` becomes
    /// `root@DOMAIN`); default the EHLO name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qualify_domain: Option<String>,
    /// IP addresses of this host. A domain whose exchangers include one of
    /// them gets mail only through exchangers preferred to this host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// `[delivery]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// `HOST[:PORT]` of a smarthost; absent means direct MX delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Port of mail exchangers for MX delivery.
    pub mx_port: u16,
    /// `IP[:PORT]` of the DNS server; absent means /etc/resolv.conf.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<String>,
    /// Time allowed for one DNS request.
    pub dns_timeout: String,
    /// Time allowed for a TCP connection to be made.
    pub connect_timeout: String,
    /// One timeout for every reply in place of the RFC 5321 values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_timeout: Option<String>,
    /// Pipeline commands when the server offers PIPELINING.
    pub pipelining: bool,
    /// Send the content with BDAT when the server offers CHUNKING, as
    /// `mxsend send` does unless given --no-chunking.
    pub chunking: bool,
    /// TLS policy: none, may, encrypt, verify or implicit, as `mxsend send
    /// --tls`. Absent means verify with a relay and may for MX delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// PEM file of CA certificates trusted besides the built-in roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for relays that ask for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// User name for SMTP AUTH; absent means no AUTH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// File whose first line is the AUTH password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Shell command that prints the AUTH password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_command: Option<String>,
    /// SASL mechanism to use instead of the strongest one offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_mechanism: Option<String>,
    /// Allow AUTH without TLS, which exposes the password on the network.
    pub dangerous_plaintext_auth: bool,
    /// What `mxsend sendmail` does after storing a message: "background"
    /// (a detached process delivers it), "inline" (deliver before
    /// returning) or "queue" (leave it to the daemon).
    pub submission: String,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            relay: None,
            mx_port: mxsend::DEFAULT_PORT,
            nameserver: None,
            dns_timeout: "5s".to_owned(),
            connect_timeout: "30s".to_owned(),
            reply_timeout: None,
            pipelining: true,
            chunking: true,
            tls: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            auth_user: None,
            password_file: None,
            password_command: None,
            auth_mechanism: None,
            dangerous_plaintext_auth: false,
            submission: "background".to_owned(),
        }
    }
}

/// `[spool]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Spool {
    /// The spool folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Maximum size of the spool database, such as "500MB"; absent means
    /// limited only by the disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
    /// How long finished messages stay listed by `queue list --all`.
    pub keep_done: String,
}

impl Default for Spool {
    fn default() -> Self {
        Spool {
            path: None,
            max_size: None,
            keep_done: "1d".to_owned(),
        }
    }
}

/// `[daemon]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// Maximum deliveries at the same time.
    pub concurrency: usize,
    /// Maximum deliveries at the same time to one domain or relay.
    pub per_destination: usize,
    /// Longest sleep between two looks at the spool.
    pub poll_interval: String,
    /// Time sessions get to finish after SIGINT or SIGTERM.
    pub shutdown_grace: String,
    /// Time after which a claim by a hung deliverer may be taken over.
    pub lease: String,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            concurrency: 20,
            per_destination: 5,
            poll_interval: "1s".to_owned(),
            shutdown_grace: "30s".to_owned(),
            lease: "1h".to_owned(),
        }
    }
}

/// `[retry]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Wait before the first retry.
    pub first: String,
    /// Factor between two consecutive waits.
    pub multiplier: f64,
    /// Longest wait between two attempts.
    pub max_interval: String,
    /// Random spread of each wait, from 0 to 1.
    pub jitter: f64,
    /// Time in the queue after which a message is bounced.
    pub max_age: String,
    /// The same for bounces, which are then dropped.
    pub bounce_max_age: String,
    /// Time after which a delay warning goes to the sender; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warn_after: Option<String>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            first: "5m".to_owned(),
            multiplier: 2.0,
            max_interval: "3h".to_owned(),
            jitter: 0.2,
            max_age: "5d".to_owned(),
            bounce_max_age: "2d".to_owned(),
            warn_after: None,
        }
    }
}

/// How `mxsend sendmail` delivers after storing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    /// A detached `mxsend queue deliver ID` process.
    Background,
    /// In the sendmail process, before it exits.
    Inline,
    /// Not at all: the daemon delivers.
    Queue,
}

impl Submission {
    /// Parses "background", "inline" or "queue".
    pub fn parse(text: &str) -> Option<Submission> {
        match text {
            "background" => Some(Submission::Background),
            "inline" => Some(Submission::Inline),
            "queue" => Some(Submission::Queue),
            _ => None,
        }
    }
}

/// A loaded and checked configuration with everything resolved.
#[derive(Debug, Clone)]
pub struct Service {
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// The file's content with defaults filled in.
    pub config: Config,
    /// The spool folder.
    pub spool: PathBuf,
    /// The EHLO name, `None` for the address literal.
    pub ehlo_name: Option<String>,
    /// The domain for unqualified addresses.
    pub qualify_domain: String,
    /// Delivery settings.
    pub delivery: DeliveryConfig,
    /// Resolver settings.
    pub resolver: ResolverSettings,
    /// Queue settings.
    pub queue: QueueSettings,
    /// Spool size limit in octets.
    pub max_size: Option<u64>,
    /// What sendmail does after storing.
    pub submission: Submission,
    /// This host's addresses, from `identity.addresses`.
    pub own_addresses: Vec<std::net::IpAddr>,
}

impl Service {
    /// Loads the configuration named by `args` (or found in the default
    /// places) and checks every field.
    ///
    /// # Errors
    ///
    /// A [`Failure`] with status 78 that names the file, the field and the
    /// fix.
    pub fn load(args: &ServiceArgs) -> Result<Service, Failure> {
        let file = find_config(args.config.as_deref())?;
        let config = match &file {
            Some(path) => read_config(path)?,
            None => Config::default(),
        };
        let spool = match (&args.spool, &config.spool.path) {
            (Some(path), _) | (None, Some(path)) => path.clone(),
            (None, None) => default_spool(),
        };
        resolve(file, config, spool)
    }

    /// Opens the spool database.
    ///
    /// # Errors
    ///
    /// A temporary [`Failure`] (status 75) naming the database and the fix.
    pub fn open_store(&self) -> Result<Arc<dyn Store>, Failure> {
        let store = SqliteStore::open(&self.spool, self.max_size).map_err(store_failure)?;
        Ok(Arc::new(store))
    }

    /// A delivery with these settings.
    ///
    /// # Errors
    ///
    /// A temporary [`Failure`] when the system resolver cannot be set up.
    pub fn delivery(&self) -> Result<Delivery, Failure> {
        let resolver = mxsend::MxResolver::new(&self.resolver).map_err(|error| {
            Failure::new(
                crate::exit::TEMPORARY,
                format!(
                    "cannot set up the DNS resolver: {error}; check /etc/resolv.conf or set \
                     delivery.nameserver in the configuration"
                ),
            )
        })?;
        // Messages to one server in a queue run share a connection while it
        // stays idle for less than CONNECTION_IDLE_LIMIT.
        Ok(Delivery::new(resolver, self.delivery.clone())
            .with_connection_reuse(CONNECTION_IDLE_LIMIT)
            .with_own_addresses(self.own_addresses.clone()))
    }
}

/// Builds the TLS settings of `[delivery]`, checking that the files it
/// names can be read.
fn tls_config(
    section: &DeliverySection,
    fail: &dyn Fn(&str, String) -> Failure,
) -> Result<mxsend::TlsConfig, Failure> {
    let policy = match &section.tls {
        Some(text) => Some(
            text.parse::<mxsend::TlsPolicy>()
                .map_err(|message| fail("delivery.tls", message))?,
        ),
        None => None,
    };
    if section.client_cert.is_some() != section.client_key.is_some() {
        return Err(fail(
            "delivery.client_cert",
            "client_cert and client_key must be given together".to_owned(),
        ));
    }
    let tls = mxsend::TlsConfig {
        policy,
        ca_file: section.ca_file.clone(),
        client_cert: section.client_cert.clone(),
        client_key: section.client_key.clone(),
        ..mxsend::TlsConfig::default()
    };
    tls.check()
        .map_err(|error| fail("delivery.ca_file", mxsend::delivery::error_chain(&error)))?;
    Ok(tls)
}

/// Builds the AUTH settings of `[delivery]`, reading the password from
/// `password_file`, `password_command` or `MXSEND_PASSWORD`, in that order.
/// No message contains the password.
fn auth_settings(
    section: &DeliverySection,
    fail: &dyn Fn(&str, String) -> Failure,
) -> Result<Option<mxsend::proto::AuthSettings>, Failure> {
    let Some(user) = &section.auth_user else {
        if section.password_file.is_some() || section.password_command.is_some() {
            return Err(fail(
                "delivery.auth_user",
                "password_file and password_command need auth_user".to_owned(),
            ));
        }
        return Ok(None);
    };
    let text = if let Some(path) = &section.password_file {
        std::fs::read_to_string(path).map_err(|error| {
            fail(
                "delivery.password_file",
                format!("cannot read {}: {error}", path.display()),
            )
        })?
    } else if let Some(command) = &section.password_command {
        // NOTE: the command runs without a time limit, once, when the
        // configuration is loaded.
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|error| {
                fail(
                    "delivery.password_command",
                    format!("cannot run it: {error}"),
                )
            })?;
        if !output.status.success() {
            return Err(fail(
                "delivery.password_command",
                format!("the command failed ({})", output.status),
            ));
        }
        String::from_utf8(output.stdout).map_err(|_| {
            fail(
                "delivery.password_command",
                "the password it printed is not UTF-8".to_owned(),
            )
        })?
    } else if let Ok(value) = std::env::var("MXSEND_PASSWORD") {
        value
    } else {
        return Err(fail(
            "delivery.auth_user",
            "no password: set password_file or password_command, or MXSEND_PASSWORD".to_owned(),
        ));
    };
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(fail(
            "delivery.auth_user",
            "the AUTH password is empty".to_owned(),
        ));
    }
    let credentials =
        mxsend::proto::Credentials::new(user.clone(), mxsend::proto::Secret::new(password));
    let mut settings = mxsend::proto::AuthSettings::new(credentials);
    settings.mechanism = match &section.auth_mechanism {
        Some(name) => Some(
            crate::args::parse_mechanism(name)
                .map_err(|message| fail("delivery.auth_mechanism", message))?,
        ),
        None => None,
    };
    settings.dangerous_allow_plaintext = section.dangerous_plaintext_auth;
    Ok(Some(settings))
}

/// Maps a store error to a failure: 75 when trying again later may help,
/// else 74 (EX_IOERR) for a damaged spool that needs the operator.
pub fn store_failure(error: mxsend::queue::StoreError) -> Failure {
    use mxsend::queue::StoreError;
    let status = match error {
        StoreError::Corrupt { .. } | StoreError::CorruptRecord { .. } => 74,
        StoreError::NotFound(_) => crate::exit::USAGE,
        _ => crate::exit::TEMPORARY,
    };
    Failure::new(status, error.to_string())
}

fn config_error(file: Option<&Path>, message: String) -> Failure {
    let message = match file {
        Some(file) => format!("invalid configuration in {}: {message}", file.display()),
        None => format!("invalid configuration: {message}"),
    };
    Failure::new(EXIT_CONFIG, message)
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

fn find_config(given: Option<&Path>) -> Result<Option<PathBuf>, Failure> {
    let named = given.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("MXSEND_CONFIG")
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = named {
        if !path.is_file() {
            return Err(Failure::new(
                EXIT_CONFIG,
                format!(
                    "configuration file {} not found: create it, or leave out --config and \
                     MXSEND_CONFIG to use the defaults",
                    path.display()
                ),
            ));
        }
        return Ok(Some(path));
    }
    let user = home().map(|home| home.join(".config/mxsend/config.toml"));
    let system = PathBuf::from("/etc/mxsend/config.toml");
    Ok(user.into_iter().chain([system]).find(|path| path.is_file()))
}

fn read_config(path: &Path) -> Result<Config, Failure> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        Failure::new(
            EXIT_CONFIG,
            format!(
                "cannot read configuration file {}: {error}; check its permissions",
                path.display()
            ),
        )
    })?;
    toml::from_str(&text).map_err(|error| {
        config_error(
            Some(path),
            format!(
                "{}; see docs/operators.md for the fields",
                error.to_string().trim_end()
            ),
        )
    })
}

/// The spool when nothing names one.
fn default_spool() -> PathBuf {
    if let Some(path) = std::env::var_os("MXSEND_SPOOL").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if is_root() {
        return PathBuf::from("/var/spool/mxsend");
    }
    match home() {
        Some(home) => home.join(".local/state/mxsend"),
        None => PathBuf::from("/var/spool/mxsend"),
    }
}

/// Whether the effective user is root: `/proc/self` belongs to the
/// process's effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|metadata| metadata.uid() == 0)
}

fn resolve(file: Option<PathBuf>, config: Config, spool: PathBuf) -> Result<Service, Failure> {
    let fail =
        |field: &str, message: String| config_error(file.as_deref(), format!("{field}: {message}"));
    let duration =
        |field: &str, text: &str| parse_duration(text).map_err(|message| fail(field, message));

    let ehlo_name = match &config.identity.ehlo_name {
        Some(name) => {
            SessionConfig::new(name)
                .map_err(|error| fail("identity.ehlo_name", error.to_string()))?;
            Some(name.clone())
        }
        None => default_ehlo_name(),
    };
    let qualify_domain = config
        .identity
        .qualify_domain
        .clone()
        .or_else(|| ehlo_name.clone())
        .unwrap_or_else(|| "localhost".to_owned());

    let route = match &config.delivery.relay {
        Some(relay) => {
            let (host, port) =
                parse_relay(relay).map_err(|message| fail("delivery.relay", message))?;
            Route::Relay { host, port }
        }
        None => Route::Mx,
    };
    let nameserver = match &config.delivery.nameserver {
        Some(text) => Nameserver::At(
            parse_nameserver(text).map_err(|message| fail("delivery.nameserver", message))?,
        ),
        None => Nameserver::System,
    };
    let resolver = ResolverSettings {
        nameserver,
        timeout: duration("delivery.dns_timeout", &config.delivery.dns_timeout)?,
        ..ResolverSettings::default()
    };
    let mut timeouts = Timeouts::default();
    if let Some(text) = &config.delivery.reply_timeout {
        let timeout = duration("delivery.reply_timeout", text)?;
        timeouts = Timeouts::uniform(timeout);
    }
    let connection = ConnectionConfig {
        helo_name: ehlo_name.clone(),
        connect_timeout: duration("delivery.connect_timeout", &config.delivery.connect_timeout)?,
        timeouts,
        pipelining: config.delivery.pipelining,
        chunking: config.delivery.chunking,
        transcript: false,
        tls: tls_config(&config.delivery, &fail)?,
        auth: auth_settings(&config.delivery, &fail)?,
        ..ConnectionConfig::default()
    };
    let delivery = DeliveryConfig {
        connection,
        port: config.delivery.mx_port,
        route,
    };
    let submission = Submission::parse(&config.delivery.submission).ok_or_else(|| {
        fail(
            "delivery.submission",
            format!(
                "invalid value {:?}: expected \"background\", \"inline\" or \"queue\"",
                config.delivery.submission
            ),
        )
    })?;

    let retry = &config.retry;
    if !(retry.multiplier.is_finite() && retry.multiplier >= 1.0) {
        return Err(fail(
            "retry.multiplier",
            format!(
                "invalid value {}: expected a number of at least 1.0",
                retry.multiplier
            ),
        ));
    }
    if !(0.0..=1.0).contains(&retry.jitter) {
        return Err(fail(
            "retry.jitter",
            format!(
                "invalid value {}: expected a fraction from 0.0 to 1.0",
                retry.jitter
            ),
        ));
    }
    let schedule = RetrySchedule {
        first: duration("retry.first", &retry.first)?,
        multiplier: retry.multiplier,
        max_interval: duration("retry.max_interval", &retry.max_interval)?,
        jitter: retry.jitter,
        max_age: duration("retry.max_age", &retry.max_age)?,
        bounce_max_age: duration("retry.bounce_max_age", &retry.bounce_max_age)?,
        warn_after: match &retry.warn_after {
            Some(text) => Some(duration("retry.warn_after", text)?),
            None => None,
        },
    };
    let daemon = &config.daemon;
    if daemon.concurrency == 0 || daemon.per_destination == 0 {
        return Err(fail(
            "daemon.concurrency and daemon.per_destination",
            "must be at least 1".to_owned(),
        ));
    }
    let queue = QueueSettings {
        retry: schedule,
        reporting_mta: ehlo_name.clone().unwrap_or_else(|| qualify_domain.clone()),
        concurrency: daemon.concurrency,
        per_destination: daemon.per_destination,
        lease: duration("daemon.lease", &daemon.lease)?,
        keep_done: duration("spool.keep_done", &config.spool.keep_done)?,
        poll_interval: duration("daemon.poll_interval", &daemon.poll_interval)?,
        shutdown_grace: duration("daemon.shutdown_grace", &daemon.shutdown_grace)?,
    };
    let max_size = match &config.spool.max_size {
        Some(text) => Some(parse_size(text).map_err(|message| fail("spool.max_size", message))?),
        None => None,
    };
    let mut own_addresses = Vec::new();
    for text in &config.identity.addresses {
        let address = text.parse::<std::net::IpAddr>().map_err(|_| {
            fail(
                "identity.addresses",
                format!("invalid IP address {text:?}: expected an IP address such as 192.0.2.1 or 2001:db8::1"),
            )
        })?;
        own_addresses.push(address);
    }

    Ok(Service {
        file,
        config,
        spool,
        ehlo_name,
        qualify_domain,
        delivery,
        resolver,
        queue,
        max_size,
        submission,
        own_addresses,
    })
}

/// This machine's host name when it is fully qualified, else `None`, which
/// makes connections send their address literal (RFC 5321 section 4.1.4).
fn default_ehlo_name() -> Option<String> {
    let name = gethostname::gethostname().into_string().ok()?;
    let name = name.trim_end_matches('.');
    if !name.contains('.') {
        return None;
    }
    SessionConfig::new(name).ok().map(|_| name.to_owned())
}

/// Parses a duration such as `30s`, `5m`, `3h`, `5d` or `250ms`.
///
/// # Errors
///
/// A message naming the text and the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {text:?}: expected a number with a unit, such as 250ms, 30s, 5m, 3h or 5d"
        )
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_millis: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_millis)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

/// Parses a size such as `500MB`, `2GB`, `64KB` or `1000000` (octets).
fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid size {text:?}: expected octets or a number with KB, MB or GB, such as 500MB"
        )
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return Err(invalid()),
    };
    number.checked_mul(factor).ok_or_else(invalid)
}

/// `mxsend config check`: loads the configuration and prints the effective
/// settings as TOML.
///
/// # Errors
///
/// A [`Failure`] with status 78 for an invalid configuration.
pub fn run(args: &ConfigArgs) -> Result<u8, Failure> {
    match &args.command {
        ConfigCommand::Check(service) => {
            let loaded = Service::load(service)?;
            let mut effective = loaded.config.clone();
            effective.spool.path = Some(loaded.spool.clone());
            effective.identity.ehlo_name = loaded.ehlo_name.clone();
            effective.identity.qualify_domain = Some(loaded.qualify_domain.clone());
            let text = toml::to_string_pretty(&effective).map_err(|error| {
                Failure::new(
                    crate::exit::SOFTWARE,
                    format!("cannot print the configuration as TOML: {error}"),
                )
            })?;
            match &loaded.file {
                Some(file) => println!("# configuration file: {}", file.display()),
                None => println!("# no configuration file found: defaults apply"),
            }
            if loaded.ehlo_name.is_none() {
                println!(
                    "# identity.ehlo_name: this host's name is not fully qualified, so EHLO \
                     sends the address literal"
                );
            }
            print!("{text}");
            Ok(crate::exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432_000));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("64KB").unwrap(), 65_536);
        assert_eq!(parse_size("2gb").unwrap(), 2 << 30);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config: Config = toml::from_str("").unwrap();
        let service = resolve(None, config, PathBuf::from("/nonexistent-spool")).unwrap();
        assert_eq!(service.delivery.route, Route::Mx);
        assert_eq!(service.delivery.port, 25);
        assert_eq!(service.queue.retry, RetrySchedule::default());
        assert_eq!(service.submission, Submission::Background);
    }

    #[test]
    fn chunking_follows_the_file() {
        let default = resolve(None, Config::default(), PathBuf::from("/nonexistent-spool"));
        assert!(default.unwrap().delivery.connection.chunking);
        let config: Config = toml::from_str("[delivery]\nchunking = false\n").unwrap();
        let service = resolve(None, config, PathBuf::from("/nonexistent-spool")).unwrap();
        assert!(!service.delivery.connection.chunking);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let error = toml::from_str::<Config>("[delivery]\nrelai = \"x\"\n").unwrap_err();
        assert!(error.to_string().contains("relai"), "{error}");
    }
}
