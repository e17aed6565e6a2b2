//! OTLP metrics: every metric family `/metrics` shows, pushed to the collector's `/v1/metrics`
//! every `metrics_interval` (and once more at shutdown) as OTLP protobuf, with cumulative
//! temporality: counters become monotonic sums, gauges gauges, histograms explicit-bucket
//! histograms with the same bounds. Names and labels are the Prometheus ones, so that the same
//! queries work wherever the collector sends them.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use inferd_core::Metrics;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus::proto::{MetricFamily, MetricType};
use prost::Message;

use crate::outbound::Outbound;

/// Where and how metrics are pushed.
pub(super) struct MetricsPush {
    pub(super) url: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) interval: Duration,
    pub(super) service_name: String,
    pub(super) outbound: Outbound,
    pub(super) metrics: Arc<Metrics>,
}

impl MetricsPush {
    /// Pushes every interval until `stop` sends or closes, then pushes once more.
    pub(super) fn run(self, stop: Receiver<()>) {
        let started = unix_nanos(SystemTime::now());
        let mut failing = false;
        loop {
            let last = match stop.recv_timeout(self.interval) {
                Err(RecvTimeoutError::Timeout) => false,
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            };
            let request = export_request(&self.metrics.gather(), &self.service_name, started, SystemTime::now());
            match self.outbound.post(&self.url, "application/x-protobuf", &self.headers, &request.encode_to_vec()) {
                Ok(_) if failing => {
                    tracing::info!(url = %self.url, "OTLP metrics export works again");
                    failing = false;
                }
                Ok(_) => {}
                // One warning per outage, not one per interval.
                Err(err) if !failing => {
                    tracing::warn!(%err, "OTLP metrics export failed; retrying every interval");
                    failing = true;
                }
                Err(err) => tracing::debug!(%err, "OTLP metrics export failed again"),
            }
            if last {
                return;
            }
        }
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
        ..KeyValue::default()
    }
}

/// The OTLP request carrying `families` as they stand at `now`; `started` is when the counters
/// started counting (the process start).
pub(super) fn export_request(
    families: &[MetricFamily],
    service_name: &str,
    started: u64,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let now = unix_nanos(now);
    let metrics = families.iter().filter_map(|family| convert(family, started, now)).collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![text("service.name", service_name)], ..Resource::default() }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "inferd".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

fn convert(family: &MetricFamily, started: u64, now: u64) -> Option<Metric> {
    let attributes = |sample: &prometheus::proto::Metric| {
        sample.get_label().iter().map(|label| text(label.name(), label.value())).collect()
    };
    let number = |sample: &prometheus::proto::Metric, value: f64| NumberDataPoint {
        attributes: attributes(sample),
        start_time_unix_nano: started,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    };
    let samples = family.get_metric();
    let data = match family.get_field_type() {
        MetricType::COUNTER => metric::Data::Sum(Sum {
            data_points: samples.iter().map(|sample| number(sample, sample.get_counter().get_value())).collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::GAUGE => metric::Data::Gauge(Gauge {
            data_points: samples.iter().map(|sample| number(sample, sample.get_gauge().get_value())).collect(),
        }),
        MetricType::HISTOGRAM => metric::Data::Histogram(Histogram {
            data_points: samples
                .iter()
                .map(|sample| {
                    let histogram = sample.get_histogram();
                    // Prometheus buckets are cumulative and end before +Inf; OTLP's count each
                    // bucket alone and end with the overflow bucket.
                    let mut bounds = Vec::new();
                    let mut counts = Vec::new();
                    let mut below = 0;
                    for bucket in histogram.get_bucket() {
                        if bucket.upper_bound().is_infinite() {
                            continue;
                        }
                        bounds.push(bucket.upper_bound());
                        counts.push(bucket.cumulative_count().saturating_sub(below));
                        below = bucket.cumulative_count();
                    }
                    counts.push(histogram.get_sample_count().saturating_sub(below));
                    HistogramDataPoint {
                        attributes: attributes(sample),
                        start_time_unix_nano: started,
                        time_unix_nano: now,
                        count: histogram.get_sample_count(),
                        sum: Some(histogram.get_sample_sum()),
                        bucket_counts: counts,
                        explicit_bounds: bounds,
                        ..HistogramDataPoint::default()
                    }
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        // inferd registers neither summaries nor untyped metrics.
        MetricType::SUMMARY | MetricType::UNTYPED => return None,
    };
    Some(Metric {
        name: family.name().to_string(),
        description: family.help().to_string(),
        data: Some(data),
        ..Metric::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_keep_their_values() {
        let registry = prometheus::Registry::new();
        let counter =
            prometheus::IntCounterVec::new(prometheus::Opts::new("c_total", "a counter"), &["model"]).unwrap();
        let gauge = prometheus::Gauge::new("g", "a gauge").unwrap();
        let histogram =
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("h_seconds", "h").buckets(vec![0.1, 1.0]))
                .unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        registry.register(Box::new(histogram.clone())).unwrap();
        counter.with_label_values(&["iris"]).inc_by(3);
        gauge.set(0.25);
        for value in [0.05, 0.5, 0.7, 5.0] {
            histogram.observe(value);
        }
        let request = export_request(&registry.gather(), "svc", 1, SystemTime::now());
        let decoded = ExportMetricsServiceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        let metrics = &decoded.resource_metrics[0].scope_metrics[0].metrics;
        let find = |name: &str| metrics.iter().find(|metric| metric.name == name).unwrap().data.clone().unwrap();
        let metric::Data::Sum(sum) = find("c_total") else { panic!("counter is not a sum") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points[0].value, Some(number_data_point::Value::AsDouble(3.0)));
        assert_eq!(sum.data_points[0].attributes, vec![text("model", "iris")]);
        let metric::Data::Gauge(gauge) = find("g") else { panic!("gauge") };
        assert_eq!(gauge.data_points[0].value, Some(number_data_point::Value::AsDouble(0.25)));
        let metric::Data::Histogram(histogram) = find("h_seconds") else { panic!("histogram") };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(point.bucket_counts, vec![1, 2, 1]);
        assert_eq!((point.count, point.sum), (4, Some(6.25)));
    }
}
