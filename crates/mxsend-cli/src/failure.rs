//! An error that ends the command with a given exit status.

use std::fmt;

/// A one-line message for standard error and the sysexits status to exit with.
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub status: u8,
    /// What failed, on which value, and what to do next.
    pub message: String,
}

impl Failure {
    /// Creates a failure.
    pub fn new(status: u8, message: String) -> Failure {
        Failure { status, message }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
