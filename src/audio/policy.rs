//! Start policy: how much audio to hold before playing so that starting cannot cause an
//! underrun later.
//!
//! Audio arrives in bursts (OpenAI's Ogg Opus: one 1 s page at a time; raw PCM: small chunks)
//! at a generation speed `R` (audio seconds per wall second) that may be below 1. Starting
//! with `B` buffered cannot underrun later if
//!
//! ```text
//! B ≥ deficit + wait + reserve
//! deficit = remaining × max(0, 1 − R) / R      (what playback eats faster than it arrives)
//! wait    = the longest gap between pushes seen (the wait for the next burst)
//! reserve = jitter_reserve_ms                   (WiFi stalls)
//! ```
//!
//! Before a second burst there is no rate and no gap yet. The prior is then `R = 1` (no
//! deficit) and `wait` = the first burst's own length at real time. That prior never starts
//! on the first burst alone (the need always exceeds what arrived), so a real measurement
//! decides; it only matters through the cap for utterances that are already complete.
//!
//! The need is capped at the audio still expected in total (a short utterance is not held
//! back by a reserve longer than itself), floored at `min_prebuffer_ms` (unless the whole
//! utterance is shorter) and capped at the ring's capacity (a fuller ring could never fill).
//! If the text's estimate was too short, `remaining` never drops below `min_remaining_ms`
//! until `end()` says everything is in.

use std::time::{Duration, Instant};

use crate::netmodel::{Burst, StartPlan, BUCKET_MS};

/// Bursts remembered per utterance for the network model (a 10-minute announcement in 1 s
/// pages, or 4 minutes of 100 ms PCM chunks); later ones are not recorded.
const MAX_LOGGED_BURSTS: usize = 4096;

/// Pushes closer together than this belong to one burst (one Ogg page decodes as a quick
/// run of pushes; page gaps are hundreds of milliseconds).
pub const BURST_GAP: Duration = Duration::from_millis(10);
/// A run of pushes longer than this counts as several bursts, so a continuous stream
/// (small PCM chunks) still yields a rate.
pub const MAX_BURST: Duration = Duration::from_millis(250);

/// The most of an utterance a warm start may plan to play slowed to earn back its start
/// credit (the issue bounds the stretched share at 25 %; stalls need the rest).
pub const START_CREDIT_SHARE: f64 = 0.15;
/// Tempos below this are not taken into account (a stretcher never goes lower).
const MIN_TEMPO: f32 = 0.5;

/// The longest burst one Ogg page delivers (OpenAI's pages hold 1 s of audio).
pub const MAX_PAGE: Duration = Duration::from_secs(1);

/// Parameters of the start policy (from `PlayoutConfig` and the device format).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyParams {
    /// Device frames per second.
    pub rate: u32,
    /// Floor for the prebuffer unless the whole utterance is shorter.
    pub min_prebuffer_ms: u32,
    /// Extra audio held for WiFi stalls on top of the measured burst wait.
    pub jitter_reserve_ms: u32,
    /// Audio still assumed to be coming until `end()`, whatever the text's estimate says.
    pub min_remaining_ms: u32,
    /// Frames the ring can hold: a larger need could never be met.
    pub capacity_frames: u64,
}

/// What has arrived so far for one utterance, measured at each push.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrivalStats {
    rate: u32,
    received: u64,
    first_at: Option<Instant>,
    last_push_at: Option<Instant>,
    burst_start_at: Option<Instant>,
    bursts: u32,
    frames_before_burst: u64,
    max_gap: Duration,
    /// Audio now comes from a later request than the first (see [`Burst::first_request`]).
    later_request: bool,
    /// Each burst's start, for the network model (this side may allocate).
    log: Vec<Burst>,
}

impl ArrivalStats {
    /// Empty statistics for a stream of `rate` frames per second.
    pub fn new(rate: u32) -> Self {
        ArrivalStats {
            rate: rate.max(1),
            received: 0,
            first_at: None,
            last_push_at: None,
            burst_start_at: None,
            bursts: 0,
            frames_before_burst: 0,
            max_gap: Duration::ZERO,
            later_request: false,
            log: Vec::new(),
        }
    }

    /// What arrives from now on comes from a later request than the utterance's first.
    pub fn next_request(&mut self) {
        self.later_request = true;
    }

    /// Every burst: when it began (after the first) and how much audio came before.
    pub fn into_bursts(self) -> Vec<Burst> {
        self.log
    }

    fn log_burst(&mut self, at: Instant, silence: Duration) {
        let (Some(first), true) = (self.first_at, self.log.len() < MAX_LOGGED_BURSTS) else {
            return;
        };
        self.log.push(Burst {
            at_ms: at.saturating_duration_since(first).as_secs_f64() * 1000.0,
            audio_before_ms: self.received as f64 * 1000.0 / f64::from(self.rate),
            silence_ms: silence.as_secs_f64() * 1000.0,
            first_request: !self.later_request,
        });
    }

    /// Records `frames` arriving at `at` (times must not go backwards; if they do they are
    /// treated as simultaneous).
    pub fn record(&mut self, frames: u64, at: Instant) {
        match (self.last_push_at, self.burst_start_at) {
            (Some(last), Some(burst_start)) => {
                let gap = at.saturating_duration_since(last);
                self.max_gap = self.max_gap.max(gap);
                if gap >= BURST_GAP || at.saturating_duration_since(burst_start) >= MAX_BURST {
                    self.bursts += 1;
                    self.burst_start_at = Some(at);
                    self.frames_before_burst = self.received;
                    self.log_burst(at, gap);
                }
            }
            _ => {
                self.first_at = Some(at);
                self.burst_start_at = Some(at);
                self.bursts = 1;
                self.log_burst(at, Duration::ZERO);
            }
        }
        self.last_push_at = Some(at);
        self.received += frames;
    }

    /// The usual wait from one burst to the next: the mean interval between burst starts
    /// so far (stalls included). Prior before a second burst: as [`Self::burst_wait`].
    pub fn typical_wait(&self) -> Duration {
        match (self.first_at, self.burst_start_at) {
            (Some(first), Some(last)) if self.bursts >= 2 => {
                last.saturating_duration_since(first) / (self.bursts - 1)
            }
            _ => self.prior_wait(),
        }
    }

    /// The wait assumed before a second burst: the first burst's length at real time, at
    /// most `MAX_PAGE` (see [`Self::burst_wait`]).
    fn prior_wait(&self) -> Duration {
        let first = Duration::from_secs_f64(self.received as f64 / f64::from(self.rate));
        first.min(MAX_PAGE)
    }

    /// Frames of the first burst (all received so far while it is the only one).
    pub fn first_burst_frames(&self) -> u64 {
        self.log.get(1).map_or(self.received, |b| {
            (b.audio_before_ms * f64::from(self.rate) / 1000.0) as u64
        })
    }

    /// When the first audio arrived.
    pub fn first_at(&self) -> Option<Instant> {
        self.first_at
    }

    /// Frames received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Measured generation speed (audio seconds per wall second), once a second burst has
    /// arrived: the audio that had arrived before the latest burst began, over the time from
    /// the first burst to it (so the first burst's size does not inflate the rate).
    pub fn rate(&self) -> Option<f64> {
        if self.bursts < 2 {
            return None;
        }
        let (first, burst) = (self.first_at?, self.burst_start_at?);
        let elapsed = burst
            .saturating_duration_since(first)
            .as_secs_f64()
            .max(0.001);
        Some(self.frames_before_burst as f64 / f64::from(self.rate) / elapsed)
    }

    /// How long the next burst may take to come: the longest gap seen (or the current one,
    /// if already longer). Prior before a second burst: the first burst's length at real
    /// time, at most `MAX_PAGE` — a longer first "burst" is a continuous stream arriving
    /// faster than real time, not one page, and must not hold its own start back forever.
    pub fn burst_wait(&self, now: Instant) -> Duration {
        if self.bursts < 2 {
            return self.prior_wait();
        }
        let current = self
            .last_push_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.max_gap.max(current)
    }
}

/// The audio expected in all, as the policy assumes it: the text's estimate, but never
/// less than what came plus `min_remaining_ms`.
fn assumed_total(stats: &ArrivalStats, expected: Duration, p: &PolicyParams) -> f64 {
    let received = stats.received() as f64 / f64::from(p.rate.max(1));
    expected
        .as_secs_f64()
        .max(received + f64::from(p.min_remaining_ms) / 1000.0)
}

/// A warm start's floor: `min_prebuffer_ms`, or the whole utterance if shorter.
pub fn warm_floor(stats: &ArrivalStats, expected: Duration, p: &PolicyParams) -> u64 {
    let floor = f64::from(p.min_prebuffer_ms) / 1000.0;
    to_frames(floor.min(assumed_total(stats, expected, p)), p)
}

/// Seconds to frames, rounding up (the epsilon keeps float noise, e.g. 1.3 × 48000, from
/// rounding up a whole frame), capped at the ring.
fn to_frames(secs: f64, p: &PolicyParams) -> u64 {
    let frames = (secs * f64::from(p.rate.max(1)) - 1e-6).ceil().max(0.0) as u64;
    frames.min(p.capacity_frames)
}

/// Frames to have buffered to resume after a stall while playing at `tempo` (< 1 slows
/// playback): enough for slowed playback to last until the next burst is usually due, plus
/// what a stream slower than `tempo` still falls behind. With `tempo` 1.0 (no stretcher)
/// the full start rule applies, as before stretching existed.
pub fn resume_needed(
    stats: &ArrivalStats,
    expected: Duration,
    p: &PolicyParams,
    tempo: f32,
    now: Instant,
) -> u64 {
    if tempo >= 1.0 {
        return prebuffer_needed(stats, expected, p, now);
    }
    let tempo = f64::from(tempo);
    let total = assumed_total(stats, expected, p);
    let received = stats.received() as f64 / f64::from(p.rate.max(1));
    let remaining = total - received;
    let r = stats.rate().unwrap_or(1.0).max(0.01);
    let deficit = if r < tempo {
        remaining * (tempo - r) / r
    } else {
        0.0
    };
    let wait = stats.typical_wait().as_secs_f64() * tempo;
    to_frames((deficit + wait).min(remaining.max(0.0)), p)
}

/// When a warm start (one with a learned [`StartPlan`]) may begin, after the first audio,
/// and the delay behind the first audio it must have reached, by slowed playback, before
/// the worst burst the plan covers: `(start, target)`. The start is the target less what
/// playing at `tempo` gains before the next burst is usually due.
pub fn warm_start(
    plan: &StartPlan,
    stats: &ArrivalStats,
    expected: Duration,
    p: &PolicyParams,
    tempo: f32,
) -> (Duration, Duration) {
    // The audio that can come late: all but the first burst, which is what started it.
    let first = Duration::from_secs_f64(stats.first_burst_frames() as f64 / f64::from(p.rate));
    let total = Duration::from_secs_f64(assumed_total(stats, expected, p));
    let target = plan.delay(total.saturating_sub(first));
    let tempo = f64::from(tempo.clamp(MIN_TEMPO, 1.0));
    // What slowing gains before the next burst, but never more than slowing
    // `START_CREDIT_SHARE` of the utterance can earn back.
    let budget =
        total.saturating_sub(first).as_secs_f64() * START_CREDIT_SHARE * (1.0 / tempo - 1.0);
    let gain = (stats.typical_wait().as_secs_f64() * (1.0 - tempo)).min(budget);
    (target.saturating_sub(Duration::from_secs_f64(gain)), target)
}

/// The silences (since the last push) in which a start may begin: up to `calm_until`,
/// then again from `again_from` until `tail`. A silence is *bridged* when the chance that
/// it outlasts the buffer is at most `1 − quantile` (`netmodel::Silences::outlasts`).
/// Just after a burst that chance is low (most silences are short); in a silence longer
/// than the usual wait it is high (it is a stall); near the longest learned it falls again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SilenceWindow {
    /// Bridged from the last push until this long (zero: not even just after it).
    pub calm_until: Duration,
    /// Bridged again from this long on (`None`: not with this buffer).
    pub again_from: Option<Duration>,
    /// Past this the network has not been silent so long: nothing to go by, wait for data.
    pub tail: Duration,
}

impl SilenceWindow {
    /// Always open: nothing was learned about silences.
    pub const OPEN: SilenceWindow = SilenceWindow {
        calm_until: Duration::MAX,
        again_from: None,
        tail: Duration::MAX,
    };
    /// Never open.
    pub const SHUT: SilenceWindow = SilenceWindow {
        calm_until: Duration::ZERO,
        again_from: None,
        tail: Duration::ZERO,
    };

    /// Whether a start may begin `silence` after the last push.
    pub fn allows(&self, silence: Duration) -> bool {
        silence < self.calm_until
            || self
                .again_from
                .is_some_and(|a| a <= silence && silence < self.tail)
    }
}

/// Where a warm start may begin, by the silence under way (see [`start_windows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartWindows {
    /// For the plan's moment: the buffer as it is, slowed.
    pub planned: SilenceWindow,
    /// For a start before the moment, on the buffer alone.
    pub early: SilenceWindow,
}

/// How long without a push means the stream has stalled: half as long again as the usual
/// wait between bursts, and never under 100 ms (the jitter of a steady stream of small
/// chunks). Slowing for a stall goes by it.
pub fn overdue_after(stats: &ArrivalStats) -> Duration {
    stats
        .typical_wait()
        .mul_f64(1.5)
        .max(Duration::from_millis(100))
}

/// The window in which `lasts` (how much silence the buffer outlasts, slowed) bridges the
/// silence under way.
fn bridged_window(plan: &StartPlan, lasts: Duration) -> SilenceWindow {
    let silences = &plan.silences;
    if silences.is_empty() {
        return SilenceWindow::OPEN;
    }
    let risk = 1.0 - plan.quantile;
    let lasts_ms = lasts.as_secs_f64() * 1000.0;
    let bridged = |e: u64| {
        silences
            .outlasts(e as f64, lasts_ms)
            .is_some_and(|chance| chance <= risk + 1e-9)
    };
    let tail = silences.tail_ms().max(0.0) as u64;
    let steps = || (0..tail).step_by(BUCKET_MS as usize);
    let calm_until = steps().find(|&e| !bridged(e)).unwrap_or(tail);
    let again_from = steps()
        .skip_while(|&e| e < calm_until)
        .find(|&e| bridged(e));
    SilenceWindow {
        calm_until: Duration::from_millis(calm_until),
        again_from: again_from.map(Duration::from_millis),
        tail: Duration::from_millis(tail),
    }
}

/// [`StartWindows`] for an utterance so far. The plan's moment already counts on the
/// audio to come (its credit and a deficit below real time), so its window is judged by
/// the buffer as it is. A start before the moment also needs the buffer to be beyond what
/// a stream below real time falls behind, and to hold at least what the plan starts a
/// usual utterance with — one page (or the first burst, if smaller) plus the jitter
/// target — since lateness also builds over several bursts (a slow spell), not only in
/// one silence.
pub fn start_windows(
    plan: &StartPlan,
    stats: &ArrivalStats,
    expected: Duration,
    p: &PolicyParams,
    tempo: f32,
) -> StartWindows {
    let received = stats.received() as f64 / f64::from(p.rate.max(1));
    let slowed =
        |secs: f64| Duration::from_secs_f64(secs.max(0.0) / f64::from(tempo.clamp(MIN_TEMPO, 1.0)));
    let remaining = (assumed_total(stats, expected, p) - received).max(0.0);
    let r = plan.rate.max(0.01);
    let deficit = if r < 1.0 {
        remaining * (1.0 - r) / r
    } else {
        0.0
    };
    let spare = received - deficit;
    let page =
        (stats.first_burst_frames() as f64 / f64::from(p.rate.max(1))).min(MAX_PAGE.as_secs_f64());
    let holds_a_usual_start = spare > 0.0 && spare >= page + f64::from(plan.jitter_ms) / 1000.0;
    StartWindows {
        planned: bridged_window(plan, slowed(received)),
        early: if holds_a_usual_start && !plan.silences.is_empty() {
            bridged_window(plan, slowed(spare))
        } else {
            SilenceWindow::SHUT
        },
    }
}

/// Frames to hold before playing (or before resuming after a stall) so that playback, once
/// started, does not run dry; see the module doc for the reasoning.
pub fn prebuffer_needed(
    stats: &ArrivalStats,
    expected_total: Duration,
    p: &PolicyParams,
    now: Instant,
) -> u64 {
    let received = stats.received() as f64 / f64::from(p.rate.max(1));
    let total = assumed_total(stats, expected_total, p);
    // At least `min_remaining_ms`: the total assumed never ends before that.
    let remaining = total - received;
    // A rate far below real time would ask for the whole utterance; the total cap handles that.
    let r = stats.rate().unwrap_or(1.0).max(0.01);
    let deficit = if r >= 1.0 {
        0.0
    } else {
        remaining * (1.0 - r) / r
    };
    let wait = stats.burst_wait(now).as_secs_f64();
    let reserve = f64::from(p.jitter_reserve_ms) / 1000.0;
    let floor = (f64::from(p.min_prebuffer_ms) / 1000.0).min(total);
    to_frames((deficit + wait + reserve).min(total).max(floor), p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmodel::Silences;

    const RATE: u32 = 48_000;

    fn params() -> PolicyParams {
        PolicyParams {
            rate: RATE,
            min_prebuffer_ms: 150,
            jitter_reserve_ms: 1000,
            min_remaining_ms: 500,
            capacity_frames: 20 * RATE as u64,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(frames: u64) -> f64 {
        frames as f64 / f64::from(RATE)
    }

    /// One Ogg page: 50 packets of 20 ms decoded back to back, 1 ms apart.
    fn page(stats: &mut ArrivalStats, at: Instant) -> Instant {
        let mut t = at;
        for _ in 0..50 {
            stats.record(960, t);
            t += ms(1);
        }
        t
    }

    #[test]
    fn first_burst_alone_never_starts_a_long_utterance() {
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        let end = page(&mut s, t0);
        assert_eq!(s.rate(), None);
        let need = prebuffer_needed(&s, Duration::from_secs(10), &params(), end);
        assert!(
            need > s.received(),
            "need {need} must exceed the first page {}",
            s.received()
        );
    }

    #[test]
    fn fast_bursty_opus_starts_at_the_second_page() {
        // 2× real time: a 1 s page every 0.5 s.
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        page(&mut s, t0);
        let end = page(&mut s, t0 + ms(500));
        let r = s.rate().unwrap();
        assert!((r - 2.0).abs() < 0.05, "rate {r}");
        let need = prebuffer_needed(&s, Duration::from_secs(10), &params(), end);
        // wait ≈ 0.45 s (gap between pages) + 1 s reserve, no deficit.
        assert!((1.40..1.50).contains(&secs(need)), "need {} s", secs(need));
        assert!(need <= s.received());
    }

    #[test]
    fn slow_opus_at_1_15x_starts_at_the_second_page_with_no_deficit() {
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        page(&mut s, t0);
        let end = page(&mut s, t0 + ms(870));
        let r = s.rate().unwrap();
        assert!((r - 1.15).abs() < 0.02, "rate {r}");
        let need = prebuffer_needed(&s, Duration::from_secs(30), &params(), end);
        // wait ≈ 0.82 s + 1 s reserve: two pages (2 s) are enough.
        assert!((1.78..1.86).contains(&secs(need)), "need {} s", secs(need));
        assert!(need <= s.received());
    }

    #[test]
    fn slow_pcm_at_half_real_time_waits_for_the_deficit() {
        // 100 ms chunks every 200 ms, 20 s expected. Start needs (20 − x) + 0.2 + 1 ≤ x → x ≥ 10.6 s.
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        let mut ready_at = None;
        for k in 0..200u64 {
            let at = t0 + ms(200 * k);
            s.record(4800, at);
            if prebuffer_needed(&s, Duration::from_secs(20), &params(), at) <= s.received() {
                ready_at = Some(secs(s.received()));
                break;
            }
        }
        let ready = ready_at.unwrap();
        assert!(
            (10.6..10.8).contains(&ready),
            "started with {ready} s buffered"
        );
        assert!((s.rate().unwrap() - 0.5).abs() < 0.01);
    }

    #[test]
    fn short_utterance_need_is_capped_below_the_reserve() {
        // 1 s expected, fast PCM: the 1 s reserve plus the gap would exceed the utterance.
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        s.record(4800, t0);
        s.record(4800, t0 + ms(50));
        let need = prebuffer_needed(&s, Duration::from_secs(1), &params(), t0 + ms(50));
        assert_eq!(need, 48_000, "capped at the expected total");
    }

    #[test]
    fn wrong_estimate_keeps_a_minimum_remaining() {
        // Expected 1 s, but 3 s have come at 0.5×: still assume 0.5 s to come, so the deficit
        // is 0.5 s (not 0): need = 0.5 + 0.2 (gap) + 1 (reserve).
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        for k in 0..30u64 {
            s.record(4800, t0 + ms(200 * k));
        }
        let now = t0 + ms(200 * 29);
        let need = prebuffer_needed(&s, Duration::from_secs(1), &params(), now);
        assert!((1.69..1.71).contains(&secs(need)), "need {} s", secs(need));
    }

    #[test]
    fn floor_applies_but_never_beyond_the_whole_utterance() {
        let t0 = Instant::now();
        let mut p = params();
        p.jitter_reserve_ms = 0;
        let mut s = ArrivalStats::new(RATE);
        // Continuous fast stream: 20 ms chunks every 12 ms.
        for k in 0..40u64 {
            s.record(960, t0 + ms(12 * k));
        }
        let now = t0 + ms(12 * 39);
        assert_eq!(
            prebuffer_needed(&s, Duration::from_secs(5), &p, now),
            150 * 48
        );
        // The floor never exceeds the total assumed (received + min_remaining).
        p.min_prebuffer_ms = 5000;
        let need = prebuffer_needed(&s, ms(100), &p, now);
        assert_eq!(need, s.received() + 500 * 48);
    }

    #[test]
    fn continuous_fast_pcm_starts_long_before_it_is_all_in() {
        // 50× real time in 85 ms chunks every 1.7 ms: one "burst" shorter than MAX_BURST.
        // It must start once reserve + one page-length prior are buffered (≈ 2 s), not wait
        // for the whole 8 s utterance.
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        let mut started = None;
        for k in 0..100u64 {
            let at = t0 + Duration::from_micros(1700 * k);
            s.record(4080, at);
            if prebuffer_needed(&s, Duration::from_secs(8), &params(), at) <= s.received() {
                started = Some(secs(s.received()));
                break;
            }
        }
        let started = started.expect("never started");
        assert!(
            (2.0..2.2).contains(&started),
            "started with {started} s buffered"
        );
    }

    #[test]
    fn resuming_slowed_needs_only_the_usual_wait_not_the_reserve() {
        // Pages every 0.5 s (2×): at 0.9× a resume needs 0.9 × 0.5 s, not 0.45 s + 1 s.
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        page(&mut s, t0);
        let end = page(&mut s, t0 + ms(500));
        let slowed = resume_needed(&s, Duration::from_secs(10), &params(), 0.9, end);
        assert!((0.40..0.46).contains(&secs(slowed)), "{} s", secs(slowed));
        // No stretcher: the whole start rule, as before.
        let full = resume_needed(&s, Duration::from_secs(10), &params(), 1.0, end);
        assert_eq!(
            full,
            prebuffer_needed(&s, Duration::from_secs(10), &params(), end)
        );
    }

    #[test]
    fn resuming_a_stream_slower_than_the_slowed_tempo_adds_its_deficit() {
        // 0.5× PCM, 10 s expected, 3 s in: even at 0.9× it falls 7 × 0.4 / 0.5 = 5.6 s behind.
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        for k in 0..30u64 {
            s.record(4800, t0 + ms(200 * k));
        }
        let now = t0 + ms(200 * 29);
        let need = resume_needed(&s, Duration::from_secs(10), &params(), 0.9, now);
        assert!((5.7..5.9).contains(&secs(need)), "{} s", secs(need));
    }

    #[test]
    fn a_warm_start_is_the_plan_less_what_slowing_gains_before_the_next_burst() {
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        page(&mut s, t0);
        page(&mut s, t0 + ms(500));
        let plan = StartPlan {
            jitter_ms: 800,
            rate: 2.0,
            silences: Silences::from_ms(&[500.0]),
            quantile: 0.95,
        };
        let (start, target) = warm_start(&plan, &s, Duration::from_secs(10), &params(), 0.9);
        assert_eq!(target, ms(800));
        // Gains 10 % of the 0.5 s between pages.
        assert!((ms(745)..ms(755)).contains(&start), "{start:?}");
        // Below real time the part after the first page falls behind: (10 − 1) × (1/0.8 − 1).
        let slow = StartPlan {
            jitter_ms: 0,
            rate: 0.8,
            silences: Silences::from_ms(&[1250.0]),
            quantile: 0.95,
        };
        let (_, target) = warm_start(&slow, &s, Duration::from_secs(10), &params(), 1.0);
        assert!((2.24..2.26).contains(&target.as_secs_f64()), "{target:?}");
    }

    /// Silences of a 2× Opus stream with stalls: nineteen 500 ms page gaps for each stall
    /// of 1.5, 2 or 3 s.
    fn stalling() -> Silences {
        let mut ms = vec![500.0; 57];
        ms.extend([1500.0, 2000.0, 3000.0]);
        Silences::from_ms(&ms)
    }

    fn plan_with(jitter_ms: u32, rate: f64, silences: Silences) -> StartPlan {
        StartPlan {
            jitter_ms,
            rate,
            silences,
            quantile: 0.95,
        }
    }

    #[test]
    fn a_stall_under_way_holds_the_plan_until_the_buffer_bridges_it() {
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        page(&mut s, t0);
        page(&mut s, t0 + ms(500));
        let plan = plan_with(500, 2.0, stalling());
        let w = start_windows(&plan, &s, Duration::from_secs(10), &params(), 0.9).planned;
        // Two pages last 2.22 s at 0.9×. Just after a page, a silence outlasts that only
        // if it is the 3 s stall or the unseen 4.5 s one: 2 in 61, within the 5 %. From
        // 0.5 s on it is a stall, too likely to outlast the buffer until only the unseen
        // one is left, and that is bridged (2.28 s in).
        assert_eq!(w.calm_until, ms(500));
        assert_eq!(w.again_from, Some(ms(2280)));
        assert_eq!(w.tail, ms(4500));
        assert!(w.allows(ms(300)) && !w.allows(ms(1000)) && w.allows(ms(2300)));
        assert!(!w.allows(ms(4600)), "longer than anything learned");
        // One page is less than a usual start holds (a page + 0.5 s): no early start.
        let mut one = ArrivalStats::new(RATE);
        page(&mut one, t0);
        let w = start_windows(&plan, &one, Duration::from_secs(10), &params(), 0.9);
        assert_eq!(w.early, SilenceWindow::SHUT);
        // With nothing learned about silences, the plan's moment alone decides.
        let blind = plan_with(500, 2.0, Silences::default());
        let w = start_windows(&blind, &one, Duration::from_secs(10), &params(), 0.9);
        assert_eq!(
            (w.planned, w.early),
            (SilenceWindow::OPEN, SilenceWindow::SHUT)
        );
    }

    #[test]
    fn a_backlog_starts_early_on_the_buffer_alone() {
        let t0 = Instant::now();
        // A 4 s backlog after a stall, decoded at once.
        let mut s = ArrivalStats::new(RATE);
        for k in 0..200u64 {
            s.record(960, t0 + Duration::from_micros(500 * k));
        }
        let early = |plan: &StartPlan| {
            start_windows(plan, &s, Duration::from_secs(10), &params(), 0.9).early
        };
        // 4 s at 0.9× (4.44 s) outlast any silence but the unseen one (1 in 61): at once.
        assert!(early(&plan_with(1000, 2.0, stalling())).allows(Duration::ZERO));
        // Where two stalls in three last 5 s, a silence just after a page outlasts 4.44 s
        // 3 times in 31: too often.
        let mut long = vec![500.0; 27];
        long.extend([1500.0, 5000.0, 5000.0]);
        let w = early(&plan_with(1000, 2.0, Silences::from_ms(&long)));
        assert!(!w.allows(Duration::ZERO), "{w:?}");
        // A plan that starts usual utterances 3.5 s in wants more than these 4 s hold.
        assert_eq!(
            early(&plan_with(3500, 2.0, stalling())),
            SilenceWindow::SHUT
        );
    }

    #[test]
    fn below_real_time_the_buffer_starts_early_only_beyond_the_deficit() {
        let t0 = Instant::now();
        let plan = plan_with(0, 0.8, Silences::from_ms(&[1250.0; 10]));
        let mut s = ArrivalStats::new(RATE);
        let mut t = t0;
        for _ in 0..2 {
            t = page(&mut s, t) + ms(1200);
        }
        // 10 s expected, 2 s in: the other 8 s fall 2 s behind, all that is buffered.
        let expected = Duration::from_secs(10);
        let w = start_windows(&plan, &s, expected, &params(), 0.9);
        assert_eq!(w.early, SilenceWindow::SHUT);
        // The plan's own moment counts on slowing to earn the deficit back: 2 s bridge
        // any 1.25 s silence.
        assert!(w.planned.allows(ms(1000)));
        // 4 s in: 1.5 s behind; the 2.5 s spare last 2.8 s at 0.9×, beyond any silence.
        for _ in 0..2 {
            t = page(&mut s, t) + ms(1200);
        }
        let w = start_windows(&plan, &s, expected, &params(), 0.9);
        assert!(w.early.allows(Duration::ZERO), "{w:?}");
    }

    #[test]
    fn need_never_exceeds_the_ring() {
        let t0 = Instant::now();
        let mut p = params();
        p.capacity_frames = 48_000;
        let mut s = ArrivalStats::new(RATE);
        s.record(4800, t0);
        s.record(4800, t0 + ms(400));
        assert_eq!(
            prebuffer_needed(&s, Duration::from_secs(60), &p, t0 + ms(400)),
            48_000
        );
    }

    #[test]
    fn a_long_gap_raises_the_need() {
        let t0 = Instant::now();
        let mut s = ArrivalStats::new(RATE);
        for k in 0..10u64 {
            s.record(960, t0 + ms(10 * k));
        }
        let calm = prebuffer_needed(&s, Duration::from_secs(10), &params(), t0 + ms(90));
        let stalled = prebuffer_needed(&s, Duration::from_secs(10), &params(), t0 + ms(1090));
        assert!(
            stalled >= calm + 48_000 * 9 / 10,
            "calm {calm} stalled {stalled}"
        );
    }
}
