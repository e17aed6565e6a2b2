//! `inferd advise`: turns `cargo bench` results and `inferd bench` reports into the CPU-or-GPU
//! report, for the workloads of a file or of the flags.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use inferd::advise::catalogue::{Catalogue, Tier};
use inferd::advise::criterion;
use inferd::advise::load::{BenchReport, REPORT_FORMAT};
use inferd::advise::workload::Workload;
use inferd::advise::{Inputs, advise, report};

/// Flags of `inferd advise`.
#[derive(clap::Args)]
pub struct AdviseArgs {
    /// criterion's folder, as `cargo bench` wrote it [default: target/criterion (or under
    /// $CARGO_TARGET_DIR, or $CRITERION_HOME) when it holds inferd's suite manifest].
    #[arg(long)]
    criterion: Option<PathBuf>,
    /// An `inferd bench --json` report (repeatable).
    #[arg(long = "bench")]
    benches: Vec<PathBuf>,
    /// A TOML file of [[workloads]] (model, p95, requests_per_second, ...); or give one model's
    /// workload with the flags below.
    #[arg(long)]
    workloads: Option<PathBuf>,
    /// The model to advise on (with --p95 and the load).
    #[arg(long)]
    model: Option<String>,
    /// 95th-percentile latency objective of a whole request (e.g. 50ms).
    #[arg(long, value_parser = duration)]
    p95: Option<Duration>,
    /// 95th-percentile time to first token objective (generation).
    #[arg(long, value_parser = duration)]
    ttft_p95: Option<Duration>,
    /// 95th-percentile inter-token latency objective (generation).
    #[arg(long, value_parser = duration)]
    itl_p95: Option<Duration>,
    /// Requests per second to carry.
    #[arg(long)]
    rps: Option<f64>,
    /// Requests per minute to carry (generation, with --prompt-tokens and --completion-tokens).
    #[arg(long)]
    rpm: Option<f64>,
    /// Tokens per minute to carry (generation).
    #[arg(long)]
    tpm: Option<f64>,
    /// Prompt tokens per request (generation), or tokens per text (embeddings).
    #[arg(long)]
    prompt_tokens: Option<f64>,
    /// Completion tokens per request (generation).
    #[arg(long)]
    completion_tokens: Option<f64>,
    /// Share of requests retried (generation's TPM formula).
    #[arg(long, default_value_t = 0.0)]
    retry_rate: f64,
    /// The busiest share of its capacity a replica may run at.
    #[arg(long, default_value_t = 0.7)]
    utilisation: f64,
    /// Replicas at least.
    #[arg(long, default_value_t = 1)]
    min_replicas: u32,
    /// Pricing tier: payg, spot, reserved-1y or reserved-3y.
    #[arg(long, default_value = "payg")]
    tier: Tier,
    /// A catalogue file merged over the built-in one (your region's or your discounts' prices,
    /// more sizes).
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Folder to write report.md, report.html and report.json into.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn duration(text: &str) -> Result<Duration, String> {
    inferd::advise::load::summary::parse_seconds(text).map(Duration::from_secs_f64)
}

impl AdviseArgs {
    fn workloads(&self) -> anyhow::Result<Vec<Workload>> {
        match (&self.workloads, &self.model) {
            (Some(path), None) => Ok(Workload::load_file(path)?),
            (Some(_), Some(_)) => anyhow::bail!("give --workloads or --model, not both"),
            (None, None) => anyhow::bail!("give --workloads <file> or --model with its objective and load"),
            (None, Some(model)) => {
                let mut workload = Workload::new(model);
                workload.p95 = self.p95;
                workload.ttft_p95 = self.ttft_p95;
                workload.itl_p95 = self.itl_p95;
                workload.requests_per_second = self.rps;
                workload.requests_per_minute = self.rpm;
                workload.tokens_per_minute = self.tpm;
                workload.prompt_tokens = self.prompt_tokens;
                workload.completion_tokens = self.completion_tokens;
                workload.retry_rate = self.retry_rate;
                workload.utilisation = self.utilisation;
                workload.min_replicas = self.min_replicas;
                workload.tier = self.tier;
                workload.validate()?;
                Ok(vec![workload])
            }
        }
    }
}

/// Reads the measurements, assesses every workload and writes the report.
pub fn run(args: AdviseArgs) -> anyhow::Result<()> {
    let workloads = args.workloads()?;
    let catalogue = match &args.prices {
        Some(path) => Catalogue::with_overrides(path)?,
        None => Catalogue::built_in()?,
    };
    let criterion = match &args.criterion {
        Some(folder) => Some(criterion::read(folder)?),
        None => {
            let folder = criterion::default_folder();
            if folder.join(criterion::MANIFEST).is_file() { Some(criterion::read(&folder)?) } else { None }
        }
    };
    let mut benches = Vec::new();
    for path in &args.benches {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let report: BenchReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an `inferd bench --json` report", path.display()))?;
        anyhow::ensure!(
            report.format == REPORT_FORMAT,
            "{} is format {}; this inferd reads {REPORT_FORMAT}",
            path.display(),
            report.format
        );
        benches.push((path.display().to_string(), report));
    }
    anyhow::ensure!(
        criterion.is_some() || !benches.is_empty(),
        "no measurements: run `cargo bench` (its results are read from target/criterion) or give --bench files \
         from `inferd bench --json`"
    );
    let generated = inferd::advise::now_rfc3339();
    let report = advise(&Inputs { criterion, benches, catalogue, workloads, generated })?;
    for assessment in &report.assessments {
        println!("{}: {}\n", assessment.workload.model, assessment.verdict.text);
    }
    if let Some(folder) = &args.out {
        std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
        let write = |name: &str, text: String| {
            let path = folder.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write("report.md", report::markdown(&report))?;
        write("report.html", report::html(&report).context("cannot render the HTML report")?)?;
        write("report.json", serde_json::to_string_pretty(&report).context("cannot write the JSON report")? + "\n")?;
        eprintln!("wrote report.md, report.html and report.json in {}", folder.display());
    }
    Ok(())
}
