//! The control protocol: one request per line, one JSON reply per line.
//!
//! A line that starts with `{` is a JSON request whose `cmd` names the command (`speak`
//! when absent); any other line is text to speak with the defaults. See docs/PROTOCOL.md.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chimes::ChimeChoice;
use crate::tts::FormatChoice;
use crate::volume::Volume;

/// Bytes one character of text may take in a JSON request: an astral-plane character
/// escaped as a surrogate pair (`\ud83d\ude00`), as `json.dumps` does by default.
pub const JSON_BYTES_PER_CHAR: usize = 12;
/// Room in a request line for everything but the text (other fields, escaped instructions).
pub const OTHER_FIELDS_BYTES: usize = 64 * 1024;
/// Longest job id a client may give, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// The longest request line (newline excluded) for texts of up to `max_text_chars`
/// characters: any text the daemon would accept fits, however its client escapes it.
pub fn max_line_bytes(max_text_chars: usize) -> usize {
    max_text_chars
        .saturating_mul(JSON_BYTES_PER_CHAR)
        .saturating_add(OTHER_FIELDS_BYTES)
}

/// Who spoke a finished job when it was not the API's voice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpokenBy {
    /// The local fallback voice (`[fallback]`), because the API could not be reached.
    Fallback,
}

/// Commands a JSON request may name.
pub const COMMANDS: &[&str] = &[
    "speak",
    "stop",
    "skip",
    "cancel",
    "status",
    "preset",
    "presets",
    "reset_network_model",
];

/// Where a job goes in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// After every queued job.
    #[default]
    Normal,
    /// Before every queued `normal` job, after earlier `high` ones.
    High,
    /// Fades out what is playing and plays next.
    Interrupt,
}

/// What a press does while the same preset is already playing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WhilePlaying {
    /// Nothing: the announcement is already being heard (the default, so an impatient
    /// second press neither cuts it off nor repeats it).
    #[default]
    Ignore,
    /// Stop it and play it again from the start.
    Restart,
    /// Play it again after the current one.
    Queue,
}

/// The longest expiry a job may be given: a day (an announcement that may wait longer
/// needs none).
pub const MAX_EXPIRY_S: f64 = 86_400.0;

/// How long a job may wait in the queue before it is dropped unplayed (`expires_in_s`):
/// seconds above 0, at most [`MAX_EXPIRY_S`]. Built only through [`ExpiresIn::new`] or its
/// `Deserialize`, so requests, presses, buttons and the config share the rule.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(into = "f64")]
pub struct ExpiresIn(f64);

/// An expiry that is not a number of seconds above 0.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("expires_in_s {value} is not allowed (allowed: seconds above 0, at most {MAX_EXPIRY_S}; leave it out to wait as long as it takes)")]
pub struct ExpiryError {
    /// What was given, as written.
    pub value: String,
}

impl ExpiresIn {
    /// `secs` seconds, if above 0 and at most [`MAX_EXPIRY_S`].
    pub fn new(secs: f64) -> Result<ExpiresIn, ExpiryError> {
        if secs > 0.0 && secs <= MAX_EXPIRY_S {
            Ok(ExpiresIn(secs))
        } else {
            Err(ExpiryError {
                value: secs.to_string(),
            })
        }
    }

    /// [`ExpiresIn::new`] for constants: out of range fails the build, as it is evaluated
    /// at compile time in a `const` item.
    pub const fn constant(secs: f64) -> ExpiresIn {
        assert!(secs > 0.0 && secs <= MAX_EXPIRY_S, "expiry out of range");
        ExpiresIn(secs)
    }

    /// The seconds.
    pub fn secs(self) -> f64 {
        self.0
    }

    /// As a duration.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.0)
    }
}

impl From<ExpiresIn> for f64 {
    fn from(e: ExpiresIn) -> f64 {
        e.0
    }
}

impl std::fmt::Display for ExpiresIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for ExpiresIn {
    type Err = ExpiryError;
    /// For the command line (`--expires-in 30`).
    fn from_str(s: &str) -> Result<ExpiresIn, ExpiryError> {
        let secs: f64 = s.trim().parse().map_err(|_| ExpiryError {
            value: format!("'{s}'"),
        })?;
        ExpiresIn::new(secs)
    }
}

impl<'de> Deserialize<'de> for ExpiresIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ExpiresIn, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ExpiresIn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(
                    f,
                    "expires_in_s: a number of seconds above 0, at most {MAX_EXPIRY_S}"
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ExpiresIn, E> {
                ExpiresIn::new(v as f64).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ExpiresIn, E> {
                ExpiresIn::new(v as f64).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ExpiresIn, E> {
                ExpiresIn::new(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A `speak` request; every field but `text` falls back to the configured default.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpeakRequest {
    /// The text to speak.
    pub text: String,
    /// Voice name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// Model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `opus`, `pcm` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FormatChoice>,
    /// 0.25–4.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f32>,
    /// Voice instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Queue placement.
    #[serde(default)]
    pub priority: Priority,
    /// The caller's id for the job (echoed in every reply); herald assigns one otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Store the audio in the cache and reuse it for the same request (repeated phrases).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache: bool,
    /// 0–100 on the cubic scale (`crate::volume`); default `audio.volume`, clamped by the
    /// config's limits and quiet hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
    /// Drop the job unplayed (`expired`) if it is still queued this many seconds after it
    /// was accepted; default `daemon.default_expiry_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<ExpiresIn>,
    /// Chime before the speech: a `[chimes.NAME]`, `false` for none; default `daemon.chime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chime: Option<ChimeChoice>,
    /// Chime after the speech; default `daemon.chime_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chime_after: Option<ChimeChoice>,
    /// `false`: fail rather than speak with the local voice when the API can't be reached
    /// (default: the configured `[fallback]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<bool>,
    /// The output to play on (`[outputs.NAME]`, e.g. a Snapcast stream to every room);
    /// default (or `local`) this box's own device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// A `preset` request: play a configured preset, exactly like its button.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PresetRequest {
    /// The preset's name.
    pub name: String,
    /// The caller's id for the job; herald assigns one otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What to do if this preset is already playing; default: the rule of the preset's
    /// button, or `ignore` when no button plays it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub while_playing: Option<WhilePlaying>,
    /// 0–100; default the preset's own `volume`, else `audio.volume` (a button sends its
    /// own when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
    /// Like `speak`'s; default `daemon.default_expiry_s` (a button sends its own, 30 s by
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<ExpiresIn>,
    /// Chime before it; default the preset's `chime`, else `daemon.chime` (a button sends
    /// its own when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chime: Option<ChimeChoice>,
    /// Like `speak`'s; default the preset's own `to`, else this box's device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// `cancel` names a job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    id: String,
}

/// Commands without arguments.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// One parsed request line. Its serialisation is the request's JSON line (what
/// [`parse_line`] reads back), tagged by `cmd`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Queue text for speaking.
    Speak(SpeakRequest),
    /// Stop the current job and clear the queue.
    Stop,
    /// Stop the current job; the queue carries on.
    Skip,
    /// Remove (or stop) the job with this id.
    Cancel {
        /// The job's id.
        id: String,
    },
    /// Report the daemon's state.
    Status,
    /// Play a configured preset.
    Preset(PresetRequest),
    /// List the presets with their cache state.
    Presets,
    /// Forget the learned network model (every endpoint and format).
    #[serde(rename = "reset_network_model")]
    ResetNetworkModel,
}

/// Why a line is not a request; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Longer than [`max_line_bytes`] allows.
    #[error(
        "the line is {len} bytes long (allowed: at most {limit} bytes per request: room for \
         speech.max_text_chars = {max_text_chars} characters at up to {JSON_BYTES_PER_CHAR} bytes \
         each when JSON-escaped, plus {OTHER_FIELDS_BYTES} bytes for the other fields)"
    )]
    TooLong {
        /// Bytes read before giving up (more than the limit).
        len: usize,
        /// The limit, from [`max_line_bytes`].
        limit: usize,
        /// The `speech.max_text_chars` it was derived from.
        max_text_chars: usize,
    },
    /// Not UTF-8.
    #[error("the line is not valid UTF-8 (at byte {at}); send UTF-8 text or JSON")]
    Utf8 {
        /// Offset of the first bad byte.
        at: usize,
    },
    /// Starts with `{` but is not valid JSON (or not an object).
    #[error("invalid JSON: {0} (send one JSON object per line, or plain text to speak)")]
    Json(String),
    /// `cmd` names no command.
    #[error("unknown command '{0}' (allowed: {allowed})", allowed = COMMANDS.join(", "))]
    UnknownCommand(String),
    /// A field is wrong: unknown, missing or of the wrong type.
    #[error("{cmd}: {message}")]
    Field {
        /// The command.
        cmd: String,
        /// serde's message, naming the field and what is expected.
        message: String,
    },
    /// Blank line or empty text.
    #[error("empty request: send text to speak, or a JSON object such as {{\"cmd\":\"status\"}}")]
    Empty,
}

/// What `volume` takes, for the list of allowed fields.
const VOLUME_RANGE: &[&str] = &["0 to 100"];
/// What `expires_in_s` takes, for the list of allowed fields.
const EXPIRY_RANGE: &[&str] = &["seconds above 0"];
/// What `chime` and `chime_after` take, for the list of allowed fields.
const CHIME_VALUES: &[&str] = &["a [chimes] name", "true", "false"];

/// Fields each command accepts, for messages: serde's own lists (so they cannot drift
/// from the types), with the values of the fields that take a fixed set.
fn allowed_fields(cmd: &str) -> String {
    let (fields, choices) = match cmd {
        "speak" => (
            serde_names::<SpeakRequest>(),
            vec![
                ("format", serde_names::<FormatChoice>()),
                ("priority", serde_names::<Priority>()),
                ("volume", VOLUME_RANGE),
                ("expires_in_s", EXPIRY_RANGE),
                ("chime", CHIME_VALUES),
                ("chime_after", CHIME_VALUES),
            ],
        ),
        "preset" => (
            serde_names::<PresetRequest>(),
            vec![
                ("while_playing", serde_names::<WhilePlaying>()),
                ("volume", VOLUME_RANGE),
                ("expires_in_s", EXPIRY_RANGE),
                ("chime", CHIME_VALUES),
            ],
        ),
        "cancel" => (serde_names::<CancelRequest>(), Vec::new()),
        _ => (serde_names::<NoArgs>(), Vec::new()),
    };
    let described = fields
        .iter()
        .map(|f| match choices.iter().find(|(c, _)| c == f) {
            Some((_, values)) => format!("{f} ({})", values.join(", ")),
            None => f.to_string(),
        });
    std::iter::once("cmd".to_string())
        .chain(described)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The names serde's derived `Deserialize` of `T` accepts: a struct's fields or an enum's
/// variants (as renamed), read by handing it a deserializer that records them and fails.
fn serde_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};
    type ProbeError = serde::de::value::Error;
    struct Probe(&'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for &mut Probe {
        type Error = ProbeError;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
            Err(ProbeError::custom("probe"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, ProbeError> {
            self.0 = fields;
            Err(ProbeError::custom("probe"))
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, ProbeError> {
            self.0 = variants;
            Err(ProbeError::custom("probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            identifier ignored_any
        }
    }
    let mut probe = Probe(&[]);
    let _ = T::deserialize(&mut probe);
    probe.0
}

/// Parses one request line (without its newline; a trailing `\r` is ignored).
/// The length limit is the reader's ([`max_line_bytes`]): a line longer than it is never
/// held in memory whole.
pub fn parse_line(line: &[u8]) -> Result<Request, ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|e| ProtocolError::Utf8 {
        at: e.valid_up_to(),
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ProtocolError::Empty);
    }
    if !trimmed.starts_with('{') {
        return Ok(Request::Speak(SpeakRequest {
            text: trimmed.to_string(),
            ..SpeakRequest::default()
        }));
    }
    let mut obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(trimmed).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let cmd = match obj.remove("cmd") {
        None => "speak".to_string(),
        Some(serde_json::Value::String(s)) => s,
        Some(other) => {
            return Err(ProtocolError::Field {
                cmd: "request".into(),
                message: format!("'cmd' must be a string, got {other}"),
            })
        }
    };
    let field_err = |e: serde_json::Error| {
        let e = e.to_string();
        // Unknown or missing fields: list what the command takes. Bad values already say
        // what is expected.
        let message = if e.contains("field") {
            format!("{e} (allowed fields: {})", allowed_fields(&cmd))
        } else {
            e
        };
        ProtocolError::Field {
            cmd: cmd.clone(),
            message,
        }
    };
    let rest = serde_json::Value::Object(obj);
    match cmd.as_str() {
        "speak" => {
            let req: SpeakRequest = serde_json::from_value(rest).map_err(field_err)?;
            if req.text.trim().is_empty() {
                return Err(ProtocolError::Field {
                    cmd,
                    message: "the text is empty (allowed: 1 or more characters)".into(),
                });
            }
            check_id(&cmd, req.id.as_deref())?;
            Ok(Request::Speak(req))
        }
        "cancel" => {
            let req: CancelRequest = serde_json::from_value(rest).map_err(field_err)?;
            check_id(&cmd, Some(&req.id))?;
            Ok(Request::Cancel { id: req.id })
        }
        "preset" => {
            let req: PresetRequest = serde_json::from_value(rest).map_err(field_err)?;
            check_id(&cmd, req.id.as_deref())?;
            Ok(Request::Preset(req))
        }
        "stop" | "skip" | "status" | "presets" | "reset_network_model" => {
            let _: NoArgs = serde_json::from_value(rest).map_err(field_err)?;
            Ok(match cmd.as_str() {
                "stop" => Request::Stop,
                "skip" => Request::Skip,
                "presets" => Request::Presets,
                "reset_network_model" => Request::ResetNetworkModel,
                _ => Request::Status,
            })
        }
        _ => Err(ProtocolError::UnknownCommand(cmd)),
    }
}

/// The rule for a client's job id (speak, preset, cancel): 1 to [`MAX_ID_BYTES`] bytes
/// without control characters, as ids are echoed into the daemon's log lines.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(format!(
            "id must be 1 to {MAX_ID_BYTES} bytes (got {})",
            id.len()
        ));
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "id contains the control character U+{:04X} at byte {at} (allowed: printable \
             characters only, no newline, tab or other control characters)",
            u32::from(c)
        ));
    }
    Ok(())
}

/// [`validate_id`] for a request's optional id, as a field error of `cmd`.
fn check_id(cmd: &str, id: Option<&str>) -> Result<(), ProtocolError> {
    match id.map(validate_id) {
        Some(Err(message)) => Err(ProtocolError::Field {
            cmd: cmd.to_string(),
            message,
        }),
        _ => Ok(()),
    }
}

/// Where the replies to a request go (a client connection, a button's log); never blocks.
pub trait ReplyTo: Send + Sync + std::fmt::Debug {
    /// Hands `reply` to whoever asked.
    fn send(&self, reply: Reply);
}

/// One request (or why its line could not be parsed) and where its replies go.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The parsed line.
    pub req: Result<Request, ProtocolError>,
    /// Where its replies go.
    pub reply: Arc<dyn ReplyTo>,
}

/// Every reply the daemon sends, one JSON object per line, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Reply {
    /// The job was accepted; `position` 0 = plays next.
    Queued {
        /// The job's id.
        id: String,
        /// Jobs ahead of it in the queue (the playing one not counted).
        position: usize,
    },
    /// The first audio reached the device.
    Started {
        /// The job's id.
        id: String,
        /// From the job leaving the queue (device open and lead-in included) to its first
        /// audio at the device: what a listener waits once it is this job's turn.
        start_to_audio_ms: u64,
        /// Deprecated alias of `start_to_audio_ms` (kept for one release).
        time_to_first_audio_ms: u64,
    },
    /// Terminal: played completely.
    Finished {
        /// The job's id.
        id: String,
        /// From the job leaving the queue to its first audio at the device (as in `started`).
        start_to_audio_ms: Option<u64>,
        /// From the first speech request being sent to the first audio at the device.
        request_to_audio_ms: Option<u64>,
        /// Deprecated alias of `request_to_audio_ms` (kept for one release).
        time_to_first_audio_ms: Option<u64>,
        /// Audio played.
        duration_ms: u64,
        /// Times the buffer ran dry.
        stalls: u32,
        /// Total silence inserted by stalls.
        stall_ms: u64,
        /// Encoded bytes received.
        bytes: u64,
        /// Requests made.
        segments: usize,
        /// HTTP attempts (retries included).
        attempts: u32,
        /// Audio played slowed down (pitch kept) to ride out the network, in ms.
        #[serde(default)]
        stretched_ms: u64,
        /// The start followed what was learned about the network (not the fixed rules).
        #[serde(default)]
        warm: bool,
        /// The volume it played at, after `audio.min_volume`/`max_volume` and quiet hours.
        #[serde(default)]
        volume: u8,
        /// The chime played before the speech.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chime: Option<String>,
        /// Why a chime it asked for was not played (its file is unusable).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chime_error: Option<String>,
        /// `fallback` when the local voice spoke (some of) it because the API could not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        voice: Option<SpokenBy>,
        /// With the fallback: the local engine that spoke (`espeak-ng`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        engine: Option<crate::fallback::Engine>,
        /// With the fallback: why the API's speech could not be had (never the key).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_error: Option<String>,
        /// With the fallback, when no API audio had been heard: from the API's failure to
        /// the fallback's first audio at the device.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback_to_audio_ms: Option<u64>,
        /// Where a job with `to` played (absent for this box's own jobs). Boxed: most
        /// replies have none.
        #[serde(flatten)]
        routed: Option<Box<Routed>>,
    },
    /// Terminal (for a job) or a refused request (`id` absent when there was no job).
    Failed {
        /// The job's id, if the request named or created one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// What was wrong and what is allowed.
        reason: String,
    },
    /// Terminal: removed by `cancel`, `skip` or `stop` (or the daemon stopping).
    Cancelled {
        /// The job's id.
        id: String,
        /// What cancelled it.
        by: CancelledBy,
    },
    /// Terminal: still queued when its `expires_in_s` ran out; never played.
    Expired {
        /// The job's id.
        id: String,
        /// Why, with the expiry it had.
        reason: String,
        /// How long it waited in the queue, in milliseconds.
        waited_ms: u64,
    },
    /// Terminal: faded out for an `interrupt` job.
    Interrupted {
        /// The job's id.
        id: String,
        /// The interrupting job's id.
        by: String,
    },
    /// The answer to `status`.
    Status(Box<StatusReport>),
    /// The answer to `presets`.
    Presets {
        /// Every configured preset, by name.
        presets: Vec<PresetInfo>,
    },
    /// A command (stop, skip, cancel, reset_network_model, or a preset press that changed
    /// nothing) was carried out.
    Ok {
        /// The command.
        cmd: OkCommand,
        /// Ids of the jobs it affected.
        jobs: Vec<String>,
        /// Endpoints and formats whose learned model was forgotten (`reset_network_model`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forgotten: Option<usize>,
    },
    /// A connection-level problem (e.g. too many connections); the connection closes.
    Error {
        /// What happened.
        reason: String,
    },
}

impl Reply {
    /// Whether this reply ends a job (exactly one per accepted job).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Reply::Finished { .. }
                | Reply::Failed { .. }
                | Reply::Cancelled { .. }
                | Reply::Expired { .. }
                | Reply::Interrupted { .. }
        )
    }

    /// The job id a reply belongs to, if any.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Reply::Queued { id, .. }
            | Reply::Started { id, .. }
            | Reply::Finished { id, .. }
            | Reply::Cancelled { id, .. }
            | Reply::Expired { id, .. }
            | Reply::Interrupted { id, .. } => Some(id),
            Reply::Failed { id, .. } => id.as_deref(),
            _ => None,
        }
    }
}

/// Where a job sent with `to` played, in its `finished` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    /// The output it played on (`local` when it fell back to this box).
    pub output: String,
    /// Why it played on this box instead of its output (`fallback_to = "local"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_fallback: Option<String>,
}

/// The daemon's state, as `status` reports it (never the API key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// herald's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// What the daemon is doing.
    pub state: DaemonState,
    /// The audio device.
    pub device: DeviceStatus,
    /// Jobs waiting.
    pub queue_length: usize,
    /// The first (up to 100) waiting jobs, in play order.
    pub queue: Vec<QueuedJob>,
    /// The job playing, if any.
    pub now_playing: Option<NowPlaying>,
    /// Totals since start.
    pub counters: Counters,
    /// The API connection.
    pub network: NetworkStatus,
    /// Every configured preset and its cache state.
    #[serde(default)]
    pub presets: Vec<PresetInfo>,
    /// What was learned about the network, per endpoint and format.
    #[serde(default)]
    pub network_model: Vec<LearnedNetwork>,
    /// The loudest a job starting now may play (`audio.max_volume`, lower in quiet hours).
    #[serde(default)]
    pub max_volume: u8,
    /// Every `[outputs.NAME]` and its connection (`name` is the output's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub outputs: std::collections::BTreeMap<String, DeviceStatus>,
}

/// The network model learned for one endpoint and format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnedNetwork {
    /// The endpoint (no credentials) and the format, e.g. `https://api.openai.com/v1 opus`.
    pub key: String,
    /// Utterances learned from, the start target and the lateness percentiles.
    #[serde(flatten)]
    pub summary: crate::netmodel::Summary,
}

impl std::fmt::Display for LearnedNetwork {
    /// One line, as `herald status` and `herald check` print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.summary;
        let rate = m
            .generation_rate
            .map_or("-".to_string(), |r| format!("{r:.2}x real time"));
        write!(
            f,
            "{}: {} utterance{}, start target {} ms (lateness p50 {} / p95 {} ms), generation {rate}, longest silence {} ms",
            self.key,
            m.utterances,
            if m.utterances == 1 { "" } else { "s" },
            m.target_ms,
            m.p50_ms,
            m.p95_ms,
            m.longest_silence_ms
        )
    }
}

/// One preset as `presets` and `status` report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresetInfo {
    /// The preset's name.
    pub name: String,
    /// Where its rendering stands.
    pub state: PresetCacheState,
    /// Why the last render failed (state "failed"), or why there is no cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds until the next render attempt (state "failed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_s: Option<u64>,
    /// The first 40 characters of its text.
    pub text: String,
}

/// What cancelled a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelledBy {
    /// A `cancel` naming it.
    Cancel,
    /// A `skip` while it played.
    Skip,
    /// A `stop`.
    Stop,
    /// The daemon stopping.
    Shutdown,
}

/// The command an `ok` reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OkCommand {
    /// `skip`.
    Skip,
    /// `stop`.
    Stop,
    /// `cancel`.
    Cancel,
    /// A `preset` press that was ignored (the preset is already playing or queued).
    Preset,
    /// `reset_network_model`.
    #[serde(rename = "reset_network_model")]
    ResetNetworkModel,
}

/// What the daemon is doing, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DaemonState {
    /// Nothing to play.
    #[serde(rename = "idle")]
    Idle,
    /// A job is on the device.
    #[serde(rename = "speaking")]
    Speaking,
    /// The device failed or hangs; jobs fail until it is back.
    #[serde(rename = "device error")]
    DeviceError,
}

/// A preset's place in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresetCacheState {
    /// Waiting for its turn to render.
    Pending,
    /// Being fetched now.
    Rendering,
    /// On disk: a press plays without the network.
    Cached,
    /// The last render failed (see `reason`, `retry_in_s`).
    Failed,
    /// There is no cache (see `reason`): it plays live.
    Uncached,
}

/// The audio device's state, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Not held (opened when a job comes).
    Closed,
    /// Held and working.
    Open,
    /// Held, but a write has been blocked longer than `audio.write_timeout_ms`.
    Stuck,
    /// Failed; reopened with backoff (see `error`, `retry_in_ms`).
    Failed,
}

/// Unit enums print as their wire names ("device error", "shutdown", …), so messages and
/// the CLI say exactly what the protocol says.
macro_rules! wire_display {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => f.write_str(&s),
                    _ => write!(f, "{self:?}"),
                }
            }
        }
    )*};
}
wire_display!(
    Priority,
    WhilePlaying,
    CancelledBy,
    OkCommand,
    DaemonState,
    PresetCacheState,
    DeviceState
);

/// The device part of [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// ALSA PCM name from the config.
    pub name: String,
    /// Closed, open, stuck or failed.
    pub state: DeviceState,
    /// Whether herald holds it open (also while a job plays on it).
    pub open: bool,
    /// Granted rate, channels, period (when open).
    pub rate: Option<u32>,
    /// Granted channel count (when open).
    pub channels: Option<u16>,
    /// Granted period in frames (when open).
    pub period_frames: Option<usize>,
    /// Why the device is failing or stuck, if it is.
    pub error: Option<String>,
    /// Milliseconds until the next reopen attempt (state `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// "granted (N)", "denied: …", "not requested", or "unknown" before the first open.
    pub realtime: String,
}

/// One waiting job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedJob {
    /// The job's id.
    pub id: String,
    /// Its priority.
    pub priority: Priority,
    /// The first 40 characters of its text.
    pub text: String,
}

/// The job playing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NowPlaying {
    /// The job's id.
    pub id: String,
    /// The first 40 characters of its text.
    pub text: String,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
}

/// Totals since the daemon started.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Requests received (every line).
    pub requests: u64,
    /// Jobs accepted.
    pub accepted: u64,
    /// Jobs played completely.
    pub finished: u64,
    /// Jobs and requests that failed.
    pub failed: u64,
    /// Jobs cancelled or interrupted.
    pub cancelled: u64,
    /// Jobs that expired in the queue.
    #[serde(default)]
    pub expired: u64,
    /// Stalls over all jobs.
    pub stalls: u64,
    /// Time to first audio, median over the last jobs.
    pub ttfa_ms_p50: Option<u64>,
    /// 90th percentile of the same.
    pub ttfa_ms_p90: Option<u64>,
    /// 99th percentile of the same.
    pub ttfa_ms_p99: Option<u64>,
}

/// The API connection part of [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// The API base URL (without credentials).
    pub api_base: String,
    /// Seconds since the API last answered successfully.
    pub last_ok_s_ago: Option<u64>,
    /// The last API error.
    pub last_error: Option<String>,
    /// Whether the connection is believed warm (a success within the pool's idle time).
    pub warm: bool,
}

impl Reply {
    /// The reply as one line of JSON with its newline.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"event\":\"error\",\"reason\":\"cannot encode a reply: {e}\"}}")
        });
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &[u8]) -> String {
        parse_line(line).unwrap_err().to_string()
    }

    #[test]
    fn plain_text_is_speak_with_defaults() {
        assert_eq!(
            parse_line(b"Dinner is ready\r").unwrap(),
            Request::Speak(SpeakRequest {
                text: "Dinner is ready".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn json_requests_parse() {
        let r =
            parse_line(br#"{"cmd":"speak","text":"Hi","voice":"nova","priority":"high","id":"a"}"#)
                .unwrap();
        let Request::Speak(s) = r else { panic!() };
        assert_eq!(s.voice.as_deref(), Some("nova"));
        assert_eq!(s.priority, Priority::High);
        assert_eq!(s.id.as_deref(), Some("a"));
        assert_eq!(
            parse_line(br#"{"text":"x"}"#).unwrap(),
            Request::Speak(SpeakRequest {
                text: "x".into(),
                ..Default::default()
            })
        );
        assert_eq!(
            parse_line(br#"{"cmd":"cancel","id":"a"}"#).unwrap(),
            Request::Cancel { id: "a".into() }
        );
        assert_eq!(parse_line(br#"{"cmd":"status"}"#).unwrap(), Request::Status);
        assert_eq!(
            parse_line(br#"{"cmd":"reset_network_model"}"#).unwrap(),
            Request::ResetNetworkModel
        );
    }

    #[test]
    fn bad_lines_say_what_is_wrong_and_what_is_allowed() {
        assert!(err(b"caf\xff").contains("not valid UTF-8"));
        assert!(err(b"{\"cmd\":").contains("invalid JSON"));
        // Only objects are requests: anything else is text.
        assert!(matches!(parse_line(b"[1]"), Ok(Request::Speak(_))));
        let e = err(br#"{"cmd":"speak","text":"x","colour":"red"}"#);
        assert!(e.contains("colour") && e.contains("priority"), "{e}");
        let e = err(br#"{"cmd":"dance"}"#);
        assert!(e.contains("'dance'") && e.contains("status"), "{e}");
        let e = err(br#"{"cmd":"speak","text":"  "}"#);
        assert!(e.contains("empty"), "{e}");
        let e = err(br#"{"cmd":"speak","text":"x","format":"mp3"}"#);
        assert!(e.contains("mp3") && e.contains("opus"), "{e}");
        let e = err(br#"{"cmd":"speak","text":"x","priority":"urgent"}"#);
        assert!(e.contains("urgent") && e.contains("interrupt"), "{e}");
        assert!(err(b"   ").contains("empty"));
        let e = err(br#"{"cmd":"stop","id":"x"}"#);
        assert!(e.contains("unknown field"), "{e}");
        let e = err(br#"{"cmd":"reset_network_model","key":"x"}"#);
        assert!(
            e.contains("unknown field") && e.contains("allowed fields: cmd"),
            "{e}"
        );
        let e = err(br#"{"cmd":"reset"}"#);
        assert!(
            e.contains("'reset'") && e.contains("reset_network_model"),
            "{e}"
        );
    }

    #[test]
    fn bad_volumes_and_expiries_name_the_field_and_what_is_allowed() {
        let Request::Speak(s) =
            parse_line(br#"{"text":"x","volume":40,"expires_in_s":2.5}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.volume.map(Volume::get), Some(40));
        assert_eq!(s.expires_in_s.map(ExpiresIn::secs), Some(2.5));
        for (line, needle) in [
            (r#"{"text":"x","volume":101}"#, "volume 101 is not allowed"),
            (r#"{"text":"x","volume":-5}"#, "volume -5 is not allowed"),
            (
                r#"{"text":"x","volume":50.5}"#,
                "volume 50.5 is not allowed",
            ),
            (r#"{"text":"x","volume":"loud"}"#, "expected a volume"),
            (
                r#"{"text":"x","expires_in_s":0}"#,
                "expires_in_s 0 is not allowed",
            ),
            (
                r#"{"text":"x","expires_in_s":-1}"#,
                "expires_in_s -1 is not allowed",
            ),
            (
                r#"{"text":"x","expires_in_s":"soon"}"#,
                "expected expires_in_s",
            ),
            (r#"{"text":"x","expires_in_s":100000}"#, "at most 86400"),
            (r#"{"cmd":"preset","name":"d","volume":200}"#, "volume 200"),
            (
                r#"{"cmd":"preset","name":"d","expires_in_s":0}"#,
                "expires_in_s 0",
            ),
        ] {
            let e = err(line.as_bytes());
            assert!(e.contains(needle), "{line}: {e}");
            let allowed = if e.contains("volume") {
                "0 = silent to 100"
            } else {
                "seconds above 0"
            };
            assert!(e.contains(allowed), "{line}: {e}");
        }
    }

    #[test]
    fn preset_presets_and_cache_parse_and_bad_fields_list_the_allowed_ones() {
        assert_eq!(
            parse_line(br#"{"cmd":"preset","name":"dinner","while_playing":"restart"}"#).unwrap(),
            Request::Preset(PresetRequest {
                name: "dinner".into(),
                id: None,
                while_playing: Some(WhilePlaying::Restart),
                volume: None,
                expires_in_s: None,
                chime: None,
                to: None,
            })
        );
        assert_eq!(
            parse_line(br#"{"cmd":"presets"}"#).unwrap(),
            Request::Presets
        );
        let Request::Speak(s) = parse_line(br#"{"text":"Post.","cache":true}"#).unwrap() else {
            panic!()
        };
        assert!(s.cache);
        let e = err(br#"{"cmd":"preset"}"#);
        assert!(e.contains("name") && e.contains("while_playing"), "{e}");
        let e = err(br#"{"cmd":"preset","name":"x","while_playing":"twice"}"#);
        assert!(e.contains("twice") && e.contains("restart"), "{e}");
    }

    /// Field names a request may carry, plus ones no command takes; the required ones
    /// (`text`, `name`) and `id` more often, so that valid requests come up too.
    #[rustfmt::skip]
    const KEYS: &[&str] = &[
        "text", "text", "text", "id", "id", "name", "name", "voice", "model", "format", "speed",
        "instructions", "priority", "cache", "while_playing", "colour", "",
    ];

    /// A value a client might plausibly send for `key` (right type, valid or not).
    fn plausible(key: &'static str) -> proptest::strategy::BoxedStrategy<serde_json::Value> {
        use proptest::prelude::*;
        let words = |w: &'static [&'static str]| {
            proptest::sample::select(w.to_vec())
                .prop_map(serde_json::Value::from)
                .boxed()
        };
        match key {
            "speed" => (0.0f64..5.0).prop_map(serde_json::Value::from).boxed(),
            "cache" => any::<bool>().prop_map(serde_json::Value::from).boxed(),
            "priority" => words(&["normal", "high", "interrupt", "urgent", ""]),
            "format" => words(&["opus", "pcm", "mp3"]),
            "while_playing" => words(&["restart", "ignore", "queue", "twice"]),
            _ => prop_oneof![
                Just(String::new()),
                Just("  ".to_string()),
                "[a-zA-Z ]{1,10}",
                Just("x".repeat(129)),
            ]
            .prop_map(serde_json::Value::from)
            .boxed(),
        }
    }

    /// Any JSON value, nested a little.
    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN/inf", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,4}", inner, 0..3)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Request objects: a command (or none, or a bogus one) and fields with mostly
    /// plausible values, sometimes values of any type.
    fn request_object() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let cmd = proptest::option::of(proptest::sample::select(vec![
            "speak",
            "cancel",
            "preset",
            "presets",
            "status",
            "stop",
            "skip",
            "reset_network_model",
            "dance",
        ]));
        let field = proptest::sample::select(KEYS).prop_flat_map(|k| {
            let v = prop_oneof![4 => plausible(k), 1 => json_value().boxed()];
            (Just(k), v)
        });
        (cmd, proptest::collection::vec(field, 0..5)).prop_map(|(cmd, fields)| {
            let mut obj: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            if let Some(c) = cmd {
                obj.insert("cmd".into(), c.into());
            }
            serde_json::Value::Object(obj)
        })
    }

    proptest::proptest! {
        // Whatever a local process writes, the parser answers without panicking: a request,
        // or an error whose message is not empty.
        #[test]
        fn any_bytes_parse_or_fail_with_a_message(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            match parse_line(&line) {
                Ok(Request::Speak(r)) => proptest::prop_assert!(!r.text.trim().is_empty()),
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }

        // JSON objects built from real and unknown field names with values of any type.
        #[test]
        fn any_json_object_parses_or_fails_with_a_message(obj in request_object()) {
            let line = obj.to_string();
            match parse_line(line.as_bytes()) {
                Ok(Request::Speak(r)) => {
                    proptest::prop_assert!(!r.text.trim().is_empty());
                    proptest::prop_assert!(r.id.as_ref().is_none_or(|id| !id.is_empty() && id.len() <= 128));
                }
                Ok(_) => {}
                Err(e) => {
                    let msg = e.to_string();
                    proptest::prop_assert!(!msg.is_empty());
                    // An unknown field is named, with what the command takes.
                    if msg.contains("unknown field") {
                        proptest::prop_assert!(msg.contains("allowed fields"), "{}", msg);
                    }
                }
            }
        }
    }

    /// `s` as Python's `json.dumps` writes it by default (`ensure_ascii=True`): every
    /// non-ASCII character as `\uXXXX`, astral ones as a surrogate pair.
    fn ascii_json(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                ' '..='~' => out.push(c),
                _ => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn the_line_limit_fits_any_accepted_text_however_it_is_escaped() {
        let n = 2000;
        for c in ['é', '€', '😀', '\u{1}'] {
            let text: String = std::iter::repeat_n(c, n).collect();
            let line = format!(
                r#"{{"cmd":"speak","text":{},"voice":"shimmer","model":"gpt-4o-mini-tts-2025-03-20","format":"opus","speed":1.25,"instructions":{},"priority":"interrupt","id":{},"cache":true}}"#,
                ascii_json(&text),
                ascii_json(&"Speak calmly, 😀. ".repeat(100)),
                ascii_json(&"x".repeat(MAX_ID_BYTES)),
            );
            assert!(
                line.len() <= max_line_bytes(n),
                "{c:?}: {} bytes",
                line.len()
            );
            let Request::Speak(s) = parse_line(line.as_bytes()).unwrap() else {
                panic!()
            };
            assert_eq!(s.text, text);
        }
        assert_eq!(max_line_bytes(20_000), 20_000 * 12 + 65_536);
        assert_eq!(max_line_bytes(usize::MAX), usize::MAX);
        let e = ProtocolError::TooLong {
            len: 400_000,
            limit: max_line_bytes(20_000),
            max_text_chars: 20_000,
        }
        .to_string();
        assert!(
            e.contains("at most 305536 bytes") && e.contains("speech.max_text_chars = 20000"),
            "{e}"
        );
    }

    #[test]
    fn ids_with_control_characters_are_refused_for_every_command() {
        for line in [
            r#"{"text":"x","id":"a\nFAKE job finished"}"#,
            r#"{"cmd":"preset","name":"dinner","id":"tab\there"}"#,
            r#"{"cmd":"cancel","id":"a\r"}"#,
            r#"{"cmd":"cancel","id":"nel\u0085"}"#,
        ] {
            let e = err(line.as_bytes());
            assert!(
                e.contains("control character") && e.contains("printable"),
                "{line}: {e}"
            );
        }
        let e = err(format!(r#"{{"text":"x","id":"{}"}}"#, "y".repeat(129)).as_bytes());
        assert!(e.contains("1 to 128 bytes"), "{e}");
        assert!(err(br#"{"cmd":"cancel","id":""}"#).contains("1 to 128 bytes"));
        // Printable non-ASCII is fine.
        assert!(parse_line(r#"{"text":"x","id":"Küche-1 ✓"}"#.as_bytes()).is_ok());
    }

    #[test]
    fn requests_serialise_to_the_documented_lines_and_parse_back() {
        let speak = Request::Speak(SpeakRequest {
            text: "Hi".into(),
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_string(&speak).unwrap(),
            r#"{"cmd":"speak","text":"Hi","priority":"normal"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Cancel { id: "a".into() }).unwrap(),
            r#"{"cmd":"cancel","id":"a"}"#
        );
        let all = [
            speak,
            Request::Speak(SpeakRequest {
                text: "Door.".into(),
                voice: Some("nova".into()),
                model: Some("tts-1".into()),
                format: Some(FormatChoice::Pcm),
                speed: Some(1.5),
                instructions: Some("Calm.".into()),
                priority: Priority::Interrupt,
                id: Some("door".into()),
                cache: true,
                volume: Some(Volume::new(40.0).unwrap()),
                expires_in_s: Some(ExpiresIn::new(2.5).unwrap()),
                chime: None,
                chime_after: None,
                fallback: Some(false),
                to: Some("house".into()),
            }),
            Request::Stop,
            Request::Skip,
            Request::Cancel { id: "door".into() },
            Request::Status,
            Request::Preset(PresetRequest {
                name: "dinner".into(),
                id: Some("p".into()),
                while_playing: Some(WhilePlaying::Queue),
                volume: Some(Volume::new(0.0).unwrap()),
                expires_in_s: Some(ExpiresIn::new(30.0).unwrap()),
                chime: None,
                to: None,
            }),
            Request::Presets,
            Request::ResetNetworkModel,
        ];
        for req in all {
            let line = serde_json::to_string(&req).unwrap();
            assert_eq!(parse_line(line.as_bytes()).unwrap(), req, "{line}");
        }
    }

    #[test]
    fn allowed_fields_are_the_fields_the_types_serialise() {
        // A request with every field set serialises exactly the fields listed as allowed.
        let keys = |v: serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let listed = |cmd: &str| -> Vec<String> {
            // Drop the value lists in parentheses, keep the field names.
            let mut depth = 0;
            let names: String = allowed_fields(cmd)
                .chars()
                .filter(|c| {
                    depth += i32::from(*c == '(') - i32::from(*c == ')');
                    depth == 0 && *c != ')'
                })
                .collect();
            let mut k: Vec<String> = names.split(',').map(|f| f.trim().to_string()).collect();
            k.sort();
            k
        };
        let full_speak = Request::Speak(SpeakRequest {
            text: "x".into(),
            voice: Some("nova".into()),
            model: Some("tts-1".into()),
            format: Some(FormatChoice::Opus),
            speed: Some(1.0),
            instructions: Some("i".into()),
            priority: Priority::High,
            id: Some("i".into()),
            cache: true,
            volume: Some(Volume::FULL),
            expires_in_s: Some(ExpiresIn::new(1.0).unwrap()),
            chime: Some(ChimeChoice::Named("ding".into())),
            chime_after: Some(ChimeChoice::Default(false)),
            fallback: Some(false),
            to: Some("house".into()),
        });
        assert_eq!(
            keys(serde_json::to_value(full_speak).unwrap()),
            listed("speak")
        );
        let full_preset = Request::Preset(PresetRequest {
            name: "n".into(),
            id: Some("i".into()),
            while_playing: Some(WhilePlaying::Restart),
            volume: Some(Volume::FULL),
            expires_in_s: Some(ExpiresIn::new(1.0).unwrap()),
            chime: Some(ChimeChoice::Default(true)),
            to: Some("house".into()),
        });
        assert_eq!(
            keys(serde_json::to_value(full_preset).unwrap()),
            listed("preset")
        );
        let cancel = Request::Cancel { id: "i".into() };
        assert_eq!(
            keys(serde_json::to_value(cancel).unwrap()),
            listed("cancel")
        );
        assert_eq!(
            keys(serde_json::to_value(Request::Stop).unwrap()),
            listed("stop")
        );
        assert_eq!(
            allowed_fields("speak"),
            "cmd, text, voice, model, format (opus, pcm, auto), speed, instructions, \
             priority (normal, high, interrupt), id, cache, volume (0 to 100), \
             expires_in_s (seconds above 0), chime (a [chimes] name, true, false), \
             chime_after (a [chimes] name, true, false), fallback, to"
        );
        assert_eq!(
            allowed_fields("preset"),
            "cmd, name, id, while_playing (ignore, restart, queue), volume (0 to 100), \
             expires_in_s (seconds above 0), chime (a [chimes] name, true, false), to"
        );
    }

    #[test]
    fn replies_are_one_json_line_tagged_by_event() {
        let line = Reply::Queued {
            id: "j1".into(),
            position: 2,
        }
        .to_line();
        assert_eq!(
            line,
            "{\"event\":\"queued\",\"id\":\"j1\",\"position\":2}\n"
        );
        let back: Reply = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(
            back,
            Reply::Queued {
                id: "j1".into(),
                position: 2
            }
        );
        assert!(Reply::Failed {
            id: None,
            reason: "x".into()
        }
        .is_terminal());
        // `forgotten` is on the reset's `ok` only; other `ok` lines are as before.
        let reset = Reply::Ok {
            cmd: OkCommand::ResetNetworkModel,
            jobs: Vec::new(),
            forgotten: Some(2),
        };
        let line = reset.to_line();
        assert_eq!(
            line,
            "{\"event\":\"ok\",\"cmd\":\"reset_network_model\",\"jobs\":[],\"forgotten\":2}\n"
        );
        assert_eq!(serde_json::from_str::<Reply>(line.trim()).unwrap(), reset);
        let stop = Reply::Ok {
            cmd: OkCommand::Stop,
            jobs: vec!["a".into()],
            forgotten: None,
        };
        assert_eq!(
            stop.to_line(),
            "{\"event\":\"ok\",\"cmd\":\"stop\",\"jobs\":[\"a\"]}\n"
        );
        assert_eq!(
            OkCommand::ResetNetworkModel.to_string(),
            "reset_network_model"
        );
    }
}
