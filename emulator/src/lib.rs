//! An OpenAI-compatible `POST /v1/audio/speech` server for tests and demos: real speech
//! (espeak-ng) or a tone, encoded with libopus into OpenAI's Ogg layout, streamed on a
//! realistic schedule, with fault injection selected per request by a path prefix
//! (`http://127.0.0.1:PORT/wifi,seed=3/v1`). See docs/EMULATOR.md.
//!
//! Test infrastructure, not firmware: herald uses it only as a dev-dependency, so none of
//! it (the HTTP server, the Opus encoder, the Ogg writer) is linked into the appliance.
//! The API's vocabulary (models, voices, limits, [`AudioFormat`]) comes from `herald::tts`.
#![warn(missing_docs)]

mod oggopus;
mod request;
mod scenario;
mod schedule;
mod sent;
mod server;
mod synth;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use herald::tts::AudioFormat;

pub use oggopus::{encode_ogg_opus, encoder_pre_skip, page_ranges, OggLayout};
pub use request::{mask_key, validate, ApiError, SpeechBody};
pub use scenario::{Fail, Fault, Scenario, OPTIONS as SCENARIO_OPTIONS};
pub use schedule::{Piece, Plan, Stalls, Tail};
pub use sent::{
    gapless_start_of, SendSchedule, SentWrite, KEEP_PER_KEY as SCHEDULES_KEPT_PER_KEY,
    MAX_WRITES as SCHEDULE_MAX_WRITES,
};
pub use synth::{synthesize, synthesize_tone, RATE, TONE_MS_PER_CHAR};

/// Everything that can go wrong starting the emulator or producing audio.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A non-loopback listen address without `allow_remote`.
    #[error("refusing to listen on non-loopback address {0}: the emulator is test infrastructure (allow it explicitly with --allow-remote)")]
    NotLoopback(SocketAddr),
    /// A scenario segment that does not parse.
    #[error("invalid scenario '{scenario}': {reason}")]
    Scenario {
        /// The segment as given.
        scenario: String,
        /// What was wrong and what is allowed.
        reason: String,
    },
    /// espeak-ng ran but failed.
    #[error("espeak-ng: {0}")]
    Espeak(String),
    /// espeak-ng's output was not the WAV we expect.
    #[error("espeak-ng output is not usable WAV: {0}")]
    Wav(String),
    /// libopus refused something.
    #[error("opus encoder: {0}")]
    Opus(String),
    /// The Ogg writer failed.
    #[error("ogg writer: {0}")]
    Ogg(String),
    /// A bad argument to a library function.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen (default 127.0.0.1:0, an ephemeral port).
    pub listen: SocketAddr,
    /// The bearer key clients must send.
    pub api_key: String,
    /// Seed for stall patterns when a scenario has no `seed=`.
    pub seed: u64,
    /// Allow a non-loopback listen address.
    pub allow_remote: bool,
    /// Scenario applied before the request's own prefix (e.g. "wifi" for a demo).
    pub default_scenario: String,
    /// Log one line per request to stderr.
    pub log_requests: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: "sk-test".to_string(),
            seed: 0,
            allow_remote: false,
            default_scenario: String::new(),
            log_requests: false,
        }
    }
}

/// One speech request as the emulator received it (for assertions on what a client sent).
#[derive(Debug, Clone, PartialEq)]
pub struct SeenRequest {
    /// The validated body.
    pub body: SpeechBody,
    /// The `Accept` header, if any.
    pub accept: Option<String>,
}

/// Counters for one scenario key (the exact path segment before `/v1`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScenarioStats {
    /// Requests received (any route).
    pub requests: u64,
    /// Responses sent, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests deliberately never answered (`hang`).
    pub hangs: u64,
    /// Audio bodies sent to the end.
    pub bodies_completed: u64,
    /// Audio bodies cut on purpose (`drop`) or left hanging (`hang-body`).
    pub bodies_broken: u64,
    /// Audio bodies the client stopped reading (disconnected) before the end.
    pub client_disconnects: u64,
    /// The last (up to 100) valid speech requests.
    pub seen: Vec<SeenRequest>,
}

/// What the emulator has done so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmulatorStats {
    /// Requests received in total.
    pub requests: u64,
    /// Responses sent in total, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Per scenario key ("" for plain `/v1`).
    pub scenarios: BTreeMap<String, ScenarioStats>,
}

impl EmulatorStats {
    /// Requests received for a scenario key.
    pub fn requests_for(&self, scenario: &str) -> u64 {
        self.scenarios.get(scenario).map_or(0, |s| s.requests)
    }
    /// Responses with `status` sent for a scenario key.
    pub fn status_count(&self, scenario: &str, status: u16) -> u64 {
        self.scenarios
            .get(scenario)
            .and_then(|s| s.statuses.get(&status))
            .copied()
            .unwrap_or(0)
    }
}

/// The emulator server.
pub struct Emulator;

impl Emulator {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(cfg: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        server::start(cfg).await
    }
}

/// A running emulator; dropping it stops the server too.
pub struct EmulatorHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl EmulatorHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL for a scenario: `http://ADDR/SCENARIO/v1`, or `http://ADDR/v1` for "".
    pub fn base_url(&self, scenario: &str) -> String {
        if scenario.is_empty() {
            format!("http://{}/v1", self.addr)
        } else {
            format!("http://{}/{}/v1", self.addr, scenario)
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EmulatorStats {
        self.shared.stats_snapshot()
    }

    /// The send schedules of the last (up to [`SCHEDULES_KEPT_PER_KEY`]) 200 audio
    /// responses for a scenario key (keyed like [`EmulatorHandle::stats`]), oldest first;
    /// one still being sent is included as far as it has gone.
    pub fn schedules(&self, scenario: &str) -> Vec<SendSchedule> {
        self.shared.sent.get(scenario)
    }

    /// Stops accepting, closes every connection and ends every stream.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.accept.await;
    }
}

/// A rendered 200 body plus what the scheduler needs to know about it.
pub(crate) struct Rendered {
    pub body: Bytes,
    pub pages: Vec<Range<usize>>,
    pub page_audio_end: Vec<Duration>,
    /// Decodable 48 kHz samples complete once each page is in (granule − pre-skip).
    pub page_media: Vec<u64>,
    pub audio: Duration,
    /// Samples of audio in the whole body, at the format's rate.
    pub media_total: u64,
}

/// Synthesizes and encodes a response body exactly as the server does.
pub(crate) fn render(
    input: &str,
    voice: &str,
    speed: f32,
    format: AudioFormat,
    sc: &Scenario,
) -> Result<Rendered, EmulatorError> {
    let synth = if sc.tone {
        synth::Synth::Tone
    } else {
        synth::Synth::Speech
    };
    let pcm = synth::synthesize_shared(input, voice, speed, synth)?;
    let audio = Duration::from_secs_f64(pcm.len() as f64 / RATE as f64);
    match format {
        AudioFormat::Pcm => {
            if let Some(Fault::Corrupt(_)) = sc.fault {
                return Err(EmulatorError::Scenario {
                    scenario: "corrupt".into(),
                    reason: "corrupt applies to opus only (pcm has no checksum to break)".into(),
                });
            }
            let body: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
            Ok(Rendered {
                body: Bytes::from(body),
                pages: Vec::new(),
                page_audio_end: Vec::new(),
                page_media: Vec::new(),
                audio,
                media_total: pcm.len() as u64,
            })
        }
        AudioFormat::Opus => {
            let layout = OggLayout {
                padded_tags: sc.padded_tags,
                ..OggLayout::default()
            };
            let mut body = encode_ogg_opus(&pcm, &layout)?;
            let pages = page_ranges(&body);
            let mut packets = 0u64;
            let page_audio_end = pages
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    if i < 2 {
                        return Duration::ZERO;
                    }
                    let nseg = body[r.start + 26] as usize;
                    packets += body[r.start + 27..r.start + 27 + nseg]
                        .iter()
                        .filter(|&&l| l < 255)
                        .count() as u64;
                    Duration::from_millis(packets * 20).min(audio)
                })
                .collect();
            let page_media = page_media(&body, &pages);
            if let Some(Fault::Corrupt(i)) = sc.fault {
                if let Some(r) = pages.get(i).or(pages.last()) {
                    // The page's last payload byte: the CRC no longer matches.
                    body[r.end - 1] ^= 0xA5;
                }
            }
            Ok(Rendered {
                body: Bytes::from(body),
                pages,
                page_audio_end,
                media_total: page_media.last().copied().unwrap_or(0),
                page_media,
                audio,
            })
        }
    }
}

/// Decodable samples (48 kHz) complete after each page: its granule position minus the
/// OpusHead pre-skip, as a decoder would count them (0 for the header pages).
fn page_media(body: &[u8], pages: &[Range<usize>]) -> Vec<u64> {
    let granule = |r: &Range<usize>| {
        body.get(r.start + 6..r.start + 14)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(-1, i64::from_le_bytes)
    };
    // OpusHead's pre-skip: bytes 10..12 of the packet that follows page 0's lacing.
    let pre_skip = pages.first().map_or(0, |r| {
        let nseg = body.get(r.start + 26).copied().unwrap_or(0) as usize;
        let at = r.start + 27 + nseg + 10;
        body.get(at..at + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
    });
    let mut done = 0u64;
    pages
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // -1 = no packet ends on this page; headers carry no audio.
            let g = granule(r);
            if i >= 2 && g >= 0 {
                done = done.max((g as u64).saturating_sub(u64::from(pre_skip)));
            }
            done
        })
        .collect()
}

/// The exact body a 200 carries for this request and scenario segment (as applied on top
/// of the plain defaults, not a server's `default_scenario`), before any `drop`/`hang-body`
/// cut. `speed` is the request's `speed` (1.0 when absent). Same arguments → same bytes.
pub fn expected_body(
    scenario: &str,
    input: &str,
    voice: &str,
    speed: f32,
    format: AudioFormat,
) -> Result<Vec<u8>, EmulatorError> {
    let sc = Scenario::parse(scenario)?;
    Ok(render(input, voice, speed, format, &sc)?.body.to_vec())
}
