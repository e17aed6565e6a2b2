//! Starts the real `inferd` binary on a free port with a configuration written for the test,
//! and stops it when dropped.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `[[models]]` entry for a bundled model, with extra TOML lines.
pub fn bundled_model(name: &str, extra: &str) -> String {
    let (kind, file) = if name.ends_with("xgboost") {
        ("xgboost", "model.json")
    } else if name.ends_with("lightgbm") {
        ("lightgbm", "model.txt")
    } else {
        ("linear", "model.json")
    };
    let path = repo().join("models").join(name).join(file);
    format!("[[models]]\nname = \"{name}\"\nkind = \"{kind}\"\npath = \"{}\"\n{extra}\n", path.display())
}

/// A `[[models]]` entry for the embedding model `models/fetch-models.sh` fetches, with extra
/// TOML lines.
pub fn embedding_model(extra: &str) -> String {
    let path = repo().join("models/all-minilm-l6-v2");
    assert!(path.join("model.safetensors").is_file(), "{} is missing: run models/fetch-models.sh", path.display());
    format!("[[models]]\nname = \"all-minilm-l6-v2\"\nkind = \"embedding\"\npath = \"{}\"\n{extra}\n", path.display())
}

/// A `[[models]]` entry for the chat model `models/fetch-models.sh` fetches (SmolLM2-135M
/// Instruct, GGUF), with extra TOML lines.
pub fn llm_model(extra: &str) -> String {
    let path = repo().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run models/fetch-models.sh", path.display());
    format!(
        "[[models]]\nname = \"smollm2-135m-instruct\"\nkind = \"llm\"\npath = \"{}\"\ndevice = \"cpu\"\n{extra}\n",
        path.display()
    )
}

/// Every bundled tabular model.
pub const BUNDLED: [&str; 9] = [
    "iris-logistic",
    "breast-cancer-logistic",
    "diabetes-linear",
    "breast-cancer-xgboost",
    "iris-xgboost",
    "diabetes-xgboost",
    "breast-cancer-lightgbm",
    "iris-lightgbm",
    "diabetes-lightgbm",
];

/// Every bundled model with default settings.
pub fn bundled_models() -> String {
    BUNDLED.map(|name| bundled_model(name, "")).concat()
}

pub struct Server {
    child: Child,
    /// Where the server listens: the operating system picks a free port (`--listen
    /// 127.0.0.1:0`), so that servers started in parallel never race for one; known once
    /// [`Server::wait_listening`] has returned.
    pub address: SocketAddr,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

/// The address in the server's `listening` line (text or JSON logs), once it has logged it.
fn listening_address(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|line| line.contains("listening"))?;
    let (_, rest) = line.split_once("address=").or_else(|| line.split_once("\"address\":\""))?;
    rest.split(|c: char| c.is_whitespace() || c == '"').next()?.parse().ok()
}

impl Server {
    /// Starts `inferd serve` with this configuration (a `[server]` table is added for the port
    /// unless `server` is given) and extra arguments, without waiting for readiness.
    pub fn spawn(models: &str, server: &str, args: &[&str]) -> Server {
        Server::spawn_with_env(models, server, args, &[])
    }

    /// Like [`Server::spawn`], with extra environment variables for the process.
    pub fn spawn_with_env(models: &str, server: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("inferd.toml");
        std::fs::write(&config, format!("[server]\n{server}\n\n{models}")).unwrap();
        let mut with_config = vec!["--config", config.to_str().unwrap()];
        with_config.extend(args);
        Server::launch(&with_config, env, dir)
    }

    /// Starts `inferd serve` with these arguments and environment only, no configuration file
    /// (as a platform that names the model on the command line starts it).
    pub fn spawn_without_config(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(args, env, tempfile::tempdir().unwrap())
    }

    fn launch(args: &[&str], env: &[(&str, &str)], dir: tempfile::TempDir) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_inferd"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .env_remove("INFERD_DEVICE")
            .env_remove("INFERD_CONFIG")
            .env_remove("INFERD_MODELS")
            .env("INFERD_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let address = SocketAddr::from(([127, 0, 0, 1], 0));
        Server { child, address, client, _dir: dir, log }
    }

    /// Starts the server and waits until it listens.
    pub async fn start(models: &str, server: &str) -> Server {
        let mut server = Server::spawn(models, server, &[]);
        server.wait_listening().await;
        server
    }

    /// Starts the server and waits until every model is ready.
    pub async fn start_ready(models: &str, server: &str) -> Server {
        let server = Server::start(models, server).await;
        server.wait_ready().await;
        server
    }

    /// Waits until every model is ready.
    pub async fn wait_ready(&self) {
        let started = Instant::now();
        while self.get("/v2/health/ready").await.status() != 200 {
            assert!(started.elapsed() < Duration::from_secs(30), "not ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the server has logged the address it listens on, and takes it.
    pub async fn wait_listening(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("inferd exited early ({status}):\n{}", self.log());
            }
            if let Some(address) = listening_address(&self.log()) {
                self.address = address;
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "inferd did not listen:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client.post(self.url(path)).body(body).send().await.unwrap()
    }

    /// Posts a JSON body.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.unwrap()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the server's log holds `needle` (what it logs is the event to wait on, not a
    /// sleep), and returns the log.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never logged {needle:?}:\n{log}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (e.g. `HUP`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "inferd did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `router` over HTTPS with the test certificate (`tests/fixtures/ops/tls.cert.pem`,
/// for localhost and 127.0.0.1), as a stand-in for an identity provider or a collector;
/// returns its base URL.
pub async fn https_stand_in(router: axum::Router) -> String {
    let fixtures = repo().join("tests/fixtures/ops");
    let tls = inferd::server::TlsSettings { cert: fixtures.join("tls.cert.pem"), key: fixtures.join("tls.key.pem") };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = inferd::server::TlsListener::new(listener, tls.acceptor().unwrap()).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("https://localhost:{port}")
}

/// The test certificate, to name as `ca_file` where a stand-in from [`https_stand_in`] is called.
pub fn test_ca_file() -> String {
    repo().join("tests/fixtures/ops/tls.cert.pem").display().to_string()
}

/// Runs `inferd` to completion with these arguments; returns its status and stderr.
pub fn run_inferd(args: &[&str], dir: &Path) -> (ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_inferd"))
        .args(args)
        .current_dir(dir)
        .env_remove("INFERD_DEVICE")
        .env_remove("INFERD_CONFIG")
        .output()
        .unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// A chat request for `model` with one user message, greedy, with extra fields.
pub fn chat_request(model: &str, content: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut body =
        serde_json::json!({ "model": model, "messages": [{ "role": "user", "content": content }], "temperature": 0 });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

/// Reads a streamed response to its end: the `data:` payloads, `[DONE]` included.
pub async fn sse_events(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            event.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {event}")).to_string()
        })
        .collect()
}

/// A streamed chat completion, read to its end.
pub struct ChatStream {
    /// The chunks' non-empty content deltas, in order.
    pub deltas: Vec<String>,
    /// The finish reason.
    pub finish: String,
    /// The usage chunk's usage, when one came.
    pub usage: Option<serde_json::Value>,
}

impl ChatStream {
    /// Reads a chat stream's events (from [`sse_events`]), checking the chunks' shape.
    pub fn read(events: &[String]) -> ChatStream {
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<serde_json::Value> =
            events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let mut stream = ChatStream { deltas: Vec::new(), finish: String::new(), usage: None };
        for chunk in &chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], chunks[0]["id"]);
            if let Some(choice) = chunk["choices"].get(0) {
                match choice["delta"]["content"].as_str() {
                    Some(delta) if !delta.is_empty() => stream.deltas.push(delta.to_string()),
                    _ => {}
                }
                if let Some(reason) = choice["finish_reason"].as_str() {
                    stream.finish = reason.to_string();
                }
            }
            if !chunk["usage"].is_null() {
                stream.usage = Some(chunk["usage"].clone());
            }
        }
        stream
    }

    /// The streamed text.
    pub fn text(&self) -> String {
        self.deltas.concat()
    }
}
