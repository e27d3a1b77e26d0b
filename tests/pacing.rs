//! Real-time pacing through the real alsa-lib: `herald speak` plays on a FIFO-backed `file`
//! PCM whose FIFO a reader drains at exactly the sample rate (support::FifoClock), so herald
//! is clocked like a sound card and an empty pipe at a read tick is an audible gap. The
//! emulator (standing in for OpenAI) streams with WiFi-like stalls or barely faster than
//! real time; the utterance must play without a single gap and sample-exact.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use herald::tts::AudioFormat;
use herald_emulator::{expected_body, EmulatorHandle};
use support::reference::decode_ogg_opus;
use support::{alsa_env, claim_fifo, FifoClock};

const KEY: &str = "sk-pacing-0123456789abcdef";
/// About nine seconds of speech: long enough for several stalls and bursts.
const TEXT: &str = "The train to the airport leaves from platform four in ten minutes. \
    Please take your luggage with you and mind the gap between the train and the platform.";

/// The FIFO clock stands in for a DAC only while it gets the CPU on time. A learned start
/// lands within milliseconds of its limit, so that test runs alone (write); the others,
/// with a second or more of margin, share the machine (read).
static RIG: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_rig() -> std::sync::RwLockReadGuard<'static, ()> {
    RIG.read().unwrap_or_else(|p| p.into_inner())
}

fn quiet_rig() -> std::sync::RwLockWriteGuard<'static, ()> {
    RIG.write().unwrap_or_else(|p| p.into_inner())
}

fn emu() -> &'static EmulatorHandle {
    support::emulator::shared(KEY)
}

/// Speaks `TEXT` from `scenario` on a FIFO-clocked device; returns herald's output and
/// what the "DAC" received.
fn speak_clocked(scenario: &str, extra: &[&str]) -> (Output, support::Capture) {
    // What herald learns about the network stays in a directory of this test's.
    let state = tempfile::tempdir().unwrap();
    speak_clocked_in(scenario, extra, state.path())
}

/// [`speak_clocked`] keeping what herald learns in `state` (its `XDG_STATE_HOME`).
fn speak_clocked_in(
    scenario: &str,
    extra: &[&str],
    state: &std::path::Path,
) -> (Output, support::Capture) {
    let env = alsa_env();
    let fifo = claim_fifo();
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let (var, value) = env.env_var();
    let base = emu().base_url(scenario);
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["speak", "--api-base", &base, "--device", &fifo.pcm])
        .args(extra)
        .arg(TEXT)
        .env("OPENAI_API_KEY", KEY)
        .env("XDG_STATE_HOME", state)
        .env(var, value)
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap();
    let capture = clock.finish(Duration::from_secs(3));
    (out, capture)
}

fn assert_gapless(scenario: &str, out: &Output, capture: &support::Capture, expected: &[i16]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{scenario}: herald failed: {err}");
    assert!(
        err.contains("stalls 0 (0 ms)"),
        "{scenario}: herald reports stalls: {err}"
    );
    assert!(
        capture.gaps.is_empty(),
        "{scenario}: audible gaps at the DAC: {:?}",
        capture.gaps
    );
    let got = &capture.samples;
    assert!(
        got.len() >= expected.len(),
        "{scenario}: {} of {} samples reached the DAC",
        got.len(),
        expected.len()
    );
    assert!(
        got[..expected.len()] == *expected,
        "{scenario}: the DAC received other audio than the reference decode"
    );
    assert!(
        got[expected.len()..].iter().all(|&s| s == 0),
        "{scenario}: noise after the end"
    );
}

#[test]
fn wifi_stalls_up_to_a_second_cause_no_gap() {
    let _rig = shared_rig();
    let sc = "wifi,seed=7,id=pace-wifi";
    let (out, capture) = speak_clocked(sc, &[]);
    let body = expected_body(sc, TEXT, "alloy", 1.0, AudioFormat::Opus).unwrap();
    assert_gapless(sc, &out, &capture, &decode_ogg_opus(&body, 48_000));
}

#[test]
fn generation_barely_faster_than_real_time_causes_no_gap() {
    let _rig = shared_rig();
    let sc = "slow,id=pace-slow";
    let (out, capture) = speak_clocked(sc, &[]);
    let body = expected_body(sc, TEXT, "alloy", 1.0, AudioFormat::Opus).unwrap();
    assert_gapless(sc, &out, &capture, &decode_ogg_opus(&body, 48_000));
}

/// `format = "auto"` (issue 9, part 4): the opening sentence streams as pcm while the rest is
/// fetched as opus at the same time; on a WiFi-like network the join must not be heard — no
/// gap at the device, the opus tail sample-exact right after the lead.
#[test]
fn auto_format_joins_the_pcm_lead_and_the_opus_tail_without_a_gap() {
    let _rig = shared_rig();
    let sc = "wifi,seed=7,id=pace-auto";
    let (out, capture) = speak_clocked(sc, &["--format", "auto"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "herald failed: {err}");
    assert!(err.contains("in 2 segments"), "not split: {err}");
    assert!(
        err.contains("stalls 0 (0 ms)"),
        "herald reports stalls: {err}"
    );
    assert!(
        capture.gaps.is_empty(),
        "audible gaps at the DAC: {:?}",
        capture.gaps
    );
    let (lead, tail) = herald::text::split_lead(TEXT, herald::pipeline::AUTO_LEAD_CHARS).unwrap();
    let lead_frames = herald_emulator::synthesize(&lead, "alloy", 1.0)
        .unwrap()
        .len()
        * 2;
    let body = expected_body(sc, &tail, "alloy", 1.0, AudioFormat::Opus).unwrap();
    let tail = decode_ogg_opus(&body, 48_000);
    let got = &capture.samples;
    assert!(got.len() >= lead_frames + tail.len(), "audio is missing");
    assert!(
        got[lead_frames..lead_frames + tail.len()] == tail[..],
        "the opus tail is not played right after the pcm lead"
    );
    assert!(
        got[..lead_frames].iter().any(|&s| s != 0),
        "the lead is silent"
    );
}

/// Adaptive playout (issue 9): after three announcements on a stream barely faster than
/// real time, herald starts by what it learned — close to the second Ogg page instead of
/// after the fixed 1 s reserve — and still plays without a gap.
#[test]
fn a_learned_network_starts_far_earlier_and_stays_gapless() {
    let _rig = quiet_rig();
    let sc = "slow,id=pace-learn";
    let state = tempfile::tempdir().unwrap();
    let ttfa = |out: &Output| {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().last().unwrap_or_default().to_string();
        let ms = line
            .split("time to first audio ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        (
            ms.unwrap_or_else(|| panic!("no time to first audio in {err}")),
            line,
        )
    };
    let mut cold = Vec::new();
    for _ in 0..3 {
        let (out, capture) = speak_clocked_in(sc, &[], state.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            capture.gaps.is_empty(),
            "cold run gapped: {:?}",
            capture.gaps
        );
        let (ms, line) = ttfa(&out);
        assert!(line.contains("start cold"), "{line}");
        cold.push(ms);
    }
    let (out, capture) = speak_clocked_in(sc, &[], state.path());
    let (warm, line) = ttfa(&out);
    assert!(out.status.success(), "{line}");
    assert!(line.contains("start learned"), "{line}");
    assert!(line.contains("stalls 0 (0 ms)"), "{line}");
    assert!(capture.gaps.is_empty(), "audible gaps: {:?}", capture.gaps);
    let fastest_cold = cold.iter().min().copied().unwrap_or(0);
    assert!(
        warm + 500 <= fastest_cold,
        "learned start after {warm} ms, cold ones after {cold:?} ms"
    );
    // All of it was heard: the decode, plus whatever slowed playback added.
    let body = expected_body(sc, TEXT, "alloy", 1.0, AudioFormat::Opus).unwrap();
    let expected = decode_ogg_opus(&body, 48_000).len();
    assert!(
        capture.samples.len() >= expected,
        "{} of {expected}",
        capture.samples.len()
    );
}

#[test]
fn pcm_under_wifi_stalls_causes_no_gap() {
    let _rig = shared_rig();
    let sc = "wifi,seed=11,id=pace-pcm";
    let (out, capture) = speak_clocked(sc, &["--format", "pcm"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stalls 0 (0 ms)"), "{err}");
    assert!(capture.gaps.is_empty(), "audible gaps: {:?}", capture.gaps);
}

/// Devices that cannot take what herald prefers: only 44.1 kHz (resampled from the 48 kHz
/// decode), only stereo (mono up-mixed). Both are alsa-lib external plugins from
/// tests/support that swallow data like `null`.
#[test]
fn devices_with_fixed_rate_or_channels_play_the_whole_text() {
    let _rig = shared_rig();
    let env = alsa_env();
    let (var, value) = env.env_var();
    let state = tempfile::tempdir().unwrap();
    for device in ["herald_44k", "herald_stereo"] {
        let base = emu().base_url(&format!("fast,id=dev-{device}"));

        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "-v",
                "speak",
                "--api-base",
                &base,
                "--device",
                device,
                "Dinner is ready.",
            ])
            .env("OPENAI_API_KEY", KEY)
            .env("XDG_STATE_HOME", state.path())
            .env(var, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{device}: {err}");
        let granted = if device == "herald_44k" {
            "granted.rate=44100"
        } else {
            "granted.channels=2"
        };
        assert!(
            err.contains(granted),
            "{device}: granted format not logged: {err}"
        );
        // The whole text: the reported duration is the reference decode's.
        let sc = format!("fast,id=dev-{device}");
        let body = expected_body(&sc, "Dinner is ready.", "alloy", 1.0, AudioFormat::Opus).unwrap();
        let expected_s = decode_ogg_opus(&body, 48_000).len() as f64 / 48_000.0;
        let reported = support::summary_audio_s(&err)
            .unwrap_or_else(|| panic!("{device}: no audio duration in {err}"));
        assert!(
            (reported - expected_s).abs() < 0.011,
            "{device}: played {reported} s of {expected_s:.3} s"
        );
    }
}
