//! Chimes, volume and expiry end to end: the real `herald serve`, unix-socket clients and the CLI,
//! the in-process emulator standing in for OpenAI (its `tone` voice: the same text gives
//! the same samples, so loudness can be compared job to job), and FIFO-backed alsa-lib
//! PCMs drained at 48 kHz by a `FifoClock` standing in for the DAC, which records every
//! sample the daemon played.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::conn::Conn;
use support::daemon::Served;
use support::{Capture, FifoClock};

const KEY: &str = "sk-announce-0123456789abcdefSECRET";
/// About 1.3 s of the emulator's tone (60 ms per character).
const PHRASE: &str = "Volume check, one two.";
/// About 2.8 s of tone.
const LONG: &str = "This announcement runs for about three seconds.";

/// The daemon's config; `extra_audio` goes into `[audio]`, `extra_daemon` into `[daemon]`,
/// `extra` after both (whole tables).
fn config(
    scenario: &str,
    device: &str,
    sock: &Path,
    [extra_audio, extra_daemon, extra]: [&str; 3],
) -> String {
    format!(
        "[api]\napi_base = \"{}\"\nmax_attempts = 1\n\n[audio]\ndevice = \"{device}\"\nrealtime_priority = 0\n{extra_audio}\n\n[cache]\ndir = \"{}\"\n\n[daemon]\nsocket_path = \"{}\"\nidle_close_s = 0\nlead_in_ms = 0\nkeepalive_s = 0\n{extra_daemon}\n\n{extra}",
        support::emulator::shared(KEY).base_url(scenario),
        sock.with_extension("cache").display(),
        sock.display()
    )
}

/// A daemon on a FIFO "DAC" (`fifo`) or the instant `herald_null` device.
struct Daemon {
    /// Dropped (killed) before the clock that drains its FIFO.
    served: Served,
    clock: Option<FifoClock>,
}

impl Daemon {
    fn start(fifo: bool, extra_audio: &str, extra: &str, env: &[(&str, String)]) -> Daemon {
        Daemon::start_on("fast,tone", fifo, [extra_audio, "", extra], env)
    }

    /// [`Daemon::start`] with the emulator playing `scenario` and config additions for
    /// `[audio]`, `[daemon]` and whole tables.
    fn start_on(scenario: &str, fifo: bool, extra: [&str; 3], env: &[(&str, String)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("herald.sock");
        let (device, clock) = if fifo {
            let f = support::claim_fifo();
            // The reader must exist before the daemon opens the device.
            let clock = FifoClock::start(&f.path, 48_000, 1);
            (f.pcm, Some(clock))
        } else {
            ("herald_null".to_string(), None)
        };
        let text = config(scenario, &device, &sock, extra);
        let served = Served::start(dir, sock, &text, KEY, env, Duration::from_secs(20));
        Daemon { served, clock }
    }

    fn conn(&self) -> Conn {
        Conn::open(&self.served.sock)
    }

    /// Stops the daemon and returns what its "DAC" played.
    fn played(mut self) -> Capture {
        let clock = self.clock.take().expect("a FIFO daemon");
        drop(self);
        clock.finish(Duration::from_secs(2))
    }

    fn status(&self) -> Value {
        let mut c = self.conn();
        c.send(json!({"cmd": "status"}));
        c.until("status").pop().unwrap()
    }
}

/// RMS of the middle 60% of each of `n` equal parts of what was played (`n` jobs of the
/// same text, each written in whole periods, follow each other exactly).
fn rms_of_parts(cap: &Capture, n: usize) -> Vec<f64> {
    let part = cap.samples.len() / n;
    (0..n)
        .map(|i| {
            let s = &cap.samples[i * part + part / 5..(i + 1) * part - part / 5];
            let sum: f64 = s.iter().map(|&x| f64::from(x).powi(2)).sum();
            (sum / s.len() as f64).sqrt()
        })
        .collect()
}

/// Plays `volumes` (None: the default) one after another with the same text; returns the
/// `finished` replies.
fn play_at(d: &Daemon, volumes: &[Option<u8>]) -> Vec<Value> {
    let mut c = d.conn();
    for (i, v) in volumes.iter().enumerate() {
        let mut req = json!({"text": PHRASE, "id": format!("v{i}")});
        if let Some(v) = v {
            req["volume"] = json!(v);
        }
        c.send(req);
    }
    (0..volumes.len())
        .map(|i| c.terminal(&format!("v{i}")))
        .collect()
}

fn volumes(finished: &[Value]) -> Vec<u64> {
    finished
        .iter()
        .map(|f| {
            assert_eq!(f["event"], "finished", "{f}");
            f["volume"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn volume_follows_the_cubic_curve_and_max_volume_clamps_what_a_caller_asks() {
    let d = Daemon::start(true, "max_volume = 50", "", &[]);
    // 50, then 100 (clamped to 50), then 25: (25/50)³ = 1/8 of the amplitude.
    let finished = play_at(&d, &[Some(50), Some(100), Some(25)]);
    assert_eq!(
        volumes(&finished),
        [50, 50, 25],
        "finished reports the applied volume"
    );
    let cap = d.played();
    let rms = rms_of_parts(&cap, 3);
    assert!(rms[0] > 300.0, "too quiet to measure: {rms:?}");
    let clamped = rms[1] / rms[0];
    assert!(
        (0.97..=1.03).contains(&clamped),
        "100 clamped to max_volume 50 should sound like 50: ratio {clamped:.3} ({rms:?})"
    );
    let curve = rms[2] / rms[0];
    assert!(
        (0.115..=0.135).contains(&curve),
        "volume 25 vs 50 should be 0.125 of the amplitude (cubic): {curve:.4} ({rms:?})"
    );
    // No click where one job's gain gives way to the next: every job starts at its own
    // gain, and the tone itself moves at most ~250 per sample.
    let step = cap
        .samples
        .windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0);
    assert!(step < 2000, "a click: step of {step}");
}

/// `TZ` for a process whose local time is now about `hh:mm` (a fixed offset east of UTC).
/// glibc reads it like any time zone, so it stands in for a box set to a zone where it is
/// night (or day) without touching the machine's clock.
fn tz_where_it_is(hh: i64, mm: i64) -> String {
    let utc = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let utc_min = (utc / 60) % 1440;
    let east = (hh * 60 + mm - utc_min).rem_euclid(1440);
    // POSIX offsets are west of UTC: "-hh:mm" is east.
    format!("HRL-{:02}:{:02}", east / 60, east % 60)
}

const QUIET: &str = "\n[[audio.quiet_hours]]\nfrom = \"22:00\"\nto = \"07:00\"\nmax_volume = 30\n";

#[test]
fn quiet_hours_spanning_midnight_cap_the_volume_at_night_and_not_by_day() {
    // 23:30 local: inside 22:00–07:00, across midnight.
    let night = Daemon::start(true, QUIET, "", &[("TZ", tz_where_it_is(23, 30))]);
    assert_eq!(night.status()["max_volume"], 30);
    // Asked 30, then the default (100): both play at 30; 15 is below the cap, at 1/8 of
    // 30's amplitude, so the gain is really applied.
    let finished = play_at(&night, &[Some(30), None, Some(15)]);
    assert_eq!(volumes(&finished), [30, 30, 15]);
    let rms = rms_of_parts(&night.played(), 3);
    let capped = rms[1] / rms[0];
    assert!(
        (0.97..=1.03).contains(&capped) && rms[0] > 30.0,
        "the default volume in quiet hours should sound like 30: {capped:.3} ({rms:?})"
    );
    let below = rms[2] / rms[0];
    assert!(
        (0.115..=0.135).contains(&below),
        "15 vs 30 should be 0.125 of the amplitude: {below:.4} ({rms:?})"
    );
    // 12:00 local: the same config plays at full volume.
    let day = Daemon::start(false, QUIET, "", &[("TZ", tz_where_it_is(12, 0))]);
    assert_eq!(day.status()["max_volume"], 100);
    assert_eq!(volumes(&play_at(&day, &[None, Some(60)])), [100, 60]);
}

#[test]
fn a_queued_job_expires_on_time_unplayed_and_the_rest_of_the_queue_plays() {
    let d = Daemon::start(true, "", "", &[]);
    let mut c = d.conn();
    // The first job has an expiry too, but starts at once: a playing job is never cut.
    c.send(json!({"text": LONG, "id": "a", "expires_in_s": 0.5}));
    c.until("started");
    let sent = Instant::now();
    c.send(json!({"text": LONG, "id": "b", "expires_in_s": 1.0}));
    c.send(json!({"text": "Then this one.", "id": "c"}));
    // `herald say` waits for its job and fails when it expires.
    let config = d.served.config.clone();
    let say = std::thread::spawn(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--config")
            .arg(config)
            .args(["say", "--expires-in", "1.5", "--id", "d", LONG])
            .output()
            .unwrap()
    });
    let expired = c.terminal("b");
    let waited = sent.elapsed();
    assert_eq!(expired["event"], "expired", "{expired}");
    assert!(
        (Duration::from_millis(950)..Duration::from_millis(1500)).contains(&waited),
        "expired after {waited:?}, asked 1.0 s"
    );
    let waited_ms = expired["waited_ms"].as_u64().unwrap();
    assert!((1000..1400).contains(&waited_ms), "{expired}");
    let reason = expired["reason"].as_str().unwrap();
    assert!(
        reason.contains("expires_in_s = 1") && reason.contains("without playing"),
        "{reason}"
    );
    let out = say.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "herald say succeeded: {stderr}");
    assert!(
        stderr.contains("d expired") && stderr.contains("expires_in_s = 1.5"),
        "{stderr}"
    );
    let a = c.terminal("a");
    assert_eq!(a["event"], "finished", "{a}");
    let then = c.terminal("c");
    assert_eq!(then["event"], "finished", "{then}");
    let counters = d.status()["counters"].clone();
    assert_eq!(counters["expired"], 2, "{counters}");
    assert_eq!(counters["finished"], 2, "{counters}");
    // The device played a and c, and nothing of b or d (each 2.8 s).
    let heard_ms = a["duration_ms"].as_u64().unwrap() + then["duration_ms"].as_u64().unwrap();
    let cap = d.played();
    let played_ms = cap.samples.len() as u64 / 48;
    assert!(
        played_ms.abs_diff(heard_ms) < 100,
        "played {played_ms} ms, the two jobs that ran last {heard_ms} ms"
    );
}

#[test]
fn bad_volumes_and_expiries_are_refused_naming_the_field_and_nothing_else_is_lost() {
    let d = Daemon::start(false, "", "[presets.bell]\ntext = \"Bell.\"\n", &[]);
    let mut c = d.conn();
    for (req, needles) in [
        (
            json!({"text": "x", "volume": 101}),
            &["volume 101", "0 = silent to 100"][..],
        ),
        (
            json!({"text": "x", "volume": "loud"}),
            &["expected a volume", "0 = silent to 100"],
        ),
        (json!({"text": "x", "volume": 12.5}), &["volume 12.5"]),
        (
            json!({"text": "x", "expires_in_s": 0}),
            &["expires_in_s 0 is not allowed", "seconds above 0"],
        ),
        (
            json!({"text": "x", "expires_in_s": "soon"}),
            &["expected expires_in_s", "seconds above 0"],
        ),
        (
            json!({"cmd": "preset", "name": "bell", "volume": -1}),
            &["preset:", "volume -1"],
        ),
    ] {
        c.refused(&req, needles);
    }
    c.send(json!({"text": "Still here.", "id": "ok", "volume": 0}));
    let r = c.terminal("ok");
    assert_eq!(
        (r["event"].as_str(), r["volume"].as_u64()),
        (Some("finished"), Some(0))
    );
    let out = d.served.herald(&["say", "--volume", "150", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("volume 150 is not allowed"),
        "{stderr}"
    );
}

/// The chime shipped in the package (made by scripts/make-chime.py), 48 kHz mono.
fn shipped_chime() -> (std::path::PathBuf, Vec<i16>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/chimes/ding.wav");
    let (spec, samples) = support::reference::read_wav(&path);
    assert_eq!((spec.sample_rate, spec.channels), (48_000, 1));
    (path, samples)
}

/// Where `needle` starts in `haystack` at or after `from`, sample-exact.
fn find(haystack: &[i16], needle: &[i16], from: usize) -> Option<usize> {
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// `[chimes]` tables: the shipped chime as "ding", and one whose file does not exist.
fn chime_tables() -> String {
    format!(
        "[chimes.ding]\nfile = \"{}\"\n\n[chimes.broken]\nfile = \"/nonexistent/broken.opus\"\n",
        shipped_chime().0.display()
    )
}

#[test]
fn the_chime_plays_while_a_slow_api_answers_and_the_speech_follows_it_without_a_gap() {
    // The API takes a second to its first byte (a slow link, a cold model).
    let sc = "fast,tone,ttfb=1000";
    let tables = chime_tables();
    let daemon = "chime = \"ding\"\nchime_gap_ms = 150";
    let d = Daemon::start_on(sc, true, ["", daemon, &tables], &[]);
    let mut c = d.conn();
    // Open the device first (no chime), as on an appliance that has spoken before.
    c.send(json!({"text": "Warm.", "id": "w", "chime": false}));
    assert_eq!(c.terminal("w")["event"], "finished");
    let sent = Instant::now();
    c.send(json!({"text": PHRASE, "id": "c", "chime_after": "ding"}));
    let started = c.until("started");
    let heard_after = sent.elapsed();
    // Heard long before the API's first byte (1 s): the chime hides the fetch.
    assert!(
        heard_after < Duration::from_millis(600),
        "the chime started {heard_after:?} after the request"
    );
    let start_ms = started.last().unwrap()["start_to_audio_ms"]
        .as_u64()
        .unwrap();
    assert!(start_ms < 600, "{started:?}");
    let f = c.terminal("c");
    assert_eq!(
        (f["event"].as_str(), f["chime"].as_str()),
        (Some("finished"), Some("ding")),
        "{f}"
    );
    assert_eq!(f["stalls"], 0, "{f}");
    let cap = d.played();
    // Chime, the speech sample-exact, the end chime; each join is chime_gap_ms of silence
    // (give or take the start rule and a period).
    let (_, chime) = shipped_chime();
    let body =
        herald_emulator::expected_body(sc, PHRASE, "alloy", 1.0, herald::tts::AudioFormat::Opus)
            .unwrap();
    let speech = support::reference::decode_ogg_opus(&body, 48_000);
    let ms = |frames: usize| frames as f64 / 48.0;
    let at = find(&cap.samples, &chime, 0).expect("the chime was not played intact");
    // From the chime on, the DAC never waits (the idle device before it may).
    let gaps: Vec<_> = cap
        .gaps
        .iter()
        .filter(|g| g.at.as_secs_f64() * 48_000.0 >= at as f64)
        .collect();
    assert!(gaps.is_empty(), "gaps at the DAC: {gaps:?}");
    let speech_at =
        find(&cap.samples, &speech, at + chime.len()).expect("the speech was not played intact");
    let gap = ms(speech_at - at - chime.len());
    assert!(
        (140.0..=400.0).contains(&gap),
        "chime → speech: {gap:.0} ms of silence"
    );
    assert!(
        cap.samples[at + chime.len()..speech_at]
            .iter()
            .all(|&s| s == 0),
        "noise between the chime and the speech"
    );
    let end = speech_at + speech.len();
    let after = find(&cap.samples, &chime, end).expect("the end chime was not played");
    let gap_after = ms(after - end);
    assert!(
        (140.0..=400.0).contains(&gap_after),
        "speech → end chime: {gap_after:.0} ms"
    );
}

#[test]
fn chime_choices_and_bad_chimes_get_clear_answers_and_the_daemon_serves_on() {
    let tables = chime_tables();
    let d = Daemon::start_on("fast,tone", false, ["", "chime = \"ding\"", &tables], &[]);
    let mut c = d.conn();
    let reply = |c: &mut Conn, req: Value| {
        let id = req["id"].as_str().unwrap().to_string();
        c.send(req);
        c.terminal(&id)
    };
    // The default chime, none, and a file that cannot be read: played without it, and said.
    let r = reply(&mut c, json!({"text": "One.", "id": "default"}));
    assert_eq!(r["chime"], "ding", "{r}");
    let r = reply(&mut c, json!({"text": "Two.", "id": "off", "chime": false}));
    assert_eq!(
        (r["event"].as_str(), r.get("chime")),
        (Some("finished"), None),
        "{r}"
    );
    let r = reply(
        &mut c,
        json!({"text": "Three.", "id": "broken", "chime": "broken"}),
    );
    assert_eq!(r["event"], "finished", "{r}");
    let why = r["chime_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("chime 'broken'") && why.contains("/nonexistent/broken.opus"),
        "{r}"
    );
    // Unknown names and wrong types are refused, naming the field and what is allowed.
    for (req, needles) in [
        (
            json!({"text": "x", "id": "u", "chime": "gong"}),
            vec!["chime: unknown chime 'gong'", "configured: broken, ding"],
        ),
        (
            json!({"text": "x", "id": "ua", "chime_after": "gong"}),
            vec!["chime_after: unknown chime 'gong'"],
        ),
        (json!({"text": "x", "id": "t", "chime": 5}), vec!["chime"]),
    ] {
        c.refused(&req, &needles);
    }
    let out = d.served.herald(&["say", "--chime", "gong", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("unknown chime 'gong'"),
        "{stderr}"
    );
    let r = reply(&mut c, json!({"text": "Still here.", "id": "ok"}));
    assert_eq!(r["event"], "finished", "{r}");
    // The unusable file was reported when the daemon started, naming it.
    assert!(
        d.served.log().contains("/nonexistent/broken.opus"),
        "{}",
        d.served.log()
    );
    // `herald check` says the same before anyone relies on it, and what stands in when the
    // API can't be reached.
    let out = d.served.herald(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("chime: 'ding'") && text.contains("plays, 900 ms"),
        "{text}"
    );
    assert!(
        text.contains("chime: warning: chime 'broken'")
            && text.contains("/nonexistent/broken.opus"),
        "{text}"
    );
    assert!(text.contains("fallback voice: espeak-ng found"), "{text}");
}
