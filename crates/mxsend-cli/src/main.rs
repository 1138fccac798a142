//! The `mxsend` command.

#![forbid(unsafe_code)]

mod args;
mod config;
mod daemon;
mod demo;
mod exit;
mod failure;
mod input;
mod mx;
mod queue;
mod send;
mod sendmail;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    // Installed as `sendmail` (or `mailq`), the binary takes sendmail's
    // command line.
    let program = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        });
    if let Some(name @ ("sendmail" | "mailq")) = program.as_deref() {
        let mut arguments: Vec<String> = std::env::args().skip(1).collect();
        if name == "mailq" {
            arguments.insert(0, "-bp".to_owned());
        }
        init_logging("warn");
        return execute(|| sendmail::run(&arguments));
    }

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
    let default_level = match cli.command {
        Command::Daemon(_) => "info",
        _ => "warn",
    };
    init_logging(default_level);
    execute(|| async {
        match &cli.command {
            Command::Send(args) => send::run(args).await,
            Command::Mx(args) => mx::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Sendmail(args) => sendmail::run(&args.arguments).await,
            Command::Queue(args) => queue::run(args).await,
            Command::Daemon(args) => daemon::run(args).await,
            Command::Config(args) => config::run(args),
        }
    })
}

/// Runs a command on a single-threaded runtime and maps its result to the
/// exit code.
fn execute<F, Fut>(command: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<u8, failure::Failure>>,
{
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
    let result = runtime.block_on(command());
    match result {
        Ok(status) => exit::code(status),
        Err(failure) => {
            eprintln!("mxsend: {failure}");
            exit::code(failure.status)
        }
    }
}

/// Sends log records to standard error, filtered by `RUST_LOG` (default:
/// `default_level` and above).
fn init_logging(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
