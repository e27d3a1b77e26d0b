//! What the daemon counts and remembers for `status`: totals, the time-to-first-audio
//! window and its percentiles, the API's health, and the job playing now.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use super::queue::Job;
use crate::pipeline::SpeakReport;
use crate::presets::{PresetState, PresetStatus};
use crate::protocol::{
    Counters, NetworkStatus, NowPlaying, PresetCacheState, PresetInfo, QueuedJob,
};
use crate::tts::SpeechRequest;

/// Time-to-first-audio samples kept for the percentiles.
const TTFA_WINDOW: usize = 200;
/// reqwest keeps idle connections this long (see `OpenAiClient::new`).
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Characters of text shown in status and logs.
const PREVIEW_CHARS: usize = 40;

/// API health seen by jobs and the keep-alive (shared with keep-alive tasks).
#[derive(Debug, Default)]
pub struct NetState {
    last_ok: Option<Instant>,
    last_error: Option<String>,
    last_use: Option<Instant>,
}

/// A shared handle on [`NetState`].
#[derive(Debug, Clone, Default)]
pub struct Net(Arc<Mutex<NetState>>);

impl Net {
    fn with<R>(&self, f: impl FnOnce(&mut NetState) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut n| f(&mut n))
    }

    /// The API answered.
    pub fn ok(&self) {
        self.with(|n| {
            n.last_ok = Some(Instant::now());
            n.last_error = None;
        });
    }

    /// The API failed with `error`.
    pub fn failed(&self, error: String) {
        self.with(|n| n.last_error = Some(error));
    }

    /// A request (or keep-alive) is going out now.
    pub fn used(&self) {
        self.with(|n| n.last_use = Some(Instant::now()));
    }

    /// When the connection was last used.
    pub fn last_use(&self) -> Option<Instant> {
        self.with(|n| n.last_use).flatten()
    }

    /// The network part of `status`, with `api_base` already redacted.
    pub fn status(&self, api_base: String) -> NetworkStatus {
        let (last_ok, last_error) = self
            .with(|n| (n.last_ok, n.last_error.clone()))
            .unwrap_or_default();
        NetworkStatus {
            api_base,
            last_ok_s_ago: last_ok.map(|t| t.elapsed().as_secs()),
            last_error,
            warm: last_ok.is_some_and(|t| t.elapsed() < POOL_IDLE),
        }
    }
}

/// The job on the device now.
#[derive(Debug, Clone)]
pub struct Current {
    /// Its id.
    pub id: String,
    /// Its text's start.
    pub preview: String,
    /// When it left the queue.
    pub since: Instant,
}

/// Totals and recent figures since the daemon started.
#[derive(Debug, Default)]
pub struct Stats {
    counters: Counters,
    ttfa: VecDeque<u64>,
    /// The job playing, if any.
    pub current: Option<Current>,
}

impl Stats {
    /// A request line arrived.
    pub fn request(&mut self) {
        self.counters.requests += 1;
    }

    /// A job was accepted.
    pub fn accepted(&mut self) {
        self.counters.accepted += 1;
    }

    /// A job or request failed.
    pub fn failed(&mut self) {
        self.counters.failed += 1;
    }

    /// A job was cancelled or interrupted.
    pub fn cancelled(&mut self) {
        self.counters.cancelled += 1;
    }

    /// A job expired in the queue.
    pub fn expired(&mut self) {
        self.counters.expired += 1;
    }

    /// A job played completely.
    pub fn finished(&mut self, report: &SpeakReport) {
        self.counters.finished += 1;
        self.counters.stalls += u64::from(report.stalls);
        if let Some(t) = report.time_to_first_audio.map(ms) {
            if self.ttfa.len() == TTFA_WINDOW {
                self.ttfa.pop_front();
            }
            self.ttfa.push_back(t);
        }
    }

    /// The counters with the percentiles of the window filled in.
    pub fn counters(&self) -> Counters {
        let mut sorted: Vec<u64> = self.ttfa.iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: usize| (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) * p / 100]);
        Counters {
            ttfa_ms_p50: pct(50),
            ttfa_ms_p90: pct(90),
            ttfa_ms_p99: pct(99),
            ..self.counters.clone()
        }
    }

    /// The `now_playing` part of `status`.
    pub fn now_playing(&self) -> Option<NowPlaying> {
        self.current.as_ref().map(|c| NowPlaying {
            id: c.id.clone(),
            text: c.preview.clone(),
            elapsed_ms: ms(c.since.elapsed()),
        })
    }
}

/// The waiting jobs as `status` lists them.
pub fn queued<'a>(jobs: impl Iterator<Item = &'a Job>) -> Vec<QueuedJob> {
    jobs.map(|j| QueuedJob {
        id: j.id.clone(),
        priority: j.priority,
        text: preview(&j.text),
    })
    .collect()
}

/// Every configured preset (`reqs`) with its cache state from the renderer (`rendered`),
/// or, without a cache, why (`cache_error`).
pub fn preset_infos(
    reqs: &BTreeMap<String, SpeechRequest>,
    rendered: Option<&[PresetStatus]>,
    cache_error: Option<&str>,
) -> Vec<PresetInfo> {
    let state_of = |name: &str| {
        rendered
            .and_then(|r| r.iter().find(|s| s.name == name))
            .map(|s| &s.state)
    };
    reqs.iter()
        .map(|(name, req)| {
            let (state, reason, retry_in_s) = match state_of(name) {
                Some(PresetState::Pending) => (PresetCacheState::Pending, None, None),
                Some(PresetState::Rendering) => (PresetCacheState::Rendering, None, None),
                Some(PresetState::Cached) => (PresetCacheState::Cached, None, None),
                Some(PresetState::Failed {
                    reason, next_retry, ..
                }) => (
                    PresetCacheState::Failed,
                    Some(reason.clone()),
                    Some(
                        next_retry
                            .saturating_duration_since(Instant::now())
                            .as_secs(),
                    ),
                ),
                None => (
                    PresetCacheState::Uncached,
                    Some(cache_error.unwrap_or("not rendered yet").to_string()),
                    None,
                ),
            };
            PresetInfo {
                name: name.clone(),
                state,
                reason,
                retry_in_s,
                text: preview(&req.input),
            }
        })
        .collect()
}

/// Whole milliseconds, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The first characters of `text`, on one line.
pub fn preview(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut p: String = one_line.chars().take(PREVIEW_CHARS).collect();
    if one_line.chars().count() > PREVIEW_CHARS {
        p.push('…');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_is_one_line_and_short() {
        assert_eq!(preview("a\nb  c"), "a b c");
        let p = preview(&"x".repeat(100));
        assert_eq!(p.chars().count(), PREVIEW_CHARS + 1);
    }

    #[test]
    fn percentiles_cover_the_last_window_only() {
        let mut s = Stats::default();
        assert_eq!(s.counters().ttfa_ms_p50, None);
        for t in 1..=(TTFA_WINDOW as u64 + 100) {
            s.finished(&SpeakReport {
                time_to_first_audio: Some(Duration::from_millis(t)),
                stalls: 1,
                ..SpeakReport::default()
            });
        }
        let c = s.counters();
        assert_eq!(c.finished, TTFA_WINDOW as u64 + 100);
        assert_eq!(c.stalls, TTFA_WINDOW as u64 + 100);
        // The first 100 samples have left the window: it holds 101..=300.
        assert_eq!(c.ttfa_ms_p50, Some(200));
        assert_eq!(c.ttfa_ms_p99, Some(298));
    }
}
