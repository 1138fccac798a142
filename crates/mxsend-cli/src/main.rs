//! The `mxsend` command.

#![forbid(unsafe_code)]

mod args;
mod demo;
mod exit;
mod failure;
mod input;
mod mx;
mod send;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    // clap exits with 2 on a usage error; sendmail's convention is 64.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                exit::code(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mxsend: cannot start the async runtime: {error}");
            return exit::code(exit::SOFTWARE);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Send(args) => send::run(args).await,
            Command::Mx(args) => mx::run(args).await,
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(status) => exit::code(status),
        Err(failure) => {
            eprintln!("mxsend: {failure}");
            exit::code(failure.status)
        }
    }
}

/// Sends log records to standard error, filtered by `RUST_LOG` (default:
/// warnings and errors only).
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
