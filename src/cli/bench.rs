//! `inferd bench`: load-tests a running server (ours or any OpenAI / Open Inference Protocol
//! server) and prints a table; `--json` and `--csv` write the figures for `inferd advise` and
//! spreadsheets.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use inferd::advise::host::Host;
use inferd::advise::load::{self, Api, BenchReport, LoadTest, MeasuredOn, PayloadSpec, Profile, Slo};

/// Flags of `inferd bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The model, as the server names it.
    #[arg(long)]
    model: String,
    /// The protocol: v2 (Open Inference Protocol infer, tabular models), embeddings, chat or
    /// completions (OpenAI).
    #[arg(long)]
    api: Api,
    /// synchronous, concurrent (--concurrency), constant or poisson (--rate), or sweep
    /// (synchronous, the most the server answers at --max-concurrency, then --sweep-rates rates
    /// between).
    #[arg(long, default_value = "sweep")]
    profile: String,
    /// Clients of each concurrent point, comma-separated.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Requests per second of each constant or poisson point, comma-separated.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Constant-rate points of a sweep.
    #[arg(long, default_value_t = 4)]
    sweep_rates: usize,
    /// Clients of a sweep's throughput point.
    #[arg(long, default_value_t = 32)]
    max_concurrency: usize,
    /// How long each point lasts (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = seconds)]
    duration: f64,
    /// Requests each point sends at most.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// Requests an open loop keeps outstanding at most; beyond it requests go out late, and the
    /// table says how late.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Longest one request may take (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = seconds)]
    timeout: f64,
    /// Goodput bounds, e.g. ttft:200ms,itl:50ms,latency:500ms.
    #[arg(long)]
    goodput: Option<Slo>,
    /// Rows per v2 request, or texts per embeddings request.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Features per v2 row [default: the model's input width, read from the server].
    #[arg(long)]
    features: Option<usize>,
    /// Words per built-in text or prompt (about one token each).
    #[arg(long, default_value_t = 32)]
    input_words: usize,
    /// Tokens to generate per chat or completion request.
    #[arg(long, default_value_t = 64)]
    output_tokens: usize,
    /// Ask for whole answers instead of streams (no time to first token then).
    #[arg(long)]
    no_stream: bool,
    /// Send this JSON body with every request instead of the built-in ones.
    #[arg(long)]
    body: Option<PathBuf>,
    /// API key, sent as `Authorization: Bearer`.
    #[arg(long, env = "INFERD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Another header, `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// What the server runs on, for `inferd advise` to scale the figures: a catalogue size
    /// (Standard_NC4as_T4_v3), or `gpu:<product>` for a whole GPU that is not one (gpu:H200).
    /// Needed for a server that is not on this machine, and for one here that computes on a GPU.
    #[arg(long)]
    measured_on: Option<String>,
    /// Seed of the Poisson arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the figures as JSON (what `inferd advise --bench` reads).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the figures as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn seconds(text: &str) -> Result<f64, String> {
    load::summary::parse_seconds(text)
}

/// Runs the load test and writes its outputs.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let profile = Profile::new(&args.profile, &args.concurrency, &args.rate, args.sweep_rates, args.max_concurrency)
        .map_err(anyhow::Error::msg)?;
    let body = match &args.body {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?)
        }
        None => None,
    };
    let headers = args
        .headers
        .iter()
        .map(|header| {
            header
                .split_once(':')
                .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
                .with_context(|| format!("--header '{header}' is not 'name: value'"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    anyhow::ensure!(args.timeout > 0.0, "--timeout must be positive");
    anyhow::ensure!(args.rows > 0, "--rows must be at least 1");
    let loopback = load::is_loopback(&args.url);
    let measured_on = match (&args.measured_on, loopback) {
        (Some(stated), _) => match stated.strip_prefix("gpu:") {
            Some(product) => MeasuredOn::Gpu(product.to_string()),
            None => MeasuredOn::Size(stated.clone()),
        },
        (None, true) => MeasuredOn::Host(Host::detect()),
        (None, false) => MeasuredOn::Unknown,
    };
    let mut test = LoadTest {
        url: args.url.clone(),
        model: args.model.clone(),
        api: args.api,
        payload: PayloadSpec {
            rows: args.rows,
            features: args.features.unwrap_or(0),
            input_words: args.input_words,
            output_tokens: args.output_tokens,
            stream: !args.no_stream,
        },
        body,
        duration: args.duration,
        max_requests: args.max_requests,
        max_in_flight: args.max_in_flight,
        timeout: Duration::from_secs_f64(args.timeout),
        slo: args.goodput,
        seed: args.seed,
        api_key: args.api_key.clone(),
        headers,
        progress: !args.quiet,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let started = inferd::advise::now_rfc3339();
    let points = runtime.block_on(async {
        if args.api == Api::V2 && test.body.is_none() && args.features.is_none() {
            let width = test.read_v2_features().await?;
            eprintln!("{}: {width} features per row (from the server's model metadata)", args.model);
        }
        test.run(&profile, |point| {
            eprintln!(
                "{} {}: {:.1} req/s, {} ok, {} failed",
                point.profile,
                point.load,
                point.summary.requests_per_s,
                point.summary.succeeded,
                point.summary.requests - point.summary.succeeded
            )
        })
        .await
    })?;
    let report = BenchReport {
        format: load::REPORT_FORMAT,
        started,
        url: args.url,
        model: args.model,
        api: args.api,
        loopback,
        measured_on,
        client: Host::detect(),
        payload: test.body.is_none().then_some(test.payload),
        slo: args.goodput,
        points,
    };
    println!("{}", load::output::table(&report));
    for point in &report.points {
        for (label, example) in &point.summary.error_examples {
            eprintln!("{} {}: {label}: {example}", point.profile, point.load);
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("cannot write the JSON")?;
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        let csv = load::output::csv(&report).context("cannot write the CSV")?;
        std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.loopback {
        eprintln!("note: the server is on this machine; the load generator shared its CPUs");
    } else if report.measured_on == MeasuredOn::Unknown {
        eprintln!("note: pass --measured-on <VM size> so that `inferd advise` can scale these figures");
    }
    Ok(())
}
