//! Delivery status notification requests (RFC 3461): the `RET` and `ENVID`
//! parameters of MAIL and the `NOTIFY` and `ORCPT` parameters of RCPT.
//!
//! They are sent only to a server that advertises DSN (C-EXT-03). Values go
//! on the wire in xtext (RFC 3461 section 4), so no parameter can carry a
//! space, a CR or an LF into the command.

use std::fmt;

use crate::address::Address;

/// How much of the message a failure notification returns (`RET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnReturn {
    /// The whole message (`RET=FULL`).
    Full,
    /// Only the header section (`RET=HDRS`).
    Headers,
}

impl DsnReturn {
    fn keyword(self) -> &'static str {
        match self {
            DsnReturn::Full => "FULL",
            DsnReturn::Headers => "HDRS",
        }
    }
}

/// When the sender wants a notification (`NOTIFY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DsnNotify {
    /// On successful delivery.
    pub success: bool,
    /// On failure.
    pub failure: bool,
    /// When delivery is delayed.
    pub delay: bool,
}

impl DsnNotify {
    /// `NOTIFY=NEVER`: no notification at all.
    pub const NEVER: DsnNotify = DsnNotify {
        success: false,
        failure: false,
        delay: false,
    };

    /// Parses `never` or a comma-separated list of `success`, `failure` and
    /// `delay`, in any letter case.
    ///
    /// # Errors
    ///
    /// A message naming the invalid word, or `never` combined with others.
    pub fn parse(text: &str) -> Result<DsnNotify, String> {
        let mut notify = DsnNotify::NEVER;
        let mut never = false;
        for word in text.split(',').map(str::trim) {
            match word.to_ascii_lowercase().as_str() {
                "never" => never = true,
                "success" => notify.success = true,
                "failure" => notify.failure = true,
                "delay" => notify.delay = true,
                _ => {
                    return Err(format!(
                        "invalid DSN notify value {word:?}: expected never, or a list of success, failure and delay"
                    ));
                }
            }
        }
        if never && notify != DsnNotify::NEVER {
            return Err(format!(
                "invalid DSN notify value {text:?}: never cannot be combined with other values"
            ));
        }
        Ok(notify)
    }
}

impl fmt::Display for DsnNotify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == DsnNotify::NEVER {
            return f.write_str("NEVER");
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let list: Vec<&str> = words
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, word)| *word)
            .collect();
        f.write_str(&list.join(","))
    }
}

/// The notification request of one transaction. Every field is optional,
/// and a field that is `None` (or `false`) sends no parameter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DsnRequest {
    /// `RET` on MAIL.
    pub ret: Option<DsnReturn>,
    /// `ENVID` on MAIL: the sender's identifier for this transaction,
    /// returned in notifications.
    pub envid: Option<String>,
    /// `NOTIFY` on every RCPT.
    pub notify: Option<DsnNotify>,
    /// `ORCPT` on every RCPT, with the recipient address as given.
    pub orcpt: bool,
}

impl DsnRequest {
    /// Whether any parameter would be sent.
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none() && self.notify.is_none() && !self.orcpt
    }

    /// Returns the MAIL parameters, each with a leading space.
    pub fn mail_parameters(&self) -> String {
        let mut parameters = String::new();
        if let Some(ret) = self.ret {
            parameters.push_str(" RET=");
            parameters.push_str(ret.keyword());
        }
        if let Some(envid) = &self.envid {
            parameters.push_str(" ENVID=");
            parameters.push_str(&xtext(envid));
        }
        parameters
    }

    /// Returns the RCPT parameters for `original`, each with a leading
    /// space.
    pub fn rcpt_parameters(&self, original: &Address) -> String {
        let mut parameters = String::new();
        if let Some(notify) = self.notify {
            parameters.push_str(&format!(" NOTIFY={notify}"));
        }
        if self.orcpt {
            parameters.push_str(" ORCPT=");
            parameters.push_str(&original_recipient(original));
        }
        parameters
    }
}

/// Encodes `text` as xtext (RFC 3461 section 4): printable ASCII other than
/// `+` and `=` as is, every other octet as `+` and two upper-case hex digits.
pub fn xtext(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for &octet in text.as_bytes() {
        if (33..=126).contains(&octet) && octet != b'+' && octet != b'=' {
            encoded.push(char::from(octet));
        } else {
            encoded.push_str(&format!("+{octet:02X}"));
        }
    }
    encoded
}

/// Formats the ORCPT value: `rfc822;` with the address in xtext, or, for an
/// address that is not ASCII, `utf-8;` with the address in the
/// utf-8-addr-xtext form of RFC 6533.
///
/// In that form, printable ASCII other than `+`, `=` and `\` stays as it
/// is, and so do non-ASCII characters other than spaces. Every other
/// character is written as `\x{HEX}`.
fn original_recipient(address: &Address) -> String {
    if address.is_ascii() {
        return format!("rfc822;{}", xtext(address.as_str()));
    }
    let mut encoded = String::from("utf-8;");
    for c in address.as_str().chars() {
        let plain = c.is_ascii_graphic() && c != '+' && c != '=' && c != '\\';
        if plain || !c.is_ascii() && !c.is_control() && !c.is_whitespace() {
            encoded.push(c);
        } else {
            encoded.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_escapes_plus_equals_and_space() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext("plain@example.net"), "plain@example.net");
        assert_eq!(xtext("é"), "+C3+A9");
    }

    #[test]
    fn notify_parses_lists_and_never() {
        assert_eq!(DsnNotify::parse("never").unwrap().to_string(), "NEVER");
        assert_eq!(
            DsnNotify::parse("Failure,delay").unwrap().to_string(),
            "FAILURE,DELAY"
        );
        assert!(DsnNotify::parse("never,success").is_err());
        assert!(DsnNotify::parse("sometimes").is_err());
    }

    #[test]
    fn orcpt_for_utf8_address() {
        let address = Address::parse("jörg+x@bücher.example").unwrap();
        assert_eq!(
            original_recipient(&address),
            "utf-8;jörg\\x{2B}x@bücher.example"
        );
    }
}
