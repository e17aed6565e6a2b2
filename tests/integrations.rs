//! What a deployment plugs inferd into, against the real binary: models named on the command
//! line with no configuration file (as KServe and Azure ML start it), `inferd health` (the
//! images' health check), an OpenID provider's discovery document and signing keys over HTTPS
//! (Entra ID's shape: rotation, roles and scopes), and an OTLP collector over HTTPS receiving
//! traces and metrics. The provider and the collector are local HTTPS stand-ins with the test
//! certificate, which the server trusts through `ca_file`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use common::{Server, bundled_model, https_stand_in, repo, run_inferd, test_ca_file};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    repo().join("tests/fixtures/ops").join(name).display().to_string()
}

fn models_dir() -> String {
    repo().join("models").display().to_string()
}

fn iris_row() -> Value {
    json!({ "inputs": [{ "name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2] }] })
}

async fn infer(server: &Server, model: &str, token: Option<&str>) -> (u16, String) {
    let mut request = server.client.post(server.url(&format!("/v2/models/{model}/infer"))).json(&iris_row());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Polls `check` until it holds, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn models_named_on_the_command_line_are_served_without_a_configuration_file() {
    let models = models_dir();
    // Flags: a directory with its kind read from the file, and ${VAR} in a path.
    let mut flags = Server::spawn_without_config(
        &[
            "--model",
            &format!("{models}/iris-xgboost,name=iris-trees"),
            "--model",
            "lightgbm=${INFERD_TEST_MODELS}/diabetes-lightgbm/model.txt,device=cpu",
        ],
        &[("INFERD_TEST_MODELS", &models)],
    );
    flags.wait_listening().await;
    flags.wait_ready().await;
    let (status, body) = infer(&flags, "iris-trees", None).await;
    assert_eq!(status, 200, "{body}");
    let outputs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outputs["outputs"][0]["shape"], json!([1, 3]), "{body}");
    let listed: Value = flags.get("/v1/models").await.json().await.unwrap();
    let mut names: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["diabetes-lightgbm", "iris-trees"], "only the named models, not the bundled ones");

    // The environment, as Azure ML's deployment sets it: the registered folder nested under
    // AZUREML_MODEL_DIR, found through the directories that hold only it.
    let azureml = tempfile::tempdir().unwrap();
    let registered = azureml.path().join("credit-model/3/model");
    std::fs::create_dir_all(&registered).unwrap();
    std::fs::copy(format!("{models}/breast-cancer-xgboost/model.json"), registered.join("model.json")).unwrap();
    let model_dir = azureml.path().join("credit-model/3");
    let mut env = Server::spawn_without_config(
        &[],
        &[
            ("AZUREML_MODEL_DIR", model_dir.to_str().unwrap()),
            ("INFERD_MODELS", &format!("${{AZUREML_MODEL_DIR}},name=credit;{models}/iris-logistic/model.json")),
        ],
    );
    env.wait_listening().await;
    env.wait_ready().await;
    let row = json!({ "inputs": [{ "name": "input", "shape": [1, 30], "datatype": "FP64", "data": vec![0.5; 30] }] });
    let response = env.post_json("/v2/models/credit/infer", &row).await;
    assert_eq!(response.status(), 200, "{}", env.log());
    let metadata: Value = env.get("/v2/models/iris-logistic").await.json().await.unwrap();
    assert_eq!(metadata["name"], "iris-logistic", "model.json is named for its directory: {metadata}");

    // A spec that cannot be served stops the start with its reason.
    let (status, stderr) = run_inferd(&["serve", "--model", "onnx=/models/m.onnx"], &repo());
    assert!(!status.success());
    assert!(stderr.contains("unknown model kind 'onnx'"), "{stderr}");
    let (status, stderr) = run_inferd(&["serve", "--model", &repo().join("tests").display().to_string()], &repo());
    assert!(!status.success());
    assert!(stderr.contains("cannot tell what kind of model"), "{stderr}");
}

#[tokio::test]
async fn inferd_health_answers_for_liveness_and_readiness() {
    let mut server = Server::spawn_without_config(&["--model", &format!("{}/iris-logistic", models_dir())], &[]);
    server.wait_listening().await;
    server.wait_ready().await;
    let url = format!("http://{}", server.address);
    let dir = repo();
    assert!(run_inferd(&["health", "--url", &url], &dir).0.success());
    assert!(run_inferd(&["health", "--ready", "--url", &url], &dir).0.success());
    drop(server);
    let (status, stderr) = run_inferd(&["health", "--url", &url, "--timeout", "2s"], &dir);
    assert!(!status.success(), "a stopped server is not healthy");
    assert!(stderr.contains(&url), "{stderr}");
}

/// A JWT for `kid`, signed with the fixture key file, with extra claims.
fn token(kid: &str, key_file: &str, extra: Value) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut claims = json!({
        "sub": "app-1", "iat": now, "nbf": now - 10, "exp": now + 600,
        "iss": "https://login.example.test/tenant/v2.0", "aud": "api://inferd",
    });
    claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let pem = std::fs::read(fixture(key_file)).unwrap();
    let (alg, key) = if key_file.contains("es256") {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap())
    } else {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap())
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// An identity provider: a discovery document naming its key set, and the key set, which the
/// test may rotate; counts the key set's fetches.
struct Provider {
    base: String,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl Provider {
    async fn start(kids: &[&str]) -> Provider {
        let keys = Arc::new(Mutex::new(Value::Null));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&keys), Arc::clone(&fetches));
        let router = axum::Router::new()
            .route(
                "/tenant/v2.0/.well-known/openid-configuration",
                axum::routing::get(|headers: HeaderMap| async move {
                    let host = headers["host"].to_str().unwrap().to_string();
                    axum::Json(json!({
                        "issuer": "https://login.example.test/tenant/v2.0",
                        "jwks_uri": format!("https://{host}/tenant/discovery/v2.0/keys"),
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }))
                }),
            )
            .route(
                "/tenant/discovery/v2.0/keys",
                axum::routing::get(move || {
                    let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
                    async move {
                        counted.fetch_add(1, Ordering::SeqCst);
                        axum::Json(served.lock().unwrap().clone())
                    }
                }),
            );
        let provider = Provider { base: https_stand_in(router).await, keys, fetches };
        provider.publish(kids);
        provider
    }

    /// Serves the fixture keys with these ids, plus one of a type this server cannot use.
    fn publish(&self, kids: &[&str]) {
        let all: Value = serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
        let mut keys: Vec<Value> = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|key| kids.contains(&key["kid"].as_str().unwrap()))
            .cloned()
            .collect();
        keys.push(json!({"kty": "OKP", "crv": "X448", "kid": "future-key", "x": "AAAA"}));
        *self.keys.lock().unwrap() = json!({ "keys": keys });
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn discovery_url(&self) -> String {
        format!("{}/tenant/v2.0/.well-known/openid-configuration", self.base)
    }
}

fn jwt_settings(source: &str, extra: &str) -> String {
    format!(
        "{extra}\n[server.auth.jwt]\n{source}\nissuer = \"https://login.example.test/tenant/v2.0\"\n\
         audience = \"api://inferd\"\nmodels = []\n\n\
         [[server.auth.jwt.roles]]\nrole = \"Inference.Trees\"\nmodels = [\"iris-xgboost\"]\n\n\
         [[server.auth.jwt.roles]]\nrole = \"Inference.All\"\nmodels = [\"iris-xgboost\", \"iris-logistic\"]\n"
    )
}

#[tokio::test]
async fn jwt_signing_keys_come_from_the_providers_discovery_document_over_https() {
    let provider = Provider::start(&["rsa-1"]).await;
    let models = bundled_model("iris-logistic", "") + &bundled_model("iris-xgboost", "");
    let settings = jwt_settings(
        &format!("discovery_url = \"{}\"", provider.discovery_url()),
        &format!("ca_file = \"{}\"", test_ca_file()),
    );
    let server = Server::start_ready(&models, &settings).await;

    let all = token("rsa-1", "jwt-rs256.key.pem", json!({ "roles": ["Inference.All"] }));
    assert_eq!(infer(&server, "iris-logistic", Some(&all)).await.0, 200, "{}", server.log());
    // Roles and scopes grant models; a token with neither gets none (`models = []`).
    let trees = token("rsa-1", "jwt-rs256.key.pem", json!({ "roles": ["Inference.Trees"] }));
    assert_eq!(infer(&server, "iris-xgboost", Some(&trees)).await.0, 200);
    assert_eq!(infer(&server, "iris-logistic", Some(&trees)).await.0, 403);
    let scoped = token("rsa-1", "jwt-rs256.key.pem", json!({ "scp": "openid Inference.Trees" }));
    assert_eq!(infer(&server, "iris-xgboost", Some(&scoped)).await.0, 200);
    let bare = token("rsa-1", "jwt-rs256.key.pem", json!({}));
    assert_eq!(infer(&server, "iris-xgboost", Some(&bare)).await.0, 403);

    // The provider rotates in a new key: the first token signed with it makes the server fetch
    // the set again, once.
    provider.publish(&["rsa-1", "ec-1"]);
    let before = provider.fetches();
    let rotated = token("ec-1", "jwt-es256.key.pem", json!({ "roles": ["Inference.All"] }));
    assert_eq!(infer(&server, "iris-logistic", Some(&rotated)).await.0, 200, "{}", server.log());
    assert_eq!(provider.fetches(), before + 1);
    // A token naming a key nobody published is refused, and soon after a fetch it costs none.
    let (status, body) = infer(&server, "iris-logistic", Some(&token("rsa-9", "jwt-rs256.key.pem", json!({})))).await;
    assert_eq!((status, body.contains("no signing key with kid 'rsa-9'")), (401, true), "{body}");
    assert_eq!(provider.fetches(), before + 1, "misses within MISS_REFETCH_INTERVAL do not fetch");
    // SIGHUP fetches again too.
    server.signal("HUP");
    server.wait_for_log("SIGHUP: credentials reloaded").await;
    assert_eq!(provider.fetches(), before + 2);
}

#[tokio::test]
async fn fetched_keys_refresh_periodically_and_an_untrusted_provider_is_not_believed() {
    let provider = Provider::start(&["rsa-1", "ec-1"]).await;
    let models = bundled_model("iris-logistic", "");
    let jwks_url = format!("jwks_url = \"{}/tenant/discovery/v2.0/keys\"\njwks_refresh = \"1s\"", provider.base);
    let settings = jwt_settings(&jwks_url, &format!("ca_file = \"{}\"", test_ca_file()));
    let server = Server::start_ready(&models, &settings).await;
    let start = provider.fetches();
    eventually(Duration::from_secs(15), "three periodic fetches", || provider.fetches() >= start + 3).await;
    let all = token("ec-1", "jwt-es256.key.pem", json!({ "roles": ["Inference.All"] }));
    assert_eq!(infer(&server, "iris-logistic", Some(&all)).await.0, 200, "{}", server.log());

    // Without the CA file the stand-in's certificate is not trusted: no keys, every token
    // refused, and the log says why.
    let untrusted = Server::start_ready(&models, &jwt_settings(&jwks_url, "")).await;
    let (status, body) = infer(&untrusted, "iris-logistic", Some(&all)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("no signing keys are loaded yet"), "{body}");
    let log = untrusted.wait_for_log("cannot fetch the signing keys").await;
    assert!(log.to_lowercase().contains("certificate"), "the log names the certificate problem:\n{log}");
}

#[tokio::test]
async fn traces_and_metrics_go_to_an_https_collector() {
    #[derive(Default)]
    struct Received {
        traces: String,
        metrics: Vec<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>,
        keys: Vec<String>,
    }
    let received: Arc<Mutex<Received>> = Arc::default();
    let (traces, metrics) = (Arc::clone(&received), Arc::clone(&received));
    let key =
        |headers: &HeaderMap| headers.get("x-otlp-key").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let collector = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: String| async move {
                let mut received = traces.lock().unwrap();
                received.traces.push_str(&body);
                received.keys.push(key(&headers));
                axum::Json(json!({}))
            }),
        )
        .route(
            "/v1/metrics",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| async move {
                use prost::Message;
                let request =
                    opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest::decode(body)
                        .unwrap();
                let mut received = metrics.lock().unwrap();
                received.metrics.push(request);
                received.keys.push(key(&headers));
                axum::body::Bytes::new()
            }),
        );
    let endpoint = https_stand_in(collector).await;
    let telemetry = format!(
        "[server.telemetry]\notlp_endpoint = \"{endpoint}\"\notlp_protocol = \"http/json\"\n\
         metrics_interval = \"1s\"\nservice_name = \"inferd-test\"\notlp_headers = {{ x-otlp-key = \"key-1\" }}\n"
    );
    let settings = format!("ca_file = \"{}\"\n{telemetry}", test_ca_file());
    let mut server = Server::spawn_with_env(
        &bundled_model("iris-logistic", ""),
        &settings,
        &[],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    server.wait_listening().await;
    server.wait_ready().await;
    assert_eq!(infer(&server, "iris-logistic", None).await.0, 200);

    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
    // The request counter, for the model, from a push after the request.
    let counted =
        |received: &Received| {
            received.metrics.iter().flat_map(|request| &request.resource_metrics).any(|resource| {
                resource.scope_metrics.iter().flat_map(|scope| &scope.metrics).any(|metric| {
                    let Some(metric::Data::Sum(sum)) = &metric.data else { return false };
                    metric.name == "inferd_requests_total"
                        && sum.data_points.iter().any(|point| {
                            point.attributes.iter().any(|label| {
                                label.key == "model" && format!("{:?}", label.value).contains("iris-logistic")
                            }) && point.value == Some(number_data_point::Value::AsDouble(1.0))
                        })
                })
            })
        };
    eventually(Duration::from_secs(15), "spans and the request counter at the collector", || {
        let received = received.lock().unwrap();
        received.traces.contains("serialize") && counted(&received)
    })
    .await;
    {
        let received = received.lock().unwrap();
        assert!(
            received.traces.contains("inferd-test") && received.traces.contains("iris-logistic"),
            "{}",
            received.traces
        );
        assert!(received.keys.iter().all(|key| key == "key-1"), "every export carries the header: {:?}", received.keys);
        let last = received.metrics.last().unwrap();
        let resource = &last.resource_metrics[0];
        assert!(format!("{:?}", resource.resource).contains("inferd-test"));
        let histogram = resource.scope_metrics[0]
            .metrics
            .iter()
            .find(|metric| metric.name == "inferd_request_duration_seconds")
            .expect("the latency histogram is exported");
        let Some(metric::Data::Histogram(histogram)) = &histogram.data else { panic!("not a histogram") };
        let point = &histogram.data_points[0];
        assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
    }

    // Without the CA file, the collector's certificate is refused and the log says so.
    let untrusted = Server::spawn_with_env(
        &bundled_model("iris-logistic", ""),
        &telemetry,
        &[],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let log = untrusted.wait_for_log("OTLP metrics export failed").await;
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}
