//! The operations layer over real HTTP against the real binary: API keys and JWTs, model
//! allow-lists, request and token quotas, the concurrency limit, timeouts, body limits, request
//! ids, Server-Timing, metrics, credentials reload on SIGHUP, TLS, OTLP traces, JSON logs, the
//! refusal to serve openly on a public address; and the edge: header and idle timeouts, the
//! connection cap, malformed requests refused in the protocol's shape, internal failures
//! answered with the request id instead of their own message, and refusals that do not ask for
//! a body the client has not sent yet.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Server, bundled_model, embedding_model, repo, run_inferd};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

const OPS_KEY: &str = "ops-secret-key-1";
const TEAM_KEY: &str = "team-a-secret-key";

fn hash(key: &str) -> String {
    inferd::server::hash_key(key)
}

fn fixture(name: &str) -> String {
    repo().join("tests/fixtures/ops").join(name).display().to_string()
}

fn iris_row() -> Value {
    json!({ "inputs": [{ "name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2] }] })
}

/// A server with two keys: `ops` (every model) and `team-a` (iris-logistic only, 3 requests a
/// minute).
async fn keyed_server(extra: &str) -> Server {
    let server = format!(
        "[[server.auth.keys]]\nid = \"ops\"\nsha256 = \"{}\"\n\n\
         [[server.auth.keys]]\nid = \"team-a\"\nsha256 = \"{}\"\nmodels = [\"iris-logistic\"]\nrequests_per_minute = 3\n{extra}",
        hash(OPS_KEY),
        hash(TEAM_KEY)
    );
    let models = bundled_model("iris-logistic", "") + &bundled_model("iris-xgboost", "");
    Server::start_ready(&models, &server).await
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|value| value.to_str().unwrap())
}

/// Posts the iris row to `model`, with one extra header (credentials, a request id...).
async fn infer_with(server: &Server, model: &str, header: Option<(&str, &str)>) -> reqwest::Response {
    let mut request = server.client.post(server.url(&format!("/v2/models/{model}/infer"))).json(&iris_row());
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn api_keys_guard_every_route_but_health() {
    let server = keyed_server("").await;
    let bearer = |key: &str| format!("Bearer {key}");

    // Health and metrics stay open; everything else needs a key.
    assert_eq!(server.get("/v2/health/live").await.status(), 200);
    assert_eq!(server.get("/metrics").await.status(), 200);
    let missing = infer_with(&server, "iris-logistic", None).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(header(&missing, "www-authenticate"), Some("Bearer"));
    assert!(missing.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("missing credentials"));
    let openai = server.get("/v1/models").await;
    assert_eq!(openai.status(), 401);
    let body: Value = openai.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error", "OpenAI's shape on /v1: {body}");
    assert_eq!(server.get("/v2/models/iris-logistic").await.status(), 401);

    let wrong = infer_with(&server, "iris-logistic", Some(("authorization", "Bearer not-a-key"))).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("invalid API key"));

    // Both header forms work.
    assert_eq!(infer_with(&server, "iris-xgboost", Some(("authorization", &bearer(OPS_KEY)))).await.status(), 200);
    assert_eq!(infer_with(&server, "iris-xgboost", Some(("api-key", OPS_KEY))).await.status(), 200);

    // A key limited to some models.
    let team = Some(("api-key", TEAM_KEY));
    assert_eq!(infer_with(&server, "iris-logistic", team).await.status(), 200);
    let denied = infer_with(&server, "iris-xgboost", team).await;
    assert_eq!(denied.status(), 403);
    assert!(denied.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("not allowed"));
    let listed: Value = server
        .client
        .get(server.url("/v1/models"))
        .header("api-key", TEAM_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["iris-logistic"]);
    let other =
        server.client.get(server.url("/v1/models/iris-xgboost")).header("api-key", TEAM_KEY).send().await.unwrap();
    assert_eq!(other.status(), 403);
    assert_eq!(other.json::<Value>().await.unwrap()["error"]["type"], "permission_error");

    // Refusals are counted by reason; keys never reach the log, key ids do.
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let auth_rejections = metric_value(&metrics, r#"inferd_rejected_requests_total{reason="auth"}"#);
    assert!(auth_rejections >= 6.0, "{auth_rejections}");
    // Log lines are written asynchronously (at least every 50 ms): wait for the caller's.
    let log = server.wait_for_log("caller=\"team-a\"").await;
    assert!(!log.contains(OPS_KEY) && !log.contains(TEAM_KEY), "a key was logged:\n{log}");
}

#[tokio::test]
async fn metrics_can_be_protected() {
    let server = keyed_server("\n[server.auth]\nprotect_metrics = true\n").await;
    assert_eq!(server.get("/metrics").await.status(), 401);
    let scraped = server.client.get(server.url("/metrics")).header("api-key", OPS_KEY).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert_eq!(server.get("/v2/health/ready").await.status(), 200);
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).map(|rest| rest.trim().parse::<f64>().unwrap()))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn request_quota_counts_down_then_refuses_with_retry_after() {
    let server = keyed_server("").await;
    let team = Some(("api-key", TEAM_KEY));
    for remaining in ["2", "1", "0"] {
        let response = infer_with(&server, "iris-logistic", team).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(header(&response, "x-ratelimit-remaining-requests"), Some(remaining));
    }
    let refused = infer_with(&server, "iris-logistic", team).await;
    assert_eq!(refused.status(), 429);
    // Three a minute refill one every 20 s.
    let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((15..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), Some("0"));
    assert!(refused.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("3 requests per minute"));
    // Another key is unaffected.
    assert_eq!(infer_with(&server, "iris-logistic", Some(("api-key", OPS_KEY))).await.status(), 200);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric_value(&metrics, r#"inferd_rejected_requests_total{reason="quota"}"#), 1.0);
}

#[tokio::test]
async fn token_quota_reserves_and_refuses_in_openai_shape() {
    let server =
        format!("[[server.auth.keys]]\nid = \"tpm\"\nsha256 = \"{}\"\ntokens_per_minute = 20\n", hash(TEAM_KEY));
    let server = Server::start_ready(&embedding_model(""), &server).await;
    let embed = |input: &'static str| {
        server
            .client
            .post(server.url("/v1/embeddings"))
            .bearer_auth(TEAM_KEY)
            .json(&json!({ "model": "all-minilm-l6-v2", "input": input }))
            .send()
    };
    // "hello world" is 4 tokens with [CLS] and [SEP].
    let first = embed("hello world").await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), Some("20"));
    assert_eq!(header(&first, "x-ratelimit-remaining-tokens"), Some("16"));
    let second = embed("hello world").await.unwrap();
    assert_eq!(header(&second, "x-ratelimit-remaining-tokens"), Some("12"));
    // 14 tokens do not fit in the 12 left (at most 13 after refilling for a moment).
    let refused = embed("one two three four five six seven eight nine ten eleven twelve").await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry), "Retry-After {retry}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // The refused request took nothing.
    let third = embed("hello world").await.unwrap();
    assert_eq!(third.status(), 200);
    let left: u64 = header(&third, "x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    assert!((8..=9).contains(&left), "{left}");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric_value(&metrics, r#"inferd_tokens_total{kind="prompt",model="all-minilm-l6-v2"}"#), 12.0);
}

/// A request that keeps the embedding model busy for a while: 48 texts of 120 words.
fn heavy_embedding_request() -> Value {
    let text = ["word"; 120].join(" ");
    json!({ "model": "all-minilm-l6-v2", "input": vec![text; 48] })
}

#[tokio::test]
async fn concurrency_limit_sheds_with_retry_after_and_timeouts_answer_504() {
    let server =
        Server::start_ready(&embedding_model(""), "max_concurrent_requests = 1\nmax_input_tokens = 10000\n").await;
    let slow = {
        let client = server.client.clone();
        let url = server.url("/v1/embeddings");
        tokio::spawn(async move { client.post(url).json(&heavy_embedding_request()).send().await.unwrap().status() })
    };
    // Wait until the slow request holds the one slot.
    for _ in 0..500 {
        let metrics = server.get("/metrics").await.text().await.unwrap();
        if metrics.contains("inferd_requests_in_flight 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shed = server.post_json("/v1/embeddings", &json!({ "model": "all-minilm-l6-v2", "input": "hi" })).await;
    assert_eq!(shed.status(), 503);
    let retry: u64 = header(&shed, "retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(shed.json::<Value>().await.unwrap()["error"]["code"], "server_busy");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric_value(&metrics, r#"inferd_rejected_requests_total{reason="concurrency"}"#), 1.0);
    // Health is not counted against the limit.
    assert_eq!(server.get("/v2/health/live").await.status(), 200);
    assert_eq!(slow.await.unwrap(), StatusCode::OK, "the admitted request is unaffected");
    let after = server.post_json("/v1/embeddings", &json!({ "model": "all-minilm-l6-v2", "input": "hi" })).await;
    assert_eq!(after.status(), 200, "the slot is free again");
    let many_tokens = json!({ "model": "all-minilm-l6-v2", "input": vec![["word"; 120].join(" "); 100] });
    let refused = server.post_json("/v1/embeddings", &many_tokens).await;
    assert_eq!(refused.status(), 400);
    let message = refused.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("12200 input tokens; at most 10000"), "{message}");
    drop(server);

    let server =
        Server::start_ready(&embedding_model(""), "request_timeout = \"100ms\"\nmax_body_bytes = 200000\n").await;
    let late = server.post_json("/v1/embeddings", &heavy_embedding_request()).await;
    assert_eq!(late.status(), 504);
    assert_eq!(late.json::<Value>().await.unwrap()["error"]["code"], "timeout");
    let huge = json!({ "model": "all-minilm-l6-v2", "input": "x".repeat(300_000) });
    let too_large = server.post_json("/v1/embeddings", &huge).await;
    assert_eq!(too_large.status(), 413);
    // The timed-out request's batch still runs to its end (its deadline is not checked inside
    // a batch); then the server serves again.
    let mut served = false;
    for _ in 0..300 {
        let ok = server.post_json("/v1/embeddings", &json!({ "model": "all-minilm-l6-v2", "input": "hi" })).await;
        if ok.status() == 200 {
            served = true;
            break;
        }
        assert_eq!(ok.status(), 504);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the server still serves");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metric_value(&metrics, r#"inferd_rejected_requests_total{reason="timeout"}"#) >= 1.0);
    assert!(metric_value(&metrics, r#"inferd_rejected_requests_total{reason="invalid"}"#) >= 1.0);
}

#[tokio::test]
async fn request_ids_server_timing_and_stage_metrics() {
    let models = bundled_model("iris-logistic", "") + &embedding_model("");
    let server = Server::start_ready(&models, "").await;
    let response = infer_with(&server, "iris-logistic", Some(("x-request-id", "trace-me-42"))).await;
    assert_eq!(header(&response, "x-request-id"), Some("trace-me-42"));
    let timing = header(&response, "server-timing").unwrap().to_string();
    let stages: Vec<&str> = timing.split(", ").map(|entry| entry.split(';').next().unwrap()).collect();
    assert_eq!(stages, ["parse", "queue", "compute", "serialize"], "{timing}");
    assert_eq!(header(&response, "inferd-batch-size"), Some("1"));

    let response = server.post_json("/v1/embeddings", &json!({ "model": "all-minilm-l6-v2", "input": "hi" })).await;
    let generated = header(&response, "x-request-id").unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let timing = header(&response, "server-timing").unwrap();
    for stage in ["parse", "tokenize", "queue", "compute", "serialize"] {
        assert!(timing.contains(&format!("{stage};dur=")), "{timing}");
    }

    // Unknown routes answer in the shape of their protocol.
    let missing = server.get("/v1/nothing-here").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"]["type"], "invalid_request_error");
    let missing = server.get("/v2/nothing-here").await;
    assert!(missing.json::<Value>().await.unwrap()["error"].is_string());

    let metrics = server.get("/metrics").await.text().await.unwrap();
    for series in [
        r#"inferd_request_stage_duration_seconds_count{model="all-minilm-l6-v2",stage="tokenize"} 1"#,
        r#"inferd_request_stage_duration_seconds_count{model="iris-logistic",stage="serialize"} 1"#,
        r#"inferd_tokens_total{kind="prompt",model="all-minilm-l6-v2"} 3"#,
        r#"inferd_requests_per_minute{model="iris-logistic"}"#,
        r#"inferd_request_latency_window_seconds{model="iris-logistic",quantile="0.95"}"#,
        r#"inferd_tokens_per_minute{model="all-minilm-l6-v2"}"#,
        r#"inferd_model_busy_ratio{model="all-minilm-l6-v2"}"#,
        "inferd_requests_in_flight 0",
        r#"inferd_running_sequences{model="iris-logistic"} 0"#,
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
    let p95 = metric_value(&metrics, r#"inferd_request_latency_window_seconds{model="iris-logistic",quantile="0.95"}"#);
    assert!(p95 > 0.0 && p95 < 5.0, "{p95}");
    assert!(!metrics.contains("inferd_gpu_"), "no GPU metrics without NVML");
}

#[tokio::test]
async fn jwt_bearer_tokens_are_validated() {
    let server = format!(
        "[server.auth.jwt]\njwks_file = \"{}\"\nissuer = \"https://login.example.test/tenant/v2.0\"\n\
         audience = \"api://inferd\"\nleeway = \"30s\"\nrequests_per_minute = 1000\n\n\
         [[server.auth.jwt.subjects]]\nsubject = \"limited-app\"\nmodels = [\"iris-logistic\"]\n",
        fixture("jwks.json")
    );
    let models = bundled_model("iris-logistic", "") + &bundled_model("iris-xgboost", "");
    let server = Server::start_ready(&models, &server).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = |sub: &str, exp: i64, nbf: i64, iss: &str, aud: &str| json!({ "sub": sub, "exp": exp, "nbf": nbf, "iat": now, "iss": iss, "aud": aud });
    let iss = "https://login.example.test/tenant/v2.0";
    let sign = |alg: Algorithm, kid: &str, key_file: &str, claims: Value| {
        let pem = std::fs::read(fixture(key_file)).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let status = |token: String, model: &'static str| {
        let request =
            server.client.post(server.url(&format!("/v2/models/{model}/infer"))).bearer_auth(token).json(&iris_row());
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    let good = claims("app-1", now + 600, now - 10, iss, "api://inferd");
    assert_eq!(
        status(sign(Algorithm::RS256, "rsa-1", "jwt-rs256.key.pem", good.clone()), "iris-logistic").await.0,
        200
    );
    assert_eq!(status(sign(Algorithm::ES256, "ec-1", "jwt-es256.key.pem", good.clone()), "iris-logistic").await.0, 200);

    let refused = [
        (
            "expired",
            sign(
                Algorithm::RS256,
                "rsa-1",
                "jwt-rs256.key.pem",
                claims("a", now - 120, now - 600, iss, "api://inferd"),
            ),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                "rsa-1",
                "jwt-rs256.key.pem",
                claims("a", now + 600, now + 300, iss, "api://inferd"),
            ),
        ),
        (
            "wrong audience",
            sign(Algorithm::RS256, "rsa-1", "jwt-rs256.key.pem", claims("a", now + 600, now, iss, "api://other")),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                "rsa-1",
                "jwt-rs256.key.pem",
                claims("a", now + 600, now, "https://evil.test", "api://inferd"),
            ),
        ),
        ("forged signature", sign(Algorithm::RS256, "rsa-1", "jwt-other.key.pem", good.clone())),
        ("unknown kid", sign(Algorithm::RS256, "rsa-9", "jwt-rs256.key.pem", good.clone())),
        ("garbage", "a.b.c".to_string()),
    ];
    for (case, token) in refused {
        let (code, body) = status(token, "iris-logistic").await;
        assert_eq!(code, 401, "{case}: {body}");
    }
    // Within the leeway, an expired token still passes.
    let recent =
        sign(Algorithm::RS256, "rsa-1", "jwt-rs256.key.pem", claims("a", now - 5, now - 600, iss, "api://inferd"));
    assert_eq!(status(recent, "iris-logistic").await.0, 200);
    // A subject limited to some models.
    let limited =
        sign(Algorithm::ES256, "ec-1", "jwt-es256.key.pem", claims("limited-app", now + 600, now, iss, "api://inferd"));
    let response = server
        .client
        .post(server.url("/v2/models/iris-logistic/infer"))
        .bearer_auth(&limited)
        .json(&iris_row())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The subject's entry sets only models: the token-wide limit still applies.
    assert_eq!(header(&response, "x-ratelimit-limit-requests"), Some("1000"));
    assert_eq!(status(limited, "iris-xgboost").await.0, 403);
    server.wait_for_log("jwt:limited-app").await;
}

#[tokio::test]
async fn keys_file_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let write = |id: &str, key: &str| {
        std::fs::write(&keys, format!("[[keys]]\nid = \"{id}\"\nsha256 = \"{}\"\n", hash(key))).unwrap();
    };
    write("first", "first-key");
    let server = Server::start_ready(
        &bundled_model("iris-logistic", ""),
        &format!("[server.auth]\nkeys_file = \"{}\"\n", keys.display()),
    )
    .await;
    let with = |key: &'static str| infer_with(&server, "iris-logistic", Some(("api-key", key)));
    assert_eq!(with("first-key").await.status(), 200);
    write("second", "second-key");
    server.signal("HUP");
    let mut reloaded = false;
    for _ in 0..200 {
        if with("second-key").await.status() == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "{}", server.log());
    assert_eq!(with("first-key").await.status(), 401, "the old key is gone");
    std::fs::write(&keys, "this is not toml [[").unwrap();
    server.signal("HUP");
    server.wait_for_log("reload failed").await;
    assert_eq!(with("second-key").await.status(), 200, "a broken file keeps the previous keys");
}

#[tokio::test]
async fn keys_file_reloads_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let write = |id: &str, key: &str| {
        std::fs::write(&keys, format!("[[keys]]\nid = \"{id}\"\nsha256 = \"{}\"\n", hash(key))).unwrap();
    };
    write("first", "first-key");
    let server = Server::start_ready(
        &bundled_model("iris-logistic", ""),
        &format!("[server.auth]\nkeys_file = \"{}\"\nwatch_interval = \"100ms\"\n", keys.display()),
    )
    .await;
    let with = |key: &'static str| infer_with(&server, "iris-logistic", Some(("api-key", key)));
    assert_eq!(with("first-key").await.status(), 200);
    // As a mounted Secret rotates: a new file swapped in under the same name, no signal.
    let staged = dir.path().join("keys.toml.new");
    std::fs::write(&staged, format!("[[keys]]\nid = \"rotated\"\nsha256 = \"{}\"\n", hash("rotated-key-1"))).unwrap();
    std::fs::rename(&staged, &keys).unwrap();
    server.wait_for_log("credentials' files changed: reloaded").await;
    assert_eq!(with("rotated-key-1").await.status(), 200);
    assert_eq!(with("first-key").await.status(), 401, "the old key is gone");
}

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let server =
        format!("[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n", fixture("tls.cert.pem"), fixture("tls.key.pem"));
    let server = Server::start(&bundled_model("iris-logistic", ""), &server).await;
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(fixture("tls.cert.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"live":true}"#), "{answer}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = server.client.get(server.url("/v2/health/live")).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test]
async fn exports_request_spans_over_otlp() {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&received);
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: String| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push(body);
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    let settings = format!(
        "[server.telemetry]\notlp_endpoint = \"{endpoint}\"\notlp_protocol = \"http/json\"\nservice_name = \"inferd-test\"\n"
    );
    let mut server = Server::spawn_with_env(
        &bundled_model("iris-logistic", ""),
        &settings,
        &[],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    server.wait_listening().await;
    server.wait_ready().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let response = infer_with(&server, "iris-logistic", Some(("traceparent", &traceparent))).await;
    assert_eq!(response.status(), 200);
    let mut exported = String::new();
    for _ in 0..300 {
        exported = received.lock().unwrap().concat();
        if exported.contains("serialize") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for expected in [
        trace_id,
        "POST /v2/models/{name}/infer",
        "parse",
        "queue",
        "compute",
        "serialize",
        "inferd-test",
        "iris-logistic",
    ] {
        assert!(exported.contains(expected), "no {expected} in the exported spans:\n{exported}\n{}", server.log());
    }
}

#[tokio::test]
async fn json_logs_carry_one_line_per_request() {
    let mut server = Server::spawn(&bundled_model("iris-logistic", ""), "", &["--log-format", "json"]);
    server.wait_listening().await;
    server.wait_ready().await;
    let response = infer_with(&server, "iris-logistic", Some(("x-request-id", "json-log-1"))).await;
    assert_eq!(response.status(), 200);
    let log = server.wait_for_log("json-log-1").await;
    let line = log.lines().find(|line| line.contains("json-log-1")).unwrap_or_else(|| panic!("{log}"));
    let record: Value = serde_json::from_str(line).unwrap();
    assert_eq!(record["request_id"], "json-log-1");
    assert_eq!(record["model"], "iris-logistic");
    assert_eq!(record["status"], 200);
    assert_eq!(record["caller"], "anonymous");
    assert!(record["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(record.get("body").is_none(), "no payloads unless asked for");
}

#[tokio::test]
async fn payloads_are_logged_only_when_asked_and_only_for_admitted_requests() {
    let server = format!("log_payloads = true\n[[server.auth.keys]]\nid = \"ops\"\nsha256 = \"{}\"\n", hash(OPS_KEY));
    let mut server = Server::spawn_with_env(
        &bundled_model("iris-logistic", ""),
        &server,
        &[],
        &[("INFERD_LOG", "info,inferd::payload=debug")],
    );
    server.wait_listening().await;
    server.wait_ready().await;
    let mut row = iris_row();
    row["id"] = json!("admitted-payload");
    let response = server
        .client
        .post(server.url("/v2/models/iris-logistic/infer"))
        .header("api-key", OPS_KEY)
        .json(&row)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    row["id"] = json!("refused-payload");
    let response = server.client.post(server.url("/v2/models/iris-logistic/infer")).json(&row).send().await.unwrap();
    assert_eq!(response.status(), 401);
    // The refused request's own log line comes after anything logged of its body.
    let log = server.wait_for_log("status=401").await;
    assert!(log.contains("request body") && log.contains("admitted-payload"), "{log}");
    assert!(log.contains("response body"), "{log}");
    assert!(!log.contains("refused-payload"), "an unauthenticated body was logged:\n{log}");
}

#[test]
fn refuses_to_serve_openly_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("inferd.toml");
    std::fs::write(&config, bundled_model("iris-logistic", "")).unwrap();
    let config = config.display().to_string();
    let (status, stderr) = run_inferd(&["serve", "--config", &config, "--listen", "0.0.0.0:0"], dir.path());
    assert!(!status.success());
    assert!(stderr.contains("without authentication") && stderr.contains("--allow-unauthenticated"), "{stderr}");
}

#[test]
fn hash_key_prints_what_the_configuration_takes() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inferd"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), hash("abc"));
}

/// Writes `head` on a fresh connection and returns what the server sent back before closing,
/// and how long it took to close (`None` if still open after `limit`).
async fn raw_exchange(server: &Server, head: &[u8], limit: Duration) -> (String, Option<Duration>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
    stream.write_all(head).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&answer).into_owned(), Some(started.elapsed())),
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
            Err(_) => return (String::from_utf8_lossy(&answer).into_owned(), None),
        }
    }
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed_at_the_header_timeout() {
    let server = Server::start(&bundled_model("iris-logistic", ""), "header_read_timeout = \"1s\"").await;
    // Headers that never end: closed, with no answer, once the timeout passes.
    let (answer, closed) =
        raw_exchange(&server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", Duration::from_secs(10)).await;
    let closed = closed.expect("a connection whose headers never end is closed");
    assert!(closed >= Duration::from_millis(900) && closed < Duration::from_secs(5), "closed after {closed:?}");
    assert!(answer.is_empty(), "{answer}");
    // A keep-alive connection answered, then idle: closed at the same timeout.
    let (answer, closed) =
        raw_exchange(&server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = closed.expect("an idle keep-alive connection is closed");
    assert!(closed >= Duration::from_millis(900) && closed < Duration::from_secs(5), "closed after {closed:?}");
}

#[tokio::test]
async fn connections_past_max_connections_wait_for_a_place() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&bundled_model("iris-logistic", ""), "max_connections = 2").await;
    // Two connections that hold their places (headers begun, never finished).
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
        stream.write_all(b"GET /v2/health/live HTTP/1.1\r\n").await.unwrap();
        holders.push(stream);
    }
    let probe = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // A third is not served while both places are held...
    let waiting = tokio::spawn({
        let address = server.address;
        async move {
            use tokio::io::AsyncReadExt;
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream.write_all(probe).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection was served past max_connections = 2");
    // ...and is as soon as one closes.
    drop(holders.pop());
    let answer =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("served once a place freed").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The error message of a refusal, checked to be in the shape of its protocol.
async fn refusal_message(response: reqwest::Response, openai: bool) -> (StatusCode, String) {
    let status = response.status();
    let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(kind.as_deref(), Some("application/json"), "{status}");
    let body: Value = response.json().await.unwrap();
    let message = if openai { &body["error"]["message"] } else { &body["error"] };
    (status, message.as_str().unwrap_or_else(|| panic!("not this protocol's shape: {body}")).to_string())
}

#[tokio::test]
async fn malformed_requests_are_refused_in_the_protocol_shape() {
    let server = Server::start_ready(&bundled_model("iris-logistic", ""), "").await;
    for (prefix, openai) in [("/v2/models/", false), ("/v1/models/", true)] {
        let (status, message) = refusal_message(server.get(&format!("{prefix}%FF%FE")).await, openai).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
        assert!(message.contains("UTF-8"), "{message}");
        let long = "m".repeat(20_000);
        let (status, message) = refusal_message(server.get(&format!("{prefix}{long}")).await, openai).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG, "{message}");
        let mut request = server.client.get(server.url(&format!("{prefix}iris-logistic")));
        for index in 0..150 {
            request = request.header(format!("x-filler-{index}"), "1");
        }
        let (status, message) = refusal_message(request.send().await.unwrap(), openai).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{message}");
    }
    // A refusal made by the router itself.
    let response = server.client.delete(server.url("/v2/health/live")).send().await.unwrap();
    let (status, _) = refusal_message(response, false).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn what_hyper_refuses_itself_comes_in_the_protocol_shape_too() {
    let server = Server::start_ready(&bundled_model("iris-logistic", ""), "").await;
    let many_headers: String = (0..900).map(|index| format!("x-filler-{index}: 1\r\n")).collect();
    for (prefix, openai) in [("/v2/models/", false), ("/v1/models/", true)] {
        // A 100,000-character model name (past hyper's own 65,534-byte limit), 900 headers (past
        // the 800 hyper parses), a malformed header line.
        let long = format!("GET {prefix}{} HTTP/1.1\r\nHost: x\r\n\r\n", "m".repeat(100_000));
        let headers = format!("GET {prefix}iris-logistic HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
        let malformed = format!("GET {prefix}iris-logistic HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n");
        for (head, status) in [(long, 414), (headers, 431), (malformed, 400)] {
            let (answer, closed) = raw_exchange(&server, head.as_bytes(), Duration::from_secs(10)).await;
            assert!(closed.is_some(), "the connection stays open after a parse error");
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.to_ascii_lowercase().contains("\r\ncontent-type: application/json"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(length, body.len(), "{answer}");
            let body: Value = serde_json::from_str(body).unwrap();
            let message = if openai { &body["error"]["message"] } else { &body["error"] };
            assert!(message.as_str().is_some_and(|m| !m.is_empty()), "{prefix}: {body}");
        }
    }
    // The server serves on.
    assert_eq!(server.get("/v2/health/ready").await.status(), StatusCode::OK);
}

/// A tabular model that panics on every batch, with a message that must not reach clients.
struct Panicking;

impl inferd_core::TabularModel for Panicking {
    fn schema(&self) -> inferd_core::TabularSchema {
        inferd_core::TabularSchema {
            platform: "test".into(),
            n_features: 2,
            feature_names: None,
            outputs: vec![inferd_core::OutputSpec {
                name: "y".into(),
                kind: inferd_core::ValueKind::Float,
                row_shape: vec![],
                default: true,
            }],
            accepts_non_finite: false,
        }
    }

    fn predict(&mut self, _: &inferd_core::Rows) -> Result<Vec<inferd_core::TabularOutput>, inferd_core::InferError> {
        panic!("secret engine detail 0xdeadbeef");
    }
}

#[tokio::test]
async fn a_panicking_model_answers_500_with_the_request_id_not_the_panic() {
    let registry = Arc::new(inferd_core::ModelRegistry::new(["boom".to_string()], Arc::default()).unwrap());
    registry
        .load("boom", |metrics| {
            let service = inferd_core::TabularService::start(
                "boom",
                Box::new(Panicking),
                inferd_core::BatchPolicy::default(),
                metrics.batcher("boom"),
            )?;
            let task = inferd_core::ModelTask::Tabular(service);
            Ok(inferd_core::ServedModel { name: "boom".into(), device: "cpu".into(), engine: "native".into(), task })
        })
        .join()
        .unwrap();
    let state = inferd_server::AppState::new(registry, inferd_server::ServerSettings::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(inferd_server::serve(listener, state, std::future::pending()));
    let body = json!({ "inputs": [{ "name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0] }] });
    for id in [None, Some("probe-42")] {
        let mut request = reqwest::Client::new().post(format!("http://{address}/v2/models/boom/infer")).json(&body);
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        let response = request.send().await.unwrap();
        let echoed = header(&response, "x-request-id").unwrap().to_string();
        assert_eq!(id.unwrap_or(&echoed), echoed);
        let (status, message) = refusal_message(response, false).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(message.contains(&echoed), "{message}");
        assert!(!message.contains("deadbeef") && !message.contains("panic"), "{message}");
    }
}

#[tokio::test]
async fn a_refused_request_that_expects_100_continue_is_not_asked_for_its_body() {
    let server = Server::start_ready(&bundled_model("iris-logistic", ""), "").await;
    let head = b"POST /v2/models/no-such-model/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n";
    let (answer, _) = raw_exchange(&server, head, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
}
