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

use crate::netmodel::{Burst, StartPlan};

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
            log: Vec::new(),
        }
    }

    /// Every burst: when it began (after the first) and how much audio came before.
    pub fn into_bursts(self) -> Vec<Burst> {
        self.log
    }

    fn log_burst(&mut self, at: Instant) {
        let (Some(first), true) = (self.first_at, self.log.len() < MAX_LOGGED_BURSTS) else {
            return;
        };
        self.log.push(Burst {
            at_ms: at.saturating_duration_since(first).as_secs_f64() * 1000.0,
            audio_before_ms: self.received as f64 * 1000.0 / f64::from(self.rate),
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
                    self.log_burst(at);
                }
            }
            _ => {
                self.first_at = Some(at);
                self.burst_start_at = Some(at);
                self.bursts = 1;
                self.log_burst(at);
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
        };
        let (start, target) = warm_start(&plan, &s, Duration::from_secs(10), &params(), 0.9);
        assert_eq!(target, ms(800));
        // Gains 10 % of the 0.5 s between pages.
        assert!((ms(745)..ms(755)).contains(&start), "{start:?}");
        // Below real time the part after the first page falls behind: (10 − 1) × (1/0.8 − 1).
        let slow = StartPlan {
            jitter_ms: 0,
            rate: 0.8,
        };
        let (_, target) = warm_start(&slow, &s, Duration::from_secs(10), &params(), 1.0);
        assert!((2.24..2.26).contains(&target.as_secs_f64()), "{target:?}");
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
