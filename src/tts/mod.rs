//! Text → encoded speech bytes: the `SpeechSource` seam and its OpenAI backend.

pub mod openai;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

/// The longest `input` the speech endpoint accepts, in characters.
pub const MAX_INPUT_CHARS: usize = 4096;
/// Models the speech endpoint knows (dated snapshots of these are accepted too).
pub const MODELS: &[&str] = &["tts-1", "tts-1-hd", "gpt-4o-mini-tts"];
/// Voices the speech endpoint knows.
pub const VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
    "marin", "cedar",
];

/// The API key. Its `Debug`/`Display` never show the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key (surrounding whitespace, e.g. a file's trailing newline, is removed).
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into().trim().to_string())
    }
    /// The secret itself, only for building the Authorization header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Audio encodings herald can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioFormat {
    /// Ogg Opus (default: small, decoded on the device).
    Opus,
    /// Headerless 24 kHz s16le mono (lowest first-audio latency, 5–10× the bytes).
    Pcm,
}

impl AudioFormat {
    /// The `response_format` value sent to the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioFormat::Opus => "opus",
            AudioFormat::Pcm => "pcm",
        }
    }
}

impl std::str::FromStr for AudioFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "opus" => Ok(AudioFormat::Opus),
            "pcm" => Ok(AudioFormat::Pcm),
            other => Err(format!("unknown format '{other}' (allowed: opus, pcm)")),
        }
    }
}

/// One request to the speech endpoint (one segment of an utterance).
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechRequest {
    /// Model name, e.g. `gpt-4o-mini-tts`.
    pub model: String,
    /// Voice name, e.g. `alloy`.
    pub voice: String,
    /// The text of this segment (1..=4096 characters).
    pub input: String,
    /// Response encoding.
    pub format: AudioFormat,
    /// Playback speed 0.25–4.0; `None` leaves the API default.
    pub speed: Option<f32>,
    /// Voice instructions (not accepted by tts-1/tts-1-hd).
    pub instructions: Option<String>,
}

/// A byte stream of encoded audio for one request.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, TtsError>> + Send>>;

/// A response whose first audio bytes have arrived and been checked.
pub struct SpeechStream {
    /// The body, starting with the already-checked first chunk.
    pub body: ByteStream,
    /// How many attempts it took (1 = no retry).
    pub attempts: u32,
    /// Time from the first request being sent to the first body byte.
    pub time_to_first_byte: Duration,
}

/// Boxed future returned by [`SpeechSource::open`].
pub type OpenFuture<'a> = Pin<Box<dyn Future<Output = Result<SpeechStream, TtsError>> + Send + 'a>>;

/// Where speech comes from: request → stream of encoded bytes.
pub trait SpeechSource: Send + Sync {
    /// Sends the request and resolves once the first audio bytes have arrived
    /// (retrying transient failures before that point).
    fn open<'a>(&'a self, req: &'a SpeechRequest) -> OpenFuture<'a>;
}

/// Everything that can go wrong fetching speech. Never contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    /// The request was invalid before anything was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No API key was configured.
    #[error("no API key: set OPENAI_API_KEY or api_key_file in the config")]
    NoKey,
    /// 401: the key was rejected.
    #[error("the API key was rejected (HTTP 401): {message}")]
    Unauthorized { message: String },
    /// 403: e.g. unsupported region.
    #[error("access denied (HTTP 403): {message}")]
    Forbidden { message: String },
    /// 429 after all retries.
    #[error("rate limit or quota exceeded (HTTP 429) after {attempts} attempts: {message}")]
    RateLimited { attempts: u32, message: String },
    /// 400 or another non-retryable client error.
    #[error("the API refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// 5xx after all retries.
    #[error("the API failed (HTTP {status}) after {attempts} attempts: {message}")]
    Server { status: u16, attempts: u32, message: String },
    /// A 200 whose body is not the requested audio.
    #[error("the response is not {expected} audio: {detail}")]
    NotAudio { expected: &'static str, detail: String },
    /// Could not connect (DNS, TCP, TLS) after all retries.
    #[error("cannot reach {base}: {detail} (after {attempts} attempts)")]
    Connect { base: String, attempts: u32, detail: String },
    /// A timeout (connect, first byte, or no progress mid-stream).
    #[error("timed out {phase} after {after:?}")]
    Timeout { phase: &'static str, after: Duration },
    /// The connection broke after audio had started.
    #[error("the audio stream broke after {received} bytes: {detail}")]
    Broken { received: u64, detail: String },
}
