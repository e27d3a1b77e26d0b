//! The preset audio cache: atomic writes (an interrupted write is never trusted), damaged
//! files detected and healed by a re-fetch, LRU eviction with presets last, playback with
//! the "OpenAI" side down, keys, a broken cache never stopping speech, and the preset
//! renderer re-rendering only what changed. The in-process emulator stands in for OpenAI.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald::presets::{PresetState, RenderBackoff, Renderer};
use herald::tts::cache::{key, verify, AudioCache, CacheError, CachingSource, TEMP_SUFFIX};
use herald::tts::openai::{OpenAiClient, OpenAiConfig};
use herald::tts::{ApiKey, AudioFormat, SpeechRequest, SpeechSource, TtsError};
use herald_emulator::{expected_body, Emulator, EmulatorConfig, EmulatorHandle};

const KEY: &str = "sk-cache-0123456789abcdefSECRET";

fn req(text: &str) -> SpeechRequest {
    SpeechRequest {
        model: "gpt-4o-mini-tts".into(),
        voice: "alloy".into(),
        input: text.into(),
        format: AudioFormat::Opus,
        speed: None,
        instructions: None,
    }
}

/// What the emulator sends for `text` (real espeak-ng + libopus Ogg Opus).
fn body(text: &str) -> Vec<u8> {
    expected_body("fast", text, "alloy", 1.0, AudioFormat::Opus).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn emulator() -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        api_key: KEY.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn client(base: &str, key: &str) -> Arc<dyn SpeechSource> {
    Arc::new(
        OpenAiClient::new(OpenAiConfig {
            api_base: base.into(),
            api_key: Some(ApiKey::new(key)),
            max_attempts: 1,
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .unwrap(),
    )
}

async fn read_all(src: &dyn SpeechSource, r: &SpeechRequest) -> Result<(Vec<u8>, u32), TtsError> {
    let mut s = src.open(r).await?;
    let mut out = Vec::new();
    while let Some(chunk) = s.body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok((out, s.attempts))
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn an_interrupted_write_at_any_byte_is_never_trusted() {
    let audio = body("Hi.");
    let k = key("http://127.0.0.1:1/v1", &req("Hi."));
    let dir = tempfile::tempdir().unwrap();
    let final_path = dir.path().join(k.file_name());
    for n in 0..audio.len() {
        // A crash before the rename leaves a temp file: deleted at open, never served.
        let tmp = dir
            .path()
            .join(format!(".{}.1.0{TEMP_SUFFIX}", k.file_name()));
        std::fs::write(&tmp, &audio[..n]).unwrap();
        let cache = AudioCache::open(dir.path(), 1 << 20).unwrap();
        assert!(!tmp.exists(), "a temp file survived open at {n} bytes");
        assert_eq!(cache.get(&k).unwrap(), None, "temp file of {n} bytes");

        // A final file cut short (a disk that lied about fsync): detected and deleted.
        std::fs::write(&final_path, &audio[..n]).unwrap();
        let cache = AudioCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.get(&k).unwrap(), None, "truncated to {n} bytes");
        assert!(
            !final_path.exists(),
            "a truncated file was kept at {n} bytes"
        );
    }
    // The complete file is trusted.
    let cache = AudioCache::open(dir.path(), 1 << 20).unwrap();
    cache.put(&k, &audio, false).unwrap();
    assert_eq!(cache.get(&k).unwrap(), Some(audio));
    assert_eq!(
        files(dir.path()),
        vec![k.file_name()],
        "no temp file left behind"
    );
}

#[test]
fn every_flipped_byte_is_detected() {
    let audio = body("Hi.");
    let k = key("http://127.0.0.1:1/v1", &req("Hi."));
    let dir = tempfile::tempdir().unwrap();
    let cache = AudioCache::open(dir.path(), 1 << 20).unwrap();
    for i in 0..audio.len() {
        let mut bad = audio.clone();
        bad[i] ^= 0x20;
        assert!(verify(AudioFormat::Opus, &bad).is_err(), "flip at byte {i}");
        // And the cache refuses to store it in the first place.
        assert!(matches!(
            cache.put(&k, &bad, false),
            Err(CacheError::Invalid { .. })
        ));
    }
    assert!(verify(AudioFormat::Opus, &audio).is_ok());
    // Not audio at all: refused with the reason.
    let err = cache.put(&k, b"{\"error\":{}}", false).unwrap_err();
    assert!(err.to_string().contains("not an Ogg stream"), "{err}");
}

#[test]
fn pcm_entries_carry_a_checksum() {
    let k = key(
        "http://x/v1",
        &SpeechRequest {
            format: AudioFormat::Pcm,
            ..req("Hi.")
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = AudioCache::open(dir.path(), 1 << 20).unwrap();
    let pcm: Vec<u8> = (0..4800u32)
        .flat_map(|i| (i as i16).to_le_bytes())
        .collect();
    cache.put(&k, &pcm, false).unwrap();
    assert_eq!(cache.get(&k).unwrap(), Some(pcm.clone()));
    let path = cache.path_of(&k);
    let stored = std::fs::read(&path).unwrap();
    std::fs::write(&path, &stored[..stored.len() - 2]).unwrap();
    assert_eq!(
        cache.get(&k).unwrap(),
        None,
        "a truncated PCM file is detected"
    );
    assert!(!path.exists());
}

#[test]
fn damaged_files_are_healed_by_a_refetch() {
    let rt = rt();
    rt.block_on(async {
        let emu = emulator().await;
        let scenario = "fast,id=heal";
        let base = emu.base_url(scenario);
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(AudioCache::open(dir.path(), 1 << 20).unwrap());
        let src = CachingSource::new(client(&base, KEY), cache.clone(), &base);
        let text = "Dinner is ready.";
        let expected = body(text);

        let (first, attempts) = read_all(&src, &req(text)).await.unwrap();
        src.settle().await;
        assert_eq!((first, attempts), (expected.clone(), 1));
        let path = cache.path_of(&src.key(&req(text)));
        assert_eq!(std::fs::read(&path).unwrap(), expected, "stored as sent");

        // From the cache: no request, attempts 0.
        let (again, attempts) = read_all(&src, &req(text)).await.unwrap();
        assert_eq!((again, attempts), (expected.clone(), 0));
        assert_eq!(emu.stats().requests_for(scenario), 1);

        for damage in ["flip", "truncate"] {
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            match damage {
                "flip" => bytes[mid] ^= 0x01,
                _ => bytes.truncate(bytes.len() - 100),
            }
            std::fs::write(&path, &bytes).unwrap();
            let before = emu.stats().requests_for(scenario);
            let (healed, attempts) = read_all(&src, &req(text)).await.unwrap();
            src.settle().await;
            assert_eq!(healed, expected, "{damage}: played the re-fetched audio");
            assert_eq!(attempts, 1, "{damage}: came from the network");
            assert_eq!(emu.stats().requests_for(scenario), before + 1);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                expected,
                "{damage}: file healed"
            );
        }
        emu.shutdown().await;
    });
}

#[test]
fn a_stream_that_breaks_or_is_corrupt_is_not_cached() {
    let rt = rt();
    rt.block_on(async {
        let emu = emulator().await;
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(AudioCache::open(dir.path(), 1 << 20).unwrap());
        let r = req("Leaving in five minutes. Shoes on, everyone.");

        // The emulator cuts the connection after about one page.
        let scenario = "fast,drop,id=drop";
        let base = emu.base_url(scenario);
        let src = CachingSource::new(client(&base, KEY), cache.clone(), &base);
        let err = read_all(&src, &r).await.unwrap_err();
        assert!(matches!(err, TtsError::Broken { .. }), "{err}");
        src.settle().await;
        assert_eq!(emu.stats().status_count(scenario, 200), 1);
        assert!(!cache.contains(&src.key(&r)));

        // A complete stream with a damaged page (a CRC error the transport cannot see).
        let scenario = "fast,corrupt,id=corrupt";
        let base = emu.base_url(scenario);
        let src = CachingSource::new(client(&base, KEY), cache.clone(), &base);
        let (audio, _) = read_all(&src, &r).await.unwrap();
        src.settle().await;
        assert!(verify(AudioFormat::Opus, &audio).is_err());
        assert!(!cache.contains(&src.key(&r)));
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
        emu.shutdown().await;
    });
}

#[test]
fn eviction_is_least_recently_used_with_presets_last() {
    let audio = body("Hi.");
    let size = audio.len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let cache = AudioCache::open(dir.path(), 3 * size).unwrap();
    let k = |name: &str| key("http://x/v1", &req(name));
    let has = |name: &str| cache.contains(&k(name));

    cache.put(&k("a"), &audio, false).unwrap();
    cache.put(&k("b"), &audio, true).unwrap(); // a preset
    cache.put(&k("c"), &audio, false).unwrap();
    assert!(cache.get(&k("a")).unwrap().is_some()); // a is now more recent than c
    cache.put(&k("d"), &audio, false).unwrap();
    assert!(
        !has("c") && has("a") && has("b") && has("d"),
        "c was least recently used"
    );
    cache.put(&k("e"), &audio, false).unwrap();
    assert!(!has("a") && has("b"), "then a; the older preset b stays");
    cache.put(&k("p2"), &audio, true).unwrap();
    assert!(
        !has("d") && has("b") && has("e"),
        "a preset evicts unpinned entries first"
    );
    cache.put(&k("f"), &audio, false).unwrap();
    assert!(!has("e") && has("b") && has("p2") && has("f"));
    assert_eq!(cache.total_bytes(), 3 * size);
    assert_eq!(files(dir.path()).len(), 3, "evicted files are deleted");

    // Reopening keeps the order (last use is the file's mtime).
    drop(cache);
    let cache = AudioCache::open(dir.path(), 2 * size).unwrap();
    let has = |name: &str| cache.contains(&k(name));
    assert!(
        !has("b") && has("p2") && has("f"),
        "over the new cap: least recent went"
    );
    cache.pin(&k("p2"), true);
    cache.pin(&k("f"), true);
    // Only presets left: an unpinned entry never evicts one, it is refused.
    let err = cache.put(&k("g"), &audio, false).unwrap_err();
    assert!(matches!(err, CacheError::Full { .. }), "{err}");
    assert!(has("p2") && has("f"));
    // A preset may evict the least recently used preset.
    cache.put(&k("p3"), &audio, true).unwrap();
    assert!(!has("p2") && has("f") && has("p3"));
    // An entry bigger than the whole cache is refused.
    let small_dir = tempfile::tempdir().unwrap();
    let small = AudioCache::open(small_dir.path(), size - 1).unwrap();
    assert!(matches!(
        small.put(&k("h"), &audio, true),
        Err(CacheError::TooLarge { .. })
    ));
}

#[test]
fn cached_audio_plays_with_the_emulator_stopped() {
    let rt = rt();
    rt.block_on(async {
        let emu = emulator().await;
        let base = emu.base_url("fast,id=offline");
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(AudioCache::open(dir.path(), 1 << 20).unwrap());
        let src = CachingSource::new(client(&base, KEY), cache, &base);
        let cached = req("Dinner is ready.");
        read_all(&src, &cached).await.unwrap();
        src.settle().await;
        emu.shutdown().await;

        let (audio, attempts) = read_all(&src, &cached).await.unwrap();
        assert_eq!((audio, attempts), (body("Dinner is ready."), 0));
        // Something never cached fails with the network's reason.
        let err = read_all(&src, &req("Something new.")).await.unwrap_err();
        assert!(matches!(err, TtsError::Connect { .. }), "{err}");
    });
}

#[test]
fn a_broken_or_full_cache_never_stops_live_speech() {
    let rt = rt();
    rt.block_on(async {
        let emu = emulator().await;
        let base = emu.base_url("fast,id=broken");
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let cache = Arc::new(AudioCache::open(&dir, 1 << 20).unwrap());
        let src = CachingSource::new(client(&base, KEY), cache.clone(), &base);
        // The cache directory is removed: it is made again on the next store.
        std::fs::remove_dir_all(&dir).unwrap();
        let r = req("Dinner is ready.");
        let (audio, _) = read_all(&src, &r).await.unwrap();
        src.settle().await;
        assert_eq!(audio, body("Dinner is ready."));
        assert!(cache.contains(&src.key(&r)));
        // The cache path becomes unusable (a file where the directory was): speech still
        // plays, live, every time.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(&dir, b"not a directory").unwrap();
        for _ in 0..2 {
            let (audio, attempts) = read_all(&src, &r).await.unwrap();
            src.settle().await;
            assert_eq!((audio, attempts), (body("Dinner is ready."), 1));
        }

        // Full of presets: live speech still plays, just uncached.
        let full_dir = root.path().join("full");
        let size = body("Hi.").len() as u64;
        let full = Arc::new(AudioCache::open(&full_dir, size).unwrap());
        full.put(&key(&base, &req("preset")), &body("Hi."), true)
            .unwrap();
        let src = CachingSource::new(client(&base, KEY), full.clone(), &base);
        let (audio, _) = read_all(&src, &req("Hi.")).await.unwrap();
        src.settle().await;
        assert_eq!(audio, body("Hi."));
        assert!(full.contains(&key(&base, &req("preset"))));
        emu.shutdown().await;
    });
}

#[test]
fn the_key_covers_everything_that_shapes_the_audio_and_nothing_else() {
    let base = "https://api.openai.com/v1";
    let r = req("Dinner is ready.");
    let k = key(base, &r);
    assert_eq!(k.as_str().len(), 64);
    assert!(!k.as_str().contains("Dinner"));
    let variants: Vec<(&str, SpeechRequest, &str)> = vec![
        (
            "model",
            SpeechRequest {
                model: "tts-1".into(),
                ..r.clone()
            },
            base,
        ),
        (
            "voice",
            SpeechRequest {
                voice: "nova".into(),
                ..r.clone()
            },
            base,
        ),
        (
            "text",
            SpeechRequest {
                input: "Dinner is ready!".into(),
                ..r.clone()
            },
            base,
        ),
        (
            "format",
            SpeechRequest {
                format: AudioFormat::Pcm,
                ..r.clone()
            },
            base,
        ),
        (
            "speed",
            SpeechRequest {
                speed: Some(1.25),
                ..r.clone()
            },
            base,
        ),
        (
            "instructions",
            SpeechRequest {
                instructions: Some("Cheerful.".into()),
                ..r.clone()
            },
            base,
        ),
        ("api base", r.clone(), "http://127.0.0.1:8000/v1"),
    ];
    for (what, v, b) in &variants {
        assert_ne!(key(b, v), k, "{what} must change the key");
    }
    // Spellings the API treats the same give the same key.
    assert_eq!(key("https://api.openai.com/v1/", &r), k);
    assert_eq!(
        key(
            base,
            &SpeechRequest {
                speed: Some(1.0),
                ..r.clone()
            }
        ),
        k
    );
    assert_eq!(
        key(
            base,
            &SpeechRequest {
                instructions: Some("  ".into()),
                ..r.clone()
            }
        ),
        k
    );
    // Field boundaries cannot be shifted to collide.
    let a = SpeechRequest {
        voice: "alloy".into(),
        input: "x".into(),
        ..r.clone()
    };
    let b = SpeechRequest {
        instructions: Some("x".into()),
        input: "".into(),
        ..a.clone()
    };
    assert_ne!(key(base, &a), key(base, &b));
}

fn requests(texts: &[(&str, &str)]) -> BTreeMap<String, SpeechRequest> {
    texts.iter().map(|(n, t)| (n.to_string(), req(t))).collect()
}

#[test]
fn the_renderer_re_renders_only_changed_presets() {
    let rt = rt();
    rt.block_on(async {
        let emu = emulator().await;
        let scenario = "fast,id=render";
        let base = emu.base_url(scenario);
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(AudioCache::open(dir.path(), 1 << 20).unwrap());
        let src = CachingSource::new(client(&base, KEY), cache.clone(), &base);
        let renderer = Renderer::new(src, RenderBackoff::default());

        let s = renderer.update(&requests(&[
            ("dinner", "Dinner is ready."),
            ("leave", "Leaving now."),
        ]));
        assert_eq!(s.rendering, vec!["dinner", "leave"]);
        renderer.settled().await;
        assert!(renderer
            .status()
            .iter()
            .all(|p| p.state == PresetState::Cached));
        assert_eq!(emu.stats().requests_for(scenario), 2);

        let s = renderer.update(&requests(&[
            ("dinner", "Dinner is ready."),
            ("leave", "Leaving in 5 minutes."),
        ]));
        assert_eq!(
            (s.rendering, s.unchanged),
            (vec!["leave".to_string()], vec!["dinner".to_string()])
        );
        renderer.settled().await;
        assert_eq!(
            emu.stats().requests_for(scenario),
            3,
            "only the changed preset was fetched"
        );
        assert!(cache.contains(&key(&base, &req("Leaving in 5 minutes."))));

        // A preset whose file left the cache is rendered again on the next update.
        assert!(cache.remove(&key(&base, &req("Dinner is ready."))));
        let s = renderer.update(&requests(&[
            ("dinner", "Dinner is ready."),
            ("leave", "Leaving in 5 minutes."),
        ]));
        assert_eq!(s.rendering, vec!["dinner"]);
        renderer.settled().await;
        assert_eq!(emu.stats().requests_for(scenario), 4);

        // Removing a preset unpins its audio.
        let s = renderer.update(&requests(&[("dinner", "Dinner is ready.")]));
        assert_eq!(s.removed, vec!["leave"]);
        assert_eq!(renderer.status().len(), 1);
        emu.shutdown().await;
    });
}

#[test]
fn a_preset_that_cannot_render_says_why_and_is_retried() {
    let rt = rt();
    rt.block_on(async {
        let emu = emulator().await;
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(AudioCache::open(dir.path(), 1 << 20).unwrap());

        // A rejected key: the state says so, with the API's reason.
        let base = emu.base_url("fast,id=badkey");
        let src = CachingSource::new(
            client(&base, "sk-wrong-key-000000000000"),
            cache.clone(),
            &base,
        );
        let renderer = Renderer::new(src, RenderBackoff::default());
        renderer.update(&requests(&[("dinner", "Dinner is ready.")]));
        renderer.settled().await;
        let st = renderer.status();
        let PresetState::Failed {
            reason, attempts, ..
        } = &st[0].state
        else {
            panic!("expected a failure, got {:?}", st[0].state);
        };
        assert!(reason.contains("401"), "{reason}");
        assert_eq!(*attempts, 1);
        assert!(
            st[0].state.to_string().contains("retry in"),
            "{}",
            st[0].state
        );
        assert!(!reason.contains("sk-wrong-key-000000000000"));
        // A reload with the right key retries at once, without waiting for the backoff.
        renderer.replace_source(CachingSource::new(client(&base, KEY), cache.clone(), &base));
        let s = renderer.update(&requests(&[("dinner", "Dinner is ready.")]));
        assert_eq!(s.rendering, vec!["dinner"]);
        renderer.settled().await;
        assert_eq!(renderer.status()[0].state, PresetState::Cached);
        drop(renderer);
        let dir2 = tempfile::tempdir().unwrap();
        let cache = Arc::new(AudioCache::open(dir2.path(), 1 << 20).unwrap());

        // Two server errors, then success: retried with backoff until cached.
        let scenario = "fast,fail=500x2,id=retry";
        let base = emu.base_url(scenario);
        let src = CachingSource::new(client(&base, KEY), cache.clone(), &base);
        let renderer = Renderer::new(
            src,
            RenderBackoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(50),
            },
        );
        renderer.update(&requests(&[("dinner", "Dinner is ready.")]));
        tokio::time::timeout(Duration::from_secs(60), async {
            while renderer.status()[0].state != PresetState::Cached {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("hang guard: the preset was never cached");
        assert_eq!(emu.stats().status_count(scenario, 500), 2);
        assert_eq!(emu.stats().status_count(scenario, 200), 1);
        emu.shutdown().await;
    });
}
