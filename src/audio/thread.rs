//! The audio thread: owns the sink, writes whole periods, applies fades, and talks to the
//! async side only through atomics, two wait-free rings and a wake-up socket.
//!
//! Its loop never allocates, locks, logs or touches the network: the period buffer is
//! allocated before the loop, samples come from an `rtrb` ring, control comes from atomics,
//! and events go back through a second `rtrb` ring plus one byte on a non-blocking socket.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rtrb::{Consumer, Producer};

use super::clock::WallClock;
use super::policy::SilenceWindow;
use super::stretch::Stretcher;
use super::stretch_gate::{tempo_for, BlockClassifier, Slowing};
use super::{DeviceFormat, Sink, SinkError};

/// Real-time status before the thread has tried.
pub(super) const RT_PENDING: i32 = i32::MIN;
/// Real-time priority was not requested.
pub(super) const RT_NOT_REQUESTED: i32 = -1;
/// Real-time priority was granted (positive values are the errno of a refusal).
pub(super) const RT_GRANTED: i32 = 0;

/// How long the idle thread sleeps between looks at the control atomics (a `begin`,
/// `lead_in` or `push` unparks it at once; this is only a safety net).
const IDLE_PARK: Duration = Duration::from_millis(50);
/// Same while waiting for the prebuffer to fill (every push unparks it).
const PREBUFFER_PARK: Duration = Duration::from_millis(20);
/// Scheduling slack kept on top of one period when judging that the device is about to
/// run out (the stall's fade and silence must be written before it does).
const DRY_MARGIN: Duration = Duration::from_millis(5);
/// Event slots kept free for the one terminal event of an utterance.
const TERMINAL_RESERVE: usize = 4;
/// `start_delay_ns` when no learned plan applies (the buffer rule alone decides).
pub(super) const NO_PLAN: u64 = u64::MAX;

/// Control and status shared between the async side and the audio thread.
#[derive(Debug)]
pub(super) struct Shared {
    /// Utterance generation; `begin()` bumps it (after storing `start_pos` and `target`).
    pub generation: AtomicU64,
    /// Frame position (over the ring's lifetime) where the current generation's audio starts.
    pub start_pos: AtomicU64,
    /// Frame position just past the last frame of `ended_gen`.
    pub end_pos: AtomicU64,
    /// The generation whose audio is all pushed (`end()`).
    pub ended_gen: AtomicU64,
    /// The generation to interrupt.
    pub interrupt_gen: AtomicU64,
    /// Prebuffer target in frames, recomputed by the async side at every push.
    pub target_frames: AtomicU64,
    /// Frames needed to resume after a stall (at the slowed tempo), recomputed at every push.
    pub resume_frames: AtomicU64,
    /// Below this many frames buffered playback slows down (while more is to come).
    pub slow_below_frames: AtomicU64,
    /// Nanoseconds after `base` of the latest push; 0 = none yet.
    pub last_push_ns: AtomicU64,
    /// A push this long (ns) after the previous one is overdue: a stall is under way.
    pub overdue_after_ns: AtomicU64,
    /// During a stall, slow down only with less than this buffered (more outlasts any
    /// stall expected).
    pub stall_horizon_frames: AtomicU64,
    /// Nanoseconds after `base` when the utterance's first audio arrived; 0 = not yet.
    pub first_at_ns: AtomicU64,
    /// Warm start: play once this long (ns) after the first audio; `NO_PLAN`: cold.
    pub start_delay_ns: AtomicU64,
    /// Warm start: play slowed until playback runs this far (ns) behind the first audio.
    pub delay_target_ns: AtomicU64,
    /// Warm start: the silences since the last push in which the planned moment holds
    /// (see `policy::StartWindows`)...
    pub planned_window: WindowCell,
    /// ...and those in which a start on the buffer alone, before the moment, may begin.
    pub early_window: WindowCell,
    /// The gain (linear amplitude, `f32` bits) to play at: a new utterance starts at it,
    /// one playing ramps to it.
    pub gain_bits: AtomicU32,
    /// Feed the device silence while idle or prebuffering (wakes amplifiers).
    pub lead_in: AtomicBool,
    /// Stop the thread.
    pub shutdown: AtomicBool,
    /// The async side waits for ring space: wake it after consuming.
    pub space_wanted: AtomicBool,
    /// One of the `RT_*` values or the errno of a refused real-time request.
    pub realtime: AtomicI32,
    /// Origin of the nanosecond stamps below.
    pub base: Instant,
    /// Nanoseconds after `base` when the device call in progress (write or drain) began;
    /// 0 = none. Lets the async side see a hung device while the thread is stuck in it.
    pub device_call_ns: AtomicU64,
    /// The sink error that stopped the thread; written once, outside the loop.
    pub error: Mutex<Option<SinkError>>,
}

/// `d` in nanoseconds for a plan atomic, saturating just under `NO_PLAN` (which means none).
pub(super) fn plan_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(NO_PLAN - 1)
}

/// A `policy::SilenceWindow` the async side publishes and the audio thread reads, as
/// three nanosecond atomics (`NO_PLAN` in `again_from`: never), so neither side locks.
#[derive(Debug)]
pub struct WindowCell([AtomicU64; 3]);

impl WindowCell {
    /// A cell holding `w`.
    pub fn new(w: SilenceWindow) -> Self {
        let cell = WindowCell([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        cell.store(&w);
        cell
    }

    /// Publishes `w`.
    pub fn store(&self, w: &SilenceWindow) {
        self.0[0].store(plan_ns(w.calm_until), Ordering::Release);
        self.0[1].store(w.again_from.map_or(NO_PLAN, plan_ns), Ordering::Release);
        self.0[2].store(plan_ns(w.tail), Ordering::Release);
    }

    /// The window last published.
    pub fn load(&self) -> SilenceWindow {
        let [calm_until, again_from, tail] = [0, 1, 2].map(|i| self.0[i].load(Ordering::Acquire));
        SilenceWindow {
            calm_until: Duration::from_nanos(calm_until),
            again_from: (again_from != NO_PLAN).then(|| Duration::from_nanos(again_from)),
            tail: Duration::from_nanos(tail),
        }
    }
}

impl Shared {
    /// How long the device call in progress has been blocked (`None`: not in one).
    pub fn device_call_for(&self) -> Option<Duration> {
        match self.device_call_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.base.elapsed().saturating_sub(Duration::from_nanos(ns))),
        }
    }

    /// Nanoseconds from `base` to `at` (at least 1, so 0 can mean "not yet").
    pub fn ns_of(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.base).as_nanos();
        u64::try_from(ns).unwrap_or(u64::MAX).max(1)
    }

    fn stamp_device_call(&self) {
        self.device_call_ns
            .store(self.ns_of(Instant::now()), Ordering::Release);
    }

    fn clear_device_call(&self) {
        self.device_call_ns.store(0, Ordering::Release);
    }

    /// Fresh control state: no utterance yet (generation 0).
    pub fn new() -> Self {
        Shared {
            generation: AtomicU64::new(0),
            start_pos: AtomicU64::new(0),
            end_pos: AtomicU64::new(0),
            ended_gen: AtomicU64::new(0),
            interrupt_gen: AtomicU64::new(0),
            target_frames: AtomicU64::new(0),
            resume_frames: AtomicU64::new(0),
            slow_below_frames: AtomicU64::new(0),
            last_push_ns: AtomicU64::new(0),
            overdue_after_ns: AtomicU64::new(u64::MAX),
            stall_horizon_frames: AtomicU64::new(0),
            first_at_ns: AtomicU64::new(0),
            start_delay_ns: AtomicU64::new(NO_PLAN),
            planned_window: WindowCell::new(SilenceWindow::OPEN),
            early_window: WindowCell::new(SilenceWindow::SHUT),
            delay_target_ns: AtomicU64::new(0),
            gain_bits: AtomicU32::new(1.0f32.to_bits()),
            lead_in: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            space_wanted: AtomicBool::new(false),
            realtime: AtomicI32::new(RT_PENDING),
            base: Instant::now(),
            device_call_ns: AtomicU64::new(0),
            error: Mutex::new(None),
        }
    }
}

/// What the audio thread measured for one utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct RawReport {
    pub started_at: Option<Instant>,
    pub frames_played: u64,
    pub stalls: u32,
    pub stall_frames: u64,
    pub prebuffer_frames: u64,
    pub xruns: u64,
    pub interrupted: bool,
    /// Input frames played below tempo 1.0.
    pub stretched_frames: u64,
    /// Frames slowed playback added (output minus input).
    pub added_frames: u64,
    /// The slowest tempo used, in thousandths (1000 = never slowed).
    pub lowest_tempo_milli: u32,
}

/// Events from the audio thread, tagged with the generation they belong to.
#[derive(Debug, Clone, Copy)]
pub(super) enum RawEvent {
    Started { gen: u64, at: Instant },
    StallBegan { gen: u64, at: Instant },
    StallEnded { gen: u64, frames: u64 },
    Done { gen: u64, report: RawReport },
    Failed,
}

/// Fade lengths and limits, in frames.
#[derive(Debug, Clone, Copy)]
pub(super) struct ThreadParams {
    pub stall_fade: usize,
    pub interrupt_fade: usize,
    /// Frames a gain change from silence to full scale is ramped over.
    pub gain_ramp: usize,
    pub capacity_frames: usize,
    pub realtime_priority: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Prebuffering,
    Playing,
    Stalled,
}

/// Where the current utterance's audio stops in the ring.
#[derive(Debug, Clone, Copy)]
enum Boundary {
    /// More may still be pushed.
    Open,
    /// All pushed; the utterance ends at this frame position.
    Ended(u64),
    /// A newer utterance begins at this frame position.
    Superseded(u64),
}

/// Lead-in pacing: silence is written against the wall clock so that at most about two
/// periods are queued and the first real sample waits at most about one period.
#[derive(Debug, Default)]
struct LeadIn {
    since: Option<Instant>,
    written: u64,
}

/// Keeps the silence of a stall from being written faster than real time to a sink that
/// never blocks (ALSA `null`, a broken driver): a real device blocks once its buffer is
/// full, so being more than a buffer ahead of the wall clock means the sink is not
/// clocking us, and we wait instead.
#[derive(Debug, Default)]
struct Pace {
    clock: WallClock,
}

impl Pace {
    /// How long to wait before writing `frames` more, so that at most `limit` frames are
    /// ahead of the wall clock (`None`: write now).
    fn wait_before(&mut self, frames: u64, limit: u64, rate: u32) -> Option<Duration> {
        let now = Instant::now();
        if self.clock.start_if_dry(now, rate) {
            // Ran dry or sat idle: the device's clock starts again with this write.
            return None;
        }
        let ahead = self.clock.ahead(now, rate) + frames;
        (ahead > limit).then(|| Duration::from_secs_f64((ahead - limit) as f64 / f64::from(rate)))
    }

    /// Counts `frames` of silence written.
    fn wrote(&mut self, frames: u64) {
        self.clock.add(frames);
    }
}

/// The audio thread's state; everything is allocated before `run` enters its loop.
pub(super) struct AudioThread {
    sink: Box<dyn Sink>,
    shared: Arc<Shared>,
    ring: Consumer<i16>,
    events: Producer<RawEvent>,
    wake: UnixStream,
    spawner: thread::Thread,
    params: ThreadParams,
    rate: u32,
    channels: usize,
    period: usize,
    buf: Vec<i16>,
    consumed: u64,
    gen: u64,
    state: State,
    report: RawReport,
    xruns_at_begin: u64,
    stall_frames_now: u64,
    lookahead: usize,
    /// False for a file: it has no clock to keep, so nothing waits on a prebuffer and no
    /// silence is inserted — the thread waits for data instead.
    clocked: bool,
    fade_in: Option<usize>,
    lead: LeadIn,
    pace: Pace,
    /// Every period written since the device last started: what it holds at least, for
    /// devices whose delay leaves part of their queue out (`queued`).
    device_clock: WallClock,
    buffer_frames: u64,
    /// Device queue (frames) at or below which a short ring means a stall: a period plus
    /// `DRY_MARGIN`.
    dry_threshold: u64,
    /// Slows playback while the buffer is short (`None`: `max_slowdown` = 1.0).
    stretch: Option<Stretcher>,
    /// Why the next blocks should play slower (`choose_tempo`), and what each block is:
    /// together they set the tempo of each push into the stretcher.
    slowing: Slowing,
    /// Started on the buffer alone, before the planned moment: there is no start credit
    /// to earn back by slowing.
    started_early: bool,
    gate: BlockClassifier,
    /// Ring position where the current utterance starts (its frames consumed = the
    /// difference).
    utt_start: u64,
    /// The gain applied to the last frame written (ramps towards `Shared::gain_bits`).
    gain: f32,
    /// The most the gain moves from one frame to the next (no zipper noise).
    gain_step: f32,
}

impl AudioThread {
    /// Prepares the thread state (allocates the period buffer once).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sink: Box<dyn Sink>,
        format: DeviceFormat,
        shared: Arc<Shared>,
        ring: Consumer<i16>,
        events: Producer<RawEvent>,
        wake: UnixStream,
        spawner: thread::Thread,
        params: ThreadParams,
        stretch: Option<Stretcher>,
    ) -> Self {
        let channels = usize::from(format.channels);
        let clocked = sink.is_clocked();
        AudioThread {
            clocked,
            sink,
            shared,
            ring,
            events,
            wake,
            spawner,
            params,
            rate: format.rate,
            channels,
            period: format.period_frames,
            buf: vec![0; format.period_frames * channels],
            consumed: 0,
            gen: 0,
            state: State::Idle,
            report: RawReport::default(),
            xruns_at_begin: 0,
            stall_frames_now: 0,
            // Keep enough audio ahead that a stall or an interrupt can always fade it out.
            lookahead: if clocked {
                params.stall_fade.max(params.interrupt_fade)
            } else {
                0
            },
            fade_in: None,
            lead: LeadIn::default(),
            pace: Pace::default(),
            device_clock: WallClock::default(),
            buffer_frames: format.buffer_frames as u64,
            dry_threshold: format.period_frames as u64
                + (DRY_MARGIN.as_secs_f64() * f64::from(format.rate)) as u64,
            // A file has no clock to fall behind: nothing to stretch for.
            stretch: stretch.filter(|_| clocked),
            slowing: Slowing::No,
            started_early: false,
            gate: BlockClassifier::new(format.rate, channels),
            utt_start: 0,
            gain: 1.0,
            gain_step: 1.0 / params.gain_ramp.max(1) as f32,
        }
    }

    /// Thread body: real-time request, the loop, then (on a device error) the error report.
    pub fn run(mut self) {
        self.request_realtime();
        if let Err(e) = self.main_loop() {
            // Outside the loop: the thread is ending, so taking a lock here is fine.
            if let Ok(mut slot) = self.shared.error.lock() {
                *slot = Some(e);
            }
            self.emit(RawEvent::Failed);
        }
        // Dropping `wake` gives the async side end-of-file, so nothing waits forever.
    }

    fn request_realtime(&mut self) {
        let status = match self.params.realtime_priority {
            None => RT_NOT_REQUESTED,
            Some(priority) => {
                let param = libc::sched_param {
                    sched_priority: priority,
                };
                // SAFETY: pthread_self() is always valid for the calling thread and `param`
                // outlives the call.
                let rc = unsafe {
                    libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param)
                };
                if rc == 0 {
                    RT_GRANTED
                } else {
                    rc
                }
            }
        };
        self.shared.realtime.store(status, Ordering::Release);
        self.spawner.unpark();
    }

    fn main_loop(&mut self) -> Result<(), SinkError> {
        loop {
            if self.shared.shutdown.load(Ordering::Acquire) || self.ring.is_abandoned() {
                self.interrupt_current()?;
                return Ok(());
            }
            self.check_generation()?;
            if self.shared.interrupt_gen.load(Ordering::Acquire) == self.gen {
                self.interrupt_current()?;
            }
            match self.state {
                State::Idle => self.idle()?,
                State::Prebuffering => self.prebuffer()?,
                State::Playing => self.play_period()?,
                State::Stalled => self.stalled()?,
            }
        }
    }

    fn boundary(&self) -> Boundary {
        loop {
            let g = self.shared.generation.load(Ordering::Acquire);
            let ended = self.shared.ended_gen.load(Ordering::Acquire);
            let end = self.shared.end_pos.load(Ordering::Acquire);
            let start = self.shared.start_pos.load(Ordering::Acquire);
            // A `begin()` in between could pair another utterance's end with ours: re-read.
            if self.shared.generation.load(Ordering::Acquire) != g {
                continue;
            }
            return if g != self.gen {
                Boundary::Superseded(start)
            } else if ended == g {
                Boundary::Ended(end)
            } else {
                Boundary::Open
            };
        }
    }

    /// Frames of the current utterance ready to play (in the ring, plus what the stretcher
    /// has ready), and whether that is all of it (the stretcher may still hold < 31 ms:
    /// `settle_stretch` releases it).
    fn available(&self) -> (usize, bool) {
        let (in_ring, all_in) = self.in_ring();
        (in_ring + self.stretched_ready(), all_in)
    }

    /// Frames of the current utterance in the ring, and whether that is all of it.
    fn in_ring(&self) -> (usize, bool) {
        let in_ring = self.ring.slots() / self.channels;
        match self.boundary() {
            Boundary::Open => (in_ring, false),
            Boundary::Ended(end) | Boundary::Superseded(end) => {
                let left = end.saturating_sub(self.consumed);
                let left = usize::try_from(left).unwrap_or(usize::MAX);
                (in_ring.min(left), in_ring >= left)
            }
        }
    }

    fn stretched_ready(&self) -> usize {
        self.stretch.as_ref().map_or(0, Stretcher::buffered_frames)
    }

    fn ring_full(&self) -> bool {
        self.ring.slots() / self.channels + self.period >= self.params.capacity_frames
    }

    fn check_generation(&mut self) -> Result<(), SinkError> {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g == self.gen {
            return Ok(());
        }
        // A newer utterance replaces one still in flight: fade that one out first.
        self.interrupt_current()?;
        self.gen = g;
        let start = self.shared.start_pos.load(Ordering::Acquire);
        // Everything before `start` was pushed before `begin()`, so it is in the ring.
        let stale = usize::try_from(start.saturating_sub(self.consumed)).unwrap_or(usize::MAX);
        self.discard(stale);
        self.consumed = self.consumed.max(start);
        self.utt_start = self.consumed;
        self.report = RawReport {
            lowest_tempo_milli: 1000,
            ..RawReport::default()
        };
        if let Some(st) = &mut self.stretch {
            st.set_tempo(1.0);
            st.reset_stats();
        }
        self.slowing = Slowing::No;
        self.gate.reset();
        self.xruns_at_begin = self.sink.xruns();
        // The utterance's first sample is already at its gain: no ramp from the last one's.
        self.gain = self.target_gain();
        self.fade_in = None;
        self.stall_frames_now = 0;
        self.state = State::Prebuffering;
        Ok(())
    }

    fn idle(&mut self) -> Result<(), SinkError> {
        if self.shared.lead_in.load(Ordering::Acquire) {
            self.lead_in_tick()
        } else {
            self.lead = LeadIn::default();
            thread::park_timeout(IDLE_PARK);
            Ok(())
        }
    }

    fn lead_in_tick(&mut self) -> Result<(), SinkError> {
        if !self.clocked {
            thread::park_timeout(PREBUFFER_PARK);
            return Ok(());
        }
        let now = Instant::now();
        let since = *self.lead.since.get_or_insert(now);
        let played = now.saturating_duration_since(since).as_secs_f64() * f64::from(self.rate);
        let queued = self.lead.written as f64 - played;
        let period = self.period as f64;
        if queued <= period {
            self.buf.fill(0);
            self.device_write(self.period)?;
            self.lead.written += self.period as u64;
        } else {
            // Unparked early by `push`/`begin`; otherwise wake when one period is left.
            thread::park_timeout(Duration::from_secs_f64(
                (queued - period) / f64::from(self.rate),
            ));
        }
        Ok(())
    }

    fn prebuffer(&mut self) -> Result<(), SinkError> {
        let (avail, all_in) = self.available();
        if all_in && avail == 0 {
            // An empty utterance: nothing to play.
            return self.finish();
        }
        let ready = !self.clocked && avail >= self.period;
        if ready || self.may_start(avail, all_in) {
            self.started_early = self.until_planned_start().is_some_and(|w| !w.is_zero());
            self.report.prebuffer_frames = avail as u64;
            self.shared.lead_in.store(false, Ordering::Release);
            self.lead = LeadIn::default();
            self.state = State::Playing;
            return Ok(());
        }
        if self.shared.lead_in.load(Ordering::Acquire) {
            self.lead_in_tick()
        } else {
            let until = self.until_planned_start().unwrap_or(PREBUFFER_PARK);
            thread::park_timeout(until.min(PREBUFFER_PARK));
            Ok(())
        }
    }

    /// Nanoseconds on the shared clock now.
    fn now_ns(&self) -> u64 {
        self.shared.ns_of(Instant::now())
    }

    /// How long until a warm start's moment (`None`: no plan, or no audio yet).
    fn until_planned_start(&self) -> Option<Duration> {
        let delay = self.shared.start_delay_ns.load(Ordering::Acquire);
        let first = self.shared.first_at_ns.load(Ordering::Acquire);
        if delay == NO_PLAN || first == 0 {
            return None;
        }
        let at = first.saturating_add(delay);
        Some(Duration::from_nanos(at.saturating_sub(self.now_ns())))
    }

    /// The start rule. Cold (no plan): the buffer target is met. Warm: the floor
    /// (`target_frames`) is buffered and either the learned moment after the first audio
    /// has come in a silence the buffer can take, or the buffer alone bridges the silence
    /// under way. Either way, everything is in or the ring is full.
    fn may_start(&self, avail: usize, all_in: bool) -> bool {
        if self.shared.start_delay_ns.load(Ordering::Acquire) == NO_PLAN {
            return self.enough_buffered(avail, all_in);
        }
        match self.until_planned_start() {
            // Once all of it is in, no network can make it late: waiting adds nothing (a
            // cached preset, a chime). A stall under way at the planned moment is one the
            // plan did not count on: that start waits until the buffer bridges it.
            Some(wait) => {
                let planned = wait.is_zero() && self.silence_allows(false);
                (planned || self.silence_allows(true) || all_in)
                    && self.enough_buffered(avail, all_in)
            }
            // Warm but no audio yet.
            None => all_in && avail > 0,
        }
    }

    /// Warm: whether the silence since the last push allows the planned start (`early`
    /// false) or a start on the buffer alone (`early`); see `policy::SilenceWindow`.
    fn silence_allows(&self, early: bool) -> bool {
        let last = self.shared.last_push_ns.load(Ordering::Acquire);
        if last == 0 {
            return false;
        }
        let silence = Duration::from_nanos(self.now_ns().saturating_sub(last));
        let cell = if early {
            &self.shared.early_window
        } else {
            &self.shared.planned_window
        };
        cell.load().allows(silence)
    }

    fn play_period(&mut self) -> Result<(), SinkError> {
        let (avail, all_in) = self.available();
        let p = self.period;
        if avail >= p + self.lookahead || (all_in && avail >= p) {
            self.choose_tempo(avail, all_in);
            self.write_fading(p, 0).map(drop)
        } else if self.settle_stretch() {
            // What the stretcher held back is playable now: look again.
            Ok(())
        } else if all_in {
            // The last, partial period: pad with silence, then wait until it has played.
            if avail > 0 {
                self.write_fading(avail, 0)?;
            }
            self.finish()
        } else if !self.clocked {
            thread::park_timeout(PREBUFFER_PARK);
            Ok(())
        } else if let Some(wait) = self.device_still_busy() {
            // The ring is short but the device still has audio queued: wait for data (a push
            // unparks us) rather than insert silence the listener would hear.
            thread::park_timeout(wait);
            Ok(())
        } else {
            // Running dry mid-utterance: play out what is there, fading its end to zero,
            // then keep the device fed with silence until the buffer refills.
            let fade = self.params.stall_fade.min(avail);
            self.emit(RawEvent::StallBegan {
                gen: self.gen,
                at: Instant::now(),
            });
            self.state = State::Stalled;
            self.pace = Pace::default();
            let pad = self.write_fading(avail, fade)?;
            self.stall_frames_now = pad as u64;
            Ok(())
        }
    }

    /// How long to wait for data before the device gets close to running out (`None`:
    /// it is that close already, or cannot say how much it holds). A push unparks earlier.
    fn device_still_busy(&mut self) -> Option<Duration> {
        let queued = self.queued();
        (queued > self.dry_threshold).then(|| {
            Duration::from_secs_f64((queued - self.dry_threshold) as f64 / f64::from(self.rate))
        })
    }

    /// Frames the device still holds, at least: the more of what it reports (ALSA's delay,
    /// at most its buffer) and what the wall clock says it cannot have played yet. The
    /// second covers devices whose delay leaves a queue out — a FIFO behind alsa-lib's file
    /// plugin, USB and Bluetooth bridges that report only their own buffer — so a short
    /// ring there waits for data instead of inserting silence ahead of audio still playing.
    fn queued(&mut self) -> u64 {
        let reported = self
            .sink
            .queued_frames()
            .unwrap_or(0)
            .min(self.buffer_frames);
        reported.max(self.device_clock.ahead(Instant::now(), self.rate))
    }

    /// The start policy's test, for starting and for resuming after a stall: the target is
    /// buffered, or everything is in, or the ring cannot take more.
    fn enough_buffered(&self, avail: usize, all_in: bool) -> bool {
        let target = self.shared.target_frames.load(Ordering::Acquire);
        let target = target.max((self.period + self.lookahead) as u64);
        all_in || avail as u64 >= target || self.ring_full()
    }

    fn stalled(&mut self) -> Result<(), SinkError> {
        let (avail, all_in) = self.available();
        // Resume as soon as (slowed) playback can hold until the next burst.
        let resume = self.shared.resume_frames.load(Ordering::Acquire);
        let resume = resume.max((self.period + self.lookahead) as u64);
        if all_in || avail as u64 >= resume || self.ring_full() {
            self.report.stalls += 1;
            self.report.stall_frames += self.stall_frames_now;
            self.emit(RawEvent::StallEnded {
                gen: self.gen,
                frames: self.stall_frames_now,
            });
            self.stall_frames_now = 0;
            self.fade_in = Some(0);
            self.state = State::Playing;
            return Ok(());
        }
        // The blocking write of silence keeps the clock and keeps ALSA from underrunning.
        // A sink that never blocks (ALSA `null`) would take it as fast as it is written:
        // keep to the wall clock instead of spinning.
        let frames = self.period as u64;
        let limit = self.buffer_frames + frames;
        while let Some(wait) = self.pace.wait_before(frames, limit, self.rate) {
            thread::park_timeout(wait);
        }
        self.pace.wrote(frames);
        self.buf.fill(0);
        self.device_write(self.period)?;
        self.stall_frames_now += self.period as u64;
        Ok(())
    }

    /// Fades out from the current position (≤ interrupt_fade), drops the rest of the
    /// utterance, drains, and reports it interrupted. No-op when idle.
    fn interrupt_current(&mut self) -> Result<(), SinkError> {
        match self.state {
            State::Idle => return Ok(()),
            State::Playing => {
                let (avail, _) = self.available();
                let n = avail.min(self.params.interrupt_fade);
                self.write_fading(n, n)?;
            }
            State::Stalled | State::Prebuffering => {}
        }
        let (rest, _) = self.in_ring();
        self.discard(rest);
        if let Some(st) = &mut self.stretch {
            // Cannot fail within its bounds; a failure would only leave < 31 ms behind.
            let _ = st.clear();
        }
        if self.state != State::Prebuffering {
            self.device_drain()?;
        }
        self.report.interrupted = true;
        self.done();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.device_drain()?;
        self.done();
        Ok(())
    }

    fn done(&mut self) {
        self.report.xruns = self.sink.xruns().saturating_sub(self.xruns_at_begin);
        if let Some(st) = &self.stretch {
            let stats = st.stats();
            self.report.stretched_frames = stats.frames_in_stretched;
            self.report.added_frames = u64::try_from(stats.added_frames()).unwrap_or(0);
        }
        self.emit(RawEvent::Done {
            gen: self.gen,
            report: self.report,
        });
        self.lead = LeadIn::default();
        self.state = State::Idle;
    }

    /// Writes the period buffer holding `audio` frames of the utterance (rest silence).
    fn write_audio(&mut self, audio: usize) -> Result<(), SinkError> {
        if self.report.started_at.is_none() {
            let at = Instant::now();
            self.report.started_at = Some(at);
            self.emit(RawEvent::Started { gen: self.gen, at });
        }
        self.device_write(audio)?;
        self.report.frames_played += audio as u64;
        Ok(())
    }

    /// Writes the period buffer, `audio` frames of it being audio. A clocked device always
    /// gets the whole period (it plays in periods); a file gets exactly the audio, so its
    /// length is the decoded length. Stamps the call so a hung device shows.
    fn device_write(&mut self, audio: usize) -> Result<(), SinkError> {
        let samples = if self.clocked {
            self.buf.len()
        } else {
            audio * self.channels
        };
        self.device_clock.start_if_dry(Instant::now(), self.rate);
        self.device_clock.add((samples / self.channels) as u64);
        self.shared.stamp_device_call();
        let r = self.sink.write(&self.buf[..samples]);
        self.shared.clear_device_call();
        r
    }

    /// Drains the device (blocks until played), stamped like a write.
    fn device_drain(&mut self) -> Result<(), SinkError> {
        self.shared.stamp_device_call();
        let r = self.sink.drain();
        self.shared.clear_device_call();
        self.device_clock.stop();
        r
    }

    /// Pops `frames` frames into the start of the period buffer (through the stretcher
    /// when there is one).
    fn pop(&mut self, frames: usize) {
        let want = frames * self.channels;
        let got = if self.stretch.is_some() {
            self.pop_stretched(want)
        } else {
            let (popped, _) = self.ring.pop_partial_slice(&mut self.buf[..want]);
            let got = popped.len();
            self.consumed += (got / self.channels) as u64;
            got
        };
        // `available()` said they were there; zero anything missing rather than repeat audio.
        self.buf[got..want].fill(0);
        self.wake_writer();
    }

    /// Fills `buf[..want]` from the stretcher, feeding it from the ring (this utterance's
    /// frames only, one period at a time so stretched audio never piles up ahead of the
    /// tempo); when the ring has no more, what it holds back is released. Returns samples.
    fn pop_stretched(&mut self, want: usize) -> usize {
        let ch = self.channels;
        let (mut left, _) = self.in_ring();
        let Some(st) = self.stretch.as_mut() else {
            return 0;
        };
        let mut got = st.pull(&mut self.buf[..want]) * ch;
        let mut released = false;
        while got < want {
            let mut taken = 0;
            if left > 0 {
                let n = left.min(st.max_push_frames());
                let Ok(chunk) = self.ring.read_chunk(n * ch) else {
                    break;
                };
                let (a, b) = chunk.as_slices();
                // Each block's own tempo: pauses and steady parts first (stretch_gate).
                let block = self.gate.classify(&[a, b]);
                let tempo = st.set_tempo(tempo_for(self.slowing, block, st.min_tempo()));
                let milli = (tempo * 1000.0).round() as u32;
                self.report.lowest_tempo_milli = self.report.lowest_tempo_milli.min(milli);
                taken = st.push(a).unwrap_or(0);
                if taken * ch == a.len() && !b.is_empty() {
                    taken += st.push(b).unwrap_or(0);
                }
                chunk.commit(taken * ch);
                self.consumed += taken as u64;
                left -= taken;
            } else if !released {
                // Cannot fail within its bounds; if it did, the held < 31 ms stay held.
                let _ = st.release_held();
                released = true;
            } else {
                break;
            }
            let k = st.pull(&mut self.buf[got..want]);
            got += k * ch;
            if left > 0 && taken == 0 && k == 0 {
                // Refused input and gave nothing (cannot happen within its bounds).
                break;
            }
        }
        got
    }

    /// Returns the stretcher to normal speed and makes what it holds back playable (for
    /// a stall, the end, an interrupt: the frame counts are then exact). Returns whether
    /// that made more audio ready.
    fn settle_stretch(&mut self) -> bool {
        self.slowing = Slowing::No;
        let Some(st) = self.stretch.as_mut() else {
            return false;
        };
        let before = st.buffered_frames();
        st.set_tempo(1.0);
        // Cannot fail within its bounds; if it did, the held < 31 ms stay held.
        let _ = st.release_held();
        st.buffered_frames() > before
    }

    /// Decides whether the next period plays slower, and how urgently: urgent while more is
    /// to come and the buffer is low (`slow_below_frames`) or the next burst is overdue;
    /// gentle while (warm) playback is not yet as far behind the first audio as the plan's
    /// target. `pop_stretched` turns that into each block's tempo.
    fn choose_tempo(&mut self, avail: usize, all_in: bool) {
        let level = avail as u64;
        let short = level < self.shared.slow_below_frames.load(Ordering::Acquire);
        let horizon = self.shared.stall_horizon_frames.load(Ordering::Acquire);
        let stalling = level < horizon && self.stream_overdue();
        // Once everything is in, the buffer draining is the end, not a shortage. Slowing is
        // always to the slowest tempo allowed: half the slow-down for speech stretched
        // twice as much audio for the same gain in the bench.
        self.slowing = if all_in {
            Slowing::No
        } else if short || stalling {
            Slowing::Urgent
        } else if self.behind_plan() {
            Slowing::Gentle
        } else {
            Slowing::No
        };
    }

    /// The next burst is overdue (a stall is under way): slowing now gains a tenth of the
    /// stall before the buffer runs out, rather than once it is nearly gone.
    fn stream_overdue(&self) -> bool {
        let last = self.shared.last_push_ns.load(Ordering::Acquire);
        let after = self.shared.overdue_after_ns.load(Ordering::Acquire);
        last != 0 && self.now_ns().saturating_sub(last) > after
    }

    /// Warm start: playback is less far behind the first audio than the plan's target
    /// (so slowed playback should gain the rest). Played position = what left the ring,
    /// less what waits in the stretcher and a full device buffer (or more, where the wall
    /// clock shows the device holds more than its buffer).
    fn behind_plan(&self) -> bool {
        let target = self.shared.delay_target_ns.load(Ordering::Acquire);
        let first = self.shared.first_at_ns.load(Ordering::Acquire);
        if target == 0 || first == 0 || self.started_early {
            return false;
        }
        let consumed = self.consumed.saturating_sub(self.utt_start);
        let device = self
            .buffer_frames
            .max(self.device_clock.ahead(Instant::now(), self.rate));
        let queued = self.stretched_ready() as u64 + device;
        let played = consumed.saturating_sub(queued);
        let played_ns = played.saturating_mul(1_000_000_000) / u64::from(self.rate.max(1));
        let delay = self
            .now_ns()
            .saturating_sub(first)
            .saturating_sub(played_ns);
        delay < target
    }

    fn discard(&mut self, frames: usize) {
        let samples = frames.saturating_mul(self.channels).min(self.ring.slots());
        if samples == 0 {
            return;
        }
        if let Ok(chunk) = self.ring.read_chunk(samples) {
            chunk.commit_all();
            self.consumed += (samples / self.channels) as u64;
        }
        self.wake_writer();
    }

    fn wake_writer(&mut self) {
        // Pairs with the fence in `Playout::push`: either it sees the space we just freed,
        // or we see its request (no lost wake-up).
        fence(Ordering::SeqCst);
        if self.shared.space_wanted.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Fade-in after a stall: gain rises linearly over `stall_fade` frames.
    fn apply_fade_in(&mut self, frames: usize) {
        let Some(mut pos) = self.fade_in else { return };
        let len = self.params.stall_fade.max(1);
        let ch = self.channels;
        for frame in self.buf[..frames * ch].chunks_exact_mut(ch) {
            if pos >= len {
                break;
            }
            let gain = (pos + 1) as f32 / len as f32;
            for s in frame {
                *s = scale(*s, gain);
            }
            pos += 1;
        }
        self.fade_in = if pos >= len { None } else { Some(pos) };
    }

    fn target_gain(&self) -> f32 {
        f32::from_bits(self.shared.gain_bits.load(Ordering::Acquire))
    }

    /// Applies the gain to the first `frames` frames of the period buffer, moving it at
    /// most `gain_step` a frame towards the target (a change ramps over ≤ `gain_ramp`).
    fn apply_gain(&mut self, frames: usize) {
        let target = self.target_gain();
        if self.gain == target && target == 1.0 {
            return;
        }
        let (ch, step) = (self.channels, self.gain_step);
        for frame in self.buf[..frames * ch].chunks_exact_mut(ch) {
            let d = target - self.gain;
            self.gain = if d.abs() <= step {
                target
            } else {
                self.gain + step.copysign(d)
            };
            for s in frame {
                *s = scale(*s, self.gain);
            }
        }
    }

    /// Writes the next `frames` (> 0) frames of the utterance in whole periods, the last
    /// `fade` of them fading to exactly zero (none for 0); returns the silent frames padding
    /// the last period.
    fn write_fading(&mut self, frames: usize, fade: usize) -> Result<usize, SinkError> {
        let p = self.period;
        let fade_from = frames - fade.min(frames);
        let mut done = 0;
        loop {
            let k = (frames - done).min(p);
            self.pop(k);
            self.apply_fade_in(k);
            self.apply_gain(k);
            let ch = self.channels;
            // Only the periods that reach into the fade are touched.
            let start = fade_from.saturating_sub(done);
            if start < k {
                for (j, frame) in self.buf[start * ch..k * ch]
                    .chunks_exact_mut(ch)
                    .enumerate()
                {
                    let gain = (frames - 1 - (done + start + j)) as f32 / fade as f32;
                    for s in frame {
                        *s = scale(*s, gain);
                    }
                }
            }
            self.buf[k * ch..].fill(0);
            self.write_audio(k)?;
            done += k;
            if done >= frames {
                return Ok(p - k);
            }
        }
    }

    fn emit(&mut self, ev: RawEvent) {
        let terminal = matches!(ev, RawEvent::Done { .. } | RawEvent::Failed);
        // Progress events may be dropped when the async side is not reading; the
        // utterance's end never is (its report carries the counts anyway).
        if terminal || self.events.slots() > TERMINAL_RESERVE {
            let _ = self.events.push(ev);
        }
        self.wake();
    }

    fn wake(&mut self) {
        // Non-blocking: a full socket already holds a pending wake-up, so WouldBlock is fine.
        let _ = self.wake.write(&[1]);
    }
}

fn scale(s: i16, gain: f32) -> i16 {
    (f32::from(s) * gain).round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_window_reads_back_as_the_same_rule() {
        let ms = Duration::from_millis;
        let w = SilenceWindow {
            calm_until: ms(150),
            again_from: Some(ms(900)),
            tail: ms(1400),
        };
        let cell = WindowCell::new(SilenceWindow::SHUT);
        cell.store(&w);
        assert_eq!(cell.load(), w);
        cell.store(&SilenceWindow {
            again_from: None,
            ..w
        });
        assert!(
            !cell.load().allows(ms(1000)),
            "no second window: a stall waits"
        );
        cell.store(&SilenceWindow::OPEN);
        assert!(
            cell.load().allows(Duration::from_secs(3600)),
            "open stays open"
        );
        cell.store(&SilenceWindow::SHUT);
        assert!(!cell.load().allows(Duration::ZERO), "shut stays shut");
    }
}
