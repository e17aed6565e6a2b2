//! Prometheus metrics: one registry per server, with handles that the batcher and the protocol
//! adapters update. Names follow `inferd_*`, seconds for durations, `_total` for counters.

mod gpu;
mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use self::gpu::GpuMetrics;
use self::window::Window;

/// Buckets for end-to-end request latency, in seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets for queue wait, compute time and the other request stages, in seconds: finer at the
/// low end, where a batcher's `max_queue_delay` and the parsing of small requests live.
const STAGE_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets for batch sizes, in items (rows or sequences).
const BATCH_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0];

/// Why a request was refused, as the `reason` label of `inferd_rejected_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No credentials, wrong credentials, or credentials not allowed this model (401, 403).
    Auth,
    /// The caller's requests or tokens per minute are spent (429).
    Quota,
    /// A model's queue would have kept the request longer than its `max_queue_time` (429).
    QueueTime,
    /// A model's queue is full (429).
    QueueFull,
    /// The server is at `max_concurrent_requests` (503).
    Concurrency,
    /// The model is not ready, or the server is draining (503).
    Unavailable,
    /// The request itself is wrong (400, 404, 413, ...).
    Invalid,
    /// The request ran past its deadline (504).
    Timeout,
}

impl RejectReason {
    /// Every reason, so that each series exists (at 0) before its first refusal: alerts and
    /// dashboards then read 0, not "no data".
    pub const ALL: [RejectReason; 8] = [
        Self::Auth,
        Self::Quota,
        Self::QueueTime,
        Self::QueueFull,
        Self::Concurrency,
        Self::Unavailable,
        Self::Invalid,
        Self::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Quota => "quota",
            Self::QueueTime => "queue_time",
            Self::QueueFull => "queue_full",
            Self::Concurrency => "concurrency",
            Self::Unavailable => "unavailable",
            Self::Invalid => "invalid",
            Self::Timeout => "timeout",
        }
    }
}

/// The server's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    stage_duration: HistogramVec,
    rejected: IntCounterVec,
    tokens: IntCounterVec,
    in_flight: IntGauge,
    queue_duration: HistogramVec,
    compute_duration: HistogramVec,
    batch_size: HistogramVec,
    queue_depth: IntGaugeVec,
    running: IntGaugeVec,
    admission_limit: IntGaugeVec,
    model_ready: IntGaugeVec,
    window_latency: GaugeVec,
    window_requests: GaugeVec,
    window_tokens: GaugeVec,
    window_busy: GaugeVec,
    windows: Windows,
    gpu: Option<GpuMetrics>,
}

/// An inference request counted in `inferd_requests_in_flight` while this lives.
pub struct InFlightRequest(IntGauge);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The handles one model's batcher updates, with the model label already applied.
#[derive(Clone)]
pub struct BatchMetrics {
    pub(crate) queue_duration: Histogram,
    pub(crate) compute_duration: Histogram,
    pub(crate) batch_size: Histogram,
    pub(crate) queue_depth: IntGauge,
    pub(crate) running: IntGauge,
    pub(crate) admission_limit: IntGauge,
    windows: Windows,
    model: String,
}

/// Every model's sliding window, shared by the server's metrics and the batchers.
#[derive(Clone)]
struct Windows {
    started: Instant,
    by_model: Arc<Mutex<HashMap<String, Window>>>,
}

impl Windows {
    fn record(&self, model: &str, record: impl FnOnce(&mut Window)) {
        let mut windows = self.by_model.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up before inserting: `entry` would allocate the name for every request.
        match windows.get_mut(model) {
            Some(window) => record(window),
            None => record(windows.entry(model.to_string()).or_insert_with(|| Window::new(self.started))),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn int_gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).expect("valid metric")
}

impl Metrics {
    /// Creates the metric families and registers them in a fresh registry, with the process's
    /// CPU and memory and, where NVML is available, the GPUs'.
    // The options below are static and valid, and each name is registered once into a fresh
    // registry, so construction and registration cannot fail.
    pub fn new() -> Self {
        let registry = Registry::new();
        let metrics = Self {
            requests: counter(
                "inferd_requests_total",
                "Requests answered, by model, endpoint and HTTP status.",
                &["model", "endpoint", "status"],
            ),
            request_duration: histogram(
                "inferd_request_duration_seconds",
                "Time from receiving a request to sending its response head.",
                LATENCY_BUCKETS,
                &["model", "endpoint", "status"],
            ),
            stage_duration: histogram(
                "inferd_request_stage_duration_seconds",
                "Time each inference request spent in each stage: parse, tokenize, queue, compute, serialize.",
                STAGE_BUCKETS,
                &["model", "stage"],
            ),
            rejected: counter(
                "inferd_rejected_requests_total",
                "Requests refused, by reason: auth, quota, queue_time, queue_full, concurrency, unavailable, invalid, timeout.",
                &["reason"],
            ),
            tokens: counter(
                "inferd_tokens_total",
                "Tokens processed, by model and kind (prompt, completion).",
                &["model", "kind"],
            ),
            in_flight: IntGauge::new("inferd_requests_in_flight", "Inference requests being answered now.")
                .expect("valid metric"),
            queue_duration: histogram(
                "inferd_queue_duration_seconds",
                "Time a request waited in its model's queue before its batch started.",
                STAGE_BUCKETS,
                &["model"],
            ),
            compute_duration: histogram(
                "inferd_compute_duration_seconds",
                "Time to run one batch through the model.",
                STAGE_BUCKETS,
                &["model"],
            ),
            batch_size: histogram(
                "inferd_batch_size",
                "Items (rows or sequences) per batch run.",
                BATCH_BUCKETS,
                &["model"],
            ),
            queue_depth: int_gauge("inferd_queue_depth", "Requests waiting in the model's queue.", &["model"]),
            running: int_gauge(
                "inferd_running_sequences",
                "Items (rows or sequences) in the batch the model is computing now.",
                &["model"],
            ),
            admission_limit: int_gauge(
                "inferd_admission_limit",
                "What the model's queue admits now within its max_queue_time, at its measured speed: \
                 items (rows or texts) for batched models, waiting requests for generation.",
                &["model"],
            ),
            model_ready: int_gauge("inferd_model_ready", "1 when the model is loaded and serving, else 0.", &["model"]),
            window_latency: gauge(
                "inferd_request_latency_window_seconds",
                "Latency quantiles (0.5, 0.95, 0.99) of successful requests over the last 60 s, within 10%.",
                &["model", "quantile"],
            ),
            window_requests: gauge("inferd_requests_per_minute", "Successful requests over the last 60 s.", &["model"]),
            window_tokens: gauge(
                "inferd_tokens_per_minute",
                "Tokens (prompt and completion) over the last 60 s.",
                &["model"],
            ),
            window_busy: gauge(
                "inferd_model_busy_ratio",
                "Fraction of the last 60 s the model spent computing batches: 1 means saturated; \
                 1 minus this is the headroom an autoscaler can target.",
                &["model"],
            ),
            windows: Windows { started: Instant::now(), by_model: Arc::default() },
            gpu: GpuMetrics::open(&registry),
            registry,
        };
        let cpu_kernels = int_gauge(
            "inferd_cpu_kernels_info",
            "1, labelled with the vector instruction level the CPU kernels use (avx2, avx512, portable).",
            &["level"],
        );
        cpu_kernels.with_label_values(&[&crate::cpu_level().to_string()]).set(1);
        for reason in RejectReason::ALL {
            metrics.rejected.with_label_values(&[reason.as_str()]);
        }
        let collectors: [Box<dyn prometheus::core::Collector>; 19] = [
            Box::new(cpu_kernels),
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.stage_duration.clone()),
            Box::new(metrics.rejected.clone()),
            Box::new(metrics.tokens.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.queue_duration.clone()),
            Box::new(metrics.compute_duration.clone()),
            Box::new(metrics.batch_size.clone()),
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.running.clone()),
            Box::new(metrics.admission_limit.clone()),
            Box::new(metrics.model_ready.clone()),
            Box::new(metrics.window_latency.clone()),
            Box::new(metrics.window_requests.clone()),
            Box::new(metrics.window_tokens.clone()),
            Box::new(metrics.window_busy.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        metrics
    }

    /// Records one answered request. `model` should be empty for requests that named no
    /// configured model, so that arbitrary names cannot grow the label set.
    pub fn observe_request(&self, model: &str, endpoint: &str, status: u16, elapsed: Duration) {
        let mut code = itoa::Buffer::new();
        let labels = [model, endpoint, code.format(status)];
        self.requests.with_label_values(&labels).inc();
        self.request_duration.with_label_values(&labels).observe(elapsed.as_secs_f64());
        if !model.is_empty() && (200..300).contains(&status) {
            self.windows.record(model, |window| window.record_request(Instant::now(), elapsed));
        }
    }

    /// Records how long one request of `model` spent in `stage`.
    pub fn observe_stage(&self, model: &str, stage: &str, elapsed: Duration) {
        self.stage_duration.with_label_values(&[model, stage]).observe(elapsed.as_secs_f64());
    }

    /// Counts a refused request.
    pub fn observe_rejection(&self, reason: RejectReason) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts tokens a request of `model` processed.
    pub fn observe_tokens(&self, model: &str, prompt: u64, completion: u64) {
        for (kind, count) in [("prompt", prompt), ("completion", completion)] {
            if count > 0 {
                self.tokens.with_label_values(&[model, kind]).inc_by(count);
            }
        }
        if !model.is_empty() {
            self.windows.record(model, |window| window.record_tokens(Instant::now(), prompt + completion));
        }
    }

    /// Counts an inference request in `inferd_requests_in_flight` until the returned guard is
    /// dropped, however the request ends.
    pub fn enter_request(&self) -> InFlightRequest {
        self.in_flight.inc();
        InFlightRequest(self.in_flight.clone())
    }

    /// Records whether a model is ready.
    pub fn set_model_ready(&self, model: &str, ready: bool) {
        self.model_ready.with_label_values(&[model]).set(i64::from(ready));
    }

    /// The handles for one model's batcher.
    pub fn batcher(&self, model: &str) -> BatchMetrics {
        BatchMetrics {
            queue_duration: self.queue_duration.with_label_values(&[model]),
            compute_duration: self.compute_duration.with_label_values(&[model]),
            batch_size: self.batch_size.with_label_values(&[model]),
            queue_depth: self.queue_depth.with_label_values(&[model]),
            running: self.running.with_label_values(&[model]),
            admission_limit: self.admission_limit.with_label_values(&[model]),
            windows: self.windows.clone(),
            model: model.to_string(),
        }
    }

    /// Renders every metric in the Prometheus text exposition format, after bringing the
    /// sliding-window and GPU gauges up to date.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which we never build.
        if let Err(err) = TextEncoder::new().encode(&self.gather(), &mut buffer) {
            tracing::error!(%err, "failed to encode metrics");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Every metric family with its current values, as a scrape sees them (for exporters that
    /// push, such as OTLP).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.refresh_windows();
        if let Some(gpu) = &self.gpu {
            gpu.refresh();
        }
        self.registry.gather()
    }

    fn refresh_windows(&self) {
        let now = Instant::now();
        let windows = self.windows.by_model.lock().unwrap_or_else(PoisonError::into_inner);
        for (model, window) in windows.iter() {
            let summary = window.summary(now);
            for (quantile, value) in ["0.5", "0.95", "0.99"].into_iter().zip(summary.quantiles) {
                self.window_latency.with_label_values(&[model.as_str(), quantile]).set(value);
            }
            self.window_requests.with_label_values(&[model]).set(summary.requests_per_minute);
            self.window_tokens.with_label_values(&[model]).set(summary.tokens_per_minute);
            self.window_busy.with_label_values(&[model]).set(summary.busy_ratio);
        }
    }
}

impl BatchMetrics {
    /// A batch of `items` starts computing (or, for a generation scheduler, `items`
    /// sequences are in its running batch).
    pub(crate) fn batch_started(&self, items: usize) {
        self.running.set(items as i64);
    }

    pub(crate) fn observe_batch(&self, items: usize, compute: Duration) {
        self.running.set(0);
        self.observe_step(items, compute);
    }

    /// A step of `items` sequences took `compute`; the running gauge is the scheduler's to set.
    pub(crate) fn observe_step(&self, items: usize, compute: Duration) {
        self.batch_size.observe(items as f64);
        self.compute_duration.observe(compute.as_secs_f64());
        self.windows.record(&self.model, |window| window.record_busy(Instant::now(), compute));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_observations_in_text_format() {
        let metrics = Metrics::new();
        metrics.observe_request("iris", "/v2/models/{name}/infer", 200, Duration::from_millis(3));
        metrics.batcher("iris").observe_batch(8, Duration::from_micros(250));
        metrics.set_model_ready("iris", true);
        let text = metrics.render();
        assert!(
            text.contains(r#"inferd_requests_total{endpoint="/v2/models/{name}/infer",model="iris",status="200"} 1"#)
        );
        assert!(text.contains(r#"inferd_batch_size_sum{model="iris"} 8"#));
        assert!(text.contains(r#"inferd_model_ready{model="iris"} 1"#));
        assert!(text.contains(r#"inferd_requests_per_minute{model="iris"}"#));
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
