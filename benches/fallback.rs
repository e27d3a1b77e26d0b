//! Fallback voice benchmark (figures, not a timed test): `cargo bench --bench fallback`.
//!
//! `herald serve` on a FIFO-clocked alsa-lib device (a real-time "DAC", see tests/support),
//! device kept open, the API unreachable in two ways: a port where nothing listens
//! (connection refused) and the in-process emulator answering HTTP 500, each with
//! `max_attempts = 1`. For each announcement it records the daemon's
//! `fallback_to_audio_ms` (the API's failure reaching the pipeline → the first period of
//! espeak-ng's speech written to the device: "error → first fallback sample"), and the
//! client-side time from sending the request to the `started` reply. As a reference, it
//! times espeak-ng alone: process start → first audio byte on its stdout. Results are in
//! docs/BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::daemon::{timed_request, OnFifo};

const KEY: &str = "sk-bench-fallback-0123456789";
const TEXT: &str = "The washing machine has finished.";
const RUNS: usize = 10;

fn start(dir: &Path, name: &str, base: &str) -> OnFifo {
    OnFifo::start(dir, name, KEY, |device, socket, cache| {
        format!(
            "[api]\napi_base = \"{base}\"\nmax_attempts = 1\n[audio]\ndevice = \"{device}\"\n[daemon]\nsocket_path = \"{}\"\nidle_close_s = 0\nlead_in_ms = 0\nkeepalive_s = 0\n[cache]\ndir = \"{}\"\n",
            socket.display(),
            cache.display()
        )
    })
}

/// One announcement: (daemon's fallback_to_audio_ms, client send → `started` in ms).
fn announce(d: &OnFifo) -> (f64, f64) {
    let line = serde_json::json!({ "text": TEXT }).to_string();
    let (client, _, finished) = timed_request(&d.socket, &line);
    assert_eq!(finished["voice"], "fallback", "{finished}");
    let f = finished["fallback_to_audio_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no fallback_to_audio_ms: {finished}"));
    (f, client)
}

/// espeak-ng alone: spawn → first byte of audio on stdout, in ms.
fn espeak_first_byte() -> f64 {
    let t = Instant::now();
    let mut child = Command::new("espeak-ng")
        .args(["--stdout", "--stdin", "-b", "1", "-v", "en", "-s", "175"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("espeak-ng");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(TEXT.as_bytes()).unwrap();
    drop(stdin);
    let mut byte = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut byte).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = child.wait();
    ms
}

fn summary(mut x: Vec<f64>) -> String {
    x.sort_by(|a, b| a.total_cmp(b));
    format!(
        "median {:>6.1}  min {:>6.1}  max {:>6.1} ms",
        x[x.len() / 2],
        x[0],
        x[x.len() - 1]
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fallback benchmark: run it with `cargo bench --bench fallback`");
        return;
    }
    let emu = support::emulator::shared(KEY);
    let dir = tempfile::tempdir().unwrap();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/v1", l.local_addr().unwrap().port())
    };
    println!("herald fallback benchmark — {TEXT:?}, FIFO-clocked device kept open, {RUNS} announcements each");
    let cases = [
        ("connection refused", refused),
        ("HTTP 500", emu.base_url("fast,fail=500,id=bench-fb500")),
    ];
    for (i, (label, base)) in cases.into_iter().enumerate() {
        let mut d = start(dir.path(), &format!("fb{i}"), &base);
        announce(&d); // warm-up: opens the device
        let runs: Vec<(f64, f64)> = (0..RUNS).map(|_| announce(&d)).collect();
        println!("{label}:");
        println!(
            "  error → first fallback sample (daemon): {}",
            summary(runs.iter().map(|r| r.0).collect())
        );
        println!(
            "  request → started (client):             {}",
            summary(runs.iter().map(|r| r.1).collect())
        );
        d.terminate();
    }
    println!(
        "espeak-ng alone, spawn → first audio byte:  {}",
        summary((0..RUNS).map(|_| espeak_first_byte()).collect())
    );
}
