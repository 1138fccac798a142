//! Mail exchanger lookup (RFC 5321 section 5.1) on hickory-resolver.
//!
//! The outcome of an MX query decides everything else:
//!
//! | answer | result |
//! | --- | --- |
//! | MX records | those hosts, by preference, random among equals (C-MX-04) |
//! | a single `MX 0 .` or any MX with the root as target | [`MxError::NullMx`], permanent (RFC 7505, C-MX-07) |
//! | NOERROR without MX records | the domain itself, preference 0 (implicit MX, C-MX-02) |
//! | NXDOMAIN | [`MxError::NoSuchDomain`], permanent |
//! | SERVFAIL, REFUSED, timeout | [`MxError::Temporary`]: never taken as "no MX" |
//!
//! Each exchanger's AAAA and A records are looked up; a host whose lookups
//! fail keeps the error and no address, so delivery moves on to the next
//! host. Names are looked up as fully qualified names (a trailing dot is
//! added, so no search list applies, C-MX-01), letter case and a given
//! trailing dot do not matter, and U-labels are converted to A-labels
//! (C-MX-10). The resolver follows CNAME records at the domain and at the
//! exchanger names (C-MX-08). An exchanger name that is an IP address is
//! refused, as Exim does by default (C-MX-09).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, ResolveError, TokioResolver};
use rand::seq::SliceRandom;

/// Where DNS questions go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Nameserver {
    /// The servers of `/etc/resolv.conf`.
    #[default]
    System,
    /// One server at this address, over UDP with TCP for truncated answers.
    At(SocketAddr),
}

/// Settings of the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Where DNS questions go. Default: the system's servers.
    pub nameserver: Nameserver,
    /// Time allowed for one DNS request. Default 5 seconds.
    pub timeout: Duration,
    /// Requests per question before giving up. Default 2.
    pub attempts: usize,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            nameserver: Nameserver::System,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// How the exchangers of a domain were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MxSource {
    /// From MX records.
    Mx,
    /// No MX records: the domain's own addresses (RFC 5321 section 5.1).
    ImplicitMx,
    /// The domain is an address literal such as `[192.0.2.1]`.
    AddressLiteral,
    /// A configured relay host, with no MX lookup.
    Relay,
}

impl fmt::Display for MxSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MxSource::Mx => "MX",
            MxSource::ImplicitMx => "implicit MX",
            MxSource::AddressLiteral => "address literal",
            MxSource::Relay => "relay",
        })
    }
}

/// One exchanger and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MxHost {
    /// The host name, lower case, without a trailing dot.
    pub name: String,
    /// The MX preference; 0 for an implicit MX.
    pub preference: u16,
    /// Its addresses, AAAA first, then A, in the resolver's order.
    pub addresses: Vec<IpAddr>,
    /// Why the host has no address, when a lookup failed.
    pub error: Option<String>,
}

/// The exchangers of one domain in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MxPlan {
    /// The domain as looked up: lower case, A-labels, no trailing dot.
    pub domain: String,
    /// How the hosts were found.
    pub source: MxSource,
    /// The hosts in order.
    pub hosts: Vec<MxHost>,
}

impl MxPlan {
    /// Every address in order with the host it belongs to.
    pub fn addresses(&self) -> impl Iterator<Item = (&MxHost, IpAddr)> {
        self.hosts
            .iter()
            .flat_map(|host| host.addresses.iter().map(move |ip| (host, *ip)))
    }

    /// Returns the exchanger that is this host, as its preference and name:
    /// the most preferred exchanger from MX records that has one of this
    /// host's addresses. Delivery from this host drops it and every
    /// exchanger whose preference value is not lower (C-MX-06, RFC 5321
    /// section 5.1). Returns `None` for an implicit MX or an address
    /// literal, which are never dropped. An IPv4-mapped IPv6 address, as a
    /// dual-stack socket reports an IPv4 peer, matches its IPv4 address.
    pub fn own_exchanger(&self, own_addresses: &[IpAddr]) -> Option<(u16, &str)> {
        if own_addresses.is_empty() || self.source != MxSource::Mx {
            return None;
        }
        self.hosts
            .iter()
            .filter(|host| {
                host.addresses
                    .iter()
                    .any(|ip| is_one_of(*ip, own_addresses))
            })
            .map(|host| (host.preference, host.name.as_str()))
            .min()
    }
}

/// Returns whether `ip` is one of `addresses`, comparing IPv4-mapped IPv6
/// addresses as the IPv4 addresses they carry.
pub fn is_one_of(ip: IpAddr, addresses: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    addresses.iter().any(|other| other.to_canonical() == ip)
}

/// Why the exchangers of a domain could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MxError {
    /// The domain publishes a null MX: it accepts no mail (RFC 7505).
    #[error("domain {domain} does not accept mail (null MX)")]
    NullMx {
        /// The domain.
        domain: String,
    },
    /// The domain does not exist (NXDOMAIN).
    #[error("domain {domain} does not exist")]
    NoSuchDomain {
        /// The domain.
        domain: String,
    },
    /// No exchanger of the domain has an address.
    #[error("no mail exchanger of {domain} has an address ({reasons})")]
    NoAddress {
        /// The domain.
        domain: String,
        /// Each exchanger with the reason it has no address, such as
        /// `mx.example.net: host mx.example.net does not exist`.
        reasons: String,
    },
    /// The domain is not a valid DNS name.
    #[error("invalid domain name {domain:?}")]
    InvalidDomain {
        /// The domain as given.
        domain: String,
    },
    /// The lookup failed in a way that may pass: SERVFAIL, REFUSED, a
    /// timeout or a network error.
    #[error("DNS lookup for {domain} failed temporarily: {reason}")]
    Temporary {
        /// The domain.
        domain: String,
        /// What the resolver reported.
        reason: String,
    },
}

impl MxError {
    /// Whether retrying later cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, MxError::Temporary { .. })
    }
}

/// Finds the mail exchangers of a domain.
#[derive(Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
}

impl fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MxResolver").finish_non_exhaustive()
    }
}

/// A lookup that found nothing, sorted by what it means for mail.
enum Miss {
    NoData,
    NxDomain,
    Temporary(String),
}

fn classify(error: &ResolveError) -> Miss {
    use hickory_resolver::proto::ProtoErrorKind;
    if let Some(proto) = error.proto()
        && let ProtoErrorKind::NoRecordsFound { response_code, .. } = proto.kind()
    {
        return match *response_code {
            ResponseCode::NoError => Miss::NoData,
            ResponseCode::NXDomain => Miss::NxDomain,
            code => Miss::Temporary(format!("server answered {code}")),
        };
    }
    match error.proto().map(|proto| proto.kind()) {
        Some(ProtoErrorKind::Timeout) => {
            Miss::Temporary("no response from the DNS server (timed out)".to_owned())
        }
        Some(kind) => Miss::Temporary(kind.to_string()),
        None => Miss::Temporary(error.to_string()),
    }
}

impl MxResolver {
    /// Creates a resolver.
    ///
    /// # Errors
    ///
    /// [`MxError::Temporary`] with domain `resolv.conf` when the system
    /// configuration cannot be read.
    pub fn new(settings: &ResolverSettings) -> Result<MxResolver, MxError> {
        let mut options = ResolverOpts::default();
        options.timeout = settings.timeout;
        options.attempts = settings.attempts;
        options.ndots = 0;
        // Room for the MX, A and AAAA answers of a few thousand domains, so
        // a queue run over many destinations does not evict what it needs
        // again a moment later.
        options.cache_size = 8192;
        options.try_tcp_on_error = true;
        let provider = TokioConnectionProvider::default();
        let builder = match &settings.nameserver {
            Nameserver::System => {
                TokioResolver::builder(provider).map_err(|error| MxError::Temporary {
                    domain: "resolv.conf".to_owned(),
                    reason: error.to_string(),
                })?
            }
            Nameserver::At(address) => {
                let mut config = ResolverConfig::new();
                config.add_name_server(NameServerConfig::new(*address, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*address, Protocol::Tcp));
                TokioResolver::builder_with_config(config, provider)
            }
        };
        Ok(MxResolver {
            resolver: builder.with_options(options).build(),
        })
    }

    /// Finds the exchangers of `domain` and their addresses.
    ///
    /// # Errors
    ///
    /// An [`MxError`]; [`MxError::is_permanent`] tells whether to bounce.
    pub async fn resolve(&self, domain: &str) -> Result<MxPlan, MxError> {
        if let Some(plan) = literal_plan(domain) {
            return plan;
        }
        let name = fqdn(domain)?;
        let display = display_name(&name);
        let hosts = match self.resolver.mx_lookup(name.clone()).await {
            Ok(lookup) => {
                let mut records: Vec<(u16, Name)> = lookup
                    .iter()
                    .map(|mx| (mx.preference(), mx.exchange().clone()))
                    .collect();
                if records.iter().any(|(_, exchange)| exchange.is_root()) {
                    return Err(MxError::NullMx { domain: display });
                }
                // Shuffle, then sort by preference with a stable sort, so
                // equal preferences come in random order (C-MX-04).
                records.shuffle(&mut rand::rng());
                records.sort_by_key(|(preference, _)| *preference);
                let mut hosts = Vec::with_capacity(records.len());
                for (preference, exchange) in records {
                    hosts.push(self.host(exchange, preference).await);
                }
                (MxSource::Mx, hosts)
            }
            Err(error) => match classify(&error) {
                Miss::NoData => (MxSource::ImplicitMx, vec![self.host(name, 0).await]),
                Miss::NxDomain => return Err(MxError::NoSuchDomain { domain: display }),
                Miss::Temporary(reason) => {
                    return Err(MxError::Temporary {
                        domain: display,
                        reason,
                    });
                }
            },
        };
        let (source, hosts) = hosts;
        if hosts.iter().all(|host| host.addresses.is_empty()) {
            let temporary = hosts
                .iter()
                .filter_map(|host| host.error.as_deref())
                .find(|error| is_temporary_text(error));
            return Err(match temporary {
                Some(reason) => MxError::Temporary {
                    domain: display,
                    reason: reason.to_owned(),
                },
                None => MxError::NoAddress {
                    domain: display,
                    reasons: hosts
                        .iter()
                        .map(|host| match &host.error {
                            Some(error) => format!("{}: {error}", host.name),
                            None => format!("{}: no address", host.name),
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                },
            });
        }
        Ok(MxPlan {
            domain: display,
            source,
            hosts,
        })
    }

    /// Looks up the addresses of a relay host, or takes an IP address as is.
    ///
    /// # Errors
    ///
    /// As [`MxResolver::resolve`], for the host name.
    pub async fn resolve_host(&self, host: &str) -> Result<MxPlan, MxError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(MxPlan {
                domain: bare.to_owned(),
                source: MxSource::Relay,
                hosts: vec![MxHost {
                    name: bare.to_owned(),
                    preference: 0,
                    addresses: vec![ip],
                    error: None,
                }],
            });
        }
        let name = fqdn(host)?;
        let display = display_name(&name);
        let found = self.host(name, 0).await;
        if found.addresses.is_empty() {
            let reason = found.error.unwrap_or_default();
            return Err(if is_temporary_text(&reason) {
                MxError::Temporary {
                    domain: display,
                    reason,
                }
            } else {
                MxError::NoSuchDomain { domain: display }
            });
        }
        Ok(MxPlan {
            domain: display,
            source: MxSource::Relay,
            hosts: vec![found],
        })
    }

    /// Looks up AAAA and A records of one exchanger.
    async fn host(&self, name: Name, preference: u16) -> MxHost {
        let display = display_name(&name);
        let mut host = MxHost {
            name: display.clone(),
            preference,
            addresses: Vec::new(),
            error: None,
        };
        if display.parse::<IpAddr>().is_ok() {
            host.error = Some(format!(
                "exchanger {display} is an IP address, not a host name (refused)"
            ));
            return host;
        }
        let (v6, v4) = tokio::join!(
            self.resolver.ipv6_lookup(name.clone()),
            self.resolver.ipv4_lookup(name)
        );
        let mut errors = Vec::new();
        match v6 {
            Ok(lookup) => host
                .addresses
                .extend(lookup.iter().map(|r| IpAddr::V6(r.0))),
            Err(error) => errors.push(error),
        }
        match v4 {
            Ok(lookup) => host
                .addresses
                .extend(lookup.iter().map(|r| IpAddr::V4(r.0))),
            Err(error) => errors.push(error),
        }
        if host.addresses.is_empty() {
            host.error = Some(
                match errors
                    .iter()
                    .map(classify)
                    .find(|miss| matches!(miss, Miss::Temporary(_)))
                {
                    Some(Miss::Temporary(reason)) => format!("{TEMPORARY_PREFIX}{reason}"),
                    _ if errors.iter().any(ResolveError::is_nx_domain) => {
                        format!("host {display} does not exist")
                    }
                    _ => format!("host {display} has no A or AAAA record"),
                },
            );
        }
        host
    }
}

/// Marks a host error text as a temporary DNS failure.
const TEMPORARY_PREFIX: &str = "temporary DNS failure: ";

fn is_temporary_text(text: &str) -> bool {
    text.starts_with(TEMPORARY_PREFIX)
}

/// The plan for an address literal domain such as `[192.0.2.1]` (C-MX-12).
fn literal_plan(domain: &str) -> Option<Result<MxPlan, MxError>> {
    let literal = domain.strip_prefix('[')?.strip_suffix(']')?;
    let text = literal.strip_prefix("IPv6:").unwrap_or(literal);
    let plan = match text.parse::<IpAddr>() {
        Ok(ip) => Ok(MxPlan {
            domain: domain.to_owned(),
            source: MxSource::AddressLiteral,
            hosts: vec![MxHost {
                name: ip.to_string(),
                preference: 0,
                addresses: vec![ip],
                error: None,
            }],
        }),
        Err(_) => Err(MxError::InvalidDomain {
            domain: domain.to_owned(),
        }),
    };
    Some(plan)
}

/// Converts a domain to an absolute name in A-labels.
fn fqdn(domain: &str) -> Result<Name, MxError> {
    let trimmed = domain.trim().trim_end_matches('.');
    let invalid = || MxError::InvalidDomain {
        domain: domain.to_owned(),
    };
    if trimmed.is_empty() {
        return Err(invalid());
    }
    let mut name = Name::from_utf8(trimmed).map_err(|_| invalid())?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// A name for reports: lower case, no trailing dot.
fn display_name(name: &Name) -> String {
    let mut text = name.to_lowercase().to_ascii();
    if text.len() > 1 && text.ends_with('.') {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, preference: u16, address: &str) -> MxHost {
        MxHost {
            name: name.to_owned(),
            preference,
            addresses: vec![address.parse().unwrap()],
            error: None,
        }
    }

    /// C-MX-06: this host's address matches in either form, IPv4 or
    /// IPv4-mapped IPv6, on either side.
    #[test]
    fn own_exchanger_matches_mapped_addresses() {
        let plan = MxPlan {
            domain: "example.net".to_owned(),
            source: MxSource::Mx,
            hosts: vec![
                host("a.example.net", 10, "192.0.2.1"),
                host("b.example.net", 20, "::ffff:192.0.2.2"),
            ],
        };
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let plain: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(plan.own_exchanger(&[mapped]), Some((10, "a.example.net")));
        assert_eq!(plan.own_exchanger(&[plain]), Some((20, "b.example.net")));
        let other: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(plan.own_exchanger(&[other]), None);

        let implicit = MxPlan {
            source: MxSource::ImplicitMx,
            ..plan
        };
        assert_eq!(implicit.own_exchanger(&[mapped]), None);
    }

    #[test]
    fn fqdn_ignores_case_and_trailing_dot() {
        assert_eq!(display_name(&fqdn("Example.NET.").unwrap()), "example.net");
        assert!(fqdn("example.net").unwrap().is_fqdn());
    }

    #[test]
    fn fqdn_converts_to_a_labels() {
        assert_eq!(
            display_name(&fqdn("bücher.example").unwrap()),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn address_literal_skips_lookup() {
        let plan = literal_plan("[IPv6:::1]").unwrap().unwrap();
        assert_eq!(plan.source, MxSource::AddressLiteral);
        assert_eq!(plan.hosts[0].addresses, ["::1".parse::<IpAddr>().unwrap()]);
        assert!(literal_plan("[nonsense]").unwrap().is_err());
        assert!(literal_plan("example.net").is_none());
    }
}
