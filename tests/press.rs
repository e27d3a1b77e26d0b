//! Presets end to end: the real `herald serve` and `herald press`/`herald presets` binaries,
//! a dedicated in-process emulator standing in for OpenAI (shut down to prove a press needs
//! no network), FIFO-backed PCMs drained at 48 kHz by a `FifoClock` standing in for the DAC,
//! and `herald_null` where only replies matter.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use herald::tts::AudioFormat;
use herald_emulator::{expected_body, Emulator, EmulatorConfig, EmulatorHandle};
use serde_json::{json, Value};
use support::daemon::Served;
use support::reference::decode_ogg_opus;
use support::FifoClock;

const KEY: &str = "sk-press-0123456789abcdefSECRET";
/// Hang guard for replies and state changes.
const TIMEOUT: Duration = Duration::from_secs(30);
const DINNER: &str = "Dinner is ready, come to the table.";

/// A dedicated emulator (its own runtime), so a test can shut it down.
fn emulator() -> (tokio::runtime::Runtime, EmulatorHandle) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cfg = EmulatorConfig {
        api_key: KEY.into(),
        ..Default::default()
    };
    let handle = rt.block_on(Emulator::start(cfg)).unwrap();
    (rt, handle)
}

struct Daemon {
    /// First field: dropped (killed) before the clock that drains its FIFO.
    served: Served,
    clock: Option<FifoClock>,
}

impl std::ops::Deref for Daemon {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

impl Daemon {
    /// `herald serve` on a FIFO-clocked device (`fifo`) or `herald_null`, with its cache in
    /// the temp dir and `extra` appended to the config.
    fn start(base: &str, fifo: bool, extra: &str) -> Daemon {
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
        let text = format!(
            "[api]\napi_base = \"{base}\"\nmax_attempts = 1\n\n[audio]\ndevice = \"{device}\"\nrealtime_priority = 0\n\n[daemon]\nsocket_path = \"{}\"\nidle_close_s = 0\nlead_in_ms = 0\nkeepalive_s = 0\n\n[cache]\ndir = \"{}\"\n\n{extra}",
            sock.display(),
            dir.path().join("cache").display()
        );
        let served = Served::start(dir, sock, &text, KEY, &[], TIMEOUT);
        Daemon { served, clock }
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `herald presets --json`.
    fn presets(&self) -> Vec<Value> {
        let out = self.herald(&["presets", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    }

    /// Waits until preset `name` is in `state` (a hang guard, not a timing assertion).
    fn wait_state(&self, name: &str, state: &str) -> Value {
        let until = Instant::now() + TIMEOUT;
        loop {
            let list = self.presets();
            // A preset added by a reload appears once the reload is done.
            let p = list
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap_or(Value::Null);
            if p["state"] == state {
                return p;
            }
            assert!(
                Instant::now() < until,
                "preset {name} never became {state}: {p}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn conn(&self) -> (UnixStream, BufReader<UnixStream>) {
        let w = UnixStream::connect(&self.sock).unwrap();
        w.set_read_timeout(Some(TIMEOUT)).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        (w, r)
    }

    /// Sends `req` and returns its replies up to the terminal one.
    fn job(&self, req: Value) -> Vec<Value> {
        let (mut w, mut r) = self.conn();
        w.write_all(format!("{req}\n").as_bytes()).unwrap();
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
            let v: Value = serde_json::from_str(&line).unwrap();
            let done = matches!(
                v["event"].as_str(),
                Some("finished" | "failed" | "cancelled" | "interrupted" | "ok")
            );
            seen.push(v);
            if done {
                return seen;
            }
        }
    }

    /// Stops the daemon and returns what its FIFO "DAC" played.
    fn played(mut self) -> support::Capture {
        let clock = self.clock.take().unwrap();
        drop(self);
        clock.finish(Duration::from_secs(2))
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn preset_config(text: &str) -> String {
    format!("[presets.dinner]\ntext = \"{text}\"\n\n[presets.bell]\ntext = \"Ding dong.\"\n")
}

#[test]
fn a_cached_preset_plays_sample_exact_from_disk_with_the_api_down() {
    let sc = "fast,tone,id=press-offline";
    let (rt, emu) = emulator();
    let d = Daemon::start(&emu.base_url(sc), true, &preset_config(DINNER));
    d.wait_state("dinner", "cached");
    d.wait_state("bell", "cached");
    let fetched = emu.stats().requests_for(sc);
    assert_eq!(fetched, 2, "each preset is rendered once");
    // No network from here on: the emulator is gone.
    rt.block_on(emu.shutdown());
    drop(rt);

    let out = d.herald(&["press", "dinner"]);
    assert!(out.status.success(), "press failed: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("finished"), "{said}");

    // An unknown preset names the known ones.
    let out = d.herald(&["press", "supper"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("unknown preset 'supper'") && err.contains("bell, dinner"),
        "{err}"
    );
    let table = d.herald(&["presets"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("dinner") && table.contains("cached"),
        "{table}"
    );

    let cap = d.played();
    let body = expected_body(sc, DINNER, "alloy", 1.0, AudioFormat::Opus).unwrap();
    let expected = decode_ogg_opus(&body, 48_000);
    assert!(cap.gaps.is_empty(), "gaps at the DAC: {:?}", cap.gaps);
    // Align on the first sound (the device may have started with silence).
    let lead_got = cap.samples.iter().take_while(|&&s| s == 0).count();
    let lead_ref = expected.iter().take_while(|&&s| s == 0).count();
    assert!(lead_got >= lead_ref, "the voice started too early");
    let start = lead_got - lead_ref;
    let got = &cap.samples[start..];
    assert!(
        got.len() >= expected.len(),
        "{} of {} samples reached the DAC",
        got.len(),
        expected.len()
    );
    assert!(
        got[..expected.len()] == *expected,
        "the DAC received other audio than the reference decode"
    );
    assert!(
        got[expected.len()..].iter().all(|&s| s == 0),
        "noise after the end"
    );
}

#[test]
fn a_preset_that_cannot_be_rendered_is_reported_and_without_a_fallback_a_press_fails_clearly() {
    let sc = "fast,fail=401,id=press-401";
    let (_rt, emu) = emulator();
    // Without the local voice, which would speak it instead (tests/fallback.rs).
    let extra = format!(
        "{}\n[[buttons]]\npin = 17\npreset = \"dinner\"\n\n[fallback]\nengine = \"none\"\n",
        preset_config(DINNER)
    );
    let d = Daemon::start(&emu.base_url(sc), false, &extra);
    let p = d.wait_state("dinner", "failed");
    let reason = p["reason"].as_str().unwrap();
    assert!(reason.contains("401"), "{p}");
    let out = d.herald(&["press", "dinner"]);
    assert!(!out.status.success(), "a press without audio succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("preset 'dinner' is not cached") && err.contains("live synthesis failed"),
        "{err}"
    );
    // Off a Pi the buttons are disabled with one clear error; the socket still serves.
    let log = d.log();
    assert_eq!(log.matches("GPIO buttons are disabled").count(), 1, "{log}");
    let status = d.herald(&["status", "--json"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let s: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["presets"][1]["name"], "dinner");
    assert_eq!(s["presets"][1]["state"], "failed");
}

/// Flips one byte in the middle of every cached file.
fn corrupt_cache(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
        n += 1;
    }
    n
}

#[test]
fn cache_true_replays_without_a_request_and_a_corrupt_file_is_not_played() {
    let sc = "fast,tone,id=press-cache";
    let (_rt, emu) = emulator();
    let d = Daemon::start(
        &emu.base_url(sc),
        false,
        "[presets.bell]\ntext = \"Ding dong.\"\n",
    );
    d.wait_state("bell", "cached");
    let base = emu.stats().requests_for(sc);

    let phrase = json!({"cmd": "speak", "text": "The post has arrived.", "cache": true});
    let first = d.job(phrase.clone());
    let end = first.last().unwrap();
    assert_eq!(end["event"], "finished", "{first:?}");
    assert_eq!(end["attempts"], 1);
    // The store happens when the stream ends; wait until it is renamed into place (a
    // temp file does not count).
    let until = Instant::now() + TIMEOUT;
    let stored = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count()
    };
    while stored(&d.cache_dir()) < 2 {
        assert!(Instant::now() < until, "the phrase was never stored");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = d.job(phrase);
    let end = second.last().unwrap();
    assert_eq!(end["event"], "finished", "{second:?}");
    assert_eq!(
        end["attempts"], 0,
        "the repeat was not served from the cache"
    );
    assert_eq!(emu.stats().requests_for(sc), base + 1);

    // A flipped byte is caught when read: the file is not played, and the press goes to
    // the API (up here) instead.
    assert_eq!(corrupt_cache(&d.cache_dir()), 2);
    let replies = d.job(json!({"cmd": "preset", "name": "bell"}));
    let end = replies.last().unwrap();
    assert_eq!(end["event"], "finished", "{replies:?}");
    assert_eq!(end["attempts"], 1, "corrupt audio was played: {replies:?}");
    assert_eq!(emu.stats().requests_for(sc), base + 2);
}

/// Reads one reply line.
fn read_reply(r: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
    serde_json::from_str(&line).unwrap()
}

#[test]
fn a_press_while_the_preset_plays_follows_while_playing() {
    let sc = "fast,tone,id=press-rules";
    let (_rt, emu) = emulator();
    // About 3 s of audio (the emulator's tone is 60 ms per character).
    let d = Daemon::start(
        &emu.base_url(sc),
        true,
        "[presets.long]\ntext = \"This announcement runs for about three seconds.\"\n",
    );
    d.wait_state("long", "cached");
    let (mut w, mut r) = d.conn();
    w.write_all(b"{\"cmd\":\"preset\",\"name\":\"long\",\"id\":\"first\"}\n")
        .unwrap();
    assert_eq!(read_reply(&mut r)["event"], "queued");
    assert_eq!(read_reply(&mut r)["event"], "started");

    // ignore (the default without a button): nothing happens, the playing job is named.
    let out = d.herald(&["press", "long"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("first"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // restart: the playing one is faded out for a new one from the start.
    let (mut w2, mut r2) = d.conn();
    w2.write_all(
        b"{\"cmd\":\"preset\",\"name\":\"long\",\"id\":\"again\",\"while_playing\":\"restart\"}\n",
    )
    .unwrap();
    assert_eq!(read_reply(&mut r2)["event"], "queued");
    let end = read_reply(&mut r);
    assert_eq!(
        (end["event"].as_str(), end["by"].as_str()),
        (Some("interrupted"), Some("again")),
        "{end}"
    );
    assert_eq!(read_reply(&mut r2)["event"], "started");
    // queue: played again afterwards.
    let third =
        d.job(json!({"cmd": "preset", "name": "long", "id": "third", "while_playing": "queue"}));
    assert_eq!(third[0]["event"], "queued", "{third:?}");
    assert_eq!(third.last().unwrap()["event"], "finished", "{third:?}");
    // It played after the restarted one, which ended normally.
    let end = read_reply(&mut r2);
    assert_eq!(
        (end["event"].as_str(), end["id"].as_str()),
        (Some("finished"), Some("again")),
        "{end}"
    );
}

#[test]
fn a_reload_renders_new_and_changed_presets_in_the_background() {
    let sc = "fast,tone,id=press-reload";
    let (_rt, emu) = emulator();
    let d = Daemon::start(
        &emu.base_url(sc),
        false,
        "[presets.bell]\ntext = \"Ding dong.\"\n",
    );
    d.wait_state("bell", "cached");
    assert_eq!(emu.stats().requests_for(sc), 1);
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        format!("{text}\n[presets.door]\ntext = \"Someone is at the door.\"\n"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_state("door", "cached");
    // Only the new preset was fetched; the unchanged one stayed cached.
    assert_eq!(emu.stats().requests_for(sc), 2);
    assert_eq!(d.wait_state("bell", "cached")["name"], "bell");
}
