//! The emulator over real sockets with reqwest: layout, validation, faults, pacing.

use std::io::Cursor;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald::tts::AudioFormat;
use herald_emulator::{
    encode_ogg_opus, expected_body, synthesize, Emulator, EmulatorConfig, EmulatorHandle, OggLayout,
};
use serde_json::{json, Value};

const KEY: &str = "sk-test-emulator-key-0000-1234";
/// About 3 s of espeak-ng speech (4 audio pages), so multi-page layout is exercised.
const TEXT: &str = "The quick brown fox jumps over the lazy dog, and then it runs away.";

async fn start() -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        api_key: KEY.to_string(),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

fn speech_body(input: &str, format: &str) -> Value {
    json!({"model": "gpt-4o-mini-tts", "input": input, "voice": "coral", "response_format": format})
}

async fn post(emu: &EmulatorHandle, scenario: &str, body: &Value) -> reqwest::Response {
    post_with_key(emu, scenario, body, KEY).await
}

async fn post_with_key(
    emu: &EmulatorHandle,
    scenario: &str,
    body: &Value,
    key: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/audio/speech", emu.base_url(scenario)))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap()
}

/// One Ogg page as the `ogg` crate's reader sees it.
#[derive(Debug)]
struct Page {
    packets: Vec<Vec<u8>>,
    granule: u64,
    eos: bool,
}

fn read_pages(bytes: &[u8]) -> Result<Vec<Page>, ogg::OggReadError> {
    let mut r = ogg::PacketReader::new(Cursor::new(bytes.to_vec()));
    let mut pages = Vec::new();
    let mut cur = Vec::new();
    while let Some(p) = r.read_packet()? {
        let (last, granule, eos) = (p.last_in_page(), p.absgp_page(), p.last_in_stream());
        cur.push(p.data);
        if last {
            pages.push(Page {
                packets: std::mem::take(&mut cur),
                granule,
                eos,
            });
        }
    }
    Ok(pages)
}

#[tokio::test]
async fn opus_response_has_openais_layout_and_decodes_to_the_source() {
    let emu = start().await;
    let resp = post(&emu, "fast", &speech_body(TEXT, "opus")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/ogg");
    let bytes = resp.bytes().await.unwrap();
    let pcm = synthesize(TEXT, "coral", 1.0).unwrap();
    let n = pcm.len() as u64;

    let pages = read_pages(&bytes).unwrap();
    // Page 0: OpusHead v1, mono, pre-skip 312, 24 kHz input, gain 0, family 0.
    assert_eq!(pages[0].packets.len(), 1);
    let head = &pages[0].packets[0];
    assert_eq!(&head[..8], b"OpusHead");
    assert_eq!(head[8], 1);
    assert_eq!(head[9], 1);
    assert_eq!(u16::from_le_bytes([head[10], head[11]]), 312);
    assert_eq!(
        u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
        24_000
    );
    assert_eq!(i16::from_le_bytes([head[16], head[17]]), 0);
    assert_eq!(head[18], 0);
    // Page 1: short OpusTags.
    assert_eq!(pages[1].packets.len(), 1);
    let tags = &pages[1].packets[0];
    assert_eq!(&tags[..8], b"OpusTags");
    assert!((50..=80).contains(&tags.len()), "tags {} bytes", tags.len());

    let audio = &pages[2..];
    assert!(
        audio.len() >= 3,
        "expected several 1 s pages, got {}",
        audio.len()
    );
    let (last, full) = audio.split_last().unwrap();
    let mut total_packets = 0u64;
    for (i, p) in full.iter().enumerate() {
        assert_eq!(p.packets.len(), 50, "audio page {i} is not 1 s");
        total_packets += 50;
        assert_eq!(p.granule, total_packets * 960, "granule of audio page {i}");
        assert!(!p.eos);
    }
    total_packets += last.packets.len() as u64;
    assert!(last.eos);
    assert!(last.granule < total_packets * 960, "no end trim");
    assert_eq!(last.granule, 312 + 2 * n);

    // Decoding with libopus, minus pre-skip, gives back the synthesized speech in place:
    // a wrong pre-skip would shift it and wreck the match.
    let mut dec = opus::Decoder::new(24_000, opus::Channels::Mono).unwrap();
    let mut decoded = Vec::new();
    let mut buf = [0i16; 5760];
    for p in audio.iter().flat_map(|p| &p.packets) {
        let k = dec.decode(p, &mut buf, false).unwrap();
        assert_eq!(k, 480, "20 ms packets");
        decoded.extend_from_slice(&buf[..k]);
    }
    let playable = &decoded[156..156 + n as usize];
    let signal: f64 = pcm.iter().map(|&s| (s as f64).powi(2)).sum();
    let noise: f64 = pcm
        .iter()
        .zip(playable)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let snr = 10.0 * (signal / noise).log10();
    assert!(
        snr > 15.0,
        "decoded speech does not match the source: SNR {snr:.1} dB"
    );

    // The library produces the same bytes as the server.
    assert_eq!(
        bytes.as_ref(),
        encode_ogg_opus(&pcm, &OggLayout::default())
            .unwrap()
            .as_slice()
    );
    assert_eq!(
        bytes.as_ref(),
        expected_body("fast", TEXT, "coral", 1.0, AudioFormat::Opus)
            .unwrap()
            .as_slice()
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn same_request_gives_the_same_bytes() {
    let emu = start().await;
    let body = json!({"model": "tts-1", "input": "Determinism, please.", "voice": "onyx",
        "response_format": "opus", "speed": 1.5});
    let a = post(&emu, "fast", &body).await.bytes().await.unwrap();
    let b = post(&emu, "fast,id=other", &body)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(a, b);
    let c = expected_body(
        "fast",
        "Determinism, please.",
        "onyx",
        1.5,
        AudioFormat::Opus,
    )
    .unwrap();
    assert_eq!(a.as_ref(), c.as_slice());
    // The request's speed changes the speech.
    let d = expected_body(
        "fast",
        "Determinism, please.",
        "onyx",
        1.0,
        AudioFormat::Opus,
    )
    .unwrap();
    assert_ne!(c, d);
    emu.shutdown().await;
}

#[tokio::test]
async fn padded_tags_variant_is_790_bytes() {
    let emu = start().await;
    let bytes = post(&emu, "fast,padded-tags", &speech_body("Padded.", "opus"))
        .await
        .bytes()
        .await
        .unwrap();
    let pages = read_pages(&bytes).unwrap();
    assert_eq!(pages[1].packets[0].len(), 790);
    assert!(pages[1].packets[0][100..].iter().all(|&b| b == 0));
    emu.shutdown().await;
}

#[tokio::test]
async fn pcm_body_is_the_synthesized_samples() {
    let emu = start().await;
    let resp = post(&emu, "fast,chunk=1000", &speech_body("Raw samples.", "pcm")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/pcm");
    let bytes = resp.bytes().await.unwrap();
    let pcm = synthesize("Raw samples.", "coral", 1.0).unwrap();
    assert_eq!(bytes.len(), 2 * pcm.len());
    let expected: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    assert_eq!(bytes.as_ref(), expected.as_slice());
    emu.shutdown().await;
}

#[tokio::test]
async fn tone_option_gives_60_ms_per_character() {
    let emu = start().await;
    let bytes = post(&emu, "fast,tone", &speech_body("abcdefghij", "pcm"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len(), 2 * 10 * 60 * 24);
    emu.shutdown().await;
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn error_of(v: &Value) -> (&str, &str, &Value, &Value) {
    let e = &v["error"];
    (
        e["message"].as_str().expect("error.message"),
        e["type"].as_str().expect("error.type"),
        &e["param"],
        &e["code"],
    )
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_without_echoing_it() {
    let emu = start().await;
    let secret = "sk-wrong-very-secret-value-9876";
    let resp = post_with_key(&emu, "fast", &speech_body("hi", "opus"), secret).await;
    assert_eq!(resp.status(), 401);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(secret), "{text}");
    assert!(!text.contains("very-secret"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let (msg, kind, _, code) = error_of(&v);
    assert!(
        msg.starts_with("Incorrect API key provided: sk-wr****9876"),
        "{msg}"
    );
    assert_eq!(kind, "invalid_request_error");
    assert_eq!(code, "invalid_api_key");

    let resp = reqwest::Client::new()
        .post(format!("{}/audio/speech", emu.base_url("fast")))
        .body(serde_json::to_vec(&speech_body("hi", "opus")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = json_of(resp).await;
    assert!(error_of(&v).0.contains("didn't provide an API key"));
    emu.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_get_openai_style_errors() {
    let emu = start().await;
    let long = "a".repeat(4097);
    let cases: Vec<(Value, u16, Option<&str>, &str)> = vec![
        (
            json!({"model": "tts-1", "voice": "alloy", "response_format": "opus"}),
            400,
            Some("input"),
            "Missing required parameter",
        ),
        (
            json!({"model": "tts-1", "input": "", "voice": "alloy", "response_format": "opus"}),
            400,
            Some("input"),
            "string too short",
        ),
        (
            json!({"model": "tts-1", "input": long, "voice": "alloy", "response_format": "opus"}),
            400,
            Some("input"),
            "maximum length 4096",
        ),
        (
            json!({"model": "tts-1", "input": 5, "voice": "alloy", "response_format": "opus"}),
            400,
            Some("input"),
            "expected a string",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "bob", "response_format": "opus"}),
            400,
            Some("voice"),
            "'alloy'",
        ),
        (
            json!({"input": "hi", "voice": "alloy", "response_format": "opus"}),
            400,
            Some("model"),
            "Missing required parameter: 'model'",
        ),
        (
            json!({"model": "tts-9", "input": "hi", "voice": "alloy", "response_format": "opus"}),
            404,
            None,
            "does not exist",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "mp3"}),
            400,
            Some("response_format"),
            "only 'opus' and 'pcm'",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy"}),
            400,
            Some("response_format"),
            "not emulated",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "ogg"}),
            400,
            Some("response_format"),
            "Supported values",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "opus", "speed": 4.5}),
            400,
            Some("speed"),
            "<= 4",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "opus", "speed": 0.1}),
            400,
            Some("speed"),
            ">= 0.25",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "opus", "instructions": "whisper"}),
            400,
            Some("instructions"),
            "not supported",
        ),
        (
            json!({"model": "tts-1-hd", "input": "hi", "voice": "alloy", "response_format": "opus", "stream_format": "sse"}),
            400,
            Some("stream_format"),
            "not supported",
        ),
        (
            json!({"model": "gpt-4o-mini-tts", "input": "hi", "voice": "alloy", "response_format": "opus", "stream_format": "sse"}),
            400,
            Some("stream_format"),
            "not emulated",
        ),
        (
            json!({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "opus", "volume": 3}),
            400,
            None,
            "Unrecognized request argument supplied: volume",
        ),
    ];
    for (body, status, param, needle) in cases {
        let resp = post(&emu, "fast", &body).await;
        assert_eq!(resp.status(), status, "{body}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: Value = json_of(resp).await;
        let (msg, kind, p, _code) = error_of(&v);
        assert!(msg.contains(needle), "{body}: {msg}");
        assert_eq!(kind, "invalid_request_error");
        assert_eq!(p.as_str(), param, "{body}");
    }
    // Not JSON at all.
    let resp = reqwest::Client::new()
        .post(format!("{}/audio/speech", emu.base_url("fast")))
        .bearer_auth(KEY)
        .body("model=tts-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = json_of(resp).await;
    assert!(error_of(&v).0.contains("could not parse the JSON body"));
    // Accepted: a dated snapshot with instructions, speed and stream_format audio.
    let ok = json!({"model": "gpt-4o-mini-tts-2025-03-20", "input": "hi", "voice": "marin",
        "response_format": "pcm", "speed": 2.0, "instructions": "calm", "stream_format": "audio"});
    assert_eq!(post(&emu, "fast", &ok).await.status(), 200);
    let seen = &emu.stats().scenarios["fast"].seen;
    assert_eq!(seen.len(), 1, "only valid requests are recorded");
    assert_eq!(seen[0].body.instructions.as_deref(), Some("calm"));
    emu.shutdown().await;
}

#[tokio::test]
async fn fail_429_twice_then_success_with_retry_headers_per_id() {
    let emu = start().await;
    let body = speech_body("Retry me.", "opus");
    for _ in 0..2 {
        let r = post(&emu, "fast,fail=429x2,id=a", &body).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["retry-after-ms"], "1000");
        let v: Value = json_of(r).await;
        assert_eq!(error_of(&v).3, "rate_limit_exceeded");
    }
    // Another id has its own counter.
    assert_eq!(
        post(&emu, "fast,fail=429x2,id=b", &body).await.status(),
        429
    );
    let r = post(&emu, "fast,fail=429x2,id=a", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..4], b"OggS");

    let r = post(&emu, "fast,fail=429x1,retry-after-ms=200", &body).await;
    assert_eq!(r.headers()["retry-after-ms"], "200");
    assert_eq!(r.headers()["retry-after"], "1");

    let stats = emu.stats();
    assert_eq!(stats.requests_for("fast,fail=429x2,id=a"), 3);
    assert_eq!(stats.status_count("fast,fail=429x2,id=a", 429), 2);
    assert_eq!(stats.status_count("fast,fail=429x2,id=a", 200), 1);
    assert_eq!(stats.status_count("fast,fail=429x2,id=b", 429), 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn server_errors_and_revoked_key() {
    let emu = start().await;
    let body = speech_body("Errors.", "pcm");
    for (scenario, status, kind) in [
        ("fast,fail=500x1", 500, "server_error"),
        ("fast,fail=503x1", 503, "server_error"),
    ] {
        let r = post(&emu, scenario, &body).await;
        assert_eq!(r.status(), status);
        let v: Value = json_of(r).await;
        assert_eq!(error_of(&v).1, kind);
        assert_eq!(post(&emu, scenario, &body).await.status(), 200);
    }
    for _ in 0..3 {
        let r = post(&emu, "fast,fail=401", &body).await;
        assert_eq!(r.status(), 401, "fail=401 is permanent");
        assert!(!r.text().await.unwrap().contains(KEY));
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn drop_breaks_the_body_after_some_audio() {
    let emu = start().await;
    let resp = post(&emu, "fast,drop", &speech_body(TEXT, "opus")).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => got.extend_from_slice(&b),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(
        error.is_some(),
        "the body ended cleanly after {} bytes",
        got.len()
    );
    let full = expected_body("fast", TEXT, "coral", 1.0, AudioFormat::Opus).unwrap();
    assert!(
        got.len() > 1000 && got.len() < full.len(),
        "{} of {}",
        got.len(),
        full.len()
    );
    assert_eq!(got.as_slice(), &full[..got.len()]);
    emu.shutdown().await;
}

#[tokio::test]
async fn garbage_and_json200_are_200s_without_audio() {
    let emu = start().await;
    let r = post(&emu, "fast,garbage", &speech_body("hi", "opus")).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().starts_with("<html>"));
    let r = post(&emu, "fast,json200", &speech_body("hi", "opus")).await;
    assert_eq!(r.status(), 200);
    let v: Value = json_of(r).await;
    assert!(!error_of(&v).0.is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn corrupt_damages_one_page_crc() {
    let emu = start().await;
    let bytes = post(&emu, "fast,corrupt", &speech_body(TEXT, "opus"))
        .await
        .bytes()
        .await
        .unwrap();
    let err = read_pages(&bytes).unwrap_err();
    assert!(
        matches!(err, ogg::OggReadError::HashMismatch(..)),
        "{err:?}"
    );
    let clean = expected_body("fast", TEXT, "coral", 1.0, AudioFormat::Opus).unwrap();
    assert_eq!(bytes.len(), clean.len());
    let diffs = bytes.iter().zip(&clean).filter(|(a, b)| a != b).count();
    assert_eq!(diffs, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn hang_never_answers_and_hang_body_stops_after_a_page() {
    let emu = start().await;
    let guard = Duration::from_millis(1500);
    let body = speech_body("hi", "opus");
    let pending = post(&emu, "fast,hang", &body);
    assert!(
        tokio::time::timeout(guard, pending).await.is_err(),
        "hang answered"
    );

    let resp = post(&emu, "fast,hang-body", &speech_body(TEXT, "opus")).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let timed_out = tokio::time::timeout(guard, async {
        while let Some(Ok(b)) = stream.next().await {
            got.extend_from_slice(&b);
        }
    })
    .await
    .is_err();
    assert!(timed_out, "hang-body ended its body");
    let pages = read_pages(&got).unwrap();
    assert_eq!(pages.len(), 3, "headers and one audio page");
    assert_eq!(emu.stats().scenarios["fast,hang"].hangs, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn opus_streams_in_page_bursts_over_time() {
    let emu = start().await;
    // ~3 s of speech at 2× real time: pages leave ~0.5 s apart.
    let t0 = Instant::now();
    let resp = post(&emu, "ttfb=0,speed=2,chunk=512", &speech_body(TEXT, "opus")).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut arrivals: Vec<(Duration, usize)> = Vec::new();
    let mut total = 0;
    while let Some(b) = stream.next().await {
        total += b.unwrap().len();
        arrivals.push((t0.elapsed(), total));
    }
    let full = expected_body("", TEXT, "coral", 1.0, AudioFormat::Opus).unwrap();
    assert_eq!(total, full.len());
    let pages = herald_emulator::page_ranges(&full);
    let audio_secs = synthesize(TEXT, "coral", 1.0).unwrap().len() as f64 / 24_000.0;

    // Bursts: arrivals separated by a visible pause.
    let mut burst_ends = Vec::new();
    for w in arrivals.windows(2) {
        if w[1].0 - w[0].0 > Duration::from_millis(150) {
            burst_ends.push(w[0].1);
        }
    }
    burst_ends.push(total);
    assert!(burst_ends.len() >= 3, "only {} bursts", burst_ends.len());
    // Each burst ends on a page boundary: a page is only sent once complete.
    for end in &burst_ends {
        assert!(
            pages.iter().any(|p| p.end == *end),
            "burst ends mid-page at {end}"
        );
    }
    // The server cannot be early: the last page leaves no sooner than audio/speed.
    let span = arrivals.last().unwrap().0;
    assert!(
        span.as_secs_f64() >= audio_secs / 2.0 * 0.9,
        "{span:?} for {audio_secs:.2} s of audio at 2×"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_stall_holds_everything_back_then_releases_the_backlog() {
    let emu = start().await;
    // Generated within ~0.1 s, but the link is stalled for the first 800 ms.
    let t0 = Instant::now();
    let resp = post(&emu, "fast,stall=0+800", &speech_body("Held back.", "opus")).await;
    let headers_at = t0.elapsed();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    assert!(
        headers_at >= Duration::from_millis(750),
        "first byte after {headers_at:?}, inside the stall"
    );
    let full = expected_body("fast", "Held back.", "coral", 1.0, AudioFormat::Opus).unwrap();
    assert_eq!(bytes.as_ref(), full.as_slice());
    emu.shutdown().await;
}

#[tokio::test]
async fn models_route_unknown_routes_and_bad_scenarios() {
    let emu = start().await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/models", emu.base_url("fast")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = json_of(r).await;
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "gpt-4o-mini-tts"));

    let r = client
        .get(format!("{}/audio/voices", emu.base_url("")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = post(&emu, "wify", &speech_body("hi", "opus")).await;
    assert_eq!(r.status(), 400);
    let v: Value = json_of(r).await;
    let msg = error_of(&v).0;
    assert!(
        msg.contains("unknown option 'wify'") && msg.contains("allowed"),
        "{msg}"
    );
    let r = post(&emu, "fast,corrupt", &speech_body("hi", "pcm")).await;
    assert_eq!(r.status(), 400);
    emu.shutdown().await;
}

#[tokio::test]
async fn refuses_remote_listen_and_stops_on_shutdown() {
    let err = Emulator::start(EmulatorConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..EmulatorConfig::default()
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("--allow-remote"), "{err}");

    let emu = start().await;
    let addr = emu.addr();
    emu.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Reads a body as it arrives: (time since `t0`, bytes so far) per chunk.
async fn arrivals(resp: reqwest::Response, t0: Instant) -> Vec<(Duration, usize)> {
    let mut stream = resp.bytes_stream();
    let (mut out, mut total) = (Vec::new(), 0);
    while let Some(b) = stream.next().await {
        total += b.unwrap().len();
        out.push((t0.elapsed(), total));
    }
    out
}

#[tokio::test]
async fn opus_send_schedule_is_per_page_with_granule_media() {
    let emu = start().await;
    let key = "ttfb=200,speed=4,chunk=512,id=sched-opus";
    let t0 = Instant::now();
    let resp = post(&emu, key, &speech_body(TEXT, "opus")).await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let got = arrivals(resp, t0).await;
    let full = expected_body("", TEXT, "coral", 1.0, AudioFormat::Opus).unwrap();
    let page_ends: Vec<usize> = herald_emulator::page_ranges(&full)
        .iter()
        .map(|r| r.end)
        .collect();
    let pages = read_pages(&full).unwrap();
    let n = synthesize(TEXT, "coral", 1.0).unwrap().len() as u64;

    let all = emu.schedules(key);
    assert_eq!(all.len(), 1);
    assert!(emu.schedules("ttfb=200,speed=4,chunk=512").is_empty());
    let s = &all[0];
    assert_eq!(
        (s.request_id.as_str(), s.format, s.rate),
        (request_id.as_str(), AudioFormat::Opus, 48_000)
    );
    assert!(s.complete() && !s.truncated);
    assert_eq!(s.body_bytes, full.len() as u64);
    assert_eq!(s.media_total, 2 * n);
    // One entry per page (not per 512-byte write); audio = granule − pre-skip.
    let media: Vec<u64> = s.writes.iter().map(|w| w.media).collect();
    let mut want = vec![0, 0];
    want.extend(pages[2..].iter().map(|p| p.granule - 312));
    assert_eq!(media, want);
    assert_eq!(*media.last().unwrap(), 2 * n);
    for (i, w) in s.writes.iter().enumerate() {
        // Never before the timing model allows (audio page k is generated at
        // ttfb + k s / 4), and never after the client saw the page's last byte.
        let due = if i < 2 {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(200)
                + Duration::from_secs_f64(((i - 1) as f64 / 4.0).min(n as f64 / 24_000.0 / 4.0))
        };
        assert!(
            w.at + Duration::from_millis(2) >= due,
            "page {i} out at {:?}, due {due:?}",
            w.at
        );
        let seen = got.iter().find(|a| a.1 >= page_ends[i]).unwrap().0;
        assert!(
            w.at <= seen,
            "page {i} logged at {:?}, client had it at {seen:?}",
            w.at
        );
    }
    // The first audio page decides at 4×: it leaves at 200 + 250 ms.
    let limit = s.gapless_start().unwrap();
    assert!(
        limit >= Duration::from_millis(448) && limit < Duration::from_millis(550),
        "limit {limit:?}"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn pcm_schedule_below_real_time_and_a_broken_body() {
    let emu = start().await;
    // 0.1 s writes generated at 0.8× real time: each is later than the last one is due,
    // so the last write decides the limit.
    let key = "ttfb=100,speed=0.8,chunk=4800";
    let resp = post(&emu, key, &speech_body(TEXT, "pcm")).await;
    let body = resp.bytes().await.unwrap();
    let s = emu.schedules(key).pop().unwrap();
    assert_eq!((s.format, s.rate), (AudioFormat::Pcm, 24_000));
    assert!(s.complete());
    let n = body.len() as u64 / 2;
    assert_eq!(s.media_total, n);
    let media: Vec<u64> = s.writes.iter().map(|w| w.media).collect();
    let want: Vec<u64> = (1..=n.div_ceil(2400)).map(|k| (k * 2400).min(n)).collect();
    assert_eq!(media, want);
    let secs = |samples: u64| Duration::from_secs_f64(samples as f64 / 24_000.0);
    let last_before = media[media.len() - 2];
    let expected = Duration::from_millis(100) + secs(n).div_f64(0.8) - secs(last_before);
    let limit = s.gapless_start().unwrap();
    assert!(
        limit + Duration::from_millis(2) >= expected
            && limit < expected + Duration::from_millis(100),
        "limit {limit:?}, model says {expected:?}"
    );
    // A playback start at the first write would have run dry: the limit is later.
    assert!(limit > s.writes[0].at + Duration::from_millis(500));

    // `drop`: the cut page never completes, so the log stops at the first audio page.
    let resp = post(&emu, "fast,drop,id=sched-drop", &speech_body(TEXT, "opus")).await;
    let mut stream = resp.bytes_stream();
    while let Some(Ok(_)) = stream.next().await {}
    let s = emu.schedules("fast,drop,id=sched-drop").pop().unwrap();
    assert!(!s.complete() && s.sent_bytes < s.body_bytes);
    let pages =
        read_pages(&expected_body("fast", TEXT, "coral", 1.0, AudioFormat::Opus).unwrap()).unwrap();
    assert_eq!(s.writes.last().unwrap().media, pages[2].granule - 312);
    emu.shutdown().await;
}

#[tokio::test]
async fn schedules_keep_the_last_responses_per_key() {
    let emu = start().await;
    let key = "fast,tone,id=sched-many";
    let extra = 3;
    for _ in 0..herald_emulator::SCHEDULES_KEPT_PER_KEY + extra {
        post(&emu, key, &speech_body("ab", "pcm"))
            .await
            .bytes()
            .await
            .unwrap();
    }
    let all = emu.schedules(key);
    assert_eq!(all.len(), herald_emulator::SCHEDULES_KEPT_PER_KEY);
    // Oldest first, and the oldest `extra` were dropped.
    let ids: Vec<&str> = all.iter().map(|s| s.request_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(
        emu.stats().requests_for(key),
        all.len() as u64 + extra as u64
    );
    // Errors leave no schedule.
    post(&emu, "fail=500,id=sched-err", &speech_body("ab", "pcm")).await;
    assert!(emu.schedules("fail=500,id=sched-err").is_empty());
    emu.shutdown().await;
}
