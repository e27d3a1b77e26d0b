//! Preset press benchmark (figures, not a timed test): `cargo bench --bench press`.
//!
//! `herald serve` on a FIFO-clocked alsa-lib device (a real-time "DAC", see tests/support)
//! with one preset, rendered from the in-process emulator into the cache before measuring.
//! For each press it records the client-side time from sending the `preset` line to the
//! `started` reply, and the daemon's own `start_to_audio_ms` (job leaves the queue →
//! first non-silent period written to the device: "first sample written" on the daemon's
//! clock). Three daemons: device kept open (`idle_close_s = 0`, after one warm-up press),
//! device closed before every press (`idle_close_s = 1`, 2 s pause) with the default
//! `lead_in_ms = 200`, and closed with `lead_in_ms = 0`. Results are in docs/BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use support::daemon::{timed_request, OnFifo};

const KEY: &str = "sk-bench-press-0123456789";
const TEXT: &str = "Dinner is ready.";
const PRESSES: usize = 10;

fn start(dir: &Path, name: &str, base: &str, idle_close_s: u32, lead_in_ms: u32) -> OnFifo {
    let d = OnFifo::start(dir, name, KEY, |device, socket, cache| {
        format!(
            "[api]\napi_base = \"{base}\"\n[audio]\ndevice = \"{device}\"\n[daemon]\nsocket_path = \"{}\"\nidle_close_s = {idle_close_s}\nlead_in_ms = {lead_in_ms}\nkeepalive_s = 0\n[cache]\ndir = \"{}\"\n[presets.dinner]\ntext = \"{TEXT}\"\n",
            socket.display(),
            cache.display()
        )
    });
    wait_cached(&d);
    d
}

/// Polls `presets` until the preset is cached.
fn wait_cached(d: &OnFifo) {
    let t = Instant::now();
    loop {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        writeln!(s, "{{\"cmd\":\"presets\"}}").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["presets"][0]["state"] == "cached" {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "never cached: {line}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One press; returns (client send → `started` reply, daemon start_to_audio_ms) once
/// the job finished.
fn press(d: &OnFifo) -> (f64, f64) {
    let (client, daemon, finished) =
        timed_request(&d.socket, "{\"cmd\":\"preset\",\"name\":\"dinner\"}");
    assert_eq!(
        finished["attempts"], 0,
        "the press used the network: {finished}"
    );
    (client, daemon)
}

fn summary(mut x: Vec<f64>) -> String {
    x.sort_by(|a, b| a.total_cmp(b));
    format!(
        "median {:>5.1}  min {:>5.1}  max {:>5.1} ms",
        x[x.len() / 2],
        x[0],
        x[x.len() - 1]
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("press benchmark: run it with `cargo bench --bench press`");
        return;
    }
    // The emulator stands in for OpenAI on 127.0.0.1 for the whole run.
    let emu = support::emulator::shared(KEY);
    let dir = tempfile::tempdir().unwrap();
    println!("herald press benchmark — cached preset {TEXT:?}, FIFO-clocked device, {PRESSES} presses each");
    let runs: [(&str, u32, u32); 3] = [
        ("device open (idle_close_s = 0)", 0, 200),
        ("device closed (idle_close_s = 1), lead_in_ms = 200", 1, 200),
        ("device closed (idle_close_s = 1), lead_in_ms = 0", 1, 0),
    ];
    for (i, (label, idle, lead)) in runs.into_iter().enumerate() {
        let mut d = start(
            dir.path(),
            &format!("d{i}"),
            &emu.base_url(&format!("id=press{i}")),
            idle,
            lead,
        );
        let mut figures = Vec::new();
        if idle == 0 {
            press(&d); // warm-up: opens the device
        }
        for _ in 0..PRESSES {
            if idle > 0 {
                std::thread::sleep(Duration::from_secs(2));
                d.restart_clock();
            } else {
                std::thread::sleep(Duration::from_millis(200));
            }
            figures.push(press(&d));
        }
        println!("{label}");
        println!(
            "  press → first sample written (daemon)  {}",
            summary(figures.iter().map(|x| x.1).collect())
        );
        println!(
            "  press sent → `started` reply (client)  {}",
            summary(figures.iter().map(|x| x.0).collect())
        );
        d.terminate();
    }
    chime_runs(emu, dir.path());
}

/// Issue 10: a chime before a live (uncached) announcement from the emulator's `slow`
/// profile (1.15× real time): job → first (chime) sample written, with the device open and
/// closed, and when the speech itself reached the device — against the same requests
/// without a chime.
fn chime_runs(emu: &herald_emulator::EmulatorHandle, dir: &Path) {
    let chime = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/chimes/ding.wav");
    println!();
    println!("chime before a live announcement, emulator `slow`, {PRESSES} requests each");
    let runs = [
        ("device open", 0u32, true),
        ("device closed, lead_in_ms = 200", 1, true),
        ("no chime (baseline), device open", 0, false),
    ];
    for (i, (label, idle, chimed)) in runs.into_iter().enumerate() {
        let base = emu.base_url(&format!("slow,id=chime{i}"));
        let mut d = OnFifo::start(dir, &format!("c{i}"), KEY, |device, socket, cache| {
            format!(
                "[api]\napi_base = \"{base}\"\n[audio]\ndevice = \"{device}\"\n[daemon]\nsocket_path = \"{}\"\nidle_close_s = {idle}\nkeepalive_s = 0\nchime = \"ding\"\n[cache]\ndir = \"{}\"\n[chimes.ding]\nfile = \"{}\"\n",
                socket.display(),
                cache.display(),
                chime.display()
            )
        });
        let speak = |n: usize| format!("{{\"text\":\"{TEXT} Number {n}.\",\"chime\":{chimed}}}");
        if idle == 0 {
            timed_request(&d.socket, &speak(0));
        }
        let mut figures = Vec::new();
        for n in 1..=PRESSES {
            if idle > 0 {
                std::thread::sleep(Duration::from_secs(2));
                d.restart_clock();
            }
            let (client, daemon, finished) = timed_request(&d.socket, &speak(n));
            assert_eq!(
                finished["chime"].as_str(),
                chimed.then_some("ding"),
                "{finished}"
            );
            let speech = finished["request_to_audio_ms"].as_f64().unwrap_or(f64::NAN);
            figures.push((client, daemon, speech));
        }
        let column = |f: fn(&(f64, f64, f64)) -> f64| summary(figures.iter().map(f).collect());
        println!("{label}");
        println!(
            "  job → first sample written (daemon)       {}",
            column(|x| x.1)
        );
        println!(
            "  request sent → `started` (client)         {}",
            column(|x| x.0)
        );
        println!(
            "  speech request → first speech sample     {}",
            column(|x| x.2)
        );
        d.terminate();
    }
}
