//! The server's life: starting on the bundled defaults, readiness while one model fails, device
//! errors at start, and graceful shutdown with a request in flight.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, bundled_model, repo, run_inferd};
use serde_json::Value;

#[tokio::test]
async fn a_failed_model_leaves_the_others_serving() {
    let models = format!(
        "{}[[models]]\nname = \"broken\"\nkind = \"linear\"\npath = \"does-not-exist.json\"\n",
        bundled_model("iris-logistic", "")
    );
    let server = Server::start(&models, "").await;
    // Wait for both loads to settle.
    let mut ready: Value = Value::Null;
    for _ in 0..500 {
        ready = server.get("/v2/health/ready").await.json().await.unwrap();
        if ready["models"]["broken"] != "loading" && ready["models"]["iris-logistic"] != "loading" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["models"]["iris-logistic"], "ready");
    let reason = ready["models"]["broken"].as_str().unwrap();
    assert!(reason.starts_with("failed: cannot load model") && reason.contains("does-not-exist.json"), "{reason}");
    assert_eq!(server.get("/v2/health/ready").await.status(), 503);
    assert_eq!(server.get("/v2/models/broken/ready").await.status(), 503);
    assert_eq!(server.get("/v2/models/iris-logistic/ready").await.status(), 200);

    let body = r#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#;
    assert_eq!(server.post("/v2/models/iris-logistic/infer", body).await.status(), 200);
    let broken = server.post("/v2/models/broken/infer", body).await;
    assert_eq!(broken.status(), 503);
    let error: Value = broken.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("failed to load"));
}

#[test]
fn asking_for_cuda_without_it_stops_the_start_naming_the_model() {
    if cfg!(feature = "cuda") {
        // A CUDA build on a GPU machine can open the device.
        eprintln!("skipped: this is a CUDA build, which may find a device");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("inferd.toml");
    std::fs::write(&config, bundled_model("iris-logistic", "device = \"cuda:0\"")).unwrap();
    let (status, stderr) = run_inferd(&["serve", "--config", config.to_str().unwrap()], dir.path());
    assert!(!status.success());
    assert!(stderr.contains("model 'iris-logistic'") && stderr.contains("no CUDA support"), "{stderr}");
}

#[test]
fn without_a_config_it_explains_where_the_defaults_live() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = run_inferd(&["serve"], dir.path());
    assert!(!status.success());
    assert!(stderr.contains("models/default.toml"), "{stderr}");
}

#[tokio::test]
async fn serve_without_arguments_serves_the_bundled_models() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_inferd"))
        .arg("serve")
        .current_dir(repo())
        .env_remove("INFERD_CONFIG")
        .env_remove("INFERD_DEVICE")
        // The default address may be taken on a developer's machine; the env override is part
        // of what is tested.
        .env("INFERD_LISTEN", "127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    // Killed however the test ends, so that a failed assertion leaves no server behind.
    let child = KillOnDrop(child);
    let mut address = None;
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0 {
        if let Some(rest) = line.split("address=").nth(1) {
            address = Some(rest.split_whitespace().next().unwrap().to_string());
            break;
        }
        line.clear();
    }
    let address = address.expect("the server logs its address");
    let client = reqwest::Client::new();
    let mut ready = Value::Null;
    for _ in 0..3000 {
        ready = client.get(format!("http://{address}/v2/health/ready")).send().await.unwrap().json().await.unwrap();
        if ready["ready"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let models = ready["models"].as_object().unwrap();
    // The tabular models and the fetched embedding and chat models.
    assert_eq!(models.len(), common::BUNDLED.len() + 2, "{ready}");
    assert!(models.contains_key("all-minilm-l6-v2"), "{ready}");
    assert!(models.contains_key("smollm2-135m-instruct"), "{ready}");
    assert!(models.values().all(|state| state == "ready"), "{ready}");
    drop(child);
}

/// A child process killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    let mut server = Server::start_ready(&bundled_model("iris-logistic", ""), "drain_timeout = \"10s\"").await;
    let body = r#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}"#;
    // Start a request and leave it half sent, so it is in flight when the signal arrives.
    let mut stream = TcpStream::connect(server.address).unwrap();
    let head =
        format!("POST /v2/models/iris-logistic/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body.as_bytes()[..10]).unwrap();
    let started = Instant::now();
    while !server.get("/metrics").await.text().await.unwrap().contains("\ninferd_requests_in_flight 1\n") {
        assert!(started.elapsed() < Duration::from_secs(10), "the half-sent request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    server.terminate();
    let started = Instant::now();
    while TcpStream::connect(server.address).is_ok() {
        assert!(started.elapsed() < Duration::from_secs(10), "new connections still accepted while draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    stream.write_all(&body.as_bytes()[10..]).unwrap();
    let mut response = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "the in-flight request completed: {response}");
    assert!(response.contains("\"probabilities\""));

    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(server.log().contains("draining"));
}

#[tokio::test]
async fn during_the_drain_delay_readiness_fails_while_requests_are_served() {
    let mut server = Server::start_ready(&bundled_model("iris-logistic", ""), "drain_delay = \"1500ms\"").await;
    server.terminate();
    let mut ready = Value::Null;
    for _ in 0..100 {
        let response = server.get("/v2/health/ready").await;
        if response.status() == 503 {
            ready = response.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready["draining"], true, "{ready}");
    assert!(ready["error"].as_str().unwrap().contains("draining"));
    let body = r#"{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}"#;
    assert_eq!(server.post("/v2/models/iris-logistic/infer", body).await.status(), 200, "still serving");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_truncated_model_file_fails_with_its_name_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(repo().join("models/breast-cancer-lightgbm/model.txt")).unwrap();
    let truncated = dir.path().join("cut.txt");
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let models = format!("[[models]]\nname = \"cut\"\nkind = \"lightgbm\"\npath = \"{}\"\n", truncated.display());
    let server = Server::start(&models, "").await;
    let mut reason = String::new();
    for _ in 0..500 {
        let ready: Value = server.get("/v2/health/ready").await.json().await.unwrap();
        reason = ready["models"]["cut"].as_str().unwrap().to_string();
        if reason != "loading" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reason.contains("cut.txt") && reason.contains("truncated"), "{reason}");
}
