//! The Open Inference Protocol API of the real binary, over a real socket: health, metadata,
//! inference in JSON and binary form against scikit-learn's golden outputs, batching, metrics,
//! and every kind of bad request.

#![allow(clippy::unwrap_used)]

mod common;

use common::{BUNDLED, Server, bundled_model, bundled_models, repo};
use serde_json::{Value, json};

fn golden(name: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("tests/golden").join(format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn flat(value: &Value) -> Vec<f64> {
    match value {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        Value::Null => vec![f64::NAN],
        other => panic!("not a number: {other}"),
    }
}

fn assert_close(name: &str, ours: &[f64], reference: &[f64], tolerance: f64) {
    assert_eq!(ours.len(), reference.len(), "{name}");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let diff = (a - b).abs();
        assert!(diff <= tolerance || diff <= tolerance * b.abs(), "{name}[{i}]: ours {a}, reference {b}");
    }
}

fn infer_body(golden: &Value, outputs: &[&str]) -> Value {
    let rows = golden["inputs"].as_array().unwrap();
    let width = rows[0].as_array().unwrap().len();
    let outputs: Vec<Value> = outputs.iter().map(|name| json!({ "name": name })).collect();
    json!({
        "id": "golden",
        "inputs": [{ "name": "input", "shape": [rows.len(), width], "datatype": "FP64", "data": golden["inputs"] }],
        "outputs": outputs,
    })
}

#[tokio::test]
async fn health_and_metadata() {
    let server = Server::start_ready(&bundled_models(), "").await;
    let live = server.get("/v2/health/live").await;
    assert_eq!(live.status(), 200);
    let ready: Value = server.get("/v2/health/ready").await.json().await.unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["models"]["iris-logistic"], "ready");

    let meta: Value = server.get("/v2").await.json().await.unwrap();
    assert_eq!(meta["name"], "inferd");
    assert!(meta["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));

    for path in ["/v2/models/iris-logistic", "/v2/models/iris-logistic/versions/1"] {
        let meta: Value = server.get(path).await.json().await.unwrap();
        assert_eq!(meta["name"], "iris-logistic");
        assert_eq!(meta["platform"], "inferd_linear");
        assert_eq!(meta["versions"], json!(["1"]));
        assert_eq!(meta["inputs"], json!([{ "name": "input", "datatype": "FP64", "shape": [-1, 4] }]));
        assert_eq!(meta["outputs"][0], json!({ "name": "probabilities", "datatype": "FP64", "shape": [-1, 3] }));
        assert_eq!(meta["parameters"]["device"], "cpu", "the chosen device is shown in metadata");
    }
    assert_eq!(server.get("/v2/models/iris-logistic/ready").await.status(), 200);
    assert_eq!(server.get("/v2/models/iris-logistic/versions/1/ready").await.status(), 200);

    let missing = server.get("/v2/models/nope").await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("'nope'"));
    assert_eq!(server.get("/v2/models/nope/ready").await.status(), 404);
    assert_eq!(server.get("/v2/models/iris-logistic/versions/2").await.status(), 404);
}

#[tokio::test]
async fn json_inference_matches_the_reference_libraries() {
    let server = Server::start_ready(&bundled_models(), "").await;
    for name in BUNDLED {
        let golden = golden(name);
        let outputs: Vec<&str> = golden["outputs"].as_object().unwrap().keys().map(String::as_str).collect();
        let url = server.url(&format!("/v2/models/{name}/infer"));
        // Missing values travel as JSON null.
        let response = server.client.post(url).json(&infer_body(&golden, &outputs)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        assert!(response.headers().contains_key("server-timing"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model_name"], name);
        assert_eq!(body["id"], "golden");
        for (output, expected) in body["outputs"].as_array().unwrap().iter().zip(&outputs) {
            assert_eq!(output["name"], *expected);
            let reference = &golden["outputs"][expected];
            if *expected == "label" {
                assert_eq!(output["datatype"], "INT64");
                assert_eq!(output["data"], *reference, "{name} labels");
            } else {
                assert_eq!(output["datatype"], "FP64", "FP64 in, FP64 out");
                assert_close(&format!("{name}.{expected}"), &flat(&output["data"]), &flat(reference), 1e-5);
            }
        }
    }
}

#[tokio::test]
async fn binary_tensors_round_trip() {
    let server = Server::start_ready(&bundled_model("iris-logistic", ""), "").await;
    let golden = golden("iris-logistic");
    let rows = flat(&golden["inputs"]);
    let header = json!({
        "inputs": [{ "name": "input", "shape": [rows.len() / 4, 4], "datatype": "FP32",
                     "parameters": { "binary_data_size": rows.len() * 4 } }],
        "outputs": [{ "name": "label", "parameters": { "binary_data": true } },
                    { "name": "probabilities", "parameters": { "binary_data": false } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for value in &rows {
        body.extend((*value as f32).to_le_bytes());
    }
    let response = server
        .client
        .post(server.url("/v2/models/iris-logistic/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let length: usize = response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = response.bytes().await.unwrap();
    let json: Value = serde_json::from_slice(&bytes[..length]).unwrap();
    assert_eq!(json["outputs"][0]["name"], "label");
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], rows.len() / 4 * 8);
    let labels: Vec<i64> = bytes[length..].chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let expected: Vec<i64> =
        golden["outputs"]["label"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(labels, expected);
    assert_eq!(json["outputs"][1]["datatype"], "FP32", "FP32 in, FP32 out");
    // Inputs rounded to f32 still land within 1e-5 of scikit-learn's f64 answers here.
    assert_close("probabilities", &flat(&json["outputs"][1]["data"]), &flat(&golden["outputs"]["probabilities"]), 1e-5);
}

#[tokio::test]
async fn batches_form_under_concurrency_and_are_observable() {
    let batching = "batching = { max_batch_size = 16, max_queue_delay = \"20ms\" }";
    let server = Server::start_ready(&bundled_model("iris-logistic", batching), "").await;
    let request =
        json!({ "inputs": [{ "name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] }] });
    let tasks: Vec<_> = (0..48)
        .map(|_| {
            let client = server.client.clone();
            let url = server.url("/v2/models/iris-logistic/infer");
            let request = request.clone();
            tokio::spawn(async move { client.post(url).json(&request).send().await.unwrap() })
        })
        .collect();
    let mut sizes = Vec::new();
    for task in tasks {
        let response = task.await.unwrap();
        assert_eq!(response.status(), 200);
        sizes.push(response.headers()["inferd-batch-size"].to_str().unwrap().parse::<usize>().unwrap());
    }
    assert!(sizes.iter().all(|&size| size <= 16), "{sizes:?}");
    assert!(sizes.iter().any(|&size| size > 1), "batches formed: {sizes:?}");

    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(
        r#"inferd_requests_total{endpoint="/v2/models/{name}/infer",model="iris-logistic",status="200"} 48"#
    ));
    let batches = metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"inferd_batch_size_count{model="iris-logistic"} "#))
        .unwrap();
    assert!(batches.parse::<u64>().unwrap() < 48, "fewer batches than requests: {batches}");
    assert!(metrics.contains(r#"inferd_queue_duration_seconds_count{model="iris-logistic"} 48"#));
    assert!(metrics.contains(r#"inferd_model_ready{model="iris-logistic"} 1"#));
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let server = Server::start_ready(&bundled_models(), "max_body_bytes = 100000").await;
    let infer = "/v2/models/iris-logistic/infer";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (infer, "{not json".into(), 400, "not a valid inference request"),
        (infer, r#"{"inputs": []}"#.into(), 400, "exactly one input"),
        (infer, r#"{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#.into(), 400, "unknown input 'x'"),
        (infer, r#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}"#.into(), 400, "expected 4 features"),
        (infer, r#"{"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#.into(), 400, "8 elements but data has 4"),
        (infer, r#"{"inputs": [{"name": "input", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#.into(), 400, "must have shape [rows, 4]"),
        (infer, r#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}"#.into(), 400, "must be numeric"),
        (infer, r#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, null, 3, 4]}]}"#.into(), 400, "missing (NaN)"),
        (infer, r#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "outputs": [{"name": "proba"}]}"#.into(), 400, "unknown output 'proba'"),
        (infer, r#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "parameters": {"timeout": 1}}"#.into(), 504, "deadline exceeded"),
        ("/v2/models/nope/infer", r#"{"inputs": []}"#.into(), 404, "'nope' is not served here"),
        ("/v2/models/iris-logistic/versions/9/infer", r#"{"inputs": []}"#.into(), 404, "no version '9'"),
        (infer, format!(r#"{{"inputs": [], "pad": "{}"}}"#, "x".repeat(200_000)), 413, "length limit"),
        ("/v2/nothing/here", "{}".into(), 404, "no route"),
    ];
    for (path, body, status, message) in cases {
        let response = server.post(path, body).await;
        assert_eq!(response.status(), status, "{path} {message}");
        let error: Value = response.json().await.unwrap();
        let text = error["error"].as_str().unwrap();
        assert!(text.contains(message), "{text:?} should mention {message:?}");
    }
    let wrong_method = server.client.delete(server.url("/v2/health/live")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.json::<Value>().await.unwrap()["error"].is_string());
    // The server keeps serving after all of that.
    let ok = server
        .post(infer, r#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": [5, 3, 1, 0]}]}"#)
        .await;
    assert_eq!(ok.status(), 200);
}

/// A v2 request of `rows` rows of 30 features in the binary tensor extension: its JSON header
/// and the whole body.
fn binary_rows(rows: usize) -> (String, Vec<u8>) {
    let header = json!({ "inputs": [{ "name": "input", "shape": [rows, 30], "datatype": "FP64",
                                      "parameters": { "binary_data_size": rows * 30 * 8 } }] })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(std::iter::repeat_n(1.0f64.to_le_bytes(), rows * 30).flatten());
    (header, body)
}

#[tokio::test]
async fn a_request_that_would_wait_past_max_queue_time_is_refused_and_counted() {
    // Batches of one request of 10,000 rows, tens of milliseconds each on one thread, and a
    // queue-time target of 1 ms: once the model's speed is known, a burst can queue only what
    // computes within 1 ms, and the rest is refused at once.
    let settings = "threads = 1\nbatching = { max_batch_size = 1, max_queue_time = \"1ms\" }";
    let server = Server::start_ready(&bundled_model("breast-cancer-lightgbm", settings), "").await;
    let (header, body) = binary_rows(10_000);
    let send = |server: &Server| {
        server
            .client
            .post(server.url("/v2/models/breast-cancer-lightgbm/infer"))
            .header("Inference-Header-Content-Length", header.len())
            .body(body.clone())
            .send()
    };
    assert_eq!(send(&server).await.unwrap().status(), 200, "the first request teaches the model's speed");
    let tasks: Vec<_> = (0..8).map(|_| tokio::spawn(send(&server))).collect();
    let (mut served, mut refused) = (0, 0);
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        match response.status().as_u16() {
            200 => served += 1,
            429 => {
                let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                let error: Value = response.json().await.unwrap();
                let message = error["error"].as_str().unwrap();
                assert!(message.contains("max_queue_time of 1 ms"), "{message}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(served >= 1 && refused >= 1, "served {served}, refused {refused}");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let line = |series: &str| metrics.lines().find(|line| line.starts_with(series)).map(str::to_string);
    let counted = line(r#"inferd_rejected_requests_total{reason="queue_time"}"#).unwrap();
    assert!(counted.ends_with(&format!(" {refused}")), "{counted}");
    assert!(line(r#"inferd_admission_limit{model="breast-cancer-lightgbm"}"#).is_some(), "{metrics}");
    // The burst is over: the next request is admitted.
    assert_eq!(send(&server).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    // One request at a time, one waiting, and a model slow enough per request (a 100-tree
    // LightGBM model on one thread: tens of milliseconds for 10,000 rows) that a burst must
    // overflow the queue.
    let settings = "threads = 1\nbatching = { max_batch_size = 1, queue_capacity = 1 }";
    let server = Server::start_ready(&bundled_model("breast-cancer-lightgbm", settings), "").await;
    let (header, body) = binary_rows(10_000);
    let mut overloaded = 0;
    for _round in 0..5 {
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let request = server
                    .client
                    .post(server.url("/v2/models/breast-cancer-lightgbm/infer"))
                    .header("Inference-Header-Content-Length", header.len())
                    .body(body.clone());
                tokio::spawn(async move { request.send().await.unwrap() })
            })
            .collect();
        for task in tasks {
            let response = task.await.unwrap();
            match response.status().as_u16() {
                200 => {}
                429 => {
                    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                    assert!((1..=60).contains(&retry), "Retry-After {retry}");
                    let error: Value = response.json().await.unwrap();
                    assert!(error["error"].as_str().unwrap().contains("overloaded"));
                    overloaded += 1;
                }
                other => panic!("unexpected status {other}"),
            }
        }
        if overloaded > 0 {
            break;
        }
    }
    assert!(overloaded > 0, "a burst of 24 heavy requests never overflowed a queue of 1");
}
