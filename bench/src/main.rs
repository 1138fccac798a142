//! Benchmark drivers that `bench/harness.py` runs as child processes.
//!
//! Each sending subcommand sends its workload to one SMTP server and prints
//! one JSON line on stdout: `{"sent": N, "failed": N, "seconds": S}`, where
//! `seconds` covers the SMTP traffic only (from the first connection to the
//! last QUIT). The harness times the whole process as well and reads peak
//! RSS from `/usr/bin/time -v`.
//!
//! ```text
//! mxsend-bench mxsend-connection --server ADDR --message FILE --count N [--connections C]
//! mxsend-bench mxsend-file       --server ADDR --message FILE
//! mxsend-bench mxsend-delivery   --server ADDR --message FILE --recipients R --count N
//! mxsend-bench mxsend-mx         --nameserver ADDR --port P --message FILE --domains D --count N
//! mxsend-bench lettre            --server ADDR --message FILE --count N [--connections C] [--recipients R]
//! mxsend-bench dns-zone          --domains D
//! ```

mod args;
mod lettre_driver;
mod mxsend_driver;
mod zone;

use std::process::ExitCode;
use std::time::Duration;

use crate::args::Args;

/// The envelope sender of every benchmark message.
pub const SENDER: &str = "bench@bench.test";

/// The recipient of single-recipient workloads. `smtp-sink` accepts any.
pub const RECIPIENT: &str = "sink@bench.test";

/// The result of one driver run.
pub struct Outcome {
    /// Messages that every recipient accepted.
    pub sent: usize,
    /// Messages that at least one recipient did not get.
    pub failed: usize,
    /// Time spent on SMTP traffic.
    pub elapsed: Duration,
}

impl Outcome {
    fn print(&self) {
        println!(
            "{{\"sent\": {}, \"failed\": {}, \"seconds\": {:.6}}}",
            self.sent,
            self.failed,
            self.elapsed.as_secs_f64()
        );
    }
}

/// Generates `count` recipient addresses at `domain`, as smtp-source's `-r`
/// does: a number before the local part.
pub fn numbered_recipients(count: usize, domain: &str) -> Vec<String> {
    (0..count).map(|i| format!("{i}sink@{domain}")).collect()
}

fn main() -> ExitCode {
    let mut raw = std::env::args().skip(1);
    let Some(command) = raw.next() else {
        eprintln!("mxsend-bench: missing subcommand; see the usage in bench/src/main.rs");
        return ExitCode::from(64);
    };
    let args = match Args::parse(raw) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("mxsend-bench {command}: {error}");
            return ExitCode::from(64);
        }
    };
    let result = match command.as_str() {
        "mxsend-connection" => mxsend_driver::connection(&args),
        "mxsend-file" => mxsend_driver::file(&args),
        "mxsend-delivery" => mxsend_driver::delivery(&args),
        "mxsend-mx" => mxsend_driver::mx(&args),
        "lettre" => lettre_driver::run(&args),
        "dns-zone" => return zone::serve(&args),
        other => Err(format!("unknown subcommand {other:?}")),
    };
    match result {
        Ok(outcome) => {
            outcome.print();
            if outcome.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("mxsend-bench {command}: {error}");
            ExitCode::from(1)
        }
    }
}
