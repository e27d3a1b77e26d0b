//! Text → encoded speech bytes: the `SpeechSource` seam and its OpenAI backend.

pub mod cache;
pub mod openai;
mod retry;

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

/// The format a caller asks for: one wire format for the whole utterance, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    /// Everything as Ogg Opus.
    Opus,
    /// Everything as raw PCM.
    Pcm,
    /// The opening sentence as `pcm` (its first bytes come soonest), the rest as `opus`
    /// fetched at the same time (docs/ADAPTIVE.md).
    Auto,
}

impl FormatChoice {
    /// The name used in config, requests and the network model's keys.
    pub fn as_str(self) -> &'static str {
        match self {
            FormatChoice::Opus => "opus",
            FormatChoice::Pcm => "pcm",
            FormatChoice::Auto => "auto",
        }
    }

    /// The wire format when the text is one request (presets, played from the cache):
    /// `auto` is `opus` there, as a cached file starts at once whatever its format.
    pub fn whole(self) -> AudioFormat {
        match self {
            FormatChoice::Pcm => AudioFormat::Pcm,
            FormatChoice::Opus | FormatChoice::Auto => AudioFormat::Opus,
        }
    }
}

impl From<AudioFormat> for FormatChoice {
    fn from(f: AudioFormat) -> Self {
        match f {
            AudioFormat::Opus => FormatChoice::Opus,
            AudioFormat::Pcm => FormatChoice::Pcm,
        }
    }
}

impl std::str::FromStr for FormatChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FormatChoice::Auto),
            other => other
                .parse::<AudioFormat>()
                .map(FormatChoice::from)
                .map_err(|_| format!("unknown format '{other}' (allowed: opus, pcm, auto)")),
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

    /// Refreshes the connection so the next request starts fast (the daemon's keep-alive);
    /// sources without a connection have nothing to do.
    fn warm(&self) -> WarmFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

/// What [`SpeechSource::warm`] returns.
pub type WarmFuture<'a> = Pin<Box<dyn Future<Output = Result<(), TtsError>> + Send + 'a>>;

/// Everything that can go wrong fetching speech. Never contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    /// The request was invalid before anything was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No API key was configured.
    #[error("no API key: set OPENAI_API_KEY, or api.api_key_file in the config")]
    NoKey,
    /// 401: the key was rejected.
    #[error("the API key was rejected (HTTP 401): {message}")]
    Unauthorized {
        /// OpenAI's own message (or the body's start).
        message: String,
    },
    /// 403: e.g. unsupported region.
    #[error("access denied (HTTP 403): {message}")]
    Forbidden {
        /// OpenAI's own message (or the body's start).
        message: String,
    },
    /// 429 after all retries.
    #[error("rate limit or quota exceeded (HTTP 429) after {}: {message}", attempts_text(*attempts))]
    RateLimited {
        /// Requests made, retries included.
        attempts: u32,
        /// OpenAI's own message (or the body's start).
        message: String,
    },
    /// 400 or another non-retryable client error.
    #[error("the API refused the request (HTTP {status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// OpenAI's own message (or the body's start).
        message: String,
    },
    /// 5xx after all retries.
    #[error("the API failed (HTTP {status}) after {}: {message}", attempts_text(*attempts))]
    Server {
        /// The HTTP status.
        status: u16,
        /// Requests made, retries included.
        attempts: u32,
        /// OpenAI's own message (or the body's start).
        message: String,
    },
    /// A 200 whose body is not the requested audio.
    #[error("the response is not {expected} audio: {detail}")]
    NotAudio {
        /// The format that was asked for.
        expected: &'static str,
        /// What arrived or what failed.
        detail: String,
    },
    /// Could not connect (DNS, TCP, TLS) after all retries.
    #[error("cannot reach {base}: {detail} (after {})", attempts_text(*attempts))]
    Connect {
        /// The API base, without credentials.
        base: String,
        /// Requests made, retries included.
        attempts: u32,
        /// What arrived or what failed.
        detail: String,
    },
    /// No audio within `api.first_audio_deadline_ms` or after every attempt timed out.
    #[error(
        "no audio from the API after {} in {:.1} s (api.first_audio_deadline_ms = {}): {detail}",
        attempts_text(*attempts),
        elapsed.as_secs_f64(),
        deadline.as_millis()
    )]
    NoAudio {
        /// Requests made, retries included.
        attempts: u32,
        /// From the first request to giving up.
        elapsed: Duration,
        /// The configured deadline for the first audio.
        deadline: Duration,
        /// How the last attempt ended, and why no further one was made.
        detail: String,
    },
    /// A timeout (connect, first byte, or no progress mid-stream).
    #[error("timed out {phase} after {after:?}")]
    Timeout {
        /// Connect, first byte or no progress.
        phase: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// The connection broke after audio had started.
    #[error("the audio stream broke after {received} bytes: {detail}")]
    Broken {
        /// Bytes received before the break.
        received: u64,
        /// What arrived or what failed.
        detail: String,
    },
    /// 429 with code `insufficient_quota`: waiting will not help, the account needs credit.
    #[error("quota exhausted (HTTP 429, insufficient_quota): {message}")]
    QuotaExhausted {
        /// OpenAI's own message (or the body's start).
        message: String,
    },
}

impl TtsError {
    /// Whether this means speech can't be had from the API at all (network, timeouts,
    /// 5xx after the retries, key, access, quota, a 200 that is not audio), so a local voice
    /// may speak the text instead. Not for a request the API refused as invalid (400 and
    /// other 4xx: the caller's to fix) or one refused before sending. The one rule for
    /// which errors fall back (docs/FALLBACK.md); no wildcard, so a new kind must choose.
    pub fn is_outage(&self) -> bool {
        match self {
            TtsError::Invalid(_) => false,
            // 408 is the server giving up waiting (retried like a 5xx); the rest are ours.
            TtsError::Rejected { status, .. } => *status == 408,
            TtsError::NoKey
            | TtsError::Unauthorized { .. }
            | TtsError::Forbidden { .. }
            | TtsError::RateLimited { .. }
            | TtsError::QuotaExhausted { .. }
            | TtsError::Server { .. }
            | TtsError::NotAudio { .. }
            | TtsError::Connect { .. }
            | TtsError::NoAudio { .. }
            | TtsError::Timeout { .. }
            | TtsError::Broken { .. } => true,
        }
    }
}

impl SpeechRequest {
    /// Checks the request against the endpoint's limits, so nothing invalid is ever sent.
    pub fn validate(&self) -> Result<(), TtsError> {
        self.check().map_err(|e| TtsError::Invalid(e.message))
    }

    /// The same rules as [`Self::validate`], naming the field that breaks one (the config
    /// reports it against its own key).
    pub fn check(&self) -> Result<(), InvalidField> {
        let bad = |field, message| Err(InvalidField { field, message });
        if self.input.trim().is_empty() {
            return bad(
                RequestField::Input,
                "the input text is empty (allowed: 1 to 4096 characters)".into(),
            );
        }
        let chars = self.input.chars().count();
        if chars > MAX_INPUT_CHARS {
            return bad(RequestField::Input, format!(
                "the input text has {chars} characters (allowed: at most {MAX_INPUT_CHARS}; split it into segments)"
            ));
        }
        let Some(base_model) = base_model(&self.model) else {
            return bad(RequestField::Model, format!(
                "unknown model '{}' (allowed: {}, or a dated snapshot such as gpt-4o-mini-tts-2025-03-20)",
                self.model,
                MODELS.join(", ")
            ));
        };
        if !VOICES.contains(&self.voice.as_str()) {
            return bad(
                RequestField::Voice,
                format!(
                    "unknown voice '{}' (allowed: {})",
                    self.voice,
                    VOICES.join(", ")
                ),
            );
        }
        if let Some(speed) = self.speed {
            if !(0.25..=4.0).contains(&speed) {
                return bad(
                    RequestField::Speed,
                    format!("speed {speed} is out of range (allowed: 0.25 to 4.0)"),
                );
            }
        }
        let has_instructions = self
            .instructions
            .as_deref()
            .is_some_and(|i| !i.trim().is_empty());
        if has_instructions && !takes_instructions(base_model) {
            return bad(
                RequestField::Instructions,
                format!(
                    "model '{}' does not accept instructions (allowed with: gpt-4o-mini-tts)",
                    self.model
                ),
            );
        }
        Ok(())
    }
}

/// A request field, for [`InvalidField`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestField {
    /// The text.
    Input,
    /// The model.
    Model,
    /// The voice.
    Voice,
    /// The speed.
    Speed,
    /// The voice instructions.
    Instructions,
}

/// A request that breaks one of the endpoint's rules: which field, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// The field.
    pub field: RequestField,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// The entry of [`MODELS`] that `model` is, or is a snapshot of (`-YYYY-MM-DD` or `-NNNN`).
pub fn base_model(model: &str) -> Option<&'static str> {
    // The longest match, so "tts-1-hd-1106" is a snapshot of tts-1-hd, not a suffix of tts-1.
    MODELS
        .iter()
        .copied()
        .filter(|base| {
            model == *base
                || model
                    .strip_prefix(base)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(is_snapshot_suffix)
        })
        .max_by_key(|base| base.len())
}

/// Whether `model` takes `instructions` (tts-1 and tts-1-hd do not).
pub fn takes_instructions(model: &str) -> bool {
    !matches!(base_model(model), Some("tts-1" | "tts-1-hd"))
}

/// `2025-03-20` (dated snapshot) or `1106` (the older four-digit snapshots).
fn is_snapshot_suffix(s: &str) -> bool {
    let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [y, m, d] => digits(y, 4) && digits(m, 2) && digits(d, 2),
        [n] => digits(n, 4),
        _ => false,
    }
}

/// "1 attempt" / "3 attempts".
fn attempts_text(n: u32) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SpeechRequest {
        SpeechRequest {
            model: "gpt-4o-mini-tts".into(),
            voice: "alloy".into(),
            input: "Hello there.".into(),
            format: AudioFormat::Opus,
            speed: None,
            instructions: None,
        }
    }

    fn invalid(r: &SpeechRequest) -> String {
        match r.validate() {
            Err(TtsError::Invalid(msg)) => msg,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn outages_fall_back_and_refusals_of_the_request_do_not() {
        let msg = || "m".to_string();
        let outages = [
            TtsError::NoKey,
            TtsError::Unauthorized { message: msg() },
            TtsError::Forbidden { message: msg() },
            TtsError::QuotaExhausted { message: msg() },
            TtsError::RateLimited {
                attempts: 2,
                message: msg(),
            },
            TtsError::Server {
                status: 503,
                attempts: 2,
                message: msg(),
            },
            TtsError::Rejected {
                status: 408,
                message: msg(),
            },
            TtsError::Broken {
                received: 10,
                detail: msg(),
            },
        ];
        for e in outages {
            assert!(e.is_outage(), "{e}");
        }
        for e in [
            TtsError::Invalid(msg()),
            TtsError::Rejected {
                status: 400,
                message: msg(),
            },
            TtsError::Rejected {
                status: 404,
                message: msg(),
            },
        ] {
            assert!(!e.is_outage(), "{e}");
        }
    }

    #[test]
    fn a_plain_request_is_valid() {
        assert!(req().validate().is_ok());
    }

    #[test]
    fn empty_or_blank_input_is_refused() {
        let mut r = req();
        r.input = " \n\t ".into();
        assert!(invalid(&r).contains("empty"));
    }

    #[test]
    fn input_length_counts_characters_not_bytes() {
        let mut r = req();
        // 4096 two-byte characters: 8192 bytes but within the limit.
        r.input = "é".repeat(MAX_INPUT_CHARS);
        assert!(r.validate().is_ok());
        r.input.push('é');
        let msg = invalid(&r);
        assert!(msg.contains("4097") && msg.contains("4096"), "{msg}");
    }

    #[test]
    fn models_and_their_snapshots_are_accepted_others_listed() {
        let mut r = req();
        for m in [
            "tts-1",
            "tts-1-hd",
            "gpt-4o-mini-tts-2025-03-20",
            "tts-1-1106",
            "tts-1-hd-1106",
        ] {
            r.model = m.into();
            assert!(r.validate().is_ok(), "{m}");
        }
        for m in [
            "tts-2",
            "gpt-4o-mini-tts-latest",
            "gpt-4o-mini-tts-2025-3-20",
            "",
        ] {
            r.model = m.into();
            let msg = invalid(&r);
            assert!(
                msg.contains("tts-1-hd") && msg.contains("gpt-4o-mini-tts"),
                "{msg}"
            );
        }
    }

    #[test]
    fn unknown_voice_lists_the_voices() {
        let mut r = req();
        r.voice = "Alloy".into();
        let msg = invalid(&r);
        assert!(msg.contains("'Alloy'") && msg.contains("shimmer") && msg.contains("cedar"));
    }

    #[test]
    fn speed_must_be_within_range() {
        let mut r = req();
        for ok in [0.25, 1.0, 4.0] {
            r.speed = Some(ok);
            assert!(r.validate().is_ok(), "{ok}");
        }
        for bad in [0.2, 4.01, f32::NAN, f32::INFINITY] {
            r.speed = Some(bad);
            assert!(invalid(&r).contains("0.25 to 4.0"), "{bad}");
        }
    }

    #[test]
    fn instructions_are_refused_for_tts_1_models_only() {
        let mut r = req();
        r.instructions = Some("Speak calmly.".into());
        assert!(r.validate().is_ok());
        for m in ["tts-1", "tts-1-hd", "tts-1-hd-1106"] {
            r.model = m.into();
            assert!(invalid(&r).contains("instructions"), "{m}");
        }
        r.instructions = Some("  ".into());
        assert!(r.validate().is_ok(), "blank instructions are not sent");
    }
}
