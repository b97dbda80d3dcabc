//! The `tiny-forge` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tiny_forge::cli;
use tiny_forge::modes::standalone;

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
    /// Run the controller: standalone (manifests from a directory, status in an embedded store)
    /// or, with --kubernetes, on Project and Stage custom resources.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions of Project and Stage (YAML).
    Crds,
    /// Show Projects or Stages with their status, like `kubectl get`.
    Get(GetArgs),
    /// Record that an image tag was pushed (what a webhook does): every Stage of a Project using
    /// that repository whose tag policy prefers the tag records it; the controller then deploys
    /// it where `autoDeploy` is on.
    Push(PushArgs),
    /// The webhook URL that CI systems and registries call.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Secrets sealed in the embedded store (standalone mode).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Build a Project (with `spec.build`) from Git now: the running controller fetches the
    /// commit, builds it and records the tag like a push.
    Build(BuildArgs),
    /// Builds from Git, newest first.
    Builds(BuildsArgs),
    /// Print logs: `logs build PROJECT [ID]` prints a build's log.
    #[command(subcommand)]
    Logs(LogsCommand),
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The Project.
    project: String,
    /// Branch or tag whose head is built [default: the first of build.branches, else the
    /// repository's default branch].
    #[arg(long = "ref", conflicts_with = "sha")]
    git_ref: Option<String>,
    /// This commit (full id).
    #[arg(long)]
    sha: Option<String>,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Where `run --secrets-dir` reads secrets (for `build.credentialsRef`, to resolve the ref).
    #[arg(long, env = "TINY_FORGE_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(clap::Args)]
struct BuildsArgs {
    /// Only this Project's builds.
    project: Option<String>,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Subcommand)]
enum LogsCommand {
    /// The log of a build (default: the Project's newest).
    Build {
        project: String,
        id: Option<i64>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Keep printing what the build writes until it ends.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Print the webhook URL (made on first use). Give senders `<URL>` for the generic JSON
    /// endpoint or `<URL>/<provider>` (github, gitlab, bitbucket, dockerhub, registry, harbor, quay).
    Url(UrlArgs),
    /// Make a new URL secret: the old URL stops working at once.
    Rotate(UrlArgs),
}

#[derive(clap::Args)]
struct UrlArgs {
    /// Base URL under which senders reach the listener [default: what the controller last
    /// started on this state directory recorded: its --public-url, else its --listen address].
    #[arg(long, env = "TINY_FORGE_PUBLIC_URL")]
    public_url: Option<String>,
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Store a secret, read from standard input (a trailing newline is dropped). Manifests refer
    /// to it as `{name: NAME, key: KEY}`.
    Set {
        name: String,
        key: String,
        /// Namespace of the resources that refer to it.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(clap::Args)]
struct KeyArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Key file of the sealed secrets [default: <state-dir>/secret.key].
    #[arg(long, env = "TINY_FORGE_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
}

impl KeyArgs {
    fn open(&self) -> anyhow::Result<(tiny_forge::store::StateDb, tiny_forge::crypto::SecretBox)> {
        let dir = self.state.dir();
        let db = tiny_forge::store::StateDb::open(&dir)?;
        let key = self
            .secret_key_file
            .clone()
            .unwrap_or_else(|| dir.join("secret.key"));
        Ok((db, tiny_forge::crypto::SecretBox::load_or_create(&key)?))
    }
}

#[derive(clap::Args)]
struct StateArgs {
    /// Directory of the embedded state store [default: ./.tiny-forge/state when it exists (as
    /// after `make run` in a checkout), else the per-user data directory, e.g.
    /// ~/.local/share/tiny-forge].
    #[arg(long, env = "TINY_FORGE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

/// The project-local state directory: `run`, `get`, `push` and `webhook` started in the same
/// directory find the same store without a flag, the way git finds `.git`.
const LOCAL_STATE_DIR: &str = ".tiny-forge/state";

impl StateArgs {
    fn dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let local = PathBuf::from(LOCAL_STATE_DIR);
        if local.is_dir() {
            return local;
        }
        dirs::data_local_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("tiny-forge")
    }
}

#[derive(clap::Args)]
#[command(
    after_help = "Standalone:  tiny-forge run --manifests examples/standalone\n\
Kubernetes:  tiny-forge run --kubernetes   (in a Pod, or with KUBECONFIG; see docs/KUBERNETES.md)"
)]
struct RunArgs {
    /// Directory of Project/Stage manifests (YAML, several documents per file, subdirectories
    /// included). Watched for changes. Standalone mode only.
    #[arg(
        long,
        env = "TINY_FORGE_MANIFESTS",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    manifests: Option<PathBuf>,
    /// Kubernetes mode: reconcile Project and Stage custom resources (in-cluster config, else
    /// KUBECONFIG); status goes to their status subresource.
    #[arg(long, env = "TINY_FORGE_KUBERNETES")]
    kubernetes: bool,
    /// Kubernetes: watch only this namespace [default: all].
    #[arg(long, env = "TINY_FORGE_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Kubernetes: the controller's own namespace, where its Secrets and Lease live and from
    /// which Secrets are shared [default: $POD_NAMESPACE, else the kubeconfig's namespace].
    #[arg(long, env = "POD_NAMESPACE")]
    controller_namespace: Option<String>,
    /// Kubernetes: elect a leader among replicas through a Lease; only the leader reconciles.
    #[arg(long, env = "TINY_FORGE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Kubernetes: name of the Lease (in the controller's namespace).
    #[arg(long, env = "TINY_FORGE_LEASE_NAME", default_value = "tiny-forge")]
    lease_name: String,
    /// Kubernetes: Secret (in the controller's namespace) holding the webhook URL secret under
    /// key `url-secret`; created when missing. Delete it to rotate the URL.
    #[arg(
        long,
        env = "TINY_FORGE_WEBHOOK_SECRET",
        default_value = "tiny-forge-webhook"
    )]
    webhook_secret: String,
    #[command(flatten)]
    state: StateArgs,
    /// Directory of secrets, laid out as `<name>/<key>` (or `<namespace>/<name>/<key>`).
    #[arg(long, env = "TINY_FORGE_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    /// Docker endpoint [default: $DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long)]
    docker_host: Option<String>,
    /// How often every Stage is re-checked for drift (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", env = "TINY_FORGE_RESYNC", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// How many Stages may deploy at the same time.
    #[arg(long, default_value_t = 4, env = "TINY_FORGE_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Name of this controller instance, put on every container it creates. Two instances on one
    /// Docker host need different names; keep it when moving the state directory
    /// [default: `standalone`, or `kubernetes` with --kubernetes].
    #[arg(long, env = "TINY_FORGE_INSTANCE")]
    instance: Option<String>,
    /// Address of the webhook listener (also /healthz, /readyz, /metrics).
    #[arg(long, default_value = "0.0.0.0:8080", env = "TINY_FORGE_LISTEN")]
    listen: std::net::SocketAddr,
    /// Base URL senders reach the listener at, when something stands in front of it (a TLS
    /// proxy: https://forge.example.com); `webhook url` prints it; with --kubernetes it is
    /// written on the webhook Secret the controller makes (annotation
    /// `tinyforge.dev/public-url`) [default: the --listen address, loopback for 0.0.0.0].
    #[arg(long, env = "TINY_FORGE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Accept no webhooks: the listener (--listen) then answers only /healthz, /readyz and
    /// /metrics.
    #[arg(long)]
    no_webhooks: bool,
    /// Largest webhook body accepted, in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20)]
    webhook_body_limit: usize,
    /// Webhook deliveries per second accepted from one address (429 above; 0: no limit).
    #[arg(long, default_value_t = 20)]
    webhook_rate: u32,
    /// Burst above --webhook-rate accepted from one address.
    #[arg(long, default_value_t = 200)]
    webhook_burst: u32,
    /// Reverse proxies (addresses or CIDR ranges) whose Forwarded / X-Forwarded-For headers
    /// name the client the rate limit counts; without it, the connection's address counts.
    #[arg(long, env = "TINY_FORGE_TRUSTED_PROXIES", value_delimiter = ',', num_args = 1..)]
    trusted_proxies: Vec<tiny_forge::sources::webhook::server::Cidr>,
    /// Create a Project (and a Stage following every tag) for pushed images that no Project
    /// uses [default: true standalone, false with --kubernetes].
    #[arg(long, env = "TINY_FORGE_AUTO_CREATE", action = clap::ArgAction::Set, conflicts_with = "no_auto_create")]
    auto_create: Option<bool>,
    /// Same as --auto-create=false.
    #[arg(long)]
    no_auto_create: bool,
    /// Auto-created Projects at most; past it, pushes of unknown images are answered with the
    /// reason and logged.
    #[arg(long, env = "TINY_FORGE_AUTO_CREATE_MAX", default_value_t = tiny_forge::ingest::DEFAULT_AUTO_CREATE_MAX)]
    auto_create_max: usize,
    /// Repositories that may be auto-created, as globs (`registry.example.com/team/*`; `**`
    /// crosses `/`) [default: any].
    #[arg(long, env = "TINY_FORGE_AUTO_CREATE_ALLOW", value_delimiter = ',', num_args = 1..)]
    auto_create_allow: Vec<String>,
    /// Key file of the sealed secrets [default: <state-dir>/secret.key].
    #[arg(long, env = "TINY_FORGE_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// Nginx Proxy Manager admin URL (e.g. http://npm:81): route Stages' domains through it.
    #[arg(long, env = "TINY_FORGE_NPM_URL")]
    npm_url: Option<String>,
    /// NPM account email.
    #[arg(long, env = "TINY_FORGE_NPM_EMAIL", requires = "npm_url")]
    npm_email: Option<String>,
    /// File holding the NPM password [default: env TINY_FORGE_NPM_PASSWORD, else the sealed
    /// secret set with `tiny-forge secret set npm password -n tiny-forge`].
    #[arg(long, requires = "npm_url")]
    npm_password_file: Option<PathBuf>,
    /// Builds from Git (Projects with spec.build) running at once, all Projects together.
    #[arg(long, default_value_t = 1, env = "TINY_FORGE_BUILD_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..))]
    build_concurrency: u16,
    /// Serve Stages' fixed `hostPort`s through the port holder, a small proxy container of
    /// tiny-forge's that owns the ports, so rolls switch without a gap and a broken tag never
    /// answers a client (a Stage opts out with `portHolder.enabled: false`). Standalone mode
    /// only: its control channel is the Docker host's loopback.
    #[arg(long, env = "TINY_FORGE_PORT_HOLDER", default_value_t = true, action = clap::ArgAction::Set)]
    port_holder: bool,
    /// Image of the port holder (`scripts/holder-image.sh` builds it).
    #[arg(long, env = "TINY_FORGE_HOLDER_IMAGE", default_value = tiny_forge::adapters::holder::DEFAULT_IMAGE)]
    holder_image: String,
    /// The port holder's control address on the Docker host's loopback.
    #[arg(long, env = "TINY_FORGE_HOLDER_CONTROL", default_value = tiny_forge::adapters::holder::DEFAULT_CONTROL)]
    holder_control: std::net::SocketAddr,
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

#[derive(clap::Args)]
struct PushArgs {
    /// The pushed image, `repository:tag` (optionally `@sha256:…`).
    image: String,
    /// Manifest digest of the pushed tag, when known.
    #[arg(long)]
    digest: Option<String>,
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
        Command::Run(args) => run(*args),
        Command::Push(args) => cli::push(&args.state.dir(), &args.image, args.digest),
        Command::Webhook(cmd) => webhook(cmd),
        Command::Build(args) => build(&args),
        Command::Builds(args) => cli::builds(
            &args.state.dir(),
            args.project.as_deref(),
            &args.namespace,
            args.json,
        ),
        Command::Logs(LogsCommand::Build {
            project,
            id,
            namespace,
            follow,
            state,
        }) => cli::build_log(&state.dir(), &namespace, &project, id, follow),
        Command::Secret(SecretCommand::Set {
            name,
            key,
            namespace,
            keys,
        }) => set_secret(&keys, &namespace, &name, &key),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn webhook(cmd: WebhookCommand) -> anyhow::Result<()> {
    let (args, rotate) = match &cmd {
        WebhookCommand::Url(a) => (a, false),
        WebhookCommand::Rotate(a) => (a, true),
    };
    let (db, sealer) = args.keys.open()?;
    let secret = if rotate {
        tiny_forge::sources::webhook::rotate_url_secret(&db, &sealer)
    } else {
        tiny_forge::sources::webhook::ensure_url_secret(&db, &sealer)
    }
    .map_err(anyhow::Error::msg)?;
    let base = match &args.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => match tiny_forge::sources::webhook::recorded_public_base(&db)
            .map_err(anyhow::Error::msg)?
        {
            Some(base) => base,
            None => {
                eprintln!(
                    "no controller has listened with this state directory yet: assuming the \
                     default --listen 0.0.0.0:8080 (give --public-url to say otherwise)"
                );
                "http://127.0.0.1:8080".to_string()
            }
        },
    };
    println!("{base}/api/webhook/{secret}");
    if rotate {
        eprintln!("the previous URL no longer works; update every sender");
    }
    Ok(())
}

fn build(args: &BuildArgs) -> anyhow::Result<()> {
    let (db, sealer) = args.keys.open()?;
    let db = std::sync::Arc::new(db);
    let secrets = tiny_forge::store::StoreSecrets {
        db: Some(db.clone()),
        sealer: Some(sealer),
        dir: args.secrets_dir.clone(),
    };
    let id = cli::request_build(
        &db,
        &secrets,
        &args.namespace,
        &args.project,
        args.git_ref.as_deref(),
        args.sha.as_deref(),
    )?;
    println!("{id}");
    Ok(())
}

fn set_secret(keys: &KeyArgs, namespace: &str, name: &str, key: &str) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value)?;
    let value = value.strip_suffix('\n').unwrap_or(&value);
    anyhow::ensure!(!value.is_empty(), "no value on standard input");
    let (db, sealer) = keys.open()?;
    let sealed = sealer.seal(
        value.as_bytes(),
        &tiny_forge::store::secrets::context(namespace, name, key),
    );
    db.set_secret(namespace, name, key, &sealed)?;
    eprintln!("stored secret {namespace}/{name} key {key}");
    Ok(())
}

fn print_crds() -> anyhow::Result<()> {
    print!("{}", tiny_forge::crds_yaml()?);
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in files or log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // Without webhooks the listener still serves /healthz, /readyz and /metrics.
    let webhook = Some(tiny_forge::sources::webhook::server::Config {
        listen: args.listen,
        webhooks: !args.no_webhooks,
        body_limit: args.webhook_body_limit,
        rate: std::num::NonZeroU32::new(args.webhook_rate).map(|r| {
            (
                r,
                std::num::NonZeroU32::new(args.webhook_burst).unwrap_or(r),
            )
        }),
        trusted_proxies: args.trusted_proxies.clone(),
        ..Default::default()
    });
    let npm = match args.npm_url {
        None => None,
        Some(url) => Some(tiny_forge::adapters::npm::NpmConfig {
            url,
            email: args
                .npm_email
                .ok_or_else(|| anyhow::anyhow!("--npm-url needs --npm-email"))?,
            password: match (
                &args.npm_password_file,
                std::env::var("TINY_FORGE_NPM_PASSWORD"),
            ) {
                (Some(f), _) => std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("--npm-password-file {}: {e}", f.display()))?
                    .trim_end_matches('\n')
                    .to_string(),
                (None, Ok(p)) => p,
                (None, Err(_)) => String::new(),
            },
            timeout: std::time::Duration::from_secs(30),
        }),
    };
    let auto_create = args.auto_create.unwrap_or(!args.kubernetes) && !args.no_auto_create;
    if args.kubernetes {
        let opts = tiny_forge::modes::kubernetes::Options {
            namespace: args.namespace.filter(|n| !n.is_empty()),
            controller_namespace: args.controller_namespace.filter(|n| !n.is_empty()),
            instance: args.instance.unwrap_or_else(|| "kubernetes".into()),
            docker_host: args.docker_host,
            resync: args.resync,
            concurrency: usize::from(args.concurrency),
            webhook,
            webhook_secret: args.webhook_secret,
            public_url: args.public_url.clone(),
            auto_create,
            auto_create_policy: tiny_forge::ingest::AutoCreatePolicy {
                max: args.auto_create_max,
                allow: args.auto_create_allow.clone(),
            },
            npm,
            leader_election: args.leader_election,
            lease_name: args.lease_name,
            identity: tiny_forge::modes::kubernetes::default_identity(),
        };
        return tokio::runtime::Runtime::new()?.block_on(async {
            let shutdown = shutdown_signal()?;
            tiny_forge::modes::kubernetes::run(opts, shutdown).await
        });
    }
    let opts = standalone::Options {
        manifests: args
            .manifests
            .expect("clap requires --manifests without --kubernetes"),
        state_dir: args.state.dir(),
        secrets_dir: args.secrets_dir,
        docker_host: args.docker_host,
        resync: args.resync,
        concurrency: usize::from(args.concurrency),
        instance: args.instance.unwrap_or_else(|| "standalone".into()),
        webhook,
        public_url: args.public_url,
        auto_create,
        auto_create_policy: tiny_forge::ingest::AutoCreatePolicy {
            max: args.auto_create_max,
            allow: args.auto_create_allow,
        },
        secret_key_file: args.secret_key_file,
        npm,
        build_concurrency: usize::from(args.build_concurrency),
        holder: args
            .port_holder
            .then(|| tiny_forge::adapters::holder::HolderConfig {
                image: args.holder_image.clone(),
                control: args.holder_control,
            }),
        release_holder: (!args.port_holder).then(|| tiny_forge::adapters::holder::HolderConfig {
            image: args.holder_image.clone(),
            control: args.holder_control,
        }),
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = shutdown_signal()?;
        standalone::run(opts, shutdown).await
    })
}

/// SIGINT or SIGTERM. The handlers are installed at once, not on first poll, so a signal that
/// arrives during start-up is a graceful stop too.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested");
    })
}
