//! `Address::parse` on arbitrary strings.
//!
//! Input: the string to parse. Invalid UTF-8 is replaced first, so every
//! input reaches the parser.

use mxsend_proto::{Address, AddressError};

/// Longest path in octets, angle brackets included (RFC 5321 section
/// 4.5.3.1.3).
const MAX_PATH: usize = 256;

/// Checks one string.
///
/// # Panics
///
/// - A string with a control character is accepted, or rejected for
///   another reason.
/// - An accepted address contains a control character, breaks a length
///   limit or does not split into its parts.
/// - An accepted address does not parse back to itself, with or without
///   angle brackets.
pub fn check(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let result = Address::parse(&text);

    if text.chars().any(char::is_control) {
        assert!(
            matches!(result, Err(AddressError::ControlCharacter { .. })),
            "{text:?} contains a control character but parsed as {result:?}"
        );
    }
    match result {
        Ok(address) => check_accepted(&address),
        Err(error) => {
            // The message quotes the input, so building it must not fail.
            assert!(!error.to_string().is_empty());
        }
    }
}

fn check_accepted(address: &Address) {
    let text = address.as_str();
    for forbidden in ['\r', '\n', '\0'] {
        assert!(
            !text.contains(forbidden),
            "accepted address {text:?} contains {forbidden:?}"
        );
    }
    assert!(
        !text.chars().any(char::is_control),
        "accepted address {text:?} contains a control character"
    );

    let local = address.local_part();
    let domain = address.domain();
    assert!(!local.is_empty(), "empty local part in {text:?}");
    assert!(!domain.is_empty(), "empty domain in {text:?}");
    assert_eq!(format!("{local}@{domain}"), text);
    assert!(local.len() <= 64, "local part of {text:?} over 64 octets");
    assert!(domain.len() <= 255, "domain of {text:?} over 255 octets");
    assert!(
        text.len() + 2 <= MAX_PATH,
        "path <{text}> over {MAX_PATH} octets"
    );
    assert_eq!(address.to_string(), text);
    assert_eq!(address.is_ascii(), text.is_ascii());

    assert_eq!(
        Address::parse(text).as_ref(),
        Ok(address),
        "the accepted address {text:?} does not parse back to itself"
    );
    assert_eq!(
        Address::parse(&format!("<{text}>")).as_ref(),
        Ok(address),
        "the accepted address <{text}> does not parse back to itself"
    );
}
