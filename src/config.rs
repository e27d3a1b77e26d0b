//! The TOML configuration: defaults, validation with line numbers, unknown-key warnings,
//! environment overrides and loading the API key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audio::playout::PlayoutConfig;
use crate::audio::SinkRequest;
use crate::buttons::config::ButtonConfig;
use crate::chimes::ChimeConfig;
use crate::control::server::Limits;
use crate::fallback::{Engine, FallbackSettings};
use crate::outputs::OutputConfig;
use crate::pipeline::Voice;
use crate::presets::PresetConfig;
use crate::protocol::ExpiresIn;
use crate::tts::openai::{redact_userinfo, OpenAiConfig};
use crate::tts::{ApiKey, FormatChoice, RequestField};
use crate::volume::{QuietHours, Volume, VolumePolicy};

/// Where the daemon and the CLI look for the config when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/herald/herald.toml";
/// File name of the API key inside `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
pub const CREDENTIAL_NAME: &str = "openai_api_key";
/// The most `speech.max_text_chars` may be: the request line limit derived from it (12
/// bytes a character) must stay small enough to hold for every connection.
pub const MAX_TEXT_CHARS_LIMIT: usize = 200_000;

/// The whole configuration. Every field has a default; see `deploy/herald.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// How to reach the speech API.
    pub api: ApiSection,
    /// What to ask the speech API for.
    pub speech: SpeechSection,
    /// The audio device and the playout buffer.
    pub audio: AudioSection,
    /// `herald serve`: the control socket, the queue and the device's life cycle.
    pub daemon: DaemonSection,
    /// The on-disk audio cache (presets and `"cache": true` requests).
    pub cache: CacheSection,
    /// The local voice that speaks when the API can't be reached.
    pub fallback: FallbackSection,
    /// Named announcements (`[presets.NAME]`); none by default.
    #[serde(skip_serializing)]
    pub presets: BTreeMap<String, PresetConfig>,
    /// GPIO buttons (`[[buttons]]`); none by default.
    #[serde(skip_serializing)]
    pub buttons: Vec<ButtonConfig>,
    /// Named outputs a job can be sent to with `to` (`[outputs.NAME]`); none by default.
    #[serde(skip_serializing)]
    pub outputs: BTreeMap<String, OutputConfig>,
    /// Named chimes (`[chimes.NAME]`); none by default.
    #[serde(skip_serializing)]
    pub chimes: BTreeMap<String, ChimeConfig>,
}

/// `[cache]`: where rendered audio is kept and how much.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CacheSection {
    /// Directory of the cache; `herald serve` prefers `$CACHE_DIRECTORY` (systemd) when set.
    pub dir: PathBuf,
    /// Largest total size in MiB; least recently used unpinned audio is evicted first.
    pub max_mb: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            dir: PathBuf::from("/var/cache/herald"),
            max_mb: 64,
        }
    }
}

/// `[fallback]`: the local voice that speaks when OpenAI can't be reached (docs/FALLBACK.md).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct FallbackSection {
    /// `espeak-ng` or `none`.
    pub engine: Engine,
    /// espeak-ng voice or language, e.g. `en`, `en-us`, `de`.
    pub voice: String,
    /// Words per minute.
    pub rate: u32,
}

impl Default for FallbackSection {
    fn default() -> Self {
        let d = FallbackSettings::default();
        FallbackSection {
            engine: d.engine,
            voice: d.voice,
            rate: d.rate,
        }
    }
}

/// `[daemon]`: the control socket, the queue, lead-in, idle close, hooks and keep-alive.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct DaemonSection {
    /// Path of the control socket (used when systemd does not pass one).
    pub socket_path: PathBuf,
    /// Group given to the socket file ("" = leave it as created).
    pub socket_group: String,
    /// Permissions of the socket file, octal, e.g. "0660".
    pub socket_mode: String,
    /// Connections served at once; more are refused with a message.
    pub max_connections: usize,
    /// Jobs waiting at most (the playing one not counted); more are refused.
    pub queue_size: usize,
    /// Silence fed to a freshly opened device before the first voice.
    pub lead_in_ms: u32,
    /// Seconds the device stays open after the last job (0 = never close).
    pub idle_close_s: u64,
    /// Command (argv, no shell) run before the device is opened; empty = none.
    pub hook_before_open: Vec<String>,
    /// Command (argv, no shell) run after the device is closed; empty = none.
    pub hook_after_close: Vec<String>,
    /// Longest a hook may run before it is killed.
    pub hook_timeout_ms: u64,
    /// Seconds of quiet after which the API connection is refreshed (0 = off).
    pub keepalive_s: u64,
    /// Seconds a client connection with no job in flight may stay without sending a
    /// complete request before it is closed (0 = never).
    pub idle_timeout_s: u64,
    /// Seconds a job may wait in the queue before it expires unplayed, for requests that
    /// give no `expires_in_s` (none = wait as long as it takes).
    pub default_expiry_s: Option<ExpiresIn>,
    /// The chime played before every job that names none (none = no chime).
    pub chime: Option<String>,
    /// The chime played after every job that names none (none = no end chime).
    pub chime_after: Option<String>,
    /// Silence between a chime and the speech, in ms.
    pub chime_gap_ms: u32,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            socket_path: PathBuf::from("/run/herald/herald.sock"),
            socket_group: String::new(),
            socket_mode: "0660".into(),
            max_connections: 16,
            queue_size: 32,
            lead_in_ms: 200,
            idle_close_s: 10,
            hook_before_open: Vec::new(),
            hook_after_close: Vec::new(),
            hook_timeout_ms: 5000,
            keepalive_s: 50,
            idle_timeout_s: 30,
            default_expiry_s: None,
            chime: None,
            chime_after: None,
            chime_gap_ms: 150,
        }
    }
}

impl DaemonSection {
    /// `socket_mode` as permission bits (validated when the config is loaded).
    pub fn socket_mode_bits(&self) -> u32 {
        parse_mode(&self.socket_mode).unwrap_or(0o660)
    }
}

/// Parses an octal permission string such as "0660" or "660".
fn parse_mode(s: &str) -> Option<u32> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    u32::from_str_radix(t, 8).ok().filter(|m| *m <= 0o777)
}

/// `[api]`: endpoint, key, timeouts and retries.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiSection {
    /// Base URL of an OpenAI-compatible API; `OPENAI_BASE_URL` overrides it.
    pub api_base: String,
    /// File holding the API key; `OPENAI_API_KEY` overrides it.
    pub api_key_file: Option<PathBuf>,
    /// TCP+TLS connect timeout.
    pub connect_timeout_ms: u64,
    /// Request sent → first audio byte.
    pub first_byte_timeout_ms: u64,
    /// Longest pause in the audio stream before giving up.
    pub stall_timeout_ms: u64,
    /// Attempts per segment for retryable failures (1 = no retry).
    pub max_attempts: u32,
    /// Request sent → first audio, over all attempts and the waits between them.
    pub first_audio_deadline_ms: u64,
}

impl std::fmt::Debug for ApiSection {
    /// Like the derived one, but credentials in `api_base` are never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSection")
            .field("api_base", &redact_userinfo(&self.api_base))
            .field("api_key_file", &self.api_key_file)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("first_byte_timeout_ms", &self.first_byte_timeout_ms)
            .field("stall_timeout_ms", &self.stall_timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("first_audio_deadline_ms", &self.first_audio_deadline_ms)
            .finish()
    }
}

/// `[speech]`: defaults for every request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SpeechSection {
    /// Model name.
    pub model: String,
    /// Voice name.
    pub voice: String,
    /// `opus`, `pcm` or `auto` (the first sentence as pcm, the rest as opus).
    pub format: FormatChoice,
    /// 0.25–4.0.
    pub speed: f32,
    /// Voice instructions (empty = none; not for tts-1/tts-1-hd).
    pub instructions: String,
    /// Longest text accepted for one announcement, in characters.
    pub max_text_chars: usize,
    /// Segments requested ahead of the one playing.
    pub lookahead: usize,
}

/// `[audio]`: the device and the playout buffer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct AudioSection {
    /// ALSA PCM name.
    pub device: String,
    /// Preferred sample rate (an Opus rate decodes without resampling).
    pub rate: u32,
    /// Period length in milliseconds.
    pub period_ms: u32,
    /// Periods in the device buffer.
    pub buffer_periods: u32,
    /// Never start an utterance with less than this buffered (unless it is all in).
    pub min_prebuffer_ms: u32,
    /// Extra audio held back to ride out network stalls.
    pub jitter_reserve_ms: u32,
    /// Most decoded audio held in memory ahead of the device.
    pub max_buffer_ms: u32,
    /// SCHED_FIFO priority for the audio thread (0 = don't ask).
    pub realtime_priority: i32,
    /// A device write blocked this long means the device hangs: the job fails and the
    /// device is reopened.
    pub write_timeout_ms: u64,
    /// The slowest tempo playback slows to while its buffer is short (1.0 = never).
    pub max_slowdown: f32,
    /// The share of past utterances whose lateness a learned start covers (0.5–0.999).
    pub start_quantile: f64,
    /// Volume (0–100, cubic) of jobs that ask for none.
    pub volume: Volume,
    /// No job plays quieter than this, whatever it asks.
    pub min_volume: Volume,
    /// No job plays louder than this, whatever it asks.
    pub max_volume: Volume,
    /// `[[audio.quiet_hours]]`: local-time windows with a lower `max_volume`.
    pub quiet_hours: Vec<QuietHours>,
}

impl Default for ApiSection {
    fn default() -> Self {
        let t = OpenAiConfig::default();
        ApiSection {
            api_base: t.api_base,
            api_key_file: None,
            connect_timeout_ms: t.connect_timeout.as_millis() as u64,
            first_byte_timeout_ms: t.first_byte_timeout.as_millis() as u64,
            stall_timeout_ms: t.stall_timeout.as_millis() as u64,
            max_attempts: t.max_attempts,
            first_audio_deadline_ms: t.first_audio_deadline.as_millis() as u64,
        }
    }
}

impl Default for SpeechSection {
    fn default() -> Self {
        SpeechSection {
            model: "gpt-4o-mini-tts".into(),
            voice: "alloy".into(),
            format: FormatChoice::Opus,
            speed: 1.0,
            instructions: String::new(),
            max_text_chars: 20_000,
            lookahead: 1,
        }
    }
}

impl Default for AudioSection {
    fn default() -> Self {
        let s = SinkRequest::default();
        let p = PlayoutConfig::default();
        AudioSection {
            device: "default".into(),
            rate: s.rate,
            period_ms: s.period_ms,
            buffer_periods: s.buffer_periods,
            min_prebuffer_ms: p.min_prebuffer_ms,
            jitter_reserve_ms: p.jitter_reserve_ms,
            max_buffer_ms: p.max_buffer_ms,
            realtime_priority: p.realtime_priority.unwrap_or(0),
            write_timeout_ms: 5000,
            max_slowdown: crate::audio::stretch::DEFAULT_MIN_TEMPO,
            start_quantile: crate::netmodel::DEFAULT_QUANTILE,
            volume: Volume::FULL,
            min_volume: Volume::SILENT,
            max_volume: Volume::FULL,
            quiet_hours: Vec::new(),
        }
    }
}

/// A config that failed to load; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax or type error.
    #[error("config {path}, line {line}, column {column}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A value outside what herald accepts.
    #[error("config {path}{}: {key}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The dotted key, e.g. `audio.period_ms`.
        key: String,
        /// 1-based line of the problem.
        line: Option<usize>,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The API key file could not be read.
    #[error("cannot read API key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A loaded config plus the warnings found while loading it.
#[derive(Debug)]
pub struct Loaded {
    /// The effective config.
    pub config: Config,
    /// Unknown keys and other non-fatal findings, each naming the key and line.
    pub warnings: Vec<String>,
    /// The file it came from (`None` = built-in defaults).
    pub path: Option<PathBuf>,
}

impl Config {
    /// Loads `path`, or `DEFAULT_PATH` if it exists, or the defaults; then applies the
    /// environment (`OPENAI_BASE_URL`) and validates.
    pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        let chosen = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
        };
        let mut loaded = match &chosen {
            Some(p) => {
                let src = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                let (config, warnings) = Config::parse(&src, p)?;
                Loaded {
                    config,
                    warnings,
                    path: chosen.clone(),
                }
            }
            None => Loaded {
                config: Config::default(),
                warnings: Vec::new(),
                path: None,
            },
        };
        if let Ok(base) = std::env::var("OPENAI_BASE_URL") {
            if !base.trim().is_empty() {
                loaded.config.api.api_base = base.trim().to_string();
            }
        }
        loaded.warnings.extend(loaded.config.key_file_warning());
        Ok(loaded)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn parse(src: &str, path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let de = toml::Deserializer::new(src);
        let config: Config = serde_ignored::deserialize(de, |key| {
            let key = key.to_string();
            let line = line_of(src, &key)
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            warnings.push(format!("unknown key '{key}'{line} is ignored"));
        })
        .map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(src, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        config.validate(src, path)?;
        warnings.extend(config.preset_warnings());
        let api = &config.api;
        if api.first_byte_timeout_ms > api.first_audio_deadline_ms {
            warnings.push(format!(
                "api.first_byte_timeout_ms ({}) is above api.first_audio_deadline_ms ({}): \
                 every attempt is cut at the deadline, so only one is made",
                api.first_byte_timeout_ms, api.first_audio_deadline_ms
            ));
        }
        Ok((config, warnings))
    }

    fn validate(&self, src: &str, path: &Path) -> Result<(), ConfigError> {
        let c = Checker { src, path };
        self.check_speech(&c)?;
        self.check_audio(&c)?;
        self.check_api(&c)?;
        self.check_daemon(&c)?;
        self.check_cache(&c)?;
        if let Err(e) = crate::outputs::validate(&self.outputs) {
            return Err(c.bad(&e.key, e.message));
        }
        self.check_routes(&c)?;
        self.check_fallback(&c)?;
        self.check_presets_and_buttons(&c)?;
        self.check_chimes(&c)
    }

    /// `[chimes.*]` and every place that names a chime: each name must be configured.
    fn check_chimes(&self, c: &Checker) -> Result<(), ConfigError> {
        c.in_range(
            "daemon.chime_gap_ms",
            self.daemon.chime_gap_ms,
            0..=5000,
            "0 to 5000",
        )?;
        for (name, chime) in &self.chimes {
            if chime.file.as_os_str().is_empty() {
                return Err(c.table(
                    format!("chimes.{name}"),
                    "file: must name an Ogg Opus or WAV file".into(),
                ));
            }
        }
        let d = &self.daemon;
        let mut uses: Vec<(String, &str)> = Vec::new();
        uses.extend(d.chime.as_deref().map(|n| ("daemon.chime".to_string(), n)));
        uses.extend(
            d.chime_after
                .as_deref()
                .map(|n| ("daemon.chime_after".to_string(), n)),
        );
        for (preset, p) in &self.presets {
            for (field, choice) in [("chime", &p.chime), ("chime_after", &p.chime_after)] {
                if let Some(crate::chimes::ChimeChoice::Named(n)) = choice {
                    uses.push((format!("presets.{preset}.{field}"), n));
                }
            }
        }
        for b in &self.buttons {
            if let Some(crate::chimes::ChimeChoice::Named(n)) = &b.chime {
                uses.push((format!("buttons (pin {}) chime", b.pin), n));
            }
        }
        for (key, name) in uses {
            if let Err(e) = crate::chimes::check_name(name, self.chimes.keys()) {
                let at = key.split(' ').next().unwrap_or(&key).to_string();
                return Err(c.bad(&at, format!("{key}: {e}")));
            }
        }
        Ok(())
    }

    /// `[speech]`: the request's own rules and the text limits.
    fn check_speech(&self, c: &Checker) -> Result<(), ConfigError> {
        let s = &self.speech;
        // The request's own rules, reported against the config key.
        if let Err(e) = self.default_voice().request("x".into()).check() {
            let key = match e.field {
                RequestField::Model => "speech.model",
                RequestField::Voice => "speech.voice",
                RequestField::Speed => "speech.speed",
                RequestField::Instructions => "speech.instructions",
                RequestField::Input => "speech",
            };
            return Err(c.bad(key, e.message));
        }
        c.in_range(
            "speech.max_text_chars",
            s.max_text_chars,
            1..=MAX_TEXT_CHARS_LIMIT,
            &format!("1 to {MAX_TEXT_CHARS_LIMIT}"),
        )?;
        c.in_range("speech.lookahead", s.lookahead, 0..=4, "0 to 4")?;
        Ok(())
    }

    /// `[audio]`: the device request and the playout's own rules.
    fn check_audio(&self, c: &Checker) -> Result<(), ConfigError> {
        let a = &self.audio;
        if a.device.trim().is_empty() {
            return Err(c.bad(
                "audio.device",
                "must name an ALSA PCM, e.g. \"default\" or \"hw:1,0\"".into(),
            ));
        }
        if !(8_000..=192_000).contains(&a.rate) {
            return Err(c.bad(
                "audio.rate",
                format!("{} Hz is out of range (allowed: 8000 to 192000)", a.rate),
            ));
        }
        c.in_range("audio.period_ms", a.period_ms, 2..=500, "2 to 500")?;
        c.in_range("audio.buffer_periods", a.buffer_periods, 2..=64, "2 to 64")?;
        // The playout's own rules, reported against the config key.
        if let Err(crate::audio::playout::PlayoutError::Config {
            field,
            value,
            allowed,
        }) = self.playout().validate()
        {
            return Err(c.bad(
                &format!("audio.{field}"),
                format!("{value} is out of range (allowed: {allowed})"),
            ));
        }
        if let Err(e @ crate::audio::playout::PlayoutError::Tempo { .. }) =
            self.playout().validate()
        {
            return Err(c.bad("audio.max_slowdown", e.to_string()));
        }
        c.in_range(
            "audio.start_quantile",
            a.start_quantile,
            0.5..=0.999,
            "0.5 to 0.999: the share of past announcements a learned start would have played without a gap",
        )?;
        // A drain legitimately blocks for a whole device buffer: the timeout must outlast it.
        let buffer_ms = u64::from(a.period_ms) * u64::from(a.buffer_periods);
        c.in_range("audio.write_timeout_ms", a.write_timeout_ms, buffer_ms + 1000..=120_000, &format!("the device buffer, period_ms × buffer_periods = {buffer_ms} ms, plus 1000, up to 120000 ms"))?;
        self.check_volume(c)
    }

    /// `audio.min_volume` ≤ `audio.max_volume`, and each quiet-hours window's own rule
    /// (the values themselves are checked by their types as they are read).
    fn check_volume(&self, c: &Checker) -> Result<(), ConfigError> {
        let a = &self.audio;
        if a.min_volume > a.max_volume {
            return Err(c.bad(
                "audio.min_volume",
                format!(
                    "{} is above audio.max_volume = {} (allowed: min_volume ≤ max_volume)",
                    a.min_volume, a.max_volume
                ),
            ));
        }
        for (i, q) in a.quiet_hours.iter().enumerate() {
            if let Err(e) = q.validate() {
                return Err(ConfigError::Invalid {
                    path: c.path.to_path_buf(),
                    key: format!("audio.quiet_hours[{i}]"),
                    line: nth_header_line(c.src, "audio.quiet_hours", i),
                    message: e,
                });
            }
        }
        Ok(())
    }

    /// `[api]`: the endpoint, attempts, timeouts and the first-audio deadline.
    fn check_api(&self, c: &Checker) -> Result<(), ConfigError> {
        let api = &self.api;
        if !(api.api_base.starts_with("https://") || api.api_base.starts_with("http://")) {
            return Err(c.bad(
                "api.api_base",
                format!("'{}' is not an http(s) URL", redact_userinfo(&api.api_base)),
            ));
        }
        c.in_range("api.max_attempts", api.max_attempts, 1..=10, "1 to 10")?;
        for (key, v) in [
            ("api.connect_timeout_ms", api.connect_timeout_ms),
            ("api.first_byte_timeout_ms", api.first_byte_timeout_ms),
            ("api.stall_timeout_ms", api.stall_timeout_ms),
        ] {
            c.in_range(key, v, 100..=600_000, "100 to 600000 ms")?;
        }
        c.in_range(
            "api.first_audio_deadline_ms",
            api.first_audio_deadline_ms,
            1_000..=600_000,
            "1000 to 600000 ms",
        )?;
        Ok(())
    }

    /// `[daemon]`: the socket, the queue, the device's life and the connections.
    fn check_daemon(&self, c: &Checker) -> Result<(), ConfigError> {
        let d = &self.daemon;
        if d.socket_path.as_os_str().is_empty() || d.socket_path.as_os_str().len() > 100 {
            return Err(c.bad(
                "daemon.socket_path",
                "must be a path of 1 to 100 bytes (unix socket addresses are short)".into(),
            ));
        }
        if parse_mode(&d.socket_mode).is_none() {
            return Err(c.bad(
                "daemon.socket_mode",
                format!(
                    "'{}' is not an octal mode (allowed: \"0600\" to \"0777\", e.g. \"0660\")",
                    d.socket_mode
                ),
            ));
        }
        c.in_range(
            "daemon.max_connections",
            d.max_connections,
            1..=1024,
            "1 to 1024",
        )?;
        c.in_range("daemon.queue_size", d.queue_size, 1..=10_000, "1 to 10000")?;
        c.in_range("daemon.lead_in_ms", d.lead_in_ms, 0..=5000, "0 to 5000")?;
        c.in_range(
            "daemon.idle_close_s",
            d.idle_close_s,
            0..=86_400,
            "0 = never close, 1 to 86400",
        )?;
        c.in_range(
            "daemon.hook_timeout_ms",
            d.hook_timeout_ms,
            100..=600_000,
            "100 to 600000 ms",
        )?;
        for (key, hook) in [
            ("daemon.hook_before_open", &d.hook_before_open),
            ("daemon.hook_after_close", &d.hook_after_close),
        ] {
            if hook.first().is_some_and(|p| p.trim().is_empty()) {
                return Err(c.bad(
                    key,
                    "the first element must name a program (or use [] for none)".into(),
                ));
            }
        }
        c.in_range(
            "daemon.keepalive_s",
            d.keepalive_s,
            0..=86_400,
            "0 = off, 1 to 86400",
        )?;
        c.in_range(
            "daemon.idle_timeout_s",
            d.idle_timeout_s,
            0..=86_400,
            "0 = never, 1 to 86400",
        )?;
        Ok(())
    }

    /// `[cache]`.
    fn check_cache(&self, c: &Checker) -> Result<(), ConfigError> {
        c.in_range("cache.max_mb", self.cache.max_mb, 1..=4096, "1 to 4096")?;
        if self.cache.dir.as_os_str().is_empty() {
            return Err(c.bad("cache.dir", "must name a directory".into()));
        }
        Ok(())
    }

    /// Every preset's and button's `to` names a configured output.
    fn check_routes(&self, c: &Checker) -> Result<(), ConfigError> {
        for (name, p) in &self.presets {
            if let Err(e) = crate::outputs::check_to(p.to.as_deref(), &self.outputs) {
                return Err(c.bad(&format!("presets.{name}.to"), e));
            }
        }
        for (i, b) in self.buttons.iter().enumerate() {
            if let Err(e) = crate::outputs::check_to(b.to.as_deref(), &self.outputs) {
                let key = format!("buttons (button {} on pin {})", i + 1, b.pin);
                return Err(c.table("buttons".into(), format!("{key}: {e}")));
            }
        }
        Ok(())
    }

    /// `[fallback]`: the fallback module's own rules, reported against the config key.
    fn check_fallback(&self, c: &Checker) -> Result<(), ConfigError> {
        let f = &self.fallback;
        crate::fallback::check_voice(&f.voice).map_err(|m| c.bad("fallback.voice", m))?;
        crate::fallback::check_rate(f.rate).map_err(|m| c.bad("fallback.rate", m))
    }

    /// The `[fallback]` settings the engine is built from.
    pub fn fallback(&self) -> FallbackSettings {
        let f = &self.fallback;
        FallbackSettings {
            engine: f.engine,
            voice: f.voice.clone(),
            rate: f.rate,
        }
    }

    /// `[presets.*]` and `[[buttons]]`, the presets with the `[speech]` defaults applied.
    fn check_presets_and_buttons(&self, c: &Checker) -> Result<(), ConfigError> {
        if let Err(e) = crate::buttons::config::validate(&self.buttons, self.presets.keys()) {
            return Err(c.table("buttons".into(), e.to_string()));
        }
        if let Err(e) = crate::presets::validate(&self.presets) {
            let key = match &e {
                crate::presets::PresetError::BadName { name }
                | crate::presets::PresetError::EmptyText { preset: name }
                | crate::presets::PresetError::TextTooLong { preset: name, .. }
                | crate::presets::PresetError::Request { preset: name, .. } => {
                    format!("presets.{name}")
                }
            };
            return Err(c.table(key, e.to_string()));
        }
        // Combinations with the [speech] defaults (e.g. instructions with tts-1).
        if let Err(e) = crate::presets::requests(&self.presets, &self.default_voice()) {
            let key = match &e {
                crate::presets::PresetError::Request { preset, .. } => format!("presets.{preset}"),
                _ => "presets".to_string(),
            };
            return Err(c.table(key, e.to_string()));
        }
        Ok(())
    }

    /// The API key: `OPENAI_API_KEY`, else `api.api_key_file`, else the systemd credential
    /// `$CREDENTIALS_DIRECTORY/openai_api_key`; `None` if none is set.
    pub fn api_key(&self) -> Result<Option<ApiKey>, ConfigError> {
        if let Ok(k) = std::env::var("OPENAI_API_KEY") {
            if !k.trim().is_empty() {
                return Ok(Some(ApiKey::new(k)));
            }
        }
        match self.key_file() {
            Some(path) => {
                let key = std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::KeyFile { path, source })?;
                Ok(Some(ApiKey::new(key)).filter(|k| !k.expose().is_empty()))
            }
            None => Ok(None),
        }
    }

    /// The file the key is read from when `OPENAI_API_KEY` is not set: `api.api_key_file`,
    /// else the systemd credential, if it exists.
    pub fn key_file(&self) -> Option<PathBuf> {
        self.api.api_key_file.clone().or_else(|| {
            std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| Path::new(&d).join(CREDENTIAL_NAME))
                .filter(|p| p.exists())
        })
    }

    /// A warning when the key file may be read by other users (group or other read
    /// permission): the key is a secret that costs money. Not an error: herald works.
    pub fn key_file_warning(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.key_file()?;
        let mode = std::fs::metadata(&path).ok()?.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then(|| {
            format!(
                "the API key file {} is readable by {} (mode {mode:04o}): run \
                 `chmod 600 {}` (or write it with `install -m 0600`)",
                path.display(),
                if mode & 0o004 != 0 {
                    "every user"
                } else {
                    "its group"
                },
                path.display()
            )
        })
    }

    /// Limits of the control socket.
    pub fn server_limits(&self) -> Limits {
        Limits {
            max_connections: self.daemon.max_connections,
            idle_timeout: Some(Duration::from_secs(self.daemon.idle_timeout_s))
                .filter(|d| !d.is_zero()),
            max_text_chars: self.speech.max_text_chars,
        }
    }

    /// Settings for the OpenAI client.
    pub fn openai(&self, api_key: Option<ApiKey>) -> OpenAiConfig {
        OpenAiConfig {
            api_base: self.api.api_base.clone(),
            api_key,
            connect_timeout: Duration::from_millis(self.api.connect_timeout_ms),
            first_byte_timeout: Duration::from_millis(self.api.first_byte_timeout_ms),
            stall_timeout: Duration::from_millis(self.api.stall_timeout_ms),
            max_attempts: self.api.max_attempts,
            first_audio_deadline: Duration::from_millis(self.api.first_audio_deadline_ms),
            ..OpenAiConfig::default()
        }
    }

    /// What to ask the audio device for.
    pub fn sink_request(&self) -> SinkRequest {
        SinkRequest {
            rate: self.audio.rate,
            channels: 1,
            period_ms: self.audio.period_ms,
            buffer_periods: self.audio.buffer_periods,
        }
    }

    /// Settings for the playout buffer and the audio thread.
    pub fn playout(&self) -> PlayoutConfig {
        PlayoutConfig {
            min_prebuffer_ms: self.audio.min_prebuffer_ms,
            jitter_reserve_ms: self.audio.jitter_reserve_ms,
            max_buffer_ms: self.audio.max_buffer_ms,
            // 0 means off; anything else is checked by the playout's own rules.
            realtime_priority: Some(self.audio.realtime_priority).filter(|&p| p != 0),
            max_slowdown: self.audio.max_slowdown,
            ..PlayoutConfig::default()
        }
    }

    /// How a job's volume is decided (`[audio]` volume, limits and quiet hours).
    pub fn volume_policy(&self) -> VolumePolicy {
        let a = &self.audio;
        VolumePolicy {
            default: a.volume,
            min: a.min_volume,
            max: a.max_volume,
            quiet_hours: a.quiet_hours.clone(),
        }
    }

    /// The `[speech]` defaults as a voice (speed 1.0 and empty instructions left unset, as
    /// for `speak` requests, so presets and requests share cache keys).
    pub fn default_voice(&self) -> Voice {
        let s = &self.speech;
        Voice {
            model: s.model.clone(),
            voice: s.voice.clone(),
            format: s.format,
            speed: Some(s.speed).filter(|&v| v != 1.0),
            instructions: Some(s.instructions.clone()).filter(|i| !i.trim().is_empty()),
        }
    }

    /// Where `herald serve` keeps its cache: `$CACHE_DIRECTORY` (systemd) when set, else
    /// `cache.dir`.
    pub fn cache_dir(&self) -> PathBuf {
        std::env::var_os("CACHE_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(|d| {
                // systemd may pass several directories separated by ':'; the first is ours.
                let d = d.to_string_lossy().into_owned();
                PathBuf::from(d.split(':').next().unwrap_or(&d))
            })
            .unwrap_or_else(|| self.cache.dir.clone())
    }

    /// Preset and button warnings (wirings that are probably mistakes).
    pub fn preset_warnings(&self) -> Vec<String> {
        crate::buttons::config::wiring_warnings(&self.buttons)
    }
}

/// Where a config's text came from, for errors that name the key and its line.
struct Checker<'a> {
    src: &'a str,
    path: &'a Path,
}

impl Checker<'_> {
    /// `value` of `key` must lie in `range`; `allowed` says what is, in words.
    fn in_range<T>(
        &self,
        key: &str,
        value: T,
        range: std::ops::RangeInclusive<T>,
        allowed: &str,
    ) -> Result<(), ConfigError>
    where
        T: PartialOrd + std::fmt::Display,
    {
        if range.contains(&value) {
            return Ok(());
        }
        Err(self.bad(key, format!("{value} is out of range (allowed: {allowed})")))
    }

    /// `key` (dotted) holds a bad value.
    fn bad(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            line: line_of(self.src, key),
            message,
        }
    }

    /// Table `key` (`[key]` or `[[key]]`) is bad as a whole.
    fn table(&self, key: String, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: header_line(self.src, &key),
            key,
            message,
        }
    }
}

/// The line of table header `[key]` (or `[[key]]`), if present.
fn header_line(src: &str, key: &str) -> Option<usize> {
    src.lines()
        .position(|l| l.trim().trim_matches(|c| c == '[' || c == ']').trim() == key)
        .map(|i| i + 1)
}

/// The line of the `n`th (0-based) `[[key]]` header, if present.
fn nth_header_line(src: &str, key: &str, n: usize) -> Option<usize> {
    src.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim();
            t.starts_with("[[") && t.trim_matches(|c| c == '[' || c == ']').trim() == key
        })
        .nth(n)
        .map(|(i, _)| i + 1)
}

/// 1-based line and column of byte offset `at` in `src`.
fn line_col(src: &str, at: usize) -> (usize, usize) {
    let before = &src[..at.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// The line where dotted `key` (e.g. `audio.period_ms`) is set, found by scanning for its
/// table header and then the key; `None` if it is not in the file (a default).
fn line_of(src: &str, key: &str) -> Option<usize> {
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut in_table = table.is_empty();
    for (i, line) in src.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_table = t.trim_matches(|c| c == '[' || c == ']').trim() == table;
            continue;
        }
        let name = t.split('=').next().unwrap_or("").trim().trim_matches('"');
        if in_table && t.contains('=') && name == leaf {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<(Config, Vec<String>), ConfigError> {
        Config::parse(src, Path::new("test.toml"))
    }

    #[test]
    fn fallback_defaults_and_bad_values_name_key_line_and_what_is_allowed() {
        let (c, _) = parse("").unwrap();
        assert_eq!(c.fallback.engine, Engine::EspeakNg);
        assert_eq!((c.fallback.voice.as_str(), c.fallback.rate), ("en", 175));
        let (c, _) = parse("[fallback]\nengine = \"none\"\n").unwrap();
        assert!(crate::fallback::from_settings(&c.fallback()).is_none());
        let e = parse("[fallback]\nengine = \"festival\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("festival") && e.contains("espeak-ng") && e.contains("none"),
            "{e}"
        );
        let e = parse("[fallback]\nvoice = \"en\"\nrate = 1000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fallback.rate") && e.contains("line 3") && e.contains("80 to 450"),
            "{e}"
        );
        let e = parse("[fallback]\nvoice = \"-v\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fallback.voice") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let (c, w) = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert!(w.is_empty());
        assert_eq!(c.audio.period_ms, 20);
        assert_eq!(c.audio.buffer_periods, 4);
        assert_eq!(c.speech.max_text_chars, 20_000);
    }

    #[test]
    fn unknown_keys_are_warned_about_with_their_line() {
        let (_, w) = parse("[audio]\nperiod_ms = 20\nperod_ms = 10\n").unwrap();
        assert_eq!(w, vec!["unknown key 'audio.perod_ms' (line 3) is ignored"]);
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = parse("[audio]\nperiod_ms = \"twenty\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config test.toml, line 2, column 13:"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_key_line_and_range() {
        let e = parse("[speech]\nvoice = \"nova\"\nspeed = 9.0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config test.toml, line 3: speech.speed: speed 9 is out of range (allowed: 0.25 to 4.0)"
        );
        let e = parse("[speech]\nvoice = \"bob\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown voice 'bob' (allowed: alloy, ash"),
            "{e}"
        );
        let e = parse("[speech]\nformat = \"mp3\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("mp3"), "{e}");
    }

    #[test]
    fn adaptive_playout_settings_name_key_line_and_range() {
        let e = parse("[audio]\nmax_slowdown = 0.3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2: audio.max_slowdown") && e.contains("0.5 to 1.0"),
            "{e}"
        );
        let e = parse("[audio]\n\nstart_quantile = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3: audio.start_quantile") && e.contains("0.5 to 0.999"),
            "{e}"
        );
        let (c, _) = parse("[audio]\nmax_slowdown = 1.0\n").unwrap();
        assert_eq!(c.playout().max_slowdown, 1.0);
    }

    #[test]
    fn dated_model_snapshots_are_accepted() {
        assert!(parse("[speech]\nmodel = \"gpt-4o-mini-tts-2025-03-20\"\n").is_ok());
        assert!(parse("[speech]\nmodel = \"gpt-5\"\n").is_err());
        // The same rules as a request: four-digit snapshots count, a loose prefix does not,
        // and blank instructions are no instructions.
        assert!(parse("[speech]\nmodel = \"tts-1-1106\"\n").is_ok());
        assert!(parse("[speech]\nmodel = \"tts-1-20x\"\n").is_err());
        assert!(parse("[speech]\nmodel = \"tts-1\"\ninstructions = \"  \"\n").is_ok());
        assert!(parse("[speech]\nmodel = \"tts-1-hd-1106\"\ninstructions = \"calm\"\n").is_err());
    }

    #[test]
    fn presets_and_buttons_load_and_errors_name_the_key() {
        let (c, w) = parse(
            "[presets.dinner]\ntext = \"Dinner is ready.\"\nvoice = \"coral\"\n\n[[buttons]]\npin = 17\npreset = \"dinner\"\nactive = \"high\"\n",
        )
        .unwrap();
        assert_eq!(c.presets["dinner"].voice.as_deref(), Some("coral"));
        assert_eq!(c.buttons[0].pin, 17);
        assert_eq!(c.buttons[0].debounce_ms, 30);
        // pull = up (default) with active = high: a wiring warning, not an error.
        assert!(w.iter().any(|w| w.contains("pin 17")), "{w:?}");
        let e = parse("[presets.dinner]\ntext = \"x\"\n\n[[buttons]]\npin = 17\npreset = \"dinner\"\n\n[[buttons]]\npin = 17\npreset = \"dinner\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("buttons") && e.contains("pin 17 is used by two"),
            "{e}"
        );
        let e =
            parse("[presets.dinner]\ntext = \"x\"\n\n[[buttons]]\npin = 40\npreset = \"dinner\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("out of range"), "{e}");
        let e = parse("[presets.dinner]\ntext = \"x\"\ninstructions = \"Calm.\"\n\n[speech]\nmodel = \"tts-1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("presets.dinner") && e.contains("line 1"), "{e}");
        let e = parse("[cache]\nmax_mb = 0\n").unwrap_err().to_string();
        assert!(e.contains("cache.max_mb"), "{e}");
    }

    #[test]
    fn first_audio_deadline_has_a_default_a_range_and_a_warning() {
        let (c, w) = parse("").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.api.first_audio_deadline_ms, 20_000);
        assert_eq!(c.openai(None).first_audio_deadline, Duration::from_secs(20));
        let e = parse("[api]\nfirst_audio_deadline_ms = 500\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2")
                && e.contains("api.first_audio_deadline_ms")
                && e.contains("1000 to 600000 ms"),
            "{e}"
        );
        // A per-attempt timeout above the deadline is allowed, but said to be cut.
        let (_, w) = parse("[api]\nfirst_byte_timeout_ms = 30000\n").unwrap();
        assert!(
            w.len() == 1 && w[0].contains("first_audio_deadline_ms (20000)"),
            "{w:?}"
        );
    }

    #[test]
    fn credentials_in_api_base_never_appear_in_errors_or_debug() {
        let e = parse("[api]\napi_base = \"ftp://user:hunter2@proxy.local/v1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter2") && e.contains("ftp://proxy.local/v1"),
            "{e}"
        );
        let (c, _) = parse("[api]\napi_base = \"http://user:hunter2@proxy.local/v1\"\n").unwrap();
        let shown = format!("{c:?} {:?}", c.openai(None));
        assert!(
            !shown.contains("hunter2") && shown.contains("proxy.local"),
            "{shown}"
        );
    }

    #[test]
    fn idle_timeout_has_a_default_zero_means_never_and_a_range() {
        let (c, _) = parse("").unwrap();
        assert_eq!(c.daemon.idle_timeout_s, 30);
        assert_eq!(
            c.server_limits().idle_timeout,
            Some(Duration::from_secs(30))
        );
        let (c, _) = parse("[daemon]\nidle_timeout_s = 0\n").unwrap();
        assert_eq!(c.server_limits().idle_timeout, None, "0 = never");
        let e = parse("[daemon]\nidle_timeout_s = 100000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("daemon.idle_timeout_s") && e.contains("0 = never"),
            "{e}"
        );
    }

    #[test]
    fn max_text_chars_is_bounded_and_sets_the_line_limit() {
        let (c, _) = parse("[speech]\nmax_text_chars = 50\n").unwrap();
        assert_eq!(c.server_limits().max_line_bytes(), 50 * 12 + 65_536);
        let e = parse("[speech]\nmax_text_chars = 300000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("speech.max_text_chars") && e.contains("1 to 200000"),
            "{e}"
        );
    }

    #[test]
    fn a_key_file_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-x\n").unwrap();
        let mut c = Config::default();
        c.api.api_key_file = Some(key.clone());
        for (mode, who) in [(0o644, "every user"), (0o640, "its group")] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let w = c.key_file_warning().expect("a warning");
            assert!(
                w.contains(&key.display().to_string())
                    && w.contains(&format!("mode {mode:04o}"))
                    && w.contains(who)
                    && w.contains("chmod 600"),
                "{w}"
            );
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(c.key_file_warning(), None);
        c.api.api_key_file = Some(dir.path().join("missing"));
        assert_eq!(
            c.key_file_warning(),
            None,
            "a missing file is api_key()'s error"
        );
    }

    #[test]
    fn volume_limits_quiet_hours_and_expiry_load_and_bad_values_name_key_and_line() {
        let (c, w) = parse("").unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.volume_policy(), crate::volume::VolumePolicy::default());
        assert_eq!(c.daemon.default_expiry_s, None);
        let (c, _) = parse(
            "[audio]\nvolume = 70\nmax_volume = 90\n\n[[audio.quiet_hours]]\nfrom = \"22:00\"\nto = \"07:00\"\nmax_volume = 30\n\n[daemon]\ndefault_expiry_s = 120\n",
        )
        .unwrap();
        let p = c.volume_policy();
        assert_eq!((p.default.get(), p.max.get()), (70, 90));
        assert_eq!(p.quiet_hours.len(), 1);
        assert_eq!(c.daemon.default_expiry_s.map(ExpiresIn::secs), Some(120.0));
        for (src, needles) in [
            ("[audio]\nvolume = 150\n", &["line 2", "volume 150", "0 = silent to 100"][..]),
            ("[audio]\nmax_volume = \"loud\"\n", &["line 2", "expected a volume"]),
            (
                "[audio]\nmin_volume = 60\nmax_volume = 40\n",
                &["line 2", "audio.min_volume", "above audio.max_volume = 40"],
            ),
            (
                "[audio]\n\n[[audio.quiet_hours]]\nfrom = \"25:00\"\nto = \"07:00\"\nmax_volume = 30\n",
                &["line 4", "'25:00' is not a time of day", "00:00 to 23:59"],
            ),
            (
                "[[audio.quiet_hours]]\nfrom = \"22:00\"\nto = \"07:00\"\n",
                &["line 1", "missing field `max_volume`"],
            ),
            (
                "[[audio.quiet_hours]]\nfrom = \"22:00\"\nto = \"07:00\"\nmax_volume = 1\n\n[[audio.quiet_hours]]\nfrom = \"08:00\"\nto = \"08:00\"\nmax_volume = 1\n",
                &["line 6", "audio.quiet_hours[1]", "both 08:00"],
            ),
            ("[daemon]\ndefault_expiry_s = 0\n", &["line 2", "expires_in_s 0 is not allowed", "seconds above 0"]),
            ("[daemon]\ndefault_expiry_s = -3\n", &["line 2", "expires_in_s -3"]),
            (
                "[presets.bus]\ntext = \"Bus.\"\n\n[[buttons]]\npin = 4\npreset = \"bus\"\nexpires_in_s = 0\n",
                &["line 7", "expires_in_s 0"],
            ),
            (
                "[presets.bus]\ntext = \"Bus.\"\n\n[[buttons]]\npin = 4\npreset = \"bus\"\nvolume = 101\n",
                &["line 7", "volume 101"],
            ),
        ] {
            let e = parse(src).unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "{src:?}: {e}");
            }
        }
        // Buttons' presses expire after 30 s unless the button says otherwise.
        let (c, _) = parse("[presets.bus]\ntext = \"Bus.\"\n\n[[buttons]]\npin = 4\npreset = \"bus\"\n\n[[buttons]]\npin = 5\npreset = \"bus\"\nexpires_in_s = 5\nvolume = 40\n").unwrap();
        assert_eq!(c.buttons[0].expires_in_s.secs(), 30.0);
        assert_eq!(
            (
                c.buttons[1].expires_in_s.secs(),
                c.buttons[1].volume.map(Volume::get)
            ),
            (5.0, Some(40))
        );
    }

    #[test]
    fn daemon_section_defaults_and_bad_values_name_key_and_range() {
        let (c, _) = parse("").unwrap();
        assert_eq!(c.daemon.queue_size, 32);
        assert_eq!(c.daemon.socket_mode_bits(), 0o660);
        let (c, _) =
            parse("[daemon]\nsocket_mode = \"0600\"\nhook_before_open = [\"/bin/amp\", \"on\"]\n")
                .unwrap();
        assert_eq!(c.daemon.socket_mode_bits(), 0o600);
        assert_eq!(c.daemon.hook_before_open, vec!["/bin/amp", "on"]);
        let e = parse("[daemon]\nsocket_mode = \"rw\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("daemon.socket_mode") && e.contains("0660"),
            "{e}"
        );
        let e = parse("[daemon]\nqueue_size = 0\n").unwrap_err().to_string();
        assert!(
            e.contains("daemon.queue_size") && e.contains("1 to 10000"),
            "{e}"
        );
        let e = parse("[daemon]\nhook_after_close = [\"\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("daemon.hook_after_close"), "{e}");
        let (_, w) = parse("[daemon]\nqueue_sise = 3\n").unwrap();
        assert_eq!(
            w,
            vec!["unknown key 'daemon.queue_sise' (line 2) is ignored"]
        );
    }
}
