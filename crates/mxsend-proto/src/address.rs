//! Envelope addresses: the mailboxes of `MAIL FROM` and `RCPT TO`
//! (RFC 5321 section 4.1.2).
//!
//! Validation happens before anything reaches the wire, so an address can
//! never smuggle a CR, an LF or a NUL into a command (C-TX-13).

use std::fmt;

/// Longest local part, domain and path in octets (RFC 5321 section
/// 4.5.3.1.1 to 4.5.3.1.3).
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

/// A mailbox `local-part@domain`, checked for syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    text: String,
    at: usize,
}

/// Why a string is not a usable envelope address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The address contains CR, LF, NUL or another control character.
    #[error("address {address:?} contains a control character")]
    ControlCharacter {
        /// The address as given, with control characters escaped.
        address: String,
    },
    /// The address has a space or another character outside quotes that
    /// RFC 5321 does not allow in a mailbox.
    #[error("address {address:?} contains {found:?}, which is only allowed in a quoted local part")]
    InvalidCharacter {
        /// The address as given.
        address: String,
        /// The offending character.
        found: char,
    },
    /// No `@`, or nothing on one side of it.
    #[error("address {address:?} is not of the form local-part@domain")]
    MissingDomain {
        /// The address as given.
        address: String,
    },
    /// The domain is not a host name or an address literal.
    #[error("address {address:?} has an invalid domain")]
    InvalidDomain {
        /// The address as given.
        address: String,
    },
    /// The local part is not ASCII, so the address needs a server with
    /// SMTPUTF8 (RFC 6531).
    #[error(
        "address {address:?} has a non-ASCII local part, which only a server with SMTPUTF8 accepts"
    )]
    NonAsciiLocalPart {
        /// The address as given.
        address: String,
    },
    /// The local part, the domain or the whole path is too long.
    #[error("address {address:?} is longer than RFC 5321 allows")]
    TooLong {
        /// The address as given.
        address: String,
    },
}

impl Address {
    /// Parses an address, with or without surrounding angle brackets.
    ///
    /// # Errors
    ///
    /// An [`AddressError`] that names the address and the problem.
    pub fn parse(input: &str) -> Result<Address, AddressError> {
        if input.chars().any(char::is_control) {
            return Err(AddressError::ControlCharacter {
                address: input.escape_debug().to_string(),
            });
        }
        // Only ASCII spaces are framing. A non-ASCII space is part of the
        // address, so the text parses back to the same address.
        let text = input.trim_matches([' ', '\t']);
        let text = text
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or(text);
        let address = || input.to_owned();

        let Some(at) = text.rfind('@') else {
            return Err(AddressError::MissingDomain { address: address() });
        };
        let (local, domain) = (&text[..at], &text[at + 1..]);
        if local.is_empty() || domain.is_empty() {
            return Err(AddressError::MissingDomain { address: address() });
        }
        if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN || text.len() + 2 > MAX_PATH {
            return Err(AddressError::TooLong { address: address() });
        }
        check_local_part(local).map_err(|found| AddressError::InvalidCharacter {
            address: address(),
            found,
        })?;
        if !is_valid_domain(domain) {
            return Err(AddressError::InvalidDomain { address: address() });
        }
        // A trailing dot is DNS notation; RFC 5321 section 4.1.2 has no
        // room for it in a path, and servers reject `user@example.org.`.
        let text = text.strip_suffix('.').unwrap_or(text);
        Ok(Address {
            text: text.to_owned(),
            at,
        })
    }

    /// The address as sent, without angle brackets.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The part before the last `@`.
    pub fn local_part(&self) -> &str {
        &self.text[..self.at]
    }

    /// The part after the last `@`, as given, with its letter case kept and
    /// without a trailing dot.
    pub fn domain(&self) -> &str {
        &self.text[self.at + 1..]
    }

    /// Whether any character is outside ASCII, which needs SMTPUTF8
    /// (RFC 6531) unless only the domain is and it can be sent as A-labels.
    pub fn is_ascii(&self) -> bool {
        self.text.is_ascii()
    }

    /// Converts the domain to A-labels (IDNA, RFC 5891), the form a server
    /// without SMTPUTF8 accepts, such as `user@xn--bcher-kva.example` for
    /// `user@bücher.example`. The local part is never converted (RFC 6531
    /// section 3.2).
    ///
    /// # Errors
    ///
    /// [`AddressError::NonAsciiLocalPart`] when the local part is not
    /// ASCII, since no conversion exists for it, and
    /// [`AddressError::InvalidDomain`] when the domain is not a valid IDN.
    pub fn to_ascii_domain(&self) -> Result<Address, AddressError> {
        if !self.local_part().is_ascii() {
            return Err(AddressError::NonAsciiLocalPart {
                address: self.text.clone(),
            });
        }
        if self.domain().is_ascii() {
            return Ok(self.clone());
        }
        let domain =
            idna::domain_to_ascii(self.domain()).map_err(|_| AddressError::InvalidDomain {
                address: self.text.clone(),
            })?;
        Address::parse(&format!("{}@{domain}", self.local_part()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// RFC 5322 `atext`, plus any non-ASCII character for RFC 6531 other than
/// a space such as U+00A0, which would make the address look different
/// from what it is.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_whitespace())
}

/// Checks a dot-atom or quoted-string local part; returns the first
/// character that is not allowed.
fn check_local_part(local: &str) -> Result<(), char> {
    if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        let mut escaped = false;
        for c in inner.chars() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => return Err('"'),
                _ => {}
            }
        }
        return if escaped { Err('\\') } else { Ok(()) };
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err('.');
    }
    match local.chars().find(|&c| c != '.' && !is_atext(c)) {
        Some(c) => Err(c),
        None => Ok(()),
    }
}

/// A host name of letters, digits and hyphens (non-ASCII letters allowed for
/// IDN), with an optional trailing dot, or an address literal `[…]`.
fn is_valid_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match literal.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    let name = domain.strip_suffix('.').unwrap_or(domain);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.chars().count() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_address() {
        let address = Address::parse("<User.Name+tag@Example.NET>").unwrap();
        assert_eq!(address.as_str(), "User.Name+tag@Example.NET");
        assert_eq!(address.local_part(), "User.Name+tag");
        assert_eq!(address.domain(), "Example.NET");
    }

    #[test]
    fn control_characters_rejected() {
        for input in [
            "a@b.test\r\nRCPT TO:<x@y>",
            "a\n@b.test",
            "a\0@b.test",
            "a@b\t.test",
        ] {
            assert!(
                matches!(
                    Address::parse(input),
                    Err(AddressError::ControlCharacter { .. })
                ),
                "{input:?}"
            );
        }
    }

    #[test]
    fn unquoted_space_rejected() {
        assert!(matches!(
            Address::parse("John Doe@b.test"),
            Err(AddressError::InvalidCharacter { found: ' ', .. })
        ));
        assert!(Address::parse("\"John Doe\"@b.test").is_ok());
    }

    #[test]
    fn missing_parts_rejected() {
        for input in ["nobody", "@b.test", "a@", ""] {
            assert!(matches!(
                Address::parse(input),
                Err(AddressError::MissingDomain { .. })
            ));
        }
    }

    #[test]
    fn domains_checked() {
        assert!(Address::parse("a@[192.0.2.1]").is_ok());
        assert!(Address::parse("a@[IPv6:2001:db8::1]").is_ok());
        assert_eq!(
            Address::parse("a@example.net.").unwrap().as_str(),
            "a@example.net"
        );
        assert!(Address::parse("a@bücher.example").is_ok());
        for input in ["a@-x.test", "a@x..test", "a@[300.1.1.1]", "a@x y.test"] {
            assert!(Address::parse(input).is_err(), "{input}");
        }
    }

    #[test]
    fn ascii_domain_conversion() {
        let address = Address::parse("user@Bücher.example").unwrap();
        assert_eq!(
            address.to_ascii_domain().unwrap().as_str(),
            "user@xn--bcher-kva.example"
        );

        let ascii = Address::parse("user@example.net").unwrap();
        assert_eq!(ascii.to_ascii_domain().unwrap(), ascii);

        let utf8_local = Address::parse("jörg@bücher.example").unwrap();
        assert!(matches!(
            utf8_local.to_ascii_domain(),
            Err(AddressError::NonAsciiLocalPart { .. })
        ));
    }

    #[test]
    fn lengths_bounded() {
        let long_local = format!("{}@b.test", "x".repeat(65));
        assert!(matches!(
            Address::parse(&long_local),
            Err(AddressError::TooLong { .. })
        ));
    }
}
