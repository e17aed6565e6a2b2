//! The `inferd` command line.

mod cli;
mod log_format;
mod log_writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use inferd::config::{Config, DEFAULT_CONFIG};
use inferd::core::DeviceSpec;
use inferd::model_spec::parse_model_spec;

/// inferd: serve models over OpenAI-compatible and Open Inference Protocol (KServe v2) HTTP APIs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured models over HTTP until SIGTERM or Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Load-test a running server (inferd or any OpenAI / Open Inference Protocol server).
    Bench(Box<cli::bench::BenchArgs>),
    /// Turn `cargo bench` results and `inferd bench` reports into a CPU-or-GPU report with
    /// replicas and costs per VM size.
    Advise(Box<cli::advise::AdviseArgs>),
    /// Print the SHA-256 of an API key read from standard input, as `[server.auth]` keys take it.
    HashKey,
    /// Exit 0 when a running server answers its liveness route (or, with --ready, its readiness
    /// route) with 200, else 1: for container health checks and exec probes.
    Health(HealthArgs),
}

#[derive(clap::Args)]
struct HealthArgs {
    /// Check readiness (every model loaded, not draining) rather than liveness.
    #[arg(long)]
    ready: bool,
    /// The server's base URL [default: http:// and the address of INFERD_LISTEN, loopback for
    /// an unspecified address, else http://127.0.0.1:8080].
    #[arg(long)]
    url: Option<String>,
    /// Longest wait for the answer (e.g. 3s).
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    timeout: Duration,
    /// PEM certificates to trust for an https:// URL, besides the public roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

/// Flags override the configuration file; each flag can also be set by its environment
/// variable.
#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file [default: models/default.toml, the bundled models, unless --model is
    /// given].
    #[arg(long, env = "INFERD_CONFIG")]
    config: Option<PathBuf>,
    /// A model to serve without a configuration file: [KIND=]PATH[,name=NAME][,device=DEVICE]
    /// [,engine=ENGINE][,precision=PRECISION]. KIND (linear, xgboost, lightgbm, embedding, llm)
    /// is read from the files when left out; ${VAR} in PATH is taken from the environment.
    /// Repeat for more models (in INFERD_MODELS, separate them with ';'); with --config, they
    /// are served besides the file's.
    #[arg(long = "model", env = "INFERD_MODELS", value_delimiter = ';')]
    models: Vec<String>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "INFERD_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Device for every model: auto, cpu, cuda or cuda:N (overrides each model's setting).
    #[arg(long, env = "INFERD_DEVICE")]
    device: Option<DeviceSpec>,
    /// Longest time a request may take, queueing included (e.g. 30s, 500ms).
    #[arg(long, env = "INFERD_REQUEST_TIMEOUT", value_parser = humantime_duration)]
    request_timeout: Option<Duration>,
    /// After SIGTERM, how long to go on serving while readiness reports draining (e.g. 5s).
    #[arg(long, env = "INFERD_DRAIN_DELAY", value_parser = humantime_duration)]
    drain_delay: Option<Duration>,
    /// Then, longest time to let in-flight requests finish (e.g. 30s).
    #[arg(long, env = "INFERD_DRAIN_TIMEOUT", value_parser = humantime_duration)]
    drain_timeout: Option<Duration>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "INFERD_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Most inference requests answered at once; more are answered 503 with Retry-After.
    #[arg(long, env = "INFERD_MAX_CONCURRENT_REQUESTS")]
    max_concurrent_requests: Option<usize>,
    /// A keys file of `[[keys]]` (id, sha256, models, limits), reloaded on SIGHUP.
    #[arg(long, env = "INFERD_KEYS_FILE")]
    keys_file: Option<PathBuf>,
    /// Serve on a non-loopback address without authentication, on purpose.
    #[arg(long, env = "INFERD_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Export traces over OTLP/HTTP to this collector endpoint (e.g. http://localhost:4318).
    #[arg(long, env = "INFERD_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log filter, in tracing's syntax (e.g. info, inferd=debug).
    #[arg(long, env = "INFERD_LOG", default_value = "info")]
    log: String,
    /// Log format: text (for people) or json (one object per line, for log pipelines).
    #[arg(long, env = "INFERD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// mimalloc rather than glibc's allocator: a connection's buffers are allocated on one runtime
/// thread and often freed on the other, and glibc then takes the first thread's arena lock. On
/// two cores serving one-row requests those locks were two thirds of the server's futex calls,
/// and mimalloc (whose frees from another thread take no lock) cut its CPU per request by about
/// a tenth (`benches/http_path.py`; README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn humantime_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text).map_err(|err| err.to_string())
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let models = self.models.iter().filter(|spec| !spec.trim().is_empty());
        let models = models.map(|spec| parse_model_spec(spec.trim())).collect::<Result<Vec<_>, _>>()?;
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None if !models.is_empty() => Config::default(),
            None => {
                let path = PathBuf::from(DEFAULT_CONFIG);
                if !path.exists() {
                    anyhow::bail!(
                        "no --config or --model given and the bundled {DEFAULT_CONFIG} is not in the current \
                         directory; run from the inferd directory, or pass --config or --model"
                    );
                }
                Config::load(&path)?
            }
        };
        config.models.extend(models);
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(timeout) = self.request_timeout {
            config.server.request_timeout = timeout;
        }
        if let Some(delay) = self.drain_delay {
            config.server.drain_delay = delay;
        }
        if let Some(timeout) = self.drain_timeout {
            config.server.drain_timeout = timeout;
        }
        if let Some(bytes) = self.max_body_bytes {
            config.server.max_body_bytes = bytes;
        }
        if let Some(limit) = self.max_concurrent_requests {
            config.server.max_concurrent_requests = limit;
        }
        if let Some(path) = &self.keys_file {
            config.server.auth.keys_file = Some(path.clone());
        }
        if self.allow_unauthenticated {
            config.server.allow_unauthenticated = true;
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            config.server.telemetry.otlp_endpoint = Some(endpoint.clone());
        }
        if let Some(device) = self.device {
            for model in &mut config.models {
                model.device = device;
            }
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    if let Some(missing) = missing_cpu_features() {
        eprintln!("inferd: this build needs a CPU with {missing} (x86-64-v3); this one lacks it");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("inferd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The instruction set extensions this build was compiled for and the CPU lacks, so that an
/// old CPU gets a clear message instead of an illegal-instruction crash later.
fn missing_cpu_features() -> Option<&'static str> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return Some("AVX2");
        }
        if !std::arch::is_x86_feature_detected!("fma") {
            return Some("FMA");
        }
    }
    None
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let filter = tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?;
            // Lines are written by a thread of their own, many per write (`log_writer`). The
            // guard writes what is pending when `serve` returns.
            let (writer, _flush_on_exit) =
                log_writer::buffered(std::io::stderr()).context("cannot start the log writer")?;
            let logs = tracing_subscriber::fmt().with_writer(writer).with_env_filter(filter);
            match args.log_format {
                LogFormat::Text => logs
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .fmt_fields(log_format::Fields)
                    .with_timer(log_format::Clock)
                    .init(),
                LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
            }
            let config = args.config()?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(inferd::serve(config, inferd::server::shutdown_signal()))?;
            Ok(())
        }
        Command::Bench(args) => cli::bench::run(*args),
        Command::Advise(args) => cli::advise::run(*args),
        Command::Health(args) => health(&args),
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key).context("cannot read the key from standard input")?;
            let key = key.trim_end_matches(['\n', '\r']);
            anyhow::ensure!(!key.is_empty(), "no key on standard input");
            println!("{}", inferd::server::hash_key(key));
            Ok(())
        }
    }
}

/// `inferd health`: one GET, exit status from the answer.
fn health(args: &HealthArgs) -> anyhow::Result<()> {
    let base = match &args.url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let listen = std::env::var("INFERD_LISTEN").ok().and_then(|text| text.parse::<std::net::SocketAddr>().ok());
            let mut address = listen.unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
            if address.ip().is_unspecified() {
                address.set_ip(if address.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{address}")
        }
    };
    let route = if args.ready { "/v2/health/ready" } else { "/v2/health/live" };
    let client = inferd::server::outbound::Outbound::new(args.ca_file.as_deref(), args.timeout)?;
    let answer: serde_json::Value = client.get_json(&format!("{base}{route}"))?;
    println!("{answer}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inferd.toml");
        std::fs::write(
            &file,
            "[server]\nrequest_timeout = \"9s\"\ndrain_timeout = \"9s\"\nmax_body_bytes = 9\n\n\
             [[models]]\nname = \"a\"\nkind = \"linear\"\npath = \"a.json\"\ndevice = \"cuda:1\"\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut args = vec!["inferd", "serve", "--config", file.to_str().unwrap()];
            args.extend(extra);
            let Command::Serve(args) = Cli::try_parse_from(args).unwrap().command else { unreachable!() };
            args.config().unwrap()
        };
        let from_file = parse(&[]);
        assert_eq!(from_file.server.request_timeout, Duration::from_secs(9));
        assert_eq!(from_file.models[0].device, DeviceSpec::Cuda(1));
        let overridden = parse(&[
            "--request-timeout",
            "250ms",
            "--drain-timeout",
            "1s",
            "--max-body-bytes",
            "1024",
            "--device",
            "cpu",
            "--listen",
            "0.0.0.0:9999",
        ]);
        assert_eq!(overridden.server.request_timeout, Duration::from_millis(250));
        assert_eq!(overridden.server.drain_timeout, Duration::from_secs(1));
        assert_eq!(overridden.server.max_body_bytes, 1024);
        assert_eq!(overridden.server.listen.port(), 9999);
        assert_eq!(overridden.models[0].device, DeviceSpec::Cpu);
    }
}
