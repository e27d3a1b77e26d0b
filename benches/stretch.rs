//! Time-stretcher cost (figures, not a timed test): `cargo bench --bench stretch`.
//!
//! ≈ 4 minutes of espeak-ng speech (the emulator's voice), Opus-encoded as OpenAI lays it
//! out, decoded with bare libopus at 48 kHz mono (the reference the CPU target is
//! relative to), then played through `Stretcher` the way the audio thread will (20 ms
//! periods: push until a period is buffered, pull one) at tempo 1.0, 0.95 and 0.9. Thread
//! CPU time, best of five each, per second of input audio, and, in one more run, the
//! slowest single period's push + pull in thread CPU time (what the real-time loop must
//! absorb). Recorded in docs/STRETCH.md.

#[path = "common/cpu.rs"]
mod cpu;

use cpu::{decode, thread_cpu};
use herald::audio::stretch::{StretchConfig, Stretcher};
use herald_emulator::{encode_ogg_opus, synthesize, OggLayout};

const TEXT: &str = "The train to the airport leaves from platform four in ten minutes. \
    Please take your luggage with you and mind the gap between the train and the platform.";
const RATE: u32 = 48_000;
const PERIOD: usize = 960;
const RUNS: usize = 5;

/// Best-of-`RUNS` thread CPU seconds of `f`, and its last result.
fn best<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..RUNS {
        let start = thread_cpu();
        let out = f();
        best = best.min(thread_cpu() - start);
        last = Some(out);
    }
    (best, last.expect("RUNS > 0"))
}

/// Plays `pcm` through a stretcher at `tempo`; returns the output frames and, when `time`
/// is set, the most thread CPU time one period's push + pull took (CPU time, not wall
/// time: on this shared machine wall time mostly measures preemption).
fn stretch(
    s: &mut Stretcher,
    pcm: &[i16],
    tempo: f32,
    out: &mut [i16],
    time: bool,
) -> (usize, f64) {
    s.reset_stats();
    s.set_tempo(tempo);
    let mut pos = 0;
    let mut frames = 0;
    let mut worst = 0.0f64;
    loop {
        let start = if time { thread_cpu() } else { 0.0 };
        while s.buffered_frames() < PERIOD && pos < pcm.len() {
            pos += s.push(&pcm[pos..]).expect("push");
        }
        if s.buffered_frames() < PERIOD {
            break;
        }
        frames += s.pull(out);
        if time {
            worst = worst.max(thread_cpu() - start);
        }
    }
    s.flush().expect("flush");
    loop {
        let n = s.pull(out);
        if n == 0 {
            break;
        }
        frames += n;
    }
    (frames, worst)
}

fn main() {
    let speech = synthesize(&TEXT.repeat(30), "alloy", 1.0).expect("espeak-ng speech");
    let file = encode_ogg_opus(&speech, &OggLayout::default()).expect("encode");
    let packets = &cpu::audio_packets(&file);

    let (decode_cpu, pcm) = best(|| decode(packets));
    let audio_s = pcm.len() as f64 / f64::from(RATE);
    let per_s = |cpu: f64| cpu * 1000.0 / audio_s;
    println!();
    println!(
        "CPU per second of audio ({audio_s:.1} s of espeak-ng speech, 48 kHz mono, \
         {PERIOD}-frame periods, best of {RUNS}):"
    );
    println!(
        "  bare libopus decode                  {:>6.3} ms/s",
        per_s(decode_cpu)
    );

    let mut s = Stretcher::new(StretchConfig::new(RATE, 1, PERIOD)).expect("stretcher");
    let mut out = vec![0i16; PERIOD];
    for tempo in [1.0f32, 0.95, 0.9] {
        let (cpu, (frames, _)) = best(|| stretch(&mut s, &pcm, tempo, &mut out, false));
        let (_, worst) = stretch(&mut s, &pcm, tempo, &mut out, true);
        println!(
            "  stretcher at tempo {tempo:.2}           {:>6.3} ms/s  ({:.2}x decode; \
             {:.3} s out per s in; slowest period {:.0} µs CPU)",
            per_s(cpu),
            cpu / decode_cpu,
            frames as f64 / pcm.len() as f64,
            worst * 1e6
        );
    }
}
