use std::process::ExitCode;

use clap::Parser;
use clip_serve::cli::{Cli, Command};

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let Command::Serve(args) = command;
    if let Err(e) = clip_serve::telemetry::init(args.log_format, &args.log_filter) {
        eprintln!("clip-serve: {e}");
        return ExitCode::FAILURE;
    }
    let config = match args.validate() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("clip-serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clip-serve: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(clip_serve::server::run(config));
    // Blocking work still running (a model load, a TensorRT engine build) must not hold the exit
    // past the shutdown grace: give it a moment, then leave it behind.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one line that says why the server stopped (logs go to stderr too).
            tracing::error!("clip-serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}
