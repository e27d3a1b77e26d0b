//! The OpenAI speech client against a scripted HTTP/1.1 server.
//!
//! `ScriptedServer` stands in for OpenAI's server at the HTTP level (there is no internet
//! here): a real TCP socket on 127.0.0.1 that answers each connection from a per-test
//! script — status, headers, chunked body parts with pauses, a hang or a dropped
//! connection — and records every request as it arrived on the wire. The client under test
//! is the real one (reqwest, real sockets, real timers).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::tts::openai::{OpenAiClient, OpenAiConfig};
use herald::tts::{ApiKey, AudioFormat, SpeechRequest, SpeechSource, SpeechStream, TtsError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "sk-test-Zq8SECRETkey0123456789";

/// Hang guard for every await that could block: generous, never a performance assertion.
const GUARD: Duration = Duration::from_secs(30);

/// One part of a scripted response body.
enum Step {
    /// Send these bytes as one HTTP chunk.
    Send(Vec<u8>),
    /// Pause before the next step.
    Wait(Duration),
    /// Stop sending but keep the connection open.
    Hang,
    /// Close the connection without finishing the body.
    Drop,
}

/// How the server answers one connection.
enum Reply {
    /// Status line and headers, then the body steps (chunked), then the terminating chunk.
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        steps: Vec<Step>,
    },
    /// Read the request and never answer.
    HangBeforeHeaders,
}

/// A request as the server received it.
#[derive(Debug, Clone)]
struct Recorded {
    request_line: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct ScriptedServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    /// Serves connection N from `script[N]`; unscripted connections get a 418 so a test
    /// that sends more requests than expected fails visibly.
    async fn start(script: Vec<Reply>) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Vec<Option<Reply>>>> =
            Arc::new(Mutex::new(script.into_iter().map(Some).collect()));
        let counter = Arc::new(AtomicUsize::new(0));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let reply = script.lock().unwrap().get_mut(n).and_then(Option::take);
                let recorded = recorded.clone();
                tokio::spawn(serve(socket, reply, recorded));
            }
        });
        ScriptedServer {
            addr,
            requests,
            task,
        }
    }

    fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(mut socket: TcpStream, reply: Option<Reply>, recorded: Arc<Mutex<Vec<Recorded>>>) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    recorded.lock().unwrap().push(request);
    let reply = reply.unwrap_or_else(|| respond(418, &[], "unscripted connection"));
    match reply {
        Reply::HangBeforeHeaders => std::future::pending::<()>().await,
        Reply::Respond {
            status,
            headers,
            steps,
        } => {
            let mut head = format!("HTTP/1.1 {status} Scripted\r\n");
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for step in steps {
                match step {
                    Step::Send(bytes) => {
                        let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
                        chunk.extend_from_slice(&bytes);
                        chunk.extend_from_slice(b"\r\n");
                        if socket.write_all(&chunk).await.is_err() {
                            return;
                        }
                        let _ = socket.flush().await;
                    }
                    Step::Wait(d) => tokio::time::sleep(d).await,
                    Step::Hang => std::future::pending::<()>().await,
                    Step::Drop => return,
                }
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
            let _ = socket.shutdown().await;
        }
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end..].to_vec();
    while body.len() < len {
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Recorded {
        request_line,
        headers,
        body,
    })
}

/// A complete response with a single-chunk body.
fn respond(status: u16, headers: &[(&'static str, &str)], body: &str) -> Reply {
    Reply::Respond {
        status,
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        steps: vec![Step::Send(body.as_bytes().to_vec())],
    }
}

fn openai_error(message: &str, kind: &str, code: &str) -> String {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        .to_string()
}

/// The start of an Ogg page (the client checks only the capture pattern; decoding is
/// the codec's job).
fn ogg_bytes(len: usize) -> Vec<u8> {
    let mut v = b"OggS\x00\x02".to_vec();
    v.extend((0..len.saturating_sub(6)).map(|i| (i % 251) as u8));
    v
}

fn ok_ogg(chunks: Vec<Vec<u8>>) -> Reply {
    Reply::Respond {
        status: 200,
        headers: vec![("Content-Type", "audio/ogg".into())],
        steps: chunks.into_iter().map(Step::Send).collect(),
    }
}

fn config(server_base: String) -> OpenAiConfig {
    OpenAiConfig {
        api_base: server_base,
        api_key: Some(ApiKey::new(KEY)),
        connect_timeout: Duration::from_secs(5),
        first_byte_timeout: Duration::from_secs(10),
        // Far beyond what the retries of these tests take: only the deadline tests meet it.
        first_audio_deadline: Duration::from_secs(120),
        stall_timeout: Duration::from_secs(10),
        max_attempts: 4,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    }
}

fn request(format: AudioFormat) -> SpeechRequest {
    SpeechRequest {
        model: "gpt-4o-mini-tts".into(),
        voice: "coral".into(),
        input: "The kettle has boiled.".into(),
        format,
        speed: None,
        instructions: None,
    }
}

async fn open(client: &OpenAiClient, req: &SpeechRequest) -> Result<SpeechStream, TtsError> {
    tokio::time::timeout(GUARD, client.open(req))
        .await
        .expect("open() hung")
}

/// An Opus request to `server` with the default config; expects an error (see `open_err`).
async fn opus_err(server: &ScriptedServer) -> TtsError {
    let client = OpenAiClient::new(config(server.base())).unwrap();
    open_err(&client, &request(AudioFormat::Opus)).await
}

/// Opens and expects an error; checks the key leaks into neither Display nor Debug.
async fn open_err(client: &OpenAiClient, req: &SpeechRequest) -> TtsError {
    match open(client, req).await {
        Ok(s) => panic!(
            "expected an error, got a stream after {} attempts",
            s.attempts
        ),
        Err(e) => {
            assert_no_key(&e);
            e
        }
    }
}

fn assert_no_key(e: &TtsError) {
    let shown = format!("{e}");
    let debug = format!("{e:?}");
    assert!(!shown.contains(KEY), "key in Display: {shown}");
    assert!(!debug.contains(KEY), "key in Debug: {debug}");
}

/// Reads the whole body; the first error ends it.
async fn collect(stream: SpeechStream) -> (Vec<u8>, Option<TtsError>) {
    let mut body = stream.body;
    let mut bytes = Vec::new();
    while let Some(item) = tokio::time::timeout(GUARD, body.next())
        .await
        .expect("body hung")
    {
        match item {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(e) => {
                assert_no_key(&e);
                return (bytes, Some(e));
            }
        }
    }
    (bytes, None)
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

/// Captures this thread's tracing output (tokio tests run on one thread).
fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn sends_the_request_openai_expects_and_streams_the_body_in_order() {
    let chunks = vec![ogg_bytes(3), b"S\x00rest-of-page".to_vec(), ogg_bytes(500)];
    let server = ScriptedServer::start(vec![ok_ogg(chunks.clone())]).await;
    // A trailing slash on the base must not produce "//audio/speech".
    let client = OpenAiClient::new(config(format!("{}/", server.base()))).unwrap();
    let mut req = request(AudioFormat::Opus);
    req.speed = Some(1.25);
    req.instructions = Some("Calm and warm.".into());

    let stream = open(&client, &req).await.unwrap();
    assert_eq!(stream.attempts, 1);
    let (body, err) = collect(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(body, chunks.concat());

    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert_eq!(r.request_line, "POST /v1/audio/speech HTTP/1.1");
    assert_eq!(r.headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(r.headers["accept"], "application/octet-stream");
    assert_eq!(r.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "model": "gpt-4o-mini-tts",
            "input": "The kettle has boiled.",
            "voice": "coral",
            "response_format": "opus",
            "speed": 1.25,
            "instructions": "Calm and warm.",
        })
    );
}

#[tokio::test]
async fn optional_fields_are_left_out_when_unset() {
    let server = ScriptedServer::start(vec![ok_ogg(vec![ogg_bytes(64)])]).await;
    let client = OpenAiClient::new(config(server.base())).unwrap();
    let mut req = request(AudioFormat::Pcm);
    req.model = "tts-1".into();
    open(&client, &req).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&server.requests()[0].body).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys.len(), 4, "{json}");
    assert_eq!(json["response_format"], "pcm");
}

#[tokio::test]
async fn rate_limit_with_retry_after_ms_is_retried_then_succeeds_and_logged_without_the_key() {
    let (logs, _guard) = capture_logs();
    let server = ScriptedServer::start(vec![
        respond(
            429,
            &[
                ("retry-after-ms", "20"),
                ("Content-Type", "application/json"),
            ],
            &openai_error(
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
            ),
        ),
        ok_ogg(vec![ogg_bytes(100)]),
    ])
    .await;
    let client = OpenAiClient::new(config(server.base())).unwrap();
    let stream = open(&client, &request(AudioFormat::Opus)).await.unwrap();
    assert_eq!(stream.attempts, 2);
    assert_eq!(collect(stream).await.0, ogg_bytes(100));
    assert_eq!(server.requests().len(), 2);

    let logs = logs.text();
    assert!(logs.contains("retrying"), "{logs}");
    assert!(
        logs.contains("status=429") && logs.contains("wait_ms=20"),
        "{logs}"
    );
    assert!(!logs.contains(KEY), "key in logs: {logs}");
    assert!(!logs.contains("Bearer"), "auth header in logs: {logs}");
}

#[tokio::test]
async fn server_error_is_retried_then_succeeds() {
    let server = ScriptedServer::start(vec![
        respond(
            500,
            &[],
            &openai_error("The server had an error", "server_error", ""),
        ),
        ok_ogg(vec![ogg_bytes(10)]),
    ])
    .await;
    let client = OpenAiClient::new(config(server.base())).unwrap();
    let stream = open(&client, &request(AudioFormat::Opus)).await.unwrap();
    assert_eq!(stream.attempts, 2);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn server_saying_do_not_retry_is_obeyed() {
    let server = ScriptedServer::start(vec![
        respond(
            503,
            &[("x-should-retry", "false")],
            &openai_error("The engine is currently overloaded", "server_error", ""),
        ),
        ok_ogg(vec![ogg_bytes(10)]),
    ])
    .await;
    let e = opus_err(&server).await;
    assert!(
        matches!(&e, TtsError::Server { status: 503, attempts: 1, message } if message.contains("overloaded")),
        "{e:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn request_and_account_errors_are_never_retried_and_quote_openai() {
    type Case = (u16, &'static str, fn(&TtsError) -> bool, &'static str);
    let cases: [Case; 3] = [
        (
            400,
            "Invalid value for 'voice'",
            |e| matches!(e, TtsError::Rejected { status: 400, .. }),
            "refused the request",
        ),
        (
            401,
            "Incorrect API key provided: sk-test-***6789.",
            |e| matches!(e, TtsError::Unauthorized { .. }),
            "key was rejected",
        ),
        (
            403,
            "Country, region, or territory not supported",
            |e| matches!(e, TtsError::Forbidden { .. }),
            "access denied",
        ),
    ];
    for (status, message, is_variant, phrase) in cases {
        let server = ScriptedServer::start(vec![
            respond(
                status,
                &[("x-should-retry", "true"), ("retry-after-ms", "1")],
                &openai_error(message, "invalid_request_error", "x"),
            ),
            ok_ogg(vec![ogg_bytes(10)]),
        ])
        .await;
        let client = OpenAiClient::new(config(server.base())).unwrap();
        let e = open_err(&client, &request(AudioFormat::Opus)).await;
        assert!(is_variant(&e), "{status}: {e:?}");
        let shown = e.to_string();
        assert!(shown.contains(message), "{shown}");
        assert!(shown.contains(phrase), "{shown}");
        assert!(shown.contains(&status.to_string()), "{shown}");
        assert_eq!(server.requests().len(), 1, "{status} must not be retried");
    }
}

#[tokio::test]
async fn exhausted_quota_is_not_retried_and_says_so() {
    let message = "You exceeded your current quota, please check your plan and billing details.";
    let server = ScriptedServer::start(vec![
        respond(
            429,
            &[("retry-after", "1")],
            &openai_error(message, "insufficient_quota", "insufficient_quota"),
        ),
        ok_ogg(vec![ogg_bytes(10)]),
    ])
    .await;
    let e = opus_err(&server).await;
    assert!(matches!(e, TtsError::QuotaExhausted { .. }), "{e:?}");
    let shown = e.to_string();
    assert!(
        shown.contains("quota exhausted") && shown.contains(message),
        "{shown}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn attempts_are_bounded() {
    let script = (0..6)
        .map(|_| {
            respond(
                502,
                &[],
                "<html><head><title>502 Bad Gateway</title></head></html>",
            )
        })
        .collect();
    let server = ScriptedServer::start(script).await;
    let mut cfg = config(server.base());
    cfg.max_attempts = 3;
    let client = OpenAiClient::new(cfg).unwrap();
    let e = open_err(&client, &request(AudioFormat::Opus)).await;
    assert!(
        matches!(&e, TtsError::Server { status: 502, attempts: 3, message } if message.contains("502 Bad Gateway")),
        "{e:?}"
    );
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn rate_limit_that_persists_reports_the_attempts_and_openais_message() {
    let script = (0..3)
        .map(|_| {
            respond(
                429,
                &[],
                &openai_error("Rate limit reached", "requests", "rate_limit_exceeded"),
            )
        })
        .collect();
    let server = ScriptedServer::start(script).await;
    let mut cfg = config(server.base());
    cfg.max_attempts = 3;
    let client = OpenAiClient::new(cfg).unwrap();
    let e = open_err(&client, &request(AudioFormat::Opus)).await;
    assert!(
        matches!(e, TtsError::RateLimited { attempts: 3, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("Rate limit reached"), "{e}");
}

#[tokio::test]
async fn a_retry_after_longer_than_allowed_fails_at_once_naming_the_wait() {
    let server = ScriptedServer::start(vec![
        respond(
            429,
            &[("Retry-After", "120")],
            &openai_error("Slow down", "requests", "rate_limit_exceeded"),
        ),
        ok_ogg(vec![ogg_bytes(10)]),
    ])
    .await;
    let e = opus_err(&server).await;
    assert!(
        matches!(e, TtsError::RateLimited { attempts: 1, .. }),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains("120 s") && shown.contains("Slow down"),
        "{shown}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_a_connect_error_after_all_attempts() {
    // Bind then drop: nothing listens on this port any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = config(format!("http://{addr}/v1"));
    cfg.max_attempts = 3;
    let client = OpenAiClient::new(cfg).unwrap();
    let e = open_err(&client, &request(AudioFormat::Opus)).await;
    match &e {
        TtsError::Connect {
            base,
            attempts,
            detail,
        } => {
            assert_eq!(*attempts, 3);
            assert_eq!(detail, "connection refused");
            assert_eq!(base, &format!("http://{addr}/v1"));
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn no_first_byte_in_time_is_a_timeout_after_retrying() {
    let server = ScriptedServer::start(vec![
        Reply::HangBeforeHeaders,
        // Headers arrive but no audio does.
        Reply::Respond {
            status: 200,
            headers: vec![("Content-Type", "audio/ogg".into())],
            steps: vec![Step::Hang],
        },
    ])
    .await;
    let mut cfg = config(server.base());
    cfg.first_byte_timeout = Duration::from_millis(300);
    cfg.max_attempts = 2;
    let client = OpenAiClient::new(cfg).unwrap();
    let e = open_err(&client, &request(AudioFormat::Opus)).await;
    assert!(
        matches!(&e, TtsError::NoAudio { attempts: 2, detail, .. } if detail.contains("waiting for the first audio byte after 300 ms")),
        "{e:?}"
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_200_whose_body_breaks_before_any_audio_is_retried() {
    let server = ScriptedServer::start(vec![
        Reply::Respond {
            status: 200,
            headers: vec![("Content-Type", "audio/ogg".into())],
            steps: vec![Step::Drop],
        },
        ok_ogg(vec![ogg_bytes(40)]),
    ])
    .await;
    let client = OpenAiClient::new(config(server.base())).unwrap();
    let stream = open(&client, &request(AudioFormat::Opus)).await.unwrap();
    assert_eq!(stream.attempts, 2);
    assert_eq!(collect(stream).await.0, ogg_bytes(40));
}

#[tokio::test]
async fn no_progress_mid_stream_ends_the_body_with_a_stall_timeout() {
    let first = ogg_bytes(200);
    let server = ScriptedServer::start(vec![Reply::Respond {
        status: 200,
        headers: vec![("Content-Type", "audio/ogg".into())],
        steps: vec![
            Step::Send(first.clone()),
            Step::Wait(Duration::from_millis(50)),
            Step::Send(b"more".to_vec()),
            Step::Hang,
        ],
    }])
    .await;
    let mut cfg = config(server.base());
    cfg.stall_timeout = Duration::from_millis(1000);
    let client = OpenAiClient::new(cfg).unwrap();
    let stream = open(&client, &request(AudioFormat::Opus)).await.unwrap();
    let (body, err) = collect(stream).await;
    assert_eq!(body, [first, b"more".to_vec()].concat());
    assert!(
        matches!(err, Some(TtsError::Timeout { phase: "waiting for more audio", after }) if after == Duration::from_millis(1000)),
        "{err:?}"
    );
    assert_eq!(
        server.requests().len(),
        1,
        "no retry once audio has started"
    );
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_is_broken_with_the_bytes_received() {
    let first = ogg_bytes(300);
    let server = ScriptedServer::start(vec![Reply::Respond {
        status: 200,
        headers: vec![("Content-Type", "audio/ogg".into())],
        steps: vec![
            Step::Send(first.clone()),
            Step::Wait(Duration::from_millis(20)),
            Step::Drop,
        ],
    }])
    .await;
    let client = OpenAiClient::new(config(server.base())).unwrap();
    let stream = open(&client, &request(AudioFormat::Opus)).await.unwrap();
    let (body, err) = collect(stream).await;
    assert_eq!(body, first);
    match err {
        Some(TtsError::Broken { received, detail }) => {
            assert_eq!(received, 300);
            assert!(
                !detail.is_empty() && !detail.contains("http://"),
                "{detail}"
            );
        }
        other => panic!("expected Broken, got {other:?}"),
    }
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_200_with_an_html_page_is_not_audio_and_says_what_came_back() {
    let page = "<!DOCTYPE html><html><head><title>Hotel WiFi - Sign in</title></head></html>";
    let server = ScriptedServer::start(vec![respond(
        200,
        &[("Content-Type", "text/html; charset=utf-8")],
        page,
    )])
    .await;
    let e = opus_err(&server).await;
    assert!(
        matches!(
            e,
            TtsError::NotAudio {
                expected: "opus",
                ..
            }
        ),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains("text/html") && shown.contains("Hotel WiFi - Sign in"),
        "{shown}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_200_with_json_is_not_audio_even_when_labelled_audio() {
    for content_type in ["application/json", "audio/ogg"] {
        let server = ScriptedServer::start(vec![respond(
            200,
            &[("Content-Type", content_type)],
            &openai_error("Model is warming up", "server_error", "x"),
        )])
        .await;
        let client = OpenAiClient::new(config(server.base())).unwrap();
        let e = open_err(&client, &request(AudioFormat::Opus)).await;
        assert!(
            matches!(e, TtsError::NotAudio { .. }),
            "{content_type}: {e:?}"
        );
        let shown = e.to_string();
        assert!(shown.contains("Model is warming up"), "{shown}");
        assert!(shown.contains("JSON"), "{shown}");
    }
}

#[tokio::test]
async fn a_200_with_other_audio_says_it_is_not_ogg() {
    let mut mp3 = b"ID3\x04\x00\x00".to_vec();
    mp3.extend([0u8; 64]);
    let server = ScriptedServer::start(vec![Reply::Respond {
        status: 200,
        headers: vec![("Content-Type", "audio/mpeg".into())],
        steps: vec![Step::Send(mp3)],
    }])
    .await;
    let e = opus_err(&server).await;
    assert!(e.to_string().contains("MP3"), "{e}");
}

#[tokio::test]
async fn pcm_is_accepted_as_audio_octet_stream_or_untyped_and_html_is_refused() {
    // Little-endian samples, including bytes that happen to be '{' and '"'.
    let samples: Vec<u8> = (0..2400u32)
        .flat_map(|i| ((i as i16).wrapping_mul(31)).to_le_bytes())
        .collect();
    for headers in [
        vec![("Content-Type", "audio/pcm".to_string())],
        vec![("Content-Type", "application/octet-stream".to_string())],
        vec![],
    ] {
        let server = ScriptedServer::start(vec![Reply::Respond {
            status: 200,
            headers: headers.clone(),
            steps: vec![Step::Send(b"{\"".to_vec()), Step::Send(samples.clone())],
        }])
        .await;
        let client = OpenAiClient::new(config(server.base())).unwrap();
        let stream = open(&client, &request(AudioFormat::Pcm)).await.unwrap();
        let (body, err) = collect(stream).await;
        assert!(err.is_none(), "{headers:?}: {err:?}");
        assert_eq!(
            body,
            [b"{\"".to_vec(), samples.clone()].concat(),
            "{headers:?}"
        );
    }

    let server = ScriptedServer::start(vec![respond(
        200,
        &[("Content-Type", "text/html")],
        "<html>portal</html>",
    )])
    .await;
    let client = OpenAiClient::new(config(server.base())).unwrap();
    let e = open_err(&client, &request(AudioFormat::Pcm)).await;
    assert!(
        matches!(
            e,
            TtsError::NotAudio {
                expected: "pcm",
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn no_key_fails_before_any_request() {
    let server = ScriptedServer::start(vec![ok_ogg(vec![ogg_bytes(10)])]).await;
    let mut cfg = config(server.base());
    cfg.api_key = None;
    let client = OpenAiClient::new(cfg).unwrap();
    let e = open_err(&client, &request(AudioFormat::Opus)).await;
    assert!(matches!(e, TtsError::NoKey), "{e:?}");
    assert!(matches!(client.warm().await, Err(TtsError::NoKey)));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn invalid_requests_are_never_sent() {
    let server = ScriptedServer::start(vec![ok_ogg(vec![ogg_bytes(10)])]).await;
    let client = OpenAiClient::new(config(server.base())).unwrap();
    let mut req = request(AudioFormat::Opus);
    req.voice = "robot".into();
    let e = open_err(&client, &req).await;
    assert!(
        matches!(&e, TtsError::Invalid(m) if m.contains("alloy")),
        "{e:?}"
    );
    let mut req = request(AudioFormat::Opus);
    req.input = "x".repeat(4097);
    assert!(matches!(
        open_err(&client, &req).await,
        TtsError::Invalid(_)
    ));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn a_server_echoing_the_key_does_not_leak_it_into_errors() {
    let server = ScriptedServer::start(vec![respond(
        401,
        &[],
        &openai_error(
            &format!("Incorrect API key provided: {KEY}."),
            "invalid_request_error",
            "invalid_api_key",
        ),
    )])
    .await;
    let e = opus_err(&server).await;
    assert!(
        e.to_string()
            .contains("Incorrect API key provided: [redacted]"),
        "{e}"
    );
}

#[tokio::test]
async fn warm_gets_the_models_list_with_the_key_and_reports_a_rejected_key() {
    let server = ScriptedServer::start(vec![
        respond(
            200,
            &[("Content-Type", "application/json")],
            r#"{"object":"list","data":[]}"#,
        ),
        respond(
            401,
            &[],
            &openai_error(
                "Incorrect API key provided",
                "invalid_request_error",
                "invalid_api_key",
            ),
        ),
    ])
    .await;
    let client = OpenAiClient::new(config(server.base())).unwrap();
    client.warm().await.unwrap();
    let e = client.warm().await.unwrap_err();
    assert_no_key(&e);
    assert!(matches!(e, TtsError::Unauthorized { .. }), "{e:?}");
    let sent = server.requests();
    assert_eq!(sent[0].request_line, "GET /v1/models HTTP/1.1");
    assert_eq!(sent[0].headers["authorization"], format!("Bearer {KEY}"));
}

#[tokio::test]
async fn bad_configuration_is_refused_without_showing_the_key() {
    for base in ["api.openai.com/v1", "ftp://example.com", ""] {
        let e = OpenAiClient::new(OpenAiConfig {
            api_base: base.into(),
            api_key: Some(ApiKey::new(KEY)),
            ..OpenAiConfig::default()
        })
        .unwrap_err();
        assert!(
            matches!(&e, TtsError::Invalid(m) if m.contains("http")),
            "{base}: {e:?}"
        );
    }
    let e = OpenAiClient::new(OpenAiConfig {
        api_key: Some(ApiKey::new(format!("{KEY}\u{7}bell"))),
        ..OpenAiConfig::default()
    })
    .unwrap_err();
    assert_no_key(&e);
    assert!(matches!(e, TtsError::Invalid(_)), "{e:?}");
    let client = OpenAiClient::new(OpenAiConfig {
        api_key: Some(ApiKey::new(KEY)),
        ..OpenAiConfig::default()
    })
    .unwrap();
    assert!(!format!("{client:?}").contains(KEY));
    let cfg = OpenAiConfig {
        api_key: Some(ApiKey::new(KEY)),
        ..OpenAiConfig::default()
    };
    assert!(!format!("{cfg:?}").contains(KEY));
}

#[test]
fn defaults_match_the_documented_values() {
    let cfg = OpenAiConfig::default();
    assert_eq!(cfg.api_base, "https://api.openai.com/v1");
    assert!(cfg.api_key.is_none());
    assert_eq!(cfg.connect_timeout, Duration::from_secs(5));
    assert_eq!(cfg.first_byte_timeout, Duration::from_secs(15));
    assert_eq!(cfg.first_audio_deadline, Duration::from_secs(20));
    assert_eq!(cfg.stall_timeout, Duration::from_secs(10));
    assert_eq!(cfg.max_attempts, 4);
    assert_eq!(cfg.backoff_base, Duration::from_millis(250));
    assert_eq!(cfg.backoff_max, Duration::from_secs(8));
    assert_eq!(cfg.max_retry_after, Duration::from_secs(30));
}

/// An `https` base pointing at a plain-HTTP port (a common configuration slip for a local
/// OpenAI-compatible server): the message must name the TLS handshake, not a raw chain.
#[tokio::test]
async fn https_to_a_plain_http_server_reports_a_tls_handshake_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = socket.shutdown().await;
        }
    });
    let mut cfg = config(format!("https://{addr}/v1"));
    cfg.max_attempts = 2;
    let client = OpenAiClient::new(cfg).unwrap();
    let e = open_err(&client, &request(AudioFormat::Opus)).await;
    match &e {
        TtsError::Connect {
            attempts, detail, ..
        } => {
            assert_eq!(*attempts, 2);
            assert!(detail.starts_with("tls handshake failed"), "{detail}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    server.abort();
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_is_reported_as_a_portal_or_proxy() {
    let server = ScriptedServer::start(vec![
        respond(302, &[("Location", "http://portal.example/login")], ""),
        ok_ogg(vec![ogg_bytes(10)]),
    ])
    .await;
    let e = opus_err(&server).await;
    assert!(matches!(e, TtsError::Rejected { status: 302, .. }), "{e:?}");
    let shown = e.to_string();
    assert!(
        shown.contains("redirect to http://portal.example/login"),
        "{shown}"
    );
    assert_eq!(server.requests().len(), 1);
}

/// The emulator's `hang` fault (a server that accepts requests and never answers): the
/// deadline for the first audio, not max_attempts × first_byte_timeout, bounds the wait,
/// and the message says how many attempts were made in how long.
#[tokio::test]
async fn a_hanging_server_is_given_only_the_attempts_that_fit_the_first_audio_deadline() {
    let emu = herald_emulator::Emulator::start(herald_emulator::EmulatorConfig {
        api_key: KEY.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let sc = "hang,id=deadline";
    let toml = format!(
        "[api]\napi_base = \"{}\"\nfirst_byte_timeout_ms = 400\nfirst_audio_deadline_ms = 1000\nmax_attempts = 4\n",
        emu.base_url(sc)
    );
    let (config, warnings) =
        herald::config::Config::parse(&toml, std::path::Path::new("test.toml")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut cfg = config.openai(Some(ApiKey::new(KEY)));
    // Next to no backoff, so the number of attempts depends on the deadline alone.
    cfg.backoff_base = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(10);
    let client = OpenAiClient::new(cfg).unwrap();
    let t = Instant::now();
    let e = open_err(&client, &request(AudioFormat::Opus)).await;
    let took = t.elapsed();
    eprintln!("hang: gave up after {took:?}: {e}");
    // Two whole 400 ms attempts fit in 1000 ms; a third would end past it, so it is not
    // started (max_attempts alone would allow 4 × 400 ms).
    assert!(matches!(e, TtsError::NoAudio { attempts: 2, .. }), "{e:?}");
    let shown = e.to_string();
    assert!(
        shown.starts_with("no audio from the API after 2 attempts in 0.")
            && shown.contains("(api.first_audio_deadline_ms = 1000)")
            && shown.contains("waiting for the first audio byte after 400 ms"),
        "{shown}"
    );
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    assert_eq!(emu.stats().requests_for(sc), 2);
}

/// Quick failures are retried only while a whole attempt still fits the deadline: a
/// server asking to wait 900 ms leaves no room for a 400 ms attempt in 1000 ms.
#[tokio::test]
async fn a_retry_that_could_not_finish_within_the_deadline_is_not_started() {
    let server = ScriptedServer::start(vec![
        respond(
            503,
            &[("retry-after-ms", "900")],
            &openai_error("Overloaded", "server_error", "server_error"),
        ),
        ok_ogg(vec![ogg_bytes(10)]),
    ])
    .await;
    let mut cfg = config(server.base());
    cfg.first_byte_timeout = Duration::from_millis(400);
    cfg.first_audio_deadline = Duration::from_millis(1000);
    let client = OpenAiClient::new(cfg).unwrap();
    let e = open_err(&client, &request(AudioFormat::Opus)).await;
    assert!(
        matches!(
            e,
            TtsError::Server {
                status: 503,
                attempts: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains("Overloaded")
            && shown.contains(
                "no time left for another attempt within api.first_audio_deadline_ms = 1000"
            ),
        "{shown}"
    );
    assert_eq!(server.requests().len(), 1);
}
