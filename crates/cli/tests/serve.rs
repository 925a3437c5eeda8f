//! `qwenrt serve` as a process on the tiny fixture models: driven over real TCP, by the official
//! `openai` Python package (scripts/test_openai_client.py), by a client that hangs up mid-stream,
//! and stopped with SIGTERM. The routes themselves are tested in-process (src/serve/tests.rs).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{model_folder, root};
use serde_json::{json, Value};

/// A running server; killed when dropped (a test that fails must not leave it behind).
struct Server {
    child: Child,
    /// `127.0.0.1:PORT`
    address: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra_args: &[&str]) -> Server {
        let model = model_folder();
        let mut child = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0", "--dtype", "f32"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The log goes to stderr; read it all the time, or a full pipe would block the server.
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            let pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut log = stderr.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first_line).unwrap();
        let address = first_line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                panic!("unexpected first line {first_line:?}; stderr: {}", stderr.lock().unwrap())
            })
            .to_owned();
        Server { child, address, stderr }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// One HTTP/1.1 request on a fresh connection; returns the status and the body.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    }

    fn json(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, body) = self.request(method, path, body);
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Whether `python3 -c "import openai"` works. scripts/test installs the package and sets
/// QWENRT_REQUIRE_OPENAI=1, so CI fails instead of skipping when it is missing.
fn openai_available() -> bool {
    let found = Command::new(python())
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("QWENRT_REQUIRE_OPENAI").is_none(),
            "QWENRT_REQUIRE_OPENAI is set but `{} -c 'import openai'` fails",
            python()
        );
        eprintln!(
            "skipping the end-to-end test: `{} -c 'import openai'` fails (pip install -r scripts/requirements-test.txt)",
            python()
        );
    }
    found
}

#[test]
fn the_official_openai_client_works_end_to_end() {
    if !openai_available() {
        return;
    }
    let embeddings = common::embed_model_folder();
    let server = Server::start(&[
        "--parallel",
        "2",
        "--api-key",
        "test-key",
        "--embedding-model",
        embeddings.to_str().unwrap(),
    ]);
    let out = Command::new(python())
        .arg(root().join("scripts/test_openai_client.py"))
        .args(["--base-url", &format!("http://{}/v1", server.address)])
        .args(["--api-key", "test-key", "--embedding-model", "tiny-embed", "--parallel", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the client script failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(stdout.contains("ok: 4 parallel clients"), "{stdout}");
    // One log line per request: method, path, status, tokens, duration.
    let log = server.log();
    assert!(
        log.lines().any(|l| l.starts_with("POST /v1/chat/completions 200 ")
            && l.contains(" tokens (")
            && l.ends_with(" ms")),
        "{log}"
    );
    assert!(log.contains("GET /v1/models 401"), "{log}");
}

/// A client that hangs up mid-stream cancels its generation: the only slot is free at once and
/// the next request is served.
#[test]
fn a_client_that_hangs_up_frees_its_slot() {
    let server = Server::start(&["--parallel", "1", "--ctx", "200000"]);
    // End tokens banned: this answer would take minutes.
    let body = json!({"messages": [{"role": "user", "content": "Talk forever"}], "max_tokens": 150_000,
        "stream": true, "temperature": 0, "logit_bias": {"248044": -100, "248046": -100}})
    .to_string();
    let mut stream = TcpStream::connect(&server.address).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while received.windows(5).filter(|w| w == b"data:").count() < 5 {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buffer[..n]);
    }
    let (_, health) = server.json("GET", "/health", None);
    assert_eq!(health["slots_processing"], 1, "{health}");
    drop(stream);

    let hung_up = Instant::now();
    loop {
        let (_, health) = server.json("GET", "/health", None);
        if health["slots_processing"] == 0 {
            break;
        }
        assert!(hung_up.elapsed() < Duration::from_secs(20), "the slot is still busy: {health}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, answer) = server.json(
        "POST",
        "/v1/chat/completions",
        Some(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(server.log().contains("(client disconnected)"), "{}", server.log());
}

#[cfg(unix)]
#[test]
fn sigterm_shuts_the_server_down_gracefully() {
    let mut server = Server::start(&[]);
    assert_eq!(server.request("GET", "/health", None).0, 200);
    let pid = server.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}; log:\n{}", server.log());
    assert!(server.log().contains("shutting down"), "{}", server.log());
}

#[test]
fn bad_flags_are_refused() {
    let out = common::qwenrt_output(&["serve", "--model", "/nonexistent-model-folder", "--port", "0"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent-model-folder"));
}

/// A body declared larger than `--max-body-mib` is refused at once: the client that asked
/// `Expect: 100-continue` gets the 413 instead of a go-ahead, and nothing is read.
#[test]
fn an_oversized_body_is_refused_before_it_is_sent() {
    let server = Server::start(&["--max-body-mib", "1"]);
    let mut stream = TcpStream::connect(&server.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
}

/// Reads from `stream` until the server closes it (or 10 s pass); what it sent, or None if it
/// kept the connection open.
fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&received).into_owned())
            }
            Err(_) => return None,
        }
    }
}

/// Half-sent requests (slowloris) hold a connection for `--read-timeout` only; past
/// `--max-connections` a connection is closed unread, and the server answers again once the
/// slow ones are gone. An idle keep-alive connection and a body that stops half-way end too.
#[test]
fn slow_and_idle_connections_are_bounded() {
    let server = Server::start(&["--read-timeout", "1", "--max-connections", "4"]);
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = TcpStream::connect(&server.address).unwrap();
            write!(stream, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&server.address).unwrap();
    let _ = write!(extra, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = read_until_closed(&mut extra).expect("the connection over the limit is closed");
    assert!(!answer.contains("200"), "served past the limit: {answer:?}");
    for stream in &mut slow {
        assert!(read_until_closed(stream).is_some(), "a half-sent request kept its connection");
    }
    assert!(started.elapsed() < Duration::from_secs(8), "closed after {:?}", started.elapsed());
    assert_eq!(server.request("GET", "/health", None).0, 200);

    // Keep-alive: answered, then closed once idle for the timeout.
    let mut idle = TcpStream::connect(&server.address).unwrap();
    write!(idle, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut idle).expect("an idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    // A body that stops half-way: 408 after the timeout.
    let mut partial = TcpStream::connect(&server.address).unwrap();
    write!(
        partial,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"messages\""
    )
    .unwrap();
    let answer = read_until_closed(&mut partial).expect("a stalled body ends its request");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}
