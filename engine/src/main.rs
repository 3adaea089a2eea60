//! The `jetsaga` binary: parses arguments and hands over to the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let cli = jetsaga_engine::cli::Cli::parse();
    // The engine logs its work; client commands only speak up when wrong.
    let default = match cli.command {
        jetsaga_engine::cli::Command::Server(_) | jetsaga_engine::cli::Command::Dev(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("JETSAGA_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    jetsaga_engine::crash_points::setup();
    std::process::exit(jetsaga_engine::cli::main(cli).await);
}
