//! Prometheus metrics: one registry per server, with handles that the batcher and the protocol
//! adapters update. Names follow `inferd_*`, seconds for durations, `_total` for counters.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for end-to-end request latency, in seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets for queue wait and compute time, in seconds: finer at the low end, where a batcher's
/// `max_queue_delay` lives.
const STAGE_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets for batch sizes, in items (rows or sequences).
const BATCH_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0];

/// The server's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    queue_duration: HistogramVec,
    compute_duration: HistogramVec,
    batch_size: HistogramVec,
    queue_depth: IntGaugeVec,
    model_ready: IntGaugeVec,
}

/// The handles one model's batcher updates, with the model label already applied.
#[derive(Clone)]
pub struct BatchMetrics {
    pub(crate) queue_duration: Histogram,
    pub(crate) compute_duration: Histogram,
    pub(crate) batch_size: Histogram,
    pub(crate) queue_depth: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the metric families and registers them in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("inferd_requests_total", "Requests answered, by model, endpoint and HTTP status."),
            &["model", "endpoint", "status"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "inferd_request_duration_seconds",
                "Time from receiving a request to sending its response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "endpoint", "status"],
        );
        let queue_duration = HistogramVec::new(
            HistogramOpts::new(
                "inferd_queue_duration_seconds",
                "Time a request waited in its model's queue before its batch started.",
            )
            .buckets(STAGE_BUCKETS.to_vec()),
            &["model"],
        );
        let compute_duration = HistogramVec::new(
            HistogramOpts::new("inferd_compute_duration_seconds", "Time to run one batch through the model.")
                .buckets(STAGE_BUCKETS.to_vec()),
            &["model"],
        );
        let batch_size = HistogramVec::new(
            HistogramOpts::new("inferd_batch_size", "Items (rows or sequences) per batch run.")
                .buckets(BATCH_BUCKETS.to_vec()),
            &["model"],
        );
        let queue_depth =
            IntGaugeVec::new(Opts::new("inferd_queue_depth", "Requests waiting in the model's queue."), &["model"]);
        let model_ready = IntGaugeVec::new(
            Opts::new("inferd_model_ready", "1 when the model is loaded and serving, else 0."),
            &["model"],
        );
        // The options above are static and valid, and each name is registered once into a fresh
        // registry, so construction and registration cannot fail.
        let metrics = Self {
            registry,
            requests: requests.expect("valid metric"),
            request_duration: request_duration.expect("valid metric"),
            queue_duration: queue_duration.expect("valid metric"),
            compute_duration: compute_duration.expect("valid metric"),
            batch_size: batch_size.expect("valid metric"),
            queue_depth: queue_depth.expect("valid metric"),
            model_ready: model_ready.expect("valid metric"),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 7] = [
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.queue_duration.clone()),
            Box::new(metrics.compute_duration.clone()),
            Box::new(metrics.batch_size.clone()),
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.model_ready.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector).expect("metric names are unique");
        }
        metrics
    }

    /// Records one answered request. `model` should be empty for requests that named no
    /// configured model, so that arbitrary names cannot grow the label set.
    pub fn observe_request(&self, model: &str, endpoint: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [model, endpoint, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.request_duration.with_label_values(&labels).observe(elapsed.as_secs_f64());
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
        }
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which we never build.
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%err, "failed to encode metrics");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl BatchMetrics {
    pub(crate) fn observe_batch(&self, items: usize, compute: Duration) {
        self.batch_size.observe(items as f64);
        self.compute_duration.observe(compute.as_secs_f64());
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
    }
}
