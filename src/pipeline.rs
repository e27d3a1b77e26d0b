//! One utterance end to end: text → segments → speech source → decoder → resampler →
//! channel map → playout. Segments after the first are fetched ahead (bounded look-ahead)
//! so they play back to back without a gap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::audio::alsa::AlsaSink;
use crate::audio::channels::map_channels;
use crate::audio::playout::{Playout, PlayoutConfig, PlayoutError};
use crate::audio::wav::WavSink;
use crate::audio::{Sink, SinkError, SinkRequest};
use crate::chimes::Chime;
use crate::codec::opus::{decode_rate_for, OggOpusDecoder};
use crate::codec::pcm::RawPcmDecoder;
use crate::codec::resample::ResampledDecoder;
use crate::codec::{CodecError, StreamDecoder};
use crate::fallback::{Engine, FallbackError, LocalVoice};
use crate::text::{self, TextError};
use crate::tts::{AudioFormat, FormatChoice, SpeechRequest, SpeechSource, TtsError};

/// The rate and channel count of OpenAI's `pcm` format.
pub const PCM_RATE: u32 = 24_000;
/// Encoded chunks buffered per fetched segment before its HTTP stream is back-pressured.
const FETCH_QUEUE: usize = 64;
/// With `auto`, the shortest pcm lead in characters (about 2 s of speech): long enough to
/// play while the opus stream's first 1 s page is generated and sent, even at 1.15× real
/// time, short enough that pcm's extra bytes stay a few hundred kilobytes.
pub const AUTO_LEAD_CHARS: usize = 28;

/// Per-request voice settings (text aside).
#[derive(Debug, Clone, PartialEq)]
pub struct Voice {
    /// Model name.
    pub model: String,
    /// Voice name.
    pub voice: String,
    /// The format asked for (`auto`: first sentence pcm, the rest opus).
    pub format: FormatChoice,
    /// Speed 0.25–4.0 (`None` = API default).
    pub speed: Option<f32>,
    /// Voice instructions.
    pub instructions: Option<String>,
}

impl Voice {
    /// These settings with the given ones (from a request or the command line) in place of
    /// their defaults. Speed 1.0 and blank instructions mean "the API's default" and are not
    /// sent.
    pub fn with(
        self,
        model: Option<String>,
        voice: Option<String>,
        format: Option<FormatChoice>,
        speed: Option<f32>,
        instructions: Option<String>,
    ) -> Voice {
        Voice {
            model: model.unwrap_or(self.model),
            voice: voice.unwrap_or(self.voice),
            format: format.unwrap_or(self.format),
            speed: speed.or(self.speed).filter(|&v| v != 1.0),
            instructions: instructions
                .or(self.instructions)
                .filter(|i| !i.trim().is_empty()),
        }
    }

    /// The one request that speaks `input` with these settings (`auto` is opus here).
    pub fn request(&self, input: String) -> SpeechRequest {
        self.request_as(input, self.format.whole())
    }

    /// The requests that speak `text`: segments at the API's input limit; with `auto`
    /// the opening sentences (at least [`AUTO_LEAD_CHARS`]) are split off and asked for
    /// as pcm, the rest as opus, so the first word comes as early as pcm allows and the
    /// long tail costs opus's bytes.
    pub fn requests(&self, text: &str) -> Vec<SpeechRequest> {
        let mut segments = text::segment(text, crate::tts::MAX_INPUT_CHARS);
        if self.format != FormatChoice::Auto {
            let format = self.format.whole();
            return segments
                .into_iter()
                .map(|s| self.request_as(s, format))
                .collect();
        }
        if let Some((lead, rest)) = segments
            .first()
            .and_then(|s| text::split_lead(s, AUTO_LEAD_CHARS))
        {
            segments[0] = rest;
            segments.insert(0, lead);
        }
        segments
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let format = if i == 0 {
                    AudioFormat::Pcm
                } else {
                    AudioFormat::Opus
                };
                self.request_as(s, format)
            })
            .collect()
    }

    fn request_as(&self, input: String, format: AudioFormat) -> SpeechRequest {
        SpeechRequest {
            model: self.model.clone(),
            voice: self.voice.clone(),
            input,
            format,
            speed: self.speed,
            instructions: self.instructions.clone(),
        }
    }
}

impl From<&SpeechRequest> for Voice {
    fn from(r: &SpeechRequest) -> Voice {
        Voice {
            model: r.model.clone(),
            voice: r.voice.clone(),
            format: r.format.into(),
            speed: r.speed,
            instructions: r.instructions.clone(),
        }
    }
}

/// Limits that shape how text is split and fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted text, in characters.
    pub max_text_chars: usize,
    /// Segments fetched ahead of the one being decoded.
    pub lookahead: usize,
}

/// What one utterance did, for the one-line summary and the daemon's `finished` event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpeakReport {
    /// When the first sample was written to the sink.
    pub started_at: Option<Instant>,
    /// Request sent → first sample written to the sink.
    pub time_to_first_audio: Option<Duration>,
    /// Bytes of the first audio received → first sample written to the sink (the start
    /// policy's deliberate wait included).
    pub overhead: Option<Duration>,
    /// Audio played.
    pub audio: Duration,
    /// Times the buffer ran dry mid-utterance.
    pub stalls: u32,
    /// Total length of those stalls.
    pub stall_ms: u64,
    /// Encoded bytes received.
    pub bytes: u64,
    /// Requests made (segments).
    pub segments: usize,
    /// HTTP attempts over all segments (retries included).
    pub attempts: u32,
    /// Prebuffer the start policy chose.
    pub prebuffer_ms: u32,
    /// Audio played slowed down (pitch kept), in ms of the original.
    pub stretched_ms: u64,
    /// The slowest tempo used (1.0: never slowed).
    pub lowest_tempo: f32,
    /// The start followed a learned network plan.
    pub warm: bool,
    /// When the chime before the speech reached the device (`None`: no chime).
    pub chime_started_at: Option<Instant>,
    /// How the audio arrived, burst by burst (what the network model learns from).
    pub bursts: Vec<crate::netmodel::Burst>,
    /// The local voice spoke (some of) the text because the API could not.
    pub fallback: Option<FallbackUse>,
}

/// How the local voice took over from the API.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackUse {
    /// The engine that spoke.
    pub engine: Engine,
    /// Why the API's speech could not be had (never contains the key).
    pub api_error: String,
    /// The segment (1-based) the fallback spoke from; it spoke every one after it too.
    pub from_segment: usize,
    /// When the API's failure reached the pipeline.
    pub api_failed_at: Instant,
}

impl std::fmt::Display for SpeakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.time_to_first_audio {
            Some(t) => write!(f, "time to first audio {} ms", t.as_millis())?,
            None => write!(f, "time to first audio -")?,
        }
        if let Some(o) = self.overhead {
            write!(f, " (overhead {} ms)", o.as_millis())?;
        }
        write!(
            f,
            ", audio {:.2} s, stalls {} ({} ms), received {} bytes in {} segment{}",
            self.audio.as_secs_f64(),
            self.stalls,
            self.stall_ms,
            self.bytes,
            self.segments,
            if self.segments == 1 { "" } else { "s" }
        )?;
        if self.stretched_ms > 0 {
            write!(
                f,
                ", slowed {} ms (down to {:.2}×)",
                self.stretched_ms, self.lowest_tempo
            )?;
        }
        write!(f, ", start {}", if self.warm { "learned" } else { "cold" })?;
        if let Some(fb) = &self.fallback {
            write!(
                f,
                ", spoken by the fallback voice ({}) from segment {} because the API failed: {}",
                fb.engine, fb.from_segment, fb.api_error
            )?;
        }
        if self.attempts as usize > self.segments {
            let retries = self.attempts as usize - self.segments;
            write!(
                f,
                ", {retries} retr{}",
                if retries == 1 { "y" } else { "ies" }
            )?;
        }
        Ok(())
    }
}

/// Why an utterance was not played completely.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The text was rejected before any request.
    #[error(transparent)]
    Text(#[from] TextError),
    /// Fetching speech failed.
    #[error("segment {segment} of {of}: {source}")]
    Tts {
        /// Which segment failed (1-based).
        segment: usize,
        /// Segments in the text.
        of: usize,
        /// The underlying error.
        source: TtsError,
    },
    /// The audio could not be decoded.
    #[error("segment {segment} of {of}: {source}")]
    Codec {
        /// Which segment failed (1-based).
        segment: usize,
        /// Segments in the text.
        of: usize,
        /// The underlying error.
        source: CodecError,
    },
    /// Reading a local file failed.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The audio device or the audio thread failed.
    #[error(transparent)]
    Playout(#[from] PlayoutError),
    /// The audio device or WAV file could not be opened.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A chime could not be converted to the device's format.
    #[error("chime '{name}': {reason}")]
    Chime {
        /// The chime.
        name: String,
        /// Why.
        reason: String,
    },
    /// The API failed, and the local voice that stood in for it failed too.
    #[error("{api}; the fallback voice ({engine}) failed too: {source}")]
    Fallback {
        /// Why the API's speech could not be had.
        api: Box<PipelineError>,
        /// The engine.
        engine: Engine,
        /// Why it failed.
        source: FallbackError,
    },
}

impl PipelineError {
    /// The segment (0-based) from which a local voice may speak instead: the API could not
    /// give usable audio for it ([`TtsError::is_outage`], or audio that does not decode).
    /// `None` for everything that is not the API's doing.
    fn fallback_from(&self) -> Option<usize> {
        match self {
            PipelineError::Tts {
                segment, source, ..
            } if source.is_outage() => Some(segment - 1),
            PipelineError::Codec { segment, .. } => Some(segment - 1),
            _ => None,
        }
    }
}

/// Where `speak` and `play` send their audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An ALSA PCM by name.
    Device(String),
    /// A WAV file (no sound card needed).
    Wav(std::path::PathBuf),
}

/// Opens `output` (negotiating `req` with a device) and starts the playout on it.
pub fn open_playout(
    output: &Output,
    req: &SinkRequest,
    cfg: PlayoutConfig,
) -> Result<Playout, PipelineError> {
    let sink: Box<dyn Sink> = match output {
        Output::Wav(path) => {
            // A file plays in whole periods of the requested length (only the last is short).
            let period = (req.rate as usize * req.period_ms as usize / 1000).max(1);
            Box::new(WavSink::create(path, req.rate, req.channels, period)?)
        }
        Output::Device(name) => Box::new(AlsaSink::open(name, req)?),
    };
    Ok(Playout::spawn(sink, cfg)?)
}

/// Decodes encoded streams at the device rate and pushes them to the playout in the
/// device's channel layout. Shared by `speak` (many segments) and `play` (one file).
struct Feeder {
    device_rate: u32,
    device_channels: u16,
    pcm: Vec<i16>,
    mapped: Vec<i16>,
    /// When the bytes that decoded to the first audio arrived (start of "overhead").
    first_audio_at: Option<Instant>,
}

impl Feeder {
    fn new(playout: &Playout) -> Self {
        let f = playout.format();
        Feeder {
            device_rate: f.rate,
            device_channels: f.channels,
            pcm: Vec::new(),
            mapped: Vec::new(),
            first_audio_at: None,
        }
    }

    /// A decoder whose output is at the device rate: Opus decodes at the device rate when
    /// libopus can, anything else is resampled.
    fn decoder(&self, format: AudioFormat) -> Result<Box<dyn StreamDecoder>, CodecError> {
        let rate = self.device_rate;
        Ok(match format {
            AudioFormat::Opus => {
                let dec = OggOpusDecoder::new(decode_rate_for(rate))?;
                if decode_rate_for(rate) == rate {
                    Box::new(dec)
                } else {
                    Box::new(ResampledDecoder::new(dec, rate))
                }
            }
            AudioFormat::Pcm => {
                Box::new(ResampledDecoder::new(RawPcmDecoder::new(PCM_RATE, 1), rate))
            }
        })
    }

    /// Feeds `bytes` (or, with `None`, ends the stream) and pushes the result to the playout.
    async fn feed(
        &mut self,
        dec: &mut dyn StreamDecoder,
        bytes: Option<&[u8]>,
        playout: &mut Playout,
    ) -> Result<(), FeedError> {
        self.feed_arrived(dec, bytes, playout, Instant::now()).await
    }

    /// [`feed`](Self::feed) for bytes that came off the network at `arrived` (earlier, when
    /// they waited behind a chime): the start rule judges the stream by when it really came.
    async fn feed_arrived(
        &mut self,
        dec: &mut dyn StreamDecoder,
        bytes: Option<&[u8]>,
        playout: &mut Playout,
        arrived: Instant,
    ) -> Result<(), FeedError> {
        self.pcm.clear();
        match bytes {
            Some(b) => dec.push(b, &mut self.pcm)?,
            None => dec.finish(&mut self.pcm)?,
        }
        let Some(fmt) = dec.format().filter(|_| !self.pcm.is_empty()) else {
            return Ok(());
        };
        self.first_audio_at.get_or_insert(arrived);
        if fmt.channels == self.device_channels {
            playout.push_arrived(&self.pcm, arrived).await?;
        } else {
            self.mapped.clear();
            map_channels(
                &self.pcm,
                fmt.channels,
                self.device_channels,
                &mut self.mapped,
            );
            playout.push_arrived(&self.mapped, arrived).await?;
        }
        Ok(())
    }
}

enum FeedError {
    Codec(CodecError),
    Playout(PlayoutError),
}

impl From<CodecError> for FeedError {
    fn from(e: CodecError) -> Self {
        FeedError::Codec(e)
    }
}

impl From<PlayoutError> for FeedError {
    fn from(e: PlayoutError) -> Self {
        FeedError::Playout(e)
    }
}

/// Messages from a segment's fetch task.
enum Fetched {
    Opened {
        attempts: u32,
    },
    /// Body bytes, and when they came off the network.
    Chunk(Bytes, Instant),
    Failed(TtsError),
}

/// Opens `req` and forwards its body into a bounded queue (back-pressuring the HTTP stream).
fn spawn_fetch(source: Arc<dyn SpeechSource>, req: SpeechRequest) -> mpsc::Receiver<Fetched> {
    let (tx, rx) = mpsc::channel(FETCH_QUEUE);
    tokio::spawn(async move {
        let mut stream = match source.open(&req).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Fetched::Failed(e)).await;
                return;
            }
        };
        if tx
            .send(Fetched::Opened {
                attempts: stream.attempts,
            })
            .await
            .is_err()
        {
            return;
        }
        while let Some(item) = stream.body.next().await {
            let msg = match item {
                Ok(b) => Fetched::Chunk(b, Instant::now()),
                Err(e) => Fetched::Failed(e),
            };
            let failed = matches!(msg, Fetched::Failed(_));
            if tx.send(msg).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The next message of a segment's fetch; while waiting for the network, the playout's
/// events (first audio, stalls) are forwarded to its subscriber as they happen.
async fn next_fetched(
    rx: &mut mpsc::Receiver<Fetched>,
    playout: &mut Playout,
) -> Result<Option<Fetched>, PlayoutError> {
    loop {
        tokio::select! {
            m = rx.recv() => return Ok(m),
            r = playout.wait_event() => r?,
        }
    }
}

/// What plays around one announcement's speech.
#[derive(Debug, Clone, Default)]
pub struct ChimePlan {
    /// Played the moment the job starts, while the speech is fetched.
    pub before: Option<Arc<Chime>>,
    /// Played after the speech's last sample.
    pub after: Option<Arc<Chime>>,
    /// Silence between a chime and the speech (`daemon.chime_gap_ms`).
    pub gap: Duration,
    /// A freshly opened device warms up until then (its lead-in): the chime waits for it.
    pub not_before: Option<Instant>,
}

/// Speaks `text` with `voice` on `playout`; returns once the last sample has been played.
/// Progress events go to the playout's subscriber ([`Playout::subscribe`]) as they happen.
pub async fn speak(
    source: Arc<dyn SpeechSource>,
    playout: &mut Playout,
    text: &str,
    voice: &Voice,
    limits: Limits,
) -> Result<SpeakReport, PipelineError> {
    announce(
        source,
        None,
        playout,
        text,
        voice,
        limits,
        &ChimePlan::default(),
    )
    .await
}

/// [`speak`] with chimes and a local voice. The speech is asked for at once and the chime
/// plays while it comes, so the chime hides the fetch instead of adding to it; the speech
/// follows the chime after `gap` if it is ready, else as soon as the start rule allows.
/// When the API can't be had, `fallback` (if any) speaks the text from the segment that
/// failed on, through the same playout; audio of that segment already played stays played:
/// the local voice starts the segment again (docs/FALLBACK.md).
pub async fn announce(
    source: Arc<dyn SpeechSource>,
    fallback: Option<&dyn LocalVoice>,
    playout: &mut Playout,
    text: &str,
    voice: &Voice,
    limits: Limits,
    chimes: &ChimePlan,
) -> Result<SpeakReport, PipelineError> {
    let requests = checked_requests(text, voice, limits)?;
    let t0 = Instant::now();
    // `auto`'s opus tail is useful only if it is fetched while the pcm lead plays.
    let lookahead = match voice.format {
        FormatChoice::Auto => limits.lookahead.max(1),
        _ => limits.lookahead,
    };
    let mut fetches = Fetches::new(source, requests, lookahead);
    fetches.fill(0);
    let chime_at = match &chimes.before {
        Some(c) => {
            let at = play_chime(playout, c, chimes.not_before).await?;
            chime_gap(playout, chimes.gap).await;
            Some(at)
        }
        None => None,
    };
    let estimate = text::estimate_duration(text, voice.speed.unwrap_or(1.0));
    let mut report = play_speech(playout, &mut fetches, estimate, t0, fallback).await?;
    if let Some(c) = &chimes.after {
        chime_gap(playout, chimes.gap).await;
        play_chime(playout, c, None).await?;
    }
    // What waited behind the chime keeps the time it came off the network (`Fetched`), so
    // the start rule and the network model see the network, not the chime.
    if let Some(at) = chime_at {
        report.chime_started_at = at;
    }
    Ok(report)
}

/// The requests that speak `text`, each checked against the endpoint's limits.
fn checked_requests(
    text: &str,
    voice: &Voice,
    limits: Limits,
) -> Result<Vec<SpeechRequest>, PipelineError> {
    text::validate(text, limits.max_text_chars)?;
    let requests = voice.requests(text);
    let of = requests.len();
    for (i, r) in requests.iter().enumerate() {
        r.validate().map_err(|source| PipelineError::Tts {
            segment: i + 1,
            of,
            source,
        })?;
    }
    Ok(requests)
}

/// The segments' fetches: each segment is asked for while up to `lookahead` before it
/// still play.
struct Fetches {
    source: Arc<dyn SpeechSource>,
    requests: Vec<SpeechRequest>,
    lookahead: usize,
    pending: std::collections::VecDeque<mpsc::Receiver<Fetched>>,
    next: usize,
}

impl Fetches {
    fn new(source: Arc<dyn SpeechSource>, requests: Vec<SpeechRequest>, lookahead: usize) -> Self {
        Fetches {
            source,
            requests,
            lookahead,
            pending: std::collections::VecDeque::new(),
            next: 0,
        }
    }

    /// Starts the fetches that should be in flight while segment `seg` is decoded.
    fn fill(&mut self, seg: usize) {
        while self.next < self.requests.len() && self.next <= seg + self.lookahead {
            let req = self.requests[self.next].clone();
            self.pending
                .push_back(spawn_fetch(self.source.clone(), req));
            self.next += 1;
        }
    }
}

/// Plays `chime` as an utterance of its own, from memory (after `not_before`, a fresh
/// device's lead-in); returns when its first sample reached the device, once its last has.
async fn play_chime(
    playout: &mut Playout,
    chime: &Chime,
    not_before: Option<Instant>,
) -> Result<Option<Instant>, PipelineError> {
    if let Some(t) = not_before {
        tokio::time::sleep_until(t.into()).await;
    }
    let samples = chime_for_device(chime, playout.format())?;
    playout.begin_local(Duration::ZERO);
    let pushed = playout.push(&samples).await;
    if let Err(e) = pushed {
        let _ = playout.interrupt().await;
        return Err(e.into());
    }
    playout.end();
    Ok(playout.finished().await?.started_at)
}

/// The chime's samples in the device's rate and channels: as kept in memory (the usual
/// case: decoded at `audio.rate`), else converted for this device.
fn chime_for_device(
    chime: &Chime,
    f: crate::audio::DeviceFormat,
) -> Result<std::borrow::Cow<'_, [i16]>, PipelineError> {
    if chime.rate == f.rate && chime.channels == f.channels {
        return Ok(std::borrow::Cow::Borrowed(&chime.samples[..]));
    }
    let resampled =
        crate::chimes::to_rate(chime.samples.to_vec(), chime.rate, f.rate, chime.channels)
            .map_err(|reason| PipelineError::Chime {
                name: chime.name.clone(),
                reason,
            })?;
    if chime.channels == f.channels {
        return Ok(resampled.into());
    }
    let mut mapped = Vec::new();
    map_channels(&resampled, chime.channels, f.channels, &mut mapped);
    Ok(mapped.into())
}

/// The silence between a chime and the speech: the device is fed silence meanwhile (as
/// in a lead-in), so it neither underruns nor clicks, and the speech follows at once.
async fn chime_gap(playout: &mut Playout, gap: Duration) {
    playout.lead_in();
    // The lead-in keeps about a period queued ahead of what is heard.
    let f = playout.format();
    let period = Duration::from_secs_f64(f.period_frames as f64 / f64::from(f.rate.max(1)));
    tokio::time::sleep(gap.saturating_sub(period)).await;
}

/// Plays the fetched segments back to back as one utterance.
async fn play_speech(
    playout: &mut Playout,
    fetches: &mut Fetches,
    estimate: Duration,
    t0: Instant,
    fallback: Option<&dyn LocalVoice>,
) -> Result<SpeakReport, PipelineError> {
    let of = fetches.requests.len();
    playout.begin(estimate);
    let mut report = SpeakReport {
        segments: of,
        ..SpeakReport::default()
    };
    let mut feeder = Feeder::new(playout);
    let mut through = Duration::ZERO;
    let result: Result<(), PipelineError> = async {
        for seg in 0..of {
            fetches.fill(seg);
            let Some(mut rx) = fetches.pending.pop_front() else {
                break;
            };
            if seg > 0 {
                playout.next_request();
            }
            // While this segment streams, the next one's fetch (if under way) generates
            // the audio after it.
            let req = &fetches.requests[seg];
            through += text::estimate_duration(&req.input, req.speed.unwrap_or(1.0));
            playout.concurrent_after((!fetches.pending.is_empty()).then_some(through));
            let format = fetches.requests[seg].format;
            play_segment(playout, &mut feeder, &mut rx, format, &mut report, seg, of).await?;
        }
        Ok(())
    }
    .await;
    let result = match (result, fallback) {
        (Err(e), Some(local)) => {
            let texts: Vec<&str> = fetches.requests.iter().map(|r| r.input.as_str()).collect();
            fall_back(e, local, playout, &mut feeder, &texts, &mut report).await
        }
        (r, _) => r,
    };
    conclude(playout, result, report, t0, feeder.first_audio_at).await
}

/// After the API failed with `e`: the local voice speaks `texts` from the segment that
/// failed on, when the failure is the API's doing; otherwise `e` stands.
async fn fall_back(
    e: PipelineError,
    local: &dyn LocalVoice,
    playout: &mut Playout,
    feeder: &mut Feeder,
    texts: &[&str],
    report: &mut SpeakReport,
) -> Result<(), PipelineError> {
    let Some(from) = e.fallback_from() else {
        return Err(e);
    };
    let used = FallbackUse {
        engine: local.engine(),
        api_error: e.to_string(),
        from_segment: from + 1,
        api_failed_at: Instant::now(),
    };
    tracing::warn!(
        engine = %used.engine,
        "the speech API failed, the fallback voice speaks instead: {e}"
    );
    report.fallback = Some(used);
    // The local voice speaks one piece after another: nothing generates ahead any more.
    playout.concurrent_after(None);
    speak_locally(local, playout, feeder, texts[from..].iter().copied())
        .await
        .map_err(|l| l.after(e, local.engine()))
}

/// Decodes one segment's fetch into the playout as it arrives.
async fn play_segment(
    playout: &mut Playout,
    feeder: &mut Feeder,
    rx: &mut mpsc::Receiver<Fetched>,
    format: AudioFormat,
    report: &mut SpeakReport,
    seg: usize,
    of: usize,
) -> Result<(), PipelineError> {
    let mut dec = feeder
        .decoder(format)
        .map_err(|source| PipelineError::Codec {
            segment: seg + 1,
            of,
            source,
        })?;
    let mut last_at = Instant::now();
    while let Some(msg) = next_fetched(rx, playout).await? {
        match msg {
            Fetched::Opened { attempts } => report.attempts += attempts,
            Fetched::Chunk(b, at) => {
                report.bytes += b.len() as u64;
                last_at = at;
                feeder
                    .feed_arrived(dec.as_mut(), Some(&b), playout, at)
                    .await
                    .map_err(|e| lift(e, seg, of))?;
            }
            Fetched::Failed(source) => {
                return Err(PipelineError::Tts {
                    segment: seg + 1,
                    of,
                    source,
                })
            }
        }
    }
    // The decoder's tail came with the last bytes.
    feeder
        .feed_arrived(dec.as_mut(), None, playout, last_at)
        .await
        .map_err(|e| lift(e, seg, of))
}

/// Why speaking locally stopped.
enum LocalError {
    Engine(FallbackError),
    Playout(PlayoutError),
}

impl LocalError {
    /// The pipeline's error, given the API's that made the fallback speak.
    fn after(self, api: PipelineError, engine: Engine) -> PipelineError {
        match self {
            LocalError::Engine(source) => PipelineError::Fallback {
                api: Box::new(api),
                engine,
                source,
            },
            // The device's failure is the device's, whoever was speaking.
            LocalError::Playout(e) => PipelineError::Playout(e),
        }
    }
}

impl From<FallbackError> for LocalError {
    fn from(e: FallbackError) -> Self {
        LocalError::Engine(e)
    }
}

impl From<PlayoutError> for LocalError {
    fn from(e: PlayoutError) -> Self {
        LocalError::Playout(e)
    }
}

impl From<FeedError> for LocalError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::Codec(c) => LocalError::Engine(FallbackError::Decode(c)),
            FeedError::Playout(p) => LocalError::Playout(p),
        }
    }
}

/// Speaks `texts` one after another with the local voice: its PCM resampled to the device
/// rate and channel-mapped by the same [`Feeder`] as the API's audio. The playout's events
/// are forwarded while the engine starts and between its chunks.
async fn speak_locally<'t>(
    local: &dyn LocalVoice,
    playout: &mut Playout,
    feeder: &mut Feeder,
    texts: impl Iterator<Item = &'t str>,
) -> Result<(), LocalError> {
    for text in texts {
        let open = local.open(text);
        tokio::pin!(open);
        let speech = loop {
            tokio::select! {
                s = &mut open => break s?,
                r = playout.wait_event() => r?,
            }
        };
        let raw = RawPcmDecoder::new(speech.format.rate, speech.format.channels);
        let mut dec = ResampledDecoder::new(raw, feeder.device_rate);
        let mut body = speech.body;
        loop {
            let chunk = tokio::select! {
                c = body.next() => c,
                r = playout.wait_event() => { r?; continue; }
            };
            match chunk {
                Some(b) => feeder.feed(&mut dec, Some(&b?), playout).await?,
                None => break,
            }
        }
        feeder.feed(&mut dec, None, playout).await?;
    }
    Ok(())
}

/// Plays a local Ogg Opus file through the same decode and playout path.
pub async fn play_file(
    playout: &mut Playout,
    path: &std::path::Path,
) -> Result<SpeakReport, PipelineError> {
    let file_err = |source| PipelineError::File {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(file_err)?;
    let t0 = Instant::now();
    // A local file arrives far faster than real time: the floor prebuffer is enough.
    playout.begin(Duration::ZERO);
    let mut feeder = Feeder::new(playout);
    let mut dec = feeder
        .decoder(AudioFormat::Opus)
        .map_err(|source| PipelineError::Codec {
            segment: 1,
            of: 1,
            source,
        })?;
    let mut report = SpeakReport {
        segments: 1,
        attempts: 1,
        ..SpeakReport::default()
    };
    let mut buf = vec![0u8; 16 * 1024];
    let result: Result<(), PipelineError> = async {
        loop {
            let n = file.read(&mut buf).await.map_err(file_err)?;
            if n == 0 {
                break;
            }
            report.bytes += n as u64;
            feeder
                .feed(dec.as_mut(), Some(&buf[..n]), playout)
                .await
                .map_err(|e| lift(e, 0, 1))?;
        }
        feeder
            .feed(dec.as_mut(), None, playout)
            .await
            .map_err(|e| lift(e, 0, 1))
    }
    .await;
    conclude(playout, result, report, t0, feeder.first_audio_at).await
}

fn lift(e: FeedError, seg: usize, of: usize) -> PipelineError {
    match e {
        FeedError::Codec(source) => PipelineError::Codec {
            segment: seg + 1,
            of,
            source,
        },
        FeedError::Playout(e) => PipelineError::Playout(e),
    }
}

/// Ends the utterance: on success waits until the last sample has played and fills in the
/// report; on failure stops what is playing with a short fade rather than cutting it off or
/// playing on.
async fn conclude(
    playout: &mut Playout,
    result: Result<(), PipelineError>,
    mut report: SpeakReport,
    t0: Instant,
    first_audio_at: Option<Instant>,
) -> Result<SpeakReport, PipelineError> {
    if let Err(e) = result {
        let _ = playout.interrupt().await;
        return Err(e);
    }
    playout.end();
    let done = playout.finished().await?;
    report.started_at = done.started_at;
    report.time_to_first_audio = done.started_at.map(|s| s.saturating_duration_since(t0));
    report.overhead = done
        .started_at
        .zip(first_audio_at)
        .map(|(s, f)| s.saturating_duration_since(f));
    let rate = playout.format().rate.max(1);
    // The audio's own length: what slowed playback added is reported apart.
    report.audio = Duration::from_secs_f64(done.frames_played as f64 / f64::from(rate))
        .saturating_sub(Duration::from_millis(done.added_ms));
    report.stalls = done.stalls;
    report.stall_ms = done.stall_ms;
    report.prebuffer_ms = done.prebuffer_ms;
    report.stretched_ms = done.stretched_ms;
    report.lowest_tempo = done.lowest_tempo;
    report.warm = done.warm;
    report.bursts = playout.take_bursts();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(format: FormatChoice) -> Voice {
        Voice {
            model: "gpt-4o-mini-tts".into(),
            voice: "alloy".into(),
            format,
            speed: None,
            instructions: None,
        }
    }

    #[test]
    fn auto_asks_for_the_opening_as_pcm_and_the_rest_as_opus() {
        let text = "Dinner is ready in the kitchen. Please come down now, all of you.";
        let got: Vec<(String, AudioFormat)> = voice(FormatChoice::Auto)
            .requests(text)
            .into_iter()
            .map(|r| (r.input, r.format))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Dinner is ready in the kitchen.".into(), AudioFormat::Pcm),
                (
                    "Please come down now, all of you.".into(),
                    AudioFormat::Opus
                ),
            ]
        );
        // One short sentence is all pcm; a fixed format is one request.
        let short = voice(FormatChoice::Auto).requests("Dinner is ready.");
        assert_eq!(short.len(), 1);
        assert_eq!(short[0].format, AudioFormat::Pcm);
        let opus = voice(FormatChoice::Opus).requests(text);
        assert_eq!((opus.len(), opus[0].format), (1, AudioFormat::Opus));
        // A preset (one request, played from the cache) renders auto as opus.
        assert_eq!(
            voice(FormatChoice::Auto).request(text.into()).format,
            AudioFormat::Opus
        );
    }
}
