//! Pipeline benchmark (figures, not a timed test): `cargo bench --bench pipeline`.
//!
//! For each emulator scenario and format it runs the release `herald speak` on a
//! FIFO-clocked alsa-lib device (real-time pacing, see tests/support) against the
//! in-process emulator and prints: time to first audio, overhead (first audio bytes in →
//! first sample written), stalls, audible gaps at the "DAC", the process's peak RSS and CPU.
//! Then it compares the CPU time per second of audio of `herald play` (demux + decode +
//! playout into a `null` PCM) with bare libopus decoding of the same packets.
//! Results and the command are recorded in docs/BENCHMARKS.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Cursor;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_emulator::{encode_ogg_opus, synthesize, OggLayout};
use support::{alsa_env, claim_fifo, FifoClock};

const KEY: &str = "sk-bench-0123456789abcdef";
const TEXT: &str = "The train to the airport leaves from platform four in ten minutes. \
    Please take your luggage with you and mind the gap between the train and the platform.";

struct Run {
    ttfa_ms: f64,
    overhead_ms: f64,
    stalls: String,
    gaps: usize,
    rss_kib: i64,
    cpu_s: f64,
    audio_s: f64,
}

/// Runs `herald` with `args`, returning its stderr, peak RSS (KiB, VmHWM) and CPU seconds.
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(args: &[&str], envs: &[(&str, &str)]) -> (String, i64, f64, bool) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn herald");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    // Peak RSS from the child's own VmHWM, polled until it exits: rusage's ru_maxrss would
    // include the bench's memory inherited at fork (Linux keeps the pre-exec maximum).
    let pid = child.id() as libc::pid_t;
    let hwm = std::thread::spawn(move || {
        let mut peak = 0i64;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<i64>().ok())
            else {
                break; // a zombie has no memory lines
            };
            peak = peak.max(kib);
            std::thread::sleep(Duration::from_millis(2));
        }
        peak
    });
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is a plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let err = reader.join().unwrap_or_default();
    let peak_rss = hwm.join().unwrap_or(0);
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let ok = std::process::ExitStatus::from_raw(status).success();
    (err, peak_rss, tv(usage.ru_utime) + tv(usage.ru_stime), ok)
}

fn field(summary: &str, before: &str, after: &str) -> Option<f64> {
    let start = summary.find(before)? + before.len();
    let rest = &summary[start..];
    rest[..rest.find(after)?].trim().parse().ok()
}

fn speak(base: &str, format: &str, config: &std::path::Path, fifo: &support::FifoPcm) -> Run {
    let env = alsa_env();
    let clock = FifoClock::start(&fifo.path, 48_000, 1);
    let (var, value) = env.env_var();
    let cfg = config.to_str().unwrap();
    let args = [
        "--config",
        cfg,
        "speak",
        "--api-base",
        base,
        "--device",
        &fifo.pcm,
        "--format",
        format,
        TEXT,
    ];
    let (err, rss, cpu, ok) = run_measured(&args, &[("OPENAI_API_KEY", KEY), (var, value)]);
    let capture = clock.finish(Duration::from_secs(3));
    assert!(ok, "herald failed: {err}");
    let line = err.lines().last().unwrap_or_default().to_string();
    Run {
        ttfa_ms: field(&line, "time to first audio ", " ms").unwrap_or(f64::NAN),
        overhead_ms: field(&line, "(overhead ", " ms)").unwrap_or(f64::NAN),
        stalls: line
            .split(", ")
            .find(|p| p.starts_with("stalls"))
            .unwrap_or("?")
            .trim_start_matches("stalls ")
            .to_string(),
        gaps: capture.gaps.len(),
        rss_kib: rss,
        cpu_s: cpu,
        audio_s: field(&line, ", audio ", " s").unwrap_or(f64::NAN),
    }
}

/// CPU seconds per second of audio of bare libopus decoding of `file`'s packets.
fn bare_decode_cpu(file: &[u8]) -> (f64, f64) {
    let mut reader = ogg::PacketReader::new(Cursor::new(file));
    let mut packets = Vec::new();
    while let Some(p) = reader.read_packet().unwrap() {
        packets.push(p.data);
    }
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut buf = vec![0i16; 5760];
    let cpu = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the struct we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    };
    let start = cpu();
    let mut frames = 0usize;
    for p in &packets[2..] {
        frames += dec.decode(p, &mut buf, false).unwrap();
    }
    (cpu() - start, frames as f64 / 48_000.0)
}

/// CPU per second of audio of the pipeline, against bare libopus.
fn cpu_figures(dir: &std::path::Path) {
    let wav = dir.join("play.wav");
    let mut runs = Vec::new();
    // Long enough (≈ 4 min of speech) that CPU-time accounting granularity is noise; the
    // best of three runs each, as for any CPU figure on a shared machine.
    for text in [TEXT.to_string(), TEXT.repeat(30)] {
        let pcm = synthesize(&text, "alloy", 1.0).unwrap();
        let file = encode_ogg_opus(&pcm, &OggLayout::default()).unwrap();
        let path = dir.join(format!("play-{}.opus", text.len()));
        std::fs::write(&path, &file).unwrap();
        let mut best: Option<(f64, i64, Duration)> = None;
        for _ in 0..3 {
            let t = Instant::now();
            let args = [
                "play",
                "--out",
                wav.to_str().unwrap(),
                path.to_str().unwrap(),
            ];
            let (err, rss, cpu, ok) = run_measured(&args, &[]);
            assert!(ok, "herald play failed: {err}");
            if best.is_none_or(|b| cpu < b.0) {
                best = Some((cpu, rss, t.elapsed()));
            }
        }
        let (cpu, rss, wall) = best.unwrap();
        runs.push((pcm.len() as f64 / 24_000.0, cpu, rss, wall, file));
    }
    let (short_audio, short_cpu, _, _, _) = &runs[0];
    let (audio, cpu, rss, wall, file) = &runs[1];
    let marginal = (cpu - short_cpu) / (audio - short_audio);
    let (bare_cpu, bare_audio) = (0..3)
        .map(|_| bare_decode_cpu(file))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    let bare = bare_cpu / bare_audio;
    println!();
    println!(
        "CPU per second of audio ({:.1} s vs {:.1} s of speech, {} KiB Ogg Opus):",
        audio,
        short_audio,
        file.len() / 1024
    );
    println!(
        "  herald play, whole process             {:>7.2} ms/s  (wall {:.2} s, peak RSS {:.1} MiB)",
        cpu * 1000.0 / audio,
        wall.as_secs_f64(),
        *rss as f64 / 1024.0
    );
    println!(
        "  herald play, per extra second of audio {:>7.2} ms/s  (start-up removed)",
        marginal * 1000.0
    );
    println!(
        "  bare libopus decode of the same packets {:>7.2} ms/s",
        bare * 1000.0
    );
    println!(
        "  ratio (per extra second / bare)         {:>7.2}x",
        marginal / bare
    );
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: stay out of the way.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pipeline benchmark: run it with `cargo bench --bench pipeline`");
        return;
    }
    // `cargo bench --bench pipeline -- cpu` (or `scenarios`, or `sweep`) runs one part
    // only; `sweep` (WiFi stalls over many seeds) runs only when named.
    let parts: Vec<String> = std::env::args()
        .filter(|a| a == "cpu" || a == "scenarios" || a == "sweep")
        .collect();
    let only = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    // The emulator stands in for OpenAI on 127.0.0.1 for the whole run.
    let emu = support::emulator::shared(KEY);
    let dir = tempfile::tempdir().unwrap();
    let default_cfg = dir.path().join("default.toml");
    std::fs::write(&default_cfg, "").unwrap();
    let eager_cfg = dir.path().join("eager.toml");
    std::fs::write(&eager_cfg, "[audio]\njitter_reserve_ms = 0\n").unwrap();

    // Runs are sequential, so one FIFO device serves them all.
    let fifo = claim_fifo();
    // Warm the emulator's synthesis cache so espeak-ng's run is not counted as latency.
    synthesize(TEXT, "alloy", 1.0).unwrap();
    println!(
        "herald pipeline benchmark — {} chars of text, FIFO-clocked ALSA device at 48 kHz",
        TEXT.len()
    );
    println!(
        "{:<34} {:<6} {:<8} {:>9} {:>12} {:>14} {:>5} {:>9} {:>11}",
        "scenario",
        "format",
        "reserve",
        "ttfa ms",
        "overhead ms",
        "stalls",
        "gaps",
        "rss MiB",
        "cpu ms/s"
    );
    let scenarios = [
        ("fast (ttfb 0, 50x)", "fast"),
        ("default (ttfb 300 ms, 4x)", "realtime"),
        ("wifi (2.5x, stalls <= 1 s)", "wifi,seed=3"),
        ("slow (ttfb 1 s, 1.15x)", "slow"),
    ];
    let scenario_runs = if only("scenarios") {
        &scenarios[..]
    } else {
        &[]
    };
    for (i, (label, sc)) in scenario_runs.iter().enumerate() {
        for format in ["opus", "pcm"] {
            for (reserve, cfg) in [("1000", &default_cfg), ("0", &eager_cfg)] {
                let base = emu.base_url(&format!("{sc},id=bench{i}-{format}-{reserve}"));
                let r = speak(&base, format, cfg, &fifo);
                println!(
                    "{:<34} {:<6} {:<8} {:>9.0} {:>12.0} {:>14} {:>5} {:>9.1} {:>11.1}",
                    label,
                    format,
                    reserve,
                    r.ttfa_ms,
                    r.overhead_ms,
                    r.stalls,
                    r.gaps,
                    r.rss_kib as f64 / 1024.0,
                    r.cpu_s * 1000.0 / r.audio_s
                );
            }
        }
    }

    // CPU per second of audio: herald play (demux + decode + playout into the WAV sink,
    // which takes periods as fast as they come) of a long and a one-sentence file; the
    // difference removes process start-up, so the figure is the per-second cost of the
    // pipeline itself. Compared with bare libopus. (A `null` PCM would not do: it never
    // blocks, so the audio thread would spin on silence whenever the decoder is behind.)
    if only("cpu") {
        cpu_figures(dir.path());
    }
    if parts.iter().any(|p| p == "sweep") {
        sweep(emu, dir.path(), &fifo);
    }
}

/// The WiFi profile over many stall patterns (seeds) per format and jitter reserve: one
/// seed says little about a policy that must survive stalls wherever they fall.
fn sweep(emu: &herald_emulator::EmulatorHandle, dir: &std::path::Path, fifo: &support::FifoPcm) {
    const SEEDS: u64 = 8;
    println!();
    println!("WiFi profile (2.5x, stalls 150-1000 ms every ~2 s) over seeds 1..={SEEDS}:");
    println!(
        "{:<6} {:<8} {:>14} {:>12} {:>14} {:>6} {:>16}",
        "format", "reserve", "runs stalled", "stalls", "stall ms max", "gaps", "overhead ms mean"
    );
    for format in ["opus", "pcm"] {
        for reserve in [0u32, 250, 500, 750, 1000] {
            let cfg = dir.join(format!("sweep-{reserve}.toml"));
            std::fs::write(&cfg, format!("[audio]\njitter_reserve_ms = {reserve}\n")).unwrap();
            let (mut stalled, mut stalls, mut worst, mut gaps, mut overhead) =
                (0, 0, 0.0f64, 0, 0.0);
            for seed in 1..=SEEDS {
                let base = emu.base_url(&format!(
                    "wifi,seed={seed},id=sweep-{format}-{reserve}-{seed}"
                ));
                let r = speak(&base, format, &cfg, fifo);
                let count: u32 = r
                    .stalls
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let ms = field(&format!("{} ", r.stalls), "(", " ms)").unwrap_or(0.0);
                stalled += u32::from(count > 0);
                stalls += count;
                worst = worst.max(ms);
                gaps += r.gaps;
                overhead += r.overhead_ms / SEEDS as f64;
            }
            println!(
                "{:<6} {:<8} {:>14} {:>12} {:>14.0} {:>6} {:>16.0}",
                format,
                reserve,
                format!("{stalled}/{SEEDS}"),
                stalls,
                worst,
                gaps,
                overhead
            );
        }
    }
}
