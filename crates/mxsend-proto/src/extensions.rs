//! The service extensions a server advertises in its EHLO reply
//! (RFC 5321 section 4.1.1.1).

use crate::reply::Reply;

/// What the server advertised. Keywords are matched case-insensitively
/// (C-SES-05), and both `AUTH mech…` and the older `AUTH=mech…` form count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The first line of the EHLO reply: the server's name and greeting.
    pub greeting: String,
    /// `SIZE` (RFC 1870): `Some(0)` when advertised without a limit.
    pub size: Option<u64>,
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// SASL mechanisms from `AUTH` (RFC 4954), upper case, without repeats.
    pub auth: Vec<String>,
    /// `DSN` (RFC 3461).
    pub dsn: bool,
    /// `CHUNKING` (RFC 3030).
    pub chunking: bool,
    /// `BINARYMIME` (RFC 3030).
    pub binary_mime: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// `REQUIRETLS` (RFC 8689).
    pub require_tls: bool,
    /// Every keyword in upper case with its parameters, in the order sent,
    /// including those this type has no field for.
    pub keywords: Vec<(String, String)>,
}

impl Extensions {
    /// Reads the extensions from a positive EHLO reply. Unknown keywords and
    /// malformed parameters are kept in [`Extensions::keywords`] and
    /// otherwise ignored: a server's odd advertisement is no reason to fail.
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut extensions = Extensions::default();
        let mut lines = reply.lines().iter();
        if let Some(first) = lines.next() {
            extensions.greeting = first.clone();
        }
        for line in lines {
            let line = line.trim();
            let (keyword, params) = match line.find([' ', '=']) {
                Some(split) => (&line[..split], line[split + 1..].trim()),
                None => (line, ""),
            };
            if keyword.is_empty() {
                continue;
            }
            let keyword = keyword.to_ascii_uppercase();
            extensions.apply(&keyword, params);
            extensions.keywords.push((keyword, params.to_owned()));
        }
        extensions
    }

    fn apply(&mut self, keyword: &str, params: &str) {
        match keyword {
            "SIZE" => {
                let limit = params.split_whitespace().next().unwrap_or("0");
                self.size = Some(limit.parse().unwrap_or(0));
            }
            "PIPELINING" => self.pipelining = true,
            "8BITMIME" => self.eight_bit_mime = true,
            "SMTPUTF8" => self.smtputf8 = true,
            "STARTTLS" => self.starttls = true,
            "DSN" => self.dsn = true,
            "CHUNKING" => self.chunking = true,
            "BINARYMIME" => self.binary_mime = true,
            "ENHANCEDSTATUSCODES" => self.enhanced_status_codes = true,
            "REQUIRETLS" => self.require_tls = true,
            "AUTH" => {
                for mechanism in params.split_whitespace() {
                    let mechanism = mechanism.to_ascii_uppercase();
                    if !self.auth.contains(&mechanism) {
                        self.auth.push(mechanism);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether the server advertised `keyword`, compared case-insensitively.
    pub fn has(&self, keyword: &str) -> bool {
        self.keywords
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(keyword))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ehlo(lines: &[&str]) -> Extensions {
        Extensions::from_ehlo(&Reply::new(250, lines))
    }

    #[test]
    fn keywords_case_insensitive() {
        let ext = ehlo(&["mx.test", "pipelining", "8bitmime", "Size 1000", "starttls"]);
        assert!(ext.pipelining);
        assert!(ext.eight_bit_mime);
        assert!(ext.starttls);
        assert_eq!(ext.size, Some(1000));
        assert!(ext.has("STARTTLS"));
    }

    #[test]
    fn auth_both_forms_merged() {
        let ext = ehlo(&["mx.test", "AUTH PLAIN login", "AUTH=LOGIN CRAM-MD5"]);
        assert_eq!(ext.auth, ["PLAIN", "LOGIN", "CRAM-MD5"]);
    }

    #[test]
    fn size_without_limit() {
        assert_eq!(ehlo(&["mx.test", "SIZE"]).size, Some(0));
        assert_eq!(ehlo(&["mx.test", "SIZE junk"]).size, Some(0));
    }

    #[test]
    fn greeting_line_is_not_a_keyword() {
        let ext = ehlo(&["STARTTLS hello"]);
        assert!(!ext.starttls);
        assert_eq!(ext.greeting, "STARTTLS hello");
    }
}
