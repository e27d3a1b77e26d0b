//! OpenAI's `POST /v1/audio/speech` over reqwest + rustls: streams the body, retries
//! transient failures before the first audio byte, and turns every failure into a short
//! message a user can act on. The API key never reaches a log line or an error.

use std::error::Error as _;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use tokio::time::Instant;

use super::retry;
use super::{
    ApiKey, AudioFormat, ByteStream, OpenFuture, SpeechRequest, SpeechSource, SpeechStream,
    TtsError, WarmFuture,
};

/// The API base used when none is configured.
pub const DEFAULT_API_BASE: &str = "https://api.openai.com/v1";

/// Error bodies and non-audio bodies are read only this far: enough for any JSON error or
/// an HTML page's title, and a broken proxy cannot make us buffer megabytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Phase names used in [`TtsError::Timeout`].
const PHASE_CONNECT: &str = "connecting to the API";
const PHASE_FIRST_BYTE: &str = "waiting for the first audio byte";
const PHASE_STALL: &str = "waiting for more audio";

/// How to reach the speech endpoint, and how patient to be.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// API base URL, e.g. `https://api.openai.com/v1` (a trailing slash is fine).
    pub api_base: String,
    /// The secret key; `None` makes every request fail with [`TtsError::NoKey`].
    pub api_key: Option<ApiKey>,
    /// Limit for establishing a connection (DNS + TCP + TLS).
    pub connect_timeout: Duration,
    /// Limit from sending a request to its first body byte (one attempt).
    pub first_byte_timeout: Duration,
    /// Limit from sending the first request to the first audio, over every attempt and
    /// the waits between them; no attempt is started that could not finish within it.
    pub first_audio_deadline: Duration,
    /// Limit on silence mid-stream: no new bytes for this long ends the stream.
    pub stall_timeout: Duration,
    /// Attempts per request, including the first (at least 1).
    pub max_attempts: u32,
    /// The first computed backoff ceiling; doubles per failure.
    pub backoff_base: Duration,
    /// Cap on the computed backoff ceiling.
    pub backoff_max: Duration,
    /// The longest server-requested wait honoured; a longer one fails at once.
    pub max_retry_after: Duration,
}

impl fmt::Debug for OpenAiConfig {
    /// Like a derived one, but credentials in `api_base` are never shown (the key's own
    /// `Debug` hides it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("api_base", &redact_userinfo(&self.api_base))
            .field("api_key", &self.api_key)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("first_audio_deadline", &self.first_audio_deadline)
            .field("stall_timeout", &self.stall_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("max_retry_after", &self.max_retry_after)
            .finish()
    }
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            api_base: DEFAULT_API_BASE.to_string(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(15),
            // Well under max_attempts × first_byte_timeout (60 s): a hanging server must
            // not hold the queue for a minute. Quick failures still get every retry.
            first_audio_deadline: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(10),
            max_attempts: 4,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// The OpenAI speech client. Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct OpenAiClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    cfg: OpenAiConfig,
    speech_url: Url,
    models_url: Url,
    /// The base for messages: no user-info, no trailing slash.
    base_display: String,
    /// `Bearer KEY`, marked sensitive so reqwest/hyper never print it.
    auth: Option<HeaderValue>,
    /// The raw key, only to scrub it from text a server sends back.
    key: Option<String>,
}

impl fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("api_base", &self.inner.base_display)
            .field("has_key", &self.inner.auth.is_some())
            .finish_non_exhaustive()
    }
}

/// The JSON body of a speech request.
#[derive(serde::Serialize)]
struct SpeechBody<'a> {
    model: &'a str,
    input: &'a str,
    voice: &'a str,
    response_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instructions: Option<&'a str>,
}

impl OpenAiClient {
    /// Checks the configuration and builds the HTTP client (no request is sent).
    pub fn new(cfg: OpenAiConfig) -> Result<Self, TtsError> {
        let trimmed = cfg.api_base.trim().trim_end_matches('/');
        let base = Url::parse(trimmed)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                TtsError::Invalid(format!(
                    "api_base '{}' is not an http(s) URL (e.g. {DEFAULT_API_BASE})",
                    redact_userinfo(trimmed)
                ))
            })?;
        let mut shown = base.clone();
        // Credentials in the base URL must not end up in messages either.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        let base_display = shown.as_str().trim_end_matches('/').to_string();
        let speech_url = Url::parse(&format!("{trimmed}/audio/speech"))
            .map_err(|e| TtsError::Invalid(format!("api_base '{base_display}': {e}")))?;
        let models_url = Url::parse(&format!("{trimmed}/models"))
            .map_err(|e| TtsError::Invalid(format!("api_base '{base_display}': {e}")))?;

        if cfg.max_attempts == 0 {
            return Err(TtsError::Invalid(
                "max_attempts is 0 (allowed: 1 or more; 1 means no retries)".into(),
            ));
        }
        for (name, value) in [
            ("connect_timeout", cfg.connect_timeout),
            ("first_byte_timeout", cfg.first_byte_timeout),
            ("first_audio_deadline", cfg.first_audio_deadline),
            ("stall_timeout", cfg.stall_timeout),
        ] {
            if value.is_zero() {
                return Err(TtsError::Invalid(format!(
                    "{name} is zero (allowed: any positive duration)"
                )));
            }
        }

        let key = cfg
            .api_key
            .as_ref()
            .map(|k| k.expose().to_string())
            .filter(|k| !k.is_empty());
        let auth = match &key {
            None => None,
            Some(k) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    TtsError::Invalid(
                        "the API key contains characters that cannot be sent in an HTTP header \
                         (allowed: visible ASCII, as in keys copied from the OpenAI dashboard)"
                            .into(),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };

        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            // The API never redirects; a redirect means a captive portal or a proxy, and
            // following it would send the request (and maybe the key) somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .pool_idle_timeout(Some(Duration::from_secs(90)))
            .build()
            .map_err(|e| {
                TtsError::Invalid(format!(
                    "cannot set up the HTTP client: {}",
                    short_detail(&e)
                ))
            })?;

        Ok(OpenAiClient {
            inner: Arc::new(Inner {
                http,
                cfg,
                speech_url,
                models_url,
                base_display,
                auth,
                key,
            }),
        })
    }

    /// Sends a cheap `GET {base}/models` so the pooled connection (TCP + TLS) is ready
    /// for the next speech request; also tells early whether the key is accepted.
    pub async fn warm(&self) -> Result<(), TtsError> {
        let inner = &self.inner;
        let auth = inner.auth.clone().ok_or(TtsError::NoKey)?;
        let deadline = Instant::now() + inner.cfg.first_byte_timeout;
        let send = inner
            .http
            .get(inner.models_url.clone())
            .header(AUTHORIZATION, auth)
            .send();
        let resp = match tokio::time::timeout_at(deadline, send).await {
            Err(_) => {
                return Err(TtsError::Timeout {
                    phase: PHASE_FIRST_BYTE,
                    after: inner.cfg.first_byte_timeout,
                })
            }
            Ok(Err(e)) => return Err(inner.transport_failure(&e).into_error(inner, 1)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        // Read the whole (small) body so the connection goes back to the pool.
        let body = read_bounded(resp.bytes_stream(), BytesMut::new(), deadline).await;
        if status.is_success() {
            return Ok(());
        }
        Err(inner
            .status_failure(status, &headers, &body)
            .into_error(inner, 1))
    }

    async fn fetch(&self, req: &SpeechRequest) -> Result<SpeechStream, TtsError> {
        req.validate()?;
        let inner = &self.inner;
        let auth = inner.auth.clone().ok_or(TtsError::NoKey)?;
        let body = SpeechBody {
            model: &req.model,
            input: &req.input,
            voice: &req.voice,
            response_format: req.format.as_str(),
            speed: req.speed,
            instructions: req.instructions.as_deref().filter(|i| !i.trim().is_empty()),
        };
        let body =
            Bytes::from(serde_json::to_vec(&body).map_err(|e| {
                TtsError::Invalid(format!("cannot encode the request as JSON: {e}"))
            })?);

        let started = Instant::now();
        let deadline = inner.cfg.first_audio_deadline;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            // The first attempt may be cut by a deadline shorter than its timeout; later
            // ones are only started when their whole timeout fits (below).
            let budget = inner
                .cfg
                .first_byte_timeout
                .min(deadline.saturating_sub(started.elapsed()));
            let failure = match inner.attempt(req.format, &auth, body.clone(), budget).await {
                Ok(accepted) => {
                    return Ok(SpeechStream {
                        time_to_first_byte: accepted.first_byte_at.duration_since(started),
                        body: audio_body(accepted.head, accepted.rest, inner.cfg.stall_timeout),
                        attempts: attempt,
                    });
                }
                Err(failure) => failure,
            };
            if !failure.retryable || attempt >= inner.cfg.max_attempts {
                return Err(failure.into_final(inner, attempt, started.elapsed(), None));
            }
            let wait = match failure.server_wait {
                Some(asked) if asked > inner.cfg.max_retry_after => {
                    let note = format!(
                        "the server asked to retry in {}, longer than the {} allowed by max_retry_after",
                        human_duration(asked),
                        human_duration(inner.cfg.max_retry_after)
                    );
                    return Err(failure.into_final(inner, attempt, started.elapsed(), Some(note)));
                }
                Some(asked) => asked,
                None => retry::jittered(
                    retry::backoff_ceiling(attempt, inner.cfg.backoff_base, inner.cfg.backoff_max),
                    &mut rand::rng(),
                ),
            };
            let elapsed = started.elapsed();
            if !retry::fits(elapsed, wait, inner.cfg.first_byte_timeout, deadline) {
                let note = format!(
                    "no time left for another attempt within api.first_audio_deadline_ms = {}",
                    deadline.as_millis()
                );
                return Err(failure.into_final(inner, attempt, elapsed, Some(note)));
            }
            tracing::warn!(
                status = failure.status(),
                attempt,
                max_attempts = inner.cfg.max_attempts,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                reason = %failure.summary(),
                "speech request failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

impl SpeechSource for OpenAiClient {
    fn open<'a>(&'a self, req: &'a SpeechRequest) -> OpenFuture<'a> {
        Box::pin(self.fetch(req))
    }

    fn warm(&self) -> WarmFuture<'_> {
        Box::pin(OpenAiClient::warm(self))
    }
}

/// A 2xx response whose first bytes were checked and found to be audio.
struct Accepted {
    head: Bytes,
    rest: RawBody,
    first_byte_at: Instant,
}

type RawBody = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// One failed attempt, before it is known whether it is the last.
struct Failure {
    kind: FailKind,
    retryable: bool,
    server_wait: Option<Duration>,
}

enum FailKind {
    Status {
        status: u16,
        message: String,
        quota: bool,
    },
    Connect(String),
    Timeout {
        phase: &'static str,
        after: Duration,
    },
    NotAudio {
        expected: &'static str,
        detail: String,
    },
}

impl Failure {
    /// The HTTP status, for the retry log line (none for transport failures).
    fn status(&self) -> Option<u16> {
        match self.kind {
            FailKind::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    /// A short reason for the retry log line (server text is already scrubbed of the key).
    fn summary(&self) -> String {
        match &self.kind {
            FailKind::Status {
                status, message, ..
            } => format!("HTTP {status}: {message}"),
            FailKind::Connect(detail) => detail.clone(),
            FailKind::Timeout { phase, after } => {
                format!("timed out {phase} after {}", human_duration(*after))
            }
            FailKind::NotAudio { detail, .. } => detail.clone(),
        }
    }

    fn into_error(self, inner: &Inner, attempts: u32) -> TtsError {
        match self.kind {
            FailKind::Status {
                status,
                message,
                quota,
            } => status_error(status, message, quota, attempts),
            FailKind::Connect(detail) => TtsError::Connect {
                base: inner.base_display.clone(),
                attempts,
                detail,
            },
            FailKind::Timeout { phase, after } => TtsError::Timeout { phase, after },
            FailKind::NotAudio { expected, detail } => TtsError::NotAudio { expected, detail },
        }
    }

    /// The error of a request's last attempt, `elapsed` after the first was sent; `note`
    /// says why no further attempt was made, when that was not `max_attempts`. A request
    /// that never got an answer in time says how many attempts it made and how long it
    /// waited in all.
    fn into_final(
        self,
        inner: &Inner,
        attempts: u32,
        elapsed: Duration,
        note: Option<String>,
    ) -> TtsError {
        let noted = |text: String| match &note {
            Some(n) => format!("{text} ({n})"),
            None => text,
        };
        match self.kind {
            // Its message names the deadline already; a timeout carries no server wait.
            FailKind::Timeout { phase, after } => TtsError::NoAudio {
                attempts,
                elapsed,
                deadline: inner.cfg.first_audio_deadline,
                detail: format!("timed out {phase} after {}", human_duration(after)),
            },
            FailKind::Status {
                status,
                message,
                quota,
            } => status_error(status, noted(message), quota, attempts),
            FailKind::Connect(detail) => TtsError::Connect {
                base: inner.base_display.clone(),
                attempts,
                detail: noted(detail),
            },
            kind @ FailKind::NotAudio { .. } => Failure {
                kind,
                retryable: false,
                server_wait: None,
            }
            .into_error(inner, attempts),
        }
    }
}

fn status_error(status: u16, message: String, quota: bool, attempts: u32) -> TtsError {
    match status {
        401 => TtsError::Unauthorized { message },
        403 => TtsError::Forbidden { message },
        429 if quota => TtsError::QuotaExhausted { message },
        429 => TtsError::RateLimited { attempts, message },
        500..=599 => TtsError::Server {
            status,
            attempts,
            message,
        },
        _ if attempts > 1 => TtsError::Rejected {
            status,
            message: format!("{message} (after {attempts} attempts)"),
        },
        _ => TtsError::Rejected { status, message },
    }
}

impl Inner {
    /// One request: resolves once the response's first bytes arrived and were checked.
    /// It is given `budget` (at most the first-byte timeout) to get there.
    async fn attempt(
        &self,
        format: AudioFormat,
        auth: &HeaderValue,
        body: Bytes,
        budget: Duration,
    ) -> Result<Accepted, Failure> {
        let deadline = Instant::now() + budget;
        let timed_out = || {
            Failure::retry(FailKind::Timeout {
                phase: PHASE_FIRST_BYTE,
                after: budget,
            })
        };
        let send = self
            .http
            .post(self.speech_url.clone())
            .header(AUTHORIZATION, auth.clone())
            .header(ACCEPT, "application/octet-stream")
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        let resp = match tokio::time::timeout_at(deadline, send).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(self.transport_failure(&e)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut rest: RawBody = Box::pin(resp.bytes_stream());

        if !status.is_success() {
            let body = read_bounded(rest, BytesMut::new(), deadline).await;
            return Err(self.status_failure(status, &headers, &body));
        }

        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|v| !v.is_empty());
        let expected = format.as_str();

        // Collect enough bytes to judge the body by its content, not its label.
        let need = match format {
            AudioFormat::Opus => 4,
            AudioFormat::Pcm => 16,
        };
        let mut head = BytesMut::new();
        let mut first_byte_at = None;
        let mut ended = false;
        while head.len() < need {
            match tokio::time::timeout_at(deadline, rest.next()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => {
                    ended = true;
                    break;
                }
                Ok(Some(Err(e))) => {
                    return Err(Failure::retry(FailKind::Connect(format!(
                        "the connection broke before any audio arrived: {}",
                        short_detail(&e)
                    ))));
                }
                Ok(Some(Ok(chunk))) => {
                    if !chunk.is_empty() && first_byte_at.is_none() {
                        first_byte_at = Some(Instant::now());
                    }
                    head.extend_from_slice(&chunk);
                }
            }
        }

        let verdict = judge_body(format, content_type.as_deref(), &head);
        let Some(first_byte_at) = first_byte_at.filter(|_| verdict.is_ok()) else {
            // Not audio: read the rest (bounded) so the message can quote the server.
            let body = if ended {
                head.freeze()
            } else {
                read_bounded(rest, head, deadline).await
            };
            let detail = match verdict {
                Err(Mislabel::ContentType(ct)) => {
                    format!("the server sent '{ct}' instead: {}", self.describe(&body))
                }
                _ if body.is_empty() => "the response body was empty".to_string(),
                _ => format!("the server sent {}", self.describe_unknown(format, &body)),
            };
            return Err(Failure {
                kind: FailKind::NotAudio { expected, detail },
                retryable: false,
                server_wait: None,
            });
        };
        Ok(Accepted {
            head: head.freeze(),
            rest,
            first_byte_at,
        })
    }

    /// Maps a failed send (no response) to a retryable failure with a short detail.
    fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        if e.is_connect() && e.is_timeout() {
            return Failure::retry(FailKind::Timeout {
                phase: PHASE_CONNECT,
                after: self.cfg.connect_timeout,
            });
        }
        Failure::retry(FailKind::Connect(short_detail(e)))
    }

    /// Maps an HTTP error status, its headers and (bounded) body to a failure.
    fn status_failure(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        let code = status.as_u16();
        let error = parse_openai_error(body);
        let quota = code == 429
            && error.as_ref().is_some_and(|e| {
                e.code.as_deref() == Some("insufficient_quota")
                    || e.kind.as_deref() == Some("insufficient_quota")
            });
        let mut message = match &error {
            Some(e) => self.scrub(&e.message),
            None if body.iter().all(u8::is_ascii_whitespace) => status
                .canonical_reason()
                .unwrap_or("no message")
                .to_string(),
            None => self.describe(body),
        };
        if status.is_redirection() {
            let target = headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| self.scrub(&redact_userinfo(l)))
                .unwrap_or_else(|| "an unknown location".into());
            message =
                format!("unexpected redirect to {target} (a captive portal or proxy in the way?)");
        }
        let retryable =
            !quota && retry::status_is_retryable(code, retry::should_retry_header(headers));
        Failure {
            kind: FailKind::Status {
                status: code,
                message,
                quota,
            },
            retryable,
            server_wait: retry::server_wait(headers, SystemTime::now()),
        }
    }

    /// Describes a non-audio body a user should see: OpenAI's message if it is a JSON
    /// error, an HTML page's title, or the start of the text.
    fn describe(&self, body: &[u8]) -> String {
        if let Some(e) = parse_openai_error(body) {
            return format!("a JSON error: {}", self.scrub(&e.message));
        }
        let text = String::from_utf8_lossy(body);
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            return format!("JSON: {}", self.scrub(&snippet(trimmed, 200)));
        }
        if looks_like_html(body) {
            return match html_title(&text) {
                Some(title) => format!(
                    "an HTML page titled '{}'",
                    self.scrub(&snippet(&title, 120))
                ),
                None => "an HTML page".to_string(),
            };
        }
        if body.is_empty() {
            return "an empty body".to_string();
        }
        format!("'{}'", self.scrub(&snippet(&text, 200)))
    }

    /// Like [`Inner::describe`], but for bytes that may be some other audio format.
    fn describe_unknown(&self, format: AudioFormat, body: &[u8]) -> String {
        let what = if body.starts_with(b"ID3")
            || (body.len() > 1 && body[0] == 0xFF && body[1] & 0xE0 == 0xE0)
        {
            if body.len() > 1 && body[0] == 0xFF && body[1] & 0xF6 == 0xF0 {
                Some("AAC audio")
            } else {
                Some("MP3 audio")
            }
        } else if body.starts_with(b"RIFF") {
            Some("WAV audio")
        } else if body.starts_with(b"fLaC") {
            Some("FLAC audio")
        } else {
            None
        };
        match (what, format) {
            (Some(kind), _) => format!("{kind}, not the requested format"),
            (None, AudioFormat::Opus) if !looks_like_html(body) && !looks_like_json(body) => {
                let hex: Vec<String> = body.iter().take(8).map(|b| format!("{b:02x}")).collect();
                format!(
                    "bytes starting {} (an Ogg stream starts with 'OggS')",
                    hex.join(" ")
                )
            }
            _ => self.describe(body),
        }
    }

    /// Removes the key from text a server sent back, in case it echoes it.
    fn scrub(&self, text: &str) -> String {
        match &self.key {
            Some(k) if text.contains(k.as_str()) => text.replace(k.as_str(), "[redacted]"),
            _ => text.to_string(),
        }
    }
}

impl Failure {
    fn retry(kind: FailKind) -> Self {
        Failure {
            kind,
            retryable: true,
            server_wait: None,
        }
    }
}

/// Why a 2xx body was judged not to be the requested audio.
enum Mislabel {
    /// The content type alone rules it out.
    ContentType(String),
    /// The bytes are not the requested audio.
    Bytes,
}

/// Decides whether a 2xx response's first bytes are the requested audio.
fn judge_body(
    format: AudioFormat,
    content_type: Option<&str>,
    head: &[u8],
) -> Result<(), Mislabel> {
    if let Some(ct) = content_type {
        let textual = ct == "application/json"
            || ct.ends_with("+json")
            || ct == "text/html"
            || ct.starts_with("text/");
        let audio_like =
            ct.starts_with("audio/") || ct == "application/octet-stream" || ct == "application/ogg";
        if textual || (format == AudioFormat::Pcm && !audio_like) {
            return Err(Mislabel::ContentType(ct.to_string()));
        }
    }
    match format {
        AudioFormat::Opus if head.starts_with(b"OggS") => Ok(()),
        AudioFormat::Opus => Err(Mislabel::Bytes),
        // Raw PCM has no signature; only refuse bodies that are unmistakably a document.
        AudioFormat::Pcm if head.is_empty() || looks_like_document(head) => Err(Mislabel::Bytes),
        AudioFormat::Pcm => Ok(()),
    }
}

fn skip_ws(body: &[u8]) -> &[u8] {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    &body[start..]
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(skip_ws(body).first(), Some(b'{') | Some(b'['))
}

fn looks_like_html(body: &[u8]) -> bool {
    let body = skip_ws(body);
    let prefix: Vec<u8> = body.iter().take(14).map(u8::to_ascii_lowercase).collect();
    prefix.starts_with(b"<!doctype html")
        || prefix.starts_with(b"<html")
        || prefix.starts_with(b"<?xml")
}

/// A stricter test for PCM, whose samples can be any bytes: the head must be printable
/// text (16 printable bytes in a row are practically impossible in speech samples) and
/// open a JSON object with a quoted key, or an HTML page.
fn looks_like_document(head: &[u8]) -> bool {
    let printable = head
        .iter()
        .take(16)
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if !printable {
        return false;
    }
    let body = skip_ws(head);
    if looks_like_html(body) {
        return true;
    }
    body.first() == Some(&b'{') && skip_ws(&body[1..]).first() == Some(&b'"')
}

fn html_title(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let title = text
        .get(start..end)?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!title.is_empty()).then_some(title)
}

/// The first `max` characters of `text` on one line, without control characters.
fn snippet(text: &str, max: usize) -> String {
    let one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if one_line.chars().count() > max {
        let cut: String = one_line.chars().take(max).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// OpenAI's error object: `{"error":{"message","type","param","code"}}`.
struct OpenAiError {
    message: String,
    kind: Option<String>,
    code: Option<String>,
}

fn parse_openai_error(body: &[u8]) -> Option<OpenAiError> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let text = |field: &str| {
        error
            .get(field)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    // Some compatible servers send {"error": "message"}.
    let message = text("message").or_else(|| error.as_str().map(str::to_string))?;
    Some(OpenAiError {
        message: snippet(&message, 500),
        kind: text("type"),
        code: text("code"),
    })
}

/// Reads the rest of a body into `buf`, up to [`MAX_ERROR_BODY`] bytes or the deadline,
/// whichever comes first; whatever arrived is returned (a partial body still helps).
async fn read_bounded(
    mut body: impl Stream<Item = reqwest::Result<Bytes>> + Unpin,
    mut buf: BytesMut,
    deadline: Instant,
) -> Bytes {
    while buf.len() < MAX_ERROR_BODY {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(MAX_ERROR_BODY);
    buf.freeze()
}

/// The accepted body: the checked head first, then the rest, each later chunk bounded by
/// `stall`. The stream ends after its first error.
fn audio_body(head: Bytes, rest: RawBody, stall: Duration) -> ByteStream {
    struct State {
        head: Option<Bytes>,
        rest: RawBody,
        received: u64,
        stall: Duration,
        done: bool,
    }
    let state = State {
        head: Some(head),
        rest,
        received: 0,
        stall,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        if let Some(head) = s.head.take() {
            s.received += head.len() as u64;
            return Some((Ok(head), s));
        }
        loop {
            match tokio::time::timeout(s.stall, s.rest.next()).await {
                Err(_) => {
                    s.done = true;
                    let err = TtsError::Timeout {
                        phase: PHASE_STALL,
                        after: s.stall,
                    };
                    return Some((Err(err), s));
                }
                Ok(None) => return None,
                Ok(Some(Ok(chunk))) if chunk.is_empty() => continue,
                Ok(Some(Ok(chunk))) => {
                    s.received += chunk.len() as u64;
                    return Some((Ok(chunk), s));
                }
                Ok(Some(Err(e))) => {
                    s.done = true;
                    let err = TtsError::Broken {
                        received: s.received,
                        detail: short_detail(&e),
                    };
                    return Some((Err(err), s));
                }
            }
        }
    }))
}

/// Turns reqwest's error chain ("error sending request for url (…): client error
/// (Connect): tcp connect error: Connection refused (os error 111)") into the part a user
/// needs: "connection refused", "dns error: …", "tls handshake failed: …".
fn short_detail(e: &reqwest::Error) -> String {
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut source = e.source();
    while let Some(err) = source {
        chain.push(err);
        source = err.source();
    }
    // reqwest's own text names the URL; credentials in it must not reach a message.
    let innermost = redact_userinfo(
        &chain
            .last()
            .map(|e| e.to_string())
            .unwrap_or_else(|| e.to_string()),
    );
    let texts: Vec<String> = chain
        .iter()
        .map(|e| e.to_string().to_ascii_lowercase())
        .collect();
    if texts.iter().any(|t| t.starts_with("dns error")) {
        return format!("dns error: {innermost}");
    }
    // rustls errors reach us as io::Error(InvalidData) nested inside io::Error(Other)
    // (whose `source()` skips a level), so look through `get_ref()` as well.
    let invalid_data = chain.iter().any(|err| {
        let mut io = err.downcast_ref::<std::io::Error>();
        while let Some(e) = io {
            if e.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
            io = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>());
        }
        false
    });
    let tls = (e.is_connect() && invalid_data)
        || texts.iter().any(|t| {
            t.contains("certificate")
                || t.contains("tls")
                || t.contains("handshake")
                || t.contains("alert")
        });
    if tls {
        return format!("tls handshake failed: {innermost}");
    }
    for err in &chain {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            let plain = match io.kind() {
                ConnectionRefused => "connection refused",
                ConnectionReset => "connection reset by the server",
                ConnectionAborted => "connection aborted",
                NotConnected | BrokenPipe => "connection closed",
                UnexpectedEof => "connection closed by the server",
                TimedOut => "timed out",
                AddrNotAvailable => "address not available",
                _ => continue,
            };
            return plain.to_string();
        }
    }
    if e.is_timeout() {
        return "timed out".to_string();
    }
    innermost
}

/// Drops `user:password@` from a URL-ish string (credentials never appear in errors, logs
/// or `status`).
pub fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let host_start = url[scheme_end + 3..]
                .find('/')
                .map_or(url.len(), |i| i + scheme_end + 3);
            if at < host_start {
                return format!("{}{}", &url[..scheme_end + 3], &url[at + 1..]);
            }
            url.to_string()
        }
        _ => url.to_string(),
    }
}

/// "400 ms", "15 s", "1.5 s".
fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_is_judged_by_its_capture_pattern_not_its_label() {
        assert!(judge_body(AudioFormat::Opus, Some("audio/ogg"), b"OggS\0\x02").is_ok());
        assert!(judge_body(AudioFormat::Opus, Some("application/octet-stream"), b"OggS").is_ok());
        assert!(judge_body(AudioFormat::Opus, None, b"OggS").is_ok());
        assert!(matches!(
            judge_body(AudioFormat::Opus, Some("audio/ogg"), b"ID3\x04"),
            Err(Mislabel::Bytes)
        ));
        assert!(matches!(
            judge_body(AudioFormat::Opus, Some("application/json"), b"OggS"),
            Err(Mislabel::ContentType(_))
        ));
    }

    #[test]
    fn pcm_accepts_audio_or_octet_stream_or_no_type_and_refuses_documents() {
        let samples = [0x01, 0x00, 0xff, 0xff, 0x7b, 0x22, 0, 0];
        for ct in [Some("audio/pcm"), Some("application/octet-stream"), None] {
            assert!(judge_body(AudioFormat::Pcm, ct, &samples).is_ok(), "{ct:?}");
        }
        assert!(judge_body(AudioFormat::Pcm, Some("text/html"), &samples).is_err());
        assert!(judge_body(AudioFormat::Pcm, Some("image/png"), &samples).is_err());
        assert!(judge_body(AudioFormat::Pcm, None, b"{\"error\": {}}").is_err());
        assert!(judge_body(AudioFormat::Pcm, None, b"\n<!DOCTYPE html>").is_err());
    }

    #[test]
    fn html_titles_are_extracted_on_one_line() {
        assert_eq!(
            html_title("<html><head><TITLE>\n  502 Bad\n Gateway </title>").as_deref(),
            Some("502 Bad Gateway")
        );
        assert_eq!(html_title("<html><body>hi</body>"), None);
    }

    #[test]
    fn openai_errors_are_parsed_including_the_plain_string_form() {
        let e = parse_openai_error(
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        )
        .unwrap();
        assert_eq!(e.message, "You exceeded your current quota");
        assert_eq!(e.code.as_deref(), Some("insufficient_quota"));
        assert_eq!(
            parse_openai_error(br#"{"error":"bad voice"}"#)
                .unwrap()
                .message,
            "bad voice"
        );
        assert!(parse_openai_error(b"<html>").is_none());
    }

    #[test]
    fn userinfo_is_removed_from_urls() {
        assert_eq!(
            redact_userinfo("https://user:pw@proxy.local/v1"),
            "https://proxy.local/v1"
        );
        assert_eq!(
            redact_userinfo("https://api.openai.com/v1/a@b"),
            "https://api.openai.com/v1/a@b"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_millis(400)), "400 ms");
        assert_eq!(human_duration(Duration::from_secs(15)), "15 s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn snippets_are_single_line_and_bounded() {
        assert_eq!(snippet("a\n\tb", 10), "a b");
        assert_eq!(snippet(&"x".repeat(300), 5), "xxxxx…");
    }
}
