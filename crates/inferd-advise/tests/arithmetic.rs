//! Known measurements in, and the advisor's arithmetic checked end to end: capacity within the
//! objective, replicas, $/h, $/1M, the TPM formula, a provisioned-throughput comparison, the
//! scaling to other sizes and GPUs, the verdict, and that a projected figure says so wherever it
//! appears (the verdict, the Markdown table, the HTML page).

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use inferd_advise::catalogue::Catalogue;
use inferd_advise::criterion::{self, Manifest, SuiteRun};
use inferd_advise::host::{Gpu, Host, Isa};
use inferd_advise::load::summary::{Distribution, Summary};
use inferd_advise::load::{Api, BenchReport, Load, MeasuredOn, Point, REPORT_FORMAT};
use inferd_advise::plan::{Decision, Fit};
use inferd_advise::workload::{Provisioned, Workload};
use inferd_advise::{Inputs, advise, report};

/// A catalogue with round figures: two CPU sizes and two GPU sizes.
const CATALOGUE: &str = r#"
region = "test"
currency = "USD"
spec_source = "test"
[sources.test]
what = "test figures"
url = "https://example.com/test"
date = "2026-12-01"
[gpus.T4]
fp32_tflops = 10.0
fp16_tflops = 50.0
memory_gib = 16.0
bandwidth_gb_s = 250.0
source = "test"
[gpus.A10]
fp32_tflops = 20.0
fp16_tflops = 100.0
memory_gib = 24.0
bandwidth_gb_s = 500.0
source = "test"
[gpus.H200]
fp32_tflops = 100.0
fp16_tflops = 1000.0
memory_gib = 141.0
bandwidth_gb_s = 5000.0
source = "test"
[sizes.CPU_2]
vcpus = 2
memory_gib = 8
cpu = "test AVX2"
isa = "avx2"
smt = true
payg = { usd = 0.10, source = "test" }
[sizes.CPU_8]
vcpus = 8
memory_gib = 32
cpu = "test AVX-512"
isa = "avx512"
smt = true
payg = { usd = 0.40, source = "test" }
[sizes.GPU_T4]
vcpus = 4
memory_gib = 28
cpu = "test"
isa = "avx2"
smt = false
gpu = { model = "T4", count = 1, fraction = 1.0 }
payg = { usd = 0.50, source = "test" }
[sizes.GPU_A10_SIXTH]
vcpus = 6
memory_gib = 55
cpu = "test"
isa = "avx2"
smt = true
gpu = { model = "A10", count = 1, fraction = 0.16666666666666666, memory_gib = 4.0 }
payg = { usd = 0.45, source = "test" }
"#;

fn host(isa: Isa, gpus: Vec<Gpu>) -> Host {
    Host { cpu: "Test CPU".into(), isa, cpu_extensions: vec![], vcpus: 2, memory_gib: 16.0, gpus }
}

fn distribution(p95: f64) -> Distribution {
    Distribution { mean: p95 / 2.0, p50: p95 / 2.0, p90: p95 * 0.9, p95, p99: p95 * 1.1, max: p95 * 1.2 }
}

/// A closed-loop point: `rps` successful requests per second at P95 `p95`.
fn point(concurrency: usize, rps: f64, p95: f64, ttft: Option<f64>, tpm: Option<f64>) -> Point {
    Point {
        profile: "concurrent".into(),
        load: Load::Closed { concurrency },
        summary: Summary {
            requests: 1000,
            succeeded: 1000,
            errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            duration: 1000.0 / rps,
            requests_per_s: rps,
            latency: Some(distribution(p95)),
            ttft: ttft.map(distribution),
            itl: ttft.map(|_| distribution(0.02)),
            output_tokens_per_s: tpm.map(|tpm| tpm / 60.0 * 0.6),
            tokens_per_minute: tpm,
            prompt_tokens_mean: tpm.map(|_| 100.0),
            output_tokens_mean: tpm.map(|_| 150.0),
            goodput: None,
            schedule: None,
        },
    }
}

fn bench(model: &str, api: Api, points: Vec<Point>) -> (String, BenchReport) {
    (
        format!("{model}.json"),
        BenchReport {
            format: REPORT_FORMAT,
            started: "2026-12-02T10:00:00Z".into(),
            url: "http://127.0.0.1:8080".into(),
            model: model.into(),
            api,
            loopback: true,
            measured_on: MeasuredOn::Host(host(Isa::Avx2, vec![])),
            client: host(Isa::Avx2, vec![]),
            payload: None,
            slo: None,
            points,
        },
    )
}

/// criterion results for an embedding model measured on an H200: batch 1 in 0.1 ms, batch 32
/// in 1 ms.
fn h200_criterion(folder: &Path) -> criterion::CriterionResults {
    for (batch, ns) in [(1u64, 100_000.0), (32, 1_000_000.0)] {
        let new = folder.join(format!("embeddings-short_m/cuda_0/{batch}/new"));
        std::fs::create_dir_all(&new).unwrap();
        let id = format!("embeddings-short/embedder/cuda:0/{batch}");
        std::fs::write(
            new.join("benchmark.json"),
            serde_json::json!({"full_id": id, "throughput": {"Elements": batch}}).to_string(),
        )
        .unwrap();
        std::fs::write(new.join("estimates.json"), serde_json::json!({"mean": {"point_estimate": ns}}).to_string())
            .unwrap();
    }
    let mut manifest = Manifest::load_or_empty(folder);
    let run = SuiteRun {
        started: "2026-12-02T09:00:00Z".into(),
        quick: false,
        host: host(Isa::Avx512, vec![Gpu { device: "cuda:0".into(), name: Some("NVIDIA H200".into()) }]),
        cpu_threads: 2,
        cpu_kernels: Some("avx512".into()),
        gpu_skipped: None,
    };
    manifest.record(run, ["embeddings-short/embedder/cuda:0/1".into(), "embeddings-short/embedder/cuda:0/32".into()]);
    manifest.save(folder).unwrap();
    criterion::read(folder).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn replicas_costs_and_verdicts_from_known_measurements() {
    let catalogue = Catalogue::merged(CATALOGUE, None).unwrap();
    let folder = tempfile::tempdir().unwrap();

    // Tabular, measured end to end on 2 AVX2 vCPUs: 4,000 req/s at P95 8 ms is the most within
    // 10 ms.
    let mut tabular = Workload::new("trees");
    tabular.p95 = Some(Duration::from_millis(10));
    tabular.requests_per_second = Some(10_000.0);
    tabular.utilisation = 0.5;
    let trees = bench(
        "trees",
        Api::V2,
        vec![
            point(1, 1000.0, 0.002, None, None),
            point(8, 4000.0, 0.008, None, None),
            point(32, 5000.0, 0.030, None, None),
        ],
    );

    // Embeddings, measured by cargo bench on an H200 only.
    let mut embedding = Workload::new("embedder");
    embedding.p95 = Some(Duration::from_millis(5));
    embedding.requests_per_second = Some(3000.0);

    // Generation: 120 RPM × (100 + 150) tokens = 30,000 TPM = 500 tokens/s; measured 60,000 TPM
    // at concurrency 4 within the objective, with a provisioned offer to compare.
    let mut chat = Workload::new("llm");
    chat.p95 = Some(Duration::from_secs(2));
    chat.ttft_p95 = Some(Duration::from_millis(500));
    chat.requests_per_minute = Some(120.0);
    chat.prompt_tokens = Some(100.0);
    chat.completion_tokens = Some(150.0);
    chat.provisioned = Some(Provisioned {
        name: "a provisioned endpoint".into(),
        tokens_per_minute_per_unit: 10_000.0,
        usd_per_unit_hour: 1.0,
        minimum_units: 1,
    });
    let llm = bench(
        "llm",
        Api::Chat,
        vec![
            point(1, 2.0, 0.9, Some(0.1), Some(30_000.0)),
            point(4, 4.0, 1.5, Some(0.3), Some(60_000.0)),
            point(16, 5.0, 4.0, Some(1.5), Some(75_000.0)),
        ],
    );

    let inputs = Inputs {
        criterion: Some(h200_criterion(folder.path())),
        benches: vec![trees, llm],
        catalogue,
        workloads: vec![tabular, embedding, chat],
        generated: "2026-12-02T12:00:00Z".into(),
    };
    let report = advise(&inputs).unwrap();
    let [tabular, embedding, chat] = &report.assessments[..] else { panic!("three assessments") };
    let size = |assessment: &inferd_advise::plan::Assessment, name: &str| {
        assessment.sizes.iter().find(|size| size.size == name).unwrap().clone()
    };

    // Tabular: CPU_2 carries 4,000 req/s → ⌈10,000 / (4,000 × 0.5)⌉ = 5 replicas, $0.50/h,
    // $0.50 / (10,000 × 3600) × 10⁶ per million.
    let cpu2 = size(tabular, "CPU_2");
    assert_eq!(cpu2.fit, Fit::Meets);
    assert_eq!(cpu2.capacity, Some(4000.0));
    assert_eq!(cpu2.replicas, Some(5));
    assert!(close(cpu2.usd_per_hour.unwrap(), 0.5));
    assert!(close(cpu2.usd_per_million.unwrap(), 0.5 / (10_000.0 * 3600.0) * 1e6));
    // CPU_8: projected × 8/2 vCPUs = 16,000 req/s → 2 replicas, $0.80/h; flagged: AVX2 → AVX-512.
    let cpu8 = size(tabular, "CPU_8");
    assert_eq!(cpu8.capacity, Some(16_000.0));
    assert_eq!(cpu8.replicas, Some(2));
    assert!(close(cpu8.usd_per_hour.unwrap(), 0.8));
    assert!(cpu8.estimate.as_ref().unwrap().scaling.contains("unreliable"), "{:?}", cpu8.estimate);
    assert_eq!(size(tabular, "GPU_T4").fit, Fit::NoEstimate);
    assert_eq!(tabular.verdict.decision, Decision::CpuIsEnough);
    assert_eq!(tabular.sizes[tabular.verdict.best_cpu.unwrap()].size, "CPU_2");
    let text = &tabular.verdict.text;
    assert!(
        text.starts_with("CPU is enough: CPU_2 (2 vCPUs, AVX2) meets P95 ≤ 10.0 ms at 10,000 requests/s"),
        "{text}"
    );
    assert!(text.contains("with 5 replicas for $0.0139 per million requests ($0.50/h)"), "{text}");
    assert!(text.contains("Projected from 2 vCPUs of Test CPU (AVX2) measured by inferd bench"), "{text}");
    assert!(text.contains("GPU sizes were not assessed"), "{text}");

    // Embeddings on GPUs projected from the H200: T4 by min(50/1000, 250/5000) = 0.05: batch 1
    // gives 10,000 × 0.05 = 500/s at 0.2 ms ÷ 0.05 = 4 ms (within 5 ms); batch 32 gives 1,600/s at
    // 40 ms (too slow). ⌈3000 / (500 × 0.7)⌉ = 9 replicas, $4.50/h.
    let t4 = size(embedding, "GPU_T4");
    assert_eq!(t4.fit, Fit::Meets);
    assert!(close(t4.capacity.unwrap(), 500.0), "{:?}", t4.capacity);
    assert_eq!(t4.replicas, Some(9));
    assert!(close(t4.usd_per_hour.unwrap(), 4.5));
    // A sixth of an A10: min(100/1000, 500/5000) = 0.1 × 1/6 → 166.7/s at 2 ms; ⌈3000 / 116.7⌉ = 26.
    let sixth = size(embedding, "GPU_A10_SIXTH");
    assert!(close(sixth.capacity.unwrap(), 10_000.0 * 0.1 / 6.0), "{:?}", sixth.capacity);
    assert_eq!(sixth.replicas, Some(26));
    assert!(close(sixth.usd_per_hour.unwrap(), 26.0 * 0.45));
    assert!(sixth.estimate.as_ref().unwrap().notes.iter().any(|note| note.contains("partial GPU")));
    assert_eq!(size(embedding, "CPU_2").fit, Fit::NoEstimate);
    assert_eq!(embedding.verdict.decision, Decision::GpuNeeded);
    let text = &embedding.verdict.text;
    assert!(text.starts_with("GPU needed as far as measured: CPU sizes were not assessed"), "{text}");
    assert!(text.contains("GPU_T4 (T4) meets P95 ≤ 5.00 ms at 3,000 requests/s with 9 replicas"), "{text}");
    assert!(
        text.contains("Projected from NVIDIA H200 measured by cargo bench × 0.05 = min(FP16 TFLOPS 50/1,000"),
        "{text}"
    );

    // Generation: 1,000 tokens/s per replica within the objective (concurrency 4); 500 tokens/s
    // needed → 1 replica of CPU_2: $0.10/h, $0.10 / (500 × 3600) × 10⁶ per million tokens.
    assert!(close(chat.demand.per_second, 500.0));
    assert_eq!(chat.demand.formula, "TPM = 120 RPM × (100 + 150 tokens) × (1 + 0) = 30,000 tokens per minute");
    let cpu2 = size(chat, "CPU_2");
    assert!(close(cpu2.capacity.unwrap(), 1000.0));
    assert_eq!(cpu2.replicas, Some(1));
    assert!(close(cpu2.usd_per_million.unwrap(), 0.1 / (500.0 * 3600.0) * 1e6));
    // The offer: ⌈30,000 / 10,000⌉ = 3 units, $3/h.
    let offer = chat.provisioned.as_ref().unwrap();
    assert_eq!(offer.units, 3);
    assert!(close(offer.usd_per_hour, 3.0));
    assert!(close(offer.usd_per_million, 3.0 / (500.0 * 3600.0) * 1e6));

    // A projected figure says so wherever it appears.
    let markdown = report::markdown(&report);
    let html = report::html(&report).unwrap();
    for row in markdown.lines().filter(|line| line.starts_with("| CPU_8") || line.starts_with("| GPU_T4")) {
        if !row.contains("not measured") {
            assert!(row.contains("projected"), "{row}");
        }
    }
    assert!(markdown.contains("Projected from NVIDIA H200"));
    // minijinja escapes "/" in HTML.
    assert!(html.contains("<td>projected × 0.05 (T4 &#x2f; H200) [m1]</td>"), "the HTML table labels the T4 row");
    assert!(html.contains("<svg"), "the HTML page has its charts inline");
    assert!(!html.contains("<script"), "the page needs no script");
    assert!(markdown.contains("3 units for $3.00/h"), "the provisioned comparison is in the report");
}

#[test]
fn a_published_figure_without_latency_is_never_said_to_meet() {
    let catalogue = Catalogue::merged(
        CATALOGUE,
        Some((
            "published.toml",
            r#"
            [[published]]
            gpu = "T4"
            model = "embedder"
            unit = "requests"
            throughput = 2000.0
            source = "test"
            note = "someone's figure"
            "#,
        )),
    )
    .unwrap();
    let mut embedding = Workload::new("embedder");
    embedding.p95 = Some(Duration::from_millis(5));
    embedding.requests_per_second = Some(300.0);
    let cpu = bench("embedder", Api::Embeddings, vec![point(8, 100.0, 0.050, None, None)]);
    let report = advise(&Inputs {
        criterion: None,
        benches: vec![cpu],
        catalogue,
        workloads: vec![embedding],
        generated: "2026-12-02T12:00:00Z".into(),
    })
    .unwrap();
    let assessment = &report.assessments[0];
    let t4 = assessment.sizes.iter().find(|size| size.size == "GPU_T4").unwrap();
    assert_eq!(t4.fit, Fit::ThroughputOnly);
    assert_eq!(t4.capacity, Some(2000.0));
    assert_eq!(t4.estimate.as_ref().unwrap().basis, inferd_advise::capacity::Basis::Published);
    // The A10 sixth is projected from the T4's published figure: min(100/50, 500/250) = 2 × 1/6.
    let sixth = assessment.sizes.iter().find(|size| size.size == "GPU_A10_SIXTH").unwrap();
    assert!(close(sixth.capacity.unwrap(), 2000.0 * 2.0 / 6.0));
    assert_eq!(sixth.estimate.as_ref().unwrap().basis, inferd_advise::capacity::Basis::Projected);
    // The CPU measured 50 ms, above the 5 ms objective: nothing meets.
    assert_eq!(assessment.verdict.decision, Decision::NothingMeets);
    assert!(
        assessment.verdict.text.contains("published throughput figures but no latency"),
        "{}",
        assessment.verdict.text
    );
}

#[test]
fn a_model_nothing_measured_is_a_clear_error() {
    let mut workload = Workload::new("unknown-model");
    workload.p95 = Some(Duration::from_millis(5));
    workload.requests_per_second = Some(1.0);
    let err = advise(&Inputs {
        criterion: None,
        benches: vec![bench("trees", Api::V2, vec![point(1, 10.0, 0.001, None, None)])],
        catalogue: Catalogue::merged(CATALOGUE, None).unwrap(),
        workloads: vec![workload],
        generated: String::new(),
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "nothing measured model 'unknown-model': the measurements cover trees");
}

#[test]
fn points_that_cannot_be_trusted_are_left_out_and_said_so() {
    let mut workload = Workload::new("trees");
    workload.p95 = Some(Duration::from_millis(100));
    workload.requests_per_second = Some(100.0);
    // An open loop asked for 20,000/s whose generator managed 12,000/s: it is left out, though its
    // figures would meet the objective.
    let mut behind = point(1, 12_000.0, 0.050, None, None);
    behind.load = Load::Open { rate: 20_000.0, poisson: false };
    behind.summary.schedule = Some(inferd_advise::load::summary::Schedule {
        target_rate: 20_000.0,
        sent_rate: 12_000.0,
        lag: distribution(1.5),
        waited_for_slot: 0,
    });
    // A point with 1% errors does not count either.
    let mut failing = point(8, 9_000.0, 0.010, None, None);
    failing.summary.succeeded = 990;
    let report = advise(&Inputs {
        criterion: None,
        benches: vec![bench("trees", Api::V2, vec![point(1, 1_000.0, 0.002, None, None), behind, failing])],
        catalogue: Catalogue::merged(CATALOGUE, None).unwrap(),
        workloads: vec![workload.clone()],
        generated: String::new(),
    })
    .unwrap();
    let assessment = &report.assessments[0];
    let evidence = &assessment.evidence[0];
    assert_eq!(evidence.points.len(), 2, "{:?}", evidence.points);
    assert!(
        evidence.notes.iter().any(|note| note.contains("fallen behind") && note.contains("sent 12,000/s of 20,000/s"))
    );
    let cpu2 = assessment.sizes.iter().find(|size| size.size == "CPU_2").unwrap();
    assert_eq!(cpu2.capacity, Some(1000.0), "only the synchronous point counts");

    // A provisioned offer must be in tokens and have a positive capacity.
    let mut offer = workload;
    offer.provisioned = Some(Provisioned {
        name: "x".into(),
        tokens_per_minute_per_unit: 1000.0,
        usd_per_unit_hour: 1.0,
        minimum_units: 1,
    });
    assert!(offer.validate().unwrap_err().to_string().contains("generation workloads only"));
    offer.prompt_tokens = Some(10.0);
    offer.completion_tokens = Some(10.0);
    offer.validate().unwrap();
    offer.provisioned.as_mut().unwrap().tokens_per_minute_per_unit = 0.0;
    assert!(offer.validate().is_err());
}
