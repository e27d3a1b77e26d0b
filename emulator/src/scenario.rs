//! Scenarios: the path segment before `/v1` (`/wifi,seed=3/v1`) selects timing and faults.

use std::time::Duration;

use crate::EmulatorError;

/// Faults that replace or break a successful response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Accept the request and never answer.
    Hang,
    /// Send the headers and about one page of audio, then nothing (connection stays open).
    HangBody,
    /// Close the connection mid-stream after about one page of audio.
    Drop,
    /// 200 with an HTML page.
    Garbage,
    /// 200 with a JSON error body.
    Json200,
    /// Damage one Ogg page (index counted from 0 = OpusHead) so its CRC fails.
    Corrupt(usize),
}

/// An HTTP error status to answer with, `times` times per scenario key (`None` = always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fail {
    /// The status (400..=599).
    pub status: u16,
    /// How many requests fail before the scenario succeeds; `None` = every request.
    pub times: Option<u64>,
}

/// A parsed scenario: timing model plus faults. See docs/EMULATOR.md.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Delay from the request to the first body byte.
    pub ttfb: Duration,
    /// Generation speed in multiples of real time.
    pub speed: f64,
    /// Bytes per socket write.
    pub chunk: usize,
    /// Mean time between random stalls (`None` = no random stalls).
    pub stall_every: Option<Duration>,
    /// Shortest random stall.
    pub stall_min: Duration,
    /// Longest random stall.
    pub stall_max: Duration,
    /// Explicit stalls: (start after the request, length).
    pub stalls: Vec<(Duration, Duration)>,
    /// Answer with an error status.
    pub fail: Option<Fail>,
    /// Break the response.
    pub fault: Option<Fault>,
    /// Use the ~790-byte zero-padded OpusTags page.
    pub padded_tags: bool,
    /// Seed for the stall RNG (`None` = the emulator's seed).
    pub seed: Option<u64>,
    /// Stalls independent of the scenario key: mixed with the request's number only, so the
    /// nth request of every key with this option sees the same pattern (`shared-stalls`).
    pub shared_stalls: bool,
    /// `Retry-After` seconds on 429/503 (`None` = header omitted).
    pub retry_after_s: Option<u64>,
    /// `retry-after-ms` on 429/503 (`None` = header omitted).
    pub retry_after_ms: Option<u64>,
    /// Always synthesize a tone (60 ms per character) instead of espeak-ng speech.
    pub tone: bool,
}

impl Default for Scenario {
    /// The plain `/v1` behaviour: TTFB 300 ms, 4× real time, 4096-byte writes.
    fn default() -> Self {
        Scenario {
            ttfb: Duration::from_millis(300),
            speed: 4.0,
            chunk: 4096,
            stall_every: None,
            stall_min: Duration::from_millis(150),
            stall_max: Duration::from_millis(1000),
            stalls: Vec::new(),
            fail: None,
            fault: None,
            padded_tags: false,
            seed: None,
            shared_stalls: false,
            retry_after_s: Some(1),
            retry_after_ms: Some(1000),
            tone: false,
        }
    }
}

/// Every option name, for error messages.
pub const OPTIONS: &str = "fast, realtime, slow, under, wifi, wifi-long, ttfb=MS, speed=X, chunk=BYTES, \
stall-every=MS, stall-min=MS, stall-max=MS, stall=AT_MS+LEN_MS, fail=STATUS[xN], hang, \
hang-body, drop, garbage, json200, corrupt[=PAGE], padded-tags, seed=N, shared-stalls, retry-after=S|none, \
retry-after-ms=MS|none, id=NAME, tone";

impl Scenario {
    /// Parses a scenario segment on top of `base` (options apply left to right).
    pub fn parse_onto(base: Scenario, spec: &str) -> Result<Scenario, EmulatorError> {
        let mut s = base;
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            let bad = |reason: String| EmulatorError::Scenario {
                scenario: spec.to_string(),
                reason,
            };
            let need =
                || value.ok_or_else(|| bad(format!("option '{key}' needs a value ({key}=...)")));
            let ms = || -> Result<Duration, EmulatorError> {
                let v = need()?;
                v.parse::<u64>()
                    .ok()
                    .filter(|&n| n <= 3_600_000)
                    .map(Duration::from_millis)
                    .ok_or_else(|| bad(format!("{key}={v}: expected milliseconds 0..=3600000")))
            };
            let flag = || match value {
                None => Ok(()),
                Some(v) => Err(bad(format!("option '{key}' takes no value (got '{v}')"))),
            };
            match key {
                "fast" => {
                    flag()?;
                    s.ttfb = Duration::ZERO;
                    s.speed = 50.0;
                    s.stall_every = None;
                }
                "realtime" => {
                    flag()?;
                    let d = Scenario::default();
                    s.ttfb = d.ttfb;
                    s.speed = d.speed;
                    s.stall_every = None;
                }
                "slow" => {
                    flag()?;
                    s.ttfb = Duration::from_millis(1000);
                    s.speed = 1.15;
                    s.stall_every = None;
                }
                // Generation below real time (an overloaded server): every second of
                // audio arrives later than the one before is due, so no start short of
                // (almost) the whole utterance is gapless at normal speed.
                "under" => {
                    flag()?;
                    s.ttfb = Duration::from_millis(1000);
                    s.speed = 0.85;
                    s.stall_every = None;
                }
                "wifi" => {
                    flag()?;
                    s.ttfb = Duration::from_millis(400);
                    s.speed = 2.5;
                    s.stall_every = Some(Duration::from_millis(2000));
                    s.stall_min = Duration::from_millis(150);
                    s.stall_max = Duration::from_millis(1000);
                }
                // A bad link: stalls of 1–2.5 s (roaming, a microwave oven), longer than any
                // fixed reserve a latency-minded client would hold. They come often enough
                // that the first one usually lands in the first ~2 s, where it decides the
                // gapless start: later ones meet a buffer that 2× generation has filled.
                "wifi-long" => {
                    flag()?;
                    s.ttfb = Duration::from_millis(400);
                    s.speed = 2.0;
                    s.stall_every = Some(Duration::from_millis(1500));
                    s.stall_min = Duration::from_millis(1000);
                    s.stall_max = Duration::from_millis(2500);
                }
                "ttfb" => s.ttfb = ms()?,
                "speed" => {
                    let v = need()?;
                    s.speed = v
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && (0.05..=1000.0).contains(x))
                        .ok_or_else(|| {
                            bad(format!("speed={v}: expected 0.05..=1000 (× real time)"))
                        })?;
                }
                "chunk" => {
                    let v = need()?;
                    s.chunk = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1 << 20).contains(n))
                        .ok_or_else(|| bad(format!("chunk={v}: expected bytes 1..=1048576")))?;
                }
                "stall-every" => {
                    let d = ms()?;
                    s.stall_every = (!d.is_zero()).then_some(d);
                }
                "stall-min" => s.stall_min = ms()?,
                "stall-max" => s.stall_max = ms()?,
                "stall" => {
                    let v = need()?;
                    let parsed = v
                        .split_once('+')
                        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
                    let (at, len) = parsed.ok_or_else(|| {
                        bad(format!(
                            "stall={v}: expected AT_MS+LEN_MS, e.g. stall=1000+800"
                        ))
                    })?;
                    s.stalls
                        .push((Duration::from_millis(at), Duration::from_millis(len)));
                }
                "fail" => {
                    let v = need()?;
                    let (status, times) = match v.split_once('x') {
                        Some((st, n)) => (st, Some(n)),
                        None => (v, None),
                    };
                    let status = status
                        .parse::<u16>()
                        .ok()
                        .filter(|st| (400..=599).contains(st))
                        .ok_or_else(|| {
                            bad(format!(
                                "fail={v}: expected a status 400..=599, optionally xN (fail=429x2)"
                            ))
                        })?;
                    let times = match times {
                        None => None,
                        Some(n) => Some(n.parse::<u64>().map_err(|_| {
                            bad(format!("fail={v}: the count after 'x' must be a number"))
                        })?),
                    };
                    s.fail = Some(Fail { status, times });
                }
                "hang" => {
                    flag()?;
                    s.fault = Some(Fault::Hang);
                }
                "hang-body" => {
                    flag()?;
                    s.fault = Some(Fault::HangBody);
                }
                "drop" => {
                    flag()?;
                    s.fault = Some(Fault::Drop);
                }
                "garbage" => {
                    flag()?;
                    s.fault = Some(Fault::Garbage);
                }
                "json200" => {
                    flag()?;
                    s.fault = Some(Fault::Json200);
                }
                "corrupt" => {
                    let page = match value {
                        None => 2,
                        Some(v) => v.parse::<usize>().map_err(|_| {
                            bad(format!("corrupt={v}: expected an Ogg page index (0 = OpusHead, 2 = first audio page)"))
                        })?,
                    };
                    s.fault = Some(Fault::Corrupt(page));
                }
                "padded-tags" => {
                    flag()?;
                    s.padded_tags = true;
                }
                "tone" => {
                    flag()?;
                    s.tone = true;
                }
                "seed" => {
                    let v = need()?;
                    s.seed = Some(
                        v.parse::<u64>()
                            .map_err(|_| bad(format!("seed={v}: expected an unsigned integer")))?,
                    );
                }
                "shared-stalls" => {
                    flag()?;
                    s.shared_stalls = true;
                }
                "retry-after" => {
                    let v = need()?;
                    if v == "none" {
                        s.retry_after_s = None;
                        s.retry_after_ms = None;
                    } else {
                        let secs = v.parse::<u64>().map_err(|_| {
                            bad(format!("retry-after={v}: expected seconds or 'none'"))
                        })?;
                        s.retry_after_s = Some(secs);
                        s.retry_after_ms = Some(secs * 1000);
                    }
                }
                "retry-after-ms" => {
                    let v = need()?;
                    if v == "none" {
                        s.retry_after_ms = None;
                    } else {
                        let ms = v.parse::<u64>().map_err(|_| {
                            bad(format!(
                                "retry-after-ms={v}: expected milliseconds or 'none'"
                            ))
                        })?;
                        s.retry_after_ms = Some(ms);
                        // Keep the seconds header consistent (rounded up) when it is sent.
                        if s.retry_after_s.is_some() {
                            s.retry_after_s = Some(ms.div_ceil(1000));
                        }
                    }
                }
                // Only isolates counters: the whole segment is the counter key.
                "id" => {
                    need()?;
                }
                other => {
                    return Err(bad(format!(
                        "unknown option '{other}' (allowed: {OPTIONS})"
                    )))
                }
            }
        }
        if s.stall_min > s.stall_max {
            return Err(EmulatorError::Scenario {
                scenario: spec.to_string(),
                reason: format!(
                    "stall-min {:?} is longer than stall-max {:?}",
                    s.stall_min, s.stall_max
                ),
            });
        }
        Ok(s)
    }

    /// Parses a scenario segment on top of the plain defaults.
    pub fn parse(spec: &str) -> Result<Scenario, EmulatorError> {
        Scenario::parse_onto(Scenario::default(), spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_options_apply_left_to_right() {
        let s = Scenario::parse("wifi,seed=3,speed=3").unwrap();
        assert_eq!(s.speed, 3.0);
        assert_eq!(s.seed, Some(3));
        assert!(s.stall_every.is_some());
        let s = Scenario::parse("ttfb=300,speed=1.15,chunk=512").unwrap();
        assert_eq!(s.ttfb, Duration::from_millis(300));
        assert_eq!(s.chunk, 512);
        let s = Scenario::parse("fail=429x2,id=abc").unwrap();
        assert_eq!(
            s.fail,
            Some(Fail {
                status: 429,
                times: Some(2)
            })
        );
        assert_eq!(
            Scenario::parse("fail=401").unwrap().fail.unwrap().times,
            None
        );
        assert_eq!(
            Scenario::parse("corrupt").unwrap().fault,
            Some(Fault::Corrupt(2))
        );
        let s = Scenario::parse("retry-after-ms=200").unwrap();
        assert_eq!((s.retry_after_s, s.retry_after_ms), (Some(1), Some(200)));
        let s = Scenario::parse("stall=1000+800").unwrap();
        assert_eq!(
            s.stalls,
            vec![(Duration::from_millis(1000), Duration::from_millis(800))]
        );
    }

    #[test]
    fn new_profiles_and_the_old_ones_unchanged() {
        let s = Scenario::parse("under").unwrap();
        assert_eq!((s.ttfb, s.speed, s.stall_every), (ms(1000), 0.85, None));
        let s = Scenario::parse("wifi-long").unwrap();
        assert_eq!(
            (s.ttfb, s.speed, s.stall_every, s.stall_min, s.stall_max),
            (ms(400), 2.0, Some(ms(1500)), ms(1000), ms(2500))
        );
        // Tests and recorded benchmarks rely on these staying exactly as they were.
        let s = Scenario::parse("wifi").unwrap();
        assert_eq!(
            (s.ttfb, s.speed, s.stall_every, s.stall_min, s.stall_max),
            (ms(400), 2.5, Some(ms(2000)), ms(150), ms(1000))
        );
        let s = Scenario::parse("slow").unwrap();
        assert_eq!((s.ttfb, s.speed, s.stall_every), (ms(1000), 1.15, None));
        let s = Scenario::parse("fast").unwrap();
        assert_eq!((s.ttfb, s.speed, s.stall_every), (ms(0), 50.0, None));
        // A later preset replaces the stall settings of an earlier one.
        let s = Scenario::parse("wifi-long,under").unwrap();
        assert_eq!((s.speed, s.stall_every), (0.85, None));
        assert!(!Scenario::parse("wifi").unwrap().shared_stalls);
        assert!(Scenario::parse("wifi,shared-stalls").unwrap().shared_stalls);
        assert!(Scenario::parse("shared-stalls=1").is_err());
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bad_options_say_what_is_allowed() {
        for bad in [
            "wify",
            "speed=0",
            "chunk=0",
            "fail=200",
            "fail=429xx",
            "stall=5",
            "hang=1",
            "ttfb",
        ] {
            let e = Scenario::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
        }
        assert!(Scenario::parse("nope")
            .unwrap_err()
            .to_string()
            .contains("allowed"));
    }
}
