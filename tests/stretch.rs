//! The time-stretcher (src/audio/stretch.rs) against the real libsonic: pitch kept at 0.9×,
//! no clicks across tempo changes, output length as the tempo says, tempo 1.0 sample-exact,
//! the tempo clamped, a tempo change heard within 100 ms, channels in lockstep, and no
//! allocation at all after `Stretcher::new` (libsonic's too: see `alloc` below).
//!
//! Every test drives the stretcher the way the audio thread will: per device period, push
//! until a period is buffered, then pull one period.

use herald::audio::stretch::{StretchConfig, Stretcher, DEFAULT_MIN_TEMPO};
use herald::audio::stretch_gate::{tempo_for, BlockClassifier, Slowing};

const RATE: u32 = 48_000;
/// 10 ms periods: the audio thread's period and `max_push_frames`.
const PERIOD: usize = 480;
/// 100 ms of audio, the reaction time the issue asks for.
const MS100: usize = RATE as usize / 10;

/// Counts this thread's calls into the C allocator while armed. The test binary defines
/// malloc/calloc/realloc/free, so they interpose on every caller in the process, libsonic's
/// `realloc` in `enlargeOutputBufferIfNeeded` included (glibc allows replacing them), and
/// forward to glibc's own `__libc_*` entry points. Rust's allocator goes through them too.
mod alloc {
    use std::cell::Cell;
    use std::os::raw::c_void;

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
        static CALLS: Cell<u64> = const { Cell::new(0) };
        static REALLOCS: Cell<u64> = const { Cell::new(0) };
    }

    extern "C" {
        fn __libc_malloc(size: usize) -> *mut c_void;
        fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
        fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
        fn __libc_free(p: *mut c_void);
    }

    fn note(realloc: bool) {
        // try_with: never panic inside the allocator (thread teardown).
        let _ = ARMED.try_with(|armed| {
            if armed.get() {
                CALLS.with(|c| c.set(c.get() + 1));
                if realloc {
                    REALLOCS.with(|c| c.set(c.get() + 1));
                }
            }
        });
    }

    /// # Safety
    /// The C `malloc` contract.
    #[no_mangle]
    pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
        note(false);
        // SAFETY: forwards the caller's contract to glibc.
        unsafe { __libc_malloc(size) }
    }

    /// # Safety
    /// The C `calloc` contract.
    #[no_mangle]
    pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
        note(false);
        // SAFETY: forwards the caller's contract to glibc.
        unsafe { __libc_calloc(n, size) }
    }

    /// # Safety
    /// The C `realloc` contract.
    #[no_mangle]
    pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
        note(true);
        // SAFETY: forwards the caller's contract to glibc.
        unsafe { __libc_realloc(p, size) }
    }

    /// # Safety
    /// The C `free` contract.
    #[no_mangle]
    pub unsafe extern "C" fn free(p: *mut c_void) {
        note(false);
        // SAFETY: forwards the caller's contract to glibc.
        unsafe { __libc_free(p) }
    }

    /// Runs `f` with counting on; returns its result, allocator calls and reallocs.
    pub fn count<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
        CALLS.with(|c| c.set(0));
        REALLOCS.with(|c| c.set(0));
        ARMED.with(|a| a.set(true));
        let out = f();
        ARMED.with(|a| a.set(false));
        (out, CALLS.with(Cell::get), REALLOCS.with(Cell::get))
    }
}

fn stretcher(channels: u16) -> Stretcher {
    Stretcher::new(StretchConfig::new(RATE, channels, PERIOD)).unwrap()
}

fn sine(freq: f64, amp: f64, frames: usize) -> Vec<i16> {
    (0..frames)
        .map(|i| (amp * (std::f64::consts::TAU * freq * i as f64 / f64::from(RATE)).sin()) as i16)
        .collect()
}

/// Voice-like: a gliding 110–150 Hz pulse of ten harmonics, its level rising and falling
/// three times a second like syllables.
fn voice(frames: usize) -> Vec<i16> {
    let mut phase = 0.0f64;
    (0..frames)
        .map(|i| {
            let t = i as f64 / f64::from(RATE);
            let f0 = 130.0 + 20.0 * (std::f64::consts::TAU * 0.5 * t).sin();
            phase += std::f64::consts::TAU * f0 / f64::from(RATE);
            let level = 0.6 + 0.4 * (std::f64::consts::TAU * 3.0 * t).sin();
            let x: f64 = (1..=10).map(|k| (k as f64 * phase).sin() / k as f64).sum();
            (level * 6_000.0 * x) as i16
        })
        .collect()
}

/// Plays `input` through `s` like the audio thread: before each period, the tempo for the
/// output position (frames) reached; push until a period is buffered; pull one period. At
/// the end, flush and pull the rest. Returns all output.
fn drive(s: &mut Stretcher, input: &[i16], mut tempo_at: impl FnMut(usize) -> f32) -> Vec<i16> {
    let ch = s.channels();
    let mut out = Vec::new();
    let mut buf = vec![0i16; PERIOD * ch];
    let mut pos = 0;
    loop {
        s.set_tempo(tempo_at(out.len() / ch));
        while s.buffered_frames() < PERIOD && pos < input.len() {
            let n = s.push(&input[pos..]).unwrap();
            assert!(
                n > 0,
                "push took nothing with {} buffered",
                s.buffered_frames()
            );
            pos += n * ch;
        }
        if s.buffered_frames() < PERIOD {
            break;
        }
        let got = s.pull(&mut buf);
        assert_eq!(got, PERIOD);
        out.extend_from_slice(&buf[..got * ch]);
    }
    s.flush().unwrap();
    loop {
        let got = s.pull(&mut buf);
        if got == 0 {
            break;
        }
        out.extend_from_slice(&buf[..got * ch]);
    }
    out
}

/// Frequency from upward zero crossings (linearly interpolated) of `x` between 50 ms from
/// either end.
fn frequency(x: &[i16]) -> f64 {
    let edge = RATE as usize / 20;
    let mut first = None;
    let mut last = 0.0;
    let mut count = 0usize;
    for i in edge..x.len() - edge {
        let (a, b) = (f64::from(x[i - 1]), f64::from(x[i]));
        if a < 0.0 && b >= 0.0 {
            let t = (i - 1) as f64 + a / (a - b);
            first.get_or_insert(t);
            last = t;
            count += 1;
        }
    }
    let first = first.expect("no zero crossings");
    (count - 1) as f64 / ((last - first) / f64::from(RATE))
}

fn max_step(x: &[i16]) -> i32 {
    x.windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

#[test]
fn tone_at_0_9_keeps_its_pitch_and_lasts_1_11_times_as_long() {
    for freq in [440.0, 220.0] {
        let input = sine(freq, 12_000.0, 2 * RATE as usize);
        let mut s = stretcher(1);
        let out = drive(&mut s, &input, |_| 0.9);
        let measured = frequency(&out);
        assert!(
            (measured - freq).abs() <= 2.0,
            "{freq} Hz at 0.9x measures {measured:.2} Hz"
        );
        let want = input.len() as f64 / 0.9;
        assert!(
            (out.len() as f64 - want).abs() <= s.latency_frames() as f64,
            "{} frames out, {want:.0} expected",
            out.len()
        );
        eprintln!(
            "{freq} Hz at 0.9x: {measured:.3} Hz, {} -> {} frames",
            input.len(),
            out.len()
        );
    }
}

#[test]
fn sine_has_no_clicks_even_across_tempo_changes() {
    // A tempo change every 100 ms of output, between 1.0 and the minimum and in between.
    let tempos = [1.0, 0.9, 0.95, 1.0, 0.9, 0.92, 0.97, 0.9, 1.0, 0.93];
    for freq in [440.0, 220.0, 150.0] {
        let amp = 12_000.0;
        let input = sine(freq, amp, 3 * RATE as usize);
        let mut s = stretcher(1);
        let out = drive(&mut s, &input, |at| tempos[(at / MS100) % tempos.len()]);
        // A pure sine's largest step between samples; a click is a jump far beyond it.
        let ideal = 2.0 * amp * (std::f64::consts::PI * freq / f64::from(RATE)).sin();
        let worst = max_step(&out);
        assert!(
            f64::from(worst) <= 1.15 * ideal,
            "{freq} Hz: a step of {worst} between samples (a sine's largest is {ideal:.0})"
        );
        eprintln!("{freq} Hz: largest step {worst} (sine {ideal:.0})");
    }
}

#[test]
fn output_length_matches_the_tempo_after_flush() {
    let input = voice(3 * RATE as usize);
    for tempo in [0.9f32, 0.93, 0.97, 1.0] {
        let mut s = stretcher(1);
        let out = drive(&mut s, &input, |_| tempo);
        let want = input.len() as f64 / f64::from(tempo);
        let off = out.len() as f64 - want;
        assert!(
            off.abs() <= s.latency_frames() as f64,
            "tempo {tempo}: {} frames out, {want:.0} expected",
            out.len()
        );
        let st = s.stats();
        assert_eq!(st.frames_in, input.len() as u64);
        assert_eq!(st.frames_out, out.len() as u64);
        let share = if tempo < 1.0 { 1.0 } else { 0.0 };
        assert_eq!(st.stretched_share(), share);
        eprintln!(
            "tempo {tempo}: {} frames out, {want:.0} expected ({off:+.0})",
            out.len()
        );
    }
}

#[test]
fn tempo_1_is_sample_exact_and_holds_nothing_back() {
    // Noise-like content (an LCG) as well as voice: nothing is analysed at 1.0.
    let mut x = 1u32;
    let noise: Vec<i16> = (0..RATE as usize)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 16) as i16
        })
        .collect();
    for input in [noise, voice(RATE as usize)] {
        let mut s = stretcher(1);
        let mut buf = [0i16; PERIOD];
        let mut out = Vec::new();
        for chunk in input.chunks(PERIOD) {
            assert_eq!(s.push(chunk).unwrap(), chunk.len());
            // Everything pushed is ready at once: no latency at 1.0.
            assert_eq!(s.buffered_frames(), chunk.len());
            let got = s.pull(&mut buf);
            out.extend_from_slice(&buf[..got]);
        }
        s.flush().unwrap();
        assert_eq!(s.pull(&mut buf), 0);
        assert!(out == input, "tempo 1.0 changed the audio");
    }
}

#[test]
fn tempo_is_clamped_to_the_minimum_and_to_1() {
    let mut s = stretcher(1);
    assert_eq!(s.min_tempo(), DEFAULT_MIN_TEMPO);
    assert_eq!(s.set_tempo(0.5), 0.9);
    assert_eq!(s.tempo(), 0.9);
    assert_eq!(s.set_tempo(0.95), 0.95);
    assert_eq!(s.set_tempo(1.5), 1.0);
    assert_eq!(s.set_tempo(f32::NAN), 1.0);
    assert_eq!(s.set_tempo(f32::NEG_INFINITY), 0.9);

    // The clamp is what the audio gets: asking for 0.5 plays at 0.9.
    let input = voice(2 * RATE as usize);
    let out = drive(&mut s, &input, |_| 0.5);
    let want = input.len() as f64 / 0.9;
    assert!(
        (out.len() as f64 - want).abs() <= s.latency_frames() as f64,
        "asked 0.5, clamped to 0.9: {} frames out, {want:.0} expected",
        out.len()
    );

    let mut s = Stretcher::new(StretchConfig::new(RATE, 1, PERIOD).with_min_tempo(0.8)).unwrap();
    assert_eq!(s.set_tempo(0.5), 0.8);
    // min_tempo 1.0 turns stretching off.
    let mut s = Stretcher::new(StretchConfig::new(RATE, 1, PERIOD).with_min_tempo(1.0)).unwrap();
    assert_eq!(s.set_tempo(0.9), 1.0);
}

#[test]
fn tempo_change_takes_effect_within_100_ms() {
    // 1.0 for 0.5 s of output, 0.9 until 1.5 s, then 1.0 again.
    let (slow_at, fast_at) = (RATE as usize / 2, 3 * RATE as usize / 2);
    let input = voice(3 * RATE as usize);
    let mut s = stretcher(1);
    let mut most_buffered = 0;
    let out = drive(&mut s, &input, |at| {
        if (slow_at..fast_at).contains(&at) {
            0.9
        } else {
            1.0
        }
    });
    // Slowing down: up to the switch the output is the input itself (1.0 is exact); the
    // first stretched sample follows within 100 ms.
    let first_diff = out.iter().zip(&input).position(|(o, i)| o != i).unwrap();
    assert!(
        first_diff >= slow_at && first_diff - slow_at <= MS100,
        "switched to 0.9 at frame {slow_at}, first stretched frame at {first_diff}"
    );
    // Back to 1.0: from some frame on, the output is the input again, delayed by what
    // stretching added; that frame is within 100 ms of the switch.
    let added = out.len() - input.len();
    assert!(
        added > RATE as usize / 20,
        "0.9 for 1 s added only {added} frames"
    );
    let last_diff = (added..out.len())
        .rev()
        .find(|&k| out[k] != input[k - added])
        .unwrap();
    // (It may end before the switch: between inserted periods libsonic copies input.)
    assert!(
        last_diff < fast_at + MS100,
        "switched to 1.0 at frame {fast_at}, stretching went on until frame {last_diff}"
    );
    eprintln!(
        "to 0.9 at {slow_at}: stretched from {first_diff} (+{:.1} ms); to 1.0 at {fast_at}: \
         exact again from {} ({:+.1} ms); {added} frames added",
        (first_diff - slow_at) as f64 / 48.0,
        last_diff + 1,
        (last_diff as f64 + 1.0 - fast_at as f64) / 48.0,
    );

    // What sits stretched ahead of the tempo stays small: push refuses input once a period
    // waits, so the output buffer never exceeds what one push can add to it.
    let mut s = stretcher(1);
    s.set_tempo(0.9);
    let mut buf = [0i16; PERIOD];
    for chunk in input.chunks(PERIOD) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let n = s.push(rest).unwrap();
            most_buffered = most_buffered.max(s.buffered_frames());
            if n == 0 {
                assert!(s.buffered_frames() >= PERIOD);
                s.pull(&mut buf);
            }
            rest = &rest[n..];
        }
    }
    // One push can release what libsonic held (< latency) with the new frames, so the most
    // waiting is about a period plus (latency + period) / 0.9; with what libsonic holds
    // (which the new tempo does reach) it stays under 100 ms.
    assert!(
        most_buffered + s.latency_frames() <= MS100,
        "{most_buffered} frames buffered, + {} held",
        s.latency_frames()
    );
    eprintln!(
        "most buffered at 0.9, pushing until refused: {most_buffered} frames ({:.1} ms)",
        most_buffered as f64 / 48.0
    );
}

#[test]
fn stereo_channels_stay_in_lockstep() {
    // Right = −left: libsonic finds one period for both channels and cross-fades them with
    // the same weights, so the output keeps right = −left exactly.
    let mono = voice(2 * RATE as usize);
    let stereo: Vec<i16> = mono.iter().flat_map(|&v| [v, -v]).collect();
    let mut s = stretcher(2);
    let out = drive(
        &mut s,
        &stereo,
        |at| if at < RATE as usize { 0.9 } else { 0.95 },
    );
    assert_eq!(out.len() % 2, 0);
    assert!(
        out.chunks(2).all(|f| f[1] == -f[0]),
        "channels drifted apart"
    );
    let frames = out.len() / 2;
    // The first second of output took 0.9 s of input; the rest went at 0.95.
    let want = f64::from(RATE) + (mono.len() as f64 - 0.9 * f64::from(RATE)) / 0.95;
    assert!(
        (frames as f64 - want).abs() <= 2.0 * s.latency_frames() as f64,
        "{frames} stereo frames out, about {want:.0} expected"
    );
}

#[test]
fn release_held_plays_what_libsonic_held_at_once_without_a_click() {
    let amp = 12_000.0;
    let input = sine(220.0, amp, RATE as usize / 2);
    let mut s = stretcher(1);
    s.set_tempo(0.9);
    let mut out = Vec::new();
    let mut buf = [0i16; PERIOD];
    let mut rest = &input[..];
    while !rest.is_empty() {
        let n = s.push(rest).unwrap();
        rest = &rest[n..];
        let n = s.pull(&mut buf);
        out.extend_from_slice(&buf[..n]);
    }
    // The source ran dry: pull what was stretched, then let go of what libsonic holds.
    loop {
        let n = s.pull(&mut buf);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let before = out.len();
    s.release_held().unwrap();
    assert_eq!(s.tempo(), 0.9);
    let held = s.buffered_frames();
    assert!(
        held > 0 && held < s.latency_frames(),
        "{held} frames released"
    );
    loop {
        let n = s.pull(&mut buf);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    // Everything came out: the input, stretched, within libsonic's rounding of a period.
    let want = input.len() as f64 / 0.9;
    assert!(
        (out.len() as f64 - want).abs() <= s.latency_frames() as f64,
        "{} frames out, {want:.0} expected ({before} before the release)",
        out.len()
    );
    // The released audio continues the stretched audio with no jump.
    let ideal = 2.0 * amp * (std::f64::consts::PI * 220.0 / f64::from(RATE)).sin();
    assert!(f64::from(max_step(&out)) <= 1.15 * ideal);
    // And it was the input's tail, verbatim.
    assert_eq!(out[out.len() - held..], input[input.len() - held..]);
}

#[test]
fn clear_drops_everything_and_keeps_the_tempo() {
    let mut s = stretcher(1);
    s.set_tempo(0.9);
    let input = voice(RATE as usize / 10);
    let mut pos = 0;
    while pos < input.len() {
        let n = s.push(&input[pos..]).unwrap();
        if n == 0 {
            let mut buf = [0i16; PERIOD];
            s.pull(&mut buf);
        }
        pos += n;
    }
    s.clear().unwrap();
    assert_eq!(s.buffered_frames(), 0);
    assert_eq!(s.tempo(), 0.9);
    // Nothing of the old audio comes out after new audio at 1.0.
    s.set_tempo(1.0);
    let fresh = sine(300.0, 8_000.0, PERIOD);
    s.push(&fresh).unwrap();
    let mut buf = [0i16; PERIOD];
    assert_eq!(s.pull(&mut buf), PERIOD);
    assert_eq!(buf[..], fresh[..]);
    assert_eq!(s.pull(&mut buf), 0);
}

#[test]
fn nothing_allocates_after_new_not_even_libsonic() {
    // Creation allocates (libsonic's calloc'd buffers, grown once by realloc): that the
    // counter sees it shows libsonic's calls go through the counting allocator.
    let (s, calls, reallocs) = alloc::count(|| stretcher(1));
    let mut s = s;
    assert!(calls >= 5, "creation made {calls} allocator calls");
    assert!(reallocs >= 2, "creation made {reallocs} reallocs");

    let input = voice(5 * RATE as usize);
    let tempos = [1.0, 0.9, 0.95, 0.9, 1.0, 0.92];
    let mut buf = [0i16; PERIOD];
    let (pulled, calls, reallocs) = alloc::count(|| {
        let mut pulled = 0usize;
        let mut pos = 0;
        let mut period = 0usize;
        while pos < input.len() {
            s.set_tempo(tempos[(period / 5) % tempos.len()]);
            while s.buffered_frames() < PERIOD && pos < input.len() {
                pos += s.push(&input[pos..]).unwrap();
            }
            pulled += s.pull(&mut buf);
            period += 1;
            // A flush mid-stream (end of an utterance), a release (the source ran dry) and a
            // clear (an interrupt), too.
            if period % 97 == 0 {
                s.flush().unwrap();
            }
            if period % 61 == 0 {
                s.release_held().unwrap();
            }
            if period % 211 == 0 {
                s.clear().unwrap();
            }
        }
        s.flush().unwrap();
        while s.pull(&mut buf) > 0 {}
        let _ = s.stats();
        pulled
    });
    assert!(pulled > input.len() / 2);
    assert_eq!(
        (calls, reallocs),
        (0, 0),
        "the loop called the allocator {calls} times ({reallocs} reallocs)"
    );
}

/// A gliding 130 Hz pulse of ten harmonics at `level(block)` per 10 ms block.
fn pulse(frames: usize, level: impl Fn(usize) -> f64) -> Vec<i16> {
    let mut phase = 0.0f64;
    (0..frames)
        .map(|i| {
            let t = i as f64 / f64::from(RATE);
            phase += std::f64::consts::TAU * (130.0 + 20.0 * (std::f64::consts::TAU * t).sin())
                / f64::from(RATE);
            let x: f64 = (1..=10).map(|k| (k as f64 * phase).sin() / k as f64).sum();
            (level(i / PERIOD) * 6_000.0 * x) as i16
        })
        .collect()
}

/// Plays `input` like the audio thread with a stretch gate: each pushed period gets the
/// tempo `tempo_for` gives its block under `slowing`.
fn drive_gated(s: &mut Stretcher, input: &[i16], slowing: Slowing) -> Vec<i16> {
    let mut gate = BlockClassifier::new(RATE, 1);
    let mut out = Vec::new();
    let mut buf = vec![0i16; PERIOD];
    for block in input.chunks(PERIOD) {
        let kind = gate.classify(&[block]);
        s.set_tempo(tempo_for(slowing, kind, s.min_tempo()));
        let mut rest = block;
        while !rest.is_empty() {
            let n = s.push(rest).unwrap();
            rest = &rest[n..];
            let got = s.pull(&mut buf);
            out.extend_from_slice(&buf[..got]);
        }
        while s.buffered_frames() >= PERIOD {
            let got = s.pull(&mut buf);
            out.extend_from_slice(&buf[..got]);
        }
    }
    s.flush().unwrap();
    loop {
        let got = s.pull(&mut buf);
        if got == 0 {
            break;
        }
        out.extend_from_slice(&buf[..got]);
    }
    out
}

/// Lengths (ms) of the sounds in `x`: runs split by at least 5 ms of near-silence.
fn sounds_ms(x: &[i16]) -> Vec<f64> {
    let quiet = RATE as usize / 200;
    let mut runs = Vec::new();
    let (mut start, mut last_loud) = (None, 0);
    for (i, &v) in x.iter().enumerate() {
        if v.unsigned_abs() > 30 {
            if start.is_some() && i - last_loud > quiet {
                runs.push((start.unwrap_or(0), last_loud));
                start = None;
            }
            start.get_or_insert(i);
            last_loud = i;
        }
    }
    runs.extend(start.map(|s| (s, last_loud)));
    runs.iter()
        .map(|(a, b)| (b + 1 - a) as f64 * 1000.0 / f64::from(RATE))
        .collect()
}

/// Issue 9: "stretching pauses and steady parts first". While slowing only earns back a
/// learned start's credit, a word whose loudness changes from block to block (onsets,
/// plosives) keeps its length and the held vowel and the pauses take the stretch; when the
/// buffer is about to run out, everything is slowed.
#[test]
fn gentle_slowing_stretches_pauses_and_held_sounds_and_leaves_changing_ones_alone() {
    let ms = |n: usize| n * RATE as usize / 1000;
    let mut input = Vec::new();
    for _ in 0..3 {
        // A "word": 300 ms whose level jumps ±9.5 dB every block; a pause; a held "vowel".
        input.extend(pulse(ms(300), |b| if b % 2 == 0 { 1.0 } else { 0.33 }));
        input.extend(vec![0; ms(200)]);
        input.extend(pulse(ms(300), |_| 0.8));
        input.extend(vec![0; ms(200)]);
    }
    let gentle = drive_gated(&mut stretcher(1), &input, Slowing::Gentle);
    let urgent = drive_gated(&mut stretcher(1), &input, Slowing::Urgent);
    let (g, u) = (sounds_ms(&gentle), sounds_ms(&urgent));
    eprintln!("gentle {g:.1?} ({} ms)", gentle.len() / ms(1));
    eprintln!("urgent {u:.1?} ({} ms)", urgent.len() / ms(1));
    assert_eq!((g.len(), u.len()), (6, 6), "six sounds each: {g:?} {u:?}");
    for (i, (&g, &u)) in g.iter().zip(&u).enumerate() {
        if i % 2 == 0 {
            assert!(
                (g - 300.0).abs() <= 10.0,
                "gentle: word {i} lasts {g:.1} ms"
            );
            assert!(u >= 320.0, "urgent: word {i} lasts only {u:.1} ms");
        } else {
            assert!(g >= 320.0, "gentle: vowel {i} lasts only {g:.1} ms");
            assert!(u >= 320.0, "urgent: vowel {i} lasts only {u:.1} ms");
        }
    }
    // The pauses took their share: gentle output is longer than the sounds' own growth.
    let sounds_added: f64 = g.iter().sum::<f64>() - 6.0 * 300.0;
    let added = (gentle.len() - input.len()) as f64 * 1000.0 / f64::from(RATE);
    assert!(
        added >= sounds_added + 100.0,
        "added {added:.0} ms of which {sounds_added:.0} in the sounds"
    );
}
