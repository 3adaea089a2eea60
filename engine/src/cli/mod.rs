//! The `jetsaga` command line: the engine server, `dev` mode, and the client
//! commands that talk to a running engine over its NATS API.

use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::dev::{DevNats, find_nats_server};
use crate::saga::definition;
use crate::store::SagaFilter;
use clap::{Args, Parser, Subcommand, ValueEnum};
use jetsaga_worker::protocol::DEFAULT_PREFIX;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod render;

/// Durable sagas on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "jetsaga", version, about, propagate_version = true)]
pub struct Cli {
    /// NATS URL of the installation (client commands and `server`).
    #[arg(
        long,
        global = true,
        env = "JETSAGA_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Subject prefix of the installation.
    #[arg(long, global = true, env = "JETSAGA_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Output format of client commands.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// JSON, stable for scripts.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine against a NATS server.
    Server(ServerArgs),
    /// Run everything on this machine: a local nats-server (unless
    /// --external-nats) and the engine. Ctrl-C stops both.
    Dev(DevArgs),
    /// Saga definitions.
    #[command(subcommand)]
    Def(DefCommand),
    /// Saga instances.
    #[command(subcommand)]
    Saga(SagaCommand),
}

/// Engine settings shared by `server` and `dev`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Directory of the engine's store.
    #[arg(long, env = "JETSAGA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Definition files or directories applied at start (repeatable).
    #[arg(
        long = "definitions",
        env = "JETSAGA_DEFINITIONS",
        value_delimiter = ','
    )]
    pub definitions: Vec<PathBuf>,
    /// Largest accepted saga input or result, in bytes.
    #[arg(long, env = "JETSAGA_MAX_PAYLOAD")]
    pub max_payload: Option<usize>,
    /// JetStream duplicate window of the engine's streams (e.g. 2m).
    #[arg(long, env = "JETSAGA_DUPLICATE_WINDOW", value_parser = humantime::parse_duration)]
    pub duplicate_window: Option<Duration>,
    /// Replicas of the engine's streams (3 in a 3-node cluster).
    #[arg(long, env = "JETSAGA_REPLICAS")]
    pub replicas: Option<usize>,
    /// Ack wait of the engine's own consumers (results, starts), e.g. 10s.
    #[arg(long, env = "JETSAGA_ACK_WAIT", value_parser = humantime::parse_duration)]
    pub ack_wait: Option<Duration>,
    /// Most events applied per group commit.
    #[arg(long, env = "JETSAGA_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Serve the HTTP API on HOST:PORT (port 0: any free port), or `off`.
    /// Default: 127.0.0.1:8080 for `dev`, off for `server`.
    #[arg(long, env = "JETSAGA_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
}

/// Where `jetsaga dev` serves the HTTP API unless told otherwise.
pub const DEV_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// `jetsaga server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Engine settings.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `jetsaga dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Engine settings (data dir defaults to .jetsaga/dev).
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Use the NATS server at --nats-url instead of starting one.
    #[arg(long)]
    pub external_nats: bool,
    /// Port of the local nats-server.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// nats-server binary (default: $JETSAGA_NATS_SERVER, .venv/bin/nats-server, PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
}

/// `jetsaga def ...`.
#[derive(Debug, Subcommand)]
pub enum DefCommand {
    /// Check definition files without a running engine.
    Validate {
        /// Files (YAML or JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate and store definitions in the engine (a changed saga gets a new version).
    Apply {
        /// Files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the engine's definitions (current versions).
    List,
}

/// `jetsaga saga ...`.
#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Start a saga; prints its id.
    Start {
        /// Definition name.
        name: String,
        /// Input JSON, or @FILE to read it from a file.
        #[arg(long, default_value = "{}")]
        input: String,
        /// The same key always gives the same saga.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the saga is terminal and print its status.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Show a saga and its steps.
    Status {
        /// Saga id.
        id: String,
    },
    /// List sagas, newest first.
    List {
        /// Only in this state (pending, running, compensating, completed, compensated, failed, partially_compensated, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only of this definition.
        #[arg(long = "saga")]
        saga: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only sagas older than this id (next page).
        #[arg(long)]
        before: Option<String>,
    },
    /// Cancel a saga.
    Cancel {
        /// Saga id.
        id: String,
        /// Compensate its completed steps (otherwise just stop it).
        #[arg(long)]
        compensate: bool,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Follow a saga until it is terminal.
    Watch {
        /// Saga id.
        id: String,
        /// Give up after this long.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Cancels the returned token on the first SIGINT or SIGTERM; exits the
/// process at once on the second.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::info!("shutting down: draining (signal again to exit now)");
                t.cancel();
            } else {
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    token
}

fn engine_config(
    cli: &Cli,
    args: &EngineArgs,
    default_dir: &str,
    default_http: Option<&str>,
) -> Config {
    let mut config = Config {
        nats_url: cli.nats_url.clone(),
        prefix: cli.prefix.clone(),
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(default_dir)),
        definitions: args.definitions.clone(),
        ..Config::default()
    };
    if let Some(v) = args.max_payload {
        config.max_payload = v;
    }
    if let Some(v) = args.duplicate_window {
        config.duplicate_window = v;
    }
    if let Some(v) = args.replicas {
        config.replicas = v;
    }
    if let Some(v) = args.ack_wait {
        config.ack_wait = v;
    }
    if let Some(v) = args.batch_size {
        config.batch_size = v;
    }
    config.http_listen = match args.http_listen.as_deref().map(str::trim) {
        Some("off" | "") => None,
        Some(addr) => Some(addr.to_string()),
        None => default_http.map(str::to_string),
    };
    config
}

/// Runs the command line; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Server(args) => {
            let config = engine_config(&cli, &args.engine, ".jetsaga/data", None);
            crate::engine::run(config, shutdown_on_signals()).await?;
            Ok(0)
        }
        Command::Dev(args) => dev(&cli, args).await,
        Command::Def(cmd) => def(&cli, cmd).await,
        Command::Saga(cmd) => saga(&cli, cmd).await,
    }
}

async fn dev(cli: &Cli, args: &DevArgs) -> anyhow::Result<i32> {
    let mut config = engine_config(cli, &args.engine, ".jetsaga/dev", Some(DEV_HTTP_LISTEN));
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir)?;
    let nats = if args.external_nats {
        None
    } else {
        let binary =
            find_nats_server(args.nats_server.as_deref()).ok_or(crate::dev::DevError::NotFound)?;
        let nats = DevNats::start(&binary, args.nats_port, &dir).await?;
        config.nats_url = nats.url().to_string();
        config.data_dir = dir.join("engine");
        eprintln!(
            "jetsaga dev: nats-server on {} (data and logs under {})",
            nats.url(),
            dir.display()
        );
        Some(nats)
    };
    let result = crate::engine::run(config, shutdown_on_signals()).await;
    if let Some(nats) = nats {
        nats.stop().await;
    }
    result?;
    Ok(0)
}

async fn client(cli: &Cli) -> Result<Client, ClientError> {
    Client::connect(&cli.nats_url, &cli.prefix).await
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn def(cli: &Cli, cmd: &DefCommand) -> anyhow::Result<i32> {
    match cmd {
        DefCommand::Validate { files } => {
            let mut failed = false;
            let mut report = Vec::new();
            for file in crate::engine::definition_files(files)? {
                match definition::parse_file(&file) {
                    Ok(parsed) => {
                        let names: Vec<String> =
                            parsed.sagas.iter().map(|d| d.name.clone()).collect();
                        report.push(serde_json::json!({"file": file, "ok": true, "sagas": names}));
                        if cli.output == Output::Table {
                            println!("ok      {}: {}", file.display(), names.join(", "));
                        }
                    }
                    Err(e) => {
                        failed = true;
                        report.push(serde_json::json!({"file": file, "ok": false, "code": e.code(), "error": e.to_string()}));
                        if cli.output == Output::Table {
                            eprintln!("invalid [{}] {e}", e.code());
                        }
                    }
                }
            }
            if cli.output == Output::Json {
                print_json(&report)?;
            }
            Ok(i32::from(failed))
        }
        DefCommand::Apply { files } => {
            let mut defs = Vec::new();
            for file in crate::engine::definition_files(files)? {
                let parsed = definition::parse_file(&file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
                defs.extend(parsed.sagas);
            }
            let applied = client(cli).await?.apply(defs).await?;
            match cli.output {
                Output::Json => print_json(&applied)?,
                Output::Table => {
                    for a in applied {
                        let what = if a.changed { "applied" } else { "unchanged" };
                        println!("{what:9} {} v{}", a.name, a.version);
                    }
                }
            }
            Ok(0)
        }
        DefCommand::List => {
            let defs = client(cli).await?.definitions().await?;
            match cli.output {
                Output::Json => print_json(&defs)?,
                Output::Table => println!("{}", render::definitions(&defs)),
            }
            Ok(0)
        }
    }
}

fn read_input(input: &str) -> anyhow::Result<serde_json::Value> {
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("E-BAD-INPUT: cannot read input file {path}: {e}"))?,
        None => input.to_string(),
    };
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("E-BAD-INPUT: --input is not valid JSON: {e}"))
}

async fn saga(cli: &Cli, cmd: &SagaCommand) -> anyhow::Result<i32> {
    match cmd {
        SagaCommand::Start {
            name,
            input,
            idempotency_key,
            wait,
            timeout,
        } => {
            let input = read_input(input)?;
            let client = client(cli).await?;
            let reply = client
                .start(name, input, idempotency_key.as_deref())
                .await?;
            if *wait {
                let detail = client.wait_terminal(&reply.saga_id, *timeout).await?;
                match cli.output {
                    Output::Json => print_json(&detail)?,
                    Output::Table => println!("{}", render::saga(&detail)),
                }
            } else {
                match cli.output {
                    Output::Json => print_json(&reply)?,
                    Output::Table => {
                        println!("{}", reply.saga_id);
                        if !reply.created {
                            eprintln!("(existing saga for this idempotency key)");
                        }
                    }
                }
            }
            Ok(0)
        }
        SagaCommand::Status { id } => {
            let detail = client(cli).await?.get(id).await?;
            match cli.output {
                Output::Json => print_json(&detail)?,
                Output::Table => println!("{}", render::saga(&detail)),
            }
            Ok(0)
        }
        SagaCommand::List {
            state,
            saga,
            limit,
            before,
        } => {
            let filter = SagaFilter {
                state: state.clone(),
                name: saga.clone(),
                before: before.clone(),
                limit: *limit,
            };
            let sagas = client(cli).await?.list(&filter).await?;
            match cli.output {
                Output::Json => print_json(&sagas)?,
                Output::Table => println!("{}", render::summaries(&sagas)),
            }
            Ok(0)
        }
        SagaCommand::Cancel {
            id,
            compensate,
            reason,
        } => {
            let detail = client(cli)
                .await?
                .cancel(id, *compensate, reason.clone())
                .await?;
            match cli.output {
                Output::Json => print_json(&detail)?,
                Output::Table => println!("{}", render::saga(&detail)),
            }
            Ok(0)
        }
        SagaCommand::Watch { id, timeout } => {
            let client = client(cli).await?;
            let output = cli.output;
            let last = client
                .watch(id, *timeout, |detail| match output {
                    Output::Json => {
                        if let Ok(line) = serde_json::to_string(detail) {
                            println!("{line}");
                        }
                    }
                    Output::Table => println!("{}", render::progress_line(detail)),
                })
                .await?;
            if output == Output::Table {
                println!("{}", render::saga(&last));
            }
            Ok(0)
        }
    }
}
