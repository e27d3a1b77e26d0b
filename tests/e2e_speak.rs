//! End to end: the real `herald` binary against the in-process emulator (which stands in for
//! OpenAI on 127.0.0.1), writing WAV files, for every scenario and fault. The audio must be
//! complete — sample-exact to a reference libopus decode of the bytes the emulator sent —
//! or the run must fail with a clear error and a non-zero exit.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use herald::tts::AudioFormat;
use herald_emulator::{expected_body, synthesize, EmulatorHandle};
use support::reference::{decode_ogg_opus, read_wav};

const KEY: &str = "sk-e2e-0123456789abcdefSECRET";
const TEXT: &str = "Dinner is ready. Please come to the table.";

/// One emulator for the whole test binary; tests isolate themselves with `id=` prefixes.
fn emu() -> &'static EmulatorHandle {
    support::emulator::shared(KEY)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Runs `herald` with the test key and `config` (TOML) and returns its output.
fn herald(dir: &Path, config: &str, args: &[&str]) -> Output {
    let cfg = dir.join("herald.toml");
    std::fs::write(&cfg, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(&cfg)
        .args(args)
        .env("OPENAI_API_KEY", KEY)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("HERALD_LOG")
        // What herald learns about the network stays in the test's directory.
        .env("XDG_STATE_HOME", dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `herald speak --out` against `scenario`; returns the output and the WAV path.
fn speak(
    scenario: &str,
    config: &str,
    extra: &[&str],
    text: &str,
) -> (Output, PathBuf, tempfile::TempDir) {
    let dir = tmp();
    let wav = dir.path().join("out.wav");
    let base = emu().base_url(scenario);
    let mut args = vec!["speak", "--api-base", &base, "--out", wav.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(text);
    let out = herald(dir.path(), config, &args);
    assert!(
        !stderr(&out).contains(KEY),
        "the API key leaked: {}",
        stderr(&out)
    );
    (out, wav, dir)
}

/// The samples a correct player produces for `text` from `scenario` (48 kHz mono).
fn reference(scenario: &str, text: &str) -> Vec<i16> {
    let body = expected_body(scenario, text, "alloy", 1.0, AudioFormat::Opus).unwrap();
    decode_ogg_opus(&body, 48_000)
}

fn assert_played_exactly(out: &Output, wav: &Path, expected: &[i16]) {
    assert!(out.status.success(), "herald failed: {}", stderr(out));
    let (spec, samples) = read_wav(wav);
    assert_eq!((spec.sample_rate, spec.channels), (48_000, 1));
    // A file gets exactly the decoded audio: no period padding (only a device needs it).
    assert_eq!(
        samples.len(),
        expected.len(),
        "the WAV's length is not the decoded length"
    );
    assert!(
        samples == *expected,
        "played samples differ from the reference decode"
    );
    let summary = stderr(out);
    assert!(
        summary.contains("time to first audio"),
        "no summary line: {summary}"
    );
    assert!(summary.contains("stalls 0"), "{summary}");
}

#[test]
fn speaks_a_sentence_sample_exact_to_a_reference_decode() {
    let sc = "fast,id=exact";
    let (out, wav, _d) = speak(sc, "", &[], TEXT);
    assert_played_exactly(&out, &wav, &reference(sc, TEXT));
    let s = stderr(&out);
    let bytes = expected_body(sc, TEXT, "alloy", 1.0, AudioFormat::Opus)
        .unwrap()
        .len();
    assert!(s.contains(&format!("received {bytes} bytes")), "{s}");
}

#[test]
fn default_pacing_and_padded_tags_play_completely() {
    for sc in ["id=paced", "fast,padded-tags,chunk=7,id=tags"] {
        let (out, wav, _d) = speak(sc, "", &[], TEXT);
        assert_played_exactly(&out, &wav, &reference(sc, TEXT));
    }
}

#[test]
fn pcm_format_plays_every_sample_resampled_to_the_device_rate() {
    let sc = "fast,id=pcm";
    let (out, wav, _d) = speak(sc, "", &["--format", "pcm"], TEXT);
    assert!(out.status.success(), "{}", stderr(&out));
    let source = synthesize(TEXT, "alloy", 1.0).unwrap();
    let (spec, samples) = read_wav(&wav);
    assert_eq!(spec.sample_rate, 48_000);
    let n = source.len() * 2; // 24 kHz → 48 kHz doubles the length exactly
    assert!(
        samples.len() >= n && samples.len() < n + 960,
        "{} vs {n}",
        samples.len()
    );
    assert!(
        samples[n..].iter().all(|&s| s == 0),
        "the padding is not silence"
    );
    let energy = |s: &[i16]| s.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / s.len() as f64;
    let ratio = energy(&samples) / energy(&source);
    assert!(
        (0.8..1.25).contains(&ratio),
        "level changed by resampling: {ratio}"
    );
}

#[test]
fn auto_format_fetches_a_pcm_lead_and_an_opus_tail_at_once_and_joins_them_gaplessly() {
    let sc = "fast,id=auto";
    let lead = "Dinner is ready in the kitchen.";
    let tail = "Please come to the table now, everybody.";
    let text = format!("{lead} {tail}");
    let (out, wav, _d) = speak(sc, "", &["--format", "auto"], &text);
    assert!(out.status.success(), "{}", stderr(&out));
    // Exactly two requests: the opening sentence as pcm, the rest as opus.
    let sent = emu().schedules(sc);
    let formats: Vec<AudioFormat> = sent.iter().map(|s| s.format).collect();
    assert_eq!(formats.len(), 2, "{formats:?}");
    assert!(formats.contains(&AudioFormat::Pcm) && formats.contains(&AudioFormat::Opus));
    // Both were asked for before either had finished: the tail is fetched during the lead.
    let (first, second) = (&sent[0], &sent[1]);
    let first_end = first.arrived + first.writes.last().map_or(Default::default(), |w| w.at);
    assert!(
        second.arrived < first_end,
        "the second request went out only after the first had been sent"
    );
    // The file is the lead (24 kHz pcm doubled to 48 kHz) then the tail decoded sample-exact:
    // nothing lost, nothing inserted at the join.
    let (spec, samples) = read_wav(&wav);
    assert_eq!((spec.sample_rate, spec.channels), (48_000, 1));
    let pcm_lead = synthesize(lead, "alloy", 1.0).unwrap();
    let opus_tail = reference(sc, tail);
    assert_eq!(samples.len(), pcm_lead.len() * 2 + opus_tail.len());
    assert!(
        samples[pcm_lead.len() * 2..] == opus_tail[..],
        "the opus tail after the join differs from its reference decode"
    );
    let energy = |s: &[i16]| s.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / s.len() as f64;
    let ratio = energy(&samples[..pcm_lead.len() * 2]) / energy(&pcm_lead);
    assert!((0.8..1.25).contains(&ratio), "the lead's level: {ratio}");
    assert!(stderr(&out).contains("stalls 0"), "{}", stderr(&out));
}

#[test]
fn retryable_faults_are_retried_and_the_audio_is_complete() {
    for (sc, requests) in [
        ("fast,fail=429x2,retry-after-ms=50,id=r429", 3),
        ("fast,fail=500x1,id=r500", 2),
        ("fast,fail=503x1,retry-after-ms=50,id=r503", 2),
    ] {
        let (out, wav, _d) = speak(sc, "", &[], TEXT);
        assert_played_exactly(&out, &wav, &reference(sc, TEXT));
        assert_eq!(emu().stats().requests_for(sc), requests, "{sc}");
        let retries = match requests - 1 {
            1 => "1 retry".to_string(),
            n => format!("{n} retries"),
        };
        assert!(stderr(&out).contains(&retries), "{sc}: {}", stderr(&out));
    }
}

#[test]
fn fatal_faults_fail_with_a_clear_error_and_a_nonzero_exit() {
    let quick = "[api]\nfirst_byte_timeout_ms = 1500\nstall_timeout_ms = 1500\nmax_attempts = 2\n";
    for (sc, expect) in [
        ("fast,fail=401,id=f401", "API key was rejected (HTTP 401)"),
        ("fast,fail=403,id=f403", "HTTP 403"),
        ("fast,fail=500,id=f500", "HTTP 500"),
        ("fast,garbage,id=fgarbage", "not opus audio"),
        ("fast,json200,id=fjson", "not opus audio"),
        ("fast,corrupt,id=fcorrupt", "CRC"),
        ("fast,drop,id=fdrop", "broke"),
        ("fast,hang,id=fhang", "timed out"),
        ("fast,hang-body,id=fhangbody", "timed out"),
    ] {
        // Without the local voice, which would speak instead (tests/fallback.rs).
        let (out, _wav, _d) = speak(sc, quick, &["--no-fallback"], TEXT);
        let s = stderr(&out);
        assert!(
            !out.status.success(),
            "{sc}: exit 0 although it failed: {s}"
        );
        assert!(s.contains(expect), "{sc}: expected '{expect}' in: {s}");
        assert!(!s.contains("panicked"), "{sc}: {s}");
    }
}

#[test]
fn bad_input_is_rejected_before_any_request() {
    for (sc, config, extra, text, expect) in [
        ("fast,id=empty", "", vec![], "   ", "the text is empty"),
        (
            "fast,id=long",
            "[speech]\nmax_text_chars = 10\n",
            vec![],
            TEXT,
            "at most 10 are allowed",
        ),
        (
            "fast,id=voice",
            "",
            vec!["--voice", "bob"],
            TEXT,
            "unknown voice 'bob'",
        ),
        ("fast,id=speed", "", vec!["--speed", "9"], TEXT, "0.25"),
        (
            "fast,id=instr",
            "",
            vec!["--model", "tts-1", "--instructions", "cheerful"],
            TEXT,
            "instructions",
        ),
    ] {
        let (out, _wav, _d) = speak(sc, config, &extra, text);
        let s = stderr(&out);
        assert!(!out.status.success(), "{sc}: {s}");
        assert!(s.contains(expect), "{sc}: expected '{expect}' in: {s}");
        assert_eq!(
            emu().stats().requests_for(sc),
            0,
            "{sc}: a request was sent"
        );
    }
}

#[test]
fn a_config_error_names_the_key_and_line() {
    let (out, _wav, _d) = speak("fast,id=cfg", "[audio]\nperiod_ms = 0\n", &[], TEXT);
    let s = stderr(&out);
    assert!(!out.status.success());
    assert!(s.contains("line 2") && s.contains("audio.period_ms"), "{s}");
}

#[test]
fn a_missing_key_is_reported_without_a_request() {
    let dir = tmp();
    let base = emu().base_url("fast,id=nokey");
    let speak = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["speak", "--api-base", &base, "--out"])
            .arg(dir.path().join("x.wav"))
            .args(extra)
            .arg(TEXT)
            .env_remove("OPENAI_API_KEY")
            .env("CREDENTIALS_DIRECTORY", dir.path())
            .output()
            .unwrap()
    };
    let out = speak(&["--no-fallback"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no API key"), "{}", stderr(&out));
    // The local voice speaks it instead, saying why (tests/fallback.rs has the rest).
    let out = speak(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("fallback voice (espeak-ng)") && stderr(&out).contains("no API key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(emu().stats().requests_for("fast,id=nokey"), 0);
}

/// `herald play --out WAV FILE`.
fn play(dir: &Path, file: &Path, wav: &Path) -> Output {
    let args = [
        "play",
        "--out",
        wav.to_str().unwrap(),
        file.to_str().unwrap(),
    ];
    herald(dir, "", &args)
}

#[test]
fn play_decodes_a_local_file_through_the_same_pipeline() {
    let dir = tmp();
    let sc = "id=file";
    let file = dir.path().join("chime.opus");
    std::fs::write(
        &file,
        expected_body(sc, TEXT, "alloy", 1.0, AudioFormat::Opus).unwrap(),
    )
    .unwrap();
    let wav = dir.path().join("chime.wav");
    let out = play(dir.path(), &file, &wav);
    assert_played_exactly(&out, &wav, &reference(sc, TEXT));

    // A foreign file (opusenc's, not the emulator's layout): exactly final granule minus
    // pre-skip samples, as opusdec gives.
    let foreign = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hello-opusenc.opus");
    let out = play(dir.path(), &foreign, &wav);
    let expected = decode_ogg_opus(&std::fs::read(&foreign).unwrap(), 48_000);
    assert_played_exactly(&out, &wav, &expected);

    // Not an Ogg file: a clear error, not a panic or silence.
    let bad = dir.path().join("notes.txt");
    std::fs::write(&bad, "just some text, not audio\n").unwrap();
    let out = play(dir.path(), &bad, &wav);
    assert!(!out.status.success());
    assert!(
        stderr(&out).to_lowercase().contains("ogg"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn what_the_network_did_is_remembered_between_runs_without_the_key() {
    let dir = tmp();
    // Default pacing (4×): the pages arrive as separate bursts, which is what is learned.
    let base = emu().base_url("id=learn");
    let wav = dir.path().join("learn.wav");
    let args = [
        "speak",
        "--api-base",
        &base,
        "--out",
        wav.to_str().unwrap(),
        TEXT,
    ];
    for run in 1..=2 {
        let out = herald(dir.path(), "", &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let file = dir.path().join("herald/network-model.json");
        let text = std::fs::read_to_string(&file).expect("the model is saved");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let key = format!("{} opus", base.trim_end_matches('/'));
        assert_eq!(v["models"][&key]["utterances"], run, "{text}");
        assert!(!text.contains(KEY), "the key reached the state file");
    }
    // `reset-network-model --local` forgets it (no daemon involved).
    let out = herald(dir.path(), "", &["reset-network-model", "--local"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout.contains("forgot 1 endpoint and format"), "{stdout}");
    let text = std::fs::read_to_string(dir.path().join("herald/network-model.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["models"], serde_json::json!({}), "{text}");
}
