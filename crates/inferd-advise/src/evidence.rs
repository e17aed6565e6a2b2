//! From measurements to operating points: what one machine did with one model, as throughput
//! against latency, whether measured end to end by `inferd bench` or modelled from the compute
//! times `cargo bench` measured.
//!
//! Criterion figures are compute only (no HTTP, no queue). For tabular and embedding models a
//! batch of `b` taking `t(b)` gives `b / t(b)` rows per second, and a request that arrives while
//! a batch computes waits for it and then computes in the next: P95 latency ≈ 2 × t(b). For
//! generation with `s` sequences decoding, `P` prompt and `C` completion tokens per request, a
//! prefill taking `t_p(P)` and a decode step `t_d(s)`: every request lives through its own and
//! the other sequences' prefills and its `C` steps, `cycle = C × t_d(s) + s × t_p(P)`; the batch
//! completes `s` requests per cycle, so requests/s = `s / cycle` and tokens/s = requests/s ×
//! (P + C); latency ≈ cycle, time to first token ≈ `t_p(P) + t_d(s)`, inter-token latency ≈
//! `t_d(s) + (s − 1) × t_p(P) / C`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::catalogue::Catalogue;
use crate::criterion::{CriterionResults, Measured, family_tokens};
use crate::host::Isa;
use crate::load::{Api, BenchReport, MeasuredOn};
use crate::workload::Workload;

/// What a model does, for its units and how its latency is modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Rows in, predictions out (linear models, trees).
    Tabular,
    /// Texts in, vectors out.
    Embedding,
    /// Prompts in, tokens out.
    Generation,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tabular => "tabular",
            Self::Embedding => "embedding",
            Self::Generation => "generation",
        })
    }
}

impl Kind {
    /// The unit capacity is counted in.
    pub fn unit(self) -> &'static str {
        if self == Self::Generation { "tokens" } else { "requests" }
    }

    /// The kind a benchmark family measures (`None` for `batcher`, `kernels` and others that
    /// are no model's workload).
    pub fn of_family(family: &str) -> Option<Self> {
        match family {
            "linear" | "trees" => Some(Self::Tabular),
            _ if family.starts_with("embeddings-") => Some(Self::Embedding),
            _ if family.starts_with("prefill-") || family.starts_with("decode-") => Some(Self::Generation),
            _ => None,
        }
    }

    fn of_api(api: Api) -> Self {
        match api {
            Api::V2 => Self::Tabular,
            Api::Embeddings => Self::Embedding,
            Api::Chat | Api::Completions => Self::Generation,
        }
    }
}

/// The machine a curve comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Machine {
    /// CPUs.
    Cpu {
        /// The processor.
        cpu: String,
        /// Its vector instruction set family.
        isa: Isa,
        /// vCPUs the model computed on.
        vcpus: u32,
        /// The catalogue size it was, when the user said so.
        size: Option<String>,
    },
    /// A GPU (or the share of one a size gets).
    Gpu {
        /// The product name (`NVIDIA H200`).
        product: String,
        /// The catalogue's GPU model it is, when the catalogue knows it.
        model: Option<String>,
        /// The catalogue size it was, when the user said so.
        size: Option<String>,
        /// The GPUs' capacity, in whole GPUs (a size's count × fraction; 1 for a lone GPU).
        gpus: f64,
    },
}

impl Machine {
    /// The catalogue size it was, when known.
    pub fn size(&self) -> Option<&str> {
        match self {
            Self::Cpu { size, .. } | Self::Gpu { size, .. } => size.as_deref(),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu { size: Some(size), .. } | Self::Gpu { size: Some(size), .. } => f.write_str(size),
            Self::Cpu { cpu, isa, vcpus, size: None } => write!(f, "{vcpus} vCPUs of {cpu} ({isa})"),
            Self::Gpu { product, size: None, .. } => f.write_str(product),
        }
    }
}

/// How a curve was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `inferd bench` against a server: HTTP, queueing and batching included.
    EndToEnd,
    /// `cargo bench` in process: compute only, latency modelled.
    Compute,
}

impl Method {
    /// The command that measures this way: `inferd bench`, `cargo bench`.
    pub fn tool(self) -> &'static str {
        match self {
            Self::EndToEnd => "inferd bench",
            Self::Compute => "cargo bench",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EndToEnd => "end to end",
            Self::Compute => "compute only",
        })
    }
}

/// One way to run the model on the machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// What was varied: `batch 64`, `concurrency 8`, `8 streams`.
    pub label: String,
    /// What `x` counts: `batch`, `streams`, `concurrency` or `rate` (requests per second offered).
    pub axis: &'static str,
    /// Batch size, streams, concurrency or rate, for charts.
    pub x: f64,
    /// Units per second (requests, or tokens for generation).
    pub throughput: f64,
    /// 95th-percentile latency of a request, seconds.
    pub latency_p95: Option<f64>,
    /// 95th-percentile time to first token, seconds.
    pub ttft_p95: Option<f64>,
    /// 95th-percentile inter-token latency, seconds.
    pub itl_p95: Option<f64>,
    /// Share of requests that failed.
    pub error_rate: f64,
}

/// What one machine did with one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// The model.
    pub model: String,
    /// What it does.
    pub kind: Kind,
    /// Where.
    pub machine: Machine,
    /// How.
    pub method: Method,
    /// Engine or precision other than the device's default (`tensor-f32`).
    pub variant: Option<String>,
    /// Which measurement: `cargo bench (quick) 2026-12-02` or `inferd bench sweep 2026-12-02`.
    pub source: String,
    /// The points.
    pub points: Vec<OperatingPoint>,
    /// What to keep in mind (`the load generator shared the CPUs`).
    pub notes: Vec<String>,
}

/// criterion results of one device and run by family, each with the index of its run.
type Families<'a> = BTreeMap<String, Vec<(&'a Measured, usize)>>;

/// The evidence for `workload`'s model in criterion's results: one curve per device and
/// engine variant.
pub fn from_criterion(results: &CriterionResults, catalogue: &Catalogue, workload: &Workload) -> Vec<Evidence> {
    // (device, variant, run) → family → results with their run: one curve never mixes runs,
    // which may have been on other machines.
    let mut by_device: BTreeMap<(String, Option<String>, usize), Families<'_>> = BTreeMap::new();
    for (measured, run) in &results.measured {
        if measured.id.model == workload.model && Kind::of_family(&measured.id.family).is_some() {
            by_device
                .entry((measured.id.device.clone(), measured.id.variant.clone(), *run))
                .or_default()
                .entry(measured.id.family.clone())
                .or_default()
                .push((measured, *run));
        }
    }
    let mut evidence = Vec::new();
    for ((device, variant, run), families) in by_device {
        let run = &results.runs[run];
        let machine = if device == "cpu" {
            Machine::Cpu {
                cpu: run.host.cpu.clone(),
                isa: run.host.isa,
                vcpus: u32::try_from(run.cpu_threads.max(1)).unwrap_or(u32::MAX),
                size: None,
            }
        } else {
            let product = run
                .host
                .gpus
                .iter()
                .find(|gpu| gpu.device == device)
                .and_then(|gpu| gpu.name.clone())
                .unwrap_or_else(|| format!("{device} (unnamed GPU)"));
            Machine::Gpu { model: catalogue.gpu_model_of(&product), product, size: None, gpus: 1.0 }
        };
        let kind = families.keys().find_map(|family| Kind::of_family(family)).unwrap_or(Kind::Tabular);
        let (points, mut notes) = match kind {
            Kind::Tabular | Kind::Embedding => batch_points(kind, &families, workload),
            Kind::Generation => generation_points(&families, workload),
        };
        if points.is_empty() {
            continue;
        }
        notes.push("compute only (criterion, in process): HTTP and queueing not included".to_string());
        let quick = if run.quick { " (quick mode)" } else { "" };
        evidence.push(Evidence {
            model: workload.model.clone(),
            kind,
            machine,
            method: Method::Compute,
            variant,
            source: format!("cargo bench{quick}, {}", run.started),
            points,
            notes,
        });
    }
    evidence
}

/// The family whose token length is nearest to `tokens` among those measured with `prefix`.
fn nearest_family<'a, T>(families: &'a BTreeMap<String, T>, prefix: &str, tokens: f64) -> Option<(&'a str, &'a T)> {
    families
        .iter()
        .filter(|(family, _)| family.starts_with(prefix))
        .filter_map(|(family, value)| family_tokens(family).map(|length| (family.as_str(), value, length)))
        .min_by(|a, b| (a.2 as f64 - tokens).abs().total_cmp(&(b.2 as f64 - tokens).abs()))
        .map(|(family, value, _)| (family, value))
}

fn batch_points(kind: Kind, families: &Families<'_>, workload: &Workload) -> (Vec<OperatingPoint>, Vec<String>) {
    let mut notes = Vec::new();
    let results = if kind == Kind::Embedding {
        let tokens = workload.prompt_tokens.unwrap_or(12.0);
        let Some((family, results)) = nearest_family(families, "embeddings-", tokens) else {
            return (Vec::new(), notes);
        };
        notes.push(format!(
            "texts of {} tokens ({family}), nearest to the workload's {}",
            family_tokens(family).unwrap_or(0),
            crate::workload::number(tokens)
        ));
        results
    } else {
        // Linear and tree models: one family each.
        match families.values().next() {
            Some(results) => results,
            None => return (Vec::new(), notes),
        }
    };
    let mut points: Vec<OperatingPoint> = results
        .iter()
        .filter_map(|(measured, _)| {
            let rows = measured.per_second()?;
            Some(OperatingPoint {
                label: format!("batch {}", measured.id.batch),
                axis: "batch",
                x: measured.id.batch as f64,
                throughput: rows / workload.rows_per_request,
                latency_p95: Some(2.0 * measured.seconds),
                ttft_p95: None,
                itl_p95: None,
                error_rate: 0.0,
            })
        })
        .collect();
    points.sort_by(|a, b| a.x.total_cmp(&b.x));
    notes.push("P95 latency modelled as twice the time of a batch".to_string());
    (points, notes)
}

fn generation_points(families: &Families<'_>, workload: &Workload) -> (Vec<OperatingPoint>, Vec<String>) {
    let mut notes = Vec::new();
    let Some((prompt, completion)) = workload.tokens_per_request() else {
        notes.push("no prompt_tokens and completion_tokens in the workload: generation cannot be modelled".into());
        return (Vec::new(), notes);
    };
    let Some((prefill_family, prefills)) = nearest_family(families, "prefill-", prompt) else {
        return (Vec::new(), notes);
    };
    let Some((decode_family, decodes)) = nearest_family(families, "decode-", prompt + completion / 2.0) else {
        return (Vec::new(), notes);
    };
    // One prompt at a time: the scheduler prefills each new request as it joins.
    let Some(prefill_rate) = prefills.iter().find(|(m, _)| m.id.batch == 1).and_then(|(m, _)| m.per_second()) else {
        return (Vec::new(), notes);
    };
    let prefill = prompt / prefill_rate;
    notes.push(format!(
        "modelled from {prefill_family} ({} tokens/s, one prompt) and {decode_family} steps for {} prompt + {} completion tokens",
        crate::workload::number(prefill_rate),
        crate::workload::number(prompt),
        crate::workload::number(completion)
    ));
    let mut points: Vec<OperatingPoint> = decodes
        .iter()
        .map(|(measured, _)| {
            let streams = measured.id.batch as f64;
            let step = measured.seconds;
            let cycle = completion * step + streams * prefill;
            let requests = streams / cycle;
            OperatingPoint {
                label: format!("{} streams", measured.id.batch),
                axis: "streams",
                x: streams,
                throughput: requests * (prompt + completion),
                latency_p95: Some(cycle),
                ttft_p95: Some(prefill + step),
                itl_p95: Some(step + (streams - 1.0) * prefill / completion),
                error_rate: 0.0,
            }
        })
        .collect();
    points.sort_by(|a, b| a.x.total_cmp(&b.x));
    (points, notes)
}

/// The evidence in a load test's report, when it is of `workload`'s model and says what the
/// server ran on (else `Err` with the reason, for the report's notes).
pub fn from_bench(report: &BenchReport, catalogue: &Catalogue, workload: &Workload) -> Result<Evidence, String> {
    let kind = Kind::of_api(report.api);
    let machine = match &report.measured_on {
        MeasuredOn::Host(host) => Machine::Cpu {
            cpu: host.cpu.clone(),
            isa: host.isa,
            vcpus: u32::try_from(host.vcpus.max(1)).unwrap_or(u32::MAX),
            size: None,
        },
        MeasuredOn::Gpu(product) => {
            Machine::Gpu { model: catalogue.gpu_model_of(product), product: product.clone(), size: None, gpus: 1.0 }
        }
        MeasuredOn::Size(name) => {
            let size = catalogue.sizes.get(name).ok_or_else(|| {
                format!("the load test of {} names size {name}, which the catalogue does not list", report.model)
            })?;
            match &size.gpu {
                Some(gpu) => Machine::Gpu {
                    product: gpu.model.clone(),
                    model: Some(gpu.model.clone()),
                    size: Some(name.clone()),
                    gpus: f64::from(gpu.count) * gpu.fraction,
                },
                None => {
                    Machine::Cpu { cpu: size.cpu.clone(), isa: size.isa, vcpus: size.vcpus, size: Some(name.clone()) }
                }
            }
        }
        MeasuredOn::Unknown => {
            return Err(format!(
                "the load test of {} against {} does not say what the server ran on: rerun it with --measured-on",
                report.model, report.url
            ));
        }
    };
    let mut notes = vec!["end to end (inferd bench over HTTP): queueing, batching and HTTP included".to_string()];
    if report.loopback {
        notes.push("the load generator ran on the same CPUs as the server, which lowers the figures".to_string());
    }
    if let Some(payload) = &report.payload
        && kind != Kind::Generation
        && (payload.rows as f64 - workload.rows_per_request).abs() > 0.5
    {
        notes.push(format!(
            "measured with {} rows per request, the workload sends {}",
            payload.rows,
            crate::workload::number(workload.rows_per_request)
        ));
    }
    let mut fell_behind = Vec::new();
    let mut no_prompt_tokens = false;
    let points: Vec<OperatingPoint> = report
        .points
        .iter()
        .filter(|point| point.summary.succeeded > 0)
        .filter(|point| {
            // An open loop that could not keep its schedule measured less load than it says.
            let behind = point.summary.schedule.as_ref().filter(|s| s.sent_rate < 0.95 * s.target_rate);
            if let Some(schedule) = behind {
                fell_behind.push(format!(
                    "{} (sent {}/s of {}/s)",
                    point.load,
                    crate::workload::number(schedule.sent_rate),
                    crate::workload::number(schedule.target_rate)
                ));
            }
            behind.is_none()
        })
        .map(|point| {
            let summary = &point.summary;
            let throughput = match kind {
                Kind::Generation => match (summary.prompt_tokens_mean, summary.output_tokens_mean) {
                    (Some(prompt), Some(output)) => summary.requests_per_s * (prompt + output),
                    // The server reported no prompt tokens: count the workload's, as its demand does.
                    (None, Some(output)) => {
                        no_prompt_tokens = true;
                        let prompt = workload.prompt_tokens.unwrap_or(0.0);
                        summary.requests_per_s * (prompt + output)
                    }
                    _ => 0.0,
                },
                _ => summary.requests_per_s,
            };
            let (axis, x) = match point.load {
                crate::load::Load::Closed { concurrency } => ("concurrency", concurrency as f64),
                crate::load::Load::Open { rate, .. } => ("rate", rate),
            };
            OperatingPoint {
                label: format!("{} ({})", point.load, point.profile),
                axis,
                x,
                throughput,
                latency_p95: summary.latency.map(|d| d.p95),
                ttft_p95: summary.ttft.map(|d| d.p95),
                itl_p95: summary.itl.map(|d| d.p95),
                error_rate: 1.0 - summary.succeeded as f64 / summary.requests.max(1) as f64,
            }
        })
        .filter(|point| point.throughput.is_finite() && point.throughput > 0.0)
        .collect();
    if !fell_behind.is_empty() {
        notes.push(format!(
            "left out, the load generator having fallen behind its schedule: {}",
            fell_behind.join(", ")
        ));
    }
    if no_prompt_tokens {
        notes.push(
            "the server reported no prompt tokens: throughput counts the workload's prompt tokens per request".into(),
        );
    }
    if kind == Kind::Generation {
        let measured = report
            .points
            .iter()
            .find_map(|point| Some((point.summary.prompt_tokens_mean?, point.summary.output_tokens_mean?)));
        if let (Some((prompt, output)), Some((want_prompt, want_output))) = (measured, workload.tokens_per_request()) {
            let off = |a: f64, b: f64| a / b > 2.0 || b / a > 2.0;
            if off(prompt, want_prompt) || off(output, want_output) {
                notes.push(format!(
                    "measured with {} prompt + {} completion tokens per request, the workload has {} + {}: rerun \
                     inferd bench with --input-words and --output-tokens near the workload's",
                    crate::workload::number(prompt),
                    crate::workload::number(output),
                    crate::workload::number(want_prompt),
                    crate::workload::number(want_output)
                ));
            }
        }
    }
    Ok(Evidence {
        model: report.model.clone(),
        kind,
        machine,
        method: Method::EndToEnd,
        variant: None,
        source: format!("inferd bench against {}, {}", report.url, report.started),
        points,
        notes,
    })
}
