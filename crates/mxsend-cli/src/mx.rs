//! `mxsend mx`: show the exchangers of a domain in the order they would
//! be tried.

use std::io::Write;

use mxsend::proto::Address;
use mxsend::{MxError, MxPlan, MxSource};

use crate::args::MxArgs;
use crate::exit;
use crate::failure::Failure;
use crate::send;

/// Looks up the domain of `args` and prints its plan.
///
/// # Errors
///
/// A [`Failure`] with 64 for an invalid domain, 68 for a domain that does
/// not exist or whose exchangers have no address, 69 for a null MX, and 75
/// for a DNS failure that may pass.
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
    if args.json {
        let text = serde_json::to_string_pretty(&plan).map_err(|error| {
            Failure::new(
                exit::SOFTWARE,
                format!("cannot encode the result as JSON: {error}"),
            )
        })?;
        println!("{text}");
    } else {
        print_plan(&plan);
    }
    Ok(exit::OK)
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

fn print_plan(plan: &MxPlan) {
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
        let _ = writeln!(
            stdout,
            "{:>2}. {} (preference {})",
            position + 1,
            host.name,
            host.preference
        );
        for address in &host.addresses {
            let _ = writeln!(stdout, "      {address}");
        }
        if let Some(error) = &host.error {
            let _ = writeln!(stdout, "      not usable: {error}");
        }
    }
}
