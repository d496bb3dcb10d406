//! The `herald` binary: `herald serve` (the default) runs the gateway; `herald admin`,
//! `herald publish` and `herald sign` talk to a running server.
//!
//! The serve flags are accepted with or without the `serve` word: a line whose first argument
//! is a flag (other than `--help` / `--version`) gets `serve` put in front of it, so
//! `herald --bind …` is `herald serve --bind …`. (Rather than flattening the serve flags into
//! the top level: that would read and validate every `HERALD_*` serve variable on
//! `herald admin …` too.)

use std::ffi::OsString;
use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use herald_server::cli::{self, AdminArgs, PublishArgs, SignArgs};
use herald_server::config::{LogFormat, ServeConfig};
use tracing_subscriber::EnvFilter;

/// The global allocator is jemalloc: its background thread hands pages unused for about 10 s
/// back to the system (`dirty_decay_ms` then `muzzy_decay_ms`, 10 s each by default), where
/// glibc's malloc kept the peak of a burst for good (issue 24: an instance that took an
/// event-bus backlog stayed at its peak RSS a minute later).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background purging thread (without it, freed pages go back only when
/// the thread that freed them allocates again, and an idle server does not).
fn start_allocator_purging() {
    #[cfg(not(target_env = "msvc"))]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background thread not started; freed memory returns to the system later");
    }
}

/// Herald: real-time channel pub/sub gateway (REST in, Socket.IO out).
///
/// Without a subcommand, runs the gateway: `herald [OPTIONS]` is `herald serve [OPTIONS]`
/// (`herald serve --help` lists the options).
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about,
    override_usage = "herald [serve] [OPTIONS]\n       herald <COMMAND>"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Serve(Box<ServeConfig>),
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

/// The command line with `serve` put in front when it has no argument or starts with a flag
/// that is not `--help` / `--version`.
fn with_default_subcommand(mut args: Vec<OsString>) -> Vec<OsString> {
    let flag_first = args
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|a| a.starts_with('-') && !matches!(a, "-h" | "--help" | "-V" | "--version"));
    if flag_first || args.len() == 1 {
        args.insert(1, "serve".into());
    }
    args
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
    let cli = Cli::parse_from(with_default_subcommand(std::env::args_os().collect()));
    let Some(command) = cli.command else {
        unreachable!("with_default_subcommand gives an empty line `serve`")
    };
    match command {
        Command::Serve(config) => {
            init_logs(
                config.log_format,
                "info,socketioxide=warn,engineioxide=warn",
            );
            start_allocator_purging();
            herald_server::run_serve(*config).await
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

#[cfg(test)]
mod tests {
    use super::with_default_subcommand;

    fn line(args: &[&str]) -> Vec<String> {
        with_default_subcommand(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn serve_goes_in_front_of_bare_serve_flags_only() {
        assert_eq!(line(&["herald"]), ["herald", "serve"]);
        assert_eq!(
            line(&["herald", "--bind", "127.0.0.1:0"]),
            ["herald", "serve", "--bind", "127.0.0.1:0"]
        );
        for unchanged in [
            &["herald", "--help"][..],
            &["herald", "-V"],
            &["herald", "serve", "--bind", "x"],
            &["herald", "admin", "project", "list"],
            &["herald", "bogus"],
        ] {
            assert_eq!(line(unchanged), unchanged);
        }
    }
}
