//! The `herald` binary: `herald serve` (the default) runs the gateway; `herald admin`,
//! `herald publish` and `herald sign` talk to a running server.
//!
//! The serve flags are accepted with or without the `serve` word (`herald --bind …` is
//! `herald serve --bind …`); a subcommand after serve flags is refused rather than guessed.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use herald_server::cli::{self, AdminArgs, PublishArgs, SignArgs};
use herald_server::config::{LogFormat, ServeConfig};
use tracing_subscriber::EnvFilter;

/// Herald: real-time channel pub/sub gateway (REST in, Socket.IO out).
///
/// Without a subcommand, runs the gateway: `herald [OPTIONS]` is `herald serve [OPTIONS]`.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `herald serve`'s flags, for `herald` without a subcommand.
    #[command(flatten, next_help_heading = "Serve options (same as `herald serve`)")]
    serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Serve(ServeConfig),
    /// Manage projects and API keys of a running server.
    Admin(AdminArgs),
    /// Publish one event through a running server.
    Publish(PublishArgs),
    /// Sign a private-channel token through a running server.
    Sign(SignArgs),
    /// Print the configuration reference (docs/configuration.md) generated from the flags.
    #[command(hide = true)]
    ConfigDocs,
}

fn init_logs(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(format.colored(std::io::stderr().is_terminal(), no_color));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Auto | LogFormat::Plain | LogFormat::Color => builder.init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    match command {
        Command::Serve(config) => {
            init_logs(
                config.log_format,
                "info,socketioxide=warn,engineioxide=warn",
            );
            herald_server::run_serve(config).await
        }
        Command::Admin(args) => {
            init_logs(LogFormat::Auto, "warn");
            cli::admin(args).await
        }
        Command::Publish(args) => {
            init_logs(LogFormat::Auto, "warn");
            cli::publish(args).await
        }
        Command::ConfigDocs => {
            print!("{}", herald_server::config::reference_markdown());
            Ok(())
        }
        Command::Sign(args) => {
            init_logs(LogFormat::Auto, "warn");
            cli::sign(args).await
        }
    }
}
