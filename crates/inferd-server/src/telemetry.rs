//! OpenTelemetry traces over OTLP: when an endpoint is configured, each request becomes a server
//! span with one child span per stage (parse, tokenize, queue, compute, serialize), joined to
//! the caller's trace when the request carries a W3C `traceparent` header. Spans are built after
//! the response, from the request's recorded times, and exported in batches by the SDK's own
//! thread; with no endpoint configured nothing is built at all.

use std::time::{Duration, Instant, SystemTime};

use axum::http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde::Deserialize;

use crate::timing::StageSpan;

/// Where traces go (the `[server.telemetry]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP endpoint of a collector, e.g. `http://otel-collector:4318`; traces are
    /// posted to its `/v1/traces`. Tracing is off when absent.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the default) or `http/json`.
    pub otlp_protocol: OtlpProtocol,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self { otlp_endpoint: None, otlp_protocol: OtlpProtocol::HttpProtobuf, service_name: "inferd".into() }
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

/// A running trace exporter.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
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
    /// Starts the exporter when the settings name an endpoint. Call it outside async code (or
    /// in `spawn_blocking`): the exporter's HTTP client is a blocking one.
    pub fn start(settings: &TelemetrySettings) -> Result<Option<Self>, TelemetryError> {
        let Some(endpoint) = &settings.otlp_endpoint else { return Ok(None) };
        let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
            endpoint.clone()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        let protocol = match settings.otlp_protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(&url)
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| TelemetryError { endpoint: url.clone(), message: err.to_string() })?;
        let resource = Resource::builder().with_service_name(settings.service_name.clone()).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer("inferd");
        tracing::info!(endpoint = %url, "exporting traces over OTLP");
        Ok(Some(Self { provider, tracer }))
    }

    /// Exports what is pending and stops. Call it outside async code, like [`Telemetry::start`].
    pub fn shutdown(&self) {
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
