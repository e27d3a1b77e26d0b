//! Pipeline benchmark (figures, not a timed test): `cargo bench --bench pipeline`.
//!
//! For each emulator scenario and format it runs the release `herald speak` on a
//! FIFO-clocked alsa-lib device (real-time pacing, see tests/support) against the
//! in-process emulator and prints: time to first audio, overhead (first audio bytes in →
//! first sample written), stalls, audible gaps at the "DAC", the process's peak RSS and CPU.
//! Then it compares the CPU time per second of audio of `herald play` (demux + decode +
//! playout into a `null` PCM) with bare libopus decoding of the same packets.
//! `-- limit` (issue 9) sets each run's time to first audio against that run's limit, the
//! earliest gapless start computed from the emulator's send schedule.
//! Results and the command are recorded in docs/BENCHMARKS.md.

#[path = "common/cpu.rs"]
mod cpu;
#[path = "../tests/support/mod.rs"]
mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cpu::thread_cpu;
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
    /// Total length of the gaps at the FIFO "DAC".
    gap_ms: f64,
    /// When the FIFO "DAC" got its first data (the first audio period: `speak` writes no
    /// lead-in), on this process's clock.
    dac_started_at: Option<Instant>,
    /// Every sample the "DAC" played (48 kHz mono).
    samples: Vec<i16>,
    rss_kib: i64,
    cpu_s: f64,
    audio_s: f64,
    /// Audio played slowed down (ms of the original), from herald's summary.
    stretched_ms: f64,
    /// The start followed a learned plan ("start learned" in the summary).
    warm: bool,
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

/// The device herald plays into: the FIFO behind the `file` PCM, which reports no delay and
/// holds up to an ALSA buffer back from the pipe (the DESIGN rig), or with `DAC=delay` the
/// same FIFO through the test plugin, which reports the pipe's fill as its delay and holds
/// nothing back, as a sound card does.
fn dac_pcm(fifo: &support::FifoPcm) -> &str {
    if std::env::var("DAC").is_ok_and(|v| v == "delay") {
        &fifo.delay_pcm
    } else {
        &fifo.pcm
    }
}

fn speak(base: &str, format: &str, config: &std::path::Path, fifo: &support::FifoPcm) -> Run {
    speak_with(base, format, config, fifo, &[])
}

/// [`speak`] with extra environment variables for herald.
fn speak_with(
    base: &str,
    format: &str,
    config: &std::path::Path,
    fifo: &support::FifoPcm,
    extra_env: &[(&str, &str)],
) -> Run {
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
        dac_pcm(fifo),
        "--format",
        format,
        TEXT,
    ];
    let mut envs = vec![("OPENAI_API_KEY", KEY), (var, value)];
    envs.extend_from_slice(extra_env);
    let (err, rss, cpu, ok) = run_measured(&args, &envs);
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
        gap_ms: capture.gap_frames() as f64 * 1000.0 / f64::from(capture.rate),
        dac_started_at: capture.started_at,
        samples: capture.samples,
        rss_kib: rss,
        cpu_s: cpu,
        audio_s: field(&line, ", audio ", " s").unwrap_or(f64::NAN),
        stretched_ms: field(&line, ", slowed ", " ms").unwrap_or(0.0),
        warm: line.contains("start learned"),
    }
}

/// CPU seconds per second of audio of bare libopus decoding of `packets` (into one
/// reused buffer: nothing but the decode is timed).
fn bare_decode_cpu(packets: &[Vec<u8>]) -> f64 {
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut buf = vec![0i16; 5760];
    let start = thread_cpu();
    let mut frames = 0usize;
    for p in packets {
        frames += dec.decode(p, &mut buf, false).unwrap();
    }
    (thread_cpu() - start) / (frames as f64 / 48_000.0)
}

/// Thread CPU seconds per second of audio of slowing `pcm` (48 kHz mono) the way the audio
/// thread does (960-frame blocks through the stretch gate, then libsonic), with every
/// block slowed to 0.9: the cost of one stretched second.
fn stretch_cpu(pcm: &[i16]) -> f64 {
    use herald::audio::stretch::{StretchConfig, Stretcher};
    use herald::audio::stretch_gate::{tempo_for, BlockClassifier, Slowing};
    const PERIOD: usize = 960;
    let mut st = Stretcher::new(StretchConfig::new(48_000, 1, PERIOD)).unwrap();
    let mut gate = BlockClassifier::new(48_000, 1);
    let mut out = vec![0i16; PERIOD];
    let start = thread_cpu();
    for block in pcm.chunks(PERIOD) {
        let kind = gate.classify(&[block]);
        st.set_tempo(tempo_for(Slowing::Urgent, kind, st.min_tempo()));
        let mut rest = block;
        while !rest.is_empty() {
            rest = &rest[st.push(rest).unwrap()..];
            while st.pull(&mut out) > 0 {}
        }
    }
    (thread_cpu() - start) / (pcm.len() as f64 / 48_000.0)
}

/// One CPU measurement of `herald play --out wav` on `path`: (CPU seconds, peak RSS KiB,
/// wall time).
fn play_cpu(path: &std::path::Path, wav: &std::path::Path) -> (f64, i64, Duration) {
    let t = Instant::now();
    let args = [
        "play",
        "--out",
        wav.to_str().unwrap(),
        path.to_str().unwrap(),
    ];
    let (err, rss, cpu, ok) = run_measured(&args, &[]);
    assert!(ok, "herald play failed: {err}");
    (cpu, rss, t.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU per second of audio of the pipeline, against bare libopus.
fn cpu_figures(dir: &std::path::Path) {
    const ROUNDS: usize = 7;
    let wav = dir.join("play.wav");
    // ≈ 4 min of speech, so CPU-time accounting granularity is noise, and 8 s to take the
    // process start-up out.
    let files: Vec<_> = [TEXT.to_string(), TEXT.repeat(30)]
        .iter()
        .map(|text| {
            let pcm = synthesize(text, "alloy", 1.0).unwrap();
            let file = encode_ogg_opus(&pcm, &OggLayout::default()).unwrap();
            let path = dir.join(format!("play-{}.opus", text.len()));
            std::fs::write(&path, &file).unwrap();
            (pcm.len() as f64 / 24_000.0, path, file)
        })
        .collect();
    let (short_audio, short_path, _) = &files[0];
    let (audio, path, file) = &files[1];
    let packets = cpu::audio_packets(file);
    let pcm = cpu::decode(&packets);
    // This machine's speed drifts by ±20 % from one second to the next (a shared VM), so
    // every figure is taken in rounds, each measuring the pipeline, bare libopus and the
    // stretcher back to back; the ratios are per round, and the median is reported.
    let (mut whole, mut marginal, mut bare, mut stretched) = (vec![], vec![], vec![], vec![]);
    let (mut ratio, mut ratio_stretch) = (vec![], vec![]);
    let (mut rss, mut wall) = (0, Duration::ZERO);
    for _ in 0..ROUNDS {
        let (short_cpu, _, _) = play_cpu(short_path, &wav);
        let (cpu, r, w) = play_cpu(path, &wav);
        let b = bare_decode_cpu(&packets);
        let st = stretch_cpu(&pcm);
        let m = (cpu - short_cpu) / (audio - short_audio);
        (rss, wall) = (rss.max(r), wall.max(w));
        whole.push(cpu / audio);
        marginal.push(m);
        bare.push(b);
        stretched.push(st);
        ratio.push(m / b);
        ratio_stretch.push(st / b);
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    println!();
    println!(
        "CPU per second of audio ({:.1} s vs {:.1} s of speech, {} KiB Ogg Opus), median of \
         {ROUNDS} rounds (range):",
        audio,
        short_audio,
        file.len() / 1024
    );
    println!(
        "  herald play, whole process             {:>7.2} ms/s  (wall ≤ {:.2} s, peak RSS {:.1} MiB)",
        median(whole) * 1000.0,
        wall.as_secs_f64(),
        rss as f64 / 1024.0
    );
    println!(
        "  herald play, per extra second of audio {:>7.2} ms/s  (start-up removed)",
        median(marginal) * 1000.0
    );
    println!(
        "  bare libopus decode of the same packets {:>7.2} ms/s",
        median(bare) * 1000.0
    );
    println!(
        "  gate + libsonic per slowed second      {:>7.2} ms/s  (every block at 0.90)",
        median(stretched) * 1000.0
    );
    println!(
        "  ratio (per extra second / bare)         {:>7.2}x  ({})",
        median(ratio.clone()),
        range(&ratio)
    );
    // herald play never slows (a file is all in at once), so the stretcher's cost is
    // measured on its own, on the same speech, and added at the share of audio slowed.
    for share in [0.25, 0.30, 1.0] {
        let with: Vec<f64> = ratio
            .iter()
            .zip(&ratio_stretch)
            .map(|(r, s)| r + share * s)
            .collect();
        println!(
            "  ratio, stretching included, {:>3.0} % slowed {:>6.2}x  ({})",
            share * 100.0,
            median(with.clone()),
            range(&with)
        );
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: stay out of the way.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pipeline benchmark: run it with `cargo bench --bench pipeline`");
        return;
    }
    // `cargo bench --bench pipeline -- cpu` (or `scenarios`, `sweep`, `limit`) runs one
    // part only; `sweep` (WiFi stalls over many seeds) and `limit` (issue 9's per-run
    // limit, several minutes) run only when named.
    let parts: Vec<String> = std::env::args()
        .filter(|a| ["cpu", "scenarios", "sweep", "limit", "adaptive"].contains(&a.as_str()))
        .collect();
    let only = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let named = |part: &str| parts.iter().any(|p| p == part);
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
    if named("sweep") {
        sweep(emu, dir.path(), &fifo);
    }
    if named("limit") {
        limit_table(emu, dir.path(), &fifo, &default_cfg, &eager_cfg);
    }
    if named("adaptive") {
        adaptive_table(emu, dir.path(), &fifo, &default_cfg);
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

/// One run of the `limit` part: herald's start against the earliest gapless one.
struct LimitRun {
    /// The earliest gapless start at normal speed, from the emulator's send schedule
    /// (`SendSchedule::gapless_start`, measured from the request's arrival).
    limit_ms: f64,
    run: Run,
    /// Silences herald played inside the tone (its buffer ran dry): (count, total ms).
    silences: (usize, f64),
    /// Ticks the "DAC" found the pipe empty (herald's writer late, e.g. starved of CPU on
    /// a loaded machine): (count, total ms). Also audible.
    empty: (usize, f64),
    /// First data at the FIFO "DAC" after the request reached the emulator: a cross-check
    /// of herald's own figure on one clock (the FIFO reader polls every 10 ms).
    dac_ms: f64,
}

/// Below this a sample of the emulator's tone is not (its quietest syllable peaks near
/// 4900, and it stays under 1000 only ~0.5 ms around a zero crossing).
const TONE_QUIET: u16 = 1000;
/// Shortest quiet stretch counted as a gap: ten times the tone's own, well under a
/// stall's fade plus silence.
const GAP_MIN: Duration = Duration::from_millis(5);

/// Quiet stretches (frames) inside tone content, between its first and last loud sample:
/// the silence herald plays while its buffer is dry (the pipe never empties then, so the
/// FIFO clock's own gap count cannot see it).
fn silent_runs(samples: &[i16], rate: u32) -> Vec<usize> {
    let min = (GAP_MIN.as_secs_f64() * f64::from(rate)) as usize;
    let loud = |s: &i16| s.unsigned_abs() >= TONE_QUIET;
    let (Some(first), Some(last)) = (
        samples.iter().position(loud),
        samples.iter().rposition(loud),
    ) else {
        return Vec::new();
    };
    samples[first..=last]
        .split(loud)
        .map(<[i16]>::len)
        .filter(|&n| n >= min)
        .collect()
}

/// Options of the `limit` part, from the bench's arguments.
struct LimitArgs {
    /// `utterances=N`: runs in a row per profile, format and config (default 1).
    utterances: usize,
    /// `seeds=1,2`: stall seeds of the two WiFi profiles (default 1,2).
    seeds: Vec<u64>,
    /// `profiles=under,wifi-long`: only these presets (default all).
    profiles: Option<Vec<String>>,
}

fn limit_args() -> LimitArgs {
    let mut args = LimitArgs {
        utterances: 1,
        seeds: vec![1, 2],
        profiles: None,
    };
    for a in std::env::args() {
        if let Some(n) = a.strip_prefix("utterances=") {
            args.utterances = n.parse().expect("utterances=N");
        } else if let Some(list) = a.strip_prefix("seeds=") {
            args.seeds = list
                .split(',')
                .map(|s| s.parse().expect("seeds=1,2,3"))
                .collect();
        } else if let Some(list) = a.strip_prefix("profiles=") {
            args.profiles = Some(list.split(',').map(str::to_string).collect());
        }
    }
    args
}

/// Speaks once on `key` and reads that response's send schedule back from the emulator.
fn limit_run(
    emu: &herald_emulator::EmulatorHandle,
    key: &str,
    format: &str,
    cfg: &std::path::Path,
    fifo: &support::FifoPcm,
    state: &std::path::Path,
) -> LimitRun {
    let before = emu.stats().requests_for(key);
    // A state directory per sequence: the first utterance is cold even once herald
    // learns the network (issue 9, step 1), the later ones warm.
    let state = state.to_str().unwrap();
    let run = speak_with(
        &emu.base_url(key),
        format,
        cfg,
        fifo,
        &[("XDG_STATE_HOME", state)],
    );
    // One response per segment (auto: the pcm lead and the opus tail), no retries, so the
    // last schedules are the ones that were played, in the order they were asked for.
    let made = (emu.stats().requests_for(key) - before) as usize;
    let segments = if format == "auto" { 2 } else { 1 };
    assert_eq!(made, segments, "{key}: herald made {made} requests");
    let mut parts = emu.schedules(key);
    let mut parts = parts.split_off(parts.len() - made);
    // Played in segment order: auto's pcm lead first.
    parts.sort_by_key(|s| (s.format != herald::tts::AudioFormat::Pcm, s.arrived));
    assert!(
        parts.iter().all(|s| s.complete()),
        "{key}: body not sent to the end"
    );
    let limit = herald_emulator::gapless_start_of(&parts).expect("audio went out");
    let dac_ms = run.dac_started_at.map_or(f64::NAN, |t| {
        t.saturating_duration_since(parts[0].arrived).as_secs_f64() * 1000.0
    });
    let silences = silent_runs(&run.samples, 48_000);
    LimitRun {
        limit_ms: limit.as_secs_f64() * 1000.0,
        silences: (silences.len(), silences.iter().sum::<usize>() as f64 / 48.0),
        empty: (run.gaps, run.gap_ms),
        run,
        dac_ms,
    }
}

/// The emulator profiles the issue-9 tables run: (label, scenario), WiFi ones per seed.
fn limit_profiles(seeds: &[u64], wanted: Option<&[String]>) -> Vec<(String, String)> {
    let mut profiles: Vec<(String, String)> = vec![
        ("good 4x (default pacing)".into(), "realtime".into()),
        ("fast 50x".into(), "fast".into()),
    ];
    for s in seeds {
        profiles.push((
            format!("wifi 2.5x, <=1 s, seed {s}"),
            format!("wifi,seed={s},shared-stalls"),
        ));
    }
    profiles.push(("slow 1.15x".into(), "slow".into()));
    profiles.push(("under 0.85x".into(), "under".into()));
    for s in seeds {
        profiles.push((
            format!("wifi-long 2x, <=2.5 s, seed {s}"),
            format!("wifi-long,seed={s},shared-stalls"),
        ));
    }
    if let Some(w) = wanted {
        profiles.retain(|(_, sc)| w.iter().any(|p| sc.split(',').next() == Some(p.as_str())));
    }
    profiles
}

/// Issue 9, parts 1–3: the default configuration learning each profile. Per profile and
/// format one sequence of `utterances` (default 6) in one state directory: the first is
/// cold (the fixed rules), the later ones start by what was learned (from the 4th, once 3
/// are learned); "warm" in the issue is the 6th. Prints each run's start against its limit,
/// the silences heard and the share played slowed.
fn adaptive_table(
    emu: &herald_emulator::EmulatorHandle,
    dir: &std::path::Path,
    fifo: &support::FifoPcm,
    cfg: &std::path::Path,
) {
    let args = limit_args();
    let utterances = if std::env::args().any(|a| a.starts_with("utterances=")) {
        args.utterances
    } else {
        6
    };
    let formats: Vec<String> = std::env::args()
        .find_map(|a| a.strip_prefix("formats=").map(str::to_string))
        .unwrap_or_else(|| "opus,pcm".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let profiles = limit_profiles(&args.seeds, args.profiles.as_deref());
    println!();
    println!(
        "Adaptive playout: default config, {utterances} utterances in a row per profile and          format (u1 cold; learned starts from u4)"
    );
    println!(
        "{:<30} {:<5} {:>2} {:>7} {:>7} {:>7} {:>5} {:>12} {:>11} {:>9} {:>8}",
        "profile",
        "fmt",
        "u",
        "start",
        "limit",
        "ttfa",
        "-limit",
        "silences",
        "empty pipe",
        "slowed",
        "stalls"
    );
    for (i, (label, sc)) in profiles.iter().enumerate() {
        for format in &formats {
            let key = format!("{sc},tone,id=adaptive{i}-{format}");
            let state = dir.join(format!("adaptive-{i}-{format}"));
            std::fs::create_dir_all(&state).unwrap();
            for u in 1..=utterances {
                let r = limit_run(emu, &key, format, cfg, fifo, &state);
                let gaps = |(n, ms): (usize, f64)| format!("{n} ({ms:.0} ms)");
                let slowed = 100.0 * r.run.stretched_ms / (r.run.audio_s * 1000.0);
                println!(
                    "{:<30} {:<5} {:>2} {:>7} {:>7.0} {:>7.0} {:>+6.0} {:>12} {:>11} {:>8.1}% {:>8}",
                    label,
                    format,
                    u,
                    if r.run.warm { "learned" } else { "cold" },
                    r.limit_ms,
                    r.run.ttfa_ms,
                    r.run.ttfa_ms - r.limit_ms,
                    gaps(r.silences),
                    gaps(r.empty),
                    slowed,
                    r.run.stalls
                );
            }
        }
    }
}

/// Issue 9, part 5: per profile and format, herald's time to first audio against the
/// run's limit, with the default jitter reserve and with none, on identical stalls
/// (`shared-stalls`: the two configurations' nth requests see the same pattern).
fn limit_table(
    emu: &herald_emulator::EmulatorHandle,
    dir: &std::path::Path,
    fifo: &support::FifoPcm,
    default_cfg: &std::path::Path,
    eager_cfg: &std::path::Path,
) {
    let LimitArgs {
        utterances,
        seeds,
        profiles: wanted,
    } = limit_args();
    // The gap detector, on the content it will judge: a clean tone has no gap, and 100 ms
    // of silence inside one is one gap of 100 ms.
    let tone = herald_emulator::synthesize_tone(TEXT, "alloy", 1.0).unwrap();
    assert_eq!(silent_runs(&tone, 24_000), Vec::<usize>::new());
    let mut holed = tone.clone();
    holed[48_000..50_400].fill(0);
    let runs = silent_runs(&holed, 24_000);
    assert!(
        runs.len() == 1 && (2400..2450).contains(&runs[0]),
        "{runs:?}"
    );

    let profiles = limit_profiles(&seeds, wanted.as_deref());
    println!();
    println!(
        "Per-run limit: earliest gapless start at normal speed (from the emulator's send \
         schedule) vs herald's time to first audio; {utterances} utterance(s) per profile, \
         format and reserve"
    );
    let set = "  limit   ttfa  -limit     silences  empty pipe       stalls";
    println!(
        "{:<30} {:<5} {:>2} |{:^60}|{:^60}",
        "", "", "", "jitter_reserve_ms = 1000 (default)", "jitter_reserve_ms = 0"
    );
    println!("{:<30} {:<5} {:>2} |{set} |{set}", "profile", "fmt", "u");
    let mut cross = Vec::new();
    for (i, (label, sc)) in profiles.iter().enumerate() {
        for format in ["opus", "pcm"] {
            let seq = |reserve: &str| {
                // A tone, so that any silence herald plays is a gap we can see.
                let key = format!("{sc},tone,id=limit{i}-{format}-{reserve}");
                let state = dir.join(format!("state-{i}-{format}-{reserve}"));
                std::fs::create_dir_all(&state).unwrap();
                (key, state)
            };
            let (default_key, default_state) = seq("1000");
            let (eager_key, eager_state) = seq("0");
            for u in 1..=utterances {
                let a = limit_run(emu, &default_key, format, default_cfg, fifo, &default_state);
                let b = limit_run(emu, &eager_key, format, eager_cfg, fifo, &eager_state);
                let cols = |r: &LimitRun| {
                    let gaps = |(n, ms): (usize, f64)| format!("{n} ({ms:.0} ms)");
                    format!(
                        "{:>7.0} {:>6.0} {:>+7.0} {:>12} {:>11} {:>12}",
                        r.limit_ms,
                        r.run.ttfa_ms,
                        r.run.ttfa_ms - r.limit_ms,
                        gaps(r.silences),
                        gaps(r.empty),
                        r.run.stalls
                    )
                };
                println!(
                    "{:<30} {:<5} {:>2} |{} |{}",
                    label,
                    format,
                    u,
                    cols(&a),
                    cols(&b)
                );
                cross.extend([a.run.ttfa_ms - a.dac_ms, b.run.ttfa_ms - b.dac_ms]);
            }
        }
    }
    let (lo, hi) = cross
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &d| {
            (lo.min(d), hi.max(d))
        });
    println!(
        "cross-check: herald's ttfa minus (first data at the FIFO - request at the emulator): \
         {lo:+.0} to {hi:+.0} ms over {} runs",
        cross.len()
    );
}
