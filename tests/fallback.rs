//! The local voice when OpenAI can't be reached (issue 10, part 3), end to end: the real
//! `herald serve` on a FIFO-clocked alsa-lib device (support::FifoClock drains it at 48 kHz
//! like a DAC), the in-process emulator producing every fault that means "the API can't be
//! had" (and a port where nothing listens: connection refused), and the real `espeak-ng`
//! program as the fallback. The text must be heard — non-silent audio as long as
//! espeak-ng's own rendering of it — the reply must name the API's error and the fallback,
//! and the daemon must keep serving. `"fallback": false` and a caller's own error (HTTP 400)
//! fail as before.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_emulator::EmulatorHandle;
use serde_json::{json, Value};
use support::daemon::Served;
use support::{claim_fifo, Capture, FifoClock, FifoPcm};

const KEY: &str = "sk-fallback-0123456789abcdefSECRET";
/// About 1.8 s in espeak-ng's voice.
const TEXT: &str = "The washing machine has finished.";
/// The API's patience, kept short so every fault gives up within about a second.
const QUICK_API: &str = "max_attempts = 2\nconnect_timeout_ms = 500\nfirst_byte_timeout_ms = 500\nstall_timeout_ms = 500\nfirst_audio_deadline_ms = 1000\n";
/// Hang guard for any one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// A sample louder than this (about -40 dBFS) is sound, not silence.
const SOUND: i16 = 330;

fn emu() -> &'static EmulatorHandle {
    support::emulator::shared(KEY)
}

/// An API base where nothing listens: connection refused.
fn refused_base() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/v1")
}

fn config(api_base: &str, device: &str, sock: &Path, extra: &str) -> String {
    format!(
        "[api]\napi_base = \"{api_base}\"\n{QUICK_API}\n[audio]\ndevice = \"{device}\"\nrealtime_priority = 0\n\n[cache]\ndir = \"{}\"\n\n[daemon]\nsocket_path = \"{}\"\nidle_close_s = 0\nlead_in_ms = 0\nkeepalive_s = 0\n\n{extra}",
        sock.with_extension("cache").display(),
        sock.display()
    )
}

fn serve(api_base: &str, device: &str, extra: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("herald.sock");
    let text = config(api_base, device, &sock, extra);
    Served::start(dir, sock, &text, KEY, &[], Duration::from_secs(20))
}

/// Sends `req` on a new connection; returns every reply up to the terminal one.
fn request(sock: &Path, req: Value) -> Vec<Value> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut replies = Vec::new();
    for line in BufReader::new(s).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let terminal = matches!(
            v["event"].as_str(),
            Some("finished" | "failed" | "cancelled" | "interrupted" | "ok" | "status")
        );
        replies.push(v);
        if terminal {
            return replies;
        }
    }
    panic!("the daemon closed the connection early: {replies:?}")
}

fn terminal(replies: &[Value]) -> &Value {
    replies.last().unwrap()
}

/// espeak-ng's own rendering of `text` with the default `[fallback]` (voice en, 175 wpm):
/// 22050 Hz mono samples.
fn espeak_reference(text: &str) -> Vec<i16> {
    let mut child = Command::new("espeak-ng")
        .args(["--stdout", "--stdin", "-b", "1", "-v", "en", "-s", "175"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("espeak-ng must be installed (scripts/setup.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // The 44-byte header of a streamed WAV, then s16le samples.
    out.stdout[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Seconds from the first to the last sound in `samples` at `rate`, and the RMS over them.
fn heard(samples: &[i16], rate: u32) -> (f64, f64) {
    let first = samples.iter().position(|s| s.unsigned_abs() > SOUND as u16);
    let last = samples
        .iter()
        .rposition(|s| s.unsigned_abs() > SOUND as u16);
    let (Some(a), Some(b)) = (first, last) else {
        return (0.0, 0.0);
    };
    let sum: f64 = samples[a..=b].iter().map(|&s| f64::from(s).powi(2)).sum();
    let rms = (sum / (b - a + 1) as f64).sqrt();
    ((b - a) as f64 / f64::from(rate), rms)
}

/// The reference length of `text` in espeak-ng's voice, in seconds.
fn reference_s(text: &str) -> f64 {
    heard(&espeak_reference(text), 22_050).0
}

/// What one announcement through a daemon on `fifo` did: its replies and what the "DAC"
/// heard. The daemon answers a `status` afterwards (it keeps serving) and is then stopped,
/// which closes the FIFO and ends the capture.
fn announce(
    fifo: &FifoPcm,
    api_base: &str,
    extra: &str,
    req: Value,
) -> (Vec<Value>, Capture, Value) {
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let d = serve(api_base, &fifo.pcm, extra);
    let replies = request(&d.sock, req);
    let status = terminal(&request(&d.sock, json!({"cmd": "status"}))).clone();
    assert!(!d.log().contains(KEY), "the API key reached the log");
    drop(d);
    (replies, clock.finish(Duration::from_secs(2)), status)
}

/// `replies` end in `finished` by the fallback, naming the API's error (`expect`).
fn assert_spoken_by_fallback(case: &str, replies: &[Value], expect: &str) -> Value {
    let end = terminal(replies).clone();
    assert_eq!(end["event"], "finished", "{case}: {replies:?}");
    assert_eq!(end["voice"], "fallback", "{case}: {end}");
    assert_eq!(end["engine"], "espeak-ng", "{case}: {end}");
    let api_error = end["api_error"].as_str().unwrap_or_default();
    assert!(
        api_error.contains(expect),
        "{case}: expected '{expect}' in {end}"
    );
    assert!(!end.to_string().contains(KEY), "{case}: the key in a reply");
    assert!(
        replies.iter().any(|r| r["event"] == "started"),
        "{case}: no started reply: {replies:?}"
    );
    end
}

/// The whole text was heard at the device: sound about as long as espeak-ng's own
/// rendering (plus, after a mid-stream failure, up to `api_extra_s` of the API's audio).
fn assert_heard(case: &str, capture: &Capture, reference_s: f64, api_extra_s: f64) -> f64 {
    let (got_s, rms) = heard(&capture.samples, 48_000);
    assert!(
        got_s >= reference_s * 0.95 && got_s <= reference_s * 1.05 + api_extra_s,
        "{case}: heard {got_s:.2} s of sound, espeak-ng's own rendering is {reference_s:.2} s"
    );
    assert!(
        rms > 1000.0,
        "{case}: too quiet to be speech (RMS {rms:.0})"
    );
    got_s
}

/// Runs each (scenario, expected API error, API audio that may precede the fallback in
/// seconds) on a fresh daemon; the job is spoken by the fallback and the daemon serves on.
fn check_faults(cases: &[(&str, &str, f64)]) {
    let fifo = claim_fifo();
    let reference = reference_s(TEXT);
    for &(scenario, expect, api_extra_s) in cases {
        let base = if scenario == "refused" {
            refused_base()
        } else {
            emu().base_url(&format!("{scenario},id=fb-{scenario}"))
        };
        let started = Instant::now();
        let (replies, capture, status) =
            announce(&fifo, &base, "", json!({"text": TEXT, "id": "j"}));
        let end = assert_spoken_by_fallback(scenario, &replies, expect);
        let got_s = assert_heard(scenario, &capture, reference, api_extra_s);
        assert!(
            capture.gaps.is_empty(),
            "{scenario}: gaps {:?}",
            capture.gaps
        );
        assert_eq!(status["counters"]["finished"], 1, "{scenario}: {status}");
        eprintln!(
            "{scenario}: heard {got_s:.2} s (espeak-ng: {reference:.2} s); {} in {:.1} s, fallback_to_audio_ms {}",
            end["api_error"],
            started.elapsed().as_secs_f64(),
            end["fallback_to_audio_ms"]
        );
    }
}

#[test]
fn http_errors_after_the_retries_are_spoken_by_the_fallback() {
    check_faults(&[
        ("fast,fail=500", "HTTP 500", 0.0),
        (
            "fast,fail=503,retry-after=none,retry-after-ms=none",
            "HTTP 503",
            0.0,
        ),
        ("fast,fail=401", "HTTP 401", 0.0),
        ("fast,fail=403", "HTTP 403", 0.0),
        (
            "fast,fail=429,retry-after=none,retry-after-ms=none",
            "HTTP 429",
            0.0,
        ),
        ("fast,garbage", "not opus audio", 0.0),
        ("fast,json200", "not opus audio", 0.0),
    ]);
}

#[test]
fn a_dead_network_or_a_broken_stream_is_spoken_by_the_fallback() {
    // A stream that breaks mid-way may have played some of the API's audio first: the
    // fallback then speaks the segment again, whole.
    check_faults(&[
        ("refused", "connection refused", 0.0),
        ("fast,hang", "no audio from the API", 0.0),
        ("fast,hang-body", "timed out", 2.5),
        ("fast,drop", "broke", 2.5),
        ("fast,corrupt", "CRC", 2.5),
    ]);
}

#[test]
fn with_fallback_false_or_a_callers_error_the_job_fails_as_before() {
    let d = serve(
        &emu().base_url("fast,fail=500,id=fb-off"),
        "herald_null",
        "",
    );
    let r = request(
        &d.sock,
        json!({"text": TEXT, "id": "off", "fallback": false}),
    );
    let end = terminal(&r);
    assert_eq!(end["event"], "failed", "{r:?}");
    assert!(
        end["reason"].as_str().unwrap().contains("HTTP 500"),
        "{end}"
    );
    assert!(end.get("voice").is_none() && !r.iter().any(|x| x["event"] == "started"));
    // herald say --no-fallback is the same request.
    let out = d.herald(&["say", "--no-fallback", "Nobody hears this."]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 500"));
    // Without the flag, the same daemon speaks it locally, and the client says so.
    let out = d.herald(&["say", TEXT]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("spoken by the fallback voice (espeak-ng)") && said.contains("HTTP 500"),
        "{said}"
    );

    // 400 is the caller's request refused: no other voice hides it.
    let d = serve(
        &emu().base_url("fast,fail=400,id=fb-400"),
        "herald_null",
        "",
    );
    let r = request(&d.sock, json!({"text": TEXT, "id": "bad"}));
    let end = terminal(&r);
    assert_eq!(end["event"], "failed", "{r:?}");
    assert!(
        end["reason"].as_str().unwrap().contains("HTTP 400"),
        "{end}"
    );
    assert!(!d.log().contains("fallback voice speaks"), "{}", d.log());
}

#[test]
fn when_the_fallback_fails_too_the_reply_names_both_errors_and_the_daemon_serves_on() {
    // A voice espeak-ng does not have: it exits with its own message.
    let extra = "[fallback]\nvoice = \"xx-none\"\n";
    let d = serve(
        &emu().base_url("fast,fail=503,retry-after=none,retry-after-ms=none,id=fb-both"),
        "herald_null",
        extra,
    );
    let r = request(&d.sock, json!({"text": TEXT, "id": "both"}));
    let end = terminal(&r);
    assert_eq!(end["event"], "failed", "{r:?}");
    let reason = end["reason"].as_str().unwrap();
    assert!(
        reason.contains("HTTP 503")
            && reason.contains("the fallback voice (espeak-ng) failed too")
            && reason.contains("voice does not exist"),
        "{reason}"
    );
    let status = terminal(&request(&d.sock, json!({"cmd": "status"}))).clone();
    assert_eq!(status["counters"]["failed"], 1, "{status}");
    // engine = "none" is no fallback at all: the API's error alone.
    let d = serve(
        &refused_base(),
        "herald_null",
        "[fallback]\nengine = \"none\"\n",
    );
    let end = terminal(&request(&d.sock, json!({"text": TEXT}))).clone();
    assert_eq!(end["event"], "failed", "{end}");
    let reason = end["reason"].as_str().unwrap();
    assert!(
        reason.contains("connection refused") && !reason.contains("fallback"),
        "{reason}"
    );
}

#[test]
fn a_preset_that_was_never_rendered_is_spoken_by_the_fallback() {
    let fifo = claim_fifo();
    let extra = format!("[presets.dinner]\ntext = \"{TEXT}\"\n");
    let base = emu().base_url("fast,fail=401,id=fb-preset");
    let (replies, capture, status) = announce(
        &fifo,
        &base,
        &extra,
        json!({"cmd": "preset", "name": "dinner"}),
    );
    assert_spoken_by_fallback("preset", &replies, "HTTP 401");
    let _ = assert_heard("preset", &capture, reference_s(TEXT), 0.0);
    let dinner = status["presets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dinner")
        .unwrap();
    assert_ne!(
        dinner["state"], "cached",
        "the fallback's audio is never cached: {status}"
    );
}

#[test]
fn skip_silences_the_fallback_at_once_and_the_next_job_plays() {
    let fifo = claim_fifo();
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let d = serve(&refused_base(), &fifo.pcm, "");
    let long = "This is a long announcement that the local voice reads out while the network is down, \
                sentence after sentence, for well over ten seconds, so that there is time to skip it. \
                It goes on and on about nothing in particular.";
    let mut s = UnixStream::connect(&d.sock).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    writeln!(s, "{}", json!({"text": long, "id": "long"})).unwrap();
    let mut lines = BufReader::new(s.try_clone().unwrap()).lines();
    loop {
        let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if v["event"] == "started" {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let skipped_at = Instant::now();
    assert!(d.herald(&["skip"]).status.success());
    let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(v["event"], "cancelled", "{v}");
    assert!(
        skipped_at.elapsed() < Duration::from_secs(2),
        "skip took {:?}",
        skipped_at.elapsed()
    );
    let end = terminal(&request(&d.sock, json!({"text": TEXT, "id": "next"}))).clone();
    assert_eq!(end["voice"], "fallback", "{end}");
    drop(d);
    // About 0.5 s of the long one and the whole short one: far less than the long text.
    let (got_s, _) = heard(&clock.finish(Duration::from_secs(2)).samples, 48_000);
    assert!(
        got_s < reference_s(TEXT) + 3.0,
        "the skipped job played on: {got_s:.1} s heard"
    );
}

#[test]
fn herald_speak_falls_back_too_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("out.wav");
    let speak = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["speak", "--api-base", &refused_base(), "--out"])
            .arg(&wav)
            .args(extra)
            .arg(TEXT)
            .env("OPENAI_API_KEY", KEY)
            .env("XDG_STATE_HOME", dir.path())
            .env_remove("OPENAI_BASE_URL")
            .output()
            .unwrap()
    };
    let out = speak(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("spoken by the fallback voice (espeak-ng)"),
        "{err}"
    );
    let (spec, samples) = support::reference::read_wav(&wav);
    let (got_s, _) = heard(&samples, spec.sample_rate);
    let want = reference_s(TEXT);
    assert!(
        (got_s - want).abs() < want * 0.05,
        "{got_s:.2} s, espeak-ng's {want:.2} s"
    );
    let out = speak(&["--no-fallback"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection refused"));
}

/// The engine itself, through the seam the pipeline uses: espeak-ng's 22050 Hz mono, and
/// its own message for a voice it does not have.
#[test]
fn the_espeak_engine_streams_its_audio_and_reports_its_errors() {
    use futures_util::StreamExt;
    use herald::fallback::{espeak::EspeakNg, LocalVoice};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = EspeakNg::new("en", 175);
        let speech = engine.open(TEXT).await.unwrap();
        assert_eq!((speech.format.rate, speech.format.channels), (22_050, 1));
        let mut bytes = Vec::new();
        let mut body = speech.body;
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        let reference = espeak_reference(TEXT);
        assert_eq!(
            bytes.len(),
            reference.len() * 2,
            "not all of espeak-ng's samples"
        );
        let e = EspeakNg::new("xx-none", 175)
            .open(TEXT)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("voice does not exist"), "{e}");
    });
}
