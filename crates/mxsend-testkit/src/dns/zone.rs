//! Zone contents: the public builder and the lookup table the DNS handler reads.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// TTL of every record the test server serves, in seconds.
const RECORD_TTL: u32 = 300;

/// Maximum number of CNAME records followed for one query.
const MAX_CNAME_STEPS: usize = 8;

/// A set of DNS records and per-name faults, built with chained calls.
///
/// Names are case-insensitive and may be written with or without the
/// trailing dot. Nothing is validated until [`DnsServer::start`], which
/// rejects names that are not valid DNS names.
///
/// ```
/// use std::net::Ipv4Addr;
/// use mxsend_testkit::dns::Zone;
///
/// let zone = Zone::new()
///     .mx("example.test", 10, "mx.example.test")
///     .a("mx.example.test", Ipv4Addr::LOCALHOST)
///     .mx("nullmx.test", 0, ".")
///     .servfail("broken.test");
/// # let _ = zone;
/// ```
///
/// [`DnsServer::start`]: crate::dns::DnsServer::start
#[derive(Clone, Debug, Default)]
pub struct Zone {
    entries: Vec<ZoneEntry>,
}

#[derive(Clone, Debug)]
enum ZoneEntry {
    Mx {
        name: String,
        preference: u16,
        exchange: String,
    },
    A {
        name: String,
        addr: Ipv4Addr,
    },
    Aaaa {
        name: String,
        addr: Ipv6Addr,
    },
    Cname {
        name: String,
        target: String,
    },
    Fault {
        name: String,
        fault: Fault,
    },
    TruncateUdp {
        name: String,
    },
}

/// A deliberate failure configured for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The server responds SERVFAIL to every query.
    ServFail,
    /// Queries are dropped without a response.
    NoResponse,
}

impl Zone {
    /// Creates an empty zone, in which every name is NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an MX record. An `exchange` of `"."` makes a null MX (RFC 7505).
    pub fn mx(mut self, name: &str, preference: u16, exchange: &str) -> Self {
        self.entries.push(ZoneEntry::Mx {
            name: name.to_owned(),
            preference,
            exchange: exchange.to_owned(),
        });
        self
    }

    /// Adds an A record.
    pub fn a(mut self, name: &str, addr: Ipv4Addr) -> Self {
        self.entries.push(ZoneEntry::A {
            name: name.to_owned(),
            addr,
        });
        self
    }

    /// Adds an AAAA record.
    pub fn aaaa(mut self, name: &str, addr: Ipv6Addr) -> Self {
        self.entries.push(ZoneEntry::Aaaa {
            name: name.to_owned(),
            addr,
        });
        self
    }

    /// Adds a CNAME record that points `name` at `target`.
    pub fn cname(mut self, name: &str, target: &str) -> Self {
        self.entries.push(ZoneEntry::Cname {
            name: name.to_owned(),
            target: target.to_owned(),
        });
        self
    }

    /// Makes the server respond SERVFAIL to every query for `name`, whatever
    /// records it has.
    pub fn servfail(mut self, name: &str) -> Self {
        self.entries.push(ZoneEntry::Fault {
            name: name.to_owned(),
            fault: Fault::ServFail,
        });
        self
    }

    /// Makes the server answer every UDP query for `name` with an empty,
    /// truncated response (the TC bit set), so the client has to ask again
    /// over TCP, where the records come back.
    pub fn truncate_udp(mut self, name: &str) -> Self {
        self.entries.push(ZoneEntry::TruncateUdp {
            name: name.to_owned(),
        });
        self
    }

    /// Makes the server drop every query for `name` without a response, so
    /// the client times out.
    pub fn no_answer(mut self, name: &str) -> Self {
        self.entries.push(ZoneEntry::Fault {
            name: name.to_owned(),
            fault: Fault::NoResponse,
        });
        self
    }
}

/// Result of looking up one query in the table.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// NOERROR with these answer records. An empty list is NODATA.
    Answer(Vec<Record>),
    /// The name is not in the zone.
    NxDomain,
    /// The name is configured with a fault.
    Fault(Fault),
}

#[derive(Debug, Default)]
struct Node {
    records: Vec<Record>,
    fault: Option<Fault>,
    truncate_udp: bool,
}

/// The zone converted into hickory records and indexed by normalized name.
#[derive(Debug, Default)]
pub(crate) struct ZoneTable {
    nodes: HashMap<String, Node>,
}

impl ZoneTable {
    /// Converts `zone` into records, failing with `InvalidInput` on the first
    /// name that is not a valid DNS name.
    pub(crate) fn build(zone: &Zone) -> io::Result<Self> {
        let mut table = Self::default();
        for entry in &zone.entries {
            match entry {
                ZoneEntry::Mx {
                    name,
                    preference,
                    exchange,
                } => {
                    let exchange = parse_name(exchange)?;
                    table.insert(name, RData::MX(MX::new(*preference, exchange)))?;
                }
                ZoneEntry::A { name, addr } => table.insert(name, RData::A(A(*addr)))?,
                ZoneEntry::Aaaa { name, addr } => table.insert(name, RData::AAAA(AAAA(*addr)))?,
                ZoneEntry::Cname { name, target } => {
                    let target = parse_name(target)?;
                    table.insert(name, RData::CNAME(CNAME(target)))?;
                }
                ZoneEntry::Fault { name, fault } => {
                    let key = normalize(&parse_name(name)?);
                    table.nodes.entry(key).or_default().fault = Some(*fault);
                }
                ZoneEntry::TruncateUdp { name } => {
                    let key = normalize(&parse_name(name)?);
                    table.nodes.entry(key).or_default().truncate_udp = true;
                }
            }
        }
        Ok(table)
    }

    fn insert(&mut self, name: &str, rdata: RData) -> io::Result<()> {
        let owner = parse_name(name)?;
        let key = normalize(&owner);
        let record = Record::from_rdata(owner, RECORD_TTL, rdata);
        self.nodes.entry(key).or_default().records.push(record);
        Ok(())
    }

    /// Returns whether UDP queries for `name` get a truncated response.
    pub(crate) fn truncates_udp(&self, name: &Name) -> bool {
        self.nodes
            .get(&normalize(name))
            .is_some_and(|node| node.truncate_udp)
    }

    /// Looks up `name` for `query_type` the way an authoritative server
    /// does: records of the type at the name, or else the CNAME chain from
    /// the name followed inside the zone for at most `MAX_CNAME_STEPS` steps.
    pub(crate) fn lookup(&self, name: &Name, query_type: RecordType) -> Lookup {
        let start_key = normalize(name);
        let Some(start) = self.nodes.get(&start_key) else {
            return Lookup::NxDomain;
        };
        if let Some(fault) = start.fault {
            return Lookup::Fault(fault);
        }

        let mut answers = Vec::new();
        let mut visited = HashSet::from([start_key]);
        let mut node = start;
        for steps_taken in 0..=MAX_CNAME_STEPS {
            let matching: Vec<&Record> = node
                .records
                .iter()
                .filter(|record| {
                    query_type == RecordType::ANY || record.record_type() == query_type
                })
                .collect();
            if !matching.is_empty() {
                answers.extend(matching.into_iter().cloned());
                break;
            }
            if steps_taken == MAX_CNAME_STEPS {
                break;
            }

            let Some(cname) = node
                .records
                .iter()
                .find(|record| record.record_type() == RecordType::CNAME)
            else {
                break;
            };
            answers.push(cname.clone());

            // A target outside the zone, a faulty target or a loop ends the
            // chain, and the client resolves the last target itself.
            let Some(target) = cname.data().as_cname() else {
                break;
            };
            let target_key = normalize(&target.0);
            if !visited.insert(target_key.clone()) {
                break;
            }
            match self.nodes.get(&target_key) {
                Some(next) if next.fault.is_none() => node = next,
                _ => break,
            }
        }
        Lookup::Answer(answers)
    }
}

fn parse_name(text: &str) -> io::Result<Name> {
    let mut name = Name::from_utf8(text).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid DNS name {text:?} in test zone: {error}"),
        )
    })?;
    name.set_fqdn(true);
    Ok(name)
}

/// Returns the lookup key of a name: lowercase ASCII without the trailing dot.
fn normalize(name: &Name) -> String {
    let ascii = name.to_lowercase().to_ascii();
    ascii.trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(table: &ZoneTable, name: &str, query_type: RecordType) -> Lookup {
        table.lookup(&Name::from_ascii(name).unwrap(), query_type)
    }

    #[test]
    fn names_compare_case_insensitively() {
        let zone = Zone::new().a("Host.Example.TEST.", Ipv4Addr::LOCALHOST);
        let table = ZoneTable::build(&zone).unwrap();
        let Lookup::Answer(answers) = lookup(&table, "host.example.test", RecordType::A) else {
            panic!("expected an answer");
        };
        assert_eq!(answers.len(), 1);
    }

    #[test]
    fn cname_loop_stops() {
        let zone = Zone::new()
            .cname("a.test", "b.test")
            .cname("b.test", "a.test");
        let table = ZoneTable::build(&zone).unwrap();
        let Lookup::Answer(answers) = lookup(&table, "a.test", RecordType::A) else {
            panic!("expected an answer");
        };
        assert_eq!(answers.len(), 2);
    }

    #[test]
    fn cname_chain_is_capped() {
        let mut zone = Zone::new();
        for step in 0..20 {
            zone = zone.cname(&format!("n{step}.test"), &format!("n{}.test", step + 1));
        }
        let table = ZoneTable::build(&zone).unwrap();
        let Lookup::Answer(answers) = lookup(&table, "n0.test", RecordType::A) else {
            panic!("expected an answer");
        };
        assert_eq!(answers.len(), MAX_CNAME_STEPS);
        assert!(answers.iter().all(|r| r.record_type() == RecordType::CNAME));
    }

    #[test]
    fn cname_chain_at_cap_reaches_target() {
        let mut zone = Zone::new().a("n8.test", Ipv4Addr::LOCALHOST);
        for step in 0..MAX_CNAME_STEPS {
            zone = zone.cname(&format!("n{step}.test"), &format!("n{}.test", step + 1));
        }
        let table = ZoneTable::build(&zone).unwrap();
        let Lookup::Answer(answers) = lookup(&table, "n0.test", RecordType::A) else {
            panic!("expected an answer");
        };
        assert_eq!(answers.len(), MAX_CNAME_STEPS + 1);
        assert_eq!(answers.last().unwrap().record_type(), RecordType::A);
    }

    #[test]
    fn invalid_name_is_rejected() {
        let label = "x".repeat(70);
        let zone = Zone::new().a(&format!("{label}.test"), Ipv4Addr::LOCALHOST);
        let error = ZoneTable::build(&zone).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
