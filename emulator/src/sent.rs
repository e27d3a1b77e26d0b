//! The send log: when each write of a 200 audio response actually went out and how much
//! audio was usable once it had, so a bench can compute the earliest gapless start.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald::tts::AudioFormat;

/// Responses kept per scenario key (older ones are dropped first).
pub const KEEP_PER_KEY: usize = 16;
/// Writes recorded per response; past this the schedule is marked truncated. 20 000 is
/// ~27 min of pcm at the default 4096-byte chunk (opus: one entry per 1 s page).
pub const MAX_WRITES: usize = 20_000;

/// One write that completed usable audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentWrite {
    /// When it was handed to the connection, after the request arrived.
    pub at: Duration,
    /// Audio usable once it was out, in samples at [`SendSchedule::rate`] (cumulative).
    pub media: u64,
}

/// How one 200 audio response was sent (see docs/EMULATOR.md, "Send schedule").
#[derive(Debug, Clone, PartialEq)]
pub struct SendSchedule {
    /// The response's `x-request-id`.
    pub request_id: String,
    /// The body's format.
    pub format: AudioFormat,
    /// Samples per second of [`SentWrite::media`]: 48 000 for opus (the granule clock), 24 000
    /// for pcm.
    pub rate: u32,
    /// When the request reached the server (the origin of every [`SentWrite::at`]).
    pub arrived: Instant,
    /// Writes that completed usable audio, in order: for opus the write that completes an
    /// Ogg page (header pages included, with `media` 0), for pcm every write.
    pub writes: Vec<SentWrite>,
    /// Audio in the whole body, in samples at `rate` (what a complete body decodes to).
    pub media_total: u64,
    /// Bytes of the whole body.
    pub body_bytes: u64,
    /// Bytes handed to the connection so far (less than `body_bytes` for `drop`,
    /// `hang-body`, a client that went away, or a response still being sent).
    pub sent_bytes: u64,
    /// More than [`MAX_WRITES`] writes: later ones were not recorded.
    pub truncated: bool,
}

impl SendSchedule {
    /// Every byte of the body went out.
    pub fn complete(&self) -> bool {
        self.sent_bytes == self.body_bytes
    }

    /// Usable audio sent, as a duration.
    pub fn media_sent(&self) -> Duration {
        let media = self.writes.last().map_or(0, |w| w.media);
        Duration::from_secs_f64(media as f64 / f64::from(self.rate.max(1)))
    }

    /// The earliest start (after the request arrived) from which playback at normal speed
    /// would not have run dry: `max over writes i of (t_i − P_i)`, with `t_i` when write i
    /// went out and `P_i` the audio usable before it (the previous write's `media`, 0 for
    /// the first). Playback starting at S reaches P_i at S + P_i, when write i must be in.
    /// Over the writes that went out; `None` without any audio, or if `truncated`.
    pub fn gapless_start(&self) -> Option<Duration> {
        gapless_start_of(std::slice::from_ref(self))
    }
}

/// [`SendSchedule::gapless_start`] of responses played one after another (the segments of
/// one utterance, e.g. `auto`'s pcm lead and opus tail fetched at once): each response's
/// audio follows the whole audio of the ones before it, and times count from the first
/// response's arrival. `None` if any response is empty or truncated.
pub fn gapless_start_of(parts: &[SendSchedule]) -> Option<Duration> {
    let origin = parts.first()?.arrived;
    let mut played_before_ns = 0i128;
    let mut limit = 0i128;
    for s in parts {
        if s.truncated || s.writes.last().is_none_or(|w| w.media == 0) {
            return None;
        }
        let rate = i128::from(s.rate.max(1));
        let offset = s.arrived.saturating_duration_since(origin).as_nanos() as i128;
        let mut before = 0u64;
        for w in &s.writes {
            let due = played_before_ns + i128::from(before) * 1_000_000_000 / rate;
            limit = limit.max(offset + w.at.as_nanos() as i128 - due);
            before = before.max(w.media);
        }
        played_before_ns += i128::from(s.media_total) * 1_000_000_000 / rate;
    }
    Some(Duration::from_nanos(limit as u64))
}

/// The log, per scenario key.
#[derive(Default)]
pub(crate) struct SendLog(Mutex<HashMap<String, VecDeque<SendSchedule>>>);

impl SendLog {
    /// Starts a response's schedule (before its first write).
    pub(crate) fn begin(&self, key: &str, schedule: SendSchedule) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let q = log.entry(key.to_string()).or_default();
        if q.len() >= KEEP_PER_KEY {
            q.pop_front();
        }
        q.push_back(schedule);
    }

    /// Records one write of the response `request_id` (gone already if `KEEP_PER_KEY`
    /// newer responses on the same key started meanwhile: then nothing is recorded).
    pub(crate) fn wrote(
        &self,
        key: &str,
        request_id: &str,
        at: Duration,
        bytes: usize,
        media: Option<u64>,
    ) {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = log
            .get_mut(key)
            .and_then(|q| q.iter_mut().rev().find(|s| s.request_id == request_id))
        else {
            return;
        };
        s.sent_bytes += bytes as u64;
        if let Some(media) = media {
            if s.writes.len() >= MAX_WRITES {
                s.truncated = true;
            } else {
                s.writes.push(SentWrite { at, media });
            }
        }
    }

    /// The schedules kept for `key`, oldest first.
    pub(crate) fn get(&self, key: &str) -> Vec<SendSchedule> {
        let log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.get(key)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(rate: u32, writes: &[(u64, u64)]) -> SendSchedule {
        SendSchedule {
            request_id: "r".into(),
            format: AudioFormat::Pcm,
            rate,
            arrived: Instant::now(),
            writes: writes
                .iter()
                .map(|&(ms, media)| SentWrite {
                    at: Duration::from_millis(ms),
                    media,
                })
                .collect(),
            media_total: writes.last().map_or(0, |w| w.1),
            body_bytes: 0,
            sent_bytes: 0,
            truncated: false,
        }
    }

    /// Plays the schedule from `start` at normal speed: does it ever wait for audio?
    fn gapless(s: &SendSchedule, start: Duration) -> bool {
        let mut before = 0u64;
        s.writes.iter().all(|w| {
            let reached = start + Duration::from_secs_f64(before as f64 / f64::from(s.rate));
            before = w.media;
            reached >= w.at
        })
    }

    #[test]
    fn limit_is_the_latest_write_against_the_audio_before_it() {
        // 1 kHz media clock for round numbers: 1 s bursts at 0.5 s, 1.0 s, then a stall
        // holds the third until 3.2 s (2 s of audio before it) → limit 1.2 s.
        let s = schedule(1000, &[(500, 1000), (1000, 2000), (3200, 3000)]);
        let limit = s.gapless_start().unwrap();
        assert_eq!(limit, Duration::from_millis(1200));
        assert!(gapless(&s, limit));
        assert!(!gapless(&s, limit - Duration::from_millis(1)));
        // Without the stall the first burst decides.
        let s = schedule(1000, &[(500, 1000), (1000, 2000), (1500, 3000)]);
        assert_eq!(s.gapless_start(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn below_real_time_the_last_write_decides() {
        // 0.5 s of audio every 0.6 s: each write is later than the one before is due.
        let writes: Vec<(u64, u64)> = (1..=10).map(|k| (600 * k, 500 * k)).collect();
        let s = schedule(1000, &writes);
        // Write 10 at 6.0 s with 4.5 s before it.
        assert_eq!(s.gapless_start(), Some(Duration::from_millis(1500)));
        assert!(!gapless(&s, Duration::from_millis(1499)));
    }

    #[test]
    fn parts_played_back_to_back_are_due_after_the_audio_before_them() {
        // A 1 s lead whose second half comes at 0.2 s, and a tail asked for 50 ms later:
        // its first write (at 0.95 s) is due when the lead has played (1 s after the start).
        let lead = schedule(1000, &[(100, 500), (200, 1000)]);
        let mut tail = schedule(1000, &[(900, 1000), (1400, 2000)]);
        tail.arrived = lead.arrived + Duration::from_millis(50);
        assert_eq!(
            gapless_start_of(&[lead.clone(), tail.clone()]),
            Some(Duration::from_millis(100))
        );
        // A tail that is late by 250 ms against that moves the limit to 0.25 s.
        tail.writes[0].at = Duration::from_millis(1200);
        assert_eq!(
            gapless_start_of(&[lead.clone(), tail.clone()]),
            Some(Duration::from_millis(250))
        );
        // One part is the plain limit; an empty part has none.
        assert_eq!(
            gapless_start_of(std::slice::from_ref(&lead)),
            lead.gapless_start()
        );
        assert_eq!(gapless_start_of(&[lead, schedule(1000, &[])]), None);
        assert_eq!(gapless_start_of(&[]), None);
    }

    #[test]
    fn headers_and_no_audio() {
        // Header pages (media 0) never raise the limit above the first audio page.
        let s = schedule(48_000, &[(300, 0), (300, 0), (550, 47_688)]);
        assert_eq!(s.gapless_start(), Some(Duration::from_millis(550)));
        assert_eq!(schedule(48_000, &[(300, 0)]).gapless_start(), None);
        assert_eq!(schedule(48_000, &[]).gapless_start(), None);
        let mut t = schedule(1000, &[(1, 1)]);
        t.truncated = true;
        assert_eq!(t.gapless_start(), None);
    }

    #[test]
    fn the_log_keeps_the_last_responses_per_key() {
        let log = SendLog::default();
        for i in 0..KEEP_PER_KEY + 3 {
            let mut s = schedule(1000, &[]);
            s.request_id = format!("r{i}");
            s.body_bytes = 10;
            log.begin("k", s);
        }
        log.wrote("k", "r18", Duration::from_millis(5), 10, Some(7));
        log.wrote("k", "r0", Duration::from_millis(5), 10, Some(7)); // evicted: ignored
        log.wrote("other", "r18", Duration::from_millis(5), 10, Some(7));
        let got = log.get("k");
        assert_eq!(got.len(), KEEP_PER_KEY);
        assert_eq!(got[0].request_id, "r3");
        let last = got.last().unwrap();
        assert_eq!(last.request_id, "r18");
        assert!(last.complete());
        assert_eq!(
            last.writes,
            vec![SentWrite {
                at: Duration::from_millis(5),
                media: 7
            }]
        );
        assert!(log.get("other").is_empty());
    }
}
