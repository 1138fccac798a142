//! `mxsend mx`: show the exchangers of a domain in the order they would
//! be tried, and with `--own-address`, which ones delivery from this host
//! drops.

use std::io::Write;
use std::net::IpAddr;

use mxsend::proto::Address;
use mxsend::{MxError, MxHost, MxPlan, MxSource};

use crate::args::MxArgs;
use crate::exit;
use crate::failure::Failure;
use crate::send;

/// Looks up the domain of `args` and prints its plan.
///
/// # Errors
///
/// A [`Failure`] with 64 for an invalid domain, 68 for a domain that does
/// not exist or whose exchangers have no address, 69 for a null MX or for
/// mail that would loop back to this host, and 75 for a DNS failure that
/// may pass. The plan is printed before a loop is reported.
pub async fn run(args: &MxArgs) -> Result<u8, Failure> {
    let domain = domain_of(&args.domain)?;
    let resolver = send::resolver(&args.dns)?;
    let plan = match resolver.resolve(&domain).await {
        Ok(plan) => plan,
        Err(error) => {
            let failure = mx_failure(error, args.dns.nameserver);
            if args.json {
                // Scripts get a JSON document either way.
                let value = serde_json::json!({ "domain": domain, "error": failure.message });
                println!("{value}");
            }
            return Err(failure);
        }
    };
    let mut own_addresses: Vec<IpAddr> = Vec::with_capacity(args.own_addresses.len());
    for ip in &args.own_addresses {
        if !own_addresses.contains(ip) {
            own_addresses.push(*ip);
        }
    }
    let own = OwnHost::find(&plan, &own_addresses);
    let loop_error = own.loop_error(&plan);
    if args.json {
        // Without --own-address the document is the plan alone, so scripts
        // that do not pass the option see no new fields.
        let encoded = if args.own_addresses.is_empty() {
            serde_json::to_string_pretty(&plan)
        } else {
            serde_json::to_string_pretty(&CheckedPlan::new(&plan, &own, loop_error.as_deref()))
        };
        let text = encoded.map_err(|error| {
            Failure::new(
                exit::SOFTWARE,
                format!("cannot encode the result as JSON: {error}"),
            )
        })?;
        println!("{text}");
    } else {
        print_plan(&plan, &own);
    }
    match loop_error {
        Some(message) => Err(Failure::new(exit::UNAVAILABLE, message)),
        None => Ok(exit::OK),
    }
}

/// This host's place among the exchangers of a plan, from `--own-address`.
///
/// It uses the rule of `Delivery::with_own_addresses`,
/// [`MxPlan::own_exchanger`] (RFC 5321 section 5.1), so that this command
/// drops the exchangers that `mxsend send` drops.
struct OwnHost<'a> {
    addresses: &'a [IpAddr],
    /// The preference and name of the exchanger that is this host.
    exchanger: Option<(u16, &'a str)>,
}

impl<'a> OwnHost<'a> {
    fn find(plan: &'a MxPlan, addresses: &'a [IpAddr]) -> OwnHost<'a> {
        OwnHost {
            addresses,
            exchanger: plan.own_exchanger(addresses),
        }
    }

    fn is_own_address(&self, ip: &IpAddr) -> bool {
        mxsend::resolver::is_one_of(*ip, self.addresses)
    }

    fn has_own_address(&self, host: &MxHost) -> bool {
        host.addresses.iter().any(|ip| self.is_own_address(ip))
    }

    /// Returns whether delivery from this host skips `host`.
    fn drops(&self, host: &MxHost) -> bool {
        self.exchanger
            .is_some_and(|(preference, _)| host.preference >= preference)
    }

    /// Returns whether this host is the most preferred exchanger, so that
    /// no exchanger is left to send to.
    fn loops_back(&self, plan: &MxPlan) -> bool {
        self.exchanger.is_some() && plan.hosts.iter().all(|host| self.drops(host))
    }

    /// Returns the error message for a plan where mail loops back.
    fn loop_error(&self, plan: &MxPlan) -> Option<String> {
        let (preference, name) = self.exchanger?;
        if !self.loops_back(plan) {
            return None;
        }
        Some(format!(
            "mail for {} loops back to this host: it is the exchanger {name} (preference \
             {preference}), and no exchanger is preferred to it; check the --own-address \
             values and the domain's MX records",
            plan.domain
        ))
    }
}

/// The JSON document of `mxsend mx --own-address`: the plan with the marks
/// of each host and what they mean for delivery.
#[derive(serde::Serialize)]
struct CheckedPlan<'a> {
    domain: &'a str,
    source: MxSource,
    hosts: Vec<CheckedHost<'a>>,
    own_addresses: &'a [IpAddr],
    /// The preference value of this host. Every exchanger with this value
    /// or a higher one is dropped. `None` when no exchanger from MX records
    /// is this host.
    dropped_from_preference: Option<u16>,
    loops_back: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// One exchanger in a [`CheckedPlan`].
#[derive(serde::Serialize)]
struct CheckedHost<'a> {
    #[serde(flatten)]
    host: &'a MxHost,
    /// Whether the host has one of the `--own-address` values.
    this_host: bool,
    /// Whether delivery from this host skips it.
    dropped: bool,
}

impl<'a> CheckedPlan<'a> {
    fn new(plan: &'a MxPlan, own: &OwnHost<'a>, error: Option<&'a str>) -> CheckedPlan<'a> {
        CheckedPlan {
            domain: &plan.domain,
            source: plan.source,
            hosts: plan
                .hosts
                .iter()
                .map(|host| CheckedHost {
                    host,
                    this_host: own.has_own_address(host),
                    dropped: own.drops(host),
                })
                .collect(),
            own_addresses: own.addresses,
            dropped_from_preference: own.exchanger.map(|(preference, _)| preference),
            loops_back: error.is_some(),
            error,
        }
    }
}

/// Extracts the domain from `text`, which is a domain or an address.
fn domain_of(text: &str) -> Result<String, Failure> {
    if !text.contains('@') {
        return Ok(text.to_owned());
    }
    Address::parse(text)
        .map(|address| address.domain().to_owned())
        .map_err(|error| Failure::new(exit::USAGE, format!("invalid address {text:?}: {error}")))
}

fn mx_failure(error: MxError, nameserver: Option<std::net::SocketAddr>) -> Failure {
    let status = match &error {
        MxError::NullMx { .. } => exit::UNAVAILABLE,
        MxError::NoSuchDomain { .. } | MxError::NoAddress { .. } => exit::NO_HOST,
        MxError::InvalidDomain { .. } => exit::USAGE,
        _ if error.is_permanent() => exit::UNAVAILABLE,
        _ => exit::TEMPORARY,
    };
    let asked = match nameserver {
        Some(address) => format!("the nameserver {address}"),
        None => "the nameservers in /etc/resolv.conf".to_owned(),
    };
    let hint = match &error {
        MxError::NullMx { .. } => "; mail to this domain cannot be delivered".to_owned(),
        MxError::Temporary { .. } => format!("; try again later, or check {asked}"),
        _ => String::new(),
    };
    Failure::new(status, format!("{error}{hint}"))
}

fn print_plan(plan: &MxPlan, own: &OwnHost<'_>) {
    let mut stdout = std::io::stdout().lock();
    let source = match plan.source {
        MxSource::Mx => "MX records",
        MxSource::ImplicitMx => {
            "no MX records, so the domain itself is the exchanger (implicit MX)"
        }
        MxSource::AddressLiteral => "an address literal",
        MxSource::Relay => "a relay",
    };
    let _ = writeln!(stdout, "{}: {source}", plan.domain);
    for (position, host) in plan.hosts.iter().enumerate() {
        let dropped = match (own.drops(host), own.has_own_address(host)) {
            (false, _) => "",
            (true, true) => ": dropped, this host",
            (true, false) => ": dropped, not preferred to this host",
        };
        let _ = writeln!(
            stdout,
            "{:>2}. {} (preference {}){dropped}",
            position + 1,
            host.name,
            host.preference
        );
        for address in &host.addresses {
            if own.is_own_address(address) {
                let _ = writeln!(stdout, "      {address} (this host)");
            } else {
                let _ = writeln!(stdout, "      {address}");
            }
        }
        if let Some(error) = &host.error {
            let _ = writeln!(stdout, "      not usable: {error}");
        }
    }
    if !own.addresses.is_empty() {
        let _ = writeln!(stdout, "{}", own_host_summary(plan, own));
    }
}

/// Describes in one line what `--own-address` changes for delivery. For a
/// loop, the command's error message on standard error gives the details.
fn own_host_summary(plan: &MxPlan, own: &OwnHost<'_>) -> String {
    if let Some((preference, name)) = own.exchanger {
        if own.loops_back(plan) {
            return format!(
                "this host is {name} (preference {preference}) and no exchanger is preferred to it"
            );
        }
        let usable = plan
            .hosts
            .iter()
            .any(|host| !own.drops(host) && !host.addresses.is_empty());
        if !usable {
            return format!(
                "this host is {name} (preference {preference}), and no exchanger preferred to it \
                 has an address, so delivery would defer until one has"
            );
        }
        return format!(
            "this host is {name} (preference {preference}), so delivery uses only the exchangers \
             preferred to it"
        );
    }
    match plan.hosts.iter().find(|host| own.has_own_address(host)) {
        Some(host) => format!(
            "this host is {}, but only exchangers from MX records are dropped, so delivery would \
             still connect to it",
            host.name
        ),
        None => "no exchanger is this host, so delivery drops none".to_owned(),
    }
}
