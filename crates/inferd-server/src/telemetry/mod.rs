//! OpenTelemetry over OTLP/HTTP (plain HTTP or HTTPS, through the server's outbound client):
//!
//! - traces: when an endpoint is configured, each request becomes a server span with one child
//!   span per stage (parse, tokenize, queue, compute, serialize), joined to the caller's trace
//!   when the request carries a W3C `traceparent` header. Spans are built after the response,
//!   from the request's recorded times, and exported in batches by the SDK's own thread;
//! - metrics: the families `/metrics` shows, pushed every `metrics_interval` ([`metrics`]).
//!
//! With no endpoint configured nothing is built at all.

mod metrics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use axum::http::HeaderMap;
use inferd_core::Metrics;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde::Deserialize;

use crate::outbound::Outbound;
use crate::timing::StageSpan;

/// Where traces and metrics go (the `[server.telemetry]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP endpoint of a collector, `http://` or `https://`, e.g.
    /// `http://otel-collector:4318`; traces are posted to its `/v1/traces` and metrics to its
    /// `/v1/metrics`. Export is off when absent.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the default) or `http/json`, for traces; metrics are always protobuf,
    /// which every OTLP/HTTP receiver takes.
    pub otlp_protocol: OtlpProtocol,
    /// Headers sent with every export, e.g. an `Authorization` or API key header.
    pub otlp_headers: BTreeMap<String, String>,
    /// Whether metrics are exported too (when an endpoint is set).
    pub otlp_metrics: bool,
    /// How often metrics are pushed.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            otlp_headers: BTreeMap::new(),
            otlp_metrics: true,
            metrics_interval: Duration::from_secs(60),
            service_name: "inferd".into(),
        }
    }
}

/// The OTLP encodings over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// Protocol buffers.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// JSON.
    #[serde(rename = "http/json")]
    HttpJson,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {message}")]
pub struct TelemetryError {
    endpoint: String,
    message: String,
}

/// The running trace exporter and metrics pusher.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    metrics: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

/// The SDK's span exporter posts through the server's outbound client, so that `https://`
/// collectors work with the same roots and CA file as every other outbound call.
#[derive(Debug)]
struct OtlpClient(Outbound);

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let url = request.uri().to_string();
        let mut content_type = "application/x-protobuf".to_string();
        let mut headers = Vec::new();
        for (name, value) in request.headers() {
            let Ok(value) = value.to_str() else { continue };
            if name.as_str() == "content-type" {
                content_type = value.to_string();
            } else {
                headers.push((name.as_str().to_string(), value.to_string()));
            }
        }
        // The SDK calls this on its own export thread, where blocking is what it expects.
        let body = self.0.post(&url, &content_type, &headers, request.body())?;
        Ok(Response::builder().status(200).body(Bytes::from(body))?)
    }
}

/// `endpoint` with `/v1/<signal>` appended, unless it already ends with it.
fn signal_url(endpoint: &str, signal: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    let suffix = format!("/v1/{signal}");
    match endpoint.strip_suffix("/v1/traces").or_else(|| endpoint.strip_suffix("/v1/metrics")) {
        Some(base) => format!("{base}{suffix}"),
        None => format!("{endpoint}{suffix}"),
    }
}

/// What one request's spans say.
pub(crate) struct RequestTrace<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) method: &'a str,
    pub(crate) route: &'a str,
    pub(crate) status: u16,
    pub(crate) model: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) caller: &'a str,
    pub(crate) started: Instant,
    pub(crate) stages: &'a [StageSpan],
    pub(crate) batch_size: Option<usize>,
}

impl Telemetry {
    /// Starts the exporters when the settings name an endpoint: traces, and `metrics` pushed
    /// every interval. `outbound` is the client they post with. Call it outside async code (or
    /// in `spawn_blocking`): the exporters' client is a blocking one.
    pub fn start(
        settings: &TelemetrySettings,
        outbound: &Outbound,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, TelemetryError> {
        let Some(endpoint) = &settings.otlp_endpoint else { return Ok(None) };
        let url = signal_url(endpoint, "traces");
        let failed = |message: String| TelemetryError { endpoint: endpoint.clone(), message };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(failed("the endpoint must start with http:// or https://".into()));
        }
        if settings.metrics_interval < Duration::from_secs(1) {
            return Err(failed("metrics_interval must be at least 1s".into()));
        }
        let protocol = match settings.otlp_protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        };
        let headers: std::collections::HashMap<String, String> = settings.otlp_headers.clone().into_iter().collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OtlpClient(outbound.clone()))
            .with_headers(headers)
            .with_protocol(protocol)
            .with_endpoint(&url)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| failed(err.to_string()))?;
        let resource = Resource::builder().with_service_name(settings.service_name.clone()).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer("inferd");
        tracing::info!(endpoint = %url, "exporting traces over OTLP");
        let pusher = if settings.otlp_metrics {
            let push = metrics::MetricsPush {
                url: signal_url(endpoint, "metrics"),
                headers: settings.otlp_headers.clone().into_iter().collect(),
                interval: settings.metrics_interval,
                service_name: settings.service_name.clone(),
                outbound: outbound.clone(),
                metrics,
            };
            tracing::info!(endpoint = %push.url, interval = ?push.interval, "exporting metrics over OTLP");
            let (stop, stopped) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("inferd-otlp-metrics".into())
                .spawn(move || push.run(stopped))
                .map_err(|err| failed(format!("cannot start the metrics thread: {err}")))?;
            Some((stop, thread))
        } else {
            None
        };
        Ok(Some(Self { provider, tracer, metrics: Mutex::new(pusher) }))
    }

    /// Exports what is pending (the spans, the metrics once more) and stops. Call it outside
    /// async code, like [`Telemetry::start`].
    pub fn shutdown(&self) {
        if let Some((stop, thread)) = self.metrics.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = stop.send(());
            if thread.join().is_err() {
                tracing::warn!("the metrics exporter stopped on a panic");
            }
        }
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(%err, "trace exporter did not shut down cleanly");
        }
    }

    /// Builds and ends the spans of one answered request.
    pub(crate) fn record(&self, request: &RequestTrace<'_>) {
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let wall = |instant: Instant| wall_now.checked_sub(now.saturating_duration_since(instant)).unwrap_or(wall_now);
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers));
        let mut attributes = vec![
            KeyValue::new("http.request.method", request.method.to_string()),
            KeyValue::new("http.route", request.route.to_string()),
            KeyValue::new("http.response.status_code", i64::from(request.status)),
            KeyValue::new("inferd.request_id", request.request_id.to_string()),
            KeyValue::new("inferd.caller", request.caller.to_string()),
        ];
        if !request.model.is_empty() {
            attributes.push(KeyValue::new("inferd.model", request.model.to_string()));
        }
        if let Some(size) = request.batch_size {
            attributes.push(KeyValue::new("inferd.batch_size", size as i64));
        }
        let mut span = self
            .tracer
            .span_builder(format!("{} {}", request.method, request.route))
            .with_kind(SpanKind::Server)
            .with_start_time(wall(request.started))
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        if request.status >= 500 {
            span.set_status(Status::error(format!("HTTP {}", request.status)));
        }
        let context = parent.with_span(span);
        for stage in request.stages {
            let mut child = self
                .tracer
                .span_builder(stage.stage.name())
                .with_kind(SpanKind::Internal)
                .with_start_time(wall(stage.start))
                .start_with_context(&self.tracer, &context);
            child.end_with_timestamp(wall(stage.start + stage.duration));
        }
        context.span().end_with_timestamp(wall_now);
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_signal_has_its_path() {
        assert_eq!(signal_url("https://collector:4318", "traces"), "https://collector:4318/v1/traces");
        assert_eq!(signal_url("https://collector:4318/", "metrics"), "https://collector:4318/v1/metrics");
        assert_eq!(signal_url("http://c/otlp/v1/traces", "metrics"), "http://c/otlp/v1/metrics");
        assert_eq!(signal_url("http://c/otlp/v1/traces", "traces"), "http://c/otlp/v1/traces");
    }
}
