//! The `tiny-forge` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tiny_forge::cli;
use tiny_forge::standalone;

/// Deploys Docker containers toward declared Projects and Stages: pull, start, health-check,
/// switch, retire the old container, or roll back and say so.
#[derive(Parser)]
#[command(name = "tiny-forge", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (standalone: manifests from a directory, status in an embedded store).
    Run(RunArgs),
    /// Print the CustomResourceDefinitions of Project and Stage (YAML).
    Crds,
    /// Show Projects or Stages with their status, like `kubectl get`.
    Get(GetArgs),
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct StateArgs {
    /// Directory of the embedded state store [default: the per-user data directory].
    #[arg(long, env = "TINY_FORGE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            dirs::data_local_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("tiny-forge")
        })
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory of Project/Stage manifests (YAML, several documents per file, subdirectories
    /// included). Watched for changes.
    #[arg(long, env = "TINY_FORGE_MANIFESTS")]
    manifests: PathBuf,
    #[command(flatten)]
    state: StateArgs,
    /// Directory of secrets, laid out as `<name>/<key>` (or `<namespace>/<name>/<key>`).
    #[arg(long, env = "TINY_FORGE_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    /// Docker endpoint [default: $DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long)]
    docker_host: Option<String>,
    /// How often every Stage is re-checked for drift (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// How many Stages may deploy at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TINY_FORGE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct GetArgs {
    /// `projects` or `stages` (also `project`, `stage`, `tfp`, `tfs`).
    #[arg(value_parser = parse_kind)]
    kind: cli::GetKind,
    /// Only this resource.
    name: Option<String>,
    /// Namespace [default: all].
    #[arg(short, long)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum)]
    output: Option<cli::Output>,
    #[command(flatten)]
    state: StateArgs,
}

fn parse_kind(s: &str) -> Result<cli::GetKind, String> {
    match s {
        "projects" | "project" | "tfp" => Ok(cli::GetKind::Projects),
        "stages" | "stage" | "tfs" => Ok(cli::GetKind::Stages),
        other => Err(format!("unknown kind {other:?}: use projects or stages")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => print_crds(),
        Command::Version => {
            println!("tiny-forge {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Get(args) => cli::get(
            &args.state.dir(),
            args.kind,
            args.name.as_deref(),
            args.namespace.as_deref(),
            args.output,
        ),
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds() -> anyhow::Result<()> {
    print!("{}", tiny_forge::crds_yaml()?);
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let opts = standalone::Options {
        manifests: args.manifests,
        state_dir: args.state.dir(),
        secrets_dir: args.secrets_dir,
        docker_host: args.docker_host,
        resync: args.resync,
        concurrency: usize::from(args.concurrency),
    };
    tokio::runtime::Runtime::new()?.block_on(standalone::run(opts, shutdown_signal()))
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}
