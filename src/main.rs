use std::process::ExitCode;

use clap::Parser;
use clip_serve::cli::{Cli, Command};

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let args = match command {
        Command::Serve(args) => args,
        Command::Index(args) => return client(async move { index(&args).await }),
        Command::Search(args) => {
            return client(async move {
                let hits = clip_serve::grpc::client::search::run(&args).await?;
                print!("{}", clip_serve::grpc::client::search::render(&hits));
                Ok(ExitCode::SUCCESS)
            });
        }
    };
    // Held until the server has stopped: dropping it flushes the spans still queued.
    let _traces = match clip_serve::telemetry::init(args.log_format, &args.log_filter, &args.trace)
    {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("clip-serve: {e}");
            return ExitCode::FAILURE;
        }
    };
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

/// Runs a command-line client to completion; its errors are one line on stderr.
fn client(run: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
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
    match runtime.block_on(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clip-serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn index(args: &clip_serve::grpc::client::index::IndexArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let report = clip_serve::grpc::client::index::run(args).await?;
    print!(
        "{}",
        clip_serve::grpc::client::index::render(&report, started.elapsed())
    );
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
