//! The network model learned per installation (issue 9, part 1): how late speech audio
//! arrives on this network, kept across utterances, so playout can start at the earliest
//! moment that stays gapless instead of after a fixed reserve.
//!
//! For each utterance the playout records its bursts: when each arrived and how much audio
//! had arrived before it. A burst's *lateness* is how long after its playback moment it
//! arrived, had playback started at the first audio: `(arrival − first arrival) − audio
//! before it`. Starting `L` after the first audio plays gaplessly exactly when every burst's
//! lateness is at most `L`, so what an utterance needed is its worst burst's lateness.
//!
//! Below real time that need grows with the utterance's length (each second of audio comes
//! `1/R − 1` s late), so a 5 s utterance says little about a 30 s one. The model therefore
//! splits the need in two: the generation rate `R` (a decayed mean), and the *jitter* — the
//! worst lateness against the schedule at the learned `min(R, 1)` (arrival − audio before /
//! rate). The
//! start delay for a new utterance of length `E` is `jitter target + E × (1/R − 1)` when
//! `R < 1` (see [`StartPlan`]). At or above real time the jitter is the plain lateness. As
//! WebRTC's NetEq does for packets, the model keeps a histogram of that need in 20 ms
//! buckets whose weights decay with a forget factor per utterance (old networks fade out),
//! and the start target is a quantile of it (0.95 by default: 19 utterances in 20 start
//! late enough on their own; slowed playback is meant to cover the rest). Unlike NetEq's
//! per-packet histogram, one late burst here is one gap, so the unit is the utterance. It
//! also tracks the generation rate (audio seconds per wall second), which tells a slow
//! stream from a stalled one.
//!
//! A third histogram holds the *silences*: every wait between one burst and the next, as
//! its *excess* over its request's usual wait (the median: a PCM chunk wait, an Opus page
//! gap). A stall belongs to the network, not to a request, so every request teaches it;
//! the start bridges its own request's cadence (learned from the first request, the one a
//! start falls in) plus that excess. Its top (the [`SILENCE_QUANTILE`]) is the longest wait
//! this network makes, which the start rule uses within an utterance: while a stall is
//! under way it may not start on the plan unless the buffer outlasts what the stall can
//! still take, and with a buffer that
//! outlasts the longest wait it may start before the plan (after a stall that held the
//! first audio back, the audio comes as one large backlog). `store.rs` persists the model,
//! keyed by endpoint and format.

pub mod store;

use serde::{Deserialize, Serialize};

/// Width of a lateness bucket.
pub const BUCKET_MS: u32 = 20;
/// Buckets kept: lateness up to 10 s (the longest WiFi stalls seen are a few seconds).
pub const BUCKETS: usize = 500;
/// Weight kept by earlier utterances when a new one is added (NetEq's forget factor is per
/// packet; per utterance, this forgets a network in about 20 utterances).
pub const FORGET: f64 = 0.95;
/// The quantile of lateness the start target covers by default.
pub const DEFAULT_QUANTILE: f64 = 0.95;
/// The quantile of silences taken as the longest wait the network makes. Silences are
/// counted one by one, not per utterance (an utterance has dozens), so this is in effect
/// the longest of the recent ones, less a rare outlier.
pub const SILENCE_QUANTILE: f64 = 0.99;

/// Utterances learned before the model starts playback (fewer say too little: one unlucky
/// or lucky utterance would set the target alone).
pub const MIN_WARM_UTTERANCES: u64 = 3;

/// What the playout needs from the model to start an utterance: the learned jitter target
/// and generation rate (see the module doc for how they combine).
#[derive(Debug, Clone, PartialEq)]
pub struct StartPlan {
    /// Lateness against the stream's own schedule that the start covers, in ms.
    pub jitter_ms: u32,
    /// Learned generation rate (audio s per wall s).
    pub rate: f64,
    /// The waits between bursts the network made.
    pub silences: Silences,
    /// The quantile the start covers: a silence under way may outlast the buffer with a
    /// chance of at most `1 − quantile`.
    pub quantile: f64,
}

/// How much longer than the longest silence learned one may yet come: the learned ones are a
/// few dozen samples, and the next stall can be the longest so far.
pub const SILENCE_TAIL: f64 = 1.5;

/// The silences between bursts a network made, as the start rule reads them: a cadence
/// every silence lasts, the decayed weight of excess beyond it at least as long as each
/// 20 ms bucket, plus one more silence, never seen, [`SILENCE_TAIL`] times the longest (a learned maximum is not the true one: with
/// `n` stalls seen, the next is the longest yet one time in `n + 1`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Silences {
    /// `at_least[b]`: the weight of silences whose excess over `offset_ms` is in bucket `b`
    /// or beyond (bucket 0: no excess).
    at_least: Vec<f64>,
    /// The wait every silence lasts at least (the start request's cadence), in ms.
    offset_ms: f64,
    /// The longest silence to expect (the [`SILENCE_QUANTILE`]), in ms.
    longest_ms: u32,
}

impl Silences {
    /// Silences of `offset_ms` plus the excess whose decayed weight per bucket is `weights`.
    fn from_weights(weights: &[f64], offset_ms: f64) -> Silences {
        let mut at_least = vec![0.0; weights.len()];
        let mut acc = 0.0;
        for (i, w) in weights.iter().enumerate().rev() {
            acc += w;
            at_least[i] = acc;
        }
        let mut s = Silences {
            at_least,
            offset_ms: offset_ms.max(0.0),
            longest_ms: 0,
        };
        s.longest_ms = s.quantile_ms(SILENCE_QUANTILE);
        s
    }

    /// Silences of the given lengths (ms), one weight each.
    pub fn from_ms(silences: &[f64]) -> Silences {
        let mut weights = vec![0.0; BUCKETS];
        for &ms in silences {
            weights[bucket(ms)] += 1.0;
        }
        Silences::from_weights(&weights, 0.0)
    }

    fn weight_from(&self, b: usize) -> f64 {
        self.at_least.get(b).copied().unwrap_or(0.0)
    }

    /// The weight of silences longer than `ms` (all of them, short of the offset).
    fn weight_beyond(&self, ms: f64) -> f64 {
        let excess = ms - self.offset_ms;
        if excess < 0.0 {
            self.weight_from(0)
        } else {
            self.weight_from(bucket(excess) + 1)
        }
    }

    /// The share of silences longer than `ms` (the unseen one left out: it is the tail of
    /// a silence under way, not a rate).
    pub fn share_beyond(&self, ms: f64) -> f64 {
        let total = self.weight_from(0);
        if total <= 0.0 {
            return 0.0;
        }
        self.weight_beyond(ms) / total
    }

    /// Whether any silence was learned.
    pub fn is_empty(&self) -> bool {
        self.weight_from(0) <= 0.0
    }

    /// The silence (ms, a bucket's upper edge) that a fraction `q` of them did not exceed;
    /// 0 when none was seen.
    pub fn quantile_ms(&self, q: f64) -> u32 {
        let total = self.weight_from(0);
        if total <= 0.0 {
            return 0;
        }
        let want = q.clamp(0.0, 1.0) * total;
        let edge = (0..self.at_least.len())
            .find(|&b| total - self.weight_from(b + 1) >= want - 1e-9)
            .map_or(0, |b| b as u32 * BUCKET_MS);
        edge.saturating_add(self.offset_ms.round() as u32)
    }

    /// The longest silence to expect (the [`SILENCE_QUANTILE`]), in ms.
    pub fn longest_ms(&self) -> u32 {
        self.longest_ms
    }

    /// The unseen silence's length, in ms: beyond it nothing is known.
    pub fn tail_ms(&self) -> f64 {
        f64::from(self.longest_ms) * SILENCE_TAIL
    }

    /// The usual wait between bursts (the median silence), in ms.
    pub fn usual_ms(&self) -> u32 {
        self.quantile_ms(0.5)
    }

    /// The chance that a silence which has lasted `elapsed_ms` goes on for `more_ms`
    /// beyond it, the unseen one included; `None` past the unseen one (or with nothing
    /// learned): nothing to go by.
    pub fn outlasts(&self, elapsed_ms: f64, more_ms: f64) -> Option<f64> {
        let unseen = |ms: f64| if ms < self.tail_ms() { 1.0 } else { 0.0 };
        let lasted = self.weight_beyond(elapsed_ms) + unseen(elapsed_ms);
        let end = elapsed_ms + more_ms;
        (lasted > 0.0 && !self.is_empty()).then(|| (self.weight_beyond(end) + unseen(end)) / lasted)
    }
}

impl StartPlan {
    /// How long after the first audio playback must begin (at normal speed) for an
    /// utterance of `total` to play gaplessly: the jitter target, plus, below real time,
    /// what the whole utterance falls behind.
    pub fn delay(&self, total: std::time::Duration) -> std::time::Duration {
        let r = self.rate.clamp(0.05, f64::MAX);
        let deficit = if r < 1.0 {
            total.as_secs_f64() * (1.0 / r - 1.0)
        } else {
            0.0
        };
        std::time::Duration::from_secs_f64(f64::from(self.jitter_ms) / 1000.0 + deficit)
    }
}

/// One burst of an utterance: when it arrived (ms after the utterance's first audio) and
/// how much audio (ms) had arrived before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    /// Arrival, in ms after the first audio arrived.
    pub at_ms: f64,
    /// Audio that had arrived before this burst, in ms.
    pub audio_before_ms: f64,
    /// The silence before this burst: from the end of the one before, in ms (0: the first).
    pub silence_ms: f64,
    /// It came in the utterance's first request, the one its start falls in (with `auto`,
    /// the PCM lead): its cadence is the one a start must bridge.
    pub first_request: bool,
}

impl Burst {
    /// How late the burst came for a playback started at the first audio (≤ 0: in time).
    pub fn lateness_ms(&self) -> f64 {
        self.at_ms - self.audio_before_ms
    }
}

/// What was learned, as `status` and `check` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Utterances learned from.
    pub utterances: u64,
    /// The start target: the configured quantile of lateness, in ms.
    pub target_ms: u32,
    /// Median lateness, in ms.
    pub p50_ms: u32,
    /// 95th percentile of lateness, in ms.
    pub p95_ms: u32,
    /// Audio seconds generated per wall second (1.0 = real time), if measured.
    pub generation_rate: Option<f64>,
    /// The longest wait between bursts to expect, in ms (0 before any was seen).
    #[serde(default)]
    pub longest_silence_ms: u32,
}

/// The learned lateness histogram and generation rate for one endpoint and format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelayModel {
    /// Decayed weight per 20 ms bucket of lateness (index 0: on time or early).
    weights: Vec<f64>,
    /// Utterances learned from.
    utterances: u64,
    /// Decayed mean of the generation rate (audio s per wall s).
    rate: Option<f64>,
    /// Decayed weight per 20 ms bucket of a silence's excess over its request's usual
    /// wait (one per silence). Files written before it existed read as nothing learned yet
    /// (their `silences` held whole waits, a measure no longer kept).
    #[serde(default = "no_silences")]
    excess: Vec<f64>,
    /// Decayed mean of the first request's usual wait between bursts, in ms.
    #[serde(default)]
    cadence_ms: Option<f64>,
    /// When this model last learned, in the store's own count (which models to keep).
    #[serde(default)]
    pub(crate) learned_at: u64,
}

impl Default for DelayModel {
    fn default() -> Self {
        DelayModel {
            weights: vec![0.0; BUCKETS],
            utterances: 0,
            rate: None,
            excess: no_silences(),
            cadence_ms: None,
            learned_at: 0,
        }
    }
}

fn no_silences() -> Vec<f64> {
    vec![0.0; BUCKETS]
}

impl DelayModel {
    /// Whether anything has been learned (a cold model gives no target).
    pub fn is_cold(&self) -> bool {
        self.utterances == 0
    }

    /// Utterances learned from.
    pub fn utterances(&self) -> u64 {
        self.utterances
    }

    /// Learns one utterance from its bursts (in arrival order) and its audio length; an
    /// utterance with fewer than two bursts says nothing about lateness and is ignored
    /// (returns whether it was learned).
    pub fn learn(&mut self, bursts: &[Burst], audio_ms: f64) -> bool {
        let (Some(first_size), Some(last)) = (bursts.get(1), bursts.last()) else {
            return false;
        };
        // The audio after the first burst, over the time it took to arrive.
        let generated = audio_ms - first_size.audio_before_ms;
        if last.at_ms > 0.0 && generated > 0.0 {
            self.rate = Some(decayed(self.rate, generated / last.at_ms));
        }
        // Jitter against the schedule of the learned rate — the one a start is planned by —
        // not this utterance's own: one whose rate a long stall pulled below real time must
        // keep that stall as jitter, or the plan would lose it. Below real time, audio `P`
        // is due at `P / R`; at or above it, at `P` (playback cannot run ahead of real time).
        let pace = self.rate.map_or(1.0, |r| r.min(1.0));
        let need = bursts
            .iter()
            .map(|b| b.at_ms - b.audio_before_ms / pace)
            .fold(0.0, f64::max);
        for w in self.weights.iter_mut().chain(&mut self.excess) {
            *w *= FORGET;
        }
        // Weight 1 per utterance; the total converges to 1 / (1 − FORGET) = 20.
        self.weights[bucket(need)] += 1.0;
        self.learn_silences(&bursts[1..]);
        self.utterances += 1;
        true
    }

    /// Learns each silence after the first burst (its own wait is the TTFB) as its excess
    /// over its request's usual wait, and the first request's usual wait as the cadence.
    /// `auto`'s Opus page gaps are then no threat to its PCM lead, yet the stalls in its
    /// Opus part still teach the lead what the network does.
    fn learn_silences(&mut self, bursts: &[Burst]) {
        for first in [true, false] {
            let mut waits: Vec<f64> = bursts
                .iter()
                .filter(|b| b.first_request == first)
                .map(|b| b.silence_ms)
                .collect();
            let Some(usual) = median(&mut waits) else {
                continue;
            };
            if first {
                self.cadence_ms = Some(decayed(self.cadence_ms, usual));
            }
            for w in waits {
                self.excess[bucket(w - usual)] += 1.0;
            }
        }
    }

    /// What the playout starts by, at quantile `q`; `None` until [`MIN_WARM_UTTERANCES`]
    /// were learned (until then the fixed cold-start rules apply).
    pub fn plan(&self, q: f64) -> Option<StartPlan> {
        if self.utterances < MIN_WARM_UTTERANCES {
            return None;
        }
        Some(StartPlan {
            jitter_ms: self.quantile_ms(q)?,
            rate: self.rate.unwrap_or(1.0),
            silences: self.silences(),
            quantile: q.clamp(0.0, 1.0),
        })
    }

    /// The lateness (ms) that a fraction `q` of the learned bursts did not exceed; `None`
    /// while cold. A start with this much audio buffered rides out that fraction.
    pub fn quantile_ms(&self, q: f64) -> Option<u32> {
        if self.is_cold() {
            return None;
        }
        quantile_of(&self.weights, q)
    }

    /// The longest wait between bursts to expect (the [`SILENCE_QUANTILE`] of silences),
    /// in ms; 0 while none was seen.
    pub fn longest_silence_ms(&self) -> u32 {
        self.silences().longest_ms()
    }

    /// The silences a start in the first request must bridge: its cadence plus the excess.
    fn silences(&self) -> Silences {
        Silences::from_weights(&self.excess, self.cadence_ms.unwrap_or(0.0))
    }

    /// What was learned, with the start target at quantile `q`.
    pub fn summary(&self, q: f64) -> Summary {
        Summary {
            utterances: self.utterances,
            target_ms: self.quantile_ms(q).unwrap_or(0),
            p50_ms: self.quantile_ms(0.5).unwrap_or(0),
            p95_ms: self.quantile_ms(0.95).unwrap_or(0),
            generation_rate: self.rate,
            longest_silence_ms: self.longest_silence_ms(),
        }
    }

    /// Whether the model is well formed (a file of another version or a hand-edited one
    /// may not be).
    fn is_valid(&self) -> bool {
        let fine = |v: &[f64]| v.len() == BUCKETS && v.iter().all(|w| w.is_finite() && *w >= 0.0);
        fine(&self.weights)
            && fine(&self.excess)
            && self.rate.is_none_or(|r| r.is_finite() && r > 0.0)
            && self.cadence_ms.is_none_or(|c| c.is_finite() && c >= 0.0)
    }
}

/// A decayed mean: `value` added to `mean` with weight `1 − FORGET` (the first sets it).
fn decayed(mean: Option<f64>, value: f64) -> f64 {
    mean.map_or(value, |m| m * FORGET + value * (1.0 - FORGET))
}

/// The median of `values` (reordered); `None` when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The upper edge (ms) of the bucket where a fraction `q` of `weights` is reached; `None`
/// when there is no weight.
fn quantile_of(weights: &[f64], q: f64) -> Option<u32> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let want = q.clamp(0.0, 1.0) * total;
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if acc >= want - 1e-9 {
            // The bucket's upper edge: up to it is covered (bucket 0: nothing).
            return Some(i as u32 * BUCKET_MS);
        }
    }
    Some((BUCKETS - 1) as u32 * BUCKET_MS)
}

/// The bucket of a lateness: 0 for on time or early, the last for anything beyond.
fn bucket(lateness_ms: f64) -> usize {
    if !lateness_ms.is_finite() || lateness_ms <= 0.0 {
        return 0;
    }
    ((lateness_ms / f64::from(BUCKET_MS)).ceil() as usize).min(BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bursts of `page_ms` of audio, generated at `speed` × real time, the first after
    /// nothing, with an extra `stall_ms` before burst `stall_at`.
    fn bursts(pages: usize, page_ms: f64, speed: f64, stall: Option<(usize, f64)>) -> Vec<Burst> {
        let mut out = Vec::new();
        let mut delay = 0.0;
        for i in 0..pages {
            if let Some((at, ms)) = stall {
                if i == at {
                    delay += ms;
                }
            }
            let at_ms = i as f64 * page_ms / speed + delay;
            let silence_ms = out.last().map_or(0.0, |b: &Burst| at_ms - b.at_ms);
            out.push(Burst {
                at_ms,
                audio_before_ms: i as f64 * page_ms,
                silence_ms,
                first_request: true,
            });
        }
        out
    }

    #[test]
    fn lateness_is_arrival_minus_the_audio_before_it() {
        let b = Burst {
            at_ms: 1500.0,
            audio_before_ms: 1000.0,
            silence_ms: 500.0,
            first_request: true,
        };
        assert_eq!(b.lateness_ms(), 500.0);
        assert_eq!(bucket(-3.0), 0);
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(1.0), 1);
        assert_eq!(bucket(20.0), 1);
        assert_eq!(bucket(21.0), 2);
        assert_eq!(bucket(1e9), BUCKETS - 1);
    }

    #[test]
    fn a_cold_model_gives_no_target_and_one_burst_teaches_nothing() {
        let mut m = DelayModel::default();
        assert_eq!(m.quantile_ms(0.95), None);
        m.learn(&bursts(1, 1000.0, 4.0, None), 1000.0);
        assert!(m.is_cold());
    }

    #[test]
    fn converges_on_a_scripted_stall_pattern() {
        let mut m = DelayModel::default();
        // 200 ms chunks generated at 4×; one utterance in four stalls 900 ms before its
        // fourth chunk, which then arrives at 150 + 900 ms with 600 ms played: 450 ms late.
        for k in 0..40 {
            let stall = (k % 4 == 0).then_some((3, 900.0));
            m.learn(&bursts(20, 200.0, 4.0, stall), 4000.0);
        }
        let p95 = m.quantile_ms(0.95).unwrap();
        let p50 = m.quantile_ms(0.5).unwrap();
        assert_eq!(p50, 0, "most utterances need nothing: {p50}");
        assert_eq!(p95, 460, "the stalled ones needed 450 ms (bucket edge 460)");
        let s = m.summary(0.95);
        assert_eq!((s.utterances, s.target_ms), (40, p95));
        // 3800 ms after the first chunk in 950 ms (4×), or in 1850 ms when stalled (≈ 2×).
        let rate = s.generation_rate.unwrap();
        assert!(rate > 2.0 && rate < 4.0, "rate {rate}");
    }

    #[test]
    fn decays_when_the_network_gets_better() {
        let mut m = DelayModel::default();
        for _ in 0..30 {
            m.learn(&bursts(10, 200.0, 4.0, Some((2, 2000.0))), 2000.0);
        }
        let bad = m.quantile_ms(0.95).unwrap();
        assert!(bad >= 1500, "{bad}");
        for _ in 0..60 {
            m.learn(&bursts(10, 200.0, 4.0, None), 2000.0);
        }
        let good = m.quantile_ms(0.95).unwrap();
        assert!(good <= 40, "still {good} ms after 60 good utterances");
    }

    #[test]
    fn below_real_time_the_rate_carries_the_deficit_and_the_jitter_stays_small() {
        let mut m = DelayModel::default();
        // 1 s pages at 0.85×: each arrives exactly on the 0.85× schedule.
        for _ in 0..10 {
            m.learn(&bursts(8, 1000.0, 0.85, None), 8000.0);
        }
        assert!(m.quantile_ms(0.95).unwrap() <= 20);
        let plan = m.plan(0.95).unwrap();
        assert!((plan.rate - 0.85).abs() < 0.01, "{}", plan.rate);
        // A 20 s utterance falls 20 × (1/0.85 − 1) ≈ 3.53 s behind; a 5 s one 0.88 s.
        let long = plan.delay(std::time::Duration::from_secs(20)).as_secs_f64();
        let short = plan.delay(std::time::Duration::from_secs(5)).as_secs_f64();
        assert!((3.5..3.6).contains(&long), "{long}");
        assert!((0.88..0.92).contains(&short), "{short}");
    }

    #[test]
    fn a_stall_that_pulls_one_utterance_below_real_time_stays_in_the_jitter() {
        let mut m = DelayModel::default();
        for _ in 0..10 {
            m.learn(&bursts(6, 1000.0, 1.1, None), 6000.0);
        }
        // A 2.5 s stall before the last page: that utterance averages 0.71× real time, and
        // against its own rate its last page was on time. Against the learned 1.08× it
        // came 2.05 s late, which is what a plan by the learned rate has to cover.
        m.learn(&bursts(6, 1000.0, 1.1, Some((5, 2500.0))), 6000.0);
        let plan = m.plan(0.95).unwrap();
        assert!(plan.rate > 1.0, "{}", plan.rate);
        assert!(plan.jitter_ms >= 2000, "the stall was lost: {plan:?}");
    }

    #[test]
    fn no_plan_until_a_few_utterances_were_learned() {
        let mut m = DelayModel::default();
        for k in 0..MIN_WARM_UTTERANCES {
            assert_eq!(m.plan(0.95), None, "after {k}");
            m.learn(&bursts(4, 1000.0, 2.0, Some((2, 800.0))), 4000.0);
        }
        let plan = m.plan(0.95).unwrap();
        // Page 2 at 0.5 + 0.8 s with 2 s before it: not late; at 2× the jitter is lateness.
        assert_eq!(plan.jitter_ms, 0);
        assert!(plan.delay(std::time::Duration::from_secs(30)).is_zero());
    }

    #[test]
    fn learns_the_longest_silence_and_forgets_it_when_the_network_gets_better() {
        let mut m = DelayModel::default();
        assert_eq!(m.longest_silence_ms(), 0);
        // 1 s pages at 2× (500 ms apart); one utterance in three stalls 2 s before page 4.
        for k in 0..30 {
            let stall = (k % 3 == 0).then_some((3, 2000.0));
            m.learn(&bursts(8, 1000.0, 2.0, stall), 8000.0);
        }
        // The stall plus the page's own 500 ms; one silence in 21, yet it is the longest.
        assert_eq!(m.longest_silence_ms(), 2500);
        assert_eq!(m.summary(0.95).longest_silence_ms, 2500);
        for _ in 0..80 {
            m.learn(&bursts(8, 1000.0, 2.0, None), 8000.0);
        }
        let plan = m.plan(0.95).unwrap();
        assert_eq!(plan.silences.longest_ms(), 500);
        assert_eq!(plan.silences.usual_ms(), 500);
    }

    #[test]
    fn tells_how_likely_a_silence_under_way_is_to_go_on() {
        // Nine page gaps of 500 ms for each stall of 1.5 to 2.5 s.
        let mut ms = vec![500.0; 27];
        ms.extend([1500.0, 2000.0, 2500.0]);
        let s = Silences::from_ms(&ms);
        assert_eq!((s.usual_ms(), s.longest_ms()), (500, 2500));
        // Just after a page: 4 silences in 31 (the 3 stalls and the unseen 3.75 s one)
        // go on for more than a second.
        let fresh = s.outlasts(0.0, 1000.0).unwrap();
        assert!((fresh - 4.0 / 31.0).abs() < 1e-9, "{fresh}");
        // 600 ms in, it is a stall: 1 s more leaves the 2, 2.5 and unseen ones.
        let stalled = s.outlasts(600.0, 1000.0).unwrap();
        assert!((stalled - 3.0 / 4.0).abs() < 1e-9, "{stalled}");
        // Past the longest learned, only the unseen one remains; past that, nothing.
        assert_eq!(s.outlasts(600.0, 1900.0), Some(0.25));
        assert_eq!(s.outlasts(600.0, 3200.0), Some(0.0));
        assert_eq!(s.outlasts(3800.0, 0.0), None);
        assert_eq!(Silences::default().outlasts(0.0, 0.0), None);
    }

    /// `auto`: 100 ms PCM chunks 87 ms apart, then 1 s Opus pages 870 ms apart, with a
    /// stall of `stall_ms` before the fourth page.
    fn lead_then_pages(stall_ms: f64) -> Vec<Burst> {
        let mut bursts: Vec<Burst> = (0..20)
            .map(|i| Burst {
                at_ms: f64::from(i) * 87.0,
                audio_before_ms: f64::from(i) * 100.0,
                silence_ms: if i == 0 { 0.0 } else { 87.0 },
                first_request: true,
            })
            .collect();
        let mut at_ms = 1740.0;
        for i in 0..6 {
            let silence_ms = if i == 3 { 870.0 + stall_ms } else { 870.0 };
            at_ms += if i == 0 { 0.0 } else { silence_ms };
            bursts.push(Burst {
                at_ms,
                audio_before_ms: 2000.0 + f64::from(i) * 1000.0,
                silence_ms,
                first_request: false,
            });
        }
        bursts
    }

    #[test]
    fn a_start_bridges_its_own_requests_cadence_plus_the_networks_stalls() {
        let mut m = DelayModel::default();
        for _ in 0..MIN_WARM_UTTERANCES {
            m.learn(&lead_then_pages(0.0), 8000.0);
        }
        let plan = m.plan(0.95).unwrap();
        // The lead's 87 ms chunk wait; the page gaps are the Opus part's own cadence.
        assert_eq!(plan.silences.longest_ms(), 87);
        // So a PCM start with 200 ms buffered bridges what may come (were the page gaps
        // silences of the lead, one in four would outlast it).
        assert_eq!(plan.silences.outlasts(0.0, 200.0), Some(0.0));

        // A 2 s stall in the Opus part is the network's: the lead learns it too.
        for _ in 0..MIN_WARM_UTTERANCES {
            m.learn(&lead_then_pages(2000.0), 8000.0);
        }
        let plan = m.plan(0.95).unwrap();
        assert_eq!(plan.silences.longest_ms(), 2087);
        let stalled = plan.silences.outlasts(300.0, 500.0).unwrap();
        assert!(
            stalled > 0.5,
            "a 300 ms wait in the lead is a stall: {stalled}"
        );
    }

    #[test]
    fn a_model_saved_before_silences_were_learned_still_loads() {
        let mut m = DelayModel::default();
        for _ in 0..MIN_WARM_UTTERANCES {
            m.learn(&bursts(4, 1000.0, 2.0, Some((2, 800.0))), 4000.0);
        }
        let mut v = serde_json::to_value(&m).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("excess");
        o.remove("cadence_ms");
        let old: DelayModel = serde_json::from_value(v).unwrap();
        assert!(old.is_valid());
        // Nothing known about silences: no start on the buffer alone, the plan as before.
        assert_eq!(old.longest_silence_ms(), 0);
        assert_eq!(
            old.plan(0.95).unwrap().jitter_ms,
            m.plan(0.95).unwrap().jitter_ms
        );
    }

    #[test]
    fn weights_stay_bounded() {
        let mut m = DelayModel::default();
        for _ in 0..10_000 {
            m.learn(&bursts(3, 1000.0, 2.0, None), 3000.0);
        }
        let total: f64 = m.weights.iter().sum();
        assert!((total - 1.0 / (1.0 - FORGET)).abs() < 1e-6, "{total}");
        assert!(m.is_valid());
    }
}
