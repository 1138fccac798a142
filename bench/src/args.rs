//! `--name value` options of the driver subcommands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// The options of one subcommand, each `--name value`.
pub struct Args {
    values: HashMap<String, String>,
}

impl Args {
    /// Parses `--name value` pairs.
    pub fn parse(raw: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut values = HashMap::new();
        let mut raw = raw.peekable();
        while let Some(flag) = raw.next() {
            let Some(name) = flag.strip_prefix("--") else {
                return Err(format!(
                    "expected an option such as --count, found {flag:?}"
                ));
            };
            let Some(value) = raw.next() else {
                return Err(format!("option --{name} needs a value"));
            };
            values.insert(name.to_owned(), value);
        }
        Ok(Args { values })
    }

    fn raw(&self, name: &str) -> Result<&str, String> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("missing option --{name}"))
    }

    fn parsed<T: FromStr>(&self, name: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.raw(name)?;
        raw.parse()
            .map_err(|error| format!("invalid --{name} {raw:?}: {error}"))
    }

    /// A required count or size.
    pub fn number(&self, name: &str) -> Result<usize, String> {
        self.parsed(name)
    }

    /// An optional count or size with a default.
    pub fn number_or(&self, name: &str, default: usize) -> Result<usize, String> {
        if self.values.contains_key(name) {
            self.parsed(name)
        } else {
            Ok(default)
        }
    }

    /// A required `IP:port`.
    pub fn socket(&self, name: &str) -> Result<SocketAddr, String> {
        self.parsed(name)
    }

    /// A required file path.
    pub fn path(&self, name: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(self.raw(name)?))
    }
}
