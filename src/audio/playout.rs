//! The playout buffer: the async side of the audio thread.
//!
//! The pipeline calls [`Playout::begin`], [`Playout::push`]es PCM at the device's rate and
//! channel count as it is decoded, calls [`Playout::end`], and awaits
//! [`Playout::finished`]. A dedicated audio thread (see `thread.rs`) owns the sink and
//! writes whole periods; it starts an utterance once the start policy (see `policy.rs`)
//! says starting cannot cause an underrun, rides out stalls with fades and silence, and
//! reports "finished" only after the sink has drained.
//!
//! The thread and the device stay open across utterances: `begin` may follow `finished` or
//! `interrupt` any number of times. `lead_in` feeds the device silence while a job's first
//! audio is fetched, so a sleeping amplifier wakes up without clipping the first syllable.
//!
//! What the sink must provide: `write` blocks while the device buffer is full (that clocks
//! the thread); the device starts on the first period written (ALSA `start_threshold` ≤ one
//! period, otherwise a lead-in of about one period never starts it); and `write` after
//! `drain` works (re-prepares the PCM), because every utterance ends with a drain.
//!
//! An interrupt is heard after what the device buffer already holds (≤ `buffer_frames`),
//! plus at most one period being written, plus the fade.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rtrb::{Consumer, Producer, RingBuffer};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::policy::{
    overdue_after, prebuffer_needed, resume_needed, start_windows, warm_floor, warm_start,
    ArrivalStats, PolicyParams, SilenceWindow,
};
use super::stretch::{StretchConfig, Stretcher, MIN_TEMPO_FLOOR};
use super::thread::{
    plan_ns, AudioThread, RawEvent, RawReport, Shared, ThreadParams, NO_PLAN, RT_GRANTED,
    RT_NOT_REQUESTED, RT_PENDING,
};
use super::{DeviceFormat, Sink, SinkError};
use crate::netmodel::StartPlan;

/// Audio still assumed to be coming until `end()`, whatever the text's estimate says.
const MIN_REMAINING_MS: u32 = 500;
/// Events buffered between the audio thread and the async side.
const EVENT_SLOTS: usize = 64;
/// A gain change from silence to full scale is ramped over this long (smaller changes take
/// proportionally less): no zipper noise, and still within a period or so.
pub const GAIN_RAMP_MS: u32 = 15;

/// Playout tuning; the defaults suit OpenAI's streams over home WiFi.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayoutConfig {
    /// Never start with less than this buffered (unless the whole utterance is shorter).
    pub min_prebuffer_ms: u32,
    /// Audio held in reserve for network stalls, on top of the measured wait between bursts.
    ///
    /// Default 1000 ms: WiFi stalls of up to ~1 s can happen at any moment, including right
    /// after playback starts, and the buffer at start must outlast one plus the wait for the
    /// next burst. For Ogg Opus (1 s pages) this costs nothing extra: the rate can only be
    /// measured at the second page, and two pages cover gap + 1 s for any speed ≥ ~1×. For
    /// raw PCM it costs about `1 s / R` of waiting.
    pub jitter_reserve_ms: u32,
    /// Capacity of the playout ring (backpressure beyond it).
    pub max_buffer_ms: u32,
    /// Fade length when the buffer runs dry mid-utterance (≤ 10).
    pub stall_fade_ms: u32,
    /// Fade length on interrupt (≤ 20).
    pub interrupt_fade_ms: u32,
    /// SCHED_FIFO priority for the audio thread (1–99); `None` leaves it at normal priority.
    pub realtime_priority: Option<i32>,
    /// The slowest tempo playback may slow to while the buffer is short (pitch kept):
    /// 0.5–1.0, 1.0 = never stretch. Default 0.90, NetEq's own bound.
    pub max_slowdown: f32,
}

impl PlayoutConfig {
    /// The playout's rules for its settings (the config file reports a break of one
    /// against its own key).
    pub fn validate(&self) -> Result<(), PlayoutError> {
        check(
            "stall_fade_ms",
            self.stall_fade_ms,
            self.stall_fade_ms <= 10,
            "0 to 10 ms",
        )?;
        check(
            "interrupt_fade_ms",
            self.interrupt_fade_ms,
            self.interrupt_fade_ms <= 20,
            "0 to 20 ms",
        )?;
        check(
            "max_buffer_ms",
            self.max_buffer_ms,
            (500..=120_000).contains(&self.max_buffer_ms),
            "500 to 120000 ms",
        )?;
        check(
            "jitter_reserve_ms",
            self.jitter_reserve_ms,
            self.min_prebuffer_ms.saturating_add(self.jitter_reserve_ms) < self.max_buffer_ms,
            "min_prebuffer_ms + jitter_reserve_ms below max_buffer_ms",
        )?;
        if !(MIN_TEMPO_FLOOR..=1.0).contains(&self.max_slowdown) {
            return Err(PlayoutError::Tempo {
                value: self.max_slowdown,
            });
        }
        if let Some(p) = self.realtime_priority {
            if !(1..=99).contains(&p) {
                return Err(PlayoutError::Config {
                    field: "realtime_priority",
                    value: i64::from(p),
                    allowed: "0 = off, 1 to 99 (SCHED_FIFO)",
                });
            }
        }
        Ok(())
    }
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        PlayoutConfig {
            min_prebuffer_ms: 150,
            jitter_reserve_ms: 1000,
            max_buffer_ms: 20_000,
            stall_fade_ms: 8,
            interrupt_fade_ms: 15,
            // Above ordinary threads, below the kernel's threaded IRQs (50); the systemd unit
            // must allow it (LimitRTPRIO), otherwise playout carries on without it.
            realtime_priority: Some(20),
            max_slowdown: super::stretch::DEFAULT_MIN_TEMPO,
        }
    }
}

/// What happened to one utterance, reported when it finished or was interrupted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UtteranceReport {
    /// When the first sample was written to the sink (`None` if nothing was played).
    pub started_at: Option<Instant>,
    /// Frames of the utterance written (excluding inserted silence).
    pub frames_played: u64,
    /// Times the buffer ran dry mid-utterance.
    pub stalls: u32,
    /// Silence inserted by those stalls, in milliseconds.
    pub stall_ms: u64,
    /// Audio buffered when playback started, in milliseconds.
    pub prebuffer_ms: u32,
    /// Device underruns the sink recovered from during the utterance.
    pub xruns: u64,
    /// The utterance was cut short by `interrupt` (or replaced by a new `begin`).
    pub interrupted: bool,
    /// Audio played slowed down (pitch kept), in milliseconds of the original.
    pub stretched_ms: u64,
    /// What slowed playback added, in milliseconds.
    pub added_ms: u64,
    /// The slowest tempo used (1.0: never slowed).
    pub lowest_tempo: f32,
    /// The start followed a learned network plan (warm) rather than the fixed rules.
    pub warm: bool,
}

/// Progress of the current utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayoutEvent {
    /// The first sample of the utterance was written to the sink.
    Started {
        /// When it was written.
        at: Instant,
    },
    /// The buffer ran dry; the device is being fed silence.
    StallBegan {
        /// When the fade-out was written.
        at: Instant,
    },
    /// Playback resumed after a stall.
    StallEnded {
        /// Length of the inserted silence.
        ms: u32,
    },
}

/// Whether the audio thread runs with real-time priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealtimeStatus {
    /// `realtime_priority` was `None`.
    NotRequested,
    /// SCHED_FIFO at this priority.
    Granted {
        /// The SCHED_FIFO priority.
        priority: i32,
    },
    /// The system refused (typically EPERM: no CAP_SYS_NICE / RLIMIT_RTPRIO).
    Denied {
        /// The priority asked for.
        priority: i32,
        /// Why the system refused.
        reason: String,
    },
}

/// Errors of the playout buffer.
#[derive(Debug, thiserror::Error)]
pub enum PlayoutError {
    /// A configuration value is out of range.
    #[error("playout setting {field} = {value} is not allowed: {allowed}")]
    Config {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: i64,
        /// What is allowed.
        allowed: &'static str,
    },
    /// `max_slowdown` is out of range.
    #[error(
        "playout setting max_slowdown = {value} is not allowed: 0.5 to 1.0 (1.0 = never slow down)"
    )]
    Tempo {
        /// The value given.
        value: f32,
    },
    /// The sink granted a format playout cannot use.
    #[error("audio device '{device}' granted an unusable format: {detail}")]
    Format {
        /// The device name.
        device: String,
        /// What went wrong.
        detail: String,
    },
    /// The audio thread or its wake-up channel could not be created.
    #[error("cannot start the audio thread: {detail}")]
    Spawn {
        /// What went wrong.
        detail: String,
    },
    /// The device failed; the audio thread has stopped.
    #[error("playback stopped: {0}")]
    Device(#[source] SinkError),
    /// The audio thread stopped earlier (its error was already returned once).
    #[error("the audio thread has stopped after an earlier error; open the device again")]
    Stopped,
    /// The audio thread panicked (a bug).
    #[error("the audio thread panicked")]
    Panicked,
    /// A call that needs an utterance came without one.
    #[error("{op}() needs an utterance in progress: call begin() first (the last one has finished or was interrupted)")]
    NoUtterance {
        /// The method called.
        op: &'static str,
    },
    /// `finished()` without `end()` would wait forever.
    #[error("finished() needs end() first: without it the utterance never finishes")]
    NotEnded,
    /// `push` got a partial frame.
    #[error("push() got {len} samples, which is not a whole number of {channels}-channel frames")]
    Misaligned {
        /// Samples pushed.
        len: usize,
        /// The device's channels.
        channels: u16,
    },
    /// Awaiting playout outside a Tokio runtime.
    #[error("playout must be awaited inside a Tokio runtime with I/O enabled: {detail}")]
    NoRuntime {
        /// What went wrong.
        detail: String,
    },
    /// The wake-up socket between the audio thread and the async side failed.
    #[error("audio thread wake-up channel failed: {detail}")]
    Wakeup {
        /// What went wrong.
        detail: String,
    },
}

#[derive(Debug)]
struct Utterance {
    expected: Duration,
    stats: ArrivalStats,
    /// The learned plan this utterance starts by (`None`: the fixed cold-start rules).
    plan: Option<StartPlan>,
    /// More `push`es are accepted.
    open: bool,
    ended: bool,
}

impl Utterance {
    /// Tells the audio thread when it may start, resume and stop slowing down, from what
    /// has arrived so far (see `policy.rs`).
    fn publish_targets(&self, sh: &Shared, p: &PolicyParams, min_tempo: f32, now: Instant) {
        let (stats, expected) = (&self.stats, self.expected);
        let cold = prebuffer_needed(stats, expected, p, now);
        let resume = resume_needed(stats, expected, p, min_tempo, now);
        sh.resume_frames.store(resume, Ordering::Release);
        let overdue = u64::try_from(overdue_after(stats).as_nanos()).unwrap_or(u64::MAX);
        sh.overdue_after_ns.store(overdue, Ordering::Release);
        // The longest stall to prepare for: what was learned, or the fixed reserve.
        let horizon = match &self.plan {
            Some(plan) => {
                let secs = f64::from(plan.jitter_ms) / 1000.0 + stats.typical_wait().as_secs_f64();
                (secs * f64::from(p.rate)) as u64
            }
            None => cold,
        };
        sh.stall_horizon_frames.store(horizon, Ordering::Release);
        // Cold, the buffer level is all there is to go by: slow whenever it is below what
        // resuming would need. Warm, the plan already covers the stalls it learned; slow
        // only when the buffer gets to half that (a stall beyond what was learned).
        let slow_below = if self.plan.is_some() {
            resume / 2
        } else {
            resume
        };
        sh.slow_below_frames.store(slow_below, Ordering::Release);
        match &self.plan {
            None => {
                sh.target_frames.store(cold, Ordering::Release);
                sh.delay_target_ns.store(0, Ordering::Release);
                sh.early_window.store(&SilenceWindow::SHUT);
                sh.start_delay_ns.store(NO_PLAN, Ordering::Release);
            }
            Some(plan) => {
                let (start, target) = warm_start(plan, stats, expected, p, min_tempo);
                // The floor still applies (the learned moment only replaces the reserve).
                let floor = warm_floor(stats, expected, p);
                sh.target_frames.store(floor, Ordering::Release);
                sh.delay_target_ns.store(plan_ns(target), Ordering::Release);
                let w = start_windows(plan, stats, expected, p, min_tempo);
                sh.planned_window.store(&w.planned);
                sh.early_window.store(&w.early);
                sh.start_delay_ns.store(plan_ns(start), Ordering::Release);
            }
        }
    }
}

enum Wake {
    Std(StdUnixStream),
    Tokio(UnixStream),
    /// Transient while converting.
    None,
}

/// Tells whether the audio thread is stuck in a device call (a hung DAC), without touching
/// the playout itself.
#[derive(Debug, Clone)]
pub struct PlayoutHealth {
    shared: Arc<Shared>,
}

impl PlayoutHealth {
    /// How long the device write or drain in progress has been blocked (`None`: the thread
    /// is not in a device call).
    pub fn device_call_for(&self) -> Option<Duration> {
        self.shared.device_call_for()
    }
}

/// The playout buffer: owns the audio thread, which owns the sink. Dropping it stops the
/// thread like `shutdown` (blocking until any fade-out has played).
pub struct Playout {
    shared: Arc<Shared>,
    ring: Producer<i16>,
    events: Consumer<RawEvent>,
    wake: Wake,
    thread: Option<JoinHandle<()>>,
    audio_thread: thread::Thread,
    format: DeviceFormat,
    policy: PolicyParams,
    realtime: RealtimeStatus,
    gen: u64,
    pushed: u64,
    utt: Option<Utterance>,
    done: Option<RawReport>,
    events_tx: Option<mpsc::UnboundedSender<PlayoutEvent>>,
    /// The bursts of the utterance that ended last (for the network model).
    ended_bursts: Vec<crate::netmodel::Burst>,
    /// The plan the next `begin` starts by.
    next_plan: Option<StartPlan>,
    /// The slowest tempo allowed (1.0: no stretcher).
    min_tempo: f32,
    failed: bool,
    error_taken: bool,
}

fn check(
    field: &'static str,
    value: u32,
    ok: bool,
    allowed: &'static str,
) -> Result<(), PlayoutError> {
    if ok {
        Ok(())
    } else {
        Err(PlayoutError::Config {
            field,
            value: i64::from(value),
            allowed,
        })
    }
}

/// The stretcher for a device, if slowing down is on and the format allows it (a device
/// format libsonic cannot take plays without, and says so).
fn stretcher_for(format: &DeviceFormat, max_slowdown: f32) -> Option<Stretcher> {
    if max_slowdown >= 1.0 {
        return None;
    }
    let cfg = StretchConfig::new(format.rate, format.channels, format.period_frames)
        .with_min_tempo(max_slowdown);
    match Stretcher::new(cfg) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "playback will not slow down to ride out stalls");
            None
        }
    }
}

fn ms_to_frames(ms: u32, rate: u32) -> usize {
    (u64::from(ms) * u64::from(rate) / 1000) as usize
}

impl Playout {
    /// Starts the audio thread, which takes the sink; fails on a bad config or format.
    pub fn spawn(sink: Box<dyn Sink>, cfg: PlayoutConfig) -> Result<Playout, PlayoutError> {
        cfg.validate()?;

        let format = sink.format();
        let bad = |detail: String| PlayoutError::Format {
            device: sink.name().to_string(),
            detail,
        };
        if format.rate == 0 || format.channels == 0 || format.period_frames == 0 {
            return Err(bad(format!(
                "rate {} Hz, {} channels, {} frames per period (all must be above zero)",
                format.rate, format.channels, format.period_frames
            )));
        }
        let ch = usize::from(format.channels);
        let period_ms = format.period_frames as u64 * 1000 / u64::from(format.rate);
        if period_ms > 500 {
            return Err(bad(format!(
                "period of {period_ms} ms (at most 500 ms is usable)"
            )));
        }
        let stall_fade = ms_to_frames(cfg.stall_fade_ms, format.rate);
        let interrupt_fade = ms_to_frames(cfg.interrupt_fade_ms, format.rate);
        // Room for the largest prebuffer plus the fade lookahead and a period in flight.
        let capacity_frames = ms_to_frames(cfg.max_buffer_ms, format.rate)
            .max(4 * format.period_frames + stall_fade.max(interrupt_fade));
        let (ring_tx, ring_rx) = RingBuffer::<i16>::new(capacity_frames * ch);
        let (ev_tx, ev_rx) = RingBuffer::<RawEvent>::new(EVENT_SLOTS);
        let (wake_rx, wake_tx) = StdUnixStream::pair().map_err(|e| PlayoutError::Spawn {
            detail: format!("socketpair: {e}"),
        })?;
        for s in [&wake_rx, &wake_tx] {
            s.set_nonblocking(true).map_err(|e| PlayoutError::Spawn {
                detail: format!("non-blocking wake-up socket: {e}"),
            })?;
        }

        let shared = Arc::new(Shared::new());
        let stretch = stretcher_for(&format, cfg.max_slowdown);
        let min_tempo = stretch.as_ref().map_or(1.0, Stretcher::min_tempo);
        let params = ThreadParams {
            stall_fade,
            interrupt_fade,
            gain_ramp: ms_to_frames(GAIN_RAMP_MS, format.rate),
            capacity_frames,
            realtime_priority: cfg.realtime_priority,
        };
        let audio = AudioThread::new(
            sink,
            format,
            shared.clone(),
            ring_rx,
            ev_tx,
            wake_tx,
            thread::current(),
            params,
            stretch,
        );
        let handle = thread::Builder::new()
            .name("herald-audio".into())
            .spawn(move || audio.run())
            .map_err(|e| PlayoutError::Spawn {
                detail: e.to_string(),
            })?;

        // The thread reports its real-time status before entering its loop.
        let mut status = shared.realtime.load(Ordering::Acquire);
        while status == RT_PENDING && !handle.is_finished() {
            thread::park_timeout(Duration::from_millis(10));
            status = shared.realtime.load(Ordering::Acquire);
        }
        let realtime = match (status, cfg.realtime_priority) {
            (RT_GRANTED, Some(priority)) => RealtimeStatus::Granted { priority },
            (RT_NOT_REQUESTED, _) | (_, None) => RealtimeStatus::NotRequested,
            (errno, Some(priority)) => RealtimeStatus::Denied {
                priority,
                reason: std::io::Error::from_raw_os_error(errno).to_string(),
            },
        };
        match &realtime {
            RealtimeStatus::Granted { priority } => {
                tracing::info!(priority, "audio thread runs SCHED_FIFO")
            }
            RealtimeStatus::Denied { priority, reason } => tracing::warn!(
                priority,
                %reason,
                "audio thread runs without real-time priority (allow it with LimitRTPRIO or CAP_SYS_NICE)"
            ),
            RealtimeStatus::NotRequested => {}
        }

        let audio_thread = handle.thread().clone();
        Ok(Playout {
            shared,
            ring: ring_tx,
            events: ev_rx,
            wake: Wake::Std(wake_rx),
            thread: Some(handle),
            audio_thread,
            format,
            policy: PolicyParams {
                rate: format.rate,
                min_prebuffer_ms: cfg.min_prebuffer_ms,
                jitter_reserve_ms: cfg.jitter_reserve_ms,
                min_remaining_ms: MIN_REMAINING_MS,
                capacity_frames: capacity_frames as u64,
            },
            realtime,
            gen: 0,
            pushed: 0,
            utt: None,
            done: None,
            events_tx: None,
            ended_bursts: Vec::new(),
            next_plan: None,
            min_tempo,
            failed: false,
            error_taken: false,
        })
    }

    /// The sink's granted format: `push` takes samples at this rate and channel count.
    pub fn format(&self) -> DeviceFormat {
        self.format
    }

    /// Whether the audio thread got real-time priority.
    pub fn realtime(&self) -> &RealtimeStatus {
        &self.realtime
    }

    /// The network plan that the following utterances start by (`None`: the fixed rules,
    /// as with nothing learned). Takes effect at the next `begin`.
    pub fn plan_next(&mut self, plan: Option<StartPlan>) {
        self.next_plan = plan;
    }

    /// Sets the gain (linear amplitude, clamped to 0.0–1.0) the audio is played at: the next
    /// utterance starts at it; one playing ramps to it over at most [`GAIN_RAMP_MS`].
    /// Applied by the audio thread to what it writes, so it works on every device.
    pub fn set_gain(&mut self, gain: f32) {
        let gain = if gain.is_nan() {
            1.0
        } else {
            gain.clamp(0.0, 1.0)
        };
        self.shared
            .gain_bits
            .store(gain.to_bits(), Ordering::Release);
    }

    /// Starts a new utterance lasting about `expected` (estimated from its text). One still
    /// in flight is faded out and dropped (its report is discarded).
    pub fn begin(&mut self, expected: Duration) {
        let plan = self.next_plan.clone();
        self.begin_with(expected, plan);
    }

    /// [`begin`](Self::begin) for audio from memory (a chime): it starts by the fixed rules
    /// whatever was learned about the network, and leaves the plan to the next `begin`.
    pub fn begin_local(&mut self, expected: Duration) {
        self.begin_with(expected, None);
    }

    fn begin_with(&mut self, expected: Duration, plan: Option<StartPlan>) {
        self.gen += 1;
        let utt = Utterance {
            expected,
            stats: ArrivalStats::new(self.format.rate),
            plan,
            open: true,
            ended: false,
        };
        self.done = None;
        // Order matters: the thread reads the generation first, then these.
        self.shared.first_at_ns.store(0, Ordering::Release);
        self.shared.last_push_ns.store(0, Ordering::Release);
        utt.publish_targets(&self.shared, &self.policy, self.min_tempo, Instant::now());
        self.utt = Some(utt);
        self.shared.start_pos.store(self.pushed, Ordering::Release);
        self.shared.generation.store(self.gen, Ordering::Release);
        self.audio_thread.unpark();
    }

    /// Queues interleaved samples at the device's rate and channel count, waiting for ring
    /// space when the buffer is full. Fails if the audio thread died (device error).
    pub async fn push(&mut self, samples: &[i16]) -> Result<(), PlayoutError> {
        self.push_arrived(samples, Instant::now()).await
    }

    /// Audio pushed from now on comes from a later request than the utterance's first (the
    /// pipeline's next segment; `auto`'s Opus part): the network model learns the silences
    /// a start must bridge from the first request only.
    pub fn next_request(&mut self) {
        if let Some(utt) = self.utt.as_mut() {
            utt.stats.next_request();
        }
    }

    /// Audio past `at` into the utterance is already being generated by a concurrent
    /// request (`None`: nothing is): slowing and resuming then reckon with the deficit of
    /// the stream now arriving only, not with the whole rest at its rate.
    pub fn concurrent_after(&mut self, at: Option<Duration>) {
        if let Some(utt) = self.utt.as_mut() {
            utt.stats.set_concurrent_after(at);
        }
    }

    /// [`push`](Self::push) of audio that arrived at `arrived` (its bytes waited, e.g.
    /// behind a chime): the start rule and the stall watch count from when it came.
    pub async fn push_arrived(
        &mut self,
        samples: &[i16],
        arrived: Instant,
    ) -> Result<(), PlayoutError> {
        self.pump();
        self.check_alive()?;
        let ch = usize::from(self.format.channels);
        if samples.len() % ch != 0 {
            return Err(PlayoutError::Misaligned {
                len: samples.len(),
                channels: self.format.channels,
            });
        }
        let Some(utt) = self.utt.as_mut().filter(|u| u.open) else {
            return Err(PlayoutError::NoUtterance { op: "push" });
        };
        if samples.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let arrived = arrived.min(now);
        utt.stats.record((samples.len() / ch) as u64, arrived);
        if let Some(first) = utt.stats.first_at() {
            let ns = self.shared.ns_of(first);
            self.shared.first_at_ns.store(ns, Ordering::Release);
        }
        self.shared
            .last_push_ns
            .store(self.shared.ns_of(arrived), Ordering::Release);
        utt.publish_targets(&self.shared, &self.policy, self.min_tempo, now);

        let mut rest = samples;
        while !rest.is_empty() {
            // Whole frames only, so the thread never sees half a frame.
            let fit = (self.ring.slots() / ch * ch).min(rest.len());
            if fit > 0 {
                let (pushed, remainder) = self.ring.push_partial_slice(&rest[..fit]);
                self.pushed += (pushed.len() / ch) as u64;
                rest = &rest[pushed.len()..];
                debug_assert!(remainder.is_empty());
                self.audio_thread.unpark();
                continue;
            }
            self.shared.space_wanted.store(true, Ordering::SeqCst);
            // Pairs with the fence in the audio thread's `wake_writer`.
            fence(Ordering::SeqCst);
            if self.ring.slots() >= ch {
                continue;
            }
            self.wait_wakeup().await?;
            self.pump();
            self.check_alive()?;
        }
        Ok(())
    }

    /// Marks all audio of the utterance as pushed: playback starts now if it has not yet.
    pub fn end(&mut self) {
        if let Some(utt) = self.utt.as_mut().filter(|u| u.open) {
            utt.open = false;
            utt.ended = true;
            self.shared.end_pos.store(self.pushed, Ordering::Release);
            self.shared.ended_gen.store(self.gen, Ordering::Release);
            self.audio_thread.unpark();
        }
    }

    /// Resolves once the last sample of the utterance has been played (after the sink drained).
    pub async fn finished(&mut self) -> Result<UtteranceReport, PlayoutError> {
        match &self.utt {
            None => return Err(PlayoutError::NoUtterance { op: "finished" }),
            Some(u) if !u.ended => return Err(PlayoutError::NotEnded),
            Some(_) => {}
        }
        self.wait_done().await
    }

    /// Fades out what is playing (≤ interrupt_fade_ms), drops the rest, and resolves once
    /// the fade has played. Returns the utterance's report with `interrupted` set — unless
    /// it had already finished, in which case that report is returned.
    pub async fn interrupt(&mut self) -> Result<UtteranceReport, PlayoutError> {
        match self.utt.as_mut() {
            None => return Err(PlayoutError::NoUtterance { op: "interrupt" }),
            Some(u) => u.open = false,
        }
        self.shared.interrupt_gen.store(self.gen, Ordering::Release);
        self.audio_thread.unpark();
        self.wait_done().await
    }

    /// From now on, the events of each utterance go to the returned receiver (replacing an
    /// earlier one). They are forwarded whenever this side runs: during `push`, `finished`,
    /// `interrupt`, and `wait_event` — call that while waiting on anything else.
    pub fn subscribe(&mut self) -> mpsc::UnboundedReceiver<PlayoutEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.events_tx = Some(tx);
        rx
    }

    /// Waits until the audio thread reports something and forwards it to the subscriber.
    /// Cancel-safe: meant for a `select!` beside the network, so events are not held back
    /// while no audio arrives.
    pub async fn wait_event(&mut self) -> Result<(), PlayoutError> {
        self.pump();
        self.check_alive()?;
        self.wait_wakeup().await?;
        self.pump();
        self.check_alive()
    }

    /// How the audio of the utterance that ended last arrived, burst by burst (empty if
    /// none ended since the last call).
    pub fn take_bursts(&mut self) -> Vec<crate::netmodel::Burst> {
        std::mem::take(&mut self.ended_bursts)
    }

    /// A handle that tells, from any thread, whether the audio thread is stuck in a device
    /// call; it stays valid while the playout is lent out.
    pub fn health(&self) -> PlayoutHealth {
        PlayoutHealth {
            shared: self.shared.clone(),
        }
    }

    /// Gives up on an audio thread stuck in a device call: asks it to stop and returns at
    /// once without joining. If the call ever returns, the thread exits and closes the sink.
    pub fn abandon(mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.audio_thread.unpark();
        // Detached: dropping the handle does not wait for the thread.
        drop(self.thread.take());
    }

    /// Feeds the device silence until the next utterance starts playing, keeping about
    /// one period queued, so an amplifier wakes up while the first audio is fetched.
    pub fn lead_in(&mut self) {
        self.shared.lead_in.store(true, Ordering::Release);
        self.audio_thread.unpark();
    }

    /// Stops a lead-in (e.g. the job failed before any audio came).
    pub fn cancel_lead_in(&mut self) {
        self.shared.lead_in.store(false, Ordering::Release);
    }

    /// Stops the audio thread (fading out anything playing) and waits for it.
    pub fn shutdown(mut self) -> Result<(), PlayoutError> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Result<(), PlayoutError> {
        let Some(handle) = self.thread.take() else {
            return Ok(());
        };
        self.shared.shutdown.store(true, Ordering::Release);
        self.audio_thread.unpark();
        if handle.join().is_err() {
            return Err(PlayoutError::Panicked);
        }
        self.pump();
        if self.error_taken {
            // Already returned by push/finished/interrupt.
            return Ok(());
        }
        self.check_alive()
    }

    async fn wait_done(&mut self) -> Result<UtteranceReport, PlayoutError> {
        loop {
            self.pump();
            if let Some(raw) = self.done.take() {
                let mut warm = false;
                if let Some(u) = self.utt.take() {
                    warm = u.plan.is_some();
                    self.ended_bursts = u.stats.into_bursts();
                }
                return Ok(self.report(raw, warm));
            }
            self.check_alive()?;
            self.wait_wakeup().await?;
        }
    }

    fn report(&self, raw: RawReport, warm: bool) -> UtteranceReport {
        let rate = u64::from(self.format.rate);
        UtteranceReport {
            started_at: raw.started_at,
            frames_played: raw.frames_played,
            stalls: raw.stalls,
            stall_ms: raw.stall_frames * 1000 / rate,
            prebuffer_ms: u32::try_from(raw.prebuffer_frames * 1000 / rate).unwrap_or(u32::MAX),
            xruns: raw.xruns,
            interrupted: raw.interrupted,
            stretched_ms: raw.stretched_frames * 1000 / rate,
            added_ms: raw.added_frames * 1000 / rate,
            lowest_tempo: raw.lowest_tempo_milli.min(1000) as f32 / 1000.0,
            warm,
        }
    }

    /// Moves events from the audio thread's ring to the subscriber and `done`.
    fn pump(&mut self) {
        let rate = u64::from(self.format.rate);
        while let Ok(ev) = self.events.pop() {
            match ev {
                RawEvent::Started { gen, at } if gen == self.gen => {
                    self.forward(PlayoutEvent::Started { at })
                }
                RawEvent::StallBegan { gen, at } if gen == self.gen => {
                    if let Some(u) = &self.utt {
                        // When and with how much delivered the stall came: tells a slow
                        // stream from a start policy that started too early.
                        tracing::debug!(
                            after_first_audio_ms = u
                                .stats
                                .first_at()
                                .map_or(0, |t| at.saturating_duration_since(t).as_millis() as u64),
                            delivered_ms = u.stats.received() * 1000 / rate,
                            pushed_frames =
                                self.pushed - self.shared.start_pos.load(Ordering::Acquire),
                            "playout ran dry; feeding silence until the buffer refills"
                        );
                    }
                    self.forward(PlayoutEvent::StallBegan { at })
                }
                RawEvent::StallEnded { gen, frames } if gen == self.gen => {
                    let ms = u32::try_from(frames * 1000 / rate).unwrap_or(u32::MAX);
                    self.forward(PlayoutEvent::StallEnded { ms })
                }
                RawEvent::Done { gen, report } if gen == self.gen => self.done = Some(report),
                RawEvent::Failed => self.failed = true,
                // Events of utterances already replaced.
                _ => {}
            }
        }
    }

    fn forward(&mut self, ev: PlayoutEvent) {
        if let Some(tx) = &self.events_tx {
            // A receiver that is gone no longer wants events.
            if tx.send(ev).is_err() {
                self.events_tx = None;
            }
        }
    }

    /// Errors once the audio thread has died: its device error first, then `Stopped`.
    fn check_alive(&mut self) -> Result<(), PlayoutError> {
        let dead = self.failed || self.thread.as_ref().is_some_and(|h| h.is_finished());
        if !dead {
            return Ok(());
        }
        if self.error_taken {
            return Err(PlayoutError::Stopped);
        }
        self.error_taken = true;
        let err = self.shared.error.lock().ok().and_then(|mut e| e.take());
        match err {
            Some(e) => Err(PlayoutError::Device(e)),
            None if self.failed => Err(PlayoutError::Stopped),
            // Finished without a device error while we still hold the ring: it panicked.
            None => Err(PlayoutError::Panicked),
        }
    }

    /// Awaits one wake-up from the audio thread (an event, or ring space).
    async fn wait_wakeup(&mut self) -> Result<(), PlayoutError> {
        if let Wake::Std(_) = self.wake {
            // Converted lazily: `spawn` is sync and may run outside the runtime.
            tokio::runtime::Handle::try_current().map_err(|e| PlayoutError::NoRuntime {
                detail: e.to_string(),
            })?;
            if let Wake::Std(std) = std::mem::replace(&mut self.wake, Wake::None) {
                let stream = UnixStream::from_std(std).map_err(|e| PlayoutError::Wakeup {
                    detail: e.to_string(),
                })?;
                self.wake = Wake::Tokio(stream);
            }
        }
        let Wake::Tokio(stream) = &self.wake else {
            return Err(PlayoutError::Wakeup {
                detail: "wake-up socket lost after a failed setup".into(),
            });
        };
        let mut buf = [0u8; 64];
        loop {
            stream.readable().await.map_err(|e| PlayoutError::Wakeup {
                detail: e.to_string(),
            })?;
            let mut woke = false;
            loop {
                match stream.try_read(&mut buf) {
                    Ok(0) => {
                        // The thread is gone: its events and error say why.
                        self.failed = true;
                        return Ok(());
                    }
                    Ok(_) => woke = true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(PlayoutError::Wakeup {
                            detail: e.to_string(),
                        })
                    }
                }
            }
            if woke {
                return Ok(());
            }
        }
    }
}

impl Drop for Playout {
    fn drop(&mut self) {
        // Best effort: fade out, stop the thread; errors have nowhere to go.
        let _ = self.stop_thread();
    }
}
