//! The `jetsaga` binary: parses arguments, resolves the configuration, sets
//! up logging, and hands over to the library.

use clap::Parser;
use jetsaga_cli::{Cli, Command};
use jetsaga_engine::config::{Config, Env, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let mut cli = Cli::parse();
    let config = match cli.load_config(&Env::from_process()) {
        Ok(loaded) => loaded.config.clone(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    // The engine logs its work; client commands only speak up when wrong.
    let default = match cli.command {
        Command::Server(_) | Command::Dev(_) => "info",
        _ => "warn",
    };
    init_logging(&config, default);
    jetsaga_engine::crash_points::setup();
    // Traces (off unless an OTLP endpoint is set); flushed before exiting.
    let trace = matches!(cli.command, Command::Server(_) | Command::Dev(_))
        .then(jetsaga_engine::trace::init);
    let code = jetsaga_cli::main(cli).await;
    drop(trace);
    std::process::exit(code);
}

/// Logs to stderr in `config.log_format`, filtered by `config.log` (else
/// `default`; an invalid filter falls back to `default` here and is reported
/// by validation).
fn init_logging(config: &Config, default: &str) {
    let filter = config
        .log
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A line that cannot be written (stderr a closed pipe: the log
        // collector went away) is dropped. The default reports it with
        // `eprintln!`, which panics there, in whatever task logged, so
        // the engine could not even drain on SIGTERM.
        .log_internal_errors(false);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Event fields (`saga_id`, ...) at the top level of each object, with
        // those of the span the event happened in.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
